//! The HTTP edge of warren.
//!
//! - `/v1/...`: the native API (workspaces, exec as NDJSON, PTY over
//!   WebSocket, files as streams, templates), API-key authenticated;
//! - `/v1/health`, `/metrics` (Prometheus), `/v1/openapi.json`.
//!
//! Every error is JSON `{code, message}` with `code` = the HTTP status.

pub mod api;
pub mod auth;
pub mod e2b;
pub mod error;
pub mod exec;
pub mod forward;
pub mod metrics;
pub mod openapi;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::Router;
use warren_orchestrator::Orchestrator;

use crate::auth::Caller;
use crate::error::ApiError;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub orch: Arc<Orchestrator>,
    pub metrics: Arc<metrics::Metrics>,
    pub e2b: Arc<e2b::E2bConfig>,
    pub idempotency: Arc<e2b::Idempotency>,
    pub cpu_samples: Arc<e2b::CpuSamples>,
    pub cost: Arc<CostConfig>,
    pub forward: forward::ForwardClient,
}

/// How invoices are priced: the catalog, which of its setups this
/// deployment's infrastructure cost is taken from, and each tenant's class.
#[derive(Debug, Clone)]
pub struct CostConfig {
    pub catalog: warren_cost::Catalog,
    pub setup: String,
    pub default_class: String,
    pub tenant_classes: std::collections::HashMap<String, String>,
    /// Backends whose time costs like another setup (`e2b` = `e2b-pro`);
    /// the rest cost like `setup`.
    pub backend_setups: std::collections::HashMap<String, String>,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            catalog: warren_cost::Catalog::embedded(),
            setup: "ecs-ec2-od".into(),
            default_class: "standard".into(),
            tenant_classes: Default::default(),
            backend_setups: [("e2b".to_string(), "e2b-pro".to_string())].into(),
        }
    }
}

impl CostConfig {
    /// Checks that the setup and every class named exist in the catalog.
    pub fn validate(&self) -> Result<(), String> {
        if self.catalog.setup(&self.setup).is_none() {
            return Err(format!("cost_setup {:?} is not in the price catalog", self.setup));
        }
        for (backend, setup) in &self.backend_setups {
            if self.catalog.setup(setup).is_none() {
                return Err(format!("backend_setups: {backend} = {setup:?} is not in the price catalog"));
            }
        }
        for (who, class) in std::iter::once(("default_class", &self.default_class))
            .chain(self.tenant_classes.iter().map(|(t, c)| (t.as_str(), c)))
        {
            if self.catalog.class(class).is_none() {
                return Err(format!("{who}: class {class:?} is not in the price catalog"));
            }
        }
        Ok(())
    }
}

impl AppState {
    pub fn new(orch: Arc<Orchestrator>, e2b: e2b::E2bConfig) -> Self {
        AppState {
            orch,
            metrics: Default::default(),
            e2b: Arc::new(e2b),
            idempotency: Default::default(),
            cpu_samples: Default::default(),
            cost: Default::default(),
            forward: forward::client(),
        }
    }

    pub fn with_cost(mut self, cost: CostConfig) -> Self {
        self.cost = Arc::new(cost);
        self
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        auth::authenticate(&state.orch, &parts.headers).await
    }
}

/// Largest JSON body accepted on the API (file uploads are streamed, unlimited).
pub const JSON_LIMIT: usize = 1 << 20;

pub fn router(state: AppState) -> Router {
    let workspaces = Router::new()
        .route("/v1/workspaces", post(api::create).get(api::list))
        .route("/v1/workspaces/{id}", get(api::info).delete(api::kill))
        .route("/v1/workspaces/{id}/timeout", post(api::timeout))
        .route("/v1/workspaces/{id}/pause", post(api::pause))
        .route("/v1/workspaces/{id}/resume", post(api::resume))
        .route("/v1/workspaces/{id}/stats", get(api::stats))
        .route("/v1/workspaces/{id}/exec", post(exec::exec))
        .route("/v1/workspaces/{id}/pty", get(exec::pty))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .route("/v1/workspaces/{id}/files", get(api::download).put(api::upload).layer(DefaultBodyLimit::disable()));
    let e2b_api = Router::new()
        .route("/sandboxes", post(e2b::create).get(e2b::list))
        .route("/templates", get(e2b::templates))
        .route("/v2/sandboxes", post(e2b::create).get(e2b::list))
        .route("/sandboxes/{id}", get(e2b::detail).delete(e2b::kill))
        .route("/sandboxes/{id}/timeout", post(e2b::timeout))
        .route("/sandboxes/{id}/connect", post(e2b::connect))
        .route("/v2/sandboxes/{id}/connect", post(e2b::connect))
        .route("/sandboxes/{id}/pause", post(e2b::pause))
        .route("/sandboxes/{id}/resume", post(e2b::resume))
        .route("/sandboxes/{id}/metrics", get(e2b::metrics))
        .layer(DefaultBodyLimit::max(JSON_LIMIT));
    Router::new()
        .merge(workspaces)
        .merge(e2b_api)
        .route("/v1/templates", get(api::templates))
        .route("/v1/pools", get(api::pools))
        .route("/v1/usage", get(api::usage))
        .route("/v1/invoice", get(api::invoice))
        .route("/v1/keys", post(api::create_key).get(api::list_keys))
        .route("/v1/keys/{prefix}", axum::routing::delete(api::revoke_key))
        .route("/v1/templates/{name}", post(api::import_template).layer(DefaultBodyLimit::disable()))
        .route("/v1/health", get(api::health))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::scrape))
        .fallback(api::no_route)
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(state.clone(), e2b::gateway))
        .layer(axum::middleware::from_fn_with_state(state.clone(), forward::forward))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::count))
        .with_state(state)
}

/// Turns every error reply that is not JSON yet (axum's own rejections: body
/// too large, bad path, missing upgrade…) into the error body, and gives
/// the E2B routes E2B's shape of it.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let has_body = req.headers().contains_key(axum::http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
    let e2b = error::is_e2b_path(req.uri().path());
    let mut resp = next.run(req).await;
    let status = resp.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        // The handler may have refused before reading the body (bad key,
        // unknown id), after which the server cannot reuse the connection:
        // say so, so HTTP/1.1 clients do not send the next request on a
        // connection that is about to close.
        resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    if is_json {
        return error::shaped(e2b, resp);
    }
    let close = resp.headers().get(axum::http::header::CONNECTION).cloned();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let mut out = ApiError::new(status, message).into_response();
    if let Some(c) = close {
        out.headers_mut().insert(axum::http::header::CONNECTION, c);
    }
    error::shaped(e2b, out)
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // Streams flush small writes (events, NDJSON lines) at once: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
