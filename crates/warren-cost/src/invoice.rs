//! Invoice preview and gross margin per tenant, from metered usage.
//!
//! Revenue follows the study's model: a flat price per workspace-hour for
//! the tenant's class. Cost follows the resources used: running time in
//! units of the setup's workspace shape (the larger of vCPU-hours / shape
//! vCPU and GiB-hours / shape GiB) times the setup's per-workspace figure,
//! so a tenant running big workspaces shows a thinner margin. Paused time is
//! neither billed nor costed (its memory is released on the local backend).
//! Warm-pool time is infrastructure: a cost with no revenue, shown apart.
//! Time spent on another backend (E2B) is costed at that backend's setup,
//! so a tenant overflowing to E2B shows the thinner margin it really has.

use serde::Serialize;

use crate::{Catalog, Setup};

/// Metered usage of one tenant over the invoiced period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantUsage {
    pub tenant: String,
    /// Where the time was spent (`local`, `e2b`, …): picks the setup it is
    /// costed at.
    pub backend: String,
    pub running_seconds: f64,
    pub paused_seconds: f64,
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceLine {
    pub tenant: String,
    pub class: String,
    pub running_hours: f64,
    pub paused_hours: f64,
    pub vcpu_hours: f64,
    pub gib_hours: f64,
    pub revenue_jpy: f64,
    pub cost_usd: f64,
    pub cost_jpy: f64,
    /// Percent; None when there is no revenue.
    pub margin_pct: Option<f64>,
    /// Cost in USD per backend the time ran on, with the setup it is priced at.
    pub by_backend: Vec<BackendCost>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendCost {
    pub backend: String,
    pub setup: String,
    pub running_hours: f64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    pub setup: String,
    pub jpy_per_usd: f64,
    pub lines: Vec<InvoiceLine>,
    /// Idle warm-pool members: cost without revenue.
    pub infrastructure: InvoiceLine,
    pub revenue_jpy: f64,
    pub cost_jpy: f64,
    pub margin_pct: Option<f64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvoiceError {
    #[error("unknown setup {0:?} (the catalog has: {1})")]
    UnknownSetup(String, String),
    #[error("tenant {tenant}: unknown class {class:?} (the catalog has: {known})")]
    UnknownClass { tenant: String, class: String, known: String },
}

/// One tenant's line: revenue on all its running time, cost per backend at
/// that backend's setup.
fn line(catalog: &Catalog, usage: &[(&Setup, &TenantUsage)], tenant: &str, class: &str, price: f64) -> InvoiceLine {
    let mut l = InvoiceLine {
        tenant: tenant.into(),
        class: class.into(),
        running_hours: 0.0,
        paused_hours: 0.0,
        vcpu_hours: 0.0,
        gib_hours: 0.0,
        revenue_jpy: 0.0,
        cost_usd: 0.0,
        cost_jpy: 0.0,
        margin_pct: None,
        by_backend: Vec::new(),
    };
    for (setup, u) in usage {
        let units = (u.vcpu_seconds / setup.workspace.vcpu).max(u.gib_seconds / setup.workspace.memory_gib) / 3600.0;
        let cost_usd = units * setup.usd_per_workspace_hour();
        l.running_hours += u.running_seconds / 3600.0;
        l.paused_hours += u.paused_seconds / 3600.0;
        l.vcpu_hours += u.vcpu_seconds / 3600.0;
        l.gib_hours += u.gib_seconds / 3600.0;
        l.cost_usd += cost_usd;
        match l.by_backend.iter_mut().find(|b| b.backend == u.backend) {
            Some(b) => {
                b.running_hours += u.running_seconds / 3600.0;
                b.cost_usd += cost_usd;
            }
            None => l.by_backend.push(BackendCost {
                backend: u.backend.clone(),
                setup: setup.id.clone(),
                running_hours: u.running_seconds / 3600.0,
                cost_usd,
            }),
        }
    }
    l.by_backend.sort_by(|a, b| a.backend.cmp(&b.backend));
    l.revenue_jpy = l.running_hours * price;
    l.cost_jpy = l.cost_usd * catalog.jpy_per_usd;
    l.margin_pct = (l.revenue_jpy > 0.0).then(|| 100.0 * (1.0 - l.cost_jpy / l.revenue_jpy));
    l
}

/// Prices `usage` (entries per tenant and backend; `infra_tenant` is the
/// pool's pseudo-tenant), each tenant in its class (`class_of`), each
/// backend's time at its setup (`setup_of`; `default_setup` when it names
/// none).
pub fn invoice(
    catalog: &Catalog,
    default_setup: &str,
    usage: &[TenantUsage],
    infra_tenant: &str,
    class_of: &dyn Fn(&str) -> String,
    setup_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Invoice, InvoiceError> {
    let find = |id: &str| {
        catalog.setup(id).ok_or_else(|| {
            InvoiceError::UnknownSetup(
                id.into(),
                catalog.setups.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
            )
        })
    };
    let setup = find(default_setup)?;
    let mut per_tenant: std::collections::BTreeMap<&str, Vec<(&Setup, &TenantUsage)>> = Default::default();
    for u in usage {
        let s = match setup_of(&u.backend) {
            Some(id) => find(&id)?,
            None => setup,
        };
        per_tenant.entry(u.tenant.as_str()).or_default().push((s, u));
    }
    let infra = per_tenant.remove(infra_tenant).unwrap_or_default();
    let mut lines = Vec::new();
    for (tenant, usage) in per_tenant {
        let class = class_of(tenant);
        let price = catalog.class(&class).map(|c| c.jpy_per_hour).ok_or_else(|| InvoiceError::UnknownClass {
            tenant: tenant.into(),
            class: class.clone(),
            known: catalog.classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        lines.push(line(catalog, &usage, tenant, &class, price));
    }
    let infrastructure = line(catalog, &infra, infra_tenant, "infrastructure", 0.0);
    let revenue_jpy: f64 = lines.iter().map(|l| l.revenue_jpy).sum();
    let cost_jpy: f64 = lines.iter().map(|l| l.cost_jpy).sum::<f64>() + infrastructure.cost_jpy;
    Ok(Invoice {
        setup: setup.id.clone(),
        jpy_per_usd: catalog.jpy_per_usd,
        lines,
        infrastructure,
        revenue_jpy,
        cost_jpy,
        margin_pct: (revenue_jpy > 0.0).then(|| 100.0 * (1.0 - cost_jpy / revenue_jpy)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(tenant: &str, hours: f64, vcpu: f64, gib: f64) -> TenantUsage {
        TenantUsage {
            tenant: tenant.into(),
            backend: "local".into(),
            running_seconds: hours * 3600.0,
            paused_seconds: 0.0,
            vcpu_seconds: hours * 3600.0 * vcpu,
            gib_seconds: hours * 3600.0 * gib,
        }
    }

    #[test]
    fn the_studys_shape_at_the_studys_price_gives_its_margin() {
        let c = Catalog::embedded();
        // 176 h of one 0.5 vCPU / 1 GiB workspace at ¥100 on ECS on-demand.
        let u = [usage("acme", 176.0, 0.5, 1.0), usage("__pool__", 10.0, 0.5, 1.0)];
        let inv = invoice(&c, "ecs-ec2-od", &u, "__pool__", &|_| "standard".into(), &|_| None).unwrap();
        assert_eq!(inv.lines.len(), 1);
        let l = &inv.lines[0];
        assert_eq!(l.revenue_jpy, 17_600.0);
        let per_hour = c.setup("ecs-ec2-od").unwrap().usd_per_workspace_hour();
        assert!((l.cost_usd - 176.0 * per_hour).abs() < 1e-9);
        assert_eq!(l.margin_pct.unwrap().round(), 97.0);
        // The pool's ten hours are a cost without revenue.
        assert!((inv.infrastructure.cost_usd - 10.0 * per_hour).abs() < 1e-9);
        assert_eq!(inv.infrastructure.revenue_jpy, 0.0);
        assert!(inv.margin_pct.unwrap() < l.margin_pct.unwrap());
    }

    #[test]
    fn bigger_workspaces_cost_more_and_classes_price_differently() {
        let c = Catalog::embedded();
        let u = [usage("small", 10.0, 0.5, 1.0), usage("big", 10.0, 2.0, 1.0), usage("ent", 10.0, 0.5, 1.0)];
        let class = |t: &str| if t == "ent" { "enterprise".to_string() } else { "standard".to_string() };
        let inv = invoice(&c, "fargate", &u, "__pool__", &class, &|_| None).unwrap();
        let get = |t: &str| inv.lines.iter().find(|l| l.tenant == t).unwrap().clone();
        assert!((get("big").cost_usd / get("small").cost_usd - 4.0).abs() < 1e-9, "2 vCPU = 4 shapes of 0.5");
        assert_eq!(get("ent").revenue_jpy, 2.0 * get("small").revenue_jpy);
        assert!(get("big").margin_pct < get("small").margin_pct);
    }

    #[test]
    fn time_on_e2b_is_costed_at_e2bs_rate() {
        let c = Catalog::embedded();
        let own = usage("acme", 10.0, 0.5, 1.0);
        let on_e2b = TenantUsage { backend: "e2b".into(), ..usage("acme", 10.0, 0.5, 1.0) };
        let setup_of = |b: &str| (b == "e2b").then(|| "e2b-pro".to_string());
        let inv =
            invoice(&c, "ecs-ec2-od", &[own.clone(), on_e2b], "__pool__", &|_| "standard".into(), &setup_of).unwrap();
        let l = &inv.lines[0];
        assert_eq!(l.running_hours, 20.0);
        assert_eq!(l.revenue_jpy, 2000.0, "revenue does not depend on the backend");
        // Units of each setup's workspace shape: the larger of the vCPU and memory ratios.
        let cost = |id: &str| {
            let s = c.setup(id).unwrap();
            10.0 * (0.5 / s.workspace.vcpu).max(1.0 / s.workspace.memory_gib) * s.usd_per_workspace_hour()
        };
        let (ecs, e2b) = (cost("ecs-ec2-od"), cost("e2b-pro"));
        assert!(e2b > ecs, "E2B costs more per hour than our own fleet");
        assert!((l.cost_usd - (ecs + e2b)).abs() < 1e-9);
        let names: Vec<_> = l.by_backend.iter().map(|b| (b.backend.as_str(), b.setup.as_str())).collect();
        assert_eq!(names, [("e2b", "e2b-pro"), ("local", "ecs-ec2-od")]);
        // The same hours all on the own fleet give a fatter margin.
        let all_own =
            invoice(&c, "ecs-ec2-od", &[own.clone(), own], "__pool__", &|_| "standard".into(), &|_| None).unwrap();
        assert!(all_own.lines[0].margin_pct > l.margin_pct);
        // A backend mapped to a setup the catalog lacks is an error, not a guess.
        let e = invoice(&c, "ecs-ec2-od", &[usage("a", 1.0, 1.0, 1.0)], "__pool__", &|_| "standard".into(), &|_| {
            Some("nope".into())
        })
        .unwrap_err();
        assert!(e.to_string().contains("unknown setup \"nope\""), "{e}");
    }

    #[test]
    fn unknown_setup_or_class_is_a_clear_error() {
        let c = Catalog::embedded();
        let e = invoice(&c, "mainframe", &[], "__pool__", &|_| "standard".into(), &|_| None).unwrap_err();
        assert!(e.to_string().contains("unknown setup \"mainframe\""), "{e}");
        let e = invoice(&c, "fargate", &[usage("a", 1.0, 1.0, 1.0)], "__pool__", &|_| "gold".into(), &|_| None)
            .unwrap_err();
        assert!(e.to_string().contains("unknown class \"gold\""), "{e}");
        // No usage, no revenue, no margin to speak of.
        let inv = invoice(&c, "fargate", &[], "__pool__", &|_| "standard".into(), &|_| None).unwrap();
        assert_eq!(inv.margin_pct, None);
    }
}
