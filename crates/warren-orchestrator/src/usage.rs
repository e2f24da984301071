//! Usage derived from the durable event log: for every workspace, the time it
//! ran and the time it was paused, on whose account, cut into hours, days or
//! months. Pure: the same events always give the same numbers, so a restart
//! can neither drop nor double a second.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warren_core::{Size, State, TenantId};
use warren_store::{Event, EventKind};

/// How usage is grouped in time (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Hour,
    Day,
    Month,
}

/// How usage rows name warm-pool time (infrastructure): no tenant can have
/// this name.
pub const POOL_LABEL: &str = "(warm pool)";

/// Usage of one tenant in one period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    /// The tenant, or [`POOL_LABEL`] for warm-pool time.
    pub tenant: String,
    /// The backend the time was spent on (`local`, `docker`, `e2b`, …;
    /// empty in logs written before backends were recorded).
    #[serde(default)]
    pub backend: String,
    /// Start of the period, ms since the epoch (UTC).
    pub period_start_ms: u64,
    pub running_seconds: f64,
    pub paused_seconds: f64,
    /// Running seconds times vCPUs (millicpus / 1000).
    pub vcpu_seconds: f64,
    /// Running seconds times GiB of memory.
    pub gib_seconds: f64,
}

/// One stretch of time a workspace spent running or paused for a tenant.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    tenant: Option<TenantId>,
    backend: String,
    size: Size,
    paused: bool,
    from: u64,
    to: u64,
}

fn spans(events: &[Event], now_ms: u64) -> Vec<Span> {
    struct Open {
        tenant: Option<TenantId>,
        backend: String,
        size: Size,
        state: State,
        since: u64,
    }
    let mut open: BTreeMap<String, Open> = BTreeMap::new();
    let mut out = Vec::new();
    let close = |o: &Open, at: u64, out: &mut Vec<Span>| {
        if matches!(o.state, State::Running | State::Paused) && at > o.since {
            out.push(Span {
                tenant: o.tenant.clone(),
                backend: o.backend.clone(),
                size: o.size,
                paused: o.state == State::Paused,
                from: o.since,
                to: at,
            });
        }
    };
    for e in events {
        let id = e.event.workspace.to_string();
        let at = e.event.at_ms;
        match &e.event.kind {
            EventKind::Created { .. } => {
                open.insert(
                    id,
                    Open {
                        tenant: e.event.tenant.clone(),
                        backend: e.event.backend.clone(),
                        size: e.event.size,
                        state: State::Creating,
                        since: at,
                    },
                );
            }
            EventKind::State { to, .. } => {
                if let Some(o) = open.get_mut(&id) {
                    close(o, at, &mut out);
                    o.state = *to;
                    o.since = at;
                    if !e.event.backend.is_empty() {
                        o.backend = e.event.backend.clone();
                    }
                }
            }
            EventKind::Claimed { tenant } => {
                if let Some(o) = open.get_mut(&id) {
                    close(o, at, &mut out);
                    o.tenant = Some(tenant.clone());
                    o.since = at;
                }
            }
            EventKind::Timeout { .. } => {}
        }
    }
    for o in open.values() {
        close(o, now_ms, &mut out);
    }
    out
}

/// Start of the period holding `ms`, and the start of the next one.
fn period(ms: u64, b: Bucket) -> (u64, u64) {
    const H: u64 = 3_600_000;
    const D: u64 = 24 * H;
    match b {
        Bucket::Hour => (ms / H * H, ms / H * H + H),
        Bucket::Day => (ms / D * D, ms / D * D + D),
        Bucket::Month => {
            let days = (ms / D) as i64;
            let (y, m) = year_month(days);
            let start = days_from_civil(y, m) as u64 * D;
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (start, days_from_civil(ny, nm) as u64 * D)
        }
    }
}

/// `[start, end)` of a calendar month (UTC) in ms, from "YYYY-MM"; None when
/// malformed or before 1970.
pub fn month_bounds(month: &str) -> Option<(u64, u64)> {
    let (y, m) = month.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i64, u32) = (y.parse().ok()?, m.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    const D: u64 = 86_400_000;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some((days_from_civil(y, m) as u64 * D, days_from_civil(ny, nm) as u64 * D))
}

/// "YYYY-MM" of the month holding `ms`.
pub fn month_of(ms: u64) -> String {
    let (y, m) = year_month((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}")
}

fn year_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m)
}

/// Days since 1970-01-01 of the first of month `m` of year `y`.
fn days_from_civil(y: i64, m: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Usage per tenant, period and backend over `[from_ms, to_ms)`, from the event log
/// read up to `now_ms` (open stretches end there). Pool time is reported
/// under [`POOL_LABEL`]: it is infrastructure, not tenant usage.
pub fn rollup(events: &[Event], now_ms: u64, from_ms: u64, to_ms: u64, bucket: Bucket) -> Vec<UsageRow> {
    let mut rows: BTreeMap<(String, u64, String), UsageRow> = BTreeMap::new();
    for s in spans(events, now_ms) {
        let (mut a, b) = (s.from.max(from_ms), s.to.min(to_ms));
        while a < b {
            let (start, next) = period(a, bucket);
            let end = b.min(next);
            let secs = (end - a) as f64 / 1000.0;
            let tenant = s.tenant.as_ref().map_or(POOL_LABEL, TenantId::as_str);
            let row = rows.entry((tenant.to_string(), start, s.backend.clone())).or_insert_with(|| UsageRow {
                tenant: tenant.to_string(),
                backend: s.backend.clone(),
                period_start_ms: start,
                ..Default::default()
            });
            if s.paused {
                row.paused_seconds += secs;
            } else {
                row.running_seconds += secs;
                row.vcpu_seconds += secs * s.size.millicpus as f64 / 1000.0;
                row.gib_seconds += secs * s.size.memory_mib as f64 / 1024.0;
            }
            a = end;
        }
    }
    rows.into_values().collect()
}

/// Whether a row is infrastructure (idle pool members), not a tenant's.
pub fn is_infrastructure(row: &UsageRow) -> bool {
    row.tenant == POOL_LABEL
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use warren_core::WorkspaceId;
    use warren_store::NewEvent;

    fn ev(seq: u64, at: u64, ws: &WorkspaceId, tenant: Option<&str>, kind: EventKind) -> Event {
        let size = Size { millicpus: 2000, memory_mib: 1024, disk_mib: 1024, pids: 100 };
        Event {
            seq,
            event: NewEvent {
                at_ms: at,
                workspace: ws.clone(),
                tenant: tenant.map(|t| TenantId::new(t).unwrap()),
                size,
                kind,
                backend: "local".into(),
            },
        }
    }

    fn st(from: State, to: State) -> EventKind {
        EventKind::State { from, to }
    }

    #[test]
    fn running_and_paused_seconds_per_tenant_and_hour() {
        let w = WorkspaceId::generate();
        let h = 3_600_000u64;
        let evs = vec![
            ev(1, 0, &w, Some("a"), EventKind::Created { template: "base".into() }),
            ev(2, 1_000, &w, Some("a"), st(State::Creating, State::Running)),
            ev(3, h + 1_000, &w, Some("a"), st(State::Running, State::Paused)),
            ev(4, h + 31_000, &w, Some("a"), st(State::Paused, State::Running)),
            ev(5, h + 91_000, &w, Some("a"), st(State::Running, State::Stopping)),
            ev(6, h + 92_000, &w, Some("a"), st(State::Stopping, State::Stopped)),
        ];
        let rows = rollup(&evs, 10 * h, 0, u64::MAX, Bucket::Hour);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].period_start_ms, 0);
        assert_eq!(rows[0].running_seconds, 3599.0);
        assert_eq!(rows[1].running_seconds, 1.0 + 60.0);
        assert_eq!(rows[1].paused_seconds, 30.0);
        assert_eq!(rows[0].vcpu_seconds, 3599.0 * 2.0);
        assert_eq!(rows[0].gib_seconds, 3599.0);
        // The same events, read again (after a restart), give the same numbers.
        assert_eq!(rollup(&evs, 10 * h, 0, u64::MAX, Bucket::Hour), rows);
        let day = rollup(&evs, 10 * h, 0, u64::MAX, Bucket::Day);
        assert_eq!(day.len(), 1);
        assert_eq!(day[0].running_seconds, 3660.0);
    }

    #[test]
    fn open_stretches_end_now_windows_clip_and_claims_switch_tenants() {
        let w = WorkspaceId::generate();
        let evs = vec![
            ev(1, 0, &w, None, EventKind::Created { template: "base".into() }),
            ev(2, 0, &w, None, st(State::Creating, State::Running)),
            ev(3, 10_000, &w, Some("alice"), EventKind::Claimed { tenant: TenantId::new("alice").unwrap() }),
        ];
        let rows = rollup(&evs, 70_000, 0, u64::MAX, Bucket::Day);
        let pool: f64 = rows.iter().filter(|r| is_infrastructure(r)).map(|r| r.running_seconds).sum();
        let alice: f64 = rows.iter().filter(|r| r.tenant == "alice").map(|r| r.running_seconds).sum();
        assert_eq!((pool, alice), (10.0, 60.0));
        let clipped = rollup(&evs, 70_000, 40_000, 50_000, Bucket::Day);
        assert_eq!(clipped.len(), 1);
        assert_eq!(clipped[0].running_seconds, 10.0);
    }

    #[test]
    fn time_is_split_by_the_backend_it_ran_on() {
        let (a, b) = (WorkspaceId::generate(), WorkspaceId::generate());
        let on = |seq, at, w: &WorkspaceId, kind, backend: &str| {
            let mut e = ev(seq, at, w, Some("t"), kind);
            e.event.backend = backend.into();
            e
        };
        // Created behind a router ("routed"); the Running transition names the backend that took it.
        let evs = vec![
            on(1, 0, &a, EventKind::Created { template: "base".into() }, "routed"),
            on(2, 0, &a, st(State::Creating, State::Running), "local"),
            on(3, 0, &b, EventKind::Created { template: "base".into() }, "routed"),
            on(4, 0, &b, st(State::Creating, State::Running), "e2b"),
            on(5, 30_000, &b, st(State::Running, State::Stopping), "e2b"),
        ];
        let rows = rollup(&evs, 60_000, 0, u64::MAX, Bucket::Day);
        let secs = |be: &str| rows.iter().filter(|r| r.backend == be).map(|r| r.running_seconds).sum::<f64>();
        assert_eq!((secs("local"), secs("e2b"), secs("routed")), (60.0, 30.0, 0.0));
    }

    #[test]
    fn month_names_parse_or_are_refused() {
        assert_eq!(month_bounds("1970-01"), Some((0, 31 * 86_400_000)));
        let (a, b) = month_bounds("2024-02").unwrap();
        assert_eq!(b - a, 29 * 86_400_000, "leap February");
        assert_eq!(month_of(a), "2024-02");
        assert_eq!(month_of(b - 1), "2024-02");
        assert_eq!(month_of(b), "2024-03");
        for bad in ["2024-13", "2024-00", "24-01", "2024-1", "1969-12", "x", "2024/01"] {
            assert_eq!(month_bounds(bad), None, "{bad}");
        }
    }

    #[test]
    fn months_have_their_real_lengths() {
        // 2024-02-01 and 2024-03-01 (leap year).
        let feb = days_from_civil(2024, 2) as u64 * 86_400_000;
        let mar = days_from_civil(2024, 3) as u64 * 86_400_000;
        assert_eq!((mar - feb) / 86_400_000, 29);
        assert_eq!(period(feb + 5, Bucket::Month), (feb, mar));
        assert_eq!(period(mar - 1, Bucket::Month), (feb, mar));
        assert_eq!(days_from_civil(1970, 1), 0);
    }
}
