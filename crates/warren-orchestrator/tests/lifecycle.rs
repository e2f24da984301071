#![allow(clippy::disallowed_methods, clippy::disallowed_macros, clippy::unwrap_used, clippy::expect_used)] // tests wait in real time and print
//! Orchestrator lifecycle over the process fake, a memory or redb store and
//! a manual clock.

use std::sync::Arc;
use std::time::Duration;

use warren_core::{ManualClock, Size, State, WorkspaceId};
use warren_orchestrator::jobs::Job;
use warren_orchestrator::{Config, CreateRequest, Error, Orchestrator};
use warren_provider::fake::ProcessProvider;
use warren_provider::SandboxProvider;
use warren_store::{EventKind, MemoryStore, Owner, RedbStore, StateStore};

struct Env {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    clock: Arc<ManualClock>,
    store: Arc<dyn StateStore>,
    orch: Arc<Orchestrator>,
}

fn provider(root: &std::path::Path) -> Arc<dyn SandboxProvider> {
    Arc::new(ProcessProvider::new(root.join("ws"), warren_provider::conformance::agent_binary()))
}

fn env_with(store: Arc<dyn StateStore>, dir: tempfile::TempDir) -> Env {
    let root = dir.path().to_path_buf();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let orch = Arc::new(Orchestrator::new(provider(&root), store.clone(), clock.clone(), Config::default()));
    Env { _dir: dir, root, clock, store, orch }
}

fn env() -> Env {
    env_with(Arc::new(MemoryStore::new()), tempfile::tempdir().unwrap())
}

/// Nothing outlives a test: no more refills, then every record (pool
/// members included) killed.
async fn remove_everything(o: &Orchestrator, store: &dyn StateStore) {
    o.stop_pools().await;
    for r in store.list_workspaces().await.unwrap() {
        let _ = o.kill_any(&r.id).await;
    }
}

/// One tick of `job` at the orchestrator's clock; how many it acted on.
async fn tick(o: &Arc<Orchestrator>, job: Job) -> usize {
    o.run_job(job, o.now_ms()).await.unwrap().acted
}

fn t(name: &str) -> warren_core::TenantId {
    warren_core::TenantId::new(name).unwrap()
}

fn req(tenant: &str) -> CreateRequest {
    CreateRequest::new(t(tenant), "base")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_list_and_tenant_scoping() {
    let e = env();
    let mut r = req("alice");
    r.env.insert("GREETING".into(), "hi".into());
    r.metadata.insert("k".into(), "v".into());
    let ws = e.orch.create(r).await.unwrap();
    assert_eq!(ws.state, State::Running);
    assert_eq!(ws.expires_at_ms, 1_000_000 + 300_000);
    let (_, agent) = e.orch.agent(Some(&t("alice")), &ws.id).await.unwrap();
    assert_eq!(agent.sh("echo $GREETING").await.unwrap().stdout, b"hi\n");
    assert_eq!(e.orch.list(Some(&t("alice"))).await.unwrap().len(), 1);
    assert!(e.orch.list(Some(&t("bob"))).await.unwrap().is_empty());
    assert!(matches!(e.orch.get(Some(&t("bob")), &ws.id).await, Err(Error::NotFound(_))));
    assert!(matches!(e.orch.agent(Some(&t("bob")), &ws.id).await, Err(Error::NotFound(_))));
    assert!(matches!(e.orch.kill(Some(&t("bob")), &ws.id).await, Err(Error::NotFound(_))));
    assert_eq!(e.orch.get(None, &ws.id).await.unwrap().metadata["k"], "v");
    // The gateway finds a workspace by its access token (and by nothing else).
    assert_eq!(e.orch.workspace_by_token(&ws.access_token).await.unwrap(), Some(ws.id.clone()));
    assert_eq!(e.orch.workspace_by_token("not-a-token").await.unwrap(), None);
    e.orch.kill(Some(&t("alice")), &ws.id).await.unwrap();
    assert_eq!(e.orch.workspace_by_token(&ws.access_token).await.unwrap(), None, "gone with its workspace");
    assert!(matches!(e.orch.get(None, &ws.id).await, Err(Error::NotFound(_))));
    // The whole life is in the event log, in order.
    let kinds: Vec<EventKind> = e.store.events_since(0, 100).await.unwrap().into_iter().map(|e| e.event.kind).collect();
    let states: Vec<(State, State)> = kinds
        .iter()
        .filter_map(|k| match k {
            EventKind::State { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert!(matches!(kinds[0], EventKind::Created { .. }));
    assert_eq!(
        states,
        [
            (State::Creating, State::Running),
            (State::Running, State::Stopping),
            (State::Stopping, State::Stopped),
            (State::Stopped, State::Deleted)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() {
    let e = env();
    let mut r = req("a");
    r.template = "nope".into();
    assert!(matches!(e.orch.create(r).await, Err(Error::NotFound(m)) if m.contains("nope")));
    let mut r = req("a");
    r.size = Some(Size { memory_mib: 1, ..Size::default() });
    assert!(matches!(e.orch.create(r).await, Err(Error::InvalidArgument(_))));
    let mut r = req("a");
    r.timeout = Some(Duration::from_secs(10 * 24 * 3600));
    assert!(matches!(e.orch.create(r).await, Err(Error::InvalidArgument(_))));
    assert!(e.store.list_workspaces().await.unwrap().is_empty());
    assert!(e.store.events_since(0, 10).await.unwrap().is_empty());
    assert!(matches!(e.orch.kill(None, &WorkspaceId::generate()).await, Err(Error::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_reaper_pause_resume() {
    let e = env();
    let ws = e.orch.create(req("a")).await.unwrap();
    let keep = e.orch.create(req("a")).await.unwrap();
    e.orch.set_timeout(None, &keep.id, Duration::from_secs(3600)).await.unwrap();
    assert!(matches!(e.orch.set_timeout(None, &keep.id, Duration::ZERO).await, Err(Error::InvalidArgument(_))));
    e.clock.advance(Duration::from_secs(299));
    assert_eq!(tick(&e.orch, Job::Reap).await, 0);
    e.clock.advance(Duration::from_secs(2));
    assert_eq!(tick(&e.orch, Job::Reap).await, 1);
    assert!(matches!(e.orch.get(None, &ws.id).await, Err(Error::NotFound(_))));
    assert_eq!(e.orch.get(None, &keep.id).await.unwrap().state, State::Running);

    let p = e.orch.pause(None, &keep.id).await.unwrap();
    assert_eq!(p.state, State::Paused);
    assert!(matches!(e.orch.pause(None, &keep.id).await, Err(Error::Conflict(_))));
    assert!(matches!(e.orch.agent(None, &keep.id).await, Err(Error::Conflict(_))));
    e.orch.resume(None, &keep.id).await.unwrap();
    let (_, agent) = e.orch.agent(None, &keep.id).await.unwrap();
    assert_eq!(agent.sh("echo back").await.unwrap().stdout, b"back\n");
    e.orch.kill(None, &keep.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_adopts_fails_and_removes_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.redb");
    let store: Arc<dyn StateStore> = Arc::new(RedbStore::open(&db).unwrap());
    let e = env_with(store, dir);
    let a = e.orch.create(req("a")).await.unwrap();
    let b = e.orch.create(req("a")).await.unwrap();
    // b dies while "the server is down".
    provider(&e.root).stop(&b.id).await.unwrap();
    // An orphan the store never heard of.
    let orphan_spec = warren_provider::conformance::spec("base");
    provider(&e.root).create(&orphan_spec).await.unwrap();
    // A create that never finished.
    let mut half = warren_store::conformance::record("a");
    half.provider = "process".into();
    e.store
        .insert_workspace(
            &half,
            warren_store::NewEvent {
                at_ms: 1,
                workspace: half.id.clone(),
                tenant: Some(t("a")),
                size: half.size,
                kind: EventKind::Created { template: "base".into() },
                backend: String::new(),
            },
        )
        .await
        .unwrap();

    // "Restart": a new orchestrator over the same store and backend state.
    let orch2 = Arc::new(Orchestrator::new(provider(&e.root), e.store.clone(), e.clock.clone(), Config::default()));
    let report = orch2.reconcile().await.unwrap();
    assert_eq!(report.adopted, 1, "{report:?}");
    assert_eq!(report.failed, 2, "{report:?}");
    assert_eq!(report.orphans_removed, 1, "{report:?}");
    let (_, agent) = orch2.agent(None, &a.id).await.unwrap();
    assert_eq!(agent.sh("echo adopted").await.unwrap().stdout, b"adopted\n");
    assert_eq!(orch2.get(None, &b.id).await.unwrap().state, State::Failed);
    assert!(orch2.get(None, &b.id).await.unwrap().error.unwrap().contains("server was down"));
    assert!(matches!(
        provider(&e.root).inspect(&orphan_spec.id).await,
        Err(warren_provider::ProviderError::NotFound(_))
    ));
    // Failed records go after their retention; a second reconcile is a no-op.
    orch2.set_timeout(None, &a.id, Duration::from_secs(7200)).await.unwrap();
    e.clock.advance(Config::default().failed_retention + Duration::from_millis(1));
    assert_eq!(tick(&orch2, Job::Reap).await, 2);
    let again = orch2.reconcile().await.unwrap();
    assert_eq!(again, warren_orchestrator::ReconcileReport { adopted: 1, ..Default::default() });
    orch2.kill(None, &a.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workspaces_are_paused_but_busy_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cfg = Config { idle_timeout: Some(Duration::from_secs(60)), ..Config::default() };
    let orch = Arc::new(Orchestrator::new(provider(&root), Arc::new(MemoryStore::new()), clock.clone(), cfg));
    let idle = orch.create(req("a")).await.unwrap();
    let busy = orch.create(req("a")).await.unwrap();
    let used = orch.create(req("a")).await.unwrap();
    // A process runs in `busy`.
    let (_, agent) = orch.agent(None, &busy.id).await.unwrap();
    let mut bg = agent
        .start(
            &warren_proto::process::StartRequest {
                process: Some(warren_proto::process::ProcessConfig {
                    cmd: "sleep".into(),
                    args: vec!["30".into()],
                    ..Default::default()
                }),
                stdin: Some(false),
                ..Default::default()
            },
            &Default::default(),
        )
        .await
        .unwrap();
    bg.pid().await.unwrap();
    clock.advance(Duration::from_secs(59));
    assert_eq!(tick(&orch, Job::Idle).await, 0);
    // Traffic on `used` just before the limit counts as activity.
    orch.agent(None, &used.id).await.unwrap();
    clock.advance(Duration::from_secs(2));
    let paused = tick(&orch, Job::Idle).await;
    let states: Vec<_> = [&idle, &busy, &used].iter().map(|w| w.id.clone()).collect();
    let mut got = Vec::new();
    for id in &states {
        got.push(orch.get(None, id).await.unwrap().state);
    }
    assert_eq!(paused, 1, "{got:?}");
    assert_eq!(orch.get(None, &idle.id).await.unwrap().state, State::Paused);
    assert_eq!(orch.get(None, &busy.id).await.unwrap().state, State::Running);
    assert_eq!(orch.get(None, &used.id).await.unwrap().state, State::Running);
    for w in [&idle, &busy, &used] {
        orch.kill(None, &w.id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_claims_are_atomic_personalised_and_refilled() {
    use std::collections::HashSet;
    use warren_orchestrator::pool::PoolSpec;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let clock = Arc::new(warren_core::SystemClock);
    let cfg = Config {
        pools: vec![PoolSpec { name: None, template: "base".into(), size: None, target: 3, min: None, max: None }],
        ..Config::default()
    };
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let orch = Arc::new(Orchestrator::new(provider(&root), store.clone(), clock, cfg));
    let wait_ready = |n: usize| {
        let orch = orch.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                orch.refill_pools().await;
                let st = orch.pool_status().await.unwrap();
                if st[0].ready >= n {
                    return st;
                }
                assert!(std::time::Instant::now() < deadline, "pool did not fill: {st:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let st = wait_ready(3).await;
    assert_eq!(st[0].target, 3);
    // Pool members are infrastructure: no tenant sees them.
    assert!(orch.list(None).await.unwrap().is_empty());
    let old_tokens: HashSet<String> =
        store.list_workspaces().await.unwrap().into_iter().map(|r| r.access_token).collect();

    // Ten concurrent creates: three hits, seven cold; every id distinct.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let orch = orch.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = req(&format!("t{i}"));
            r.env.insert("WHO".into(), format!("t{i}"));
            orch.create(r).await.unwrap()
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let rec = t.await.unwrap();
        assert!(ids.insert(rec.id.clone()), "a workspace was handed out twice");
        assert!(!old_tokens.contains(&rec.access_token), "claimed workspaces get a fresh token");
        let tenant = rec.tenant().unwrap().clone();
        let (_, agent) = orch.agent(Some(&tenant), &rec.id).await.unwrap();
        let out = agent.sh("echo $WHO").await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tenant.as_str(), "personalised environment");
    }
    let st = orch.pool_status().await.unwrap();
    assert_eq!((st[0].hits, st[0].misses), (3, 7), "{st:?}");
    // The pool's old token no longer opens a claimed workspace.
    let events = store.events_since(0, usize::MAX).await.unwrap();
    let claimed: Vec<_> = events.iter().filter(|e| matches!(e.event.kind, EventKind::Claimed { .. })).collect();
    assert_eq!(claimed.len(), 3, "each claim is a durable event");
    let pooled = orch.get(None, &claimed[0].event.workspace).await.unwrap();
    let ep = pooled.endpoint.clone().unwrap();
    for t in &old_tokens {
        let stale = warren_proto::client::AgentClient::new(ep.clone()).with_access_token(Some(t.clone()));
        assert!(stale.list().await.is_err());
        // …and routes nowhere: pool members are nobody's, claimed ones have
        // new tokens (the token index notices the change).
        assert_eq!(orch.workspace_by_token(t).await.unwrap(), None);
    }
    assert_eq!(orch.workspace_by_token(&pooled.access_token).await.unwrap(), Some(pooled.id.clone()));
    // It refills.
    wait_ready(3).await;
    for r in orch.list(None).await.unwrap() {
        orch.kill(None, &r.id).await.unwrap();
    }
    remove_everything(&orch, store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_and_change_nothing() {
    use warren_orchestrator::Quota;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let mut tenant_quotas = std::collections::HashMap::new();
    tenant_quotas.insert("small".to_string(), Quota { max_workspaces: Some(2), ..Quota::default() });
    tenant_quotas.insert("slow".to_string(), Quota { max_creates_per_minute: Some(2), ..Quota::default() });
    tenant_quotas
        .insert("lean".to_string(), Quota { max_memory_mib: Some(600), max_millicpus: Some(5000), ..Quota::default() });
    let cfg = Config { tenant_quotas, ..Config::default() };
    let orch = Arc::new(Orchestrator::new(provider(dir.path()), store.clone(), clock.clone(), cfg));

    // Five concurrent creates against a quota of two: exactly two succeed.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let orch = orch.clone();
        tasks.push(tokio::spawn(async move { orch.create(req("small")).await }));
    }
    let mut ok = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => ok.push(r),
            Err(Error::QuotaExceeded(m)) => assert!(m.contains("quota is 2"), "{m}"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok.len(), 2);
    let events = store.events_since(0, 1000).await.unwrap().len();
    assert!(matches!(orch.create(req("small")).await, Err(Error::QuotaExceeded(_))));
    assert_eq!(store.events_since(0, 1000).await.unwrap().len(), events, "a refused create logs nothing");
    orch.kill(None, &ok[0].id).await.unwrap();
    let again = orch.create(req("small")).await.unwrap();
    // Other tenants are not affected.
    let free = orch.create(req("unlimited")).await.unwrap();

    // Rate: two a minute.
    let a = orch.create(req("slow")).await.unwrap();
    let b = orch.create(req("slow")).await.unwrap();
    assert!(matches!(orch.create(req("slow")).await, Err(Error::QuotaExceeded(m)) if m.contains("a minute")));
    clock.advance(Duration::from_secs(61));
    let c = orch.create(req("slow")).await.unwrap();

    // Resources: 512 MiB default size, 600 MiB allowed: the second one does not fit.
    let l = orch.create(req("lean")).await.unwrap();
    assert!(matches!(orch.create(req("lean")).await, Err(Error::QuotaExceeded(m)) if m.contains("MiB")));
    let mut small = req("lean");
    small.size = Some(warren_core::Size { memory_mib: 64, millicpus: 4000, ..warren_core::Size::default() });
    assert!(matches!(orch.create(small).await, Err(Error::QuotaExceeded(m)) if m.contains("millicpus")));

    for w in [&ok[1], &again, &free, &a, &b, &c, &l] {
        orch.kill(None, &w.id).await.unwrap();
    }
}

async fn fill_pool(orch: &Arc<Orchestrator>, n: usize) -> Vec<warren_orchestrator::pool::PoolStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        orch.refill_pools().await;
        let st = orch.pool_status().await.unwrap();
        if st[0].ready >= n && st[0].warming == 0 {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "pool did not fill: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_drains_members_of_an_old_template_revision() {
    use warren_orchestrator::pool::PoolSpec;
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(ProcessProvider::new(dir.path().join("ws"), warren_provider::conformance::agent_binary()));
    let cfg = Config {
        pools: vec![PoolSpec { name: None, template: "base".into(), size: None, target: 2, min: None, max: None }],
        ..Config::default()
    };
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let orch = Arc::new(Orchestrator::new(fake.clone(), store.clone(), Arc::new(warren_core::SystemClock), cfg));
    fill_pool(&orch, 2).await;
    let old: Vec<WorkspaceId> = store.list_workspaces().await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(old.len(), 2);

    fake.set_revision("2");
    let st = fill_pool(&orch, 2).await;
    assert_eq!(st[0].drained, 2, "{st:?}");
    let live: Vec<_> = store.list_workspaces().await.unwrap().into_iter().filter(|r| r.state.is_live()).collect();
    assert_eq!(live.len(), 2);
    for r in &live {
        assert!(!old.contains(&r.id), "an old member survived the template change");
        assert!(matches!(&r.owner, Owner::Pool { revision, .. } if revision == "2"), "{:?}", r.owner);
    }
    // The old members are really gone from the backend.
    for id in &old {
        assert!(matches!(fake.inspect(id).await, Err(warren_provider::ProviderError::NotFound(_))));
    }
    // A claim now hands out a member of the new revision.
    let got = orch.create(req("t")).await.unwrap();
    assert!(got.metadata.is_empty(), "the tenant's metadata is its own");
    assert_eq!(got.tenant(), Some(&t("t")));
    assert!(live.iter().any(|r| r.id == got.id));
    remove_everything(&orch, store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_pool_grows_with_demand_and_shrinks_when_it_stops() {
    use warren_orchestrator::pool::PoolSpec;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let spec = PoolSpec { name: None, template: "base".into(), size: None, target: 0, min: Some(0), max: Some(6) };
    let cfg = Config { pools: vec![spec], ..Config::default() };
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let orch = Arc::new(Orchestrator::new(provider(dir.path()), store.clone(), clock.clone(), cfg));
    let st = orch.pool_status().await.unwrap();
    assert_eq!((st[0].target, st[0].adaptive), (0, true));
    orch.refill_pools().await;
    assert_eq!(orch.pool_status().await.unwrap()[0].warming, 0, "no demand, no members");

    // Three creates in one slot: all misses, and demand is now visible.
    let mut made = Vec::new();
    for i in 0..3 {
        made.push(orch.create(req(&format!("t{i}"))).await.unwrap());
    }
    let st = orch.pool_status().await.unwrap();
    assert_eq!(st[0].misses, 3);
    assert!(st[0].claim_rate > 0.0);
    // 0.3/s x 1 s refill guess = 0.3, plus 2.33·√0.3 → 2.
    assert_eq!(st[0].target, 2, "{st:?}");
    // Refills measure the real refill time (tens of ms here), which lowers
    // λ·T: the pool settles at a smaller, still non-empty target.
    let st = fill_pool(&orch, 1).await;
    assert!(st[0].refill_ms < 1_000 && st[0].target >= 1, "{st:?}");
    let kept = st[0].ready;

    // Five minutes without claims: the target falls back to min and the
    // surplus members are given back.
    clock.advance(Duration::from_secs(301));
    let st = orch.pool_status().await.unwrap();
    assert_eq!(st[0].target, 0, "{st:?}");
    orch.refill_pools().await;
    let st = orch.pool_status().await.unwrap();
    assert_eq!(st[0].ready, 0, "{st:?}");
    assert!(st[0].shrunk >= kept as u64, "{st:?}");
    assert!(store.list_workspaces().await.unwrap().iter().all(|r| !r.is_pool_member() || !r.state.is_live()));
    for r in made {
        orch.kill(None, &r.id).await.unwrap();
    }
    remove_everything(&orch, store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_that_end_on_their_own_are_marked_failed() {
    let e = env();
    let dead = e.orch.create(req("t")).await.unwrap();
    let alive = e.orch.create(req("t")).await.unwrap();
    // The backend loses one behind warren's back (crash, OOM, engine restart).
    provider(&e.root).stop(&dead.id).await.unwrap();
    // A record newer than the backend's answer is left alone.
    assert_eq!(tick(&e.orch, Job::Watch).await, 0, "same-millisecond records are not judged");
    e.clock.advance(Duration::from_secs(1));
    assert_eq!(tick(&e.orch, Job::Watch).await, 1);
    let d = e.orch.get(None, &dead.id).await.unwrap();
    assert_eq!(d.state, State::Failed);
    assert!(d.error.as_deref().unwrap_or("").contains("exited"), "{d:?}");
    assert_eq!(e.orch.get(None, &alive.id).await.unwrap().state, State::Running);
    // Idempotent.
    assert_eq!(tick(&e.orch, Job::Watch).await, 0);
    e.orch.kill(None, &alive.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_member_not_proven_ready_is_never_handed_out() {
    use warren_orchestrator::pool::PoolSpec;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cfg = Config {
        pools: vec![PoolSpec { name: None, template: "base".into(), size: None, target: 0, min: None, max: None }],
        ..Config::default()
    };
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let orch = Arc::new(Orchestrator::new(provider(dir.path()), store.clone(), clock, cfg));
    // A member whose agent started but never passed the readiness command
    // (a running workspace turned into one in the store).
    let unready = orch.create(req("x")).await.unwrap();
    let pool = Owner::Pool { pool: "base".into(), revision: String::new(), ready: false };
    let owner = pool.clone();
    store
        .update_workspace(
            &unready.id,
            Box::new(move |r| {
                r.owner = owner;
                Ok(None)
            }),
        )
        .await
        .unwrap();
    let got = orch.create(req("t")).await.unwrap();
    assert_ne!(got.id, unready.id, "an unready member was handed out");
    // Two misses: the create that made "x", and this one.
    assert_eq!(orch.pool_status().await.unwrap()[0].misses, 2);
    assert_eq!(store.get_workspace(&unready.id).await.unwrap().unwrap().owner, pool);
    orch.kill(None, &got.id).await.unwrap();
    orch.kill_any(&unready.id).await.unwrap();
}

/// Refill workers keep building while the pool is short (not a few per
/// refill pass), one tenant's burst of claims is not serialised behind its
/// own personalisations, and claims wake the workers: after one pass the
/// pool fills, is emptied by a burst, and fills again with no further pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refill_workers_fill_past_the_pass_and_claims_wake_them() {
    use std::collections::HashSet;
    use warren_orchestrator::pool::PoolSpec;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        pools: vec![PoolSpec { name: None, template: "base".into(), size: None, target: 10, min: None, max: None }],
        ..Config::default()
    };
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let orch =
        Arc::new(Orchestrator::new(provider(dir.path()), store.clone(), Arc::new(warren_core::SystemClock), cfg));
    let wait_ready = |n: usize| {
        let orch = orch.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let st = orch.pool_status().await.unwrap();
                if st[0].ready >= n {
                    return st;
                }
                assert!(std::time::Instant::now() < deadline, "pool did not fill without a refill pass: {st:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // One pass; more than REFILL_CONCURRENCY (4) members get built.
    orch.refill_pools().await;
    let st = wait_ready(10).await;
    assert_eq!((st[0].ready, st[0].warming), (10, 0), "the workers stop at the target: {st:?}");
    // One tenant, ten concurrent creates: all hits, all distinct.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let orch = orch.clone();
        tasks.push(tokio::spawn(async move { orch.create(req("solo")).await.unwrap() }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap().id), "a workspace was handed out twice");
    }
    let st = orch.pool_status().await.unwrap();
    assert_eq!((st[0].hits, st[0].misses), (10, 0), "{st:?}");
    // No pass since: the claims woke the workers, which rebuild the pool.
    let st = wait_ready(10).await;
    assert_eq!(st[0].ready + st[0].warming, 10, "no overshoot: {st:?}");
    for id in ids {
        orch.kill(None, &id).await.unwrap();
    }
    remove_everything(&orch, store.as_ref()).await;
}

/// A pool member is built where a create for nobody goes; a tenant whose
/// creates are routed to another backend never gets one (it would run on
/// the wrong backend, billed at the wrong rate), everyone else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_respect_routes() {
    use warren_orchestrator::pool::PoolSpec;
    use warren_provider::routing::{Route, RoutingProvider};
    let dir = tempfile::tempdir().unwrap();
    let own = provider(&dir.path().join("own"));
    let other = provider(&dir.path().join("other"));
    let routes = vec![Route { backend: "other".into(), templates: vec![], tenants: vec!["vip".into()] }];
    let router = RoutingProvider::new(vec![("own".into(), own), ("other".into(), other)], routes, "own", None).unwrap();
    let cfg = Config {
        pools: vec![PoolSpec { name: None, template: "base".into(), size: None, target: 1, min: None, max: None }],
        ..Config::default()
    };
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let orch = Arc::new(Orchestrator::new(Arc::new(router), store.clone(), Arc::new(ManualClock::new(1)), cfg));
    let st = fill_pool(&orch, 1).await;
    assert_eq!(st[0].name, "base");
    let member = store.list_workspaces().await.unwrap().remove(0);
    assert_eq!((member.provider.as_str(), member.tenant()), ("own", None));

    let vip = orch.create(req("vip")).await.unwrap();
    assert_ne!(vip.id, member.id, "a tenant routed elsewhere was handed a member of the default backend");
    assert_eq!(vip.provider, "other");
    let anyone = orch.create(req("anyone")).await.unwrap();
    assert_eq!(anyone.id, member.id, "a tenant on the default route gets the member");
    assert_eq!(anyone.tenant(), Some(&t("anyone")));
    let st = orch.pool_status().await.unwrap();
    assert_eq!((st[0].hits, st[0].misses), (1, 0), "a routed-away tenant does not count as a miss: {st:?}");
    remove_everything(&orch, store.as_ref()).await;
}

/// Records written before typed ownership (pool members under the
/// pseudo-tenant `__pool__`, readiness in the metadata) are read, rewritten
/// in the current layout at start, and the old pool member, whose pool is
/// unknown, is drained rather than handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_the_old_layout_are_migrated_and_old_members_drained() {
    use warren_orchestrator::pool::PoolSpec;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let fake = provider(dir.path());
    // A running workspace, stored as version 1 wrote it.
    let made = fake.create(&warren_provider::conformance::spec("base")).await.unwrap();
    let legacy = |id: &WorkspaceId, tenant: &str| {
        serde_json::from_value::<warren_store::WorkspaceRecord>(serde_json::json!({
            "id": id, "tenant": tenant, "template": "base",
            "size": {"millicpus": 1000, "memoryMib": 256, "diskMib": 256, "pids": 256},
            "state": "running", "provider": "process", "endpoint": made.endpoint.to_string(),
            "accessToken": "x", "initToken": "y", "createdAtMs": 1, "updatedAtMs": 1,
            "expiresAtMs": u64::MAX / 2, "lastActivityMs": 1,
            "metadata": {"ready": "1", "revision": ""}
        }))
        .unwrap()
    };
    let member = legacy(&made.id, "__pool__");
    let tenants = legacy(&WorkspaceId::generate(), "acme");
    assert_eq!((member.schema, tenants.schema), (1, 1));
    {
        let store = RedbStore::open(&path).unwrap();
        for r in [&member, &tenants] {
            let ev = warren_store::NewEvent {
                at_ms: 1,
                workspace: r.id.clone(),
                tenant: r.tenant().cloned(),
                size: r.size,
                kind: EventKind::Created { template: "base".into() },
                backend: "process".into(),
            };
            store.insert_workspace(r, ev).await.unwrap();
        }
    }
    let store: Arc<dyn StateStore> = Arc::new(RedbStore::open(&path).unwrap());
    let cfg = Config {
        pools: vec![PoolSpec { name: None, template: "base".into(), size: None, target: 0, min: None, max: None }],
        ..Config::default()
    };
    let orch = Arc::new(Orchestrator::new(fake.clone(), store.clone(), Arc::new(ManualClock::new(1_000)), cfg));
    assert_eq!(orch.migrate_records().await.unwrap(), 2);
    assert_eq!(orch.migrate_records().await.unwrap(), 0, "idempotent");
    let got = store.get_workspace(&tenants.id).await.unwrap().unwrap();
    assert_eq!((got.schema, got.tenant()), (warren_store::RECORD_SCHEMA, Some(&t("acme"))));
    assert_eq!(got.metadata.len(), 2, "a tenant's metadata is left as it was");
    let m = store.get_workspace(&member.id).await.unwrap().unwrap();
    assert_eq!(m.owner, Owner::Pool { pool: String::new(), revision: String::new(), ready: true });
    assert!(m.metadata.is_empty());
    // Its pool is unknown: no claim takes it, and the refill pass drains it.
    let fresh = orch.create(req("acme")).await.unwrap();
    assert_ne!(fresh.id, member.id);
    orch.refill_pools().await;
    assert_eq!(store.get_workspace(&member.id).await.unwrap(), None);
    assert!(matches!(fake.inspect(&member.id).await, Err(warren_provider::ProviderError::NotFound(_))));
    orch.kill(None, &fresh.id).await.unwrap();
}

/// The scheduler spaces jobs in real (monotonic) time and each tick tells
/// policy time by the orchestrator's clock: with a manual clock nothing
/// expires until the clock moves; then the reap job ends the expired
/// workspace within its interval. Shutdown returns once the tick in
/// progress is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_runs_jobs_by_the_clock_and_shuts_down() {
    let e = env();
    let mut r = req("alice");
    r.timeout = Some(Duration::from_secs(30));
    let ws = e.orch.create(r).await.unwrap();
    let jobs = e.orch.spawn_jobs();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.orch.get(None, &ws.id).await.unwrap().state, State::Running, "real time passing expires nothing");
    e.clock.advance(Duration::from_secs(31));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while e.orch.get(None, &ws.id).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the reap job never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = std::time::Instant::now();
    jobs.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(5));
    // Every job also runs by hand, one tick at a time.
    for job in Job::ALL {
        e.orch.run_job(job, e.orch.now_ms()).await.unwrap();
    }
}

/// A pool whose size changes (same name, new configuration, a restart)
/// never hands out a member built at the old size: the old members are
/// drained and the claim takes a new one or a fresh workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_an_old_pool_shape_are_drained_not_handed_out() {
    use warren_orchestrator::pool::PoolSpec;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let small = Size { millicpus: 500, memory_mib: 256, disk_mib: 256, pids: 128 };
    let spec =
        |size| PoolSpec { name: None, template: "base".into(), size: Some(size), target: 1, min: None, max: None };
    let cfg = |size| Config { pools: vec![spec(size)], ..Config::default() };
    let before =
        Arc::new(Orchestrator::new(provider(dir.path()), store.clone(), Arc::new(ManualClock::new(1)), cfg(small)));
    fill_pool(&before, 1).await;
    before.stop_pools().await;
    let old = store.list_workspaces().await.unwrap().remove(0);
    assert_eq!(old.size, small);

    let big = Size { millicpus: 1000, ..small };
    let after =
        Arc::new(Orchestrator::new(provider(dir.path()), store.clone(), Arc::new(ManualClock::new(1)), cfg(big)));
    let mut r = req("t");
    r.size = Some(big);
    let got = after.create(r).await.unwrap();
    assert_ne!(got.id, old.id, "a member of the old size was handed out");
    assert_eq!(got.size, big);
    after.run_job(Job::Refill, 1).await.unwrap();
    assert_eq!(store.get_workspace(&old.id).await.unwrap(), None, "the old member is drained");
    remove_everything(&after, store.as_ref()).await;
}
