//! The pool as callers see it: a builder, submission, and bounded shutdown.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::Config;
use super::defaults;
use super::duration::{MAX_DURATION, saturate};
use super::handle::{BatchHandle, BatchSink, Slot, TaskHandle};
use super::ids::TaskId;
use super::lifecycle::Timing;
use super::shared::{Command, Gate, Reply, Shared, lock};
use super::stats::Stats;
use super::supervisor::Supervisor;
use super::task::{Sink, Task, TaskState};
use crate::outcome::StartupFailure;
use crate::process::WorkerCommand;

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is out of range.
    #[error("invalid pool setting: {0}")]
    Invalid(&'static str),
    /// The first worker could not be started (the program is missing, not executable…).
    #[error("{0}")]
    Spawn(std::io::Error),
    /// Cgroup mode was asked for and cgroups cannot be made here.
    #[error("cgroup mode is not available: {0}")]
    Cgroup(String),
    /// The pool's own resources (epoll, eventfd, thread) could not be created.
    #[error("cannot create the pool: {0}")]
    Resources(std::io::Error),
}

/// Why a submission was refused. Nothing of a refused submission was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `close` was called.
    #[error("the pool is closed to new tasks")]
    Closed,
    /// `terminate` was called, or the pool was dropped.
    #[error("the pool was terminated")]
    Terminated,
    /// Workers keep failing to start; no task can run.
    #[error("the pool cannot start workers: {0}")]
    Broken(StartupFailure),
    /// The process forked after the pool was made; the pool belongs to the parent.
    #[error("this pool was created by process {owner} and cannot be used in its forked child {current}")]
    Forked {
        /// The process that created the pool.
        owner: u32,
        /// This process.
        current: u32,
    },
    /// A task's setting is out of range (a time limit of zero).
    #[error("{0}")]
    Invalid(&'static str),
    /// The pool failed: its supervisor thread panicked (a bug in hangfree). Every task it
    /// held ended as [`crate::TaskError::PoolFailed`] with the same reason.
    #[error("the pool failed: {0}")]
    Failed(Arc<str>),
    /// A payload is larger than the pool's maximum frame size.
    #[error("item {index} of the submission is {len} bytes, more than the maximum frame size of {max} bytes")]
    TooLarge {
        /// The item's index in its submission.
        index: usize,
        /// Its payload length.
        len: usize,
        /// The limit.
        max: u64,
    },
}

/// `join` did not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// `join` needs `close` or `terminate` first, or it could wait forever.
    #[error("join() needs close() or terminate() first")]
    StillOpen,
    /// The workers were still finishing when the limit passed; the pool goes on winding
    /// down and `join` may be called again.
    #[error("the pool did not finish within {0:?}")]
    Timeout(Duration),
}

/// Builds a [`Pool`]. Every setting has a default, given in [`defaults`] (a language front
/// starts from [`PoolBuilder::front_defaults`]). Durations longer than [`MAX_DURATION`]
/// are taken as [`MAX_DURATION`] (see there).
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    cfg: Config,
    stack_dump: Option<(i32, Duration)>,
    cgroup: bool,
    start_in_background: bool,
}

impl PoolBuilder {
    /// Number of worker processes (default: [`defaults::workers`], the CPUs this process may
    /// use).
    pub fn workers(mut self, n: usize) -> Self {
        self.cfg.workers = n;
        self
    }

    /// Default time limit of every task (default: none). A task past its limit ends as
    /// timed out and its worker is stopped; other tasks go on. A limit of
    /// [`MAX_DURATION`] or more means no limit; zero is refused by [`PoolBuilder::build`]
    /// (a task could never finish).
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.cfg.task_timeout = (limit < MAX_DURATION).then_some(limit);
        self
    }

    /// Time between SIGTERM and SIGKILL when a worker is stopped (default: [`defaults::GRACE`]). Zero
    /// sends SIGKILL at once. A grace of [`MAX_DURATION`] (or more) never sends it in
    /// practice, and `terminate` + `join` may then wait for workers that ignore SIGTERM.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.cfg.timing.grace = saturate(grace);
        self
    }

    /// Time after SIGKILL before a process that has still not exited is abandoned:
    /// reported in [`Stats::workers_abandoned`] and never waited for again (default:
    /// [`defaults::KILL_WAIT`]).
    pub fn kill_wait(mut self, wait: Duration) -> Self {
        self.cfg.timing.kill_wait = saturate(wait);
        self
    }

    /// How long a new worker may take to send `Ready`, initializer included (default:
    /// [`defaults::STARTUP_TIMEOUT`]). A worker past it is stopped and counts as a start-up failure. A limit of
    /// [`MAX_DURATION`] or more never passes in practice; zero is refused by
    /// [`PoolBuilder::build`] (no worker could ever start).
    pub fn startup_timeout(mut self, limit: Duration) -> Self {
        self.cfg.startup_timeout = saturate(limit);
        self
    }

    /// Retire a worker after it has been given this many tasks and start a fresh one
    /// (default: never).
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.cfg.max_tasks_per_worker = Some(n);
        self
    }

    /// After this many start-up failures in a row (default: [`defaults::MAX_STARTUP_FAILURES`]),
    /// the pool stops trying:
    /// every waiting task and every later submission fails with the last failure,
    /// instead of the pool respawning forever.
    pub fn max_startup_failures(mut self, n: u32) -> Self {
        self.cfg.max_startup_failures = n;
        self
    }

    /// Payload sent to every worker in its `Init` frame (default: empty).
    pub fn init_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.cfg.init_payload = payload.into();
        self
    }

    /// Largest frame payload accepted in either direction (default:
    /// [`defaults::MAX_FRAME`], any a frame can carry: payloads are limited by memory
    /// only).
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.cfg.max_frame = bytes;
        self
    }

    /// Chunks a worker may hold at once (default: [`defaults::PREFETCH`]): 1 sends work
    /// only to idle workers; 2 keeps the next chunk waiting in the worker's channel, which
    /// hides the round trip between tasks. Tasks sent ahead to a worker that dies are run elsewhere.
    pub fn prefetch(mut self, chunks: usize) -> Self {
        self.cfg.prefetch = chunks;
        self
    }

    /// Sends work ahead (see [`PoolBuilder::prefetch`]) only to workers whose recent tasks
    /// took less than `limit` and whose current task has run less than it, so a task never
    /// waits long behind a slow one while another worker is idle (default: always send
    /// ahead; a front's: [`defaults::FRONT_PREFETCH_BELOW`]).
    pub fn prefetch_below(mut self, limit: Duration) -> Self {
        self.cfg.prefetch_below = Some(saturate(limit));
        self
    }

    /// Bytes of each worker's stderr kept for *worker lost* reports (default:
    /// [`defaults::STDERR_TAIL`]).
    pub fn stderr_tail(mut self, bytes: usize) -> Self {
        self.cfg.stderr_tail = bytes;
        self
    }

    /// Whether worker stderr is copied to this process's stderr as it arrives (default:
    /// [`defaults::FORWARD_STDERR`]).
    pub fn forward_stderr(mut self, on: bool) -> Self {
        self.cfg.forward_stderr = on;
        self
    }

    /// Stops a worker whose resident memory passes `bytes` while it runs a task; the task
    /// ends as [`crate::TaskError::MemoryLimit`] and the pool goes on (default: no limit).
    /// Memory is sampled every `memory_poll` (see [`crate::memory::parse_size`] for
    /// limits written as text).
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.cfg.max_memory = Some(bytes);
        self
    }

    /// How often busy workers' memory is sampled against `max_memory` (default:
    /// [`defaults::MEMORY_POLL`]).
    pub fn memory_poll(mut self, every: Duration) -> Self {
        self.cfg.memory_poll = saturate(every);
        self
    }

    /// Runs a task again, on another worker, when its worker dies under it — at most `n`
    /// times (default: [`defaults::RETRIES`]). A task that kills `n + 1` workers is quarantined: it ends as
    /// *worker lost* listing every attempt. A task that raised is never retried.
    pub fn retries(mut self, n: u32) -> Self {
        self.cfg.retries = n;
        self
    }

    /// When a task passes its time limit, first send `signal` to its worker (not its
    /// group) and wait up to `wait` for a `Stack` frame saying where the task is; the
    /// text goes into [`crate::TaskError::TimedOut`]. Then the worker is stopped as usual.
    /// Only for workers that answer the signal (the Python worker does, for SIGUSR1).
    /// Default: off; a front's: [`defaults::STACK_DUMP_SIGNAL`], waiting
    /// [`defaults::STACK_DUMP_WAIT`].
    pub fn stack_dump(mut self, signal: i32, wait: Duration) -> Self {
        self.stack_dump = Some((signal, saturate(wait)));
        self
    }

    /// Calls `hook` with every [`crate::PoolEvent`]: worker deaths, time-outs, each
    /// escalation step. It runs on the supervisor thread: it must be quick and must not
    /// block or call back into the pool.
    pub fn on_event(mut self, hook: impl Fn(&crate::PoolEvent) + Send + Sync + 'static) -> Self {
        self.cfg.on_event = Some(Arc::new(hook));
        self
    }

    /// Puts each worker in a cgroup (v2) of its own, under this process's cgroup, and
    /// kills that cgroup whole whenever the worker is killed or exits: descendants that
    /// left the worker's process group (`setsid` daemons) die too. Needs a writable
    /// cgroup v2 hierarchy and `cgroup.kill` (Linux ≥ 5.14); `build` fails otherwise.
    /// Default: [`defaults::CGROUP`] (process groups only).
    pub fn cgroup(mut self, on: bool) -> Self {
        self.cgroup = on;
        self
    }

    /// Starts the worker command once as a *fork server* (with `HANGFREE_FORK_SERVER=1`,
    /// see `PROTOCOL.md`) and has it fork each worker, instead of starting every worker by
    /// exec: a new worker is then up in about a millisecond rather than a program start.
    /// The worker program must support it (a Rust worker built on
    /// [`crate::worker::WorkerChannel::from_stdin`] does). Workers forked this way are
    /// children of this process like exec'd ones, and keep the whole contract. If the
    /// server fails, the pool says so (an event) and goes on starting workers by exec.
    /// Workers see the environment and working directory of the server's start, not of
    /// their own. Cgroup mode always starts workers by exec. Default:
    /// [`defaults::FORK_SERVER`]; a front's: [`defaults::FRONT_FORK_SERVER`].
    pub fn fork_server(mut self, on: bool) -> Self {
        self.cfg.fork_server = on;
        self
    }

    /// Keeps the idle fork server for up to `idle` after the pool ends, for the next pool
    /// of this process built from the same worker command, frame limit and environment,
    /// which then forks its workers at once instead of starting a server. A kept server
    /// is the process's, not the pool's: it forks nothing while kept, is stopped after
    /// `idle`, by [`crate::fork_server::release_kept`], or when the process ends (its
    /// parent-death signal), and is the one thing of a pool that outlives `join`. A server
    /// that has not answered yet when the pool ends (it is still starting) is stopped. Zero
    /// (default: [`defaults::KEEP_FORK_SERVER`]; a front's:
    /// [`defaults::FRONT_KEEP_FORK_SERVER`]) stops it with the pool.
    pub fn keep_fork_server(mut self, idle: Duration) -> Self {
        self.cfg.keep_fork_server = idle;
        self
    }

    /// Whether [`PoolBuilder::build`] returns before the first worker (or the fork server)
    /// is started, which the supervisor thread then does. `build` still refuses a worker
    /// program given by an absolute path that is not an executable file; any other
    /// failure to start is a start-up failure of the pool, as a later worker's is (after
    /// `max_startup_failures`, every waiting and later task fails with
    /// [`TaskError::StartupFailed`](crate::TaskError::StartupFailed) or [`SubmitError::Broken`]). Saves the caller the
    /// round trips to the supervisor thread and the exec: milliseconds on a loaded machine.
    /// Default: [`defaults::START_IN_BACKGROUND`]; a front's:
    /// [`defaults::FRONT_START_IN_BACKGROUND`].
    pub fn start_in_background(mut self, on: bool) -> Self {
        self.start_in_background = on;
        self
    }

    /// The defaults of a language front, on top of the builder's: workers forked from a
    /// fork server ([`defaults::FRONT_FORK_SERVER`]) kept for the next pool
    /// ([`defaults::FRONT_KEEP_FORK_SERVER`]), a late task's stack asked for
    /// ([`defaults::STACK_DUMP_SIGNAL`], [`defaults::STACK_DUMP_WAIT`]), and work sent
    /// ahead only behind short tasks ([`defaults::FRONT_PREFETCH_BELOW`]). Only for a
    /// worker program that supports the fork server and answers the signal, as the
    /// Python worker does; later calls override each setting.
    pub fn front_defaults(self) -> Self {
        self.fork_server(defaults::FRONT_FORK_SERVER)
            .keep_fork_server(defaults::FRONT_KEEP_FORK_SERVER)
            .stack_dump(defaults::STACK_DUMP_SIGNAL, defaults::STACK_DUMP_WAIT)
            .prefetch_below(defaults::FRONT_PREFETCH_BELOW)
            .start_in_background(defaults::FRONT_START_IN_BACKGROUND)
    }

    /// Starts the supervisor thread and the first worker. Fails if the first worker cannot
    /// be started at all (with [`PoolBuilder::start_in_background`], only if its program
    /// is not an executable file); later start-up failures are handled by the pool.
    pub fn build(self) -> Result<Pool, BuildError> {
        let mut cfg = self.cfg;
        if cfg.workers == 0 {
            return Err(BuildError::Invalid("workers must be at least 1"));
        }
        if cfg.max_startup_failures == 0 {
            return Err(BuildError::Invalid("max_startup_failures must be at least 1"));
        }
        if cfg.task_timeout == Some(Duration::ZERO) {
            return Err(BuildError::Invalid("task_timeout must be > 0 or None"));
        }
        if cfg.startup_timeout.is_zero() {
            return Err(BuildError::Invalid("startup_timeout must be > 0"));
        }
        if cfg.max_tasks_per_worker == Some(0) {
            return Err(BuildError::Invalid("max_tasks_per_worker must be at least 1"));
        }
        if let Some((n, wait)) = self.stack_dump {
            if !(1..=64).contains(&n) || n == 9 || n == 19 {
                return Err(BuildError::Invalid("stack_dump needs a catchable signal number"));
            }
            // SAFETY: checked just above to be a valid, non-zero signal number.
            cfg.stack_dump = Some((unsafe { rustix::process::Signal::from_raw_unchecked(n) }, wait));
        }
        if self.cgroup {
            let parent = crate::cgroup::own_cgroup()
                .and_then(|p| crate::cgroup::check_writable(&p).map(|()| p))
                .map_err(|e| BuildError::Cgroup(e.to_string()))?;
            cfg.cgroup_parent = Some(parent);
        }
        if cfg.memory_poll.is_zero() {
            return Err(BuildError::Invalid("memory_poll must be positive"));
        }
        if cfg.init_payload.len() as u64 > cfg.max_frame {
            return Err(BuildError::Invalid("init payload is larger than max_frame"));
        }
        let max_frame = cfg.max_frame;
        let workers = cfg.workers;
        let grace = cfg.timing.grace.saturating_add(cfg.timing.kill_wait);
        let shared = Arc::new(Shared::new().map_err(BuildError::Resources)?);
        let background = self.start_in_background;
        if background {
            check_program(&cfg.cmd).map_err(BuildError::Spawn)?;
        }
        let mut sup = Supervisor::new(shared.clone(), cfg).map_err(BuildError::Resources)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // The supervisor thread spawns every worker: PR_SET_PDEATHSIG follows the thread
        // that forked, and this thread lives exactly as long as the pool's workers.
        let thread = std::thread::Builder::new()
            .name("hangfree-supervisor".into())
            .spawn(move || {
                match sup.start_first() {
                    Ok(()) if !background => {
                        let _ = tx.send(Ok(()));
                    }
                    Ok(()) => {}
                    Err(e) if !background => {
                        let _ = tx.send(Err(BuildError::Spawn(e)));
                        return;
                    }
                    Err(e) => sup.first_start_failed(e),
                }
                sup.run();
            })
            .map_err(BuildError::Resources)?;
        if !background {
            let started = rx.recv().unwrap_or(Err(BuildError::Invalid("supervisor thread died")));
            if let Err(e) = started {
                let _ = thread.join();
                return Err(e);
            }
        }
        Ok(Pool {
            shared,
            thread: Mutex::new(Some(thread)),
            owner: std::process::id(),
            max_frame,
            workers,
            shutdown_bound: grace,
        })
    }
}

/// What the exec of `cmd`'s program would surely refuse, found without starting it: a
/// program given by an absolute path that is missing, not a file, or not executable
/// (errors worded as the spawn's). A name looked up in `PATH` or a relative path is left
/// to the start itself.
fn check_program(cmd: &WorkerCommand) -> std::io::Result<()> {
    let program = cmd.program();
    if !program.is_absolute() {
        return Ok(());
    }
    let refused =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot start `{}`: {e}", program.display()));
    let meta = std::fs::metadata(program).map_err(refused)?;
    if !meta.is_file() {
        return Err(refused(std::io::Error::from_raw_os_error(libc::EACCES)));
    }
    rustix::fs::access(program, rustix::fs::Access::EXEC_OK).map_err(|e| refused(e.into()))
}

/// A pool of worker processes that cannot hang.
///
/// Tasks are opaque byte payloads; what they mean is between the submitter and the worker
/// program (see `PROTOCOL.md`). Every submitted task ends in exactly one
/// [`crate::Outcome`]; every wait is bounded or woken by `terminate`; stopping a worker is
/// SIGTERM to its process group, the grace period, then SIGKILL to the group.
///
/// `Pool` is `Send + Sync`: share it with an `Arc` and submit from any thread. Dropping
/// it terminates it and waits, bounded, for its workers to be gone.
pub struct Pool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    owner: u32,
    max_frame: u64,
    workers: usize,
    shutdown_bound: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("stats", &self.stats()).finish()
    }
}

impl Pool {
    /// A builder for a pool whose workers run `cmd`.
    pub fn builder(cmd: WorkerCommand) -> PoolBuilder {
        PoolBuilder {
            cfg: Config {
                cmd,
                workers: defaults::workers(),
                task_timeout: None,
                timing: Timing { grace: defaults::GRACE, kill_wait: defaults::KILL_WAIT },
                startup_timeout: defaults::STARTUP_TIMEOUT,
                max_tasks_per_worker: None,
                max_startup_failures: defaults::MAX_STARTUP_FAILURES,
                init_payload: Vec::new(),
                max_frame: defaults::MAX_FRAME,
                prefetch: defaults::PREFETCH,
                prefetch_below: None,
                stderr_tail: defaults::STDERR_TAIL,
                forward_stderr: defaults::FORWARD_STDERR,
                max_memory: None,
                memory_poll: defaults::MEMORY_POLL,
                retries: defaults::RETRIES,
                stack_dump: None,
                on_event: None,
                cgroup_parent: None,
                fork_server: defaults::FORK_SERVER,
                keep_fork_server: defaults::KEEP_FORK_SERVER,
            },
            stack_dump: None,
            cgroup: defaults::CGROUP,
            start_in_background: defaults::START_IN_BACKGROUND,
        }
    }

    /// Submits one task.
    pub fn submit(&self, task: impl Into<Task>) -> Result<TaskHandle, SubmitError> {
        let slot = Arc::new(Slot::default());
        let ids = self.submit_to(slot.clone(), vec![task.into()], 1)?;
        Ok(TaskHandle { id: TaskId::new(ids.start), slot, shared: self.shared.clone() })
    }

    /// Submits many tasks at once, sent to workers `chunksize` at a time. Outcomes stream
    /// back as each item finishes. If a worker dies mid-chunk, the item it was running
    /// ends as *worker lost*, items already done keep their values, and items not yet
    /// started run elsewhere.
    pub fn submit_batch<T: Into<Task>>(
        &self,
        tasks: impl IntoIterator<Item = T>,
        chunksize: usize,
    ) -> Result<BatchHandle, SubmitError> {
        let tasks: Vec<Task> = tasks.into_iter().map(Into::into).collect();
        let sink = Arc::new(BatchSink::new(tasks.len()));
        let ids = self.submit_to(sink.clone(), tasks, chunksize)?;
        Ok(BatchHandle { ids, sink, shared: self.shared.clone(), yielded: 0 })
    }

    /// Submits tasks whose outcomes go to `sink` (called once per task with its index).
    /// Returns the range of ids given to the tasks, in order. This is the primitive the
    /// other submit methods and the language fronts build on.
    pub fn submit_to(
        &self,
        sink: Arc<dyn Sink>,
        tasks: Vec<Task>,
        chunksize: usize,
    ) -> Result<std::ops::Range<u64>, SubmitError> {
        let current = std::process::id();
        if current != self.owner {
            return Err(SubmitError::Forked { owner: self.owner, current });
        }
        // A chunk's frame carries a trailer after the payload.
        let frame_len = |t: &Task| t.payload.len() + if t.items > 0 { crate::wire::CHUNK_TRAILER } else { 0 };
        if let Some((index, t)) = tasks.iter().enumerate().find(|(_, t)| frame_len(t) as u64 > self.max_frame) {
            return Err(SubmitError::TooLarge { index, len: frame_len(t), max: self.max_frame });
        }
        if tasks.iter().any(|t| t.timeout == Some(Duration::ZERO)) {
            return Err(SubmitError::Invalid("a task's timeout must be > 0 or None"));
        }
        let n = tasks.len() as u64;
        let mut inbox = lock(&self.shared.inbox);
        match &inbox.gate {
            Gate::Open => {}
            Gate::Closed => return Err(SubmitError::Closed),
            Gate::Terminated => return Err(SubmitError::Terminated),
            Gate::Broken(f) => return Err(SubmitError::Broken(f.clone())),
            Gate::Failed(why) => return Err(SubmitError::Failed(why.clone())),
        }
        let first = self.shared.next_id.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let items: u64 = tasks.iter().map(|t| u64::from(t.items.max(1))).sum();
        self.shared.stats.submitted.fetch_add(items, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            inbox.cmds.push(Command::Submit { sink, first_id: TaskId::new(first), tasks, chunksize });
        }
        drop(inbox);
        self.shared.wake();
        Ok(first..first + n)
    }

    /// Cancels a task by id (see [`TaskHandle::cancel`]).
    pub fn cancel(&self, id: u64) {
        self.shared.cancel(TaskId::new(id));
    }

    /// Cancels a task only if it is still waiting in the pool's queue (not yet sent to a
    /// worker), as `concurrent.futures.Future.cancel` does. Returns whether it was
    /// cancelled; a cancelled task ends as [`crate::TaskError::Cancelled`].
    pub fn cancel_if_queued(&self, id: u64) -> bool {
        self.ask(|reply| Command::CancelQueued(TaskId::new(id), reply)).unwrap_or(false)
    }

    /// Where the task `id` is now: queued, sent ahead to a busy worker, running, or done
    /// (see [`TaskState`]). The supervisor answers from the state it keeps anyway, so
    /// this costs a round trip to its thread (tens of microseconds) and nothing on the
    /// path of submitting or finishing tasks. It sees every submission that returned
    /// before the call. In a forked child, where the pool is the parent's, every task is
    /// [`TaskState::Done`].
    pub fn task_state(&self, id: u64) -> TaskState {
        self.ask(|reply| Command::State(TaskId::new(id), reply)).unwrap_or(TaskState::Done)
    }

    /// Sends the supervisor a question and waits for its answer: `None` if the pool has
    /// finished without answering, or at once in a forked child (no supervisor runs
    /// there to answer).
    fn ask<T>(&self, question: impl FnOnce(Arc<Reply<T>>) -> Command) -> Option<T> {
        if std::process::id() != self.owner {
            return None;
        }
        let reply = Arc::new(Reply::default());
        self.shared.push(question(reply.clone()));
        reply.wait(&self.shared)
    }

    /// Accepts no more tasks; workers exit once the queued tasks are done.
    pub fn close(&self) {
        let mut inbox = lock(&self.shared.inbox);
        if matches!(inbox.gate, Gate::Open) {
            inbox.gate = Gate::Closed;
            inbox.cmds.push(Command::Close);
            drop(inbox);
            self.shared.wake();
        }
    }

    /// Ends every unfinished task as terminated and stops every worker with the
    /// escalation. Returns at once; `join` waits for the workers to be gone, which takes
    /// at most the grace period plus `kill_wait` and a few milliseconds.
    pub fn terminate(&self) {
        let mut inbox = lock(&self.shared.inbox);
        if matches!(inbox.gate, Gate::Open | Gate::Closed) {
            inbox.gate = Gate::Terminated;
            inbox.cmds.push(Command::Terminate);
        }
        drop(inbox);
        self.shared.wake();
    }

    /// Waits until every worker is gone (after `close` or `terminate`), at most `limit`
    /// if given (a limit of [`MAX_DURATION`] or more is as good as none). After a
    /// successful join no process, thread or descriptor of the pool is left.
    pub fn join(&self, limit: Option<Duration>) -> Result<(), JoinError> {
        if matches!(lock(&self.shared.inbox).gate, Gate::Open) {
            return Err(JoinError::StillOpen);
        }
        let limit = limit.map(saturate);
        let deadline = limit.map(|l| Instant::now() + l);
        let mut done = lock(&self.shared.finished);
        while !*done {
            done = match deadline {
                None => self.shared.finished_cv.wait(done).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now()).ok_or(JoinError::Timeout(limit.unwrap()))?;
                    self.shared.finished_cv.wait_timeout(done, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
        drop(done);
        if let Some(t) = lock(&self.thread).take() {
            // The loop has returned; this only collects the thread.
            let _ = t.join();
        }
        Ok(())
    }

    /// Whether the pool has finished: closed or terminated, and every worker gone.
    pub fn is_finished(&self) -> bool {
        *lock(&self.shared.finished)
    }

    /// The pool's counters now.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// The number of workers the pool keeps (its [`PoolBuilder::workers`]).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The start-up failure that broke the pool, if workers keep failing to start.
    pub fn startup_failure(&self) -> Option<StartupFailure> {
        match &lock(&self.shared.inbox).gate {
            Gate::Broken(f) => Some(f.clone()),
            _ => None,
        }
    }
}

/// What [`Pool::shutdown_bound`] allows beyond the grace period and the reap wait: the
/// supervisor's own work on a loaded machine.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

impl Pool {
    /// How long [`Pool::join`] may take after [`Pool::terminate`], at most: the grace
    /// period, the wait for a SIGKILLed worker to be reaped (`kill_wait`), and a margin.
    /// Fronts bound their own waits for a terminated pool with it.
    pub fn shutdown_bound(&self) -> Duration {
        self.shutdown_bound.saturating_add(SHUTDOWN_MARGIN)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            // A forked child's copy: the workers and thread belong to the parent.
            return;
        }
        self.terminate();
        let _ = self.join(Some(self.shutdown_bound()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_starts_from_the_defaults_and_a_front_adds_its_own() {
        let plain = Pool::builder(WorkerCommand::new("w"));
        assert_eq!(plain.cfg.timing.grace, defaults::GRACE);
        assert_eq!(plain.cfg.fork_server, defaults::FORK_SERVER);
        assert_eq!(plain.cfg.prefetch_below, None);
        assert_eq!(plain.stack_dump, None);
        let front = plain.front_defaults();
        assert_eq!(front.cfg.fork_server, defaults::FRONT_FORK_SERVER);
        assert_eq!(front.cfg.prefetch_below, Some(defaults::FRONT_PREFETCH_BELOW));
        assert_eq!(front.stack_dump, Some((defaults::STACK_DUMP_SIGNAL, defaults::STACK_DUMP_WAIT)));
        // A setting given after the front's defaults wins.
        assert!(!front.fork_server(false).cfg.fork_server);
    }
}
