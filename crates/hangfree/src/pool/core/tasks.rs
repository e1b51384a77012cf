//! The task table and the queue: taking commands, delivering outcomes (a chunk's in
//! parts), cancelling, and saying where a task is.

use super::*;

pub(super) struct Entry {
    pub(super) sink: Arc<dyn Sink>,
    pub(super) index: usize,
    pub(super) payload: Payload,
    pub(super) timeout: Option<Duration>,
    pub(super) label: Option<Arc<str>>,
    /// The worker it was sent to, while it is there.
    pub(super) worker: Option<WorkerId>,
    /// Outcome already delivered (cancelled while sent ahead to a worker).
    pub(super) cancelled: bool,
    /// Earlier runs whose workers died (with retries); of a chunk, runs of item `from`.
    pub(super) attempts: Vec<Attempt>,
    /// A chunk's item count (0: a single task).
    pub(super) items: u32,
    /// A chunk's first item without an outcome: the worker it is sent to starts there.
    pub(super) from: u32,
}

impl Entry {
    /// Items still without an outcome (1 for a single task).
    pub(super) fn left(&self) -> u32 {
        if self.items == 0 { 1 } else { self.items - self.from }
    }
}

/// Task ids are sequential integers chosen by the pool, not by an adversary: a
/// multiplicative hash spreads them well at a fraction of SipHash's cost, which showed up
/// as a third of the supervisor's time in batch profiles.
#[derive(Clone, Copy, Default)]
pub(super) struct BuildIdHasher;

#[derive(Default)]
pub(super) struct IdHasher(u64);

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

impl Core {
    pub(super) fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Submit { sink, first_id, tasks, chunksize } => {
                let chunksize = chunksize.max(1);
                self.tasks.reserve(tasks.len());
                let mut chunk = Vec::with_capacity(chunksize.min(tasks.len()));
                for (i, t) in tasks.into_iter().enumerate() {
                    let id = first_id.nth(i);
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
    pub(super) fn purge_queue(&mut self) {
        while let Some(front) = self.queue.front_mut() {
            front.retain(|id| self.tasks.get(id).is_some_and(|e| !e.cancelled));
            if !front.is_empty() {
                return;
            }
            self.queue.pop_front();
        }
    }

    pub(super) fn cancel(&mut self, id: TaskId, now: Instant) {
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
    pub(super) fn terminate_all(&mut self, now: Instant) {
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

    /// Where a task is, from the state kept anyway: its entry says whether a worker has
    /// it, and that worker's queue whether it is at the head (started: its time limit
    /// runs from there) or sent ahead behind it.
    pub(super) fn task_state(&self, id: TaskId) -> TaskState {
        let Some(e) = self.tasks.get(&id).filter(|e| !e.cancelled) else { return TaskState::Done };
        let Some(w) = e.worker else { return TaskState::Queued };
        let head = self.worker(w).and_then(|w| w.inflight.front()).map(|f| f.id);
        if head == Some(id) { TaskState::Running } else { TaskState::SentAhead }
    }

    pub(super) fn task_ref(&self, id: TaskId) -> TaskRef {
        TaskRef { id: id.get(), label: self.tasks.get(&id).and_then(|e| e.label.clone()) }
    }

    /// Delivers a task's one outcome (a chunk's: for each item without one) and forgets
    /// the task.
    pub(super) fn complete(&mut self, id: TaskId, outcome: Outcome) {
        let Some(e) = self.tasks.remove(&id) else { return };
        if e.cancelled {
            return;
        }
        let n = e.left();
        self.deliver(&e, n, outcome);
    }

    /// Delivers one outcome for the next `n` items of a chunk (or a task's outcome).
    pub(super) fn deliver(&self, e: &Entry, n: u32, outcome: Outcome) {
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
    pub(super) fn deliver_part(&mut self, id: TaskId, n: u32, outcome: Outcome) {
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

    pub(super) fn fail_queue(&mut self) {
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
}
