//! Shapes of the agent's plain HTTP endpoints: `/files`, `/init`, and the
//! `/files` URL signature.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// One entry of the `POST /files` reply. Exactly these three keys: SDKs up to
/// 2.27 build it with a strict constructor and crash on any other key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
}

/// The error body of the plain HTTP endpoints: `{code: int, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpError {
    pub code: u16,
    pub message: String,
}

/// `POST /init`: the orchestrator's bootstrap call. It sets or rotates the
/// workspace's access token, default user, default working directory and
/// environment. Only fields that are present change. Authenticated by the
/// `X-Warren-Init-Token` secret the agent was started with; see
/// `docs/agent.md`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InitRequest {
    /// New access token; `Some("")` turns access-token checks off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
    /// Workspace environment, replacing the previous one when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// `GET /health` on the agent returns 204; `GET /info` returns this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    pub envd_version: String,
    pub agent_version: String,
    pub pid: u32,
    pub processes: usize,
}

/// `read` or `write`, as used in `/files` signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Read,
    Write,
}

impl FileOp {
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Read => "read",
            FileOp::Write => "write",
        }
    }
}

/// The `/files` URL signature: `v1_` + unpadded base64 of
/// SHA-256(`{path}:{op}:{username}:{token}[:{expiration}]`).
pub fn file_signature(path: &str, op: FileOp, username: &str, token: &str, expiration: Option<i64>) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(path.as_bytes());
    h.update(b":");
    h.update(op.as_str().as_bytes());
    h.update(b":");
    h.update(username.as_bytes());
    h.update(b":");
    h.update(token.as_bytes());
    if let Some(exp) = expiration {
        h.update(b":");
        h.update(exp.to_string().as_bytes());
    }
    format!("v1_{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(h.finalize()))
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Query parameters of `/files` as a map (used by tests and the gateway).
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (as a space).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_coding_round_trips() {
        let enc = urlencode("/home/user/a b&c=ü");
        let q = parse_query(&format!("path={enc}&x=%zz&y"));
        assert_eq!(q["path"], "/home/user/a b&c=ü");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["y"], "");
    }

    #[test]
    fn write_info_has_exactly_three_keys() {
        let w = WriteInfo { name: "a.txt".into(), kind: "file".into(), path: "/home/user/a.txt".into() };
        assert_eq!(
            serde_json::to_string(&[w]).unwrap(),
            r#"[{"name":"a.txt","type":"file","path":"/home/user/a.txt"}]"#
        );
    }

    #[test]
    fn signature_shape_and_inputs_matter() {
        let s = file_signature("/a", FileOp::Read, "", "tok", None);
        assert!(s.starts_with("v1_"));
        assert!(!s.contains('='));
        assert_eq!(s.len(), 3 + 43);
        assert_ne!(s, file_signature("/a", FileOp::Write, "", "tok", None));
        assert_ne!(s, file_signature("/a", FileOp::Read, "user", "tok", None));
        assert_ne!(s, file_signature("/a", FileOp::Read, "", "tok", Some(5)));
        assert_eq!(s, file_signature("/a", FileOp::Read, "", "tok", None));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
