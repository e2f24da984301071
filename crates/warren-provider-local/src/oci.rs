//! OCI images as local templates: import a `docker save` tarball or an OCI
//! image layout (as a tar) into a content-addressed layer store, and describe
//! the template (layers bottom to top, environment, working directory, user).
//!
//! Layers are unpacked once per digest under `layers/<sha256>`; overlayfs
//! stacks them read-only under each workspace's writable layer. Whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`) become overlayfs whiteouts.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// An imported image template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageTemplate {
    pub name: String,
    /// Layer digests (hex SHA-256 of the layer blob), bottom first.
    pub layers: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Where it came from (repo tags), for listings.
    pub source: String,
}

/// Checks a template name: 1–63 of `[a-z0-9._-]`, starting alphanumeric, not `base`.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-');
    if !ok {
        return Err(format!("template name {name:?}: 1 to 63 of a-z 0-9 . _ -, starting with a letter or digit"));
    }
    if name == "base" {
        return Err("template name \"base\" is reserved".into());
    }
    Ok(())
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Opens a possibly gzip-compressed file.
fn open_maybe_gz(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let f = fs::File::open(path)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(f)))
    } else {
        Ok(Box::new(f))
    }
}

/// A path inside an archive, with nothing that could leave the target.
fn safe_rel(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

fn blob(dir: &Path, digest: &str) -> io::Result<PathBuf> {
    let (alg, hex) = digest.split_once(':').ok_or_else(|| err(format!("bad digest {digest}")))?;
    if alg != "sha256" || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(format!("unsupported digest {digest}")));
    }
    Ok(dir.join("blobs").join(alg).join(hex))
}

/// Imports `archive` as template `name` under `root` (`layers/`, `images/`).
/// `progress` is told about each layer as it is unpacked.
pub fn import(root: &Path, name: &str, archive: &Path, progress: &mut dyn FnMut(&str)) -> io::Result<ImageTemplate> {
    valid_name(name).map_err(err)?;
    let scratch = root.join(format!(".import-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let result = import_in(root, name, archive, &scratch, progress);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn import_in(
    root: &Path,
    name: &str,
    archive: &Path,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> io::Result<ImageTemplate> {
    // Unpack the outer archive (manifest, config, layer blobs).
    unpack_outer(archive, scratch).map_err(|e| invalid_unless_io(e, "reading the archive"))?;
    let (config_path, layer_paths, source) = if scratch.join("manifest.json").is_file() {
        let m: Vec<DockerManifest> = serde_json::from_slice(&fs::read(scratch.join("manifest.json"))?)
            .map_err(|e| err(format!("manifest.json: {e}")))?;
        let m = m.into_iter().next().ok_or_else(|| err("manifest.json lists no image"))?;
        let rel = |p: &str| safe_rel(Path::new(p)).map(|r| scratch.join(r)).ok_or_else(|| err(format!("bad path {p}")));
        let layers = m.layers.iter().map(|l| rel(l)).collect::<io::Result<Vec<_>>>()?;
        (rel(&m.config)?, layers, m.repo_tags.unwrap_or_default().join(","))
    } else if scratch.join("index.json").is_file() {
        let idx: OciIndex = serde_json::from_slice(&fs::read(scratch.join("index.json"))?)
            .map_err(|e| err(format!("index.json: {e}")))?;
        let d = idx.manifests.first().ok_or_else(|| err("index.json lists no manifest"))?;
        let m: OciManifest =
            serde_json::from_slice(&fs::read(blob(scratch, &d.digest)?)?).map_err(|e| err(format!("manifest: {e}")))?;
        let layers = m.layers.iter().map(|l| blob(scratch, &l.digest)).collect::<io::Result<Vec<_>>>()?;
        (blob(scratch, &m.config.digest)?, layers, "oci-layout".to_string())
    } else {
        return Err(err("not an image archive: no manifest.json (docker save) or index.json (OCI layout)"));
    };
    let cfg: ImageConfig =
        serde_json::from_slice(&fs::read(&config_path)?).map_err(|e| err(format!("image config: {e}")))?;
    let run = cfg.config.unwrap_or_default();

    // Images may hold setuid programs and anything else: the store is the
    // host's root's alone.
    fs::create_dir_all(root)?;
    fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let layers_dir = root.join("layers");
    fs::create_dir_all(&layers_dir)?;
    fs::set_permissions(&layers_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut digests = Vec::new();
    for (i, lp) in layer_paths.iter().enumerate() {
        let mut h = sha2::Sha256::new();
        io::copy(&mut fs::File::open(lp)?, &mut h)?;
        let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let dst = layers_dir.join(&digest);
        if dst.is_dir() {
            progress(&format!("layer {}/{} {} already present", i + 1, layer_paths.len(), &digest[..12]));
        } else {
            progress(&format!("layer {}/{} {} unpacking", i + 1, layer_paths.len(), &digest[..12]));
            let tmp = layers_dir.join(format!(".{digest}.tmp"));
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp)?;
            if let Err(e) = unpack_layer(lp, &tmp) {
                let _ = fs::remove_dir_all(&tmp);
                return Err(invalid_unless_io(e, &format!("layer {}", &digest[..12])));
            }
            fs::rename(&tmp, &dst)?;
        }
        digests.push(digest);
    }
    let env = run
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let t = ImageTemplate {
        name: name.to_string(),
        layers: digests,
        env,
        workdir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        source,
    };
    let images = root.join("images");
    fs::create_dir_all(&images)?;
    let tmp = images.join(format!(".{name}.json.tmp"));
    fs::write(&tmp, serde_json::to_vec_pretty(&t).map_err(|e| err(e.to_string()))?)?;
    fs::rename(&tmp, images.join(format!("{name}.json")))?;
    Ok(t)
}

fn unpack_outer(archive: &Path, scratch: &Path) -> io::Result<()> {
    let mut outer = tar::Archive::new(open_maybe_gz(archive)?);
    for entry in outer.entries()? {
        let mut e = entry?;
        let Some(rel) = safe_rel(&e.path()?) else { continue };
        if e.header().entry_type().is_file() {
            let to = scratch.join(rel);
            if let Some(p) = to.parent() {
                fs::create_dir_all(p)?;
            }
            io::copy(&mut e, &mut fs::File::create(&to)?)?;
        }
    }
    Ok(())
}

/// Archive and format errors are the caller's (invalid input); a full disk
/// or a permission problem is ours.
fn invalid_unless_io(e: io::Error, what: &str) -> io::Error {
    // tar wraps the cause; spell the whole chain out.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    let e = io::Error::new(e.kind(), msg);
    let ours =
        matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
            || e.raw_os_error() == Some(libc::ENOSPC);
    if ours {
        io::Error::new(e.kind(), format!("{what}: {e}"))
    } else {
        err(format!("{what}: {e}"))
    }
}

/// Unpacks one layer, turning whiteouts into overlayfs whiteouts.
///
/// Every path is resolved inside `dst` by the kernel (openat2 with
/// RESOLVE_IN_ROOT): a symlink an earlier entry made, `evil -> /etc` say,
/// resolves to `dst/etc`, never to the host's. Hard links must point at a
/// file inside the layer. Device nodes are dropped (a workspace gets its
/// devices from warren, and its layers are mounted nodev); FIFOs are kept.
fn unpack_layer(layer: &Path, dst: &Path) -> io::Result<()> {
    let root = Root::open(dst)?;
    let mut a = tar::Archive::new(open_maybe_gz(layer)?);
    let mut dirs = Vec::new();
    for entry in a.entries()? {
        let mut e = entry?;
        let path = e.path()?.into_owned();
        let Some(rel) = safe_rel(&path) else { continue };
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else { continue };
        let name = name.to_os_string();
        let h = e.header();
        let (mode, uid, gid) = (h.mode()? & 0o7777, h.uid()? as u32, h.gid()? as u32);
        let mtime = h.mtime().unwrap_or(0) as i64;
        let kind = h.entry_type();
        let pdir = root.dir(parent)?;
        let file = name.to_str().unwrap_or("");
        if let Some(hidden) = file.strip_prefix(".wh.") {
            if hidden == ".wh..opq" {
                pdir.set_opaque()?;
            } else {
                pdir.remove(hidden.as_ref())?;
                pdir.mknod_whiteout(hidden.as_ref())?;
            }
            continue;
        }
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                pdir.mkdir(&name)?;
                dirs.push((rel.clone(), mode, uid, gid, mtime));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                pdir.remove(&name)?;
                let mut f = pdir.create(&name)?;
                io::copy(&mut e, &mut f)?;
                pdir.finish(&name, Some(&f), mode, uid, gid, mtime)?;
            }
            T::Symlink => {
                let target = e.link_name()?.ok_or_else(|| err(format!("{}: symlink without target", rel.display())))?;
                pdir.remove(&name)?;
                pdir.symlink(&target, &name)?;
                pdir.finish(&name, None, 0, uid, gid, mtime)?;
            }
            T::Link => {
                let target =
                    e.link_name()?.ok_or_else(|| err(format!("{}: hard link without target", rel.display())))?;
                // Link targets name a path from the layer's root.
                let target = safe_rel(target.strip_prefix("/").unwrap_or(&target))
                    .ok_or_else(|| err(format!("{}: hard link leaves the layer", rel.display())))?;
                pdir.remove(&name)?;
                root.hard_link(&target, &pdir, &name)?;
            }
            T::Fifo => {
                pdir.remove(&name)?;
                pdir.mkfifo(&name)?;
                pdir.finish(&name, None, mode, uid, gid, mtime)?;
            }
            // Device nodes and anything unknown are not unpacked.
            _ => {}
        }
    }
    // Directory modes last, deepest first, so a read-only directory does
    // not stop its own contents from being written.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (rel, mode, uid, gid, mtime) in dirs {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else { continue };
        root.dir(parent)?.finish(name, None, mode, uid, gid, mtime)?;
    }
    Ok(())
}

/// A layer's root directory; paths below it are resolved by the kernel
/// without ever leaving it.
struct Root(std::os::fd::OwnedFd);

/// A directory inside a [`Root`].
struct Dir(std::os::fd::OwnedFd);

fn c_path(p: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| err(format!("{}: NUL in path", p.display())))
}

fn os_err(what: &str, p: &Path) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

fn owned(fd: libc::c_long, what: &str, p: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    if fd < 0 {
        return Err(os_err(what, p));
    }
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

impl Root {
    fn open(dst: &Path) -> io::Result<Root> {
        let c = c_path(dst)?;
        // SAFETY: open with a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC) };
        Ok(Root(owned(fd as libc::c_long, "open", dst)?))
    }

    fn resolve(&self, rel: &Path, flags: i32) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsRawFd as _;
        let c = c_path(if rel.as_os_str().is_empty() { Path::new(".") } else { rel })?;
        /// struct open_how of openat2(2).
        #[repr(C)]
        struct OpenHow {
            flags: u64,
            mode: u64,
            resolve: u64,
        }
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 with a valid directory descriptor, C string and a
        // correctly sized open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.0.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        owned(fd, "resolve", rel)
    }

    /// The directory `rel` (made, with its parents, when missing; a
    /// dangling symlink on the way gets its target made inside the root).
    fn dir(&self, rel: &Path) -> io::Result<Dir> {
        self.dir_within(rel, 0)
    }

    fn dir_within(&self, rel: &Path, depth: u32) -> io::Result<Dir> {
        const DIR: i32 = libc::O_DIRECTORY | libc::O_RDONLY;
        if depth > 40 {
            return Err(err(format!("{}: too many levels of symbolic links", rel.display())));
        }
        match self.resolve(rel, DIR) {
            Ok(fd) => Ok(Dir(fd)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else { return Err(e) };
                let pdir = self.dir_within(parent, depth + 1)?;
                match pdir.read_link(name) {
                    Some(target) => {
                        // Where the link points, read from the layer's root.
                        let base = if target.is_absolute() { PathBuf::new() } else { parent.to_path_buf() };
                        self.dir_within(&lexical_in_root(&base, &target), depth + 1)?;
                    }
                    None => pdir.mkdir(name)?,
                }
                Ok(Dir(self.resolve(rel, DIR)?))
            }
            Err(e) => Err(e),
        }
    }

    fn hard_link(&self, target: &Path, dir: &Dir, name: &std::ffi::OsStr) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let src = self.resolve(target, libc::O_PATH | libc::O_NOFOLLOW)?;
        let c = c_path(Path::new(name))?;
        // SAFETY: linkat from a descriptor we own (AT_EMPTY_PATH) into a
        // directory descriptor we own.
        let r =
            unsafe { libc::linkat(src.as_raw_fd(), c"".as_ptr(), dir.0.as_raw_fd(), c.as_ptr(), libc::AT_EMPTY_PATH) };
        if r < 0 {
            return Err(os_err("hard link to", target));
        }
        Ok(())
    }
}

/// `base/target` with `.` and `..` applied, never above the root.
fn lexical_in_root(base: &Path, target: &Path) -> PathBuf {
    let mut out = base.to_path_buf();
    for c in target.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir => out = PathBuf::new(),
            _ => {}
        }
    }
    out
}

impl Dir {
    fn read_link(&self, name: &std::ffi::OsStr) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt as _;
        let c = c_path(Path::new(name)).ok()?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: readlinkat into a buffer we own, relative to our directory descriptor.
        let n = unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (n > 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..n as usize])))
    }

    fn raw(&self) -> i32 {
        use std::os::fd::AsRawFd as _;
        self.0.as_raw_fd()
    }

    fn mkdir(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let c = c_path(Path::new(name))?;
        // SAFETY: mkdirat relative to our directory descriptor.
        if unsafe { libc::mkdirat(self.raw(), c.as_ptr(), 0o755) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(os_err("mkdir", Path::new(name)));
            }
        }
        Ok(())
    }

    /// Removes a non-directory entry (an older layer's file this one replaces).
    fn remove(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let c = c_path(Path::new(name))?;
        // SAFETY: unlinkat relative to our directory descriptor.
        if unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) } < 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EISDIR)) {
                return Err(os_err("remove", Path::new(name)));
            }
        }
        Ok(())
    }

    fn create(&self, name: &std::ffi::OsStr) -> io::Result<fs::File> {
        let c = c_path(Path::new(name))?;
        // SAFETY: openat relative to our directory descriptor; O_NOFOLLOW
        // and O_EXCL: a fresh file, never through a link.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        Ok(fs::File::from(owned(fd as libc::c_long, "create", Path::new(name))?))
    }

    fn symlink(&self, target: &Path, name: &std::ffi::OsStr) -> io::Result<()> {
        let (t, c) = (c_path(target)?, c_path(Path::new(name))?);
        // SAFETY: symlinkat relative to our directory descriptor.
        if unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) } < 0 {
            return Err(os_err("symlink", Path::new(name)));
        }
        Ok(())
    }

    fn mkfifo(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let c = c_path(Path::new(name))?;
        // SAFETY: mkfifoat relative to our directory descriptor.
        if unsafe { libc::mkfifoat(self.raw(), c.as_ptr(), 0o600) } < 0 {
            return Err(os_err("mkfifo", Path::new(name)));
        }
        Ok(())
    }

    /// An overlayfs whiteout: a 0/0 character device (the only device a
    /// layer may hold).
    fn mknod_whiteout(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let c = c_path(Path::new(name))?;
        // SAFETY: mknodat relative to our directory descriptor.
        if unsafe { libc::mknodat(self.raw(), c.as_ptr(), libc::S_IFCHR, 0) } < 0 {
            return Err(os_err("whiteout", Path::new(name)));
        }
        Ok(())
    }

    fn set_opaque(&self) -> io::Result<()> {
        // SAFETY: fsetxattr on our directory descriptor with a one-byte value.
        let rc = unsafe { libc::fsetxattr(self.raw(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if rc != 0 {
            return Err(os_err("opaque marker on", Path::new(".")));
        }
        Ok(())
    }

    /// Owner, mode (not for symlinks) and modification time of an entry.
    fn finish(
        &self,
        name: &std::ffi::OsStr,
        file: Option<&fs::File>,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
    ) -> io::Result<()> {
        let c = c_path(Path::new(name))?;
        let p = Path::new(name);
        // SAFETY: *at calls relative to our directory descriptor, never following a final symlink.
        unsafe {
            if libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) < 0 {
                return Err(os_err("chown", p));
            }
            let is_link = file.is_none() && {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
                    && st.st_mode & libc::S_IFMT == libc::S_IFLNK
            };
            if !is_link && libc::fchmodat(self.raw(), c.as_ptr(), mode, 0) < 0 {
                return Err(os_err("chmod", p));
            }
            let t = libc::timespec { tv_sec: mtime, tv_nsec: 0 };
            let times = [t, t];
            libc::utimensat(self.raw(), c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW);
        }
        Ok(())
    }
}

/// Reads an imported template.
pub fn load(root: &Path, name: &str) -> io::Result<ImageTemplate> {
    let raw = fs::read(root.join("images").join(format!("{name}.json")))?;
    serde_json::from_slice(&raw).map_err(|e| err(format!("template {name}: {e}")))
}

/// Every imported template.
impl ImageTemplate {
    /// A short digest of everything a workspace gets from this template.
    pub fn revision(&self) -> String {
        let mut h = sha2::Sha256::new();
        for l in &self.layers {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        for (k, v) in &self.env {
            h.update(format!("env {k}={v}\n").as_bytes());
        }
        h.update(format!("workdir {:?}\nuser {:?}\n", self.workdir, self.user).as_bytes());
        h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

pub fn list(root: &Path) -> Vec<ImageTemplate> {
    let Ok(rd) = fs::read_dir(root.join("images")) else { return vec![] };
    let mut out: Vec<ImageTemplate> = rd
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let name = n.strip_suffix(".json").filter(|s| !s.starts_with('.'))?;
            load(root, name).ok()
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(valid_name("python-3.12").is_ok());
        assert!(valid_name("base").is_err());
        assert!(valid_name("-x").is_err());
        assert!(valid_name("UP").is_err());
        assert_eq!(safe_rel(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(safe_rel(Path::new("../etc/passwd")), None);
        assert_eq!(safe_rel(Path::new("/etc/passwd")), None);
    }
}
