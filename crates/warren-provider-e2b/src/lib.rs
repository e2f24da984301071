//! The E2B backend: workspaces as sandboxes on an E2B-compatible API (E2B's
//! cloud, or another warren), so a deployment can start on E2B and move off
//! it by configuration, with the same typed agent client.
//!
//! - **Control plane**: `POST /sandboxes` (template, timeout, env, metadata),
//!   `GET /v2/sandboxes?metadata=…`, `DELETE`, `/pause`, `/resume`,
//!   `/timeout`, `/metrics`, with the API key in `X-API-Key`.
//! - **Identity**: the sandbox's metadata carries `warren.id` and
//!   `warren.owner`, so a restarted server finds its workspaces by listing.
//! - **envd** is reached the way the service routes it, with the access token
//!   it assigned ([`SandboxInfo::access_token`]): by host name over TLS,
//!   `https://49983-{sandbox}.{domain}` as E2B's cloud does (the default for
//!   an `https://api.{domain}` API), or through a gateway address with the
//!   `E2b-Sandbox-Id` header over plain HTTP/2 (`e2b://HOST:PORT/SANDBOX`;
//!   the default for an `http://` API such as another warren).
//! - **Sizes**: a template has one size; asking for more than it gives is
//!   refused with the template's figures, asking for less is served by it.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use warren_core::{Size, WorkspaceId};
use warren_proto::client::AgentClient;
use warren_proto::endpoint::Endpoint;
use warren_provider::{
    Capabilities, CreateSpec, IsolationTier, NetworkMode, ProviderError, Result, RunState, SandboxInfo,
    SandboxProvider, Stats, TemplateInfo,
};

const M_ID: &str = "warren.id";
const M_OWNER: &str = "warren.owner";
const M_LABEL: &str = "warren.label.";

#[derive(Debug, Clone)]
pub struct E2bBackendConfig {
    /// The API, e.g. `https://api.e2b.app` or `http://10.0.0.5:7474`.
    pub api_url: String,
    pub api_key: String,
    /// HOST:PORT of a gateway envd is reached through with the
    /// `E2b-Sandbox-Id` header (default for an `http://` API: the API's).
    pub envd_addr: Option<String>,
    /// DOMAIN[:PORT] under which envd is served over TLS as
    /// `49983-{sandbox}.{domain}` (default for an `https://api.{domain}` API).
    pub envd_domain: Option<String>,
    /// HOST:PORT to connect to for those names instead of resolving them
    /// (a service without wildcard DNS, or a test).
    pub envd_via: Option<String>,
    /// Metadata value marking this installation's sandboxes.
    pub owner: String,
    /// Remote timeout given at create, seconds (the orchestrator moves it
    /// with every timeout change).
    pub initial_timeout: u64,
    pub call_timeout: Duration,
}

impl E2bBackendConfig {
    pub fn new(api_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        E2bBackendConfig {
            api_url: api_url.into(),
            api_key: api_key.into(),
            envd_addr: None,
            envd_domain: None,
            envd_via: None,
            owner: "warren".into(),
            initial_timeout: 3600,
            call_timeout: Duration::from_secs(60),
        }
    }
}

pub struct E2bProvider {
    cfg: E2bBackendConfig,
    http: reqwest::Client,
    envd: EnvdRoute,
}

/// How envd is reached.
#[derive(Debug, Clone, PartialEq)]
enum EnvdRoute {
    /// Plain HTTP/2 to one address, the sandbox named in a header.
    Gateway(String),
    /// TLS to `49983-{sandbox}.{domain}` (domain may carry `:PORT`).
    Hosts { domain: String, via: Option<String> },
}

impl EnvdRoute {
    fn from_config(cfg: &E2bBackendConfig, url: &reqwest::Url) -> Result<Self> {
        let bad = |m: String| ProviderError::InvalidSpec(m);
        if cfg.envd_addr.is_some() && cfg.envd_domain.is_some() {
            return Err(bad("e2b backend: set envd_addr (gateway) or envd_domain (host routing), not both".into()));
        }
        if let Some(a) = &cfg.envd_addr {
            return Ok(EnvdRoute::Gateway(a.clone()));
        }
        let host = url.host_str().ok_or_else(|| bad(format!("e2b api_url {:?} has no host", cfg.api_url)))?;
        let domain = match (&cfg.envd_domain, url.scheme()) {
            (Some(d), _) => Some(d.clone()),
            // E2B's layout: the API at api.{domain}, sandboxes at {port}-{id}.{domain}.
            (None, "https") => Some(host.strip_prefix("api.").unwrap_or(host).to_string()),
            (None, _) => None,
        };
        match domain {
            Some(d) if d.is_empty() || d.contains('/') => Err(bad(format!("e2b backend: envd_domain {d:?}"))),
            Some(domain) => Ok(EnvdRoute::Hosts { domain, via: cfg.envd_via.clone() }),
            None => Ok(EnvdRoute::Gateway(format!("{host}:{}", url.port_or_known_default().unwrap_or(80)))),
        }
    }

    fn endpoint(&self, sandbox: &str) -> Endpoint {
        match self {
            EnvdRoute::Gateway(addr) => Endpoint::Gateway { addr: addr.clone(), sandbox: sandbox.to_string() },
            EnvdRoute::Hosts { domain, via } => {
                let host = format!("{}-{sandbox}.{domain}", warren_proto::DEFAULT_PORT);
                let host = if domain.contains(':') { host } else { format!("{host}:443") };
                Endpoint::Https { host, via: via.clone() }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "templateID", default)]
    template_id: String,
    #[serde(default)]
    envd_access_token: Option<String>,
    #[serde(default)]
    cpu_count: Option<u32>,
    #[serde(rename = "memoryMB", default)]
    memory_mb: Option<u32>,
    #[serde(rename = "diskSizeMB", default)]
    disk_size_mb: Option<u32>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn unavailable(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable(format!("E2B API: {e}"))
}

/// Unix ms from an RFC 3339 UTC time (`2026-11-29T00:00:00.123Z`); 0 when unreadable.
fn rfc3339_ms(s: &str) -> u64 {
    let p = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<i64>().ok());
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(se)) =
        (p(0, 4), p(5, 7), p(8, 10), p(11, 13), p(14, 16), p(17, 19))
    else {
        return 0;
    };
    let frac = s.get(19..).and_then(|r| r.strip_prefix('.')).map(|r| {
        let digits: String = r.chars().take_while(char::is_ascii_digit).take(3).collect();
        format!("{digits:0<3}").parse::<i64>().unwrap_or(0)
    });
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    (secs * 1000 + frac.unwrap_or(0)).max(0) as u64
}

impl E2bProvider {
    pub fn new(cfg: E2bBackendConfig) -> Result<Self> {
        let url = reqwest::Url::parse(&cfg.api_url)
            .map_err(|e| ProviderError::InvalidSpec(format!("e2b api_url {:?}: {e}", cfg.api_url)))?;
        let envd = EnvdRoute::from_config(&cfg, &url)?;
        let http = reqwest::Client::builder()
            .timeout(cfg.call_timeout)
            .build()
            .map_err(|e| ProviderError::Internal(format!("http client: {e}")))?;
        Ok(E2bProvider { cfg, http, envd })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.api_url.trim_end_matches('/'))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, self.url(path)).header("X-API-Key", &self.cfg.api_key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(unavailable)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(unavailable)?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    fn message(v: &Value) -> String {
        v.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| v.to_string())
    }

    fn classify(status: u16, v: &Value, what: &str) -> ProviderError {
        let m = format!("{what}: {}", Self::message(v));
        match status {
            400 | 422 => ProviderError::InvalidSpec(m),
            401 | 403 => ProviderError::Unavailable(format!("{m} (check the E2B API key)")),
            404 => ProviderError::NotFound(m),
            409 => ProviderError::AlreadyExists(m),
            429 => ProviderError::Capacity(m),
            500..=599 => ProviderError::Unavailable(m),
            _ => ProviderError::Internal(format!("{m} (status {status})")),
        }
    }

    /// Our sandboxes, optionally only the one for `id`.
    async fn find(&self, id: Option<&WorkspaceId>) -> Result<Vec<Detail>> {
        let mut filter = format!("{M_OWNER}={}", self.cfg.owner);
        if let Some(id) = id {
            filter.push_str(&format!("&{M_ID}={id}"));
        }
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut url =
                reqwest::Url::parse(&self.url("/v2/sandboxes")).map_err(|e| ProviderError::Internal(e.to_string()))?;
            url.query_pairs_mut()
                .append_pair("metadata", &filter)
                .append_pair("state", "running,paused")
                .append_pair("limit", "1000");
            if let Some(t) = &next {
                url.query_pairs_mut().append_pair("nextToken", t);
            }
            let resp = self.http.get(url).header("X-API-Key", &self.cfg.api_key).send().await.map_err(unavailable)?;
            let status = resp.status().as_u16();
            next = resp.headers().get("x-next-token").and_then(|v| v.to_str().ok()).map(str::to_string);
            let v: Value = resp.json().await.map_err(unavailable)?;
            if status != 200 {
                return Err(Self::classify(status, &v, "list sandboxes"));
            }
            let page: Vec<Detail> =
                serde_json::from_value(v).map_err(|e| ProviderError::Internal(format!("list sandboxes: {e}")))?;
            out.extend(page);
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    async fn detail_of(&self, id: &WorkspaceId) -> Result<Detail> {
        self.find(Some(id)).await?.into_iter().next().ok_or_else(|| ProviderError::NotFound(id.to_string()))
    }

    fn info(&self, d: Detail) -> Option<SandboxInfo> {
        let id: WorkspaceId = d.metadata.get(M_ID)?.parse().ok()?;
        let endpoint = self.envd.endpoint(&d.sandbox_id);
        Some(SandboxInfo {
            id,
            template: d.template_id.clone(),
            size: Size {
                millicpus: d.cpu_count.unwrap_or(0) * 1000,
                memory_mib: d.memory_mb.unwrap_or(0),
                disk_mib: d.disk_size_mb.unwrap_or(0),
                ..Size::default()
            },
            state: if d.state.as_deref() == Some("paused") { RunState::Paused } else { RunState::Running },
            endpoint,
            created_at_ms: d.started_at.as_deref().map(rfc3339_ms).unwrap_or(0),
            labels: d
                .metadata
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(M_LABEL).map(|k| (k.to_string(), v.clone())))
                .collect(),
            access_token: d.envd_access_token,
        })
    }

    async fn sandbox_id(&self, id: &WorkspaceId) -> Result<String> {
        Ok(self.detail_of(id).await?.sandbox_id)
    }

    async fn post_sandbox(&self, id: &WorkspaceId, action: &str, body: Option<Value>) -> Result<()> {
        let sid = self.sandbox_id(id).await?;
        let (status, v) = self.call(reqwest::Method::POST, &format!("/sandboxes/{sid}/{action}"), body).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(Self::classify(status, &v, &format!("{action} {id}")))
        }
    }
}

#[async_trait]
impl SandboxProvider for E2bProvider {
    fn name(&self) -> &str {
        "e2b"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolation: IsolationTier::Microvm,
            pause: true,
            network_modes: vec![NetworkMode::Bridge],
            isolated_filesystem: true,
            survives_server_restart: true,
            reachable_from_any_host: true,
        }
    }

    async fn templates(&self) -> Result<Vec<TemplateInfo>> {
        let (status, v) = self.call(reqwest::Method::GET, "/templates", None).await?;
        if status != 200 {
            return Err(Self::classify(status, &v, "list templates"));
        }
        let list = v.as_array().cloned().unwrap_or_default();
        let mut out = Vec::new();
        for t in list {
            let id = t.get("templateID").and_then(Value::as_str).unwrap_or_default().to_string();
            let names: Vec<String> = t
                .get("aliases")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let desc = format!(
                "E2B template {id} ({} vCPU, {} MB)",
                t.get("cpuCount").cloned().unwrap_or(Value::Null),
                t.get("memoryMB").cloned().unwrap_or(Value::Null)
            );
            let revision = t.get("buildID").and_then(Value::as_str).unwrap_or(&id).to_string();
            for name in std::iter::once(id.clone()).chain(names) {
                out.push(TemplateInfo { name, description: desc.clone(), revision: revision.clone(), isolation: None });
            }
        }
        Ok(out)
    }

    async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo> {
        spec.size.validate().map_err(|e| ProviderError::InvalidSpec(e.to_string()))?;
        match self.detail_of(&spec.id).await {
            Ok(_) => return Err(ProviderError::AlreadyExists(spec.id.to_string())),
            Err(ProviderError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let mut metadata: BTreeMap<String, String> =
            spec.labels.iter().map(|(k, v)| (format!("{M_LABEL}{k}"), v.clone())).collect();
        metadata.insert(M_ID.into(), spec.id.to_string());
        metadata.insert(M_OWNER.into(), self.cfg.owner.clone());
        let body = json!({
            "templateID": spec.template,
            "timeout": self.cfg.initial_timeout,
            "metadata": metadata,
            "envVars": spec.env,
            "allow_internet_access": spec.network != NetworkMode::None,
        });
        let (status, v) = self.call(reqwest::Method::POST, "/sandboxes", Some(body)).await?;
        if status != 201 && status != 200 {
            return Err(match Self::classify(status, &v, &format!("template {}", spec.template)) {
                ProviderError::NotFound(m) => ProviderError::InvalidSpec(m),
                other => other,
            });
        }
        let d = self.detail_of(&spec.id).await?;
        let (cpu, mem) = (d.cpu_count.unwrap_or(0), d.memory_mb.unwrap_or(0));
        if spec.size.millicpus > cpu * 1000 || spec.size.memory_mib > mem {
            let _ = self.call(reqwest::Method::DELETE, &format!("/sandboxes/{}", d.sandbox_id), None).await;
            return Err(ProviderError::InvalidSpec(format!(
                "template {} gives {cpu} vCPU and {mem} MiB; {} millicpus and {} MiB were asked for",
                spec.template, spec.size.millicpus, spec.size.memory_mib
            )));
        }
        let info = self.info(d).ok_or_else(|| ProviderError::Internal("created sandbox lost its metadata".into()))?;
        let agent = AgentClient::new(info.endpoint.clone()).with_access_token(info.access_token.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while agent.health().await.is_err() {
            if tokio::time::Instant::now() > deadline {
                let _ = self.destroy(&spec.id).await;
                return Err(unavailable(format!("sandbox of {} did not answer through the gateway", spec.id)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(info)
    }

    async fn inspect(&self, id: &WorkspaceId) -> Result<SandboxInfo> {
        let d = self.detail_of(id).await?;
        self.info(d).ok_or_else(|| ProviderError::Internal(format!("sandbox of {id} has unreadable metadata")))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        Ok(self.find(None).await?.into_iter().filter_map(|d| self.info(d)).collect())
    }

    async fn pause(&self, id: &WorkspaceId) -> Result<()> {
        self.post_sandbox(id, "pause", None).await
    }

    async fn resume(&self, id: &WorkspaceId) -> Result<()> {
        self.post_sandbox(id, "resume", Some(json!({"timeout": self.cfg.initial_timeout}))).await
    }

    /// E2B has no stopped state: stopping ends the sandbox.
    async fn stop(&self, id: &WorkspaceId) -> Result<()> {
        self.destroy(id).await
    }

    async fn destroy(&self, id: &WorkspaceId) -> Result<()> {
        let sid = match self.sandbox_id(id).await {
            Ok(s) => s,
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (status, v) = self.call(reqwest::Method::DELETE, &format!("/sandboxes/{sid}"), None).await?;
        match status {
            200..=299 | 404 => Ok(()),
            _ => Err(Self::classify(status, &v, &format!("kill {id}"))),
        }
    }

    async fn stats(&self, id: &WorkspaceId) -> Result<Stats> {
        let d = self.detail_of(id).await?;
        let (status, v) =
            self.call(reqwest::Method::GET, &format!("/sandboxes/{}/metrics", d.sandbox_id), None).await?;
        if status != 200 {
            return Err(Self::classify(status, &v, &format!("metrics of {id}")));
        }
        let m = v.as_array().and_then(|a| a.last()).cloned().unwrap_or(Value::Null);
        let num = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0);
        // E2B reports no process count: count /proc entries through envd.
        let info = self.info(d).ok_or_else(|| ProviderError::Internal("unreadable metadata".into()))?;
        let agent = AgentClient::new(info.endpoint.clone()).with_access_token(info.access_token.clone());
        let pids = match agent.list_dir("/proc", 1).await {
            Ok(entries) => entries.iter().filter(|e| e.name.bytes().all(|b| b.is_ascii_digit())).count() as u64,
            Err(_) => 0,
        };
        Ok(Stats {
            cpu_ns: 0,
            memory_bytes: num("memUsed"),
            memory_limit_bytes: num("memTotal"),
            disk_used_bytes: num("diskUsed"),
            disk_total_bytes: num("diskTotal"),
            pids,
        })
    }

    async fn set_deadline(&self, id: &WorkspaceId, seconds_from_now: u64) -> Result<()> {
        // A little past warren's own deadline, so warren's reaper ends it.
        self.post_sandbox(id, "timeout", Some(json!({"timeout": seconds_from_now + 60}))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(api: &str, f: impl FnOnce(&mut E2bBackendConfig)) -> Result<EnvdRoute> {
        let mut c = E2bBackendConfig::new(api, "k");
        f(&mut c);
        EnvdRoute::from_config(&c, &reqwest::Url::parse(api).unwrap())
    }

    #[test]
    fn envd_routes_follow_the_api_url_unless_configured() {
        // E2B's cloud: TLS by host name under the API's domain.
        let r = route("https://api.e2b.app", |_| {}).unwrap();
        assert_eq!(r.endpoint("sb1").to_string(), "https://49983-sb1.e2b.app:443");
        // Another warren over plain HTTP: its gateway, by header.
        let r = route("http://10.0.0.5:7474", |_| {}).unwrap();
        assert_eq!(r.endpoint("sb1").to_string(), "e2b://10.0.0.5:7474/sb1");
        let r = route("https://api.example.com", |c| {
            c.envd_domain = Some("sandboxes.example.com:8443".into());
            c.envd_via = Some("127.0.0.1:9443".into());
        })
        .unwrap();
        assert_eq!(r.endpoint("x").to_string(), "https://49983-x.sandboxes.example.com:8443?via=127.0.0.1:9443");
        let r = route("https://api.e2b.app", |c| c.envd_addr = Some("gw:1".into())).unwrap();
        assert_eq!(r, EnvdRoute::Gateway("gw:1".into()));
        let e = route("https://api.e2b.app", |c| {
            c.envd_addr = Some("gw:1".into());
            c.envd_domain = Some("d".into());
        })
        .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn times_parse() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(rfc3339_ms("1970-01-02T00:00:01.5Z"), 86_401_500);
        assert_eq!(rfc3339_ms("2026-11-29T00:00:00.123Z"), 1_795_910_400_123);
        assert_eq!(rfc3339_ms("garbage"), 0);
    }

    #[test]
    fn errors_are_classified() {
        let v = json!({"message": "nope"});
        assert!(matches!(E2bProvider::classify(404, &v, "x"), ProviderError::NotFound(_)));
        assert!(matches!(E2bProvider::classify(429, &v, "x"), ProviderError::Capacity(_)));
        assert!(matches!(E2bProvider::classify(401, &v, "x"), ProviderError::Unavailable(m) if m.contains("API key")));
        assert!(matches!(E2bProvider::classify(400, &v, "x"), ProviderError::InvalidSpec(_)));
        assert!(matches!(E2bProvider::classify(503, &v, "x"), ProviderError::Unavailable(_)));
    }
}
