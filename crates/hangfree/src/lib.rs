//! hangfree: a process pool that can never hang.
//!
//! Tasks run in worker processes started by exec (or forked from an idle worker that
//! was, see [`PoolBuilder::fork_server`]), each leading its own process group. A task is
//! bytes in and bytes out: the pool never looks inside a payload, and a worker is any
//! program that speaks the protocol of [`PROTOCOL.md`] on its standard input — in Rust, a
//! loop over a [`worker::WorkerChannel`].
//!
//! The pool keeps one contract (the README states it too):
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
//! # Example
//!
//! One program that is both the pool and its workers: started with the argument
//! `worker`, it serves tasks on the channel the pool gave it ([`worker::WorkerChannel`]);
//! otherwise it is the pool, and starts itself as its workers. A task is a number as
//! text and its value is the square; `crash` makes the worker exit mid-task and `sleep`
//! never returns. It prints what became of those two:
//!
//! ```text
//! task 3 (crash): worker 5824 died with exit code 3 while running it
//! task 4 (sleep): timed out after 0.200 s; worker 5826 was stopped
//! ```
//!
// `standalone_crate`: the doctest is a program of its own (not merged with other
// doctests into one binary), so it can start itself as its workers.
//! ```standalone_crate
//! use std::time::Duration;
//!
//! use hangfree::wire::Kind;
//! use hangfree::worker::{self, WorkerChannel};
//! use hangfree::{Outcome, Pool, Task, TaskError, WorkerCommand};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     if std::env::args().nth(1).as_deref() == Some("worker") {
//!         serve();
//!     }
//!     let pool = Pool::builder(WorkerCommand::new(std::env::current_exe()?).arg("worker"))
//!         .workers(2)
//!         .build()?;
//!
//!     let square = pool.submit(Task::new("7"))?;
//!     let bad = pool.submit(Task::new("seven"))?;
//!     let crash = pool.submit(Task::new("crash").label("crash"))?;
//!     let late = pool.submit(Task::new("sleep").label("sleep").timeout(Duration::from_millis(200)))?;
//!
//!     assert_eq!(square.wait().into_result()?, b"49");
//!     match bad.wait() {
//!         Outcome::Raised(why) => assert_eq!(why, b"not a number: \"seven\""),
//!         other => panic!("expected an error, got {other:?}"),
//!     }
//!     match crash.wait() {
//!         Outcome::Failed(TaskError::WorkerLost(lost)) => println!("{lost}"),
//!         other => panic!("expected a lost worker, got {other:?}"),
//!     }
//!     match late.wait() {
//!         Outcome::Failed(e @ TaskError::TimedOut { .. }) => println!("{e}"),
//!         other => panic!("expected a time-out, got {other:?}"),
//!     }
//!
//!     // The lost worker and the stopped one were replaced: the pool goes on.
//!     assert_eq!(pool.submit(Task::new("-3"))?.wait().into_result()?, b"9");
//!     pool.close();
//!     pool.join(Some(Duration::from_secs(10)))?;
//!     Ok(())
//! }
//!
//! /// The worker's side: `Ready` to the pool's `Init`, then one answer per task, in order,
//! /// each sent before the next task is read.
//! fn serve() -> ! {
//!     let mut channel = match WorkerChannel::from_stdin() {
//!         Ok(c) => c,
//!         Err(e) => {
//!             // The pool is already gone.
//!             eprintln!("worker: {e}");
//!             std::process::exit(70);
//!         }
//!     };
//!     loop {
//!         let frame = match channel.recv() {
//!             Ok(Some(frame)) => frame,
//!             // End of file: the pool is gone or is stopping this worker. End it and
//!             // whatever it started.
//!             Ok(None) => worker::kill_own_group(),
//!             Err(e) => {
//!                 eprintln!("worker: {e}");
//!                 std::process::exit(71);
//!             }
//!         };
//!         let sent = match frame.kind {
//!             Kind::Init => channel.send(Kind::Ready, 0, b""),
//!             Kind::Task => {
//!                 let (kind, answer) = run(&frame.payload);
//!                 channel.send(kind, frame.task_id, &answer)
//!             }
//!             Kind::Shutdown => std::process::exit(0),
//!             other => {
//!                 eprintln!("worker: unexpected {other:?}");
//!                 std::process::exit(72);
//!             }
//!         };
//!         if sent.is_err() {
//!             std::process::exit(73);
//!         }
//!     }
//! }
//!
//! /// One task: its answer's kind (`Value` or `Raised`) and bytes.
//! fn run(task: &[u8]) -> (Kind, Vec<u8>) {
//!     let text = String::from_utf8_lossy(task);
//!     match &*text {
//!         "crash" => std::process::exit(3),
//!         "sleep" => loop {
//!             std::thread::sleep(Duration::from_secs(60));
//!         },
//!         _ => match text.parse::<i64>() {
//!             Ok(n) => (Kind::Value, (n * n).to_string().into_bytes()),
//!             Err(_) => (Kind::Raised, format!("not a number: {text:?}").into_bytes()),
//!         },
//!     }
//! }
//! ```
//!
//! A worker can just as well be a program of its own, in Rust or in any language:
//! [`PROTOCOL.md`] describes its side in full, and `crates/hangfree-hostile` in the
//! repository is a complete one, chunks included.
//!
//! [`PROTOCOL.md`]: https://github.com/hangfree/hangfree/blob/main/PROTOCOL.md

#![warn(missing_docs)]

pub mod arena;
pub mod cgroup;
pub mod fork_server;
pub mod mailbox;
mod memfd;
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
    BatchHandle, BuildError, EventKind, JoinError, MAX_DURATION, Pool, PoolBuilder, PoolEvent, SharedPart, Sink, Stats,
    SubmitError, Task, TaskHandle, TaskState,
};
pub use process::WorkerCommand;

// The README's example runs as a doctest too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
