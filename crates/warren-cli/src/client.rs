//! The client commands: they talk to a warren server over its /v1 API.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use warren_api::{CreateWorkspace, CreatedKey, ErrorCode, KeyView, NewKey, SetTimeout, TemplateView, WorkspaceView};

use crate::Conn;

/// An API error: its status and the server's error body, for messages and
/// exit codes.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiFailure {
    /// From a reply's status and body: warren's `{code, message}`, or any
    /// other body (a proxy's page) as the message.
    fn of(status: u16, body: &str) -> Self {
        match serde_json::from_str::<warren_api::ErrorBody>(body) {
            Ok(b) => ApiFailure { status, code: b.code, message: b.message },
            Err(_) => ApiFailure { status, code: ErrorCode::from_status(status), message: body.trim().to_string() },
        }
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiFailure {}

pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<ApiFailure>().map(|f| f.code) {
        Some(ErrorCode::NotFound) => 3,
        Some(ErrorCode::Unauthorized | ErrorCode::Forbidden) => 4,
        _ => 1,
    }
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Template name.
    #[arg(long, short, default_value = "base")]
    pub template: String,
    /// Seconds until the workspace is reaped.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// CPUs (e.g. 0.5, 2).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory: Option<u32>,
    /// Writable disk in MiB.
    #[arg(long)]
    pub disk: Option<u32>,
    /// Environment variable KEY=VALUE for every process (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long = "meta")]
    pub meta: Vec<String>,
    /// Network: none (loopback only, the default) or bridge (own address, NAT egress).
    #[arg(long)]
    pub network: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    pub id: String,
    /// Program and arguments (after `--`). With one argument holding spaces,
    /// it is run by `bash -lc`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    #[arg(long, short = 'w')]
    pub cwd: Option<String>,
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Send this process's stdin to the command.
    #[arg(long, short = 'i')]
    pub stdin: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum TemplateCmd {
    /// Import an OCI image archive (`docker save IMAGE -o image.tar`, or an
    /// OCI layout in a tar) as template NAME.
    Import { name: String, archive: PathBuf },
}

#[derive(Debug, clap::Subcommand)]
pub enum KeyCmd {
    /// Create a key for a tenant; the key is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
        /// An admin key (sees every tenant, manages keys).
        #[arg(long)]
        admin: bool,
    },
    /// Revoke the keys with this prefix (as `warren keys` lists it).
    Revoke { prefix: String },
}

#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    pub id: String,
    #[arg(long, short = 'u')]
    pub user: Option<String>,
}

fn kv(list: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    list.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{what} {s:?}: expected KEY=VALUE"))
        })
        .collect()
}

pub struct Client {
    conn: Conn,
    key: String,
    http: reqwest::Client,
}

fn default_key() -> Option<String> {
    let dir = std::env::var_os("WARREN_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/lib/warren".into());
    std::fs::read_to_string(dir.join("admin.key")).ok().map(|s| s.trim().to_string())
}

impl Client {
    pub fn new(conn: Conn) -> Result<Self> {
        let key = conn
            .api_key
            .clone()
            .or_else(default_key)
            .ok_or_else(|| anyhow!("no API key: set WARREN_API_KEY (or --api-key)"))?;
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        Ok(Client { conn, key, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.conn.url.trim_end_matches('/'), path)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = rb
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach warren at {}", self.conn.url))?;
        if resp.status().is_success() || resp.status().as_u16() == 101 {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Err(ApiFailure::of(status, &text).into())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.send(self.http.get(self.url(path))).await?.json().await?)
    }

    fn print_json(v: &impl serde::Serialize) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    pub async fn create(&self, a: CreateArgs) -> Result<u8> {
        let mut body = CreateWorkspace {
            template: Some(a.template),
            timeout: a.timeout,
            env: kv(&a.env, "--env")?,
            metadata: kv(&a.meta, "--meta")?,
            network: match a.network.as_deref() {
                None => None,
                Some("none") => Some(warren_api::Network::None),
                Some("bridge") => Some(warren_api::Network::Bridge),
                Some(other) => bail!("--network {other:?}: none or bridge"),
            },
            size: None,
        };
        if a.cpus.is_some() || a.memory.is_some() || a.disk.is_some() {
            let d = warren_core::Size::default();
            body.size = Some(warren_core::Size {
                millicpus: a.cpus.map(|c| (c * 1000.0).round() as u32).unwrap_or(d.millicpus),
                memory_mib: a.memory.unwrap_or(d.memory_mib),
                disk_mib: a.disk.unwrap_or(d.disk_mib),
                pids: d.pids,
            });
        }
        let ws: WorkspaceView = self.send(self.http.post(self.url("/v1/workspaces")).json(&body)).await?.json().await?;
        if self.conn.json {
            Self::print_json(&ws)?;
        } else {
            println!("{}", ws.id);
        }
        Ok(0)
    }

    pub async fn ls(&self) -> Result<u8> {
        let all: Vec<WorkspaceView> = self.get("/v1/workspaces").await?;
        if self.conn.json {
            Self::print_json(&all)?;
            return Ok(0);
        }
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    w.template.clone(),
                    w.state.clone(),
                    format!("{}", f64::from(w.size.millicpus) / 1000.0),
                    w.size.memory_mib.to_string(),
                    w.created_at.clone(),
                    w.expires_at.clone(),
                ]
            })
            .collect();
        table(&["ID", "TEMPLATE", "STATE", "CPUS", "MEMORY MIB", "CREATED", "EXPIRES"], &rows);
        Ok(0)
    }

    pub async fn info(&self, id: &str) -> Result<u8> {
        let w: WorkspaceView = self.get(&format!("/v1/workspaces/{id}")).await?;
        if self.conn.json {
            Self::print_json(&w)?;
        } else {
            for (k, v) in [
                ("id", Some(&w.id)),
                ("tenant", Some(&w.tenant)),
                ("template", Some(&w.template)),
                ("state", Some(&w.state)),
                ("provider", Some(&w.provider)),
                ("createdAt", Some(&w.created_at)),
                ("expiresAt", Some(&w.expires_at)),
                ("error", w.error.as_ref()),
            ] {
                if let Some(v) = v {
                    println!("{k:<10} {v}");
                }
            }
            println!("{:<10} {}", "size", serde_json::to_string(&w.size)?);
            if !w.metadata.is_empty() {
                println!("{:<10} {}", "metadata", serde_json::to_string(&w.metadata)?);
            }
        }
        Ok(0)
    }

    pub async fn kill(&self, ids: &[String]) -> Result<u8> {
        let mut worst = 0;
        for id in ids {
            match self.send(self.http.delete(self.url(&format!("/v1/workspaces/{id}")))).await {
                Ok(_) => println!("{id}"),
                Err(e) => {
                    eprintln!("warren: {id}: {e:#}");
                    worst = worst.max(exit_code_of(&e));
                }
            }
        }
        Ok(worst)
    }

    pub async fn timeout(&self, id: &str, seconds: u64) -> Result<u8> {
        let w: WorkspaceView = self
            .send(
                self.http
                    .post(self.url(&format!("/v1/workspaces/{id}/timeout")))
                    .json(&SetTimeout { timeout: seconds }),
            )
            .await?
            .json()
            .await?;
        if self.conn.json {
            Self::print_json(&w)?;
        } else {
            println!("{id} expires at {}", w.expires_at);
        }
        Ok(0)
    }

    pub async fn templates(&self) -> Result<u8> {
        let all: Vec<TemplateView> = self.get("/v1/templates").await?;
        if self.conn.json {
            Self::print_json(&all)?;
        } else {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|t| vec![t.name.clone(), t.isolation.clone().unwrap_or_else(|| "-".into()), t.description.clone()])
                .collect();
            table(&["NAME", "ISOLATION", "DESCRIPTION"], &rows);
        }
        Ok(0)
    }

    pub async fn keys(&self, action: Option<KeyCmd>) -> Result<u8> {
        match action {
            None => {
                let all: Vec<KeyView> = self.get("/v1/keys").await?;
                if self.conn.json {
                    Self::print_json(&all)?;
                    return Ok(0);
                }
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|k| {
                        vec![
                            k.prefix.clone(),
                            k.tenant.clone(),
                            k.name.clone(),
                            k.admin.to_string(),
                            if k.revoked { "revoked".into() } else { "active".into() },
                            k.created_at.clone(),
                        ]
                    })
                    .collect();
                table(&["PREFIX", "TENANT", "NAME", "ADMIN", "STATUS", "CREATED"], &rows);
            }
            Some(KeyCmd::Create { tenant, name, admin }) => {
                let body = NewKey { tenant, name, admin };
                let k: CreatedKey = self.send(self.http.post(self.url("/v1/keys")).json(&body)).await?.json().await?;
                if self.conn.json {
                    Self::print_json(&k)?;
                } else {
                    eprintln!("warren: key for tenant {} (shown once; store it now)", k.view.tenant);
                    println!("{}", k.key);
                }
            }
            Some(KeyCmd::Revoke { prefix }) => {
                self.send(self.http.delete(self.url(&format!("/v1/keys/{prefix}")))).await?;
                println!("{prefix} revoked");
            }
        }
        Ok(0)
    }

    pub async fn usage(&self, bucket: &str, from: Option<u64>, to: Option<u64>, csv: bool) -> Result<u8> {
        let mut q = format!("/v1/usage?bucket={}", enc(bucket));
        if let Some(f) = from {
            q.push_str(&format!("&from={f}"));
        }
        if let Some(t) = to {
            q.push_str(&format!("&to={t}"));
        }
        if csv {
            let text = self.send(self.http.get(self.url(&format!("{q}&format=csv")))).await?.text().await?;
            print!("{text}");
            return Ok(0);
        }
        let rows: Vec<warren_orchestrator::usage::UsageRow> = self.get(&q).await?;
        if self.conn.json {
            Self::print_json(&rows)?;
            return Ok(0);
        }
        let f = |v: f64| format!("{v:.1}");
        let table_rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.tenant.clone(),
                    r.backend.clone(),
                    warren_proto::json::Millis(r.period_start_ms).to_string(),
                    f(r.running_seconds),
                    f(r.paused_seconds),
                    f(r.vcpu_seconds),
                    f(r.gib_seconds),
                ]
            })
            .collect();
        table(&["TENANT", "BACKEND", "PERIOD", "RUNNING S", "PAUSED S", "VCPU S", "GIB S"], &table_rows);
        Ok(0)
    }

    pub async fn invoice(&self, month: Option<String>) -> Result<u8> {
        let q = match &month {
            Some(m) => format!("/v1/invoice?month={}", enc(m)),
            None => "/v1/invoice".to_string(),
        };
        let inv: Value = self.get(&q).await?;
        if self.conn.json {
            Self::print_json(&inv)?;
            return Ok(0);
        }
        let f1 = |v: &Value| format!("{:.1}", v.as_f64().unwrap_or(0.0));
        let yen = |v: &Value| format!("¥{:.0}", v.as_f64().unwrap_or(0.0));
        let pct = |v: &Value| v.as_f64().map(|m| format!("{m:.1}%")).unwrap_or_else(|| "-".into());
        let admin = inv.get("infrastructure").is_some();
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut push = |l: &Value| {
            let mut row = vec![
                l["tenant"].as_str().unwrap_or("").to_string(),
                l["class"].as_str().unwrap_or("").to_string(),
                f1(&l["runningHours"]),
                f1(&l["pausedHours"]),
                f1(&l["vcpuHours"]),
                yen(&l["revenueJpy"]),
            ];
            if admin {
                let by: Vec<String> = l["byBackend"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        let name = b["backend"].as_str().filter(|n| !n.is_empty()).unwrap_or("?");
                        format!(
                            "{name} ${:.2} ({})",
                            b["costUsd"].as_f64().unwrap_or(0.0),
                            b["setup"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                row.extend([
                    format!("${:.2}", l["costUsd"].as_f64().unwrap_or(0.0)),
                    pct(&l["marginPct"]),
                    by.join(", "),
                ]);
            }
            rows.push(row);
        };
        for l in inv["lines"].as_array().into_iter().flatten() {
            push(l);
        }
        if admin {
            push(&inv["infrastructure"]);
        }
        println!(
            "invoice preview for {} (own infrastructure priced as {}, ¥{}/$)",
            inv["month"].as_str().unwrap_or("?"),
            inv["setup"].as_str().unwrap_or("?"),
            inv["jpyPerUsd"]
        );
        let mut head = vec!["TENANT", "CLASS", "RUNNING H", "PAUSED H", "VCPU H", "REVENUE"];
        if admin {
            head.extend(["COST", "MARGIN", "COST BY BACKEND"]);
        }
        table(&head, &rows);
        if admin {
            println!(
                "total: revenue {}, cost {}, gross margin {}",
                yen(&inv["revenueJpy"]),
                yen(&inv["costJpy"]),
                pct(&inv["marginPct"])
            );
        }
        Ok(0)
    }

    pub async fn pools(&self) -> Result<u8> {
        let all: Vec<warren_orchestrator::pool::PoolStatus> = self.get("/v1/pools").await?;
        if self.conn.json {
            Self::print_json(&all)?;
            return Ok(0);
        }
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|p| {
                let target =
                    if p.adaptive { format!("{} ({}-{})", p.target, p.min, p.max) } else { p.target.to_string() };
                vec![
                    p.name.clone(),
                    p.template.clone(),
                    p.size.memory_mib.to_string(),
                    target,
                    p.ready.to_string(),
                    p.warming.to_string(),
                    p.hits.to_string(),
                    p.misses.to_string(),
                    (p.drained + p.shrunk).to_string(),
                    p.refill_ms.to_string(),
                    format!("{:.2}", p.claim_rate),
                    claim_quantile(&p.claim_latency_counts, 0.5),
                    claim_quantile(&p.claim_latency_counts, 0.99),
                ]
            })
            .collect();
        table(
            &[
                "POOL",
                "TEMPLATE",
                "MEMORY MIB",
                "TARGET",
                "READY",
                "WARMING",
                "HITS",
                "MISSES",
                "DRAINED",
                "REFILL MS",
                "CLAIMS/S",
                "CLAIM P50",
                "CLAIM P99",
            ],
            &rows,
        );
        Ok(0)
    }

    pub async fn import(&self, name: &str, archive: &std::path::Path) -> Result<u8> {
        let f = tokio::fs::File::open(archive).await.with_context(|| format!("opening {}", archive.display()))?;
        let total = f.metadata().await?.len();
        use std::io::IsTerminal as _;
        let tty = std::io::stderr().is_terminal();
        let mut sent = 0u64;
        let mut shown = u64::MAX;
        let stream = tokio_util_stream(f).map(move |chunk| {
            if let Ok(c) = &chunk {
                sent += c.len() as u64;
                let pct = sent * 100 / total.max(1);
                // On a terminal, one updating line; elsewhere every 25%.
                if pct != shown && (tty || pct.is_multiple_of(25)) {
                    shown = pct;
                    let line = format!(
                        "warren: uploading {:.1} / {:.1} MiB ({pct}%)",
                        sent as f64 / 1048576.0,
                        total as f64 / 1048576.0
                    );
                    if tty {
                        eprint!("\r{line}");
                    } else {
                        eprintln!("{line}");
                    }
                }
            }
            chunk
        });
        let req = self.http.post(self.url(&format!("/v1/templates/{name}"))).body(reqwest::Body::wrap_stream(stream));
        eprintln!("warren: importing {name} (the server unpacks the layers)");
        let resp = self.send(req).await;
        let t: Value = resp?.json().await?;
        if self.conn.json {
            Self::print_json(&t)?;
        } else {
            println!("{}  {}", t["name"].as_str().unwrap_or(name), t["description"].as_str().unwrap_or(""));
        }
        Ok(0)
    }

    pub async fn exec(&self, a: ExecArgs) -> Result<u8> {
        let mut body = if a.cmd.len() == 1 && a.cmd[0].contains(' ') {
            json!({"command": a.cmd[0]})
        } else {
            json!({"argv": a.cmd})
        };
        body["env"] = json!(kv(&a.env, "--env")?);
        if let Some(c) = &a.cwd {
            body["cwd"] = json!(c);
        }
        if let Some(u) = &a.user {
            body["user"] = json!(u);
        }
        if let Some(t) = a.timeout {
            body["timeout"] = json!(t);
        }
        if a.stdin {
            let mut input = String::new();
            tokio::io::stdin().read_to_string(&mut input).await.context("reading stdin")?;
            body["stdin"] = json!(input);
        }
        let resp = self.send(self.http.post(self.url(&format!("/v1/workspaces/{}/exec", a.id))).json(&body)).await?;
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut code: Option<u8> = None;
        let b64 = base64::engine::general_purpose::STANDARD;
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.context("reading the output stream")?);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let ev: Value = serde_json::from_slice(&line).context("bad event from the server")?;
                match ev["type"].as_str() {
                    Some("stdout") => {
                        let d = b64.decode(ev["data"].as_str().unwrap_or("")).unwrap_or_default();
                        let mut out = std::io::stdout().lock();
                        out.write_all(&d)?;
                        out.flush()?;
                    }
                    Some("stderr") => {
                        let d = b64.decode(ev["data"].as_str().unwrap_or("")).unwrap_or_default();
                        let mut err = std::io::stderr().lock();
                        err.write_all(&d)?;
                        err.flush()?;
                    }
                    Some("exit") => {
                        code =
                            Some(remote_code(ev["exitCode"].as_i64().unwrap_or(1), ev["status"].as_str().unwrap_or("")))
                    }
                    Some("error") => {
                        let code: ErrorCode =
                            serde_json::from_value(ev["code"].clone()).unwrap_or(ErrorCode::BadGateway);
                        bail!(ApiFailure {
                            status: code.status(),
                            code,
                            message: ev["message"].as_str().unwrap_or("").to_string()
                        })
                    }
                    _ => {}
                }
            }
        }
        code.ok_or_else(|| anyhow!("the output stream ended before the command did"))
    }

    pub async fn shell(&self, a: ShellArgs) -> Result<u8> {
        let (cols, rows) = term_size();
        let base = self.conn.url.trim_end_matches('/').replacen("http", "ws", 1);
        let mut url = format!("{base}/v1/workspaces/{}/pty?cols={cols}&rows={rows}", a.id);
        if let Some(u) = &a.user {
            url.push_str(&format!("&user={u}"));
        }
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        use tokio_tungstenite::tungstenite::Message;
        let mut req = url.into_client_request()?;
        req.headers_mut().insert("authorization", format!("Bearer {}", self.key).parse()?);
        let (ws, _) = match tokio_tungstenite::connect_async(req).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                bail!(ApiFailure::of(status, &body));
            }
            Err(e) => return Err(e).context("opening the terminal"),
        };
        let (mut sink, mut source) = ws.split();
        let raw = RawMode::enable();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(64);
        // Keyboard → workspace, from a thread of its own doing plain
        // blocking reads: every keystroke is sent as soon as it is read, and
        // a read still waiting when the remote shell ends does not hold the
        // client (tokio's stdin would keep the runtime from shutting down
        // until the next key).
        let keys = tx.clone();
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(n) => n,
                    // A signal (a window resize) interrupted the read.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if n == 0 || keys.blocking_send(Message::Binary(buf[..n].to_vec().into())).is_err() {
                    break;
                }
            }
        });
        // Window size changes.
        let winch = tx.clone();
        tokio::spawn(async move {
            let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
                return;
            };
            while sig.recv().await.is_some() {
                let (cols, rows) = term_size();
                let msg = json!({"resize": {"cols": cols, "rows": rows}}).to_string();
                if winch.send(Message::Text(msg.into())).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let mut stdout = tokio::io::stdout();
        let mut code = 0u8;
        while let Some(msg) = source.next().await {
            match msg? {
                Message::Binary(d) => {
                    stdout.write_all(&d).await?;
                    stdout.flush().await?;
                }
                Message::Text(t) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        if let Some(c) = v["exit"].as_i64() {
                            code = remote_code(c, "");
                        }
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        drop(raw);
        Ok(code)
    }

    pub async fn cp(&self, src: &str, dst: &str) -> Result<u8> {
        match (split_remote(src), split_remote(dst)) {
            (None, Some((id, path))) => {
                let body = if src == "-" {
                    let mut data = Vec::new();
                    tokio::io::stdin().read_to_end(&mut data).await?;
                    reqwest::Body::from(data)
                } else {
                    let f = tokio::fs::File::open(src).await.with_context(|| format!("opening {src}"))?;
                    reqwest::Body::wrap_stream(tokio_util_stream(f))
                };
                let url = self.url(&format!("/v1/workspaces/{id}/files?path={}", enc(path)));
                self.send(self.http.put(url).body(body)).await?;
            }
            (Some((id, path)), None) => {
                let url = self.url(&format!("/v1/workspaces/{id}/files?path={}", enc(path)));
                let resp = self.send(self.http.get(url)).await?;
                let mut stream = resp.bytes_stream();
                if dst == "-" {
                    let mut out = tokio::io::stdout();
                    while let Some(c) = stream.next().await {
                        out.write_all(&c?).await?;
                    }
                    out.flush().await?;
                } else {
                    let tmp = format!("{dst}.warren-partial");
                    let mut f = tokio::fs::File::create(&tmp).await.with_context(|| format!("creating {dst}"))?;
                    while let Some(c) = stream.next().await {
                        f.write_all(&c?).await?;
                    }
                    f.flush().await?;
                    tokio::fs::rename(&tmp, dst).await?;
                }
            }
            _ => bail!("exactly one of SRC and DST must be remote (ID:/path)"),
        }
        Ok(0)
    }
}

/// `ID:/path` → (id, path); local paths (with `/` or `.` before any `:`) → None.
fn split_remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return None;
    }
    Some((id, path))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tokio_util_stream(f: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// A remote exit: the code, or 128 + signal for "signal: NAME".
fn remote_code(code: i64, status: &str) -> u8 {
    if code >= 0 {
        return code.clamp(0, 255) as u8;
    }
    let sig = match status.strip_prefix("signal: ") {
        Some("hangup") => 1,
        Some("interrupt") => 2,
        Some("killed") => 9,
        Some("terminated") => 15,
        Some("segmentation fault") => 11,
        Some("aborted") => 6,
        _ => 127,
    };
    (128 + sig).min(255) as u8
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let fmt = |cells: Vec<&str>| {
        cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect::<Vec<_>>().join("  ")
    };
    println!("{}", fmt(head.to_vec()).trim_end());
    for r in rows {
        println!("{}", fmt(r.iter().map(String::as_str).collect()).trim_end());
    }
}

fn term_size() -> (u16, u16) {
    // SAFETY: TIOCGWINSZ writes one winsize into the zeroed local.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ioctl on stdout with a valid out-pointer.
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0;
    if ok {
        (ws.ws_col, ws.ws_row)
    } else {
        (80, 24)
    }
}

/// Puts the local terminal in raw mode while alive (when stdin is a tty).
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable() -> Self {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let Ok(orig) = termios::tcgetattr(&stdin) else { return RawMode(None) };
        let mut raw = orig.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, orig);
        }
    }
}

/// The bucket bound under which a fraction `q` of the claims finished, from
/// the pool's claim-latency histogram ("-" before any claim).
fn claim_quantile(counts: &[u64], q: f64) -> String {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return "-".into();
    }
    let want = (n as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return match warren_orchestrator::pool::CLAIM_BUCKETS_MS.get(i) {
                Some(b) => format!("<{b}ms"),
                None => format!(">{}ms", warren_orchestrator::pool::CLAIM_BUCKETS_MS.last().copied().unwrap_or(0)),
            };
        }
    }
    "-".into()
}

#[cfg(test)]
mod pool_tests {
    #[test]
    fn claim_quantiles_read_the_histogram() {
        assert_eq!(super::claim_quantile(&[], 0.5), "-");
        // 90 claims under 1 ms, 9 under 5 ms, 1 over 5 s.
        let mut c = vec![0u64; 11];
        c[0] = 90;
        c[2] = 9;
        c[10] = 1;
        assert_eq!(super::claim_quantile(&c, 0.5), "<1ms");
        assert_eq!(super::claim_quantile(&c, 0.99), "<5ms");
        assert_eq!(super::claim_quantile(&c, 1.0), ">5000ms");
    }
}
