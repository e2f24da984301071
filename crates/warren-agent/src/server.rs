//! HTTP edge of the agent: routing, authentication and Connect plumbing.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use warren_proto::connect::{self, Code, ConnectError, Decoder};
use warren_proto::http::{constant_time_eq, HttpError, InitRequest};

use crate::body::{self, ChannelBody, RespBody};
use crate::state::Agent;
use crate::users::User;
use crate::{files, fsops, process, watch};

/// What an RPC handler knows about its call.
pub struct RpcCtx {
    pub user: User,
    /// `Connect-Timeout-Ms`.
    pub timeout: Option<Duration>,
    /// `Keepalive-Ping-Interval`.
    pub keepalive: Option<Duration>,
}

/// The sending half of a server stream.
pub struct StreamTx {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl StreamTx {
    /// Sends one message. False when the client has gone away.
    pub async fn send<T: Serialize>(&self, msg: &T) -> bool {
        self.tx.send(Ok(connect::message_envelope(msg))).await.is_ok()
    }

    /// Sends the end-of-stream frame; the body ends when `self` drops.
    pub async fn finish(self, error: Option<ConnectError>) {
        let _ = self.tx.send(Ok(connect::end_stream_envelope(error))).await;
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<RespBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body::full(body))
        .unwrap_or_else(|_| Response::new(body::empty()))
}

/// The `{code: int, message}` error of the plain HTTP endpoints.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response<RespBody> {
    json_response(status, &HttpError { code: status.as_u16(), message: message.into() })
}

/// A unary Connect error reply.
pub fn connect_error(e: &ConnectError) -> Response<RespBody> {
    json_response(StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e)
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// True when the request carries the right access token (or none is needed).
pub fn token_ok(agent: &Agent, h: &HeaderMap) -> bool {
    match agent.access_token() {
        None => true,
        Some(t) => header_str(h, warren_proto::ACCESS_TOKEN_HEADER)
            .map(|got| constant_time_eq(got.as_bytes(), t.as_bytes()))
            .unwrap_or(false),
    }
}

/// The user named by `Authorization: Basic base64(user:)`, if any.
fn basic_user(h: &HeaderMap) -> Result<Option<String>, ConnectError> {
    let Some(v) = header_str(h, "authorization") else {
        return Ok(None);
    };
    let bad = || ConnectError::new(Code::Unauthenticated, "malformed Authorization header");
    let b64 = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")).ok_or_else(bad)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let user = s.split_once(':').map(|(u, _)| u).unwrap_or(&s);
    Ok(Some(user.to_string()))
}

/// Reads a whole request body, failing past `limit` bytes.
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ConnectError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ConnectError::new(Code::Canceled, format!("reading request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ConnectError::new(
                    Code::ResourceExhausted,
                    format!("request message larger than the limit of {limit} bytes"),
                ));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// Parses a JSON message; an empty body is the empty message.
pub fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ConnectError> {
    let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) { b"{}" } else { payload };
    serde_json::from_slice(payload).map_err(|e| ConnectError::invalid(format!("invalid request message: {e}")))
}

/// Entry point for every request.
pub async fn handle(agent: Arc<Agent>, req: Request<Incoming>) -> Response<RespBody> {
    if req.headers().contains_key(warren_proto::FORWARD_PORT_HEADER) {
        return crate::forward::forward(&agent, req).await;
    }
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") | (&Method::HEAD, "/health") => {
            Response::builder().status(StatusCode::NO_CONTENT).body(body::empty()).unwrap_or_default()
        }
        (&Method::POST, "/init") => init(&agent, req).await,
        (&Method::GET, "/envs") => {
            if !token_ok(&agent, req.headers()) {
                return http_error(StatusCode::UNAUTHORIZED, "invalid access token");
            }
            json_response(StatusCode::OK, &agent.settings().env_vars)
        }
        (_, "/files") => files::handle(agent, req).await,
        (m, p) if p.starts_with("/process.Process/") || p.starts_with("/filesystem.Filesystem/") => {
            if m != Method::POST {
                return connect_error(&ConnectError::new(
                    Code::Unimplemented,
                    format!("method {m} not allowed on {p}"),
                ));
            }
            rpc(agent, req).await
        }
        _ => http_error(StatusCode::NOT_FOUND, format!("no route for {} {path}", req.method())),
    }
}

async fn init(agent: &Agent, req: Request<Incoming>) -> Response<RespBody> {
    let Some(expected) = agent.config.init_token.clone() else {
        return http_error(StatusCode::FORBIDDEN, "bootstrap is disabled: the agent was started without an init token");
    };
    let ok = header_str(req.headers(), warren_proto::INIT_TOKEN_HEADER)
        .map(|got| constant_time_eq(got.as_bytes(), expected.as_bytes()))
        .unwrap_or(false);
    if !ok {
        return http_error(StatusCode::UNAUTHORIZED, "invalid init token");
    }
    let body = match read_body(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return http_error(StatusCode::PAYLOAD_TOO_LARGE, e.message),
    };
    let init: InitRequest = match parse(&body) {
        Ok(i) => i,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, e.message),
    };
    if let Some(u) = &init.default_user {
        if crate::users::by_name(u).is_none() {
            return http_error(StatusCode::BAD_REQUEST, format!("unknown user '{u}'"));
        }
    }
    if let Some(w) = &init.default_workdir {
        if !w.is_empty() && !std::path::Path::new(w).is_absolute() {
            return http_error(StatusCode::BAD_REQUEST, format!("workdir '{w}' must be absolute"));
        }
    }
    agent.update_settings(|s| {
        if let Some(t) = init.access_token {
            s.access_token = Some(t).filter(|t| !t.is_empty());
        }
        if let Some(u) = init.default_user {
            s.default_user = u;
        }
        if let Some(w) = init.default_workdir {
            s.default_workdir = Some(w).filter(|w| !w.is_empty()).map(Into::into);
        }
        if let Some(e) = init.env_vars {
            s.env_vars = e;
        }
    });
    Response::builder().status(StatusCode::NO_CONTENT).body(body::empty()).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unary,
    ServerStream,
    ClientStream,
}

fn kind_of(path: &str) -> Option<Kind> {
    Some(match path {
        "/process.Process/Start" | "/process.Process/Connect" | "/filesystem.Filesystem/WatchDir" => Kind::ServerStream,
        "/process.Process/StreamInput" => Kind::ClientStream,
        "/process.Process/List"
        | "/process.Process/SendInput"
        | "/process.Process/SendSignal"
        | "/process.Process/CloseStdin"
        | "/process.Process/Update"
        | "/filesystem.Filesystem/Stat"
        | "/filesystem.Filesystem/MakeDir"
        | "/filesystem.Filesystem/Move"
        | "/filesystem.Filesystem/ListDir"
        | "/filesystem.Filesystem/Remove"
        | "/filesystem.Filesystem/CreateWatcher"
        | "/filesystem.Filesystem/GetWatcherEvents"
        | "/filesystem.Filesystem/RemoveWatcher" => Kind::Unary,
        _ => return None,
    })
}

fn media_type(h: &HeaderMap) -> String {
    header_str(h, "content-type").unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

async fn rpc(agent: Arc<Agent>, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    let Some(kind) = kind_of(&path) else {
        return connect_error(&ConnectError::new(Code::Unimplemented, format!("unknown procedure {path}")));
    };
    let ct = media_type(req.headers());
    let want = if kind == Kind::Unary { connect::CONTENT_TYPE_UNARY } else { connect::CONTENT_TYPE_STREAM };
    if ct != want {
        let mut r = connect_error(&ConnectError::new(
            Code::Unimplemented,
            format!("unsupported content type {ct:?} for {path}: this agent speaks {want}"),
        ));
        *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return r;
    }
    if !token_ok(&agent, req.headers()) {
        return connect_error(&ConnectError::new(Code::Unauthenticated, "invalid access token"));
    }
    let user = match basic_user(req.headers()).and_then(|u| agent.resolve_user(u.as_deref())) {
        Ok(u) => u,
        Err(e) => return connect_error(&e),
    };
    let timeout =
        header_str(req.headers(), "connect-timeout-ms").and_then(connect::parse_timeout_ms).map(Duration::from_millis);
    let keepalive = header_str(req.headers(), "keepalive-ping-interval")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    let ctx = RpcCtx { user, timeout, keepalive };
    let limit = agent.config.max_message_bytes;

    match kind {
        Kind::Unary => {
            let body = match read_body(req.into_body(), limit).await {
                Ok(b) => b,
                Err(e) => return connect_error(&e),
            };
            match unary(&agent, &ctx, &path, &body).await {
                Ok(json) => Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, connect::CONTENT_TYPE_UNARY)
                    .body(body::full(json))
                    .unwrap_or_default(),
                Err(e) => connect_error(&e),
            }
        }
        Kind::ServerStream => {
            let (tx, resp_body) = ChannelBody::channel(32);
            let stx = StreamTx { tx };
            let body = req.into_body();
            tokio::spawn(async move {
                let payload = match read_body(body, limit + 5).await.and_then(|b| single_envelope(&b, limit)) {
                    Ok(p) => p,
                    Err(e) => return stx.finish(Some(e)).await,
                };
                server_stream(agent, ctx, &path, payload, stx).await;
            });
            stream_response(resp_body)
        }
        Kind::ClientStream => {
            // A client stream is answered once its input has ended: reading
            // the whole request before the reply starts also keeps proxies
            // that relay HTTP/1.1 into HTTP/2 (the gateway) out of a
            // full-duplex exchange.
            let result = process::stream_input(&agent, req.into_body(), limit).await;
            let mut out = Vec::new();
            match result {
                Ok(()) => {
                    out.extend_from_slice(&connect::message_envelope(&warren_proto::process::Empty {}));
                    out.extend_from_slice(&connect::end_stream_envelope(None));
                }
                Err(e) => out.extend_from_slice(&connect::end_stream_envelope(Some(e))),
            }
            stream_response(body::full(out))
        }
    }
}

fn stream_response(body: RespBody) -> Response<RespBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, connect::CONTENT_TYPE_STREAM)
        .body(body)
        .unwrap_or_default()
}

/// The payload of a request stream that must hold exactly one message.
fn single_envelope(body: &[u8], limit: usize) -> Result<Bytes, ConnectError> {
    let mut d = Decoder::new(limit);
    d.push(body);
    let first = d.next_envelope().map_err(|e| ConnectError::new(frame_code(&e), e.to_string()))?.ok_or_else(|| {
        ConnectError::invalid(format!("request stream holds no complete message ({} bytes)", body.len()))
    })?;
    if first.is_end_stream() {
        return Err(ConnectError::invalid("request stream starts with an end-of-stream frame"));
    }
    match d.next_envelope() {
        Ok(None) => {}
        Ok(Some(_)) => return Err(ConnectError::invalid("server-streaming call takes exactly one request message")),
        Err(e) => return Err(ConnectError::new(frame_code(&e), e.to_string())),
    }
    d.finish().map_err(|e| ConnectError::invalid(e.to_string()))?;
    Ok(first.payload)
}

pub fn frame_code(e: &connect::FrameError) -> Code {
    match e {
        connect::FrameError::TooLarge { .. } => Code::ResourceExhausted,
        connect::FrameError::Compressed => Code::Unimplemented,
        connect::FrameError::Truncated(_) => Code::InvalidArgument,
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ConnectError> {
    serde_json::to_vec(v).map_err(|e| ConnectError::internal(format!("encoding reply: {e}")))
}

async fn unary(agent: &Arc<Agent>, ctx: &RpcCtx, path: &str, body: &[u8]) -> Result<Vec<u8>, ConnectError> {
    use warren_proto::filesystem as f;
    use warren_proto::process as p;
    match path {
        "/process.Process/List" => to_json(&agent.procs.list()),
        "/process.Process/SendInput" => {
            let r: p::SendInputRequest = parse(body)?;
            agent.procs.send_input(&r.process, r.input).await?;
            to_json(&p::Empty {})
        }
        "/process.Process/SendSignal" => {
            let r: p::SendSignalRequest = parse(body)?;
            agent.procs.signal(&r.process, r.signal)?;
            to_json(&p::Empty {})
        }
        "/process.Process/CloseStdin" => {
            let r: p::CloseStdinRequest = parse(body)?;
            agent.procs.close_stdin(&r.process).await?;
            to_json(&p::Empty {})
        }
        "/process.Process/Update" => {
            let r: p::UpdateRequest = parse(body)?;
            if let Some(size) = r.pty.and_then(|p| p.size) {
                agent.procs.resize(&r.process, size)?;
            }
            to_json(&p::Empty {})
        }
        "/filesystem.Filesystem/Stat" => {
            let r: f::StatRequest = parse(body)?;
            to_json(&f::EntryResponse { entry: fsops::stat(&ctx.user, &agent.settings(), &r.path).await? })
        }
        "/filesystem.Filesystem/MakeDir" => {
            let r: f::MakeDirRequest = parse(body)?;
            to_json(&f::EntryResponse { entry: fsops::make_dir(&ctx.user, &agent.settings(), &r.path).await? })
        }
        "/filesystem.Filesystem/Move" => {
            let r: f::MoveRequest = parse(body)?;
            to_json(&f::EntryResponse { entry: fsops::rename(&ctx.user, &agent.settings(), &r).await? })
        }
        "/filesystem.Filesystem/ListDir" => {
            let r: f::ListDirRequest = parse(body)?;
            to_json(&f::ListDirResponse { entries: fsops::list_dir(&ctx.user, &agent.settings(), &r).await? })
        }
        "/filesystem.Filesystem/Remove" => {
            let r: f::RemoveRequest = parse(body)?;
            fsops::remove(&ctx.user, &agent.settings(), &r.path).await?;
            to_json(&f::Empty {})
        }
        "/filesystem.Filesystem/CreateWatcher" => {
            let r: f::CreateWatcherRequest = parse(body)?;
            let id = agent.watchers.create(&ctx.user, &agent.settings(), &r)?;
            to_json(&f::WatcherId { watcher_id: id })
        }
        "/filesystem.Filesystem/GetWatcherEvents" => {
            let r: f::GetWatcherEventsRequest = parse(body)?;
            to_json(&f::GetWatcherEventsResponse { events: agent.watchers.drain(&r.watcher_id)? })
        }
        "/filesystem.Filesystem/RemoveWatcher" => {
            let r: f::RemoveWatcherRequest = parse(body)?;
            agent.watchers.remove(&r.watcher_id)?;
            to_json(&f::Empty {})
        }
        _ => Err(ConnectError::new(Code::Unimplemented, format!("unknown procedure {path}"))),
    }
}

async fn server_stream(agent: Arc<Agent>, ctx: RpcCtx, path: &str, payload: Bytes, tx: StreamTx) {
    match path {
        "/process.Process/Start" => match parse(&payload) {
            Ok(req) => process::start_stream(agent, ctx, req, tx).await,
            Err(e) => tx.finish(Some(e)).await,
        },
        "/process.Process/Connect" => match parse::<warren_proto::process::ConnectRequest>(&payload) {
            Ok(req) => process::connect_stream(agent, ctx, req.process, tx).await,
            Err(e) => tx.finish(Some(e)).await,
        },
        "/filesystem.Filesystem/WatchDir" => match parse(&payload) {
            Ok(req) => watch::watch_stream(agent, ctx, req, tx).await,
            Err(e) => tx.finish(Some(e)).await,
        },
        _ => tx.finish(Some(ConnectError::new(Code::Unimplemented, format!("unknown procedure {path}")))).await,
    }
}
