//! User-namespace id ranges and idmapped mounts.
//!
//! Every native workspace runs in its own user namespace: its uid and gid 0
//! map to the first id of a range of [`RANGE`] host ids that belongs to that
//! workspace alone. Ranges are handed out host-wide (several providers and
//! replicas on one host share [`DEFAULT_DIR`]) by creating one file per slot
//! with `O_EXCL`; the file names the workspace directory that owns it, so a
//! slot whose directory is gone (a create cut short by a crash) is freed by
//! [`IdRanges::collect_garbage`]. A range is released only after the
//! workspace's processes are dead and its directory is removed.
//!
//! Files keep their image owners on disk: template layers, host binds and
//! the writable layer are mounted through idmapped mounts that shift ids by
//! the range's base for this workspace only.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Ids per workspace (like a subordinate id range).
pub const RANGE: u32 = 65_536;
/// The first host id warren hands out (far above login users and the
/// 100000+ ranges of /etc/subuid).
pub const FIRST: u32 = 0x1000_0000;
/// Number of slots: FIRST + SLOTS * RANGE stays below 2^31.
pub const SLOTS: u32 = 16_384;
/// Host-wide allocation directory (tmpfs: ranges die with the host's
/// processes at reboot, as the workspaces do).
pub const DEFAULT_DIR: &str = "/run/warren/idmap";

/// The id range of one workspace: inside ids `0..RANGE` are host ids
/// `base..base + RANGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub base: u32,
}

impl IdRange {
    /// The line written to `uid_map` and `gid_map`.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.base, RANGE)
    }

    /// The host id of an id inside the workspace.
    pub fn host_id(&self, inside: u32) -> u32 {
        self.base + inside
    }

    fn slot(&self) -> u32 {
        (self.base - FIRST) / RANGE
    }
}

/// The host-wide allocator of id ranges.
#[derive(Debug, Clone)]
pub struct IdRanges {
    dir: PathBuf,
}

impl IdRanges {
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(IdRanges { dir })
    }

    fn slot_path(&self, slot: u32) -> PathBuf {
        self.dir.join(slot.to_string())
    }

    /// Claims a free range for the workspace directory `owner` (which must
    /// exist until [`release`](Self::release)). `hint` spreads starting points.
    pub fn allocate(&self, owner: &Path, hint: u64) -> io::Result<IdRange> {
        let start = (hint % SLOTS as u64) as u32;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            match fs::OpenOptions::new().write(true).create_new(true).open(self.slot_path(slot)) {
                Ok(mut f) => {
                    f.write_all(owner.as_os_str().as_bytes())?;
                    return Ok(IdRange { base: FIRST + slot * RANGE });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("no free user-namespace id range left ({SLOTS} in use on this host)"),
        ))
    }

    /// Frees `range` if `owner` still holds it.
    pub fn release(&self, range: IdRange, owner: &Path) -> io::Result<()> {
        let p = self.slot_path(range.slot());
        match fs::read(&p) {
            Ok(held) if held == owner.as_os_str().as_bytes() => fs::remove_file(&p),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The owner recorded for the range, if it is held.
    pub fn owner(&self, range: IdRange) -> Option<PathBuf> {
        fs::read(self.slot_path(range.slot())).ok().map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
    }

    /// Frees every range whose owning directory no longer exists; returns
    /// how many were freed.
    pub fn collect_garbage(&self) -> usize {
        let Ok(rd) = fs::read_dir(&self.dir) else { return 0 };
        let mut freed = 0;
        for e in rd.flatten() {
            let Ok(owner) = fs::read(e.path()) else { continue };
            let owner = Path::new(std::ffi::OsStr::from_bytes(&owner));
            // An empty file is a claim being written right now.
            if !owner.as_os_str().is_empty() && !owner.exists() && fs::remove_file(e.path()).is_ok() {
                freed += 1;
            }
        }
        freed
    }
}

// The new mount API (Linux 5.2+, idmapped mounts 5.12+). Values from
// include/uapi/linux/mount.h.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn check(r: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

/// Flags of an idmapped mount.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
}

impl Attrs {
    fn bits(&self) -> u64 {
        let mut b = 0;
        if self.read_only {
            b |= MOUNT_ATTR_RDONLY;
        }
        if self.nosuid {
            b |= MOUNT_ATTR_NOSUID;
        }
        if self.nodev {
            b |= MOUNT_ATTR_NODEV;
        }
        b
    }
}

/// A detached copy of the mount tree at `path` (recursive).
pub fn clone_tree(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_tree with a valid C string; the result is a new descriptor we own.
    let fd = check(
        unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c.as_ptr(),
                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint,
            )
        },
        &format!("open_tree {}", path.display()),
    )?;
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sets `attrs` and, if `userns` is given, the id mapping of that user
/// namespace on a detached mount tree.
pub fn set_attrs(tree: &OwnedFd, attrs: Attrs, userns: Option<RawFd>) -> io::Result<()> {
    let mut a = MountAttr { attr_set: attrs.bits(), attr_clr: 0, propagation: libc::MS_PRIVATE, userns_fd: 0 };
    if let Some(fd) = userns {
        a.attr_set |= MOUNT_ATTR_IDMAP;
        a.userns_fd = fd as u64;
    }
    let empty = c"";
    // SAFETY: mount_setattr on a descriptor we own with a correctly sized struct.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                &a as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        },
        "mount_setattr",
    )?;
    Ok(())
}

/// Attaches a detached mount tree at `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let c = cstr(target)?;
    let empty = c"";
    // SAFETY: move_mount from a descriptor we own to a valid C path.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        },
        &format!("move_mount to {}", target.display()),
    )?;
    Ok(())
}

/// Mounts `source` at `target` through the id mapping of `userns`.
pub fn bind_idmapped(source: &Path, target: &Path, attrs: Attrs, userns: RawFd) -> io::Result<()> {
    let tree = clone_tree(source)?;
    set_attrs(&tree, attrs, Some(userns))?;
    attach(&tree, target)
}

/// A detached mount, before it is idmapped and attached: paths relative to
/// its root can still be made with the host's ids.
pub struct Detached(OwnedFd);

impl Detached {
    fn rel(p: &Path) -> io::Result<CString> {
        if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(io::Error::other(format!("{} is not a plain relative path", p.display())));
        }
        cstr(p)
    }

    pub fn mkdir(&self, p: &Path) -> io::Result<()> {
        let c = Self::rel(p)?;
        // SAFETY: mkdirat relative to a descriptor we own, with a valid C string.
        if unsafe { libc::mkdirat(self.0.as_raw_fd(), c.as_ptr(), 0o755) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(io::Error::new(e.kind(), format!("mkdir {}: {e}", p.display())));
            }
        }
        Ok(())
    }

    pub fn mkdir_all(&self, p: &Path) -> io::Result<()> {
        let mut cur = PathBuf::new();
        for c in p.components() {
            cur.push(c);
            self.mkdir(&cur)?;
        }
        Ok(())
    }

    pub fn create_file(&self, p: &Path) -> io::Result<()> {
        let c = Self::rel(p)?;
        // SAFETY: openat relative to a descriptor we own; the result is closed at once.
        let fd = unsafe {
            libc::openat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o644,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("create {}: {e}", p.display())));
        }
        // SAFETY: the kernel just returned this descriptor.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(())
    }
}

/// A new tmpfs (`size` bytes, root mode 0755 owned by 0 on disk), filled
/// by `fill` with the host's ids, then mounted at `target` through the id
/// mapping of `userns`. Needs Linux 6.3+ (idmapped tmpfs).
pub fn tmpfs_idmapped(
    target: &Path,
    size: u64,
    attrs: Attrs,
    userns: RawFd,
    fill: impl FnOnce(&Detached) -> io::Result<()>,
) -> io::Result<()> {
    let name = c"tmpfs";
    // SAFETY: fsopen with a static C string; returns a descriptor we own.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) }, "fsopen tmpfs")?;
    // SAFETY: the kernel just returned this descriptor.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let size = CString::new(size.to_string()).map_err(io::Error::other)?;
    for (k, v) in [(c"size", size.as_c_str()), (c"mode", c"0755")] {
        // SAFETY: fsconfig with C strings that outlive the call.
        check(
            unsafe {
                libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0)
            },
            "fsconfig tmpfs",
        )?;
    }
    // SAFETY: as above, no key or value.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        },
        "fsconfig create tmpfs",
    )?;
    // SAFETY: fsmount on the configured context; returns a mount descriptor.
    let m = check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) }, "fsmount tmpfs")?;
    // SAFETY: the kernel just returned this descriptor.
    let tree = Detached(unsafe { OwnedFd::from_raw_fd(m as RawFd) });
    fill(&tree)?;
    set_attrs(&tree.0, attrs, Some(userns)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{e} (an idmapped tmpfs needs Linux 6.3 or newer; this is {})", kernel_release()),
        )
    })?;
    attach(&tree.0, target)
}

/// `uname -r`.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_do_not_overlap_and_come_back_only_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = IdRanges::new(dir.path().join("idmap")).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let ra = ranges.allocate(&a, 7).unwrap();
        let rb = ranges.allocate(&b, 7).unwrap();
        assert_ne!(ra, rb);
        assert!(ra.base.abs_diff(rb.base) >= RANGE);
        assert_eq!(ra.map_line(), format!("0 {} 65536\n", ra.base));
        // Releasing with the wrong owner keeps it held.
        ranges.release(ra, &b).unwrap();
        assert_eq!(ranges.owner(ra).as_deref(), Some(a.as_path()));
        // A directory that is gone frees its range; a live one keeps it.
        fs::remove_dir(&a).unwrap();
        assert_eq!(ranges.collect_garbage(), 1);
        assert_eq!(ranges.owner(ra), None);
        assert_eq!(ranges.owner(rb).as_deref(), Some(b.as_path()));
        ranges.release(rb, &b).unwrap();
        assert_eq!(ranges.owner(rb), None);
        assert!(rb.base + RANGE <= FIRST + SLOTS * RANGE);
        assert!((FIRST as u64 + SLOTS as u64 * RANGE as u64) < (1u64 << 31));
    }
}
