//! Starting a process without copying the agent's address space.
//!
//! `fork` duplicates the page tables of the whole agent (a multi-threaded
//! tokio process) and then pays copy-on-write faults in the agent for every
//! page either side touches before the child execs; both cost CPU on every
//! command. Here the child is a `clone(CLONE_VM | CLONE_VFORK)`: it borrows
//! the agent's memory on a stack of its own, the calling thread sleeps until
//! the child has exec'd (or failed), and the child does everything with raw
//! system calls on values prepared beforehand (no allocation, no locks, no
//! libc state), as `posix_spawn` does internally. Unlike `posix_spawn` it can
//! also set the credentials, the controlling terminal and the OOM score that
//! a workspace command needs, and it closes every descriptor beyond 2.

use std::ffi::{c_char, c_int, c_void, CString};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// What the child becomes. Every descriptor in `stdio` must be open; it
/// becomes descriptor 0, 1 and 2 of the child.
pub struct Spec {
    /// Paths to try in order (the program itself when it has a `/`, else
    /// each `PATH` entry joined with it).
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub stdio: [RawFd; 3],
    /// Makes descriptor 0 (a terminal) the controlling terminal.
    pub controlling_tty: bool,
    /// (uid, gid, supplementary groups) to switch to, as root.
    pub credentials: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
}

/// The candidates for `program` under `path` (execvp's search order).
pub fn candidates(program: &str, path: &str) -> io::Result<Vec<CString>> {
    let c = |s: String| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"));
    if program.contains('/') {
        return Ok(vec![c(program.to_string())?]);
    }
    path.split(':')
        .map(|dir| if dir.is_empty() { c(program.to_string()) } else { c(format!("{dir}/{program}")) })
        .collect()
}

struct Shared {
    candidates: Vec<*const c_char>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    cwd: *const c_char,
    stdio: [RawFd; 3],
    controlling_tty: bool,
    credentials: Option<(libc::uid_t, libc::gid_t)>,
    groups: Vec<libc::gid_t>,
    /// errno of the step that failed, written by the child before it exits.
    error: AtomicI32,
}

const STACK: usize = 64 * 1024;

thread_local! {
    /// The child's stack, kept per thread: a fresh 64 KiB per command meant
    /// an mmap, page faults and an munmap (with a TLB shootdown across the
    /// agent's threads) every time. Only this thread's spawn uses it, and
    /// this thread sleeps while the child runs on it.
    static CHILD_STACK: std::cell::RefCell<Option<Box<[std::mem::MaybeUninit<u8>]>>> =
        const { std::cell::RefCell::new(None) };
}

/// Starts the process; returns its pid. The caller reaps it.
pub fn spawn(spec: &Spec) -> io::Result<u32> {
    if spec.candidates.is_empty() || spec.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "nothing to execute"));
    }
    // Descriptors 0-2 of the agent may be the very ones being replaced:
    // a source below 3 is first copied above.
    let mut moved = Vec::new();
    let mut stdio = spec.stdio;
    for fd in stdio.iter_mut() {
        if *fd < 3 {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the caller keeps open.
            let copy = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) };
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            moved.push(copy);
            *fd = copy;
        }
    }
    let nul_terminated =
        |v: &[CString]| v.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let shared = Shared {
        candidates: spec.candidates.iter().map(|s| s.as_ptr()).collect(),
        argv: nul_terminated(&spec.argv),
        envp: nul_terminated(&spec.envp),
        cwd: spec.cwd.as_ptr(),
        stdio,
        controlling_tty: spec.controlling_tty,
        credentials: spec.credentials.as_ref().map(|(u, g, _)| (*u, *g)),
        groups: spec.credentials.as_ref().map(|(_, _, gs)| gs.clone()).unwrap_or_default(),
        error: AtomicI32::new(0),
    };
    // SAFETY: the stack pointer is the 16-byte aligned end of this thread's
    // stack buffer, borrowed for the whole call and used by nothing else
    // while the child runs (CLONE_VFORK: this thread resumes only once the
    // child has exec'd or exited). All signals are blocked
    // around clone so no handler of the agent runs on the borrowed memory;
    // the child resets dispositions and its mask before exec. `shared` and
    // everything it points to stay alive and unmodified until clone returns.
    let pid = CHILD_STACK.with(|cell| unsafe {
        let mut slot = cell.borrow_mut();
        let stack = slot.get_or_insert_with(|| vec![std::mem::MaybeUninit::<u8>::uninit(); STACK].into_boxed_slice());
        let top = stack.as_mut_ptr().add(STACK);
        let top = (top as usize & !15) as *mut c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &shared as *const Shared as *mut c_void,
        );
        let clone_err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            Err(clone_err)
        } else {
            Ok(pid)
        }
    });
    for fd in moved {
        // SAFETY: closing the copies made above, which nothing else holds.
        unsafe { libc::close(fd) };
    }
    let pid = pid?;
    match shared.error.load(Ordering::Acquire) {
        0 => Ok(pid as u32),
        // The child exited with 127 and will be reaped by the caller's reaper.
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The child: only raw system calls on prepared values until exec.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Shared` of the suspended parent thread, alive
    // until this child execs or exits. Every call below is a plain system
    // call on pointers into that structure or on integers.
    unsafe {
        let sh = &*(arg as *const Shared);
        let fail = |sh: &Shared| -> c_int {
            let e = *libc_errno();
            sh.error.store(if e == 0 { libc::EINVAL } else { e }, Ordering::Release);
            libc::syscall(libc::SYS_exit, 127);
            127
        };
        // Default dispositions (the agent's handlers and ignores must not
        // reach the command; exec keeps SIG_IGN), then no blocked signals.
        #[repr(C)]
        struct KernelSigaction {
            handler: usize,
            flags: u64,
            restorer: usize,
            mask: u64,
        }
        let dfl = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(libc::SYS_rt_sigaction, sig, &dfl as *const KernelSigaction, 0usize, 8usize);
            }
        }
        let empty: u64 = 0;
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &empty as *const u64, 0usize, 8usize);

        for (target, &fd) in sh.stdio.iter().enumerate() {
            if libc::syscall(libc::SYS_dup3, fd, target, 0) < 0 {
                return fail(sh);
            }
        }
        // Nothing else crosses: not the agent's sockets or other commands'
        // pipes (all close-on-exec) nor what the agent itself inherited
        // without it. Kernels before 5.9 lack close_range: then only
        // close-on-exec applies.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        if libc::syscall(libc::SYS_chdir, sh.cwd) < 0 {
            return fail(sh);
        }
        if libc::syscall(libc::SYS_setsid) < 0 {
            return fail(sh);
        }
        // The agent may be shielded from the OOM killer; its processes must
        // not be. Raising the score needs no privilege.
        let adj = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
            0,
        );
        if adj >= 0 {
            libc::syscall(libc::SYS_write, adj, b"0".as_ptr(), 1usize);
            libc::syscall(libc::SYS_close, adj);
        }
        if sh.controlling_tty && libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSCTTY, 0) < 0 {
            return fail(sh);
        }
        if let Some((uid, gid)) = sh.credentials {
            if libc::syscall(libc::SYS_setgroups, sh.groups.len(), sh.groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setgid, gid) < 0
                || libc::syscall(libc::SYS_setuid, uid) < 0
            {
                return fail(sh);
            }
        }
        // execvp's search: go on past "not here", remember "not allowed".
        let mut seen_eacces = false;
        for &path in &sh.candidates {
            libc::syscall(libc::SYS_execve, path, sh.argv.as_ptr(), sh.envp.as_ptr());
            match *libc_errno() {
                libc::EACCES => seen_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP => {}
                _ => return fail(sh),
            }
        }
        *libc_errno() = if seen_eacces { libc::EACCES } else { libc::ENOENT };
        fail(sh)
    }
}

/// errno of the calling thread (the child shares the parent thread's TLS).
fn libc_errno() -> *mut c_int {
    // SAFETY: returns the address of the calling thread's errno; no arguments.
    unsafe { libc::__errno_location() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn spec(cmd: &[&str], out: RawFd) -> Spec {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let fd = devnull.as_raw_fd();
        std::mem::forget(devnull);
        Spec {
            candidates: candidates(cmd[0], "/usr/bin:/bin").unwrap(),
            argv: cmd.iter().map(|a| CString::new(*a).unwrap()).collect(),
            envp: vec![CString::new("A=b").unwrap()],
            cwd: CString::new("/").unwrap(),
            stdio: [fd, out, out],
            controlling_tty: false,
            credentials: None,
        }
    }

    fn wait(pid: u32) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        status
    }

    #[test]
    fn runs_with_the_given_env_dir_and_stdout() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let pid = spawn(&spec(&["sh", "-c", "echo $A $(pwd) $$"], w.as_raw_fd())).unwrap();
        drop(w);
        let status = wait(pid);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(out.trim(), format!("b / {pid}"));
    }

    #[test]
    fn a_missing_program_is_enoent_and_a_directory_eacces() {
        let (_r, w) = nix::unistd::pipe().unwrap();
        let e = spawn(&spec(&["no-such-program-here"], w.as_raw_fd())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = spawn(&spec(&["/tmp"], w.as_raw_fd())).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn a_bad_directory_fails_before_exec() {
        let (_r, w) = nix::unistd::pipe().unwrap();
        let mut s = spec(&["true"], w.as_raw_fd());
        s.cwd = CString::new("/no/such/dir").unwrap();
        assert_eq!(spawn(&s).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn candidates_follow_path_unless_the_program_has_a_slash() {
        let c = candidates("ls", "/a::/b").unwrap();
        assert_eq!(
            c,
            vec![CString::new("/a/ls").unwrap(), CString::new("ls").unwrap(), CString::new("/b/ls").unwrap()]
        );
        assert_eq!(candidates("./x", "/a").unwrap(), vec![CString::new("./x").unwrap()]);
    }
}
