//! The isolation probe suite: what a hostile root inside a workspace would
//! try against the host and its neighbours. Every backend that runs on
//! this machine calls [`run`] from its own tests.
//!
//! Each attack runs inside a workspace **as root** with `warren-probe`
//! (uploaded through the files API, so it needs nothing in the image) and
//! must be denied; the same attack run on the host by the test (root) must
//! work, so a missing tool or file cannot pass for a blocked attack. A few
//! things root inside must still be able to do are checked too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use warren_core::random_token;
use warren_proto::client::AgentClient;

use crate::conformance::spec;
use crate::{SandboxInfo, SandboxProvider};

/// Whose kernel the workspace's system calls reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The host's (namespaces: the local native runtime, Docker with runc).
    Host,
    /// A user-space kernel (gVisor): workspace processes are not host processes.
    UserSpace,
}

/// Where the suite finds the static `warren-probe` (scripts/build-agent.sh
/// builds it beside the static agent; `WARREN_PROBE_BIN` overrides).
pub fn probe_binary() -> PathBuf {
    if let Ok(p) = std::env::var("WARREN_PROBE_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let bin = target.join("agent-static/warren-probe");
    if !bin.exists() {
        let st = Command::new(root.join("scripts/build-agent.sh")).status().expect("run scripts/build-agent.sh");
        assert!(st.success(), "scripts/build-agent.sh failed");
    }
    assert!(bin.exists(), "no static warren-probe at {}", bin.display());
    bin
}

const PROBE: &str = "/tmp/warren-probe";
/// A tenant's secret environment value: visible to the workspace's own
/// processes, never on a command line.
const SECRET: &str = "tenant-secret-5d1f0c";

/// What is tried, the probe's arguments inside, and those of the host's
/// positive control (none where the host has nothing to compare).
type Attack = (&'static str, Vec<String>, Option<Vec<String>>);

async fn out(c: &AgentClient, script: &str) -> String {
    let o = c.sh(script).await.unwrap_or_else(|e| panic!("exec {script:?}: {e}"));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Runs the probe inside as root and returns its verdict line.
async fn inside(root: &AgentClient, args: &[&str]) -> String {
    let o = root.exec(PROBE, args).await.unwrap_or_else(|e| panic!("probe {args:?}: {e}"));
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        o.exit_code == 0 && !line.is_empty(),
        "probe {args:?} did not run inside (exit {}, stderr {:?})",
        o.exit_code,
        String::from_utf8_lossy(&o.stderr)
    );
    line
}

/// Runs the probe on the host (the positive control).
fn host(args: &[&str]) -> String {
    let o = Command::new(probe_binary()).args(args).output().expect("run warren-probe on the host");
    assert!(o.status.success(), "host probe {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A host block device the test may read: a loop device over a small file
/// (this machine's own disk is closed even to the host's root). Detached
/// when dropped.
struct LoopDevice {
    path: String,
    major: String,
    minor: String,
    file: PathBuf,
}

impl LoopDevice {
    fn new(dir: &str) -> LoopDevice {
        let file = Path::new(dir).join("disk.img");
        std::fs::write(&file, vec![0x5au8; 1 << 20]).expect("backing file");
        let o = Command::new("losetup").args(["-f", "--show"]).arg(&file).output().expect("run losetup");
        assert!(o.status.success(), "losetup: {}", String::from_utf8_lossy(&o.stderr));
        let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let o = Command::new("stat").args(["-c", "%t %T", &path]).output().expect("stat");
        let hex = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let mut it = hex.split(' ').map(|h| u32::from_str_radix(h, 16).expect("hex device number").to_string());
        let (major, minor) = (it.next().expect("major"), it.next().expect("minor"));
        LoopDevice { path, major, minor, file }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

async fn setup(provider: &impl SandboxProvider, template: &str) -> (SandboxInfo, AgentClient, Option<String>) {
    let mut s = spec(template);
    s.env.insert("WARREN_PROBE_SECRET".into(), SECRET.into());
    let info = provider.create(&s).await.expect("create a workspace to probe");
    let token = info.access_token.clone().or_else(|| s.access_token.clone());
    let root = AgentClient::new(info.endpoint.clone()).with_access_token(token.clone()).as_user("root");
    let bin = std::fs::read(probe_binary()).expect("read warren-probe");
    root.write_bytes(PROBE, bin).await.expect("upload warren-probe");
    assert_eq!(out(&root, &format!("chmod 755 {PROBE} && id -u")).await, "0", "the probes run as root inside");
    (info, root, token)
}

/// Runs every probe against workspaces of `template` on `provider`.
pub async fn run<P: SandboxProvider>(provider: &P, template: &str, kernel: Kernel) {
    use futures_util::FutureExt as _;
    let (a, root, token) = setup(provider, template).await;
    let (b, root_b, _) = setup(provider, template).await;
    // The workspaces go whatever happens: a failed probe leaves nothing running.
    let outcome = std::panic::AssertUnwindSafe(probe_all(kernel, &root, token, &b, &root_b)).catch_unwind().await;
    for id in [&a.id, &b.id] {
        let destroyed = provider.destroy(id).await;
        if outcome.is_ok() {
            destroyed.expect("destroy");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn probe_all(kernel: Kernel, root: &AgentClient, token: Option<String>, b: &SandboxInfo, root_b: &AgentClient) {
    let host_tmp = tempfile_dir();

    // Attacks: (what, arguments inside, arguments for the host's control).
    let mut attacks: Vec<Attack> = Vec::new();
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for sysctl in ["kernel/core_pattern", "vm/overcommit_memory", "kernel/pid_max"] {
        let p = format!("/proc/sys/{sysctl}");
        attacks.push(("global sysctl write", v(&["rewrite", &p]), Some(v(&["rewrite", &p]))));
    }
    // Kernel interfaces this host has (a kernel built without them has
    // nothing to protect, and no control could show the probe works).
    for (what, path, args) in [
        ("sysrq", "/proc/sysrq-trigger", ["write", "/proc/sysrq-trigger", "h"]),
        ("kcore", "/proc/kcore", ["read", "/proc/kcore", "16"]),
        ("timer_list", "/proc/timer_list", ["read", "/proc/timer_list", "64"]),
        ("sched_debug", "/proc/sched_debug", ["read", "/proc/sched_debug", "64"]),
        ("firmware tables", "/sys/firmware/acpi/tables/DSDT", ["read", "/sys/firmware/acpi/tables/DSDT", "16"]),
    ] {
        if Path::new(path).exists() {
            attacks.push((what, v(&args), Some(v(&args))));
        }
    }
    let disk = LoopDevice::new(&host_tmp);
    attacks.push((
        "mknod and read a host block device",
        v(&["blockdev", "/tmp", &disk.major, &disk.minor]),
        Some(v(&["blockdev", &host_tmp, &disk.major, &disk.minor])),
    ));
    out(root, "mkdir -p /tmp/probe-mnt").await;
    attacks.push(("mount", v(&["mount", "/tmp/probe-mnt"]), Some(v(&["mount", &host_tmp]))));
    attacks.push(("kernel module", v(&["module"]), Some(v(&["module"]))));
    attacks.push(("keyctl", v(&["keyctl"]), Some(v(&["keyctl"]))));
    attacks.push(("bpf", v(&["bpf"]), Some(v(&["bpf"]))));
    attacks.push(("perf_event_open", v(&["perf"]), Some(v(&["perf"]))));
    // Under a user-space kernel these reach gVisor's own implementation
    // (its user namespaces, io_uring, OOM scores), never the host's.
    if kernel == Kernel::Host {
        attacks.push(("nested user namespace", v(&["unshare-user"]), Some(v(&["unshare-user"]))));
        attacks.push(("io_uring", v(&["io-uring"]), Some(v(&["io-uring"]))));
        attacks.push(("lower oom_score_adj", v(&["write", "/proc/self/oom_score_adj", "-1000"]), None));
    }

    // The host's controls for the agent: a process of the test's own.
    let mut victim = Command::new("sleep").arg("30").spawn().expect("spawn a host process");
    let vpid = victim.id().to_string();
    attacks.push(("ptrace the agent", v(&["ptrace", "1"]), Some(v(&["ptrace", &vpid]))));
    if kernel == Kernel::Host {
        attacks.push((
            "read the agent's environment",
            v(&["read", "/proc/1/environ", "1"]),
            Some(v(&["read", &format!("/proc/{vpid}/environ"), "1"])),
        ));
    }

    let mut failures = Vec::new();
    for (what, args, control) in &attacks {
        if let Some(c) = control {
            let cargv: Vec<&str> = c.iter().map(|s| s.as_str()).collect();
            let h = host(&cargv);
            if h == "denied ENOSYS" {
                // This kernel was built without it: nothing to attack.
                tracing::warn!(probe = what, "not in this host's kernel (ENOSYS on the host), skipped");
                continue;
            }
            assert_eq!(h, "ok", "positive control on the host for {what} ({c:?}) must work, got {h:?}");
        }
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let got = inside(root, &argv).await;
        if !got.starts_with("denied") {
            failures.push(format!("{what}: {args:?} inside gave {got:?}"));
        }
    }
    let _ = victim.kill();
    let _ = victim.wait();
    drop(disk);
    let _ = std::fs::remove_dir_all(&host_tmp);
    assert!(failures.is_empty(), "attacks that worked from inside the workspace:\n{}", failures.join("\n"));

    // What root inside must still be able to do.
    assert_eq!(inside(root, &["write", "/proc/self/oom_score_adj", "500"]).await, "ok", "raise own oom_score_adj");
    assert_eq!(inside(root, &["ptrace", "child"]).await, "ok", "root inside can debug its own processes");
    if kernel == Kernel::Host {
        // Its own network namespace's sysctls are not behind the read-only
        // /proc/sys (changing them needs CAP_NET_ADMIN, which root inside
        // does not get by default, as with Docker).
        let mounts = out(root, "grep ' /proc/sys/net ' /proc/self/mountinfo || true").await;
        if !mounts.is_empty() {
            assert!(mounts.contains(" rw,"), "/proc/sys/net is mounted read-write: {mounts}");
        }
    }
    // A tenant's environment reaches its processes, and no command line
    // (inside, or on the host where `ps` shows it to every user).
    assert_eq!(out(root, "echo $WARREN_PROBE_SECRET").await, SECRET);
    assert!(host_processes_with(SECRET).is_empty(), "a tenant's secret is on a host command line");
    // The agent's secrets never show in what root inside can read of it.
    for f in ["/proc/1/environ", "/proc/1/cmdline"] {
        let seen = out(root, &format!("cat {f} 2>/dev/null | tr '\\0' '\\n'")).await;
        if let Some(t) = &token {
            assert!(!seen.contains(t.as_str()), "the access token is readable in {f}");
        }
        assert!(!seen.contains(SECRET), "the tenant's secret is readable in the agent's {f}");
    }

    // Root inside, seen from the host: never uid 0 (gVisor: not a host process at all).
    let marker = format!("probe-{}", random_token(12).to_lowercase());
    out(root, &format!("{PROBE} hold {marker} 30 >/dev/null 2>&1 &")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = host_processes_with(&marker);
    match kernel {
        Kernel::Host => {
            assert!(!seen.is_empty(), "the workspace's process {marker} is visible on the host");
            for (pid, uids) in &seen {
                assert!(
                    uids.iter().all(|u| *u >= 65_536),
                    "root inside the workspace is host uid(s) {uids:?} (pid {pid}): must be an unprivileged, per-workspace id"
                );
            }
        }
        Kernel::UserSpace => assert!(seen.is_empty(), "a gVisor workspace's process showed up on the host: {seen:?}"),
    }
    out(root, &format!("pkill -f {marker} || true")).await;

    // The other workspace: its files and its agent's socket are out of reach.
    let secret = format!("neighbour-{}", random_token(12).to_lowercase());
    out(root_b, &format!("echo {secret} > /root/{secret}")).await;
    assert_eq!(out(root_b, &format!("cat /root/{secret}")).await, secret, "control: B reads its own file");
    let found =
        out(root, &format!("find / -xdev -name {secret} 2>/dev/null; cat /root/{secret} 2>/dev/null; true")).await;
    assert!(found.is_empty(), "workspace A found B's file: {found}");
    if let warren_proto::endpoint::Endpoint::Unix(sock) = &b.endpoint {
        assert!(sock.exists(), "control: B's agent socket exists on the host");
        let s = sock.display();
        assert_eq!(out(root, &format!("test -e {s} && echo reachable || echo absent")).await, "absent");
    }
}

/// Host processes whose command line contains `marker`, with their real,
/// effective, saved and file-system uids.
fn host_processes_with(marker: &str) -> Vec<(u32, Vec<u32>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        if !String::from_utf8_lossy(&cmd).contains(marker) || pid == std::process::id() {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            out.push((pid, line.split_whitespace().skip(1).filter_map(|u| u.parse().ok()).collect()));
        }
    }
    out
}

fn tempfile_dir() -> String {
    let d = std::env::temp_dir().join(format!("warren-probe-{}", random_token(10).to_lowercase()));
    std::fs::create_dir_all(&d).expect("host temp dir");
    d.display().to_string()
}
