//! Several `warren serve` replicas on one real Redis: any replica serves any
//! workspace (requests are relayed to the owner), a load of creates and
//! execs spread over three replicas, kill -9 of one replica in the middle
//! (its workspaces are failed by whichever replica holds the sweeper lease),
//! and an audit afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "e2b_0123456789abcdef0123456789abcdef01234567";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_warren")
}

mod common;
use common::{free_port, ok};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", "", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), format!("redis://127.0.0.1:{port}/"))
}

struct Replica {
    proc: Proc,
    url: String,
    name: String,
    data: PathBuf,
}

fn replica(root: &Path, name: &str, redis: &str) -> Replica {
    replica_with(root, name, redis, "", 0)
}

/// A replica with extra config lines and creates slowed by `delay_ms`.
fn replica_with(root: &Path, name: &str, redis: &str, extra: &str, delay_ms: u64) -> Replica {
    let data = root.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let cfg = data.join("warren.toml");
    std::fs::write(&cfg, format!("provider = \"process\"\nnode_id = \"{name}\"\nreplica_timeout = 3\n{extra}\n"))
        .unwrap();
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .env("WARREN_ADMIN_KEY", KEY)
        .env("WARREN_REDIS_URL", redis)
        .env("WARREN_AGENT_BIN", warren_provider::conformance::agent_binary())
        .env("WARREN_PROCESS_CREATE_DELAY_MS", delay_ms.to_string())
        .env_remove("WARREN_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = common::ready_url(&mut child, &format!("replica {name}"));
    Replica { proc: Proc(child), url, name: name.into(), data }
}

fn cli(r: &Replica, args: &[&str]) -> Output {
    cli_as(r, KEY, args)
}

fn cli_as(r: &Replica, key: &str, args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("WARREN_URL", &r.url).env("WARREN_API_KEY", key).output().unwrap()
}

/// Waits until a returned replica's reconcile has removed every workspace
/// its host still held.
#[track_caller]
fn wait_host_clean(r: &Replica) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = std::fs::read_dir(r.data.join("process")).map(|d| d.count()).unwrap_or(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{left} workspace dirs left on {}", r.name);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[track_caller]
fn info(r: &Replica, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&cli(r, &["--json", "info", id]))).unwrap()
}

#[test]
fn three_replicas_one_redis_relay_load_and_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let redis_dir = root.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let (_redis, url) = redis(&redis_dir);
    let mut a = replica(root.path(), "node-a", &url);
    let b = replica(root.path(), "node-b", &url);
    let c = replica(root.path(), "node-c", &url);

    // A workspace made through A serves through B and C.
    let w = ok(&cli(&a, &["create"]));
    assert_eq!(ok(&cli(&b, &["exec", &w, "echo via b"])), "via b");
    assert_eq!(ok(&cli(&c, &["exec", &w, "echo via c"])), "via c");
    ok(&cli(&b, &["cp", "-", &format!("{w}:/tmp/relay.txt")]));
    assert_eq!(info(&c, &w)["state"], "running");
    // The E2B data plane too: envd's health through another replica.
    let health = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("E2b-Sandbox-Id: {w}")])
        .arg(format!("{}/health", c.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "204");

    // A client cannot pass itself off as a replica: a DELETE (or pause) sent
    // to B with the relay header, for a workspace A runs, is refused and
    // changes nothing; the same DELETE without the header would be relayed.
    for (method, path) in [("DELETE", format!("/v1/workspaces/{w}")), ("POST", format!("/v1/workspaces/{w}/pause"))] {
        let forged = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .args(["-H", &format!("Authorization: Bearer {KEY}"), "-H", "x-warren-forwarded: node-a"])
            .arg(format!("{}{path}", b.url))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&forged.stdout), "409", "{method} {path} with a forged relay header");
    }
    assert_eq!(info(&c, &w)["state"], "running", "the forged requests changed nothing");
    assert_eq!(ok(&cli(&b, &["exec", &w, "echo still here"])), "still here");

    // Load over all three: create on one, exec on the next, kill on the third.
    let rs = [&a, &b, &c];
    let mut kept = Vec::new();
    for i in 0..12 {
        let (x, y, z) = (rs[i % 3], rs[(i + 1) % 3], rs[(i + 2) % 3]);
        let id = ok(&cli(x, &["create"]));
        assert_eq!(ok(&cli(y, &["exec", &id, &format!("echo {i}")])), i.to_string());
        if i % 2 == 0 {
            ok(&cli(z, &["kill", &id]));
        } else {
            kept.push((x.name.clone(), id));
        }
    }
    let listed = ok(&cli(&b, &["ls"]));
    for (_, id) in &kept {
        assert!(listed.contains(id.as_str()), "{id} missing from the shared listing");
    }

    // kill -9 of A in the middle: its workspaces end up failed (found by
    // whichever replica holds the sweeper lease), the others untouched.
    a.proc.0.kill().unwrap();
    a.proc.0.wait().unwrap();
    let on_a: Vec<String> =
        kept.iter().filter(|(n, _)| n == "node-a").map(|(_, id)| id.clone()).chain([w.clone()]).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &on_a {
        loop {
            let v = info(&b, id);
            if v["state"] == "failed" {
                assert!(v["error"].as_str().unwrap_or("").contains("node-a"), "{v}");
                break;
            }
            assert!(Instant::now() < deadline, "A's workspace {id} was not failed: {v}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    for (n, id) in kept.iter().filter(|(n, _)| n != "node-a") {
        assert_eq!(info(&c, id)["state"], "running", "{id} of {n}");
        assert_eq!(ok(&cli(&c, &["exec", id, "echo still"])), "still");
    }
    // New work goes on without A.
    let fresh = ok(&cli(&c, &["create"]));
    assert_eq!(ok(&cli(&b, &["exec", &fresh, "echo after"])), "after");

    // A comes back: its reconcile releases what the sweeper failed, so no
    // process of a failed workspace is left on its host.
    let a = replica(root.path(), "node-a", &url);
    wait_host_clean(&a);
    // Audit: every workspace in the store is accounted for.
    let all: serde_json::Value = serde_json::from_str(&ok(&cli(&b, &["--json", "ls"]))).unwrap();
    for wsp in all.as_array().unwrap() {
        let id = wsp["id"].as_str().unwrap();
        let st = wsp["state"].as_str().unwrap();
        assert!(st == "running" || st == "failed", "{id} is {st}");
        if st == "running" {
            assert!(cli(&a, &["exec", id, "true"]).status.success(), "{id} listed running but dead");
        }
    }
    for wsp in all.as_array().unwrap() {
        let _ = cli(&c, &["kill", wsp["id"].as_str().unwrap()]);
    }
}

/// The whole event log, read from Redis.
fn events(redis: &str) -> Vec<warren_store::Event> {
    use warren_store::StateStore as _;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = warren_store_redis::RedisStore::open(redis, None).unwrap();
        store.events_since(0, usize::MAX).await.unwrap()
    })
}

fn running_seconds(r: &Replica, key: &str) -> f64 {
    let rows: serde_json::Value = serde_json::from_str(&ok(&cli_as(r, key, &["--json", "usage"]))).unwrap();
    rows.as_array().unwrap().iter().map(|r| r["runningSeconds"].as_f64().unwrap()).sum()
}

/// Chaos: creates and execs from several clients over three replicas whose
/// creates are slow (300 ms), kill -9 of one while creates are in flight on
/// it, then an audit: nothing half-created is visible or left behind, every
/// workspace a client got is accounted for, and metering counts exactly the
/// running ones. Also: a tenant's quota holds across racing replicas.
#[test]
fn kill_9_during_load_loses_nothing_and_quotas_hold_across_replicas() {
    use std::sync::{Arc, Mutex};
    let root = tempfile::tempdir().unwrap();
    let redis_dir = root.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let (_redis, url) = redis(&redis_dir);
    // The chaos load below creates workspaces for seconds without removing
    // them: its tenant states no limits (the safe defaults would stop it).
    let quota = "[tenant_quotas.capped]\nmax_workspaces = 1\n\
                 [tenant_quotas.load]\nmax_workspaces = \"unlimited\"\nmax_millicpus = \"unlimited\"\n\
                 max_memory_mib = \"unlimited\"";
    let mut a = replica_with(root.path(), "node-a", &url, quota, 300);
    let b = Arc::new(replica_with(root.path(), "node-b", &url, quota, 300));
    let c = Arc::new(replica_with(root.path(), "node-c", &url, quota, 300));

    // Nine creates at the same instant for a tenant allowed one, over three
    // replicas: exactly one gets through.
    let capped = ok(&cli(&b, &["keys", "create", "--tenant", "capped"]));
    let urls3 = [a.url.clone(), b.url.clone(), c.url.clone()];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results: Vec<(u16, String)> = rt.block_on(async {
        let http = reqwest::Client::new();
        let reqs = (0..9).map(|i| {
            let req = http
                .post(format!("{}/v1/workspaces", urls3[i % 3]))
                .bearer_auth(&capped)
                .json(&serde_json::json!({"template": "base"}));
            async move {
                let r = req.send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        });
        futures_util::future::join_all(reqs).await
    });
    let made: Vec<String> = results
        .iter()
        .filter(|(st, _)| *st == 200 || *st == 201)
        .map(|(_, body)| serde_json::from_str::<serde_json::Value>(body).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(made.len(), 1, "a quota of 1 over three racing replicas: {results:?}");
    for (st, body) in results.iter().filter(|(st, _)| *st != 200 && *st != 201) {
        assert!(*st == 429 && body.contains("quota"), "{st} {body}");
    }
    for id in &made {
        ok(&cli_as(&b, &capped, &["kill", id]));
    }

    // Load: six clients create round-robin over the replicas and exec each
    // new workspace through the next replica.
    let load = ok(&cli(&b, &["keys", "create", "--tenant", "load"]));
    let urls: Vec<String> = [&a.url, &b.url, &c.url].iter().map(|u| u.to_string()).collect();
    let got: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let (urls, got, stop, key) = (urls.clone(), got.clone(), stop.clone(), load.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (x, y) = (i % 3, (i + 1) % 3);
                    i += 1;
                    let run = |u: &str, args: &[&str]| {
                        Command::new(bin())
                            .args(args)
                            .env("WARREN_URL", u)
                            .env("WARREN_API_KEY", &key)
                            .output()
                            .unwrap()
                    };
                    let o = run(&urls[x], &["create"]);
                    if !o.status.success() {
                        // Only creates sent to the replica being killed may fail.
                        assert_eq!(x, 0, "create on replica {x}: {}", String::from_utf8_lossy(&o.stderr));
                        continue;
                    }
                    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    got.lock().unwrap().push((x, id.clone()));
                    let e = run(&urls[y], &["exec", &id, "echo ok"]);
                    if y != 0 && x != 0 {
                        assert!(e.status.success(), "exec of {id}: {}", String::from_utf8_lossy(&e.stderr));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // One create certainly in flight on A (inside its 300 ms), then kill -9.
    let in_flight = {
        let u = a.url.clone();
        let key = load.clone();
        std::thread::spawn(move || {
            Command::new(bin()).args(["create"]).env("WARREN_URL", u).env("WARREN_API_KEY", key).output().unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(120));
    a.proc.0.kill().unwrap();
    a.proc.0.wait().unwrap();
    assert!(!in_flight.join().unwrap().status.success(), "the create in flight on A never answered");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in clients {
        h.join().unwrap();
    }
    let got = got.lock().unwrap().clone();
    assert!(got.iter().filter(|(x, _)| *x == 0).count() >= 1, "A made workspaces before it died");
    assert!(got.iter().filter(|(x, _)| *x != 0).count() >= 3, "B and C kept serving");

    // Settled: the sweeper failed A's workspaces and removed the half-made ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all: serde_json::Value = serde_json::from_str(&ok(&cli(&b, &["--json", "ls"]))).unwrap();
        let all = all.as_array().unwrap().clone();
        let unsettled: Vec<_> = all
            .iter()
            .filter(|w| w["state"] == "creating" || (w["node"] == "node-a" && w["state"] == "running"))
            .collect();
        if unsettled.is_empty() {
            break all;
        }
        assert!(Instant::now() < deadline, "not settled: {unsettled:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    // Audit 1: every workspace a client got is there, honest about its state.
    let state_of = |id: &str| all.iter().find(|w| w["id"] == id).map(|w| w["state"].as_str().unwrap().to_string());
    for (x, id) in &got {
        let st = state_of(id).unwrap_or_else(|| panic!("{id} (made on replica {x}) is gone"));
        let want = if *x == 0 { "failed" } else { "running" };
        assert_eq!(st, want, "{id} made on replica {x}");
    }
    // Audit 2: nothing in the store that no client got, except what A's
    // death failed; the tenant never sees a workspace mid-create.
    let tenant_view: serde_json::Value = serde_json::from_str(&ok(&cli_as(&c, &load, &["--json", "ls"]))).unwrap();
    for w in tenant_view.as_array().unwrap() {
        let id = w["id"].as_str().unwrap();
        assert!(got.iter().any(|(_, g)| g == id), "{id} is visible but no client got it: {w}");
    }
    // Audit 3: the log shows creates cut short by the kill (Created → Failed
    // → Deleted, never Running), and none of them left a record.
    let log = events(&url);
    let mut by_ws: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in &log {
        let k = match &e.event.kind {
            warren_store::EventKind::Created { .. } => "created".to_string(),
            warren_store::EventKind::State { to, .. } => to.as_str().to_string(),
            other => format!("{other:?}"),
        };
        by_ws.entry(e.event.workspace.to_string()).or_default().push(k);
    }
    let cut: Vec<_> = by_ws.iter().filter(|(_, k)| *k == &["created", "failed", "deleted"]).collect();
    assert!(!cut.is_empty(), "no create was cut short by the kill: {by_ws:?}");
    for (id, _) in &cut {
        assert!(state_of(id).is_none(), "{id} was cut short but still has a record");
    }
    // Audit 4: metering counts exactly the running workspaces (the failed
    // and cut-short ones add nothing).
    let running = all.iter().filter(|w| w["state"] == "running").count() as f64;
    let before = running_seconds(&b, &load);
    std::thread::sleep(Duration::from_secs(2));
    let grew = running_seconds(&b, &load) - before;
    assert!(
        (grew - 2.0 * running).abs() <= 0.5 * running.max(1.0),
        "usage grew {grew:.2} s in 2 s with {running} running"
    );
    // A comes back: what it left on its host (the cut-short sandbox, the
    // failed ones) is removed.
    let a = replica_with(root.path(), "node-a", &url, quota, 0);
    wait_host_clean(&a);
    for w in &all {
        let _ = cli(&c, &["kill", w["id"].as_str().unwrap()]);
    }
}
