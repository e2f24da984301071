//! warren's vocabulary, shared by every other crate. No I/O beyond reading
//! the system's random source for ids.
//!
//! - [`WorkspaceId`]: lowercase alphanumeric ids (E2B host routing splits on `-`).
//! - [`TenantId`]: who a workspace belongs to.
//! - [`Size`]: the resources a workspace gets.
//! - [`State`] and [`State::can_become`]: the lifecycle state machine.
//! - [`Clock`]: time, owned by a trait so pools, reaper and metering can run
//!   on a manual clock in tests and simulations.
//! - [`autoscale::PoolPolicy`]: the warm-pool sizing policy, pure and
//!   clock-driven, shared by the orchestrator and the cost simulator.

pub mod autoscale;
mod clock;
mod id;
mod size;
mod state;
mod tenant;

pub use clock::{Clock, ManualClock, Stopwatch, SystemClock};
pub use id::{random_token, IdError, WorkspaceId};
pub use size::{Size, SizeError};
pub use state::{State, TransitionError};
pub use tenant::{TenantError, TenantId};
