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
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};

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
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    ctx(
        unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWCGROUP,
        ),
        || "unshare".into(),
    )?;
    // SAFETY: the helper is single-threaded, so the child may run arbitrary
    // code after fork.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(err_r);
            let err = init(cfg, listener.as_raw_fd()).unwrap_err();
            let mut w = fs::File::from(err_w);
            let _ = w.write_all(err.to_string().as_bytes());
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(err_w);
            drop(listener);
            let mut msg = String::new();
            let _ = fs::File::from(err_r).read_to_string(&mut msg);
            if !msg.is_empty() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(io::Error::other(msg));
            }
            Ok(child.as_raw())
        }
    }
}

/// Makes `upper` and `work` in `scratch` (the writable layer's tmpfs) and
/// returns the overlay mount options over `layers` (topmost first). The
/// native and gVisor runtimes assemble the root alike.
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

/// Runs as PID 1 of the new namespaces; only returns on failure.
fn init(cfg: &SandboxConfig, listen_fd: i32) -> io::Result<std::convert::Infallible> {
    let rootfs = cfg.dir.join("rootfs");
    let scratch = cfg.dir.join("scratch");
    fs::create_dir_all(&rootfs)?;
    fs::create_dir_all(&scratch)?;
    mnt(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;

    // Writable layer: a size-limited tmpfs, so a disk filler fills only its own.
    let nosuid_dev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mnt(Some("tmpfs"), &scratch, Some("tmpfs"), nosuid_dev, Some(&format!("size={},mode=0755", cfg.disk_bytes)))?;
    let opts = overlay_options(&cfg.layers, &scratch)?;
    mnt(Some("overlay"), &rootfs, Some("overlay"), MsFlags::empty(), Some(&opts))?;

    for host in &cfg.host_binds {
        let rel = host.strip_prefix("/").unwrap_or(host);
        let target = rootfs.join(rel);
        fs::create_dir_all(&target)?;
        mnt(Some(&host.display().to_string()), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        mnt(
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None,
        )?;
    }

    // /proc of the new pid namespace; /sys read-only.
    let proc_dir = rootfs.join("proc");
    fs::create_dir_all(&proc_dir)?;
    mnt(Some("proc"), &proc_dir, Some("proc"), nosuid_dev | MsFlags::MS_NOEXEC, None)?;
    let sys = rootfs.join("sys");
    fs::create_dir_all(&sys)?;
    let _ =
        mount(Some("sysfs"), &sys, Some("sysfs"), nosuid_dev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY, None::<&str>);

    make_dev(&rootfs.join("dev"))?;

    let tmp = rootfs.join("tmp");
    fs::create_dir_all(&tmp)?;
    mnt(Some("tmpfs"), &tmp, Some("tmpfs"), nosuid_dev, Some(&format!("size={},mode=1777", cfg.tmp_bytes)))?;

    // The agent, read-only at a fixed path.
    let warren_dir = rootfs.join(".warren");
    fs::create_dir_all(&warren_dir)?;
    let agent_target = warren_dir.join("agent");
    fs::write(&agent_target, b"")?;
    mnt(Some(&cfg.agent.display().to_string()), &agent_target, None, MsFlags::MS_BIND, None)?;
    mnt(
        None,
        &agent_target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        None,
    )?;

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
    // Shield the agent from the OOM killer; it resets its children to 0.
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");

    crate::security::drop_privileges(cfg.seccomp)?;

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

/// A minimal /dev: null, zero, full, random, urandom, tty, a private devpts,
/// /dev/shm, and the usual symlinks.
fn make_dev(dev: &Path) -> io::Result<()> {
    fs::create_dir_all(dev)?;
    mnt(Some("tmpfs"), dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("size=64k,mode=0755"))?;
    for (name, major, minor) in
        [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
    {
        let p = dev.join(name);
        ctx(mknod(&p, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(major, minor)), || {
            format!("mknod {name}")
        })?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666))?;
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
