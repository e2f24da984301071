//! The warm-pool sizing policy: how many ready workspaces to keep.
//!
//! Pure code driven by timestamps from a [`crate::Clock`], so the same policy
//! runs in the orchestrator (real time) and in the cost simulator (simulated
//! time).
//!
//! The target follows Little's law: with claims arriving at λ per second and
//! a refill taking T seconds, λ·T workspaces are being rebuilt at any moment,
//! so a pool of λ·T empties exactly as fast as it refills. Arrivals are
//! bursty, so the policy adds `z·√(λ·T)` (a Poisson safety margin) and sizes
//! for the *peak* rate seen over the last short windows rather than the mean.
//! When demand falls the peak ages out of the window and the target shrinks,
//! never below `min` and never above `max`.

use std::collections::VecDeque;

/// Tuning of [`PoolPolicy`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    pub min: usize,
    pub max: usize,
    /// Length of one rate-measuring slot, ms.
    pub slot_ms: u64,
    /// How many slots of history the peak rate is taken over.
    pub slots: usize,
    /// Safety factor on the Poisson standard deviation (2.33 ≈ 99th percentile).
    pub z: f64,
    /// Refill time assumed before the first refill was measured, ms.
    pub initial_refill_ms: f64,
}

impl PolicyConfig {
    /// Sensible defaults: 10 s slots over 5 minutes, 99th-percentile margin.
    pub fn new(min: usize, max: usize) -> Self {
        PolicyConfig { min, max: max.max(min), slot_ms: 10_000, slots: 30, z: 2.33, initial_refill_ms: 1_000.0 }
    }
}

/// Adaptive pool target from the observed claim rate and refill time.
#[derive(Debug, Clone)]
pub struct PoolPolicy {
    cfg: PolicyConfig,
    /// (slot index, claims in that slot), oldest first.
    history: VecDeque<(u64, u64)>,
    /// Exponentially weighted mean refill time, ms.
    refill_ms: f64,
    refills: u64,
}

impl PoolPolicy {
    pub fn new(cfg: PolicyConfig) -> Self {
        PoolPolicy { cfg, history: VecDeque::new(), refill_ms: cfg.initial_refill_ms, refills: 0 }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    fn slot(&self, now_ms: u64) -> u64 {
        now_ms / self.cfg.slot_ms.max(1)
    }

    fn prune(&mut self, now_ms: u64) {
        let oldest = self.slot(now_ms).saturating_sub(self.cfg.slots as u64 - 1);
        while self.history.front().is_some_and(|(s, _)| *s < oldest) {
            self.history.pop_front();
        }
    }

    /// A request for a workspace of this pool (hit or miss: both are demand).
    pub fn record_claim(&mut self, now_ms: u64) {
        self.record_claims(now_ms, 1);
    }

    pub fn record_claims(&mut self, now_ms: u64, n: u64) {
        let slot = self.slot(now_ms);
        match self.history.back_mut() {
            Some((s, c)) if *s == slot => *c += n,
            _ => self.history.push_back((slot, n)),
        }
        self.prune(now_ms);
    }

    /// A refill finished: it took `ms` from create to ready.
    pub fn record_refill(&mut self, ms: u64) {
        self.refills += 1;
        // The first measurement replaces the guess; later ones move the mean.
        let alpha = if self.refills == 1 { 1.0 } else { 0.2 };
        self.refill_ms += alpha * (ms as f64 - self.refill_ms);
    }

    /// Mean refill time, ms.
    pub fn refill_ms(&self) -> f64 {
        self.refill_ms
    }

    /// Peak claim rate over the window, per second.
    pub fn peak_rate(&self, now_ms: u64) -> f64 {
        let oldest = self.slot(now_ms).saturating_sub(self.cfg.slots as u64 - 1);
        let peak = self.history.iter().filter(|(s, _)| *s >= oldest).map(|(_, c)| *c).max().unwrap_or(0);
        peak as f64 * 1000.0 / self.cfg.slot_ms.max(1) as f64
    }

    /// How many ready workspaces to keep now.
    pub fn target(&self, now_ms: u64) -> usize {
        let in_refill = self.peak_rate(now_ms) * self.refill_ms / 1000.0;
        let want = if in_refill > 0.0 { (in_refill + self.cfg.z * in_refill.sqrt()).ceil() as usize } else { 0 };
        want.clamp(self.cfg.min, self.cfg.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_pool_sits_at_min() {
        let p = PoolPolicy::new(PolicyConfig::new(2, 50));
        assert_eq!(p.target(1_000_000), 2);
    }

    #[test]
    fn target_follows_littles_law_with_margin() {
        let mut p = PoolPolicy::new(PolicyConfig::new(0, 1000));
        p.record_refill(2_000); // T = 2 s
                                // 50 claims in one 10 s slot: λ = 5/s, λT = 10, margin 2.33·√10 = 7.4.
        for i in 0..50 {
            p.record_claim(100_000 + i * 100);
        }
        assert_eq!(p.peak_rate(105_000), 5.0);
        assert_eq!(p.target(105_000), 18);
    }

    #[test]
    fn target_shrinks_when_demand_stops_and_respects_bounds() {
        let mut p = PoolPolicy::new(PolicyConfig::new(1, 10));
        p.record_refill(5_000);
        p.record_claims(0, 500); // λ = 50/s, λT = 250: capped at max
        assert_eq!(p.target(1_000), 10);
        // Still inside the 5-minute window.
        assert_eq!(p.target(290_000), 10);
        // The burst has aged out: back to min.
        assert_eq!(p.target(310_000), 1);
    }

    #[test]
    fn refill_time_is_a_moving_mean() {
        let mut p = PoolPolicy::new(PolicyConfig::new(0, 10));
        assert_eq!(p.refill_ms(), 1_000.0);
        p.record_refill(100);
        assert_eq!(p.refill_ms(), 100.0);
        p.record_refill(600);
        assert_eq!(p.refill_ms(), 200.0);
    }

    #[test]
    fn min_above_max_is_raised_not_inverted() {
        let c = PolicyConfig::new(5, 2);
        assert_eq!((c.min, c.max), (5, 5));
        assert_eq!(PoolPolicy::new(c).target(0), 5);
    }
}
