//! The supervisor: one thread per pool, an epoll loop over every worker's pidfd, channel
//! and stderr, a waker for commands from callers, and a heap of deadlines.
//!
//! It owns all task and worker state; callers only push [`Command`]s into the inbox and
//! read outcomes from their sinks. Every task it accepts leaves it through exactly one
//! `Sink::complete` call — on success, failure, terminate, or even a panic in this thread.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::process::Signal;

use super::epoll_wait;
use super::events::{EventHook, EventKind, PoolEvent};
use super::shared::{Command, Gate, Shared, lock};
use super::task::{Sink, TaskState};
use super::lifecycle::{self, Action, Event, Phase, Timing};
use super::stats::{bump, bump_by};
use crate::cgroup::WorkerCgroup;
use crate::fork_server::ForkServer;
use crate::memory;
use crate::page::Page;
use crate::outcome::{Attempt, ExitStatus, LossCause, Outcome, StartupFailure, TaskError, TaskRef, WorkerLost};
use crate::process::{self, Spawned, WorkerCommand};
use crate::wire::{self, Decoder, Kind, ProtocolError};

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
    pub max_frame: u32,
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

/// How long a worker that closed its channel may take to exit before it is deemed alive
/// and broken: the kernel closes a dying process's descriptors just before its exit is
/// reported, so an end of file usually means "exit in a moment".
const LINGER: Duration = Duration::from_millis(100);

struct Entry {
    sink: Arc<dyn Sink>,
    index: usize,
    payload: Vec<u8>,
    timeout: Option<Duration>,
    label: Option<Arc<str>>,
    /// The slot of the worker it was sent to, while it is there.
    worker: Option<usize>,
    /// Outcome already delivered (cancelled while sent ahead to a worker).
    cancelled: bool,
    /// Earlier runs whose workers died (with retries); of a chunk, runs of item `from`.
    attempts: Vec<Attempt>,
    /// A chunk's item count (0: a single task).
    items: u32,
    /// A chunk's first item without an outcome: the worker it is sent to starts there.
    from: u32,
}

impl Entry {
    /// Items still without an outcome (1 for a single task).
    fn left(&self) -> u32 {
        if self.items == 0 { 1 } else { self.items - self.from }
    }
}

struct InFlight {
    id: u64,
    ends_chunk: bool,
}

struct Worker {
    generation: u32,
    pid: i32,
    pidfd: OwnedFd,
    chan: Option<UnixStream>,
    stderr: Option<OwnedFd>,
    phase: Phase,
    /// Bumped on each phase change, so stale phase deadlines in the heap are ignored.
    epoch: u64,
    dec: Decoder,
    out: Vec<u8>,
    out_pos: usize,
    want_out: bool,
    inflight: VecDeque<InFlight>,
    chunks: usize,
    head_deadline: Option<Instant>,
    /// When the task at the head of its queue started.
    head_started: Option<Instant>,
    /// Smoothed duration of its recent tasks (None before the first one finished).
    typical_task: Option<Duration>,
    /// Tasks sent to it over its life (for `max_tasks_per_worker`).
    sent: u64,
    tail: VecDeque<u8>,
    /// A startup failure was already counted for it.
    startup_counted: bool,
    /// The kernel's OOM-kill count when it started (evidence for an OOM kill).
    oom_mark: Option<u64>,
    /// Largest resident size seen while it ran a task (with a memory limit).
    peak_rss: u64,
    /// The late task whose stack it was asked for; the time-out waits for the answer.
    dumping: Option<u64>,
    /// Its own cgroup, in cgroup mode: killed whole with it, setsid daemons included.
    cgroup: Option<WorkerCgroup>,
    /// The progress page it passed with its Ready frame (see [`crate::page`]).
    page: Option<Page>,
    /// What revoking its page returned: the last task it started (cached, as a second
    /// revoke would not say).
    last_claim: Option<crate::page::Revoked>,
}

impl Worker {
    fn is_ready(&self) -> bool {
        self.phase == Phase::Running && self.chan.is_some()
    }

    fn tail_string(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Phase {
        slot: usize,
        generation: u32,
        epoch: u64,
    },
    TaskDeadline {
        slot: usize,
        generation: u32,
        task: u64,
    },
    Linger {
        slot: usize,
        generation: u32,
    },
    /// Try again to start workers after a spawn failed (nothing else may wake the loop).
    Respawn,
    /// Stop waiting for a late task's stack.
    DumpWait {
        slot: usize,
        generation: u32,
        task: u64,
    },
    /// Check busy workers' memory against the limit.
    MemoryPoll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChannelEnd {
    /// Nothing more to read now (or the channel was already dropped).
    Drained,
    /// End of file, or a read error: the worker will not say more.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Open,
    Closing,
    Terminating,
    Broken,
}

/// Task ids are sequential integers chosen by the pool, not by an adversary: a
/// multiplicative hash spreads them well at a fraction of SipHash's cost, which showed up
/// as a third of the supervisor's time in batch profiles.
#[derive(Clone, Copy, Default)]
struct BuildIdHasher;

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::BuildHasher for BuildIdHasher {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Copies worker output to this process's stderr without ever blocking: the supervisor
/// must not hang because the host's stderr is a full pipe nobody reads. Each write is at
/// most one pipe buffer page, made only when poll says the descriptor can take it; what
/// does not fit is dropped (the worker's stderr tail keeps it for error reports).
fn forward_to_stderr(bytes: &[u8]) {
    use rustix::event::{PollFd, PollFlags, poll};
    let err = rustix::stdio::stderr();
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    for chunk in bytes.chunks(4096) {
        let mut fds = [PollFd::new(&err, PollFlags::OUT)];
        match poll(&mut fds, Some(&zero)) {
            Ok(1) if fds[0].revents().contains(PollFlags::OUT) => {}
            _ => return,
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            match rustix::io::write(err, rest) {
                Ok(0) => return,
                Ok(n) => rest = &rest[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }
}

const WAKER: u64 = u64::MAX;
const FD_PID: u64 = 0;
const FD_CHAN: u64 = 1;
const FD_ERR: u64 = 2;

/// Reads from a starting worker's channel, which passes its progress page (see
/// [`crate::page`]) with its Ready frame; a descriptor that is not a page is closed.
fn read_with_page(chan: &UnixStream, dec: &mut Decoder, page: &mut Option<Page>, buf: &mut [u8]) -> io::Result<usize> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let r = recvmsg(chan, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT)?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for fd in fds {
                if page.is_none() {
                    *page = Page::from_worker(fd).ok();
                }
            }
        }
    }
    dec.feed(&buf[..r.bytes]);
    Ok(r.bytes)
}

fn token(slot: usize, generation: u32, kind: u64) -> u64 {
    ((slot as u64) << 34) | ((generation as u64) << 2) | kind
}

fn untoken(t: u64) -> (usize, u32, u64) {
    ((t >> 34) as usize, ((t >> 2) & 0xffff_ffff) as u32, t & 3)
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    cfg: Config,
    epoll: OwnedFd,
    workers: Vec<Option<Worker>>,
    next_generation: u32,
    tasks: HashMap<u64, Entry, BuildIdHasher>,
    queue: VecDeque<Vec<u64>>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    run: Run,
    broken: Option<StartupFailure>,
    startup_failures: u32,
    scratch: Vec<u8>,
    memory_timer: bool,
    /// The fork server, once started; `None` again for good after it failed.
    forks: Option<ForkServer>,
    forks_failed: bool,
}

impl Supervisor {
    pub fn new(shared: Arc<Shared>, cfg: Config) -> io::Result<Supervisor> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        if let Some(fd) = lock(&shared.waker).as_ref() {
            epoll::add(&epoll, fd, epoll::EventData::new_u64(WAKER), epoll::EventFlags::IN)?;
        }
        Ok(Supervisor {
            shared,
            cfg,
            epoll,
            workers: Vec::new(),
            next_generation: 1,
            tasks: HashMap::default(),
            queue: VecDeque::new(),
            timers: BinaryHeap::new(),
            run: Run::Open,
            broken: None,
            startup_failures: 0,
            scratch: vec![0; 64 * 1024],
            memory_timer: false,
            forks: None,
            forks_failed: false,
        })
    }

    /// Starts the first worker, so a command that cannot run is reported by `build`.
    pub fn start_first(&mut self) -> io::Result<()> {
        self.spawn_worker(Instant::now())
    }

    /// Runs the loop until the pool is closed or terminated and every worker is gone.
    /// Whatever happens — even a panic in here — every accepted task gets its outcome,
    /// and `join` is woken: a panic fails the pool ([`Supervisor::fail`]) and goes no
    /// further than this thread (the panic hook has printed it).
    pub fn run(mut self) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.run_loop())) {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let why: Arc<str> = format!("its supervisor thread panicked ({what}); this is a bug in hangfree").into();
            let _ = catch_unwind(AssertUnwindSafe(|| self.fail(why)));
        }
        let _ = catch_unwind(AssertUnwindSafe(|| self.finish()));
        self.announce_finished();
    }

    /// After a panic in the loop, whose state may be half-updated: takes no more tasks,
    /// ends every task it holds (and every submission still in the inbox) as
    /// [`TaskError::PoolFailed`], and kills and reaps every worker, waiting at most
    /// `kill_wait` in all. Runs no code of the caller's but the sinks, each of which may
    /// panic alone.
    fn fail(&mut self, why: Arc<str>) {
        // The event hook may be what panicked: it is not called again.
        self.cfg.on_event = None;
        self.run = Run::Broken;
        let cmds = {
            let mut inbox = lock(&self.shared.inbox);
            inbox.gate = Gate::Failed(why.clone());
            std::mem::take(&mut inbox.cmds)
        };
        let stats = &self.shared.stats;
        let fail_one = |sink: &Arc<dyn Sink>, index: usize, task: TaskRef| {
            bump(&stats.pool_failed);
            let outcome = Outcome::Failed(TaskError::PoolFailed { task, reason: why.clone() });
            let _ = catch_unwind(AssertUnwindSafe(|| sink.complete(index, outcome)));
        };
        for (id, e) in std::mem::take(&mut self.tasks) {
            if !e.cancelled {
                fail_one(&e.sink, e.index, TaskRef { id, label: e.label });
            }
        }
        for cmd in cmds {
            if let Command::Submit { sink, first_id, tasks, .. } = cmd {
                for (i, t) in tasks.into_iter().enumerate() {
                    fail_one(&sink, i, TaskRef { id: first_id + i as u64, label: t.label });
                }
            }
        }
        self.queue.clear();
        self.timers.clear();
        for w in self.workers.iter().flatten() {
            process::signal_worker(w.pid, &w.pidfd, Signal::KILL);
            if let Some(cg) = &w.cgroup {
                cg.kill();
            }
        }
        let deadline = Instant::now() + self.cfg.timing.kill_wait;
        for w in std::mem::take(&mut self.workers).into_iter().flatten() {
            if !process::kill_and_reap(w.pid, &w.pidfd, deadline.saturating_duration_since(Instant::now())) {
                bump(&self.shared.stats.workers_abandoned);
            }
        }
    }

    fn run_loop(&mut self) {
        let mut events = Vec::with_capacity(64);
        let mut now;
        let mut active = false;
        loop {
            // Commands drained now may have arrived long after the epoll wake-up, and a
            // task's clock must not start before it is sent: read the clock again.
            now = Instant::now();
            self.drain_inbox(now);
            self.purge_queue();
            self.retire_idle(now);
            self.ensure_workers(now);
            self.dispatch(now);
            if self.is_finished() {
                return;
            }
            let timeout = self.timers.peek().map(|Reverse((at, _))| at.saturating_duration_since(now));
            events.clear();
            // Right after activity the next event (an answer, a submission) usually comes
            // within microseconds: poll for it briefly instead of paying a sleep and a
            // cross-CPU wake-up. An idle pool never spins.
            if active {
                crate::spin::poll_for(crate::spin::WAIT, || {
                    let _ = epoll_wait::wait(&self.epoll, &mut events, Some(Duration::ZERO));
                    !events.is_empty()
                });
            }
            if events.is_empty() {
                if let Err(e) = epoll_wait::wait(&self.epoll, &mut events, timeout) {
                    panic!("epoll_wait failed: {e}");
                }
            }
            active = !events.is_empty();
            now = Instant::now();
            for ev in events.iter() {
                let (flags, data) = ({ ev.flags }, { ev.data }.u64());
                if data == WAKER {
                    // Consume the eventfd *before* clearing `woken`. The other order loses
                    // wake-ups: a caller that sets `woken` and writes between the clear
                    // and the read has its write eaten, leaving `woken` set with the
                    // eventfd empty, so every later `wake()` skips its write and the
                    // supervisor never sees the next submission or `terminate`. In this
                    // order a write is only skipped while `woken` is still set, i.e. before
                    // the clear, and the commands it announces are drained below anyway.
                    let mut b = [0u8; 8];
                    if let Some(fd) = lock(&self.shared.waker).as_ref() {
                        let _ = rustix::io::read(fd, &mut b);
                    }
                    self.shared.woken.store(false, Ordering::Release);
                    continue;
                }
                let (slot, generation, kind) = untoken(data);
                if self.workers.get(slot).and_then(|w| w.as_ref()).is_none_or(|w| w.generation != generation) {
                    continue;
                }
                match kind {
                    FD_PID => self.on_exit(slot, now),
                    FD_CHAN => {
                        if flags.contains(epoll::EventFlags::OUT) {
                            self.flush(slot, now);
                        }
                        if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
                            self.on_readable(slot, now);
                        }
                    }
                    _ => self.read_stderr(slot),
                }
            }
            self.fire_timers(now);
        }
    }

    fn is_finished(&self) -> bool {
        let no_workers = self.workers.iter().all(|w| w.is_none());
        match self.run {
            Run::Open => false,
            Run::Closing => no_workers && self.tasks.is_empty(),
            Run::Terminating | Run::Broken => no_workers,
        }
    }

    fn finish(&mut self) {
        // Before `finished` is announced: after `join` no process of the pool is left.
        self.stop_fork_server();
        let leftover = {
            let mut inbox = lock(&self.shared.inbox);
            if !matches!(inbox.gate, Gate::Broken(_) | Gate::Failed(_)) {
                inbox.gate = Gate::Terminated;
            }
            std::mem::take(&mut inbox.cmds)
        };
        // Submissions cannot arrive after the gate closed, but be exact about any that did.
        for cmd in leftover {
            if let Command::Submit { sink, first_id, tasks, .. } = cmd {
                for (i, t) in tasks.into_iter().enumerate() {
                    let task = TaskRef { id: first_id + i as u64, label: t.label };
                    bump(&self.shared.stats.terminated);
                    sink.complete(i, Outcome::Failed(TaskError::Terminated(task)));
                }
            }
        }
    }

    /// Says the pool has finished (wakes `join`) and closes the waker.
    fn announce_finished(&self) {
        *lock(&self.shared.finished) = true;
        self.shared.finished_cv.notify_all();
        lock(&self.shared.waker).take();
    }

    // ----- commands -------------------------------------------------------------------

    fn drain_inbox(&mut self, now: Instant) {
        let cmds = std::mem::take(&mut lock(&self.shared.inbox).cmds);
        for cmd in cmds {
            match cmd {
                Command::Submit { sink, first_id, tasks, chunksize } => {
                    let chunksize = chunksize.max(1);
                    self.tasks.reserve(tasks.len());
                    let mut chunk = Vec::with_capacity(chunksize.min(tasks.len()));
                    for (i, t) in tasks.into_iter().enumerate() {
                        let id = first_id + i as u64;
                        self.tasks.insert(
                            id,
                            Entry {
                                sink: sink.clone(),
                                index: i,
                                payload: t.payload,
                                timeout: t.timeout.or(self.cfg.task_timeout),
                                label: t.label,
                                worker: None,
                                cancelled: false,
                                attempts: Vec::new(),
                                items: t.items,
                                from: 0,
                            },
                        );
                        chunk.push(id);
                        if chunk.len() == chunksize {
                            self.queue.push_back(std::mem::replace(&mut chunk, Vec::with_capacity(chunksize)));
                        }
                    }
                    if !chunk.is_empty() {
                        self.queue.push_back(chunk);
                    }
                    if self.run == Run::Broken {
                        self.fail_queue();
                    }
                }
                Command::Cancel(id) => self.cancel(id, now),
                Command::CancelQueued(id, reply) => {
                    let queued = self.tasks.get(&id).is_some_and(|e| e.worker.is_none() && !e.cancelled);
                    if queued {
                        self.cancel(id, now);
                    }
                    reply.set(queued);
                }
                Command::State(id, reply) => reply.set(self.task_state(id)),
                Command::Close => {
                    if self.run == Run::Open {
                        self.run = Run::Closing;
                    }
                }
                Command::Terminate => {
                    if matches!(self.run, Run::Open | Run::Closing) {
                        self.run = Run::Terminating;
                        self.terminate_all(now);
                    }
                }
            }
        }
    }

    /// Drops the leading chunks whose tasks have all finished (cancelled while queued), so
    /// "nothing queued" is seen as soon as it is true: closing pools retire their workers
    /// on it.
    fn purge_queue(&mut self) {
        while let Some(front) = self.queue.front_mut() {
            front.retain(|id| self.tasks.get(id).is_some_and(|e| !e.cancelled));
            if !front.is_empty() {
                return;
            }
            self.queue.pop_front();
        }
    }

    fn cancel(&mut self, id: u64, now: Instant) {
        let Some(e) = self.tasks.get_mut(&id) else { return };
        if e.cancelled {
            return;
        }
        match e.worker {
            None => {
                // Still queued: its id stays in the queue and is skipped at dispatch.
                self.complete(id, Outcome::Failed(TaskError::Cancelled(self.task_ref(id))));
            }
            Some(slot) => {
                let is_head =
                    self.workers[slot].as_ref().is_some_and(|w| w.inflight.front().is_some_and(|f| f.id == id));
                if is_head {
                    let task = self.task_ref(id);
                    self.pop_head(slot);
                    self.complete(id, Outcome::Failed(TaskError::Cancelled(task)));
                    self.stop_worker(slot, now);
                } else {
                    // Sent ahead and not started: report it now, drop its result later.
                    let task = self.task_ref(id);
                    let e = self.tasks.get(&id).expect("present");
                    self.deliver(e, e.left(), Outcome::Failed(TaskError::Cancelled(task)));
                    self.tasks.get_mut(&id).expect("present").cancelled = true;
                }
            }
        }
    }

    /// Fails every task and stops every worker (terminate, or a panic).
    fn terminate_all(&mut self, now: Instant) {
        let ids: Vec<u64> = self.tasks.keys().copied().collect();
        for id in ids {
            let t = self.task_ref(id);
            self.complete(id, Outcome::Failed(TaskError::Terminated(t)));
        }
        self.queue.clear();
        for slot in 0..self.workers.len() {
            if let Some(w) = self.workers[slot].as_mut() {
                w.inflight.clear();
                w.chunks = 0;
                self.stop_worker(slot, now);
            }
        }
    }

    // ----- task bookkeeping -----------------------------------------------------------

    /// Where a task is, from the state the loop keeps anyway: its entry says whether a
    /// worker has it, and that worker's queue whether it is at the head (started: its time
    /// limit runs from there) or sent ahead behind it.
    fn task_state(&self, id: u64) -> TaskState {
        let Some(e) = self.tasks.get(&id).filter(|e| !e.cancelled) else { return TaskState::Done };
        let Some(slot) = e.worker else { return TaskState::Queued };
        let head = self.workers[slot].as_ref().and_then(|w| w.inflight.front()).map(|f| f.id);
        if head == Some(id) { TaskState::Running } else { TaskState::SentAhead }
    }

    fn task_ref(&self, id: u64) -> TaskRef {
        TaskRef { id, label: self.tasks.get(&id).and_then(|e| e.label.clone()) }
    }

    /// Delivers a task's one outcome (a chunk's: for each item without one) and forgets
    /// the task.
    fn complete(&mut self, id: u64, outcome: Outcome) {
        let Some(e) = self.tasks.remove(&id) else { return };
        if e.cancelled {
            return;
        }
        let n = e.left();
        self.deliver(&e, n, outcome);
    }

    /// Delivers one outcome for the next `n` items of a chunk (or a task's outcome).
    fn deliver(&self, e: &Entry, n: u32, outcome: Outcome) {
        let s = &self.shared.stats;
        let raised = if matches!(outcome, Outcome::Raised(_)) { n } else { 0 };
        bump_by(match &outcome {
            Outcome::Value(_) => &s.values,
            Outcome::Raised(_) => &s.raised,
            Outcome::Failed(TaskError::WorkerLost(_)) => &s.worker_lost,
            Outcome::Failed(TaskError::TimedOut { .. }) => &s.timed_out,
            Outcome::Failed(TaskError::Cancelled(_)) => &s.cancelled,
            Outcome::Failed(TaskError::Terminated(_)) => &s.terminated,
            Outcome::Failed(TaskError::StartupFailed { .. }) => &s.startup_failed,
            Outcome::Failed(TaskError::Protocol { .. }) => &s.protocol_errors,
            Outcome::Failed(TaskError::MemoryLimit { .. }) => &s.memory_limited,
            Outcome::Failed(TaskError::PoolFailed { .. }) => &s.pool_failed,
        }, u64::from(n));
        if e.items == 0 {
            e.sink.complete(e.index, outcome);
        } else {
            e.sink.complete_items(e.index, e.from, n, raised, outcome);
        }
    }

    /// Delivers `outcome` for the next `n` items of chunk `id` (all of a single task's)
    /// and forgets the task once every item has one.
    fn deliver_part(&mut self, id: u64, n: u32, outcome: Outcome) {
        let Some(e) = self.tasks.get_mut(&id) else { return };
        if e.items == 0 || e.from + n >= e.items {
            self.complete(id, outcome);
            return;
        }
        if !e.cancelled {
            let e = self.tasks.get(&id).expect("present");
            self.deliver(e, n, outcome);
        }
        let e = self.tasks.get_mut(&id).expect("present");
        e.from += n;
        e.attempts.clear();
    }

    fn fail_queue(&mut self) {
        let failure = self.broken.clone().expect("broken pools have a failure");
        while let Some(chunk) = self.queue.pop_front() {
            for id in chunk {
                if self.tasks.contains_key(&id) {
                    let task = self.task_ref(id);
                    self.complete(id, Outcome::Failed(TaskError::StartupFailed { task, failure: failure.clone() }));
                }
            }
        }
    }

    /// Removes the running task from a worker's queue; the caller gives it its outcome.
    fn pop_head(&mut self, slot: usize) -> Option<u64> {
        let w = self.workers[slot].as_mut()?;
        let f = w.inflight.pop_front()?;
        if f.ends_chunk {
            w.chunks -= 1;
        }
        w.head_deadline = None;
        if let Some(e) = self.tasks.get_mut(&f.id) {
            e.worker = None;
        }
        Some(f.id)
    }

    /// Puts every task still sent to the worker back at the front of the queue. The
    /// caller has ended the task it was running; its page is revoked first, so it starts
    /// none of them now. One it had already started (it finished the head a moment ago)
    /// cannot run again: it ends as worker lost ([`LossCause::Stopped`]).
    fn requeue_inflight(&mut self, slot: usize) {
        let last = self.revoke(slot);
        let Some(w) = self.workers[slot].as_mut() else { return };
        let ids: Vec<u64> = w.inflight.drain(..).map(|f| f.id).collect();
        w.chunks = 0;
        w.head_deadline = None;
        let mut chunk = Vec::with_capacity(ids.len());
        let mut started = None;
        for id in ids {
            match self.tasks.get_mut(&id) {
                Some(e) if e.cancelled => {
                    self.tasks.remove(&id);
                }
                Some(e) => {
                    e.worker = None;
                    if last.is_some_and(|r| r.task == id) {
                        started = Some(id);
                    } else {
                        chunk.push(id);
                    }
                }
                None => {}
            }
        }
        if !chunk.is_empty() {
            self.queue.push_front(chunk);
        }
        if let Some(id) = started {
            let lost = self.loss(slot, id, LossCause::Stopped);
            self.fail_started(slot, id, lost.clone(), TaskError::WorkerLost(lost));
        }
    }

    /// Revokes the worker's page (once: later calls return the first answer), so it
    /// starts nothing more; says what it started last. None for a worker without a page.
    fn revoke(&mut self, slot: usize) -> Option<crate::page::Revoked> {
        let w = self.workers[slot].as_mut()?;
        if w.last_claim.is_none() {
            w.last_claim = w.page.as_ref().map(|p| p.revoke());
        }
        w.last_claim
    }

    /// A *worker lost* for task `id` of the worker in `slot`, without earlier attempts.
    fn loss(&self, slot: usize, id: u64, cause: LossCause) -> WorkerLost {
        let w = self.workers[slot].as_ref();
        WorkerLost {
            task: self.task_ref(id),
            pid: w.map_or(0, |w| w.pid),
            cause,
            stderr_tail: w.map(|w| w.tail_string()).unwrap_or_default(),
            probably_oom: false,
            earlier: Vec::new(),
            finished: false,
        }
    }

    /// Ends task `id`, started by the worker in `slot`, which is gone or being stopped:
    /// `failure` for a single task. A chunk is split where the worker's page says it was
    /// (see [`Supervisor::settle_finished_items`]): the item it was on gets `failure`
    /// and the items after it, never started, are queued again as the rest of the chunk.
    fn fail_started(&mut self, slot: usize, id: u64, lost: WorkerLost, failure: TaskError) {
        self.settle_finished_items(slot, id, lost);
        self.deliver_part(id, 1, Outcome::Failed(failure));
        self.requeue_rest(id);
    }

    /// For a chunk whose worker is gone or being stopped: items it finished whose
    /// outcomes never reached the pool end as worker lost (`finished`), so that the
    /// chunk's next item is the one it was on. That item is the last it started per its
    /// (revoked) page; the first item without an outcome if the page says nothing of this
    /// chunk (the worker died loading it), so every loss moves the chunk on.
    fn settle_finished_items(&mut self, slot: usize, id: u64, lost: WorkerLost) {
        let last = self.revoke(slot);
        let Some(e) = self.tasks.get(&id) else { return };
        if e.items == 0 {
            return;
        }
        let on = match last {
            Some(r) if r.task == id && r.items > e.from => (r.items - 1).min(e.items - 1),
            _ => e.from,
        };
        if on > e.from {
            let n = on - e.from;
            let lost = WorkerLost { finished: true, ..lost };
            self.deliver_part(id, n, Outcome::Failed(TaskError::WorkerLost(lost)));
        }
    }

    /// Queues what is left of chunk `id` again, at the front (nothing, for a finished or
    /// single task).
    fn requeue_rest(&mut self, id: u64) {
        match self.tasks.get_mut(&id) {
            Some(e) if e.cancelled => {
                self.tasks.remove(&id);
            }
            Some(e) => {
                e.worker = None;
                self.queue.push_front(vec![id]);
            }
            None => {}
        }
    }

    /// Starts the clock of the task now at the head of a worker's queue.
    fn start_head(&mut self, slot: usize, now: Instant) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        w.head_deadline = None;
        w.dumping = None;
        w.head_started = w.inflight.front().map(|_| now);
        let Some(f) = w.inflight.front() else { return };
        if self.cfg.max_memory.is_some() && !self.memory_timer {
            self.memory_timer = true;
            self.timers.push(Reverse((now + self.cfg.memory_poll, Timer::MemoryPoll)));
        }
        let Some(limit) = self.tasks.get(&f.id).and_then(|e| e.timeout) else { return };
        let at = now + limit;
        w.head_deadline = Some(at);
        let t = Timer::TaskDeadline { slot, generation: w.generation, task: f.id };
        self.timers.push(Reverse((at, t)));
    }

    // ----- workers --------------------------------------------------------------------

    fn live_count(&self) -> usize {
        self.workers.iter().flatten().filter(|w| !w.phase.is_going() && w.phase.is_live()).count()
    }

    fn ensure_workers(&mut self, now: Instant) {
        let target = match self.run {
            Run::Open => self.cfg.workers,
            Run::Closing => self.cfg.workers.min(self.queue.len()),
            Run::Terminating | Run::Broken => 0,
        };
        while self.live_count() < target {
            if let Err(e) = self.spawn_worker(now) {
                self.startup_failed(StartupFailure::Spawn(e.to_string()), now);
                // A failed spawn leaves no process, channel or deadline behind to wake the
                // loop, so without a timer of its own the retry (and the failure of the
                // waiting tasks after `max_startup_failures`) could wait forever. Back
                // off a little between attempts.
                if self.run != Run::Broken {
                    let delay = Duration::from_millis(50 * u64::from(self.startup_failures.min(20)));
                    self.timers.push(Reverse((now + delay, Timer::Respawn)));
                }
                break;
            }
        }
    }

    /// A new worker process: forked by the fork server when there is one that works, else
    /// started by exec.
    fn start_process(&mut self) -> io::Result<Spawned> {
        if self.cfg.fork_server && self.cfg.cgroup_parent.is_none() && !self.forks_failed {
            if self.forks.is_none() {
                match ForkServer::start(&self.cfg.cmd, self.cfg.max_frame) {
                    Ok(f) => {
                        let pid = f.pid();
                        self.emit(EventKind::ForkServerStarted, Some(pid), None, || {
                            format!("started the fork server {pid}")
                        });
                        self.forks = Some(f);
                    }
                    Err(e) => self.fork_server_failed(e),
                }
            }
            if let Some(f) = self.forks.as_mut() {
                match f.fork() {
                    Ok(s) => return Ok(s),
                    Err(e) => self.fork_server_failed(e),
                }
            }
        }
        process::spawn(&self.cfg.cmd, self.cfg.max_frame)
    }

    fn fork_server_failed(&mut self, e: io::Error) {
        self.forks_failed = true;
        let pid = self.forks.as_ref().map(|f| f.pid());
        self.stop_fork_server();
        self.emit(EventKind::ForkServerFailed, pid, None, || {
            format!("the fork server failed ({e}); starting workers by exec from now on")
        });
    }

    fn stop_fork_server(&mut self) {
        if let Some(f) = self.forks.take() {
            let pid = f.pid();
            if !f.stop(self.cfg.timing.kill_wait) {
                bump(&self.shared.stats.workers_abandoned);
                let wait = self.cfg.timing.kill_wait;
                self.emit(EventKind::Abandoned, Some(pid), None, || {
                    format!(
                        "the fork server {pid} could not be reaped {:.3} s after SIGKILL; abandoned",
                        wait.as_secs_f64()
                    )
                });
            }
        }
    }

    fn spawn_worker(&mut self, now: Instant) -> io::Result<()> {
        let s = self.start_process()?;
        // Into its own cgroup before it is sent anything: no task has run yet, so nothing
        // it starts can be outside.
        let cgroup = match &self.cfg.cgroup_parent {
            None => None,
            Some(parent) => match WorkerCgroup::create(parent, s.pid) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    process::signal_worker(s.pid, &s.pidfd, Signal::KILL);
                    return Err(io::Error::new(e.kind(), format!("cannot put worker {} in a cgroup: {e}", s.pid)));
                }
            },
        };
        bump(&self.shared.stats.workers_spawned);
        let slot = self.workers.iter().position(|w| w.is_none()).unwrap_or_else(|| {
            self.workers.push(None);
            self.workers.len() - 1
        });
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let ep = &self.epoll;
        let regs = [(s.pidfd.as_fd(), FD_PID), (s.channel.as_fd(), FD_CHAN), (s.stderr.as_fd(), FD_ERR)]
            .into_iter()
            .try_for_each(|(fd, kind)| {
                epoll::add(ep, fd, epoll::EventData::new_u64(token(slot, generation, kind)), epoll::EventFlags::IN)
            });
        if let Err(e) = regs {
            // Bounded: SIGKILL lands within milliseconds; a stuck one is left as a zombie.
            process::kill_and_reap(s.pid, &s.pidfd, Duration::from_secs(1));
            return Err(e.into());
        }
        let ready_by = now + self.cfg.startup_timeout;
        let mut w = Worker {
            generation,
            pid: s.pid,
            pidfd: s.pidfd,
            chan: Some(s.channel),
            stderr: Some(s.stderr),
            phase: Phase::Starting { ready_by },
            epoch: 0,
            dec: Decoder::new(self.cfg.max_frame),
            out: Vec::new(),
            out_pos: 0,
            want_out: false,
            inflight: VecDeque::new(),
            chunks: 0,
            head_deadline: None,
            head_started: None,
            typical_task: None,
            sent: 0,
            tail: VecDeque::new(),
            startup_counted: false,
            oom_mark: memory::oom_kills(),
            peak_rss: 0,
            dumping: None,
            cgroup,
            page: None,
            last_claim: None,
        };
        let pid = w.pid;
        self.emit(EventKind::WorkerStarted, Some(pid), None, || format!("started worker {pid}"));
        wire::encode_into(&mut w.out, Kind::Init, 0, &self.cfg.init_payload);
        self.timers.push(Reverse((ready_by, Timer::Phase { slot, generation, epoch: 0 })));
        self.workers[slot] = Some(w);
        self.flush(slot, now);
        Ok(())
    }

    /// Feeds an event to a worker's lifecycle and carries out the resulting action.
    fn transition(&mut self, slot: usize, ev: Event, now: Instant) {
        let timing = self.cfg.timing;
        let Some(w) = self.workers[slot].as_mut() else { return };
        let (next, action) = lifecycle::step(w.phase, ev, now, &timing);
        if next != w.phase {
            w.phase = next;
            w.epoch += 1;
            if let Some(at) = next.deadline() {
                self.timers.push(Reverse((at, Timer::Phase { slot, generation: w.generation, epoch: w.epoch })));
            }
        }
        match action {
            None | Some(Action::Collect) => {}
            Some(Action::SendShutdown) => {
                wire::encode_into(&mut w.out, Kind::Shutdown, 0, &[]);
                self.flush(slot, now);
            }
            Some(Action::Term) => {
                let pid = w.pid;
                process::signal_worker(pid, &w.pidfd, Signal::TERM);
                let grace = timing.grace;
                self.emit(EventKind::Terminate, Some(pid), None, || {
                    format!(
                        "sent SIGTERM to worker {pid}'s process group; SIGKILL follows in {:.3} s",
                        grace.as_secs_f64()
                    )
                });
            }
            Some(Action::Kill) => {
                let pid = w.pid;
                process::signal_worker(pid, &w.pidfd, Signal::KILL);
                if let Some(cg) = &w.cgroup {
                    cg.kill();
                }
                self.emit(EventKind::Kill, Some(pid), None, || {
                    format!("worker {pid} outlived its grace period: sent SIGKILL to its process group")
                });
            }
            Some(Action::Abandon) => {
                let pid = w.pid;
                bump(&self.shared.stats.workers_abandoned);
                self.remove_worker(slot);
                let wait = timing.kill_wait;
                self.emit(EventKind::Abandoned, Some(pid), None, || {
                    format!("worker {pid} could not be reaped {:.3} s after SIGKILL; abandoned", wait.as_secs_f64())
                });
            }
        }
    }

    /// Stops a worker with the escalation. Its running task must already have been given
    /// its outcome by the caller; tasks sent ahead are queued again.
    fn stop_worker(&mut self, slot: usize, now: Instant) {
        self.requeue_inflight(slot);
        self.close_channel(slot);
        self.transition(slot, Event::Stop, now);
    }

    fn close_channel(&mut self, slot: usize) {
        if let Some(w) = self.workers[slot].as_mut() {
            if let Some(c) = w.chan.take() {
                let _ = epoll::delete(&self.epoll, &c);
            }
            w.out.clear();
            w.out_pos = 0;
        }
    }

    fn remove_worker(&mut self, slot: usize) {
        if let Some(w) = self.workers[slot].take() {
            let _ = epoll::delete(&self.epoll, &w.pidfd);
            if let Some(c) = &w.chan {
                let _ = epoll::delete(&self.epoll, c);
            }
            if let Some(e) = &w.stderr {
                let _ = epoll::delete(&self.epoll, e);
            }
        }
    }

    fn startup_failed(&mut self, failure: StartupFailure, now: Instant) {
        bump(&self.shared.stats.startup_failures);
        self.emit(EventKind::StartupFailed, None, None, || format!("a worker failed to start: {failure}"));
        self.startup_failures += 1;
        if self.startup_failures >= self.cfg.max_startup_failures && self.run != Run::Broken {
            self.run = Run::Broken;
            self.broken = Some(failure.clone());
            {
                let mut inbox = lock(&self.shared.inbox);
                inbox.gate = Gate::Broken(failure.clone());
            }
            // Tasks the workers hold were not started by a ready worker (none is ready),
            // but fail any that are, too: the pool is going away.
            for slot in 0..self.workers.len() {
                if self.workers[slot].is_some() {
                    self.requeue_inflight(slot);
                    self.stop_worker(slot, now);
                }
            }
            self.fail_queue();
        }
    }

    fn retire_idle(&mut self, now: Instant) {
        let closing = self.run == Run::Closing && self.queue.is_empty();
        for slot in 0..self.workers.len() {
            let Some(w) = self.workers[slot].as_ref() else { continue };
            if !w.is_ready() || !w.inflight.is_empty() {
                continue;
            }
            let used_up = self.cfg.max_tasks_per_worker.is_some_and(|m| w.sent >= m);
            if used_up {
                bump(&self.shared.stats.workers_recycled);
                let pid = w.pid;
                self.emit(EventKind::Recycled, Some(pid), None, || {
                    format!("retiring worker {pid}: it reached max_tasks_per_worker")
                });
            }
            if closing || used_up {
                self.transition(slot, Event::Retire, now);
            }
        }
    }

    // ----- dispatch and I/O -----------------------------------------------------------

    fn dispatch(&mut self, now: Instant) {
        if self.queue.is_empty() {
            return;
        }
        // Idle workers first, then one more chunk ahead per worker up to `prefetch`. Each
        // worker's frames go out in one write at the end, not one write per chunk.
        'fill: for depth in 0..self.cfg.prefetch.max(1) {
            for slot in 0..self.workers.len() {
                if self.queue.is_empty() {
                    break 'fill;
                }
                let ok = self.workers[slot]
                    .as_ref()
                    .is_some_and(|w| w.is_ready() && w.chunks == depth && (depth == 0 || self.may_send_ahead(w, now)));
                if ok {
                    self.send_chunk(slot, now);
                }
            }
        }
        for slot in 0..self.workers.len() {
            // A worker already waiting for EPOLLOUT is flushed when the socket has room.
            if self.workers[slot].as_ref().is_some_and(|w| w.out_pos < w.out.len() && !w.want_out) {
                self.flush(slot, now);
            }
        }
    }

    /// Whether more work may wait in a busy worker's channel. With `prefetch_below` set,
    /// only behind tasks known to be short: a task sent ahead cannot be taken back, so
    /// behind a long one it would wait while another worker sits idle.
    fn may_send_ahead(&self, w: &Worker, now: Instant) -> bool {
        let Some(limit) = self.cfg.prefetch_below else { return true };
        let head_short = w.head_started.is_none_or(|t| now.saturating_duration_since(t) < limit);
        head_short && w.typical_task.is_some_and(|d| d < limit)
    }

    /// Queues the next chunk in the worker's output buffer; `dispatch` flushes it.
    fn send_chunk(&mut self, slot: usize, now: Instant) {
        let budget = {
            let w = self.workers[slot].as_ref().expect("ready worker");
            match self.cfg.max_tasks_per_worker {
                Some(m) => m.saturating_sub(w.sent) as usize,
                None => usize::MAX,
            }
        };
        if budget == 0 {
            return;
        }
        // Skip ids already finished (cancelled while queued), whole chunks of them too.
        let mut chunk = loop {
            let Some(mut c) = self.queue.pop_front() else { return };
            c.retain(|id| self.tasks.get(id).is_some_and(|e| !e.cancelled));
            if !c.is_empty() {
                break c;
            }
        };
        if chunk.len() > budget {
            let rest = chunk.split_off(budget);
            self.queue.push_front(rest);
        }
        let w = self.workers[slot].as_mut().expect("ready worker");
        let was_idle = w.inflight.is_empty();
        let n = chunk.len();
        for (i, id) in chunk.into_iter().enumerate() {
            let e = self.tasks.get_mut(&id).expect("retained");
            e.worker = Some(slot);
            if e.items == 0 {
                wire::encode_into(&mut w.out, Kind::Task, id, &e.payload);
            } else {
                wire::encode_chunk_into(&mut w.out, id, &e.payload, e.from, e.items);
            }
            w.inflight.push_back(InFlight { id, ends_chunk: i + 1 == n });
        }
        w.chunks += 1;
        w.sent += n as u64;
        if was_idle {
            self.start_head(slot, now);
        }
    }

    /// Writes as much of the worker's output buffer as the socket takes, never blocking;
    /// the rest waits for EPOLLOUT.
    fn flush(&mut self, slot: usize, now: Instant) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        let Some(chan) = w.chan.as_mut() else { return };
        let mut failed = false;
        while w.out_pos < w.out.len() {
            match chan.write(&w.out[w.out_pos..]) {
                Ok(n) => w.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.on_channel_closed(slot, now);
            return;
        }
        let done = w.out_pos == w.out.len();
        if done {
            w.out.clear();
            w.out_pos = 0;
        }
        if done == w.want_out {
            w.want_out = !done;
            let flags = if done { epoll::EventFlags::IN } else { epoll::EventFlags::IN | epoll::EventFlags::OUT };
            let _ = epoll::modify(
                &self.epoll,
                &*chan,
                epoll::EventData::new_u64(token(slot, w.generation, FD_CHAN)),
                flags,
            );
        }
    }

    fn on_readable(&mut self, slot: usize, now: Instant) {
        // Bounded reads per wake-up keep one chatty worker from starving the others.
        if self.read_channel(slot, now, 16) == ChannelEnd::Closed {
            self.on_channel_closed(slot, now);
        }
    }

    /// Reads up to `reads` times from a worker's channel and handles every whole frame.
    /// Says whether the channel ended (end of file or an error) or is merely drained.
    fn read_channel(&mut self, slot: usize, now: Instant, reads: usize) -> ChannelEnd {
        for _ in 0..reads {
            let Some(w) = self.workers[slot].as_mut() else { return ChannelEnd::Drained };
            let Some(chan) = w.chan.as_mut() else { return ChannelEnd::Drained };
            let want = w.dec.wanted().clamp(64 * 1024, 4 << 20);
            let got = if matches!(w.phase, Phase::Starting { .. }) && w.page.is_none() {
                read_with_page(chan, &mut w.dec, &mut w.page, &mut self.scratch)
            } else {
                w.dec.read_from_fd(&*chan, want)
            };
            match got {
                Ok(0) => {
                    self.drain_frames(slot, now);
                    return ChannelEnd::Closed;
                }
                Ok(n) => {
                    if !self.drain_frames(slot, now) {
                        return ChannelEnd::Drained;
                    }
                    // A short read emptied the socket: level-triggered epoll reports the
                    // next bytes, so skip the read that would only say EAGAIN.
                    if n < want {
                        return ChannelEnd::Drained;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ChannelEnd::Drained,
                Err(_) => return ChannelEnd::Closed,
            }
        }
        ChannelEnd::Drained
    }

    /// Handles every whole frame buffered; false if the channel is no longer usable.
    fn drain_frames(&mut self, slot: usize, now: Instant) -> bool {
        loop {
            let Some(w) = self.workers[slot].as_mut() else { return false };
            if w.chan.is_none() {
                return false;
            }
            match w.dec.next_frame() {
                Ok(None) => return true,
                Ok(Some(f)) => self.on_frame(slot, f, now),
                Err(e) => {
                    self.on_protocol_error(slot, e, now);
                    return false;
                }
            }
        }
    }

    fn on_frame(&mut self, slot: usize, f: wire::Frame, now: Instant) {
        let w = self.workers[slot].as_mut().expect("caller checked");
        match (w.phase, f.kind) {
            (Phase::Starting { .. }, Kind::Ready) => {
                self.startup_failures = 0;
                self.transition(slot, Event::Ready, now);
            }
            (Phase::Starting { .. }, Kind::InitFailed) => {
                w.startup_counted = true;
                let failure = StartupFailure::InitFailed { payload: f.payload, stderr_tail: w.tail_string() };
                self.stop_worker(slot, now);
                self.startup_failed(failure, now);
            }
            (Phase::Running | Phase::Retiring { .. }, Kind::Stack) => {
                // Only the answer to our request counts; a late one is dropped.
                if w.dumping == Some(f.task_id) {
                    let text = String::from_utf8_lossy(&f.payload).into_owned();
                    self.finish_timeout(slot, f.task_id, Some(text), true, now);
                }
            }
            (Phase::Running | Phase::Retiring { .. }, Kind::Value | Kind::Raised | Kind::Items) => {
                if w.inflight.front().map(|h| h.id) != Some(f.task_id) {
                    self.on_protocol_violation(slot, format!("answer for task {} it was not running", f.task_id), now);
                    return;
                }
                let items = self.tasks.get(&f.task_id).map_or(0, |e| e.items);
                if (items > 0) != (f.kind == Kind::Items) && f.kind != Kind::Raised {
                    let what = if items > 0 { "a single answer for a chunk" } else { "item answers for a single task" };
                    self.on_protocol_violation(slot, format!("{what} (task {})", f.task_id), now);
                    return;
                }
                let (kind, id) = (f.kind, f.task_id);
                let mut payload = Some(f.payload);
                if kind == Kind::Items && !self.on_items(slot, id, payload.take().unwrap_or_default(), now) {
                    return;
                }
                let w = self.workers[slot].as_mut().expect("caller checked");
                if let Some(t) = w.head_started {
                    let took = now.saturating_duration_since(t);
                    // Mostly the last few tasks: one slow task soon stops the sending ahead.
                    w.typical_task = Some(match w.typical_task {
                        Some(d) => (d * 3 + took) / 4,
                        None => took,
                    });
                }
                self.pop_head(slot);
                let payload = payload.unwrap_or_default();
                match kind {
                    Kind::Value => self.complete(id, Outcome::Value(payload)),
                    // Of a chunk: it could not run at all (its payload did not load), so
                    // every item left gets the error.
                    Kind::Raised => self.complete(id, Outcome::Raised(payload)),
                    _ => {}
                }
                self.start_head(slot, now);
            }
            (_, kind) => {
                self.on_protocol_violation(slot, format!("unexpected {kind:?} frame"), now);
            }
        }
    }

    /// Takes a chunk's item outcomes; true when they were its last (the caller then ends
    /// the chunk as it ends a task), false otherwise or if the frame broke the protocol.
    fn on_items(&mut self, slot: usize, id: u64, mut payload: Vec<u8>, now: Instant) -> bool {
        let Some(e) = self.tasks.get(&id) else { return false };
        let trailer = wire::split_items(&mut payload).filter(|&(first, count, raised)| {
            first == e.from && count > 0 && raised <= count && u64::from(first) + u64::from(count) <= u64::from(e.items)
        });
        let Some((_, count, raised)) = trailer else {
            let what = format!("item answers for task {id} that do not follow on from item {}", e.from);
            self.on_protocol_violation(slot, what, now);
            return false;
        };
        let last = e.from + count == e.items;
        if !e.cancelled {
            let s = &self.shared.stats;
            bump_by(&s.values, u64::from(count - raised));
            bump_by(&s.raised, u64::from(raised));
            e.sink.complete_items(e.index, e.from, count, raised, Outcome::Value(payload));
        }
        if last {
            self.tasks.remove(&id);
        } else {
            let e = self.tasks.get_mut(&id).expect("present");
            e.from += count;
            e.attempts.clear();
        }
        last
    }

    fn on_protocol_violation(&mut self, slot: usize, what: String, now: Instant) {
        self.on_protocol_error(slot, ProtocolError::Unexpected(what), now);
    }

    fn on_protocol_error(&mut self, slot: usize, error: ProtocolError, now: Instant) {
        let w = self.workers[slot].as_ref().expect("caller checked");
        let pid = w.pid;
        if matches!(w.phase, Phase::Starting { .. }) {
            if let Some(w) = self.workers[slot].as_mut() {
                w.startup_counted = true;
            }
            self.stop_worker(slot, now);
            self.startup_failed(
                StartupFailure::Broken(format!("worker {pid} broke the channel protocol: {error}")),
                now,
            );
            return;
        }
        bump(&self.shared.stats.workers_lost);
        self.revoke(slot);
        if let Some(id) = self.pop_head(slot) {
            let task = self.task_ref(id);
            let lost = self.loss(slot, id, LossCause::Stopped);
            self.fail_started(slot, id, lost, TaskError::Protocol { task, pid, error });
        }
        self.stop_worker(slot, now);
    }

    fn on_channel_closed(&mut self, slot: usize, now: Instant) {
        // A failed write (EPIPE once the worker died) says nothing about what the worker
        // wrote before: its answers are still readable. Take them before the channel is
        // dropped, or finished tasks would lose their values and the death be pinned on
        // the wrong task.
        self.drain_channel(slot, now);
        self.close_channel(slot);
        let Some(w) = self.workers[slot].as_ref() else { return };
        if !w.phase.is_going() && w.phase.is_live() {
            // Most often the process is exiting; give its exit a moment to be reported.
            if process::peek_exit(&w.pidfd).is_some() {
                self.on_exit(slot, now);
            } else {
                self.timers.push(Reverse((now + LINGER, Timer::Linger { slot, generation: w.generation })));
            }
        }
    }

    fn on_linger(&mut self, slot: usize, now: Instant) {
        let Some(w) = self.workers[slot].as_ref() else { return };
        if w.phase.is_going() || !w.phase.is_live() {
            return;
        }
        if process::peek_exit(&w.pidfd).is_some() {
            self.on_exit(slot, now);
            return;
        }
        let pid = w.pid;
        if matches!(w.phase, Phase::Starting { .. }) {
            self.workers[slot].as_mut().expect("present").startup_counted = true;
            self.stop_worker(slot, now);
            self.startup_failed(
                StartupFailure::Broken(format!("worker {pid} closed its channel before it was ready")),
                now,
            );
            return;
        }
        self.lose_head(slot, LossCause::ChannelClosed);
        self.stop_worker(slot, now);
    }

    fn read_stderr(&mut self, slot: usize) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        let Some(fd) = w.stderr.as_ref() else { return };
        let mut eof = false;
        for _ in 0..16 {
            match rustix::io::read(fd, &mut self.scratch[..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let bytes = &self.scratch[..n];
                    if self.cfg.forward_stderr {
                        forward_to_stderr(bytes);
                    }
                    let cap = self.cfg.stderr_tail;
                    let keep = &bytes[n.saturating_sub(cap)..];
                    w.tail.extend(keep);
                    let excess = w.tail.len().saturating_sub(cap);
                    w.tail.drain(..excess);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break,
            }
        }
        if eof {
            if let Some(fd) = w.stderr.take() {
                let _ = epoll::delete(&self.epoll, &fd);
            }
        }
    }

    fn on_exit(&mut self, slot: usize, now: Instant) {
        let Some(w) = self.workers[slot].as_ref() else { return };
        let Some(status) = process::peek_exit(&w.pidfd) else { return };
        // Answers the worker sent before it died may still sit unread in its channel: the
        // pidfd and the channel can be reported in one epoll batch, pidfd first. Handle
        // them before pinning the death, or a task that already finished would be blamed
        // (and lose its value) instead of the task the worker was really running.
        self.drain_channel(slot, now);
        // Read what it wrote last before the pipe is closed: a crash message lives there.
        self.read_stderr(slot);
        let Some(w) = self.workers[slot].as_ref() else { return };
        if let Some(cg) = &w.cgroup {
            // Descendants that left the group (setsid) are still in the cgroup.
            cg.kill();
        }
        process::sweep_and_reap(w.pid, &w.pidfd);
        let (phase, counted) = (w.phase, w.startup_counted);
        match phase {
            Phase::Starting { .. } if !counted => {
                let tail = w.tail_string();
                self.requeue_inflight(slot);
                self.startup_failed(StartupFailure::ExitedEarly { status, stderr_tail: tail }, now);
            }
            Phase::Running => match self.workers[slot].as_ref().and_then(|w| w.dumping) {
                // Asked for its stack, it died instead (a worker without a handler for
                // the signal): the task still ends as timed out. It is reaped already,
                // so it must not be signalled again.
                Some(task) => self.finish_timeout(slot, task, None, false, now),
                None => self.lose_head(slot, LossCause::Exited(status)),
            },
            _ => self.requeue_inflight(slot),
        }
        self.transition(slot, Event::Exited(status), now);
        self.remove_worker(slot);
    }

    /// Reads and handles every frame still readable on a worker's channel, for a worker
    /// that exited or whose channel broke. It never reports the end of the channel (the
    /// caller is handling that), and it is bounded: a grandchild holding the channel could
    /// keep writing.
    fn drain_channel(&mut self, slot: usize, now: Instant) {
        self.read_channel(slot, now, 64);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            match t {
                Timer::Phase { slot, generation, epoch } => {
                    let current = self
                        .workers
                        .get(slot)
                        .and_then(|w| w.as_ref())
                        .is_some_and(|w| w.generation == generation && w.epoch == epoch);
                    if !current {
                        continue;
                    }
                    let was_starting =
                        matches!(self.workers[slot].as_ref().map(|w| w.phase), Some(Phase::Starting { .. }));
                    self.transition(slot, Event::Deadline, now);
                    if was_starting {
                        if let Some(w) = self.workers[slot].as_mut() {
                            w.startup_counted = true;
                        }
                        self.close_channel(slot);
                        self.requeue_inflight(slot);
                        self.startup_failed(StartupFailure::Timeout(self.cfg.startup_timeout), now);
                    }
                }
                Timer::TaskDeadline { slot, generation, task } => {
                    let Some(w) = self.workers.get(slot).and_then(|w| w.as_ref()) else { continue };
                    let due = w.generation == generation
                        && w.phase == Phase::Running
                        && w.inflight.front().is_some_and(|f| f.id == task)
                        && w.head_deadline.is_some_and(|d| d <= now);
                    if !due {
                        continue;
                    }
                    // A chunk's limit is per item: the clock restarts with each item.
                    if let Some(at) = self.item_deadline(slot, task).filter(|&at| at > now) {
                        let w = self.workers[slot].as_mut().expect("checked");
                        w.head_deadline = Some(at);
                        self.timers.push(Reverse((at, Timer::TaskDeadline { slot, generation, task })));
                        continue;
                    }
                    self.time_out(slot, task, now);
                }
                Timer::DumpWait { slot, generation, task } => {
                    let waiting = self
                        .workers
                        .get(slot)
                        .and_then(|w| w.as_ref())
                        .is_some_and(|w| w.generation == generation && w.dumping == Some(task));
                    if waiting {
                        self.finish_timeout(slot, task, None, true, now);
                    }
                }
                Timer::MemoryPoll => self.poll_memory(now),
                // The loop calls `ensure_workers` next; nothing else to do.
                Timer::Respawn => {}
                Timer::Linger { slot, generation } => {
                    if self.workers.get(slot).and_then(|w| w.as_ref()).is_some_and(|w| w.generation == generation) {
                        self.on_linger(slot, now);
                    }
                }
            }
        }
    }

    fn emit(&self, kind: EventKind, pid: Option<i32>, task_id: Option<u64>, message: impl FnOnce() -> String) {
        if let Some(hook) = &self.cfg.on_event {
            hook(&PoolEvent { kind, pid, task_id, message: message() });
        }
    }

    /// The worker running a task is gone. The task runs again while it has retries left;
    /// otherwise it ends as *worker lost*, listing every earlier attempt (a chunk: the
    /// item it was on, see [`Supervisor::fail_started`]). Tasks sent ahead to the worker,
    /// and a head it had not started yet (its page says so), are queued again.
    fn lose_head(&mut self, slot: usize, cause: LossCause) {
        let Some(w) = self.workers[slot].as_ref() else { return };
        let pid = w.pid;
        bump(&self.shared.stats.workers_lost);
        let killed_from_outside = cause == LossCause::Exited(ExitStatus::Signal(9));
        let probably_oom =
            killed_from_outside && w.oom_mark.is_some_and(|m| memory::oom_kills().is_some_and(|n| n > m));
        let head = w.inflight.front().map(|f| f.id);
        let last = self.revoke(slot);
        let started = head.is_some() && last.is_none_or(|r| Some(r.task) == head);
        let Some(id) = head.filter(|_| started) else {
            self.requeue_inflight(slot);
            self.emit(EventKind::WorkerLost, Some(pid), None, || format!("idle worker {pid} {cause}"));
            return;
        };
        self.pop_head(slot);
        self.requeue_inflight(slot);
        let lost = WorkerLost { probably_oom, ..self.loss(slot, id, cause.clone()) };
        self.settle_finished_items(slot, id, lost.clone());
        let retries = self.cfg.retries as usize;
        if let Some(e) = self.tasks.get_mut(&id).filter(|e| e.attempts.len() < retries && !e.cancelled) {
            e.attempts.push(Attempt { pid, cause: cause.clone() });
            e.worker = None;
            let n = e.attempts.len();
            self.queue.push_front(vec![id]);
            bump(&self.shared.stats.retries);
            let task = self.task_ref(id);
            self.emit(EventKind::Retry, Some(pid), Some(id), || {
                format!("{task}: worker {pid} {cause} while running it; running it again (retry {n} of {retries})")
            });
            return;
        }
        let earlier = self.tasks.get_mut(&id).map(|e| std::mem::take(&mut e.attempts)).unwrap_or_default();
        let lost = WorkerLost { earlier, ..lost };
        self.emit(EventKind::WorkerLost, Some(pid), Some(id), || lost.to_string());
        self.deliver_part(id, 1, Outcome::Failed(TaskError::WorkerLost(lost)));
        self.requeue_rest(id);
    }

    /// A task passed its limit. With a stack-dump signal configured, ask the worker where
    /// it is and give it a short while to answer; otherwise end the task now.
    fn time_out(&mut self, slot: usize, task: u64, now: Instant) {
        // The worker is stopped whatever it answers: from now on it starts no other item
        // of a chunk (nor a task sent ahead), so the late item is the last it started.
        self.revoke(slot);
        if let (Some((sig, wait)), Some(w)) = (self.cfg.stack_dump, self.workers[slot].as_mut()) {
            if w.dumping.is_none() {
                w.dumping = Some(task);
                // The worker alone, not its group: its children know nothing of the request.
                let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(w.pid).expect("positive"), sig);
                let t = Timer::DumpWait { slot, generation: w.generation, task };
                self.timers.push(Reverse((now + wait, t)));
                return;
            }
        }
        self.finish_timeout(slot, task, None, true, now);
    }

    /// Ends a late task as timed out (with its stack if the worker sent it) and, unless
    /// the worker is already dead (`stop` false), stops the worker.
    fn finish_timeout(&mut self, slot: usize, task: u64, stack: Option<String>, stop: bool, now: Instant) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        w.dumping = None;
        let pid = w.pid;
        if w.inflight.front().map(|f| f.id) != Some(task) {
            return;
        }
        let limit = self.tasks.get(&task).and_then(|e| e.timeout).unwrap_or_default();
        let t = self.task_ref(task);
        self.pop_head(slot);
        let err = TaskError::TimedOut { task: t, limit, pid, stack, stack_requested: self.cfg.stack_dump.is_some() };
        self.emit(EventKind::TaskTimedOut, Some(pid), Some(task), || err.to_string());
        let lost = self.loss(slot, task, LossCause::Stopped);
        self.fail_started(slot, task, lost, err);
        if stop {
            self.stop_worker(slot, now);
        } else {
            self.requeue_inflight(slot);
        }
    }

    /// When the item a chunk's worker is on passes its limit, per the worker's page (None
    /// for a single task, or a chunk it has not claimed yet).
    fn item_deadline(&self, slot: usize, id: u64) -> Option<Instant> {
        let e = self.tasks.get(&id).filter(|e| e.items > 0)?;
        let limit = e.timeout?;
        let (task, _, started) = self.workers[slot].as_ref()?.page.as_ref()?.progress();
        if task == id { started.checked_add(limit) } else { None }
    }

    /// Checks every busy worker's resident size against the memory limit.
    fn poll_memory(&mut self, now: Instant) {
        self.memory_timer = false;
        let Some(limit) = self.cfg.max_memory else { return };
        let mut busy = false;
        let mut over = Vec::new();
        for (slot, w) in self.workers.iter_mut().enumerate() {
            let Some(w) = w.as_mut() else { continue };
            if w.phase != Phase::Running || w.inflight.is_empty() {
                continue;
            }
            busy = true;
            if let Some(rss) = memory::rss_bytes(w.pid) {
                w.peak_rss = w.peak_rss.max(rss);
                if rss > limit {
                    over.push(slot);
                }
            }
        }
        for slot in over {
            let Some(w) = self.workers[slot].as_ref() else { continue };
            let (pid, peak) = (w.pid, w.peak_rss);
            self.revoke(slot);
            if let Some(id) = self.pop_head(slot) {
                let err = TaskError::MemoryLimit { task: self.task_ref(id), pid, limit, peak };
                self.emit(EventKind::MemoryLimit, Some(pid), Some(id), || err.to_string());
                let lost = self.loss(slot, id, LossCause::Stopped);
                self.fail_started(slot, id, lost, err);
            }
            self.stop_worker(slot, now);
        }
        if busy {
            self.memory_timer = true;
            self.timers.push(Reverse((now + self.cfg.memory_poll, Timer::MemoryPoll)));
        }
    }
}
