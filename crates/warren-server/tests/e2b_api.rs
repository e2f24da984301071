//! The E2B control plane's exact statuses and shapes (the SDK suites in
//! tests/e2b cover the happy paths end to end).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::sync::Arc;

use serde_json::{json, Value};
use warren_core::SystemClock;
use warren_orchestrator::{Config, Orchestrator};
use warren_provider::fake::ProcessProvider;
use warren_server::{auth, AppState};
use warren_store::{MemoryStore, StateStore};

const KEY: &str = "e2b_e2bapi000000000000000000000000000000000";

async fn start() -> (tempfile::TempDir, String, Arc<dyn StateStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    store.put_api_key(&auth::record(KEY, &warren_core::TenantId::new("t1").unwrap(), "k", false, 0)).await.unwrap();
    let provider = Arc::new(ProcessProvider::new(dir.path().join("ws"), warren_provider::conformance::agent_binary()));
    let orch = Arc::new(Orchestrator::new(provider, store.clone(), Arc::new(SystemClock), Config::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warren_server::serve(listener, AppState::new(orch, Default::default()), std::future::pending()));
    (dir, base, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_idempotency_pause_and_errors() {
    let (_dir, base, _store) = start().await;
    let http = reqwest::Client::new();
    let post = |p: &str| http.post(format!("{base}{p}")).header("x-api-key", KEY);

    // Create is 201 with the required keys; an Idempotency-Key replays it.
    let r = post("/v2/sandboxes")
        .header("idempotency-key", "abc-1")
        .json(&json!({"templateID": "base", "metadata": {}, "envVars": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let a: Value = r.json().await.unwrap();
    for k in ["templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken"] {
        assert!(a.get(k).is_some(), "missing {k}: {a}");
    }
    assert_eq!(a["envdVersion"], "0.5.7");
    let again: Value = post("/v2/sandboxes")
        .header("idempotency-key", "abc-1")
        .json(&json!({"templateID": "base"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["sandboxID"], a["sandboxID"], "same key, same sandbox");
    let id = a["sandboxID"].as_str().unwrap();
    // v1 create (SDK ≤ 2.50) with its always-present keys.
    let r = post("/sandboxes")
        .json(&json!({"templateID": "base", "allow_internet_access": true, "autoPause": false, "envVars": {}, "metadata": {}, "secure": true, "timeout": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let b: Value = r.json().await.unwrap();

    // Detail has the strict-enum state and the access token.
    let d: Value =
        http.get(format!("{base}/sandboxes/{id}")).header("x-api-key", KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(d["state"], "running");
    assert_eq!(d["envdAccessToken"], a["envdAccessToken"]);
    for k in ["startedAt", "endAt", "cpuCount", "memoryMB", "diskSizeMB"] {
        assert!(d.get(k).is_some(), "missing {k}: {d}");
    }

    // Pause twice: 204 then 409; connect resumes (201) and only extends the TTL.
    assert_eq!(post(&format!("/sandboxes/{id}/pause")).send().await.unwrap().status(), 204);
    assert_eq!(post(&format!("/sandboxes/{id}/pause")).send().await.unwrap().status(), 409);
    let listed: Vec<Value> = http
        .get(format!("{base}/v2/sandboxes?state=paused"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "paused");
    let r = post(&format!("/v2/sandboxes/{id}/connect")).json(&json!({"timeout": 10})).send().await.unwrap();
    assert_eq!(r.status(), 201, "resumed");
    let d2: Value =
        http.get(format!("{base}/sandboxes/{id}")).header("x-api-key", KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(d2["state"], "running");
    assert_eq!(d2["endAt"], d["endAt"], "a shorter connect timeout never shortens the TTL");
    let r = post(&format!("/sandboxes/{id}/connect")).json(&json!({"timeout": 3600})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let d3: Value =
        http.get(format!("{base}/sandboxes/{id}")).header("x-api-key", KEY).send().await.unwrap().json().await.unwrap();
    assert!(d3["endAt"].as_str().unwrap() > d["endAt"].as_str().unwrap());
    assert_eq!(post(&format!("/sandboxes/{id}/resume")).json(&json!({})).send().await.unwrap().status(), 409);

    // Timeout 204; metrics a list; unknown ids 404 with {code:int, message}.
    assert_eq!(
        post(&format!("/sandboxes/{id}/timeout")).json(&json!({"timeout": 60})).send().await.unwrap().status(),
        204
    );
    let m: Vec<Value> = http
        .get(format!("{base}/sandboxes/{id}/metrics"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    for k in [
        "timestamp",
        "timestampUnix",
        "cpuCount",
        "cpuUsedPct",
        "memUsed",
        "memTotal",
        "memCache",
        "diskUsed",
        "diskTotal",
    ] {
        assert!(m[0].get(k).is_some(), "missing {k}");
    }
    for (method, path) in [
        ("GET", "/sandboxes/zzz"),
        ("DELETE", "/sandboxes/zzz"),
        ("POST", "/sandboxes/zzz/timeout"),
        ("POST", "/v2/sandboxes/zzz/connect"),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("x-api-key", KEY)
            .json(&json!({"timeout": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], 404);
        assert!(v["message"].is_string());
    }
    let r = post("/v2/sandboxes").json(&json!({"templateID": "nope"})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!("{base}/v2/sandboxes"))
        .header("x-api-key", "e2b_0000")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 401);

    // Pagination by X-Next-Token.
    let r = http.get(format!("{base}/v2/sandboxes?limit=1")).header("x-api-key", KEY).send().await.unwrap();
    let token = r.headers().get("x-next-token").unwrap().to_str().unwrap().to_string();
    let first: Vec<Value> = r.json().await.unwrap();
    let second: Vec<Value> = http
        .get(format!("{base}/v2/sandboxes?limit=1&nextToken={token}"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 1);
    assert_ne!(first[0]["sandboxID"], second[0]["sandboxID"]);

    // Kill: 204, then 404.
    for s in [id, b["sandboxID"].as_str().unwrap()] {
        assert_eq!(
            http.delete(format!("{base}/sandboxes/{s}")).header("x-api-key", KEY).send().await.unwrap().status(),
            204
        );
        assert_eq!(
            http.delete(format!("{base}/sandboxes/{s}")).header("x-api-key", KEY).send().await.unwrap().status(),
            404
        );
    }
    // The gateway's E2B-shaped 502 for a sandbox that is gone.
    let r = http
        .get(format!("{base}/health"))
        .header("e2b-sandbox-id", id)
        .header("e2b-sandbox-port", "49983")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_answer_429_and_e2b_sdks_do_not_retry() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    store.put_api_key(&auth::record(KEY, &warren_core::TenantId::new("t1").unwrap(), "k", false, 0)).await.unwrap();
    let provider = Arc::new(ProcessProvider::new(dir.path().join("ws"), warren_provider::conformance::agent_binary()));
    let cfg = Config {
        default_quota: warren_orchestrator::Quota { max_workspaces: Some(1), ..Default::default() },
        ..Config::default()
    };
    let orch = Arc::new(Orchestrator::new(provider, store, Arc::new(SystemClock), cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warren_server::serve(
        listener,
        AppState::new(orch.clone(), Default::default()),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let first =
        http.post(format!("{base}/v1/workspaces")).header("x-api-key", KEY).json(&json!({})).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let r = http.post(format!("{base}/v1/workspaces")).header("x-api-key", KEY).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "quota_exceeded", "warren's own API: a string code");
    assert!(v["message"].as_str().unwrap().contains("quota"), "{v}");
    let r = http
        .post(format!("{base}/v2/sandboxes"))
        .header("x-api-key", KEY)
        .json(&json!({"templateID": "base"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["should-retry"], "false");
    for w in orch.list(None).await.unwrap() {
        orch.kill(None, &w.id).await.unwrap();
    }
}
