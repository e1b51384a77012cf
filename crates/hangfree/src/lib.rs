//! hangfree: a process pool that can never hang.
//!
//! Tasks run in worker processes started by exec (or forked from an idle worker that
//! was, see [`PoolBuilder::fork_server`]), each leading its own process group.
//! The pool keeps one contract (the README's "The contract" states it too):
//!
//! 1. every submitted task ends in exactly one [`Outcome`];
//! 2. a worker's death is seen at once through its pidfd and pinned on the one task it
//!    was running; tasks it had not started run elsewhere;
//! 3. every wait takes a timeout or is woken by `terminate`;
//! 4. stopping a worker is SIGTERM to its group, a grace period, SIGKILL to the group,
//!    and a process that cannot be reaped after that is abandoned, never waited for;
//! 5. no worker or descendant in its group outlives the pool, and workers die with their
//!    parent;
//! 6. bad bytes on a channel are a protocol error on one task, never a hang;
//! 7. after `join`, no process, thread or descriptor of the pool is left;
//! 8. a task, and each item of a [`Task::chunk`], starts at most once unless `retries`
//!    asks for more: workers claim what they start on a [`page`] shared with the pool.
//!
//! The layers are modules: [`process`] (one supervised child; [`fork_server`] for
//! workers forked from a ready template), [`wire`] (frames), [`page`] (what a worker
//! started, shared without a message),
//! [`pool`] (the supervisor and its handles) and [`worker`] (the worker side of the
//! channel, for worker programs written in Rust). A language front collects outcomes in
//! a [`mailbox`] and reads its payloads' buffers with [`oob`].
//!
//! ```no_run
//! use std::time::Duration;
//! use hangfree::{Outcome, Pool, Task, WorkerCommand};
//!
//! let pool = Pool::builder(WorkerCommand::new("my-worker"))
//!     .workers(2)
//!     .task_timeout(Duration::from_secs(5))
//!     .build()?;
//! let handle = pool.submit(Task::new(b"input".to_vec()).label("parse(input)"))?;
//! match handle.wait() {
//!     Outcome::Value(bytes) => println!("{} bytes back", bytes.len()),
//!     Outcome::Raised(err) => eprintln!("task raised: {}", String::from_utf8_lossy(&err)),
//!     Outcome::Failed(e) => eprintln!("{e}"),
//! }
//! pool.close();
//! pool.join(Some(Duration::from_secs(10)))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod cgroup;
pub mod fork_server;
pub mod mailbox;
pub mod memory;
pub mod oob;
pub mod outcome;
pub mod page;
pub mod pool;
pub mod process;
pub mod spin;
pub mod wire;
pub mod worker;

pub use outcome::{
    Attempt, ExitStatus, LossCause, Outcome, OutcomeError, StartupFailure, TaskError, TaskRef, WorkerLost,
};
pub use pool::{
    BatchHandle, BuildError, EventKind, JoinError, MAX_DURATION, Pool, PoolBuilder, PoolEvent, Sink, Stats,
    SubmitError, Task, TaskHandle, TaskState,
};
pub use process::WorkerCommand;
