//! Reading records and events written by older versions: the layout before
//! typed ownership kept warm-pool members under the pseudo-tenant
//! `__pool__`, with readiness and template revision in the metadata map,
//! and the endpoint as a plain string.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use warren_core::{Size, State, TenantId, WorkspaceId};

use crate::{Endpoint, Owner, WorkspaceRecord, RECORD_SCHEMA};

/// How schema 1 named the owner of unclaimed pool members.
const LEGACY_POOL_TENANT: &str = "__pool__";

/// Any layout a record was ever written in.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecordWire {
    #[serde(default)]
    schema: Option<u32>,
    id: WorkspaceId,
    #[serde(default)]
    owner: Option<Owner>,
    /// Schema 1.
    #[serde(default)]
    tenant: Option<String>,
    template: String,
    size: Size,
    state: State,
    provider: String,
    #[serde(default)]
    endpoint: Option<String>,
    access_token: String,
    init_token: String,
    created_at_ms: u64,
    updated_at_ms: u64,
    expires_at_ms: u64,
    last_activity_ms: u64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    node: String,
}

impl TryFrom<RecordWire> for WorkspaceRecord {
    type Error = String;

    fn try_from(w: RecordWire) -> Result<Self, String> {
        let mut metadata = w.metadata;
        let (schema, owner) = match (w.owner, w.tenant) {
            (Some(owner), _) => (w.schema.unwrap_or(RECORD_SCHEMA), owner),
            (None, Some(t)) if t == LEGACY_POOL_TENANT => {
                let ready = metadata.remove("ready").is_some_and(|v| v == "1");
                let revision = metadata.remove("revision").unwrap_or_default();
                // The pool it came from was not recorded: no configured
                // pool claims it, and the refill pass drains it.
                (1, Owner::Pool { pool: String::new(), revision, ready })
            }
            (None, Some(t)) => (1, Owner::Tenant { tenant: TenantId::new(t).map_err(|e| e.to_string())? }),
            (None, None) => return Err(format!("workspace {}: neither owner nor tenant", w.id)),
        };
        let endpoint = w.endpoint.map(|e| e.parse::<Endpoint>()).transpose()?;
        Ok(WorkspaceRecord {
            schema,
            id: w.id,
            owner,
            template: w.template,
            size: w.size,
            state: w.state,
            provider: w.provider,
            endpoint,
            access_token: w.access_token,
            init_token: w.init_token,
            created_at_ms: w.created_at_ms,
            updated_at_ms: w.updated_at_ms,
            expires_at_ms: w.expires_at_ms,
            last_activity_ms: w.last_activity_ms,
            metadata,
            env: w.env,
            error: w.error,
            node: w.node,
        })
    }
}

/// An event's tenant: absent or the legacy pool pseudo-tenant mean a pool
/// member's (infrastructure) time.
pub(crate) fn event_tenant<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TenantId>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(t) if t == LEGACY_POOL_TENANT => Ok(None),
        Some(t) => TenantId::new(t).map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, NewEvent};

    const V1_POOL: &str = r#"{"id":"abc","tenant":"__pool__","template":"base",
        "size":{"millicpus":1000,"memoryMib":512,"diskMib":1024,"pids":256},"state":"running",
        "provider":"local","endpoint":"unix:///run/a.sock","accessToken":"a","initToken":"i",
        "createdAtMs":1,"updatedAtMs":2,"expiresAtMs":3,"lastActivityMs":4,
        "metadata":{"ready":"1","revision":"r7","keep":"x"}}"#;

    #[test]
    fn schema_1_records_are_read_into_typed_owners() {
        let r: WorkspaceRecord = serde_json::from_str(V1_POOL).unwrap();
        assert_eq!(r.schema, 1);
        assert_eq!(r.owner, Owner::Pool { pool: String::new(), revision: "r7".into(), ready: true });
        assert_eq!(r.metadata, BTreeMap::from([("keep".to_string(), "x".to_string())]));
        assert_eq!(r.endpoint, Some(Endpoint::Unix("/run/a.sock".into())));
        let t: WorkspaceRecord = serde_json::from_str(&V1_POOL.replace("__pool__", "acme")).unwrap();
        assert_eq!(t.tenant().map(TenantId::as_str), Some("acme"));
        assert_eq!(t.metadata.len(), 3, "a tenant's metadata is its own: nothing is taken out");
        assert!(serde_json::from_str::<WorkspaceRecord>(&V1_POOL.replace("__pool__", "bad tenant")).is_err());
        assert!(serde_json::from_str::<WorkspaceRecord>(&V1_POOL.replace("unix:", "ftp:")).is_err());

        // Written back, it is the current layout and reads back the same.
        let mut r = r;
        r.schema = RECORD_SCHEMA;
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""owner":{"kind":"pool""#) && !json.contains("\"tenant\""), "{json}");
        assert_eq!(serde_json::from_str::<WorkspaceRecord>(&json).unwrap(), r);
    }

    #[test]
    fn pool_events_of_schema_1_have_no_tenant() {
        let e = r#"{"atMs":1,"workspace":"abc","tenant":"__pool__","size":{"millicpus":1000,
            "memoryMib":512,"diskMib":1024,"pids":256},"kind":{"type":"created","template":"base"}}"#;
        let e: NewEvent = serde_json::from_str(e).unwrap();
        assert_eq!(e.tenant, None);
        assert!(matches!(e.kind, EventKind::Created { .. }));
        let back = serde_json::to_string(&e).unwrap();
        assert!(!back.contains("tenant"), "{back}");
        assert_eq!(serde_json::from_str::<NewEvent>(&back).unwrap(), e);
    }
}
