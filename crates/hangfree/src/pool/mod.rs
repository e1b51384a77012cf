//! The pool: a supervisor thread per pool, workers as small state machines, and the
//! handles callers hold.

mod api;
pub mod defaults;
mod duration;
mod epoll_wait;
mod events;
mod handle;
pub(crate) mod lifecycle;
mod stats;
mod supervisor;

pub use api::{BuildError, JoinError, Pool, PoolBuilder, SubmitError};
pub use duration::MAX_DURATION;
pub use events::{EventHook, EventKind, PoolEvent};
pub use handle::{BatchHandle, Sink, Task, TaskHandle, TaskState};
pub use stats::Stats;
