//! API errors: an HTTP status and a JSON body `{code: int, message}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: u16,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
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
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body { code: self.status.as_u16(), message: &self.message })
            .unwrap_or_else(|_| b"{\"code\":500,\"message\":\"error\"}".to_vec());
        (self.status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

impl From<warren_orchestrator::Error> for ApiError {
    fn from(e: warren_orchestrator::Error) -> Self {
        use warren_orchestrator::Error as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Capacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            E::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        ApiError::new(status, e.to_string())
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
