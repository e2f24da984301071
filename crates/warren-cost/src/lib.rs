//! The cost model: a price catalog (what workspaces sell for, what each
//! backend costs), the design study's tables computed from it, invoices and
//! margins from metered usage, and a fleet simulator that runs the real
//! warm-pool policy in simulated time.
//!
//! Pure code: no I/O beyond reading a catalog file, so every figure is
//! reproducible in tests.

pub mod invoice;
pub mod simulate;
pub mod svg;
pub mod tables;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The catalog shipped with warren (`crates/warren-cost/catalog.toml`).
pub const DEFAULT_CATALOG: &str = include_str!("../catalog.toml");

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("price catalog: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("price catalog: {0}")]
    Invalid(String),
}

/// A workspace class a tenant pays for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    pub name: String,
    pub jpy_per_hour: f64,
    #[serde(default)]
    pub position: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceShape {
    pub vcpu: f64,
    pub memory_gib: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pricing {
    /// Instances bought by the hour and packed with workspaces.
    Instance,
    /// Billed per vCPU-hour and GiB-hour of each workspace.
    Resource,
}

/// One way to run workspaces, with what it costs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    pub id: String,
    pub name: String,
    pub pricing: Pricing,
    pub workspace: WorkspaceShape,
    #[serde(default)]
    pub instance: String,
    #[serde(default)]
    pub vcpu: u32,
    #[serde(default)]
    pub memory_gib: f64,
    #[serde(default)]
    pub reserved_memory_gib: f64,
    #[serde(default = "one")]
    pub cpu_overcommit: f64,
    #[serde(default)]
    pub usd_per_hour: f64,
    #[serde(default)]
    pub discount: f64,
    #[serde(default)]
    pub usd_per_vcpu_hour: f64,
    #[serde(default)]
    pub usd_per_gib_hour: f64,
    /// What the study's per-hour table states for this setup.
    #[serde(default)]
    pub quoted_usd_per_hour: Option<f64>,
    /// Time from request to a usable workspace without a warm pool, ms (low, high).
    pub start_ms: [u64; 2],
    pub operations: u32,
    pub available_today: u32,
    pub isolation: String,
    /// How the study's decision table names it.
    pub family: String,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub hours_per_month: f64,
    pub billable_hours_per_month: f64,
    pub jpy_per_usd: f64,
    pub concurrency: Vec<u32>,
    pub classes: Vec<Class>,
    pub setups: Vec<Setup>,
    pub isolation_rank: BTreeMap<String, u32>,
}

impl Setup {
    /// Workspaces that fit on one instance (instance pricing only).
    pub fn per_instance(&self) -> u32 {
        if self.pricing != Pricing::Instance {
            return 0;
        }
        let by_cpu = (self.vcpu as f64 * self.cpu_overcommit / self.workspace.vcpu + 1e-9).floor();
        let by_mem = ((self.memory_gib - self.reserved_memory_gib) / self.workspace.memory_gib + 1e-9).floor();
        by_cpu.min(by_mem).max(0.0) as u32
    }

    /// Hourly price of one instance after discounts.
    pub fn instance_usd_per_hour(&self) -> f64 {
        self.usd_per_hour * (1.0 - self.discount)
    }

    /// What one workspace costs per hour, derived from the inputs.
    pub fn usd_per_workspace_hour(&self) -> f64 {
        match self.pricing {
            Pricing::Instance => self.instance_usd_per_hour() / self.per_instance().max(1) as f64,
            Pricing::Resource => {
                self.workspace.vcpu * self.usd_per_vcpu_hour + self.workspace.memory_gib * self.usd_per_gib_hour
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        let id = &self.id;
        if self.workspace.vcpu <= 0.0 || self.workspace.memory_gib <= 0.0 {
            return Err(format!("setup {id}: workspace vcpu and memory_gib must be positive"));
        }
        if !(0.0..1.0).contains(&self.discount) {
            return Err(format!("setup {id}: discount must be in [0, 1), got {}", self.discount));
        }
        match self.pricing {
            Pricing::Instance => {
                if self.usd_per_hour <= 0.0 {
                    return Err(format!("setup {id}: instance pricing needs usd_per_hour > 0"));
                }
                if self.per_instance() == 0 {
                    return Err(format!(
                        "setup {id}: not one workspace ({} vCPU, {} GiB) fits on {} ({} vCPU, {} GiB)",
                        self.workspace.vcpu, self.workspace.memory_gib, self.instance, self.vcpu, self.memory_gib
                    ));
                }
            }
            Pricing::Resource => {
                if self.usd_per_vcpu_hour < 0.0 || self.usd_per_gib_hour < 0.0 || self.usd_per_workspace_hour() <= 0.0 {
                    return Err(format!("setup {id}: resource pricing needs usd_per_vcpu_hour/usd_per_gib_hour"));
                }
            }
        }
        if self.start_ms[0] > self.start_ms[1] {
            return Err(format!("setup {id}: start_ms must be [low, high]"));
        }
        Ok(())
    }
}

impl Catalog {
    /// The catalog shipped with warren.
    pub fn embedded() -> Self {
        // The embedded catalog is tested to parse and validate.
        Self::parse(DEFAULT_CATALOG).unwrap_or_else(|e| panic!("embedded catalog is broken: {e}"))
    }

    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let c: Catalog = toml::from_str(text)?;
        c.validate().map_err(CatalogError::Invalid)?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CatalogError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    fn validate(&self) -> Result<(), String> {
        if self.hours_per_month <= 0.0 || self.billable_hours_per_month <= 0.0 || self.jpy_per_usd <= 0.0 {
            return Err("hours_per_month, billable_hours_per_month and jpy_per_usd must be positive".into());
        }
        if self.classes.is_empty() || self.setups.is_empty() {
            return Err("needs at least one class and one setup".into());
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.setups {
            if !seen.insert(&s.id) {
                return Err(format!("setup id {} appears twice", s.id));
            }
            s.validate()?;
            if !self.isolation_rank.contains_key(&s.isolation) {
                return Err(format!("setup {}: isolation {:?} is not in [isolation_rank]", s.id, s.isolation));
            }
        }
        for c in &self.classes {
            if c.jpy_per_hour <= 0.0 {
                return Err(format!("class {}: jpy_per_hour must be positive", c.name));
            }
        }
        Ok(())
    }

    pub fn setup(&self, id: &str) -> Option<&Setup> {
        self.setups.iter().find(|s| s.id == id)
    }

    pub fn class(&self, name: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// Monthly cost of `n` workspaces running 24/7 on a setup, USD.
    pub fn monthly_usd(&self, setup: &Setup, n: u32) -> f64 {
        setup.usd_per_workspace_hour() * self.hours_per_month * n as f64
    }

    /// Gross margin (0..1) of a setup at a price, per workspace-hour.
    pub fn margin(&self, usd_per_hour: f64, jpy_price: f64) -> f64 {
        1.0 - usd_per_hour * self.jpy_per_usd / jpy_price
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_parses_and_packs() {
        let c = Catalog::embedded();
        assert_eq!(c.setup("ecs-ec2-od").unwrap().per_instance(), 8);
        assert_eq!(c.setup("firecracker-c8i").unwrap().per_instance(), 32);
        assert_eq!(c.setup("firecracker-metal").unwrap().per_instance(), 736);
        assert_eq!(c.setup("fargate").unwrap().per_instance(), 0);
        // Fargate: 0.5 vCPU x $0.04048 + 1 GiB x $0.004445.
        assert!((c.setup("fargate").unwrap().usd_per_workspace_hour() - 0.024685).abs() < 1e-12);
    }

    #[test]
    fn bad_catalogs_are_refused_with_the_reason() {
        let broken = DEFAULT_CATALOG.replace("discount = 0.5", "discount = 1.5");
        let e = Catalog::parse(&broken).unwrap_err().to_string();
        assert!(e.contains("discount must be in [0, 1)"), "{e}");
        let broken = DEFAULT_CATALOG.replace("vcpu = 8\n", "vcpu = 0\n");
        let e = Catalog::parse(&broken).unwrap_err().to_string();
        assert!(e.contains("not one workspace"), "{e}");
        let broken = DEFAULT_CATALOG.replace("isolation = \"container\"", "isolation = \"paper\"");
        let e = Catalog::parse(&broken).unwrap_err().to_string();
        assert!(e.contains("isolation_rank"), "{e}");
        let e = Catalog::parse("hours_per_month = 1\nbogus = 2").unwrap_err().to_string();
        assert!(e.contains("bogus") || e.contains("unknown field"), "{e}");
    }
}
