//! The local provider passes the provider conformance suite.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let p = common::provider(&root);
    warren_provider::conformance::run(&p, || common::provider(&root), "base").await;
}
