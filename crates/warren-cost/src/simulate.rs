//! A fleet simulation in simulated time: sessions arrive over a demand
//! profile, are served from a warm pool sized by warren's own
//! [`PoolPolicy`], or cold-started on instances that an autoscaler adds and
//! removes. It reports what the fleet cost, how long users waited, and the
//! saving against running the peak 24/7 (the study's monthly table).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use warren_core::autoscale::{PolicyConfig, PoolPolicy};

use crate::{Catalog, Pricing, Setup};

/// When people want workspaces.
#[derive(Debug, Clone, PartialEq)]
pub enum Profile {
    /// `peak` concurrent sessions from 9:00 to 17:00 on weekdays (8 h x 5
    /// days, i.e. the study's 8 h x 22 days a month), `off_hours` of it the
    /// rest of the time.
    BusinessHours { peak: u32, off_hours: f64 },
    /// A steady `base` plus `size` sessions requested within one minute at
    /// 10:00, 13:00 and 15:00 on weekdays.
    Burst { base: u32, size: u32 },
}

impl Profile {
    pub fn peak(&self) -> u32 {
        match self {
            Profile::BusinessHours { peak, .. } => *peak,
            Profile::Burst { base, size } => base + size,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Profile::BusinessHours { peak, off_hours } => {
                format!(
                    "business hours: {peak} concurrent 9-17 on weekdays, {:.0}% of that otherwise",
                    off_hours * 100.0
                )
            }
            Profile::Burst { base, size } => {
                format!("bursts: {base} steady, plus {size} requested within a minute at 10:00, 13:00 and 15:00 on weekdays")
            }
        }
    }

    /// Sessions that should be running at second `t` of the week (steady part).
    fn level(&self, t: u64) -> f64 {
        let day = (t / 86_400) % 7;
        let hour = (t % 86_400) / 3_600;
        let weekday = day < 5;
        match self {
            Profile::BusinessHours { peak, off_hours } => {
                if weekday && (9..17).contains(&hour) {
                    *peak as f64
                } else {
                    *peak as f64 * off_hours
                }
            }
            Profile::Burst { base, .. } => *base as f64,
        }
    }

    /// Extra sessions arriving in [t, t + step) (bursts).
    fn burst_arrivals(&self, t: u64, step: u64) -> u64 {
        let Profile::Burst { size, .. } = self else { return 0 };
        let day = (t / 86_400) % 7;
        if day >= 5 {
            return 0;
        }
        let sod = t % 86_400;
        let mut n = 0;
        for at in [10 * 3_600, 13 * 3_600, 15 * 3_600] {
            // Spread over one minute.
            if sod + step > at && sod < at + 60 {
                let from = sod.max(at);
                let to = (sod + step).min(at + 60);
                n += *size as u64 * (to - from) / 60;
            }
        }
        n
    }
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub profile: Profile,
    pub days: u32,
    /// Mean session length, minutes (exponentially distributed).
    pub session_minutes: f64,
    pub step_s: u64,
    /// Time from launching an instance to it taking workspaces.
    pub instance_boot_s: u64,
    /// An empty instance is released after this long (and only if not needed).
    pub scale_in_idle_s: u64,
    /// Spare capacity the autoscaler keeps, as a fraction of what is in use.
    pub spare_fraction: f64,
    /// Warm pool bounds (adaptive between them); None = no pool.
    pub pool: Option<(usize, usize)>,
    /// Latency of a warm-pool hit, ms (warren's measured claim time).
    pub claim_ms: u64,
    pub seed: u64,
}

impl SimConfig {
    pub fn new(profile: Profile) -> Self {
        SimConfig {
            profile,
            days: 28,
            session_minutes: 60.0,
            step_s: 10,
            instance_boot_s: 90,
            scale_in_idle_s: 600,
            spare_fraction: 0.1,
            pool: Some((2, 200)),
            claim_ms: 5,
            seed: 1,
        }
    }
}

/// The state of the fleet at one moment (one per minute).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: u64,
    pub active: u32,
    pub pool: u32,
    pub instances: u32,
    pub capacity: u32,
    /// What the fleet costs per hour at this moment, USD.
    pub usd_per_hour: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    pub setup: String,
    pub profile: String,
    pub days: u32,
    pub sessions: u64,
    pub hits: u64,
    pub misses: u64,
    pub wait_p50_ms: u64,
    pub wait_p95_ms: u64,
    pub wait_p99_ms: u64,
    pub wait_max_ms: u64,
    pub instance_hours: f64,
    pub peak_instances: u32,
    pub workspace_hours: f64,
    pub pool_hours: f64,
    /// Cost over the simulated days, USD.
    pub cost_usd: f64,
    /// The same scaled to the catalog's month.
    pub monthly_usd: f64,
    /// The study's way: the profile's peak concurrency, 24/7, for a month.
    pub always_on_monthly_usd: f64,
    pub saving_pct: f64,
    pub samples: Vec<Sample>,
}

/// A small deterministic generator (splitmix64): the same seed gives the
/// same simulation.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }

    fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let l = (-lambda).exp();
            let (mut k, mut p) = (0u64, 1.0);
            loop {
                p *= self.unit();
                if p <= l {
                    return k;
                }
                k += 1;
            }
        }
        let n = (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos();
        (lambda + lambda.sqrt() * n).round().max(0.0) as u64
    }
}

struct Instance {
    used: u32,
    ready_at: u64,
    empty_since: Option<u64>,
}

/// Where a workspace runs: an instance index, or none (resource pricing).
type Slot = Option<usize>;

struct Fleet<'a> {
    setup: &'a Setup,
    per_instance: u32,
    instances: Vec<Option<Instance>>,
}

impl Fleet<'_> {
    fn instance_priced(&self) -> bool {
        self.setup.pricing == Pricing::Instance
    }

    /// A free slot now, on the fullest ready instance (so others drain).
    fn place(&mut self, now: u64) -> Option<Slot> {
        if !self.instance_priced() {
            return Some(None);
        }
        let per = self.per_instance;
        let best = self
            .instances
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_ref().map(|x| (i, x)))
            .filter(|(_, x)| x.ready_at <= now && x.used < per)
            .max_by_key(|(i, x)| (x.used, Reverse(*i)))
            .map(|(i, _)| i)?;
        if let Some(x) = self.instances[best].as_mut() {
            x.used += 1;
            x.empty_since = None;
        }
        Some(Some(best))
    }

    fn free(&mut self, slot: Slot, now: u64) {
        if let Some(Some(x)) = slot.and_then(|i| self.instances.get_mut(i)) {
            x.used = x.used.saturating_sub(1);
            if x.used == 0 {
                x.empty_since = Some(now);
            }
        }
    }

    fn count(&self) -> u32 {
        self.instances.iter().flatten().count() as u32
    }

    fn capacity(&self, now: u64) -> u32 {
        self.instances.iter().flatten().filter(|x| x.ready_at <= now).count() as u32 * self.per_instance
    }

    /// Adds or releases instances so that `needed` slots fit with spare room.
    fn autoscale(&mut self, needed: u32, spare: f64, boot_s: u64, idle_s: u64, now: u64) {
        if !self.instance_priced() {
            return;
        }
        let want_slots = (needed as f64 * (1.0 + spare)).ceil() as u32;
        let want = want_slots.div_ceil(self.per_instance).max(u32::from(needed > 0));
        let have = self.count();
        if have < want {
            for _ in have..want {
                let x = Instance { used: 0, ready_at: now + boot_s, empty_since: Some(now + boot_s) };
                match self.instances.iter_mut().find(|s| s.is_none()) {
                    Some(s) => *s = Some(x),
                    None => self.instances.push(Some(x)),
                }
            }
        } else if have > want {
            let mut surplus = have - want;
            for s in self.instances.iter_mut().rev() {
                if surplus == 0 {
                    break;
                }
                let idle = s.as_ref().is_some_and(|x| x.used == 0 && x.empty_since.is_some_and(|e| now >= e + idle_s));
                if idle {
                    *s = None;
                    surplus -= 1;
                }
            }
        }
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs one simulation of a setup over a profile.
pub fn run(catalog: &Catalog, setup: &Setup, cfg: &SimConfig) -> SimReport {
    let mut rng = Rng(cfg.seed);
    let step = cfg.step_s.max(1);
    let end = cfg.days as u64 * 86_400;
    let start_ms = (setup.start_ms[0] + setup.start_ms[1]) / 2;
    let start_s = start_ms.div_ceil(1000);
    let session_s = cfg.session_minutes * 60.0;
    let mut fleet = Fleet { setup, per_instance: setup.per_instance().max(1), instances: Vec::new() };
    let mut policy = cfg.pool.map(|(min, max)| {
        let mut p = PoolPolicy::new(PolicyConfig::new(min, max));
        p.record_refill(start_ms);
        p
    });
    // Session ends (time, slot); pool members warming (ready time, slot) and ready.
    let mut ends: BinaryHeap<Reverse<(u64, Slot)>> = BinaryHeap::new();
    let mut warming: VecDeque<(u64, Slot)> = VecDeque::new();
    let mut ready: Vec<Slot> = Vec::new();
    // Requests waiting for capacity: arrival time.
    let mut pending: VecDeque<u64> = VecDeque::new();
    // Cold starts in progress: (usable at, slot).
    let mut starting: VecDeque<(u64, Slot)> = VecDeque::new();
    let mut waits: Vec<u64> = Vec::new();
    let (mut hits, mut misses, mut sessions) = (0u64, 0u64, 0u64);
    let (mut instance_s, mut workspace_s, mut pool_s, mut cost) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut peak_instances = 0u32;
    let mut samples = Vec::new();
    let rate = setup.usd_per_workspace_hour();
    let instance_rate = setup.instance_usd_per_hour();

    let mut t = 0u64;
    while t < end {
        let now_ms = t * 1000;
        // Sessions that end.
        while let Some(Reverse((at, slot))) = ends.peek().copied() {
            if at > t {
                break;
            }
            ends.pop();
            fleet.free(slot, t);
        }
        // Pool members that became ready.
        while warming.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, slot)) = warming.pop_front() {
                ready.push(slot);
            }
        }
        // Cold starts that finished: the session begins.
        while starting.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((at, slot)) = starting.pop_front() {
                let dur = rng.exp(session_s).max(1.0) as u64;
                ends.push(Reverse((at + dur, slot)));
            }
        }
        // Arrivals: steady demand by Little's law, plus bursts.
        let n = rng.poisson(cfg.profile.level(t) / session_s * step as f64) + cfg.profile.burst_arrivals(t, step);
        for i in 0..n {
            let arrived = t + i * step / n.max(1);
            sessions += 1;
            if let Some(p) = policy.as_mut() {
                p.record_claim(arrived * 1000);
            }
            if let Some(slot) = ready.pop() {
                hits += 1;
                waits.push(cfg.claim_ms);
                let dur = rng.exp(session_s).max(1.0) as u64;
                ends.push(Reverse((arrived + dur, slot)));
            } else {
                misses += 1;
                pending.push_back(arrived);
            }
        }
        // Waiting requests start where there is room.
        while let Some(&arrived) = pending.front() {
            let Some(slot) = fleet.place(t) else { break };
            pending.pop_front();
            // Room at once (this step) costs the cold start; otherwise the
            // wait for capacity comes first.
            let placed_ms = if t <= arrived { arrived * 1000 } else { t * 1000 };
            let wait_ms = placed_ms - arrived * 1000 + start_ms;
            waits.push(wait_ms);
            starting.push_back(((arrived * 1000 + wait_ms).div_ceil(1000), slot));
        }
        // The pool: refill toward the policy's target, give back surplus.
        if let Some(p) = policy.as_mut() {
            let target = p.target(now_ms);
            let have = ready.len() + warming.len();
            if have < target && pending.is_empty() {
                for _ in have..target {
                    let Some(slot) = fleet.place(t) else { break };
                    warming.push_back((t + start_s, slot));
                }
            } else if ready.len() > target {
                for _ in target..ready.len() {
                    if let Some(slot) = ready.pop() {
                        fleet.free(slot, t);
                    }
                }
            }
        }
        let active = (ends.len() + starting.len()) as u32;
        let pool = (ready.len() + warming.len()) as u32;
        let target = policy.as_ref().map(|p| p.target(now_ms) as u32).unwrap_or(0);
        fleet.autoscale(
            active + pending.len() as u32 + pool.max(target),
            cfg.spare_fraction,
            cfg.instance_boot_s,
            cfg.scale_in_idle_s,
            t,
        );
        // Accounting for this step.
        let instances = fleet.count();
        peak_instances = peak_instances.max(instances);
        let hours = step as f64 / 3600.0;
        let usd_per_hour =
            if fleet.instance_priced() { instances as f64 * instance_rate } else { (active + pool) as f64 * rate };
        instance_s += instances as f64 * step as f64;
        workspace_s += active as f64 * step as f64;
        pool_s += pool as f64 * step as f64;
        cost += usd_per_hour * hours;
        if t.is_multiple_of(60) {
            samples.push(Sample { t, active, pool, instances, capacity: fleet.capacity(t), usd_per_hour });
        }
        t += step;
    }
    // Requests still waiting at the end waited at least until then.
    for arrived in pending {
        waits.push((end.saturating_sub(arrived)) * 1000);
    }
    waits.sort_unstable();
    let sim_hours = end as f64 / 3600.0;
    let monthly = cost * catalog.hours_per_month / sim_hours;
    let always_on = catalog.monthly_usd(setup, cfg.profile.peak());
    SimReport {
        setup: setup.id.clone(),
        profile: cfg.profile.describe(),
        days: cfg.days,
        sessions,
        hits,
        misses,
        wait_p50_ms: percentile(&waits, 0.50),
        wait_p95_ms: percentile(&waits, 0.95),
        wait_p99_ms: percentile(&waits, 0.99),
        wait_max_ms: waits.last().copied().unwrap_or(0),
        instance_hours: instance_s / 3600.0,
        peak_instances,
        workspace_hours: workspace_s / 3600.0,
        pool_hours: pool_s / 3600.0,
        cost_usd: cost,
        monthly_usd: monthly,
        always_on_monthly_usd: always_on,
        saving_pct: 100.0 * (1.0 - monthly / always_on),
        samples,
    }
}

impl SimReport {
    pub fn render(&self, setup: &Setup) -> String {
        let ms = |v: u64| if v < 10_000 { format!("{v} ms") } else { format!("{:.0} s", v as f64 / 1000.0) };
        let mut o = format!(
            "{} — {} over {} days\n\
             sessions {}  pool hits {}  misses {}\n\
             wait for a workspace: p50 {}  p95 {}  p99 {}  max {}\n",
            setup.name,
            self.profile,
            self.days,
            self.sessions,
            self.hits,
            self.misses,
            ms(self.wait_p50_ms),
            ms(self.wait_p95_ms),
            ms(self.wait_p99_ms),
            ms(self.wait_max_ms)
        );
        if setup.pricing == Pricing::Instance {
            o.push_str(&format!(
                "instance-hours {:.0} ({}, {} workspaces each; peak {} instances)\n",
                self.instance_hours,
                setup.instance,
                setup.per_instance(),
                self.peak_instances
            ));
        }
        o.push_str(&format!(
            "workspace-hours {:.0} in use, {:.0} idle in the warm pool\n\
             cost ${:.0} over {} days = ${:.0}/month, against ${:.0}/month for the peak 24/7 → saving {:.1}%\n",
            self.workspace_hours,
            self.pool_hours,
            self.cost_usd,
            self.days,
            self.monthly_usd,
            self.always_on_monthly_usd,
            self.saving_pct
        ));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalog {
        Catalog::embedded()
    }

    #[test]
    fn same_seed_same_result() {
        let c = cat();
        let s = c.setup("ecs-ec2-od").unwrap();
        let mut cfg = SimConfig::new(Profile::BusinessHours { peak: 50, off_hours: 0.05 });
        cfg.days = 7;
        let a = run(&c, s, &cfg);
        let b = run(&c, s, &cfg);
        assert_eq!(a, b);
        cfg.seed = 2;
        assert_ne!(run(&c, s, &cfg).sessions, a.sessions);
    }

    /// Little's law holds in the simulation: mean concurrency in business
    /// hours comes out near the profile's peak.
    #[test]
    fn concurrency_follows_the_profile() {
        let c = cat();
        let s = c.setup("fargate").unwrap();
        let mut cfg = SimConfig::new(Profile::BusinessHours { peak: 200, off_hours: 0.0 });
        cfg.days = 1;
        let r = run(&c, s, &cfg);
        // 14:00-16:00, well after the 9:00 ramp.
        let mid: Vec<&Sample> = r.samples.iter().filter(|x| (14 * 3600..16 * 3600).contains(&x.t)).collect();
        let mean = mid.iter().map(|x| x.active as f64).sum::<f64>() / mid.len() as f64;
        assert!((170.0..230.0).contains(&mean), "mean concurrency {mean}");
        // At 3:00 nobody is there.
        assert!(r.samples.iter().filter(|x| x.t < 8 * 3600).all(|x| x.active == 0));
    }

    /// The study's claim, computed: autoscaling a business-hours fleet saves
    /// a large share of the 24/7 cost, and a warm pool keeps waits short.
    #[test]
    fn autoscaling_saves_against_always_on() {
        let c = cat();
        let s = c.setup("ecs-ec2-ri").unwrap();
        let cfg = SimConfig::new(Profile::BusinessHours { peak: 500, off_hours: 0.1 });
        let r = run(&c, s, &cfg);
        assert!(r.saving_pct > 30.0, "saving {:.1}%", r.saving_pct);
        assert!(r.monthly_usd < r.always_on_monthly_usd);
        assert!(r.peak_instances >= 500 / 8, "{}", r.peak_instances);
        assert!(r.hits > r.misses, "hits {} misses {}", r.hits, r.misses);
        assert!(r.wait_p50_ms <= cfg.claim_ms, "p50 {}", r.wait_p50_ms);
    }

    #[test]
    fn a_pool_cuts_the_wait_of_a_burst() {
        let c = cat();
        let s = c.setup("ecs-ec2-od").unwrap();
        let mut cfg = SimConfig::new(Profile::Burst { base: 20, size: 100 });
        cfg.days = 1;
        cfg.pool = None;
        let cold = run(&c, s, &cfg);
        cfg.pool = Some((0, 300));
        let warm = run(&c, s, &cfg);
        assert!(warm.hits > 0);
        assert!(warm.wait_p50_ms < cold.wait_p50_ms, "warm {} cold {}", warm.wait_p50_ms, cold.wait_p50_ms);
        assert_eq!(cold.hits, 0);
        // No pool: every request pays at least the cold start.
        assert!(cold.wait_p50_ms >= s.start_ms[0]);
    }

    #[test]
    fn burst_arrivals_come_in_one_minute() {
        let p = Profile::Burst { base: 0, size: 120 };
        let total: u64 = (0..86_400).step_by(10).map(|t| p.burst_arrivals(t, 10)).sum();
        assert_eq!(total, 360);
        assert_eq!(p.burst_arrivals(10 * 3600, 10), 20);
        assert_eq!(p.burst_arrivals(5 * 86_400 + 10 * 3600, 10), 0, "no bursts on Saturday");
    }
}
