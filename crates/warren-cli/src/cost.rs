//! `warren cost`: the design study's tables from the price catalog, and
//! fleet simulations that run the real warm-pool policy in simulated time.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use warren_cost::simulate::{self, Profile, SimConfig};
use warren_cost::Catalog;

#[derive(Debug, clap::Args)]
pub struct CostArgs {
    /// Price catalog (TOML). Default: the one shipped with warren
    /// (crates/warren-cost/catalog.toml).
    #[arg(long, global = true)]
    pub catalog: Option<PathBuf>,
    /// Price per workspace-hour the margins are computed at, yen.
    #[arg(long, default_value_t = 100.0)]
    pub price: f64,
    /// Concurrency of the worked example and the decision criteria.
    #[arg(long, default_value_t = 500)]
    pub at: u32,
    #[command(subcommand)]
    pub action: Option<CostCmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum CostCmd {
    /// Simulate a month of a fleet: autoscaled instances, a warm pool, and
    /// the saving against running the peak 24/7.
    Simulate(SimArgs),
}

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Setup ids from the catalog (default: every instance-priced one, plus Fargate and E2B).
    #[arg(long, value_delimiter = ',')]
    pub setup: Vec<String>,
    /// business-hours or burst.
    #[arg(long, default_value = "business-hours")]
    pub profile: String,
    /// Peak concurrent sessions (business-hours) or burst size (burst).
    #[arg(long, default_value_t = 500)]
    pub peak: u32,
    /// Share of the peak outside business hours (business-hours).
    #[arg(long, default_value_t = 0.1)]
    pub off_hours: f64,
    /// Steady sessions besides the bursts (burst).
    #[arg(long, default_value_t = 50)]
    pub base: u32,
    #[arg(long, default_value_t = 28)]
    pub days: u32,
    /// Mean session length, minutes.
    #[arg(long, default_value_t = 60.0)]
    pub session_minutes: f64,
    /// Instance boot time, seconds.
    #[arg(long, default_value_t = 90)]
    pub boot: u64,
    /// Warm pool bounds MIN:MAX, or "none".
    #[arg(long, default_value = "2:200")]
    pub pool: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write an SVG chart of the first simulated day (one file per setup:
    /// FILE, or FILE with the setup id inserted when there are several).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

fn parse_pool(s: &str) -> Result<Option<(usize, usize)>> {
    if s == "none" {
        return Ok(None);
    }
    let (a, b) = s.split_once(':').with_context(|| format!("--pool {s:?}: MIN:MAX or none"))?;
    let (min, max): (usize, usize) = (
        a.parse().with_context(|| format!("--pool min {a:?}"))?,
        b.parse().with_context(|| format!("--pool max {b:?}"))?,
    );
    if min > max {
        bail!("--pool {s}: min is above max");
    }
    Ok(Some((min, max)))
}

pub fn run(args: CostArgs, json: bool) -> Result<u8> {
    let catalog = match &args.catalog {
        Some(p) => Catalog::load(p)?,
        None => Catalog::embedded(),
    };
    if !args.price.is_finite() || args.price <= 0.0 {
        bail!("--price must be positive");
    }
    match args.action {
        None => {
            print!("{}", catalog.report(args.price, args.at));
            Ok(0)
        }
        Some(CostCmd::Simulate(s)) => simulate_cmd(&catalog, s, json),
    }
}

fn simulate_cmd(catalog: &Catalog, a: SimArgs, json: bool) -> Result<u8> {
    let profile = match a.profile.as_str() {
        "business-hours" => {
            if !(0.0..=1.0).contains(&a.off_hours) {
                bail!("--off-hours must be between 0 and 1");
            }
            Profile::BusinessHours { peak: a.peak, off_hours: a.off_hours }
        }
        "burst" => Profile::Burst { base: a.base, size: a.peak },
        other => bail!("--profile {other:?}: business-hours or burst"),
    };
    if a.days == 0 || a.days > 366 {
        bail!("--days must be between 1 and 366");
    }
    if !a.session_minutes.is_finite() || a.session_minutes <= 0.0 {
        bail!("--session-minutes must be positive");
    }
    let mut cfg = SimConfig::new(profile);
    cfg.days = a.days;
    cfg.session_minutes = a.session_minutes;
    cfg.instance_boot_s = a.boot;
    cfg.pool = parse_pool(&a.pool)?;
    cfg.seed = a.seed;
    let ids: Vec<String> = if a.setup.is_empty() {
        ["ecs-ec2-od", "ecs-ec2-ri", "fargate", "e2b-pro", "firecracker-c8i"]
            .iter()
            .filter(|id| catalog.setup(id).is_some())
            .map(|s| s.to_string())
            .collect()
    } else {
        a.setup.clone()
    };
    let mut reports = Vec::new();
    for id in &ids {
        let setup = catalog.setup(id).with_context(|| {
            format!(
                "unknown setup {id:?} (the catalog has: {})",
                catalog.setups.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?;
        eprintln!("warren: simulating {} for {} days…", setup.name, cfg.days);
        let r = simulate::run(catalog, setup, &cfg);
        if let Some(path) = &a.svg {
            let path = if ids.len() == 1 {
                path.clone()
            } else {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("chart");
                path.with_file_name(format!("{stem}-{id}.svg"))
            };
            let title = format!("{}: one simulated day", setup.name);
            let sub = format!(
                "{}; ${:.0}/month autoscaled vs ${:.0} always-on ({:.0}% saved); wait p99 {} ms",
                r.profile, r.monthly_usd, r.always_on_monthly_usd, r.saving_pct, r.wait_p99_ms
            );
            std::fs::write(&path, warren_cost::svg::day_chart(&title, &sub, &r.samples, 0))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("warren: chart written to {}", path.display());
        }
        if !json {
            println!("{}", r.render(setup));
        }
        reports.push(r);
    }
    if json {
        let out: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "setup": r.setup, "profile": r.profile, "days": r.days, "sessions": r.sessions,
                    "hits": r.hits, "misses": r.misses,
                    "waitP50Ms": r.wait_p50_ms, "waitP95Ms": r.wait_p95_ms, "waitP99Ms": r.wait_p99_ms,
                    "waitMaxMs": r.wait_max_ms, "instanceHours": r.instance_hours, "peakInstances": r.peak_instances,
                    "workspaceHours": r.workspace_hours, "poolHours": r.pool_hours, "costUsd": r.cost_usd,
                    "monthlyUsd": r.monthly_usd, "alwaysOnMonthlyUsd": r.always_on_monthly_usd,
                    "savingPct": r.saving_pct,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_bounds_parse_or_explain() {
        assert_eq!(parse_pool("none").unwrap(), None);
        assert_eq!(parse_pool("2:200").unwrap(), Some((2, 200)));
        assert!(parse_pool("5:2").unwrap_err().to_string().contains("min is above max"));
        assert!(parse_pool("x").unwrap_err().to_string().contains("MIN:MAX"));
    }
}
