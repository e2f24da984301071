//! The `gvisor` runtime of the local backend: the same templates, agent and
//! cgroup limits as the native runtime, with gVisor's user-space kernel
//! (Debian's `runsc`) between the workspace and the host.
//!
//! - **Root**: assembled on the host as the native helper does it inside its
//!   namespace: a size-limited tmpfs (`scratch`) holding the overlay's upper
//!   layer, and the overlay of the template's layers at `rootfs`. The host's
//!   read-only system directories of the `base` template, the agent (at
//!   `/.warren/agent`, read-only) and a private `/tmp` are OCI mounts.
//! - **Agent**: listens on a Unix socket in a host directory bound at
//!   `/run/warren`; `--host-uds=create` lets the sandbox create a socket the
//!   host can connect to (the agent tolerates the refused chmod there).
//! - **Limits**: runsc runs with `--ignore-cgroups` inside the workspace's
//!   own cgroups (created by the provider, entered before exec), so CPU,
//!   memory, pids, the freezer (pause) and the usage figures work as for
//!   the native runtime.
//! - **Network**: `--network=none` (loopback inside the sandbox only).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{umount2, MntFlags};

/// What one gVisor workspace needs.
pub struct GvisorLaunch<'a> {
    pub runsc: &'a Path,
    /// runsc's state directory (`--root`).
    pub state: &'a Path,
    pub id: &'a str,
    pub dir: &'a Path,
    /// Lower layers, top first.
    pub layers: &'a [PathBuf],
    pub host_binds: &'a [PathBuf],
    pub disk_bytes: u64,
    pub tmp_bytes: u64,
    pub agent: &'a Path,
    pub agent_args: &'a [String],
    pub agent_env: &'a [(String, String)],
    /// `cgroup.procs` files the sandbox's processes go into.
    pub cgroup_procs: &'a [PathBuf],
}

/// Where the agent's socket appears on the host.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join("sock").join("agent.sock")
}

fn runsc(runsc: &Path, state: &Path) -> Command {
    let mut c = Command::new(runsc);
    c.arg("--root").arg(state).args(["--host-uds=create", "--network=none", "--ignore-cgroups"]);
    c
}

fn mount(src: &str, target: &Path, fstype: &str, data: &str) -> io::Result<()> {
    nix::mount::mount(Some(src), target, Some(fstype), nix::mount::MsFlags::empty(), Some(data))
        .map_err(|e| io::Error::other(format!("mount {fstype} on {}: {e}", target.display())))
}

/// Builds the bundle and starts the sandbox; returns the sandbox's pid.
pub fn launch(l: &GvisorLaunch<'_>) -> io::Result<i32> {
    let (rootfs, scratch, sock) = (l.dir.join("rootfs"), l.dir.join("scratch"), l.dir.join("sock"));
    for d in [&rootfs, &scratch, &sock] {
        std::fs::create_dir_all(d)?;
    }
    mount("tmpfs", &scratch, "tmpfs", &format!("size={},mode=0755", l.disk_bytes))?;
    let opts = crate::sandbox::overlay_options(l.layers, &scratch)?;
    mount("overlay", &rootfs, "overlay", &opts)?;

    let mut mounts = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", format!("size={}", l.tmp_bytes)]}),
        serde_json::json!({"destination": "/.warren/agent", "type": "bind", "source": l.agent,
            "options": ["rbind", "ro"]}),
        serde_json::json!({"destination": "/run/warren", "type": "bind", "source": sock, "options": ["rbind", "rw"]}),
    ];
    for host in l.host_binds {
        mounts.push(serde_json::json!({"destination": host, "type": "bind", "source": host,
            "options": ["rbind", "ro"]}));
    }
    let mut args = vec!["/.warren/agent".to_string(), "--listen".into(), "unix:///run/warren/agent.sock".into()];
    args.extend(l.agent_args.iter().cloned());
    let mut env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(l.agent_env.iter().map(|(k, v)| format!("{k}={v}")));
    // The agent is the workspace's root: it switches users for commands and
    // acts as root inside. Docker's default set, inside gVisor's kernel.
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW",
        "CAP_SYS_CHROOT",
        "CAP_MKNOD",
        "CAP_AUDIT_WRITE",
        "CAP_SETFCAP",
    ];
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": args, "env": env, "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}},
        "root": {"path": rootfs, "readonly": false},
        "hostname": l.id,
        "mounts": mounts,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "mount"}]},
    });
    std::fs::write(l.dir.join("config.json"), serde_json::to_vec_pretty(&config).map_err(io::Error::other)?)?;

    // runsc and everything it starts join the workspace's cgroups.
    let procs: Vec<CString> = l
        .cgroup_procs
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    let log = std::fs::File::create(l.dir.join("runsc.log"))?;
    let mut cmd = runsc(l.runsc, l.state);
    cmd.args(["run", "--detach", "--bundle"]).arg(l.dir).arg(l.id);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (open, write, close) on C strings built
    // before the fork or static.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(io::Error::last_os_error());
                }
            }
            // The sandbox and everything in it start at oom_score_adj 0 and
            // can never go below (the server may run shielded at -900).
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
    let status = cmd.status()?;
    let log_tail = || {
        let log = std::fs::read_to_string(l.dir.join("runsc.log")).unwrap_or_default();
        log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
    };
    if !status.success() {
        return Err(io::Error::other(format!("runsc run failed ({status}): {}", log_tail())));
    }
    let out = runsc(l.runsc, l.state).args(["state", l.id]).output()?;
    let state: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| io::Error::other(format!("runsc state {}: {e}", l.id)))?;
    state["pid"]
        .as_i64()
        .filter(|p| *p > 0)
        .map(|p| p as i32)
        .ok_or_else(|| io::Error::other(format!("the sandbox {} is {}: {}", l.id, state["status"], log_tail())))
}

/// Removes the sandbox's runsc state and unmounts its root (best effort;
/// the sandbox's processes are already dead or are killed by the caller).
pub fn teardown(runsc_bin: &Path, state: &Path, id: &str, dir: &Path) {
    let _ =
        runsc(runsc_bin, state).args(["delete", "--force", id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    for m in ["rootfs", "scratch"] {
        let _ = umount2(&dir.join(m), MntFlags::MNT_DETACH);
    }
}

/// Whether `runsc` can be run at all (for a clear error at start-up).
pub fn check(runsc_bin: &Path) -> io::Result<String> {
    let out = Command::new(runsc_bin).arg("--version").output()?;
    let v = String::from_utf8_lossy(&out.stdout);
    Ok(v.lines().next().unwrap_or("runsc").trim().to_string())
}
