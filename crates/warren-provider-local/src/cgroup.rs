//! cgroups for workspaces, on v1 (one hierarchy per controller, as on this
//! project's machines) and v2 (one unified hierarchy).
//!
//! Each workspace gets `warren/<id>` under every controller it needs:
//! cpu (quota), cpuacct (usage), memory (limit, no swap), pids (limit),
//! freezer (pause) and devices (an allow-list: the v1 devices controller,
//! on v2 an eBPF program, see [`devices`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_core::Size;

/// The cgroup layout of this host.
#[derive(Debug, Clone)]
pub enum Cgroups {
    V1 { cpu: PathBuf, cpuacct: PathBuf, memory: PathBuf, pids: PathBuf, freezer: PathBuf, devices: PathBuf },
    V2 { root: PathBuf },
}

const PARENT: &str = "warren";

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Cgroups {
    /// Finds the controllers from /proc/self/mountinfo. v1 wins on hybrid
    /// hosts when it carries the controllers warren needs.
    pub fn detect() -> io::Result<Cgroups> {
        let info = fs::read_to_string("/proc/self/mountinfo")?;
        let mut v1 = std::collections::HashMap::new();
        let mut v2 = None;
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let mount_point = left.split_whitespace().nth(4).unwrap_or("");
            let mut r = right.split_whitespace();
            let fstype = r.next().unwrap_or("");
            let _source = r.next();
            let opts = r.next().unwrap_or("");
            match fstype {
                "cgroup" => {
                    for o in opts.split(',') {
                        if ["cpu", "cpuacct", "memory", "pids", "freezer", "devices"].contains(&o) {
                            v1.entry(o.to_string()).or_insert_with(|| PathBuf::from(mount_point));
                        }
                    }
                }
                "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(mount_point)),
                _ => {}
            }
        }
        let get = |k: &str| v1.get(k).cloned();
        if let (Some(cpu), Some(cpuacct), Some(memory), Some(pids), Some(freezer), Some(devices)) =
            (get("cpu"), get("cpuacct"), get("memory"), get("pids"), get("freezer"), get("devices"))
        {
            return Ok(Cgroups::V1 { cpu, cpuacct, memory, pids, freezer, devices });
        }
        if let Some(root) = v2 {
            let ctrls = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if ["cpu", "memory", "pids"].iter().all(|c| ctrls.split_whitespace().any(|x| x == *c)) {
                return Ok(Cgroups::V2 { root });
            }
        }
        Err(io::Error::other("no usable cgroup hierarchy: need cpu, memory, pids (and freezer and devices on v1)"))
    }

    pub fn version(&self) -> u8 {
        match self {
            Cgroups::V1 { .. } => 1,
            Cgroups::V2 { .. } => 2,
        }
    }

    /// Every directory of one workspace (deduplicated for co-mounted controllers).
    pub fn dirs(&self, id: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = match self {
            Cgroups::V1 { cpu, cpuacct, memory, pids, freezer, devices } => {
                [cpu, cpuacct, memory, pids, freezer, devices].iter().map(|m| m.join(PARENT).join(id)).collect()
            }
            Cgroups::V2 { root } => vec![root.join(PARENT).join(id)],
        };
        out.dedup();
        out.sort();
        out.dedup();
        out
    }

    /// Creates the workspace's cgroups with limits; returns the
    /// `cgroup.procs` files a process writes itself into to join.
    pub fn create(&self, id: &str, size: &Size) -> io::Result<Vec<PathBuf>> {
        let mem = size.memory_mib as u64 * 1024 * 1024;
        match self {
            Cgroups::V1 { cpu, memory, pids, devices, .. } => {
                for d in self.dirs(id) {
                    fs::create_dir_all(&d)?;
                }
                let dv = devices.join(PARENT).join(id);
                write(&dv.join("devices.deny"), "a")?;
                for rule in devices::v1_rules() {
                    write(&dv.join("devices.allow"), &rule)?;
                }
                let c = cpu.join(PARENT).join(id);
                write(&c.join("cpu.cfs_period_us"), "100000")?;
                write(&c.join("cpu.cfs_quota_us"), &(size.millicpus as u64 * 100).to_string())?;
                let m = memory.join(PARENT).join(id);
                write(&m.join("memory.limit_in_bytes"), &mem.to_string())?;
                // No swap: memory+swap equals memory (absent without swap accounting).
                let memsw = m.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &mem.to_string())?;
                }
                let _ = write(&m.join("memory.swappiness"), "0");
                write(&pids.join(PARENT).join(id).join("pids.max"), &size.pids.to_string())?;
            }
            Cgroups::V2 { root } => {
                let parent = root.join(PARENT);
                fs::create_dir_all(&parent)?;
                let _ = write(&root.join("cgroup.subtree_control"), "+cpu +memory +pids");
                write(&parent.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
                let d = parent.join(id);
                fs::create_dir_all(&d)?;
                write(&d.join("cpu.max"), &format!("{} 100000", size.millicpus as u64 * 100))?;
                write(&d.join("memory.max"), &mem.to_string())?;
                let _ = write(&d.join("memory.swap.max"), "0");
                write(&d.join("pids.max"), &size.pids.to_string())?;
                devices::attach_v2(&d)?;
            }
        }
        Ok(self.dirs(id).into_iter().map(|d| d.join("cgroup.procs")).collect())
    }

    /// Freezes or thaws every process of the workspace, waiting until done.
    pub fn freeze(&self, id: &str, frozen: bool) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        match self {
            Cgroups::V1 { freezer, .. } => {
                let f = freezer.join(PARENT).join(id).join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                write(&f, want)?;
                while fs::read_to_string(&f)?.trim() != want {
                    if Instant::now() > deadline {
                        return Err(io::Error::other(format!("cgroup of {id} did not become {want}")));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    write(&f, want)?;
                }
            }
            Cgroups::V2 { root } => {
                let d = root.join(PARENT).join(id);
                write(&d.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                while !fs::read_to_string(d.join("cgroup.events"))?.lines().any(|l| l == want) {
                    if Instant::now() > deadline {
                        return Err(io::Error::other(format!("cgroup of {id} did not reach {want}")));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        Ok(())
    }

    pub fn is_frozen(&self, id: &str) -> bool {
        match self {
            Cgroups::V1 { freezer, .. } => fs::read_to_string(freezer.join(PARENT).join(id).join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false),
            Cgroups::V2 { root } => fs::read_to_string(root.join(PARENT).join(id).join("cgroup.freeze"))
                .map(|s| s.trim() == "1")
                .unwrap_or(false),
        }
    }

    /// (cpu ns, memory bytes, memory limit bytes, pids)
    pub fn usage(&self, id: &str) -> (u64, u64, u64, u64) {
        match self {
            Cgroups::V1 { cpuacct, memory, pids, .. } => {
                let m = memory.join(PARENT).join(id);
                (
                    read_u64(&cpuacct.join(PARENT).join(id).join("cpuacct.usage")).unwrap_or(0),
                    read_u64(&m.join("memory.usage_in_bytes")).unwrap_or(0),
                    read_u64(&m.join("memory.limit_in_bytes")).unwrap_or(0),
                    read_u64(&pids.join(PARENT).join(id).join("pids.current")).unwrap_or(0),
                )
            }
            Cgroups::V2 { root } => {
                let d = root.join(PARENT).join(id);
                let usec = fs::read_to_string(d.join("cpu.stat"))
                    .ok()
                    .and_then(|s| {
                        s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<u64>().ok()))
                    })
                    .unwrap_or(0);
                (
                    usec * 1000,
                    read_u64(&d.join("memory.current")).unwrap_or(0),
                    read_u64(&d.join("memory.max")).unwrap_or(0),
                    read_u64(&d.join("pids.current")).unwrap_or(0),
                )
            }
        }
    }

    /// OOM kills inside the workspace so far.
    pub fn oom_kills(&self, id: &str) -> u64 {
        let path = match self {
            Cgroups::V1 { memory, .. } => memory.join(PARENT).join(id).join("memory.oom_control"),
            Cgroups::V2 { root } => root.join(PARENT).join(id).join("memory.events"),
        };
        fs::read_to_string(path)
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// Pids in the workspace's cgroup (any controller holds them all).
    pub fn procs(&self, id: &str) -> Vec<i32> {
        let d = match self {
            Cgroups::V1 { pids, .. } => pids.join(PARENT).join(id),
            Cgroups::V2 { root } => root.join(PARENT).join(id),
        };
        fs::read_to_string(d.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills whatever is left and removes every directory of the workspace.
    pub fn destroy(&self, id: &str) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Frozen processes cannot die: thaw first.
        if self.is_frozen(id) {
            let _ = self.freeze(id, false);
        }
        loop {
            let procs = self.procs(id);
            for p in &procs {
                // SAFETY: kill(2) with plain integers on pids of this workspace.
                unsafe {
                    libc::kill(*p, libc::SIGKILL);
                }
            }
            let mut left = false;
            for d in self.dirs(id) {
                match fs::remove_dir(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => left = true,
                }
            }
            if !left {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("cgroups of {id} could not be removed (pids {procs:?})")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Workspace ids that have cgroups (for orphan cleanup).
    pub fn ids(&self) -> Vec<String> {
        let parent = match self {
            Cgroups::V1 { pids, .. } => pids.join(PARENT),
            Cgroups::V2 { root } => root.join(PARENT),
        };
        fs::read_dir(parent)
            .map(|rd| {
                rd.flatten().filter(|e| e.path().is_dir()).filter_map(|e| e.file_name().into_string().ok()).collect()
            })
            .unwrap_or_default()
    }
}

/// The devices a workspace may open: those of its /dev (null, zero, full,
/// random, urandom, tty, ptmx) and its pseudo-terminals. Nothing else, so a
/// device node that appeared somehow (none can be made inside) opens no
/// host device.
pub mod devices {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::Path;

    /// (major, minor); `None` for every minor.
    pub const ALLOWED: &[(u32, Option<u32>)] = &[
        (1, Some(3)), // null
        (1, Some(5)), // zero
        (1, Some(7)), // full
        (1, Some(8)), // random
        (1, Some(9)), // urandom
        (5, Some(0)), // tty
        (5, Some(2)), // ptmx
        (136, None),  // pts
    ];

    /// `devices.allow` lines of the v1 controller.
    pub fn v1_rules() -> Vec<String> {
        ALLOWED
            .iter()
            .map(|(ma, mi)| format!("c {ma}:{} rwm", mi.map(|m| m.to_string()).unwrap_or_else(|| "*".into())))
            .collect()
    }

    /// One eBPF instruction (struct bpf_insn).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Insn {
        code: u8,
        regs: u8,
        off: i16,
        imm: i32,
    }

    #[derive(Clone, Copy)]
    enum To {
        Allow,
        Deny,
    }

    /// The allow-list as a BPF_PROG_TYPE_CGROUP_DEVICE program: returns 1
    /// (allow) for a character device on the list, else 0.
    fn program() -> Vec<Insn> {
        const LDXW: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
        const AND32K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
        const JEQK: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
        const JNEK: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
        const MOV64K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
        const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
        const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR
        let ins = |code, dst: u8, src: u8, off, imm| Insn { code, regs: (src << 4) | dst, off, imm };
        // r1 = struct bpf_cgroup_dev_ctx { access_type, major, minor }.
        let mut prog = vec![
            ins(LDXW, 2, 1, 0, 0),
            ins(AND32K, 2, 0, 0, 0xffff), // the device type
            ins(LDXW, 3, 1, 4, 0),        // major
            ins(LDXW, 4, 1, 8, 0),        // minor
        ];
        let mut jumps: Vec<(usize, To)> = Vec::new();
        jumps.push((prog.len(), To::Deny));
        prog.push(ins(JNEK, 2, 0, 0, DEV_CHAR));
        for (major, minor) in ALLOWED {
            match minor {
                Some(m) => {
                    prog.push(ins(JNEK, 3, 0, 1, *major as i32));
                    jumps.push((prog.len(), To::Allow));
                    prog.push(ins(JEQK, 4, 0, 0, *m as i32));
                }
                None => {
                    jumps.push((prog.len(), To::Allow));
                    prog.push(ins(JEQK, 3, 0, 0, *major as i32));
                }
            }
        }
        let deny = prog.len();
        prog.push(ins(MOV64K, 0, 0, 0, 0));
        prog.push(ins(EXIT, 0, 0, 0, 0));
        let allow = prog.len();
        prog.push(ins(MOV64K, 0, 0, 0, 1));
        prog.push(ins(EXIT, 0, 0, 0, 0));
        for (at, to) in jumps {
            let target = match to {
                To::Allow => allow,
                To::Deny => deny,
            };
            prog[at].off = (target - at - 1) as i16;
        }
        prog
    }

    fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
        // SAFETY: bpf(2) reads and writes the attribute buffer we own, sized to the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r)
    }

    /// Loads the program and attaches it to the cgroup directory `dir`
    /// (the attachment lives as long as the cgroup).
    pub fn attach_v2(dir: &Path) -> io::Result<()> {
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_PROG_ATTACH: libc::c_long = 8;
        const BPF_PROG_TYPE_CGROUP_DEVICE: u64 = 15;
        const BPF_CGROUP_DEVICE: u64 = 6;
        let prog = program();
        let license = c"Apache-2.0";
        // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt (u32 each),
        // insns, license (u64 pointers), then zeroes.
        let mut attr = [0u64; 16];
        attr[0] = BPF_PROG_TYPE_CGROUP_DEVICE | ((prog.len() as u64) << 32);
        attr[1] = prog.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        let fd = bpf(BPF_PROG_LOAD, &mut attr)
            .map_err(|e| io::Error::new(e.kind(), format!("loading the device filter: {e}")))?;
        // SAFETY: the kernel just returned this descriptor.
        let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let cg = std::fs::File::open(dir)?;
        // BPF_PROG_ATTACH: target_fd, attach_bpf_fd (u32 each), attach_type, flags.
        let mut attr = [0u64; 16];
        attr[0] = cg.as_raw_fd() as u64 | ((prog_fd.as_raw_fd() as u64) << 32);
        attr[1] = BPF_CGROUP_DEVICE;
        bpf(BPF_PROG_ATTACH, &mut attr)
            .map_err(|e| io::Error::new(e.kind(), format!("attaching the device filter to {}: {e}", dir.display())))?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn jumps_land_on_allow_or_deny() {
            let p = super::program();
            let n = p.len() as i64;
            for (i, insn) in p.iter().enumerate() {
                if insn.code == 0x15 || insn.code == 0x55 {
                    let to = i as i64 + 1 + insn.off as i64;
                    assert!(to > i as i64 && to < n, "jump {i} -> {to}");
                }
            }
            assert_eq!(p.last().map(|i| i.code), Some(0x95));
            assert_eq!(super::v1_rules()[0], "c 1:3 rwm");
            assert!(super::v1_rules().contains(&"c 136:* rwm".to_string()));
        }
    }
}
