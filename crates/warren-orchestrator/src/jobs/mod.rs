//! Background jobs. Each is a module with one `tick(orchestrator, now)`
//! that does one pass and says how many workspaces it acted on; one
//! scheduler ([`Orchestrator::spawn_jobs`]) runs them at the intervals of
//! [`Intervals`] (spaced in monotonic time), each tick reading policy time
//! (expiry, idleness, heartbeats) from the orchestrator's `Clock`. Tests
//! drive them one tick at a time with [`Orchestrator::run_job`] and a
//! manual clock.
//!
//! | job | what a tick does |
//! |---|---|
//! | `heartbeat` | this replica's heartbeat (replicas only) |
//! | `lease` | takes or renews the shared-jobs lease (replicas only) |
//! | `sweeper` | fails the workspaces of dead replicas (replicas only, under the `sweeper` lease) |
//! | `refill` | warm pools to target |
//! | `watch` | fails workspaces that ended on their own on the backend |
//! | `reap` | ends expired workspaces, finishes stuck kills, purges old failures |
//! | `idle` | pauses (or kills) idle workspaces when `idle_timeout` is set |

use std::sync::Arc;
use std::time::Duration;

use warren_core::Stopwatch;

use crate::{Orchestrator, Result};

mod heartbeat;
mod idle;
mod lease;
mod reap;
mod refill;
mod sweeper;
mod watch;

/// A background job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    Heartbeat,
    Lease,
    Sweeper,
    Refill,
    Watch,
    Reap,
    Idle,
}

impl Job {
    /// In the order the scheduler runs jobs that are due together: the
    /// heartbeat and lease first (they decide what this replica owns).
    pub const ALL: [Job; 7] = [Job::Heartbeat, Job::Lease, Job::Sweeper, Job::Refill, Job::Watch, Job::Reap, Job::Idle];

    pub fn name(self) -> &'static str {
        match self {
            Job::Heartbeat => "heartbeat",
            Job::Lease => "lease",
            Job::Sweeper => "sweeper",
            Job::Refill => "refill",
            Job::Watch => "watch",
            Job::Reap => "reap",
            Job::Idle => "idle",
        }
    }

    /// Jobs that only mean something with replicas sharing a store.
    fn replicas_only(self) -> bool {
        matches!(self, Job::Heartbeat | Job::Lease | Job::Sweeper)
    }
}

/// How often each job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intervals {
    pub heartbeat: Duration,
    pub lease: Duration,
    pub sweeper: Duration,
    pub refill: Duration,
    pub watch: Duration,
    pub reap: Duration,
    pub idle: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            heartbeat: Duration::from_secs(2),
            lease: Duration::from_secs(2),
            sweeper: Duration::from_secs(2),
            refill: Duration::from_secs(1),
            watch: Duration::from_secs(10),
            reap: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        }
    }
}

impl Intervals {
    pub fn of(&self, job: Job) -> Duration {
        match job {
            Job::Heartbeat => self.heartbeat,
            Job::Lease => self.lease,
            Job::Sweeper => self.sweeper,
            Job::Refill => self.refill,
            Job::Watch => self.watch,
            Job::Reap => self.reap,
            Job::Idle => self.idle,
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub job: Job,
    /// Workspaces acted on (reaped, failed, paused, drained…); for the
    /// lease, 1 while this replica holds it.
    pub acted: usize,
}

/// The running scheduler. [`Jobs::shutdown`] lets the tick in progress
/// finish, stops the pools' refill workers, and returns.
pub struct Jobs {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Jobs {
    pub async fn shutdown(self) {
        self.stop.notify_one();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "background jobs ended abnormally");
        }
    }
}

impl Orchestrator {
    /// Runs one tick of `job` as if at `now_ms`.
    pub async fn run_job(self: &Arc<Self>, job: Job, now_ms: u64) -> Result<Report> {
        let acted = match job {
            Job::Heartbeat => heartbeat::tick(self, now_ms).await?,
            Job::Lease => lease::tick(self, now_ms).await?,
            Job::Sweeper => sweeper::tick(self, now_ms).await?,
            Job::Refill => refill::tick(self, now_ms).await?,
            Job::Watch => watch::tick(self, now_ms).await?,
            Job::Reap => reap::tick(self, now_ms).await?,
            Job::Idle => idle::tick(self, now_ms).await?,
        };
        Ok(Report { job, acted })
    }

    /// Starts the scheduler: every job runs once at start, then at its
    /// interval (in monotonic time; each tick reads the `Clock`).
    pub fn spawn_jobs(self: &Arc<Self>) -> Jobs {
        let stop = Arc::new(tokio::sync::Notify::new());
        let me = self.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let jobs: Vec<Job> =
                Job::ALL.into_iter().filter(|j| !j.replicas_only() || !me.cfg.node.is_empty()).collect();
            // When each job last ran, in monotonic time: a wall clock
            // stepped back (NTP) must not hold the heartbeat. The jobs
            // themselves read policy time from the Clock.
            let mut last: Vec<(Job, Option<Stopwatch>)> = jobs.iter().map(|j| (*j, None)).collect();
            loop {
                for (job, ran) in last.iter_mut() {
                    let interval = me.cfg.intervals.of(*job);
                    if ran.is_some_and(|t| !t.passed(interval)) {
                        continue;
                    }
                    *ran = Some(Stopwatch::start());
                    match me.run_job(*job, me.clock.now_ms()).await {
                        Ok(r) => me.log_report(&r),
                        Err(e) => tracing::warn!(job = job.name(), error = %e, "job failed"),
                    }
                }
                let wait = last
                    .iter()
                    .map(|(job, ran)| {
                        let interval = me.cfg.intervals.of(*job);
                        ran.map_or(Duration::ZERO, |t| interval.saturating_sub(t.elapsed()))
                    })
                    .min()
                    .unwrap_or(Duration::from_secs(1))
                    .clamp(Duration::from_millis(5), Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.notified() => break,
                }
            }
            me.stop_pools().await;
        });
        Jobs { stop, task }
    }

    fn log_report(&self, r: &Report) {
        let what = match r.job {
            Job::Sweeper => "workspace(s) of dead replicas marked failed",
            Job::Watch => "workspace(s) ended on their own and were marked failed",
            Job::Reap => "workspace(s) reaped",
            Job::Idle => "idle workspace(s) paused or ended",
            Job::Refill => "pool member(s) drained",
            Job::Heartbeat | Job::Lease => return,
        };
        if r.acted > 0 {
            tracing::info!(job = r.job.name(), count = r.acted, "{what}");
        }
    }
}
