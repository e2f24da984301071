//! Agent endpoints: where an agent listens and how it is reached.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where an agent listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `unix:///run/warren/agent.sock`
    Unix(PathBuf),
    /// `tcp://10.0.0.2:49983` (also accepted: `http://…`)
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix://").or_else(|| s.strip_prefix("unix:")) {
            if p.is_empty() {
                return Err(format!("endpoint {s:?}: empty socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp://").or_else(|| s.strip_prefix("http://")) {
            let a = a.trim_end_matches('/');
            if a.is_empty() || !a.contains(':') {
                return Err(format!("endpoint {s:?}: expected HOST:PORT"));
            }
            return Ok(Endpoint::Tcp(a.to_string()));
        }
        Err(format!("endpoint {s:?}: expected unix://PATH or tcp://HOST:PORT"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!("unix:///run/a.sock".parse(), Ok(Endpoint::Unix("/run/a.sock".into())));
        assert_eq!("tcp://127.0.0.1:49983".parse(), Ok(Endpoint::Tcp("127.0.0.1:49983".into())));
        assert_eq!("http://h:1/".parse(), Ok(Endpoint::Tcp("h:1".into())));
        assert!("ftp://x".parse::<Endpoint>().is_err());
        assert!("tcp://nohost".parse::<Endpoint>().is_err());
        assert!("unix://".parse::<Endpoint>().is_err());
    }
}
