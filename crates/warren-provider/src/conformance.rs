//! The provider conformance suite: one sequence of checks every backend
//! must pass. Backends call [`run`] from their own integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use warren_core::{random_token, Size, WorkspaceId};
use warren_proto::client::AgentClient;

use crate::{CreateSpec, NetworkMode, ProviderError, RunState, SandboxProvider};

/// A spec for the suite's workspaces.
pub fn spec(template: &str) -> CreateSpec {
    CreateSpec {
        tenant: None,
        id: WorkspaceId::generate(),
        template: template.to_string(),
        size: Size { millicpus: 1000, memory_mib: 256, disk_mib: 256, pids: 256 },
        network: NetworkMode::None,
        env: [("CONFORMANCE".to_string(), "yes".to_string())].into(),
        labels: [("suite".to_string(), "conformance".to_string())].into(),
        init_token: random_token(16),
        access_token: Some(random_token(16)),
    }
}

fn client(info: &crate::SandboxInfo, spec: &CreateSpec) -> AgentClient {
    let token = info.access_token.clone().or_else(|| spec.access_token.clone());
    AgentClient::new(info.endpoint.clone()).with_access_token(token)
}

/// Runs the whole suite against `provider`. `reopen` builds a second
/// instance of the same backend over the same state, as after a restart.
pub async fn run<P: SandboxProvider, F: Fn() -> P>(provider: &P, reopen: F, template: &str) {
    let caps = provider.capabilities();
    assert!(!caps.network_modes.is_empty(), "a backend supports at least one network mode");
    let templates = provider.templates().await.expect("templates");
    assert!(templates.iter().any(|t| t.name == template), "template {template} is listed");

    // Create: returns with a healthy agent that runs commands.
    let a_spec = spec(template);
    let a = provider.create(&a_spec).await.expect("create a");
    assert_eq!(a.id, a_spec.id);
    assert_eq!(a.state, RunState::Running);
    assert_eq!(a.template, template);
    assert_eq!(a.labels.get("suite").map(String::as_str), Some("conformance"));
    let ca = client(&a, &a_spec);
    ca.health().await.expect("agent healthy after create");
    let out = ca.sh("echo hello $CONFORMANCE").await.expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello yes\n");
    assert_eq!(out.exit_code, 0);
    // The access token is enforced.
    let anon = AgentClient::new(a.endpoint.clone());
    assert!(anon.list().await.is_err(), "agent must demand its access token");

    // A duplicate id is refused and changes nothing.
    match provider.create(&a_spec).await {
        Err(ProviderError::AlreadyExists(_)) => {}
        other => panic!("duplicate create must fail with AlreadyExists, got {other:?}"),
    }
    ca.health().await.expect("still healthy after a refused duplicate");

    // Bad specs are classified.
    let mut bad = spec("no-such-template-xyz");
    match provider.create(&bad).await {
        Err(ProviderError::InvalidSpec(msg)) => assert!(msg.contains("no-such-template-xyz"), "{msg}"),
        other => panic!("unknown template must be InvalidSpec, got {other:?}"),
    }
    bad.template = template.to_string();
    bad.size.memory_mib = 1;
    assert!(matches!(provider.create(&bad).await, Err(ProviderError::InvalidSpec(_))));
    let ghost = WorkspaceId::generate();
    assert!(matches!(provider.inspect(&ghost).await, Err(ProviderError::NotFound(_))));
    assert!(matches!(provider.stats(&ghost).await, Err(ProviderError::NotFound(_))));

    // Inspect, list, stats.
    let seen = provider.inspect(&a.id).await.expect("inspect");
    assert_eq!(seen.endpoint, a.endpoint);
    assert!(provider.list().await.expect("list").iter().any(|s| s.id == a.id));
    let st = provider.stats(&a.id).await.expect("stats");
    assert!(st.memory_bytes > 0, "memory usage reported: {st:?}");
    assert!(st.pids >= 1, "pids reported: {st:?}");

    // A second workspace, and files that stay where they were written.
    let b_spec = spec(template);
    let b = provider.create(&b_spec).await.expect("create b");
    let cb = client(&b, &b_spec);
    let marker = format!("conformance-{}.txt", a.id);
    ca.write_bytes(&marker, a.id.to_string()).await.expect("write in a");
    assert_eq!(ca.read_to_vec(&marker).await.expect("read in a"), a.id.as_str().as_bytes());
    if caps.isolated_filesystem {
        assert!(cb.read_to_vec(&marker).await.is_err(), "b must not see a's file");
        let out = cb.sh(&format!("ls -a / /tmp /root /home 2>/dev/null | grep -c {} || true", a.id)).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "b must not see a's id anywhere");
    }

    // Pause and resume, where supported.
    if caps.pause {
        provider.pause(&a.id).await.expect("pause");
        assert_eq!(provider.inspect(&a.id).await.unwrap().state, RunState::Paused);
        let probe = tokio::time::timeout(Duration::from_millis(500), ca.sh("echo awake")).await;
        assert!(probe.is_err() || probe.unwrap().is_err(), "a paused workspace must not run commands");
        provider.resume(&a.id).await.expect("resume");
        assert_eq!(provider.inspect(&a.id).await.unwrap().state, RunState::Running);
        let out = tokio::time::timeout(Duration::from_secs(10), ca.sh("echo awake")).await.expect("resumed in time");
        assert_eq!(out.expect("exec after resume").stdout, b"awake\n");
    } else {
        assert!(matches!(provider.pause(&a.id).await, Err(ProviderError::Unsupported(_))));
    }

    // A restarted provider adopts what runs.
    if caps.survives_server_restart {
        let again = reopen();
        let listed = again.list().await.expect("list after reopen");
        let mine: BTreeMap<_, _> = listed.iter().map(|s| (s.id.clone(), s.state)).collect();
        assert_eq!(mine.get(&a.id), Some(&RunState::Running));
        assert_eq!(mine.get(&b.id), Some(&RunState::Running));
        assert_eq!(again.inspect(&a.id).await.unwrap().endpoint, a.endpoint);
    }

    // Stop ends the processes; destroy removes the rest, idempotently.
    provider.stop(&b.id).await.expect("stop b");
    let after = provider.inspect(&b.id).await;
    assert!(
        matches!(after, Ok(ref i) if i.state == RunState::Exited) || matches!(after, Err(ProviderError::NotFound(_))),
        "stopped workspace is exited or gone: {after:?}"
    );
    assert!(cb.health().await.is_err(), "a stopped workspace's agent is gone");
    for id in [&a.id, &b.id] {
        provider.destroy(id).await.expect("destroy");
        provider.destroy(id).await.expect("destroy is idempotent");
        assert!(matches!(provider.inspect(id).await, Err(ProviderError::NotFound(_))));
    }
    assert!(ca.health().await.is_err(), "a destroyed workspace's agent is gone");
    let left = provider.list().await.expect("list");
    assert!(!left.iter().any(|s| s.id == a.id || s.id == b.id), "destroyed workspaces are not listed");
}

/// Finds the `warren-agent` binary of this build for tests: beside the test
/// executable's `deps` directory, building it with cargo if it is missing.
pub fn agent_binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("WARREN_AGENT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
    let bin = dir.join("warren-agent");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo).args(["build", "-p", "warren-agent"]).status().expect("run cargo");
        assert!(st.success(), "building warren-agent failed");
    }
    assert!(bin.exists(), "no agent binary at {}", bin.display());
    bin
}
