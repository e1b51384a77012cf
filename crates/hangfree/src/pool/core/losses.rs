//! What happens to a worker's tasks when it dies or is stopped: which one it was on
//! (its progress page says), what is failed, retried or run elsewhere; time limits,
//! stack dumps and the memory limit.

use super::*;

impl Core {
    /// Removes the running task from a worker's queue; the caller gives it its outcome.
    pub(super) fn pop_head(&mut self, w: WorkerId) -> Option<TaskId> {
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
    pub(super) fn requeue_inflight(&mut self, w: WorkerId) {
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
                    if last.is_some_and(|r| r.task == id.get()) {
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
    pub(super) fn revoke(&mut self, w: WorkerId) -> Option<Revoked> {
        let w = self.worker_mut(w)?;
        if w.last_claim.is_none() {
            w.last_claim = w.page.as_ref().map(|p| p.revoke());
        }
        w.last_claim
    }

    /// A *worker lost* for task `id` of worker `w`, without earlier attempts.
    pub(super) fn loss(&self, w: WorkerId, id: TaskId, cause: LossCause) -> WorkerLost {
        let w = self.worker(w);
        WorkerLost {
            task: self.task_ref(id),
            pid: w.map_or(0, |w| w.pid.get()),
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
    pub(super) fn fail_started(&mut self, w: WorkerId, id: TaskId, lost: WorkerLost, failure: TaskError) {
        self.settle_finished_items(w, id, lost);
        self.deliver_part(id, 1, Outcome::Failed(failure));
        self.requeue_rest(id);
    }

    /// For a chunk whose worker is gone or being stopped: items it finished whose
    /// outcomes never reached the pool end as worker lost (`finished`), so that the
    /// chunk's next item is the one it was on. That item is the last it started per its
    /// (revoked) page; the first item without an outcome if the page says nothing of this
    /// chunk (the worker died loading it), so every loss moves the chunk on.
    pub(super) fn settle_finished_items(&mut self, w: WorkerId, id: TaskId, lost: WorkerLost) {
        let last = self.revoke(w);
        let Some(e) = self.tasks.get(&id) else { return };
        if e.items == 0 {
            return;
        }
        let on = match last {
            Some(r) if r.task == id.get() && r.items > e.from => (r.items - 1).min(e.items - 1),
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
    pub(super) fn requeue_rest(&mut self, id: TaskId) {
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

    /// The worker running a task is gone. The task runs again while it has retries left;
    /// otherwise it ends as *worker lost*, listing every earlier attempt (a chunk: the
    /// item it was on, see [`Core::fail_started`]). Tasks sent ahead to the worker, and a
    /// head it had not started yet (its page says so), are queued again.
    pub(super) fn lose_head(&mut self, w: WorkerId, cause: LossCause, oom: bool) {
        let Some(wk) = self.worker(w) else { return };
        let pid = wk.pid;
        bump(&self.shared.stats.workers_lost);
        let probably_oom = oom && cause == LossCause::Exited(ExitStatus::Signal(9));
        let head = wk.inflight.front().map(|f| f.id);
        let last = self.revoke(w);
        let started = head.is_some() && last.is_none_or(|r| Some(r.task) == head.map(TaskId::get));
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
            e.attempts.push(Attempt { pid: pid.get(), cause: cause.clone() });
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
    pub(super) fn time_out(&mut self, w: WorkerId, task: TaskId, now: Instant) {
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
    pub(super) fn finish_timeout(
        &mut self,
        w: WorkerId,
        task: TaskId,
        stack: Option<String>,
        stop: bool,
        now: Instant,
    ) {
        let Some(wk) = self.worker_mut(w) else { return };
        wk.dumping = None;
        let pid = wk.pid;
        if wk.inflight.front().map(|f| f.id) != Some(task) {
            return;
        }
        let limit = self.tasks.get(&task).and_then(|e| e.timeout).unwrap_or_default();
        let t = self.task_ref(task);
        self.pop_head(w);
        let err = TaskError::TimedOut {
            task: t,
            limit,
            pid: pid.get(),
            stack,
            stack_requested: self.cfg.stack_dump.is_some(),
        };
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
    pub(super) fn item_deadline(&self, w: WorkerId, id: TaskId) -> Option<Instant> {
        let e = self.tasks.get(&id).filter(|e| e.items > 0)?;
        let limit = e.timeout?;
        let (task, _, started) = self.worker(w)?.page.as_ref()?.progress();
        if task == id.get() { started.checked_add(limit) } else { None }
    }

    /// Asks the shell for the resident size of every busy worker.
    pub(super) fn poll_memory(&mut self) {
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
    pub(super) fn on_memory(&mut self, readings: Vec<(WorkerId, Option<u64>)>, now: Instant) {
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
                let err = TaskError::MemoryLimit { task: self.task_ref(id), pid: pid.get(), limit, peak };
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
