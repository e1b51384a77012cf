//! What a pool is given and what it gives back: tasks, where a task is, and the sinks
//! that receive outcomes. Everything else in `pool` builds on these.

use std::sync::Arc;
use std::time::Duration;

use super::duration::saturate;
use crate::outcome::Outcome;

/// A part of a task's payload that the pool reads where its owner keeps it instead of
/// copying it (see [`Task::with_shared`]). It must not change while the task lives.
pub type SharedPart = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A task's payload: bytes of its own, then parts shared with their owner, end to end.
#[derive(Clone, Default)]
pub(crate) struct Payload {
    pub(crate) own: Vec<u8>,
    pub(crate) shared: Vec<SharedPart>,
}

impl Payload {
    pub(crate) fn len(&self) -> usize {
        self.own.len() + self.shared.iter().map(|p| (**p).as_ref().len()).sum::<usize>()
    }

    /// The payload's bytes, as the slices it is made of.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(&self.own[..]).chain(self.shared.iter().map(|p| (**p).as_ref()))
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes, {} shared parts)", self.len(), self.shared.len())
    }
}

/// One unit of work: an opaque payload for the worker, with an optional time limit and a
/// label used in error messages.
#[derive(Clone, Debug)]
pub struct Task {
    pub(crate) payload: Payload,
    pub(crate) timeout: Option<Duration>,
    pub(crate) label: Option<Arc<str>>,
    /// Items of a chunk (0: a single task).
    pub(crate) items: u32,
}

impl Task {
    /// A task carrying `payload`, with the pool's default time limit.
    pub fn new(payload: impl Into<Vec<u8>>) -> Task {
        Task { payload: Payload { own: payload.into(), shared: Vec::new() }, timeout: None, label: None, items: 0 }
    }

    /// Appends `parts` to the payload without copying them: the pool reads each where its
    /// owner keeps it, when it sends the task (again, if the task is retried), and drops
    /// it when the task is done. For large immutable buffers: a front's objects, say.
    pub fn with_shared(mut self, parts: Vec<SharedPart>) -> Task {
        self.payload.shared.extend(parts);
        self
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
