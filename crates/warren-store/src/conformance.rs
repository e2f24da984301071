//! The store conformance suite: every StateStore implementation runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed step is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;

use warren_core::{Size, State, TenantId, WorkspaceId};

use crate::{ApiKeyRecord, EventKind, NewEvent, Owner, StateStore, StoreError, WorkspaceRecord, RECORD_SCHEMA};

/// A tenant's name for tests (panics on a bad one).
pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("a valid tenant name")
}

pub fn record(t: &str) -> WorkspaceRecord {
    WorkspaceRecord {
        schema: RECORD_SCHEMA,
        id: WorkspaceId::generate(),
        owner: Owner::Tenant { tenant: tenant(t) },
        template: "base".into(),
        size: Size::default(),
        state: State::Creating,
        provider: "test".into(),
        endpoint: None,
        access_token: "a".into(),
        init_token: "i".into(),
        created_at_ms: 1,
        updated_at_ms: 1,
        expires_at_ms: 300_001,
        last_activity_ms: 1,
        metadata: BTreeMap::new(),
        env: BTreeMap::new(),
        error: None,
        node: String::new(),
    }
}

fn created(r: &WorkspaceRecord) -> NewEvent {
    NewEvent {
        at_ms: r.created_at_ms,
        workspace: r.id.clone(),
        tenant: r.tenant().cloned(),
        size: r.size,
        kind: EventKind::Created { template: r.template.clone() },
        backend: r.provider.clone(),
    }
}

/// The store's usage of `u`, checked against a look at every record.
async fn agree<S: StateStore>(store: &S, u: &TenantId) -> crate::TenantUsage {
    let all = store.list_workspaces().await.unwrap();
    let got = store.tenant_usage(u).await.unwrap();
    assert_eq!(got, crate::TenantUsage::scan(u, &all));
    got
}

/// Runs the suite. `reopen` (for durable stores) opens the same store again,
/// as after a restart, and must see everything committed.
pub async fn run<S: StateStore>(store: Arc<S>, reopen: Option<&dyn Fn() -> S>) {
    let base_seq = store.events_since(0, usize::MAX).await.unwrap().len() as u64;

    // Insert, get, list; a duplicate changes nothing.
    let a = record("t1");
    let ev = store.insert_workspace(&a, created(&a)).await.unwrap();
    assert_eq!(ev.seq, base_seq + 1);
    assert_eq!(store.get_workspace(&a.id).await.unwrap().as_ref(), Some(&a));
    assert!(store.list_workspaces().await.unwrap().contains(&a));
    let mut dup = a.clone();
    dup.owner = Owner::Tenant { tenant: tenant("other") };
    assert!(matches!(store.insert_workspace(&dup, created(&dup)).await, Err(StoreError::AlreadyExists(_))));
    assert_eq!(store.get_workspace(&a.id).await.unwrap().unwrap().tenant(), Some(&tenant("t1")));
    assert_eq!(store.events_since(base_seq, 100).await.unwrap().len(), 1, "a refused insert logs nothing");
    assert_eq!(store.get_workspace(&WorkspaceId::generate()).await.unwrap(), None);

    // Updates change the record and log their event atomically.
    let (rec, ev) = store
        .update_workspace(
            &a.id,
            Box::new(|r| {
                let from = r.state;
                r.state = from.transition(State::Running).map_err(|e| StoreError::Rejected(e.to_string()))?;
                Ok(Some(NewEvent {
                    at_ms: 5,
                    workspace: r.id.clone(),
                    tenant: r.tenant().cloned(),
                    size: r.size,
                    kind: EventKind::State { from, to: r.state },
                    backend: r.provider.clone(),
                }))
            }),
        )
        .await
        .unwrap();
    assert_eq!(rec.state, State::Running);
    let ev = ev.unwrap();
    assert_eq!(ev.seq, base_seq + 2);
    assert_eq!(ev.event.kind, EventKind::State { from: State::Creating, to: State::Running });
    // A refused update changes nothing and logs nothing.
    let refused = store
        .update_workspace(
            &a.id,
            Box::new(|r| {
                r.state = State::Deleted;
                Err(StoreError::Rejected("no".into()))
            }),
        )
        .await;
    assert_eq!(refused, Err(StoreError::Rejected("no".into())));
    assert_eq!(store.get_workspace(&a.id).await.unwrap().unwrap().state, State::Running);
    assert_eq!(store.events_since(base_seq, 100).await.unwrap().len(), 2);
    let ghost = WorkspaceId::generate();
    assert!(matches!(store.update_workspace(&ghost, Box::new(|_| Ok(None))).await, Err(StoreError::NotFound(_))));

    // Concurrent read-modify-writes lose nothing.
    let mut tasks = Vec::new();
    for _ in 0..25 {
        let s = store.clone();
        let id = a.id.clone();
        tasks.push(tokio::spawn(async move {
            s.update_workspace(
                &id,
                Box::new(|r| {
                    let n: u64 = r.metadata.get("n").and_then(|v| v.parse().ok()).unwrap_or(0);
                    r.metadata.insert("n".into(), (n + 1).to_string());
                    Ok(Some(NewEvent {
                        at_ms: 9,
                        workspace: r.id.clone(),
                        tenant: r.tenant().cloned(),
                        size: r.size,
                        kind: EventKind::Timeout { expires_at_ms: n + 1 },
                        backend: r.provider.clone(),
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
    assert_eq!(store.get_workspace(&a.id).await.unwrap().unwrap().metadata["n"], "25");

    // The log has no gaps and pages correctly.
    let all = store.events_since(base_seq, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 27);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, base_seq + 1 + i as u64);
    }
    let page = store.events_since(base_seq + 10, 5).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), (base_seq + 11..=base_seq + 15).collect::<Vec<_>>());

    // Delete forgets the record but not its history.
    let b = record("t2");
    store.insert_workspace(&b, created(&b)).await.unwrap();
    store.delete_workspace(&b.id).await.unwrap();
    assert_eq!(store.get_workspace(&b.id).await.unwrap(), None);
    assert!(store.events_since(base_seq, usize::MAX).await.unwrap().iter().any(|e| e.event.workspace == b.id));

    // API keys.
    let key = ApiKeyRecord {
        hash: format!("{:064x}", base_seq + 7),
        prefix: "wk_abc".into(),
        tenant: tenant("t1"),
        name: "ci".into(),
        admin: false,
        created_at_ms: 3,
        revoked: false,
    };
    store.put_api_key(&key).await.unwrap();
    assert_eq!(store.get_api_key(&key.hash).await.unwrap().as_ref(), Some(&key));
    let revoked = ApiKeyRecord { revoked: true, ..key.clone() };
    store.put_api_key(&revoked).await.unwrap();
    assert!(store.get_api_key(&key.hash).await.unwrap().unwrap().revoked);
    assert!(store.list_api_keys().await.unwrap().iter().any(|k| k.hash == key.hash));
    assert_eq!(store.get_api_key("nope").await.unwrap(), None);

    // Typed ownership and endpoints are stored as they are.
    let mut p = record("t1");
    p.owner = Owner::Pool { pool: "base".into(), revision: "r1".into(), ready: true };
    p.endpoint = Some("tcp://127.0.0.1:1".parse().unwrap());
    store.insert_workspace(&p, created(&p)).await.unwrap();
    assert_eq!(store.get_workspace(&p.id).await.unwrap().as_ref(), Some(&p));
    store.delete_workspace(&p.id).await.unwrap();

    // Per-tenant usage agrees with a look at every record, through
    // inserts, size and state changes, a change of owner and deletes.
    let u = tenant("usage-t");
    assert_eq!(agree(store.as_ref(), &u).await.workspaces, 0);
    let mut made = Vec::new();
    for i in 0..3u32 {
        let mut r = record("usage-t");
        r.size.millicpus = 1000 * (i + 1);
        store.insert_workspace(&r, created(&r)).await.unwrap();
        made.push(r);
    }
    let got = agree(store.as_ref(), &u).await;
    assert_eq!((got.workspaces, got.millicpus), (3, 6000));
    store
        .update_workspace(
            &made[0].id,
            Box::new(|r| {
                r.state = State::Failed;
                Ok(None)
            }),
        )
        .await
        .unwrap();
    assert_eq!(agree(store.as_ref(), &u).await.millicpus, 5000, "a failed workspace holds nothing");
    store
        .update_workspace(
            &made[1].id,
            Box::new(|r| {
                r.owner = Owner::Tenant { tenant: tenant("someone-else") };
                Ok(None)
            }),
        )
        .await
        .unwrap();
    assert_eq!(agree(store.as_ref(), &u).await.workspaces, 1);
    for r in &made {
        store.delete_workspace(&r.id).await.unwrap();
    }
    assert_eq!(agree(store.as_ref(), &u).await, crate::TenantUsage::default());
    assert_eq!(store.tenant_usage(&tenant("someone-else")).await.unwrap().workspaces, 0);
    let kept = record("reopen-t");
    store.insert_workspace(&kept, created(&kept)).await.unwrap();

    // Everything survives a reopen.
    if let Some(reopen) = reopen {
        drop(store);
        let again = reopen();
        let got = again.get_workspace(&a.id).await.unwrap().unwrap();
        assert_eq!(got.metadata["n"], "25");
        assert_eq!(got.state, State::Running);
        assert_eq!(again.events_since(base_seq, usize::MAX).await.unwrap().len(), 33);
        assert_eq!(agree(&again, &tenant("reopen-t")).await.workspaces, 1, "the usage index is rebuilt on open");
        assert!(again.get_api_key(&key.hash).await.unwrap().unwrap().revoked);
    }
}

/// For stores several replicas share: two handles on one store. Leases go
/// to one holder at a time and pass on when they expire; heartbeats are
/// visible to every handle.
pub async fn run_shared<S: StateStore>(a: Arc<S>, b: Arc<S>) {
    use std::time::Duration;
    let ttl = Duration::from_millis(400);
    let name = format!("lease-{}", WorkspaceId::generate());
    assert!(a.lease(&name, "node-a", ttl).await.unwrap(), "a free lease is granted");
    assert!(!b.lease(&name, "node-b", ttl).await.unwrap(), "a held lease is refused");
    assert!(a.lease(&name, "node-a", ttl).await.unwrap(), "the holder renews");
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(b.lease(&name, "node-b", ttl).await.unwrap(), "an expired lease passes on");
    assert!(!a.lease(&name, "node-a", ttl).await.unwrap(), "the old holder lost it");
    let other = format!("lease-{}", WorkspaceId::generate());
    assert!(a.lease(&other, "node-a", ttl).await.unwrap(), "leases are independent");
    b.release_lease(&other, "node-b").await.unwrap();
    assert!(!b.lease(&other, "node-b", ttl).await.unwrap(), "only the holder can release a lease");
    a.release_lease(&other, "node-a").await.unwrap();
    assert!(b.lease(&other, "node-b", ttl).await.unwrap(), "a released lease is free at once");

    let n = crate::NodeRecord {
        id: format!("n-{}", WorkspaceId::generate()),
        url: "http://10.0.0.1:7474".into(),
        expires_at_ms: 5,
    };
    a.put_node(&n).await.unwrap();
    assert!(b.list_nodes().await.unwrap().contains(&n));
    let n2 = crate::NodeRecord { expires_at_ms: 9, ..n.clone() };
    b.put_node(&n2).await.unwrap();
    let seen: Vec<_> = a.list_nodes().await.unwrap().into_iter().filter(|x| x.id == n.id).collect();
    assert_eq!(seen, vec![n2], "a heartbeat replaces the previous one");
}
