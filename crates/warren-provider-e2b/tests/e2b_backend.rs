//! The E2B backend against a second warren acting as "the E2B cloud"
//! through its own E2B-compatible API: the provider conformance suite, and
//! the orchestrator running workspaces on it end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::sync::Arc;
use warren_orchestrator::jobs::Job;

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
    store
        .put_api_key(&warren_server::auth::record(
            KEY,
            &warren_core::TenantId::new("cloud-team").unwrap(),
            "test",
            false,
            0,
        ))
        .await
        .unwrap();
    let provider = Arc::new(
        warren_provider_local::LocalProvider::new(warren_provider_local::LocalConfig {
            state_dir: dir.join("cloud"),
            agent: warren_provider::conformance::agent_binary(),
            helper: sandbox_helper(),
            seccomp: true,
            io_uring: false,
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
    let rec = orch.create(CreateRequest::new(warren_core::TenantId::new("t").unwrap(), "base")).await.unwrap();
    let (_, agent) = orch.agent(Some(&warren_core::TenantId::new("t").unwrap()), &rec.id).await.unwrap();
    let out = agent.sh("echo on e2b").await.unwrap();
    assert_eq!(out.stdout, b"on e2b\n");
    // The timeout moves the remote deadline too.
    orch.set_timeout(Some(&warren_core::TenantId::new("t").unwrap()), &rec.id, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    orch.kill(Some(&warren_core::TenantId::new("t").unwrap()), &rec.id).await.unwrap();
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
        io_uring: false,
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
        s.tenant = Some(warren_core::TenantId::new(tenant).unwrap());
        s
    };
    let trial = spec("trial");
    r.create(&trial).await.unwrap();
    assert_eq!(r.backend_of(&trial.id).await.unwrap(), "e2b", "the trial tenant is routed to E2B");
    // Where creates go first, as the orchestrator asks before a pool claim:
    // a tenant route never matches a pool member (nobody's).
    assert_eq!(r.placement("base", trial.tenant.as_ref()), "e2b");
    assert_eq!(r.placement("base", None), "own");
    assert_eq!(r.placement("base", Some(&warren_core::TenantId::new("paying").unwrap())), "own");
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

/// Overflowed time is metered under the backend that ran it and priced at
/// that backend's rate: the invoice shows E2B's share at E2B's price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_names_the_backend_and_the_invoice_prices_it() {
    use warren_orchestrator::usage::{rollup, Bucket};
    let dir = tempfile::tempdir().unwrap();
    let url = cloud(dir.path()).await;
    let r = router(own_fleet(dir.path(), 1), backend(&url, "meter"), vec![]);
    let store = Arc::new(MemoryStore::new());
    let orch = Orchestrator::new(Arc::new(r), store.clone(), Arc::new(warren_core::SystemClock), Default::default());
    let req = || CreateRequest::new(warren_core::TenantId::new("paying").unwrap(), "base");
    let own = orch.create(req()).await.unwrap();
    let over = orch.create(req()).await.unwrap();
    assert_eq!((own.provider.as_str(), over.provider.as_str()), ("own", "e2b"), "the record names the backend");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    orch.kill(None, &own.id).await.unwrap();
    orch.kill(None, &over.id).await.unwrap();
    let events = store.events_since(0, 1000).await.unwrap();
    let rows = rollup(&events, orch.now_ms(), 0, u64::MAX, Bucket::Month);
    let secs = |b: &str| rows.iter().filter(|r| r.backend == b).map(|r| r.running_seconds).sum::<f64>();
    assert!(secs("own") >= 1.0 && secs("e2b") >= 1.0, "{rows:?}");
    assert_eq!(secs("routed"), 0.0, "no time is metered under the router's own name");
    let usage: Vec<_> = rows
        .iter()
        .map(|r| warren_cost::invoice::TenantUsage {
            tenant: r.tenant.clone(),
            backend: r.backend.clone(),
            running_seconds: r.running_seconds,
            paused_seconds: r.paused_seconds,
            vcpu_seconds: r.vcpu_seconds,
            gib_seconds: r.gib_seconds,
        })
        .collect();
    let catalog = warren_cost::Catalog::embedded();
    let inv = warren_cost::invoice::invoice(
        &catalog,
        "ecs-ec2-od",
        &usage,
        warren_orchestrator::usage::POOL_LABEL,
        &|_| "standard".into(),
        &|b| (b == "e2b").then(|| "e2b-pro".into()),
    )
    .unwrap();
    let line = &inv.lines[0];
    let by: Vec<_> = line.by_backend.iter().map(|b| (b.backend.as_str(), b.setup.as_str())).collect();
    assert_eq!(by, [("e2b", "e2b-pro"), ("own", "ecs-ec2-od")]);
    let per_hour = |b: &str| {
        let c = line.by_backend.iter().find(|x| x.backend == b).unwrap();
        c.cost_usd / c.running_hours
    };
    assert!(per_hour("e2b") > per_hour("own"), "an hour on E2B costs more than one on the own fleet");
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
        Arc::new(Orchestrator::new(
            Arc::new(backend(&url, "shared")),
            store.clone(),
            Arc::new(warren_core::SystemClock),
            cfg,
        ))
    };
    let (a, b) = (replica("a"), replica("b"));
    let rec = a.create(CreateRequest::new(warren_core::TenantId::new("t").unwrap(), "base")).await.unwrap();
    assert_eq!(rec.node, "", "owned by no replica");
    let (_, agent) = b.agent(Some(&warren_core::TenantId::new("t").unwrap()), &rec.id).await.unwrap();
    assert_eq!(agent.sh("echo from b").await.unwrap().stdout, b"from b\n");

    assert_eq!(a.run_job(Job::Lease, a.now_ms()).await.unwrap().acted, 1);
    assert_eq!(b.run_job(Job::Lease, b.now_ms()).await.unwrap().acted, 0, "one holder at a time");
    a.set_timeout(Some(&warren_core::TenantId::new("t").unwrap()), &rec.id, Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The expired workspace is the lease holder's to reap, not b's.
    assert_eq!(b.run_job(Job::Reap, b.now_ms()).await.unwrap().acted, 0);
    // a stops renewing (as if it died): b takes the jobs over.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(b.run_job(Job::Lease, b.now_ms()).await.unwrap().acted, 1);
    assert_eq!(b.run_job(Job::Reap, b.now_ms()).await.unwrap().acted, 1);
    assert!(b.get(Some(&warren_core::TenantId::new("t").unwrap()), &rec.id).await.is_err(), "reaped");
}

/// A TLS edge like E2B's: `*.e2b.test` under a private CA, HTTP/2 by ALPN,
/// each connection passed to the cloud's port (which routes by the
/// `49983-{id}.e2b.test` host). Returns the edge's address and the CA's PEM.
async fn tls_edge(cloud_url: &str) -> (String, String) {
    use tokio_rustls::rustls;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "warren test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["*.e2b.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = cloud_url.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, ca.pem())
}

/// E2B's cloud layout: envd at `https://49983-{id}.{domain}` behind TLS,
/// reached by host name (connections sent to the edge as DNS would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_envd_over_tls_by_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let url = cloud(dir.path()).await;
    let (edge, ca_pem) = tls_edge(&url).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    // The agent client trusts the Mozilla roots plus SSL_CERT_FILE; set
    // before any TLS connection in this process.
    std::env::set_var("SSL_CERT_FILE", &ca_file);
    let make = || {
        let mut c = E2bBackendConfig::new(&url, KEY);
        c.owner = "tls".into();
        c.envd_domain = Some(format!("e2b.test:{}", edge.rsplit(':').next().unwrap()));
        c.envd_via = Some(edge.clone());
        E2bProvider::new(c).unwrap()
    };
    let p = make();
    let spec = warren_provider::conformance::spec("base");
    let info = p.create(&spec).await.unwrap();
    assert!(info.endpoint.to_string().starts_with("https://49983-"), "{}", info.endpoint);
    let agent = warren_proto::client::AgentClient::new(info.endpoint.clone()).with_access_token(info.access_token);
    assert_eq!(agent.sh("echo over tls").await.unwrap().stdout, b"over tls\n");
    // A client that does not trust the edge's certificate is refused, not downgraded.
    let wrong_name = warren_proto::endpoint::Endpoint::Https {
        host: format!("49983-x.not-e2b.test:{}", edge.rsplit(':').next().unwrap()),
        via: Some(edge.clone()),
    };
    let e = warren_proto::client::AgentClient::new(wrong_name).health().await.unwrap_err();
    assert!(e.to_string().contains("certificate") || e.to_string().contains("Certificate"), "{e}");
    p.destroy(&spec.id).await.unwrap();
    warren_provider::conformance::run(&p, make, "base").await;
}
