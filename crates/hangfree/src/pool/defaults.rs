//! Every default of a pool, in one place.
//!
//! [`Pool::builder`](crate::Pool::builder) starts from the plain defaults, which suit any
//! worker program that speaks the protocol. A language front whose worker program can do
//! more starts from [`PoolBuilder::front_defaults`](crate::PoolBuilder::front_defaults),
//! which adds the `FRONT_` settings and the stack dump. Fronts report these values
//! instead of repeating them (the Python package's docstrings are tested against them).

use std::time::Duration;

pub use crate::wire::DEFAULT_MAX_FRAME as MAX_FRAME;

/// The number of workers when none is given: the CPUs this process may use, as
/// [`std::thread::available_parallelism`] counts them (its affinity mask and, on Linux,
/// its cgroup's CPU quota), or 1 if that cannot be known.
pub fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Time between SIGTERM and SIGKILL when a worker is stopped.
pub const GRACE: Duration = Duration::from_secs(1);

/// Time after SIGKILL before a process that has still not exited is abandoned.
pub const KILL_WAIT: Duration = Duration::from_secs(1);

/// How long a new worker may take to send `Ready`, its initializer included.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Start-up failures in a row after which the pool stops trying.
pub const MAX_STARTUP_FAILURES: u32 = 3;

/// Chunks a worker may hold at once.
pub const PREFETCH: usize = 2;

/// Bytes of each worker's stderr kept for *worker lost* reports.
pub const STDERR_TAIL: usize = 4096;

/// Whether worker stderr is copied to this process's stderr.
pub const FORWARD_STDERR: bool = true;

/// How often busy workers' memory is sampled against a memory limit.
pub const MEMORY_POLL: Duration = Duration::from_millis(50);

/// Times a task whose worker died is run again.
pub const RETRIES: u32 = 0;

/// Whether each worker gets a cgroup of its own.
pub const CGROUP: bool = false;

/// Whether workers are forked from a fork server. Off: a worker program must support
/// the fork server's request protocol, and an arbitrary one may not.
pub const FORK_SERVER: bool = false;

/// Whether a front's workers are forked from a fork server. On: a front's worker is an
/// interpreter whose start costs tens of milliseconds, and it supports the fork server,
/// so a new worker is up in about a millisecond instead.
pub const FRONT_FORK_SERVER: bool = true;

/// Whether `build` returns before the first worker (or fork server) is started: no, so
/// that any failure to start it is `build`'s error.
pub const START_IN_BACKGROUND: bool = false;

/// Whether a front's `build` returns before the fork server is started: yes. A front's
/// worker is its own interpreter, checked to be an executable file; waiting for the
/// exec costs `Pool()` round trips between threads, milliseconds on a loaded machine.
pub const FRONT_START_IN_BACKGROUND: bool = true;

/// How long a pool's idle fork server is kept for a later pool of the same process: not
/// at all. After `join`, nothing of the pool is left.
pub const KEEP_FORK_SERVER: Duration = Duration::ZERO;

/// How long a front's idle fork server is kept for a later pool of the same process with
/// the same worker command and environment. A front's server is an interpreter that
/// imported the caller's script (tens of milliseconds to seconds), and programs often
/// make one pool after another; joblib's loky keeps its idle workers 300 s.
pub const FRONT_KEEP_FORK_SERVER: Duration = Duration::from_secs(60);

/// The signal a front's worker answers with the running task's stack (SIGUSR1). Sent
/// only to workers that install a handler: its default action ends the process.
pub const STACK_DUMP_SIGNAL: i32 = libc::SIGUSR1;

/// How long a front's pool waits for a late task's stack before it stops the worker.
pub const STACK_DUMP_WAIT: Duration = Duration::from_millis(500);

/// A front's pool sends work ahead only to workers whose tasks take less than this. A
/// task sent ahead to a busy worker cannot be taken back: behind a long task it would
/// wait while another worker idles, where the standard library's pools, with one shared
/// queue, let any idle worker take it. Behind short tasks, sending ahead saves the round
/// trip between them.
pub const FRONT_PREFETCH_BELOW: Duration = Duration::from_millis(2);
