#![allow(dead_code)]

use std::path::{Path, PathBuf};

use warren_provider_local::{LocalConfig, LocalProvider};

pub fn config(dir: &Path) -> LocalConfig {
    LocalConfig {
        state_dir: dir.to_path_buf(),
        agent: warren_provider::conformance::agent_binary(),
        helper: PathBuf::from(env!("CARGO_BIN_EXE_warren-sandbox")),
        seccomp: true,
    }
}

pub fn provider(dir: &Path) -> LocalProvider {
    LocalProvider::new(config(dir)).expect("local provider (run as root)")
}
