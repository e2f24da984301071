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
    /// An agent behind an E2B-compatible gateway: `e2b://HOST:PORT/SANDBOX`
    /// (HTTP/2 to HOST:PORT, every request carrying `E2b-Sandbox-Id`).
    Gateway { addr: String, sandbox: String },
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
        if let Some(rest) = s.strip_prefix("e2b://") {
            let (addr, sandbox) = rest
                .split_once('/')
                .filter(|(a, sb)| a.contains(':') && !sb.is_empty() && !sb.contains('/'))
                .ok_or_else(|| format!("endpoint {s:?}: expected e2b://HOST:PORT/SANDBOX"))?;
            return Ok(Endpoint::Gateway { addr: addr.to_string(), sandbox: sandbox.to_string() });
        }
        Err(format!("endpoint {s:?}: expected unix://PATH, tcp://HOST:PORT or e2b://HOST:PORT/SANDBOX"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Gateway { addr, sandbox } => write!(f, "e2b://{addr}/{sandbox}"),
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
        let g: Endpoint = "e2b://10.0.0.1:7474/abc123".parse().unwrap();
        assert_eq!(g, Endpoint::Gateway { addr: "10.0.0.1:7474".into(), sandbox: "abc123".into() });
        assert_eq!(g.to_string(), "e2b://10.0.0.1:7474/abc123");
        for bad in ["e2b://host/abc", "e2b://h:1/", "e2b://h:1/a/b", "e2b://h:1"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
