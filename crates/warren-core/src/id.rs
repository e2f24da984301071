use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Length of generated ids (E2B uses 20 as well).
pub const ID_LEN: usize = 20;

/// A workspace id: 1 to 63 characters of `[a-z0-9]`, so it is a valid DNS
/// label and survives E2B's `{port}-{id}.{domain}` host routing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("workspace id must be 1 to 63 characters long, got {0}")]
    Length(usize),
    #[error("workspace id may only hold lowercase letters and digits: {0:?}")]
    Charset(String),
}

impl WorkspaceId {
    /// A fresh random id.
    pub fn generate() -> Self {
        WorkspaceId(random_string(ID_LEN))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `n` random characters of `[a-z0-9]` from the OS's random source.
fn random_string(n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut raw = [0u8; 64];
        // getrandom only fails when the OS has no random source at all, which
        // no supported Linux lacks; then mix in the time as a last resort.
        if getrandom::fill(&mut raw).is_err() {
            let t =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            for (i, b) in raw.iter_mut().enumerate() {
                *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
            }
        }
        // Rejection sampling keeps the distribution uniform (252 = 7 * 36).
        for b in raw {
            if b < 252 && out.len() < n {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    out
}

/// A random secret of `bytes` bytes, hex encoded.
pub fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    if getrandom::fill(&mut raw).is_err() {
        return random_string(bytes * 2);
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromStr for WorkspaceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > 63 {
            return Err(IdError::Length(s.len()));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(IdError::Charset(s.to_string()));
        }
        Ok(WorkspaceId(s.to_string()))
    }
}

impl TryFrom<String> for WorkspaceId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<WorkspaceId> for String {
    fn from(id: WorkspaceId) -> String {
        id.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = WorkspaceId::generate();
        let b = WorkspaceId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ID_LEN);
        assert_eq!(a.as_str().parse::<WorkspaceId>().unwrap(), a);
    }

    #[test]
    fn bad_ids_are_rejected() {
        assert_eq!("".parse::<WorkspaceId>(), Err(IdError::Length(0)));
        assert!(matches!("ab-c".parse::<WorkspaceId>(), Err(IdError::Charset(_))));
        assert!(matches!("ABC".parse::<WorkspaceId>(), Err(IdError::Charset(_))));
        assert!("a".repeat(64).parse::<WorkspaceId>().is_err());
        assert!(serde_json::from_str::<WorkspaceId>("\"x.y\"").is_err());
    }

    #[test]
    fn tokens_are_hex() {
        let t = random_token(16);
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(t, random_token(16));
    }
}
