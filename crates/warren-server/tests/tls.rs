//! HTTPS with a wildcard certificate: ALPN h2, the API, and E2B host routing
//! `{port}-{id}.{domain}` through the gateway. Uses the system's openssl and
//! curl as the peers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::process::Command;
use std::sync::Arc;

use warren_core::SystemClock;
use warren_orchestrator::{Config, CreateRequest, Orchestrator};
use warren_provider::fake::ProcessProvider;
use warren_server::{auth, e2b::E2bConfig, AppState};
use warren_store::{MemoryStore, StateStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_h2_and_wildcard_host_routing() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=e2b.test",
        ])
        .args(["-addext", "subjectAltName=DNS:e2b.test,DNS:*.e2b.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let k = "e2b_tls0000000000000000000000000000000000000";
    store
        .put_api_key(&auth::record(k, &warren_core::TenantId::new("default").unwrap(), "admin", true, 0))
        .await
        .unwrap();
    let provider = Arc::new(ProcessProvider::new(dir.path().join("ws"), warren_provider::conformance::agent_binary()));
    let orch = Arc::new(Orchestrator::new(provider, store, Arc::new(SystemClock), Config::default()));
    let ws = orch.create(CreateRequest::new(warren_core::TenantId::new("default").unwrap(), "base")).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = warren_server::tls::config(&cert, &key).unwrap();
    let state = AppState::new(orch.clone(), E2bConfig { domain: Some("e2b.test".into()) });
    tokio::spawn(warren_server::tls::serve(listener, state, tls, std::future::pending()));

    let curl = |host: String, path: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-i", "--http2", "--cacert"])
            .arg(&cert)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(extra)
            .arg(format!("https://{host}:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The API, over h2.
    let r = curl("api.e2b.test".into(), "/v1/health", &[]);
    assert!(r.starts_with("HTTP/2 200"), "{r}");
    let r = curl("api.e2b.test".into(), &format!("/sandboxes/{}", ws.id), &["-H", &format!("X-API-KEY: {k}")]);
    assert!(r.starts_with("HTTP/2 200") && r.contains(&format!("\"sandboxID\":\"{}\"", ws.id)), "{r}");
    // envd through the gateway by host, as E2B_DOMAIN users reach it.
    let r = curl(format!("49983-{}.e2b.test", ws.id), "/health", &[]);
    assert!(r.starts_with("HTTP/2 204"), "{r}");
    let r = curl("49983-doesnotexist.e2b.test".into(), "/health", &[]);
    assert!(r.starts_with("HTTP/2 502") && r.contains("The sandbox was not found"), "{r}");
    // HTTP/1.1 still works for clients that do not offer h2.
    let out = Command::new("curl")
        .args(["-s", "-i", "--http1.1", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("api.e2b.test:{port}:127.0.0.1")])
        .arg(format!("https://api.e2b.test:{port}/v1/health"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200"));
    orch.kill(None, &ws.id).await.unwrap();
}

#[test]
fn mismatched_or_missing_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = warren_server::tls::config(&dir.path().join("none.pem"), &dir.path().join("none.key")).unwrap_err();
    assert!(err.contains("none.pem"), "{err}");
}
