//! Counters a pool keeps, readable at any time without stopping it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a pool's counters. Counts are of tasks, a chunk counting as its items
/// (see [`crate::Task::chunk`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tasks accepted by `submit` or `submit_batch`.
    pub submitted: u64,
    /// Tasks that returned a value.
    pub values: u64,
    /// Tasks that raised.
    pub raised: u64,
    /// Tasks whose worker died under them.
    pub worker_lost: u64,
    /// Tasks that passed their time limit.
    pub timed_out: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks ended by `terminate` (or by dropping the pool).
    pub terminated: u64,
    /// Tasks failed because workers could not start.
    pub startup_failed: u64,
    /// Tasks failed because their worker broke the protocol.
    pub protocol_errors: u64,
    /// Tasks failed because their worker passed the memory limit.
    pub memory_limited: u64,
    /// Tasks failed because the pool itself failed (its supervisor thread panicked).
    pub pool_failed: u64,
    /// Times a task was run again because its worker died (see `retries`).
    pub retries: u64,
    /// Worker processes started.
    pub workers_spawned: u64,
    /// Workers that died without being asked to (crash, outside kill, broken channel).
    pub workers_lost: u64,
    /// Workers retired after `max_tasks_per_worker` tasks.
    pub workers_recycled: u64,
    /// Workers that could not be reaped even after SIGKILL; never waited for again.
    pub workers_abandoned: u64,
    /// Worker start-ups that failed (initializer error, early exit, timeout, spawn error).
    pub startup_failures: u64,
}

impl Stats {
    /// Tasks that ended, in any way.
    pub fn finished(&self) -> u64 {
        self.values
            + self.raised
            + self.worker_lost
            + self.timed_out
            + self.cancelled
            + self.terminated
            + self.startup_failed
            + self.protocol_errors
            + self.memory_limited
            + self.pool_failed
    }
}

macro_rules! counters {
    ($($f:ident),*) => {
        #[derive(Default, Debug)]
        pub(crate) struct Counters { $(pub $f: AtomicU64,)* }
        impl Counters {
            pub fn snapshot(&self) -> Stats { Stats { $($f: self.$f.load(Relaxed),)* } }
        }
    };
}

counters!(
    submitted,
    values,
    raised,
    worker_lost,
    timed_out,
    cancelled,
    terminated,
    startup_failed,
    protocol_errors,
    memory_limited,
    pool_failed,
    retries,
    workers_spawned,
    workers_lost,
    workers_recycled,
    workers_abandoned,
    startup_failures
);

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

pub(crate) fn bump_by(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}
