//! Warm pools: workspaces created ahead of demand, proven ready, and handed
//! out on create in one atomic store update.
//!
//! A pool member is an ordinary workspace owned by the pseudo-tenant
//! [`POOL_TENANT`], hidden from listings and never reaped by timeout. It
//! joins the pool only after its agent answered and ran a real command
//! (metadata `ready=1`). A claim is a compare-and-set on the record (still
//! the pool's, still ready → the tenant's), so no two requests can get the
//! same workspace, whatever the number of server replicas sharing the store.
//! The claimed workspace is then personalised through the agent's `/init`
//! (fresh access token, environment); it never goes back to the pool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warren_core::{random_token, Size, State};
use warren_proto::client::AgentClient;
use warren_proto::http::InitRequest;
use warren_store::{EventKind, NewEvent, StoreError, WorkspaceRecord};

use crate::{CreateRequest, Error, Orchestrator, Result};

/// The pseudo-tenant owning unclaimed pool members.
pub const POOL_TENANT: &str = "__pool__";
/// Pool creates in flight at once, per pool.
const REFILL_CONCURRENCY: usize = 4;

/// One pool: how many ready workspaces of a template and size to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    pub template: String,
    #[serde(default)]
    pub size: Option<Size>,
    pub target: usize,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    in_flight: AtomicUsize,
    /// Sum and count of refill durations (create → ready), ms.
    refill_ms: AtomicU64,
    refills: AtomicU64,
}

pub struct Pools {
    specs: Vec<(PoolSpec, Arc<Counters>)>,
}

impl Pools {
    pub fn new(specs: &[PoolSpec]) -> Self {
        Pools { specs: specs.iter().map(|s| (s.clone(), Arc::default())).collect() }
    }
}

/// What a pool looks like now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub template: String,
    pub size: Size,
    pub target: usize,
    pub ready: usize,
    pub warming: usize,
    pub hits: u64,
    pub misses: u64,
    /// Mean create → ready time of refills, ms.
    pub refill_ms: u64,
}

fn is_member(r: &WorkspaceRecord, template: &str, size: &Size) -> bool {
    r.tenant == POOL_TENANT && r.template == template && r.size == *size
}

impl Orchestrator {
    fn pool_size(&self, spec: &PoolSpec) -> Size {
        spec.size.unwrap_or(self.cfg.default_size)
    }

    /// Hands out a ready pool member for this request, if a pool matches.
    pub(crate) async fn claim(&self, req: &CreateRequest, size: Size) -> Result<Option<WorkspaceRecord>> {
        let Some((spec, counters)) =
            self.pools.specs.iter().find(|(p, _)| p.template == req.template && self.pool_size(p) == size)
        else {
            return Ok(None);
        };
        let timeout = req.timeout.unwrap_or(self.cfg.default_timeout);
        self.validate_timeout(timeout)?;
        let mut candidates: Vec<WorkspaceRecord> = self
            .store
            .list_workspaces()
            .await?
            .into_iter()
            .filter(|r| {
                is_member(r, &spec.template, &size)
                    && r.state == State::Running
                    && r.metadata.get("ready").is_some_and(|v| v == "1")
            })
            .collect();
        // Start at a random member: concurrent claims then rarely race for
        // the same record (a lost race just moves on to the next).
        candidates.sort_by_key(|r| r.created_at_ms);
        if !candidates.is_empty() {
            let mut b = [0u8; 4];
            let _ = getrandom::fill(&mut b);
            let start = u32::from_le_bytes(b) as usize % candidates.len();
            candidates.rotate_left(start);
        }
        for c in candidates {
            let now = self.clock.now_ms();
            let (tenant, metadata, env) = (req.tenant.clone(), req.metadata.clone(), req.env.clone());
            let token = random_token(16);
            let new_token = token.clone();
            let claimed = self
                .store
                .update_workspace(
                    &c.id,
                    Box::new(move |r| {
                        if r.tenant != POOL_TENANT || r.state != State::Running {
                            return Err(StoreError::Rejected("already claimed".into()));
                        }
                        r.tenant = tenant.clone();
                        r.metadata = metadata;
                        r.env = env;
                        r.access_token = new_token;
                        r.created_at_ms = now;
                        r.updated_at_ms = now;
                        r.last_activity_ms = now;
                        r.expires_at_ms = now + timeout.as_millis() as u64;
                        Ok(Some(NewEvent {
                            at_ms: now,
                            workspace: r.id.clone(),
                            tenant: tenant.clone(),
                            size: r.size,
                            kind: EventKind::Claimed { tenant },
                        }))
                    }),
                )
                .await;
            let rec = match claimed {
                Ok((rec, _)) => rec,
                // Another request won this one: try the next.
                Err(StoreError::Rejected(_)) | Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            // Personalise: a fresh access token and the tenant's environment.
            let Some(ep) = rec.endpoint.as_ref().and_then(|e| e.parse().ok()) else {
                let _ = self.kill_any(&rec.id).await;
                continue;
            };
            let agent = AgentClient::new(ep);
            let init = InitRequest { access_token: Some(token), env_vars: Some(req.env.clone()), ..Default::default() };
            if agent.init(&rec.init_token, &init).await.is_err() {
                let _ = self.kill_any(&rec.id).await;
                continue;
            }
            self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&rec.id);
            self.touch(&rec.id);
            counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(rec));
        }
        counters.misses.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    /// Starts creates for every pool below its target (bounded per pool).
    pub async fn refill_pools(self: &Arc<Self>) {
        if self.pools.specs.is_empty() {
            return;
        }
        let Ok(all) = self.store.list_workspaces().await else { return };
        for (i, (spec, counters)) in self.pools.specs.iter().enumerate() {
            let size = self.pool_size(spec);
            let have = all.iter().filter(|r| is_member(r, &spec.template, &size) && r.state.is_live()).count();
            let in_flight = counters.in_flight.load(Ordering::Relaxed);
            let want = spec.target.saturating_sub(have + in_flight).min(REFILL_CONCURRENCY.saturating_sub(in_flight));
            for _ in 0..want {
                counters.in_flight.fetch_add(1, Ordering::Relaxed);
                let me = self.clone();
                tokio::spawn(async move {
                    let (spec, counters) = &me.pools.specs[i];
                    let started = me.clock.now_ms();
                    if let Err(e) = me.warm_one(spec).await {
                        eprintln!("warren: pool {}: {e}", spec.template);
                        // Do not spin on a broken template.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    } else {
                        counters.refill_ms.fetch_add(me.clock.now_ms().saturating_sub(started), Ordering::Relaxed);
                        counters.refills.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }

    /// Creates one member and admits it only after a real command ran.
    async fn warm_one(&self, spec: &PoolSpec) -> Result<()> {
        let rec = self
            .create_cold(CreateRequest {
                tenant: POOL_TENANT.into(),
                template: spec.template.clone(),
                size: spec.size,
                timeout: Some(self.cfg.max_timeout),
                env: BTreeMap::new(),
                metadata: BTreeMap::new(),
                network: None,
            })
            .await?;
        let ep =
            rec.endpoint.as_ref().and_then(|e| e.parse().ok()).ok_or_else(|| Error::Internal("no endpoint".into()))?;
        let agent = AgentClient::new(ep).with_access_token(Some(rec.access_token.clone()));
        let ok = matches!(agent.exec("true", &[]).await, Ok(out) if out.exit_code == 0);
        if !ok {
            let _ = self.kill_any(&rec.id).await;
            return Err(Error::Unavailable(format!("pool member {} failed its readiness command", rec.id)));
        }
        self.store
            .update_workspace(
                &rec.id,
                Box::new(|r| {
                    if r.tenant == POOL_TENANT {
                        r.metadata.insert("ready".into(), "1".into());
                    }
                    Ok(None)
                }),
            )
            .await?;
        Ok(())
    }

    pub async fn pool_status(&self) -> Result<Vec<PoolStatus>> {
        let all = self.store.list_workspaces().await?;
        Ok(self
            .pools
            .specs
            .iter()
            .map(|(spec, c)| {
                let size = self.pool_size(spec);
                let members: Vec<&WorkspaceRecord> =
                    all.iter().filter(|r| is_member(r, &spec.template, &size)).collect();
                let ready = members
                    .iter()
                    .filter(|r| r.state == State::Running && r.metadata.get("ready").is_some_and(|v| v == "1"))
                    .count();
                let refills = c.refills.load(Ordering::Relaxed);
                PoolStatus {
                    template: spec.template.clone(),
                    size,
                    target: spec.target,
                    ready,
                    warming: members.len() - ready,
                    hits: c.hits.load(Ordering::Relaxed),
                    misses: c.misses.load(Ordering::Relaxed),
                    refill_ms: c.refill_ms.load(Ordering::Relaxed).checked_div(refills).unwrap_or(0),
                }
            })
            .collect())
    }
}
