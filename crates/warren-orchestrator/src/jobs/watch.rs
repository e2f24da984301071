//! Watch: compares the store with what the backend runs and fails
//! workspaces that ended on their own.

use std::collections::HashMap;

use warren_core::{State, WorkspaceId};
use warren_provider::RunState;

use crate::{Error, Orchestrator, Result};

/// Finds live workspaces whose backend says they ended on their own
/// (crash, OOM kill, engine restart, a cloud stopping a task) and marks
/// them failed with the reason, so clients get an honest state and
/// metering stops. Returns how many were marked.
pub(crate) async fn tick(o: &Orchestrator, now: u64) -> Result<usize> {
    let started = now;
    let live: HashMap<WorkspaceId, (RunState, Option<String>)> = o
        .provider
        .list()
        .await?
        .into_iter()
        .map(|s| (s.id, (s.state, s.labels.get(warren_provider::ENDED_LABEL).cloned())))
        .collect();
    let mut marked = 0;
    for rec in o.my_workspaces().await? {
        // Only records older than the backend's answer: a workspace
        // created meanwhile is not missing, just new.
        if rec.provider != o.provider.name()
            || !matches!(rec.state, State::Running | State::Paused)
            || rec.updated_at_ms >= started
        {
            continue;
        }
        let msg = match live.get(&rec.id) {
            Some((RunState::Exited, Some(why))) => format!("the backend ended the workspace: {why}"),
            Some((RunState::Exited, None)) => {
                "the workspace's processes ended (the backend reports it exited)".to_string()
            }
            None => "the workspace vanished from the backend".to_string(),
            Some(_) => continue,
        };
        let _ = o.provider.destroy(&rec.id).await;
        let result = o.transition(&rec.id, State::Failed, move |r| r.error = Some(msg)).await;
        match result {
            Ok(_) => {
                o.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&rec.id);
                marked += 1;
            }
            // Killed or changed concurrently: theirs wins.
            Err(Error::Conflict(_)) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(marked)
}
