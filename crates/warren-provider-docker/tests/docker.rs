//! The Docker backend against a real engine: the provider conformance suite
//! (runc, and runsc where the engine has it), isolation between containers,
//! image import, and classified errors. Needs a running dockerd and root
//! (scripts/test.sh sets both up).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use warren_core::WorkspaceId;
use warren_proto::client::AgentClient;
use warren_provider::{CreateSpec, NetworkMode, ProviderError, SandboxProvider};
use warren_provider_docker::{DockerConfig, DockerProvider};

const IMAGE: &str = "warren-test-busybox";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

use warren_test_support::static_agent;

/// A busybox image built from the host's static busybox (no registry here).
fn ensure_image() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let st =
            Command::new(repo_root().join("scripts/docker-test-image.sh")).arg(IMAGE).status().expect("run script");
        assert!(st.success(), "building {IMAGE} failed");
    });
}

fn config(owner: &str) -> DockerConfig {
    let mut c = DockerConfig::new(static_agent());
    c.owner = owner.into();
    c
}

fn provider(owner: &str) -> DockerProvider {
    ensure_image();
    DockerProvider::connect(config(owner)).expect("connect")
}

fn owner(tag: &str) -> String {
    format!("test-{tag}-{}", std::process::id())
}

/// Removes every container of an owner when dropped, also when a test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=warren.owner={}", self.0)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect::<Vec<_>>())
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker").arg("rm").arg("-f").args(&ids).stdout(Stdio::null()).status();
        }
    }
}

fn runsc_available() -> bool {
    let out = Command::new("docker").args(["info", "--format", "{{json .Runtimes}}"]).output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("runsc"))
}

fn spec(template: &str) -> CreateSpec {
    CreateSpec {
        tenant: None,
        id: WorkspaceId::generate(),
        template: template.into(),
        size: Default::default(),
        network: NetworkMode::None,
        env: Default::default(),
        labels: Default::default(),
        init_token: "init-secret".into(),
        access_token: Some(warren_core::random_token(16)),
    }
}

async fn cleanup(p: &DockerProvider) {
    for s in p.list().await.unwrap_or_default() {
        let _ = p.destroy(&s.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_docker_runc() {
    let o = owner("runc");
    let _cleanup = Cleanup(o.clone());
    let p = provider(&o);
    println!("{}", p.ping().await.expect("engine answers"));
    warren_provider::conformance::run(&p, || provider(&o), IMAGE).await;
    cleanup(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_docker_runsc() {
    if !runsc_available() {
        // scripts/test.sh registers runsc with the engine; on a machine
        // without it this backend variant cannot exist.
        eprintln!("runsc is not registered with the Docker engine: gVisor variant not run");
        assert!(std::env::var_os("WARREN_REQUIRE_RUNSC").is_none(), "WARREN_REQUIRE_RUNSC set but runsc missing");
        return;
    }
    let o = owner("runsc");
    let _cleanup = Cleanup(o.clone());
    let make = || {
        ensure_image();
        let mut c = config(&o);
        c.runtime = Some("runsc".into());
        DockerProvider::connect(c).unwrap()
    };
    let p = make();
    assert_eq!(p.capabilities().isolation, warren_provider::IsolationTier::Gvisor);
    warren_provider::conformance::run(&p, make, IMAGE).await;
    cleanup(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_cannot_reach_each_other_or_the_outside_in_none_mode() {
    let o = owner("iso");
    let _cleanup = Cleanup(o.clone());
    let p = provider(&o);
    let (sa, sb) = (spec(IMAGE), spec(IMAGE));
    let a = p.create(&sa).await.unwrap();
    let b = p.create(&sb).await.unwrap();
    let ca = AgentClient::new(a.endpoint.clone()).with_access_token(sa.access_token.clone());
    let cb = AgentClient::new(b.endpoint.clone()).with_access_token(sb.access_token.clone());
    // b listens on a port; a tries its agent port and that port.
    let _bg = cb.sh("nc -l -p 8080 -e echo reached >/dev/null 2>&1 &").await.unwrap();
    let host = b.endpoint.to_string();
    let ip = host.trim_start_matches("tcp://").rsplit_once(':').unwrap().0.to_string();
    for port in ["49983", "8080"] {
        let out = ca.sh(&format!("nc -w 2 {ip} {port} </dev/null && echo open || echo closed")).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed", "a reached b:{port}");
    }
    // No route out of the none network.
    let out = ca.sh("nc -w 2 1.1.1.1 53 </dev/null && echo open || echo closed").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
    // b's token does not open a.
    let wrong = AgentClient::new(a.endpoint.clone()).with_access_token(sb.access_token.clone());
    assert!(wrong.list().await.is_err());
    // The workspace cannot see the host's processes or files.
    let out = ca.sh("ps -o pid,comm | wc -l; ls /home").await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().trim().parse::<u32>().unwrap() < 10, "{text}");
    // Limits are applied: memory and pids from the size.
    let out = ca
        .sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (512u64 << 20).to_string());
    cleanup(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_change_nothing() {
    let o = owner("err");
    let _cleanup = Cleanup(o.clone());
    let p = provider(&o);
    let mut s = spec("warren-no-such-image");
    match p.create(&s).await {
        Err(ProviderError::InvalidSpec(m)) => assert!(m.contains("warren-no-such-image"), "{m}"),
        other => panic!("{other:?}"),
    }
    s.template = IMAGE.into();
    s.network = NetworkMode::Host;
    assert!(matches!(p.create(&s).await, Err(ProviderError::Unsupported(_))));
    assert!(p.list().await.unwrap().is_empty(), "failed creates leave nothing");
    // An engine that is not there is "unavailable", quickly.
    let mut c = config(&o);
    c.host = Some("unix:///nonexistent/docker.sock".into());
    c.call_timeout = Duration::from_secs(2);
    let down = match DockerProvider::connect(c) {
        Ok(down) => down.list().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match down {
        Err(ProviderError::Unavailable(m)) => assert!(m.contains("Docker engine"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_a_docker_save_archive_as_a_template() {
    ensure_image();
    let o = owner("imp");
    let _cleanup = Cleanup(o.clone());
    let p = provider(&o);
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("img.tar");
    let st = Command::new("docker").args(["save", "-o"]).arg(&tar).arg(IMAGE).status().unwrap();
    assert!(st.success());
    let name = format!("warren-imported-{}", std::process::id());
    let t = p.import_template(&name, &tar).await.expect("import");
    assert_eq!(t.name, name);
    assert!(p.templates().await.unwrap().iter().any(|x| x.name == name && !x.revision.is_empty()));
    let s = spec(&name);
    let w = p.create(&s).await.unwrap();
    let c = AgentClient::new(w.endpoint.clone()).with_access_token(s.access_token.clone());
    assert_eq!(c.sh("echo imported").await.unwrap().stdout, b"imported\n");
    // Garbage is refused as an invalid spec.
    std::fs::write(dir.path().join("junk.tar"), b"not a tar").unwrap();
    let junk = p.import_template("junk", &dir.path().join("junk.tar")).await;
    assert!(matches!(junk, Err(ProviderError::InvalidSpec(_))), "{junk:?}");
    assert!(matches!(p.import_template("Bad Name", &tar).await, Err(ProviderError::InvalidSpec(_))));
    cleanup(&p).await;
    let _ = Command::new("docker").args(["rmi", &name]).stdout(Stdio::null()).status();
}

/// The isolation probe suite as root inside Docker containers (runc on an
/// engine with userns-remap, as scripts/docker-up.sh sets it up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inside_a_runc_container_cannot_reach_the_host() {
    let o = owner("probe-runc");
    let _cleanup = Cleanup(o.clone());
    let p = provider(&o);
    assert!(p.root_is_remapped().await.unwrap(), "scripts/docker-up.sh runs the engine with userns-remap");
    warren_provider::probes::run(&p, IMAGE, warren_provider::probes::Kernel::Host).await;
    cleanup(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inside_a_runsc_container_cannot_reach_the_host() {
    if !runsc_available() {
        assert!(std::env::var_os("WARREN_REQUIRE_RUNSC").is_none(), "WARREN_REQUIRE_RUNSC set but runsc missing");
        return;
    }
    let o = owner("probe-runsc");
    let _cleanup = Cleanup(o.clone());
    ensure_image();
    let mut c = config(&o);
    c.runtime = Some("runsc".into());
    let p = DockerProvider::connect(c).unwrap();
    warren_provider::probes::run(&p, IMAGE, warren_provider::probes::Kernel::UserSpace).await;
    cleanup(&p).await;
}
