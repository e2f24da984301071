//! Running commands: `POST …/exec` streams NDJSON events; `GET …/pty`
//! upgrades to a WebSocket carrying an interactive terminal.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warren_proto::client::{AgentClient, CallOptions};
use warren_proto::process::{
    DataEvent, ProcessConfig, ProcessEvent, ProcessInput, ProcessSelector, Pty, PtySize, StartRequest,
};

use crate::api::{json_body, parse_id};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecBody {
    /// Program and arguments. Exactly one of `argv` and `command`.
    #[serde(default)]
    pub argv: Vec<String>,
    /// A shell command line, run with `/bin/bash -lc` (as E2B does).
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Bytes for stdin (UTF-8); stdin is closed after them.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Seconds; the process is killed when they pass.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// One NDJSON line of an exec stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ExecEvent {
    Start {
        pid: u32,
    },
    /// `data` is base64.
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    #[serde(rename_all = "camelCase")]
    Exit {
        exit_code: i32,
        status: String,
    },
    /// The same `{code, message}` as every `/v1` error body.
    Error {
        code: warren_api::ErrorCode,
        message: String,
    },
}

fn line(ev: &ExecEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// The agent could not find the program (e.g. no bash in the image).
fn no_such_program(e: &warren_proto::client::ClientError) -> bool {
    e.to_string().contains("No such file or directory")
}

pub async fn exec(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: ExecBody = json_body(&body)?;
    let (cmd, args) = match (b.argv.split_first(), &b.command) {
        (Some((c, rest)), None) => (c.clone(), rest.to_vec()),
        (None, Some(line)) => ("/bin/bash".to_string(), vec!["-l".to_string(), "-c".to_string(), line.clone()]),
        _ => return Err(ApiError::bad_request("give exactly one of 'argv' (non-empty) and 'command'")),
    };
    let (_, agent) = s.orch.agent(caller.scope(), &parse_id(&id)?).await?;
    let agent = match &b.user {
        Some(u) => agent.as_user(u),
        None => agent,
    };
    let mut req = StartRequest {
        process: Some(ProcessConfig { cmd, args, envs: b.env, cwd: b.cwd }),
        stdin: Some(b.stdin.is_some()),
        ..Default::default()
    };
    let opts = CallOptions { timeout: b.timeout.map(Duration::from_secs), keepalive: Some(30) };
    let mut stream = match agent.start(&req, &opts).await {
        // Images without bash (busybox, distroless-ish): the POSIX shell.
        Err(e) if b.command.is_some() && no_such_program(&e) => {
            if let Some(p) = req.process.as_mut() {
                p.cmd = "/bin/sh".into();
                p.args.remove(0);
            }
            agent.start(&req, &opts).await?
        }
        other => other?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    tokio::spawn(async move {
        if let Some(input) = b.stdin {
            if let Ok(pid) = stream.pid().await {
                let _ = tx.send(Ok(line(&ExecEvent::Start { pid }))).await;
                let sel = ProcessSelector::Pid(pid);
                let _ = agent.send_input(sel.clone(), ProcessInput::Stdin(input.into_bytes())).await;
                let _ = agent.close_stdin(sel).await;
            }
        }
        while let Some(ev) = stream.next_event().await {
            let out = match ev {
                Ok(ProcessEvent::Start(st)) => ExecEvent::Start { pid: st.pid },
                Ok(ProcessEvent::Data(DataEvent::Stdout(d) | DataEvent::Pty(d))) => ExecEvent::Stdout { data: b64(&d) },
                Ok(ProcessEvent::Data(DataEvent::Stderr(d))) => ExecEvent::Stderr { data: b64(&d) },
                Ok(ProcessEvent::End(e)) => ExecEvent::Exit { exit_code: e.exit_code, status: e.status },
                Ok(ProcessEvent::Keepalive(_)) => continue,
                Err(e) => {
                    let api: ApiError = e.into();
                    ExecEvent::Error { code: api.code, message: api.message }
                }
            };
            if tx.send(Ok(line(&out))).await.is_err() {
                return;
            }
        }
    });
    let body =
        Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) }));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-cache")], body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct PtyQuery {
    pub cols: Option<u32>,
    pub rows: Option<u32>,
    pub user: Option<String>,
    /// Program to run instead of a login shell.
    pub cmd: Option<String>,
}

/// Control messages the client sends as WebSocket text frames.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PtyControl {
    Resize { cols: u32, rows: u32 },
}

pub async fn pty(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PtyQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // Authorisation and existence first, so the answer never depends on
    // whether the caller asked for an upgrade.
    let (_, agent) = s.orch.agent(caller.scope(), &parse_id(&id)?).await?;
    let ws = ws.map_err(|e| ApiError::bad_request(format!("this route needs a WebSocket upgrade: {e}")))?;
    let agent = match &q.user {
        Some(u) => agent.as_user(u),
        None => agent,
    };
    let size = PtySize { cols: q.cols.unwrap_or(80).clamp(1, 1000), rows: q.rows.unwrap_or(24).clamp(1, 1000) };
    let default_shell = q.cmd.is_none();
    let (cmd, args) = match q.cmd {
        Some(c) => (c, vec![]),
        None => ("/bin/bash".to_string(), vec!["-i".to_string(), "-l".to_string()]),
    };
    let mut req = StartRequest {
        process: Some(ProcessConfig { cmd, args, ..Default::default() }),
        pty: Some(Pty { size: Some(size) }),
        ..Default::default()
    };
    let opts = CallOptions { timeout: None, keepalive: Some(30) };
    let mut stream = match agent.start(&req, &opts).await {
        Err(e) if default_shell && no_such_program(&e) => {
            if let Some(p) = req.process.as_mut() {
                p.cmd = "/bin/sh".into();
                p.args = vec!["-i".into()];
            }
            agent.start(&req, &opts).await?
        }
        other => other?,
    };
    let pid = stream.pid().await?;
    Ok(ws.on_upgrade(move |socket| pty_session(socket, agent, stream, pid)))
}

async fn pty_session(socket: WebSocket, agent: AgentClient, mut stream: warren_proto::client::ProcessStream, pid: u32) {
    use futures_util::{SinkExt as _, StreamExt as _};
    let (mut sink, mut source) = socket.split();
    let sel = ProcessSelector::Pid(pid);
    let input_agent = agent.clone();
    let input_sel = sel.clone();
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(d)
                    if input_agent.send_input(input_sel.clone(), ProcessInput::Pty(d.to_vec())).await.is_err() =>
                {
                    break
                }
                Message::Binary(_) => {}
                Message::Text(t) => {
                    if let Ok(PtyControl::Resize { cols, rows }) = serde_json::from_str(t.as_str()) {
                        let _ = input_agent.resize(input_sel.clone(), PtySize { cols, rows }).await;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let mut exit_code = None;
    while let Some(ev) = stream.next_event().await {
        match ev {
            Ok(ProcessEvent::Data(DataEvent::Pty(d) | DataEvent::Stdout(d) | DataEvent::Stderr(d))) => {
                if sink.send(Message::Binary(d.into())).await.is_err() {
                    break;
                }
            }
            Ok(ProcessEvent::End(e)) => exit_code = Some(e.exit_code),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    input.abort();
    match exit_code {
        Some(code) => {
            let _ = sink.send(Message::Text(format!("{{\"exit\":{code}}}").into())).await;
        }
        // The client left first: end the shell.
        None => {
            let _ = agent.send_signal(sel, warren_proto::process::Signal::Sigkill).await;
        }
    }
    let _ = sink.close().await;
}
