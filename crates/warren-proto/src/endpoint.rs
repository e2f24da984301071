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
    /// An agent behind TLS, routed by host name: `https://HOST[:PORT]`, as
    /// E2B's cloud serves envd at `https://49983-{id}.{domain}` (HTTP/2
    /// negotiated by ALPN). `?via=ADDR` connects to ADDR instead of resolving
    /// HOST (like curl's `--connect-to`) while keeping HOST for SNI and the
    /// certificate check.
    Https { host: String, via: Option<String> },
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
        if let Some(rest) = s.strip_prefix("https://") {
            let (authority, query) = match rest.split_once('?') {
                Some((a, q)) => (a, Some(q)),
                None => (rest, None),
            };
            let authority = authority.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') || authority.contains('@') {
                return Err(format!("endpoint {s:?}: expected https://HOST[:PORT][?via=ADDR:PORT]"));
            }
            let host = if authority.contains(':') { authority.to_string() } else { format!("{authority}:443") };
            let via = match query {
                None => None,
                Some(q) => match q.strip_prefix("via=") {
                    Some(v) if v.contains(':') && !v.contains('&') => Some(v.to_string()),
                    _ => return Err(format!("endpoint {s:?}: the only query is via=ADDR:PORT")),
                },
            };
            return Ok(Endpoint::Https { host, via });
        }
        Err(format!(
            "endpoint {s:?}: expected unix://PATH, tcp://HOST:PORT, e2b://HOST:PORT/SANDBOX or https://HOST[:PORT]"
        ))
    }
}

/// Stored and sent as its URL form (`unix://…`, `tcp://…`, …).
impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Gateway { addr, sandbox } => write!(f, "e2b://{addr}/{sandbox}"),
            Endpoint::Https { host, via: None } => write!(f, "https://{host}"),
            Endpoint::Https { host, via: Some(v) } => write!(f, "https://{host}?via={v}"),
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
        let h: Endpoint = "https://49983-abc.e2b.app".parse().unwrap();
        assert_eq!(h, Endpoint::Https { host: "49983-abc.e2b.app:443".into(), via: None });
        assert_eq!(h.to_string(), "https://49983-abc.e2b.app:443");
        let v: Endpoint = "https://49983-abc.e2b.test:8443?via=127.0.0.1:9000".parse().unwrap();
        assert_eq!(v, Endpoint::Https { host: "49983-abc.e2b.test:8443".into(), via: Some("127.0.0.1:9000".into()) });
        assert_eq!(v.to_string().parse::<Endpoint>(), Ok(v.clone()));
        for bad in ["https://", "https://h/path", "https://u@h", "https://h?x=1", "https://h?via=nohost"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        for bad in ["e2b://host/abc", "e2b://h:1/", "e2b://h:1/a/b", "e2b://h:1"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, "\"https://49983-abc.e2b.test:8443?via=127.0.0.1:9000\"");
        assert_eq!(serde_json::from_str::<Endpoint>(&json).unwrap(), v);
        assert!(serde_json::from_str::<Endpoint>("\"ftp://x\"").is_err());
    }
}
