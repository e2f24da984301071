#![allow(dead_code)]

use std::path::{Path, PathBuf};

use warren_provider_local::{LocalConfig, LocalProvider};

pub fn config(dir: &Path) -> LocalConfig {
    LocalConfig {
        state_dir: dir.to_path_buf(),
        agent: warren_provider::conformance::agent_binary(),
        helper: PathBuf::from(env!("CARGO_BIN_EXE_warren-sandbox")),
        seccomp: true,
        io_uring: false,
    }
}

pub fn provider(dir: &Path) -> LocalProvider {
    let p = LocalProvider::new(config(dir)).expect("local provider (run as root)");
    expect_cgroup_version(&p);
    p
}

/// `WARREN_EXPECT_CGROUP=2` (set by scripts/cgroup-v2-vm.sh) makes every
/// test fail unless the provider really runs on that cgroup version.
pub fn expect_cgroup_version(p: &LocalProvider) {
    if let Ok(v) = std::env::var("WARREN_EXPECT_CGROUP") {
        assert_eq!(p.cgroups().version().to_string(), v, "cgroup version the provider chose");
    }
}
