//! The OpenAPI document of the native API. [`ROUTES`] is the single list of
//! operations; a test calls every one of them against the real router.

use axum::Json;
use serde_json::{json, Value};

/// (method, path, summary, success status)
pub const ROUTES: &[(&str, &str, &str, u16)] = &[
    ("post", "/v1/workspaces", "Create a workspace", 201),
    ("get", "/v1/workspaces", "List workspaces", 200),
    ("get", "/v1/workspaces/{id}", "Describe a workspace", 200),
    ("delete", "/v1/workspaces/{id}", "Kill a workspace", 204),
    ("post", "/v1/workspaces/{id}/timeout", "Set the timeout (seconds from now)", 200),
    ("post", "/v1/workspaces/{id}/pause", "Pause a workspace", 200),
    ("post", "/v1/workspaces/{id}/resume", "Resume a paused workspace", 200),
    ("get", "/v1/workspaces/{id}/stats", "Resource usage", 200),
    ("post", "/v1/workspaces/{id}/exec", "Run a command; the reply is NDJSON events", 200),
    ("get", "/v1/workspaces/{id}/pty", "Interactive terminal over WebSocket", 101),
    ("get", "/v1/workspaces/{id}/files", "Download a file (streamed)", 200),
    ("put", "/v1/workspaces/{id}/files", "Upload a file (streamed)", 200),
    ("get", "/v1/templates", "List templates", 200),
    (
        "post",
        "/v1/templates/{name}",
        "Import an OCI image archive (docker save / OCI layout tar) as a template; admin",
        201,
    ),
    ("post", "/v1/keys", "Create an API key for a tenant (shown once); admin", 201),
    ("get", "/v1/keys", "List API keys (prefixes only); admin", 200),
    ("delete", "/v1/keys/{prefix}", "Revoke the keys with this prefix; admin", 204),
    (
        "get",
        "/v1/usage",
        "Usage per tenant and period (from, to in unix seconds; bucket hour|day|month; format json|csv)",
        200,
    ),
    (
        "get",
        "/v1/invoice",
        "Invoice preview and gross margin per tenant for a month (month=YYYY-MM), priced from the catalog",
        200,
    ),
    ("get", "/v1/pools", "Warm pools: target, ready, warming, hits, misses, refill time; admin", 200),
    ("get", "/v1/health", "Health (no auth)", 200),
    ("get", "/v1/openapi.json", "This document (no auth)", 200),
    ("get", "/metrics", "Prometheus metrics (no auth)", 200),
];

fn error_schema() -> Value {
    let codes: Vec<Value> = warren_api::ErrorCode::ALL.iter().filter_map(|c| serde_json::to_value(c).ok()).collect();
    json!({"type": "object", "required": ["code", "message"],
           "properties": {"code": {"type": "string", "enum": codes}, "message": {"type": "string"}}})
}

pub fn build() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, status) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": summary,
            "responses": {
                status.to_string(): {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if path.contains("{prefix}") {
            op["parameters"] =
                json!([{"name": "prefix", "in": "path", "required": true, "schema": {"type": "string"}}]);
        }
        if path.contains("{name}") {
            op["parameters"] = json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}}]);
        }
        if path.contains("{id}") {
            op["parameters"] = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9]{1,63}$"}}]);
        }
        if !["/v1/health", "/v1/openapi.json", "/metrics"].contains(path) {
            op["security"] = json!([{"bearer": []}, {"apiKey": []}]);
        }
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "warren", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Native API of warren. Errors are JSON {code, message} with a stable string code (not_found, quota_exceeded, …); the E2B-compatible routes answer E2B's {code: <HTTP status>, message}."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            },
            "schemas": {"Error": error_schema()}
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}
