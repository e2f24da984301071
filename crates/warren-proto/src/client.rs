//! The typed agent client.
//!
//! One client per workspace agent. It speaks HTTP/2 (prior knowledge) over a
//! Unix socket or TCP, keeps one multiplexed connection and reconnects when it
//! drops. Every agent method is a typed call; [`AgentClient::request`] sends a
//! raw request for callers that forward traffic (the data-plane gateway).

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connect::{self, Code, ConnectError, Decoder, EndStream};
pub use crate::endpoint::Endpoint;
use crate::filesystem as fs;
pub use crate::http::{parse_query, percent_decode, urlencode};
use crate::http::{FileOp, InitRequest, WriteInfo};
use crate::process as proc;

/// Request body type of the client: any stream of byte chunks.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Largest message the client accepts from an agent.
const MAX_MESSAGE: usize = 64 << 20;

/// What went wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent answered with a Connect error (or an HTTP error mapped to one).
    #[error("agent error {0}")]
    Rpc(#[from] ConnectError),
    /// The agent could not be reached or the connection broke.
    #[error("cannot reach agent at {endpoint}: {source}")]
    Transport { endpoint: String, source: io::Error },
    /// HTTP-level failure on an established connection.
    #[error("HTTP error talking to agent: {0}")]
    Http(#[from] hyper::Error),
    /// The agent sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The Connect code, when the agent sent one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc(e) => Some(e.code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Sent as `Connect-Timeout-Ms`. On Start it bounds the process's life.
    pub timeout: Option<Duration>,
    /// Sent as `Keepalive-Ping-Interval` (seconds) on streams.
    pub keepalive: Option<u32>,
}

struct Inner {
    endpoint: Endpoint,
    access_token: Mutex<Option<String>>,
    user: Option<String>,
    conn: tokio::sync::Mutex<Option<SendRequest<Body>>>,
}

/// A client for one agent. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient").field("endpoint", &self.inner.endpoint).finish()
    }
}

/// The collected result of a finished process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    pub status: String,
}

impl AgentClient {
    pub fn new(endpoint: Endpoint) -> Self {
        AgentClient {
            inner: Arc::new(Inner {
                endpoint,
                access_token: Mutex::new(None),
                user: None,
                conn: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The same agent with an access token set (shares nothing mutable with
    /// `self` but the connection is re-made lazily).
    pub fn with_access_token(self, token: Option<String>) -> Self {
        self.set_access_token(token);
        self
    }

    /// Replaces the access token sent with every request.
    pub fn set_access_token(&self, token: Option<String>) {
        if let Ok(mut t) = self.inner.access_token.lock() {
            *t = token;
        }
    }

    /// A client that acts as `user` (Basic auth on RPCs, `username` on /files).
    pub fn as_user(&self, user: &str) -> Self {
        AgentClient {
            inner: Arc::new(Inner {
                endpoint: self.inner.endpoint.clone(),
                access_token: Mutex::new(self.inner.access_token.lock().ok().and_then(|t| t.clone())),
                user: Some(user.to_string()),
                conn: tokio::sync::Mutex::new(None),
            }),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    async fn sender(&self) -> Result<SendRequest<Body>> {
        let mut guard = self.inner.conn.lock().await;
        if let Some(s) = guard.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let transport = |source| ClientError::Transport { endpoint: self.inner.endpoint.to_string(), source };
        let sender = match &self.inner.endpoint {
            Endpoint::Unix(p) => handshake(tokio::net::UnixStream::connect(p).await.map_err(transport)?).await?,
            Endpoint::Tcp(a) | Endpoint::Gateway { addr: a, .. } => {
                handshake(tcp_connect(a).await.map_err(transport)?).await?
            }
            Endpoint::Https { host, via } => {
                let s = tcp_connect(via.as_deref().unwrap_or(host)).await.map_err(transport)?;
                handshake(crate::tls::connect(host, s).await.map_err(transport)?).await?
            }
        };
        *guard = Some(sender.clone());
        Ok(sender)
    }

    /// Sends a raw request to the agent. The URI's path and query are kept;
    /// scheme and authority are filled in.
    pub async fn request(&self, mut req: Request<Body>) -> Result<Response<Incoming>> {
        let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        *req.uri_mut() = match &self.inner.endpoint {
            // Host routing needs the real authority (it becomes :authority).
            Endpoint::Https { host, .. } => format!("https://{}{pq}", host.strip_suffix(":443").unwrap_or(host)),
            _ => format!("http://agent{pq}"),
        }
        .parse()
        .map_err(|e| ClientError::Protocol(format!("bad request path {pq:?}: {e}")))?;
        if let Endpoint::Gateway { sandbox, .. } = &self.inner.endpoint {
            let v = http::HeaderValue::from_str(sandbox)
                .map_err(|e| ClientError::Protocol(format!("sandbox id {sandbox:?}: {e}")))?;
            req.headers_mut().insert("e2b-sandbox-id", v);
        }
        let mut attempt = 0;
        loop {
            let mut sender = self.sender().await?;
            match sender.ready().await {
                Ok(()) => {}
                Err(e) if attempt == 0 => {
                    // A connection that died idle: drop it and reconnect once.
                    let _ = e;
                    *self.inner.conn.lock().await = None;
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            return Ok(sender.send_request(req).await?);
        }
    }

    fn decorate(&self, mut b: http::request::Builder, with_user: bool) -> http::request::Builder {
        if let Some(t) = self.inner.access_token.lock().ok().and_then(|t| t.clone()) {
            b = b.header(crate::ACCESS_TOKEN_HEADER, t);
        }
        if with_user {
            if let Some(u) = &self.inner.user {
                let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:"));
                b = b.header(header::AUTHORIZATION, format!("Basic {v}"));
            }
        }
        b
    }

    fn rpc_builder(&self, path: &str, content_type: &str, opts: &CallOptions) -> http::request::Builder {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, content_type)
            .header("connect-protocol-version", "1");
        if let Some(t) = opts.timeout {
            b = b.header("connect-timeout-ms", t.as_millis().max(1).to_string());
        }
        if let Some(k) = opts.keepalive {
            b = b.header("keepalive-ping-interval", k.to_string());
        }
        self.decorate(b, true)
    }

    /// A unary Connect call.
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(&self, path: &str, req: &Req) -> Result<Resp> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let req = self
            .rpc_builder(path, connect::CONTENT_TYPE_UNARY, &CallOptions::default())
            .body(full(body))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.request(req).await?;
        let status = resp.status();
        let bytes = collect_limited(resp.into_body(), MAX_MESSAGE).await?;
        if status != StatusCode::OK {
            return Err(error_from_body(status, &bytes).into());
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("bad reply to {path}: {e}")))
    }

    /// A server-streaming Connect call.
    pub async fn server_stream<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<MessageStream<Resp>> {
        let env = connect::message_envelope(req);
        let req = self
            .rpc_builder(path, connect::CONTENT_TYPE_STREAM, opts)
            .body(full(env.to_vec()))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.request(req).await?;
        MessageStream::from_response(resp).await
    }

    /// A client-streaming Connect call: sends every message of `msgs`, then
    /// ends the body, and returns the single reply.
    pub async fn client_stream<Req, Resp, S>(&self, path: &str, msgs: S) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned,
        S: Stream<Item = Req> + Send + Sync + 'static,
    {
        use futures_util::StreamExt as _;
        let frames = msgs.map(|m| Ok::<_, io::Error>(Frame::data(connect::message_envelope(&m))));
        let req = self
            .rpc_builder(path, connect::CONTENT_TYPE_STREAM, &CallOptions::default())
            .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.request(req).await?;
        let mut stream: MessageStream<Resp> = MessageStream::from_response(resp).await?;
        let first = stream.next().await.transpose()?;
        // Drain to the end-of-stream frame to surface a trailing error.
        while let Some(m) = stream.next().await {
            m?;
        }
        first.ok_or_else(|| ClientError::Protocol("client stream reply had no message".into()))
    }

    // ---- process.Process ----

    /// Starts a process and returns its event stream (first event: `start`).
    pub async fn start(&self, req: &proc::StartRequest, opts: &CallOptions) -> Result<ProcessStream> {
        let s = self.server_stream("/process.Process/Start", req, opts).await?;
        ProcessStream::open(s).await
    }

    /// Re-attaches to a running process.
    pub async fn connect(&self, sel: proc::ProcessSelector, opts: &CallOptions) -> Result<ProcessStream> {
        let req = proc::ConnectRequest { process: sel };
        let s = self.server_stream("/process.Process/Connect", &req, opts).await?;
        ProcessStream::open(s).await
    }

    /// Runs `cmd args…` to completion and collects its output.
    pub async fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        let req = proc::StartRequest {
            process: Some(proc::ProcessConfig {
                cmd: cmd.to_string(),
                args: args.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            stdin: Some(false),
            ..Default::default()
        };
        self.start(&req, &CallOptions::default()).await?.collect().await
    }

    /// Runs a shell command line with `/bin/sh -c`.
    pub async fn sh(&self, script: &str) -> Result<Output> {
        self.exec("/bin/sh", &["-c", script]).await
    }

    pub async fn list(&self) -> Result<Vec<proc::ProcessInfo>> {
        let r: proc::ListResponse = self.unary("/process.Process/List", &proc::ListRequest {}).await?;
        Ok(r.processes)
    }

    pub async fn send_input(&self, sel: proc::ProcessSelector, input: proc::ProcessInput) -> Result<()> {
        let _: proc::Empty =
            self.unary("/process.Process/SendInput", &proc::SendInputRequest { process: sel, input }).await?;
        Ok(())
    }

    pub async fn close_stdin(&self, sel: proc::ProcessSelector) -> Result<()> {
        let _: proc::Empty =
            self.unary("/process.Process/CloseStdin", &proc::CloseStdinRequest { process: sel }).await?;
        Ok(())
    }

    pub async fn send_signal(&self, sel: proc::ProcessSelector, signal: proc::Signal) -> Result<()> {
        let _: proc::Empty =
            self.unary("/process.Process/SendSignal", &proc::SendSignalRequest { process: sel, signal }).await?;
        Ok(())
    }

    pub async fn resize(&self, sel: proc::ProcessSelector, size: proc::PtySize) -> Result<()> {
        let req = proc::UpdateRequest { process: sel, pty: Some(proc::Pty { size: Some(size) }) };
        let _: proc::Empty = self.unary("/process.Process/Update", &req).await?;
        Ok(())
    }

    /// Streams input chunks to a process's stdin (or PTY) in one call.
    pub async fn stream_input<S>(&self, sel: proc::ProcessSelector, pty: bool, chunks: S) -> Result<()>
    where
        S: Stream<Item = Vec<u8>> + Send + Sync + 'static,
    {
        use futures_util::StreamExt as _;
        let first =
            futures_util::stream::iter([proc::StreamInputRequest::Start(proc::StreamInputStart { process: sel })]);
        let data = chunks.map(move |c| {
            let input = if pty { proc::ProcessInput::Pty(c) } else { proc::ProcessInput::Stdin(c) };
            proc::StreamInputRequest::Data(proc::StreamInputData { input })
        });
        let _: proc::Empty = self.client_stream("/process.Process/StreamInput", first.chain(data)).await?;
        Ok(())
    }

    // ---- filesystem.Filesystem ----

    pub async fn stat(&self, path: &str) -> Result<fs::EntryInfo> {
        let r: fs::EntryResponse =
            self.unary("/filesystem.Filesystem/Stat", &fs::PathRequest { path: path.into() }).await?;
        Ok(r.entry)
    }

    pub async fn make_dir(&self, path: &str) -> Result<fs::EntryInfo> {
        let r: fs::EntryResponse =
            self.unary("/filesystem.Filesystem/MakeDir", &fs::PathRequest { path: path.into() }).await?;
        Ok(r.entry)
    }

    pub async fn rename(&self, source: &str, destination: &str) -> Result<fs::EntryInfo> {
        let req = fs::MoveRequest { source: source.into(), destination: destination.into() };
        let r: fs::EntryResponse = self.unary("/filesystem.Filesystem/Move", &req).await?;
        Ok(r.entry)
    }

    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<fs::EntryInfo>> {
        let req = fs::ListDirRequest { path: path.into(), depth };
        let r: fs::ListDirResponse = self.unary("/filesystem.Filesystem/ListDir", &req).await?;
        Ok(r.entries)
    }

    pub async fn remove(&self, path: &str) -> Result<()> {
        let _: fs::Empty = self.unary("/filesystem.Filesystem/Remove", &fs::PathRequest { path: path.into() }).await?;
        Ok(())
    }

    pub async fn watch_dir(
        &self,
        req: &fs::WatchDirRequest,
        opts: &CallOptions,
    ) -> Result<MessageStream<fs::WatchDirResponse>> {
        self.server_stream("/filesystem.Filesystem/WatchDir", req, opts).await
    }

    pub async fn create_watcher(&self, req: &fs::CreateWatcherRequest) -> Result<String> {
        let r: fs::WatcherId = self.unary("/filesystem.Filesystem/CreateWatcher", req).await?;
        Ok(r.watcher_id)
    }

    pub async fn get_watcher_events(&self, id: &str) -> Result<Vec<fs::FilesystemEvent>> {
        let r: fs::GetWatcherEventsResponse =
            self.unary("/filesystem.Filesystem/GetWatcherEvents", &fs::WatcherId { watcher_id: id.into() }).await?;
        Ok(r.events)
    }

    pub async fn remove_watcher(&self, id: &str) -> Result<()> {
        let _: fs::Empty =
            self.unary("/filesystem.Filesystem/RemoveWatcher", &fs::WatcherId { watcher_id: id.into() }).await?;
        Ok(())
    }

    // ---- HTTP endpoints ----

    /// `GET /health`: Ok when the agent answers 2xx.
    pub async fn health(&self) -> Result<()> {
        let req = Request::get("/health").body(empty()).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.request(req).await?;
        let status = resp.status();
        let body = collect_limited(resp.into_body(), 1 << 16).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(error_from_body(status, &body).into())
        }
    }

    fn files_uri(&self, path: &str) -> String {
        let mut q = format!("/files?path={}", urlencode(path));
        if let Some(u) = &self.inner.user {
            q.push_str("&username=");
            q.push_str(&urlencode(u));
        }
        q
    }

    /// `GET /files`: the file's bytes as a stream of chunks.
    pub async fn read_file(&self, path: &str) -> Result<Incoming> {
        let req = self
            .decorate(Request::get(self.files_uri(path)), false)
            .body(empty())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.request(req).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = collect_limited(resp.into_body(), 1 << 16).await?;
            return Err(error_from_body(status, &body).into());
        }
        Ok(resp.into_body())
    }

    /// Reads a whole file into memory (for small files).
    pub async fn read_to_vec(&self, path: &str) -> Result<Vec<u8>> {
        let body = self.read_file(path).await?;
        Ok(collect_limited(body, usize::MAX).await?.to_vec())
    }

    /// `POST /files` with a raw octet-stream body.
    pub async fn write_file(&self, path: &str, body: Body) -> Result<Vec<WriteInfo>> {
        let req = self
            .decorate(Request::post(self.files_uri(path)), false)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.request(req).await?;
        let status = resp.status();
        let bytes = collect_limited(resp.into_body(), MAX_MESSAGE).await?;
        if status != StatusCode::OK {
            return Err(error_from_body(status, &bytes).into());
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("bad /files reply: {e}")))
    }

    /// Writes a small file from memory.
    pub async fn write_bytes(&self, path: &str, data: impl Into<Bytes>) -> Result<Vec<WriteInfo>> {
        self.write_file(path, full(data.into())).await
    }

    /// Builds a signed `/files` path and query (what `download_url` and
    /// `upload_url` produce), for a token-protected agent.
    pub fn signed_files_path(&self, path: &str, op: FileOp, token: &str, expiration: Option<i64>) -> String {
        let user = self.inner.user.clone().unwrap_or_default();
        let sig = crate::http::file_signature(path, op, &user, token, expiration);
        let mut q = format!("/files?path={}&signature={}", urlencode(path), urlencode(&sig));
        if !user.is_empty() {
            q.push_str(&format!("&username={}", urlencode(&user)));
        }
        if let Some(e) = expiration {
            q.push_str(&format!("&signature_expiration={e}"));
        }
        q
    }

    /// `POST /init`: sets or rotates the workspace's token, user, workdir, env.
    pub async fn init(&self, init_token: &str, req: &InitRequest) -> Result<()> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let req = Request::post("/init")
            .header(crate::INIT_TOKEN_HEADER, init_token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(body))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.request(req).await?;
        let status = resp.status();
        let bytes = collect_limited(resp.into_body(), 1 << 16).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(error_from_body(status, &bytes).into())
        }
    }
}

/// Connects over TCP with a bound: a workspace that is gone leaves an
/// address nobody answers, and the kernel's SYN retries take minutes.
async fn tcp_connect(addr: &str) -> io::Result<tokio::net::TcpStream> {
    const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    let s = tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Body>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A request body holding `data`.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty request body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Reads a body to the end, failing past `limit` bytes.
pub async fn collect_limited(mut body: Incoming, limit: usize) -> Result<Bytes> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > limit {
                return Err(ClientError::Protocol(format!("reply larger than {limit} bytes")));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// Turns an error reply into a Connect error: a Connect body if it parses,
/// else a code inferred from the status.
pub fn error_from_body(status: StatusCode, body: &[u8]) -> ConnectError {
    #[derive(serde::Deserialize)]
    struct Loose {
        code: Option<Code>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Loose>(body) {
        Ok(Loose { code, message }) => ConnectError::new(
            code.unwrap_or_else(|| Code::from_http_status(status.as_u16())),
            message.unwrap_or_else(|| status.to_string()),
        ),
        Err(_) => ConnectError::new(
            Code::from_http_status(status.as_u16()),
            format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
        ),
    }
}

/// The messages of a server stream, ending at the end-of-stream frame.
pub struct MessageStream<T> {
    body: Incoming,
    decoder: Decoder,
    done: bool,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> MessageStream<T> {
    async fn from_response(resp: Response<Incoming>) -> Result<Self> {
        let status = resp.status();
        if status != StatusCode::OK {
            let body = collect_limited(resp.into_body(), 1 << 20).await?;
            return Err(error_from_body(status, &body).into());
        }
        let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
        if ct != Some(HeaderValue::from_static(connect::CONTENT_TYPE_STREAM)) {
            return Err(ClientError::Protocol(format!("invalid content-type {ct:?}")));
        }
        Ok(MessageStream {
            body: resp.into_body(),
            decoder: Decoder::new(MAX_MESSAGE),
            done: false,
            _t: Default::default(),
        })
    }

    /// The next message; `None` after a clean end of stream.
    pub async fn next(&mut self) -> Option<Result<T>> {
        loop {
            if self.done {
                return None;
            }
            match self.decoder.next_envelope() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(ClientError::Protocol(e.to_string())));
                }
                Ok(Some(env)) if env.is_end_stream() => {
                    self.done = true;
                    let end: EndStream = match serde_json::from_slice(&env.payload) {
                        Ok(e) => e,
                        Err(e) => return Some(Err(ClientError::Protocol(format!("bad end-of-stream: {e}")))),
                    };
                    return end.error.map(|e| Err(e.into()));
                }
                Ok(Some(env)) => {
                    return Some(
                        serde_json::from_slice(&env.payload)
                            .map_err(|e| ClientError::Protocol(format!("bad stream message: {e}"))),
                    )
                }
                Ok(None) => {}
            }
            match self.body.frame().await {
                None => {
                    self.done = true;
                    return match self.decoder.finish() {
                        Ok(()) => None,
                        Err(e) => Some(Err(ClientError::Protocol(e.to_string()))),
                    };
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
            }
        }
    }
}

/// A Start or Connect stream.
pub struct ProcessStream {
    inner: MessageStream<proc::StartResponse>,
    first: Option<proc::ProcessEvent>,
}

impl fmt::Debug for ProcessStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessStream").finish_non_exhaustive()
    }
}

impl ProcessStream {
    /// Reads the first event, so that a call that failed before the process
    /// started is an error of the call itself.
    async fn open(mut inner: MessageStream<proc::StartResponse>) -> Result<Self> {
        match inner.next().await {
            Some(Ok(m)) => Ok(ProcessStream { inner, first: Some(m.event) }),
            Some(Err(e)) => Err(e),
            None => Err(ClientError::Protocol("stream ended before the start event".into())),
        }
    }

    /// The next event (keepalives included).
    pub async fn next_event(&mut self) -> Option<Result<proc::ProcessEvent>> {
        if let Some(ev) = self.first.take() {
            return Some(Ok(ev));
        }
        self.inner.next().await.map(|r| r.map(|m| m.event))
    }

    /// Waits for the `start` event and returns the pid.
    pub async fn pid(&mut self) -> Result<u32> {
        loop {
            match self.next_event().await {
                Some(Ok(proc::ProcessEvent::Start(s))) => return Ok(s.pid),
                Some(Ok(proc::ProcessEvent::Keepalive(_))) => continue,
                Some(Ok(other)) => return Err(ClientError::Protocol(format!("expected start event, got {other:?}"))),
                Some(Err(e)) => return Err(e),
                None => return Err(ClientError::Protocol("stream ended before the start event".into())),
            }
        }
    }

    /// Reads the stream to the end and collects the output.
    pub async fn collect(mut self) -> Result<Output> {
        let mut out = Output::default();
        let mut ended = false;
        while let Some(ev) = self.next_event().await {
            match ev? {
                proc::ProcessEvent::Start(s) => out.pid = s.pid,
                proc::ProcessEvent::Data(proc::DataEvent::Stdout(d) | proc::DataEvent::Pty(d)) => {
                    out.stdout.extend_from_slice(&d)
                }
                proc::ProcessEvent::Data(proc::DataEvent::Stderr(d)) => out.stderr.extend_from_slice(&d),
                proc::ProcessEvent::End(e) => {
                    out.exit_code = e.exit_code;
                    out.status = e.status;
                    ended = true;
                }
                proc::ProcessEvent::Keepalive(_) => {}
            }
        }
        if !ended {
            return Err(ClientError::Protocol("stream ended without an end event".into()));
        }
        Ok(out)
    }
}
