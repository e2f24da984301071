//! Exec round trip of `/bin/true` through the agent client, beside a plain
//! fork+exec of `/bin/true` measured in the same run (the floor).
//!
//! Run: `cargo bench -p warren-agent --bench exec_rtt` (WARREN_BENCH_N sets
//! the iterations per variant; default 400; WARREN_AGENT_BIN another agent
//! binary, e.g. target/agent-static/warren-agent). Rounds interleave the variants
//! so that noise on a shared machine hits them alike.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warren_proto::client::{AgentClient, Endpoint};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn report(&mut self, floor_p50: Option<Duration>) -> Duration {
        self.samples.sort();
        let (p50, p90, p99) =
            (percentile(&self.samples, 0.5), percentile(&self.samples, 0.9), percentile(&self.samples, 0.99));
        let ratio = floor_p50.map(|f| format!("{:.2}x", p50.as_secs_f64() / f.as_secs_f64())).unwrap_or("1.00x".into());
        println!(
            "| {:<40} | {:>5} | {:>7.3} | {:>7.3} | {:>7.3} | {:>7.3} | {:>8} |",
            self.name,
            self.samples.len(),
            ms(self.samples[0]),
            ms(p50),
            ms(p90),
            ms(p99),
            ratio
        );
        p50
    }
}

fn main() {
    let n: usize = std::env::var("WARREN_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    // WARREN_AGENT_BIN measures another build, e.g. the static one workspaces run.
    let bin = std::env::var("WARREN_AGENT_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_warren-agent").to_string());
    let mut agent = Command::new(&bin)
        .args(["--listen", &format!("unix://{}", sock.display()), "--listen", &format!("tcp://127.0.0.1:{port}")])
        .args(["--user", "root"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(5));
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let unix = AgentClient::new(Endpoint::Unix(sock.clone()));
    let tcp = AgentClient::new(Endpoint::Tcp(format!("127.0.0.1:{port}")));
    let mut floor = Series { name: "fork+exec /bin/true (floor)", samples: vec![] };
    let mut via_unix = Series { name: "agent exec /bin/true, unix socket", samples: vec![] };
    let mut via_tcp = Series { name: "agent exec /bin/true, TCP loopback", samples: vec![] };
    rt.block_on(async {
        // Warm-up: connections, page cache.
        for _ in 0..20 {
            unix.exec("/bin/true", &[]).await.expect("exec");
            tcp.exec("/bin/true", &[]).await.expect("exec");
        }
        for _ in 0..n {
            let t = Instant::now();
            let st = Command::new("/bin/true").status().expect("true");
            floor.samples.push(t.elapsed());
            assert!(st.success());

            let t = Instant::now();
            let out = unix.exec("/bin/true", &[]).await.expect("exec");
            via_unix.samples.push(t.elapsed());
            assert_eq!(out.exit_code, 0);

            let t = Instant::now();
            let out = tcp.exec("/bin/true", &[]).await.expect("exec");
            via_tcp.samples.push(t.elapsed());
            assert_eq!(out.exit_code, 0);
        }
    });
    println!("| variant | n | min ms | p50 ms | p90 ms | p99 ms | p50 / floor |");
    println!("|---|---|---|---|---|---|---|");
    let f = floor.report(None);
    via_unix.report(Some(f));
    via_tcp.report(Some(f));
    let _ = agent.kill();
    let _ = agent.wait();
}
