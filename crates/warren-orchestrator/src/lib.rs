//! The orchestrator: the lifecycle of every workspace, persisted.
//!
//! Each transition goes through the store as one atomic change plus its
//! event, checked against the state machine of `warren_core::State`. The
//! provider is driven after the intent is recorded, so a crash at any point
//! leaves a record that [`Orchestrator::reconcile`] can finish or undo.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warren_core::{random_token, Clock, Size, State, Stopwatch, TenantId, WorkspaceId};
use warren_proto::client::AgentClient;
use warren_provider::{CreateSpec, NetworkMode, ProviderError, RunState, SandboxProvider, Stats, TemplateInfo};
use warren_store::{
    ApiKeyRecord, Event, EventKind, NewEvent, Owner, StateStore, StoreError, WorkspaceRecord, RECORD_SCHEMA,
};

pub mod jobs;
pub mod pool;
pub mod usage;

/// Tunables.
#[derive(Debug, Clone)]
pub struct Config {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub default_size: Size,
    /// How often each background job runs.
    pub intervals: jobs::Intervals,
    /// A kill stuck in `stopping` this long is finished by the reaper.
    pub stuck_stopping: Duration,
    /// How long a failed workspace stays listed (with its error) before it
    /// is purged.
    pub failed_retention: Duration,
    /// How long a create waits for another replica's quota check before it
    /// answers "try again".
    pub quota_lease_wait: Duration,
    /// How long a shutdown waits for pool members being built.
    pub drain_timeout: Duration,
    /// A running workspace with no activity for this long (no exec, file or
    /// gateway traffic, and no process running in it) is paused, or killed
    /// where the backend cannot pause. `None`: only the timeout applies.
    pub idle_timeout: Option<Duration>,
    /// Warm pools: ready workspaces kept per template and size.
    pub pools: Vec<pool::PoolSpec>,
    /// The largest workspace a tenant may ask for.
    pub max_size: SizeCap,
    /// Limits of every tenant without its own entry in `tenant_quotas`.
    pub default_quota: Quota,
    pub tenant_quotas: HashMap<String, Quota>,
    /// This replica's id when several share a store (empty: alone). Each
    /// replica owns the workspaces it created on its host-local backend.
    pub node: String,
    /// Where other replicas reach this one (its API URL), for forwarding.
    pub node_url: String,
    /// A replica silent this long is dead: whichever replica holds the
    /// sweeper lease marks its workspaces failed.
    pub replica_timeout: Duration,
}

/// The largest workspace a client may ask for. `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeCap {
    pub millicpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub disk_mib: Option<u32>,
    pub pids: Option<u32>,
}

impl SizeCap {
    /// Refuses a size above the cap, naming the limit.
    pub fn check(&self, size: &Size) -> Result<()> {
        for (field, key, got, max) in [
            ("millicpus", "millicpus", size.millicpus, self.millicpus),
            ("memoryMib", "memory_mib", size.memory_mib, self.memory_mib),
            ("diskMib", "disk_mib", size.disk_mib, self.disk_mib),
            ("pids", "pids", size.pids, self.pids),
        ] {
            if let Some(max) = max {
                if got > max {
                    return Err(Error::InvalidArgument(format!(
                        "size: {field} {got} is above this server's limit of {max} per workspace (max_size.{key})"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What one tenant may hold at once, and how fast it may create. `None`: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct Quota {
    pub max_workspaces: Option<usize>,
    pub max_millicpus: Option<u64>,
    pub max_memory_mib: Option<u64>,
    pub max_creates_per_minute: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(24 * 3600),
            default_size: Size::default(),
            intervals: jobs::Intervals::default(),
            stuck_stopping: Duration::from_secs(60),
            failed_retention: Duration::from_secs(3600),
            quota_lease_wait: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(120),
            idle_timeout: None,
            pools: Vec::new(),
            max_size: SizeCap::default(),
            default_quota: Quota::default(),
            tenant_quotas: HashMap::new(),
            node: String::new(),
            node_url: String::new(),
            replica_timeout: Duration::from_secs(30),
        }
    }
}

/// Classified failures, mapped to HTTP statuses by the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The workspace is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Capacity(String),
    #[error("{0}")]
    Internal(String),
    /// A tenant quota would be exceeded; nothing was changed.
    #[error("{0}")]
    QuotaExceeded(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Error::NotFound(m),
            StoreError::AlreadyExists(m) => Error::Conflict(format!("{m} already exists")),
            StoreError::Rejected(m) => Error::Conflict(m),
            StoreError::Unavailable(m) => Error::Unavailable(format!("state store unavailable: {m}")),
            StoreError::Corrupt(m) => Error::Internal(format!("state store corrupt: {m}")),
        }
    }
}

impl From<ProviderError> for Error {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::NotFound(m) => Error::NotFound(format!("workspace {m} not found on its backend")),
            ProviderError::AlreadyExists(m) => Error::Conflict(format!("workspace {m} already exists")),
            ProviderError::InvalidSpec(m) => Error::InvalidArgument(m),
            ProviderError::Unavailable(m) => Error::Unavailable(m),
            ProviderError::Capacity(m) => Error::Capacity(m),
            ProviderError::Unsupported(m) => Error::Unsupported(m),
            ProviderError::Internal(m) => Error::Internal(m),
        }
    }
}

/// A request for a new workspace.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub tenant: TenantId,
    pub template: String,
    pub size: Option<Size>,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// None: the backend's default (loopback only where it can).
    pub network: Option<NetworkMode>,
}

impl CreateRequest {
    /// A request for `template` with every other field at its default.
    pub fn new(tenant: TenantId, template: impl Into<String>) -> Self {
        CreateRequest {
            tenant,
            template: template.into(),
            size: None,
            timeout: None,
            env: BTreeMap::new(),
            metadata: BTreeMap::new(),
            network: None,
        }
    }
}

/// What a new record is made from: a tenant's request, or a pool's refill.
struct Fresh<'a> {
    owner: Owner,
    template: &'a str,
    size: Option<Size>,
    timeout: Option<Duration>,
    env: &'a BTreeMap<String, String>,
    metadata: &'a BTreeMap<String, String>,
    network: Option<NetworkMode>,
}

impl<'a> Fresh<'a> {
    fn of(req: &'a CreateRequest) -> Self {
        Fresh {
            owner: Owner::Tenant { tenant: req.tenant.clone() },
            template: &req.template,
            size: req.size,
            timeout: req.timeout,
            env: &req.env,
            metadata: &req.metadata,
            network: req.network,
        }
    }
}

/// What reconcile found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub adopted: usize,
    pub failed: usize,
    pub orphans_removed: usize,
    pub purged: usize,
}

pub struct Orchestrator {
    provider: Arc<dyn SandboxProvider>,
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    cfg: Config,
    clients: Mutex<HashMap<WorkspaceId, AgentClient>>,
    /// Last activity per workspace (ms), kept in memory: it changes on every
    /// request and only steers idle detection.
    activity: Mutex<HashMap<WorkspaceId, u64>>,
    pools: pool::Pools,
    /// Whether this replica holds the shared-jobs lease.
    shared_jobs: std::sync::atomic::AtomicBool,
    /// Per-tenant admission: the quota check and the claim or the insert of
    /// the new record happen under it, so concurrent creates cannot overshoot.
    admission: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<std::collections::VecDeque<u64>>>>>,
    /// SHA-256 of access tokens → workspace, rebuilt from the store on a
    /// miss ([`Orchestrator::workspace_by_token`]).
    tokens: Mutex<HashMap<[u8; 32], WorkspaceId>>,
}

/// Whether `token`'s SHA-256 is `want` (digests compare in full, so the
/// time taken says nothing about the token).
fn digest_eq(token: &str, want: &[u8; 32]) -> bool {
    use sha2::Digest as _;
    let d: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    d.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// What a create holds while it is admitted: the tenant's local admission
/// lock (with its recent-creates window) and, across replicas, the quota
/// lease in the store.
struct Admission {
    recent: tokio::sync::OwnedMutexGuard<std::collections::VecDeque<u64>>,
    lease: Option<(String, String)>,
}

fn event(rec: &WorkspaceRecord, at_ms: u64, kind: EventKind) -> NewEvent {
    NewEvent {
        at_ms,
        workspace: rec.id.clone(),
        tenant: rec.tenant().cloned(),
        size: rec.size,
        kind,
        backend: rec.provider.clone(),
    }
}

impl Orchestrator {
    pub fn new(
        provider: Arc<dyn SandboxProvider>,
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        cfg: Config,
    ) -> Self {
        let pools = pool::Pools::new(&cfg.pools);
        Orchestrator {
            provider,
            store,
            clock,
            cfg,
            clients: Mutex::default(),
            activity: Mutex::default(),
            pools,
            shared_jobs: std::sync::atomic::AtomicBool::new(false),
            admission: Mutex::default(),
            tokens: Mutex::default(),
        }
    }

    pub fn provider(&self) -> &Arc<dyn SandboxProvider> {
        &self.provider
    }

    /// Stores (or replaces) an API key record.
    pub async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        Ok(self.store.put_api_key(key).await?)
    }

    /// The API key with this SHA-256 (hex), if any.
    pub async fn api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(self.store.get_api_key(hash).await?)
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        Ok(self.store.list_api_keys().await?)
    }

    /// The event log from its start (usage and invoices derive from it).
    pub async fn events(&self) -> Result<Vec<Event>> {
        Ok(self.store.events_since(0, usize::MAX).await?)
    }

    /// The replica that owns workspace `id` (`None`: unknown workspace;
    /// empty: no replica, reachable from any).
    pub async fn owner_node(&self, id: &WorkspaceId) -> Result<Option<String>> {
        Ok(self.store.get_workspace(id).await?.map(|r| r.node))
    }

    /// The running workspace whose agent access token is `token` (old E2B
    /// SDKs route envd calls by it alone). Looked up in an index of token
    /// digests; an entry is trusted only after the record's own token
    /// matches, so a stale one (a claim changes the token) just rebuilds it.
    pub async fn workspace_by_token(&self, token: &str) -> Result<Option<WorkspaceId>> {
        use sha2::Digest as _;
        let want: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let cached = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&want).cloned();
        if let Some(id) = cached {
            if let Some(r) = self.store.get_workspace(&id).await? {
                if !r.is_pool_member() && r.state != State::Deleted && digest_eq(&r.access_token, &want) {
                    return Ok(Some(id));
                }
            }
        }
        let all = self.store.list_workspaces().await?;
        let mut index = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        index.clear();
        let mut found = None;
        for r in all.iter().filter(|r| !r.is_pool_member() && r.state != State::Deleted) {
            let d: [u8; 32] = sha2::Sha256::digest(r.access_token.as_bytes()).into();
            if d == want {
                found = Some(r.id.clone());
            }
            index.insert(d, r.id.clone());
        }
        Ok(found)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        Ok(self.provider.templates().await?)
    }

    /// Imports an OCI image archive as a template on the backend.
    pub async fn import_template(&self, name: &str, archive: &std::path::Path) -> Result<TemplateInfo> {
        Ok(self.provider.import_template(name, archive).await?)
    }

    /// Moves a workspace to `to`, logging the event; refuses illegal moves.
    async fn transition(
        &self,
        id: &WorkspaceId,
        to: State,
        f: impl FnOnce(&mut WorkspaceRecord) + Send + 'static,
    ) -> Result<WorkspaceRecord> {
        let now = self.clock.now_ms();
        let (rec, _) = self
            .store
            .update_workspace(
                id,
                Box::new(move |r| {
                    let from = r.state;
                    r.state = from.transition(to).map_err(|e| StoreError::Rejected(e.to_string()))?;
                    r.updated_at_ms = now;
                    f(r);
                    Ok(Some(event(r, now, EventKind::State { from, to })))
                }),
            )
            .await?;
        Ok(rec)
    }

    fn validate_timeout(&self, t: Duration) -> Result<()> {
        if t.is_zero() || t > self.cfg.max_timeout {
            return Err(Error::InvalidArgument(format!(
                "timeout must be between 1 s and {} s, got {} s",
                self.cfg.max_timeout.as_secs(),
                t.as_secs()
            )));
        }
        Ok(())
    }

    /// Creates a workspace and returns it running (its agent healthy): a
    /// ready member of a matching warm pool when there is one, else a new one.
    #[tracing::instrument(level = "debug", skip_all, fields(tenant = %req.tenant, template = %req.template))]
    pub async fn create(&self, req: CreateRequest) -> Result<WorkspaceRecord> {
        let size = req.size.unwrap_or(self.cfg.default_size);
        self.cfg.max_size.check(&size)?;
        let lock = {
            let mut m = self.admission.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(req.tenant.clone()).or_default().clone()
        };
        // A pool member that fails its personalisation is killed; try
        // another a bounded number of times, then create one cold.
        // With a quota and replicas sharing the store, the check and the
        // claim or insert also run under a per-tenant lease in the store,
        // so racing replicas cannot overshoot it together.
        let shared_quota = *self.quota(&req.tenant) != Quota::default() && !self.cfg.node.is_empty();
        let holder = format!("{}/{}", self.cfg.node, random_token(8));
        let mut attempts = 0;
        loop {
            let mut recent = lock.clone().lock_owned().await;
            let lease = if shared_quota { Some(self.quota_lease(&req.tenant, &holder).await?) } else { None };
            if let Err(e) = self.check_quota(&req.tenant, &size, &mut recent).await {
                self.release(lease).await;
                return Err(e);
            }
            let now = self.clock.now_ms();
            if req.network.is_none() && attempts < 3 {
                attempts += 1;
                let taken = self.take_member(&req, size).await;
                if let Ok(Some(taken)) = taken {
                    // The member is the tenant's now (it counts for the
                    // quota): let the tenant's next create in while this one
                    // is personalised.
                    recent.push_back(now);
                    drop(recent);
                    self.release(lease).await;
                    match self.personalise(taken, &req.env).await {
                        Some(rec) => return Ok(rec),
                        None => continue,
                    }
                }
                if let Err(e) = taken {
                    self.release(lease).await;
                    return Err(e);
                }
            }
            return self.create_new(Fresh::of(&req), Some(Admission { recent, lease })).await;
        }
    }

    /// Takes the store lease arbitrating `tenant`'s quota across replicas,
    /// waiting for another replica's create to finish its check.
    async fn quota_lease(&self, tenant: &TenantId, holder: &str) -> Result<(String, String)> {
        let name = format!("quota:{tenant}");
        let waited = Stopwatch::start();
        let mut pause = Duration::from_millis(1);
        while !self.store.lease(&name, holder, Duration::from_secs(5)).await? {
            if waited.passed(self.cfg.quota_lease_wait) {
                return Err(Error::Unavailable(format!(
                    "tenant {tenant}: another replica held the quota check for {} s; try again",
                    self.cfg.quota_lease_wait.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        Ok((name, holder.to_string()))
    }

    async fn release(&self, lease: Option<(String, String)>) {
        if let Some((name, holder)) = lease {
            if let Err(e) = self.store.release_lease(&name, &holder).await {
                // It expires on its own within seconds.
                tracing::warn!(lease = %name, error = %e, "releasing a lease failed");
            }
        }
    }

    fn quota(&self, tenant: &TenantId) -> &Quota {
        self.cfg.tenant_quotas.get(tenant.as_str()).unwrap_or(&self.cfg.default_quota)
    }

    /// Refuses a create that would take `tenant` over its quota.
    async fn check_quota(
        &self,
        tenant: &TenantId,
        size: &Size,
        recent: &mut std::collections::VecDeque<u64>,
    ) -> Result<()> {
        let q = self.quota(tenant).clone();
        if q == Quota::default() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        while recent.front().is_some_and(|t| *t + 60_000 <= now) {
            recent.pop_front();
        }
        if let Some(max) = q.max_creates_per_minute {
            if recent.len() >= max {
                return Err(Error::QuotaExceeded(format!(
                    "tenant {tenant} may create {max} workspaces a minute; try again shortly"
                )));
            }
        }
        // An index in the store: no scan of every record per create.
        let held = self.store.tenant_usage(tenant).await?;
        if let Some(max) = q.max_workspaces {
            if held.workspaces >= max {
                return Err(Error::QuotaExceeded(format!(
                    "tenant {tenant} has {} workspaces; its quota is {max}",
                    held.workspaces
                )));
            }
        }
        if let Some(max) = q.max_millicpus {
            let used = held.millicpus;
            if used + size.millicpus as u64 > max {
                return Err(Error::QuotaExceeded(format!(
                    "tenant {tenant} uses {used} millicpus; {} more would pass its quota of {max}",
                    size.millicpus
                )));
            }
        }
        if let Some(max) = q.max_memory_mib {
            let used = held.memory_mib;
            if used + size.memory_mib as u64 > max {
                return Err(Error::QuotaExceeded(format!(
                    "tenant {tenant} uses {used} MiB of memory; {} more would pass its quota of {max}",
                    size.memory_mib
                )));
            }
        }
        Ok(())
    }

    /// Always makes a new workspace (no pool, no quota: for internal use).
    pub async fn create_cold(&self, req: CreateRequest) -> Result<WorkspaceRecord> {
        self.create_new(Fresh::of(&req), None).await
    }

    /// Validates a create and stores its record (state `creating`).
    async fn insert_new(&self, req: &Fresh<'_>) -> Result<(WorkspaceRecord, Size, Duration)> {
        let size = req.size.unwrap_or(self.cfg.default_size);
        size.validate().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let timeout = req.timeout.unwrap_or(self.cfg.default_timeout);
        self.validate_timeout(timeout)?;
        if let Some(m) = req.network {
            if !self.provider.capabilities().network_modes.contains(&m) {
                return Err(Error::InvalidArgument(format!(
                    "the {} backend does not offer network mode {m:?}",
                    self.provider.name()
                )));
            }
        }
        let templates = self.provider.templates().await?;
        if !templates.iter().any(|t| t.name == *req.template) {
            return Err(Error::NotFound(format!("template '{}' not found", req.template)));
        }
        let now = self.clock.now_ms();
        let rec = WorkspaceRecord {
            schema: RECORD_SCHEMA,
            id: WorkspaceId::generate(),
            owner: req.owner.clone(),
            template: req.template.to_string(),
            size,
            state: State::Creating,
            provider: self.provider.name().to_string(),
            endpoint: None,
            access_token: random_token(16),
            init_token: random_token(16),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: now + timeout.as_millis() as u64,
            last_activity_ms: now,
            metadata: req.metadata.clone(),
            env: req.env.clone(),
            error: None,
            // Workspaces any replica can reach belong to no replica.
            node: if self.provider.capabilities().reachable_from_any_host {
                String::new()
            } else {
                self.cfg.node.clone()
            },
        };
        self.store
            .insert_workspace(&rec, event(&rec, now, EventKind::Created { template: rec.template.clone() }))
            .await?;
        Ok((rec, size, timeout))
    }

    /// Makes a new workspace; `admission` is released once its record is
    /// stored (or the create refused).
    async fn create_new(&self, req: Fresh<'_>, admission: Option<Admission>) -> Result<WorkspaceRecord> {
        let stored = self.insert_new(&req).await;
        if let Some(Admission { mut recent, lease }) = admission {
            if stored.is_ok() {
                // Counted once admitted.
                recent.push_back(self.clock.now_ms());
            }
            // Released (also on a refusal) so the provider work runs in parallel.
            drop(recent);
            self.release(lease).await;
        }
        let (rec, size, timeout) = stored?;
        let spec = CreateSpec {
            id: rec.id.clone(),
            template: rec.template.clone(),
            size,
            network: NetworkMode::default(),
            env: rec.env.clone(),
            tenant: rec.tenant().cloned(),
            // For operators looking at the backend; nothing reads them back.
            labels: match &rec.owner {
                Owner::Tenant { tenant } => [("tenant".to_string(), tenant.to_string())].into(),
                Owner::Pool { pool, .. } => [("pool".to_string(), pool.clone())].into(),
            },
            init_token: rec.init_token.clone(),
            access_token: Some(rec.access_token.clone()),
        };
        let modes = self.provider.capabilities().network_modes;
        let spec = match req.network {
            Some(m) => CreateSpec { network: m, ..spec },
            None if !modes.contains(&spec.network) => {
                CreateSpec { network: modes.first().copied().unwrap_or_default(), ..spec }
            }
            None => spec,
        };
        match self.provider.create(&spec).await {
            Ok(info) => {
                let endpoint = info.endpoint.clone();
                let started = self.clock.now_ms();
                let backend_token = info.access_token.clone();
                // Behind a router, the backend that took it (metering prices its time).
                let backend = self.provider.backend_of(&rec.id).await.unwrap_or_else(|_| rec.provider.clone());
                if let Err(e) = self.provider.set_deadline(&rec.id, timeout.as_secs()).await {
                    tracing::warn!(workspace = %rec.id, error = %e, "backend deadline not set");
                }
                self.transition(&rec.id, State::Running, move |r| {
                    r.endpoint = Some(endpoint);
                    r.provider = backend;
                    // A backend that assigns its own agent token (E2B) wins.
                    if let Some(t) = backend_token {
                        r.access_token = t;
                    }
                    // The timeout counts from when the workspace is usable.
                    r.expires_at_ms = started + timeout.as_millis() as u64;
                    r.last_activity_ms = started;
                })
                .await
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(workspace = %rec.id, error = %msg, "create failed on the backend");
                let _ = self.provider.destroy(&rec.id).await;
                let _ = self.transition(&rec.id, State::Failed, move |r| r.error = Some(msg)).await;
                Err(e.into())
            }
        }
    }

    /// A workspace visible to `tenant` (`None`: any tenant, for admins).
    pub async fn get(&self, tenant: Option<&TenantId>, id: &WorkspaceId) -> Result<WorkspaceRecord> {
        let rec = self.store.get_workspace(id).await?;
        match rec {
            // A workspace still being created is not the tenant's yet (the
            // create has not answered): a replica dying mid-create leaves
            // nothing half-made in sight.
            Some(r)
                if r.state != State::Deleted
                    && !r.is_pool_member()
                    && tenant.is_none_or(|t| r.is_owned_by(t) && r.state != State::Creating) =>
            {
                Ok(r)
            }
            // Another tenant's workspace does not exist, as far as the caller can tell.
            _ => Err(Error::NotFound(format!("workspace {id} not found"))),
        }
    }

    /// Records this replica owns (its backend holds them): the ones its
    /// reaper, idle check, watch, reconcile and pools act on.
    async fn my_workspaces(&self) -> Result<Vec<WorkspaceRecord>> {
        let mut all = self.store.list_workspaces().await?;
        // Unowned workspaces (reachable from any replica) are looked after
        // by the one replica holding the shared-jobs lease.
        let shared = self.cfg.node.is_empty() || self.shared_jobs.load(std::sync::atomic::Ordering::Relaxed);
        all.retain(|r| r.node == self.cfg.node || (r.node.is_empty() && shared));
        Ok(all)
    }

    /// The size workspaces get unless they ask.
    pub fn default_size(&self) -> Size {
        self.cfg.default_size
    }

    /// This replica's id (empty in a single-server setup).
    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    pub async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<WorkspaceRecord>> {
        let mut all: Vec<_> = self
            .store
            .list_workspaces()
            .await?
            .into_iter()
            .filter(|r| {
                r.state != State::Deleted
                    && !r.is_pool_member()
                    && tenant.is_none_or(|t| r.is_owned_by(t) && r.state != State::Creating)
            })
            .collect();
        all.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Ends a workspace and releases everything it held.
    pub async fn kill(&self, tenant: Option<&TenantId>, id: &WorkspaceId) -> Result<()> {
        let rec = self.get(tenant, id).await?;
        self.owned_here(&rec).await?;
        self.kill_any(id).await
    }

    /// Refuses to act on a workspace another live replica runs: the request
    /// should have been relayed there. A client sending the relay header
    /// itself lands here, and changes nothing. (When the owner is dead the
    /// change is recorded here; its reconcile releases the rest.)
    async fn owned_here(&self, rec: &WorkspaceRecord) -> Result<()> {
        if rec.node.is_empty() || rec.node == self.cfg.node {
            return Ok(());
        }
        if self.live_node_url(&rec.node).await?.is_some() {
            return Err(Error::Conflict(format!(
                "workspace {} is run by replica {}, which is alive; this replica does not act on it \
                 (send the request without x-warren-forwarded: that header is for replicas)",
                rec.id, rec.node
            )));
        }
        Ok(())
    }

    /// Kills any workspace, pool members included (internal use).
    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %id))]
    pub async fn kill_any(&self, id: &WorkspaceId) -> Result<()> {
        let rec =
            self.store.get_workspace(id).await?.ok_or_else(|| Error::NotFound(format!("workspace {id} not found")))?;
        if rec.state == State::Deleted {
            self.store.delete_workspace(id).await?;
            return Ok(());
        }
        if !matches!(rec.state, State::Stopping | State::Stopped) {
            self.transition(id, State::Stopping, |_| {}).await?;
        }
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.provider.destroy(id).await?;
        if rec.state != State::Stopped {
            self.transition(id, State::Stopped, |_| {}).await?;
        }
        self.transition(id, State::Deleted, |_| {}).await?;
        self.store.delete_workspace(id).await?;
        Ok(())
    }

    /// Sets the timeout to `t` from now (E2B semantics: it may shorten).
    pub async fn set_timeout(
        &self,
        tenant: Option<&TenantId>,
        id: &WorkspaceId,
        t: Duration,
    ) -> Result<WorkspaceRecord> {
        self.validate_timeout(t)?;
        let rec = self.get(tenant, id).await?;
        if !matches!(rec.state, State::Running | State::Paused) {
            return Err(Error::Conflict(format!("workspace {id} is {}", rec.state.as_str())));
        }
        self.set_expiry(id, t, false).await
    }

    /// Moves the expiry to `t` from now (only later, with `extend_only`),
    /// logging a Timeout event when it changes.
    async fn set_expiry(&self, id: &WorkspaceId, t: Duration, extend_only: bool) -> Result<WorkspaceRecord> {
        let now = self.clock.now_ms();
        let until = now + t.as_millis() as u64;
        let (rec, _) = self
            .store
            .update_workspace(
                id,
                Box::new(move |r| {
                    if extend_only && until <= r.expires_at_ms {
                        return Ok(None);
                    }
                    r.expires_at_ms = until;
                    r.updated_at_ms = now;
                    Ok(Some(event(r, now, EventKind::Timeout { expires_at_ms: until })))
                }),
            )
            .await?;
        if rec.expires_at_ms == until {
            if let Err(e) = self.provider.set_deadline(id, t.as_secs()).await {
                tracing::warn!(workspace = %id, error = %e, "backend deadline not set");
            }
        }
        Ok(rec)
    }

    /// E2B's connect: resumes a paused workspace, and moves its timeout to
    /// `t` from now only if that is later (the TTL is only ever extended).
    pub async fn connect(
        &self,
        tenant: Option<&TenantId>,
        id: &WorkspaceId,
        t: Duration,
    ) -> Result<(WorkspaceRecord, bool)> {
        self.validate_timeout(t)?;
        let mut rec = self.get(tenant, id).await?;
        let resumed = rec.state == State::Paused;
        if resumed {
            rec = self.resume(tenant, id).await?;
        }
        if rec.state != State::Running {
            return Err(Error::Conflict(format!("workspace {id} is {}", rec.state.as_str())));
        }
        let rec = self.set_expiry(id, t, true).await?;
        Ok((rec, resumed))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %id))]
    pub async fn pause(&self, tenant: Option<&TenantId>, id: &WorkspaceId) -> Result<WorkspaceRecord> {
        let rec = self.get(tenant, id).await?;
        self.owned_here(&rec).await?;
        match rec.state {
            State::Running => {}
            State::Paused => return Err(Error::Conflict(format!("workspace {id} is already paused"))),
            s => return Err(Error::Conflict(format!("workspace {id} is {}", s.as_str()))),
        }
        if !self.provider.capabilities().pause {
            return Err(Error::Unsupported(format!("the {} backend cannot pause", self.provider.name())));
        }
        self.provider.pause(id).await?;
        self.transition(id, State::Paused, |_| {}).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %id))]
    pub async fn resume(&self, tenant: Option<&TenantId>, id: &WorkspaceId) -> Result<WorkspaceRecord> {
        let rec = self.get(tenant, id).await?;
        self.owned_here(&rec).await?;
        match rec.state {
            State::Paused => {}
            State::Running => return Err(Error::Conflict(format!("workspace {id} is already running"))),
            s => return Err(Error::Conflict(format!("workspace {id} is {}", s.as_str()))),
        }
        self.provider.resume(id).await?;
        self.transition(id, State::Running, |_| {}).await
    }

    pub async fn stats(&self, tenant: Option<&TenantId>, id: &WorkspaceId) -> Result<Stats> {
        self.get(tenant, id).await?;
        Ok(self.provider.stats(id).await?)
    }

    /// A client for a running workspace's agent, with its access token.
    pub async fn agent(&self, tenant: Option<&TenantId>, id: &WorkspaceId) -> Result<(WorkspaceRecord, AgentClient)> {
        let rec = self.get(tenant, id).await?;
        if rec.state != State::Running {
            return Err(Error::Conflict(format!("workspace {id} is {}, not running", rec.state.as_str())));
        }
        self.touch(id);
        let ep =
            rec.endpoint.clone().ok_or_else(|| Error::Internal(format!("workspace {id} has no agent endpoint")))?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let client = match clients.get(id) {
            Some(c) => c.clone(),
            None => {
                let c = AgentClient::new(ep).with_access_token(Some(rec.access_token.clone()));
                clients.insert(id.clone(), c.clone());
                c
            }
        };
        Ok((rec, client))
    }

    /// Records activity on a workspace (every agent client handed out counts).
    pub fn touch(&self, id: &WorkspaceId) {
        self.activity.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), self.clock.now_ms());
    }

    fn last_activity(&self, rec: &WorkspaceRecord) -> u64 {
        let seen = self.activity.lock().unwrap_or_else(|p| p.into_inner()).get(&rec.id).copied().unwrap_or(0);
        seen.max(rec.last_activity_ms)
    }

    /// Where a replica listens, if it is alive (None: unknown or dead).
    pub async fn live_node_url(&self, node: &str) -> Result<Option<String>> {
        let now = self.clock.now_ms();
        Ok(self.store.list_nodes().await?.into_iter().find(|n| n.id == node && n.expires_at_ms > now).map(|n| n.url))
    }

    /// Rewrites records an older version stored (read through the store's
    /// converter) in the current layout. Idempotent; replicas racing on it
    /// serialise on each record. Returns how many were rewritten.
    pub async fn migrate_records(&self) -> Result<usize> {
        let mut n = 0;
        for rec in self.store.list_workspaces().await? {
            if rec.schema >= RECORD_SCHEMA {
                continue;
            }
            let result = self
                .store
                .update_workspace(
                    &rec.id,
                    Box::new(|r| {
                        r.schema = RECORD_SCHEMA;
                        Ok(None)
                    }),
                )
                .await;
            match result {
                Ok(_) => n += 1,
                // Deleted meanwhile: nothing to migrate.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Brings store and backend into agreement after a (re)start: adopts
    /// what still runs, fails what died, removes what nobody knows.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let live: HashMap<WorkspaceId, warren_provider::SandboxInfo> =
            self.provider.list().await?.into_iter().map(|s| (s.id.clone(), s)).collect();
        let records = self.my_workspaces().await?;
        let known: std::collections::HashSet<WorkspaceId> = records.iter().map(|r| r.id.clone()).collect();
        for rec in records {
            if rec.provider != self.provider.name() {
                continue;
            }
            match (rec.state, live.get(&rec.id)) {
                (State::Deleted, _) | (State::Stopped, None) => {
                    self.store.delete_workspace(&rec.id).await?;
                    report.purged += 1;
                }
                (State::Creating | State::Running | State::Paused, Some(info)) if info.state != RunState::Exited => {
                    let want = if info.state == RunState::Paused { State::Paused } else { State::Running };
                    let endpoint = info.endpoint.clone();
                    if rec.state != want {
                        self.transition(&rec.id, want, move |r| r.endpoint = Some(endpoint)).await?;
                    } else if rec.endpoint.as_ref() != Some(&endpoint) {
                        self.store
                            .update_workspace(
                                &rec.id,
                                Box::new(move |r| {
                                    r.endpoint = Some(endpoint);
                                    Ok(None)
                                }),
                            )
                            .await?;
                    }
                    report.adopted += 1;
                }
                (State::Creating | State::Running | State::Paused, _) => {
                    let _ = self.provider.destroy(&rec.id).await;
                    let msg = "the workspace ended while the server was down".to_string();
                    self.transition(&rec.id, State::Failed, move |r| r.error = Some(msg)).await?;
                    report.failed += 1;
                }
                (State::Stopping | State::Failed | State::Stopped, _) => {
                    // Finish what was under way: release and forget.
                    match self.kill_any(&rec.id).await {
                        Ok(()) | Err(Error::NotFound(_)) => report.purged += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        for (id, _) in live {
            if !known.contains(&id) {
                self.provider.destroy(&id).await?;
                report.orphans_removed += 1;
            }
        }
        Ok(report)
    }
}
