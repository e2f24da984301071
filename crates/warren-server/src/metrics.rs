//! Prometheus metrics, kept in atomics and rendered on scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        out.push_str(&format!("# TYPE {name} histogram\n"));
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {}\n", self.counts[i].load(Ordering::Relaxed)));
        }
        let n = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {n}\n"));
        out.push_str(&format!("{name}_sum {}\n", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6));
        out.push_str(&format!("{name}_count {n}\n"));
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    creates_ok: AtomicU64,
    creates_failed: AtomicU64,
    create_latency: Histogram,
    request_latency: Histogram,
}

impl Metrics {
    pub fn observe_create(&self, d: Duration, ok: bool) {
        if ok {
            self.creates_ok.fetch_add(1, Ordering::Relaxed);
            self.create_latency.observe(d);
        } else {
            self.creates_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Middleware: counts responses by status class and times them.
pub async fn count(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let t = Instant::now();
    let resp = next.run(req).await;
    let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    s.metrics.requests[class].fetch_add(1, Ordering::Relaxed);
    s.metrics.request_latency.observe(t.elapsed());
    resp
}

pub async fn scrape(State(s): State<AppState>) -> Response {
    let m = &s.metrics;
    let mut out = String::new();
    out.push_str("# TYPE warren_http_responses_total counter\n");
    for (i, c) in m.requests.iter().enumerate() {
        out.push_str(&format!("warren_http_responses_total{{class=\"{}xx\"}} {}\n", i + 1, c.load(Ordering::Relaxed)));
    }
    out.push_str("# TYPE warren_workspace_creates_total counter\n");
    out.push_str(&format!(
        "warren_workspace_creates_total{{result=\"ok\"}} {}\n",
        m.creates_ok.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "warren_workspace_creates_total{{result=\"failed\"}} {}\n",
        m.creates_failed.load(Ordering::Relaxed)
    ));
    m.create_latency.render("warren_workspace_create_seconds", &mut out);
    m.request_latency.render("warren_http_request_seconds", &mut out);
    if let Ok(pools) = s.orch.pool_status().await {
        for (name, f) in [
            ("warren_pool_ready", (|p: &warren_orchestrator::pool::PoolStatus| p.ready as u64) as fn(&_) -> u64),
            ("warren_pool_warming", |p| p.warming as u64),
            ("warren_pool_target", |p| p.target as u64),
            ("warren_pool_hits_total", |p| p.hits),
            ("warren_pool_misses_total", |p| p.misses),
            ("warren_pool_refill_ms", |p| p.refill_ms),
            ("warren_pool_drained_total", |p| p.drained),
            ("warren_pool_shrunk_total", |p| p.shrunk),
            ("warren_pool_claim_rate_millis", |p| (p.claim_rate * 1000.0) as u64),
        ] {
            out.push_str(&format!("# TYPE {name} {}\n", if name.ends_with("_total") { "counter" } else { "gauge" }));
            for p in &pools {
                out.push_str(&format!(
                    "{name}{{template=\"{}\",memory_mib=\"{}\"}} {}\n",
                    p.template,
                    p.size.memory_mib,
                    f(p)
                ));
            }
        }
        out.push_str("# TYPE warren_pool_claim_seconds histogram\n");
        for p in &pools {
            let labels = format!("template=\"{}\",memory_mib=\"{}\"", p.template, p.size.memory_mib);
            let mut cumulative = 0;
            for (i, b) in warren_orchestrator::pool::CLAIM_BUCKETS_MS.iter().enumerate() {
                cumulative += p.claim_latency_counts.get(i).copied().unwrap_or(0);
                out.push_str(&format!(
                    "warren_pool_claim_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}\n",
                    *b as f64 / 1000.0
                ));
            }
            let n: u64 = p.claim_latency_counts.iter().sum();
            out.push_str(&format!("warren_pool_claim_seconds_bucket{{{labels},le=\"+Inf\"}} {n}\n"));
            out.push_str(&format!(
                "warren_pool_claim_seconds_sum{{{labels}}} {}\n",
                p.claim_latency_sum_us as f64 / 1e6
            ));
            out.push_str(&format!("warren_pool_claim_seconds_count{{{labels}}} {n}\n"));
        }
    }
    if let Ok(all) = s.orch.list(None).await {
        let mut by_state = std::collections::BTreeMap::new();
        for r in &all {
            *by_state.entry(r.state.as_str()).or_insert(0u64) += 1;
        }
        out.push_str("# TYPE warren_workspaces gauge\n");
        for st in ["creating", "running", "paused", "stopping", "stopped", "failed"] {
            out.push_str(&format!("warren_workspaces{{state=\"{st}\"}} {}\n", by_state.get(st).unwrap_or(&0)));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
