//! Forwarding between replicas. With several servers on one store, a
//! workspace on a host-local backend (local, docker) lives with the replica
//! that created it. A request about it that reaches another replica (any
//! load balancer, no sticky sessions) is relayed, as it is, to the owner:
//! streamed bodies both ways and WebSocket upgrades (the PTY) included. The
//! owner authenticates it like any other request.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use warren_core::WorkspaceId;

use crate::AppState;

/// Marks a relayed request (never relayed twice).
pub const FORWARDED: &str = "x-warren-forwarded";

pub type ForwardClient = Client<HttpConnector, Body>;

pub fn client() -> ForwardClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The workspace a request is about, from its path or its gateway routing;
/// None for requests any replica answers from the store alone (describing a
/// workspace).
fn workspace_of(s: &AppState, req: &Request) -> Option<String> {
    let path = req.uri().path();
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let describe = req.method() == axum::http::Method::GET
        && matches!(seg.as_slice(), ["v1", "workspaces", _] | ["sandboxes", _] | ["v2", "sandboxes", _]);
    if describe && !req.headers().contains_key("e2b-sandbox-id") {
        return None;
    }
    let from_path = match seg.as_slice() {
        ["v1", "workspaces", id, ..] => Some(*id),
        ["sandboxes", id, ..] | ["v2", "sandboxes", id, ..] => Some(*id),
        _ => None,
    };
    if let Some(id) = from_path {
        return Some(id.to_string());
    }
    let host = req.headers().get("host").and_then(|v| v.to_str().ok());
    crate::e2b::route(req.headers(), path, host, &s.e2b).map(|(id, _)| id)
}

/// A 503 in the shape of the API the request was for.
fn unavailable(path: &str, message: String) -> Response {
    let resp = crate::error::ApiError::coded(warren_api::ErrorCode::Unavailable, message).into_response();
    crate::error::shaped(crate::error::is_e2b_path(path), resp)
}

/// Middleware: relays requests about another replica's workspaces.
pub async fn forward(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let me = s.orch.node();
    if me.is_empty() || req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let Some(id) = workspace_of(&s, &req).and_then(|id| id.parse::<WorkspaceId>().ok()) else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    let owner = match s.orch.owner_node(&id).await {
        Ok(Some(node)) if !node.is_empty() && node != me => node,
        // Ours, unknown (the handler answers 404), or the store is down
        // (the handler answers 503).
        _ => return next.run(req).await,
    };
    match s.orch.live_node_url(&owner).await {
        Ok(Some(url)) => relay(&s, &url, me, req).await,
        // Its replica is gone: a kill can still be recorded here (the
        // replica's reconcile releases the rest when it returns).
        Ok(None) if req.method() == axum::http::Method::DELETE => next.run(req).await,
        Ok(None) => unavailable(&path, format!("workspace {id} lives on replica {owner}, which is not answering")),
        Err(e) => unavailable(&path, format!("looking up replica {owner}: {e}")),
    }
}

async fn relay(s: &AppState, base: &str, me: &str, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let uri = match format!("{}{pq}", base.trim_end_matches('/')).parse::<axum::http::Uri>() {
        Ok(u) => u,
        Err(e) => return unavailable(&path, format!("replica address {base:?}: {e}")),
    };
    let wants_upgrade = req.headers().contains_key(axum::http::header::UPGRADE);
    let client_side = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    if let Ok(v) = HeaderValue::from_str(me) {
        parts.headers.insert(FORWARDED, v);
    }
    let out = Request::from_parts(parts, body);
    let mut resp = match s.forward.request(out).await {
        Ok(r) => r,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                msg.push_str(&format!(": {c}"));
                src = c.source();
            }
            return unavailable(&path, format!("relaying to {base}: {msg}"));
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            let backend_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(a), Ok(b)) = (client_side.await, backend_side.await) {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
                }
            });
        }
    }
    resp.map(Body::new)
}
