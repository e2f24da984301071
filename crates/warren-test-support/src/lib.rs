//! Helpers the test suites of several crates share (a dev-dependency only;
//! nothing shipped depends on it). They panic on failure: a broken test
//! environment is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Mutex;

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The cargo target directory of this build.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

/// The static agent (`scripts/build-agent.sh`; OCI images and containers
/// have no host libraries), built once when missing. `WARREN_AGENT_STATIC`
/// names another one.
pub fn static_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("WARREN_AGENT_STATIC") {
        return PathBuf::from(p);
    }
    static BUILD: Mutex<()> = Mutex::new(());
    let bin = target_dir().join("agent-static/warren-agent");
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if !bin.exists() {
        let st = std::process::Command::new(repo_root().join("scripts/build-agent.sh"))
            .status()
            .expect("running scripts/build-agent.sh");
        assert!(st.success(), "building the static agent failed");
    }
    std::fs::canonicalize(&bin).expect("the static agent")
}
