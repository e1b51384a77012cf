//! What a pool is built with: the settings [`crate::PoolBuilder`] checked, fixed for the
//! pool's life.

use std::time::Duration;

use rustix::process::Signal;

use super::events::EventHook;
use super::lifecycle::Timing;
use crate::process::WorkerCommand;

/// Everything the pool's policy needs, fixed at build time.
#[derive(Clone)]
pub(crate) struct Config {
    pub cmd: WorkerCommand,
    pub workers: usize,
    pub task_timeout: Option<Duration>,
    pub timing: Timing,
    pub startup_timeout: Duration,
    pub max_tasks_per_worker: Option<u64>,
    pub max_startup_failures: u32,
    pub init_payload: Vec<u8>,
    pub max_frame: u64,
    pub prefetch: usize,
    pub prefetch_below: Option<Duration>,
    pub stderr_tail: usize,
    pub forward_stderr: bool,
    pub max_memory: Option<u64>,
    pub memory_poll: Duration,
    pub retries: u32,
    /// Signal that asks a worker for the running task's stack, and how long to wait.
    pub stack_dump: Option<(Signal, Duration)>,
    pub on_event: Option<EventHook>,
    /// In cgroup mode, the cgroup v2 directory under which each worker gets its own.
    pub cgroup_parent: Option<std::path::PathBuf>,
    /// Fork workers from a fork server instead of starting each by exec.
    pub fork_server: bool,
    /// How long the fork server is kept for a later pool after this one ends (zero: it
    /// is stopped with the pool).
    pub keep_fork_server: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("cmd", &self.cmd)
            .field("workers", &self.workers)
            .field("task_timeout", &self.task_timeout)
            .field("timing", &self.timing)
            .field("max_memory", &self.max_memory)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}
