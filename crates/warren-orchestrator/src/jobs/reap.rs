//! Reap: ends workspaces whose timeout passed, finishes kills that died
//! half-way, and purges failed records after their retention.

use warren_core::State;

use crate::{Error, Orchestrator, Result};

/// Ends every workspace whose timeout has passed. Returns how many.
pub(crate) async fn tick(o: &Orchestrator, now: u64) -> Result<usize> {
    let mut n = 0;
    for rec in o.my_workspaces().await? {
        let pooled = rec.is_pool_member();
        let expired = !pooled && matches!(rec.state, State::Running | State::Paused) && rec.expires_at_ms <= now;
        // A kill that died half-way is finished; failures stay visible for a while.
        let stuck = (rec.state == State::Stopping
            && rec.updated_at_ms + o.cfg.stuck_stopping.as_millis() as u64 <= now)
            || (rec.state == State::Failed && rec.updated_at_ms + o.cfg.failed_retention.as_millis() as u64 <= now);
        if expired || stuck {
            match o.kill_any(&rec.id).await {
                Ok(()) => n += 1,
                Err(Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(workspace = %rec.id, error = %e, "reaping failed"),
            }
        }
    }
    Ok(n)
}
