//! The `base` template: a root made from the host's own system directories.
//!
//! The template's root holds its own `/etc` (the host's entries on an
//! allow-list of configuration that carries no secrets, with warren's own
//! passwd/group/shadow, hosts and hostname), an empty home for `user`
//! (uid 1000) and `root`, and mount points for the host's system directories
//! (`/usr`, and `/bin`, `/lib`… where they are not symlinks), which every
//! workspace bind-mounts read-only. Nothing is downloaded.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bump when the layout changes: older builds are rebuilt.
const VERSION: &str = "base-v2";

/// Host directories shared read-only with every workspace, when they are
/// real directories on this host.
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host `/etc` entries copied into the base template: what the host's tools
/// under the shared /usr need to run (loader, name service, certificates,
/// alternatives, shells, PAM, locales, package-manager and language
/// configuration). Anything else, a secret a host operator put there
/// included, never reaches a workspace. An entry ending in `*` matches by
/// prefix; directories are copied whole unless [`ETC_NEVER`] says otherwise.
/// docs/local-provider.md lists the same set.
pub const ETC_ALLOW: &[&str] = &[
    // Loader and name service.
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "resolv.conf",
    "services",
    "protocols",
    "networks",
    "ethertypes",
    "rpc",
    // Time and locale.
    "localtime",
    "timezone",
    "locale.alias",
    "locale.gen",
    "locale.conf",
    // TLS: public certificates and the OpenSSL configuration only.
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "pki/tls/certs",
    "pki/ca-trust",
    // Debian's alternatives (/usr/bin/awk and the like point here).
    "alternatives",
    // Shells and login environment.
    "profile",
    "profile.d",
    "bash.bashrc",
    "bash_completion",
    "bash_completion.d",
    "shells",
    "skel",
    "inputrc",
    "login.defs",
    "terminfo",
    "pam.conf",
    "pam.d",
    "security/limits.conf",
    "security/limits.d",
    "security/pam_env.conf",
    "security/namespace.conf",
    "security/access.conf",
    "security/group.conf",
    "security/time.conf",
    "adduser.conf",
    "deluser.conf",
    // The system's identity.
    "os-release",
    "debian_version",
    "lsb-release",
    "issue",
    // Data files many tools read.
    "mime.types",
    "mailcap",
    "magic",
    "magic.mime",
    "manpath.config",
    "xattr.conf",
    "fonts",
    "xml",
    "sgml",
    "iproute2",
    "libnl-3",
    // Package managers (no credentials: auth.conf.d is never copied).
    "apt",
    "dpkg",
    "debconf.conf",
    "ucf.conf",
    // Language runtimes and editors from the shared /usr.
    "python3*",
    "perl",
    "java-*",
    "vim",
    "nanorc",
    "gdb",
    "mke2fs.conf",
];

/// Never copied, even inside an allowed directory.
const ETC_NEVER: &[&str] = &["apt/auth.conf", "apt/auth.conf.d", "ssl/private", "pki/tls/private"];

fn etc_allowed(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    ETC_ALLOW.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => !s.contains('/') && s.starts_with(prefix),
        None => s == *a,
    })
}

/// True if `rel` lies on the way to an allowed entry (a directory such as
/// `ssl` or `security` of which only some entries are copied).
fn etc_on_the_way(rel: &Path) -> bool {
    ETC_ALLOW.iter().any(|a| Path::new(a).starts_with(rel) && Path::new(a) != rel)
}

/// A built template: the lower layer and the host directories to bind.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub rootfs: PathBuf,
    pub host_binds: Vec<PathBuf>,
}

fn host_binds() -> Vec<PathBuf> {
    SYSTEM_DIRS
        .iter()
        .map(|d| Path::new("/").join(d))
        .filter(|p| fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false))
        .collect()
}

/// Returns the base template under `dir`, building it if needed.
pub fn ensure_base(dir: &Path) -> io::Result<Template> {
    let root = dir.join("base");
    let rootfs = root.join("rootfs");
    let stamp = root.join("version");
    if fs::read_to_string(&stamp).map(|v| v == VERSION).unwrap_or(false) && rootfs.is_dir() {
        return Ok(Template { name: "base".into(), rootfs, host_binds: host_binds() });
    }
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".base-build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    build_base(&tmp.join("rootfs"))?;
    fs::write(tmp.join("version"), VERSION)?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root)?;
    Ok(Template { name: "base".into(), rootfs, host_binds: host_binds() })
}

fn mkdir(p: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(p)?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

fn build_base(r: &Path) -> io::Result<()> {
    mkdir(r, 0o755)?;
    // Mirror the host's top-level symlinks (bin -> usr/bin on merged-usr
    // systems) and make mount points for the shared system directories.
    for d in SYSTEM_DIRS {
        let host = Path::new("/").join(d);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => symlink(fs::read_link(&host)?, r.join(d))?,
            Ok(m) if m.is_dir() => mkdir(&r.join(d), 0o755)?,
            _ => {}
        }
    }
    for (d, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("srv", 0o755),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("var/log", 0o755),
        ("var/lib", 0o755),
        ("var/cache", 0o755),
        ("home", 0o755),
        ("root", 0o700),
        (".warren", 0o755),
    ] {
        mkdir(&r.join(d), mode)?;
    }
    copy_etc(Path::new("/etc"), &r.join("etc"), Path::new(""))?;
    write_accounts(&r.join("etc"))?;
    // Homes from /etc/skel.
    let home = r.join("home/user");
    mkdir(&home, 0o750)?;
    for (dst, uid) in [(&home, 1000u32), (&r.join("root"), 0)] {
        if let Ok(rd) = fs::read_dir("/etc/skel") {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    let to = dst.join(e.file_name());
                    fs::copy(e.path(), &to)?;
                    std::os::unix::fs::lchown(&to, Some(uid), Some(uid))?;
                }
            }
        }
    }
    std::os::unix::fs::lchown(&home, Some(1000), Some(1000))?;
    fs::write(r.join("etc/hosts"), "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")?;
    fs::write(r.join("etc/hostname"), "workspace\n")?;
    Ok(())
}

/// Copies the allowed part of the host's /etc (see [`ETC_ALLOW`]).
fn copy_etc(src: &Path, dst: &Path, rel: &Path) -> io::Result<()> {
    copy_tree(src, dst, rel, &|r| etc_allowed(r), &|r| etc_on_the_way(r))
}

fn copy_tree(
    src: &Path,
    dst: &Path,
    rel: &Path,
    allowed: &dyn Fn(&Path) -> bool,
    on_the_way: &dyn Fn(&Path) -> bool,
) -> io::Result<()> {
    mkdir(dst, fs::symlink_metadata(src).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o755))?;
    for e in fs::read_dir(src)?.flatten() {
        let name = e.file_name();
        let r = rel.join(&name);
        if ETC_NEVER.iter().any(|d| Path::new(d) == r) {
            continue;
        }
        let from = e.path();
        let to = dst.join(&name);
        let Ok(meta) = fs::symlink_metadata(&from) else { continue };
        let ft = meta.file_type();
        if !allowed(&r) {
            if ft.is_dir() && on_the_way(&r) {
                copy_tree(&from, &to, &r, allowed, on_the_way)?;
            }
            continue;
        }
        if ft.is_symlink() && r == Path::new("resolv.conf") {
            // Often a link into /run (systemd-resolved), which workspaces
            // do not have: copy what it says.
            if let Ok(text) = fs::read(&from) {
                fs::write(&to, text)?;
            }
        } else if ft.is_symlink() {
            if let Ok(t) = fs::read_link(&from) {
                let _ = symlink(t, &to);
            }
        } else if ft.is_dir() {
            // Everything below an allowed directory is allowed.
            copy_tree(&from, &to, &r, &|_| true, &|_| false)?;
        } else if ft.is_file() {
            // Unreadable files (keys and the like) are skipped, not fatal.
            if fs::copy(&from, &to).is_ok() {
                fs::set_permissions(&to, fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))?;
            }
        }
    }
    Ok(())
}

/// passwd/group/shadow: the host's system accounts (uid < 1000) and
/// `nobody`, plus `user` (1000); every password locked.
fn write_accounts(etc: &Path) -> io::Result<()> {
    let keep = |id: Option<u32>, name: &str| name != "user" && matches!(id, Some(i) if i < 1000 || i == 65534);
    let mut passwd = String::new();
    let mut names = Vec::new();
    for l in fs::read_to_string("/etc/passwd").unwrap_or_default().lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 7 && keep(f[2].parse().ok(), f[0]) {
            passwd.push_str(l);
            passwd.push('\n');
            names.push(f[0].to_string());
        }
    }
    if !names.iter().any(|n| n == "root") {
        passwd.insert_str(0, "root:x:0:0:root:/root:/bin/bash\n");
        names.push("root".into());
    }
    passwd.push_str("user:x:1000:1000:user:/home/user:/bin/bash\n");
    names.push("user".into());
    let mut group = String::new();
    for l in fs::read_to_string("/etc/group").unwrap_or_default().lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && keep(f[2].parse().ok(), f[0]) {
            group.push_str(l);
            group.push('\n');
        }
    }
    if !group.lines().any(|l| l.starts_with("root:")) {
        group.insert_str(0, "root:x:0:\n");
    }
    group.push_str("user:x:1000:\n");
    let shadow: String = names.iter().map(|n| format!("{n}:*:19000:0:99999:7:::\n")).collect();
    fs::write(etc.join("passwd"), passwd)?;
    fs::write(etc.join("group"), group)?;
    fs::write(etc.join("shadow"), shadow)?;
    fs::set_permissions(etc.join("shadow"), fs::Permissions::from_mode(0o640))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etc_allow_list_takes_configuration_and_leaves_secrets() {
        for ok in
            ["ld.so.cache", "ssl/certs", "python3", "python3.11", "java-17-openjdk", "pam.d", "security/limits.conf"]
        {
            assert!(etc_allowed(Path::new(ok)), "{ok} is copied");
        }
        for no in
            ["shadow", "warren.toml", "ssl/private", "ssh", "sudoers", "security/opasswd", "docker", "environment"]
        {
            assert!(!etc_allowed(Path::new(no)), "{no} is not copied");
        }
        assert!(etc_on_the_way(Path::new("ssl")));
        assert!(etc_on_the_way(Path::new("security")));
        assert!(!etc_on_the_way(Path::new("ssh")));
        // Inside an allowed directory, the never-list still holds.
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("apt/auth.conf.d")).unwrap();
        fs::write(src.path().join("apt/auth.conf.d/key"), "secret").unwrap();
        fs::write(src.path().join("apt/sources.list"), "deb x").unwrap();
        fs::create_dir_all(src.path().join("ssl/private")).unwrap();
        fs::write(src.path().join("ssl/private/key.pem"), "secret").unwrap();
        fs::create_dir_all(src.path().join("ssl/certs")).unwrap();
        fs::write(src.path().join("ssl/certs/ca.pem"), "public").unwrap();
        fs::write(src.path().join("warren.toml"), "secret").unwrap();
        copy_etc(src.path(), &dst.path().join("etc"), Path::new("")).unwrap();
        let etc = dst.path().join("etc");
        assert!(etc.join("apt/sources.list").exists());
        assert!(etc.join("ssl/certs/ca.pem").exists());
        assert!(!etc.join("apt/auth.conf.d").exists());
        assert!(!etc.join("ssl/private").exists());
        assert!(!etc.join("warren.toml").exists());
    }
}
