//! An in-memory StateStore (for tests of the layers above).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use warren_core::{TenantId, WorkspaceId};

use crate::{ApiKeyRecord, Event, NewEvent, Result, StateStore, StoreError, TenantUsage, Update, WorkspaceRecord};

#[derive(Default)]
struct Inner {
    workspaces: BTreeMap<WorkspaceId, WorkspaceRecord>,
    events: Vec<Event>,
    keys: BTreeMap<String, ApiKeyRecord>,
    leases: BTreeMap<String, (String, std::time::Instant)>,
    nodes: BTreeMap<String, crate::NodeRecord>,
    usage: crate::UsageIndex,
}

#[derive(Default)]
pub struct MemoryStore(Mutex<Inner>);

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn push(events: &mut Vec<Event>, e: NewEvent) -> Event {
    let ev = Event { seq: events.len() as u64 + 1, event: e };
    events.push(ev.clone());
    ev
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn insert_workspace(&self, rec: &WorkspaceRecord, event: NewEvent) -> Result<Event> {
        let mut g = self.lock();
        if g.workspaces.contains_key(&rec.id) {
            return Err(StoreError::AlreadyExists(format!("workspace {}", rec.id)));
        }
        g.workspaces.insert(rec.id.clone(), rec.clone());
        g.usage.replace(None, Some(rec));
        Ok(push(&mut g.events, event))
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>> {
        Ok(self.lock().workspaces.get(id).cloned())
    }

    async fn list_workspaces(&self) -> Result<Vec<WorkspaceRecord>> {
        Ok(self.lock().workspaces.values().cloned().collect())
    }

    async fn update_workspace(&self, id: &WorkspaceId, f: Update) -> Result<(WorkspaceRecord, Option<Event>)> {
        let mut g = self.lock();
        let mut rec = g.workspaces.get(id).cloned().ok_or_else(|| StoreError::NotFound(format!("workspace {id}")))?;
        let ev = f(&mut rec)?;
        if rec.id != *id {
            return Err(StoreError::Rejected("an update may not change the id".into()));
        }
        let old = g.workspaces.insert(id.clone(), rec.clone());
        g.usage.replace(old.as_ref(), Some(&rec));
        let ev = ev.map(|e| push(&mut g.events, e));
        Ok((rec, ev))
    }

    async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()> {
        let mut g = self.lock();
        let old = g.workspaces.remove(id);
        g.usage.replace(old.as_ref(), None);
        Ok(())
    }

    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage> {
        Ok(self.lock().usage.get(tenant))
    }

    async fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        Ok(self.lock().events.iter().filter(|e| e.seq > after).take(limit).cloned().collect())
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.lock().keys.insert(key.hash.clone(), key.clone());
        Ok(())
    }

    async fn get_api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(self.lock().keys.get(hash).cloned())
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        Ok(self.lock().keys.values().cloned().collect())
    }

    async fn lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let mut g = self.lock();
        let now = std::time::Instant::now();
        match g.leases.get(name) {
            Some((h, until)) if h != holder && *until > now => Ok(false),
            _ => {
                g.leases.insert(name.to_string(), (holder.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let mut g = self.lock();
        if g.leases.get(name).is_some_and(|(h, _)| h == holder) {
            g.leases.remove(name);
        }
        Ok(())
    }

    async fn put_node(&self, node: &crate::NodeRecord) -> Result<()> {
        self.lock().nodes.insert(node.id.clone(), node.clone());
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<crate::NodeRecord>> {
        Ok(self.lock().nodes.values().cloned().collect())
    }
}
