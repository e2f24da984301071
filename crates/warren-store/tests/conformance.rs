#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test
use std::sync::Arc;

use warren_store::{conformance, MemoryStore, RedbStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes() {
    conformance::run(Arc::new(MemoryStore::new()), None).await;
    let shared = Arc::new(MemoryStore::new());
    conformance::run_shared(shared.clone(), shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let reopen = || RedbStore::open(&path).unwrap();
    conformance::run(store, Some(&reopen)).await;
}

#[test]
fn a_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(&path, b"this is not a redb file at all").unwrap();
    let err = RedbStore::open(&path).err().unwrap();
    assert!(err.to_string().contains("state.redb"), "{err}");
}
