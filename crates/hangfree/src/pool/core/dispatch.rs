//! Sending work: which worker gets the next chunk, how far ahead of its running task,
//! and when its clock starts; retiring idle workers.

use super::*;

impl Core {
    /// Starts the clock of the task now at the head of a worker's queue.
    pub(super) fn start_head(&mut self, w: WorkerId, now: Instant) {
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

    pub(super) fn retire_idle(&mut self, now: Instant) {
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

    /// Sends queued chunks: to idle workers first, then one more chunk ahead per worker
    /// up to `prefetch`. Each worker's frames go out as one [`Effect::Send`], so the
    /// shell writes them in one call.
    pub(crate) fn dispatch(&mut self, now: Instant) {
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
    pub(super) fn may_send_ahead(&self, w: &Worker, now: Instant) -> bool {
        let Some(limit) = self.cfg.prefetch_below else { return true };
        let head_short = w.head_started.is_none_or(|t| now.saturating_duration_since(t) < limit);
        head_short && w.typical_task.is_some_and(|d| d < limit)
    }

    /// Encodes the next chunk for the worker in `slot` into `out`.
    pub(super) fn send_chunk(&mut self, slot: usize, out: &mut Vec<u8>, now: Instant) {
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
            let kind = if e.items == 0 { Kind::Task } else { Kind::Chunk };
            let len = e.payload.len() + if e.items == 0 { 0 } else { wire::CHUNK_TRAILER };
            let small = len < arena::THRESHOLD && e.payload.shared.is_empty();
            if small || w.arena.is_none() && e.payload.shared.is_empty() {
                // The common case of small tasks, as one copy into the channel's buffer.
                if e.items == 0 {
                    wire::encode_into(out, Kind::Task, id.get(), &e.payload.own);
                } else {
                    wire::encode_chunk_into(out, id.get(), &e.payload.own, e.from, e.items);
                }
            } else {
                let trailer = [e.from.to_le_bytes(), e.items.to_le_bytes()].concat();
                let mut parts: Vec<&[u8]> = e.payload.slices().collect();
                if e.items > 0 {
                    parts.push(&trailer);
                }
                // A large payload goes into the worker's arena when a region is free
                // there, and stays until the worker has answered the task.
                let placed = match w.arena.as_ref() {
                    Some(a) if arena::wanted(len) && len as u64 <= self.cfg.max_frame => {
                        w.placements.place(id.get(), len).inspect(|&at| a.write(Area::ToWorker, at, &parts))
                    }
                    _ => None,
                };
                if let Some(at) = placed {
                    let start = out.len();
                    wire::encode_into(out, kind, id.get(), &arena::descriptor(at, len));
                    out[start] |= wire::IN_ARENA;
                } else {
                    wire::encode_parts_into(out, kind, id.get(), &parts);
                }
            }
            w.inflight.push_back(InFlight { id, ends_chunk: i + 1 == n });
        }
        w.chunks += 1;
        w.sent += n as u64;
        if was_idle {
            self.start_head(id_w, now);
        }
    }
}
