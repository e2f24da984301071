//! The system-call policy every warren runtime applies, as data: the local
//! provider compiles it to BPF (warren-provider-local's `security`), the
//! Docker backend hands it to the engine as a seccomp profile
//! ([`docker_profile`]). docs/local-provider.md explains each group.
//!
//! It is a deny list that covers what Docker's default allow-list leaves
//! out: mounting and namespaces, keyrings, BPF and perf, kexec and kernel
//! modules, the clock, swap and reboot, handles that bypass path checks,
//! userfaultfd, raw I/O ports, other processes' memory, obsolete
//! interfaces, io_uring (configurable), namespace-creating clone flags,
//! clone3 (ENOSYS, so libc falls back to the checked clone), unusual
//! personalities, and every foreign ABI (x32, i386).

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
    // Obsolete or host-wide interfaces Docker's profile leaves out too.
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
    "afs_syscall",
];

/// io_uring: a large kernel surface with a history of escapes; denied
/// unless the server's configuration allows it.
pub const IO_URING: &[&str] = &["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// personality(2) values a workspace may set (Docker's set: Linux, its
/// 32-bit flavour, UNAME26 with both, and the query 0xffffffff).
pub const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// clone(2) flags that would create namespaces.
pub const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// A Docker seccomp profile (the JSON `--security-opt seccomp=` takes)
/// enforcing the same policy: allow by default, EPERM for the deny list and
/// namespace-creating clone flags, ENOSYS for clone3, only the native
/// architecture (x32 and i386 calls fail).
pub fn docker_profile(io_uring: bool) -> serde_json::Value {
    use serde_json::json;
    let mut names: Vec<&str> = DENIED.to_vec();
    if !io_uring {
        names.extend(IO_URING);
    }
    let mut rules = vec![json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 1})];
    for flag in NS_FLAGS {
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    let not_allowed: Vec<_> =
        PERSONALITIES.iter().map(|p| json!({"index": 0, "value": p, "op": "SCMP_CMP_NE"})).collect();
    rules.push(json!({"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": not_allowed}));
    let arch = match std::env::consts::ARCH {
        "aarch64" => "SCMP_ARCH_AARCH64",
        _ => "SCMP_ARCH_X86_64",
    };
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch], "syscalls": rules})
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_docker_profile_denies_the_list() {
        let p = super::docker_profile(false);
        let text = p.to_string();
        for name in ["keyctl", "bpf", "mount", "io_uring_setup", "clone3", "personality"] {
            assert!(text.contains(&format!("\"{name}\"")), "{name} missing");
        }
        assert!(!super::docker_profile(true).to_string().contains("io_uring_setup"));
    }
}
