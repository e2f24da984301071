//! Port forwarding for the gateway: a request carrying
//! `X-Warren-Forward-Port: N` (and the init token) is proxied to
//! `127.0.0.1:N` inside the workspace, so a server a user starts there is
//! reachable from outside although the workspace has no network of its own.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use warren_proto::http::constant_time_eq;

use crate::body::RespBody;
use crate::server::http_error;
use crate::state::Agent;

/// Headers that belong to one hop only.
const HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

pub async fn forward(agent: &Agent, req: Request<Incoming>) -> Response<RespBody> {
    let authorised = match (&agent.config.init_token, req.headers().get(warren_proto::INIT_TOKEN_HEADER)) {
        (Some(want), Some(got)) => constant_time_eq(got.as_bytes(), want.as_bytes()),
        _ => false,
    };
    if !authorised {
        return http_error(StatusCode::UNAUTHORIZED, "port forwarding needs the init token");
    }
    let port: u16 = match req
        .headers()
        .get(warren_proto::FORWARD_PORT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        Some(p) if p > 0 => p,
        _ => return http_error(StatusCode::BAD_REQUEST, "invalid forward port"),
    };
    let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return http_error(StatusCode::BAD_GATEWAY, format!("port is not open: {port} ({e})")),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => return http_error(StatusCode::BAD_GATEWAY, format!("port {port}: {e}")),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    for h in HOP {
        parts.headers.remove(*h);
    }
    parts.headers.remove(warren_proto::INIT_TOKEN_HEADER);
    parts.headers.remove(warren_proto::FORWARD_PORT_HEADER);
    parts.version = http::Version::HTTP_11;
    if !parts.headers.contains_key(http::header::HOST) {
        if let Ok(v) = format!("localhost:{port}").parse() {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    let pq = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    parts.uri = match pq.parse() {
        Ok(u) => u,
        Err(_) => return http_error(StatusCode::BAD_REQUEST, "bad request path"),
    };
    let out = Request::from_parts(parts, body);
    match sender.send_request(out).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for h in HOP {
                parts.headers.remove(*h);
            }
            let body = body.map_err(std::io::Error::other).map_frame(|f| f.map_data(|d: Bytes| d)).boxed_unsync();
            Response::from_parts(parts, body)
        }
        Err(e) => http_error(StatusCode::BAD_GATEWAY, format!("port {port}: {e}")),
    }
}
