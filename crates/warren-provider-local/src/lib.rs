//! The local provider: workspaces as isolated process trees on this host,
//! with no daemon. See ARCHITECTURE.md for the moving parts.
//!
//! Layout under the state directory:
//! `templates/base/rootfs` (the base template), and per workspace
//! `workspaces/<id>/{meta.json, rootfs/, scratch/, agent.sock}`.
//! Mounts live only in the workspace's own mount namespace, so they vanish
//! with it: a crash of the server leaves no mount behind.

pub mod cgroup;
pub mod gvisor;
pub mod idmap;
pub mod network;
pub mod oci;
pub mod sandbox;
pub mod security;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use warren_core::{Clock, Size, SystemClock, WorkspaceId};
use warren_proto::endpoint::Endpoint;
use warren_provider::fake::wait_healthy;
use warren_provider::procfs::start_ticks;
use warren_provider::{
    Capabilities, CreateSpec, IsolationTier, NetworkMode, ProviderError, Result, RunState, SandboxInfo,
    SandboxProvider, Stats, TemplateInfo,
};

use crate::cgroup::Cgroups;
use crate::sandbox::SandboxConfig;

/// How the local provider is set up.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Holds templates and workspaces (default `/var/lib/warren/local`).
    pub state_dir: PathBuf,
    /// The agent binary injected into every workspace (static for OCI images).
    pub agent: PathBuf,
    /// The `warren-sandbox` helper.
    pub helper: PathBuf,
    /// Install the seccomp filter (on by default).
    pub seccomp: bool,
    /// Let workspaces use io_uring (off by default).
    pub io_uring: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    template: String,
    size: Size,
    network: NetworkMode,
    created_at_ms: u64,
    labels: BTreeMap<String, String>,
    /// Host pid of the workspace's init (the agent).
    pid: i32,
    start_ticks: u64,
    /// The /30 link of a `bridge` workspace.
    #[serde(default)]
    link: Option<u32>,
    /// Runs under gVisor (runsc) instead of warren's own namespaces.
    #[serde(default)]
    gvisor: bool,
}

pub struct LocalProvider {
    cfg: LocalConfig,
    cgroups: Cgroups,
    base: tokio::sync::OnceCell<template::Template>,
    /// Firewall rules installed (once, on the first bridge workspace).
    rules: tokio::sync::OnceCell<()>,
    /// Held from choosing a link until its meta.json is written.
    links: tokio::sync::Mutex<()>,
    /// Templates that run under gVisor, and the runsc binary.
    gvisor_templates: Vec<String>,
    runsc: PathBuf,
    /// User-namespace id ranges, shared by every provider on this host.
    ids: idmap::IdRanges,
}

/// Where a workspace's id range is recorded from allocation on (before
/// its meta.json exists), so a create cut short still frees it.
const IDS_FILE: &str = "ids.json";

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> ProviderError + '_ {
    move |e| ProviderError::Internal(format!("{what}: {e}"))
}

impl LocalProvider {
    /// Checks the host (root, cgroups, helper and agent present).
    pub fn new(cfg: LocalConfig) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ProviderError::Unavailable(
                "the local provider needs root (namespaces, cgroups, mounts)".into(),
            ));
        }
        for (what, p) in [("agent", &cfg.agent), ("sandbox helper", &cfg.helper)] {
            if !p.is_file() {
                return Err(ProviderError::Unavailable(format!("{what} binary not found at {}", p.display())));
            }
        }
        let cgroups = Cgroups::detect().map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        std::fs::create_dir_all(cfg.state_dir.join("workspaces")).map_err(internal("state dir"))?;
        // Templates (setuid programs of images among them) are root's alone;
        // the way to a workspace's root may be passed (not listed) by the
        // workspace's own ids, which build parts of it themselves.
        std::fs::create_dir_all(cfg.state_dir.join("templates")).map_err(internal("templates dir"))?;
        for (d, mode) in [
            (cfg.state_dir.clone(), 0o711),
            (cfg.state_dir.join("workspaces"), 0o711),
            (cfg.state_dir.join("templates"), 0o700),
        ] {
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(internal("state dir mode"))?;
        }
        let ids = idmap::IdRanges::new(idmap::DEFAULT_DIR).map_err(internal("user-namespace id ranges"))?;
        ids.collect_garbage();
        Ok(LocalProvider {
            ids,
            cfg,
            cgroups,
            base: tokio::sync::OnceCell::new(),
            rules: tokio::sync::OnceCell::new(),
            links: tokio::sync::Mutex::new(()),
            gvisor_templates: Vec::new(),
            runsc: PathBuf::from("runsc"),
        })
    }

    /// Runs `templates` (`*`: every template) under gVisor with `runsc`
    /// instead of warren's own namespaces; refused when runsc cannot run.
    pub fn with_gvisor(mut self, templates: Vec<String>, runsc: PathBuf) -> Result<Self> {
        if !templates.is_empty() {
            gvisor::check(&runsc).map_err(|e| {
                ProviderError::Unavailable(format!(
                    "gVisor runtime: cannot run {} ({e}); apt-get install runsc",
                    runsc.display()
                ))
            })?;
        }
        self.gvisor_templates = templates;
        self.runsc = runsc;
        Ok(self)
    }

    fn uses_gvisor(&self, template: &str) -> bool {
        self.gvisor_templates.iter().any(|t| t == template || t == "*")
    }

    /// The isolation tier of a template's workspaces.
    fn tier(&self, template: &str) -> IsolationTier {
        if self.uses_gvisor(template) {
            IsolationTier::Gvisor
        } else {
            IsolationTier::Namespaces
        }
    }

    fn runsc_state(&self) -> PathBuf {
        self.cfg.state_dir.join("runsc")
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    fn dir(&self, id: &WorkspaceId) -> PathBuf {
        self.cfg.state_dir.join("workspaces").join(id.as_str())
    }

    async fn base(&self) -> Result<&template::Template> {
        self.base
            .get_or_try_init(|| async {
                let dir = self.cfg.state_dir.join("templates");
                tokio::task::spawn_blocking(move || template::ensure_base(&dir))
                    .await
                    .map_err(|e| ProviderError::Internal(format!("template task: {e}")))?
                    .map_err(internal("building the base template"))
            })
            .await
    }

    fn all_meta(&self) -> Vec<Meta> {
        let Ok(rd) = std::fs::read_dir(self.cfg.state_dir.join("workspaces")) else { return vec![] };
        rd.flatten()
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).ok()?).ok())
            .collect()
    }

    fn read_meta(&self, id: &WorkspaceId) -> Result<Meta> {
        let raw = std::fs::read(self.dir(id).join("meta.json")).map_err(|_| ProviderError::NotFound(id.to_string()))?;
        serde_json::from_slice(&raw).map_err(|e| ProviderError::Internal(format!("corrupt meta of {id}: {e}")))
    }

    fn info(&self, id: &WorkspaceId, m: &Meta) -> SandboxInfo {
        let state = if proc_alive(m.pid, m.start_ticks) {
            if self.cgroups.is_frozen(id.as_str()) {
                RunState::Paused
            } else {
                RunState::Running
            }
        } else {
            RunState::Exited
        };
        SandboxInfo {
            id: id.clone(),
            template: m.template.clone(),
            size: m.size,
            state,
            endpoint: Endpoint::Unix(if m.gvisor {
                gvisor::socket(&self.dir(id))
            } else {
                self.dir(id).join("agent.sock")
            }),
            created_at_ms: m.created_at_ms,
            labels: m.labels.clone(),
            access_token: None,
        }
    }

    /// Removes everything of a workspace that is not running (best effort,
    /// then the error of the first step that failed).
    fn teardown(&self, id: &WorkspaceId, pid: Option<(i32, u64)>) -> Result<()> {
        if let Some((pid, ticks)) = pid {
            kill_and_wait(pid, ticks)?;
        }
        let dir = self.dir(id);
        let range: Option<idmap::IdRange> =
            std::fs::read(dir.join(IDS_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok());
        // A gVisor workspace's state and host mounts (harmless otherwise).
        if self.dir(id).join("config.json").exists() {
            gvisor::teardown(&self.runsc, &self.runsc_state(), id.as_str(), &self.dir(id));
        }
        network::detach(id.as_str());
        self.cgroups.destroy(id.as_str()).map_err(internal("removing cgroups"))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ProviderError::Internal(format!("removing {id}: {e}"))),
        }
        // Only now, with its processes dead and its files gone, may another
        // workspace get the same ids.
        if let Some(r) = range {
            self.ids.release(r, &dir).map_err(internal("releasing the id range"))?;
        }
        Ok(())
    }

    fn templates_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("templates")
    }

    /// Lower layers (top first), host binds, user, workdir and image env of a template.
    async fn resolve(&self, template: &str) -> Result<Resolved> {
        if template == "base" {
            let base = self.base().await?;
            return Ok(Resolved {
                layers: vec![base.rootfs.clone()],
                host_binds: base.host_binds.clone(),
                user: "user".into(),
                workdir: "/home/user".into(),
                env: vec![],
            });
        }
        let t = oci::load(&self.templates_dir(), template)
            .map_err(|_| ProviderError::InvalidSpec(format!("unknown template '{template}'")))?;
        if !is_static_elf(&self.cfg.agent) {
            return Err(ProviderError::InvalidSpec(format!(
                "template '{template}' is an OCI image and needs a static agent ({} is dynamically linked; build one with scripts/build-agent.sh)",
                self.cfg.agent.display()
            )));
        }
        let layers_dir = self.templates_dir().join("layers");
        Ok(Resolved {
            layers: t.layers.iter().rev().map(|d| layers_dir.join(d)).collect(),
            host_binds: vec![],
            user: t
                .user
                .as_deref()
                .and_then(|u| u.split(':').next())
                .filter(|u| !u.is_empty() && !u.bytes().all(|b| b.is_ascii_digit()))
                .unwrap_or("root")
                .to_string(),
            workdir: t.workdir.unwrap_or_else(|| "/".into()),
            env: t.env,
        })
    }

    /// Claims a host-wide id range for the workspace in `dir` and records it there.
    fn allocate_ids(&self, spec: &CreateSpec, dir: &Path) -> Result<idmap::IdRange> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        spec.id.as_str().hash(&mut h);
        let range = self.ids.allocate(dir, h.finish()).map_err(|e| match e.kind() {
            std::io::ErrorKind::OutOfMemory => ProviderError::Capacity(e.to_string()),
            _ => ProviderError::Internal(format!("allocating an id range: {e}")),
        })?;
        let raw = serde_json::to_vec(&range).map_err(|e| ProviderError::Internal(e.to_string()))?;
        if let Err(e) = std::fs::write(dir.join(IDS_FILE), raw) {
            let _ = self.ids.release(range, dir);
            return Err(ProviderError::Internal(format!("recording the id range: {e}")));
        }
        Ok(range)
    }

    async fn launch(&self, spec: &CreateSpec, dir: &Path) -> Result<(i32, u64)> {
        let tpl = self.resolve(&spec.template).await?;
        let ids = self.allocate_ids(spec, dir)?;
        let procs = self.cgroups.create(spec.id.as_str(), &spec.size).map_err(internal("creating cgroups"))?;
        let (agent_args, agent_env) = agent_setup(spec, &tpl);
        let disk = spec.size.disk_mib as u64 * 1024 * 1024;
        let cfg = SandboxConfig {
            id: spec.id.to_string(),
            dir: dir.to_path_buf(),
            layers: tpl.layers,
            host_binds: tpl.host_binds,
            disk_bytes: disk,
            tmp_bytes: disk.min(512 << 20),
            agent: self.cfg.agent.clone(),
            agent_args,
            agent_env,
            cgroup_procs: procs,
            seccomp: self.cfg.seccomp,
            io_uring: self.cfg.io_uring,
            ids,
        };
        let json = serde_json::to_vec(&cfg).map_err(|e| ProviderError::Internal(e.to_string()))?;
        let mut child = tokio::process::Command::new(&self.cfg.helper)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| ProviderError::Unavailable(format!("cannot run {}: {e}", self.cfg.helper.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&json).await.map_err(internal("writing sandbox config"))?;
        }
        let stdout = child.stdout.take().ok_or_else(|| ProviderError::Internal("no helper stdout".into()))?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        match tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ProviderError::Internal(format!("reading sandbox helper: {e}"))),
            Err(_) => {
                let _ = child.start_kill();
                return Err(ProviderError::Unavailable("sandbox helper did not answer within 30 s".into()));
            }
        }
        // The shim keeps running as the init's parent; tokio reaps it when it ends.
        drop(child);
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("ok ").and_then(|p| p.parse::<i32>().ok()) {
            return Ok((pid, start_ticks(pid)));
        }
        let reason = line.strip_prefix("error ").unwrap_or(line);
        Err(classify_launch_error(reason))
    }
}

impl LocalProvider {
    /// Starts a workspace under gVisor; returns the sandbox's pid and start time.
    async fn launch_gvisor(&self, spec: &CreateSpec, dir: &Path) -> Result<(i32, u64)> {
        let tpl = self.resolve(&spec.template).await?;
        let procs = self.cgroups.create(spec.id.as_str(), &spec.size).map_err(internal("creating cgroups"))?;
        let (agent_args, agent_env) = agent_setup(spec, &tpl);
        let disk = spec.size.disk_mib as u64 * 1024 * 1024;
        let (runsc, state, id, dir, agent) =
            (self.runsc.clone(), self.runsc_state(), spec.id.to_string(), dir.to_path_buf(), self.cfg.agent.clone());
        let pid = tokio::task::spawn_blocking(move || {
            gvisor::launch(&gvisor::GvisorLaunch {
                runsc: &runsc,
                state: &state,
                id: &id,
                dir: &dir,
                layers: &tpl.layers,
                host_binds: &tpl.host_binds,
                disk_bytes: disk,
                tmp_bytes: disk.min(512 << 20),
                agent: &agent,
                agent_args: &agent_args,
                agent_env: &agent_env,
                cgroup_procs: &procs,
            })
        })
        .await
        .map_err(|e| ProviderError::Internal(e.to_string()))?
        .map_err(|e| ProviderError::Unavailable(format!("gVisor: {e}")))?;
        Ok((pid, start_ticks(pid)))
    }
}

/// The agent's arguments (default user, workdir) and its environment: the
/// tokens, and the image's variables under the workspace's as JSON (tenant
/// values may be secrets: never on a command line, which every host user
/// can read).
fn agent_setup(spec: &CreateSpec, tpl: &Resolved) -> (Vec<String>, Vec<(String, String)>) {
    let args = vec!["--user".to_string(), tpl.user.clone(), "--workdir".into(), tpl.workdir.clone()];
    let mut vars: BTreeMap<&str, &str> = tpl.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut env = vec![("WARREN_AGENT_INIT_TOKEN".to_string(), spec.init_token.clone())];
    if let Some(t) = &spec.access_token {
        env.push(("WARREN_AGENT_ACCESS_TOKEN".into(), t.clone()));
    }
    if !vars.is_empty() {
        env.push(("WARREN_AGENT_ENV".into(), serde_json::to_string(&vars).unwrap_or_default()));
    }
    (args, env)
}

struct Resolved {
    layers: Vec<PathBuf>,
    host_binds: Vec<PathBuf>,
    user: String,
    workdir: String,
    env: Vec<(String, String)>,
}

/// True for an ELF file without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3
        b.get(o..o + 4).map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3).unwrap_or(false)
    })
}

fn classify_launch_error(reason: &str) -> ProviderError {
    let r = reason.to_ascii_lowercase();
    if r.contains("no space") || r.contains("cannot allocate memory") || r.contains("resource temporarily unavailable")
    {
        ProviderError::Capacity(reason.to_string())
    } else if reason.is_empty() {
        ProviderError::Internal("sandbox helper exited without a word".into())
    } else {
        ProviderError::Internal(format!("sandbox setup failed: {reason}"))
    }
}

/// A live, non-zombie process with this start time.
fn proc_alive(pid: i32, ticks: u64) -> bool {
    warren_provider::procfs::state(pid, ticks).is_some()
}

/// Kills a workspace's init (which takes its whole pid namespace along).
fn kill_and_wait(pid: i32, ticks: u64) -> Result<()> {
    if !proc_alive(pid, ticks) {
        return Ok(());
    }
    // SAFETY: kill(2) with plain integers; the pid was checked to be ours.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_alive(pid, ticks) {
        if Instant::now() > deadline {
            return Err(ProviderError::Internal(format!("workspace init {pid} did not die")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

#[async_trait]
impl SandboxProvider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolation: IsolationTier::Namespaces,
            pause: true,
            network_modes: vec![NetworkMode::None, NetworkMode::Bridge],
            isolated_filesystem: true,
            survives_server_restart: true,
            reachable_from_any_host: false,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        let mut out = vec![TemplateInfo {
            name: "base".into(),
            description: "the host's own system directories, read-only; user `user` (uid 1000) and root".into(),
            revision: "base".into(),
            isolation: Some(self.tier("base")),
        }];
        for t in oci::list(&self.templates_dir()) {
            out.push(TemplateInfo {
                description: format!(
                    "OCI image {} ({} layers)",
                    if t.source.is_empty() { "(untagged)" } else { &t.source },
                    t.layers.len()
                ),
                revision: t.revision(),
                isolation: Some(self.tier(&t.name)),
                name: t.name,
            });
        }
        Ok(out)
    }

    async fn import_template(&self, name: &str, archive: &Path) -> Result<TemplateInfo> {
        oci::valid_name(name).map_err(ProviderError::InvalidSpec)?;
        let root = self.templates_dir();
        let (name, archive) = (name.to_string(), archive.to_path_buf());
        let t = tokio::task::spawn_blocking(move || {
            oci::import(&root, &name, &archive, &mut |m| tracing::info!(template = %name, "import: {m}"))
        })
        .await
        .map_err(|e| ProviderError::Internal(format!("import task: {e}")))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                ProviderError::InvalidSpec(e.to_string())
            }
            _ => ProviderError::Internal(format!("importing: {e}")),
        })?;
        Ok(TemplateInfo {
            description: format!("OCI image ({} layers)", t.layers.len()),
            revision: t.revision(),
            isolation: Some(self.tier(&t.name)),
            name: t.name,
        })
    }

    async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo> {
        if spec.template != "base" && oci::load(&self.templates_dir(), &spec.template).is_err() {
            return Err(ProviderError::InvalidSpec(format!("unknown template '{}'", spec.template)));
        }
        spec.size.validate().map_err(|e| ProviderError::InvalidSpec(e.to_string()))?;
        if spec.network == NetworkMode::Host {
            return Err(ProviderError::Unsupported("network mode host (local offers: none, bridge)".into()));
        }
        let bridge = spec.network == NetworkMode::Bridge;
        let gv = self.uses_gvisor(&spec.template);
        if gv && bridge {
            return Err(ProviderError::Unsupported(format!(
                "network mode bridge for template {} (it runs under gVisor, which offers none)",
                spec.template
            )));
        }
        if bridge {
            self.rules
                .get_or_try_init(|| async {
                    tokio::task::spawn_blocking(network::install_rules)
                        .await
                        .map_err(|e| ProviderError::Internal(e.to_string()))?
                        .map_err(|e| ProviderError::Unavailable(format!("bridge networking: {e}")))
                })
                .await?;
        }
        let links_guard = if bridge { Some(self.links.lock().await) } else { None };
        let dir = self.dir(&spec.id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ProviderError::AlreadyExists(spec.id.to_string()))
            }
            Err(e) => return Err(ProviderError::Internal(format!("workspace dir: {e}"))),
        }
        let launched = if gv { self.launch_gvisor(spec, &dir).await } else { self.launch(spec, &dir).await };
        let (pid, ticks) = match launched {
            Ok(p) => p,
            Err(e) => {
                let _ = self.teardown(&spec.id, None);
                return Err(e);
            }
        };
        let link = if bridge {
            let mut used: std::collections::HashSet<u32> = self.all_meta().into_iter().filter_map(|m| m.link).collect();
            used.extend(tokio::task::spawn_blocking(network::indexes_in_use_on_host).await.unwrap_or_default());
            let Some(index) = (0..network::LINKS).find(|i| !used.contains(i)) else {
                let _ = self.teardown(&spec.id, Some((pid, ticks)));
                return Err(ProviderError::Capacity("no free bridge address left in 10.89.0.0/16".into()));
            };
            let id = spec.id.to_string();
            let attached = tokio::task::spawn_blocking(move || network::attach(&id, pid, index))
                .await
                .map_err(|e| ProviderError::Internal(e.to_string()))?;
            if let Err(e) = attached {
                let _ = self.teardown(&spec.id, Some((pid, ticks)));
                return Err(ProviderError::Internal(format!("bridge network: {e}")));
            }
            Some(index)
        } else {
            None
        };
        let meta = Meta {
            template: spec.template.clone(),
            size: spec.size,
            network: spec.network,
            created_at_ms: SystemClock.now_ms(),
            labels: spec.labels.clone(),
            pid,
            start_ticks: ticks,
            link,
            gvisor: gv,
        };
        let write = serde_json::to_vec(&meta).map_err(|e| std::io::Error::other(e.to_string())).and_then(|raw| {
            let tmp = dir.join("meta.json.tmp");
            std::fs::write(&tmp, raw)?;
            std::fs::rename(&tmp, dir.join("meta.json"))
        });
        drop(links_guard);
        if let Err(e) = write {
            let _ = self.teardown(&spec.id, Some((pid, ticks)));
            return Err(ProviderError::Internal(format!("writing meta: {e}")));
        }
        let sock = if gv { gvisor::socket(&dir) } else { dir.join("agent.sock") };
        if let Err(e) = wait_healthy(&Endpoint::Unix(sock), Duration::from_secs(15)).await {
            let _ = self.teardown(&spec.id, Some((pid, ticks)));
            return Err(e);
        }
        Ok(self.info(&spec.id, &meta))
    }

    async fn inspect(&self, id: &WorkspaceId) -> Result<SandboxInfo> {
        let m = self.read_meta(id)?;
        Ok(self.info(id, &m))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.cfg.state_dir.join("workspaces")) else { return Ok(out) };
        for e in rd.flatten() {
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<WorkspaceId>().ok()) else { continue };
            match self.read_meta(&id) {
                Ok(m) => out.push(self.info(&id, &m)),
                // A directory without meta is a create that never finished
                // (the server died mid-way): clean it up now.
                Err(ProviderError::NotFound(_)) => {
                    let _ = self.teardown(&id, None);
                }
                Err(_) => {}
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn pause(&self, id: &WorkspaceId) -> Result<()> {
        let m = self.read_meta(id)?;
        if !proc_alive(m.pid, m.start_ticks) {
            return Err(ProviderError::InvalidSpec(format!("workspace {id} is not running")));
        }
        self.cgroups.freeze(id.as_str(), true).map_err(internal("freezing"))
    }

    async fn resume(&self, id: &WorkspaceId) -> Result<()> {
        self.read_meta(id)?;
        self.cgroups.freeze(id.as_str(), false).map_err(internal("thawing"))
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<()> {
        let m = self.read_meta(id)?;
        if self.cgroups.is_frozen(id.as_str()) {
            let _ = self.cgroups.freeze(id.as_str(), false);
        }
        kill_and_wait(m.pid, m.start_ticks)
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<()> {
        let pid = self.read_meta(id).ok().map(|m| (m.pid, m.start_ticks));
        self.teardown(id, pid)
    }

    async fn stats(&self, id: &WorkspaceId) -> Result<Stats> {
        let m = self.read_meta(id)?;
        let (cpu_ns, memory_bytes, memory_limit_bytes, pids) = self.cgroups.usage(id.as_str());
        // statfs of the workspace's root reports its writable layer.
        // gVisor: the writable layer's tmpfs on the host.
        let root = if m.gvisor {
            self.dir(id).join("scratch").display().to_string()
        } else {
            format!("/proc/{}/root/", m.pid)
        };
        let (disk_used_bytes, disk_total_bytes) = if proc_alive(m.pid, m.start_ticks) {
            nix::sys::statvfs::statvfs(root.as_str())
                .map(|s| {
                    let f = s.fragment_size();
                    ((s.blocks() - s.blocks_free()) * f, s.blocks() * f)
                })
                .unwrap_or((0, m.size.disk_mib as u64 * 1024 * 1024))
        } else {
            (0, m.size.disk_mib as u64 * 1024 * 1024)
        };
        Ok(Stats { cpu_ns, memory_bytes, memory_limit_bytes, disk_used_bytes, disk_total_bytes, pids })
    }
}
