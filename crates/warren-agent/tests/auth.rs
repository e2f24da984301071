//! Access tokens, signed /files URLs and the /init bootstrap call.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

use bytes::Bytes;
use common::{Agent, Opts};
use http::Request;
use warren_proto::client::full;
use warren_proto::connect::Code;
use warren_proto::http::{FileOp, InitRequest};

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_guards_everything_but_health() {
    let a = Agent::start_with(Opts { access_token: Some("tok-1"), ..Opts::default() });
    let anon = a.unix();
    anon.health().await.unwrap();
    assert_eq!(anon.list().await.unwrap_err().code(), Some(Code::Unauthenticated));
    assert_eq!(anon.stat("/").await.unwrap_err().code(), Some(Code::Unauthenticated));
    assert_eq!(anon.read_to_vec("/etc/hostname").await.unwrap_err().code(), Some(Code::Unauthenticated));
    let e = anon.start(&Default::default(), &Default::default()).await.err().unwrap();
    assert_eq!(e.code(), Some(Code::Unauthenticated));
    let wrong = a.unix().with_access_token(Some("tok-2".into()));
    assert_eq!(wrong.list().await.unwrap_err().code(), Some(Code::Unauthenticated));
    let right = a.unix().with_access_token(Some("tok-1".into()));
    right.list().await.unwrap();
    assert_eq!(right.sh("echo ok").await.unwrap().stdout, b"ok\n");
    // /envs too.
    let r = anon.request(Request::get("/envs").body(full(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_for_files() {
    let a = Agent::start_with(Opts { access_token: Some("sign-key"), ..Opts::default() });
    let path = a.dir.path().join("s.txt");
    let p = path.to_str().unwrap();
    std::fs::write(&path, b"signed").unwrap();
    let anon = a.unix();
    let get = |uri: String| Request::get(uri).body(full(Bytes::new())).unwrap();

    let ok = anon.signed_files_path(p, FileOp::Read, "sign-key", None);
    assert_eq!(anon.request(get(ok)).await.unwrap().status(), 200);
    let ok_exp = anon.signed_files_path(p, FileOp::Read, "sign-key", Some(now() + 60));
    assert_eq!(anon.request(get(ok_exp)).await.unwrap().status(), 200);
    let expired = anon.signed_files_path(p, FileOp::Read, "sign-key", Some(now() - 1));
    assert_eq!(anon.request(get(expired)).await.unwrap().status(), 401);
    let wrong_key = anon.signed_files_path(p, FileOp::Read, "other", None);
    assert_eq!(anon.request(get(wrong_key)).await.unwrap().status(), 401);
    // A write signature does not allow reading, and the other way round.
    let write_sig = anon.signed_files_path(p, FileOp::Write, "sign-key", None);
    assert_eq!(anon.request(get(write_sig.clone())).await.unwrap().status(), 401);
    let post = Request::post(write_sig).header("content-type", "application/octet-stream").body(full("new")).unwrap();
    assert_eq!(anon.request(post).await.unwrap().status(), 200);
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    // A signature for one path does not open another.
    let other = anon.signed_files_path(p, FileOp::Read, "sign-key", None).replace("s.txt", "t.txt");
    assert_eq!(anon.request(get(other)).await.unwrap().status(), 401);
    // Signatures bind the user too.
    let as_nobody = anon.as_user("nobody").signed_files_path(p, FileOp::Read, "sign-key", None);
    let forged = as_nobody.replace("username=nobody", "username=root");
    assert_eq!(anon.request(get(forged)).await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_rotates_token_user_and_workdir() {
    let a = Agent::start_with(Opts { access_token: Some("old"), ..Opts::default() });
    let c = a.unix();
    let e = c.init("wrong", &InitRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated));
    let e = c
        .init("init-secret", &InitRequest { default_user: Some("ghost".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    c.init(
        "init-secret",
        &InitRequest {
            access_token: Some("new".into()),
            default_user: Some("nobody".into()),
            default_workdir: Some("/tmp".into()),
            env_vars: Some([("GREETING".into(), "hi".into())].into()),
        },
    )
    .await
    .unwrap();
    let old = a.unix().with_access_token(Some("old".into()));
    assert_eq!(old.list().await.unwrap_err().code(), Some(Code::Unauthenticated));
    let new = a.unix().with_access_token(Some("new".into()));
    let out = new.sh("echo $USER $GREETING; pwd").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nobody hi\n/tmp\n");
    // An agent without an init token refuses bootstrap entirely.
    let b = Agent::start_with(Opts { init_token: None, ..Opts::default() });
    let e = b.unix().init("anything", &InitRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied));
}

#[test]
fn secrets_do_not_leak_into_processes() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let a = Agent::start_with(Opts { access_token: Some("leak-check"), ..Opts::default() });
        let c = a.unix().with_access_token(Some("leak-check".into()));
        let out = c.sh("env; cat /proc/$PPID/environ 2>/dev/null | tr '\\0' '\\n'").await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("leak-check"), "{text}");
        assert!(!text.contains("init-secret"), "{text}");
    });
}
