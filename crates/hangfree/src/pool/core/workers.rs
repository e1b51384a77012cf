//! A worker's life as the core sees it: start-up, its frames, its channel's end, its
//! exit, and the escalation that stops it (see `lifecycle`).

use super::*;

pub(super) struct InFlight {
    pub(super) id: TaskId,
    pub(super) ends_chunk: bool,
}

/// What the core knows of a worker: its life-cycle phase and the tasks it was sent.
pub(super) struct Worker {
    pub(super) id: WorkerId,
    pub(super) pid: Pid,
    pub(super) phase: Phase,
    /// Bumped on each phase change, so stale phase deadlines in the heap are ignored.
    pub(super) epoch: u64,
    /// Its channel is open (the core may still send to it and hear from it).
    pub(super) connected: bool,
    pub(super) inflight: VecDeque<InFlight>,
    pub(super) chunks: usize,
    pub(super) head_deadline: Option<Instant>,
    /// When the task at the head of its queue started.
    pub(super) head_started: Option<Instant>,
    /// Smoothed duration of its recent tasks (None before the first one finished).
    pub(super) typical_task: Option<Duration>,
    /// Tasks sent to it over its life (for `max_tasks_per_worker`).
    pub(super) sent: u64,
    pub(super) tail: VecDeque<u8>,
    /// A startup failure was already counted for it.
    pub(super) startup_counted: bool,
    /// Largest resident size seen while it ran a task (with a memory limit).
    pub(super) peak_rss: u64,
    /// The late task whose stack it was asked for; the time-out waits for the answer.
    pub(super) dumping: Option<TaskId>,
    /// The progress page it passed with its Ready frame (see [`crate::page`]).
    pub(super) page: Option<Page>,
    /// What revoking its page returned: the last task it started (cached, as a second
    /// revoke would not say).
    pub(super) last_claim: Option<Revoked>,
    /// The arena it passed with its page, for large payloads (see [`crate::arena`]).
    pub(super) arena: Option<Arena>,
    /// The regions of its arena that hold payloads of tasks sent to it.
    pub(super) placements: Placements,
}

impl Worker {
    pub(super) fn is_ready(&self) -> bool {
        self.phase == Phase::Running && self.connected
    }

    pub(super) fn tail_string(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

impl Core {
    pub(super) fn live_count(&self) -> usize {
        self.workers.iter().flatten().filter(|w| !w.phase.is_going() && w.phase.is_live()).count()
    }

    pub(super) fn on_spawn_failed(&mut self, why: String, now: Instant) {
        self.requested = self.requested.saturating_sub(1);
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
    pub(super) fn transition(&mut self, w: WorkerId, ev: lifecycle::Event, now: Instant) {
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
    pub(super) fn stop_worker(&mut self, w: WorkerId, now: Instant) {
        self.requeue_inflight(w);
        self.close_channel(w);
        self.transition(w, lifecycle::Event::Stop, now);
    }

    pub(super) fn close_channel(&mut self, w: WorkerId) {
        if let Some(wk) = self.worker_mut(w) {
            if wk.connected {
                wk.connected = false;
                self.effects.push_back(Effect::CloseChannel(w));
            }
        }
    }

    pub(super) fn forget(&mut self, w: WorkerId) {
        if self.worker(w).is_some() {
            self.workers[w.slot()] = None;
            self.effects.push_back(Effect::Forget(w));
        }
    }

    pub(super) fn startup_failed(&mut self, failure: StartupFailure, now: Instant) {
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

    pub(super) fn on_frame(&mut self, w: WorkerId, f: Frame, now: Instant) {
        let wk = self.worker_mut(w).expect("caller checked");
        let task = TaskId::new(f.task_id);
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
                if wk.dumping == Some(task) {
                    let text = String::from_utf8_lossy(&f.payload).into_owned();
                    self.finish_timeout(w, task, Some(text), true, now);
                }
            }
            (Phase::Running | Phase::Retiring { .. }, Kind::Value | Kind::Raised | Kind::Items) => {
                if wk.inflight.front().map(|h| h.id) != Some(task) {
                    self.on_protocol_violation(w, format!("answer for task {task} it was not running"), now);
                    return;
                }
                let items = self.tasks.get(&task).map_or(0, |e| e.items);
                if (items > 0) != (f.kind == Kind::Items) && f.kind != Kind::Raised {
                    let what = if items > 0 { "a single answer for a chunk" } else { "item answers for a single task" };
                    self.on_protocol_violation(w, format!("{what} (task {task})"), now);
                    return;
                }
                let (kind, id) = (f.kind, task);
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
    pub(super) fn on_items(&mut self, w: WorkerId, id: TaskId, mut payload: Vec<u8>, now: Instant) -> bool {
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

    pub(super) fn on_protocol_violation(&mut self, w: WorkerId, what: String, now: Instant) {
        self.on_protocol_error(w, ProtocolError::Unexpected(what), now);
    }

    pub(super) fn on_protocol_error(&mut self, w: WorkerId, error: ProtocolError, now: Instant) {
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
            self.fail_started(w, id, lost, TaskError::Protocol { task, pid: pid.get(), error });
        }
        self.stop_worker(w, now);
    }

    /// The channel of a serving worker ended before its exit was seen: most often the
    /// process is exiting, so its exit gets a moment to be reported.
    pub(super) fn on_channel_closed(&mut self, w: WorkerId, now: Instant) {
        self.close_channel(w);
        if self.is_serving(w) {
            self.timers.push(Reverse((now + LINGER, Timer::Linger { worker: w })));
        }
    }

    /// The worker closed its channel a while ago and is still alive: it is broken.
    pub(super) fn on_still_alive(&mut self, w: WorkerId, now: Instant) {
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

    pub(super) fn on_exit(&mut self, w: WorkerId, status: ExitStatus, oom: bool, now: Instant) {
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
}
