//! The wire types of warren's own HTTP API (`/v1`), shared by the server
//! (which writes them) and the CLI (which reads them): requests, views and
//! the one error body. The E2B-compatible API keeps E2B's own shapes and is
//! not here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warren_core::Size;

/// What went wrong, as a stable string clients can match on. The HTTP
/// status says the same in less detail; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is malformed or asks for something invalid.
    BadRequest,
    /// 401: no key, or a wrong or revoked one.
    Unauthorized,
    /// 403: the key may not do this (e.g. needs an admin key).
    Forbidden,
    /// 404: no such workspace (or another tenant's), template, route.
    NotFound,
    /// 409: the workspace is in a state that does not allow this.
    Conflict,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 429: the tenant's quota would be exceeded; nothing changed.
    QuotaExceeded,
    /// 501: this backend cannot do this.
    NotImplemented,
    /// 502: the workspace's agent failed or answered nonsense.
    BadGateway,
    /// 503: the backend has no room; try again later.
    Capacity,
    /// 503: the store, the backend or another replica cannot be reached.
    Unavailable,
    /// 504: the workspace's agent did not answer in time.
    Timeout,
    /// 507: the workspace ran out of disk or another resource.
    ResourceExhausted,
    /// 500: a bug or a broken invariant.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::QuotaExceeded,
        ErrorCode::NotImplemented,
        ErrorCode::BadGateway,
        ErrorCode::Capacity,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::ResourceExhausted,
        ErrorCode::Internal,
    ];

    /// The HTTP status this code is sent with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::QuotaExceeded => 429,
            ErrorCode::NotImplemented => 501,
            ErrorCode::BadGateway => 502,
            ErrorCode::Capacity | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::ResourceExhausted => 507,
            ErrorCode::Internal => 500,
        }
    }

    /// The code an HTTP status stands for when only the status is known.
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            429 => ErrorCode::QuotaExceeded,
            501 => ErrorCode::NotImplemented,
            502 => ErrorCode::BadGateway,
            503 => ErrorCode::Unavailable,
            504 => ErrorCode::Timeout,
            507 => ErrorCode::ResourceExhausted,
            // Other refusals of the request itself (405, 408, 415, …).
            400..=499 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }
}

/// Every error of the `/v1` API: `{"code": "not_found", "message": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// A workspace as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceView {
    pub id: String,
    pub tenant: String,
    pub template: String,
    pub state: String,
    pub provider: String,
    pub size: Size,
    pub created_at: String,
    pub expires_at: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a workspace reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Loopback only.
    None,
    /// An address of its own, NAT egress.
    Bridge,
}

/// `POST /v1/workspaces`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Default `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
}

/// `POST /v1/workspaces/{id}/timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// Seconds from now.
    pub timeout: u64,
}

/// `POST /v1/keys` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewKey {
    pub tenant: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

/// A key as listed: never the secret, only its public prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub prefix: String,
    pub tenant: String,
    pub name: String,
    pub admin: bool,
    pub created_at: String,
    pub revoked: bool,
}

/// The answer to `POST /v1/keys`: the key itself, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    pub key: String,
}

/// A template as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateView {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `namespaces`, `gvisor`, `container`, … (absent: not reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_stable_strings_with_their_status() {
        let body = ErrorBody { code: ErrorCode::QuotaExceeded, message: "m".into() };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"code":"quota_exceeded","message":"m"}"#);
        for code in ErrorCode::ALL.into_iter().filter(|c| *c != ErrorCode::Capacity) {
            assert_eq!(ErrorCode::from_status(code.status()), code, "{code:?}");
        }
        assert_eq!(ErrorCode::Capacity.status(), 503);
        assert_eq!(ErrorCode::from_status(405), ErrorCode::BadRequest, "a wrong method is the request's fault");
        assert_eq!(ErrorCode::from_status(599), ErrorCode::Internal);
    }

    #[test]
    fn requests_refuse_unknown_fields_and_views_round_trip() {
        assert!(serde_json::from_str::<CreateWorkspace>(r#"{"templat":"base"}"#).is_err());
        let c: CreateWorkspace = serde_json::from_str(r#"{"network":"bridge","timeout":5}"#).unwrap();
        assert_eq!((c.network, c.timeout), (Some(Network::Bridge), Some(5)));
        assert_eq!(serde_json::to_string(&CreateWorkspace::default()).unwrap(), "{}");
        let k = CreatedKey {
            view: KeyView {
                prefix: "e2b_1".into(),
                tenant: "t".into(),
                name: "n".into(),
                admin: false,
                created_at: "x".into(),
                revoked: false,
            },
            key: "e2b_secret".into(),
        };
        let json = serde_json::to_string(&k).unwrap();
        assert!(json.contains(r#""prefix":"e2b_1""#) && json.contains(r#""key":"e2b_secret""#), "{json}");
        assert_eq!(serde_json::from_str::<CreatedKey>(&json).unwrap(), k);
    }
}
