//! What a pool reports as it goes: worker deaths, time-outs, each escalation step. Fronts
//! turn these into log records (the Python package logs them under `hangfree`).

use std::fmt;
use std::sync::Arc;

/// The kind of a [`PoolEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A worker process was started.
    WorkerStarted,
    /// A worker died without being asked to (crash, outside kill, broken channel).
    WorkerLost,
    /// A task passed its time limit.
    TaskTimedOut,
    /// A worker passed the memory limit.
    MemoryLimit,
    /// A task whose worker died is run again.
    Retry,
    /// SIGTERM was sent to a worker's process group.
    Terminate,
    /// SIGKILL was sent to a worker's process group (the grace period ran out).
    Kill,
    /// A worker could not be reaped even after SIGKILL and is no longer waited for.
    Abandoned,
    /// A worker is retired after `max_tasks_per_worker` tasks.
    Recycled,
    /// A worker failed to start.
    StartupFailed,
    /// The fork server was started (see [`crate::PoolBuilder::fork_server`]).
    ForkServerStarted,
    /// The fork server failed; workers are started by exec from then on.
    ForkServerFailed,
}

impl EventKind {
    /// Whether the event means something went wrong (log as a warning rather than
    /// information).
    pub fn is_trouble(self) -> bool {
        !matches!(
            self,
            EventKind::WorkerStarted | EventKind::ForkServerStarted | EventKind::Recycled | EventKind::Terminate
        )
    }
}

/// One thing that happened in a pool, with a message that says it in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEvent {
    /// What happened.
    pub kind: EventKind,
    /// The worker concerned.
    pub pid: Option<i32>,
    /// The task concerned, if any.
    pub task_id: Option<u64>,
    /// The event in words.
    pub message: String,
}

impl fmt::Display for PoolEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A function the supervisor calls with each event. It runs on the supervisor thread, so
/// it must be quick and must not block or call back into the pool.
pub type EventHook = Arc<dyn Fn(&PoolEvent) + Send + Sync>;
