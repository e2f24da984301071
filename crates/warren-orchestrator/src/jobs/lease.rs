//! Shared-jobs lease: the replica holding it also looks after workspaces
//! no replica owns (reachable from any host).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::{Orchestrator, Result};

/// Takes or renews the lease under which this replica runs the reaper,
/// idle check, watch and pools for workspaces no replica owns. Reports 1
/// while it holds it (always, for a single server). A store error drops
/// the claim: two replicas must never both believe they hold it.
pub(crate) async fn tick(o: &Orchestrator, _now: u64) -> Result<usize> {
    if o.cfg.node.is_empty() {
        return Ok(1);
    }
    let ttl = o.cfg.replica_timeout.clamp(Duration::from_secs(2), Duration::from_secs(10));
    let held = o.store.lease("shared-jobs", &o.cfg.node, ttl).await;
    let held = held.inspect_err(|_| o.shared_jobs.store(false, Ordering::Relaxed))?;
    o.shared_jobs.store(held, Ordering::Relaxed);
    Ok(usize::from(held))
}
