//! Test harness: runs the real agent binary on a Unix socket and a TCP port.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warren_proto::client::{AgentClient, Endpoint};

pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp: String,
}

pub struct Opts {
    pub access_token: Option<&'static str>,
    pub init_token: Option<&'static str>,
    pub user: &'static str,
    pub extra: Vec<String>,
    /// Run under `unshare --pid --fork` so the agent is PID 1.
    pub as_pid1: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { access_token: None, init_token: Some("init-secret"), user: "root", extra: vec![], as_pid1: false }
    }
}

use warren_test_support::free_port;

impl Agent {
    pub fn start() -> Agent {
        Self::start_with(Opts::default())
    }

    pub fn start_with(o: Opts) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let tcp = format!("127.0.0.1:{}", free_port());
        let bin = env!("CARGO_BIN_EXE_warren-agent");
        let mut cmd = if o.as_pid1 {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc", bin]);
            c
        } else {
            Command::new(bin)
        };
        cmd.arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--listen")
            .arg(format!("tcp://{tcp}"))
            .arg("--user")
            .arg(o.user)
            .args(&o.extra)
            .env_remove("WARREN_AGENT_ACCESS_TOKEN")
            .env_remove("WARREN_AGENT_INIT_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(t) = o.access_token {
            cmd.env("WARREN_AGENT_ACCESS_TOKEN", t);
        }
        if let Some(t) = o.init_token {
            cmd.env("WARREN_AGENT_INIT_TOKEN", t);
        }
        let child = cmd.spawn().expect("spawn agent");
        let a = Agent { child, dir, socket, tcp };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(a.socket.exists() && TcpStream::connect(&a.tcp).is_ok()) {
            assert!(Instant::now() < deadline, "agent did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        a
    }

    pub fn unix(&self) -> AgentClient {
        AgentClient::new(Endpoint::Unix(self.socket.clone()))
    }

    pub fn tcp_client(&self) -> AgentClient {
        AgentClient::new(Endpoint::Tcp(self.tcp.clone()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set of the agent process, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        status_field(self.agent_pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        status_field(self.agent_pid(), "VmRSS:")
    }

    /// The agent's own pid (the child of `unshare` when run as PID 1).
    pub fn agent_pid(&self) -> u32 {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.to_string_lossy().contains("warren-agent") {
            return pid;
        }
        children.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(pid)
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends a raw HTTP/1.1 request over TCP and returns the whole response.
    pub fn raw_http1(&self, request: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(&self.tcp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

impl Drop for Agent {
    fn drop(&mut self) {
        let inner = self.agent_pid();
        if inner != self.child.id() {
            // Under `unshare --pid --fork` the agent is a grandchild: killing
            // PID 1 of the namespace takes every process in it along.
            let _ = Command::new("kill").args(["-9", &inner.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Connect envelope.
pub fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}
