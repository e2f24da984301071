//! `process.Process` messages (proto package `process`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json::b64;
use crate::proto_enum;

/// Service path prefix, as in `POST /process.Process/Start`.
pub const SERVICE: &str = "process.Process";

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessConfig {
    pub cmd: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Terminal size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PtySize {
    pub cols: u32,
    pub rows: u32,
}

/// Present on Start: run the process under a pseudo-terminal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pty {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StartRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// Selects a running process by pid or by tag (a proto oneof: exactly one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessSelector {
    Pid(u32),
    Tag(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartEvent {
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub pid: u32,
}

/// A chunk of output (oneof `output`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    Stdout(#[serde(with = "b64")] Vec<u8>),
    Stderr(#[serde(with = "b64")] Vec<u8>),
    Pty(#[serde(with = "b64")] Vec<u8>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndEvent {
    #[serde(skip_serializing_if = "is_zero_i32", alias = "exit_code")]
    pub exit_code: i32,
    #[serde(skip_serializing_if = "is_false")]
    pub exited: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {}

/// One event of a process stream (oneof `event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    Start(StartEvent),
    Data(DataEvent),
    End(EndEvent),
    Keepalive(KeepAlive),
}

/// The message type of both the Start and the Connect streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartResponse {
    pub event: ProcessEvent,
}
pub type ConnectResponse = StartResponse;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListResponse {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessInfo>,
}

/// Input for a process (oneof `input`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessInput {
    Stdin(#[serde(with = "b64")] Vec<u8>),
    Pty(#[serde(with = "b64")] Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendInputRequest {
    pub process: ProcessSelector,
    pub input: ProcessInput,
}

/// One message of the client-streaming StreamInput call (oneof `event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamInputRequest {
    Start(StreamInputStart),
    Data(StreamInputData),
    Keepalive(KeepAlive),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInputStart {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInputData {
    pub input: ProcessInput,
}

proto_enum!(
    /// Signals the SDK can send.
    Signal {
        Unspecified = 0 => "SIGNAL_UNSPECIFIED",
        Sigterm = 15 => "SIGNAL_SIGTERM",
        Sigkill = 9 => "SIGNAL_SIGKILL",
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    #[serde(default)]
    pub signal: Signal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseStdinRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub process: ProcessSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// The empty reply of SendInput, StreamInput, SendSignal, CloseStdin and Update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn captured_sdk_requests_parse() {
        let start: StartRequest = serde_json::from_value(json!({
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {"X": "1"}, "cwd": "/tmp"},
            "stdin": false
        }))
        .unwrap();
        let p = start.process.unwrap();
        assert_eq!(p.cmd, "/bin/bash");
        assert_eq!(p.args, ["-l", "-c", "echo hi"]);
        assert_eq!(p.envs["X"], "1");
        assert_eq!(start.stdin, Some(false));

        let sig: SendSignalRequest =
            serde_json::from_value(json!({"process": {"pid": 42}, "signal": "SIGNAL_SIGKILL"})).unwrap();
        assert_eq!(sig.process, ProcessSelector::Pid(42));
        assert_eq!(sig.signal, Signal::Sigkill);
        let sig: SendSignalRequest = serde_json::from_value(json!({"process": {"tag": "t"}, "signal": 15})).unwrap();
        assert_eq!(sig.signal, Signal::Sigterm);

        let inp: SendInputRequest =
            serde_json::from_value(json!({"process": {"pid": 42}, "input": {"stdin": "YWJj"}})).unwrap();
        assert_eq!(inp.input, ProcessInput::Stdin(b"abc".to_vec()));
    }

    #[test]
    fn events_encode_as_oneofs() {
        let ev = StartResponse { event: ProcessEvent::Data(DataEvent::Stdout(b"hi\n".to_vec())) };
        assert_eq!(serde_json::to_string(&ev).unwrap(), r#"{"event":{"data":{"stdout":"aGkK"}}}"#);
        let end = StartResponse {
            event: ProcessEvent::End(EndEvent {
                exit_code: 3,
                exited: true,
                status: "exit status 3".into(),
                error: Some("exit status 3".into()),
            }),
        };
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"}}}"#
        );
        let ok = StartResponse { event: ProcessEvent::End(EndEvent { exited: true, ..Default::default() }) };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"event":{"end":{"exited":true}}}"#);
        let ka = StartResponse { event: ProcessEvent::Keepalive(KeepAlive {}) };
        assert_eq!(serde_json::to_string(&ka).unwrap(), r#"{"event":{"keepalive":{}}}"#);
    }

    #[test]
    fn bad_enum_and_selector_are_rejected() {
        assert!(
            serde_json::from_value::<SendSignalRequest>(json!({"process": {"pid": 1}, "signal": "SIGHUP"})).is_err()
        );
        assert!(serde_json::from_value::<ConnectRequest>(json!({"process": {}})).is_err());
        assert!(serde_json::from_value::<ConnectRequest>(json!({"process": {"pid": -1}})).is_err());
    }
}
