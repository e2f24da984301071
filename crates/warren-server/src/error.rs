//! API errors: an HTTP status and one JSON body. On warren's own API
//! (`/v1/…`) it is [`warren_api::ErrorBody`], `{code: "not_found", message}`
//! with a stable string code; on the E2B-compatible API it is E2B's
//! `{code: 404, message}` (see [`e2b_shape`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use warren_api::{ErrorBody, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

/// E2B's error body.
#[derive(Serialize)]
struct E2bBody<'a> {
    code: u16,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, code: ErrorCode::from_status(status.as_u16()), message: message.into() }
    }

    /// An error with its code (the status follows from it).
    pub fn coded(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
}

impl IntoResponse for ApiError {
    /// warren's shape; the body is also kept as a response extension, so
    /// the E2B routes can re-render it in E2B's ([`e2b_shape`]).
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code, message: self.message };
        let bytes =
            serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"code\":\"internal\",\"message\":\"error\"}".to_vec());
        let mut resp = (self.status, [(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response();
        resp.extensions_mut().insert(body);
        resp
    }
}

/// Whether a request path is answered in E2B's shapes (everything that is
/// not warren's own `/v1` API).
pub fn is_e2b_path(path: &str) -> bool {
    !(path.starts_with("/v1/") || path == "/v1" || path == "/metrics")
}

/// An error response in the shape of the API it answers: E2B's for the
/// E2B routes ([`e2b_shape`]), warren's as made otherwise.
pub fn shaped(e2b: bool, resp: Response) -> Response {
    if e2b {
        e2b_shape(resp)
    } else {
        resp
    }
}

/// Re-renders an error response made by [`ApiError`] in E2B's shape
/// `{code: <status>, message}`; other responses pass unchanged.
pub fn e2b_shape(resp: Response) -> Response {
    let Some(body) = resp.extensions().get::<ErrorBody>().cloned() else { return resp };
    let (mut parts, _) = resp.into_parts();
    let bytes = serde_json::to_vec(&E2bBody { code: parts.status.as_u16(), message: &body.message })
        .unwrap_or_else(|_| b"{\"code\":500,\"message\":\"error\"}".to_vec());
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

impl From<warren_orchestrator::Error> for ApiError {
    fn from(e: warren_orchestrator::Error) -> Self {
        use warren_orchestrator::Error as E;
        let code = match &e {
            E::NotFound(_) => ErrorCode::NotFound,
            E::InvalidArgument(_) => ErrorCode::BadRequest,
            E::Conflict(_) => ErrorCode::Conflict,
            E::Unsupported(_) => ErrorCode::NotImplemented,
            E::Unavailable(_) => ErrorCode::Unavailable,
            E::Capacity(_) => ErrorCode::Capacity,
            E::Internal(_) => ErrorCode::Internal,
            E::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
        };
        ApiError::coded(code, e.to_string())
    }
}

impl From<warren_proto::client::ClientError> for ApiError {
    fn from(e: warren_proto::client::ClientError) -> Self {
        use warren_proto::connect::Code;
        let status = match e.code() {
            Some(Code::NotFound) => StatusCode::NOT_FOUND,
            Some(Code::InvalidArgument) | Some(Code::FailedPrecondition) | Some(Code::OutOfRange) => {
                StatusCode::BAD_REQUEST
            }
            Some(Code::AlreadyExists) => StatusCode::CONFLICT,
            Some(Code::PermissionDenied) => StatusCode::FORBIDDEN,
            Some(Code::Unauthenticated) => StatusCode::BAD_REQUEST,
            Some(Code::ResourceExhausted) => StatusCode::INSUFFICIENT_STORAGE,
            Some(Code::DeadlineExceeded) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let msg = match &e {
            warren_proto::client::ClientError::Rpc(c) => c.message.clone(),
            other => format!("workspace agent: {other}"),
        };
        ApiError::new(status, msg)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
