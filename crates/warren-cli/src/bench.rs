//! `warren bench`: measurements with the peers run side by side in the same
//! run (fork+exec, bwrap, crun, docker), reported as percentiles and ratios.
//! Results belong in docs/benchmarks.md with the command that made them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use warren_core::{random_token, Size, SystemClock, WorkspaceId};
use warren_provider::{CreateSpec, NetworkMode, SandboxProvider};
use warren_provider_local::{LocalConfig, LocalProvider};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// create | exec | list | quota | pool | density | docker | all
    #[arg(default_value = "all")]
    pub which: String,
    /// Iterations per variant.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// Workspaces for the density run.
    #[arg(long, default_value_t = 1000)]
    pub density: usize,
    /// Scratch directory (default: a new one under /var/tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Backend of the pool benchmark: local or docker.
    #[arg(long, default_value = "local")]
    pub provider: String,
    /// Burst width of the pool benchmark.
    #[arg(long, default_value_t = 100)]
    pub burst: usize,
    /// Pool benchmark: run only the variants whose name starts with one of
    /// these comma-separated prefixes (e.g. "pool sized right,peer").
    #[arg(long)]
    pub only: Option<String>,
}

struct Series {
    name: String,
    ms: Vec<f64>,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(title: &str, base: &str, mut rows: Vec<Series>) {
    println!("\n### {title}\n");
    println!("| variant | n | min ms | p50 ms | p90 ms | p99 ms | p50 vs {base} |");
    println!("|---|---|---|---|---|---|---|");
    for r in &mut rows {
        r.ms.sort_by(|a, b| a.total_cmp(b));
    }
    let base_p50 = rows.iter().find(|r| r.name.starts_with(base)).map(|r| pct(&r.ms, 0.5));
    for r in &rows {
        if r.ms.is_empty() {
            println!("| {} | 0 | – | – | – | – | (not run) |", r.name);
            continue;
        }
        let p50 = pct(&r.ms, 0.5);
        let ratio = base_p50.map(|b| format!("{:.2}x", p50 / b)).unwrap_or_default();
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.name,
            r.ms.len(),
            r.ms[0],
            p50,
            pct(&r.ms, 0.9),
            pct(&r.ms, 0.99),
            ratio
        );
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Times a command `n` times with hyperfine (no shell) and returns the samples in ms.
fn hyperfine(cmd: &str, n: usize, wrap: Option<&str>) -> Result<Vec<f64>> {
    let out = tempfile::NamedTempFile::new()?;
    let hf = format!("hyperfine -N --warmup 3 --runs {n} --export-json {} '{cmd}'", out.path().display());
    let script = match wrap {
        Some(w) => format!("{w} && {hf}"),
        None => hf,
    };
    let st = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("hyperfine failed for {cmd}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path())?)?;
    Ok(v["results"][0]["times"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_f64()).map(|s| s * 1000.0).collect())
        .unwrap_or_default())
}

fn sibling(name: &str) -> Result<PathBuf> {
    Ok(std::env::current_exe()?.parent().context("no exe dir")?.join(name))
}

fn provider(dir: &Path) -> Result<LocalProvider> {
    let agent = std::env::var_os("WARREN_AGENT_BIN").map(PathBuf::from).unwrap_or(sibling("warren-agent")?);
    LocalProvider::new(LocalConfig {
        state_dir: dir.join("local"),
        agent,
        helper: sibling("warren-sandbox")?,
        seccomp: true,
        io_uring: false,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}

fn spec(size: Size) -> CreateSpec {
    CreateSpec {
        tenant: None,
        id: WorkspaceId::generate(),
        template: "base".into(),
        size,
        network: NetworkMode::None,
        env: Default::default(),
        labels: Default::default(),
        init_token: random_token(16),
        access_token: Some(random_token(16)),
    }
}

/// A bundle whose rootfs is the host's /usr, for crun.
fn crun_bundle(dir: &Path) -> Result<PathBuf> {
    let b = dir.join("crun-bundle");
    let root = b.join("rootfs");
    std::fs::create_dir_all(&root)?;
    for d in ["proc", "dev", "sys", "usr", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for (l, t) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")] {
        let _ = std::os::unix::fs::symlink(t, root.join(l));
    }
    let st = Command::new("crun").arg("spec").current_dir(&b).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    if !st.success() && !b.join("config.json").exists() {
        bail!("crun spec failed");
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("config.json"))?)?;
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    cfg["process"]["terminal"] = serde_json::json!(false);
    cfg["root"]["readonly"] = serde_json::json!(true);
    if let Some(m) = cfg["mounts"].as_array_mut() {
        m.push(
            serde_json::json!({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}),
        );
    }
    std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(&cfg)?)?;
    Ok(b)
}

/// A tiny image with `true` and `sleep` and their libraries, for docker.
fn docker_image() -> Result<&'static str> {
    const IMG: &str = "warren-bench:latest";
    if Command::new("docker")
        .args(["image", "inspect", IMG])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success()
    {
        return Ok(IMG);
    }
    let script = "set -e; t=$(mktemp -d); for f in /usr/bin/true /usr/bin/sleep $(ldd /usr/bin/sleep | grep -o '/[^ ]*'); do mkdir -p $t$(dirname $f); cp -L $f $t$f; done; \
                  mkdir -p $t/bin $t/lib64; ln -sf /usr/bin/true $t/bin/true; ln -sf /usr/bin/sleep $t/bin/sleep; \
                  tar -C $t -c . | docker import - warren-bench:latest >/dev/null; rm -rf $t";
    let st = Command::new("sh").args(["-c", script]).status()?;
    if !st.success() {
        bail!("building the docker bench image failed");
    }
    Ok(IMG)
}

fn docker_up() -> bool {
    have("docker")
        && Command::new("docker")
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

async fn bench_create(dir: &Path, n: usize) -> Result<()> {
    let p = provider(dir)?;
    let size = Size { millicpus: 1000, memory_mib: 256, disk_mib: 256, pids: 256 };
    // Warm-up (builds the base template once).
    for _ in 0..3 {
        let s = spec(size);
        p.create(&s).await?;
        p.destroy(&s.id).await?;
    }
    let mut ready = Series { name: "warren local: create → agent healthy".into(), ms: vec![] };
    let mut first = Series { name: "warren local: create → first command output".into(), ms: vec![] };
    for _ in 0..n {
        let s = spec(size);
        let t = Instant::now();
        let info = p.create(&s).await?;
        ready.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let c = warren_proto::client::AgentClient::new(info.endpoint.clone()).with_access_token(s.access_token.clone());
        let out = c.exec("/bin/echo", &["hi"]).await?;
        first.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if out.stdout != b"hi\n" {
            bail!("unexpected output {:?}", out.stdout);
        }
        p.destroy(&s.id).await?;
    }
    let mut rows = vec![ready, first];
    // The gVisor runtime of the same provider, where runsc is installed.
    if have("runsc") {
        let g = provider(&dir.join("gvisor"))?
            .with_gvisor(vec!["base".into()], "runsc".into())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut ready = Series { name: "warren local (gVisor): create → agent healthy".into(), ms: vec![] };
        let mut first = Series { name: "warren local (gVisor): create → first command output".into(), ms: vec![] };
        for i in 0..n.min(50) + 2 {
            let s = spec(size);
            let t = Instant::now();
            let info = g.create(&s).await?;
            let healthy = t.elapsed().as_secs_f64() * 1000.0;
            let c =
                warren_proto::client::AgentClient::new(info.endpoint.clone()).with_access_token(s.access_token.clone());
            let out = c.exec("/bin/echo", &["hi"]).await?;
            let output = t.elapsed().as_secs_f64() * 1000.0;
            g.destroy(&s.id).await?;
            if out.stdout != b"hi\n" {
                bail!("unexpected output {:?}", out.stdout);
            }
            // The first two warm the base template and runsc's caches.
            if i >= 2 {
                ready.ms.push(healthy);
                first.ms.push(output);
            }
        }
        rows.extend([ready, first]);
    }
    let bw = format!("{} /bin/true", BWRAP.join(" "));
    rows.push(Series {
        name: "bwrap --unshare-all … true (spawn+exit)".into(),
        ms: if have("bwrap") && have("hyperfine") { hyperfine(&bw, n, None)? } else { vec![] },
    });
    let crun = if have("crun") && have("hyperfine") {
        let b = crun_bundle(dir)?;
        let cmd = format!("crun run -b {} warren-bench", b.display());
        hyperfine(&cmd, n, Some("umount /sys/fs/cgroup/unified 2>/dev/null; true"))?
    } else {
        vec![]
    };
    rows.push(Series { name: "crun run … true (spawn+exit)".into(), ms: crun });
    let docker = if docker_up() && have("hyperfine") {
        let img = docker_image()?;
        hyperfine(&format!("docker run --rm --network none {img} /bin/true"), n.min(60), None)?
    } else {
        vec![]
    };
    rows.push(Series { name: "docker run --rm --network none … true".into(), ms: docker });
    let docker_runsc = if docker_up() && have("hyperfine") && have("runsc") {
        let img = docker_image()?;
        hyperfine(
            &format!("docker run --runtime=runsc --userns=host --rm --network none {img} /bin/true"),
            n.min(30),
            None,
        )?
    } else {
        vec![]
    };
    rows.push(Series {
        name: "docker run --runtime=runsc --userns=host --rm --network none … true".into(),
        ms: docker_runsc,
    });
    report("Cold create (local provider: native and gVisor runtimes)", "warren local: create → agent healthy", rows);
    Ok(())
}

async fn bench_exec(dir: &Path, n: usize) -> Result<()> {
    let p: Arc<dyn SandboxProvider> = Arc::new(provider(dir)?);
    let store = Arc::new(warren_store::MemoryStore::new());
    let key = "e2b_bench0000000000000000000000000000000000";
    use warren_store::StateStore as _;
    store
        .put_api_key(&warren_server::auth::record(key, &warren_core::TenantId::operator(), "bench", true, 0))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let orch = Arc::new(warren_orchestrator::Orchestrator::new(p, store, Arc::new(SystemClock), Default::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(warren_server::serve(
        listener,
        warren_server::AppState::new(orch.clone(), Default::default()),
        std::future::pending(),
    ));
    let ws = orch
        .create(warren_orchestrator::CreateRequest::new(warren_core::TenantId::operator(), "base"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, agent) = orch.agent(None, &ws.id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/workspaces/{}/exec", ws.id);
    let body = serde_json::json!({"argv": ["/bin/true"]});
    for _ in 0..20 {
        http.post(&url).bearer_auth(key).json(&body).send().await?.bytes().await?;
        agent.exec("/bin/true", &[]).await?;
    }
    let mut floor = Series { name: "fork+exec /bin/true (floor)".into(), ms: vec![] };
    let mut direct = Series { name: "agent client exec (unix socket)".into(), ms: vec![] };
    let mut api = Series { name: "warren API exec, HTTP+NDJSON".into(), ms: vec![] };
    for _ in 0..n {
        let t = Instant::now();
        Command::new("/bin/true").status()?;
        floor.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        agent.exec("/bin/true", &[]).await?;
        direct.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let text = http.post(&url).bearer_auth(key).json(&body).send().await?.text().await?;
        api.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if !text.contains("\"exitCode\":0") && !text.contains("\"type\":\"exit\"") {
            bail!("exec failed: {text}");
        }
    }
    let docker = if docker_up() && have("hyperfine") {
        let img = docker_image()?;
        let out =
            Command::new("docker").args(["run", "-d", "--network", "none", img, "/bin/sleep", "3600"]).output()?;
        let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let r = hyperfine(&format!("docker exec {cid} /bin/true"), n.min(100), None);
        let _ = Command::new("docker").args(["rm", "-f", &cid]).stdout(Stdio::null()).status();
        r?
    } else {
        vec![]
    };
    let rows = vec![floor, direct, api, Series { name: "docker exec <ctr> true".into(), ms: docker }];
    report("Exec round trip of `true`", "warren API exec", rows);
    orch.kill(None, &ws.id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The Docker backend against the docker CLI on the same engine and image.
async fn bench_docker(n: usize) -> Result<()> {
    if !docker_up() {
        bail!("no Docker engine answers (scripts/docker-up.sh starts one)");
    }
    let (agent, img) = docker_image_and_agent()?;
    let n = n.min(40);
    let size = Size { millicpus: 1000, memory_mib: 256, disk_mib: 256, pids: 256 };
    let mut runtimes = vec![None];
    if String::from_utf8_lossy(
        &Command::new("docker").args(["info", "--format", "{{json .Runtimes}}"]).output()?.stdout,
    )
    .contains("runsc")
    {
        runtimes.push(Some("runsc"));
    }
    let mut create_rows = Vec::new();
    let mut exec_rows = Vec::new();
    for rt in runtimes {
        let mut cfg = warren_provider_docker::DockerConfig::new(agent.clone());
        cfg.owner = format!("bench-{}", std::process::id());
        cfg.runtime = rt.map(str::to_string);
        let p = warren_provider_docker::DockerProvider::connect(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
        let label = rt.unwrap_or("runc");
        let mut ready = Series { name: format!("warren docker ({label}): create → agent healthy"), ms: vec![] };
        let mut first = Series { name: format!("warren docker ({label}): create → first output"), ms: vec![] };
        let mut exec = Series { name: format!("warren agent exec over TCP ({label})"), ms: vec![] };
        for i in 0..n + 2 {
            let mut s = spec(size);
            s.template = img.into();
            let t = Instant::now();
            let info = p.create(&s).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let created = t.elapsed().as_secs_f64() * 1000.0;
            let c =
                warren_proto::client::AgentClient::new(info.endpoint.clone()).with_access_token(s.access_token.clone());
            c.exec("/bin/true", &[]).await?;
            if i >= 2 {
                // Two warm-up rounds.
                ready.ms.push(created);
                first.ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            if i == 2 {
                for _ in 0..n * 5 {
                    let t = Instant::now();
                    c.exec("/bin/true", &[]).await?;
                    exec.ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            p.destroy(&s.id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        create_rows.extend([ready, first]);
        exec_rows.push(exec);
    }
    if have("hyperfine") {
        create_rows.push(Series {
            name: "docker run --rm --network none … true".into(),
            ms: hyperfine(&format!("docker run --rm --network none {img} /bin/true"), n, None)?,
        });
        let out =
            Command::new("docker").args(["run", "-d", "--network", "none", img, "/bin/sleep", "3600"]).output()?;
        let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let r = hyperfine(&format!("docker exec {cid} /bin/true"), n * 2, None);
        let _ = Command::new("docker").args(["rm", "-f", &cid]).stdout(Stdio::null()).status();
        exec_rows.push(Series { name: "docker exec <ctr> true".into(), ms: r? });
    }
    report(
        "Docker backend: create (same engine, same image)",
        "warren docker (runc): create → agent healthy",
        create_rows,
    );
    report("Docker backend: exec round trip of `true`", "warren agent exec over TCP (runc)", exec_rows);
    Ok(())
}

async fn bench_list(dir: &Path, n: usize) -> Result<()> {
    use warren_store::StateStore as _;
    let store = Arc::new(warren_store::RedbStore::open(&dir.join("list.redb")).map_err(|e| anyhow::anyhow!("{e}"))?);
    let key = "e2b_bench0000000000000000000000000000000000";
    store
        .put_api_key(&warren_server::auth::record(key, &warren_core::TenantId::operator(), "bench", true, 0))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let have = store.list_workspaces().await.map_err(|e| anyhow::anyhow!("{e}"))?.len();
    eprintln!("bench list: storing {} workspaces…", 10_000usize.saturating_sub(have));
    store_running(store.as_ref(), have..10_000, |_| "default".into()).await?;
    let p: Arc<dyn SandboxProvider> =
        Arc::new(warren_provider::fake::ProcessProvider::new(dir.join("none"), "/bin/false"));
    let orch = Arc::new(warren_orchestrator::Orchestrator::new(p, store, Arc::new(SystemClock), Default::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(warren_server::serve(
        listener,
        warren_server::AppState::new(orch, Default::default()),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for (name, query, want) in [
        ("GET /v1/workspaces?limit=10000 (all 10,000)", "?limit=10000", 10_000usize),
        ("GET /v1/workspaces (first page, 1,000)", "", 1000),
        ("GET /v1/workspaces?limit=100", "?limit=100", 100),
    ] {
        let mut s = Series { name: name.into(), ms: vec![] };
        for i in 0..n.min(100) + 5 {
            let t = Instant::now();
            let body = http.get(format!("{base}/v1/workspaces{query}")).bearer_auth(key).send().await?.bytes().await?;
            if i >= 5 {
                s.ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let listed = body.windows(6).filter(|w| w == b"\"id\":\"").count();
            if listed != want {
                bail!("{name}: listed {listed} workspaces");
            }
        }
        rows.push(s);
    }
    report(
        "List latency with 10,000 stored (admin; until the whole body is received)",
        "GET /v1/workspaces?limit=10000",
        rows,
    );
    Ok(())
}

/// Stores running records numbered `range` (metadata `n`), of the tenant
/// `tenant_of(n)`, each with its creation event.
async fn store_running(
    store: &dyn warren_store::StateStore,
    range: std::ops::Range<usize>,
    tenant_of: impl Fn(usize) -> String,
) -> Result<()> {
    for i in range {
        let mut r = warren_store::conformance::record(&tenant_of(i));
        r.state = warren_core::State::Running;
        r.metadata.insert("n".into(), i.to_string());
        let ev = warren_store::NewEvent {
            at_ms: 0,
            workspace: r.id.clone(),
            tenant: r.tenant().cloned(),
            size: r.size,
            kind: warren_store::EventKind::Created { template: "base".into() },
            backend: r.provider.clone(),
        };
        store.insert_workspace(&r, ev).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// A store that answers `tenant_usage` the way every store did before the
/// usage index: by reading every record (the trait's default).
struct ScanningStore(Arc<warren_store::RedbStore>);

#[async_trait::async_trait]
impl warren_store::StateStore for ScanningStore {
    async fn insert_workspace(
        &self,
        rec: &warren_store::WorkspaceRecord,
        event: warren_store::NewEvent,
    ) -> warren_store::Result<warren_store::Event> {
        self.0.insert_workspace(rec, event).await
    }
    async fn get_workspace(&self, id: &WorkspaceId) -> warren_store::Result<Option<warren_store::WorkspaceRecord>> {
        self.0.get_workspace(id).await
    }
    async fn list_workspaces(&self) -> warren_store::Result<Vec<warren_store::WorkspaceRecord>> {
        self.0.list_workspaces().await
    }
    async fn update_workspace(
        &self,
        id: &WorkspaceId,
        f: warren_store::Update,
    ) -> warren_store::Result<(warren_store::WorkspaceRecord, Option<warren_store::Event>)> {
        self.0.update_workspace(id, f).await
    }
    async fn delete_workspace(&self, id: &WorkspaceId) -> warren_store::Result<()> {
        self.0.delete_workspace(id).await
    }
    async fn events_since(&self, after: u64, limit: usize) -> warren_store::Result<Vec<warren_store::Event>> {
        self.0.events_since(after, limit).await
    }
    async fn put_api_key(&self, key: &warren_store::ApiKeyRecord) -> warren_store::Result<()> {
        self.0.put_api_key(key).await
    }
    async fn get_api_key(&self, hash: &str) -> warren_store::Result<Option<warren_store::ApiKeyRecord>> {
        self.0.get_api_key(hash).await
    }
    async fn list_api_keys(&self) -> warren_store::Result<Vec<warren_store::ApiKeyRecord>> {
        self.0.list_api_keys().await
    }
}

/// Create with the default quota (checked on every create) on an empty
/// store, on one holding 10,000 other workspaces with the usage index, and
/// on the same store answering by a scan (as before the index). Each create
/// is timed from the call to a running workspace (process backend, real
/// agent), then killed; variants alternate in rounds.
async fn bench_quota(dir: &Path, n: usize) -> Result<()> {
    use warren_store::StateStore as _;
    let open = |name: &str| -> Result<Arc<warren_store::RedbStore>> {
        Ok(Arc::new(warren_store::RedbStore::open(&dir.join(name)).map_err(|e| anyhow::anyhow!("{e}"))?))
    };
    let empty = open("quota-empty.redb")?;
    let full = open("quota-full.redb")?;
    let have = full.list_workspaces().await.map_err(|e| anyhow::anyhow!("{e}"))?.len();
    eprintln!("bench quota: storing {} workspaces of other tenants…", 10_000usize.saturating_sub(have));
    store_running(full.as_ref(), have..10_000, |i| format!("other{}", i % 50)).await?;
    let agent = std::env::var_os("WARREN_AGENT_BIN").map(PathBuf::from).unwrap_or(sibling("warren-agent")?);
    let orch = |store: Arc<dyn warren_store::StateStore>, name: &str| {
        let p: Arc<dyn SandboxProvider> =
            Arc::new(warren_provider::fake::ProcessProvider::new(dir.join(format!("quota-{name}")), agent.clone()));
        // The safe default quota: checked on every create.
        let cfg = warren_orchestrator::Config {
            default_quota: warren_orchestrator::Quota {
                max_workspaces: Some(100),
                max_millicpus: Some(64_000),
                max_memory_mib: Some(131_072),
                max_creates_per_minute: None,
            },
            ..Default::default()
        };
        Arc::new(warren_orchestrator::Orchestrator::new(p, store, Arc::new(SystemClock), cfg))
    };
    let variants = [
        ("empty store", orch(empty, "empty")),
        ("10,000 stored, usage index", orch(full.clone(), "indexed")),
        ("10,000 stored, scan (before the index)", orch(Arc::new(ScanningStore(full)), "scan")),
    ];
    let mut rows: Vec<Series> = variants.iter().map(|(name, _)| Series { name: (*name).into(), ms: vec![] }).collect();
    let tenant = warren_core::TenantId::new("bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    for round in 0..n + 3 {
        for (i, (_, o)) in variants.iter().enumerate() {
            let t = Instant::now();
            let ws = o
                .create(warren_orchestrator::CreateRequest::new(tenant.clone(), "base"))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if round >= 3 {
                rows[i].ms.push(ms);
            }
            o.kill(None, &ws.id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    report("Create with the default quota, empty vs 10,000 stored (process backend, real agent)", "empty store", rows);
    Ok(())
}

/// A Docker provider for benchmarks, with the test image built.
/// The static agent and the test image (built when missing), for the
/// Docker benchmarks.
fn docker_image_and_agent() -> Result<(PathBuf, &'static str)> {
    let img = "warren-test-busybox";
    let root = std::env::current_exe()?
        .ancestors()
        .find(|d| d.join("scripts/docker-test-image.sh").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if !Command::new(root.join("scripts/docker-test-image.sh")).arg(img).status()?.success() {
        bail!("building the {img} image failed");
    }
    let agent = match std::env::var_os("WARREN_AGENT_BIN") {
        Some(a) => PathBuf::from(a),
        None => std::env::current_exe()?
            .parent()
            .and_then(|d| d.parent())
            .map(|t| t.join("agent-static/warren-agent"))
            .context("locating the static agent")?,
    };
    let agent = std::fs::canonicalize(&agent)
        .with_context(|| format!("static agent {} (scripts/build-agent.sh builds it)", agent.display()))?;
    Ok((agent, img))
}

fn docker_bench_provider() -> Result<(Arc<dyn SandboxProvider>, &'static str)> {
    let (agent, img) = docker_image_and_agent()?;
    let mut cfg = warren_provider_docker::DockerConfig::new(agent);
    cfg.owner = format!("bench-{}", std::process::id());
    let p = warren_provider_docker::DockerProvider::connect(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((Arc::new(p), img))
}

async fn bench_pool(dir: &Path, burst: usize, backend: &str, only: Option<&str>) -> Result<()> {
    use warren_store::StateStore as _;
    let key = "e2b_bench0000000000000000000000000000000000";
    let mut rows = Vec::new();
    let [create_only, sized_right, too_small, no_pool, seq_pool, seq_no_pool] = POOL_VARIANTS;
    let variants = [
        (create_only, burst, true),
        (sized_right, burst, true),
        (too_small, burst / 5, true),
        (no_pool, 0, true),
        (seq_pool, 30, false),
        (seq_no_pool, 0, false),
    ];
    for (label, target, concurrent) in variants {
        if !selected(only, label) {
            continue;
        }
        let burst = if concurrent { burst } else { 20 };
        let create_only = label.starts_with("create only");
        let (p, template): (Arc<dyn SandboxProvider>, &str) = match backend {
            "docker" => docker_bench_provider()?,
            _ => (Arc::new(provider(&dir.join(format!("pool-{target}")))?), "base"),
        };
        let store = Arc::new(warren_store::MemoryStore::new());
        store
            .put_api_key(&warren_server::auth::record(key, &warren_core::TenantId::operator(), "bench", true, 0))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let pools = if target > 0 {
            vec![warren_orchestrator::pool::PoolSpec {
                name: None,
                template: template.into(),
                size: None,
                target,
                min: None,
                max: None,
            }]
        } else {
            vec![]
        };
        let cfg = warren_orchestrator::Config { pools, ..Default::default() };
        let orch = Arc::new(warren_orchestrator::Orchestrator::new(p, store.clone(), Arc::new(SystemClock), cfg));
        let jobs = orch.spawn_jobs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(warren_server::serve(
            listener,
            warren_server::AppState::new(orch.clone(), Default::default()),
            std::future::pending(),
        ));
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let st = orch.pool_status().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if st.first().is_none_or(|s| s.ready >= target) {
                break;
            }
            if Instant::now() > deadline {
                bail!("pool of {target} did not fill: {st:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let http = reqwest::Client::new();
        if let Some(ms) = std::env::var("WARREN_BENCH_PROFILE_PAUSE_MS").ok().and_then(|v| v.parse().ok()) {
            // For profilers: a quiet gap, then a marker, right before the burst.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            eprintln!("bench: burst starts");
        }
        let mut tasks = Vec::new();
        let mut done = Vec::new();
        let cpu_before = busy_cpu_ms();
        let wall = Instant::now();
        for _ in 0..burst {
            let (http, base, template) = (http.clone(), base.clone(), template.to_string());
            tasks.push(tokio::spawn(async move {
                let create_only = create_only;
                let t = Instant::now();
                let ws: serde_json::Value = http
                    .post(format!("{base}/v1/workspaces"))
                    .bearer_auth(key)
                    .json(&serde_json::json!({"template": template}))
                    .send()
                    .await?
                    .json()
                    .await?;
                let id = ws["id"].as_str().context("no id")?.to_string();
                if create_only {
                    return Ok::<_, anyhow::Error>(t.elapsed().as_secs_f64() * 1000.0);
                }
                let mut resp = http
                    .post(format!("{base}/v1/workspaces/{id}/exec"))
                    .bearer_auth(key)
                    .json(&serde_json::json!({"argv": ["echo", "hi"]}))
                    .send()
                    .await?
                    .error_for_status()?;
                // Timed to the first stdout event of the NDJSON stream (the
                // command's first output), then the rest is read untimed.
                let mut text = Vec::new();
                let mut first_output = None;
                while let Some(chunk) = resp.chunk().await? {
                    text.extend_from_slice(&chunk);
                    if first_output.is_none() && contains(&text, b"\"type\":\"stdout\"") {
                        first_output = Some(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                let Some(ms) = first_output else {
                    bail!("no output: {}", String::from_utf8_lossy(&text));
                };
                Ok::<_, anyhow::Error>(ms)
            }));
            if !concurrent {
                if let Some(t) = tasks.pop() {
                    done.push(t.await??);
                }
            }
        }
        let what = if concurrent { format!("burst of {burst}") } else { format!("{burst} sequential") };
        let mut s = Series { name: format!("{label} ({target}), {what}"), ms: done };
        for t in tasks {
            s.ms.push(t.await??);
        }
        // Machine-wide CPU the burst used (server, client, agents, kernel):
        // with n requests on c cores, no scheduling gets the last one done
        // before n × this / c.
        let cpu_per_request = (busy_cpu_ms() - cpu_before) / burst.max(1) as f64;
        // Throughput: the whole burst (or sequence) over its wall time.
        let per_s = burst as f64 / wall.elapsed().as_secs_f64();
        let st = orch.pool_status().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(p) = st.first() {
            s.name = format!("{} — {} hits, {} misses, refill {} ms", s.name, p.hits, p.misses, p.refill_ms);
        }
        s.name = format!("{}, CPU {cpu_per_request:.2} ms/request, {per_s:.0} requests/s", s.name);
        if concurrent && target > 0 && !create_only {
            // Refill rate in service: the emptied pool back to its target.
            let t = Instant::now();
            let deadline = t + Duration::from_secs(300);
            loop {
                let st = orch.pool_status().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                if st.first().is_none_or(|p| p.ready >= target) || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let secs = t.elapsed().as_secs_f64();
            s.name = format!("{}, refilled {target} in {secs:.2} s ({:.0}/s)", s.name, target as f64 / secs);
        }
        rows.push(s);
        // No refill may outlive this variant (it would compete with the next
        // one and leave workspaces behind): shutdown stops the pools too.
        jobs.shutdown().await;
        for r in store.list_workspaces().await.map_err(|e| anyhow::anyhow!("{e}"))? {
            let _ = orch.kill_any(&r.id).await;
        }
    }
    if backend == "local" {
        // The floor under any orchestrator on this machine: the same burst of
        // commands with no API, no workspace and no agent, and with bwrap
        // building a namespace sandbox per command.
        let bwrap_echo: Vec<&str> = BWRAP.iter().copied().chain(["echo", "hi"]).collect();
        for (label, note, argv) in
            [(PEERS[0], " (posix_spawn, no isolation)", &["echo", "hi"][..]), (PEERS[1], "", &bwrap_echo[..])]
        {
            if !selected(only, label) || !have(argv[0]) {
                continue;
            }
            rows.push(process_burst(&format!("{label}{note}"), argv, burst).await?);
        }
    }
    report(
        &format!(
            "Burst: create → first command output through the API ({backend} provider; \"create only\": until the create reply)"
        ),
        "pool sized right",
        rows,
    );
    Ok(())
}

/// bwrap building a namespace sandbox from the host's /usr: the peer of the
/// cold-create and burst benchmarks (the command follows).
const BWRAP: [&str; 18] = [
    "bwrap",
    "--unshare-all",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The pool benchmark's variants, then the peers it runs on the local backend.
const POOL_VARIANTS: [&str; 6] = [
    "create only with pool sized right",
    "pool sized right",
    "pool too small",
    "no pool",
    "one at a time with pool",
    "one at a time with no pool",
];
const PEERS: [&str; 2] = ["peer: bare processes", "peer: bwrap per command"];

/// Rejects an `--only` that selects none of the pool benchmark's variants.
fn check_only(only: Option<&str>, backend: &str) -> Result<()> {
    let peers: &[&str] = if backend == "local" { &PEERS } else { &[] };
    let names: Vec<&str> = POOL_VARIANTS.iter().chain(peers).copied().collect();
    if !names.iter().any(|n| selected(only, n)) {
        bail!("--only {:?} selects no variant; the variants: {}", only.unwrap_or_default(), names.join(", "));
    }
    Ok(())
}

/// Whether `--only` (comma-separated name prefixes) selects a variant.
fn selected(only: Option<&str>, label: &str) -> bool {
    only.is_none_or(|o| o.split(',').map(str::trim).any(|p| !p.is_empty() && label.starts_with(p)))
}

/// `burst` copies of a command started at once, each timed from its own
/// start to its first output (as the API burst times each request from its
/// own start), with the machine's CPU per command.
async fn process_burst(label: &str, argv: &[&str], burst: usize) -> Result<Series> {
    use tokio::io::AsyncReadExt as _;
    let cpu_before = busy_cpu_ms();
    let mut tasks = Vec::new();
    for _ in 0..burst {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut child = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning {}", argv[0]))?;
            let mut out = child.stdout.take().context("no stdout")?;
            let mut b = [0u8; 64];
            if out.read(&mut b).await? == 0 {
                bail!("{} printed nothing", argv.join(" "));
            }
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            child.wait().await?;
            Ok::<_, anyhow::Error>(ms)
        }));
    }
    let mut ms = Vec::new();
    for t in tasks {
        ms.push(t.await??);
    }
    let cpu = (busy_cpu_ms() - cpu_before) / burst.max(1) as f64;
    Ok(Series { name: format!("{label}, burst of {burst}, CPU {cpu:.2} ms/request"), ms })
}

/// CPU time the whole machine spent busy so far (all cores, ms), from
/// /proc/stat (10 ms ticks: read it around whole bursts, not single calls).
fn busy_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    // (guest time is already in user: the first eight fields only)
    let busy: f64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy * 10.0
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn bench_density(dir: &Path, count: usize) -> Result<()> {
    let p = provider(dir)?;
    let size = Size { millicpus: 100, memory_mib: 64, disk_mib: 16, pids: 64 };
    let warm = spec(size);
    p.create(&warm).await?;
    p.destroy(&warm.id).await?;
    let before = mem_available_kib();
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 0..count {
        let s = spec(size);
        if let Err(e) = p.create(&s).await {
            eprintln!("density: create {i} failed: {e}");
            break;
        }
        ids.push(s.id);
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mem_available_kib();
    let mut rss = Vec::new();
    for id in ids.iter().take(50) {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("local/workspaces").join(id.as_str()).join("meta.json"))?)?;
        let pid = meta["pid"].as_i64().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(v) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        {
            rss.push(v);
        }
    }
    let mut stats = Vec::new();
    for id in ids.iter().take(20) {
        stats.push(p.stats(id).await.map(|s| s.memory_bytes as f64 / 1024.0).unwrap_or(0.0));
    }
    let alive = p.list().await?.iter().filter(|s| s.state == warren_provider::RunState::Running).count();
    println!("\n### Density: {} idle local workspaces\n", ids.len());
    println!("| measure | value |\n|---|---|");
    println!(
        "| created | {} in {:.1} s ({:.0}/s) |",
        ids.len(),
        took.as_secs_f64(),
        ids.len() as f64 / took.as_secs_f64()
    );
    println!("| running after creation | {alive} |");
    println!(
        "| MemAvailable drop per workspace | {:.2} MiB |",
        (before.saturating_sub(after)) as f64 / 1024.0 / ids.len().max(1) as f64
    );
    rss.sort_by(|a, b| a.total_cmp(b));
    println!("| agent RSS (median of 50) | {:.2} MiB |", pct(&rss, 0.5) / 1024.0);
    stats.sort_by(|a, b| a.total_cmp(b));
    println!("| workspace memory cgroup usage (median of 20) | {:.2} MiB |", pct(&stats, 0.5) / 1024.0);
    let t = Instant::now();
    for id in &ids {
        p.destroy(id).await?;
    }
    println!("| destroyed all | {:.1} s |", t.elapsed().as_secs_f64());
    Ok(())
}

pub async fn run(a: BenchArgs) -> Result<u8> {
    if !["all", "create", "exec", "list", "quota", "pool", "density", "docker"].contains(&a.which.as_str()) {
        bail!("unknown benchmark {:?}: create, exec, list, quota, pool, density, docker or all", a.which);
    }
    if (a.which == "all" || a.which == "pool") && !["local", "docker"].contains(&a.provider.as_str()) {
        bail!("--provider {:?}: local or docker", a.provider);
    }
    if a.only.is_some() && a.which != "pool" {
        bail!("--only selects variants of `warren bench pool`; it does not apply to {:?}", a.which);
    }
    check_only(a.only.as_deref(), &a.provider)?;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            let d = PathBuf::from("/var/tmp").join(format!("warren-bench-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
    };
    println!(
        "warren bench {} (n={}) on {} CPUs; scratch {}",
        a.which,
        a.n,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        dir.display()
    );
    let all = a.which == "all";
    if all || a.which == "create" {
        bench_create(&dir, a.n).await?;
    }
    if all || a.which == "exec" {
        bench_exec(&dir, a.n).await?;
    }
    if all || a.which == "list" {
        bench_list(&dir, a.n).await?;
    }
    if all || a.which == "quota" {
        bench_quota(&dir, a.n).await?;
    }
    if all || a.which == "pool" {
        bench_pool(&dir, a.burst, &a.provider, a.only.as_deref()).await?;
    }
    if all || a.which == "density" {
        bench_density(&dir, a.density).await?;
    }
    if all || a.which == "docker" {
        bench_docker(a.n).await?;
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_by_comma_separated_prefixes() {
        assert!(selected(None, "no pool"));
        assert!(selected(Some("pool sized right,peer"), "peer: bwrap per command"));
        assert!(selected(Some("pool sized right, peer"), "pool sized right"));
        assert!(!selected(Some("pool sized right,peer"), "pool too small"));
        assert!(!selected(Some("pool sized right,peer"), "create only with pool sized right"));
        // An empty prefix selects nothing rather than everything.
        assert!(!selected(Some(","), "no pool"));
    }

    #[test]
    fn only_must_select_a_variant_of_the_backend() {
        assert!(check_only(None, "local").is_ok());
        assert!(check_only(Some("peer"), "local").is_ok());
        assert!(check_only(Some("one at a time"), "docker").is_ok());
        let e = check_only(Some("peer"), "docker").unwrap_err().to_string();
        assert!(e.contains("selects no variant") && e.contains("pool sized right"), "{e}");
        assert!(check_only(Some("pool sized wrong"), "local").is_err());
    }
}
