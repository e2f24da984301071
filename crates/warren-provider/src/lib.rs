//! The contract between warren's orchestrator and the backends that run
//! workspaces: local namespaces, Docker, gVisor, microVMs, ECS, Kubernetes.
//!
//! Every backend implements [`SandboxProvider`] and must pass the one
//! [`conformance`] suite. [`fake::ProcessProvider`] runs agents as plain
//! host processes (no isolation) and passes the same suite; it exists for
//! tests of the layers above.

pub mod conformance;
pub mod fake;
pub mod probes;
pub mod procfs;
pub mod routing;
pub mod seccomp;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use warren_core::{Size, TenantId, WorkspaceId};
use warren_proto::endpoint::Endpoint;

/// How strongly a backend isolates workspaces, weakest first (the seed's ladder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationTier {
    /// Plain host processes: for tests and development only.
    None,
    /// Linux namespaces, cgroups, seccomp (container level).
    Namespaces,
    /// gVisor's user-space kernel.
    Gvisor,
    /// A virtual machine per workspace.
    Microvm,
}

/// Network access of a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// Own address, NAT egress, no path to other workspaces.
    Bridge,
    /// The host's network (no isolation).
    Host,
}

/// What a backend can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub isolation: IsolationTier,
    pub pause: bool,
    pub network_modes: Vec<NetworkMode>,
    /// Workspaces cannot see each other's files.
    pub isolated_filesystem: bool,
    /// Workspaces outlive a restart of the warren server and are adopted.
    pub survives_server_restart: bool,
    /// Agents are reachable from any host (a cloud's network), not only from
    /// the server that made them: any replica may serve such workspaces.
    #[serde(default)]
    pub reachable_from_any_host: bool,
}

/// Everything needed to create one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSpec {
    pub id: WorkspaceId,
    pub template: String,
    pub size: Size,
    pub network: NetworkMode,
    /// Workspace environment (every process sees it).
    pub env: BTreeMap<String, String>,
    /// The tenant it is made for (`None`: a warm-pool member, nobody's yet).
    /// Routing reads this, never a label.
    pub tenant: Option<TenantId>,
    /// Free-form labels a backend stores with the workspace (for operators).
    pub labels: BTreeMap<String, String>,
    /// Secret for the agent's `/init` call.
    pub init_token: String,
    /// Access token the agent demands, if any.
    pub access_token: Option<String>,
}

/// Whether a workspace's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
    /// Its processes are gone (crashed, killed, stopped); resources may remain.
    Exited,
}

/// A workspace as a backend sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    pub id: WorkspaceId,
    pub template: String,
    pub size: Size,
    pub state: RunState,
    /// Where its agent listens.
    #[serde(with = "endpoint_str")]
    pub endpoint: Endpoint,
    pub created_at_ms: u64,
    pub labels: BTreeMap<String, String>,
    /// The agent's access token when the backend assigns its own (E2B);
    /// None: the one from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

mod endpoint_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use warren_proto::endpoint::Endpoint;

    pub fn serialize<S: Serializer>(e: &Endpoint, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(e)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Resource usage of a workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// CPU time used since start, all cores, in nanoseconds.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub pids: u64,
}

/// A template a backend can create workspaces from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateInfo {
    pub name: String,
    pub description: String,
    /// Changes whenever the template's content changes (a re-import, a new
    /// image): warm pools drain members built from an older revision.
    #[serde(default)]
    pub revision: String,
    /// How workspaces of this template are isolated, when a backend offers
    /// more than one tier (the local backend's gVisor templates); None: the
    /// backend's own tier ([`Capabilities::isolation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationTier>,
}

/// Label a backend sets on an exited workspace to say why it ended (a cloud
/// stopping a task on its own: Spot interruption, host failure, OOM).
pub const ENDED_LABEL: &str = "warren.ended";

/// Classified backend failures: the orchestrator decides on retries and HTTP
/// statuses from the class, never from the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("workspace {0} not found")]
    NotFound(String),
    #[error("workspace {0} already exists")]
    AlreadyExists(String),
    /// The request cannot work as given (unknown template, bad size…).
    #[error("invalid workspace spec: {0}")]
    InvalidSpec(String),
    /// The backend cannot serve now (engine down, …); retrying may help.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend is out of room (memory, pids, cloud capacity).
    #[error("backend out of capacity: {0}")]
    Capacity(String),
    /// The backend cannot do this at all (pause on a backend without it…).
    #[error("not supported by this backend: {0}")]
    Unsupported(String),
    #[error("backend error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, ProviderError>;

/// A backend that runs workspaces.
///
/// Calls may run concurrently, also for the same workspace. `create` returns
/// only once the workspace's agent answers its health check. `destroy` is
/// idempotent: destroying what is already gone succeeds.
#[async_trait]
pub trait SandboxProvider: Send + Sync + 'static {
    /// Short backend name (`local`, `docker`, …).
    fn name(&self) -> &str;
    fn capabilities(&self) -> Capabilities;
    async fn templates(&self) -> Result<Vec<TemplateInfo>>;
    async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo>;
    async fn inspect(&self, id: &WorkspaceId) -> Result<SandboxInfo>;
    /// Every workspace this backend holds, running or not (for reconcile).
    async fn list(&self) -> Result<Vec<SandboxInfo>>;
    async fn pause(&self, id: &WorkspaceId) -> Result<()>;
    async fn resume(&self, id: &WorkspaceId) -> Result<()>;
    /// Ends the workspace's processes; `destroy` releases the rest.
    async fn stop(&self, id: &WorkspaceId) -> Result<()>;
    async fn destroy(&self, id: &WorkspaceId) -> Result<()>;
    async fn stats(&self, id: &WorkspaceId) -> Result<Stats>;
    /// The name of the backend that holds `id`: this provider's own name,
    /// or for a router the backend it sent the workspace to (metering
    /// prices time at that backend's rate).
    async fn backend_of(&self, id: &WorkspaceId) -> Result<String> {
        let _ = id;
        Ok(self.name().to_string())
    }
    /// The backend a create of `template` for `tenant` goes to first (the
    /// name [`SandboxProvider::backend_of`] reports afterwards): a warm-pool
    /// member is only handed to a tenant whose creates would go where the
    /// member runs.
    fn placement(&self, template: &str, tenant: Option<&TenantId>) -> String {
        let _ = (template, tenant);
        self.name().to_string()
    }
    /// Tells the backend when the orchestrator will end the workspace, for
    /// backends with their own timeout (E2B). Others ignore it.
    async fn set_deadline(&self, id: &WorkspaceId, seconds_from_now: u64) -> Result<()> {
        let _ = (id, seconds_from_now);
        Ok(())
    }
    /// Imports an OCI image archive (`docker save` or an OCI layout in a tar)
    /// as template `name`. Backends without image import refuse.
    async fn import_template(&self, name: &str, archive: &std::path::Path) -> Result<TemplateInfo> {
        let _ = archive;
        Err(ProviderError::Unsupported(format!("the {} backend cannot import template '{name}'", self.name())))
    }
}
