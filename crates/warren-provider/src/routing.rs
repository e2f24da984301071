//! Several backends behind one: routes each create by template or tenant,
//! and overflows to another backend when the chosen one is full or down.
//! This is how a deployment sends some work to E2B and the rest to its own
//! fleet, or moves off E2B by changing the routes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use warren_core::{TenantId, WorkspaceId};

use crate::{Capabilities, CreateSpec, ProviderError, Result, SandboxInfo, SandboxProvider, Stats, TemplateInfo};

/// Sends matching creates to `backend`. An empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub backend: String,
    #[serde(default)]
    pub templates: Vec<String>,
    #[serde(default)]
    pub tenants: Vec<String>,
}

pub struct RoutingProvider {
    backends: Vec<(String, Arc<dyn SandboxProvider>)>,
    routes: Vec<Route>,
    default: usize,
    overflow: Option<usize>,
    owners: Mutex<HashMap<WorkspaceId, usize>>,
}

impl RoutingProvider {
    /// `backends` by name; unmatched creates go to `default`; creates the
    /// chosen backend cannot take (out of capacity, unavailable) go to
    /// `overflow`.
    pub fn new(
        backends: Vec<(String, Arc<dyn SandboxProvider>)>,
        routes: Vec<Route>,
        default: &str,
        overflow: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let index = |n: &str| {
            backends.iter().position(|(b, _)| b == n).ok_or_else(|| {
                format!(
                    "backend {n:?} is not configured (have: {})",
                    backends.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>().join(", ")
                )
            })
        };
        let default = index(default)?;
        let overflow = overflow.map(index).transpose()?;
        for r in &routes {
            index(&r.backend)?;
        }
        Ok(RoutingProvider { backends, routes, default, overflow, owners: Mutex::default() })
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<WorkspaceId, usize>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn choose(&self, spec: &CreateSpec) -> usize {
        self.route(&spec.template, spec.tenant.as_ref())
    }

    /// The first matching route's backend. A route naming tenants never
    /// matches a create for nobody (a warm-pool member).
    fn route(&self, template: &str, tenant: Option<&TenantId>) -> usize {
        self.routes
            .iter()
            .find(|r| {
                (r.templates.is_empty() || r.templates.iter().any(|t| t == template))
                    && (r.tenants.is_empty() || tenant.is_some_and(|tn| r.tenants.iter().any(|t| tn == t.as_str())))
            })
            .and_then(|r| self.backends.iter().position(|(b, _)| *b == r.backend))
            .unwrap_or(self.default)
    }

    /// Which backend holds `id` (asked around once, then remembered).
    async fn locate(&self, id: &WorkspaceId) -> Result<usize> {
        if let Some(i) = self.owners().get(id).copied() {
            return Ok(i);
        }
        for (i, (_, b)) in self.backends.iter().enumerate() {
            match b.inspect(id).await {
                Ok(_) => {
                    self.owners().insert(id.clone(), i);
                    return Ok(i);
                }
                Err(ProviderError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(ProviderError::NotFound(id.to_string()))
    }

    fn backend(&self, i: usize) -> &Arc<dyn SandboxProvider> {
        &self.backends[i].1
    }
}

#[async_trait]
impl SandboxProvider for RoutingProvider {
    fn name(&self) -> &str {
        "routed"
    }

    fn capabilities(&self) -> Capabilities {
        let first = self.backend(self.default).capabilities();
        let mut c = first.clone();
        for (_, b) in &self.backends {
            let o = b.capabilities();
            c.pause &= o.pause;
            c.isolated_filesystem &= o.isolated_filesystem;
            c.survives_server_restart &= o.survives_server_restart;
            c.reachable_from_any_host &= o.reachable_from_any_host;
            c.isolation = c.isolation.min(o.isolation);
            c.network_modes.retain(|m| o.network_modes.contains(m));
        }
        if c.network_modes.is_empty() {
            c.network_modes = first.network_modes;
        }
        c
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        let mut out: Vec<TemplateInfo> = Vec::new();
        for (name, b) in &self.backends {
            for mut t in b.templates().await? {
                if !out.iter().any(|o| o.name == t.name) {
                    t.description = format!("{} [{name}]", t.description);
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo> {
        let first = self.choose(spec);
        let result = self.backend(first).create(spec).await;
        let (i, result) = match (result, self.overflow) {
            (Err(ProviderError::Capacity(_) | ProviderError::Unavailable(_)), Some(o)) if o != first => {
                (o, self.backend(o).create(spec).await)
            }
            (r, _) => (first, r),
        };
        let info = result?;
        self.owners().insert(spec.id.clone(), i);
        Ok(info)
    }

    async fn inspect(&self, id: &WorkspaceId) -> Result<SandboxInfo> {
        let i = self.locate(id).await?;
        self.backend(i).inspect(id).await
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = Vec::new();
        for (i, (_, b)) in self.backends.iter().enumerate() {
            for s in b.list().await? {
                self.owners().insert(s.id.clone(), i);
                out.push(s);
            }
        }
        Ok(out)
    }

    async fn pause(&self, id: &WorkspaceId) -> Result<()> {
        let i = self.locate(id).await?;
        self.backend(i).pause(id).await
    }

    async fn resume(&self, id: &WorkspaceId) -> Result<()> {
        let i = self.locate(id).await?;
        self.backend(i).resume(id).await
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<()> {
        let i = self.locate(id).await?;
        self.backend(i).stop(id).await
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<()> {
        let i = match self.locate(id).await {
            Ok(i) => i,
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.backend(i).destroy(id).await?;
        self.owners().remove(id);
        Ok(())
    }

    async fn stats(&self, id: &WorkspaceId) -> Result<Stats> {
        let i = self.locate(id).await?;
        self.backend(i).stats(id).await
    }

    async fn backend_of(&self, id: &WorkspaceId) -> Result<String> {
        Ok(self.backends[self.locate(id).await?].0.clone())
    }

    fn placement(&self, template: &str, tenant: Option<&TenantId>) -> String {
        self.backends[self.route(template, tenant)].0.clone()
    }

    async fn set_deadline(&self, id: &WorkspaceId, seconds_from_now: u64) -> Result<()> {
        let i = self.locate(id).await?;
        self.backend(i).set_deadline(id, seconds_from_now).await
    }

    /// Imports go to the default backend.
    async fn import_template(&self, name: &str, archive: &std::path::Path) -> Result<TemplateInfo> {
        self.backend(self.default).import_template(name, archive).await
    }
}
