//! API keys: `e2b_` + 40 hex characters (the shape E2B SDKs accept), stored
//! only as SHA-256. A caller is a tenant, possibly an admin.

use axum::http::HeaderMap;
use sha2::Digest as _;
use warren_core::TenantId;
use warren_store::ApiKeyRecord;

use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    pub admin: bool,
}

impl Caller {
    /// The tenant scope of reads: admins see every tenant.
    pub fn scope(&self) -> Option<&TenantId> {
        if self.admin {
            None
        } else {
            Some(&self.tenant)
        }
    }
}

pub fn hash_key(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn new_key() -> String {
    format!("e2b_{}", warren_core::random_token(20))
}

/// Checks the shape of a key given by an operator.
pub fn valid_key(key: &str) -> bool {
    key.len() >= 16 && key.len() <= 256 && key.bytes().all(|b| b.is_ascii_graphic())
}

pub fn record(key: &str, tenant: &TenantId, name: &str, admin: bool, now_ms: u64) -> ApiKeyRecord {
    ApiKeyRecord {
        hash: hash_key(key),
        // "e2b_" and 8 hex digits: enough to tell keys apart, useless to guess them.
        prefix: key.chars().take(12).collect(),
        tenant: tenant.clone(),
        name: name.into(),
        admin,
        created_at_ms: now_ms,
        revoked: false,
    }
}

/// The key a request carries: `Authorization: Bearer`, or `X-API-Key`.
pub fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(k) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            return Some(k.trim());
        }
    }
    h.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

pub async fn authenticate(orch: &warren_orchestrator::Orchestrator, h: &HeaderMap) -> Result<Caller, ApiError> {
    let key = presented_key(h)
        .ok_or_else(|| ApiError::unauthorized("missing API key (Authorization: Bearer <key> or X-API-Key)"))?;
    let rec = orch.api_key(&hash_key(key)).await?;
    match rec {
        Some(r) if !r.revoked => Ok(Caller { tenant: r.tenant, admin: r.admin }),
        _ => Err(ApiError::unauthorized("invalid API key")),
    }
}
