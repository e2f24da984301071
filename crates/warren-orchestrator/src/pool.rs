//! Warm pools: workspaces created ahead of demand, proven ready, and handed
//! out on create in one atomic store update.
//!
//! A pool member is an ordinary workspace whose owner is its pool
//! ([`Owner::Pool`]), hidden from listings and never reaped by timeout. It
//! becomes claimable only after its agent answered and ran a real command
//! (`ready`). A claim is a compare-and-set on the record (still the pool's,
//! still ready, on the backend the tenant's creates are routed to → the
//! tenant's), so no two requests can get the same workspace, whatever the
//! number of server replicas sharing the store. Members of a pool no longer
//! configured are drained.
//! The claimed workspace is then personalised through the agent's `/init`
//! (fresh access token, environment); it never goes back to the pool.
//!
//! A pool with a `max` is adaptive: its target comes from
//! [`warren_core::autoscale::PoolPolicy`] (Little's law on the observed claim
//! rate and refill time, plus a burst margin). Members remember the template
//! revision they were built from; when the template changes, the refill pass
//! drains older members and builds new ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warren_core::autoscale::{PolicyConfig, PoolPolicy};
use warren_core::{random_token, Size, State, Stopwatch, WorkspaceId};
use warren_proto::client::AgentClient;
use warren_proto::http::InitRequest;
use warren_store::{EventKind, NewEvent, Owner, StoreError, WorkspaceRecord};

use crate::{CreateRequest, Error, Fresh, Orchestrator, Result};
/// Pool creates in flight at once, per pool.
const REFILL_CONCURRENCY: usize = 4;
/// A refill waits until no claim came in for this long: during a burst the
/// claims get the CPU, the refill follows right after.
const BURST_QUIET: Duration = Duration::from_millis(150);
/// …but never holds back longer than this under a steady stream of claims.
const MAX_HOLD: Duration = Duration::from_millis(500);
/// An idle refill worker exits after this (the next refill pass or claim
/// starts a new one).
const WORKER_IDLE_EXIT: Duration = Duration::from_secs(10);

/// A pool member taken for a tenant, not yet personalised.
pub(crate) struct Taken {
    rec: WorkspaceRecord,
    token: String,
    pool: usize,
    started: Stopwatch,
}

/// One pool: how many ready workspaces of a template and size to keep.
///
/// With only `target`, the pool keeps exactly that many. With `max`, it is
/// adaptive between `min` (default: `target`) and `max`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    /// Names the pool in its members' records (default: the template, with
    /// the size when the template has several pools).
    #[serde(default)]
    pub name: Option<String>,
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
    /// Ready members (with when they were added), so a claim takes one
    /// without scanning the store; the store's compare-and-set still
    /// decides. Rebuilt from the store by every refill pass.
    ready: Mutex<Vec<(WorkspaceId, Stopwatch)>>,
    /// Whether a refill pass has filled `ready` from the store yet (until
    /// then claims scan the store).
    indexed: AtomicBool,
    /// The template revision new members are built from.
    revision: Mutex<String>,
    /// When the last claim came in: refills hold back during a burst.
    last_claim: Mutex<Option<Stopwatch>>,
    /// Refill workers running.
    workers: AtomicUsize,
    /// Wakes idle refill workers after a claim.
    kick: tokio::sync::Notify,
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
            ready: Mutex::new(Vec::new()),
            indexed: AtomicBool::new(false),
            revision: Mutex::new(String::new()),
            last_claim: Mutex::new(None),
            workers: AtomicUsize::new(0),
            kick: tokio::sync::Notify::new(),
        }
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, PoolPolicy> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<(WorkspaceId, Stopwatch)>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn since_last_claim(&self) -> Option<Duration> {
        self.last_claim.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    fn observe_claim(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        let i = CLAIM_BUCKETS_MS.iter().position(|b| ms < *b).unwrap_or(CLAIM_BUCKETS_MS.len());
        self.claim_hist[i].fetch_add(1, Ordering::Relaxed);
        self.claim_us_sum.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

pub struct Pools {
    /// Each pool with its resolved, unique name.
    specs: Vec<(PoolSpec, Arc<Counters>)>,
    /// Set by [`Orchestrator::stop_pools`]: no more refills.
    stopped: AtomicBool,
}

impl Pools {
    pub fn new(specs: &[PoolSpec]) -> Self {
        let mut named: Vec<(PoolSpec, Arc<Counters>)> = Vec::new();
        for s in specs {
            let shared = specs.iter().filter(|o| o.template == s.template).count() > 1;
            // An empty name would match members of an older version, whose
            // pool is unknown: it gets the default name instead.
            let base = s.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| match (shared, s.size) {
                (true, Some(z)) => format!("{}-{}m-{}mib", s.template, z.millicpus, z.memory_mib),
                _ => s.template.clone(),
            });
            let mut name = base.clone();
            let mut n = 1;
            while named.iter().any(|(o, _)| o.name.as_deref() == Some(name.as_str())) {
                n += 1;
                name = format!("{base}-{n}");
            }
            let spec = PoolSpec { name: Some(name), ..s.clone() };
            let counters = Arc::new(Counters::new(&spec));
            named.push((spec, counters));
        }
        Pools { specs: named, stopped: AtomicBool::new(false) }
    }
}

/// What a pool looks like now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub name: String,
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

impl PoolSpec {
    /// The resolved name ([`Pools::new`] always sets one).
    fn key(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.template)
    }
}

/// Whether `r` is a member of the pool named `pool` of `template` and
/// `size` (a member built for a pool whose template or size has since
/// changed is nobody's: it is drained, never handed out).
fn is_member(r: &WorkspaceRecord, pool: &str, template: &str, size: &Size) -> bool {
    matches!(&r.owner, Owner::Pool { pool: p, .. } if p == pool) && r.template == template && r.size == *size
}

/// Whether `r` is a claimable member (see [`is_member`]).
fn is_ready_member(r: &WorkspaceRecord, pool: &str, template: &str, size: &Size) -> bool {
    r.state == State::Running
        && matches!(&r.owner, Owner::Pool { ready: true, .. })
        && is_member(r, pool, template, size)
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

    /// Takes a ready pool member for this request, if a pool matches: one
    /// compare-and-set on its record (still the pool's and ready → the
    /// tenant's). Cheap; the caller personalises it afterwards.
    pub(crate) async fn take_member(&self, req: &CreateRequest, size: Size) -> Result<Option<Taken>> {
        let Some(i) =
            self.pools.specs.iter().position(|(p, _)| p.template == req.template && self.pool_size(p) == size)
        else {
            return Ok(None);
        };
        let (spec, counters) = &self.pools.specs[i];
        let timeout = req.timeout.unwrap_or(self.cfg.default_timeout);
        self.validate_timeout(timeout)?;
        // Members are built where a create for nobody goes; a tenant routed
        // elsewhere gets a workspace of its own backend, never a member.
        let backend = self.provider.placement(&req.template, Some(&req.tenant));
        if backend != self.provider.placement(&req.template, None) {
            return Ok(None);
        }
        let pool_name = spec.key().to_string();
        let template = spec.template.clone();
        let started = Stopwatch::start();
        counters.policy().record_claim(self.clock.now_ms());
        *counters.last_claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        counters.kick.notify_waiters();
        let token = random_token(16);
        let cas = |id: WorkspaceId| {
            let now = self.clock.now_ms();
            let (tenant, metadata, env, new_token) =
                (req.tenant.clone(), req.metadata.clone(), req.env.clone(), token.clone());
            let (pool_name, backend, template) = (pool_name.clone(), backend.clone(), template.clone());
            async move {
                self.store
                    .update_workspace(
                        &id,
                        Box::new(move |r| {
                            if !is_ready_member(r, &pool_name, &template, &size) {
                                return Err(StoreError::Rejected("already claimed".into()));
                            }
                            if r.provider != backend {
                                // Overflowed to another backend when built.
                                return Err(StoreError::Rejected(format!("on {}, not {backend}", r.provider)));
                            }
                            r.owner = Owner::Tenant { tenant: tenant.clone() };
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
                                tenant: Some(tenant.clone()),
                                size: r.size,
                                kind: EventKind::Claimed { tenant },
                                backend: r.provider.clone(),
                            }))
                        }),
                    )
                    .await
            }
        };
        let taken = |rec| Ok(Some(Taken { rec, token: token.clone(), pool: i, started }));
        if counters.indexed.load(Ordering::Acquire) {
            // The in-memory index: no store scan on the hot path.
            loop {
                let Some((id, _)) = counters.ready().pop() else { break };
                match cas(id).await {
                    Ok((rec, _)) => return taken(rec),
                    // Claimed elsewhere or gone since it was indexed.
                    Err(StoreError::Rejected(_)) | Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            let mut candidates: Vec<WorkspaceRecord> = self
                .my_workspaces()
                .await?
                .into_iter()
                .filter(|r| is_ready_member(r, &pool_name, &template, &size) && r.provider == backend)
                .collect();
            // Start at a random member: concurrent claims then rarely race
            // for the same record (a lost race just moves on to the next).
            candidates.sort_by_key(|r| r.created_at_ms);
            if !candidates.is_empty() {
                let mut b = [0u8; 4];
                let _ = getrandom::fill(&mut b);
                let start = u32::from_le_bytes(b) as usize % candidates.len();
                candidates.rotate_left(start);
            }
            for c in candidates {
                match cas(c.id).await {
                    Ok((rec, _)) => return taken(rec),
                    Err(StoreError::Rejected(_)) | Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        counters.misses.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    /// Personalises a taken member through the agent's `/init`: the fresh
    /// access token and the tenant's environment. None (and the member
    /// killed) when the agent does not take it; the caller tries again.
    pub(crate) async fn personalise(&self, t: Taken, env: &BTreeMap<String, String>) -> Option<WorkspaceRecord> {
        let Taken { rec, token, pool, started } = t;
        let Some(ep) = rec.endpoint.clone() else {
            let _ = self.kill_any(&rec.id).await;
            return None;
        };
        // The connection the readiness check opened, when there is one: no
        // connection setup on the claim path.
        let cached = self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&rec.id);
        let agent = cached.unwrap_or_else(|| AgentClient::new(ep));
        let init = InitRequest { access_token: Some(token.clone()), env_vars: Some(env.clone()), ..Default::default() };
        if let Err(e) = agent.init(&rec.init_token, &init).await {
            tracing::warn!(workspace = %rec.id, error = %e, "pool member refused its personalisation");
            let _ = self.kill_any(&rec.id).await;
            return None;
        }
        agent.set_access_token(Some(token));
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).insert(rec.id.clone(), agent);
        self.touch(&rec.id);
        let counters = &self.pools.specs[pool].1;
        counters.hits.fetch_add(1, Ordering::Relaxed);
        counters.observe_claim(started.elapsed());
        Some(rec)
    }

    /// One refill pass: drains members of an older template revision and
    /// an adaptive pool's surplus, rebuilds the claim index from the store,
    /// and starts refill workers for pools below their target.
    /// Returns how many members it drained.
    pub async fn refill_pools(self: &Arc<Self>) -> usize {
        if self.pools.specs.is_empty() {
            return 0;
        }
        let scanned_at = Stopwatch::start();
        let Ok(all) = self.my_workspaces().await else { return 0 };
        let mut drained = 0;
        // Current template revisions; a template the backend cannot list
        // keeps its members (no revision to compare with).
        let revisions: BTreeMap<String, String> = match self.provider.templates().await {
            Ok(ts) => ts.into_iter().map(|t| (t.name, t.revision)).collect(),
            Err(_) => BTreeMap::new(),
        };
        // Members of a pool no longer configured (or of a version that did
        // not record its pool) serve nobody: drain them.
        for r in all.iter().filter(|r| r.is_pool_member() && r.state.is_live()) {
            let known = self.pools.specs.iter().any(|(s, _)| is_member(r, s.key(), &s.template, &self.pool_size(s)));
            if !known && self.drain_member(&r.id).await {
                drained += 1;
            }
        }
        for (i, (spec, counters)) in self.pools.specs.iter().enumerate() {
            let current = revisions.get(&spec.template).cloned().unwrap_or_default();
            let mut fresh = Vec::new();
            let size = self.pool_size(spec);
            for r in all.iter().filter(|r| is_member(r, spec.key(), &spec.template, &size) && r.state.is_live()) {
                let built_from = match &r.owner {
                    Owner::Pool { revision, .. } => revision.as_str(),
                    Owner::Tenant { .. } => continue,
                };
                if !current.is_empty() && built_from != current {
                    // Built from an older template: drain it (a claim that
                    // races with this kill wins the CAS or loses cleanly).
                    if self.drain_member(&r.id).await {
                        counters.drained.fetch_add(1, Ordering::Relaxed);
                        drained += 1;
                    }
                } else {
                    fresh.push(r);
                }
            }
            let target = self.pool_target(spec, counters);
            if spec.is_adaptive() && fresh.len() > target {
                // Demand fell: give back the newest surplus (idle members
                // are pure infrastructure cost).
                fresh.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
                let surplus = fresh.len() - target;
                let mut kept = Vec::with_capacity(fresh.len());
                for (n, r) in fresh.into_iter().enumerate() {
                    if n < surplus && self.drain_member(&r.id).await {
                        counters.shrunk.fetch_add(1, Ordering::Relaxed);
                        drained += 1;
                    } else {
                        kept.push(r);
                    }
                }
                fresh = kept;
            }
            // Rebuild the claim index from the store: the ready members seen
            // now, plus any that became ready after the scan started.
            {
                let mut ready = counters.ready();
                let later: Vec<(WorkspaceId, Stopwatch)> = ready.drain(..).filter(|(_, at)| *at > scanned_at).collect();
                let mut seen: std::collections::HashSet<WorkspaceId> = later.iter().map(|(id, _)| id.clone()).collect();
                for r in &fresh {
                    if is_ready_member(r, spec.key(), &spec.template, &size) && seen.insert(r.id.clone()) {
                        ready.push((r.id.clone(), scanned_at));
                    }
                }
                ready.extend(later);
            }
            *counters.revision.lock().unwrap_or_else(|p| p.into_inner()) = current.clone();
            counters.indexed.store(true, Ordering::Release);
            self.ensure_workers(i);
        }
        drained
    }

    /// Members the pool still lacks: target − ready − being built.
    fn deficit(&self, i: usize) -> usize {
        let (spec, counters) = &self.pools.specs[i];
        let target = self.pool_target(spec, counters);
        target.saturating_sub(counters.ready().len() + counters.in_flight.load(Ordering::Relaxed))
    }

    /// Stops refilling: no new members are started, and this returns once
    /// the builds in flight have finished (their members stay pool
    /// members, for the caller to keep or remove). For orderly shutdowns and
    /// benchmarks that tear an orchestrator down.
    pub async fn stop_pools(&self) {
        self.pools.stopped.store(true, Ordering::Release);
        for (_, c) in &self.pools.specs {
            c.kick.notify_waiters();
        }
        let waited = Stopwatch::start();
        while self.pools.specs.iter().any(|(_, c)| c.workers.load(Ordering::Acquire) > 0)
            && !waited.passed(self.cfg.drain_timeout)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts refill workers up to the deficit (at most
    /// [`REFILL_CONCURRENCY`] per pool).
    fn ensure_workers(self: &Arc<Self>, i: usize) {
        if self.pools.stopped.load(Ordering::Acquire) {
            return;
        }
        let counters = &self.pools.specs[i].1;
        let want = self.deficit(i).min(REFILL_CONCURRENCY);
        while counters.workers.load(Ordering::Acquire) < want {
            counters.workers.fetch_add(1, Ordering::AcqRel);
            let me = self.clone();
            tokio::spawn(async move { me.refill_worker(i).await });
        }
    }

    /// Builds members one after another while the pool is short, holding
    /// back while claims stream in; waits for a claim when the pool is full,
    /// and exits after a while idle.
    async fn refill_worker(self: Arc<Self>, i: usize) {
        let (spec, counters) = &self.pools.specs[i];
        let mut idle_since = Stopwatch::start();
        loop {
            if self.pools.stopped.load(Ordering::Acquire) {
                break;
            }
            let mut held = Duration::ZERO;
            while counters.since_last_claim().is_some_and(|d| d < BURST_QUIET) && held < MAX_HOLD {
                tokio::time::sleep(BURST_QUIET).await;
                held += BURST_QUIET;
            }
            // Reserve one build under the index lock, so workers never
            // overshoot the target together.
            let reserved = {
                let ready = counters.ready();
                let target = self.pool_target(spec, counters);
                let busy = ready.len() + counters.in_flight.load(Ordering::Relaxed);
                (busy < target).then(|| counters.in_flight.fetch_add(1, Ordering::AcqRel))
            };
            if reserved.is_none() {
                if idle_since.elapsed() >= WORKER_IDLE_EXIT {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), counters.kick.notified()).await;
                continue;
            }
            let revision = counters.revision.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // Real elapsed time, whatever clock drives the policy.
            let started = Stopwatch::start();
            let built = self.warm_one(spec, revision).await;
            match built {
                Ok(id) => {
                    counters.ready().push((id, Stopwatch::start()));
                    counters.in_flight.fetch_sub(1, Ordering::AcqRel);
                    let took = started.elapsed().as_millis() as u64;
                    counters.refill_ms.fetch_add(took, Ordering::Relaxed);
                    counters.refills.fetch_add(1, Ordering::Relaxed);
                    counters.policy().record_refill(took);
                    idle_since = Stopwatch::start();
                }
                Err(e) => {
                    counters.in_flight.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(pool = spec.key(), error = %e, "pool refill failed");
                    // Do not spin on a broken template; the next pass retries.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
        counters.workers.fetch_sub(1, Ordering::AcqRel);
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
                    let Owner::Pool { ready, .. } = &mut r.owner else {
                        return Err(StoreError::Rejected("claimed".into()));
                    };
                    *ready = false;
                    r.updated_at_ms = now;
                    Ok(None)
                }),
            )
            .await;
        taken.is_ok() && self.kill_any(id).await.is_ok()
    }

    /// Creates one member and admits it only after a real command ran.
    async fn warm_one(&self, spec: &PoolSpec, revision: String) -> Result<WorkspaceId> {
        let none = BTreeMap::new();
        let fresh = Fresh {
            owner: Owner::Pool { pool: spec.key().to_string(), revision, ready: false },
            template: &spec.template,
            size: spec.size,
            timeout: Some(self.cfg.max_timeout),
            env: &none,
            metadata: &none,
            network: None,
        };
        let rec = self.create_new(fresh, None).await?;
        let ep = rec.endpoint.clone().ok_or_else(|| Error::Internal("no endpoint".into()))?;
        let agent = AgentClient::new(ep).with_access_token(Some(rec.access_token.clone()));
        let ok = matches!(agent.exec("true", &[]).await, Ok(out) if out.exit_code == 0);
        if !ok {
            let _ = self.kill_any(&rec.id).await;
            return Err(Error::Unavailable(format!("pool member {} failed its readiness command", rec.id)));
        }
        // Keep the connection for the claim's personalisation.
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).insert(rec.id.clone(), agent);
        self.store
            .update_workspace(
                &rec.id,
                Box::new(|r| {
                    if let Owner::Pool { ready, .. } = &mut r.owner {
                        *ready = true;
                    }
                    Ok(None)
                }),
            )
            .await?;
        Ok(rec.id)
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
                    all.iter().filter(|r| is_member(r, spec.key(), &spec.template, &size)).collect();
                let ready = members.iter().filter(|r| is_ready_member(r, spec.key(), &spec.template, &size)).count();
                let refills = c.refills.load(Ordering::Relaxed);
                let (min, max, claim_rate) = {
                    let p = c.policy();
                    (p.config().min, p.config().max, p.peak_rate(self.clock.now_ms()))
                };
                PoolStatus {
                    name: spec.key().to_string(),
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
