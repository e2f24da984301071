use serde::{Deserialize, Serialize};

/// Where a workspace is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Creating,
    Running,
    Paused,
    Stopping,
    Stopped,
    Failed,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a workspace cannot go from {from:?} to {to:?}")]
pub struct TransitionError {
    pub from: State,
    pub to: State,
}

impl State {
    /// The lifecycle's edges. `Failed` is reachable from every live state;
    /// `Deleted` is terminal.
    pub fn can_become(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Creating, Running)
                | (Creating, Failed)
                | (Creating, Stopping)
                | (Running, Paused)
                | (Running, Stopping)
                | (Running, Failed)
                | (Paused, Running)
                | (Paused, Stopping)
                | (Paused, Failed)
                | (Stopping, Stopped)
                | (Stopping, Failed)
                | (Stopped, Deleted)
                | (Failed, Stopping)
                | (Failed, Deleted)
        )
    }

    pub fn transition(self, to: State) -> Result<State, TransitionError> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// Still holding resources on a backend.
    pub fn is_live(self) -> bool {
        matches!(self, State::Creating | State::Running | State::Paused | State::Stopping)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Deleted => "deleted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    const ALL: [State; 7] = [Creating, Running, Paused, Stopping, Stopped, Failed, Deleted];

    #[test]
    fn lifecycle_edges() {
        assert!(Creating.can_become(Running));
        assert!(Running.can_become(Paused));
        assert!(Paused.can_become(Running));
        assert_eq!(Running.transition(Creating), Err(TransitionError { from: Running, to: Creating }));
        for s in ALL {
            assert!(!Deleted.can_become(s), "deleted is terminal");
            assert!(!s.can_become(s), "no self loops: {s:?}");
        }
        // Every live state can fail, and everything can eventually be deleted.
        for s in [Creating, Running, Paused, Stopping] {
            assert!(s.can_become(Failed));
        }
    }
}
