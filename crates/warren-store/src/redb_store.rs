//! The embedded StateStore on redb: one file, ACID transactions, crash-safe.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use warren_core::{TenantId, WorkspaceId};

use crate::{ApiKeyRecord, Event, NewEvent, Result, StateStore, StoreError, TenantUsage, Update, WorkspaceRecord};

const WORKSPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("workspaces");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");

pub struct RedbStore {
    db: Arc<Database>,
    cache: Arc<Cache>,
}

/// Decoded records, kept in step with every committed write (redb locks the
/// file for this process alone, so nothing else changes it). Each write
/// takes a version inside its write transaction, so versions follow commit
/// order; the cache applies a change only over an older version, and
/// deletions leave a tombstone so a late, older write cannot resurrect.
#[derive(Default)]
struct Cache {
    next: std::sync::atomic::AtomicU64,
    map: std::sync::RwLock<Records>,
}

/// The decoded records and the per-tenant usage derived from them, changed
/// together under one lock.
#[derive(Default)]
struct Records {
    by_id: std::collections::BTreeMap<WorkspaceId, (u64, Option<WorkspaceRecord>)>,
    usage: crate::UsageIndex,
}

impl Cache {
    /// A version for a write; call while holding the write transaction.
    fn version(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    fn apply(&self, id: &WorkspaceId, version: u64, rec: Option<WorkspaceRecord>) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Records { by_id, usage } = &mut *m;
        match by_id.get(id) {
            Some((v, _)) if *v > version => {}
            _ => {
                usage.replace(None, rec.as_ref());
                if let Some((_, Some(old))) = by_id.insert(id.clone(), (version, rec)) {
                    usage.replace(Some(&old), None);
                }
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl RedbStore {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(unavailable)?;
        {
            tx.open_table(WORKSPACES).map_err(unavailable)?;
            tx.open_table(EVENTS).map_err(unavailable)?;
            tx.open_table(KEYS).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)?;
        let mut cache = std::collections::BTreeMap::new();
        {
            let rtx = db.begin_read().map_err(unavailable)?;
            let t = rtx.open_table(WORKSPACES).map_err(unavailable)?;
            for row in t.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                let rec: WorkspaceRecord = decode(v.value())?;
                cache.insert(rec.id.clone(), rec);
            }
        }
        let mut records = Records::default();
        for (id, rec) in cache {
            records.usage.replace(None, Some(&rec));
            records.by_id.insert(id, (0, Some(rec)));
        }
        let cache = Cache { next: Default::default(), map: std::sync::RwLock::new(records) };
        Ok(RedbStore { db: Arc::new(db), cache: Arc::new(cache) })
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Database) -> Result<T> + Send + 'static) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|e| unavailable(format!("store task: {e}")))?
    }
}

fn append(events: &mut redb::Table<u64, &[u8]>, e: NewEvent) -> Result<Event> {
    let next = events.last().map_err(unavailable)?.map(|(k, _)| k.value()).unwrap_or(0) + 1;
    let ev = Event { seq: next, event: e };
    events.insert(next, encode(&ev)?.as_slice()).map_err(unavailable)?;
    Ok(ev)
}

#[async_trait]
impl StateStore for RedbStore {
    async fn insert_workspace(&self, rec: &WorkspaceRecord, event: NewEvent) -> Result<Event> {
        let rec = rec.clone();
        let cache = self.cache.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let version = cache.version();
            let ev = {
                let mut ws = tx.open_table(WORKSPACES).map_err(unavailable)?;
                if ws.get(rec.id.as_str()).map_err(unavailable)?.is_some() {
                    return Err(StoreError::AlreadyExists(format!("workspace {}", rec.id)));
                }
                ws.insert(rec.id.as_str(), encode(&rec)?.as_slice()).map_err(unavailable)?;
                let mut events = tx.open_table(EVENTS).map_err(unavailable)?;
                append(&mut events, event)?
            };
            tx.commit().map_err(unavailable)?;
            cache.apply(&rec.id, version, Some(rec.clone()));
            Ok(ev)
        })
        .await
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>> {
        let m = self.cache.map.read().unwrap_or_else(|p| p.into_inner());
        Ok(m.by_id.get(id).and_then(|(_, r)| r.clone()))
    }

    async fn list_workspaces(&self) -> Result<Vec<WorkspaceRecord>> {
        let m = self.cache.map.read().unwrap_or_else(|p| p.into_inner());
        Ok(m.by_id.values().filter_map(|(_, r)| r.clone()).collect())
    }

    async fn update_workspace(&self, id: &WorkspaceId, f: Update) -> Result<(WorkspaceRecord, Option<Event>)> {
        let id = id.clone();
        let cache = self.cache.clone();
        // redb has one writer at a time: the read, `f` and the write below
        // are serialised against every other update.
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let version = cache.version();
            let out = {
                let mut ws = tx.open_table(WORKSPACES).map_err(unavailable)?;
                let cur = ws.get(id.as_str()).map_err(unavailable)?.map(|g| g.value().to_vec());
                let mut rec: WorkspaceRecord =
                    decode(&cur.ok_or_else(|| StoreError::NotFound(format!("workspace {id}")))?)?;
                let ev = f(&mut rec)?;
                if rec.id != id {
                    return Err(StoreError::Rejected("an update may not change the id".into()));
                }
                ws.insert(id.as_str(), encode(&rec)?.as_slice()).map_err(unavailable)?;
                let ev = match ev {
                    Some(e) => {
                        let mut events = tx.open_table(EVENTS).map_err(unavailable)?;
                        Some(append(&mut events, e)?)
                    }
                    None => None,
                };
                (rec, ev)
            };
            tx.commit().map_err(unavailable)?;
            cache.apply(&id, version, Some(out.0.clone()));
            Ok(out)
        })
        .await
    }

    async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()> {
        let id = id.clone();
        let cache = self.cache.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            let version = cache.version();
            tx.open_table(WORKSPACES).map_err(unavailable)?.remove(id.as_str()).map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            cache.apply(&id, version, None);
            Ok(())
        })
        .await
    }

    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage> {
        Ok(self.cache.map.read().unwrap_or_else(|p| p.into_inner()).usage.get(tenant))
    }

    async fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(EVENTS).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.range(after.saturating_add(1)..).map_err(unavailable)?.take(limit) {
                let (_, v) = row.map_err(unavailable)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        let key = key.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            tx.open_table(KEYS)
                .map_err(unavailable)?
                .insert(key.hash.as_str(), encode(&key)?.as_slice())
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn get_api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>> {
        let hash = hash.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(KEYS).map_err(unavailable)?;
            let v = t.get(hash.as_str()).map_err(unavailable)?;
            v.map(|g| decode(g.value())).transpose()
        })
        .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(KEYS).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }
}
