//! The E2B backend against a second warren acting as "the E2B cloud"
//! through its own E2B-compatible API: the provider conformance suite, and
//! the orchestrator running workspaces on it end to end.

use std::sync::Arc;

use warren_orchestrator::{CreateRequest, Orchestrator};
use warren_provider::routing::{Route, RoutingProvider};
use warren_provider::{ProviderError, SandboxProvider};
use warren_provider_e2b::{E2bBackendConfig, E2bProvider};
use warren_store::{MemoryStore, StateStore as _};

const KEY: &str = "e2b_c10dc10dc10dc10dc10dc10dc10dc10dc10dc10d";

/// The local provider's helper, built beside the test binaries if missing.
fn sandbox_helper() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("warren-sandbox");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "warren-provider-local", "--bin", "warren-sandbox"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    bin
}

/// A warren serving the E2B API on a free port, its workspaces isolated by
/// the local provider (as E2B's are by microVMs); returns its URL.
async fn cloud(dir: &std::path::Path) -> String {
    let store = Arc::new(MemoryStore::new());
    store.put_api_key(&warren_server::auth::record(KEY, "cloud-team", "test", false, 0)).await.unwrap();
    let provider = Arc::new(
        warren_provider_local::LocalProvider::new(warren_provider_local::LocalConfig {
            state_dir: dir.join("cloud"),
            agent: warren_provider::conformance::agent_binary(),
            helper: sandbox_helper(),
            seccomp: true,
        })
        .expect("local provider (run as root)"),
    );
    let orch = Arc::new(Orchestrator::new(provider, store, Arc::new(warren_core::SystemClock), Default::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warren_server::serve(
        listener,
        warren_server::AppState::new(orch, Default::default()),
        std::future::pending(),
    ));
    url
}

fn backend(url: &str, owner: &str) -> E2bProvider {
    let mut c = E2bBackendConfig::new(url, KEY);
    c.owner = owner.into();
    E2bProvider::new(c).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_an_e2b_compatible_api() {
    let dir = tempfile::tempdir().unwrap();
    let url = cloud(dir.path()).await;
    let p = backend(&url, "conf");
    warren_provider::conformance::run(&p, || backend(&url, "conf"), "base").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_keys_and_owners() {
    let dir = tempfile::tempdir().unwrap();
    let url = cloud(dir.path()).await;
    let p = backend(&url, "sizes");
    // More than the template gives: refused with the template's figures, nothing left behind.
    let mut spec = warren_provider::conformance::spec("base");
    spec.size.millicpus = 8000;
    match p.create(&spec).await {
        Err(ProviderError::InvalidSpec(m)) => assert!(m.contains("gives 2 vCPU"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(p.list().await.unwrap().is_empty());
    // A wrong key is a clear error.
    let bad = E2bProvider::new(E2bBackendConfig::new(&url, "e2b_wrong")).unwrap();
    match bad.list().await {
        Err(ProviderError::Unavailable(m)) => assert!(m.contains("API key"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Another installation's sandboxes are not ours.
    let spec = warren_provider::conformance::spec("base");
    p.create(&spec).await.unwrap();
    assert!(backend(&url, "someone-else").list().await.unwrap().is_empty());
    p.destroy(&spec.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_runs_workspaces_on_e2b() {
    let dir = tempfile::tempdir().unwrap();
    let url = cloud(dir.path()).await;
    let p: Arc<dyn SandboxProvider> = Arc::new(backend(&url, "orch"));
    let orch = Orchestrator::new(
        p.clone(),
        Arc::new(MemoryStore::new()),
        Arc::new(warren_core::SystemClock),
        Default::default(),
    );
    let rec =
        orch.create(CreateRequest { tenant: "t".into(), template: "base".into(), ..Default::default() }).await.unwrap();
    let (_, agent) = orch.agent(Some("t"), &rec.id).await.unwrap();
    let out = agent.sh("echo on e2b").await.unwrap();
    assert_eq!(out.stdout, b"on e2b\n");
    // The timeout moves the remote deadline too.
    orch.set_timeout(Some("t"), &rec.id, std::time::Duration::from_secs(600)).await.unwrap();
    orch.kill(Some("t"), &rec.id).await.unwrap();
    assert!(p.list().await.unwrap().is_empty());
}

/// A backend that is "full" beyond `max` live workspaces (a fleet at capacity).
struct Full {
    inner: Arc<dyn SandboxProvider>,
    max: usize,
}

#[async_trait::async_trait]
impl SandboxProvider for Full {
    fn name(&self) -> &str {
        "own"
    }
    fn capabilities(&self) -> warren_provider::Capabilities {
        self.inner.capabilities()
    }
    async fn templates(&self) -> warren_provider::Result<Vec<warren_provider::TemplateInfo>> {
        self.inner.templates().await
    }
    async fn create(
        &self,
        spec: &warren_provider::CreateSpec,
    ) -> warren_provider::Result<warren_provider::SandboxInfo> {
        if self.inner.list().await?.len() >= self.max {
            return Err(ProviderError::Capacity(format!("own fleet full ({} workspaces)", self.max)));
        }
        self.inner.create(spec).await
    }
    async fn inspect(&self, id: &warren_core::WorkspaceId) -> warren_provider::Result<warren_provider::SandboxInfo> {
        self.inner.inspect(id).await
    }
    async fn list(&self) -> warren_provider::Result<Vec<warren_provider::SandboxInfo>> {
        self.inner.list().await
    }
    async fn pause(&self, id: &warren_core::WorkspaceId) -> warren_provider::Result<()> {
        self.inner.pause(id).await
    }
    async fn resume(&self, id: &warren_core::WorkspaceId) -> warren_provider::Result<()> {
        self.inner.resume(id).await
    }
    async fn stop(&self, id: &warren_core::WorkspaceId) -> warren_provider::Result<()> {
        self.inner.stop(id).await
    }
    async fn destroy(&self, id: &warren_core::WorkspaceId) -> warren_provider::Result<()> {
        self.inner.destroy(id).await
    }
    async fn stats(&self, id: &warren_core::WorkspaceId) -> warren_provider::Result<warren_provider::Stats> {
        self.inner.stats(id).await
    }
}

fn own_fleet(dir: &std::path::Path, max: usize) -> Arc<dyn SandboxProvider> {
    let local = warren_provider_local::LocalProvider::new(warren_provider_local::LocalConfig {
        state_dir: dir.join("own"),
        agent: warren_provider::conformance::agent_binary(),
        helper: sandbox_helper(),
        seccomp: true,
    })
    .unwrap();
    Arc::new(Full { inner: Arc::new(local), max })
}

fn router(own: Arc<dyn SandboxProvider>, e2b: E2bProvider, routes: Vec<Route>) -> RoutingProvider {
    RoutingProvider::new(vec![("own".into(), own), ("e2b".into(), Arc::new(e2b))], routes, "own", Some("e2b")).unwrap()
}

/// The conformance suite through the fallback path: the own fleet is full,
/// so every create overflows to E2B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_the_overflow_policy() {
    let dir = tempfile::tempdir().unwrap();
    let url = cloud(dir.path()).await;
    let make = || router(own_fleet(dir.path(), 0), backend(&url, "overflow"), vec![]);
    let r = make();
    warren_provider::conformance::run(&r, make, "base").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_tenant_and_overflow_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let url = cloud(dir.path()).await;
    let e2b = backend(&url, "routes");
    let r = router(
        own_fleet(dir.path(), 1),
        e2b,
        vec![Route { backend: "e2b".into(), templates: vec![], tenants: vec!["trial".into()] }],
    );
    let spec = |tenant: &str| {
        let mut s = warren_provider::conformance::spec("base");
        s.labels.insert("tenant".into(), tenant.into());
        s
    };
    let trial = spec("trial");
    r.create(&trial).await.unwrap();
    assert_eq!(r.backend_of(&trial.id).await.unwrap(), "e2b", "the trial tenant is routed to E2B");
    let first = spec("paying");
    r.create(&first).await.unwrap();
    assert_eq!(r.backend_of(&first.id).await.unwrap(), "own");
    let second = spec("paying");
    r.create(&second).await.unwrap();
    assert_eq!(r.backend_of(&second.id).await.unwrap(), "e2b", "the own fleet is full: overflow");
    // A fresh router (after a restart) finds every workspace where it is.
    let again = router(own_fleet(dir.path(), 1), backend(&url, "routes"), vec![]);
    assert_eq!(again.list().await.unwrap().len(), 3);
    assert_eq!(again.backend_of(&first.id).await.unwrap(), "own");
    assert_eq!(again.backend_of(&second.id).await.unwrap(), "e2b");
    for s in [&trial, &first, &second] {
        again.destroy(&s.id).await.unwrap();
    }
    assert!(again.list().await.unwrap().is_empty());
    // Misconfigured routes are refused with the reason.
    let bad = RoutingProvider::new(vec![("own".into(), own_fleet(dir.path(), 1))], vec![], "e2b", None);
    assert!(bad.err().unwrap().contains("backend \"e2b\" is not configured"));
}

/// With a backend any host can reach, workspaces belong to no replica: any
/// replica talks to their agents directly, and the background jobs for them
/// run on the one replica holding the shared-jobs lease, which passes on
/// when that replica stops renewing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_network_reachable_workspaces_under_one_lease() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let url = cloud(dir.path()).await;
    let store: Arc<dyn warren_store::StateStore> = Arc::new(MemoryStore::new());
    let replica = |node: &str| {
        let cfg = warren_orchestrator::Config {
            node: node.into(),
            node_url: format!("http://{node}.invalid"),
            replica_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        Orchestrator::new(Arc::new(backend(&url, "shared")), store.clone(), Arc::new(warren_core::SystemClock), cfg)
    };
    let (a, b) = (replica("a"), replica("b"));
    let rec =
        a.create(CreateRequest { tenant: "t".into(), template: "base".into(), ..Default::default() }).await.unwrap();
    assert_eq!(rec.node, "", "owned by no replica");
    let (_, agent) = b.agent(Some("t"), &rec.id).await.unwrap();
    assert_eq!(agent.sh("echo from b").await.unwrap().stdout, b"from b\n");

    assert!(a.claim_shared_jobs().await.unwrap());
    assert!(!b.claim_shared_jobs().await.unwrap(), "one holder at a time");
    a.set_timeout(Some("t"), &rec.id, Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The expired workspace is the lease holder's to reap, not b's.
    assert_eq!(b.reap_once().await.unwrap(), 0);
    // a stops renewing (as if it died): b takes the jobs over.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(b.claim_shared_jobs().await.unwrap());
    assert_eq!(b.reap_once().await.unwrap(), 1);
    assert!(b.get(Some("t"), &rec.id).await.is_err(), "reaped");
}
