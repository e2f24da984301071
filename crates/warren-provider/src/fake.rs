//! `ProcessProvider`: workspaces as plain agent processes on the host, with no
//! isolation at all. It implements the whole contract (pause by SIGSTOP,
//! adoption after a restart by pid files) so the layers above can be tested
//! without root or namespaces, and it passes the conformance suite.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use warren_core::{Clock, Size, SystemClock, WorkspaceId};
use warren_proto::client::AgentClient;
use warren_proto::endpoint::Endpoint;

use crate::procfs::{start_ticks, state as proc_state};
use crate::{
    Capabilities, CreateSpec, IsolationTier, NetworkMode, ProviderError, Result, RunState, SandboxInfo,
    SandboxProvider, Stats, TemplateInfo,
};

/// The one template of the fake: the host itself.
pub const TEMPLATE: &str = "base";

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    template: String,
    size: Size,
    created_at_ms: u64,
    labels: BTreeMap<String, String>,
    pid: i32,
    /// Process start time (clock ticks since boot) to detect pid reuse.
    start_ticks: u64,
}

pub struct ProcessProvider {
    root: PathBuf,
    agent: PathBuf,
    children: Mutex<HashMap<WorkspaceId, tokio::process::Child>>,
    revision: Mutex<String>,
    create_delay: Duration,
}

impl ProcessProvider {
    /// `root` holds one directory per workspace; `agent` is the agent binary.
    pub fn new(root: impl Into<PathBuf>, agent: impl Into<PathBuf>) -> Self {
        ProcessProvider {
            root: root.into(),
            agent: agent.into(),
            children: Mutex::default(),
            revision: Mutex::new("1".into()),
            create_delay: Duration::ZERO,
        }
    }

    /// Makes every create take `d` longer, after the agent started (tests
    /// of a server dying mid-create: the sandbox exists, the create has not
    /// answered).
    pub fn with_create_delay(mut self, d: Duration) -> Self {
        self.create_delay = d;
        self
    }

    /// Pretends the template changed (tests of pool draining).
    pub fn set_revision(&self, revision: &str) {
        *self.revision.lock().unwrap_or_else(|p| p.into_inner()) = revision.into();
    }

    fn dir(&self, id: &WorkspaceId) -> PathBuf {
        self.root.join(id.as_str())
    }

    fn read_meta(&self, id: &WorkspaceId) -> Result<Meta> {
        let raw = std::fs::read(self.dir(id).join("meta.json")).map_err(|_| ProviderError::NotFound(id.to_string()))?;
        serde_json::from_slice(&raw).map_err(|e| ProviderError::Internal(format!("corrupt meta of {id}: {e}")))
    }

    fn info(&self, id: &WorkspaceId, m: &Meta) -> SandboxInfo {
        let state = match proc_state(m.pid, m.start_ticks) {
            Some('T') | Some('t') => RunState::Paused,
            Some(_) => RunState::Running,
            None => RunState::Exited,
        };
        SandboxInfo {
            id: id.clone(),
            template: m.template.clone(),
            size: m.size,
            state,
            endpoint: Endpoint::Unix(self.dir(id).join("agent.sock")),
            created_at_ms: m.created_at_ms,
            labels: m.labels.clone(),
            access_token: None,
        }
    }

    fn signal_group(&self, id: &WorkspaceId, sig: i32) -> Result<Meta> {
        let m = self.read_meta(id)?;
        if proc_state(m.pid, m.start_ticks).is_some() {
            // SAFETY: kill(2) with plain integers; the pid was checked to be ours.
            unsafe {
                libc::kill(-m.pid, sig);
            }
        }
        Ok(m)
    }
}

/// Signals are asynchronous: wait until the agent is (or is no longer) stopped.
async fn wait_state(m: &Meta, stopped: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match proc_state(m.pid, m.start_ticks) {
            None => return Err(ProviderError::InvalidSpec("workspace is not running".into())),
            Some(s) if (s == 'T' || s == 't') == stopped => return Ok(()),
            Some(_) if Instant::now() > deadline => {
                return Err(ProviderError::Internal(format!(
                    "agent {} did not {}",
                    m.pid,
                    if stopped { "stop" } else { "continue" }
                )))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

#[async_trait]
impl SandboxProvider for ProcessProvider {
    fn name(&self) -> &str {
        "process"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolation: IsolationTier::None,
            pause: true,
            network_modes: vec![NetworkMode::Host],
            isolated_filesystem: false,
            survives_server_restart: true,
            reachable_from_any_host: false,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        Ok(vec![TemplateInfo {
            name: TEMPLATE.into(),
            description: "the host itself, no isolation (fake)".into(),
            revision: self.revision.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            isolation: None,
        }])
    }

    async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo> {
        if spec.template != TEMPLATE {
            return Err(ProviderError::InvalidSpec(format!("unknown template '{}'", spec.template)));
        }
        spec.size.validate().map_err(|e| ProviderError::InvalidSpec(e.to_string()))?;
        std::fs::create_dir_all(&self.root).map_err(|e| ProviderError::Internal(format!("state dir: {e}")))?;
        let dir = self.dir(&spec.id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ProviderError::AlreadyExists(spec.id.to_string()))
            }
            Err(e) => return Err(ProviderError::Internal(format!("workspace dir: {e}"))),
        }
        let sock = dir.join("agent.sock");
        let log = std::fs::File::create(dir.join("agent.log")).map_err(|e| ProviderError::Internal(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(&self.agent);
        cmd.arg("--listen").arg(format!("unix://{}", sock.display())).args(["--user", "root"]);
        for (k, v) in &spec.env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.env("WARREN_AGENT_INIT_TOKEN", &spec.init_token)
            .env("WARREN_AGENT_ACCESS_TOKEN", spec.access_token.as_deref().unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            ProviderError::Unavailable(format!("cannot start agent {}: {e}", self.agent.display()))
        })?;
        let pid = child.id().unwrap_or(0) as i32;
        let meta = Meta {
            template: spec.template.clone(),
            size: spec.size,
            created_at_ms: SystemClock.now_ms(),
            labels: spec.labels.clone(),
            pid,
            start_ticks: start_ticks(pid),
        };
        let raw = serde_json::to_vec(&meta).map_err(|e| ProviderError::Internal(e.to_string()))?;
        std::fs::write(dir.join("meta.json"), raw).map_err(|e| ProviderError::Internal(e.to_string()))?;
        self.children.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.id.clone(), child);
        wait_healthy(&Endpoint::Unix(sock), Duration::from_secs(10)).await.inspect_err(|_| {
            // SAFETY: kill(2) on the child we just started.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        tokio::time::sleep(self.create_delay).await;
        Ok(self.info(&spec.id, &meta))
    }

    async fn inspect(&self, id: &WorkspaceId) -> Result<SandboxInfo> {
        let m = self.read_meta(id)?;
        Ok(self.info(id, &m))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.root) else { return Ok(out) };
        for e in rd.flatten() {
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<WorkspaceId>().ok()) else { continue };
            if let Ok(m) = self.read_meta(&id) {
                out.push(self.info(&id, &m));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn pause(&self, id: &WorkspaceId) -> Result<()> {
        let m = self.signal_group(id, libc::SIGSTOP)?;
        wait_state(&m, true).await
    }

    async fn resume(&self, id: &WorkspaceId) -> Result<()> {
        let m = self.signal_group(id, libc::SIGCONT)?;
        wait_state(&m, false).await
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<()> {
        let m = self.signal_group(id, libc::SIGKILL)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc_state(m.pid, m.start_ticks).is_some() {
            if let Some(c) = self.children.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
                let _ = c.try_wait();
            }
            if Instant::now() > deadline {
                return Err(ProviderError::Internal(format!("workspace {id} did not die")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.children.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<()> {
        match self.stop(id).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        match std::fs::remove_dir_all(self.dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProviderError::Internal(format!("removing {id}: {e}"))),
        }
    }

    async fn stats(&self, id: &WorkspaceId) -> Result<Stats> {
        let m = self.read_meta(id)?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", m.pid)).unwrap_or_default();
        let f: Vec<u64> = stat
            .rsplit_once(')')
            .map(|(_, a)| a.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect())
            .unwrap_or_default();
        // SAFETY: sysconf with a constant name.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let cpu_ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        let rss_pages = f.get(21).copied().unwrap_or(0);
        Ok(Stats {
            cpu_ns: cpu_ticks * 1_000_000_000 / tick,
            memory_bytes: rss_pages * 4096,
            memory_limit_bytes: m.size.memory_mib as u64 * 1024 * 1024,
            disk_used_bytes: dir_size(&self.dir(id)),
            disk_total_bytes: m.size.disk_mib as u64 * 1024 * 1024,
            pids: f.get(17).copied().unwrap_or(0),
        })
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// Polls an agent's `/health` until it answers or `limit` passes.
pub async fn wait_healthy(ep: &Endpoint, limit: Duration) -> Result<()> {
    let client = AgentClient::new(ep.clone());
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    let mut pause = Duration::from_micros(200);
    while Instant::now() < deadline {
        match client.health().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    Err(ProviderError::Unavailable(format!("agent at {ep} not healthy within {limit:?}: {last}")))
}
