//! The pool: a supervisor thread per pool, workers as small state machines, and the
//! handles callers hold.

mod api;
mod config;
mod core;
mod duration;
mod epoll_wait;
mod events;
mod handle;
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
pub use task::{Sink, Task, TaskState};
