//! `warren serve`: configuration, wiring, start-up and shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use warren_core::{Clock, SystemClock};
use warren_orchestrator::{Config as OrchConfig, Orchestrator};
use warren_provider::SandboxProvider;
use warren_server::{auth, AppState};
use warren_store::{RedbStore, StateStore};

/// `warren.toml`. Every field has a working default; environment variables
/// and flags override the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the API (env WARREN_LISTEN).
    pub listen: String,
    /// Holds the state store, templates and workspaces (env WARREN_DATA_DIR).
    pub data_dir: PathBuf,
    /// The backend (env WARREN_PROVIDER); see [`BackendKind`].
    pub provider: BackendKind,
    /// Seconds a workspace lives unless told otherwise.
    pub default_timeout: u64,
    /// Longest timeout a client may ask for, seconds.
    pub max_timeout: u64,
    /// Pause (or kill, where the backend cannot pause) a running workspace
    /// after this many seconds without activity: no exec, file or gateway
    /// traffic and no process running. 0 turns idle detection off.
    pub idle_timeout: u64,
    /// The agent binary injected into workspaces (default: next to `warren`).
    pub agent: Option<PathBuf>,
    /// The `warren-sandbox` helper (default: next to `warren`).
    pub sandbox_helper: Option<PathBuf>,
    /// Install the seccomp filter in local workspaces.
    pub seccomp: bool,
    /// Let local workspaces use io_uring (off: a large kernel surface).
    pub io_uring: bool,
    /// Local templates that run under gVisor (runsc) instead of warren's
    /// own namespaces (`"*"`: all of them).
    pub gvisor_templates: Vec<String>,
    /// The runsc binary for them.
    pub runsc: PathBuf,
    /// E2B sandbox domain: returned to SDKs as `domain`, and the suffix of
    /// `{port}-{id}.{domain}` hosts the gateway routes (env WARREN_E2B_DOMAIN).
    pub e2b_domain: Option<String>,
    /// PEM certificate chain and private key: serve HTTPS (h2 and HTTP/1.1)
    /// instead of HTTP (env WARREN_TLS_CERT, WARREN_TLS_KEY).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Warm pools: `[[pools]]` tables with `template`, `target` and an
    /// optional `size` ({millicpus, memoryMib, diskMib, pids}); with `max`
    /// (and optionally `min`) the target adapts to demand.
    pub pools: Vec<warren_orchestrator::pool::PoolSpec>,
    /// The largest workspace a client may ask for: `[max_size]` with
    /// millicpus, memory_mib, disk_mib, pids (default 4 CPUs, 8 GiB, 20 GiB,
    /// 4,096; each a number or "unlimited").
    pub max_size: crate::limits::MaxSize,
    /// Limits for every tenant: `[default_quota]` with max_workspaces,
    /// max_millicpus, max_memory_mib, max_creates_per_minute (default 100
    /// workspaces, 64 CPUs, 128 GiB, no rate; each a number or "unlimited").
    pub default_quota: crate::limits::QuotaSection,
    /// Per-tenant limits: `[tenant_quotas.<tenant>]`, same keys.
    pub tenant_quotas: std::collections::HashMap<String, crate::limits::QuotaSection>,
    /// Price catalog for invoices (default: the one shipped with warren).
    pub cost_catalog: Option<PathBuf>,
    /// Which catalog setup this deployment's infrastructure costs like.
    pub cost_setup: String,
    /// The class (price per workspace-hour) of tenants not in `tenant_classes`.
    pub default_class: String,
    /// `[tenant_classes]`: tenant = class name from the catalog.
    pub tenant_classes: std::collections::HashMap<String, String>,
    /// `[backend_setups]`: backend = catalog setup its time costs like
    /// (default `e2b = "e2b-pro"`; other backends cost like `cost_setup`).
    pub backend_setups: std::collections::HashMap<String, String>,
    /// `[docker]`: the Docker backend's settings.
    pub docker: DockerSection,
    /// Keep state in Redis (`redis://host:port/db`) instead of the embedded
    /// store, so several replicas serve one fleet (env WARREN_REDIS_URL).
    pub redis_url: Option<String>,
    /// Key prefix in Redis (default `{warren}:`).
    pub redis_prefix: Option<String>,
    /// This replica's id (default: hostname-port).
    pub node_id: Option<String>,
    /// The URL other replicas reach this one at (default: from `listen`).
    pub advertise_url: Option<String>,
    /// Seconds a replica may stay silent before its workspaces are failed.
    pub replica_timeout: u64,
    /// `[e2b_backend]`: an E2B-compatible API as a backend.
    pub e2b_backend: E2bBackendSection,
    /// `[routing]`: several backends, chosen per template or tenant, with overflow.
    pub routing: Option<RoutingSection>,
    /// `[ecs]`: the ECS backend (binaries built with `--features ecs`).
    pub ecs: EcsSection,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(not(feature = "ecs"), allow(dead_code))]
pub struct EcsSection {
    pub cluster: String,
    pub region: String,
    /// An endpoint other than AWS's (tests against moto, VPC endpoints).
    pub endpoint_url: Option<String>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    /// `FARGATE` or `EC2`, when no capacity providers are given.
    pub launch_type: String,
    /// `[[ecs.capacity_providers]]`: name, weight, base.
    pub capacity_providers: Vec<CapacityProvider>,
    /// `[ecs.images]`: template = image reference.
    pub images: std::collections::BTreeMap<String, String>,
    /// An image holding the static agent at /warren-agent.
    pub agent_image: Option<String>,
    pub owner: String,
    /// Seconds a task may take to run and answer.
    pub start_timeout: u64,
    /// Task execution role ARN (private images, logs).
    pub execution_role_arn: Option<String>,
    /// CloudWatch Logs group for workspace output (needs the execution role).
    pub log_group: Option<String>,
    /// Wait for each task's agent to answer before a create returns (off
    /// only against API doubles such as moto, which run no containers).
    pub wait_for_agent: bool,
    /// `awsvpc` (one ENI per task, default) or `bridge` (EC2 only: the
    /// agent on a dynamic host port of the instance).
    pub network_mode: String,
}

impl Default for EcsSection {
    fn default() -> Self {
        EcsSection {
            cluster: "warren".into(),
            region: "us-east-1".into(),
            endpoint_url: None,
            subnets: Vec::new(),
            security_groups: Vec::new(),
            launch_type: "FARGATE".into(),
            capacity_providers: Vec::new(),
            images: Default::default(),
            agent_image: None,
            owner: "warren".into(),
            start_timeout: 120,
            execution_role_arn: None,
            log_group: None,
            wait_for_agent: true,
            network_mode: "awsvpc".into(),
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "ecs"), allow(dead_code))]
pub struct CapacityProvider {
    pub name: String,
    #[serde(default = "one")]
    pub weight: i32,
    #[serde(default)]
    pub base: i32,
}

fn one() -> i32 {
    1
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct E2bBackendSection {
    /// e.g. `https://api.e2b.app`, or another warren's URL.
    pub api_url: Option<String>,
    /// The API key (env E2B_API_KEY).
    pub api_key: Option<String>,
    /// HOST:PORT of an envd gateway routing by header (default for an
    /// `http://` API: the API's).
    pub envd_addr: Option<String>,
    /// DOMAIN[:PORT] where envd is served over TLS as `49983-{id}.{domain}`
    /// (default for `https://api.{domain}`: that domain).
    pub envd_domain: Option<String>,
    /// HOST:PORT to connect to for those names instead of resolving them.
    pub envd_via: Option<String>,
    /// Metadata value marking this installation's sandboxes.
    pub owner: String,
}

impl Default for E2bBackendSection {
    fn default() -> Self {
        E2bBackendSection {
            api_url: None,
            api_key: None,
            envd_addr: None,
            envd_domain: None,
            envd_via: None,
            owner: "warren".into(),
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// Backend for creates no route matches.
    pub default: String,
    /// Backend for creates the chosen one cannot take (full or down).
    #[serde(default)]
    pub overflow: Option<String>,
    /// `[[routing.routes]]`: backend, templates, tenants.
    #[serde(default)]
    pub routes: Vec<warren_provider::routing::Route>,
}

/// The backends a server can drive (`provider`, and the names `[routing]`
/// uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Namespaces (or gVisor per template) on this host; needs root.
    Local,
    /// Containers on a Docker engine (`[docker]`).
    Docker,
    /// Sandboxes on an E2B-compatible API (`[e2b_backend]`).
    E2b,
    /// Tasks on AWS ECS (`[ecs]`; built with `--features ecs`).
    Ecs,
    /// Plain host processes, no isolation: development only.
    Process,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Docker => "docker",
            BackendKind::E2b => "e2b",
            BackendKind::Ecs => "ecs",
            BackendKind::Process => "process",
        }
    }

    /// By name, as `[routing]` names backends.
    fn parse(name: &str) -> Result<Self> {
        <BackendKind as clap::ValueEnum>::from_str(name, false)
            .map_err(|_| anyhow::anyhow!("backend {name:?}: expected local, docker, e2b, ecs or process"))
    }
}

/// Settings of the Docker backend.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSection {
    /// Engine address: `unix:///var/run/docker.sock` or `tcp://HOST:PORT` (env DOCKER_HOST).
    pub host: Option<String>,
    /// OCI runtime for every template (e.g. `runsc` for gVisor); default: the engine's.
    pub runtime: Option<String>,
    /// Runtime per template: `[docker.template_runtimes] secure = "runsc"`.
    pub template_runtimes: std::collections::BTreeMap<String, String>,
    /// Label value marking this installation's containers.
    pub owner: String,
    /// Prefix of warren's two Docker networks.
    pub network_prefix: String,
    /// Accept an engine whose containers' root is the host's root (no
    /// userns-remap, not rootless) for runc templates. Unsafe; off.
    pub allow_host_root: bool,
}

impl Default for DockerSection {
    fn default() -> Self {
        DockerSection {
            host: None,
            runtime: None,
            template_runtimes: Default::default(),
            owner: "warren".into(),
            network_prefix: "warren".into(),
            allow_host_root: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7474".into(),
            data_dir: PathBuf::from("/var/lib/warren"),
            provider: BackendKind::Local,
            default_timeout: 300,
            max_timeout: 86_400,
            idle_timeout: 0,
            agent: None,
            sandbox_helper: None,
            seccomp: true,
            io_uring: false,
            gvisor_templates: Vec::new(),
            runsc: PathBuf::from("runsc"),
            e2b_domain: None,
            tls_cert: None,
            tls_key: None,
            pools: Vec::new(),
            max_size: Default::default(),
            default_quota: Default::default(),
            tenant_quotas: Default::default(),
            cost_catalog: None,
            cost_setup: "ecs-ec2-od".into(),
            default_class: "standard".into(),
            tenant_classes: Default::default(),
            backend_setups: warren_server::CostConfig::default().backend_setups,
            docker: Default::default(),
            redis_url: None,
            redis_prefix: None,
            node_id: None,
            advertise_url: None,
            replica_timeout: 30,
            e2b_backend: Default::default(),
            routing: None,
            ecs: Default::default(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML). Env: WARREN_CONFIG.
    #[arg(long, env = "WARREN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:7474 or 0.0.0.0:7474. Env: WARREN_LISTEN.
    #[arg(long, env = "WARREN_LISTEN")]
    pub listen: Option<String>,
    /// Data directory. Env: WARREN_DATA_DIR.
    #[arg(long, env = "WARREN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Backend: local (namespaces or gVisor on this host; needs root),
    /// docker (containers on a Docker engine), e2b (an E2B-compatible API),
    /// ecs (AWS ECS tasks; built with --features ecs) or process (plain host
    /// processes, no isolation: development only). Env: WARREN_PROVIDER.
    #[arg(long, env = "WARREN_PROVIDER", value_enum)]
    pub provider: Option<BackendKind>,
    /// A file holding the admin API key to use instead of a generated one.
    /// Env: WARREN_ADMIN_KEY_FILE (or WARREN_ADMIN_KEY with the key itself).
    #[arg(long, env = "WARREN_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Log lines on stderr: `text` for people, `json` (one object a line,
    /// with workspace and tenant fields) for log pipelines. Which lines:
    /// WARREN_LOG (e.g. `info`, `warren_orchestrator=debug`; default info).
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sends `tracing` events to stderr in the chosen format.
fn init_logs(format: LogFormat) -> Result<()> {
    let filter = match std::env::var("WARREN_LOG") {
        Ok(f) => tracing_subscriber::EnvFilter::try_new(&f).with_context(|| format!("WARREN_LOG={f:?}"))?,
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let done = match format {
        LogFormat::Text => {
            use std::io::IsTerminal as _;
            builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).try_init()
        }
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    // Already set (serve run twice in one process, as tests do): keep it.
    let _ = done;
    Ok(())
}

pub fn load_config(args: &ServeArgs) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => {
            let raw = std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
            toml::from_str::<Config>(&raw).with_context(|| format!("invalid config {}", p.display()))?
        }
        None => Config::default(),
    };
    if let Some(l) = &args.listen {
        cfg.listen = l.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(p) = &args.provider {
        cfg.provider = *p;
    }
    if let Some(c) = std::env::var_os("WARREN_TLS_CERT") {
        cfg.tls_cert = Some(PathBuf::from(c));
    }
    if let Some(k) = std::env::var_os("WARREN_TLS_KEY") {
        cfg.tls_key = Some(PathBuf::from(k));
    }
    if let Ok(u) = std::env::var("WARREN_REDIS_URL") {
        cfg.redis_url = Some(u).filter(|u| !u.is_empty());
    }
    if let Ok(d) = std::env::var("WARREN_E2B_DOMAIN") {
        cfg.e2b_domain = Some(d).filter(|d| !d.is_empty());
    }
    validate(&cfg)?;
    Ok(cfg)
}

fn validate(cfg: &Config) -> Result<()> {
    cfg.listen
        .parse::<std::net::SocketAddr>()
        .with_context(|| format!("listen = {:?}: expected an address like 127.0.0.1:7474", cfg.listen))?;
    if let Some(r) = &cfg.routing {
        for b in std::iter::once(&r.default).chain(r.overflow.iter()).chain(r.routes.iter().map(|x| &x.backend)) {
            BackendKind::parse(b).context("[routing]")?;
        }
    }
    if cfg.default_timeout == 0 || cfg.default_timeout > cfg.max_timeout {
        bail!("default_timeout = {}: must be between 1 and max_timeout ({})", cfg.default_timeout, cfg.max_timeout);
    }
    if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
        bail!("tls_cert and tls_key go together: give both or neither");
    }
    if !cfg.data_dir.is_absolute() {
        bail!("data_dir = {}: must be an absolute path", cfg.data_dir.display());
    }
    if cfg.replica_timeout < 2 {
        bail!("replica_timeout = {}: at least 2 seconds", cfg.replica_timeout);
    }
    if let Some(u) = &cfg.redis_url {
        if !u.starts_with("redis://") && !u.starts_with("rediss://") {
            bail!("redis_url = {u:?}: expected redis://HOST:PORT[/DB]");
        }
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "warren".into())
}

/// The price catalog and classes invoices are computed with.
fn cost_config(cfg: &Config) -> Result<warren_server::CostConfig> {
    let catalog = match &cfg.cost_catalog {
        Some(p) => warren_cost::Catalog::load(p)?,
        None => warren_cost::Catalog::embedded(),
    };
    let c = warren_server::CostConfig {
        catalog,
        setup: cfg.cost_setup.clone(),
        default_class: cfg.default_class.clone(),
        tenant_classes: cfg.tenant_classes.clone(),
        backend_setups: cfg.backend_setups.clone(),
    };
    c.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(c)
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the warren binary")?;
    let dir = exe.parent().context("warren binary has no directory")?;
    Ok(dir.join(name))
}

async fn provider(cfg: &Config) -> Result<Arc<dyn SandboxProvider>> {
    let Some(r) = &cfg.routing else { return backend(cfg, cfg.provider).await };
    let mut names: Vec<&str> = vec![r.default.as_str()];
    names.extend(r.overflow.as_deref());
    names.extend(r.routes.iter().map(|x| x.backend.as_str()));
    names.sort_unstable();
    names.dedup();
    let mut backends = Vec::new();
    for n in names {
        backends.push((n.to_string(), backend(cfg, BackendKind::parse(n)?).await?));
    }
    let router =
        warren_provider::routing::RoutingProvider::new(backends, r.routes.clone(), &r.default, r.overflow.as_deref())
            .map_err(|e| anyhow::anyhow!("[routing]: {e}"))?;
    Ok(Arc::new(router))
}

/// The E2B backend (`[e2b_backend]`).
fn e2b_backend(cfg: &Config) -> Result<Arc<dyn SandboxProvider>> {
    let e = &cfg.e2b_backend;
    let url = e.api_url.clone().context("[e2b_backend] api_url is required for the e2b backend")?;
    let key = e
        .api_key
        .clone()
        .or_else(|| std::env::var("E2B_API_KEY").ok())
        .context("[e2b_backend] api_key (or env E2B_API_KEY) is required for the e2b backend")?;
    let mut c = warren_provider_e2b::E2bBackendConfig::new(url, key);
    c.owner = e.owner.clone();
    c.envd_addr = e.envd_addr.clone();
    c.envd_domain = e.envd_domain.clone();
    c.envd_via = e.envd_via.clone();
    let p = warren_provider_e2b::E2bProvider::new(c).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Arc::new(p))
}

/// The agent binary a backend injects into workspaces.
fn agent_for(cfg: &Config, kind: BackendKind) -> Result<PathBuf> {
    let agent = match (&cfg.agent, std::env::var_os("WARREN_AGENT_BIN")) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => PathBuf::from(a),
        (None, None) => {
            // Prefer the static build (scripts/build-agent.sh): smaller, and it
            // runs inside any image; but never a static build older than the
            // agent built beside warren.
            let exe = std::env::current_exe().context("locating the warren binary")?;
            let plain = sibling("warren-agent")?;
            let static_agent = exe.parent().and_then(|d| d.parent()).map(|t| t.join("agent-static/warren-agent"));
            let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            match static_agent.filter(|p| p.is_file()) {
                Some(st) if kind == BackendKind::Docker || mtime(&plain).is_none() || mtime(&st) >= mtime(&plain) => st,
                _ => plain,
            }
        }
    };
    if !agent.is_file() {
        bail!(
            "agent binary {} not found (build it with `cargo build --release`, or set agent = \"...\")",
            agent.display()
        );
    }
    Ok(agent)
}

/// One backend.
async fn backend(cfg: &Config, kind: BackendKind) -> Result<Arc<dyn SandboxProvider>> {
    Ok(match kind {
        BackendKind::Ecs => return ecs_backend(cfg).await,
        BackendKind::E2b => return e2b_backend(cfg),
        BackendKind::Process => {
            let agent = agent_for(cfg, kind)?;
            // The test backend; WARREN_PROCESS_CREATE_DELAY_MS slows its
            // creates so tests can kill a server mid-create.
            let delay = std::env::var("WARREN_PROCESS_CREATE_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            Arc::new(
                warren_provider::fake::ProcessProvider::new(cfg.data_dir.join("process"), agent)
                    .with_create_delay(Duration::from_millis(delay)),
            )
        }
        BackendKind::Docker => {
            let agent = agent_for(cfg, kind)?;
            let agent = std::fs::canonicalize(&agent).with_context(|| format!("agent {}", agent.display()))?;
            if is_dynamic_elf(&agent) {
                bail!(
                    "agent {}: the docker provider needs the static agent, which runs in any image \
                     (build it with scripts/build-agent.sh, or set agent = \"...\")",
                    agent.display()
                );
            }
            let d = &cfg.docker;
            let mut dc = warren_provider_docker::DockerConfig::new(agent);
            dc.host = d.host.clone().or_else(|| std::env::var("DOCKER_HOST").ok());
            dc.runtime = d.runtime.clone();
            dc.template_runtimes = d.template_runtimes.clone();
            dc.owner = d.owner.clone();
            dc.allow_host_root = d.allow_host_root;
            dc.network_prefix = d.network_prefix.clone();
            let docker = warren_provider_docker::DockerProvider::connect(dc).map_err(|e| anyhow::anyhow!("{e}"))?;
            let version =
                docker.ping().await.map_err(|e| anyhow::anyhow!("{e} (is dockerd running? set [docker] host)"))?;
            tracing::info!(engine = %version, "docker provider");
            if !d.allow_host_root && !docker.root_is_remapped().await.unwrap_or(false) {
                tracing::warn!(
                    "this Docker engine runs containers' root as the host's root (no userns-remap, not rootless): runc templates will be refused; see docs/docker-provider.md"
                );
            }
            Arc::new(docker)
        }
        BackendKind::Local => {
            let agent = agent_for(cfg, kind)?;
            let helper = match &cfg.sandbox_helper {
                Some(h) => h.clone(),
                None => sibling("warren-sandbox")?,
            };
            let local = warren_provider_local::LocalProvider::new(warren_provider_local::LocalConfig {
                state_dir: cfg.data_dir.join("local"),
                agent,
                helper,
                seccomp: cfg.seccomp,
                io_uring: cfg.io_uring,
            })
            .map_err(|e| anyhow::anyhow!("local provider: {e} (use --provider process to run without isolation)"))?
            .with_gvisor(cfg.gvisor_templates.clone(), cfg.runsc.clone())
            .map_err(|e| anyhow::anyhow!("local provider: {e}"))?;
            Arc::new(local)
        }
    })
}

#[cfg(feature = "ecs")]
async fn ecs_backend(cfg: &Config) -> Result<Arc<dyn SandboxProvider>> {
    let e = &cfg.ecs;
    let launch = if e.capacity_providers.is_empty() {
        warren_provider_ecs::Launch::LaunchType(e.launch_type.clone())
    } else {
        warren_provider_ecs::Launch::Strategy(
            e.capacity_providers.iter().map(|c| (c.name.clone(), c.weight, c.base)).collect(),
        )
    };
    let c = warren_provider_ecs::EcsConfig {
        cluster: e.cluster.clone(),
        region: e.region.clone(),
        endpoint_url: e.endpoint_url.clone(),
        subnets: e.subnets.clone(),
        security_groups: e.security_groups.clone(),
        launch,
        images: e.images.clone(),
        agent_image: e.agent_image.clone().context("[ecs] agent_image is required (an image with /warren-agent)")?,
        owner: e.owner.clone(),
        wait_for_agent: e.wait_for_agent,
        start_timeout: Duration::from_secs(e.start_timeout),
        execution_role_arn: e.execution_role_arn.clone(),
        log_group: e.log_group.clone(),
        network: match e.network_mode.as_str() {
            "awsvpc" => warren_provider_ecs::TaskNetwork::Awsvpc,
            "bridge" => warren_provider_ecs::TaskNetwork::Bridge,
            other => bail!("[ecs] network_mode = {other:?}: expected \"awsvpc\" or \"bridge\""),
        },
    };
    Ok(Arc::new(warren_provider_ecs::EcsProvider::new(c).await.map_err(|e| anyhow::anyhow!("{e}"))?))
}

#[cfg(not(feature = "ecs"))]
async fn ecs_backend(_cfg: &Config) -> Result<Arc<dyn SandboxProvider>> {
    bail!("this warren was built without the ECS backend: cargo build --release -p warren-cli --features ecs")
}

/// True for an ELF executable that needs a dynamic loader.
fn is_dynamic_elf(p: &Path) -> bool {
    let Ok(bytes) = std::fs::read(p) else { return false };
    // PT_INTERP names the loader; a static binary has none.
    bytes.starts_with(b"\x7fELF") && bytes.windows(14).any(|w| w == b"/lib64/ld-linu")
}

/// Ensures an admin key exists. Returns the key when it was created or
/// given now (so it can be printed), `None` when one already existed.
async fn admin_key(store: &dyn StateStore, args: &ServeArgs, data_dir: &Path) -> Result<Option<String>> {
    let preset = match (&args.admin_key_file, std::env::var("WARREN_ADMIN_KEY").ok()) {
        (Some(f), _) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.trim().to_string())
        }
        (None, Some(k)) => Some(k.trim().to_string()),
        (None, None) => None,
    };
    let now = SystemClock.now_ms();
    if let Some(key) = preset {
        if !auth::valid_key(&key) {
            bail!("the preset admin key must be 16 to 256 printable characters");
        }
        if store.get_api_key(&auth::hash_key(&key)).await?.is_none() {
            store
                .put_api_key(&auth::record(&key, &warren_core::TenantId::operator(), "admin (preset)", true, now))
                .await?;
        }
        return Ok(None);
    }
    if store.list_api_keys().await?.iter().any(|k| k.admin && !k.revoked) {
        return Ok(None);
    }
    let key = auth::new_key();
    store.put_api_key(&auth::record(&key, &warren_core::TenantId::operator(), "admin", true, now)).await?;
    // Root-only copy so that the CLI on this machine finds it.
    let path = data_dir.join("admin.key");
    std::fs::write(&path, format!("{key}\n")).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Some(key))
}

/// The server's oom_score_adj: far below any workspace (0 and up), above
/// the kernel's never-kill -1000 (kept for the workspace shims).
const SERVER_OOM_SCORE_ADJ: i32 = -900;

pub async fn run(args: ServeArgs) -> Result<()> {
    init_logs(args.log_format)?;
    let cfg = load_config(&args)?;
    // Under memory pressure the kernel kills workspaces before the server
    // that keeps their records (root may lower its own score; workspaces
    // are set back to 0 and cannot go lower). Needs CAP_SYS_RESOURCE.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", SERVER_OOM_SCORE_ADJ.to_string()) {
        tracing::warn!(
            error = %e,
            "cannot shield the server from the OOM killer (oom_score_adj {SERVER_OOM_SCORE_ADJ}); workspaces still cannot go below 0"
        );
    }
    // The price catalog is read and checked before anything changes.
    let cost = cost_config(&cfg)?;
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let listener =
        tokio::net::TcpListener::bind(&cfg.listen).await.with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let (store, node, node_url): (Arc<dyn StateStore>, String, String) = match &cfg.redis_url {
        None => (
            Arc::new({
                let path = cfg.data_dir.join("state.redb");
                let store = RedbStore::open(&path).map_err(|e| anyhow::anyhow!("opening the state store: {e}"))?;
                // It holds every workspace's access tokens: root's alone.
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .with_context(|| format!("restricting {}", path.display()))?;
                store
            }),
            String::new(),
            String::new(),
        ),
        Some(url) => {
            let store = warren_store_redis::RedisStore::open(url, cfg.redis_prefix.as_deref())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // Fail at start, clearly, rather than on the first request.
            store.list_api_keys().await.map_err(|e| anyhow::anyhow!("{e} (redis_url = {url:?})"))?;
            let host = hostname();
            let node = cfg.node_id.clone().unwrap_or_else(|| format!("{host}-{}", addr.port()));
            let scheme = if cfg.tls_cert.is_some() { "https" } else { "http" };
            let node_url = match &cfg.advertise_url {
                Some(u) => u.clone(),
                None if addr.ip().is_unspecified() => format!("{scheme}://{host}:{}", addr.port()),
                None => format!("{scheme}://{addr}"),
            };
            tracing::info!(node = %node, url = %node_url, "replica on the shared Redis store");
            (Arc::new(store), node, node_url)
        }
    };
    let provider = provider(&cfg).await?;
    tracing::info!(provider = cfg.provider.name(), routed = cfg.routing.is_some(), "backend ready");
    let orch = Arc::new(Orchestrator::new(
        provider,
        store.clone(),
        Arc::new(SystemClock),
        OrchConfig {
            default_timeout: Duration::from_secs(cfg.default_timeout),
            max_timeout: Duration::from_secs(cfg.max_timeout),
            idle_timeout: (cfg.idle_timeout > 0).then(|| Duration::from_secs(cfg.idle_timeout)),
            pools: cfg.pools.clone(),
            max_size: cfg.max_size.to_cap()?,
            default_quota: cfg.default_quota.to_quota(),
            tenant_quotas: cfg.tenant_quotas.iter().map(|(t, q)| (t.clone(), q.to_quota())).collect(),
            node,
            node_url,
            replica_timeout: Duration::from_secs(cfg.replica_timeout),
            ..OrchConfig::default()
        },
    ));
    let migrated = orch.migrate_records().await.map_err(|e| anyhow::anyhow!("migrating stored records: {e}"))?;
    if migrated > 0 {
        tracing::info!(count = migrated, "stored workspace records rewritten in the current layout");
    }
    let report = orch.reconcile().await.map_err(|e| anyhow::anyhow!("reconcile: {e}"))?;
    if report != Default::default() {
        tracing::info!(
            adopted = report.adopted,
            failed = report.failed,
            orphans_removed = report.orphans_removed,
            purged = report.purged,
            "reconciled the store with the backend"
        );
    }
    let created_key = admin_key(store.as_ref(), &args, &cfg.data_dir).await?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(warren_server::tls::config(c, k).map_err(|e| anyhow::anyhow!(e))?),
        _ => None,
    };
    let jobs = orch.spawn_jobs();
    let state =
        AppState::new(orch.clone(), warren_server::e2b::E2bConfig { domain: cfg.e2b_domain.clone() }).with_cost(cost);
    if let Some(key) = created_key {
        println!("admin API key (shown once, also in {}): {key}", cfg.data_dir.join("admin.key").display());
    }
    println!("warren ready on {}://{addr}", if tls.is_some() { "https" } else { "http" });
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down (workspaces keep running and are adopted at the next start)");
    };
    match tls {
        Some(t) => warren_server::tls::serve(listener, state, t, shutdown).await?,
        None => warren_server::serve(listener, state, shutdown).await?,
    }
    // The tick in progress finishes; pool members being built are kept
    // (adopted at the next start).
    jobs.shutdown().await;
    Ok(())
}
