//! Refill: keeps the warm pools at their targets (drains members of an old
//! template revision or of a pool no longer configured, and an adaptive
//! pool's surplus; starts refill workers). The pool logic is in
//! [`crate::pool`].

use std::sync::Arc;

use crate::{Orchestrator, Result};

pub(crate) async fn tick(o: &Arc<Orchestrator>, _now: u64) -> Result<usize> {
    Ok(o.refill_pools().await)
}
