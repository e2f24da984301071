//! Helpers shared by the CLI's end-to-end tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// Waits for `warren serve` to print where it listens and returns that URL;
/// keeps draining its stdout afterwards so it never blocks on it.
pub fn ready_url(child: &mut Child, what: &str) -> String {
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        assert!(Instant::now() < deadline, "{what} did not get ready");
        let line = lines.next().unwrap_or_else(|| panic!("{what} exited before it was ready")).unwrap();
        if let Some(u) = line.strip_prefix("warren ready on ") {
            break u.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    url
}

pub use warren_test_support::free_port;

/// The trimmed stdout of a command that must have succeeded.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
