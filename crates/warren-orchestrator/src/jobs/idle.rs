//! Idle: pauses (or kills, where the backend cannot pause) running
//! workspaces with no activity and no process for `idle_timeout`.

use warren_core::State;
use warren_proto::client::AgentClient;

use crate::{Orchestrator, Result};

/// Pauses (or kills) running workspaces idle for longer than the idle
/// timeout. A workspace with any process running is never idle.
pub(crate) async fn tick(o: &Orchestrator, now: u64) -> Result<usize> {
    let Some(limit) = o.cfg.idle_timeout else { return Ok(0) };
    let mut n = 0;
    for rec in o.my_workspaces().await? {
        if rec.state != State::Running || rec.is_pool_member() || o.last_activity(&rec) + limit.as_millis() as u64 > now
        {
            continue;
        }
        let Some(ep) = rec.endpoint.clone() else { continue };
        let agent = AgentClient::new(ep).with_access_token(Some(rec.access_token.clone()));
        match agent.list().await {
            Ok(procs) if procs.is_empty() => {}
            Ok(_) => {
                // Busy: running processes are activity.
                o.touch(&rec.id);
                continue;
            }
            Err(_) => continue,
        }
        let done = if o.provider.capabilities().pause {
            o.pause(None, &rec.id).await.map(|_| ())
        } else {
            o.kill(None, &rec.id).await
        };
        match done {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(workspace = %rec.id, error = %e, "idle workspace not paused"),
        }
    }
    Ok(n)
}
