//! Connect framing, content types, HTTP versions and bad input, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

use bytes::Bytes;
use common::{envelope, Agent, Opts};
use http::Request;
use http_body_util::BodyExt;
use warren_proto::client::{collect_limited, full};
use warren_proto::connect::Code;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_unknown_routes() {
    let a = Agent::start();
    let c = a.unix();
    c.health().await.unwrap();
    let r = c.request(Request::get("/nope").body(full(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(r.status(), 404);
    let body = collect_limited(r.into_body(), 1 << 16).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], 404);

    let err = c.unary::<_, serde_json::Value>("/process.Process/Nope", &serde_json::json!({})).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unimplemented));
    let r = c.request(Request::get("/process.Process/List").body(full(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(r.status(), 501);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_and_the_agent_survives() {
    let mut a = Agent::start_with(Opts { extra: vec!["--max-message-bytes".into(), "2048".into()], ..Opts::default() });
    let c = a.tcp_client();
    let post = |path: &str, ct: &str, body: Vec<u8>| {
        Request::post(path.to_string()).header("content-type", ct.to_string()).body(full(body)).unwrap()
    };
    // Malformed JSON.
    let r = c.request(post("/filesystem.Filesystem/Stat", "application/json", b"{not json".to_vec())).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = serde_json::from_slice(&collect_limited(r.into_body(), 1 << 16).await.unwrap()).unwrap();
    assert_eq!(v["code"], "invalid_argument");
    // Wrong types and unknown enum values.
    let r = c
        .request(post(
            "/process.Process/SendSignal",
            "application/json",
            br#"{"process":{"pid":"x"},"signal":"SIGNAL_SIGHUP"}"#.to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Wrong content types: proto and connect+json on a unary method.
    let r = c.request(post("/process.Process/List", "application/proto", vec![])).await.unwrap();
    assert_eq!(r.status(), 415);
    let r = c.request(post("/process.Process/Start", "application/json", b"{}".to_vec())).await.unwrap();
    assert_eq!(r.status(), 415);
    // Oversized unary message.
    let big = format!(r#"{{"path":"{}"}}"#, "a".repeat(4096));
    let r = c.request(post("/filesystem.Filesystem/Stat", "application/json", big.into_bytes())).await.unwrap();
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = serde_json::from_slice(&collect_limited(r.into_body(), 1 << 16).await.unwrap()).unwrap();
    assert_eq!(v["code"], "resource_exhausted");

    // Stream errors arrive in the end-of-stream frame with HTTP 200.
    for (body, code) in [
        (envelope(0, &vec![b' '; 4096]), "resource_exhausted"),
        (vec![0, 0, 0], "invalid_argument"),
        (envelope(1, b"{}"), "unimplemented"),
        (envelope(0, b"{bad"), "invalid_argument"),
        (envelope(2, b"{}"), "invalid_argument"),
        ([envelope(0, b"{}"), envelope(0, b"{}")].concat(), "invalid_argument"),
        (envelope(0, br#"{"process":{"cmd":""}}"#), "invalid_argument"),
        (envelope(0, br#"{"process":{"cmd":"/no/such/binary"}}"#), "not_found"),
    ] {
        let r = c.request(post("/process.Process/Start", "application/connect+json", body)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/connect+json");
        let raw = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(raw[0], 2, "only an end-of-stream frame: {}", text(&raw));
        let v: serde_json::Value = serde_json::from_slice(&raw[5..]).unwrap();
        assert_eq!(v["error"]["code"], code, "{}", text(&raw));
    }
    // Unknown pid / tag / watcher / user.
    let e = c
        .send_signal(warren_proto::process::ProcessSelector::Pid(999_999), warren_proto::process::Signal::Sigkill)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    let e = c.close_stdin(warren_proto::process::ProcessSelector::Tag("none".into())).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    let e = c.get_watcher_events("w404").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    let e = c.as_user("no-such-user").list().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated));
    let r =
        c.request(post("/process.Process/List", "application/json", b"{}".to_vec())).await.map(|r| r.status()).unwrap();
    assert_eq!(r, 200);
    // Garbage on the raw socket.
    let resp = a.raw_http1(b"\x16\x03\x01garbage\r\n\r\n");
    assert!(!resp.starts_with(b"HTTP/1.1 200"));
    c.health().await.unwrap();
    assert!(a.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_with_content_length_and_chunked_bodies() {
    let a = Agent::start();
    // Unary with Content-Length.
    let body = br#"{"path":"/"}"#;
    let req = format!(
        "POST /filesystem.Filesystem/Stat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let resp = a.raw_http1(&[req.as_bytes(), body].concat());
    let s = text(&resp);
    assert!(s.starts_with("HTTP/1.1 200"), "{s}");
    assert!(s.contains("\"FILE_TYPE_DIRECTORY\""), "{s}");

    // Server stream with a chunked request body, as connectrpc sends it.
    let env = envelope(0, br#"{"process":{"cmd":"/bin/echo","args":["chunked ok"]},"stdin":false}"#);
    let (a1, a2) = env.split_at(7);
    let req = format!(
        "POST /process.Process/Start HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        a1.len()
    );
    let mut wire = req.into_bytes();
    wire.extend_from_slice(a1);
    wire.extend_from_slice(format!("\r\n{:x}\r\n", a2.len()).as_bytes());
    wire.extend_from_slice(a2);
    wire.extend_from_slice(b"\r\n0\r\n\r\n");
    let resp = a.raw_http1(&wire);
    let s = text(&resp);
    assert!(s.starts_with("HTTP/1.1 200"), "{s}");
    assert!(s.contains("content-type: application/connect+json\r\n"), "{s}");
    // "chunked ok\n" in base64.
    assert!(s.contains("Y2h1bmtlZCBvawo="), "{s}");
    assert!(s.contains("\"exited\":true"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tcp_and_unix() {
    let a = Agent::start();
    for c in [a.unix(), a.tcp_client()] {
        let out = c.exec("/bin/echo", &["h2"]).await.unwrap();
        assert_eq!(out.stdout, b"h2\n");
        assert_eq!(out.exit_code, 0);
    }
}
