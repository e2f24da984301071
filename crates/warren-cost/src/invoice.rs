//! Invoice preview and gross margin per tenant, from metered usage.
//!
//! Revenue follows the study's model: a flat price per workspace-hour for
//! the tenant's class. Cost follows the resources used: running time in
//! units of the setup's workspace shape (the larger of vCPU-hours / shape
//! vCPU and GiB-hours / shape GiB) times the setup's per-workspace figure,
//! so a tenant running big workspaces shows a thinner margin. Paused time is
//! neither billed nor costed (its memory is released on the local backend).
//! Warm-pool time is infrastructure: a cost with no revenue, shown apart.

use serde::Serialize;

use crate::{Catalog, Setup};

/// Metered usage of one tenant over the invoiced period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantUsage {
    pub tenant: String,
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

fn line(catalog: &Catalog, setup: &Setup, u: &TenantUsage, class: &str, price: f64) -> InvoiceLine {
    let units = (u.vcpu_seconds / setup.workspace.vcpu).max(u.gib_seconds / setup.workspace.memory_gib) / 3600.0;
    let cost_usd = units * setup.usd_per_workspace_hour();
    let revenue_jpy = u.running_seconds / 3600.0 * price;
    let cost_jpy = cost_usd * catalog.jpy_per_usd;
    InvoiceLine {
        tenant: u.tenant.clone(),
        class: class.into(),
        running_hours: u.running_seconds / 3600.0,
        paused_hours: u.paused_seconds / 3600.0,
        vcpu_hours: u.vcpu_seconds / 3600.0,
        gib_hours: u.gib_seconds / 3600.0,
        revenue_jpy,
        cost_usd,
        cost_jpy,
        margin_pct: (revenue_jpy > 0.0).then(|| 100.0 * (1.0 - cost_jpy / revenue_jpy)),
    }
}

/// Prices `usage` (one entry per tenant; `infra_tenant` is the pool's
/// pseudo-tenant) on `setup`, each tenant in its class (`class_of`).
pub fn invoice(
    catalog: &Catalog,
    setup_id: &str,
    usage: &[TenantUsage],
    infra_tenant: &str,
    class_of: &dyn Fn(&str) -> String,
) -> Result<Invoice, InvoiceError> {
    let setup = catalog.setup(setup_id).ok_or_else(|| {
        InvoiceError::UnknownSetup(
            setup_id.into(),
            catalog.setups.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
        )
    })?;
    let mut lines = Vec::new();
    let mut infra = TenantUsage { tenant: infra_tenant.into(), ..Default::default() };
    for u in usage {
        if u.tenant == infra_tenant {
            infra.running_seconds += u.running_seconds;
            infra.paused_seconds += u.paused_seconds;
            infra.vcpu_seconds += u.vcpu_seconds;
            infra.gib_seconds += u.gib_seconds;
            continue;
        }
        let class = class_of(&u.tenant);
        let price = catalog.class(&class).map(|c| c.jpy_per_hour).ok_or_else(|| InvoiceError::UnknownClass {
            tenant: u.tenant.clone(),
            class: class.clone(),
            known: catalog.classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        lines.push(line(catalog, setup, u, &class, price));
    }
    lines.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    let infrastructure = line(catalog, setup, &infra, "infrastructure", 0.0);
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
        let inv = invoice(&c, "ecs-ec2-od", &u, "__pool__", &|_| "standard".into()).unwrap();
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
        let inv = invoice(&c, "fargate", &u, "__pool__", &class).unwrap();
        let get = |t: &str| inv.lines.iter().find(|l| l.tenant == t).unwrap().clone();
        assert!((get("big").cost_usd / get("small").cost_usd - 4.0).abs() < 1e-9, "2 vCPU = 4 shapes of 0.5");
        assert_eq!(get("ent").revenue_jpy, 2.0 * get("small").revenue_jpy);
        assert!(get("big").margin_pct < get("small").margin_pct);
    }

    #[test]
    fn unknown_setup_or_class_is_a_clear_error() {
        let c = Catalog::embedded();
        let e = invoice(&c, "mainframe", &[], "__pool__", &|_| "standard".into()).unwrap_err();
        assert!(e.to_string().contains("unknown setup \"mainframe\""), "{e}");
        let e = invoice(&c, "fargate", &[usage("a", 1.0, 1.0, 1.0)], "__pool__", &|_| "gold".into()).unwrap_err();
        assert!(e.to_string().contains("unknown class \"gold\""), "{e}");
        // No usage, no revenue, no margin to speak of.
        let inv = invoice(&c, "fargate", &[], "__pool__", &|_| "standard".into()).unwrap();
        assert_eq!(inv.margin_pct, None);
    }
}
