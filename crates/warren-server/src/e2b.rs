//! E2B compatibility: the control-plane REST API the E2B SDKs call, and the
//! data-plane gateway that passes envd traffic (and user ports) through to
//! workspace agents. The contract is `shared/specs/e2b-compat.md`.
//!
//! The gateway serves requests that name a sandbox, by the `E2b-Sandbox-Id`
//! header (SDK ≥ 2.7 with `E2B_SANDBOX_URL`) or by a host `{port}-{id}.{domain}`;
//! everything else goes to the routers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use warren_core::{State as WsState, WorkspaceId};
use warren_orchestrator::CreateRequest;
use warren_proto::json::Millis;
use warren_store::WorkspaceRecord;

use crate::api::json_body;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The envd port of the SDKs.
pub const ENVD_PORT: u16 = 49983;
/// E2B's constant `clientID`.
const CLIENT_ID: &str = "6532622b";

/// E2B-facing settings.
#[derive(Debug, Clone, Default)]
pub struct E2bConfig {
    /// The sandbox domain: returned as `domain`, and the suffix of
    /// `{port}-{id}.{domain}` hosts. None: any host with such a first label.
    pub domain: Option<String>,
}

/// Idempotency keys of creates, per tenant, kept for ten minutes.
#[derive(Default)]
pub struct Idempotency(Mutex<HashMap<(warren_core::TenantId, String), (String, std::time::Instant)>>);

const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("sandbox {id} not found"))
}

fn parse(id: &str) -> ApiResult<WorkspaceId> {
    id.parse().map_err(|_| not_found(id))
}

/// The id of a sandbox the caller may see (E2B's 404 otherwise).
async fn visible(s: &AppState, caller: &Caller, id: &str) -> ApiResult<WorkspaceId> {
    let wid = parse(id)?;
    s.orch.get(caller.scope(), &wid).await.map_err(|_| not_found(id))?;
    Ok(wid)
}

fn sandbox_json(s: &AppState, r: &WorkspaceRecord) -> Value {
    json!({
        "templateID": r.template,
        "sandboxID": r.id.as_str(),
        "clientID": CLIENT_ID,
        "envdVersion": warren_proto::ENVD_VERSION,
        "envdAccessToken": r.access_token,
        "trafficAccessToken": null,
        "domain": s.e2b.domain,
        "alias": r.template,
    })
}

fn detail_json(s: &AppState, r: &WorkspaceRecord) -> Value {
    let mut v = sandbox_json(s, r);
    v["startedAt"] = json!(Millis(r.created_at_ms).to_string());
    v["endAt"] = json!(Millis(r.expires_at_ms).to_string());
    v["cpuCount"] = json!(r.size.vcpus());
    v["memoryMB"] = json!(r.size.memory_mib);
    v["diskSizeMB"] = json!(r.size.disk_mib);
    v["state"] = json!(if r.state == WsState::Paused { "paused" } else { "running" });
    v["metadata"] = json!(r.metadata);
    v
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID", default)]
    template_id: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    auto_pause: Option<bool>,
    #[serde(default)]
    volume_mounts: Option<Vec<Value>>,
}

fn no_retry(mut r: Response) -> Response {
    // A failed create is not replayed by the SDK (it retries 429/5xx by
    // default): quotas do not clear in seconds, and creates are not idempotent.
    if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut().insert("should-retry", HeaderValue::from_static("false"));
    }
    r
}

/// `GET /templates`: the templates sandboxes can be made from, each with
/// the size it gives (warren's default size).
pub async fn templates(State(s): State<AppState>, _caller: Caller) -> ApiResult<Json<Vec<Value>>> {
    let size = s.orch.default_size();
    Ok(Json(
        s.orch
            .templates()
            .await?
            .into_iter()
            .map(|t| {
                json!({
                    "templateID": t.name,
                    "buildID": t.revision,
                    "aliases": [t.name],
                    "cpuCount": size.vcpus(),
                    "memoryMB": size.memory_mib,
                    "diskSizeMB": size.disk_mib,
                    "public": false,
                    "buildStatus": "ready",
                })
            })
            .collect(),
    ))
}

/// `POST /sandboxes` and `POST /v2/sandboxes`.
pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match create_inner(&s, &caller, &headers, &body).await {
        Ok(r) => r,
        Err(e) => no_retry(e.into_response()),
    }
}

async fn create_inner(s: &AppState, caller: &Caller, headers: &HeaderMap, body: &[u8]) -> ApiResult<Response> {
    let b: NewSandbox = json_body(body)?;
    if b.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request("volumeMounts are not supported"));
    }
    if b.auto_pause == Some(true) {
        return Err(ApiError::bad_request(
            "autoPause is not supported yet: the workspace would be killed at its timeout",
        ));
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(k) = &key {
        if k.is_empty() || k.len() > 255 {
            return Err(ApiError::bad_request("Idempotency-Key must be 1 to 255 characters"));
        }
        let prior = {
            let mut m = s.idempotency.0.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, (_, at)| at.elapsed() < IDEMPOTENCY_TTL);
            m.get(&(caller.tenant.clone(), k.clone())).map(|(id, _)| id.clone())
        };
        if let Some(id) = prior {
            if let Ok(rec) = s.orch.get(caller.scope(), &parse(&id)?).await {
                return Ok((StatusCode::CREATED, Json(sandbox_json(s, &rec))).into_response());
            }
        }
    }
    let template = b.template_id.unwrap_or_else(|| "base".into());
    let started = std::time::Instant::now();
    let rec = s
        .orch
        .create(CreateRequest {
            tenant: caller.tenant.clone(),
            template: template.clone(),
            size: None,
            timeout: Some(Duration::from_secs(b.timeout.unwrap_or(300))),
            env: b.env_vars.unwrap_or_default(),
            metadata: b.metadata.unwrap_or_default(),
            network: None,
        })
        .await;
    s.metrics.observe_create(started.elapsed(), rec.is_ok());
    let rec = rec.map_err(|e| match e {
        warren_orchestrator::Error::NotFound(_) => ApiError::not_found(format!("template '{template}' not found")),
        other => other.into(),
    })?;
    if let Some(k) = key {
        s.idempotency
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((caller.tenant.clone(), k), (rec.id.to_string(), std::time::Instant::now()));
    }
    Ok((StatusCode::CREATED, Json(sandbox_json(s, &rec))).into_response())
}

pub async fn detail(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let rec = s.orch.get(caller.scope(), &parse(&id)?).await.map_err(|_| not_found(&id))?;
    Ok(Json(detail_json(&s, &rec)))
}

pub async fn kill(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let wid = parse(&id)?;
    match s.orch.kill(caller.scope(), &wid).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(warren_orchestrator::Error::NotFound(_)) => Err(not_found(&id)),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
struct TimeoutBody {
    timeout: u64,
}

pub async fn timeout(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let b: TimeoutBody = json_body(&body)?;
    let wid = visible(&s, &caller, &id).await?;
    s.orch.set_timeout(caller.scope(), &wid, Duration::from_secs(b.timeout)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Default)]
struct ConnectBody {
    #[serde(default)]
    timeout: Option<u64>,
}

/// `POST /sandboxes/{id}/connect` and `/v2/…/connect`: resume if paused;
/// the TTL is only ever extended. 201 when it resumed, else 200.
pub async fn connect(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let b: ConnectBody = json_body(&body)?;
    let wid = visible(&s, &caller, &id).await?;
    let (rec, resumed) = s.orch.connect(caller.scope(), &wid, Duration::from_secs(b.timeout.unwrap_or(300))).await?;
    let status = if resumed { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(sandbox_json(&s, &rec))).into_response())
}

pub async fn pause(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let wid = visible(&s, &caller, &id).await?;
    s.orch.pause(caller.scope(), &wid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/resume` (SDK ≤ 2.5): 201, or 409 when running.
pub async fn resume(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let b: ConnectBody = json_body(&body)?;
    let wid = visible(&s, &caller, &id).await?;
    s.orch.resume(caller.scope(), &wid).await?;
    let (rec, _) = s.orch.connect(caller.scope(), &wid, Duration::from_secs(b.timeout.unwrap_or(300))).await?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&s, &rec))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// `GET /v2/sandboxes` (and `GET /sandboxes`): metadata and state filters,
/// pages with `X-Next-Token`.
pub async fn list(State(s): State<AppState>, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let want: BTreeMap<String, String> = match &q.metadata {
        Some(m) => warren_proto::http::parse_query(m).into_iter().collect(),
        None => BTreeMap::new(),
    };
    let states: Vec<String> = q
        .state
        .as_deref()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect())
        .unwrap_or_else(|| vec!["running".into(), "paused".into()]);
    for st in &states {
        if st != "running" && st != "paused" {
            return Err(ApiError::bad_request(format!("unknown state filter '{st}' (running, paused)")));
        }
    }
    let all = s.orch.list(caller.scope()).await?;
    let matching = all
        .iter()
        .filter(|r| matches!(r.state, WsState::Running | WsState::Paused))
        .filter(|r| states.iter().any(|st| st == if r.state == WsState::Paused { "paused" } else { "running" }))
        .filter(|r| want.iter().all(|(k, v)| r.metadata.get(k) == Some(v)));
    let page = crate::api::paginate(matching, q.next_token.as_deref(), limit)?;
    let items: Vec<Value> = page.items.iter().map(|r| detail_json(&s, r)).collect();
    Ok(crate::api::with_next_token(Json(items).into_response(), page.next))
}

/// CPU time seen at the previous metrics call, per sandbox.
#[derive(Default)]
pub struct CpuSamples(Mutex<HashMap<WorkspaceId, (u64, u64)>>);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    timestamp: String,
    timestamp_unix: u64,
    cpu_count: u32,
    cpu_used_pct: f64,
    mem_used: u64,
    mem_total: u64,
    mem_cache: u64,
    disk_used: u64,
    disk_total: u64,
}

/// `GET /sandboxes/{id}/metrics`: one current sample from the workspace's cgroups.
pub async fn metrics(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Metric>>> {
    let wid = parse(&id)?;
    let rec = s.orch.get(caller.scope(), &wid).await.map_err(|_| not_found(&id))?;
    let st = s.orch.stats(caller.scope(), &wid).await?;
    let now = s.orch.now_ms();
    let pct = {
        let mut m = s.cpu_samples.0.lock().unwrap_or_else(|p| p.into_inner());
        let prev = m.insert(wid.clone(), (now, st.cpu_ns));
        match prev {
            Some((t, c)) if now > t && st.cpu_ns >= c => {
                (st.cpu_ns - c) as f64 / ((now - t) as f64 * 1e6 * rec.size.vcpus().max(1) as f64) * 100.0
            }
            _ => 0.0,
        }
    };
    Ok(Json(vec![Metric {
        timestamp: Millis(now).to_string(),
        timestamp_unix: now / 1000,
        cpu_count: rec.size.vcpus(),
        cpu_used_pct: (pct * 100.0).round() / 100.0,
        mem_used: st.memory_bytes,
        mem_total: st.memory_limit_bytes,
        mem_cache: 0,
        disk_used: st.disk_used_bytes,
        disk_total: st.disk_total_bytes,
    }]))
}

// ---- data-plane gateway ----

/// The sandbox and port a request is for, if it is gateway traffic.
pub(crate) fn route(headers: &HeaderMap, path: &str, host: Option<&str>, cfg: &E2bConfig) -> Option<(String, u16)> {
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        let port = headers
            .get("e2b-sandbox-port")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.parse().ok())
            .unwrap_or(ENVD_PORT);
        // SDKs up to 2.50 send the routing headers on control-plane calls
        // too (connect, metrics), and some send the API key to envd: tell
        // them apart by path, which never collide on the envd port.
        let control_plane = path.starts_with("/sandboxes") || path.starts_with("/v2/") || path.starts_with("/v1/");
        if port == ENVD_PORT && control_plane {
            return None;
        }
        return Some((id.to_string(), port));
    }
    let host = host?.split(':').next()?;
    let (label, rest) = host.split_once('.')?;
    if let Some(d) = &cfg.domain {
        if !rest.eq_ignore_ascii_case(d) {
            return None;
        }
    }
    let (port, id) = label.split_once('-')?;
    let port: u16 = port.parse().ok()?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return None;
    }
    Some((id.to_string(), port))
}

fn gone(id: &str, message: &str) -> Response {
    let body = json!({"sandboxId": id, "message": message, "code": 502});
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

/// Old SDKs (e.g. 2.20 after `Sandbox.connect`) send envd calls with only
/// `X-Access-Token`: it is unique per sandbox, so it routes too. Only for
/// envd paths, never for the API.
async fn by_access_token(s: &AppState, path: &str, token: &str) -> Option<String> {
    let envd_path = path.starts_with("/process.Process/")
        || path.starts_with("/filesystem.Filesystem/")
        || path == "/files"
        || path == "/envs";
    if !envd_path {
        return None;
    }
    s.orch.workspace_by_token(token).await.ok().flatten().map(|id| id.to_string())
}

/// Largest single RPC message the gateway takes (the agent's own limit is 16 MiB).
const RPC_BODY_LIMIT: usize = (16 << 20) + 5;

const HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"];

/// Middleware: sends sandbox traffic to the sandbox, the rest on.
pub async fn gateway(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let routed = match route(req.headers(), req.uri().path(), host.as_deref(), &s.e2b) {
        Some(r) => Some(r),
        None => {
            let path = req.uri().path().to_string();
            let token =
                req.headers().get(warren_proto::ACCESS_TOKEN_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
            match token {
                Some(t) => by_access_token(&s, &path, &t).await.map(|id| (id, ENVD_PORT)),
                None => None,
            }
        }
    };
    let Some((id, port)) = routed else {
        return next.run(req).await;
    };
    let Ok(wid) = id.parse::<WorkspaceId>() else { return gone(&id, "The sandbox was not found") };
    let rec = match s.orch.get(None, &wid).await {
        Ok(r) => r,
        Err(_) => return gone(&id, "The sandbox was not found"),
    };
    if rec.state == WsState::Paused {
        return gone(&id, "The sandbox is paused");
    }
    let agent = match s.orch.agent(None, &wid).await {
        Ok((_, a)) => a,
        Err(_) => return gone(&id, "The sandbox was not found"),
    };
    let (mut parts, body) = req.into_parts();
    for h in HOP {
        parts.headers.remove(*h);
    }
    if port != ENVD_PORT {
        if let (Ok(p), Ok(t)) = (HeaderValue::from_str(&port.to_string()), HeaderValue::from_str(&rec.init_token)) {
            parts.headers.insert(warren_proto::FORWARD_PORT_HEADER, p);
            parts.headers.insert(warren_proto::INIT_TOKEN_HEADER, t);
        }
    } else {
        // Never let a client smuggle gateway-only headers to the agent.
        parts.headers.remove(warren_proto::FORWARD_PORT_HEADER);
        parts.headers.remove(warren_proto::INIT_TOKEN_HEADER);
    }
    parts.version = axum::http::Version::HTTP_2;
    // RPCs other than StreamInput carry one bounded message: receive it whole
    // and forward it with its length. (Relaying a chunked HTTP/1.1 body into
    // the agent's HTTP/2 stream while the agent had already started its reply
    // lost the message under load. Uploads and StreamInput still stream; the
    // agent answers those only after their input has ended.)
    let path = parts.uri.path();
    let one_message = port == ENVD_PORT
        && (path.starts_with("/process.Process/") || path.starts_with("/filesystem.Filesystem/"))
        && path != "/process.Process/StreamInput";
    let body = if one_message {
        match axum::body::to_bytes(body, RPC_BODY_LIMIT).await {
            Ok(b) => {
                if let Ok(v) = HeaderValue::from_str(&b.len().to_string()) {
                    parts.headers.insert(axum::http::header::CONTENT_LENGTH, v);
                }
                http_body_util::Full::new(b).map_err(|never| match never {}).boxed_unsync()
            }
            Err(e) => {
                let body = json!({"code": "resource_exhausted", "message": format!("request body: {e}")});
                return (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
            }
        }
    } else {
        body.map_err(std::io::Error::other).boxed_unsync()
    };
    let out = axum::http::Request::from_parts(parts, body);
    match agent.request(out).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => gone(&id, &format!("The sandbox is not reachable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_by_header_and_host() {
        let cfg = E2bConfig { domain: Some("ws.example.com".into()) };
        let mut h = HeaderMap::new();
        let p = "/process.Process/Start";
        assert_eq!(route(&h, p, Some("api.ws.example.com"), &cfg), None);
        assert_eq!(route(&h, p, Some("8080-abc123.ws.example.com:443"), &cfg), Some(("abc123".into(), 8080)));
        assert_eq!(route(&h, p, Some("8080-abc123.other.com"), &cfg), None);
        assert_eq!(route(&h, p, Some("x-abc.ws.example.com"), &cfg), None);
        assert_eq!(route(&h, p, Some("8080-ABC.ws.example.com"), &cfg), None);
        h.insert("e2b-sandbox-id", HeaderValue::from_static("abc"));
        assert_eq!(route(&h, p, Some("127.0.0.1:7474"), &cfg), Some(("abc".into(), ENVD_PORT)));
        assert_eq!(route(&h, "/sandboxes/abc/connect", Some("127.0.0.1:7474"), &cfg), None, "control plane");
        h.insert("e2b-sandbox-port", HeaderValue::from_static("3000"));
        assert_eq!(route(&h, "/sandboxes/x", None, &cfg), Some(("abc".into(), 3000)), "user ports own every path");
        let any = E2bConfig::default();
        assert_eq!(route(&HeaderMap::new(), p, Some("49983-abc.localhost"), &any), Some(("abc".into(), 49983)));
        assert_eq!(route(&HeaderMap::new(), p, Some("127.0.0.1:7474"), &any), None);
    }
}
