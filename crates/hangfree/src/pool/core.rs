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
//!
//! This file holds the types and the entry points; the rules are in `tasks` (the table,
//! the queue, outcomes, cancel), `dispatch` (sending work ahead), `workers` (start-up,
//! frames, exits, the escalation) and `losses` (what a dead or stopped worker's tasks
//! become: failed, retried or run elsewhere; time limits and the memory limit). `tests`
//! checks each rule without processes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::config::Config;
use super::events::{EventKind, PoolEvent};
use super::ids::{TaskId, WorkerId};
use super::lifecycle::{self, Action, Phase};
use super::shared::{Command, Gate, Shared, lock};
use super::stats::{bump, bump_by};
use super::task::{Payload, Sink, TaskState};
use crate::arena::{self, Area, Arena, Placements};
use crate::outcome::{Attempt, ExitStatus, LossCause, Outcome, StartupFailure, TaskError, TaskRef, WorkerLost};
use crate::page::{Page, Revoked};
use crate::process::Pid;
use crate::wire::{self, Frame, Kind, ProtocolError};

/// What the shell tells the core.
pub(crate) enum Event {
    /// A caller's command, from the inbox.
    Command(Command),
    /// The progress page a starting worker passed along with its first bytes.
    Page(WorkerId, Page),
    /// The arena a starting worker passed along with its page.
    Arena(WorkerId, Arena),
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
    /// Starting a worker process (the requested one, if any) failed.
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
    Phase {
        worker: WorkerId,
        epoch: u64,
    },
    TaskDeadline {
        worker: WorkerId,
        task: TaskId,
    },
    Linger {
        worker: WorkerId,
    },
    /// Try again to start workers after a spawn failed (nothing else may wake the loop).
    Respawn,
    /// Stop waiting for a late task's stack.
    DumpWait {
        worker: WorkerId,
        task: TaskId,
    },
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

/// The pool's state and rules; see the module documentation.
pub(crate) struct Core {
    shared: Arc<Shared>,
    cfg: Config,
    workers: Vec<Option<Worker>>,
    next_generation: u32,
    /// How many of the pool's first workers are still to start. They start even if the
    /// pool is closed first, as the standard library's pool starts its workers in its
    /// constructor: an initializer runs once per worker whatever happens next.
    first_left: usize,
    /// Workers asked for whose process the shell has not reported yet ([`Core::worker_requested`]).
    requested: usize,
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
        let first_left = cfg.workers;
        Core {
            shared,
            cfg,
            workers: Vec::new(),
            next_generation: 1,
            first_left,
            requested: 0,
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
            Event::Arena(w, arena) => {
                if let Some(w) = self.worker_mut(w) {
                    w.arena.get_or_insert(arena);
                }
            }
            Event::Frame(w, f) => {
                if self.worker(w).is_some_and(|w| w.connected) {
                    match self.take_from_arena(w, f) {
                        Ok(f) => self.on_frame(w, f, now),
                        Err(why) => self.on_protocol_violation(w, why, now),
                    }
                    self.release_placed(w);
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
            Run::Closing if self.first_left > 0 => self.cfg.workers,
            Run::Closing => self.cfg.workers.min(self.queue.len()),
            Run::Terminating | Run::Broken => 0,
        };
        self.live_count() + self.requested < target
    }

    /// The shell asked for a worker process that comes later (a fork server's first fork
    /// waits for the server to be up): until [`Core::worker_started`] or
    /// [`Event::SpawnFailed`] reports it, it counts as a worker for [`Core::wants_worker`],
    /// and a closing pool waits for it. A terminating or broken pool does not: the shell
    /// drops the request when the pool finishes.
    pub fn worker_requested(&mut self) {
        self.requested += 1;
    }

    /// The id the next worker will get from [`Core::worker_started`].
    pub fn next_worker_id(&self) -> WorkerId {
        let slot = self.workers.iter().position(|w| w.is_none()).unwrap_or(self.workers.len());
        WorkerId::new(slot, self.next_generation)
    }

    /// A worker process was started (see [`Core::next_worker_id`] for its id), the one
    /// requested if any: it gets its init frame and a start-up deadline.
    pub fn worker_started(&mut self, pid: Pid, now: Instant) -> WorkerId {
        self.requested = self.requested.saturating_sub(1);
        let id = self.next_worker_id();
        if id.slot() == self.workers.len() {
            self.workers.push(None);
        }
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        self.first_left = self.first_left.saturating_sub(1);
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
            arena: None,
            placements: Placements::default(),
        });
        self.emit(EventKind::WorkerStarted, Some(pid), None, || format!("started worker {pid}"));
        let mut init = Vec::new();
        wire::encode_into(&mut init, Kind::Init, 0, &self.cfg.init_payload);
        self.effects.push_back(Effect::Send(id, init));
        self.timers.push(Reverse((ready_by, Timer::Phase { worker: id, epoch: 0 })));
        id
    }

    /// The frame with its payload copied out of the worker's arena, if it was there: the
    /// worker may reuse that memory at once, and nothing handed on refers to it. An error
    /// (a protocol violation) for a descriptor naming bytes outside the arena, or an
    /// arena frame from a worker without one.
    fn take_from_arena(&mut self, w: WorkerId, mut f: Frame) -> Result<Frame, String> {
        if !f.arena {
            return Ok(f);
        }
        let max = self.cfg.max_frame;
        let Some(a) = self.worker(w).and_then(|w| w.arena.as_ref()) else {
            return Err("an arena frame, but the worker passed no arena".into());
        };
        let range = arena::parse_descriptor(&f.payload, max).map_err(|e| e.to_string())?;
        f.payload = a.read(Area::ToPool, range);
        f.arena = false;
        a.mark_consumed();
        Ok(f)
    }

    /// Frees the arena regions of a worker's tasks that are no longer in flight on it
    /// (answered, or given to others): their payloads were read.
    fn release_placed(&mut self, w: WorkerId) {
        let Some(wk) = self.worker_mut(w) else { return };
        if wk.placements.is_empty() {
            return;
        }
        let inflight = &wk.inflight;
        wk.placements.release(|t| inflight.iter().any(|f| f.id.get() == t));
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
            Run::Closing => no_workers && self.requested == 0 && self.tasks.is_empty(),
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
                fail_one(&self.shared, &e.sink, e.index, TaskRef { id: id.get(), label: e.label }, why);
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
            let (pid, task_id) = (pid.map(Pid::get), task_id.map(TaskId::get));
            hook(&PoolEvent { kind, pid, task_id, message: message() });
        }
    }

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
}

/// Ends one task as [`TaskError::PoolFailed`]; a panicking sink goes no further.
pub(crate) fn fail_one(shared: &Shared, sink: &Arc<dyn Sink>, index: usize, task: TaskRef, why: &Arc<str>) {
    bump(&shared.stats.pool_failed);
    let outcome = Outcome::Failed(TaskError::PoolFailed { task, reason: why.clone() });
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.complete(index, outcome)));
}

mod dispatch;
mod losses;
mod tasks;
#[cfg(test)]
mod tests;
mod workers;

use tasks::{BuildIdHasher, Entry};
use workers::{InFlight, Worker};
