//! `warren serve` with `provider = "ecs"` against moto's ECS server, end to
//! end through the CLI: create, inspect, list, adoption after kill -9 of the
//! server, a task ECS stops on its own (Spot interruption) failing its
//! workspace with the reason, and kill. moto runs no containers, so the
//! agent is not reached (`wait_for_agent = false`) and exec is a clear error.
//! Built only with `--features ecs` (scripts/test.sh runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test
#![cfg(feature = "ecs")]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, ok};

const KEY: &str = "e2b_ecs0ecs0ecs0ecs0ecs0ecs0ecs0ecs0ecs0ecs0e";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("WARREN_MOTO_SERVER") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-moto/bin/moto_server")
}

/// One call to moto: the ECS JSON protocol, or EC2's query protocol.
fn aws(url: &str, service: &str, target: Option<&str>, body: String) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", "POST", url, "-H"])
        .arg(format!("Authorization: AWS4-HMAC-SHA256 Credential=test/20261129/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=x"));
    match target {
        Some(t) => cmd
            .args(["-H", "Content-Type: application/x-amz-json-1.1", "-H"])
            .arg(format!("X-Amz-Target: AmazonEC2ContainerServiceV20141113.{t}")),
        None => cmd.args(["-H", "Content-Type: application/x-www-form-urlencoded"]),
    };
    let out = cmd.args(["--data", &body]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ecs(url: &str, target: &str, body: serde_json::Value) -> serde_json::Value {
    let text = aws(url, "ecs", Some(target), body.to_string());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{target}: {e}: {text}"))
}

fn tag(xml: &str, t: &str) -> String {
    let open = format!("<{t}>");
    let from = xml.find(&open).unwrap_or_else(|| panic!("no {t} in {xml}")) + open.len();
    xml[from..from + xml[from..].find('<').unwrap()].to_string()
}

/// moto with a VPC, a subnet (`subnet_cidr`, inside 10.0.0.0/16) and a
/// security group, and the cluster `ws`.
fn moto(subnet_cidr: &str) -> (Proc, String, String, String) {
    let port = free_port();
    let bin = moto_server();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} ({e}): scripts/test.sh installs moto", bin.display()));
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Tasks stay RUNNING until stopped.
    let st = Command::new("curl")
        .args(["-sf", "-X", "POST", &format!("{url}/moto-api/state-manager/set-transition"), "--data"])
        .arg(r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}"#)
        .status()
        .unwrap();
    assert!(st.success());
    let q = |params: &str| aws(&url, "ec2", None, format!("Version=2016-11-15&{params}"));
    let vpc = tag(&q("Action=CreateVpc&CidrBlock=10.0.0.0/16"), "vpcId");
    q(&format!("Action=ModifyVpcAttribute&VpcId={vpc}&EnableDnsHostnames.Value=true"));
    let subnet = tag(&q(&format!("Action=CreateSubnet&VpcId={vpc}&CidrBlock={subnet_cidr}")), "subnetId");
    let sg =
        tag(&q(&format!("Action=CreateSecurityGroup&GroupName=ws&GroupDescription=workspaces&VpcId={vpc}")), "groupId");
    ecs(&url, "CreateCluster", serde_json::json!({"clusterName": "ws"}));
    (Proc(child), url, subnet, sg)
}

fn serve(data: &std::path::Path, cfg: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(cfg)
        .arg("--data-dir")
        .arg(data)
        .env("WARREN_ADMIN_KEY", KEY)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("WARREN_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = common::ready_url(&mut child, "warren serve (ecs)");
    (Proc(child), url)
}

fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("WARREN_URL", url)
        .env("WARREN_API_KEY", KEY)
        .output()
        .unwrap()
}

fn info(url: &str, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&cli(url, &["--json", "info", id]))).unwrap()
}

/// warren's tasks in the cluster, with their status and stop reason.
fn tasks(url: &str) -> Vec<serde_json::Value> {
    let arns = ecs(url, "ListTasks", serde_json::json!({"cluster": "ws", "startedBy": "warren-e2e"}));
    let arns = arns["taskArns"].clone();
    if arns.as_array().is_none_or(|a| a.is_empty()) {
        return Vec::new();
    }
    ecs(url, "DescribeTasks", serde_json::json!({"cluster": "ws", "tasks": arns, "include": ["TAGS"]}))["tasks"]
        .as_array()
        .unwrap()
        .clone()
}

/// warren's config for the moto cluster: `top` before `[ecs]`, `ecs`
/// inside it.
fn write_config(path: &std::path::Path, top: &str, moto_url: &str, subnet: &str, sg: &str, ecs: &str) {
    let text = format!(
        r#"provider = "ecs"
{top}
[ecs]
cluster = "ws"
region = "us-east-1"
endpoint_url = "{moto_url}"
subnets = ["{subnet}"]
security_groups = ["{sg}"]
launch_type = "FARGATE"
agent_image = "warren/agent:0.1"
owner = "e2e"
{ecs}
[ecs.images]
base = "public.ecr.aws/docker/library/debian:12"
"#
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn serve_on_ecs_creates_adopts_notices_spot_stops_and_kills() {
    // A subnet of its own: the pool test below puts agents on 10.0.1.x.
    let (_moto, moto_url, subnet, sg) = moto("10.0.2.0/24");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warren.toml");
    write_config(&cfg, "", &moto_url, &subnet, &sg, "wait_for_agent = false\nstart_timeout = 20");
    let data = dir.path().join("data");
    let (mut server, url) = serve(&data, &cfg);

    let id = ok(&cli(&url, &["create"]));
    let v = info(&url, &id);
    assert_eq!((v["state"].as_str(), v["provider"].as_str()), (Some("running"), Some("ecs")), "{v}");
    let ts = tasks(&moto_url);
    assert_eq!(ts.len(), 1, "one task in the cluster: {ts:?}");
    assert_eq!(ts[0]["lastStatus"], "RUNNING");
    assert!(ts[0]["tags"].to_string().contains(&id), "the task carries the workspace id: {}", ts[0]["tags"]);
    // No container runs under moto: exec is a clear error, not a hang.
    let e = cli(&url, &["exec", &id, "true"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("agent"), "{}", String::from_utf8_lossy(&e.stderr));
    // An unknown template is refused, and nothing is started for it.
    let bad = cli(&url, &["create", "-t", "python-3.12"]);
    assert!(!bad.status.success());
    assert_eq!(tasks(&moto_url).len(), 1);

    // kill -9 of the server: the next one adopts the running task.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let (_server, url) = serve(&data, &cfg);
    assert_eq!(info(&url, &id)["state"], "running", "adopted after a restart");
    assert!(ok(&cli(&url, &["ls"])).contains(&id));

    // ECS stops the task on its own (a Spot interruption): the workspace
    // fails with ECS's reason at the next watch.
    let arn = tasks(&moto_url)[0]["taskArn"].as_str().unwrap().to_string();
    ecs(
        &moto_url,
        "StopTask",
        serde_json::json!({"cluster": "ws", "task": arn, "reason": "Spot Instance interruption"}),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = info(&url, &id);
        if v["state"] == "failed" {
            assert!(v["error"].as_str().unwrap_or("").contains("Spot Instance interruption"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "the stopped task's workspace was not failed: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Kill: warren stops the task with its own reason.
    let other = ok(&cli(&url, &["create"]));
    ok(&cli(&url, &["kill", &other]));
    let stopped: Vec<_> = tasks(&moto_url)
        .into_iter()
        .filter(|t| t["tags"].to_string().contains(&other))
        .map(|t| (t["desiredStatus"].as_str().unwrap_or("").to_string(), t["stoppedReason"].clone()))
        .collect();
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].0, "STOPPED");
    assert_eq!(stopped[0].1, "stopped by warren");
    assert!(!ok(&cli(&url, &["ls"])).contains(&other));
    let _ = cli(&url, &["kill", &id]);
}

/// Stands in for the container runtime moto does not have: for every
/// RUNNING task of the cluster it puts the task's private IP on the
/// loopback interface and starts a real agent there with the task's environment (its
/// tokens), as the workspace container would; a task that stops loses its
/// agent and address. So warren's pool, readiness checks, personalisation
/// and exec run for real against ECS tasks.
struct FakeNode {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where task addresses go (moto's subnet, 10.0.1.0/24, is not routed here).
const DEV: &str = "lo";

impl FakeNode {
    fn start(moto_url: &str) -> FakeNode {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (url, flag) = (moto_url.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut agents: std::collections::HashMap<String, (Child, String)> = Default::default();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let arns = ecs(&url, "ListTasks", serde_json::json!({"cluster": "ws"}))["taskArns"].clone();
                let described = if arns.as_array().is_some_and(|a| !a.is_empty()) {
                    ecs(&url, "DescribeTasks", serde_json::json!({"cluster": "ws", "tasks": arns}))["tasks"].clone()
                } else {
                    serde_json::json!([])
                };
                for t in described.as_array().unwrap() {
                    let arn = t["taskArn"].as_str().unwrap().to_string();
                    let running = t["lastStatus"] == "RUNNING" && t["desiredStatus"] == "RUNNING";
                    if running && !agents.contains_key(&arn) {
                        let ip = t["attachments"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|a| a["details"].as_array().cloned().unwrap_or_default())
                            .find(|d| d["name"] == "privateIPv4Address")
                            .and_then(|d| d["value"].as_str().map(str::to_string))
                            .expect("task IP");
                        let env: Vec<(String, String)> = t["overrides"]["containerOverrides"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|c| c["name"] == "workspace")
                            .flat_map(|c| c["environment"].as_array().cloned().unwrap_or_default())
                            .map(|kv| {
                                (kv["name"].as_str().unwrap().to_string(), kv["value"].as_str().unwrap().to_string())
                            })
                            .collect();
                        let added = Command::new("ip").args(["addr", "add", &format!("{ip}/32"), "dev", DEV]).status();
                        assert!(added.is_ok_and(|s| s.success()), "adding {ip} to {DEV} (run as root)");
                        let child = Command::new(warren_provider::conformance::agent_binary())
                            .args(["--listen", &format!("tcp://{ip}:49983"), "--user", "root"])
                            .envs(env)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .unwrap();
                        agents.insert(arn, (child, ip));
                    } else if !running {
                        if let Some((mut child, ip)) = agents.remove(&arn) {
                            let _ = child.kill();
                            let _ = child.wait();
                            let _ = Command::new("ip").args(["addr", "del", &format!("{ip}/32"), "dev", DEV]).status();
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for (_, (mut child, ip)) in agents {
                let _ = child.kill();
                let _ = child.wait();
                let _ = Command::new("ip").args(["addr", "del", &format!("{ip}/32"), "dev", DEV]).status();
            }
        });
        FakeNode { stop, thread: Some(thread) }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A warm pool on ECS: members are tasks whose agent answered and ran a
/// command; a create takes one (personalised with the caller's environment
/// and a fresh token), exec reaches it at the task's address, and the pool
/// refills with new tasks.
#[test]
fn warm_pool_on_ecs_with_real_agents_in_the_tasks() {
    let (_moto, moto_url, subnet, sg) = moto("10.0.1.0/24");
    let _node = FakeNode::start(&moto_url);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warren.toml");
    write_config(&cfg, "[[pools]]\ntemplate = \"base\"\ntarget = 2", &moto_url, &subnet, &sg, "start_timeout = 30");
    let (_server, url) = serve(&dir.path().join("data"), &cfg);
    let pool = |url: &str| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&ok(&cli(url, &["--json", "pools"]))).unwrap();
        v[0].clone()
    };
    let wait_ready = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = pool(&url);
            if p["ready"].as_u64() == Some(n) {
                return p;
            }
            assert!(Instant::now() < deadline, "the ECS pool did not reach {n} ready: {p}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_ready(2);
    assert_eq!(tasks(&moto_url).len(), 2, "two pre-started tasks");

    let id = ok(&cli(&url, &["create", "-e", "WHO=ecs-tenant"]));
    let p = pool(&url);
    assert_eq!((p["hits"].as_u64(), p["misses"].as_u64()), (Some(1), Some(0)), "{p}");
    assert_eq!(ok(&cli(&url, &["exec", &id, "echo $WHO"])), "ecs-tenant", "personalised through /init");
    let v = info(&url, &id);
    assert_eq!(v["provider"], "ecs");
    // The pool builds a new task to replace the one taken.
    wait_ready(2);
    assert_eq!(tasks(&moto_url).len(), 3);
    ok(&cli(&url, &["kill", &id]));
    let left: Vec<_> = tasks(&moto_url).into_iter().filter(|t| t["desiredStatus"] == "RUNNING").collect();
    assert_eq!(left.len(), 2, "only the pool's tasks run after the kill");
}
