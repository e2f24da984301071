//! The process-level fake passes the provider conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use warren_provider::fake::{ProcessProvider, TEMPLATE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_provider_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let agent = warren_provider::conformance::agent_binary();
    let p = ProcessProvider::new(&root, &agent);
    warren_provider::conformance::run(&p, || ProcessProvider::new(&root, &agent), TEMPLATE).await;
}
