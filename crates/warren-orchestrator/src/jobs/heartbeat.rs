//! Heartbeat: tells the other replicas this one is alive and where it
//! listens.

use warren_store::NodeRecord;

use crate::{Orchestrator, Result};

/// Tells the other replicas this one is alive and where it listens.
pub(crate) async fn tick(o: &Orchestrator, now: u64) -> Result<usize> {
    let node = NodeRecord {
        id: o.cfg.node.clone(),
        url: o.cfg.node_url.clone(),
        expires_at_ms: now + o.cfg.replica_timeout.as_millis() as u64,
    };
    o.store.put_node(&node).await?;
    // Routine: nothing to report.
    Ok(0)
}
