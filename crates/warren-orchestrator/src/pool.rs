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
//!
//! A pool with a `max` is adaptive: its target comes from
//! [`warren_core::autoscale::PoolPolicy`] (Little's law on the observed claim
//! rate and refill time, plus a burst margin). Members remember the template
//! revision they were built from; when the template changes, the refill pass
//! drains older members and builds new ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warren_core::autoscale::{PolicyConfig, PoolPolicy};
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
///
/// With only `target`, the pool keeps exactly that many. With `max`, it is
/// adaptive between `min` (default: `target`) and `max`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    pub template: String,
    #[serde(default)]
    pub size: Option<Size>,
    #[serde(default)]
    pub target: usize,
    #[serde(default)]
    pub min: Option<usize>,
    #[serde(default)]
    pub max: Option<usize>,
}

impl PoolSpec {
    pub fn is_adaptive(&self) -> bool {
        self.max.is_some()
    }

    fn policy(&self) -> PoolPolicy {
        let min = self.min.unwrap_or(self.target);
        PoolPolicy::new(PolicyConfig::new(min, self.max.unwrap_or(min)))
    }
}

/// Upper bounds (ms) of the claim-latency histogram buckets.
pub const CLAIM_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    drained: AtomicU64,
    shrunk: AtomicU64,
    in_flight: AtomicUsize,
    /// Sum and count of refill durations (create → ready), ms.
    refill_ms: AtomicU64,
    refills: AtomicU64,
    /// Claim latency (hits only), non-cumulative counts per bucket; the last
    /// slot counts everything above the last bound.
    claim_hist: [AtomicU64; CLAIM_BUCKETS_MS.len() + 1],
    claim_us_sum: AtomicU64,
    policy: Mutex<PoolPolicy>,
}

impl Counters {
    fn new(spec: &PoolSpec) -> Self {
        Counters {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            shrunk: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            refill_ms: AtomicU64::new(0),
            refills: AtomicU64::new(0),
            claim_hist: Default::default(),
            claim_us_sum: AtomicU64::new(0),
            policy: Mutex::new(spec.policy()),
        }
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, PoolPolicy> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observe_claim(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        let i = CLAIM_BUCKETS_MS.iter().position(|b| ms < *b).unwrap_or(CLAIM_BUCKETS_MS.len());
        self.claim_hist[i].fetch_add(1, Ordering::Relaxed);
        self.claim_us_sum.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

pub struct Pools {
    specs: Vec<(PoolSpec, Arc<Counters>)>,
}

impl Pools {
    pub fn new(specs: &[PoolSpec]) -> Self {
        Pools { specs: specs.iter().map(|s| (s.clone(), Arc::new(Counters::new(s)))).collect() }
    }
}

/// What a pool looks like now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub template: String,
    pub size: Size,
    /// What the pool aims for now (fixed, or the adaptive policy's answer).
    pub target: usize,
    pub min: usize,
    pub max: usize,
    pub adaptive: bool,
    pub ready: usize,
    pub warming: usize,
    pub hits: u64,
    pub misses: u64,
    /// Members removed because their template changed.
    pub drained: u64,
    /// Members removed because an adaptive target fell.
    pub shrunk: u64,
    /// Mean create → ready time of refills, ms.
    pub refill_ms: u64,
    /// Peak claim rate over the policy window, per second.
    pub claim_rate: f64,
    /// Claim latency histogram: counts per [`CLAIM_BUCKETS_MS`] bucket
    /// (non-cumulative), then one for slower claims.
    pub claim_latency_counts: Vec<u64>,
    pub claim_latency_sum_us: u64,
}

fn is_member(r: &WorkspaceRecord, template: &str, size: &Size) -> bool {
    r.tenant == POOL_TENANT && r.template == template && r.size == *size
}

impl Orchestrator {
    fn pool_size(&self, spec: &PoolSpec) -> Size {
        spec.size.unwrap_or(self.cfg.default_size)
    }

    fn pool_target(&self, spec: &PoolSpec, counters: &Counters) -> usize {
        if spec.is_adaptive() {
            counters.policy().target(self.clock.now_ms())
        } else {
            spec.target
        }
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
        let started = Instant::now();
        counters.policy().record_claim(self.clock.now_ms());
        let mut candidates: Vec<WorkspaceRecord> = self
            .my_workspaces()
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
                            backend: r.provider.clone(),
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
            counters.observe_claim(started.elapsed());
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
        let Ok(all) = self.my_workspaces().await else { return };
        // Current template revisions; a template the backend cannot list
        // keeps its members (no revision to compare with).
        let revisions: BTreeMap<String, String> = match self.provider.templates().await {
            Ok(ts) => ts.into_iter().map(|t| (t.name, t.revision)).collect(),
            Err(_) => BTreeMap::new(),
        };
        for (i, (spec, counters)) in self.pools.specs.iter().enumerate() {
            let size = self.pool_size(spec);
            let current = revisions.get(&spec.template).cloned().unwrap_or_default();
            let mut fresh = Vec::new();
            for r in all.iter().filter(|r| is_member(r, &spec.template, &size) && r.state.is_live()) {
                let built_from = r.metadata.get("revision").map(String::as_str).unwrap_or_default();
                if !current.is_empty() && built_from != current {
                    // Built from an older template: drain it (a claim that
                    // races with this kill wins the CAS or loses cleanly).
                    if self.drain_member(&r.id).await {
                        counters.drained.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    fresh.push(r);
                }
            }
            let target = self.pool_target(spec, counters);
            let mut have = fresh.len();
            if spec.is_adaptive() && have > target {
                // Demand fell: give back the newest surplus (idle members
                // are pure infrastructure cost).
                fresh.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
                for r in fresh.iter().take(have - target) {
                    if self.drain_member(&r.id).await {
                        counters.shrunk.fetch_add(1, Ordering::Relaxed);
                        have -= 1;
                    }
                }
            }
            let in_flight = counters.in_flight.load(Ordering::Relaxed);
            let want = target.saturating_sub(have + in_flight).min(REFILL_CONCURRENCY.saturating_sub(in_flight));
            for _ in 0..want {
                counters.in_flight.fetch_add(1, Ordering::Relaxed);
                let me = self.clone();
                let revision = current.clone();
                tokio::spawn(async move {
                    let (spec, counters) = &me.pools.specs[i];
                    // Real elapsed time, whatever clock drives the policy.
                    let started = Instant::now();
                    if let Err(e) = me.warm_one(spec, revision).await {
                        eprintln!("warren: pool {}: {e}", spec.template);
                        // Do not spin on a broken template.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    } else {
                        let took = started.elapsed().as_millis() as u64;
                        counters.refill_ms.fetch_add(took, Ordering::Relaxed);
                        counters.refills.fetch_add(1, Ordering::Relaxed);
                        counters.policy().record_refill(took);
                    }
                    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }

    /// Removes a pool member that is still unclaimed; false if a tenant got
    /// it first.
    async fn drain_member(&self, id: &warren_core::WorkspaceId) -> bool {
        let now = self.clock.now_ms();
        let taken = self
            .store
            .update_workspace(
                id,
                Box::new(move |r| {
                    if r.tenant != POOL_TENANT {
                        return Err(StoreError::Rejected("claimed".into()));
                    }
                    r.metadata.insert("ready".into(), "0".into());
                    r.updated_at_ms = now;
                    Ok(None)
                }),
            )
            .await;
        taken.is_ok() && self.kill_any(id).await.is_ok()
    }

    /// Creates one member and admits it only after a real command ran.
    async fn warm_one(&self, spec: &PoolSpec, revision: String) -> Result<()> {
        let rec = self
            .create_cold(CreateRequest {
                tenant: POOL_TENANT.into(),
                template: spec.template.clone(),
                size: spec.size,
                timeout: Some(self.cfg.max_timeout),
                env: BTreeMap::new(),
                metadata: BTreeMap::from([("revision".to_string(), revision)]),
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
        let all = self.my_workspaces().await?;
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
                let (min, max, claim_rate) = {
                    let p = c.policy();
                    (p.config().min, p.config().max, p.peak_rate(self.clock.now_ms()))
                };
                PoolStatus {
                    template: spec.template.clone(),
                    size,
                    target: self.pool_target(spec, c),
                    min,
                    max,
                    adaptive: spec.is_adaptive(),
                    ready,
                    warming: members.len() - ready,
                    hits: c.hits.load(Ordering::Relaxed),
                    misses: c.misses.load(Ordering::Relaxed),
                    drained: c.drained.load(Ordering::Relaxed),
                    shrunk: c.shrunk.load(Ordering::Relaxed),
                    refill_ms: c.refill_ms.load(Ordering::Relaxed).checked_div(refills).unwrap_or(0),
                    claim_rate,
                    claim_latency_counts: c.claim_hist.iter().map(|h| h.load(Ordering::Relaxed)).collect(),
                    claim_latency_sum_us: c.claim_us_sum.load(Ordering::Relaxed),
                }
            })
            .collect())
    }
}
