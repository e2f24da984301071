//! The ECS backend (the seed's phase-1 platform): templates become task
//! definitions, workspaces become tasks, the agent is reached over TCP at the
//! task's address.
//!
//! - **The agent** comes from an init container: a small image holding the
//!   static agent (`agent_image`) copies it into a task volume and exits; the
//!   workspace container `dependsOn` its success and runs `/.warren/agent`
//!   as entrypoint. Chosen over baking the agent into each image because any
//!   image then works unchanged, on EC2 and on Fargate alike (Fargate has no
//!   host paths to bind-mount).
//! - **Task definitions**: one family per (template, size), registered once
//!   per revision and remembered.
//! - **Launch**: RunTask with a capacity-provider strategy (EC2 Auto Scaling
//!   on-demand + Spot for interactive work, FARGATE/FARGATE_SPOT for batch)
//!   or a launch type. Networking: `awsvpc` (one ENI per task, the agent at
//!   the task's private IP; the default) or `bridge` on EC2 (density beyond
//!   the per-instance ENI limit: the agent's port is mapped to a dynamic host
//!   port, reached at the container instance's private IP, which one signed
//!   EC2 DescribeInstances call gives and a cache keeps). `startedBy` and
//!   tags mark warren's tasks.
//! - **Lifecycle**: StopTask on destroy; ListTasks(startedBy)+DescribeTasks
//!   for list/reconcile; a task ECS stopped on its own (Spot interruption,
//!   host failure, OOM) is reported exited with ECS's reason.
//! - **Errors**: throttling is retried by the SDK with backoff; RunTask
//!   placement failures (`RESOURCE:*`, no capacity) are capacity errors with
//!   AWS's reason; bad parameters are invalid specs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, Compatibility, ContainerCondition,
    ContainerDefinition, ContainerDependency, ContainerOverride, DesiredStatus, KeyValuePair, LaunchType,
    LogConfiguration, LogDriver, MountPoint, NetworkConfiguration, NetworkMode as EcsNetworkMode, PortMapping, Tag,
    TaskOverride, Volume,
};
use warren_core::{Size, WorkspaceId};
use warren_proto::endpoint::Endpoint;
use warren_provider::{
    Capabilities, CreateSpec, IsolationTier, NetworkMode, ProviderError, Result, RunState, SandboxInfo,
    SandboxProvider, Stats, TemplateInfo,
};

const AGENT_PORT: u16 = 49983;
const T_ID: &str = "warren.id";
const T_OWNER: &str = "warren.owner";
const T_TEMPLATE: &str = "warren.template";
const T_SIZE: &str = "warren.size";
const STOP_REASON: &str = "stopped by warren";

/// How tasks are placed.
/// How tasks are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskNetwork {
    /// One ENI per task (strongest isolation; Fargate and EC2).
    Awsvpc,
    /// Docker's bridge on the EC2 host, the agent on a dynamic host port.
    Bridge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// `EC2` or `FARGATE`.
    LaunchType(String),
    /// Capacity providers with weights and bases, e.g. an Auto Scaling
    /// group provider (on-demand base) plus a Spot one, or FARGATE_SPOT.
    Strategy(Vec<(String, i32, i32)>),
}

#[derive(Debug, Clone)]
pub struct EcsConfig {
    pub cluster: String,
    pub region: String,
    /// For tests against moto (or a VPC endpoint).
    pub endpoint_url: Option<String>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub launch: Launch,
    /// Template name → image reference.
    pub images: BTreeMap<String, String>,
    /// The image holding the static agent at /warren-agent.
    pub agent_image: String,
    /// Owner tag value (separates installations sharing a cluster).
    pub owner: String,
    /// Wait for the agent's health check after RUNNING (off only where no
    /// container really runs, as under moto).
    pub wait_for_agent: bool,
    pub start_timeout: Duration,
    /// The task execution role (pulls from private registries such as ECR,
    /// writes logs); warren needs `iam:PassRole` on it.
    pub execution_role_arn: Option<String>,
    /// A CloudWatch Logs group for the workspaces' output (awslogs driver,
    /// stream prefix `warren`); needs the execution role.
    pub log_group: Option<String>,
    pub network: TaskNetwork,
}

pub struct EcsProvider {
    ecs: aws_sdk_ecs::Client,
    cfg: EcsConfig,
    /// (template, size) → task definition ARN.
    task_defs: tokio::sync::Mutex<HashMap<(String, Size), String>>,
    /// workspace → task ARN.
    tasks: Mutex<HashMap<WorkspaceId, String>>,
    /// Bridge mode: container instance ARN → its private IP.
    hosts: Mutex<HashMap<String, String>>,
    shared: aws_config::SdkConfig,
    http: reqwest::Client,
}

fn classify<E>(what: &str, e: aws_sdk_ecs::error::SdkError<E>) -> ProviderError
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata + std::fmt::Debug,
{
    use aws_sdk_ecs::error::SdkError;
    match &e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown").to_string();
            let msg = s.err().message().unwrap_or_default();
            let m = format!("{what}: {code}: {msg}");
            match code.as_str() {
                "ThrottlingException" | "ServerException" | "ServiceUnavailableException" => {
                    ProviderError::Unavailable(m)
                }
                "AccessDeniedException" | "UnrecognizedClientException" => {
                    ProviderError::Unavailable(format!("{m} (check the IAM permissions in docs/ecs.md)"))
                }
                c if c.contains("NotFound") || c.contains("InvalidParameter") || c == "ClientException" => {
                    ProviderError::InvalidSpec(m)
                }
                _ => ProviderError::Internal(m),
            }
        }
        other => ProviderError::Unavailable(format!("{what}: {other}")),
    }
}

/// The host port ECS bound to the agent's port in bridge mode.
fn bridge_port(t: &aws_sdk_ecs::types::Task) -> Option<i32> {
    t.containers()
        .iter()
        .filter(|c| c.name() == Some("workspace"))
        .flat_map(|c| c.network_bindings())
        .find(|b| b.container_port() == Some(AGENT_PORT as i32))
        .and_then(|b| b.host_port())
        .filter(|p| *p > 0)
}

/// Why a task that stopped before running failed the create: an image
/// that cannot be pulled or run is the caller's to fix (invalid spec), the
/// rest is the platform's (unavailable), with ECS's reason either way.
fn stopped_before_running(id: &WorkspaceId, why: &str) -> ProviderError {
    let m = format!("task of {id} stopped before running: {why}");
    const IMAGE: [&str; 3] = ["CannotPullContainerError", "CannotCreateContainerError", "InvalidImage"];
    if IMAGE.iter().any(|k| why.contains(k)) {
        ProviderError::InvalidSpec(format!("{m} (check the template's image)"))
    } else {
        ProviderError::Unavailable(m)
    }
}

/// The text of the first `<tag>` in `xml`.
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let from = xml.find(&open)? + open.len();
    Some(&xml[from..from + xml[from..].find('<')?])
}

/// (instance id, private IP) pairs from a DescribeInstances reply: each
/// `instanceId` with the first `privateIpAddress` after it (the primary one;
/// network interfaces repeat it further down).
fn instance_ips(xml: &str) -> Vec<(String, String)> {
    let parts: Vec<&str> = xml.split("<instanceId>").skip(1).collect();
    parts
        .iter()
        .filter_map(|part| {
            let id = &part[..part.find('<')?];
            let ip = xml_tag(part, "privateIpAddress")?;
            id.starts_with("i-").then(|| (id.to_string(), ip.to_string()))
        })
        .collect()
}

impl EcsProvider {
    pub async fn new(cfg: EcsConfig) -> Result<Self> {
        if cfg.network == TaskNetwork::Awsvpc && (cfg.subnets.is_empty() || cfg.security_groups.is_empty()) {
            return Err(ProviderError::InvalidSpec("ecs: subnets and security_groups are required (awsvpc)".into()));
        }
        if cfg.network == TaskNetwork::Bridge
            && matches!(&cfg.launch, Launch::LaunchType(t) if t.starts_with("FARGATE"))
        {
            return Err(ProviderError::InvalidSpec("ecs: bridge networking needs EC2 (Fargate is awsvpc only)".into()));
        }
        if cfg.log_group.is_some() && cfg.execution_role_arn.is_none() {
            return Err(ProviderError::InvalidSpec(
                "ecs: log_group needs execution_role_arn (the role that writes the logs)".into(),
            ));
        }
        let mut loader = aws_config::from_env().region(aws_config::Region::new(cfg.region.clone()));
        if let Some(ep) = &cfg.endpoint_url {
            loader = loader.endpoint_url(ep);
        }
        let shared = loader.load().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ProviderError::Internal(format!("http client: {e}")))?;
        Ok(EcsProvider {
            ecs: aws_sdk_ecs::Client::new(&shared),
            cfg,
            task_defs: Default::default(),
            tasks: Default::default(),
            hosts: Default::default(),
            shared,
            http,
        })
    }

    fn started_by(&self) -> String {
        // ECS allows 36 characters.
        format!("warren-{}", self.cfg.owner).chars().take(36).collect()
    }

    fn image(&self, template: &str) -> Result<&String> {
        self.cfg.images.get(template).ok_or_else(|| {
            ProviderError::InvalidSpec(format!(
                "template {template}: no image configured for it (have: {})",
                self.cfg.images.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The task definition for a template and size, registered on first use.
    async fn task_definition(&self, template: &str, size: Size) -> Result<String> {
        let mut defs = self.task_defs.lock().await;
        if let Some(arn) = defs.get(&(template.to_string(), size)) {
            return Ok(arn.clone());
        }
        let image = self.image(template)?.clone();
        let bridge = self.cfg.network == TaskNetwork::Bridge;
        let family: String = format!(
            "warren-{}-{}m{}c{}",
            template.replace(['/', ':', '.'], "-"),
            size.memory_mib,
            size.millicpus,
            if bridge { "-bridge" } else { "" }
        )
        .chars()
        .take(255)
        .collect();
        // Fargate sizes: cpu units (1024 = 1 vCPU) and MiB.
        let cpu = (size.millicpus as u64 * 1024).div_ceil(1000).max(256);
        let logs = match &self.cfg.log_group {
            Some(group) => Some(
                LogConfiguration::builder()
                    .log_driver(LogDriver::Awslogs)
                    .options("awslogs-group", group)
                    .options("awslogs-region", &self.cfg.region)
                    .options("awslogs-stream-prefix", "warren")
                    .build()
                    .map_err(|e| ProviderError::Internal(e.to_string()))?,
            ),
            None => None,
        };
        let agent = ContainerDefinition::builder()
            .set_log_configuration(logs.clone())
            .name("warren-agent")
            .image(&self.cfg.agent_image)
            .essential(false)
            .memory_reservation(16)
            .command("cp")
            .command("/warren-agent")
            .command("/.warren/agent")
            .mount_points(MountPoint::builder().source_volume("warren").container_path("/.warren").build())
            .build();
        let workspace = ContainerDefinition::builder()
            .set_log_configuration(logs)
            .name("workspace")
            .image(image)
            .essential(true)
            .memory_reservation(size.memory_mib.min(i32::MAX as u32) as i32)
            .user("0")
            .entry_point("/.warren/agent")
            .command("--listen")
            .command(format!("tcp://0.0.0.0:{AGENT_PORT}"))
            // Bridge: a dynamic host port (0), found in the task's bindings.
            .port_mappings(
                PortMapping::builder().container_port(AGENT_PORT as i32).set_host_port(bridge.then_some(0)).build(),
            )
            .mount_points(
                MountPoint::builder().source_volume("warren").container_path("/.warren").read_only(true).build(),
            )
            .depends_on(
                ContainerDependency::builder()
                    .container_name("warren-agent")
                    .condition(ContainerCondition::Success)
                    .build()
                    .map_err(|e| ProviderError::Internal(e.to_string()))?,
            )
            .build();
        let out = self
            .ecs
            .register_task_definition()
            .family(family)
            .set_execution_role_arn(self.cfg.execution_role_arn.clone())
            .network_mode(if bridge { EcsNetworkMode::Bridge } else { EcsNetworkMode::Awsvpc })
            .set_requires_compatibilities(Some(if bridge {
                vec![Compatibility::Ec2]
            } else {
                vec![Compatibility::Ec2, Compatibility::Fargate]
            }))
            .cpu(cpu.to_string())
            .memory(size.memory_mib.to_string())
            .volumes(Volume::builder().name("warren").build())
            .container_definitions(agent)
            .container_definitions(workspace)
            .tags(Tag::builder().key(T_OWNER).value(&self.cfg.owner).build())
            .send()
            .await
            .map_err(|e| classify("register task definition", e))?;
        let arn = out
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .ok_or_else(|| ProviderError::Internal("task definition without an ARN".into()))?
            .to_string();
        defs.insert((template.to_string(), size), arn.clone());
        Ok(arn)
    }

    fn info_of(&self, t: &aws_sdk_ecs::types::Task) -> Option<SandboxInfo> {
        let tags: BTreeMap<&str, &str> = t.tags().iter().filter_map(|x| Some((x.key()?, x.value()?))).collect();
        if tags.get(T_OWNER).copied() != Some(self.cfg.owner.as_str()) {
            return None;
        }
        let id: WorkspaceId = tags.get(T_ID)?.parse().ok()?;
        let endpoint: Endpoint = match self.cfg.network {
            TaskNetwork::Awsvpc => {
                let ip = t
                    .attachments()
                    .iter()
                    .flat_map(|a| a.details())
                    .find(|d| d.name() == Some("privateIPv4Address"))
                    .and_then(|d| d.value())
                    .unwrap_or("0.0.0.0");
                format!("tcp://{ip}:{AGENT_PORT}")
            }
            TaskNetwork::Bridge => {
                let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                let ip = t.container_instance_arn().and_then(|a| hosts.get(a)).map_or("0.0.0.0", String::as_str);
                // Port 0 until ECS reports the binding (the task is not running yet).
                format!("tcp://{ip}:{}", bridge_port(t).unwrap_or(0))
            }
        }
        .parse()
        .ok()?;
        let status = t.last_status().unwrap_or_default();
        let stopped = matches!(status, "STOPPED" | "STOPPING" | "DEPROVISIONING" | "DEACTIVATING")
            || t.desired_status() == Some("STOPPED");
        if stopped && t.stopped_reason() == Some(STOP_REASON) {
            // Destroyed by warren: gone, as far as the trait is concerned
            // (ECS keeps showing stopped tasks for a while).
            return None;
        }
        let mut labels = BTreeMap::new();
        if stopped {
            // Why ECS ended it (Spot interruption, host failure, OOM…).
            let reason = [t.stop_code().map(|c| c.as_str().to_string()), t.stopped_reason().map(str::to_string)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            if !reason.is_empty() {
                labels.insert(warren_provider::ENDED_LABEL.to_string(), reason);
            }
        }
        Some(SandboxInfo {
            id,
            template: tags.get(T_TEMPLATE).copied().unwrap_or_default().to_string(),
            size: tags.get(T_SIZE).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default(),
            state: if stopped { RunState::Exited } else { RunState::Running },
            endpoint,
            created_at_ms: t.created_at().map(|c| c.to_millis().unwrap_or(0).max(0) as u64).unwrap_or(0),
            labels,
            access_token: None,
        })
    }

    async fn describe(&self, arns: Vec<String>) -> Result<Vec<aws_sdk_ecs::types::Task>> {
        let mut out = Vec::new();
        for chunk in arns.chunks(100) {
            let r = self
                .ecs
                .describe_tasks()
                .cluster(&self.cfg.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .include(aws_sdk_ecs::types::TaskField::Tags)
                .send()
                .await
                .map_err(|e| classify("describe tasks", e))?;
            out.extend(r.tasks().iter().cloned());
        }
        if self.cfg.network == TaskNetwork::Bridge {
            self.resolve_hosts(&out).await?;
        }
        Ok(out)
    }

    /// Bridge mode: learns the private IP of every container instance the
    /// tasks run on (ECS → EC2 instance id → EC2's private address).
    async fn resolve_hosts(&self, tasks: &[aws_sdk_ecs::types::Task]) -> Result<()> {
        let missing: Vec<String> = {
            let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            let mut m: Vec<String> = tasks
                .iter()
                .filter_map(|t| t.container_instance_arn())
                .filter(|a| !hosts.contains_key(*a))
                .map(str::to_string)
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return Ok(());
        }
        let r = self
            .ecs
            .describe_container_instances()
            .cluster(&self.cfg.cluster)
            .set_container_instances(Some(missing))
            .send()
            .await
            .map_err(|e| classify("describe container instances", e))?;
        let by_instance: HashMap<String, String> = r
            .container_instances()
            .iter()
            .filter_map(|c| Some((c.ec2_instance_id()?.to_string(), c.container_instance_arn()?.to_string())))
            .collect();
        if by_instance.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = by_instance.keys().map(String::as_str).collect();
        let ips = self.ec2_private_ips(&ids).await?;
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        for (instance, ip) in ips {
            if let Some(arn) = by_instance.get(&instance) {
                hosts.insert(arn.clone(), ip);
            }
        }
        Ok(())
    }

    /// EC2 DescribeInstances (query API, SigV4-signed): instance id → private IP.
    async fn ec2_private_ips(&self, ids: &[&str]) -> Result<Vec<(String, String)>> {
        use aws_credential_types::provider::ProvideCredentials as _;
        let url = match &self.cfg.endpoint_url {
            Some(e) => format!("{}/", e.trim_end_matches('/')),
            None => format!("https://ec2.{}.amazonaws.com/", self.cfg.region),
        };
        let mut body = String::from("Action=DescribeInstances&Version=2016-11-15");
        for (i, id) in ids.iter().enumerate() {
            body.push_str(&format!("&InstanceId.{}={id}", i + 1));
        }
        let creds = self
            .shared
            .credentials_provider()
            .ok_or_else(|| ProviderError::Unavailable("ec2: no AWS credentials configured".into()))?
            .provide_credentials()
            .await
            .map_err(|e| ProviderError::Unavailable(format!("ec2: credentials: {e}")))?;
        let identity: aws_smithy_runtime_api::client::identity::Identity = creds.into();
        let signing = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.cfg.region)
            .name("ec2")
            .time(std::time::SystemTime::now())
            .settings(aws_sigv4::http_request::SigningSettings::default())
            .build()
            .map_err(|e| ProviderError::Internal(format!("ec2: signing: {e}")))?
            .into();
        const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";
        let signable = aws_sigv4::http_request::SignableRequest::new(
            "POST",
            &url,
            [("content-type", FORM)].into_iter(),
            aws_sigv4::http_request::SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| ProviderError::Internal(format!("ec2: signing: {e}")))?;
        let (instructions, _) = aws_sigv4::http_request::sign(signable, &signing)
            .map_err(|e| ProviderError::Internal(format!("ec2: signing: {e}")))?
            .into_parts();
        let mut req = http::Request::builder()
            .method("POST")
            .uri(&url)
            .header("content-type", FORM)
            .body(body.clone())
            .map_err(|e| ProviderError::Internal(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut req);
        let mut call = self.http.post(&url).body(body);
        for (k, v) in req.headers() {
            call = call.header(k.as_str(), v.as_bytes());
        }
        let resp = call.send().await.map_err(|e| ProviderError::Unavailable(format!("ec2: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ProviderError::Unavailable(format!("ec2: {e}")))?;
        if !status.is_success() {
            let code = xml_tag(&text, "Code").unwrap_or("unknown");
            let m = format!("ec2 DescribeInstances: {code}: {}", xml_tag(&text, "Message").unwrap_or_default());
            return Err(if code.contains("UnauthorizedOperation") || code.contains("AuthFailure") {
                ProviderError::Unavailable(format!("{m} (check the IAM permissions in docs/ecs.md)"))
            } else {
                ProviderError::Unavailable(m)
            });
        }
        Ok(instance_ips(&text))
    }

    /// Task ARNs started by this installation, running and recently stopped.
    async fn task_arns(&self) -> Result<Vec<String>> {
        let mut arns = Vec::new();
        for status in [DesiredStatus::Running, DesiredStatus::Stopped] {
            let mut next = None;
            loop {
                let r = self
                    .ecs
                    .list_tasks()
                    .cluster(&self.cfg.cluster)
                    .started_by(self.started_by())
                    .desired_status(status.clone())
                    .set_next_token(next)
                    .send()
                    .await
                    .map_err(|e| classify("list tasks", e))?;
                arns.extend(r.task_arns().iter().cloned());
                next = r.next_token().map(str::to_string);
                if next.is_none() {
                    break;
                }
            }
        }
        Ok(arns)
    }

    async fn task_of(&self, id: &WorkspaceId) -> Result<(String, aws_sdk_ecs::types::Task)> {
        let known = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
        let arns = match known {
            Some(a) => vec![a],
            None => self.task_arns().await?,
        };
        for t in self.describe(arns).await? {
            if self.info_of(&t).is_some_and(|i| i.id == *id) {
                let arn = t.task_arn().unwrap_or_default().to_string();
                self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), arn.clone());
                return Ok((arn, t));
            }
        }
        Err(ProviderError::NotFound(id.to_string()))
    }
}

#[async_trait]
impl SandboxProvider for EcsProvider {
    fn name(&self) -> &str {
        "ecs"
    }

    fn capabilities(&self) -> Capabilities {
        let fargate = match &self.cfg.launch {
            Launch::LaunchType(t) => t == "FARGATE",
            Launch::Strategy(s) => s.iter().all(|(p, _, _)| p.starts_with("FARGATE")),
        };
        Capabilities {
            // Fargate runs each task in its own microVM.
            isolation: if fargate { IsolationTier::Microvm } else { IsolationTier::Namespaces },
            pause: false,
            network_modes: vec![NetworkMode::Bridge],
            isolated_filesystem: true,
            survives_server_restart: true,
            reachable_from_any_host: true,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        Ok(self
            .cfg
            .images
            .iter()
            .map(|(name, image)| TemplateInfo {
                name: name.clone(),
                description: format!("ECS task from image {image}"),
                revision: image.clone(),
                isolation: None,
            })
            .collect())
    }

    async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo> {
        spec.size.validate().map_err(|e| ProviderError::InvalidSpec(e.to_string()))?;
        match self.task_of(&spec.id).await {
            Ok((_, t)) if self.info_of(&t).is_some_and(|i| i.state == RunState::Running) => {
                return Err(ProviderError::AlreadyExists(spec.id.to_string()))
            }
            Ok(_) | Err(ProviderError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let task_def = self.task_definition(&spec.template, spec.size).await?;
        let mut env: Vec<KeyValuePair> =
            spec.env.iter().map(|(k, v)| KeyValuePair::builder().name(k).value(v).build()).collect();
        env.push(KeyValuePair::builder().name("WARREN_AGENT_INIT_TOKEN").value(&spec.init_token).build());
        if let Some(t) = &spec.access_token {
            env.push(KeyValuePair::builder().name("WARREN_AGENT_ACCESS_TOKEN").value(t).build());
        }
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(self.cfg.subnets.clone()))
            .set_security_groups(Some(self.cfg.security_groups.clone()))
            .assign_public_ip(AssignPublicIp::Disabled)
            .build()
            .map_err(|e| ProviderError::InvalidSpec(e.to_string()))?;
        let size_tag = serde_json::to_string(&spec.size).unwrap_or_default();
        let mut req = self
            .ecs
            .run_task()
            .cluster(&self.cfg.cluster)
            .task_definition(task_def)
            .count(1)
            .started_by(self.started_by())
            .set_network_configuration(
                (self.cfg.network == TaskNetwork::Awsvpc)
                    .then(|| NetworkConfiguration::builder().awsvpc_configuration(vpc).build()),
            )
            .overrides(
                TaskOverride::builder()
                    .container_overrides(
                        ContainerOverride::builder().name("workspace").set_environment(Some(env)).build(),
                    )
                    .build(),
            )
            .tags(Tag::builder().key(T_ID).value(spec.id.as_str()).build())
            .tags(Tag::builder().key(T_OWNER).value(&self.cfg.owner).build())
            .tags(Tag::builder().key(T_TEMPLATE).value(&spec.template).build())
            .tags(Tag::builder().key(T_SIZE).value(size_tag).build());
        req = match &self.cfg.launch {
            Launch::LaunchType(t) => req.launch_type(LaunchType::from(t.as_str())),
            Launch::Strategy(items) => {
                for (provider, weight, base) in items {
                    let item = CapacityProviderStrategyItem::builder()
                        .capacity_provider(provider)
                        .weight(*weight)
                        .base(*base)
                        .build()
                        .map_err(|e| ProviderError::InvalidSpec(e.to_string()))?;
                    req = req.capacity_provider_strategy(item);
                }
                req
            }
        };
        let out = req.send().await.map_err(|e| classify("run task", e))?;
        if let Some(f) = out.failures().first() {
            let reason = format!(
                "{}{}",
                f.reason().unwrap_or("unknown"),
                f.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            );
            // Placement failures (RESOURCE:CPU, no container instance…) are capacity.
            return Err(ProviderError::Capacity(format!("ECS could not place the task: {reason}")));
        }
        let task = out.tasks().first().ok_or_else(|| ProviderError::Internal("RunTask returned no task".into()))?;
        let arn = task.task_arn().unwrap_or_default().to_string();
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.id.clone(), arn.clone());
        // Poll until RUNNING (or stopped, with ECS's reason).
        let deadline = tokio::time::Instant::now() + self.cfg.start_timeout;
        let mut pause = Duration::from_millis(200);
        let info = loop {
            let t = self.describe(vec![arn.clone()]).await?.into_iter().next();
            let info = t.as_ref().and_then(|t| self.info_of(t));
            match (t.as_ref().and_then(|t| t.last_status()), info) {
                (Some("RUNNING"), Some(i)) => break i,
                (_, Some(i)) if i.state == RunState::Exited => {
                    let why = i.labels.get(warren_provider::ENDED_LABEL).cloned().unwrap_or_else(|| "stopped".into());
                    return Err(stopped_before_running(&spec.id, &why));
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.destroy(&spec.id).await;
                return Err(ProviderError::Unavailable(format!(
                    "task of {} not running within {:?}",
                    spec.id, self.cfg.start_timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        };
        if self.cfg.wait_for_agent {
            if let Err(e) = warren_provider::fake::wait_healthy(&info.endpoint, self.cfg.start_timeout).await {
                let _ = self.destroy(&spec.id).await;
                return Err(e);
            }
        }
        Ok(info)
    }

    async fn inspect(&self, id: &WorkspaceId) -> Result<SandboxInfo> {
        let (_, t) = self.task_of(id).await?;
        self.info_of(&t).ok_or_else(|| ProviderError::NotFound(id.to_string()))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let arns = self.task_arns().await?;
        let mut seen: HashMap<WorkspaceId, SandboxInfo> = HashMap::new();
        for t in self.describe(arns).await? {
            if let Some(i) = self.info_of(&t) {
                // A running task wins over an old stopped one of the same id.
                match seen.get(&i.id) {
                    Some(prev) if prev.state == RunState::Running => {}
                    _ => {
                        seen.insert(i.id.clone(), i);
                    }
                }
            }
        }
        Ok(seen.into_values().collect())
    }

    async fn pause(&self, _id: &WorkspaceId) -> Result<()> {
        Err(ProviderError::Unsupported("ECS tasks cannot be paused".into()))
    }

    async fn resume(&self, _id: &WorkspaceId) -> Result<()> {
        Err(ProviderError::Unsupported("ECS tasks cannot be paused".into()))
    }

    async fn stop(&self, id: &WorkspaceId) -> Result<()> {
        let (arn, _) = self.task_of(id).await?;
        self.ecs
            .stop_task()
            .cluster(&self.cfg.cluster)
            .task(arn)
            .reason(STOP_REASON)
            .send()
            .await
            .map_err(|e| classify("stop task", e))?;
        Ok(())
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<()> {
        match self.stop(id).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => {
                self.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn stats(&self, id: &WorkspaceId) -> Result<Stats> {
        Err(ProviderError::Unsupported(format!("stats of {id}: ECS exposes them only inside the task")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{Container, NetworkBinding, Task};

    #[test]
    fn bridge_port_is_the_agents_host_binding() {
        let binding = |c: i32, h: i32| NetworkBinding::builder().container_port(c).host_port(h).build();
        let t = Task::builder()
            .containers(Container::builder().name("warren-agent").build())
            .containers(
                Container::builder()
                    .name("workspace")
                    .network_bindings(binding(8080, 32000))
                    .network_bindings(binding(AGENT_PORT as i32, 32768))
                    .build(),
            )
            .build();
        assert_eq!(bridge_port(&t), Some(32768));
        let pending = Task::builder().containers(Container::builder().name("workspace").build()).build();
        assert_eq!(bridge_port(&pending), None, "no binding before the task runs");
    }

    #[test]
    fn a_task_that_cannot_pull_its_image_is_an_invalid_spec() {
        let id = WorkspaceId::generate();
        let e = stopped_before_running(
            &id,
            "TaskFailedToStart: CannotPullContainerError: pull image manifest has been retried 5 time(s)",
        );
        assert!(matches!(&e, ProviderError::InvalidSpec(m) if m.contains("CannotPullContainerError")), "{e:?}");
        let e = stopped_before_running(&id, "SpotInterruption: Your Spot Task was interrupted.");
        assert!(matches!(&e, ProviderError::Unavailable(m) if m.contains("Spot")), "{e:?}");
    }

    #[test]
    fn private_ips_from_describe_instances() {
        let xml = "<DescribeInstancesResponse><reservationSet><item><instancesSet>\
            <item><instanceId>i-0a</instanceId><productCodes><item><x/></item></productCodes>\
            <privateIpAddress>10.0.1.7</privateIpAddress><networkInterfaceSet><item>\
            <privateIpAddress>10.0.1.7</privateIpAddress></item></networkInterfaceSet></item>\
            <item><instanceId>i-0b</instanceId><privateIpAddress>10.0.2.9</privateIpAddress></item>\
            </instancesSet></item></reservationSet></DescribeInstancesResponse>";
        assert_eq!(
            instance_ips(xml),
            vec![("i-0a".to_string(), "10.0.1.7".to_string()), ("i-0b".to_string(), "10.0.2.9".to_string())]
        );
        assert!(instance_ips("<Response><Errors/></Response>").is_empty());
    }
}
