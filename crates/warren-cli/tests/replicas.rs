//! Several `warren serve` replicas on one real Redis: any replica serves any
//! workspace (requests are relayed to the owner), a load of creates and
//! execs spread over three replicas, kill -9 of one replica in the middle
//! (its workspaces are failed by whichever replica holds the sweeper lease),
//! and an audit afterwards.

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
    let data = root.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let cfg = data.join("warren.toml");
    std::fs::write(&cfg, format!("provider = \"process\"\nnode_id = \"{name}\"\nreplica_timeout = 3\n")).unwrap();
    let port = free_port();
    let mut child = Command::new(bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .env("WARREN_ADMIN_KEY", KEY)
        .env("WARREN_REDIS_URL", redis)
        .env("WARREN_AGENT_BIN", warren_provider::conformance::agent_binary())
        .env_remove("WARREN_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = common::ready_url(&mut child, &format!("replica {name}"));
    Replica { proc: Proc(child), url, name: name.into(), data }
}

fn cli(r: &Replica, args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("WARREN_URL", &r.url).env("WARREN_API_KEY", KEY).output().unwrap()
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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = std::fs::read_dir(a.data.join("process")).map(|d| d.count()).unwrap_or(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} workspace dirs left on node-a");
        std::thread::sleep(Duration::from_millis(200));
    }
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
