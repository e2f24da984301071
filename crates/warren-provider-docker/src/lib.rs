//! The Docker backend: each workspace is a container on a Docker engine.
//!
//! - **Any image works.** The static agent is bind-mounted read-only at
//!   `/.warren/agent` and replaces the image's entrypoint; it runs as the
//!   container's init (as root, so it can switch to the workspace user) and
//!   listens on TCP 49983. warren reaches it at the container's address.
//! - **Networks.** Workspaces join one of two warren-owned bridges with
//!   inter-container traffic switched off (`enable_icc=false`):
//!   `<prefix>-none` is `internal` (no route out: the `none` mode, yet the
//!   host still reaches the agent) and `<prefix>-bridge` has NAT egress.
//! - **Sizes** map to NanoCPUs, Memory (= MemorySwap: no swap) and
//!   PidsLimit, and to a `size` storage option where the engine's storage
//!   driver supports one (overlay2 on xfs with pquota).
//! - **State** lives in the engine: labels on the container carry the id,
//!   template, size, creation time, owner and the caller's labels, so a
//!   restarted server lists and adopts what runs. `owner` separates warren
//!   installations (and test runs) sharing one engine.
//! - **Runtime** per template: the engine's default (runc) unless
//!   configured, `runsc` for gVisor where the engine has it.
//!
//! Every engine call has a timeout; failures are classified (engine down =
//! unavailable, missing image = invalid spec naming it, name taken =
//! already exists).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, ListImagesOptions, ListNetworksOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions, TagImageOptions,
};
use bollard::Docker;
use futures_util::StreamExt as _;
use tokio::sync::OnceCell;
use warren_core::{Size, WorkspaceId};
use warren_proto::endpoint::Endpoint;
use warren_provider::fake::wait_healthy;
use warren_provider::{
    Capabilities, CreateSpec, IsolationTier, NetworkMode, ProviderError, Result, RunState, SandboxInfo,
    SandboxProvider, Stats, TemplateInfo,
};

/// Port the agent listens on inside every container (E2B's envd port).
pub const AGENT_PORT: u16 = 49983;
/// Where the agent binary appears inside the container.
pub const AGENT_PATH: &str = "/.warren/agent";

const L_OWNER: &str = "warren.owner";
const L_ID: &str = "warren.id";
const L_TEMPLATE: &str = "warren.template";
const L_SIZE: &str = "warren.size";
const L_CREATED: &str = "warren.created-ms";
const L_NETWORK: &str = "warren.network";
const L_USER: &str = "warren.label.";

/// How to reach the engine and what to run.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock` (default) or `tcp://host:port`.
    pub host: Option<String>,
    /// The static agent, as a path on the engine's host.
    pub agent: PathBuf,
    /// Label value marking this installation's containers.
    pub owner: String,
    /// OCI runtime for templates not in `template_runtimes` (None: the engine's default).
    pub runtime: Option<String>,
    pub template_runtimes: BTreeMap<String, String>,
    /// Prefix of the two warren networks.
    pub network_prefix: String,
    /// Limit on ordinary engine calls.
    pub call_timeout: Duration,
    /// Limit on the agent answering after start.
    pub ready_timeout: Duration,
    /// Run containers whose root is the host's root (an engine without
    /// userns-remap or rootless mode, runc templates). Off: such an engine
    /// is refused with a clear error. gVisor (runsc) templates are allowed
    /// either way: their root talks to gVisor's kernel, not the host's.
    pub allow_host_root: bool,
}

impl DockerConfig {
    pub fn new(agent: impl Into<PathBuf>) -> Self {
        DockerConfig {
            host: None,
            agent: agent.into(),
            owner: "warren".into(),
            runtime: None,
            template_runtimes: BTreeMap::new(),
            network_prefix: "warren".into(),
            call_timeout: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(30),
            allow_host_root: false,
        }
    }

    fn runtime_for(&self, template: &str) -> Option<&str> {
        self.template_runtimes.get(template).or(self.runtime.as_ref()).map(String::as_str)
    }
}

pub struct DockerProvider {
    docker: Docker,
    cfg: DockerConfig,
    /// Ids of the `none` and `bridge` networks.
    networks: OnceCell<(String, String)>,
    storage_opt: OnceCell<bool>,
    /// Whether the engine maps a container's root away from the host's
    /// (userns-remap or rootless), read once from `docker info`.
    remapped: OnceCell<bool>,
}

fn unavailable(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable(format!("Docker engine: {e}"))
}

/// Maps an engine error to a class; `what` names the object for messages.
fn classify(e: DockerError, what: &str) -> ProviderError {
    match e {
        DockerError::DockerResponseServerError { status_code, message } => match status_code {
            404 => ProviderError::NotFound(format!("{what}: {message}")),
            409 => ProviderError::AlreadyExists(format!("{what}: {message}")),
            400 => ProviderError::InvalidSpec(format!("{what}: {message}")),
            _ if message.contains("no space left") || message.contains("cannot allocate memory") => {
                ProviderError::Capacity(format!("{what}: {message}"))
            }
            _ => ProviderError::Internal(format!("{what}: engine answered {status_code}: {message}")),
        },
        DockerError::RequestTimeoutError => unavailable(format!("{what}: request timed out")),
        DockerError::DockerStreamError { error } => ProviderError::Internal(format!("{what}: {error}")),
        DockerError::JsonDataError { message, .. } => ProviderError::Internal(format!("{what}: bad JSON: {message}")),
        other => unavailable(format!("{what}: {other}")),
    }
}

fn name_of(id: &WorkspaceId) -> String {
    format!("warren-{id}")
}

impl DockerProvider {
    /// Connects (no call is made until first use).
    pub fn connect(cfg: DockerConfig) -> Result<Self> {
        let timeout = cfg.call_timeout.as_secs().max(1);
        let docker = match cfg.host.as_deref() {
            None => Docker::connect_with_socket("/var/run/docker.sock", timeout, bollard::API_DEFAULT_VERSION),
            Some(h) if h.starts_with("unix://") => {
                Docker::connect_with_socket(h, timeout, bollard::API_DEFAULT_VERSION)
            }
            Some(h) if h.starts_with("tcp://") || h.starts_with("http://") => {
                Docker::connect_with_http(h, timeout, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => return Err(ProviderError::InvalidSpec(format!("docker host {h:?}: unix:// or tcp://"))),
        }
        .map_err(unavailable)?;
        if !cfg.agent.is_absolute() {
            return Err(ProviderError::InvalidSpec(format!(
                "agent {}: must be an absolute path on the engine's host",
                cfg.agent.display()
            )));
        }
        Ok(DockerProvider {
            docker,
            cfg,
            networks: OnceCell::new(),
            storage_opt: OnceCell::new(),
            remapped: OnceCell::new(),
        })
    }

    /// True when the engine runs containers' root as an unprivileged host
    /// user: userns-remap or rootless mode (`docker info` security options).
    pub async fn root_is_remapped(&self) -> Result<bool> {
        self.remapped
            .get_or_try_init(|| async {
                let info = self.call("info", self.docker.info()).await?;
                Ok(info
                    .security_options
                    .unwrap_or_default()
                    .iter()
                    .any(|o| o.contains("name=userns") || o.contains("name=rootless")))
            })
            .await
            .copied()
    }

    /// Refuses a template whose containers' root would be the host's root.
    async fn check_root(&self, template: &str) -> Result<()> {
        if self.cfg.allow_host_root
            || self.cfg.runtime_for(template) == Some("runsc")
            || self.root_is_remapped().await?
        {
            return Ok(());
        }
        Err(ProviderError::Unavailable(
            "the Docker engine runs containers' root as the host's root: enable userns-remap (\"userns-remap\": \"default\" in /etc/docker/daemon.json; see docs/docker-provider.md), use rootless Docker or runsc, or set allow_host_root = true in [docker] to accept it".into(),
        ))
    }

    /// Checks that the engine answers (a clear error at start-up).
    pub async fn ping(&self) -> Result<String> {
        let v = self.call("version", self.docker.version()).await?;
        Ok(format!("Docker {} (API {})", v.version.unwrap_or_default(), v.api_version.unwrap_or_default()))
    }

    async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, DockerError>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.cfg.call_timeout, fut).await {
            Ok(r) => r.map_err(|e| classify(e, what)),
            Err(_) => Err(unavailable(format!("{what}: no answer within {:?}", self.cfg.call_timeout))),
        }
    }

    fn network_name(&self, mode: NetworkMode) -> String {
        match mode {
            NetworkMode::Bridge => format!("{}-bridge", self.cfg.network_prefix),
            _ => format!("{}-none", self.cfg.network_prefix),
        }
    }

    /// Networks with exactly this name, oldest first (the engine allows
    /// duplicates when two servers create one at the same moment).
    async fn networks_named(&self, name: &str) -> Result<Vec<bollard::models::Network>> {
        let opts = ListNetworksOptions { filters: Some(HashMap::from([("name".to_string(), vec![name.to_string()])])) };
        let mut v: Vec<_> = self
            .call("list networks", self.docker.list_networks(Some(opts)))
            .await?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .collect();
        v.sort_by_key(|n| (n.created.as_ref().map(|c| c.to_string()), n.id.clone()));
        Ok(v)
    }

    /// Creates warren's two networks once (concurrent creates wait) and
    /// returns the id of the one for `mode`.
    async fn ensure_networks(&self, mode: NetworkMode) -> Result<String> {
        let (none, bridge) =
            self.networks
                .get_or_try_init(|| async {
                    let mut ids = Vec::new();
                    for (mode, internal) in [(NetworkMode::None, true), (NetworkMode::Bridge, false)] {
                        let name = self.network_name(mode);
                        if self.networks_named(&name).await?.is_empty() {
                            self.create_network(&name, internal).await?;
                        }
                        // Two servers may have raced: everyone keeps the oldest
                        // and removes the rest (which fails harmlessly if in use).
                        let all = self.networks_named(&name).await?;
                        let keep = all.first().and_then(|n| n.id.clone()).ok_or_else(|| {
                            ProviderError::Internal(format!("network {name} vanished after creation"))
                        })?;
                        for extra in all.iter().skip(1).filter_map(|n| n.id.as_deref()) {
                            let _ = self.docker.remove_network(extra).await;
                        }
                        ids.push(keep);
                    }
                    Ok::<_, ProviderError>((ids[0].clone(), ids[1].clone()))
                })
                .await?;
        Ok(if mode == NetworkMode::Bridge { bridge.clone() } else { none.clone() })
    }

    async fn create_network(&self, name: &str, internal: bool) -> Result<()> {
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: Some(internal),
            options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".to_string(), "false".to_string())])),
            labels: Some(HashMap::from([("warren.network".to_string(), "1".to_string())])),
            ..Default::default()
        };
        match self.call(&format!("network {name}"), self.docker.create_network(req)).await {
            Ok(_) | Err(ProviderError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the storage driver takes a per-container `size` option.
    async fn supports_storage_opt(&self) -> bool {
        *self
            .storage_opt
            .get_or_init(|| async {
                let Ok(info) = self.docker.info().await else { return false };
                let driver = info.driver.unwrap_or_default();
                let backing = info
                    .driver_status
                    .unwrap_or_default()
                    .into_iter()
                    .find(|kv| kv.first().is_some_and(|k| k == "Backing Filesystem"))
                    .and_then(|kv| kv.get(1).cloned())
                    .unwrap_or_default();
                (driver == "overlay2" && backing == "xfs") || driver == "btrfs" || driver == "zfs"
            })
            .await
    }

    fn info_from(&self, labels: &HashMap<String, String>, state: RunState, ip: Option<String>) -> Option<SandboxInfo> {
        let id: WorkspaceId = labels.get(L_ID)?.parse().ok()?;
        let size: Size = labels.get(L_SIZE).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
        let endpoint: Endpoint =
            format!("tcp://{}:{AGENT_PORT}", ip.filter(|i| !i.is_empty()).unwrap_or("0.0.0.0".into())).parse().ok()?;
        Some(SandboxInfo {
            id,
            template: labels.get(L_TEMPLATE).cloned().unwrap_or_default(),
            size,
            state,
            endpoint,
            created_at_ms: labels.get(L_CREATED).and_then(|s| s.parse().ok()).unwrap_or(0),
            labels: labels
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(L_USER).map(|k| (k.to_string(), v.clone())))
                .collect(),
            access_token: None,
        })
    }

    async fn inspect_raw(&self, id: &WorkspaceId) -> Result<bollard::models::ContainerInspectResponse> {
        self.inspect_sized(id, false).await
    }

    /// Inspects our container of `id`; `size` also measures its writable layer.
    async fn inspect_sized(&self, id: &WorkspaceId, size: bool) -> Result<bollard::models::ContainerInspectResponse> {
        let c = self
            .call(
                &format!("workspace {id}"),
                self.docker.inspect_container(&name_of(id), Some(InspectContainerOptions { size })),
            )
            .await
            .map_err(|e| match e {
                ProviderError::NotFound(_) => ProviderError::NotFound(id.to_string()),
                other => other,
            })?;
        let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
        if labels.and_then(|l| l.get(L_OWNER)) != Some(&self.cfg.owner) {
            // Someone else's container with our naming: not ours to touch.
            return Err(ProviderError::NotFound(id.to_string()));
        }
        Ok(c)
    }

    fn state_of(s: Option<&bollard::models::ContainerState>) -> RunState {
        match s {
            Some(s) if s.paused == Some(true) => RunState::Paused,
            Some(s) if s.running == Some(true) => RunState::Running,
            _ => RunState::Exited,
        }
    }

    /// The image's environment, user and workdir, as agent flags.
    async fn image_flags(&self, template: &str) -> Result<Vec<String>> {
        let img = self.call(&format!("template {template}"), self.docker.inspect_image(template)).await.map_err(|e| {
            match e {
                ProviderError::NotFound(_) => ProviderError::InvalidSpec(format!(
                    "template {template}: no image {template:?} in the Docker engine (load it with `warren templates import` or `docker load`)"
                )),
                other => other,
            }
        })?;
        let mut flags = Vec::new();
        if let Some(cfg) = img.config {
            for kv in cfg.env.unwrap_or_default() {
                if kv.contains('=') {
                    flags.extend(["--env".to_string(), kv]);
                }
            }
            // A named user only (numeric ids may have no passwd entry).
            let user = cfg.user.unwrap_or_default();
            let name = user.split(':').next().unwrap_or_default();
            if !name.is_empty() && !name.bytes().all(|b| b.is_ascii_digit()) {
                flags.extend(["--user".to_string(), name.to_string()]);
            }
            if let Some(w) = cfg.working_dir.filter(|w| w.starts_with('/')) {
                flags.extend(["--workdir".to_string(), w]);
            }
        }
        Ok(flags)
    }
}

#[async_trait]
impl SandboxProvider for DockerProvider {
    fn name(&self) -> &str {
        "docker"
    }

    fn capabilities(&self) -> Capabilities {
        let gvisor = self.cfg.runtime.as_deref() == Some("runsc");
        Capabilities {
            isolation: if gvisor { IsolationTier::Gvisor } else { IsolationTier::Namespaces },
            pause: true,
            network_modes: vec![NetworkMode::None, NetworkMode::Bridge],
            isolated_filesystem: true,
            survives_server_restart: true,
            reachable_from_any_host: false,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        let images = self.call("list images", self.docker.list_images(None::<ListImagesOptions>)).await?;
        let mut out = Vec::new();
        for img in images {
            for tag in img.repo_tags.iter().filter(|t| !t.starts_with("<none>")) {
                let name = tag.strip_suffix(":latest").unwrap_or(tag).to_string();
                out.push(TemplateInfo {
                    description: format!("Docker image {tag} ({} MB)", img.size / 1_000_000),
                    revision: img.id.trim_start_matches("sha256:").chars().take(16).collect(),
                    // A template run by runsc is gVisor-isolated.
                    isolation: self.cfg.runtime_for(&name).map(|r| {
                        if r == "runsc" {
                            IsolationTier::Gvisor
                        } else {
                            IsolationTier::Namespaces
                        }
                    }),
                    name,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo> {
        spec.size.validate().map_err(|e| ProviderError::InvalidSpec(e.to_string()))?;
        if spec.network == NetworkMode::Host {
            return Err(ProviderError::Unsupported("host networking on the docker backend".into()));
        }
        self.check_root(&spec.template).await?;
        let flags = self.image_flags(&spec.template).await?;
        let network_id = self.ensure_networks(spec.network).await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut labels: HashMap<String, String> = HashMap::from([
            (L_OWNER.into(), self.cfg.owner.clone()),
            (L_ID.into(), spec.id.to_string()),
            (L_TEMPLATE.into(), spec.template.clone()),
            (L_SIZE.into(), serde_json::to_string(&spec.size).unwrap_or_default()),
            (L_CREATED.into(), now_ms.to_string()),
            (L_NETWORK.into(), self.network_name(spec.network)),
        ]);
        for (k, v) in &spec.labels {
            labels.insert(format!("{L_USER}{k}"), v.clone());
        }
        // Secrets reach the agent through its environment, which it scrubs;
        // the workspace's own variables are flags, after the image's.
        let mut env = vec![format!("WARREN_AGENT_INIT_TOKEN={}", spec.init_token)];
        if let Some(t) = &spec.access_token {
            env.push(format!("WARREN_AGENT_ACCESS_TOKEN={t}"));
        }
        let mut cmd = vec!["--listen".to_string(), format!("tcp://0.0.0.0:{AGENT_PORT}")];
        cmd.extend(flags);
        // The workspace's own variables (maybe secrets) stay off the
        // command line, which every user of the engine's host can read.
        if !spec.env.is_empty() {
            env.push(format!("WARREN_AGENT_ENV={}", serde_json::to_string(&spec.env).unwrap_or_default()));
        }
        let mib = |m: u32| m as i64 * 1024 * 1024;
        let host_config = HostConfig {
            binds: Some(vec![format!("{}:{AGENT_PATH}:ro", self.cfg.agent.display())]),
            nano_cpus: Some(spec.size.millicpus as i64 * 1_000_000),
            memory: Some(mib(spec.size.memory_mib)),
            memory_swap: Some(mib(spec.size.memory_mib)),
            pids_limit: Some(spec.size.pids as i64),
            network_mode: Some(network_id),
            runtime: self.cfg.runtime_for(&spec.template).map(str::to_string),
            // warren's own system-call policy instead of the engine's
            // default (older engines still allow io_uring, for one).
            security_opt: Some(vec![
                "no-new-privileges:true".into(),
                format!("seccomp={}", warren_provider::seccomp::docker_profile(false)),
            ]),
            // gVisor cannot start inside the engine's remapped user
            // namespace; its user-space kernel is the boundary there.
            userns_mode: (self.cfg.runtime_for(&spec.template) == Some("runsc")).then(|| "host".to_string()),
            // Device nodes come only from the engine's /dev.
            cap_drop: Some(vec!["MKNOD".into()]),
            storage_opt: if self.supports_storage_opt().await {
                Some(HashMap::from([("size".to_string(), format!("{}M", spec.size.disk_mib))]))
            } else {
                None
            },
            init: Some(false),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.template.clone()),
            hostname: Some(spec.id.to_string()),
            entrypoint: Some(vec![AGENT_PATH.into()]),
            cmd: Some(cmd),
            env: Some(env),
            // Root, so the agent can run processes as any user of the image.
            user: Some("0:0".into()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = name_of(&spec.id);
        let opts = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        self.call(&format!("workspace {}", spec.id), self.docker.create_container(Some(opts), body)).await.map_err(
            |e| match e {
                ProviderError::AlreadyExists(_) => ProviderError::AlreadyExists(spec.id.to_string()),
                ProviderError::NotFound(m) => ProviderError::InvalidSpec(m),
                other => other,
            },
        )?;
        let started = async {
            self.call(&format!("start {}", spec.id), self.docker.start_container(&name, None)).await?;
            let info = self.inspect(&spec.id).await?;
            wait_healthy(&info.endpoint, self.cfg.ready_timeout).await?;
            Ok::<_, ProviderError>(info)
        }
        .await;
        match started {
            Ok(info) => Ok(info),
            Err(e) => {
                // Leave nothing half-made behind.
                let _ = self.destroy(&spec.id).await;
                Err(e)
            }
        }
    }

    async fn inspect(&self, id: &WorkspaceId) -> Result<SandboxInfo> {
        let c = self.inspect_raw(id).await?;
        let labels = c.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let network = labels.get(L_NETWORK).cloned().unwrap_or_default();
        let ip = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| n.get(&network))
            .and_then(|e| e.ip_address.clone());
        self.info_from(&labels, Self::state_of(c.state.as_ref()), ip)
            .ok_or_else(|| ProviderError::Internal(format!("container of {id} has unreadable labels")))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), vec![format!("{L_OWNER}={}", self.cfg.owner)])])),
            ..Default::default()
        };
        let all = self.call("list containers", self.docker.list_containers(Some(opts))).await?;
        Ok(all
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let network = labels.get(L_NETWORK).cloned().unwrap_or_default();
                let ip = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(&network))
                    .and_then(|e| e.ip_address);
                let state = match c.state {
                    Some(bollard::models::ContainerSummaryStateEnum::RUNNING) => RunState::Running,
                    Some(bollard::models::ContainerSummaryStateEnum::PAUSED) => RunState::Paused,
                    _ => RunState::Exited,
                };
                self.info_from(&labels, state, ip)
            })
            .collect())
    }

    async fn pause(&self, id: &WorkspaceId) -> Result<()> {
        self.inspect_raw(id).await?;
        self.call(&format!("pause {id}"), self.docker.pause_container(&name_of(id))).await
    }

    async fn resume(&self, id: &WorkspaceId) -> Result<()> {
        self.inspect_raw(id).await?;
        self.call(&format!("resume {id}"), self.docker.unpause_container(&name_of(id))).await
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<()> {
        let c = self.inspect_raw(id).await?;
        if Self::state_of(c.state.as_ref()) == RunState::Paused {
            // A frozen container cannot take the stop signal.
            let _ = self.docker.unpause_container(&name_of(id)).await;
        }
        let opts = StopContainerOptions { t: Some(2), ..Default::default() };
        match self.call(&format!("stop {id}"), self.docker.stop_container(&name_of(id), Some(opts))).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(ProviderError::Internal(m)) if m.contains("304") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<()> {
        match self.inspect_raw(id).await {
            Ok(_) => {}
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match self.call(&format!("remove {id}"), self.docker.remove_container(&name_of(id), Some(opts))).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => Ok(()),
            // Removal already in progress (a concurrent destroy).
            Err(ProviderError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn stats(&self, id: &WorkspaceId) -> Result<Stats> {
        let sized = self.inspect_sized(id, true).await?;
        let name = name_of(id);
        let opts = StatsOptions { stream: false, one_shot: true };
        let mut stream = self.docker.stats(&name, Some(opts));
        let s = match tokio::time::timeout(self.cfg.call_timeout, stream.next()).await {
            Ok(Some(r)) => r.map_err(|e| classify(e, &format!("stats {id}")))?,
            Ok(None) => return Err(ProviderError::Internal(format!("stats {id}: empty answer"))),
            Err(_) => return Err(unavailable(format!("stats {id}: no answer"))),
        };
        let size: Size = sized
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(L_SIZE))
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mem = s.memory_stats.as_ref();
        Ok(Stats {
            cpu_ns: s.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage).unwrap_or(0),
            memory_bytes: mem.and_then(|m| m.usage).unwrap_or(0),
            memory_limit_bytes: mem.and_then(|m| m.limit).unwrap_or(size.memory_mib as u64 * 1024 * 1024),
            disk_used_bytes: sized.size_rw.unwrap_or(0).max(0) as u64,
            disk_total_bytes: size.disk_mib as u64 * 1024 * 1024,
            pids: s.pids_stats.and_then(|p| p.current).unwrap_or(0),
        })
    }

    async fn import_template(&self, name: &str, archive: &Path) -> Result<TemplateInfo> {
        valid_template_name(name).map_err(ProviderError::InvalidSpec)?;
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| ProviderError::InvalidSpec(format!("{}: {e}", archive.display())))?;
        let body = futures_util::stream::unfold(file, |mut f| async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let mut out = self.docker.import_image_stream(
            bollard::query_parameters::ImportImageOptions { quiet: true, ..Default::default() },
            body,
            None,
        );
        let mut loaded: Option<String> = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
        loop {
            let next = tokio::time::timeout_at(deadline, out.next())
                .await
                .map_err(|_| unavailable("image load: no answer within 30 minutes"))?;
            let Some(item) = next else { break };
            let info = item.map_err(|e| match classify(e, "image load") {
                ProviderError::Internal(m) => ProviderError::InvalidSpec(m),
                other => other,
            })?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(ProviderError::InvalidSpec(format!("image load: {err}")));
            }
            if let Some(s) = info.stream {
                for line in s.lines() {
                    if let Some(r) =
                        line.strip_prefix("Loaded image: ").or_else(|| line.strip_prefix("Loaded image ID: "))
                    {
                        loaded = Some(r.trim().to_string());
                    }
                }
            }
        }
        let loaded =
            loaded.ok_or_else(|| ProviderError::InvalidSpec("image load: the archive held no image".into()))?;
        let opts = TagImageOptions { repo: Some(name.to_string()), tag: Some("latest".into()) };
        self.call(&format!("tag {loaded}"), self.docker.tag_image(&loaded, Some(opts))).await?;
        self.templates()
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ProviderError::Internal(format!("image {name} loaded but not listed")))
    }
}

/// Template names usable as Docker repository names.
fn valid_template_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("template name {name:?}: lowercase letters, digits, '-', '_', '.', '/' (Docker repository rules)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let e = |code: u16, m: &str| DockerError::DockerResponseServerError { status_code: code, message: m.into() };
        assert!(matches!(classify(e(404, "no such container"), "x"), ProviderError::NotFound(_)));
        assert!(matches!(classify(e(409, "name in use"), "x"), ProviderError::AlreadyExists(_)));
        assert!(matches!(classify(e(400, "bad"), "x"), ProviderError::InvalidSpec(_)));
        assert!(matches!(classify(e(500, "write: no space left on device"), "x"), ProviderError::Capacity(_)));
        assert!(matches!(classify(e(500, "boom"), "x"), ProviderError::Internal(_)));
        assert!(matches!(classify(DockerError::RequestTimeoutError, "x"), ProviderError::Unavailable(_)));
    }

    #[test]
    fn template_names_follow_docker_rules() {
        assert!(valid_template_name("busybox").is_ok());
        assert!(valid_template_name("team/python-3.12").is_ok());
        for bad in ["", "Upper", "-lead", "a b", "x:tag", &"a".repeat(200)] {
            assert!(valid_template_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn runtime_per_template() {
        let mut c = DockerConfig::new("/a");
        assert_eq!(c.runtime_for("x"), None);
        c.runtime = Some("runc".into());
        c.template_runtimes.insert("secure".into(), "runsc".into());
        assert_eq!(c.runtime_for("x"), Some("runc"));
        assert_eq!(c.runtime_for("secure"), Some("runsc"));
    }
}
