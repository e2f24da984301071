//! cgroups for workspaces, on v1 (one hierarchy per controller, as on this
//! project's machines) and v2 (one unified hierarchy).
//!
//! Each workspace gets `warren/<id>` under every controller it needs:
//! cpu (quota), cpuacct (usage), memory (limit, no swap), pids (limit) and
//! freezer (pause).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_core::Size;

/// The cgroup layout of this host.
#[derive(Debug, Clone)]
pub enum Cgroups {
    V1 { cpu: PathBuf, cpuacct: PathBuf, memory: PathBuf, pids: PathBuf, freezer: PathBuf },
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
                        if ["cpu", "cpuacct", "memory", "pids", "freezer"].contains(&o) {
                            v1.entry(o.to_string()).or_insert_with(|| PathBuf::from(mount_point));
                        }
                    }
                }
                "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(mount_point)),
                _ => {}
            }
        }
        let get = |k: &str| v1.get(k).cloned();
        if let (Some(cpu), Some(cpuacct), Some(memory), Some(pids), Some(freezer)) =
            (get("cpu"), get("cpuacct"), get("memory"), get("pids"), get("freezer"))
        {
            return Ok(Cgroups::V1 { cpu, cpuacct, memory, pids, freezer });
        }
        if let Some(root) = v2 {
            let ctrls = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if ["cpu", "memory", "pids"].iter().all(|c| ctrls.split_whitespace().any(|x| x == *c)) {
                return Ok(Cgroups::V2 { root });
            }
        }
        Err(io::Error::other("no usable cgroup hierarchy: need cpu, memory, pids (and freezer on v1)"))
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
            Cgroups::V1 { cpu, cpuacct, memory, pids, freezer } => {
                [cpu, cpuacct, memory, pids, freezer].iter().map(|m| m.join(PARENT).join(id)).collect()
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
            Cgroups::V1 { cpu, memory, pids, .. } => {
                for d in self.dirs(id) {
                    fs::create_dir_all(&d)?;
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
