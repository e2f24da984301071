//! filesystem.Filesystem operations and envd-style entry descriptions.
//!
//! The agent runs as root and acts on the workspace's files on behalf of a
//! user: paths resolve against that user's home, and what it creates is owned
//! by that user (as envd does).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use warren_proto::connect::{Code, ConnectError};
use warren_proto::filesystem::{EntryInfo, FileType, ListDirRequest, MoveRequest};
use warren_proto::json::rfc3339;

use crate::state::Settings;
use crate::users::{Names, User};

/// Resolves a request path: `~` and relative paths are taken from `home`;
/// `.` and `..` components are folded lexically.
pub fn resolve_path(path: &str, home: &Path) -> PathBuf {
    let raw = if path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        home.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in raw.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn require(path: &str) -> Result<(), ConnectError> {
    if path.is_empty() {
        Err(ConnectError::invalid("path is required"))
    } else if path.contains('\0') {
        Err(ConnectError::invalid("path contains a NUL byte"))
    } else {
        Ok(())
    }
}

/// Maps an I/O error on `path` to a Connect error.
pub fn io_error(e: &io::Error, what: &str, path: &Path) -> ConnectError {
    let code = match e.kind() {
        io::ErrorKind::NotFound => Code::NotFound,
        io::ErrorKind::AlreadyExists => Code::AlreadyExists,
        io::ErrorKind::PermissionDenied => Code::PermissionDenied,
        _ => match e.raw_os_error() {
            Some(libc::ENOTDIR) | Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EINVAL) => {
                Code::InvalidArgument
            }
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Code::ResourceExhausted,
            _ => Code::Internal,
        },
    };
    let msg = if code == Code::NotFound {
        format!("path '{}' does not exist", path.display())
    } else {
        format!("{what} '{}': {e}", path.display())
    };
    ConnectError::new(code, msg)
}

// Go os.FileMode bits.
const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_DEVICE: u32 = 1 << 26;
const GO_PIPE: u32 = 1 << 25;
const GO_SOCKET: u32 = 1 << 24;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_CHARDEV: u32 = 1 << 21;
const GO_STICKY: u32 = 1 << 20;

/// Converts a Unix `st_mode` to Go's `os.FileMode` bits.
pub fn go_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & 0o777;
    match st_mode & libc::S_IFMT {
        libc::S_IFDIR => m |= GO_DIR,
        libc::S_IFLNK => m |= GO_SYMLINK,
        libc::S_IFBLK => m |= GO_DEVICE,
        libc::S_IFCHR => m |= GO_DEVICE | GO_CHARDEV,
        libc::S_IFIFO => m |= GO_PIPE,
        libc::S_IFSOCK => m |= GO_SOCKET,
        _ => {}
    }
    if st_mode & libc::S_ISUID != 0 {
        m |= GO_SETUID;
    }
    if st_mode & libc::S_ISGID != 0 {
        m |= GO_SETGID;
    }
    if st_mode & libc::S_ISVTX != 0 {
        m |= GO_STICKY;
    }
    m
}

/// Go's `os.FileMode.String()`: type letters (or `-`), then `rwxrwxrwx`.
pub fn go_mode_string(m: u32) -> String {
    const TYPES: &[u8] = b"dalTLDpSugct?";
    let mut s = String::with_capacity(12);
    for (i, c) in TYPES.iter().enumerate() {
        if m & (1 << (31 - i)) != 0 {
            s.push(*c as char);
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if m & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

/// Describes `path` as envd does: `lstat` data, but a symlink reports its
/// target's type and mode, and its resolved target.
pub fn entry_info(path: &Path, names: &Names) -> io::Result<EntryInfo> {
    let lmeta = fs::symlink_metadata(path)?;
    let is_link = lmeta.file_type().is_symlink();
    let (file_type, mode, target) = if is_link {
        let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        match fs::metadata(path) {
            Ok(t) => (kind(&t), go_mode(t.mode()), Some(target)),
            // A dangling link: its type is unknown (never FILE_TYPE_SYMLINK,
            // which SDKs before 2.40 cannot parse).
            Err(_) => (FileType::Unspecified, go_mode(lmeta.mode()), Some(target)),
        }
    } else {
        (kind(&lmeta), go_mode(lmeta.mode()), None)
    };
    Ok(EntryInfo {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        file_type,
        path: path.to_string_lossy().into_owned(),
        size: lmeta.size() as i64,
        mode,
        permissions: go_mode_string(go_mode(lmeta.mode())),
        owner: names.user(lmeta.uid()),
        group: names.group(lmeta.gid()),
        modified_time: Some(rfc3339(lmeta.mtime(), lmeta.mtime_nsec().clamp(0, 999_999_999) as u32)),
        symlink_target: target.map(|t| t.to_string_lossy().into_owned()),
    })
}

fn kind(m: &fs::Metadata) -> FileType {
    if m.is_dir() {
        FileType::Directory
    } else if m.is_file() {
        FileType::File
    } else {
        FileType::Unspecified
    }
}

fn describe(path: &Path) -> Result<EntryInfo, ConnectError> {
    entry_info(path, &Names::load()).map_err(|e| io_error(&e, "stat", path))
}

/// Creates every missing directory up to `dir`, owned by `user`.
pub fn create_dirs_owned(dir: &Path, user: &User) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {
                fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
                chown(d, user);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives `path` to `user` (best effort: only root can, and only root needs to).
pub fn chown(path: &Path, user: &User) {
    if nix::unistd::geteuid().is_root() {
        let _ = std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid));
    }
}

pub async fn stat(user: &User, _s: &Settings, path: &str) -> Result<EntryInfo, ConnectError> {
    require(path)?;
    describe(&resolve_path(path, &user.home))
}

pub async fn make_dir(user: &User, _s: &Settings, path: &str) -> Result<EntryInfo, ConnectError> {
    require(path)?;
    let p = resolve_path(path, &user.home);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => {
            return Err(ConnectError::new(Code::AlreadyExists, format!("directory '{}' already exists", p.display())))
        }
        Ok(_) => {
            return Err(ConnectError::new(
                Code::AlreadyExists,
                format!("path '{}' already exists and is not a directory", p.display()),
            ))
        }
        Err(_) => {}
    }
    create_dirs_owned(&p, user).map_err(|e| io_error(&e, "make directory", &p))?;
    describe(&p)
}

pub async fn rename(user: &User, _s: &Settings, req: &MoveRequest) -> Result<EntryInfo, ConnectError> {
    require(&req.source)?;
    require(&req.destination)?;
    let src = resolve_path(&req.source, &user.home);
    let dst = resolve_path(&req.destination, &user.home);
    fs::symlink_metadata(&src).map_err(|e| io_error(&e, "move", &src))?;
    if let Some(parent) = dst.parent() {
        create_dirs_owned(parent, user).map_err(|e| io_error(&e, "make directory", parent))?;
    }
    fs::rename(&src, &dst).map_err(|e| io_error(&e, "move", &src))?;
    describe(&dst)
}

pub async fn list_dir(user: &User, _s: &Settings, req: &ListDirRequest) -> Result<Vec<EntryInfo>, ConnectError> {
    require(&req.path)?;
    let root = resolve_path(&req.path, &user.home);
    let depth = req.depth.max(1);
    tokio::task::spawn_blocking(move || {
        let meta = fs::metadata(&root).map_err(|e| io_error(&e, "list", &root))?;
        if !meta.is_dir() {
            return Err(ConnectError::invalid(format!("path '{}' is not a directory", root.display())));
        }
        let names = Names::load();
        let mut out = Vec::new();
        walk(&root, depth, &names, &mut out).map_err(|e| io_error(&e, "list", &root))?;
        Ok(out)
    })
    .await
    .map_err(|e| ConnectError::internal(format!("list task: {e}")))?
}

fn walk(dir: &Path, depth: u32, names: &Names, out: &mut Vec<EntryInfo>) -> io::Result<()> {
    let mut children: Vec<PathBuf> = fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        let Ok(info) = entry_info(&child, names) else {
            continue;
        };
        // Recurse into real directories only, never through symlinks.
        let descend = depth > 1 && fs::symlink_metadata(&child).map(|m| m.is_dir()).unwrap_or(false);
        out.push(info);
        if descend {
            // A subdirectory that vanished or cannot be read is skipped.
            let _ = walk(&child, depth - 1, names, out);
        }
    }
    Ok(())
}

pub async fn remove(user: &User, _s: &Settings, path: &str) -> Result<(), ConnectError> {
    require(path)?;
    let p = resolve_path(path, &user.home);
    if p == Path::new("/") {
        return Err(ConnectError::invalid("refusing to remove '/'"));
    }
    tokio::task::spawn_blocking(move || {
        let r = match fs::symlink_metadata(&p) {
            // Like envd, removing what is not there succeeds.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
        };
        r.map_err(|e| io_error(&e, "remove", &p))
    })
    .await
    .map_err(|e| ConnectError::internal(format!("remove task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_home() {
        let home = Path::new("/home/user");
        assert_eq!(resolve_path("a.txt", home), PathBuf::from("/home/user/a.txt"));
        assert_eq!(resolve_path("~/x/../y", home), PathBuf::from("/home/user/y"));
        assert_eq!(resolve_path("/etc/./hosts", home), PathBuf::from("/etc/hosts"));
        assert_eq!(resolve_path("/../../etc", home), PathBuf::from("/etc"));
        assert_eq!(resolve_path("~", home), PathBuf::from("/home/user"));
    }

    #[test]
    fn go_modes_match_go() {
        assert_eq!(go_mode(libc::S_IFDIR | 0o755), 2_147_484_141);
        assert_eq!(go_mode_string(go_mode(libc::S_IFDIR | 0o755)), "drwxr-xr-x");
        assert_eq!(go_mode_string(go_mode(libc::S_IFREG | 0o644)), "-rw-r--r--");
        assert_eq!(go_mode_string(go_mode(libc::S_IFLNK | 0o777)), "Lrwxrwxrwx");
        assert_eq!(go_mode_string(go_mode(libc::S_IFCHR | 0o666)), "Dcrw-rw-rw-");
        assert_eq!(go_mode_string(go_mode(libc::S_IFDIR | libc::S_ISVTX | 0o777)), "dtrwxrwxrwx");
        assert_eq!(go_mode_string(go_mode(libc::S_IFREG | libc::S_ISUID | 0o755)), "urwxr-xr-x");
    }
}
