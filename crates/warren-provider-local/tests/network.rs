//! Network mode `bridge`: egress through NAT works, other workspaces and the
//! host's own services are unreachable, and destroy removes the link.
//! The "internet" is a network namespace made by the test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use warren_core::{random_token, Size, WorkspaceId};
use warren_proto::client::AgentClient;
use warren_provider::{CreateSpec, NetworkMode, SandboxInfo, SandboxProvider};
use warren_provider_local::{network, LocalProvider};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace with an HTTP server at 10.90.<n>.2:8000, routed from the host.
struct Outside {
    ns: String,
    host_if: String,
    server: std::process::Child,
    ip: String,
}

impl Outside {
    fn new() -> Outside {
        let n = std::process::id() % 250 + 1;
        let ns = format!("wtest{n}");
        let host_if = format!("wto{n}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        sh(&["ip", "addr", "add", &format!("10.90.{n}.1/30"), "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("10.90.{n}.2/30"), "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("10.90.{n}.1")]);
        let ip = format!("10.90.{n}.2");
        let responder = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{ip}',8000))\ns.listen()\nwhile True:\n c,a=s.accept()\n c.recv(4096)\n c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n c.close()\n"
        );
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", &responder])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Outside { ns, host_if, server, ip }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

async fn create(p: &LocalProvider, network: NetworkMode) -> (SandboxInfo, AgentClient) {
    let spec = CreateSpec {
        tenant: None,
        id: WorkspaceId::generate(),
        template: "base".into(),
        size: Size { millicpus: 500, memory_mib: 256, disk_mib: 64, pids: 128 },
        network,
        env: Default::default(),
        labels: Default::default(),
        init_token: random_token(16),
        access_token: Some(random_token(16)),
    };
    let info = p.create(&spec).await.unwrap();
    let c = AgentClient::new(info.endpoint.clone()).with_access_token(spec.access_token.clone()).as_user("root");
    (info, c)
}

async fn fetch(c: &AgentClient, url: &str) -> String {
    let script = format!(
        "python3 -c \"import urllib.request,sys\ntry:\n print(urllib.request.urlopen('{url}', timeout=3).status)\nexcept Exception as e:\n print('blocked', type(e).__name__)\""
    );
    String::from_utf8_lossy(&c.sh(&script).await.unwrap().stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_egress_isolation_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    let outside = Outside::new();
    let (a, ca) = create(&p, NetworkMode::Bridge).await;
    let (b, cb) = create(&p, NetworkMode::Bridge).await;
    let (n, cn) = create(&p, NetworkMode::None).await;
    // Whatever happens below, the workspaces go.
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for pid in &self.0 {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
    }
    let pids: Vec<String> = [&a, &b, &n]
        .iter()
        .filter_map(|w| {
            let meta = std::fs::read(dir.path().join("workspaces").join(w.id.as_str()).join("meta.json")).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&meta).ok()?;
            Some(v["pid"].as_i64()?.to_string())
        })
        .collect();
    let _cleanup = Cleanup(pids);

    let a_ip = String::from_utf8_lossy(&ca.sh("ip -4 -o addr show eth0 | awk '{print $4}'").await.unwrap().stdout)
        .trim()
        .to_string();
    let b_ip = String::from_utf8_lossy(&cb.sh("ip -4 -o addr show eth0 | awk '{print $4}'").await.unwrap().stdout)
        .trim()
        .to_string();
    assert!(a_ip.starts_with("10.89.") && a_ip.ends_with("/30"), "{a_ip}");
    assert_ne!(a_ip, b_ip);
    assert_eq!(String::from_utf8_lossy(&cn.sh("ls /sys/class/net").await.unwrap().stdout).trim(), "lo");

    // Egress through NAT reaches the outside world.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://{}:8000/", outside.ip);
    let mut got = String::new();
    for _ in 0..20 {
        got = fetch(&ca, &url).await;
        if got == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got, "200", "egress from a bridge workspace");
    assert!(fetch(&cn, &url).await.starts_with("blocked"), "a `none` workspace has no egress");

    // b serves; a cannot reach it.
    let b_addr = b_ip.split('/').next().unwrap().to_string();
    cb.sh(&format!("nohup python3 -m http.server 8001 --bind {b_addr} >/dev/null 2>&1 &")).await.unwrap();
    // The server takes a moment to listen (seconds on a slow or emulated machine).
    let mut got = String::new();
    for _ in 0..50 {
        got = fetch(&cb, &format!("http://{b_addr}:8001/")).await;
        if got == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got, "200", "b reaches itself");
    assert!(fetch(&ca, &format!("http://{b_addr}:8001/")).await.starts_with("blocked"), "a must not reach b");

    // The host's own services are not reachable, not even on the link address.
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host_listener.local_addr().unwrap().port();
    let gw = String::from_utf8_lossy(&ca.sh("ip route | awk '/default/ {print $3}'").await.unwrap().stdout)
        .trim()
        .to_string();
    assert!(fetch(&ca, &format!("http://{gw}:{port}/")).await.starts_with("blocked"));

    // The host's end of the link: no IPv6 (a workspace's router
    // advertisements cannot set the host's routes, its link-local address
    // cannot reach host services), strict reverse-path filtering, and the
    // firewall drops any source outside the workspace pool.
    let a_if = network::host_ifname(a.id.as_str());
    assert!(std::path::Path::new("/sys/class/net").join(&a_if).exists());
    let conf = |k: &str| std::fs::read_to_string(format!("/proc/sys/net/{k}")).unwrap().trim().to_string();
    if std::path::Path::new("/proc/sys/net/ipv6/conf").exists() {
        assert_eq!(conf(&format!("ipv6/conf/{a_if}/disable_ipv6")), "1");
        assert_eq!(conf(&format!("ipv6/conf/{a_if}/accept_ra")), "0");
        let v6 = std::process::Command::new("ip").args(["-6", "addr", "show", "dev", &a_if]).output().unwrap();
        assert!(String::from_utf8_lossy(&v6.stdout).trim().is_empty(), "no IPv6 address on the host's end");
    }
    assert_eq!(conf(&format!("ipv4/conf/{a_if}/rp_filter")), "1");
    let rules = std::process::Command::new("iptables").args(["-w", "-S", "WARREN-FORWARD"]).output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout).to_string();
    let first = rules.lines().find(|l| l.starts_with("-A")).unwrap_or("");
    assert!(first.contains("! -s 10.89.0.0/16") && first.contains("DROP"), "source check first: {rules}");

    for id in [&a.id, &b.id, &n.id] {
        p.destroy(id).await.unwrap();
    }
    assert!(!std::path::Path::new("/sys/class/net").join(&a_if).exists());
}
