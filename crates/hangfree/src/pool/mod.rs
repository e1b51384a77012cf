//! The pool: a supervisor thread per pool, workers as small state machines, and the
//! handles callers hold.
//!
//! From the bottom up: `ids` (task and worker ids), `task` (what is submitted and where
//! outcomes go) and `shared` (the inbox, gate and counters that callers and the
//! supervisor share); `lifecycle` (one worker's phases and the escalation) and `core` (the
//! pool's rules over every task and worker, events in and effects out, no system calls);
//! `supervisor` (the I/O shell that feeds the core and carries out its effects); `api` and
//! `handle` (what callers use).

mod api;
mod config;
mod core;
pub mod defaults;
mod duration;
mod epoll_wait;
mod events;
mod handle;
mod ids;
pub(crate) mod lifecycle;
mod shared;
mod stats;
mod supervisor;
mod task;

pub use api::{BuildError, JoinError, Pool, PoolBuilder, SubmitError};
pub use duration::MAX_DURATION;
pub use events::{EventHook, EventKind, PoolEvent};
pub use handle::{BatchHandle, TaskHandle};
pub use stats::Stats;
pub use task::{SharedPart, Sink, Task, TaskState};
