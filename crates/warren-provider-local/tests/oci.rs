//! OCI image templates: import a `docker save` archive built here (no
//! registry needed), with a gzipped layer and whiteouts, and run it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use warren_core::{random_token, Size, WorkspaceId};
use warren_proto::client::AgentClient;
use warren_provider::{CreateSpec, NetworkMode, ProviderError, SandboxProvider};
use warren_provider_local::{LocalConfig, LocalProvider};

use warren_test_support::static_agent;

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, path, &[][..]).unwrap();
}

/// A two-layer image: dash as /bin/sh with its libraries, then a layer that
/// deletes a file and makes a directory opaque.
fn image(dir: &Path) -> PathBuf {
    let mut l1 = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "work", "opaque", "lib", "lib64", "lib/x86_64-linux-gnu"] {
        add_dir(&mut l1, d);
    }
    add_file(&mut l1, "bin/sh", &std::fs::read("/usr/bin/dash").unwrap(), 0o755);
    let ldd = std::process::Command::new("ldd").arg("/usr/bin/dash").output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let rel = lib.trim_start_matches('/').replace("usr/lib", "lib");
        add_file(&mut l1, &rel, &std::fs::read(lib).unwrap(), 0o755);
    }
    add_file(&mut l1, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
    add_file(&mut l1, "removeme.txt", b"old\n", 0o644);
    add_file(&mut l1, "keep.txt", b"kept\n", 0o644);
    add_file(&mut l1, "opaque/old.txt", b"old\n", 0o644);
    let l1 = l1.into_inner().unwrap();

    let mut l2 = tar::Builder::new(Vec::new());
    add_file(&mut l2, ".wh.removeme.txt", b"", 0o644);
    add_dir(&mut l2, "opaque");
    add_file(&mut l2, "opaque/.wh..wh..opq", b"", 0o644);
    add_file(&mut l2, "opaque/new.txt", b"new\n", 0o644);
    add_file(&mut l2, "work/hello.txt", b"hello from the image\n", 0o644);
    // A hostile entry, written by hand (the builder refuses such paths).
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..13].copy_from_slice(b"../escape.txt");
    h.set_size(6);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    l2.append(&h, &b"never\n"[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&l2.into_inner().unwrap()).unwrap();
    let l2 = gz.finish().unwrap();

    let config = serde_json::json!({"config": {"Env": ["PATH=/bin", "IMAGE_VAR=from-image"], "WorkingDir": "/work"}});
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": ["tiny:1"], "Layers": ["l1/layer.tar", "l2/layer.tar.gz"]}]);
    let mut outer = tar::Builder::new(Vec::new());
    add_file(&mut outer, "manifest.json", manifest.to_string().as_bytes(), 0o644);
    add_file(&mut outer, "config.json", config.to_string().as_bytes(), 0o644);
    add_file(&mut outer, "l1/layer.tar", &l1, 0o644);
    add_file(&mut outer, "l2/layer.tar.gz", &l2, 0o644);
    let path = dir.join("tiny.tar");
    std::fs::write(&path, outer.into_inner().unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_run_an_image_with_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    cfg.agent = static_agent();
    let p = LocalProvider::new(LocalConfig { ..cfg }).unwrap();
    let archive = image(dir.path());
    let t = p.import_template("tiny", &archive).await.unwrap();
    assert_eq!(t.name, "tiny");
    assert!(p.templates().await.unwrap().iter().any(|t| t.name == "tiny" && t.description.contains("tiny:1")));
    // Importing again reuses the content-addressed layers.
    p.import_template("tiny-again", &archive).await.unwrap();
    let layers = std::fs::read_dir(dir.path().join("templates/layers")).unwrap().count();
    assert_eq!(layers, 2);
    assert!(!dir.path().join("templates/escape.txt").exists() && !dir.path().join("escape.txt").exists());

    let spec = CreateSpec {
        tenant: None,
        id: WorkspaceId::generate(),
        template: "tiny".into(),
        size: Size { millicpus: 500, memory_mib: 128, disk_mib: 64, pids: 64 },
        network: NetworkMode::None,
        env: [("SPEC_VAR".to_string(), "from-spec".to_string())].into(),
        labels: Default::default(),
        init_token: random_token(16),
        access_token: Some(random_token(16)),
    };
    let info = p.create(&spec).await.unwrap();
    let c = AgentClient::new(info.endpoint.clone()).with_access_token(spec.access_token.clone());
    let script = "echo $IMAGE_VAR $SPEC_VAR; pwd; read l < hello.txt; echo $l; \
                  for f in /removeme.txt /keep.txt /opaque/old.txt /opaque/new.txt; do [ -e $f ] && echo $f:yes || echo $f:no; done";
    let out = c.exec("/bin/sh", &["-c", script]).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-image from-spec\n/work\nhello from the image\n/removeme.txt:no\n/keep.txt:yes\n/opaque/old.txt:no\n/opaque/new.txt:yes\n",
        "{out:?}"
    );
    // The image is read-only below; writes land in the workspace's own layer.
    let out = c.exec("/bin/sh", &["-c", "echo changed > /keep.txt; read l < /keep.txt; echo $l"]).await.unwrap();
    assert_eq!(out.stdout, b"changed\n");
    p.destroy(&info.id).await.unwrap();
    let mut again = spec.clone();
    again.id = WorkspaceId::generate();
    let info = p.create(&again).await.unwrap();
    let c = AgentClient::new(info.endpoint.clone()).with_access_token(again.access_token.clone());
    let out = c.exec("/bin/sh", &["-c", "read l < /keep.txt; echo $l"]).await.unwrap();
    assert_eq!(out.stdout, b"kept\n", "a new workspace starts from the pristine image");
    p.destroy(&info.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_and_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all").unwrap();
    assert!(matches!(p.import_template("junk", &junk).await, Err(ProviderError::InvalidSpec(_))));
    let empty = dir.path().join("empty.tar");
    std::fs::write(&empty, tar::Builder::new(Vec::new()).into_inner().unwrap()).unwrap();
    match p.import_template("empty", &empty).await {
        Err(ProviderError::InvalidSpec(m)) => assert!(m.contains("manifest.json"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.import_template("base", &empty).await, Err(ProviderError::InvalidSpec(_))));
    assert!(matches!(p.import_template("Bad Name", &empty).await, Err(ProviderError::InvalidSpec(_))));
    assert_eq!(p.templates().await.unwrap().len(), 1, "nothing was added");
}

/// A header of a link or device entry, owned by root.
fn special(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h
}

/// A layer written to attack the host through the importer: a symlink to a
/// host directory, then whiteouts, an opaque marker and files through it; a
/// hard link through it; a block device node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_layer_cannot_touch_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let hp = host.path();
    std::fs::write(hp.join("victim.txt"), "host file").unwrap();
    std::fs::create_dir(hp.join("sub")).unwrap();
    std::fs::write(hp.join("sub/inner.txt"), "host inner").unwrap();
    let host_dir = hp.display().to_string();

    let mut l = tar::Builder::new(Vec::new());
    l.append_link(&mut special(tar::EntryType::Symlink, 0o777), "evil", &host_dir).unwrap();
    add_file(&mut l, "evil/.wh.victim.txt", b"", 0o644);
    add_file(&mut l, "evil/sub/.wh..wh..opq", b"", 0o644);
    add_file(&mut l, "evil/planted.txt", b"planted", 0o644);
    add_file(&mut l, "bin/sh", &std::fs::read("/usr/bin/dash").unwrap(), 0o755);
    let mut dev = special(tar::EntryType::Block, 0o666);
    dev.set_device_major(8).unwrap();
    dev.set_device_minor(0).unwrap();
    l.append_data(&mut dev, "disk", &[][..]).unwrap();
    let layer = l.into_inner().unwrap();
    let archive = |layer: &[u8], name: &str| {
        let config = serde_json::json!({"config": {"Env": ["PATH=/bin"]}});
        let manifest = serde_json::json!([{"Config": "config.json", "Layers": ["l/layer.tar"]}]);
        let mut outer = tar::Builder::new(Vec::new());
        add_file(&mut outer, "manifest.json", manifest.to_string().as_bytes(), 0o644);
        add_file(&mut outer, "config.json", config.to_string().as_bytes(), 0o644);
        add_file(&mut outer, "l/layer.tar", layer, 0o644);
        let path = dir.path().join(name);
        std::fs::write(&path, outer.into_inner().unwrap()).unwrap();
        path
    };
    let p = common::provider(dir.path());
    p.import_template("evil", &archive(&layer, "evil.tar")).await.expect("the layer imports, confined to itself");
    let host_untouched = || {
        assert_eq!(std::fs::read_to_string(hp.join("victim.txt")).unwrap(), "host file", "host file replaced");
        assert!(std::fs::symlink_metadata(hp.join("victim.txt")).unwrap().file_type().is_file());
        assert_eq!(std::fs::read_to_string(hp.join("sub/inner.txt")).unwrap(), "host inner");
        assert!(!hp.join("planted.txt").exists(), "a file was planted on the host");
        let c = std::ffi::CString::new(format!("{host_dir}/sub")).unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: lgetxattr into a buffer we own.
        let n = unsafe {
            libc::lgetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        assert!(n < 0, "an opaque marker was set on a host directory");
    };
    host_untouched();
    // What the layer asked for happened inside the layer, and the device was dropped.
    let layers = dir.path().join("templates/layers");
    let store = std::fs::read_dir(&layers).unwrap().flatten().next().unwrap().path();
    assert!(store.join(hp.strip_prefix("/").unwrap()).join("planted.txt").exists());
    assert!(!store.join("disk").exists(), "device nodes are not unpacked");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("templates")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the layer store is root's alone");
    assert_eq!(std::fs::metadata(&layers).unwrap().permissions().mode() & 0o777, 0o700);

    // A hard link through the symlink to a host file: refused, nothing changes.
    let mut l = tar::Builder::new(Vec::new());
    l.append_link(&mut special(tar::EntryType::Symlink, 0o777), "evil", &host_dir).unwrap();
    l.append_link(&mut special(tar::EntryType::Link, 0o644), "stolen", "evil/victim.txt").unwrap();
    let before = std::fs::read_dir(&layers).unwrap().count();
    match p.import_template("evil2", &archive(&l.into_inner().unwrap(), "evil2.tar")).await {
        Err(ProviderError::InvalidSpec(m)) => assert!(m.contains("stolen") || m.contains("victim"), "{m}"),
        other => panic!("a hard link out of the layer must be refused: {other:?}"),
    }
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), before, "no partial layer is kept");
    assert_eq!(std::fs::metadata(hp.join("victim.txt")).unwrap().nlink(), 1, "no link to the host file");
    host_untouched();
}
