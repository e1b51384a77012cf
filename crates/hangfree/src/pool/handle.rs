//! What callers hold: tasks to submit, sinks that receive outcomes, and the two built-in
//! sinks — a handle for one task and a stream for a batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::duration::saturate;
use super::supervisor::Shared;
use crate::outcome::Outcome;

/// One unit of work: an opaque payload for the worker, with an optional time limit and a
/// label used in error messages.
#[derive(Clone, Debug)]
pub struct Task {
    pub(crate) payload: Vec<u8>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) label: Option<Arc<str>>,
    /// Items of a chunk (0: a single task).
    pub(crate) items: u32,
}

impl Task {
    /// A task carrying `payload`, with the pool's default time limit.
    pub fn new(payload: impl Into<Vec<u8>>) -> Task {
        Task { payload: payload.into(), timeout: None, label: None, items: 0 }
    }

    /// A chunk: one payload standing for `items` items (at least 1) that the worker runs
    /// in order, answering with [`crate::wire::Kind::Items`] frames (see `PROTOCOL.md`).
    /// Each item starts at most once: if the worker dies, the item it was running ends
    /// as *worker lost* (or runs again, with `retries`), items whose outcomes came keep
    /// them, and the rest run elsewhere as a chunk of their own. The time limit applies
    /// to each item. Outcomes reach the sink through [`Sink::complete_items`], several
    /// per chunk, each covering consecutive items.
    pub fn chunk(payload: impl Into<Vec<u8>>, items: u32) -> Task {
        Task { items: items.max(1), ..Task::new(payload) }
    }

    /// Gives this task its own time limit, overriding the pool's. A limit of
    /// [`crate::MAX_DURATION`] or more is taken as that one (no limit in practice); zero
    /// is refused at submission ([`crate::SubmitError::Invalid`]).
    pub fn timeout(mut self, limit: Duration) -> Task {
        self.timeout = Some(saturate(limit));
        self
    }

    /// Names the task in error messages (for example `square(3)`).
    pub fn label(mut self, label: impl Into<Arc<str>>) -> Task {
        self.label = Some(label.into());
        self
    }
}

impl From<Vec<u8>> for Task {
    fn from(p: Vec<u8>) -> Task {
        Task::new(p)
    }
}

impl From<&[u8]> for Task {
    fn from(p: &[u8]) -> Task {
        Task::new(p.to_vec())
    }
}

/// Where a submitted task is, as [`crate::Pool::task_state`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting in the pool's queue: no worker has it, and
    /// [`crate::Pool::cancel_if_queued`] would cancel it. A task whose worker died and
    /// that waits for a retry is queued again.
    Queued,
    /// Sent ahead to a busy worker (see [`crate::PoolBuilder::prefetch`]): it waits in that
    /// worker's channel behind the task the worker runs. It has not started, but it can no
    /// longer be taken back (`cancel_if_queued` refuses).
    SentAhead,
    /// Its worker has started it: it is the task the worker runs, and its time limit
    /// runs. (The pool counts a task started when the worker has finished the one before
    /// it, or when it was sent to an idle worker: the worker reads it at once.)
    Running,
    /// Its outcome has been delivered (or the pool never had a task of that id, or the
    /// pool has finished).
    Done,
}

/// Receives outcomes from the pool's supervisor thread.
///
/// `complete` is called exactly once per task, with the task's index in its submission,
/// from the supervisor thread. It must return quickly and must not block or call back
/// into the pool: the supervisor is the thread that notices deaths and deadlines.
pub trait Sink: Send + Sync + 'static {
    /// Takes the outcome of the task at `index` of its submission.
    fn complete(&self, index: usize, outcome: Outcome);

    /// Takes the outcome of items `first..first + count` of the chunk at `index` (see
    /// [`Task::chunk`]): a [`Outcome::Value`] with the worker's encoding of their
    /// outcomes (`raised` of them raised), or one failure shared by all of them. Every
    /// item is covered exactly once, in order. By default each part is passed to
    /// [`Sink::complete`].
    fn complete_items(&self, index: usize, first: u32, count: u32, raised: u32, outcome: Outcome) {
        let _ = (first, count, raised);
        self.complete(index, outcome);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these small states half-written; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
    pub(crate) id: u64,
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
        self.id
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
            self.shared.cancel(id);
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
