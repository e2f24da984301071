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

    let layers_dir = root.join("layers");
    fs::create_dir_all(&layers_dir)?;
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
            unpack_layer(lp, &tmp).map_err(|e| invalid_unless_io(e, &format!("layer {}", &digest[..12])))?;
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
fn unpack_layer(layer: &Path, dst: &Path) -> io::Result<()> {
    let mut a = tar::Archive::new(open_maybe_gz(layer)?);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(false);
    a.set_overwrite(true);
    for entry in a.entries()? {
        let mut e = entry?;
        let path = e.path()?.into_owned();
        let Some(rel) = safe_rel(&path) else { continue };
        let file = rel.file_name().and_then(|f| f.to_str()).unwrap_or("");
        if let Some(hidden) = file.strip_prefix(".wh.") {
            let parent = dst.join(rel.parent().unwrap_or(Path::new("")));
            fs::create_dir_all(&parent)?;
            if hidden == ".wh..opq" {
                set_opaque(&parent)?;
            } else {
                let target = parent.join(hidden);
                let _ = fs::remove_file(&target);
                nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
                    .map_err(|e| io::Error::other(format!("whiteout {}: {e}", target.display())))?;
            }
            continue;
        }
        // unpack_in refuses paths that would leave `dst`.
        e.unpack_in(dst)?;
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated path and attribute name; the value is a
    // one-byte buffer that lives for the call.
    let rc = unsafe { libc::setxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
