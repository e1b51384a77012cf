//! The pool's policy as a state machine: the task table, the queue, what each worker was
//! sent and where it is in its life, and the timers. It makes no system call: the I/O
//! shell (`supervisor.rs`) turns what the kernel says into [`Event`]s, hands them to
//! [`Core::handle`], and carries out the [`Effect`]s the core queues in answer.
//!
//! Three things the core touches directly, because each must happen at the moment of a
//! decision and none blocks: a task's sink (each outcome is delivered as it is decided,
//! so its order with the gate and the counters is the decision's), the counters and the
//! gate in [`Shared`], and a worker's progress [`Page`] (shared memory). Revoking the page
//! when the core decides to stop a worker is what makes "started at most once" exact: the
//! answer says which task and item the worker started last, and nothing later can start.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::events::{EventKind, PoolEvent};
use super::lifecycle::{self, Action, Phase};
use super::shared::{Command, Gate, Shared, lock};
use super::stats::{bump, bump_by};
use super::config::Config;
use super::task::{Sink, TaskState};
use crate::outcome::{Attempt, ExitStatus, LossCause, Outcome, StartupFailure, TaskError, TaskRef, WorkerLost};
use crate::page::{Page, Revoked};
use crate::wire::{self, Frame, Kind, ProtocolError};

/// A task's id in its pool (sequential, from 1).
pub(crate) type TaskId = u64;

/// A worker process's id.
pub(crate) type Pid = i32;

/// A worker of the pool: its slot in the worker table and the generation of that slot,
/// so that anything naming a worker that has since been replaced (a timer, an epoll
/// event) is recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WorkerId {
    slot: u32,
    generation: u32,
}

impl WorkerId {
    /// The id with a small `kind` (below 4) packed into one epoll token.
    pub fn token(self, kind: u64) -> u64 {
        (u64::from(self.slot) << 34) | (u64::from(self.generation) << 2) | kind
    }

    /// The id and kind packed by [`WorkerId::token`].
    pub fn from_token(t: u64) -> (WorkerId, u64) {
        (WorkerId { slot: (t >> 34) as u32, generation: ((t >> 2) & 0xffff_ffff) as u32 }, t & 3)
    }

    pub fn slot(self) -> usize {
        self.slot as usize
    }
}

/// What the shell tells the core.
pub(crate) enum Event {
    /// A caller's command, from the inbox.
    Command(Command),
    /// The progress page a starting worker passed along with its first bytes.
    Page(WorkerId, Page),
    /// A whole frame read from a worker's channel.
    Frame(WorkerId, Frame),
    /// The worker's channel carried bytes that are not a frame.
    BadFrame(WorkerId, ProtocolError),
    /// The worker's channel ended (end of file, or a failed read or write) and the worker
    /// has not exited yet.
    ChannelClosed(WorkerId),
    /// The worker whose channel ended is still alive a while later (the shell checked,
    /// answering [`Effect::CheckExit`]).
    StillAlive(WorkerId),
    /// The worker exited; the shell has read what it wrote and reaped it. `oom` says the
    /// kernel's OOM-kill count rose since it started.
    Exited { worker: WorkerId, status: ExitStatus, oom: bool },
    /// Starting a worker process failed.
    SpawnFailed(String),
    /// The resident size of each worker listed in [`Effect::PollMemory`] (None if it
    /// could not be read).
    Memory(Vec<(WorkerId, Option<u64>)>),
}

/// What the core asks the shell to do, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Write these frames to the worker's channel.
    Send(WorkerId, Vec<u8>),
    /// Send a signal to the worker's process group (SIGTERM).
    SignalGroup(WorkerId, Signal),
    /// SIGKILL to the worker's process group and its cgroup.
    Kill(WorkerId),
    /// Send a signal to the worker process alone (the stack-dump request).
    SignalWorker(WorkerId, Signal),
    /// Close the worker's channel: the core has nothing more to say to it or hear.
    CloseChannel(WorkerId),
    /// The worker is gone from the table (collected or abandoned): drop what is left of it.
    Forget(WorkerId),
    /// The worker's channel ended a while ago: if it has exited, report
    /// [`Event::Exited`], else [`Event::StillAlive`].
    CheckExit(WorkerId),
    /// Read these workers' resident sizes and report [`Event::Memory`].
    PollMemory(Vec<(WorkerId, Pid)>),
}

/// How long a worker that closed its channel may take to exit before it is deemed alive
/// and broken: the kernel closes a dying process's descriptors just before its exit is
/// reported, so an end of file usually means "exit in a moment".
const LINGER: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Phase { worker: WorkerId, epoch: u64 },
    TaskDeadline { worker: WorkerId, task: TaskId },
    Linger { worker: WorkerId },
    /// Try again to start workers after a spawn failed (nothing else may wake the loop).
    Respawn,
    /// Stop waiting for a late task's stack.
    DumpWait { worker: WorkerId, task: TaskId },
    /// Check busy workers' memory against the limit.
    MemoryPoll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Open,
    Closing,
    Terminating,
    Broken,
}

struct Entry {
    sink: Arc<dyn Sink>,
    index: usize,
    payload: Vec<u8>,
    timeout: Option<Duration>,
    label: Option<Arc<str>>,
    /// The worker it was sent to, while it is there.
    worker: Option<WorkerId>,
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
    id: TaskId,
    ends_chunk: bool,
}

/// What the core knows of a worker: its life-cycle phase and the tasks it was sent.
struct Worker {
    id: WorkerId,
    pid: Pid,
    phase: Phase,
    /// Bumped on each phase change, so stale phase deadlines in the heap are ignored.
    epoch: u64,
    /// Its channel is open (the core may still send to it and hear from it).
    connected: bool,
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
    /// Largest resident size seen while it ran a task (with a memory limit).
    peak_rss: u64,
    /// The late task whose stack it was asked for; the time-out waits for the answer.
    dumping: Option<TaskId>,
    /// The progress page it passed with its Ready frame (see [`crate::page`]).
    page: Option<Page>,
    /// What revoking its page returned: the last task it started (cached, as a second
    /// revoke would not say).
    last_claim: Option<Revoked>,
}

impl Worker {
    fn is_ready(&self) -> bool {
        self.phase == Phase::Running && self.connected
    }

    fn tail_string(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
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

/// The pool's state and rules; see the module documentation.
pub(crate) struct Core {
    shared: Arc<Shared>,
    cfg: Config,
    workers: Vec<Option<Worker>>,
    next_generation: u32,
    tasks: HashMap<TaskId, Entry, BuildIdHasher>,
    queue: VecDeque<Vec<TaskId>>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    run: Run,
    broken: Option<StartupFailure>,
    startup_failures: u32,
    memory_timer: bool,
    effects: VecDeque<Effect>,
    /// Emptied output buffers the shell gave back ([`Core::recycle`]), reused for the
    /// next frames so a busy pool does not grow a fresh buffer for every dispatch.
    spare: Vec<Vec<u8>>,
}

impl Core {
    pub fn new(shared: Arc<Shared>, cfg: Config) -> Core {
        Core {
            shared,
            cfg,
            workers: Vec::new(),
            next_generation: 1,
            tasks: HashMap::default(),
            queue: VecDeque::new(),
            timers: BinaryHeap::new(),
            run: Run::Open,
            broken: None,
            startup_failures: 0,
            memory_timer: false,
            effects: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The next effect to carry out, oldest first.
    pub fn next_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Takes back a buffer of an [`Effect::Send`] once its bytes are written or copied.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0 && self.spare.len() < 2 * self.cfg.workers.max(1) {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Takes one event.
    pub fn handle(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Command(cmd) => self.on_command(cmd, now),
            Event::Page(w, page) => {
                if let Some(w) = self.worker_mut(w) {
                    if w.page.is_none() {
                        w.page = Some(page);
                    }
                }
            }
            Event::Frame(w, f) => {
                if self.worker(w).is_some_and(|w| w.connected) {
                    self.on_frame(w, f, now);
                }
            }
            Event::BadFrame(w, e) => {
                if self.worker(w).is_some_and(|w| w.connected) {
                    self.on_protocol_error(w, e, now);
                }
            }
            Event::ChannelClosed(w) => self.on_channel_closed(w, now),
            Event::StillAlive(w) => self.on_still_alive(w, now),
            Event::Exited { worker, status, oom } => self.on_exit(worker, status, oom, now),
            Event::SpawnFailed(why) => self.on_spawn_failed(why, now),
            Event::Memory(readings) => self.on_memory(readings, now),
        }
    }

    /// Work done once per turn of the loop, after the commands and before new workers
    /// are started: drop finished chunks from the queue's front and retire idle workers.
    pub fn tidy(&mut self, now: Instant) {
        self.purge_queue();
        self.retire_idle(now);
    }

    /// Whether the pool wants one more worker than it has.
    pub fn wants_worker(&self) -> bool {
        let target = match self.run {
            Run::Open => self.cfg.workers,
            Run::Closing => self.cfg.workers.min(self.queue.len()),
            Run::Terminating | Run::Broken => 0,
        };
        self.live_count() < target
    }

    /// The id the next worker will get from [`Core::worker_started`].
    pub fn next_worker_id(&self) -> WorkerId {
        let slot = self.workers.iter().position(|w| w.is_none()).unwrap_or(self.workers.len());
        WorkerId { slot: slot as u32, generation: self.next_generation }
    }

    /// A worker process was started (see [`Core::next_worker_id`] for its id): it gets
    /// its init frame and a start-up deadline.
    pub fn worker_started(&mut self, pid: Pid, now: Instant) -> WorkerId {
        let id = self.next_worker_id();
        if id.slot() == self.workers.len() {
            self.workers.push(None);
        }
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        bump(&self.shared.stats.workers_spawned);
        let ready_by = now + self.cfg.startup_timeout;
        self.workers[id.slot()] = Some(Worker {
            id,
            pid,
            phase: Phase::Starting { ready_by },
            epoch: 0,
            connected: true,
            inflight: VecDeque::new(),
            chunks: 0,
            head_deadline: None,
            head_started: None,
            typical_task: None,
            sent: 0,
            tail: VecDeque::new(),
            startup_counted: false,
            peak_rss: 0,
            dumping: None,
            page: None,
            last_claim: None,
        });
        self.emit(EventKind::WorkerStarted, Some(pid), None, || format!("started worker {pid}"));
        let mut init = Vec::new();
        wire::encode_into(&mut init, Kind::Init, 0, &self.cfg.init_payload);
        self.effects.push_back(Effect::Send(id, init));
        self.timers.push(Reverse((ready_by, Timer::Phase { worker: id, epoch: 0 })));
        id
    }

    /// Keeps the last bytes a worker wrote to its stderr, for error reports.
    pub fn stderr(&mut self, w: WorkerId, bytes: &[u8]) {
        let cap = self.cfg.stderr_tail;
        let Some(w) = self.worker_mut(w) else { return };
        let keep = &bytes[bytes.len().saturating_sub(cap)..];
        w.tail.extend(keep);
        let excess = w.tail.len().saturating_sub(cap);
        w.tail.drain(..excess);
    }

    /// Whether a starting worker has not passed its page yet (its channel is then read
    /// with room for the descriptor).
    pub fn awaits_page(&self, w: WorkerId) -> bool {
        self.worker(w).is_some_and(|w| matches!(w.phase, Phase::Starting { .. }) && w.page.is_none())
    }

    /// Whether the worker is alive and not being stopped: an end of its channel is then
    /// news (see [`Event::ChannelClosed`]).
    pub fn is_serving(&self, w: WorkerId) -> bool {
        self.worker(w).is_some_and(|w| !w.phase.is_going() && w.phase.is_live())
    }

    /// When the next timer fires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub fn is_finished(&self) -> bool {
        let no_workers = self.workers.iter().all(|w| w.is_none());
        match self.run {
            Run::Open => false,
            Run::Closing => no_workers && self.tasks.is_empty(),
            Run::Terminating | Run::Broken => no_workers,
        }
    }

    /// After a panic, whose state may be half-updated: ends every task the core holds as
    /// [`TaskError::PoolFailed`], each sink on its own (a sink may panic too). The shell
    /// kills the workers.
    pub fn fail_all(&mut self, why: &Arc<str>) {
        // The event hook may be what panicked: it is not called again.
        self.cfg.on_event = None;
        self.run = Run::Broken;
        for (id, e) in std::mem::take(&mut self.tasks) {
            if !e.cancelled {
                fail_one(&self.shared, &e.sink, e.index, TaskRef { id, label: e.label }, why);
            }
        }
        self.queue.clear();
        self.timers.clear();
        self.effects.clear();
    }

    fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(id.slot()).and_then(|w| w.as_ref()).filter(|w| w.id == id)
    }

    fn worker_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut(id.slot()).and_then(|w| w.as_mut()).filter(|w| w.id == id)
    }

    fn worker_ids(&self) -> Vec<WorkerId> {
        self.workers.iter().flatten().map(|w| w.id).collect()
    }

    fn emit(&self, kind: EventKind, pid: Option<Pid>, task_id: Option<TaskId>, message: impl FnOnce() -> String) {
        if let Some(hook) = &self.cfg.on_event {
            hook(&PoolEvent { kind, pid, task_id, message: message() });
        }
    }

    // ----- commands -------------------------------------------------------------------

    fn on_command(&mut self, cmd: Command, now: Instant) {
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

    fn cancel(&mut self, id: TaskId, now: Instant) {
        let Some(e) = self.tasks.get_mut(&id) else { return };
        if e.cancelled {
            return;
        }
        match e.worker {
            None => {
                // Still queued: its id stays in the queue and is skipped at dispatch.
                self.complete(id, Outcome::Failed(TaskError::Cancelled(self.task_ref(id))));
            }
            Some(w) => {
                let is_head = self.worker(w).is_some_and(|w| w.inflight.front().is_some_and(|f| f.id == id));
                let task = self.task_ref(id);
                if is_head {
                    self.pop_head(w);
                    self.complete(id, Outcome::Failed(TaskError::Cancelled(task)));
                    self.stop_worker(w, now);
                } else {
                    // Sent ahead and not started: report it now, drop its result later.
                    let e = self.tasks.get(&id).expect("present");
                    self.deliver(e, e.left(), Outcome::Failed(TaskError::Cancelled(task)));
                    self.tasks.get_mut(&id).expect("present").cancelled = true;
                }
            }
        }
    }

    /// Fails every task and stops every worker.
    fn terminate_all(&mut self, now: Instant) {
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            let t = self.task_ref(id);
            self.complete(id, Outcome::Failed(TaskError::Terminated(t)));
        }
        self.queue.clear();
        for id in self.worker_ids() {
            if let Some(w) = self.worker_mut(id) {
                w.inflight.clear();
                w.chunks = 0;
            }
            self.stop_worker(id, now);
        }
    }

    // ----- task bookkeeping -----------------------------------------------------------

    /// Where a task is, from the state kept anyway: its entry says whether a worker has
    /// it, and that worker's queue whether it is at the head (started: its time limit
    /// runs from there) or sent ahead behind it.
    fn task_state(&self, id: TaskId) -> TaskState {
        let Some(e) = self.tasks.get(&id).filter(|e| !e.cancelled) else { return TaskState::Done };
        let Some(w) = e.worker else { return TaskState::Queued };
        let head = self.worker(w).and_then(|w| w.inflight.front()).map(|f| f.id);
        if head == Some(id) { TaskState::Running } else { TaskState::SentAhead }
    }

    fn task_ref(&self, id: TaskId) -> TaskRef {
        TaskRef { id, label: self.tasks.get(&id).and_then(|e| e.label.clone()) }
    }

    /// Delivers a task's one outcome (a chunk's: for each item without one) and forgets
    /// the task.
    fn complete(&mut self, id: TaskId, outcome: Outcome) {
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
        bump_by(
            match &outcome {
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
            },
            u64::from(n),
        );
        if e.items == 0 {
            e.sink.complete(e.index, outcome);
        } else {
            e.sink.complete_items(e.index, e.from, n, raised, outcome);
        }
    }

    /// Delivers `outcome` for the next `n` items of chunk `id` (all of a single task's)
    /// and forgets the task once every item has one.
    fn deliver_part(&mut self, id: TaskId, n: u32, outcome: Outcome) {
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
    fn pop_head(&mut self, w: WorkerId) -> Option<TaskId> {
        let w = self.worker_mut(w)?;
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
    fn requeue_inflight(&mut self, w: WorkerId) {
        let last = self.revoke(w);
        let Some(wk) = self.worker_mut(w) else { return };
        let ids: Vec<TaskId> = wk.inflight.drain(..).map(|f| f.id).collect();
        wk.chunks = 0;
        wk.head_deadline = None;
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
            let lost = self.loss(w, id, LossCause::Stopped);
            self.fail_started(w, id, lost.clone(), TaskError::WorkerLost(lost));
        }
    }

    /// Revokes the worker's page (once: later calls return the first answer), so it
    /// starts nothing more; says what it started last. None for a worker without a page.
    fn revoke(&mut self, w: WorkerId) -> Option<Revoked> {
        let w = self.worker_mut(w)?;
        if w.last_claim.is_none() {
            w.last_claim = w.page.as_ref().map(|p| p.revoke());
        }
        w.last_claim
    }

    /// A *worker lost* for task `id` of worker `w`, without earlier attempts.
    fn loss(&self, w: WorkerId, id: TaskId, cause: LossCause) -> WorkerLost {
        let w = self.worker(w);
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

    /// Ends task `id`, started by worker `w`, which is gone or being stopped: `failure`
    /// for a single task. A chunk is split where the worker's page says it was (see
    /// [`Core::settle_finished_items`]): the item it was on gets `failure` and the items
    /// after it, never started, are queued again as the rest of the chunk.
    fn fail_started(&mut self, w: WorkerId, id: TaskId, lost: WorkerLost, failure: TaskError) {
        self.settle_finished_items(w, id, lost);
        self.deliver_part(id, 1, Outcome::Failed(failure));
        self.requeue_rest(id);
    }

    /// For a chunk whose worker is gone or being stopped: items it finished whose
    /// outcomes never reached the pool end as worker lost (`finished`), so that the
    /// chunk's next item is the one it was on. That item is the last it started per its
    /// (revoked) page; the first item without an outcome if the page says nothing of this
    /// chunk (the worker died loading it), so every loss moves the chunk on.
    fn settle_finished_items(&mut self, w: WorkerId, id: TaskId, lost: WorkerLost) {
        let last = self.revoke(w);
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
    fn requeue_rest(&mut self, id: TaskId) {
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
    fn start_head(&mut self, w: WorkerId, now: Instant) {
        let (poll_memory, poll_every) = (self.cfg.max_memory.is_some(), self.cfg.memory_poll);
        let Some(wk) = self.workers.get_mut(w.slot()).and_then(|w| w.as_mut()).filter(|wk| wk.id == w) else {
            return;
        };
        wk.head_deadline = None;
        wk.dumping = None;
        wk.head_started = wk.inflight.front().map(|_| now);
        let Some(f) = wk.inflight.front() else { return };
        if poll_memory && !self.memory_timer {
            self.memory_timer = true;
            self.timers.push(Reverse((now + poll_every, Timer::MemoryPoll)));
        }
        let Some(limit) = self.tasks.get(&f.id).and_then(|e| e.timeout) else { return };
        let at = now + limit;
        wk.head_deadline = Some(at);
        self.timers.push(Reverse((at, Timer::TaskDeadline { worker: w, task: f.id })));
    }

    // ----- workers --------------------------------------------------------------------

    fn live_count(&self) -> usize {
        self.workers.iter().flatten().filter(|w| !w.phase.is_going() && w.phase.is_live()).count()
    }

    fn on_spawn_failed(&mut self, why: String, now: Instant) {
        self.startup_failed(StartupFailure::Spawn(why), now);
        // A failed spawn leaves no process, channel or deadline behind to wake the loop,
        // so without a timer of its own the retry (and the failure of the waiting tasks
        // after `max_startup_failures`) could wait forever. Back off a little between
        // attempts.
        if self.run != Run::Broken {
            let delay = Duration::from_millis(50 * u64::from(self.startup_failures.min(20)));
            self.timers.push(Reverse((now + delay, Timer::Respawn)));
        }
    }

    /// Feeds an event to a worker's life cycle and queues the resulting action.
    fn transition(&mut self, w: WorkerId, ev: lifecycle::Event, now: Instant) {
        let timing = self.cfg.timing;
        let Some(wk) = self.worker_mut(w) else { return };
        let (next, action) = lifecycle::step(wk.phase, ev, now, &timing);
        let pid = wk.pid;
        if next != wk.phase {
            wk.phase = next;
            wk.epoch += 1;
            if let Some(at) = next.deadline() {
                let epoch = wk.epoch;
                self.timers.push(Reverse((at, Timer::Phase { worker: w, epoch })));
            }
        }
        match action {
            None | Some(Action::Collect) => {}
            Some(Action::SendShutdown) => {
                let mut frame = Vec::new();
                wire::encode_into(&mut frame, Kind::Shutdown, 0, &[]);
                self.effects.push_back(Effect::Send(w, frame));
            }
            Some(Action::Term) => {
                self.effects.push_back(Effect::SignalGroup(w, Signal::TERM));
                let grace = timing.grace;
                self.emit(EventKind::Terminate, Some(pid), None, || {
                    format!(
                        "sent SIGTERM to worker {pid}'s process group; SIGKILL follows in {:.3} s",
                        grace.as_secs_f64()
                    )
                });
            }
            Some(Action::Kill) => {
                self.effects.push_back(Effect::Kill(w));
                self.emit(EventKind::Kill, Some(pid), None, || {
                    format!("worker {pid} outlived its grace period: sent SIGKILL to its process group")
                });
            }
            Some(Action::Abandon) => {
                bump(&self.shared.stats.workers_abandoned);
                self.forget(w);
                let wait = timing.kill_wait;
                self.emit(EventKind::Abandoned, Some(pid), None, || {
                    format!("worker {pid} could not be reaped {:.3} s after SIGKILL; abandoned", wait.as_secs_f64())
                });
            }
        }
    }

    /// Stops a worker with the escalation. Its running task must already have been given
    /// its outcome by the caller; tasks sent ahead are queued again.
    fn stop_worker(&mut self, w: WorkerId, now: Instant) {
        self.requeue_inflight(w);
        self.close_channel(w);
        self.transition(w, lifecycle::Event::Stop, now);
    }

    fn close_channel(&mut self, w: WorkerId) {
        if let Some(wk) = self.worker_mut(w) {
            if wk.connected {
                wk.connected = false;
                self.effects.push_back(Effect::CloseChannel(w));
            }
        }
    }

    fn forget(&mut self, w: WorkerId) {
        if self.worker(w).is_some() {
            self.workers[w.slot()] = None;
            self.effects.push_back(Effect::Forget(w));
        }
    }

    fn startup_failed(&mut self, failure: StartupFailure, now: Instant) {
        bump(&self.shared.stats.startup_failures);
        self.emit(EventKind::StartupFailed, None, None, || format!("a worker failed to start: {failure}"));
        self.startup_failures += 1;
        if self.startup_failures >= self.cfg.max_startup_failures && self.run != Run::Broken {
            self.run = Run::Broken;
            self.broken = Some(failure.clone());
            lock(&self.shared.inbox).gate = Gate::Broken(failure.clone());
            // Tasks the workers hold were not started by a ready worker (none is ready),
            // but fail any that are, too: the pool is going away.
            for w in self.worker_ids() {
                self.requeue_inflight(w);
                self.stop_worker(w, now);
            }
            self.fail_queue();
        }
    }

    fn retire_idle(&mut self, now: Instant) {
        let closing = self.run == Run::Closing && self.queue.is_empty();
        for id in self.worker_ids() {
            let Some(w) = self.worker(id) else { continue };
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
                self.transition(id, lifecycle::Event::Retire, now);
            }
        }
    }

    // ----- dispatch -------------------------------------------------------------------

    /// Sends queued chunks: to idle workers first, then one more chunk ahead per worker
    /// up to `prefetch`. Each worker's frames go out as one [`Effect::Send`], so the
    /// shell writes them in one call.
    pub fn dispatch(&mut self, now: Instant) {
        if self.queue.is_empty() {
            return;
        }
        let mut out: Vec<Option<Vec<u8>>> = Vec::new();
        'fill: for depth in 0..self.cfg.prefetch.max(1) {
            for slot in 0..self.workers.len() {
                if self.queue.is_empty() {
                    break 'fill;
                }
                let ok = self.workers[slot]
                    .as_ref()
                    .is_some_and(|w| w.is_ready() && w.chunks == depth && (depth == 0 || self.may_send_ahead(w, now)));
                if ok {
                    if out.len() <= slot {
                        out.resize_with(slot + 1, || None);
                    }
                    let mut buf = out[slot].take().unwrap_or_else(|| self.spare.pop().unwrap_or_default());
                    self.send_chunk(slot, &mut buf, now);
                    out[slot] = Some(buf);
                }
            }
        }
        for (slot, buf) in out.into_iter().enumerate() {
            let Some(buf) = buf else { continue };
            match self.workers[slot].as_ref() {
                Some(w) if !buf.is_empty() => self.effects.push_back(Effect::Send(w.id, buf)),
                _ => self.recycle(buf),
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

    /// Encodes the next chunk for the worker in `slot` into `out`.
    fn send_chunk(&mut self, slot: usize, out: &mut Vec<u8>, now: Instant) {
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
        let id_w = w.id;
        let was_idle = w.inflight.is_empty();
        let n = chunk.len();
        for (i, id) in chunk.into_iter().enumerate() {
            let e = self.tasks.get_mut(&id).expect("retained");
            e.worker = Some(id_w);
            if e.items == 0 {
                wire::encode_into(out, Kind::Task, id, &e.payload);
            } else {
                wire::encode_chunk_into(out, id, &e.payload, e.from, e.items);
            }
            w.inflight.push_back(InFlight { id, ends_chunk: i + 1 == n });
        }
        w.chunks += 1;
        w.sent += n as u64;
        if was_idle {
            self.start_head(id_w, now);
        }
    }

    // ----- what workers say -----------------------------------------------------------

    fn on_frame(&mut self, w: WorkerId, f: Frame, now: Instant) {
        let wk = self.worker_mut(w).expect("caller checked");
        match (wk.phase, f.kind) {
            (Phase::Starting { .. }, Kind::Ready) => {
                self.startup_failures = 0;
                self.transition(w, lifecycle::Event::Ready, now);
            }
            (Phase::Starting { .. }, Kind::InitFailed) => {
                wk.startup_counted = true;
                let failure = StartupFailure::InitFailed { payload: f.payload, stderr_tail: wk.tail_string() };
                self.stop_worker(w, now);
                self.startup_failed(failure, now);
            }
            (Phase::Running | Phase::Retiring { .. }, Kind::Stack) => {
                // Only the answer to our request counts; a late one is dropped.
                if wk.dumping == Some(f.task_id) {
                    let text = String::from_utf8_lossy(&f.payload).into_owned();
                    self.finish_timeout(w, f.task_id, Some(text), true, now);
                }
            }
            (Phase::Running | Phase::Retiring { .. }, Kind::Value | Kind::Raised | Kind::Items) => {
                if wk.inflight.front().map(|h| h.id) != Some(f.task_id) {
                    self.on_protocol_violation(w, format!("answer for task {} it was not running", f.task_id), now);
                    return;
                }
                let items = self.tasks.get(&f.task_id).map_or(0, |e| e.items);
                if (items > 0) != (f.kind == Kind::Items) && f.kind != Kind::Raised {
                    let what = if items > 0 { "a single answer for a chunk" } else { "item answers for a single task" };
                    self.on_protocol_violation(w, format!("{what} (task {})", f.task_id), now);
                    return;
                }
                let (kind, id) = (f.kind, f.task_id);
                let mut payload = Some(f.payload);
                if kind == Kind::Items && !self.on_items(w, id, payload.take().unwrap_or_default(), now) {
                    return;
                }
                let wk = self.worker_mut(w).expect("caller checked");
                if let Some(t) = wk.head_started {
                    let took = now.saturating_duration_since(t);
                    // Mostly the last few tasks: one slow task soon stops the sending ahead.
                    wk.typical_task = Some(match wk.typical_task {
                        Some(d) => (d * 3 + took) / 4,
                        None => took,
                    });
                }
                self.pop_head(w);
                let payload = payload.unwrap_or_default();
                match kind {
                    Kind::Value => self.complete(id, Outcome::Value(payload)),
                    // Of a chunk: it could not run at all (its payload did not load), so
                    // every item left gets the error.
                    Kind::Raised => self.complete(id, Outcome::Raised(payload)),
                    _ => {}
                }
                self.start_head(w, now);
            }
            (_, kind) => {
                self.on_protocol_violation(w, format!("unexpected {kind:?} frame"), now);
            }
        }
    }

    /// Takes a chunk's item outcomes; true when they were its last (the caller then ends
    /// the chunk as it ends a task), false otherwise or if the frame broke the protocol.
    fn on_items(&mut self, w: WorkerId, id: TaskId, mut payload: Vec<u8>, now: Instant) -> bool {
        let Some(e) = self.tasks.get(&id) else { return false };
        let trailer = wire::split_items(&mut payload).filter(|&(first, count, raised)| {
            first == e.from && count > 0 && raised <= count && u64::from(first) + u64::from(count) <= u64::from(e.items)
        });
        let Some((_, count, raised)) = trailer else {
            let what = format!("item answers for task {id} that do not follow on from item {}", e.from);
            self.on_protocol_violation(w, what, now);
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

    fn on_protocol_violation(&mut self, w: WorkerId, what: String, now: Instant) {
        self.on_protocol_error(w, ProtocolError::Unexpected(what), now);
    }

    fn on_protocol_error(&mut self, w: WorkerId, error: ProtocolError, now: Instant) {
        let wk = self.worker_mut(w).expect("caller checked");
        let pid = wk.pid;
        if matches!(wk.phase, Phase::Starting { .. }) {
            wk.startup_counted = true;
            self.stop_worker(w, now);
            self.startup_failed(
                StartupFailure::Broken(format!("worker {pid} broke the channel protocol: {error}")),
                now,
            );
            return;
        }
        bump(&self.shared.stats.workers_lost);
        self.revoke(w);
        if let Some(id) = self.pop_head(w) {
            let task = self.task_ref(id);
            let lost = self.loss(w, id, LossCause::Stopped);
            self.fail_started(w, id, lost, TaskError::Protocol { task, pid, error });
        }
        self.stop_worker(w, now);
    }

    /// The channel of a serving worker ended before its exit was seen: most often the
    /// process is exiting, so its exit gets a moment to be reported.
    fn on_channel_closed(&mut self, w: WorkerId, now: Instant) {
        self.close_channel(w);
        if self.is_serving(w) {
            self.timers.push(Reverse((now + LINGER, Timer::Linger { worker: w })));
        }
    }

    /// The worker closed its channel a while ago and is still alive: it is broken.
    fn on_still_alive(&mut self, w: WorkerId, now: Instant) {
        let Some(wk) = self.worker_mut(w) else { return };
        if wk.phase.is_going() || !wk.phase.is_live() {
            return;
        }
        let pid = wk.pid;
        if matches!(wk.phase, Phase::Starting { .. }) {
            wk.startup_counted = true;
            self.stop_worker(w, now);
            self.startup_failed(
                StartupFailure::Broken(format!("worker {pid} closed its channel before it was ready")),
                now,
            );
            return;
        }
        self.lose_head(w, LossCause::ChannelClosed, false);
        self.stop_worker(w, now);
    }

    fn on_exit(&mut self, w: WorkerId, status: ExitStatus, oom: bool, now: Instant) {
        let Some(wk) = self.worker(w) else { return };
        let (phase, counted) = (wk.phase, wk.startup_counted);
        match phase {
            Phase::Starting { .. } if !counted => {
                let tail = wk.tail_string();
                self.requeue_inflight(w);
                self.startup_failed(StartupFailure::ExitedEarly { status, stderr_tail: tail }, now);
            }
            Phase::Running => match wk.dumping {
                // Asked for its stack, it died instead (a worker without a handler for
                // the signal): the task still ends as timed out. It is reaped already,
                // so it must not be signalled again.
                Some(task) => self.finish_timeout(w, task, None, false, now),
                None => self.lose_head(w, LossCause::Exited(status), oom),
            },
            _ => self.requeue_inflight(w),
        }
        self.transition(w, lifecycle::Event::Exited(status), now);
        self.forget(w);
    }

    // ----- timers ---------------------------------------------------------------------

    /// Fires every timer due by `now`.
    pub fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            match t {
                Timer::Phase { worker, epoch } => {
                    let Some(w) = self.worker(worker).filter(|w| w.epoch == epoch) else { continue };
                    let was_starting = matches!(w.phase, Phase::Starting { .. });
                    self.transition(worker, lifecycle::Event::Deadline, now);
                    if was_starting {
                        if let Some(w) = self.worker_mut(worker) {
                            w.startup_counted = true;
                        }
                        self.close_channel(worker);
                        self.requeue_inflight(worker);
                        self.startup_failed(StartupFailure::Timeout(self.cfg.startup_timeout), now);
                    }
                }
                Timer::TaskDeadline { worker, task } => {
                    let Some(w) = self.worker(worker) else { continue };
                    let due = w.phase == Phase::Running
                        && w.inflight.front().is_some_and(|f| f.id == task)
                        && w.head_deadline.is_some_and(|d| d <= now);
                    if !due {
                        continue;
                    }
                    // A chunk's limit is per item: the clock restarts with each item.
                    if let Some(at) = self.item_deadline(worker, task).filter(|&at| at > now) {
                        self.worker_mut(worker).expect("checked").head_deadline = Some(at);
                        self.timers.push(Reverse((at, Timer::TaskDeadline { worker, task })));
                        continue;
                    }
                    self.time_out(worker, task, now);
                }
                Timer::DumpWait { worker, task } => {
                    if self.worker(worker).is_some_and(|w| w.dumping == Some(task)) {
                        self.finish_timeout(worker, task, None, true, now);
                    }
                }
                Timer::MemoryPoll => self.poll_memory(),
                // The shell starts workers after every turn; nothing else to do.
                Timer::Respawn => {}
                Timer::Linger { worker } => {
                    if self.is_serving(worker) {
                        self.effects.push_back(Effect::CheckExit(worker));
                    }
                }
            }
        }
    }

    /// The worker running a task is gone. The task runs again while it has retries left;
    /// otherwise it ends as *worker lost*, listing every earlier attempt (a chunk: the
    /// item it was on, see [`Core::fail_started`]). Tasks sent ahead to the worker, and a
    /// head it had not started yet (its page says so), are queued again.
    fn lose_head(&mut self, w: WorkerId, cause: LossCause, oom: bool) {
        let Some(wk) = self.worker(w) else { return };
        let pid = wk.pid;
        bump(&self.shared.stats.workers_lost);
        let probably_oom = oom && cause == LossCause::Exited(ExitStatus::Signal(9));
        let head = wk.inflight.front().map(|f| f.id);
        let last = self.revoke(w);
        let started = head.is_some() && last.is_none_or(|r| Some(r.task) == head);
        let Some(id) = head.filter(|_| started) else {
            self.requeue_inflight(w);
            self.emit(EventKind::WorkerLost, Some(pid), None, || format!("idle worker {pid} {cause}"));
            return;
        };
        self.pop_head(w);
        self.requeue_inflight(w);
        let lost = WorkerLost { probably_oom, ..self.loss(w, id, cause.clone()) };
        self.settle_finished_items(w, id, lost.clone());
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
    fn time_out(&mut self, w: WorkerId, task: TaskId, now: Instant) {
        // The worker is stopped whatever it answers: from now on it starts no other item
        // of a chunk (nor a task sent ahead), so the late item is the last it started.
        self.revoke(w);
        if let Some((sig, wait)) = self.cfg.stack_dump {
            if let Some(wk) = self.worker_mut(w).filter(|wk| wk.dumping.is_none()) {
                wk.dumping = Some(task);
                // The worker alone, not its group: its children know nothing of the request.
                self.effects.push_back(Effect::SignalWorker(w, sig));
                self.timers.push(Reverse((now + wait, Timer::DumpWait { worker: w, task })));
                return;
            }
        }
        self.finish_timeout(w, task, None, true, now);
    }

    /// Ends a late task as timed out (with its stack if the worker sent it) and, unless
    /// the worker is already dead (`stop` false), stops the worker.
    fn finish_timeout(&mut self, w: WorkerId, task: TaskId, stack: Option<String>, stop: bool, now: Instant) {
        let Some(wk) = self.worker_mut(w) else { return };
        wk.dumping = None;
        let pid = wk.pid;
        if wk.inflight.front().map(|f| f.id) != Some(task) {
            return;
        }
        let limit = self.tasks.get(&task).and_then(|e| e.timeout).unwrap_or_default();
        let t = self.task_ref(task);
        self.pop_head(w);
        let err = TaskError::TimedOut { task: t, limit, pid, stack, stack_requested: self.cfg.stack_dump.is_some() };
        self.emit(EventKind::TaskTimedOut, Some(pid), Some(task), || err.to_string());
        let lost = self.loss(w, task, LossCause::Stopped);
        self.fail_started(w, task, lost, err);
        if stop {
            self.stop_worker(w, now);
        } else {
            self.requeue_inflight(w);
        }
    }

    /// When the item a chunk's worker is on passes its limit, per the worker's page (None
    /// for a single task, or a chunk it has not claimed yet).
    fn item_deadline(&self, w: WorkerId, id: TaskId) -> Option<Instant> {
        let e = self.tasks.get(&id).filter(|e| e.items > 0)?;
        let limit = e.timeout?;
        let (task, _, started) = self.worker(w)?.page.as_ref()?.progress();
        if task == id { started.checked_add(limit) } else { None }
    }

    /// Asks the shell for the resident size of every busy worker.
    fn poll_memory(&mut self) {
        self.memory_timer = false;
        if self.cfg.max_memory.is_none() {
            return;
        }
        let busy: Vec<(WorkerId, Pid)> = self
            .workers
            .iter()
            .flatten()
            .filter(|w| w.phase == Phase::Running && !w.inflight.is_empty())
            .map(|w| (w.id, w.pid))
            .collect();
        if !busy.is_empty() {
            self.effects.push_back(Effect::PollMemory(busy));
        }
    }

    /// Checks the readings of [`Core::poll_memory`] against the memory limit and polls
    /// again later while any worker is busy.
    fn on_memory(&mut self, readings: Vec<(WorkerId, Option<u64>)>, now: Instant) {
        let Some(limit) = self.cfg.max_memory else { return };
        let mut busy = false;
        let mut over = Vec::new();
        for (id, rss) in readings {
            let Some(w) = self.worker_mut(id) else { continue };
            if w.phase != Phase::Running || w.inflight.is_empty() {
                continue;
            }
            busy = true;
            if let Some(rss) = rss {
                w.peak_rss = w.peak_rss.max(rss);
                if rss > limit {
                    over.push(id);
                }
            }
        }
        for w in over {
            let Some(wk) = self.worker(w) else { continue };
            let (pid, peak) = (wk.pid, wk.peak_rss);
            self.revoke(w);
            if let Some(id) = self.pop_head(w) {
                let err = TaskError::MemoryLimit { task: self.task_ref(id), pid, limit, peak };
                self.emit(EventKind::MemoryLimit, Some(pid), Some(id), || err.to_string());
                let lost = self.loss(w, id, LossCause::Stopped);
                self.fail_started(w, id, lost, err);
            }
            self.stop_worker(w, now);
        }
        if busy && !self.memory_timer {
            self.memory_timer = true;
            self.timers.push(Reverse((now + self.cfg.memory_poll, Timer::MemoryPoll)));
        }
    }
}

/// Ends one task as [`TaskError::PoolFailed`]; a panicking sink goes no further.
pub(crate) fn fail_one(shared: &Shared, sink: &Arc<dyn Sink>, index: usize, task: TaskRef, why: &Arc<str>) {
    bump(&shared.stats.pool_failed);
    let outcome = Outcome::Failed(TaskError::PoolFailed { task, reason: why.clone() });
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.complete(index, outcome)));
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
