//! The isolation probe suite (`warren_provider::probes`) as root inside
//! local workspaces: warren's own namespaces and gVisor.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

mod common;

use warren_provider::probes::{run, Kernel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inside_a_native_workspace_cannot_reach_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path());
    run(&p, "base", Kernel::Host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inside_a_gvisor_workspace_cannot_reach_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::provider(dir.path())
        .with_gvisor(vec!["base".into()], "runsc".into())
        .expect("runsc (apt-get install runsc; scripts/test.sh installs it)");
    run(&p, "base", Kernel::UserSpace).await;
}
