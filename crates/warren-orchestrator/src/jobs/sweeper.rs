//! Sweeper: under the cluster-wide `sweeper` lease, fails the workspaces
//! of replicas whose heartbeat stopped.

use std::time::Duration;

use warren_core::State;

use crate::{Orchestrator, Result};

/// Under the cluster-wide sweeper lease (one replica at a time; another
/// takes over within seconds when it dies): marks the live workspaces of
/// replicas whose heartbeat stopped as failed, so tenants see the truth
/// and metering stops. Returns how many were marked.
pub(crate) async fn tick(o: &Orchestrator, now: u64) -> Result<usize> {
    let lease = o.cfg.replica_timeout.clamp(Duration::from_secs(2), Duration::from_secs(10));
    if !o.store.lease("sweeper", &o.cfg.node, lease).await? {
        return Ok(0);
    }
    let dead: std::collections::HashSet<String> = o
        .store
        .list_nodes()
        .await?
        .into_iter()
        .filter(|n| n.id != o.cfg.node && n.expires_at_ms < now)
        .map(|n| n.id)
        .collect();
    if dead.is_empty() {
        return Ok(0);
    }
    let mut marked = 0;
    for rec in o.store.list_workspaces().await? {
        if !dead.contains(&rec.node) || !matches!(rec.state, State::Creating | State::Running | State::Paused) {
            continue;
        }
        if rec.state == State::Creating {
            // Died mid-create: the tenant never got this workspace, so it
            // goes away (the log keeps Created → Failed; no usage). What
            // the backend may have started is removed by the replica's
            // reconcile when it returns.
            let msg = format!("its server replica {} died during the create", rec.node);
            if o.transition(&rec.id, State::Failed, move |r| r.error = Some(msg)).await.is_ok()
                && o.transition(&rec.id, State::Deleted, |_| {}).await.is_ok()
            {
                o.store.delete_workspace(&rec.id).await?;
                marked += 1;
            }
            continue;
        }
        let msg = format!("its server replica {} stopped answering", rec.node);
        if o.transition(&rec.id, State::Failed, move |r| r.error = Some(msg)).await.is_ok() {
            marked += 1;
        }
    }
    Ok(marked)
}
