//! The agent's shared state: runtime settings (changeable through `/init`),
//! the process table and the watchers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use warren_proto::connect::{Code, ConnectError};

use crate::process::ProcessTable;
use crate::users::{self, User};
use crate::watch::Watchers;

/// Settings the orchestrator may change after start (warm pools personalise
/// a workspace on claim).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `None` or empty: no access-token check.
    pub access_token: Option<String>,
    pub default_user: String,
    pub default_workdir: Option<PathBuf>,
    pub env_vars: BTreeMap<String, String>,
}

/// Static configuration from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub init_token: Option<String>,
    pub max_message_bytes: usize,
}

pub struct Agent {
    pub config: Config,
    settings: RwLock<Settings>,
    pub procs: Arc<ProcessTable>,
    pub watchers: Watchers,
}

impl Agent {
    pub fn new(config: Config, settings: Settings) -> Self {
        Agent { config, settings: RwLock::new(settings), procs: Arc::default(), watchers: Watchers::default() }
    }

    pub fn settings(&self) -> Settings {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        match self.settings.write() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// The access token, when checks are on.
    pub fn access_token(&self) -> Option<String> {
        self.settings().access_token.filter(|t| !t.is_empty())
    }

    /// Resolves the acting user: the named one, or the default.
    pub fn resolve_user(&self, name: Option<&str>) -> Result<User, ConnectError> {
        let name = match name {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => self.settings().default_user,
        };
        users::by_name(&name)
            .ok_or_else(|| ConnectError::new(Code::Unauthenticated, format!("invalid username: '{name}'")))
    }
}
