use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A tenant: 1 to 63 characters of `[A-Za-z0-9_-]`, except `__pool__`
/// (reserved: logs of older versions name the warm pool so; no version
/// ever accepted it as a tenant). Every
/// workspace a client can see belongs to exactly one; warm-pool members
/// belong to none (they are infrastructure until claimed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant must be 1 to 63 of a-z A-Z 0-9 - _ , not __pool__, got {0:?}")]
pub struct TenantError(pub String);

impl TenantId {
    pub fn new(s: impl Into<String>) -> Result<Self, TenantError> {
        let s = s.into();
        let ok = (1..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && s != "__pool__";
        if ok {
            Ok(TenantId(s))
        } else {
            Err(TenantError(s))
        }
    }

    /// `default`: the tenant of the admin key a fresh server makes.
    pub fn operator() -> Self {
        TenantId("default".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = TenantError;
    fn from_str(s: &str) -> Result<Self, TenantError> {
        TenantId::new(s)
    }
}

impl TryFrom<String> for TenantId {
    type Error = TenantError;
    fn try_from(s: String) -> Result<Self, TenantError> {
        TenantId::new(s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for TenantId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TenantId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_on_parse_and_deserialise() {
        assert!(TenantId::new("acme_co-1").is_ok());
        for bad in ["", "a b", "é", "a/b", "__pool__", &"x".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<TenantId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"no way\"").is_err());
        assert_eq!(serde_json::to_string(&TenantId::new("t").unwrap()).unwrap(), "\"t\"");
    }
}
