//! Privileges of a workspace's processes: a Docker-like capability set
//! (capabilities of the workspace's own user namespace, none of the host's)
//! and seccomp filters that deny what a container must not do. See
//! docs/local-provider.md for the profile and why each group is there.

use std::collections::{BTreeMap, HashSet};
use std::io;

use caps::{CapSet, Capability};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use warren_provider::seccomp::{DENIED, IO_URING, NS_FLAGS, PERSONALITIES};

/// Capabilities a workspace's root keeps (Docker's default set without
/// CAP_MKNOD: device nodes come only from warren's /dev).
pub const KEEP: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

fn syscall_nr(name: &str) -> Option<i64> {
    Some(match name {
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "bpf" => libc::SYS_bpf,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "acct" => libc::SYS_acct,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "reboot" => libc::SYS_reboot,
        "syslog" => libc::SYS_syslog,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "adjtimex" => libc::SYS_adjtimex,
        "quotactl" => libc::SYS_quotactl,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "perf_event_open" => libc::SYS_perf_event_open,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "userfaultfd" => libc::SYS_userfaultfd,
        "iopl" => libc::SYS_iopl,
        "ioperm" => libc::SYS_ioperm,
        "vhangup" => libc::SYS_vhangup,
        "fanotify_init" => libc::SYS_fanotify_init,
        "fsopen" => libc::SYS_fsopen,
        "fsmount" => libc::SYS_fsmount,
        "fsconfig" => libc::SYS_fsconfig,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "fspick" => libc::SYS_fspick,
        "mount_setattr" => libc::SYS_mount_setattr,
        "pidfd_getfd" => libc::SYS_pidfd_getfd,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "kcmp" => libc::SYS_kcmp,
        "uselib" => libc::SYS_uselib,
        "ustat" => libc::SYS_ustat,
        "sysfs" => libc::SYS_sysfs,
        "_sysctl" => libc::SYS__sysctl,
        "nfsservctl" => libc::SYS_nfsservctl,
        "afs_syscall" => libc::SYS_afs_syscall,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        _ => return None,
    })
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, action: SeccompAction) -> io::Result<BpfProgram> {
    let arch: TargetArch =
        std::env::consts::ARCH.try_into().map_err(|e| io::Error::other(format!("seccomp arch: {e:?}")))?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch)
        .map_err(|e| io::Error::other(format!("seccomp filter: {e}")))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| io::Error::other(format!("seccomp compile: {e}")))
}

fn rule(conds: Vec<SeccompCondition>) -> io::Result<SeccompRule> {
    SeccompRule::new(conds).map_err(|e| io::Error::other(format!("seccomp rule: {e}")))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> io::Result<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| io::Error::other(format!("seccomp condition: {e}")))
}

/// The filters, evaluated by the kernel together (the strictest answer
/// wins): x32 system calls refused (their numbers would slip past rules
/// written for x86-64) and any other architecture killed; EPERM for the deny
/// list, namespace-creating clone(), io_uring unless `io_uring`, and
/// personality() outside [`PERSONALITIES`]; ENOSYS for clone3, whose flags
/// live in memory a filter cannot read (libc then falls back to clone,
/// which the first filter checks).
pub fn filters(io_uring: bool) -> io::Result<Vec<BpfProgram>> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let extra: &[&str] = if io_uring { &[] } else { IO_URING };
    for name in DENIED.iter().chain(extra) {
        if let Some(nr) = syscall_nr(name) {
            deny.insert(nr, vec![]);
        }
    }
    let mut clone_rules = Vec::new();
    for flag in NS_FLAGS {
        clone_rules.push(rule(vec![cond(0, SeccompCmpOp::MaskedEq(*flag), *flag)?])?);
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let not_allowed: Vec<SeccompCondition> =
        PERSONALITIES.iter().map(|p| cond(0, SeccompCmpOp::Ne, *p)).collect::<io::Result<_>>()?;
    deny.insert(libc::SYS_personality, vec![rule(not_allowed)?]);
    let eperm = compile(deny, SeccompAction::Errno(libc::EPERM as u32))?;
    let enosys = compile([(libc::SYS_clone3, vec![])].into(), SeccompAction::Errno(libc::ENOSYS as u32))?;
    let mut out = vec![eperm, enosys];
    out.extend(foreign_abis());
    Ok(out)
}

/// On x86-64: refuse (EPERM) every x32 system call, whose numbers carry
/// bit 30, and kill a process that uses any other architecture's calling
/// convention (i386 `int 0x80`).
#[cfg(target_arch = "x86_64")]
fn foreign_abis() -> Vec<BpfProgram> {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_JEQ_K: u16 = 0x05 | 0x10;
    const BPF_JSET_K: u16 = 0x05 | 0x40;
    const BPF_RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![vec![
        ins(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        ins(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(BPF_RET_K, 0, 0, RET_KILL_PROCESS),
        ins(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        ins(BPF_JSET_K, 0, 1, X32_SYSCALL_BIT),
        ins(BPF_RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
        ins(BPF_RET_K, 0, 0, RET_ALLOW),
    ]]
}

#[cfg(not(target_arch = "x86_64"))]
fn foreign_abis() -> Vec<BpfProgram> {
    Vec::new()
}

/// Installs one filter without setting no_new_privs (seccompiler's
/// `apply_filter` sets it): allowed while the caller holds CAP_SYS_ADMIN in
/// its user namespace.
fn install(prog: &BpfProgram) -> io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const seccompiler::sock_filter,
    }
    let len = libc::c_ushort::try_from(prog.len()).map_err(|_| io::Error::other("seccomp filter too long"))?;
    let fprog = SockFprog { len, filter: prog.as_ptr() };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `fprog` and the
    // instructions it points to, both alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const SockFprog) };
    if r != 0 {
        return Err(io::Error::other(format!("seccomp install: {}", io::Error::last_os_error())));
    }
    Ok(())
}

/// Drops capabilities to [`KEEP`] and, if asked, installs the seccomp
/// filters. Inherited by everything the agent starts. No `no_new_privs`:
/// setuid programs (sudo in an image) must work inside the workspace's user
/// namespace, where they can gain nothing beyond its root; the filters are
/// installed while the process still holds CAP_SYS_ADMIN there.
pub fn drop_privileges(seccomp: bool, io_uring: bool) -> io::Result<()> {
    let keep: HashSet<Capability> = KEEP.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| io::Error::other(format!("drop {cap}: {e}")))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| io::Error::other(format!("clear ambient: {e}")))?;
    if seccomp {
        for f in filters(io_uring)? {
            install(&f)?;
        }
    }
    caps::set(None, CapSet::Inheritable, &HashSet::new()).map_err(|e| io::Error::other(format!("inheritable: {e}")))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| io::Error::other(format!("effective: {e}")))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| io::Error::other(format!("permitted: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denied_name_maps_to_a_syscall_and_filters_compile() {
        for name in DENIED {
            assert!(syscall_nr(name).is_some(), "{name} has no number");
        }
        for name in IO_URING {
            assert!(syscall_nr(name).is_some(), "{name} has no number");
        }
        assert!(filters(false).unwrap().len() >= 2);
        assert!(!KEEP.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!KEEP.contains(&Capability::CAP_SYS_PTRACE));
        assert!(!KEEP.contains(&Capability::CAP_SYS_MODULE));
        assert!(!KEEP.contains(&Capability::CAP_MKNOD));
    }

    /// Runs `f` in a forked child under the filters (with no_new_privs, as
    /// an unprivileged test would need) and returns its exit code.
    fn under_filters(io_uring: bool, f: fn() -> i32) -> i32 {
        let progs = filters(io_uring).unwrap();
        // SAFETY: the child only makes system calls and exits.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                for p in &progs {
                    if install(p).is_err() {
                        // SAFETY: leave the forked child at once.
                        unsafe { libc::_exit(90) }
                    }
                }
                let code = f();
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "child killed: status {status}");
                libc::WEXITSTATUS(status)
            }
        }
    }

    fn errno_of(r: libc::c_long) -> i32 {
        if r >= 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    }

    #[test]
    fn x32_calls_io_uring_and_odd_personalities_are_refused() {
        // SAFETY (all closures): raw system calls with integer arguments.
        // An x32 getpid: EPERM from the filter (a kernel without x32 says ENOSYS).
        let x32 = || errno_of(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) });
        assert_eq!(under_filters(false, x32), libc::EPERM);
        let uring = || errno_of(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, 0usize) });
        assert_eq!(under_filters(false, uring), libc::EPERM);
        // Allowed, the same call reaches the kernel (EFAULT for the null params).
        assert_ne!(under_filters(true, uring), libc::EPERM);
        let odd = || errno_of(unsafe { libc::syscall(libc::SYS_personality, 0x0040_0000usize) });
        assert_eq!(under_filters(false, odd), libc::EPERM);
        let query = || errno_of(unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffusize) });
        assert_eq!(under_filters(false, query), 0);
        let keyctl = || errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) });
        assert_eq!(under_filters(false, keyctl), libc::EPERM);
        // Positive control: getpid itself works under the filters.
        let pid = || errno_of(unsafe { libc::syscall(libc::SYS_getpid) });
        assert_eq!(under_filters(false, pid), 0);
    }
}
