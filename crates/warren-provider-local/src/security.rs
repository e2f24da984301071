//! Privileges of a workspace's processes: a Docker-like capability set,
//! no_new_privs, and a seccomp filter that denies what a container must not do.

use std::collections::{BTreeMap, HashSet};
use std::io;

use caps::{CapSet, Capability};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Capabilities a workspace's root keeps (Docker's default set).
pub const KEEP: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
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

/// System calls denied with EPERM: mounting, namespaces, keyrings, BPF,
/// kexec and modules, time, tracing of the kernel, swap, reboot.
pub const DENIED: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "quotactl",
    "lookup_dcookie",
    "perf_event_open",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "iopl",
    "ioperm",
    "vhangup",
    "fanotify_init",
    "fsopen",
    "fsmount",
    "fsconfig",
    "move_mount",
    "open_tree",
    "fspick",
    "mount_setattr",
    "pidfd_getfd",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
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
        _ => return None,
    })
}

/// clone(2) flags that would create namespaces.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, action: SeccompAction) -> io::Result<BpfProgram> {
    let arch: TargetArch =
        std::env::consts::ARCH.try_into().map_err(|e| io::Error::other(format!("seccomp arch: {e:?}")))?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch)
        .map_err(|e| io::Error::other(format!("seccomp filter: {e}")))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| io::Error::other(format!("seccomp compile: {e}")))
}

/// The two filters: EPERM for the deny list and namespace-creating clone();
/// ENOSYS for clone3, whose flags live in memory a filter cannot read (libc
/// then falls back to clone, which the first filter checks).
pub fn filters() -> io::Result<Vec<BpfProgram>> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in DENIED {
        if let Some(nr) = syscall_nr(name) {
            deny.insert(nr, vec![]);
        }
    }
    let mut clone_rules = Vec::new();
    for flag in NS_FLAGS {
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*flag), *flag)
            .map_err(|e| io::Error::other(format!("seccomp condition: {e}")))?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(|e| io::Error::other(format!("seccomp rule: {e}")))?);
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let eperm = compile(deny, SeccompAction::Errno(libc::EPERM as u32))?;
    let enosys = compile([(libc::SYS_clone3, vec![])].into(), SeccompAction::Errno(libc::ENOSYS as u32))?;
    Ok(vec![eperm, enosys])
}

/// Drops capabilities to [`KEEP`], sets no_new_privs and, if asked, installs
/// the seccomp filters. Inherited by everything the agent starts.
pub fn drop_privileges(seccomp: bool) -> io::Result<()> {
    let keep: HashSet<Capability> = KEEP.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| io::Error::other(format!("drop {cap}: {e}")))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| io::Error::other(format!("clear ambient: {e}")))?;
    caps::set(None, CapSet::Inheritable, &HashSet::new()).map_err(|e| io::Error::other(format!("inheritable: {e}")))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| io::Error::other(format!("effective: {e}")))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| io::Error::other(format!("permitted: {e}")))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if seccomp {
        for f in filters()? {
            seccompiler::apply_filter(&f).map_err(|e| io::Error::other(format!("seccomp install: {e}")))?;
        }
    }
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
        assert_eq!(filters().unwrap().len(), 2);
        assert!(!KEEP.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!KEEP.contains(&Capability::CAP_SYS_PTRACE));
        assert!(!KEEP.contains(&Capability::CAP_SYS_MODULE));
    }
}
