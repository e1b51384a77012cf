//! What callers hold: the two built-in sinks — a handle for one task and a stream for a
//! batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::duration::saturate;
use super::ids::TaskId;
use super::shared::{Shared, lock};
use super::task::Sink;
use crate::outcome::Outcome;

/// Polls `flag` briefly before the caller sleeps (see [`crate::spin`]).
fn spin_until(flag: &AtomicBool) {
    crate::spin::poll_for(crate::spin::WAIT, || flag.load(Ordering::Acquire));
}

#[derive(Default)]
struct SlotState {
    outcome: Option<Outcome>,
    waiting: u32,
}

#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    done: AtomicBool,
    cv: Condvar,
}

impl Sink for Slot {
    fn complete(&self, _index: usize, outcome: Outcome) {
        let mut g = lock(&self.state);
        g.outcome = Some(outcome);
        self.done.store(true, Ordering::Release);
        let waiting = g.waiting > 0;
        drop(g);
        // A notify is a system call; skip it when nobody sleeps on the slot.
        if waiting {
            self.cv.notify_all();
        }
    }
}

impl Slot {
    fn take(&self, deadline: Option<Instant>) -> Option<Outcome> {
        spin_until(&self.done);
        let mut g = lock(&self.state);
        loop {
            if let Some(o) = g.outcome.take() {
                return Some(o);
            }
            g.waiting += 1;
            g = match deadline {
                None => self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let Some(left) = d.checked_duration_since(Instant::now()) else {
                        g.waiting -= 1;
                        return None;
                    };
                    self.cv.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
            g.waiting -= 1;
        }
    }
}

/// A submitted task. Dropping the handle does not cancel the task.
pub struct TaskHandle {
    pub(crate) id: TaskId,
    pub(crate) slot: Arc<Slot>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle").field("id", &self.id).field("done", &self.is_done()).finish()
    }
}

impl TaskHandle {
    /// The task's id in its pool.
    pub fn id(&self) -> u64 {
        self.id.get()
    }

    /// Whether the task has finished (its outcome may already have been taken).
    pub fn is_done(&self) -> bool {
        self.slot.done.load(Ordering::Acquire)
    }

    /// Waits for the outcome. This returns even if the pool is terminated or dropped
    /// meanwhile: the task then ends as [`crate::TaskError::Terminated`].
    pub fn wait(self) -> Outcome {
        self.slot.take(None).expect("a wait without deadline ends with the outcome")
    }

    /// Waits at most `limit`; `None` if the outcome is not there yet (the task goes on).
    /// The outcome is handed out once: later calls return `None`.
    pub fn wait_timeout(&self, limit: Duration) -> Option<Outcome> {
        self.slot.take(Some(Instant::now() + saturate(limit)))
    }

    /// The outcome if it is there, without waiting.
    pub fn try_outcome(&self) -> Option<Outcome> {
        lock(&self.slot.state).outcome.take()
    }

    /// Asks the pool to cancel the task. A queued task ends as cancelled at once; a
    /// running one ends as cancelled and its worker is stopped with the escalation
    /// (SIGTERM to its group, the grace period, SIGKILL). Returns `false` if the task had
    /// already finished (its outcome stands).
    pub fn cancel(&self) -> bool {
        if self.is_done() {
            return false;
        }
        self.shared.cancel(self.id);
        true
    }
}

struct BatchState {
    ready: VecDeque<(usize, Outcome)>,
    remaining: usize,
    waiting: u32,
}

pub(crate) struct BatchSink {
    state: Mutex<BatchState>,
    cv: Condvar,
}

impl Sink for BatchSink {
    fn complete(&self, index: usize, outcome: Outcome) {
        let mut g = lock(&self.state);
        g.ready.push_back((index, outcome));
        g.remaining -= 1;
        let waiting = g.waiting > 0;
        drop(g);
        if waiting {
            self.cv.notify_all();
        }
    }
}

impl BatchSink {
    pub(crate) fn new(n: usize) -> BatchSink {
        BatchSink {
            state: Mutex::new(BatchState { ready: VecDeque::new(), remaining: n, waiting: 0 }),
            cv: Condvar::new(),
        }
    }
}

/// The outcomes of a batch, each as soon as it is done, as `(index, outcome)` pairs in
/// completion order. Iterating blocks until the next outcome arrives and ends after the
/// last one; every item yields exactly once.
pub struct BatchHandle {
    pub(crate) ids: std::ops::Range<u64>,
    pub(crate) sink: Arc<BatchSink>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) yielded: usize,
}

impl std::fmt::Debug for BatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHandle").field("ids", &self.ids).field("yielded", &self.yielded).finish()
    }
}

impl BatchHandle {
    /// Number of items in the batch.
    pub fn len(&self) -> usize {
        (self.ids.end - self.ids.start) as usize
    }

    /// Whether the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The task ids of the items, in index order.
    pub fn task_ids(&self) -> std::ops::Range<u64> {
        self.ids.clone()
    }

    /// The next outcome, waiting at most `limit`. `Ok(None)` when every item has been
    /// yielded; `Err(())` if none arrived in time.
    #[allow(clippy::result_unit_err)]
    pub fn next_timeout(&mut self, limit: Duration) -> Result<Option<(usize, Outcome)>, ()> {
        let deadline = Instant::now() + saturate(limit);
        let mut g = lock(&self.sink.state);
        loop {
            if let Some(item) = g.ready.pop_front() {
                self.yielded += 1;
                return Ok(Some(item));
            }
            if g.remaining == 0 {
                return Ok(None);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return Err(()) };
            g.waiting += 1;
            g = self.sink.cv.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
            g.waiting -= 1;
        }
    }

    /// Cancels every item not yet finished.
    pub fn cancel(&self) {
        for id in self.ids.clone() {
            self.shared.cancel(TaskId::new(id));
        }
    }

    /// Waits for every item and returns the outcomes in index order.
    pub fn wait_all(self) -> Vec<Outcome> {
        let n = self.len();
        let mut out: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
        for (i, o) in self {
            out[i] = Some(o);
        }
        out.into_iter().map(|o| o.expect("every item yields once")).collect()
    }
}

impl Iterator for BatchHandle {
    type Item = (usize, Outcome);

    fn next(&mut self) -> Option<(usize, Outcome)> {
        let mut g = lock(&self.sink.state);
        loop {
            if let Some(item) = g.ready.pop_front() {
                self.yielded += 1;
                return Some(item);
            }
            if g.remaining == 0 {
                return None;
            }
            g.waiting += 1;
            g = self.sink.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            g.waiting -= 1;
        }
    }
}
