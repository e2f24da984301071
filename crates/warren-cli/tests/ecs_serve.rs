//! `warren serve` with `provider = "ecs"` against moto's ECS server, end to
//! end through the CLI: create, inspect, list, adoption after kill -9 of the
//! server, a task ECS stops on its own (Spot interruption) failing its
//! workspace with the reason, and kill. moto runs no containers, so the
//! agent is not reached (`wait_for_agent = false`) and exec is a clear error.
//! Built only with `--features ecs` (scripts/test.sh runs it).
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

fn moto() -> (Proc, String, String, String) {
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
    let subnet = tag(&q(&format!("Action=CreateSubnet&VpcId={vpc}&CidrBlock=10.0.1.0/24")), "subnetId");
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

#[test]
fn serve_on_ecs_creates_adopts_notices_spot_stops_and_kills() {
    let (_moto, moto_url, subnet, sg) = moto();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warren.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"provider = "ecs"
[ecs]
cluster = "ws"
region = "us-east-1"
endpoint_url = "{moto_url}"
subnets = ["{subnet}"]
security_groups = ["{sg}"]
launch_type = "FARGATE"
agent_image = "warren/agent:0.1"
owner = "e2e"
wait_for_agent = false
start_timeout = 20
[ecs.images]
base = "public.ecr.aws/docker/library/debian:12"
"#
        ),
    )
    .unwrap();
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
