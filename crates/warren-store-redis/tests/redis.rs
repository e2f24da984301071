//! The Redis store against a real redis-server started on a free loopback
//! port: the store conformance suite (with a reopen), concurrency across
//! two store instances (as two replicas), and Redis going away and coming
//! back (AOF on).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_core::State;
use warren_store::{conformance, EventKind, NewEvent, StateStore, StoreError};
use warren_store_redis::RedisStore;

struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

use warren_test_support::free_port;

impl Redis {
    fn start() -> Redis {
        let mut r = Redis { child: None, port: free_port(), dir: tempfile::tempdir().unwrap() };
        r.up();
        r
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--save", "", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_conformance_suite() {
    let r = Redis::start();
    let store = Arc::new(RedisStore::open(&r.url(), None).unwrap());
    let url = r.url();
    let reopen = move || RedisStore::open(&url, None).unwrap();
    conformance::run(store, Some(&reopen)).await;
    // Two handles, as two replicas: leases and heartbeats.
    let a = Arc::new(RedisStore::open(&r.url(), None).unwrap());
    let b = Arc::new(RedisStore::open(&r.url(), None).unwrap());
    conformance::run_shared(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serialise_updates_and_keep_the_log_gap_free() {
    let r = Redis::start();
    let a = Arc::new(RedisStore::open(&r.url(), None).unwrap());
    let b = Arc::new(RedisStore::open(&r.url(), None).unwrap());
    let rec = conformance::record("t");
    let ev = |r: &warren_store::WorkspaceRecord| NewEvent {
        at_ms: 1,
        workspace: r.id.clone(),
        tenant: r.tenant().cloned(),
        size: r.size,
        kind: EventKind::Created { template: r.template.clone() },
        backend: String::new(),
    };
    a.insert_workspace(&rec, ev(&rec)).await.unwrap();
    // 2 x 50 concurrent increments through two "replicas": none lost.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let s: Arc<RedisStore> = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = rec.id.clone();
        tasks.push(tokio::spawn(async move {
            s.update_workspace(
                &id,
                Box::new(|r| {
                    r.expires_at_ms += 1;
                    Ok(Some(NewEvent {
                        at_ms: r.expires_at_ms,
                        workspace: r.id.clone(),
                        tenant: r.tenant().cloned(),
                        size: r.size,
                        kind: EventKind::Timeout { expires_at_ms: r.expires_at_ms },
                        backend: String::new(),
                    }))
                }),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = b.get_workspace(&rec.id).await.unwrap().unwrap();
    assert_eq!(got.expires_at_ms, rec.expires_at_ms + 100);
    let events = a.events_since(0, usize::MAX).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=101).collect::<Vec<_>>(), "one event per change, no gaps");
    // A claim-like CAS: only one of many concurrent claimers wins.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s: Arc<RedisStore> = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = rec.id.clone();
        tasks.push(tokio::spawn(async move {
            s.update_workspace(
                &id,
                Box::new(move |r| {
                    if r.tenant() != Some(&conformance::tenant("t")) {
                        return Err(StoreError::Rejected("already claimed".into()));
                    }
                    r.owner = warren_store::Owner::Tenant { tenant: conformance::tenant(&format!("claimer{i}")) };
                    Ok(None)
                }),
            )
            .await
            .is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as usize;
    }
    assert_eq!(wins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_and_recovery_keeps_everything() {
    let mut r = Redis::start();
    let store = RedisStore::open(&r.url(), None).unwrap();
    let rec = conformance::record("t");
    let ev = NewEvent {
        at_ms: 1,
        workspace: rec.id.clone(),
        tenant: Some(conformance::tenant("t")),
        size: rec.size,
        kind: EventKind::Created { template: "base".into() },
        backend: String::new(),
    };
    store.insert_workspace(&rec, ev.clone()).await.unwrap();
    r.down();
    let t = Instant::now();
    match store.get_workspace(&rec.id).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("redis"), "{m}"),
        other => panic!("{other:?}"),
    }
    let upd = store
        .update_workspace(
            &rec.id,
            Box::new(|r| {
                r.state = State::Running;
                Ok(None)
            }),
        )
        .await;
    assert!(matches!(upd, Err(StoreError::Unavailable(_))), "{upd:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "failures are quick: {:?}", t.elapsed());
    // Back up from its AOF: everything committed is there, nothing half-done.
    r.up();
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        match store.get_workspace(&rec.id).await {
            Ok(g) => break g,
            Err(e) => assert!(Instant::now() < deadline, "no recovery: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.as_ref(), Some(&rec), "the refused update changed nothing");
    assert_eq!(store.events_since(0, 10).await.unwrap().len(), 1);
    let (after, _) = store
        .update_workspace(
            &rec.id,
            Box::new(|r| {
                r.state = State::Running;
                Ok(None)
            }),
        )
        .await
        .unwrap();
    assert_eq!(after.state, State::Running);
}

/// The per-tenant sums are built once from records written before they
/// existed (here: deleted by hand, as a store written by an older version
/// has none), then kept by every replica's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_usage_is_built_from_old_records_and_kept_by_every_replica() {
    let r = Redis::start();
    let a = RedisStore::open(&r.url(), Some("{u}:")).unwrap();
    let t = conformance::tenant("old");
    let mut recs = Vec::new();
    for _ in 0..3 {
        let rec = conformance::record("old");
        let ev = NewEvent {
            at_ms: 1,
            workspace: rec.id.clone(),
            tenant: rec.tenant().cloned(),
            size: rec.size,
            kind: EventKind::Created { template: "base".into() },
            backend: String::new(),
        };
        a.insert_workspace(&rec, ev).await.unwrap();
        recs.push(rec);
    }
    // As an older version left it: records, no sums.
    let client = redis::Client::open(r.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL").arg("{u}:usage").arg("{u}:usage-built").query_async(&mut c).await.unwrap();
    let b = RedisStore::open(&r.url(), Some("{u}:")).unwrap();
    assert_eq!(b.tenant_usage(&t).await.unwrap().workspaces, 3, "built from the records");
    // Writes through either replica keep it.
    a.delete_workspace(&recs[0].id).await.unwrap();
    b.update_workspace(
        &recs[1].id,
        Box::new(|r| {
            r.state = warren_core::State::Failed;
            Ok(None)
        }),
    )
    .await
    .unwrap();
    let all = a.list_workspaces().await.unwrap();
    let want = warren_store::TenantUsage::scan(&t, &all);
    assert_eq!(want.workspaces, 1);
    assert_eq!(a.tenant_usage(&t).await.unwrap(), want);
    assert_eq!(b.tenant_usage(&t).await.unwrap(), want);
}
