//! Tests that try to break out of a local workspace: into the host, into
//! another workspace, past its limits. They run as root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

use std::time::Duration;

use warren_core::{random_token, Size, WorkspaceId};
use warren_proto::client::{AgentClient, Output};
use warren_provider::{CreateSpec, NetworkMode, SandboxInfo, SandboxProvider};
use warren_provider_local::LocalProvider;

struct Ws {
    info: SandboxInfo,
    root: AgentClient,
    user: AgentClient,
}

async fn create(p: &LocalProvider, size: Size) -> Ws {
    let spec = CreateSpec {
        tenant: None,
        id: WorkspaceId::generate(),
        template: "base".into(),
        size,
        network: NetworkMode::None,
        env: Default::default(),
        labels: Default::default(),
        init_token: random_token(16),
        access_token: Some(random_token(16)),
    };
    let info = p.create(&spec).await.expect("create");
    let root = AgentClient::new(info.endpoint.clone()).with_access_token(spec.access_token.clone()).as_user("root");
    let user = AgentClient::new(info.endpoint.clone()).with_access_token(spec.access_token.clone());
    Ws { info, root, user }
}

fn small() -> Size {
    Size { millicpus: 500, memory_mib: 128, disk_mib: 64, pids: 128 }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

async fn sh(c: &AgentClient, script: &str) -> String {
    let o = c.sh(script).await.expect("exec");
    text(&o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_hostname_proc_and_users() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    let w = create(&p, small()).await;
    // Own hostname; cannot change it.
    assert_eq!(sh(&w.root, "hostname").await, w.info.id.as_str());
    assert_eq!(sh(&w.root, "hostname evil 2>/dev/null && echo changed || echo refused").await, "refused");
    // Own pid namespace: the agent is PID 1 and no host process is visible.
    assert_eq!(sh(&w.root, "cat /proc/1/comm").await, "agent");
    let host_pid = std::process::id();
    assert_eq!(sh(&w.root, &format!("kill -0 {host_pid} 2>/dev/null && echo seen || echo unseen")).await, "unseen");
    let n: usize = sh(&w.root, "ls -d /proc/[0-9]* | wc -l").await.parse().unwrap();
    assert!(n < 10, "only the workspace's processes are visible, saw {n}");
    // Users: `user` is the default, with its home.
    assert_eq!(sh(&w.user, "id -un; pwd").await, "user\n/home/user");
    assert_eq!(sh(&w.root, "id -u").await, "0");
    // Network: loopback only.
    let links = sh(&w.root, "ls /sys/class/net").await;
    assert_eq!(links, "lo");
    p.destroy(&w.info.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_files_and_secrets_stay_out_of_reach() {
    let dir = tempfile::tempdir().unwrap();
    // Secrets a host operator keeps under /etc, placed before the base
    // template is built: none may reach a workspace.
    let tag = warren_core::random_token(10).to_lowercase();
    let canaries = [format!("/etc/warren-canary-{tag}.toml"), format!("/etc/ssl/private/warren-canary-{tag}.pem")];
    for c in &canaries {
        if let Some(d) = std::path::Path::new(c).parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(c, format!("api_key = \"{tag}\"")).unwrap();
        assert!(std::fs::read_to_string(c).unwrap().contains(&tag), "control: the host reads {c}");
    }
    let p = common::provider(dir.path());
    let w = create(&p, small()).await;
    for c in &canaries {
        let _ = std::fs::remove_file(c);
    }
    let found = sh(&w.root, &format!("grep -rl {tag} /etc 2>/dev/null; ls /etc/ssl/private 2>/dev/null; true")).await;
    assert!(found.is_empty(), "host secrets under /etc reached the workspace: {found}");
    // What the host's tools need is there: certificates, the loader cache, alternatives.
    assert_eq!(sh(&w.root, "test -s /etc/ld.so.cache && test -d /etc/ssl/certs && echo ok").await, "ok");
    let marker = format!("/root/warren-host-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret").unwrap();
    assert_eq!(sh(&w.root, &format!("cat {marker} 2>/dev/null || echo missing")).await, "missing");
    std::fs::remove_file(&marker).unwrap();
    // The host's password hashes were not copied.
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let ws_shadow = sh(&w.root, "cat /etc/shadow").await;
    for line in host_shadow.lines() {
        let hash = line.split(':').nth(1).unwrap_or("");
        if hash.len() > 3 {
            assert!(!ws_shadow.contains(hash), "host password hash leaked");
        }
    }
    // System directories are read-only, even for root.
    assert_eq!(sh(&w.root, "touch /usr/bin/evil 2>/dev/null && echo wrote || echo ro").await, "ro");
    // The state directory (other workspaces, agent sockets) is not visible.
    let state = dir.path().display().to_string();
    assert_eq!(sh(&w.root, &format!("ls {state} 2>/dev/null || echo missing")).await, "missing");
    // No way to remount or mount: capabilities and seccomp both refuse.
    assert_eq!(sh(&w.root, "mount -t tmpfs x /mnt 2>/dev/null && echo mounted || echo refused").await, "refused");
    assert_eq!(sh(&w.root, "mount -o remount,rw /usr 2>/dev/null && echo rw || echo refused").await, "refused");
    assert_eq!(sh(&w.root, "unshare -U true 2>/dev/null && echo userns || echo refused").await, "refused");
    assert_eq!(sh(&w.root, "unshare -m true 2>/dev/null && echo mountns || echo refused").await, "refused");
    assert_eq!(sh(&w.root, "chroot / true 2>/dev/null; mknod /tmp/sda b 8 0 2>/dev/null; cat /tmp/sda >/dev/null 2>&1 && echo raw || echo refused").await, "refused");
    // Privileges of the agent and everything it starts.
    let status = sh(&w.root, "grep -E '^(CapBnd|NoNewPrivs|Seccomp):' /proc/self/status").await;
    let capbnd = status.lines().find(|l| l.starts_with("CapBnd")).unwrap();
    let mask = u64::from_str_radix(capbnd.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask & (1 << 21), 0, "CAP_SYS_ADMIN must be gone: {status}");
    assert_eq!(mask & (1 << 19), 0, "CAP_SYS_PTRACE must be gone: {status}");
    assert_eq!(mask & (1 << 16), 0, "CAP_SYS_MODULE must be gone: {status}");
    assert_eq!(mask & (1 << 27), 0, "CAP_MKNOD must be gone: {status}");
    // No no_new_privs: setuid works inside the user namespace (sudo in an
    // image), where it gains nothing beyond the workspace's own root.
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    sh(&w.root, "cp /usr/bin/id /opt/suid-id && chmod 4755 /opt/suid-id").await;
    assert_eq!(sh(&w.user, "id -u; /opt/suid-id -u").await, "1000\n0", "a setuid-root program runs as root inside");
    p.destroy(&w.info.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_cannot_reach_each_other_or_the_host_network() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    let a = create(&p, small()).await;
    let b = create(&p, small()).await;
    // b's processes are invisible to a.
    let out = b.root.start(&Default::default(), &Default::default()).await;
    assert!(out.is_err());
    let mut s = b
        .root
        .start(
            &warren_proto::process::StartRequest {
                process: Some(warren_proto::process::ProcessConfig {
                    cmd: "/bin/sleep".into(),
                    args: vec!["30".into()],
                    ..Default::default()
                }),
                stdin: Some(false),
                ..Default::default()
            },
            &Default::default(),
        )
        .await
        .unwrap();
    let _pid = s.pid().await.unwrap();
    assert_eq!(sh(&a.root, "ps -eo args | grep -c '^/bin/sleep 30' || true").await, "0");
    // A host TCP service on loopback is not reachable from a workspace.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!("timeout 3 bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo open || echo closed");
    assert_eq!(sh(&a.root, &probe).await, "closed");
    // Files a writes are a's alone.
    a.root.write_bytes("/tmp/only-a", "a").await.unwrap();
    a.root.write_bytes("/root/only-a", "a").await.unwrap();
    assert_eq!(sh(&b.root, "ls /tmp/only-a /root/only-a 2>/dev/null | wc -l").await, "0");
    p.destroy(&a.info.id).await.unwrap();
    p.destroy(&b.info.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_memory_pids_disk_and_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    // The writable layer is a tmpfs charged to the workspace's memory, so
    // memory is sized above disk here to see the disk limit itself.
    let w = create(&p, Size { millicpus: 250, memory_mib: 160, disk_mib: 64, pids: 64 }).await;
    let other = create(&p, small()).await;

    // Memory hog: killed inside the workspace, the agent survives.
    let hog = w.root.sh("python3 -c 'b = bytearray(400 << 20); print(len(b))'").await.unwrap();
    assert_ne!(hog.exit_code, 0, "a 400 MiB allocation must fail under 160 MiB: {hog:?}");
    assert_eq!(sh(&w.root, "echo alive").await, "alive");
    assert!(p.cgroups().oom_kills(w.info.id.as_str()) >= 1 || !hog.stderr.is_empty());

    // Fork bomb (bounded): stops at the pids limit; the workspace recovers.
    let script = "import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n            time.sleep(4)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n";
    let bomb = w.root.exec("/usr/bin/python3", &["-c", script]).await.unwrap();
    let started: usize = text(&bomb).parse().unwrap_or_else(|_| panic!("bomb output: {bomb:?}"));
    assert!(started < 64, "pids limit must stop the bomb, {started} children started");
    let st = p.stats(&w.info.id).await.unwrap();
    assert!(st.pids <= 64, "{st:?}");
    assert_eq!(sh(&other.root, "echo fine").await, "fine");
    // The bomb's children exit on their own; then the workspace is usable again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while p.stats(&w.info.id).await.unwrap().pids > 4 {
        assert!(std::time::Instant::now() < deadline, "bomb children did not go away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sh(&w.root, "echo recovered").await, "recovered");

    // Disk filler: fills only its own writable layer.
    let fill = sh(
        &w.root,
        "dd if=/dev/zero of=/root/fill bs=1M count=200 2>&1 | grep -i -m1 'no space'; stat -c %s /root/fill",
    )
    .await;
    assert!(fill.contains("No space left"), "{fill}");
    assert_eq!(sh(&other.root, "dd if=/dev/zero of=/root/ok bs=1M count=8 2>/dev/null && echo wrote").await, "wrote");
    let st = p.stats(&w.info.id).await.unwrap();
    assert!(st.disk_used_bytes >= 32 << 20 && st.disk_total_bytes <= 65 << 20, "{st:?}");

    // CPU quota: a spinner gets about a quarter of a CPU.
    let before = p.stats(&w.info.id).await.unwrap().cpu_ns;
    let t = std::time::Instant::now();
    sh(&w.root, "timeout 2 sh -c 'while :; do :; done'; true").await;
    let wall = t.elapsed();
    let used = p.stats(&w.info.id).await.unwrap().cpu_ns - before;
    let share = used as f64 / wall.as_nanos() as f64;
    assert!(share < 0.45, "quota of 0.25 CPU exceeded: {share:.2} of a CPU");
    p.destroy(&w.info.id).await.unwrap();
    p.destroy(&other.info.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_and_crash_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    let w = create(&p, small()).await;
    let id = w.info.id.to_string();
    let cg_dirs = p.cgroups().dirs(&id);
    assert!(cg_dirs.iter().all(|d| d.exists()));
    p.destroy(&w.info.id).await.unwrap();
    assert!(cg_dirs.iter().all(|d| !d.exists()), "cgroups removed");
    assert!(!dir.path().join("workspaces").join(&id).exists(), "directory removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "no mount of the workspace on the host");

    // A create that died half-way (directory without meta) is cleaned by list.
    let half = WorkspaceId::generate();
    std::fs::create_dir_all(dir.path().join("workspaces").join(half.as_str()).join("scratch")).unwrap();
    let listed = p.list().await.unwrap();
    assert!(!listed.iter().any(|s| s.id == half));
    assert!(!dir.path().join("workspaces").join(half.as_str()).exists());

    // The init killed from outside (a crash): the workspace reads as exited
    // and destroy still cleans it up.
    let w = create(&p, small()).await;
    let pid =
        std::fs::read_to_string(dir.path().join("workspaces").join(w.info.id.as_str()).join("meta.json")).unwrap();
    let pid: serde_json::Value = serde_json::from_str(&pid).unwrap();
    let pid = pid["pid"].as_i64().unwrap() as i32;
    unsafe_kill(pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.inspect(&w.info.id).await.unwrap().state != warren_provider::RunState::Exited {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.destroy(&w.info.id).await.unwrap();
    assert!(p.cgroups().dirs(w.info.id.as_str()).iter().all(|d| !d.exists()));
}

fn unsafe_kill(pid: i32) {
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
}

/// The device cgroup (v1 controller or v2 eBPF program) lets a workspace's
/// processes open only its own devices: a host root process moved into a
/// workspace's cgroups can no longer read a block device it read before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_cgroup_allows_only_the_workspace_devices() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    let o = std::process::Command::new("losetup").args(["-f", "--show"]).arg(&img).output().unwrap();
    assert!(o.status.success(), "losetup: {}", String::from_utf8_lossy(&o.stderr));
    let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let id = format!("devtest{}", random_token(8).to_lowercase());
    let procs = p.cgroups().create(&id, &small()).unwrap();
    let join: String = procs.iter().map(|p| format!("echo $$ > {}; ", p.display())).collect();
    let probe = |prefix: &str| {
        let script = format!(
            "{prefix} head -c 1 /dev/null && echo null:ok; head -c 1 /dev/urandom >/dev/null && echo urandom:ok; \
             head -c 1 {dev} >/dev/null 2>&1 && echo disk:read || echo disk:denied"
        );
        let o = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let outside = probe("");
    let inside = probe(&join);
    p.cgroups().destroy(&id).unwrap();
    let _ = std::process::Command::new("losetup").args(["-d", &dev]).status();
    assert_eq!(outside, "null:ok\nurandom:ok\ndisk:read", "control: the host reads the device");
    assert_eq!(inside, "null:ok\nurandom:ok\ndisk:denied", "inside the workspace's cgroups");
}

/// Root inside keeps what a tenant's root needs: chown, ports below 1024,
/// raw sockets (ping), its own files owned as it set them; and every
/// workspace has its own id range on the host, across providers (replicas
/// on one host) and restarts, freed only when the workspace is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_keeps_its_powers_and_each_workspace_has_its_own_ids() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A data directory closed to everyone but the host's root (as mktemp -d
    // makes it): the workspace's own ids never need to pass it.
    for d in [&d1, &d2] {
        std::fs::set_permissions(d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    let (p1, p2) = (common::provider(d1.path()), common::provider(d2.path()));
    let (a, b) = (create(&p1, small()).await, create(&p2, small()).await);
    let script = "touch /root/f && chown 1000:1000 /root/f && stat -c %u:%g /root/f; \
                  python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 80)); print(\"bound 80\")'; \
                  python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print(\"raw ok\")'; \
                  cat /proc/self/uid_map";
    let out_a = sh(&a.root, script).await;
    let lines: Vec<&str> = out_a.lines().collect();
    assert_eq!(&lines[..3], ["1000:1000", "bound 80", "raw ok"], "{out_a}");
    let base = |map: &str| -> u64 { map.split_whitespace().nth(1).unwrap().parse().unwrap() };
    let base_a = base(lines[3]);
    let base_b = base(&sh(&b.root, "cat /proc/self/uid_map").await);
    assert!(base_a >= 1 << 28 && base_b >= 1 << 28, "{base_a} {base_b}");
    assert!(base_a.abs_diff(base_b) >= 65_536, "ranges overlap: {base_a} {base_b}");
    // A restarted provider still knows the workspace and its range.
    let p1b = common::provider(d1.path());
    assert!(p1b.list().await.unwrap().iter().any(|s| s.id == a.info.id));
    let slot = |base: u64| std::path::PathBuf::from(format!("/run/warren/idmap/{}", (base - (1 << 28)) / 65_536));
    assert!(slot(base_a).exists(), "the range is held while the workspace lives");
    p1b.destroy(&a.info.id).await.unwrap();
    assert!(!slot(base_a).exists(), "the range is freed once the workspace is gone");
    p2.destroy(&b.info.id).await.unwrap();
    assert!(!slot(base_b).exists());
}

/// Per-user kernel limits are the workspace's own: a workspace that takes
/// every inotify instance its user may have (the kernel's per-user limit)
/// leaves the host's root and another workspace theirs, because each user
/// namespace is owned by its workspace's own host id, not the host's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workspace_cannot_use_up_per_user_kernel_limits() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    let (a, b) = (create(&p, small()).await, create(&p, small()).await);
    let hog = "import ctypes, time\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
n = 0\n\
while libc.inotify_init1(0) >= 0: n += 1\n\
open('/tmp/hog', 'w').write(f'{n} {ctypes.get_errno()}')\n\
time.sleep(30)\n";
    a.user.write_bytes("/tmp/hog.py", hog.as_bytes().to_vec()).await.unwrap();
    sh(&a.user, "python3 /tmp/hog.py >/dev/null 2>&1 &").await;
    let mut held = String::new();
    for _ in 0..100 {
        held = sh(&a.user, "cat /tmp/hog 2>/dev/null || true").await;
        if !held.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limit: u64 =
        std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances").unwrap().trim().parse().unwrap();
    let (n, errno) = held.split_once(' ').expect("the hog reports");
    // Control: the limit really binds inside (EMFILE = 24 at the user's limit).
    assert!(n.parse::<u64>().unwrap() + 8 >= limit && errno == "24", "hog held {n} (limit {limit}), errno {errno}");
    // SAFETY: inotify_init1/close on a descriptor we own.
    let host_fd = unsafe { libc::inotify_init1(0) };
    assert!(host_fd >= 0, "the host's root can still make an inotify instance");
    // SAFETY: closing the descriptor just made.
    unsafe { libc::close(host_fd) };
    let other = sh(&b.root, "python3 -c 'import ctypes; print(ctypes.CDLL(None).inotify_init1(0) >= 0)'").await;
    assert_eq!(other, "True", "another workspace can still make one");
    for w in [a, b] {
        p.destroy(&w.info.id).await.unwrap();
    }
}
