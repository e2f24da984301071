//! Every route of the native API over a real socket, with a real agent
//! (process fake backend) and the redb store: success paths, bad input,
//! authentication and tenant isolation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::sync::Arc;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use warren_core::SystemClock;
use warren_orchestrator::{Config, Orchestrator};
use warren_provider::fake::ProcessProvider;
use warren_server::{auth, openapi, AppState};
use warren_store::{RedbStore, StateStore};

struct Server {
    _dir: tempfile::TempDir,
    base: String,
    admin: String,
    store: Arc<dyn StateStore>,
    http: reqwest::Client,
    provider: Arc<ProcessProvider>,
}

/// Nothing outlives a test: the workspaces a test left (also when it
/// failed half-way) are destroyed with its server.
impl Drop for Server {
    fn drop(&mut self) {
        use warren_provider::SandboxProvider as _;
        let p = self.provider.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                for w in p.list().await.unwrap_or_default() {
                    let _ = p.destroy(&w.id).await;
                }
            })
        })
        .join();
    }
}

const ADMIN: &str = "e2b_00000000000000000000000000000000000admin";

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(RedbStore::open(&dir.path().join("state.redb")).unwrap());
    store
        .put_api_key(&auth::record(ADMIN, &warren_core::TenantId::new("default").unwrap(), "admin", true, 0))
        .await
        .unwrap();
    let provider = Arc::new(ProcessProvider::new(dir.path().join("ws"), warren_provider::conformance::agent_binary()));
    let orch = Arc::new(Orchestrator::new(provider.clone(), store.clone(), Arc::new(SystemClock), Config::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(orch, Default::default());
    tokio::spawn(warren_server::serve(listener, state, std::future::pending()));
    Server { _dir: dir, base, admin: ADMIN.into(), store, http: reqwest::Client::new(), provider }
}

impl Server {
    fn req(&self, m: reqwest::Method, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http.request(m, format!("{}{path}", self.base)).bearer_auth(key)
    }

    async fn tenant_key(&self, tenant: &str) -> String {
        let key = auth::new_key();
        self.store
            .put_api_key(&auth::record(&key, &warren_core::TenantId::new(tenant).unwrap(), tenant, false, 0))
            .await
            .unwrap();
        key
    }

    async fn create(&self, key: &str) -> Value {
        let r = self
            .req(reqwest::Method::POST, "/v1/workspaces", key)
            .json(&json!({"template": "base"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    }
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(ct.starts_with("application/json"), "error replies are JSON, got {ct:?}");
    let v: Value = r.json().await.unwrap();
    let code: warren_api::ErrorCode = serde_json::from_value(v["code"].clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    assert_eq!(code.status(), status, "the code goes with the status: {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    (status, v)
}

async fn exec(s: &Server, key: &str, id: &str, body: Value) -> (String, String, i64) {
    let r = s.req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/exec"), key).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    let b64 = base64::engine::general_purpose::STANDARD;
    for line in text.lines() {
        let ev: Value = serde_json::from_str(line).unwrap();
        match ev["type"].as_str().unwrap() {
            "stdout" => out.extend(b64.decode(ev["data"].as_str().unwrap()).unwrap()),
            "stderr" => err.extend(b64.decode(ev["data"].as_str().unwrap()).unwrap()),
            "exit" => code = ev["exitCode"].as_i64(),
            "start" => assert!(ev["pid"].as_u64().unwrap() > 0),
            other => panic!("unexpected event {other}: {line}"),
        }
    }
    (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), code.expect("exit event"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served() {
    let s = start().await;
    let ws = s.create(&s.admin).await;
    let id = ws["id"].as_str().unwrap().to_string();
    let doc: Value = s.http.get(format!("{}/v1/openapi.json", s.base)).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    // The file the download route reads.
    let r = s
        .req(reqwest::Method::PUT, &format!("/v1/workspaces/{id}/files"), &s.admin)
        .query(&[("path", format!("/tmp/warren-route-{id}"))])
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Every route, the kill last.
    let mut routes: Vec<_> = openapi::ROUTES.to_vec();
    routes.sort_by_key(|(m, p, _, _)| (*m == "delete" && p.contains("{id}")) as u8);
    // A key to revoke.
    let made: Value = s
        .req(reqwest::Method::POST, "/v1/keys", &s.admin)
        .json(&json!({"tenant": "routes", "name": "to revoke"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prefix = made["prefix"].as_str().unwrap().to_string();
    for (method, path, _, status) in routes.iter() {
        assert!(paths[*path].get(*method).is_some(), "{method} {path} is documented");
        let url = path.replace("{id}", &id).replace("{prefix}", &prefix);
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut rb = s.req(m, &url, &s.admin);
        rb = match (*method, *path) {
            ("post", "/v1/workspaces") => rb.json(&json!({})),
            ("post", p) if p.ends_with("/timeout") => rb.json(&json!({"timeout": 600})),
            ("post", p) if p.ends_with("/exec") => rb.json(&json!({"argv": ["true"]})),
            ("post", "/v1/keys") => rb.json(&json!({"tenant": "routes"})),
            ("get", p) | ("put", p) if p.ends_with("/files") => {
                rb.query(&[("path", format!("/tmp/warren-route-{id}"))]).body("x")
            }
            _ => rb,
        };
        if path.ends_with("/pty") {
            // A plain GET is not an upgrade: the route answers, but with a JSON error.
            let r = rb.send().await.unwrap();
            let (code, _) = error_of(r).await;
            assert_ne!(code, 404, "pty route exists");
            continue;
        }
        if *path == "/v1/templates/{name}" {
            // The route exists; the fake backend cannot import images.
            let (code, v) =
                error_of(s.req(reqwest::Method::POST, "/v1/templates/tiny", &s.admin).body("x").send().await.unwrap())
                    .await;
            assert_eq!(code, 501, "{v}");
            continue;
        }
        if *path == "/v1/workspaces/{id}/resume" {
            s.req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/pause"), &s.admin).send().await.unwrap();
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "{method} {path}: {}", r.text().await.unwrap());
    }
    // The undocumented is not served.
    let (code, v) = error_of(s.req(reqwest::Method::GET, "/v1/nope", &s.admin).send().await.unwrap()).await;
    assert_eq!(code, 404);
    assert!(v["message"].as_str().unwrap().contains("no route"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_life_exec_files_and_pty() {
    let s = start().await;
    let ws = s.create(&s.admin).await;
    let id = ws["id"].as_str().unwrap().to_string();
    assert_eq!(ws["state"], "running");
    assert_eq!(ws["template"], "base");

    let (out, err, code) = exec(&s, &s.admin, &id, json!({"command": "echo out; echo err >&2; exit 7"})).await;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 7));
    let (out, _, code) = exec(&s, &s.admin, &id, json!({"argv": ["cat"], "stdin": "piped in"})).await;
    assert_eq!((out.as_str(), code), ("piped in", 0));
    let (out, _, _) =
        exec(&s, &s.admin, &id, json!({"argv": ["sh", "-c", "echo $A; pwd"], "env": {"A": "b"}, "cwd": "/tmp"})).await;
    assert_eq!(out, "b\n/tmp\n");

    // Files, streamed both ways (1 MiB).
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let path = format!("/tmp/api-{id}.bin");
    let r = s
        .req(reqwest::Method::PUT, &format!("/v1/workspaces/{id}/files"), &s.admin)
        .query(&[("path", &path)])
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .req(reqwest::Method::GET, &format!("/v1/workspaces/{id}/files"), &s.admin)
        .query(&[("path", &path)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    let (code, _) = error_of(
        s.req(reqwest::Method::GET, &format!("/v1/workspaces/{id}/files"), &s.admin)
            .query(&[("path", "/nope/x")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) =
        error_of(s.req(reqwest::Method::GET, &format!("/v1/workspaces/{id}/files"), &s.admin).send().await.unwrap())
            .await;
    assert_eq!(code, 400);

    // An interactive terminal over WebSocket.
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest as _, Message};
    let url = format!("{}/v1/workspaces/{id}/pty?cols=90&rows=20", s.base.replace("http", "ws"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", s.admin).parse().unwrap());
    let (mut ws_conn, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws_conn.send(Message::Binary(b"stty size; echo pty-$((2*21))\n".to_vec().into())).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("pty-42") {
        let msg =
            tokio::time::timeout(std::time::Duration::from_secs(10), ws_conn.next()).await.unwrap().unwrap().unwrap();
        if let Message::Binary(d) = msg {
            seen.push_str(&String::from_utf8_lossy(&d));
        }
    }
    assert!(seen.contains("20 90"), "{seen}");
    ws_conn.send(Message::Text(r#"{"resize":{"cols":120,"rows":40}}"#.into())).await.unwrap();
    ws_conn.send(Message::Binary(b"stty size; exit 4\n".to_vec().into())).await.unwrap();
    let mut exit = None;
    while let Some(Ok(m)) = ws_conn.next().await {
        match m {
            Message::Binary(d) => seen.push_str(&String::from_utf8_lossy(&d)),
            Message::Text(t) => exit = serde_json::from_str::<Value>(t.as_str()).unwrap()["exit"].as_i64(),
            _ => {}
        }
    }
    assert!(seen.contains("40 120"), "{seen}");
    assert_eq!(exit, Some(4));

    // Timeout, pause, resume, stats, kill.
    let r: Value = s
        .req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/timeout"), &s.admin)
        .json(&json!({"timeout": 3600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["expiresAt"].as_str().unwrap() > ws["expiresAt"].as_str().unwrap());
    let r: Value = s
        .req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/pause"), &s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["state"], "paused");
    let (code, _) =
        error_of(s.req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/pause"), &s.admin).send().await.unwrap())
            .await;
    assert_eq!(code, 409);
    let (code, _) = error_of(
        s.req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/exec"), &s.admin)
            .json(&json!({"argv": ["true"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 409);
    s.req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/resume"), &s.admin).send().await.unwrap();
    let st: Value = s
        .req(reqwest::Method::GET, &format!("/v1/workspaces/{id}/stats"), &s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(st["memoryBytes"].as_u64().unwrap() > 0);
    let r = s.req(reqwest::Method::DELETE, &format!("/v1/workspaces/{id}"), &s.admin).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (code, _) =
        error_of(s.req(reqwest::Method::DELETE, &format!("/v1/workspaces/{id}"), &s.admin).send().await.unwrap()).await;
    assert_eq!(code, 404);
    let metrics = s.http.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("warren_workspace_creates_total{result=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("warren_http_responses_total{class=\"2xx\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_and_changes_nothing() {
    let s = start().await;
    let post = |body: Vec<u8>| {
        s.req(reqwest::Method::POST, "/v1/workspaces", &s.admin).header("content-type", "application/json").body(body)
    };
    for (body, want) in [
        (b"{not json".to_vec(), 400),
        (br#"{"template": 5}"#.to_vec(), 400),
        (br#"{"bogus": 1}"#.to_vec(), 400),
        (br#"{"template": "nope"}"#.to_vec(), 404),
        (br#"{"timeout": 0}"#.to_vec(), 400),
        (br#"{"size": {"millicpus": 1000, "memoryMib": 1, "diskMib": 100, "pids": 100}}"#.to_vec(), 400),
    ] {
        let (code, v) = error_of(post(body).send().await.unwrap()).await;
        assert_eq!(code, want, "{v}");
    }
    // A body over the limit: the server answers 413 as JSON without reading it all.
    let addr = s.base.trim_start_matches("http://").to_string();
    let admin = s.admin.clone();
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let size = 2 << 20;
        let head = format!("POST /v1/workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n");
        c.write_all(head.as_bytes()).unwrap();
        let _ = c.write_all(&vec![b' '; size]);
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"code\":\"payload_too_large\""), "{reply}");
    let all: Vec<Value> =
        s.req(reqwest::Method::GET, "/v1/workspaces", &s.admin).send().await.unwrap().json().await.unwrap();
    assert!(all.is_empty(), "nothing was created: {all:?}");
    for path in ["/v1/workspaces/UPPER", "/v1/workspaces/has-dash", "/v1/workspaces/aaaaaaaaaaaaaaaaaaaa"] {
        let (code, _) = error_of(s.req(reqwest::Method::GET, path, &s.admin).send().await.unwrap()).await;
        assert_eq!(code, 404, "{path}");
    }
    let ws = s.create(&s.admin).await;
    let id = ws["id"].as_str().unwrap();
    for body in [json!({}), json!({"argv": []}), json!({"argv": ["x"], "command": "y"}), json!({"argv": ["/no/such"]})]
    {
        let r = s
            .req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/exec"), &s.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            // Failing to start the program is reported in the stream.
            let text = r.text().await.unwrap();
            assert!(text.contains("\"type\":\"error\""), "{text}");
        } else {
            error_of(r).await;
        }
    }
    let (code, _) = error_of(
        s.req(reqwest::Method::POST, &format!("/v1/workspaces/{id}/timeout"), &s.admin)
            .json(&json!({"timeout": -1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tenants() {
    let s = start().await;
    let (code, _) = error_of(s.http.get(format!("{}/v1/workspaces", s.base)).send().await.unwrap()).await;
    assert_eq!(code, 401);
    let (code, _) =
        error_of(s.req(reqwest::Method::GET, "/v1/workspaces", "e2b_wrongwrongwrongwrong").send().await.unwrap()).await;
    assert_eq!(code, 401);
    let r = s.http.get(format!("{}/v1/workspaces", s.base)).header("x-api-key", &s.admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // No auth on health, metrics, the document.
    for p in ["/v1/health", "/metrics", "/v1/openapi.json"] {
        assert_eq!(s.http.get(format!("{}{p}", s.base)).send().await.unwrap().status(), 200, "{p}");
    }

    let alice = s.tenant_key("alice").await;
    let bob = s.tenant_key("bob").await;
    let ws = s.create(&alice).await;
    let id = ws["id"].as_str().unwrap().to_string();
    assert_eq!(ws["tenant"], "alice");
    // Bob cannot see, use, change or kill Alice's workspace through any route.
    for (m, path, body) in [
        (reqwest::Method::GET, format!("/v1/workspaces/{id}"), None),
        (reqwest::Method::DELETE, format!("/v1/workspaces/{id}"), None),
        (reqwest::Method::POST, format!("/v1/workspaces/{id}/timeout"), Some(json!({"timeout": 5}))),
        (reqwest::Method::POST, format!("/v1/workspaces/{id}/pause"), None),
        (reqwest::Method::POST, format!("/v1/workspaces/{id}/resume"), None),
        (reqwest::Method::GET, format!("/v1/workspaces/{id}/stats"), None),
        (reqwest::Method::POST, format!("/v1/workspaces/{id}/exec"), Some(json!({"argv": ["true"]}))),
        (reqwest::Method::GET, format!("/v1/workspaces/{id}/files?path=/etc/hostname"), None),
        (reqwest::Method::PUT, format!("/v1/workspaces/{id}/files?path=/tmp/x"), None),
        (reqwest::Method::GET, format!("/v1/workspaces/{id}/pty"), None),
    ] {
        let mut rb = s.req(m.clone(), &path, &bob);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let (code, _) = error_of(rb.send().await.unwrap()).await;
        assert_eq!(code, 404, "{m} {path}");
    }
    let bobs: Vec<Value> =
        s.req(reqwest::Method::GET, "/v1/workspaces", &bob).send().await.unwrap().json().await.unwrap();
    assert!(bobs.is_empty());
    // Alice still has it, untouched; the admin sees it.
    let (out, _, _) = exec(&s, &alice, &id, json!({"argv": ["echo", "mine"]})).await;
    assert_eq!(out, "mine\n");
    let all: Vec<Value> =
        s.req(reqwest::Method::GET, "/v1/workspaces", &s.admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(all.len(), 1);
    // A revoked key stops working.
    let mut rec = s.store.get_api_key(&auth::hash_key(&alice)).await.unwrap().unwrap();
    rec.revoked = true;
    s.store.put_api_key(&rec).await.unwrap();
    let (code, _) = error_of(s.req(reqwest::Method::GET, "/v1/workspaces", &alice).send().await.unwrap()).await;
    assert_eq!(code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_manage_keys_and_tenants_cannot() {
    let s = start().await;
    let r = s
        .req(reqwest::Method::POST, "/v1/keys", &s.admin)
        .json(&json!({"tenant": "acme", "name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    let key = made["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("e2b_") && key.len() == 44, "{key}");
    assert_eq!(made["tenant"], "acme");
    // The new key works and is scoped to its tenant.
    let ws = s.create(&key).await;
    assert_eq!(ws["tenant"], "acme");
    // Listing never shows secrets.
    let keys: Vec<Value> =
        s.req(reqwest::Method::GET, "/v1/keys", &s.admin).send().await.unwrap().json().await.unwrap();
    let text = serde_json::to_string(&keys).unwrap();
    assert!(!text.contains(&key), "secrets must not be listed");
    assert!(keys.iter().any(|k| k["prefix"] == made["prefix"]));
    // Tenants cannot manage keys.
    for (m, p) in [
        (reqwest::Method::GET, "/v1/keys".to_string()),
        (reqwest::Method::POST, "/v1/keys".to_string()),
        (reqwest::Method::DELETE, format!("/v1/keys/{}", made["prefix"].as_str().unwrap())),
    ] {
        let (code, _) = error_of(s.req(m.clone(), &p, &key).json(&json!({"tenant": "x"})).send().await.unwrap()).await;
        assert_eq!(code, 403, "{m} {p}");
    }
    // Bad input.
    for body in [
        json!({}),
        json!({"tenant": ""}),
        json!({"tenant": "has space"}),
        json!({"tenant": "__pool__"}),
        json!({"tenant": "a", "bogus": 1}),
    ] {
        let (code, _) =
            error_of(s.req(reqwest::Method::POST, "/v1/keys", &s.admin).json(&body).send().await.unwrap()).await;
        assert_eq!(code, 400, "{body}");
    }
    // Revoking ends it at once.
    let r = s
        .req(reqwest::Method::DELETE, &format!("/v1/keys/{}", made["prefix"].as_str().unwrap()), &s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (code, _) = error_of(s.req(reqwest::Method::GET, "/v1/workspaces", &key).send().await.unwrap()).await;
    assert_eq!(code, 401);
    let (code, _) =
        error_of(s.req(reqwest::Method::DELETE, "/v1/keys/e2b_nothing", &s.admin).send().await.unwrap()).await;
    assert_eq!(code, 404);
    s.req(reqwest::Method::DELETE, &format!("/v1/workspaces/{}", ws["id"].as_str().unwrap()), &s.admin)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_derived_from_events_and_scoped_to_the_tenant() {
    let s = start().await;
    let alice = s.tenant_key("alice").await;
    let bob = s.tenant_key("bob").await;
    let ws = s.create(&alice).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let rows: Vec<Value> =
        s.req(reqwest::Method::GET, "/v1/usage?bucket=hour", &alice).send().await.unwrap().json().await.unwrap();
    let secs: f64 = rows.iter().map(|r| r["runningSeconds"].as_f64().unwrap()).sum();
    assert!(secs >= 1.0, "{rows:?}");
    assert!(rows.iter().all(|r| r["tenant"] == "alice"));
    let vcpu: f64 = rows.iter().map(|r| r["vcpuSeconds"].as_f64().unwrap()).sum();
    assert!((vcpu - secs * 2.0).abs() < 0.01, "default size is 2 vCPUs: {rows:?}");
    let none: Vec<Value> = s.req(reqwest::Method::GET, "/v1/usage", &bob).send().await.unwrap().json().await.unwrap();
    assert!(none.is_empty(), "bob sees nothing of alice's: {none:?}");
    let csv = s.req(reqwest::Method::GET, "/v1/usage?format=csv", &s.admin).send().await.unwrap().text().await.unwrap();
    assert!(csv.starts_with("tenant,period_start,") && csv.contains("alice,"), "{csv}");
    let (code, _) = error_of(s.req(reqwest::Method::GET, "/v1/usage?bucket=week", &alice).send().await.unwrap()).await;
    assert_eq!(code, 400);
    s.req(reqwest::Method::DELETE, &format!("/v1/workspaces/{}", ws["id"].as_str().unwrap()), &alice)
        .send()
        .await
        .unwrap();
    // After the kill the total no longer grows.
    let a: Vec<Value> =
        s.req(reqwest::Method::GET, "/v1/usage?bucket=month", &alice).send().await.unwrap().json().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let b: Vec<Value> =
        s.req(reqwest::Method::GET, "/v1/usage?bucket=month", &alice).send().await.unwrap().json().await.unwrap();
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoice_prices_metered_usage_per_tenant() {
    let s = start().await;
    let alice = s.tenant_key("alice").await;
    let bob = s.tenant_key("bob").await;
    let ws = s.create(&alice).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let id = ws["id"].as_str().unwrap();
    s.req(reqwest::Method::DELETE, &format!("/v1/workspaces/{id}"), &alice).send().await.unwrap();

    let inv: Value = s.req(reqwest::Method::GET, "/v1/invoice", &s.admin).send().await.unwrap().json().await.unwrap();
    let lines = inv["lines"].as_array().unwrap();
    let a = lines.iter().find(|l| l["tenant"] == "alice").expect("alice is invoiced");
    let hours = a["runningHours"].as_f64().unwrap();
    assert!(hours >= 1.0 / 3600.0, "{inv}");
    // Standard class, ¥100 per workspace-hour; cost from the default setup.
    assert_eq!(a["class"], "standard");
    assert!((a["revenueJpy"].as_f64().unwrap() - hours * 100.0).abs() < 1e-6, "{inv}");
    assert!(a["costUsd"].as_f64().unwrap() > 0.0);
    assert!(a["marginPct"].as_f64().unwrap() > 80.0, "{inv}");
    assert_eq!(inv["setup"], "ecs-ec2-od");
    assert!(inv.get("infrastructure").is_some());

    // A tenant sees its own line, without the operator's cost and margin.
    let mine: Value = s.req(reqwest::Method::GET, "/v1/invoice", &alice).send().await.unwrap().json().await.unwrap();
    assert_eq!(mine["lines"].as_array().unwrap().len(), 1, "{mine}");
    assert!(mine["lines"][0].get("costUsd").is_none() && mine.get("infrastructure").is_none(), "{mine}");
    let theirs: Value = s.req(reqwest::Method::GET, "/v1/invoice", &bob).send().await.unwrap().json().await.unwrap();
    assert!(theirs["lines"].as_array().unwrap().is_empty(), "bob sees nothing of alice's: {theirs}");

    // Another month has nothing; a malformed one is a 400.
    let old: Value =
        s.req(reqwest::Method::GET, "/v1/invoice?month=2001-01", &s.admin).send().await.unwrap().json().await.unwrap();
    assert!(old["lines"].as_array().unwrap().is_empty(), "{old}");
    let (code, msg) =
        error_of(s.req(reqwest::Method::GET, "/v1/invoice?month=2026-13", &alice).send().await.unwrap()).await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.to_string().contains("YYYY-MM"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_before_the_body_was_read_closes_the_connection() {
    let s = start().await;
    // A bad key is refused before the body is read: the connection cannot
    // be reused, and the reply says so.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/workspaces", s.base))
        .bearer_auth("e2b_0000000000000000000000000000000000000000")
        .json(&serde_json::json!({"template": "base"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    // A bodyless error keeps the connection.
    let r = reqwest::Client::new().get(format!("{}/v1/workspaces", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("connection").is_none());
}
