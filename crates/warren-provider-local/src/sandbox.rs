//! What `warren-sandbox` does: from a fresh single-threaded process, build
//! the workspace (namespaces, mounts, limits, privileges) and exec the agent
//! as its PID 1. The helper's first process stays behind as a tiny shim that
//! waits for that PID 1, so the workspace's init always has a parent that
//! reaps it.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::idmap::{self, IdRange};

/// Everything the helper needs, passed as JSON on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub id: String,
    /// Workspace directory: `rootfs/` and `scratch/` mount points, `agent.sock`.
    pub dir: PathBuf,
    /// Read-only lower layers, topmost first.
    pub layers: Vec<PathBuf>,
    /// Host directories bind-mounted read-only at the same path.
    pub host_binds: Vec<PathBuf>,
    /// Size of the writable layer (tmpfs), bytes.
    pub disk_bytes: u64,
    /// Size of /tmp (tmpfs), bytes.
    pub tmp_bytes: u64,
    pub agent: PathBuf,
    pub agent_args: Vec<String>,
    pub agent_env: Vec<(String, String)>,
    /// `cgroup.procs` files to join before the namespaces are made.
    pub cgroup_procs: Vec<PathBuf>,
    pub seccomp: bool,
    /// Allow io_uring (off by default: a large kernel surface).
    #[serde(default)]
    pub io_uring: bool,
    /// The workspace's user-namespace id range.
    pub ids: IdRange,
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> io::Result<T> {
    r.map_err(|e| io::Error::other(format!("{}: {e}", what())))
}

/// The helper's main: prints `ok <pid>` (or `error <text>`) on stdout, then
/// waits for the workspace's init and exits with its status.
pub fn helper_main() -> i32 {
    let mut raw = String::new();
    if let Err(e) = io::stdin().read_to_string(&mut raw) {
        println!("error reading config: {e}");
        return 2;
    }
    let cfg: SandboxConfig = match serde_json::from_str(&raw) {
        Ok(c) => c,
        Err(e) => {
            println!("error bad config: {e}");
            return 2;
        }
    };
    match launch(&cfg) {
        Ok(pid) => {
            println!("ok {pid}");
            let _ = io::stdout().flush();
            // Detach from the provider's pipes; the shim only waits now.
            if let Ok(null) = fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                let fd = null.into_raw_fd();
                // SAFETY: dup2 onto the standard descriptors of this process.
                unsafe {
                    libc::dup2(fd, 0);
                    libc::dup2(fd, 1);
                    libc::dup2(fd, 2);
                }
            }
            loop {
                match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return c,
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return 1,
                }
            }
        }
        Err(e) => {
            println!("error {e}");
            1
        }
    }
}

fn launch(cfg: &SandboxConfig) -> io::Result<i32> {
    // The agent's listening socket is bound here, in the host's mount
    // namespace, so the host reaches it while the workspace cannot see it.
    let sock = cfg.dir.join("agent.sock");
    let _ = fs::remove_file(&sock);
    let listener = ctx(std::os::unix::net::UnixListener::bind(&sock), || format!("bind {}", sock.display()))?;
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600))?;
    for procs in &cfg.cgroup_procs {
        ctx(fs::write(procs, std::process::id().to_string()), || format!("join cgroup {}", procs.display()))?;
    }
    // A privileged write also sets the floor (oom_score_adj_min) that the
    // workspace inherits: nothing in it can go below 0 again.
    ctx(fs::write("/proc/self/oom_score_adj", "0"), || "oom_score_adj of the workspace".into())?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Every namespace is created together with the user namespace, so it
    // owns them all: root inside has capabilities over its own network,
    // mounts and processes, none over the host's.
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWCGROUP;
    // The kernel counts per-user resources (inotify instances and watches,
    // queued signals, message queues, user namespaces...) against a user
    // namespace's owner as well: the workspace's own first host id owns it,
    // not the host's root, so one workspace cannot starve the host or
    // another. Only the effective ids change for the clone; the real and
    // saved ids stay 0 and bring the host's privileges back right after.
    // The workspace's root builds its part of the tree from here, by
    // relative paths: the way to the data directory may be closed to its
    // ids (a 0700 directory of the host's root).
    ctx(nix::unistd::chdir(&cfg.dir), || format!("chdir {}", cfg.dir.display()))?;
    let owner = cfg.ids.host_id(0);
    ctx(nix::unistd::setresgid(keep_gid(), nix::unistd::Gid::from_raw(owner), keep_gid()), || "setresgid".into())?;
    if let Err(e) = nix::unistd::setresuid(keep_uid(), nix::unistd::Uid::from_raw(owner), keep_uid()) {
        let _ = nix::unistd::setresgid(keep_gid(), nix::unistd::Gid::from_raw(0), keep_gid());
        return Err(io::Error::other(format!("setresuid: {e}")));
    }
    // SAFETY: the helper is single-threaded; clone with a null stack behaves
    // like fork (the child runs on a copy of this stack), so the child may
    // run arbitrary code.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    };
    let clone_error = io::Error::last_os_error();
    if pid != 0 {
        // Back to the host's root (the kernel restores the capabilities).
        let restored = nix::unistd::setresuid(keep_uid(), nix::unistd::Uid::from_raw(0), keep_uid())
            .and_then(|()| nix::unistd::setresgid(keep_gid(), nix::unistd::Gid::from_raw(0), keep_gid()));
        if let Err(e) = restored {
            if pid > 0 {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            return Err(io::Error::other(format!("restoring the helper's ids: {e}")));
        }
    }
    if pid < 0 {
        return Err(io::Error::other(format!("clone: {clone_error}")));
    }
    if pid == 0 {
        drop(err_r);
        drop(go_w);
        let mut go = [0u8; 1];
        let mut r = fs::File::from(go_r);
        if r.read_exact(&mut go).is_err() || go[0] != b'g' {
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(1) }
        }
        let err = init(cfg, listener.as_raw_fd()).unwrap_err();
        let mut w = fs::File::from(err_w);
        let _ = w.write_all(err.to_string().as_bytes());
        // SAFETY: leave without running the parent's exit handlers.
        unsafe { libc::_exit(127) }
    }
    let child = Pid::from_raw(pid as i32);
    drop(err_w);
    drop(go_r);
    drop(listener);
    let abort = |e: io::Error| {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
        e
    };
    prepare(cfg, child.as_raw()).map_err(abort)?;
    fs::File::from(go_w).write_all(b"g").map_err(abort)?;
    // This process stays as the workspace's reaping shim: the last the
    // kernel's OOM killer picks.
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");
    let mut msg = String::new();
    let _ = fs::File::from(err_r).read_to_string(&mut msg);
    if !msg.is_empty() {
        return Err(abort(io::Error::other(msg)));
    }
    Ok(child.as_raw())
}

/// "Leave this id as it is" for setresuid/setresgid.
fn keep_uid() -> nix::unistd::Uid {
    nix::unistd::Uid::from_raw(u32::MAX)
}

fn keep_gid() -> nix::unistd::Gid {
    nix::unistd::Gid::from_raw(u32::MAX)
}

/// From the host's side: maps the workspace's ids and builds its root in
/// its mount namespace (idmapped layers and host directories need the
/// host's privileges; everything else the workspace's root does itself).
fn prepare(cfg: &SandboxConfig, child: i32) -> io::Result<()> {
    for f in ["uid_map", "gid_map"] {
        ctx(fs::write(format!("/proc/{child}/{f}"), cfg.ids.map_line()), || format!("write {f}"))?;
    }
    let userns = ctx(fs::File::open(format!("/proc/{child}/ns/user")), || "open user namespace".into())?;
    let own = ctx(fs::File::open("/proc/self/ns/mnt"), || "open own mount namespace".into())?;
    let theirs = ctx(fs::File::open(format!("/proc/{child}/ns/mnt")), || "open mount namespace".into())?;
    ctx(nix::sched::setns(&theirs, CloneFlags::CLONE_NEWNS), || "enter the workspace's mount namespace".into())?;
    let built = build_root(cfg, userns.as_raw_fd());
    ctx(nix::sched::setns(&own, CloneFlags::CLONE_NEWNS), || "return to the host's mount namespace".into())?;
    built
}

/// Mount points the workspace needs on top of any image.
const MOUNT_POINTS: &[&str] = &["proc", "sys", "dev", "tmp", ".warren"];

/// Runs in the workspace's mount namespace with the host's privileges.
fn build_root(cfg: &SandboxConfig, userns: i32) -> io::Result<()> {
    let rootfs = cfg.dir.join("rootfs");
    let scratch = cfg.dir.join("scratch");
    fs::create_dir_all(&rootfs)?;
    fs::create_dir_all(&scratch)?;
    mnt(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;

    // Writable layer: a size-limited tmpfs, so a disk filler fills only its
    // own; idmapped, so files inside keep ordinary owners on it.
    let mut points: Vec<PathBuf> = MOUNT_POINTS.iter().map(PathBuf::from).collect();
    points.extend(cfg.host_binds.iter().map(|h| h.strip_prefix("/").unwrap_or(h).to_path_buf()));
    let rw = idmap::Attrs { read_only: false, nosuid: true, nodev: true };
    idmap::tmpfs_idmapped(&scratch, cfg.disk_bytes, rw, userns, |t| {
        for d in ["upper", "work"] {
            t.mkdir(Path::new(d))?;
        }
        // Mount points are made in the upper layer before the overlay
        // exists (the host's own ids are not mapped in the workspace).
        for p in &points {
            t.mkdir_all(&Path::new("upper").join(p))?;
        }
        t.create_file(Path::new("upper/.warren/agent"))
    })?;

    let ro = idmap::Attrs { read_only: true, nosuid: true, nodev: true };
    let mut lower = Vec::with_capacity(cfg.layers.len());
    for (i, layer) in cfg.layers.iter().enumerate() {
        let target = cfg.dir.join("lower").join(i.to_string());
        fs::create_dir_all(&target)?;
        idmap::bind_idmapped(layer, &target, ro, userns)?;
        lower.push(target);
    }
    let opts = overlay_options(&lower, &scratch)?;
    // overlayfs works on its layers with the credentials of whoever mounted
    // it; through the idmapped upper layer only the workspace's ids exist,
    // so mount it as the workspace's root (file system ids), keeping the
    // host's capabilities.
    let fs_root = cfg.ids.host_id(0);
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(fs_root));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(fs_root));
    let mounted = caps::read(None, caps::CapSet::Permitted)
        .map_err(|e| io::Error::other(format!("read capabilities: {e}")))
        .and_then(|p| {
            caps::set(None, caps::CapSet::Effective, &p)
                .map_err(|e| io::Error::other(format!("raise capabilities: {e}")))
        })
        .and_then(|()| mnt(Some("overlay"), &rootfs, Some("overlay"), MsFlags::MS_NODEV, Some(&opts)));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
    mounted?;

    for host in &cfg.host_binds {
        let target = rootfs.join(host.strip_prefix("/").unwrap_or(host));
        // File systems that cannot be idmapped (9p, NFS, …) are bound as
        // they are: read-only, their owners shown as nobody inside.
        if idmap::bind_idmapped(host, &target, ro, userns).is_err() {
            mnt(Some(&host.display().to_string()), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            mnt(
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                None,
            )?;
        }
    }

    // The agent, read-only at a fixed path.
    let agent_target = rootfs.join(".warren/agent");
    mnt(Some(&cfg.agent.display().to_string()), &agent_target, None, MsFlags::MS_BIND, None)?;
    mnt(
        None,
        &agent_target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;
    Ok(())
}

/// Makes the overlay mount options over `layers` (topmost first), with
/// `upper` and `work` in `scratch` (the writable layer's tmpfs). The native
/// and gVisor runtimes assemble the root alike.
pub(crate) fn overlay_options(layers: &[PathBuf], scratch: &Path) -> io::Result<String> {
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&work)?;
    let lower: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
    Ok(format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display()))
}

fn mnt(src: Option<&str>, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> io::Result<()> {
    ctx(mount(src, target, fstype, flags, data), || format!("mount {:?} on {}", fstype.or(src), target.display()))
}

/// Paths of /proc and /sys hidden from the workspace (the OCI runtime
/// spec's defaults, as runc and Docker apply them).
const MASKED: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Paths of /proc made read-only.
const READ_ONLY: &[&str] = &["proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger"];

/// Runs as PID 1 of the new namespaces, root of its own user namespace;
/// only returns on failure.
fn init(cfg: &SandboxConfig, listen_fd: i32) -> io::Result<std::convert::Infallible> {
    // The host has written the id maps: become root inside.
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    ctx(nix::unistd::setresgid(root_gid, root_gid, root_gid), || "setresgid".into())?;
    ctx(nix::unistd::setgroups(&[]), || "setgroups".into())?;
    ctx(nix::unistd::setresuid(root_uid, root_uid, root_uid), || "setresuid".into())?;
    // Relative to the workspace directory, the inherited working directory.
    let rootfs = PathBuf::from("rootfs");
    let nosuid_dev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let plain = nosuid_dev | MsFlags::MS_NOEXEC;

    // /proc of the new pid namespace, with the host's knobs masked or
    // read-only; the workspace's own network sysctls stay writable.
    let proc_dir = rootfs.join("proc");
    mnt(Some("proc"), &proc_dir, Some("proc"), plain, None)?;
    // /sys, read-only (sysfs of its own network namespace).
    let sys = rootfs.join("sys");
    let _ = mount(Some("sysfs"), &sys, Some("sysfs"), plain | MsFlags::MS_RDONLY, None::<&str>);
    for p in MASKED {
        mask(&rootfs.join(p))?;
    }
    for p in READ_ONLY {
        read_only(&rootfs.join(p), true)?;
    }
    read_only(&rootfs.join("proc/sys/net"), false)?;

    make_dev(&rootfs.join("dev"))?;

    let tmp = rootfs.join("tmp");
    mnt(Some("tmpfs"), &tmp, Some("tmpfs"), nosuid_dev, Some(&format!("size={},mode=1777", cfg.tmp_bytes)))?;

    ctx(nix::unistd::sethostname(&cfg.id), || "sethostname".into())?;
    let _ = fs::write(rootfs.join("etc/hostname"), format!("{}\n", cfg.id));
    let _ = fs::write(
        rootfs.join("etc/hosts"),
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n", cfg.id),
    );
    loopback_up()?;

    // pivot_root into the workspace and drop the host's tree.
    ctx(nix::unistd::chdir(&rootfs), || "chdir rootfs".into())?;
    ctx(nix::unistd::pivot_root(".", "."), || "pivot_root".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || "detach old root".into())?;
    ctx(nix::unistd::chdir("/"), || "chdir /".into())?;

    // The listening socket becomes fd 3 for the agent.
    if listen_fd != 3 {
        ctx(nix::unistd::dup2(listen_fd, 3), || "dup2 listener".into())?;
    }
    // SAFETY: clear close-on-exec on fd 3 so the agent inherits it.
    unsafe {
        libc::fcntl(3, libc::F_SETFD, 0);
    }

    crate::security::drop_privileges(cfg.seccomp, cfg.io_uring)?;

    let prog = CString::new("/.warren/agent").map_err(io::Error::other)?;
    let mut argv = vec![prog.clone(), CString::new("--listen").map_err(io::Error::other)?];
    argv.push(CString::new("fd://3").map_err(io::Error::other)?);
    for a in &cfg.agent_args {
        argv.push(CString::new(a.as_str()).map_err(io::Error::other)?);
    }
    let mut envp =
        vec![CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .map_err(io::Error::other)?];
    for (k, v) in &cfg.agent_env {
        envp.push(CString::new(format!("{k}={v}")).map_err(io::Error::other)?);
    }
    let e = nix::unistd::execve(&prog, &argv, &envp).unwrap_err();
    Err(io::Error::other(format!("exec agent: {e}")))
}

/// Hides a path: /dev/null over a file, an empty read-only tmpfs over a
/// directory; a path this kernel does not have is skipped.
fn mask(p: &Path) -> io::Result<()> {
    let Ok(md) = fs::symlink_metadata(p) else { return Ok(()) };
    if md.is_dir() {
        mnt(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=0555"),
        )
    } else {
        mnt(Some("/dev/null"), p, None, MsFlags::MS_BIND, None)
    }
}

/// Binds a path over itself, read-only (or read-write again under a
/// read-only parent).
fn read_only(p: &Path, ro: bool) -> io::Result<()> {
    if fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mnt(Some(&p.display().to_string()), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    let mut flags =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if ro {
        flags |= MsFlags::MS_RDONLY;
    }
    mnt(None, p, None, flags, None)
}

/// A minimal /dev: null, zero, full, random, urandom, tty (bound from the
/// host's /dev: a user namespace cannot make device nodes), a private
/// devpts with ptmx, /dev/shm, and the usual symlinks.
fn make_dev(dev: &Path) -> io::Result<()> {
    mnt(Some("tmpfs"), dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("size=64k,mode=0755"))?;
    for name in DEVICES {
        let p = dev.join(name);
        fs::write(&p, b"")?;
        mnt(Some(&format!("/dev/{name}")), &p, None, MsFlags::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    fs::create_dir_all(&pts)?;
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))?;
    let shm = dev.join("shm");
    fs::create_dir_all(&shm)?;
    mnt(Some("tmpfs"), &shm, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("size=64m,mode=1777"))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    Ok(())
}

/// The device nodes a workspace gets (and the device cgroup allows, with
/// ptmx and the pts range).
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Brings `lo` up in the new network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket used only for the interface ioctls below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned here.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
