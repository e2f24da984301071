//! Safe defaults for what one workspace and one tenant may take, as the
//! server's configuration states them: every limit is on unless set to
//! `"unlimited"` on purpose.
//!
//! ```toml
//! [max_size]            # per workspace
//! millicpus = 4000
//! memory_mib = 8192
//! disk_mib = 20480
//! pids = 4096
//!
//! [default_quota]       # per tenant ([tenant_quotas.<tenant>] alike)
//! max_workspaces = 100
//! max_millicpus = 64000
//! max_memory_mib = 131072
//! max_creates_per_minute = "unlimited"
//! ```

use serde::Deserialize;

/// A number, or the word `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    At(u64),
    Unlimited,
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Limit::At(n)),
            Raw::Word(w) if w == "unlimited" => Ok(Limit::Unlimited),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("expected a number or \"unlimited\", got {w:?}"))),
        }
    }
}

impl Limit {
    fn get(self) -> Option<u64> {
        match self {
            Limit::At(n) => Some(n),
            Limit::Unlimited => None,
        }
    }

    fn get_u32(self, what: &str) -> anyhow::Result<Option<u32>> {
        self.get().map(|n| u32::try_from(n).map_err(|_| anyhow::anyhow!("{what} = {n} is too large"))).transpose()
    }
}

/// `[max_size]`: the largest workspace a client may ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaxSize {
    pub millicpus: Limit,
    pub memory_mib: Limit,
    pub disk_mib: Limit,
    pub pids: Limit,
}

impl Default for MaxSize {
    fn default() -> Self {
        MaxSize {
            millicpus: Limit::At(4_000),
            memory_mib: Limit::At(8_192),
            disk_mib: Limit::At(20_480),
            pids: Limit::At(4_096),
        }
    }
}

impl MaxSize {
    pub fn to_cap(&self) -> anyhow::Result<warren_orchestrator::SizeCap> {
        Ok(warren_orchestrator::SizeCap {
            millicpus: self.millicpus.get_u32("max_size.millicpus")?,
            memory_mib: self.memory_mib.get_u32("max_size.memory_mib")?,
            disk_mib: self.disk_mib.get_u32("max_size.disk_mib")?,
            pids: self.pids.get_u32("max_size.pids")?,
        })
    }
}

/// `[default_quota]` and `[tenant_quotas.<tenant>]`: what one tenant may
/// hold at once. Keys left out keep the safe default, not "no limit".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSection {
    pub max_workspaces: Limit,
    pub max_millicpus: Limit,
    pub max_memory_mib: Limit,
    pub max_creates_per_minute: Limit,
}

impl Default for QuotaSection {
    fn default() -> Self {
        QuotaSection {
            max_workspaces: Limit::At(100),
            max_millicpus: Limit::At(64_000),
            max_memory_mib: Limit::At(131_072),
            max_creates_per_minute: Limit::Unlimited,
        }
    }
}

impl QuotaSection {
    pub fn to_quota(&self) -> warren_orchestrator::Quota {
        warren_orchestrator::Quota {
            max_workspaces: self.max_workspaces.get().map(|n| n as usize),
            max_millicpus: self.max_millicpus.get(),
            max_memory_mib: self.max_memory_mib.get(),
            max_creates_per_minute: self.max_creates_per_minute.get().map(|n| n as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        q: QuotaSection,
        #[serde(default)]
        s: MaxSize,
    }

    #[test]
    fn defaults_are_on_and_unlimited_is_explicit() {
        let d: Doc = toml::from_str("").unwrap();
        assert_eq!(d.q.to_quota().max_workspaces, Some(100));
        assert_eq!(d.s.to_cap().unwrap().memory_mib, Some(8_192));
        let d: Doc = toml::from_str("[q]\nmax_workspaces = 5\n[s]\npids = \"unlimited\"").unwrap();
        let q = d.q.to_quota();
        assert_eq!(q.max_workspaces, Some(5));
        assert_eq!(q.max_millicpus, Some(64_000), "a key left out keeps its safe default");
        assert_eq!(d.s.to_cap().unwrap().pids, None);
        assert!(toml::from_str::<Doc>("[q]\nmax_workspaces = \"lots\"").is_err());
        assert!(toml::from_str::<Doc>("[s]\nmillicpus = 99999999999").unwrap().s.to_cap().is_err());
    }
}
