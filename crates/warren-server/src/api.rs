//! Native API handlers: workspaces, templates, files, health.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use warren_core::WorkspaceId;
use warren_orchestrator::CreateRequest;
use warren_proto::json::Millis;
use warren_store::WorkspaceRecord;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub use warren_api::{CreateWorkspace, KeyView, NewKey, SetTimeout, WorkspaceView};

/// RFC 3339 with millisecond precision.
pub fn time(ms: u64) -> String {
    Millis(ms).to_string()
}

/// Serializes a record as a [`WorkspaceView`] without copying it.
pub struct ViewRef<'a>(pub &'a WorkspaceRecord);

impl Serialize for ViewRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let r = self.0;
        let mut st = s.serialize_struct("WorkspaceView", 10)?;
        st.serialize_field("id", r.id.as_str())?;
        // Pool members (no tenant) are never listed.
        st.serialize_field("tenant", r.tenant().map_or("", |t| t.as_str()))?;
        st.serialize_field("template", &r.template)?;
        st.serialize_field("state", r.state.as_str())?;
        st.serialize_field("provider", &r.provider)?;
        st.serialize_field("size", &r.size)?;
        st.serialize_field("createdAt", &DisplayStr(Millis(r.created_at_ms)))?;
        st.serialize_field("expiresAt", &DisplayStr(Millis(r.expires_at_ms)))?;
        st.serialize_field("metadata", &r.metadata)?;
        if let Some(e) = &r.error {
            st.serialize_field("error", e)?;
        }
        st.end()
    }
}

struct DisplayStr<T>(T);

impl<T: std::fmt::Display> Serialize for DisplayStr<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A record as the API shows it.
pub fn view(r: &WorkspaceRecord) -> WorkspaceView {
    {
        WorkspaceView {
            id: r.id.to_string(),
            tenant: r.tenant().map(|t| t.to_string()).unwrap_or_default(),
            template: r.template.clone(),
            state: r.state.as_str().to_string(),
            provider: r.provider.clone(),
            size: r.size,
            created_at: time(r.created_at_ms),
            expires_at: time(r.expires_at_ms),
            metadata: r.metadata.clone(),
            error: r.error.clone(),
        }
    }
}

pub fn parse_id(id: &str) -> ApiResult<WorkspaceId> {
    id.parse().map_err(|_| ApiError::not_found(format!("workspace {id} not found")))
}

/// Parses a JSON body with a clear error (axum's own rejections are not JSON).
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

pub async fn create(State(s): State<AppState>, caller: Caller, body: axum::body::Bytes) -> ApiResult<Response> {
    let b: CreateWorkspace = json_body(&body)?;
    let started = std::time::Instant::now();
    let rec = s
        .orch
        .create(CreateRequest {
            tenant: caller.tenant.clone(),
            template: b.template.unwrap_or_else(|| "base".into()),
            size: b.size,
            timeout: b.timeout.map(Duration::from_secs),
            env: b.env,
            metadata: b.metadata,
            network: b.network.map(|n| match n {
                warren_api::Network::None => warren_provider::NetworkMode::None,
                warren_api::Network::Bridge => warren_provider::NetworkMode::Bridge,
            }),
        })
        .await;
    s.metrics.observe_create(started.elapsed(), rec.is_ok());
    let rec = rec?;
    Ok((StatusCode::CREATED, Json(view(&rec))).into_response())
}

/// Default and largest page of `GET /v1/workspaces`.
pub const PAGE_DEFAULT: usize = 1000;
pub const PAGE_MAX: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub limit: Option<usize>,
    pub next_token: Option<String>,
    /// Comma-separated states to keep (e.g. `running,paused`).
    pub state: Option<String>,
}

/// One page of records (oldest first), and the token of the next page when
/// more remain. Tokens are `<created ms>.<id>` of the last record given.
pub struct Page<'a> {
    pub items: Vec<&'a WorkspaceRecord>,
    pub next: Option<String>,
}

pub fn paginate<'a>(
    records: impl Iterator<Item = &'a WorkspaceRecord>,
    token: Option<&str>,
    limit: usize,
) -> ApiResult<Page<'a>> {
    let after = match token {
        None => None,
        Some(t) => {
            let bad = || ApiError::bad_request("invalid nextToken");
            let (ms, id) = t.split_once('.').ok_or_else(bad)?;
            Some((ms.parse::<u64>().map_err(|_| bad())?, id.to_string()))
        }
    };
    let mut items: Vec<&WorkspaceRecord> = records
        .filter(|r| after.as_ref().is_none_or(|(ms, id)| (r.created_at_ms, r.id.as_str()) > (*ms, id.as_str())))
        .take(limit + 1)
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(|r| format!("{}.{}", r.created_at_ms, r.id)) } else { None };
    Ok(Page { items, next })
}

/// Sets `X-Next-Token` when there is a next page.
pub fn with_next_token(mut resp: Response, next: Option<String>) -> Response {
    if let Some(v) = next.and_then(|t| axum::http::HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", v);
    }
    resp
}

/// Lists workspaces oldest first, a page at a time: when more remain, the
/// reply carries `X-Next-Token`, to pass back as `nextToken`.
pub async fn list(State(s): State<AppState>, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {PAGE_MAX}")));
    }
    let states: Option<Vec<&str>> = q.state.as_deref().map(|s| s.split(',').map(str::trim).collect());
    let all = s.orch.list(caller.scope()).await?;
    let matching = all.iter().filter(|r| states.as_ref().is_none_or(|st| st.contains(&r.state.as_str())));
    let page = paginate(matching, q.next_token.as_deref(), limit)?;
    let body: Vec<ViewRef<'_>> = page.items.iter().map(|r| ViewRef(r)).collect();
    Ok(with_next_token(Json(body).into_response(), page.next))
}

pub async fn info(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<WorkspaceView>> {
    let rec = s.orch.get(caller.scope(), &parse_id(&id)?).await?;
    Ok(Json(view(&rec)))
}

pub async fn kill(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.orch.kill(caller.scope(), &parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn timeout(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<WorkspaceView>> {
    let b: SetTimeout = json_body(&body)?;
    let rec = s.orch.set_timeout(caller.scope(), &parse_id(&id)?, Duration::from_secs(b.timeout)).await?;
    Ok(Json(view(&rec)))
}

pub async fn pause(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    let rec = s.orch.pause(caller.scope(), &parse_id(&id)?).await?;
    Ok(Json(view(&rec)))
}

pub async fn resume(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    let rec = s.orch.resume(caller.scope(), &parse_id(&id)?).await?;
    Ok(Json(view(&rec)))
}

pub async fn stats(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<warren_provider::Stats>> {
    Ok(Json(s.orch.stats(caller.scope(), &parse_id(&id)?).await?))
}

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    pub path: Option<String>,
    pub user: Option<String>,
}

fn required_path(q: &FileQuery) -> ApiResult<&str> {
    q.path
        .as_deref()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("query parameter 'path' is required"))
}

/// Streams a file out of a workspace.
pub async fn download(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> ApiResult<Response> {
    let path = required_path(&q)?;
    let (_, agent) = s.orch.agent(caller.scope(), &parse_id(&id)?).await?;
    let agent = match &q.user {
        Some(u) => agent.as_user(u),
        None => agent,
    };
    let body = agent.read_file(path).await?;
    let stream = body.into_data_stream();
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(stream)).into_response())
}

#[derive(Serialize)]
struct Uploaded {
    path: String,
}

/// Streams a request body into a file of a workspace.
pub async fn upload(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    body: Body,
) -> ApiResult<Response> {
    let path = required_path(&q)?.to_string();
    let (_, agent) = s.orch.agent(caller.scope(), &parse_id(&id)?).await?;
    let agent = match &q.user {
        Some(u) => agent.as_user(u),
        None => agent,
    };
    let stream = TryStreamExt::map_ok(
        TryStreamExt::map_err(body.into_data_stream(), std::io::Error::other),
        hyper::body::Frame::data,
    );
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let info = agent.write_file(&path, body).await?;
    let path = info.first().map(|i| i.path.clone()).unwrap_or(path);
    Ok((StatusCode::OK, Json(Uploaded { path })).into_response())
}

/// `POST /v1/templates/{name}`: the body is an OCI image archive (`docker
/// save`, or an OCI layout as a tar), streamed to disk, then imported. Admin only.
pub async fn import_template(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    if !caller.admin {
        return Err(ApiError::forbidden("importing templates needs an admin key"));
    }
    let dir = std::path::Path::new("/var/tmp");
    let _ = tokio::fs::create_dir_all(dir).await;
    let path = dir.join(format!("warren-import-{}.tar", warren_core::random_token(8)));
    let result = async {
        use futures_util::StreamExt as _;
        use tokio::io::AsyncWriteExt as _;
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::internal(format!("staging the archive: {e}")))?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
            f.write_all(&chunk).await.map_err(|e| ApiError::internal(format!("staging the archive: {e}")))?;
        }
        f.flush().await.map_err(|e| ApiError::internal(format!("staging the archive: {e}")))?;
        Ok::<_, ApiError>(s.orch.import_template(&name, &path).await?)
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

fn key_view(k: &warren_store::ApiKeyRecord) -> KeyView {
    KeyView {
        prefix: k.prefix.clone(),
        tenant: k.tenant.to_string(),
        name: k.name.clone(),
        admin: k.admin,
        created_at: time(k.created_at_ms),
        revoked: k.revoked,
    }
}

fn require_admin(caller: &Caller) -> ApiResult<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("this needs an admin key"))
    }
}

/// `POST /v1/keys` (admin): a new key for a tenant, shown once.
pub async fn create_key(State(s): State<AppState>, caller: Caller, body: axum::body::Bytes) -> ApiResult<Response> {
    require_admin(&caller)?;
    let b: NewKey = json_body(&body)?;
    let tenant = warren_core::TenantId::new(b.tenant).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let key = crate::auth::new_key();
    let rec = crate::auth::record(&key, &tenant, &b.name, b.admin, s.orch.now_ms());
    s.orch.put_api_key(&rec).await?;
    Ok((StatusCode::CREATED, Json(warren_api::CreatedKey { view: key_view(&rec), key })).into_response())
}

/// `GET /v1/keys` (admin).
pub async fn list_keys(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<KeyView>>> {
    require_admin(&caller)?;
    let mut all = s.orch.api_keys().await?;
    all.sort_by_key(|k| k.created_at_ms);
    Ok(Json(all.iter().map(key_view).collect()))
}

/// `DELETE /v1/keys/{prefix}` (admin): revokes every key with that public prefix.
pub async fn revoke_key(
    State(s): State<AppState>,
    caller: Caller,
    Path(prefix): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&caller)?;
    let all = s.orch.api_keys().await?;
    let matching: Vec<_> = all.into_iter().filter(|k| k.prefix == prefix && !k.revoked).collect();
    if matching.is_empty() {
        return Err(ApiError::not_found(format!("no active key with prefix {prefix}")));
    }
    for mut k in matching {
        k.revoked = true;
        s.orch.put_api_key(&k).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    /// Unix seconds; default: 30 days ago.
    pub from: Option<u64>,
    /// Unix seconds; default: now.
    pub to: Option<u64>,
    /// hour | day | month (default day).
    pub bucket: Option<String>,
    /// json (default) | csv
    pub format: Option<String>,
}

/// The whole event log (usage and invoices are computed from it).
async fn all_events(s: &AppState) -> ApiResult<Vec<warren_store::Event>> {
    Ok(s.orch.events().await?)
}

/// `GET /v1/usage`: running and paused seconds, vCPU- and GiB-seconds per
/// tenant and period, derived from the event log. Tenants see their own;
/// admins see every tenant and the pool's idle time (infrastructure).
pub async fn usage(State(s): State<AppState>, caller: Caller, Query(q): Query<UsageQuery>) -> ApiResult<Response> {
    use warren_orchestrator::usage::{rollup, Bucket};
    let bucket = match q.bucket.as_deref().unwrap_or("day") {
        "hour" => Bucket::Hour,
        "day" => Bucket::Day,
        "month" => Bucket::Month,
        other => return Err(ApiError::bad_request(format!("bucket {other:?}: hour, day or month"))),
    };
    let now = s.orch.now_ms();
    let to = q.to.map(|t| t.saturating_mul(1000)).unwrap_or(now);
    let from = q.from.map(|t| t.saturating_mul(1000)).unwrap_or(now.saturating_sub(30 * 86_400_000));
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    let events = all_events(&s).await?;
    let rows: Vec<_> = rollup(&events, now, from, to, bucket)
        .into_iter()
        .filter(|r| caller.admin || r.tenant == caller.tenant.as_str())
        .collect();
    if q.format.as_deref() == Some("csv") {
        let mut out =
            String::from("tenant,period_start,running_seconds,paused_seconds,vcpu_seconds,gib_seconds,backend\n");
        for r in &rows {
            out.push_str(&format!(
                "{},{},{:.3},{:.3},{:.3},{:.3},{}\n",
                r.tenant,
                Millis(r.period_start_ms),
                r.running_seconds,
                r.paused_seconds,
                r.vcpu_seconds,
                r.gib_seconds,
                r.backend
            ));
        }
        return Ok(([(axum::http::header::CONTENT_TYPE, "text/csv")], out).into_response());
    }
    Ok(Json(rows).into_response())
}

#[derive(Deserialize)]
pub struct InvoiceQuery {
    month: Option<String>,
}

/// `GET /v1/invoice?month=YYYY-MM`: revenue, infrastructure cost and gross
/// margin per tenant from the month's metered usage. A tenant sees its own
/// line; an admin every tenant plus the warm pool's infrastructure cost.
pub async fn invoice(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<InvoiceQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    use warren_orchestrator::usage::{month_bounds, month_of, rollup, Bucket};
    let now = s.orch.now_ms();
    let month = q.month.unwrap_or_else(|| month_of(now));
    let (from, to) =
        month_bounds(&month).ok_or_else(|| ApiError::bad_request(format!("month {month:?}: expected YYYY-MM")))?;
    let events = all_events(&s).await?;
    let mut per_tenant: std::collections::BTreeMap<(String, String), warren_cost::invoice::TenantUsage> =
        Default::default();
    for r in rollup(&events, now, from, to.min(now.max(from + 1)), Bucket::Month) {
        if !caller.admin && r.tenant != caller.tenant.as_str() {
            continue;
        }
        let u = per_tenant.entry((r.tenant.clone(), r.backend.clone())).or_insert_with(|| {
            warren_cost::invoice::TenantUsage {
                tenant: r.tenant.clone(),
                backend: r.backend.clone(),
                ..Default::default()
            }
        });
        u.running_seconds += r.running_seconds;
        u.paused_seconds += r.paused_seconds;
        u.vcpu_seconds += r.vcpu_seconds;
        u.gib_seconds += r.gib_seconds;
    }
    let usage: Vec<_> = per_tenant.into_values().collect();
    let cost = &s.cost;
    let class_of = |t: &str| cost.tenant_classes.get(t).cloned().unwrap_or_else(|| cost.default_class.clone());
    let inv = warren_cost::invoice::invoice(
        &cost.catalog,
        &cost.setup,
        &usage,
        warren_orchestrator::usage::POOL_LABEL,
        &class_of,
        &|b: &str| cost.backend_setups.get(b).cloned(),
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut v =
        serde_json::to_value(&inv).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    v["month"] = month.into();
    if !caller.admin {
        // Infrastructure is the operator's business, not the tenant's.
        if let Some(o) = v.as_object_mut() {
            o.remove("infrastructure");
            o.remove("costJpy");
            o.remove("marginPct");
            if let Some(lines) = o.get_mut("lines").and_then(|l| l.as_array_mut()) {
                for l in lines {
                    if let Some(l) = l.as_object_mut() {
                        for k in ["costUsd", "costJpy", "marginPct", "byBackend"] {
                            l.remove(k);
                        }
                    }
                }
            }
        }
    }
    Ok(Json(v))
}

/// `GET /v1/pools`: warm pools (admin).
pub async fn pools(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<warren_orchestrator::pool::PoolStatus>>> {
    if !caller.admin {
        return Err(ApiError::forbidden("pool status needs an admin key"));
    }
    Ok(Json(s.orch.pool_status().await?))
}

pub async fn templates(
    State(s): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<Vec<warren_provider::TemplateInfo>>> {
    Ok(Json(s.orch.templates().await?))
}

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
    provider: String,
    version: &'static str,
}

pub async fn health(State(s): State<AppState>) -> Json<Health> {
    Json(Health { status: "ok", provider: s.orch.provider().name().to_string(), version: env!("CARGO_PKG_VERSION") })
}

pub async fn no_route(req: axum::extract::Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
}
