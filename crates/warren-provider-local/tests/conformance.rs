//! The local provider passes the provider conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let p = common::provider(&root);
    warren_provider::conformance::run(&p, || common::provider(&root), "base").await;
}

/// The same suite with the `base` template under gVisor (Debian's runsc,
/// installed by scripts/test.sh): same templates, agent and limits, a
/// user-space kernel in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_passes_the_suite_under_gvisor() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let make = || {
        common::provider(&root)
            .with_gvisor(vec!["base".into()], "runsc".into())
            .expect("runsc (apt-get install runsc; scripts/test.sh installs it)")
    };
    let p = make();
    // The API shows the tier per template.
    let base = warren_provider::SandboxProvider::templates(&p).await.unwrap().into_iter().find(|t| t.name == "base");
    assert_eq!(base.unwrap().isolation, Some(warren_provider::IsolationTier::Gvisor));
    let native = common::provider(&root.join("native"));
    let base =
        warren_provider::SandboxProvider::templates(&native).await.unwrap().into_iter().find(|t| t.name == "base");
    assert_eq!(base.unwrap().isolation, Some(warren_provider::IsolationTier::Namespaces));
    // It really is gVisor: its kernel reports itself in dmesg.
    let spec = warren_provider::conformance::spec("base");
    let info = warren_provider::SandboxProvider::create(&p, &spec).await.unwrap();
    let agent =
        warren_proto::client::AgentClient::new(info.endpoint.clone()).with_access_token(spec.access_token.clone());
    let out = agent.sh("dmesg 2>/dev/null | head -3; cat /proc/version").await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gVisor") || text.contains("Starting gVisor"), "not gVisor: {text}");
    // Its own hostname and process tree: no host process is visible.
    let out = agent.sh("hostname; ls /proc | grep -c '^[0-9]'").await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(spec.id.as_str()));
    let procs: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(procs < 10, "{procs} processes visible: the host's would be hundreds");
    warren_provider::SandboxProvider::destroy(&p, &spec.id).await.unwrap();
    // Nothing left: no mount under the state dir, no runsc container.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(root.to_str().unwrap()), "mounts left behind:\n{mounts}");
    let left = std::process::Command::new("runsc")
        .arg("--root")
        .arg(root.join("runsc"))
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "runsc containers left");
    warren_provider::conformance::run(&p, make, "base").await;
}
