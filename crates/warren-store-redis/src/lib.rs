//! [`StateStore`] on Redis, shared by every warren replica.
//!
//! Keys (all under one hash tag, `{warren}:` by default, so the Lua scripts
//! stay single-slot on a cluster too):
//!
//! - `ws:<id>`: the record as JSON; `ws-index`: the set of ids;
//! - `lock:<id>`: a short lease serialising read-modify-write updates of one
//!   record across replicas (the update closure runs exactly once, under it);
//! - `seq`: the event counter; `events`: a sorted set scored by sequence,
//!   each member the zero-padded sequence followed by the event's JSON;
//! - `keys`: a hash of API-key records by key hash;
//! - `usage`: per-tenant sums of live workspaces (`<tenant>:n`, `:mcpu`,
//!   `:mem`), changed by the same scripts that write records, from the
//!   records' own JSON; `usage-built` marks that it was built once from every
//!   record (by the first replica that needs it).
//!
//! Every write of a record and its event happens in one Lua script, so the
//! log never misses or duplicates a change and sequence numbers have no gaps.
//! Durability is Redis's: run it with `appendonly yes` (AOF, `appendfsync
//! everysec` or `always`); see docs/redis.md.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script};
use tokio::sync::OnceCell;
use warren_core::{TenantId, WorkspaceId};
use warren_store::{
    ApiKeyRecord, Event, NewEvent, NodeRecord, Result, StateStore, StoreError, TenantUsage, Update, WorkspaceRecord,
};

/// How long one update may hold a record's lease.
const LEASE: Duration = Duration::from_secs(5);
/// Limit on any one Redis round trip.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds (sign 1) or takes away (-1) what a record's JSON holds from the
/// per-tenant sums: only a tenant's live workspaces count.
const CONTRIB: &str = r"
local function contrib(json, sign, usage)
  if not json then return end
  local r = cjson.decode(json)
  local o = r['owner']
  if type(o) ~= 'table' or o['kind'] ~= 'tenant' then return end
  local s = r['state']
  if s ~= 'creating' and s ~= 'running' and s ~= 'paused' and s ~= 'stopping' then return end
  local t = o['tenant']
  redis.call('HINCRBY', usage, t .. ':n', sign)
  redis.call('HINCRBY', usage, t .. ':mcpu', sign * r['size']['millicpus'])
  redis.call('HINCRBY', usage, t .. ':mem', sign * r['size']['memoryMib'])
end
";

const INSERT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local seq = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[1], ARGV[2])
contrib(ARGV[2], 1, KEYS[5])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[4], seq, string.format('%020d', seq) .. ARGV[3])
return seq
";

/// Writes an updated record (and its event) if this caller still holds the
/// record's lease and the record still exists.
const UPDATE: &str = r"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
local old = redis.call('GET', KEYS[1])
if not old then return -2 end
contrib(old, -1, KEYS[5])
contrib(ARGV[2], 1, KEYS[5])
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] == '' then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, string.format('%020d', seq) .. ARGV[3])
return seq
";

/// Forgets a record and what it held.
const DELETE: &str = r"
contrib(redis.call('GET', KEYS[1]), -1, KEYS[3])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 0
";

/// Builds the per-tenant sums from every record, once per database.
const BUILD_USAGE: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  contrib(redis.call('GET', ARGV[1] .. id), 1, KEYS[2])
end
redis.call('SET', KEYS[3], '1')
return 1
";

/// Takes a named lease if free or ours (renewing it); 1 when held after.
const LEASE_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Releases a lease only if it is still ours.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    insert: Script,
    update: Script,
    delete: Script,
    build_usage: Script,
    unlock: Script,
    lease: Script,
    /// Whether this process saw `usage-built` set (the sums exist).
    usage_ready: std::sync::atomic::AtomicBool,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`); connects on first use.
    /// `prefix` namespaces every key (default `{warren}:`).
    pub fn open(url: &str, prefix: Option<&str>) -> Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("redis url {url:?}: {e}")))?;
        Ok(RedisStore {
            client,
            conn: OnceCell::new(),
            prefix: prefix.unwrap_or("{warren}:").to_string(),
            insert: Script::new(&format!("{CONTRIB}{INSERT}")),
            update: Script::new(&format!("{CONTRIB}{UPDATE}")),
            delete: Script::new(&format!("{CONTRIB}{DELETE}")),
            build_usage: Script::new(&format!("{CONTRIB}{BUILD_USAGE}")),
            unlock: Script::new(UNLOCK),
            lease: Script::new(LEASE_SCRIPT),
            usage_ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(2);
                tokio::time::timeout(CALL_TIMEOUT, ConnectionManager::new_with_config(self.client.clone(), cfg))
                    .await
                    .map_err(|_| unavailable("connect timed out"))?
                    .map_err(unavailable)
            })
            .await?;
        Ok(c.clone())
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn ws_key(&self, id: &WorkspaceId) -> String {
        self.key(&format!("ws:{id}"))
    }

    async fn timed<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T> {
        tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| unavailable("no answer in time"))?
            .map_err(unavailable)
    }

    fn parse_event(member: &str) -> Result<Event> {
        if member.len() < 20 || !member.is_char_boundary(20) {
            return Err(corrupt("event", "too short"));
        }
        let (seq, json) = member.split_at(20);
        let seq: u64 = seq.parse().map_err(|e| corrupt("event sequence", e))?;
        let event: NewEvent = serde_json::from_str(json).map_err(|e| corrupt("event", e))?;
        Ok(Event { seq, event })
    }

    /// Takes the lease of one record, waiting for another holder.
    async fn lock(&self, c: &mut ConnectionManager, lock_key: &str, token: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + LEASE * 2;
        let mut pause = Duration::from_micros(500);
        loop {
            let got: Option<String> = self
                .timed(
                    redis::cmd("SET")
                        .arg(lock_key)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(LEASE.as_millis() as u64)
                        .query_async(c),
                )
                .await?;
            if got.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(unavailable(format!("{lock_key} stayed locked for {:?}", LEASE * 2)));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn insert_workspace(&self, rec: &WorkspaceRecord, event: NewEvent) -> Result<Event> {
        let mut c = self.conn().await?;
        let json = serde_json::to_string(rec).map_err(|e| corrupt("record", e))?;
        let ev = serde_json::to_string(&event).map_err(|e| corrupt("event", e))?;
        let seq: i64 = self
            .timed(
                self.insert
                    .key(self.ws_key(&rec.id))
                    .key(self.key("ws-index"))
                    .key(self.key("seq"))
                    .key(self.key("events"))
                    .key(self.key("usage"))
                    .arg(rec.id.as_str())
                    .arg(json)
                    .arg(ev)
                    .invoke_async(&mut c),
            )
            .await?;
        if seq < 0 {
            return Err(StoreError::AlreadyExists(format!("workspace {}", rec.id)));
        }
        Ok(Event { seq: seq as u64, event })
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>> {
        let mut c = self.conn().await?;
        let raw: Option<String> = self.timed(c.get(self.ws_key(id))).await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| corrupt(&format!("workspace {id}"), e))).transpose()
    }

    async fn list_workspaces(&self) -> Result<Vec<WorkspaceRecord>> {
        let mut c = self.conn().await?;
        let mut ids: Vec<String> = self.timed(c.smembers(self.key("ws-index"))).await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| self.key(&format!("ws:{id}"))).collect();
            let raws: Vec<Option<String>> = self.timed(redis::cmd("MGET").arg(&keys).query_async(&mut c)).await?;
            for (id, raw) in chunk.iter().zip(raws) {
                // An id whose record is gone was deleted between the calls.
                if let Some(r) = raw {
                    out.push(serde_json::from_str(&r).map_err(|e| corrupt(&format!("workspace {id}"), e))?);
                }
            }
        }
        Ok(out)
    }

    async fn update_workspace(&self, id: &WorkspaceId, f: Update) -> Result<(WorkspaceRecord, Option<Event>)> {
        let mut c = self.conn().await?;
        let lock_key = self.key(&format!("lock:{id}"));
        let token = warren_core::random_token(12);
        self.lock(&mut c, &lock_key, &token).await?;
        let result = async {
            let raw: Option<String> = self.timed(c.get(self.ws_key(id))).await?;
            let raw = raw.ok_or_else(|| StoreError::NotFound(format!("workspace {id}")))?;
            let mut rec: WorkspaceRecord =
                serde_json::from_str(&raw).map_err(|e| corrupt(&format!("workspace {id}"), e))?;
            let event = f(&mut rec)?;
            let json = serde_json::to_string(&rec).map_err(|e| corrupt("record", e))?;
            let ev = match &event {
                Some(e) => serde_json::to_string(e).map_err(|e| corrupt("event", e))?,
                None => String::new(),
            };
            let seq: i64 = self
                .timed(
                    self.update
                        .key(self.ws_key(id))
                        .key(self.key("seq"))
                        .key(self.key("events"))
                        .key(&lock_key)
                        .key(self.key("usage"))
                        .arg(&token)
                        .arg(json)
                        .arg(ev)
                        .invoke_async(&mut c),
                )
                .await?;
            match seq {
                -1 => Err(unavailable(format!("the lease on workspace {id} expired during the update; retry"))),
                -2 => Err(StoreError::NotFound(format!("workspace {id}"))),
                _ => Ok((rec, event.map(|event| Event { seq: seq as u64, event }))),
            }
        }
        .await;
        let _: std::result::Result<i64, _> =
            self.timed(self.unlock.key(&lock_key).arg(&token).invoke_async(&mut c)).await;
        result
    }

    async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()> {
        let mut c = self.conn().await?;
        let _: i64 = self
            .timed(
                self.delete
                    .key(self.ws_key(id))
                    .key(self.key("ws-index"))
                    .key(self.key("usage"))
                    .arg(id.as_str())
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }

    async fn tenant_usage(&self, tenant: &TenantId) -> Result<TenantUsage> {
        let mut c = self.conn().await?;
        if !self.usage_ready.load(std::sync::atomic::Ordering::Acquire) {
            let _: i64 = self
                .timed(
                    self.build_usage
                        .key(self.key("ws-index"))
                        .key(self.key("usage"))
                        .key(self.key("usage-built"))
                        .arg(self.key("ws:"))
                        .invoke_async(&mut c),
                )
                .await?;
            self.usage_ready.store(true, std::sync::atomic::Ordering::Release);
        }
        let fields = [format!("{tenant}:n"), format!("{tenant}:mcpu"), format!("{tenant}:mem")];
        let got: Vec<Option<i64>> =
            self.timed(redis::cmd("HMGET").arg(self.key("usage")).arg(&fields).query_async(&mut c)).await?;
        let at = |i: usize| got.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
        Ok(TenantUsage { workspaces: at(0) as usize, millicpus: at(1), memory_mib: at(2) })
    }

    async fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let mut c = self.conn().await?;
        let count: i64 = if limit >= i64::MAX as usize { -1 } else { limit as i64 };
        let members: Vec<String> = self
            .timed(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key("events"))
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(count)
                    .query_async(&mut c),
            )
            .await?;
        members.iter().map(|m| Self::parse_event(m)).collect()
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        let mut c = self.conn().await?;
        let json = serde_json::to_string(key).map_err(|e| corrupt("api key", e))?;
        let _: () = self.timed(c.hset(self.key("keys"), &key.hash, json)).await?;
        Ok(())
    }

    async fn get_api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>> {
        let mut c = self.conn().await?;
        let raw: Option<String> = self.timed(c.hget(self.key("keys"), hash)).await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| corrupt("api key", e))).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let mut c = self.conn().await?;
        let all: std::collections::BTreeMap<String, String> = self.timed(c.hgetall(self.key("keys"))).await?;
        all.values().map(|r| serde_json::from_str(r).map_err(|e| corrupt("api key", e))).collect()
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let mut c = self.conn().await?;
        let got: i64 = self
            .timed(
                self.lease
                    .key(self.key(&format!("lease:{name}")))
                    .arg(holder)
                    .arg(ttl.as_millis().max(1) as u64)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(got == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let mut c = self.conn().await?;
        let _: i64 =
            self.timed(self.unlock.key(self.key(&format!("lease:{name}"))).arg(holder).invoke_async(&mut c)).await?;
        Ok(())
    }

    async fn put_node(&self, node: &NodeRecord) -> Result<()> {
        let mut c = self.conn().await?;
        let json = serde_json::to_string(node).map_err(|e| corrupt("node", e))?;
        let _: () = self.timed(c.hset(self.key("nodes"), &node.id, json)).await?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut c = self.conn().await?;
        let all: std::collections::BTreeMap<String, String> = self.timed(c.hgetall(self.key("nodes"))).await?;
        all.values().map(|r| serde_json::from_str(r).map_err(|e| corrupt("node", e))).collect()
    }
}
