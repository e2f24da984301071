//! The ECS backend against moto's ECS server (started here on a free
//! loopback port; scripts/test.sh installs it into .venv-moto). moto runs no
//! containers, so this tests request building, state mapping, polling,
//! reconcile and the handling of tasks ECS stops on its own; container
//! behaviour is the Docker backend's tests' job.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warren_provider::{ProviderError, RunState, SandboxProvider};
use warren_provider_ecs::{EcsConfig, EcsProvider, Launch, TaskNetwork};

struct Moto(Child);

impl Drop for Moto {
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

async fn start_moto() -> (Moto, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
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
    // Tasks stay RUNNING until told otherwise (moto's default walks them to
    // STOPPED one DescribeTasks at a time).
    let r = reqwest::Client::new()
        .post(format!("{url}/moto-api/state-manager/set-transition"))
        .json(
            &serde_json::json!({"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    (Moto(child), url)
}

/// One call to moto's EC2 query API.
async fn ec2(url: &str, params: Vec<(&'static str, String)>) -> String {
    let mut form = params;
    form.push(("Version", "2016-11-15".into()));
    reqwest::Client::new()
        .post(url)
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261129/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x",
        )
        .form(&form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The text of the first `<t>` in an EC2 reply.
fn tag(xml: &str, t: &str) -> String {
    let open = format!("<{t}>");
    let from = xml.find(&open).unwrap_or_else(|| panic!("no {t} in {xml}")) + open.len();
    xml[from..from + xml[from..].find('<').unwrap()].to_string()
}

/// A VPC, subnet and security group in moto's EC2 (RunTask checks them),
/// through EC2's query API.
async fn network(url: &str) -> (String, String) {
    let call = |params: Vec<(&'static str, String)>| ec2(url, params);
    let vpc = tag(&call(vec![("Action", "CreateVpc".into()), ("CidrBlock", "10.0.0.0/16".into())]).await, "vpcId");
    // Task ENIs get DNS names (moto needs it for awsvpc tasks).
    call(vec![
        ("Action", "ModifyVpcAttribute".into()),
        ("VpcId", vpc.clone()),
        ("EnableDnsHostnames.Value", "true".into()),
    ])
    .await;
    let subnet = tag(
        &call(vec![("Action", "CreateSubnet".into()), ("VpcId", vpc.clone()), ("CidrBlock", "10.0.1.0/24".into())])
            .await,
        "subnetId",
    );
    let sg = tag(
        &call(vec![
            ("Action", "CreateSecurityGroup".into()),
            ("GroupName", "warren-ws".into()),
            ("GroupDescription", "workspaces".into()),
            ("VpcId", vpc),
        ])
        .await,
        "groupId",
    );
    (subnet, sg)
}

fn credentials() {
    // Fake credentials moto accepts (edition 2021: set_var is safe).
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
}

fn config(url: &str, owner: &str, net: &(String, String)) -> EcsConfig {
    credentials();
    EcsConfig {
        cluster: "ws".into(),
        region: "us-east-1".into(),
        endpoint_url: Some(url.into()),
        subnets: vec![net.0.clone()],
        security_groups: vec![net.1.clone()],
        launch: Launch::LaunchType("FARGATE".into()),
        images: BTreeMap::from([("base".to_string(), "public.ecr.aws/docker/library/debian:12".to_string())]),
        agent_image: "warren/agent:0.1".into(),
        owner: owner.into(),
        wait_for_agent: false,
        start_timeout: Duration::from_secs(20),
        execution_role_arn: Some("arn:aws:iam::123456789012:role/warren-workspace-exec".into()),
        log_group: Some("/warren/workspaces".into()),
        network: TaskNetwork::Awsvpc,
    }
}

async fn ecs_client(url: &str) -> aws_sdk_ecs::Client {
    credentials();
    let shared = aws_config::from_env().region(aws_config::Region::new("us-east-1")).endpoint_url(url).load().await;
    aws_sdk_ecs::Client::new(&shared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_from_task_definitions_with_the_agent_injected() {
    let (_moto, url) = start_moto().await;
    let net = network(&url).await;
    let p = EcsProvider::new(config(&url, "t1", &net)).await.unwrap();
    let ecs = ecs_client(&url).await;
    ecs.create_cluster().cluster_name("ws").send().await.unwrap();

    let spec = warren_provider::conformance::spec("base");
    let info = p.create(&spec).await.unwrap();
    assert_eq!((info.id.clone(), info.state), (spec.id.clone(), RunState::Running));
    let ep = info.endpoint.to_string();
    assert!(ep.starts_with("tcp://10.") && ep.ends_with(":49983"), "{ep}");

    // What was asked of ECS: the task, its overrides, tags and definition.
    let arns = ecs.list_tasks().cluster("ws").started_by("warren-t1").send().await.unwrap().task_arns().to_vec();
    assert_eq!(arns.len(), 1);
    let t = ecs
        .describe_tasks()
        .cluster("ws")
        .set_tasks(Some(arns.clone()))
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .unwrap()
        .tasks()[0]
        .clone();
    let env: BTreeMap<String, String> = t.overrides().unwrap().container_overrides()[0]
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap().to_string(), kv.value().unwrap().to_string()))
        .collect();
    assert_eq!(env.get("CONFORMANCE").map(String::as_str), Some("yes"));
    assert_eq!(env.get("WARREN_AGENT_ACCESS_TOKEN"), spec.access_token.as_ref());
    let tags: BTreeMap<&str, &str> = t.tags().iter().map(|x| (x.key().unwrap(), x.value().unwrap())).collect();
    assert_eq!(tags.get("warren.id").copied(), Some(spec.id.as_str()));
    let td = ecs.describe_task_definition().task_definition(t.task_definition_arn().unwrap()).send().await.unwrap();
    let td = td.task_definition().unwrap();
    assert_eq!(td.network_mode().map(|m| m.as_str()), Some("awsvpc"));
    assert_eq!(td.cpu(), Some("1024"), "1000 millicpus → 1024 cpu units");
    assert_eq!(td.memory(), Some("256"));
    let names: Vec<&str> = td.container_definitions().iter().filter_map(|c| c.name()).collect();
    assert_eq!(names, vec!["warren-agent", "workspace"]);
    let ws = &td.container_definitions()[1];
    assert_eq!(ws.entry_point(), ["/.warren/agent"]);
    assert_eq!(ws.depends_on()[0].container_name(), "warren-agent");
    assert_eq!(td.execution_role_arn(), Some("arn:aws:iam::123456789012:role/warren-workspace-exec"));
    let logs = ws.log_configuration().expect("awslogs on the workspace container");
    assert_eq!(logs.log_driver().as_str(), "awslogs");
    assert_eq!(logs.options().unwrap().get("awslogs-group").map(String::as_str), Some("/warren/workspaces"));

    // Listed, inspected, adopted by a fresh provider (after a restart).
    assert!(p.list().await.unwrap().iter().any(|s| s.id == spec.id && s.state == RunState::Running));
    let again = EcsProvider::new(config(&url, "t1", &net)).await.unwrap();
    assert_eq!(again.inspect(&spec.id).await.unwrap().endpoint, info.endpoint);
    // Another installation's tasks are not ours.
    assert!(EcsProvider::new(config(&url, "other", &net)).await.unwrap().list().await.unwrap().is_empty());
    // A duplicate is refused; a template without an image is a clear error.
    assert!(matches!(p.create(&spec).await, Err(ProviderError::AlreadyExists(_))));
    let bad = warren_provider::conformance::spec("python-3.12");
    match p.create(&bad).await {
        Err(ProviderError::InvalidSpec(m)) => assert!(m.contains("python-3.12"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.pause(&spec.id).await, Err(ProviderError::Unsupported(_))));

    // Destroy stops the task; it is gone for the trait, idempotently.
    p.destroy(&spec.id).await.unwrap();
    p.destroy(&spec.id).await.unwrap();
    assert!(matches!(again.inspect(&spec.id).await, Err(ProviderError::NotFound(_))));
    assert!(!again.list().await.unwrap().iter().any(|s| s.id == spec.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_ecs_stops_on_its_own_report_why_and_fail_in_the_orchestrator() {
    let (_moto, url) = start_moto().await;
    let net = network(&url).await;
    let ecs = ecs_client(&url).await;
    ecs.create_cluster().cluster_name("ws").send().await.unwrap();
    let p = std::sync::Arc::new(EcsProvider::new(config(&url, "t2", &net)).await.unwrap());
    let orch = std::sync::Arc::new(warren_orchestrator::Orchestrator::new(
        p.clone(),
        std::sync::Arc::new(warren_store::MemoryStore::new()),
        std::sync::Arc::new(warren_core::SystemClock),
        Default::default(),
    ));
    let rec = orch
        .create(warren_orchestrator::CreateRequest::new(warren_core::TenantId::new("t").unwrap(), "base"))
        .await
        .unwrap();
    // ECS reclaims the Spot capacity under it.
    let arn = ecs.list_tasks().cluster("ws").started_by("warren-t2").send().await.unwrap().task_arns()[0].clone();
    ecs.stop_task().cluster("ws").task(arn).reason("Spot Instance interruption").send().await.unwrap();
    let seen = p.inspect(&rec.id).await.unwrap();
    assert_eq!(seen.state, RunState::Exited);
    assert!(seen.labels[warren_provider::ENDED_LABEL].contains("Spot"), "{seen:?}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(orch.run_job(warren_orchestrator::jobs::Job::Watch, orch.now_ms()).await.unwrap().acted, 1);
    let failed = orch.get(None, &rec.id).await.unwrap();
    assert_eq!(failed.state, warren_core::State::Failed);
    assert!(failed.error.as_deref().unwrap_or("").contains("Spot Instance interruption"), "{failed:?}");
}

/// Bridge networking on EC2: the task definition maps the agent's port to a
/// dynamic host port, RunTask has no awsvpc configuration, the task lands on
/// a registered container instance, and the endpoint's host is that
/// instance's private IP from EC2 (a signed DescribeInstances). moto reports
/// no port bindings, so the port stays 0 here (a unit test covers bindings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mode_on_ec2_reaches_the_agent_at_the_hosts_address() {
    let (_moto, url) = start_moto().await;
    let net = network(&url).await;
    let ecs = ecs_client(&url).await;
    ecs.create_cluster().cluster_name("ws").send().await.unwrap();
    // One EC2 instance registered as a container instance of the cluster.
    let ec2 = |form: Vec<(&'static str, String)>| ec2(&url, form);
    let ami = tag(&ec2(vec![("Action", "DescribeImages".into())]).await, "imageId");
    let run = ec2(vec![
        ("Action", "RunInstances".into()),
        ("ImageId", ami),
        ("MinCount", "1".into()),
        ("MaxCount", "1".into()),
        ("InstanceType", "c6i.xlarge".into()),
        ("SubnetId", net.0.clone()),
    ])
    .await;
    let (instance, host_ip) = (tag(&run, "instanceId"), tag(&run, "privateIpAddress"));
    let resource = |name: &str, v: i32| {
        aws_sdk_ecs::types::Resource::builder().name(name).r#type("INTEGER").integer_value(v).build()
    };
    ecs.register_container_instance()
        .cluster("ws")
        .instance_identity_document(serde_json::json!({"instanceId": instance, "region": "us-east-1"}).to_string())
        .total_resources(resource("CPU", 4096))
        .total_resources(resource("MEMORY", 8192))
        .send()
        .await
        .unwrap();

    // Fargate cannot do bridge: refused up front.
    let mut bad = config(&url, "br", &net);
    bad.network = TaskNetwork::Bridge;
    assert!(matches!(EcsProvider::new(bad).await, Err(ProviderError::InvalidSpec(m)) if m.contains("bridge")));

    let mut cfg = config(&url, "br", &net);
    cfg.network = TaskNetwork::Bridge;
    cfg.launch = Launch::LaunchType("EC2".into());
    cfg.subnets.clear();
    cfg.security_groups.clear();
    let p = EcsProvider::new(cfg).await.unwrap();
    let spec = warren_provider::conformance::spec("base");
    let info = p.create(&spec).await.unwrap();
    assert_eq!(info.endpoint.to_string(), format!("tcp://{host_ip}:0"), "the host's address, from EC2");

    let arns = ecs.list_tasks().cluster("ws").started_by("warren-br").send().await.unwrap().task_arns().to_vec();
    let t = ecs.describe_tasks().cluster("ws").set_tasks(Some(arns)).send().await.unwrap().tasks()[0].clone();
    assert!(t.container_instance_arn().is_some(), "placed on the container instance");
    assert!(t.attachments().is_empty(), "no ENI in bridge mode");
    let td = ecs.describe_task_definition().task_definition(t.task_definition_arn().unwrap()).send().await.unwrap();
    let td = td.task_definition().unwrap();
    assert_eq!(td.network_mode().map(|m| m.as_str()), Some("bridge"));
    let compat: Vec<&str> = td.requires_compatibilities().iter().map(|c| c.as_str()).collect();
    assert_eq!(compat, ["EC2"]);
    assert!(td.family().unwrap().ends_with("-bridge"), "its own family: {:?}", td.family());
    let pm = &td.container_definitions()[1].port_mappings()[0];
    assert_eq!((pm.container_port(), pm.host_port()), (Some(49983), Some(0)), "a dynamic host port");
    // A fresh provider (after a restart) finds the same address.
    let mut again = config(&url, "br", &net);
    again.network = TaskNetwork::Bridge;
    again.launch = Launch::LaunchType("EC2".into());
    let again = EcsProvider::new(again).await.unwrap();
    assert_eq!(again.inspect(&spec.id).await.unwrap().endpoint, info.endpoint);
    p.destroy(&spec.id).await.unwrap();
    assert!(p.list().await.unwrap().is_empty());
}
