//! filesystem.Filesystem, watchers and the /files endpoints over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use bytes::Bytes;
use common::Agent;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use warren_proto::client::{collect_limited, full, urlencode, CallOptions};
use warren_proto::connect::Code;
use warren_proto::filesystem::{EventType, FileType, WatchDirRequest, WatchDirResponse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_list_make_move_remove() {
    let a = Agent::start();
    let c = a.unix();
    let root = a.dir.path().join("fs");
    let r = root.to_str().unwrap();

    let made = c.make_dir(&format!("{r}/a/b/c")).await.unwrap();
    assert_eq!(made.file_type, FileType::Directory);
    assert_eq!(made.name, "c");
    assert_eq!(made.mode, (1 << 31) | 0o755);
    assert_eq!(made.permissions, "drwxr-xr-x");
    assert_eq!(made.owner, "root");
    let e = c.make_dir(&format!("{r}/a/b")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::AlreadyExists));

    std::fs::write(root.join("a/file.txt"), b"12345").unwrap();
    std::os::unix::fs::symlink(root.join("a/file.txt"), root.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", root.join("a/dangling")).unwrap();
    let f = c.stat(&format!("{r}/a/file.txt")).await.unwrap();
    assert_eq!((f.file_type, f.size, f.permissions.as_str()), (FileType::File, 5, "-rw-r--r--"));
    assert!(f.modified_time.as_deref().unwrap().ends_with('Z'));
    let l = c.stat(&format!("{r}/a/link")).await.unwrap();
    assert_eq!(l.file_type, FileType::File);
    assert_eq!(l.symlink_target.as_deref(), Some(root.join("a/file.txt").to_str().unwrap()));
    assert!(l.permissions.starts_with('L'));
    let d = c.stat(&format!("{r}/a/dangling")).await.unwrap();
    assert_eq!(d.file_type, FileType::Unspecified);
    let e = c.stat(&format!("{r}/missing")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));

    let one = c.list_dir(&format!("{r}/a"), 1).await.unwrap();
    let names: Vec<_> = one.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["b", "dangling", "file.txt", "link"]);
    let deep = c.list_dir(&format!("{r}/a"), 3).await.unwrap();
    let paths: Vec<_> = deep.iter().map(|e| e.path.strip_prefix(r).unwrap().to_string()).collect();
    assert_eq!(paths, ["/a/b", "/a/b/c", "/a/dangling", "/a/file.txt", "/a/link"]);
    let e = c.list_dir(&format!("{r}/a/file.txt"), 1).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    let e = c.list_dir(&format!("{r}/zzz"), 1).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));

    let moved = c.rename(&format!("{r}/a/file.txt"), &format!("{r}/new/dir/f.txt")).await.unwrap();
    assert_eq!(moved.path, format!("{r}/new/dir/f.txt"));
    assert_eq!(std::fs::read(root.join("new/dir/f.txt")).unwrap(), b"12345");
    let e = c.rename(&format!("{r}/a/file.txt"), &format!("{r}/x")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));

    c.remove(&format!("{r}/a")).await.unwrap();
    assert!(!root.join("a").exists());
    c.remove(&format!("{r}/a")).await.unwrap();
    let e = c.remove("/").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));

    // Directories made for another user belong to that user.
    let nobody = c.as_user("nobody");
    let made = nobody.make_dir(&format!("{r}/owned/by/nobody")).await.unwrap();
    assert_eq!(made.owner, "nobody");
    let uid = std::fs::metadata(root.join("owned")).unwrap().uid();
    assert_ne!(uid, 0);
    // Relative paths resolve against the user's home.
    let home = c.stat("~").await.unwrap();
    assert_eq!(home.path, "/root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dir_stream_and_polled_watchers() {
    let a = Agent::start();
    let c = a.unix();
    let root = a.dir.path().join("w");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let r = root.to_str().unwrap().to_string();

    let req = WatchDirRequest { path: r.clone(), recursive: true, ..Default::default() };
    let mut s = c.watch_dir(&req, &CallOptions::default()).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), WatchDirResponse::Start(Default::default()));
    std::fs::write(root.join("sub/new.txt"), b"x").unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|(n, t): &(String, EventType)| n == "sub/new.txt" && *t == EventType::Create) {
        let ev = tokio::time::timeout(Duration::from_secs(5), s.next()).await.unwrap().unwrap().unwrap();
        if let WatchDirResponse::Filesystem(f) = ev {
            seen.push((f.name, f.event_type));
        }
    }

    let id = c.create_watcher(&WatchDirRequest { path: r.clone(), ..Default::default() }).await.unwrap();
    std::fs::write(root.join("p.txt"), b"1").unwrap();
    std::fs::rename(root.join("p.txt"), root.join("q.txt")).unwrap();
    std::fs::remove_file(root.join("q.txt")).unwrap();
    let mut got: Vec<(String, EventType)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !got.iter().any(|(n, t)| n == "q.txt" && *t == EventType::Remove) {
        assert!(std::time::Instant::now() < deadline, "events missing: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        got.extend(c.get_watcher_events(&id).await.unwrap().into_iter().map(|e| (e.name, e.event_type)));
    }
    let got: Vec<(&str, EventType)> = got.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    assert!(got.contains(&("p.txt", EventType::Create)), "{got:?}");
    assert!(got.contains(&("p.txt", EventType::Rename)), "{got:?}");
    assert!(got.contains(&("q.txt", EventType::Remove)), "{got:?}");
    assert!(c.get_watcher_events(&id).await.unwrap().is_empty());
    c.remove_watcher(&id).await.unwrap();
    let e = c.get_watcher_events(&id).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    let e = c.create_watcher(&WatchDirRequest { path: format!("{r}/nope"), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
}

fn multipart(boundary: &str, parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, filename, data) in parts {
        b.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_upload_forms_and_download() {
    let a = Agent::start();
    let c = a.unix();
    let root = a.dir.path().join("up");
    let r = root.to_str().unwrap().to_string();

    // Raw octet-stream into a new directory tree.
    let info = c.write_bytes(&format!("{r}/deep/dir/raw.bin"), &b"raw bytes"[..]).await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].name, "raw.bin");
    assert_eq!(info[0].kind, "file");
    assert_eq!(c.read_to_vec(&format!("{r}/deep/dir/raw.bin")).await.unwrap(), b"raw bytes");

    // Multipart with two files named by their filenames; exact reply keys.
    let body = multipart("XyZ", &[("file", &format!("{r}/m1.txt"), b"one"), ("file", &format!("{r}/m2.txt"), b"two")]);
    let req =
        Request::post("/files").header("content-type", "multipart/form-data; boundary=XyZ").body(full(body)).unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&collect_limited(resp.into_body(), 1 << 16).await.unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"name": "m1.txt", "type": "file", "path": format!("{r}/m1.txt")},
            {"name": "m2.txt", "type": "file", "path": format!("{r}/m2.txt")}
        ])
    );
    assert_eq!(std::fs::read(root.join("m2.txt")).unwrap(), b"two");

    // The path query parameter wins over the part's filename; relative paths
    // land in the user's home.
    let body = multipart("b", &[("file", "ignored.txt", b"via query")]);
    let target = format!("{r}/q.txt");
    let req = Request::post(format!("/files?path={}", urlencode(&target)))
        .header("content-type", "multipart/form-data; boundary=b")
        .body(full(body))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 200);
    assert_eq!(std::fs::read(&target).unwrap(), b"via query");

    // Gzip-encoded raw upload.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &b"zip".repeat(1000)).unwrap();
    let req = Request::post(format!("/files?path={}", urlencode(&format!("{r}/g.txt"))))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(full(gz.finish().unwrap()))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 200);
    assert_eq!(std::fs::read(root.join("g.txt")).unwrap(), b"zip".repeat(1000));

    // Errors: missing file, a directory, no path, no file part.
    let e = c.read_to_vec(&format!("{r}/none")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    let resp = c
        .request(Request::get(format!("/files?path={}", urlencode(&r))).body(full(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value =
        serde_json::from_slice(&collect_limited(resp.into_body(), 1 << 16).await.unwrap()).unwrap();
    assert_eq!(v["code"], 400);
    let e = c.write_bytes(&r, &b"x"[..]).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    let resp = c
        .request(Request::post("/files").header("content-type", "application/octet-stream").body(full("x")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = multipart("b", &[("other", "x", b"x")]);
    let req =
        Request::post("/files").header("content-type", "multipart/form-data; boundary=b").body(full(body)).unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 400);

    // Files written for a user belong to that user, as do new parents.
    let nobody = c.as_user("nobody");
    nobody.write_bytes(&format!("{r}/nb/x.txt"), &b"n"[..]).await.unwrap();
    assert_ne!(std::fs::metadata(root.join("nb/x.txt")).unwrap().uid(), 0);
    assert_ne!(std::fs::metadata(root.join("nb")).unwrap().uid(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_down_with_bounded_memory() {
    let a = Agent::start();
    let c = a.unix();
    let path = a.dir.path().join("big.bin");
    let p = path.to_str().unwrap().to_string();
    const CHUNK: usize = 1 << 20;
    const N: usize = 1024;
    let frames = futures_util::stream::iter((0..N).map(|i| {
        let mut v = vec![(i % 251) as u8; CHUNK];
        v[0] = 0xAB;
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(v)))
    }));
    let info = c.write_file(&p, BodyExt::boxed_unsync(StreamBody::new(frames))).await.unwrap();
    assert_eq!(info[0].path, p);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), (CHUNK * N) as u64);

    let mut body = c.read_file(&p).await.unwrap();
    let mut total = 0usize;
    let mut checksum = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            total += d.len();
            checksum = d.iter().fold(checksum, |acc, b| acc.wrapping_add(*b as u64));
        }
    }
    assert_eq!(total, CHUNK * N);
    let expected: u64 = (0..N).map(|i| 0xABu64 + (i % 251) as u64 * (CHUNK as u64 - 1)).sum();
    assert_eq!(checksum, expected);
    let peak = a.peak_rss_kib();
    assert!(peak < 64 * 1024, "agent peak RSS {peak} KiB for a 1 GiB round trip");
    std::fs::remove_file(&path).unwrap();
}
