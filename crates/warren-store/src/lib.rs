//! Where warren keeps its state: workspace records, the append-only event
//! log (the truth metering is derived from) and hashed API keys.
//!
//! [`StateStore`] has an embedded implementation on redb ([`RedbStore`]) and
//! an in-memory one ([`MemoryStore`]); both pass [`conformance::run`], and the
//! Redis store will too. Every write is one atomic transaction: a record
//! change and the event that describes it land together or not at all.

pub mod conformance;
mod memory;
mod redb_store;
mod wire;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use warren_core::{Size, State, TenantId, WorkspaceId};
pub use warren_proto::endpoint::Endpoint;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// The record layout [`WorkspaceRecord`] is written in. Records read in an
/// older layout are converted on read and rewritten by
/// `Orchestrator::migrate_records` at start.
pub const RECORD_SCHEMA: u32 = 2;

/// Who a workspace belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Owner {
    /// A warm-pool member: infrastructure, not any tenant's, until a claim
    /// (one compare-and-set of the record) hands it to a tenant.
    Pool {
        /// The pool's name (`PoolSpec::name`).
        pool: String,
        /// The template revision it was built from.
        revision: String,
        /// Its agent answered and ran a real command: it may be claimed.
        ready: bool,
    },
    Tenant {
        tenant: TenantId,
    },
}

/// A workspace as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "wire::RecordWire")]
pub struct WorkspaceRecord {
    /// [`RECORD_SCHEMA`] when written by this version; older when read from
    /// a store an older version wrote.
    pub schema: u32,
    pub id: WorkspaceId,
    pub owner: Owner,
    pub template: String,
    pub size: Size,
    pub state: State,
    /// Backend that holds it (`local`, `docker`, …).
    pub provider: String,
    /// Agent endpoint, once known.
    pub endpoint: Option<Endpoint>,
    pub access_token: String,
    pub init_token: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// When the reaper ends it (absolute, ms since the epoch).
    pub expires_at_ms: u64,
    pub last_activity_ms: u64,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The server replica that owns it (empty: a single-server setup).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

impl WorkspaceRecord {
    /// The tenant it belongs to (`None`: an unclaimed pool member).
    pub fn tenant(&self) -> Option<&TenantId> {
        match &self.owner {
            Owner::Tenant { tenant } => Some(tenant),
            Owner::Pool { .. } => None,
        }
    }

    /// Whether `tenant` owns it.
    pub fn is_owned_by(&self, tenant: &TenantId) -> bool {
        self.tenant() == Some(tenant)
    }

    pub fn is_pool_member(&self) -> bool {
        matches!(self.owner, Owner::Pool { .. })
    }
}

/// What one tenant holds now: its live workspaces (creating, running,
/// paused, stopping) and their sizes. Quotas are checked against it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantUsage {
    pub workspaces: usize,
    pub millicpus: u64,
    pub memory_mib: u64,
}

impl TenantUsage {
    /// Adds (or, with `remove`, takes away) what `rec` holds, if it is
    /// `tenant`'s and live.
    pub fn account(&mut self, tenant: &TenantId, rec: &WorkspaceRecord, remove: bool) {
        if !rec.is_owned_by(tenant) || !rec.state.is_live() {
            return;
        }
        let (m, mem) = (u64::from(rec.size.millicpus), u64::from(rec.size.memory_mib));
        if remove {
            self.workspaces = self.workspaces.saturating_sub(1);
            self.millicpus = self.millicpus.saturating_sub(m);
            self.memory_mib = self.memory_mib.saturating_sub(mem);
        } else {
            self.workspaces += 1;
            self.millicpus += m;
            self.memory_mib += mem;
        }
    }

    /// By looking at every record (what an index must agree with).
    pub fn scan<'a>(tenant: &TenantId, all: impl IntoIterator<Item = &'a WorkspaceRecord>) -> Self {
        let mut u = TenantUsage::default();
        for r in all {
            u.account(tenant, r, false);
        }
        u
    }
}

/// Per-tenant usage kept in step with every record change, for stores that
/// see every write (the embedded and in-memory ones).
#[derive(Debug, Default)]
pub(crate) struct UsageIndex(std::collections::HashMap<TenantId, TenantUsage>);

impl UsageIndex {
    /// Records that `old` became `new` (either may be absent).
    pub(crate) fn replace(&mut self, old: Option<&WorkspaceRecord>, new: Option<&WorkspaceRecord>) {
        for (rec, remove) in [(old, true), (new, false)] {
            let Some((rec, t)) = rec.and_then(|r| r.tenant().map(|t| (r, t))) else { continue };
            let u = self.0.entry(t.clone()).or_default();
            u.account(t, rec, remove);
            if *u == TenantUsage::default() {
                self.0.remove(t);
            }
        }
    }

    pub(crate) fn get(&self, tenant: &TenantId) -> TenantUsage {
        self.0.get(tenant).copied().unwrap_or_default()
    }
}

/// A server replica: where other replicas reach it, and until when its last
/// heartbeat vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub id: String,
    pub url: String,
    pub expires_at_ms: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum EventKind {
    Created {
        template: String,
    },
    State {
        from: State,
        to: State,
    },
    Timeout {
        expires_at_ms: u64,
    },
    /// A warm-pool member was handed to a tenant (until now it was infrastructure).
    Claimed {
        tenant: TenantId,
    },
}

/// An event before the store numbers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    pub at_ms: u64,
    pub workspace: WorkspaceId,
    /// Whose time this is (`None`: a pool member's, infrastructure).
    #[serde(default, deserialize_with = "wire::event_tenant", skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    pub size: Size,
    pub kind: EventKind,
    /// The backend the workspace runs on when this happened (`local`,
    /// `docker`, `e2b`, …), so its time is priced at that backend's rate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
}

/// A durable event with its position in the log (1, 2, 3, … without gaps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    #[serde(flatten)]
    pub event: NewEvent,
}

/// An API key; only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRecord {
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// A short public id (first characters of the key) for listings.
    pub prefix: String,
    pub tenant: TenantId,
    pub name: String,
    pub admin: bool,
    pub created_at_ms: u64,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The update function refused the change (a precondition failed).
    #[error("{0}")]
    Rejected(String),
    /// The store cannot be reached or is broken.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A read-modify-write of one workspace: change the record in place and
/// return the event that describes the change (if any), or refuse.
pub type Update = Box<dyn FnOnce(&mut WorkspaceRecord) -> Result<Option<NewEvent>> + Send>;

#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Stores a new record and its creation event atomically.
    async fn insert_workspace(&self, rec: &WorkspaceRecord, event: NewEvent) -> Result<Event>;
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>>;
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceRecord>>;
    /// Applies `f` to the current record and stores the result together with
    /// the event `f` returns, atomically. Concurrent updates of one record
    /// are serialised: `f` always sees the latest committed version.
    async fn update_workspace(&self, id: &WorkspaceId, f: Update) -> Result<(WorkspaceRecord, Option<Event>)>;
    /// Forgets a record (its events stay).
    async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()>;
    /// What `tenant` holds now. Stores that see every write keep an index;
    /// the default looks at every record.
    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage> {
        Ok(TenantUsage::scan(tenant, &self.list_workspaces().await?))
    }
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>>;
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    async fn get_api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;

    /// Takes or renews the named lease for `holder` for `ttl`; true when
    /// `holder` holds it afterwards. A store only one process can open
    /// (the embedded one) grants every lease.
    async fn lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// Gives up the named lease if `holder` still holds it (a no-op
    /// otherwise), so the next holder need not wait for it to expire.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let _ = (name, holder);
        Ok(())
    }

    /// Records a replica's heartbeat (replaces the previous one).
    async fn put_node(&self, node: &NodeRecord) -> Result<()> {
        let _ = node;
        Ok(())
    }

    /// Every replica that sent a heartbeat (expired ones included).
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        Ok(Vec::new())
    }
}
