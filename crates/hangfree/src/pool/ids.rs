//! The ids the pool's parts pass each other: a task's and a worker's. Each is its own type,
//! so a task id cannot be taken for a count or a worker's slot; the public API and the
//! wire carry the plain numbers ([`TaskId::get`]). A process's id is
//! [`crate::process::Pid`].

use std::fmt;

/// A task's id in its pool (sequential, from 1). A submission's tasks have consecutive
/// ids, so the one at index `i` is `first.nth(i)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TaskId(u64);

impl TaskId {
    pub const fn new(raw: u64) -> TaskId {
        TaskId(raw)
    }

    /// The number, as the public API and the wire carry it.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The id `n` places after this one.
    pub fn nth(self, n: usize) -> TaskId {
        TaskId(self.0 + n as u64)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A worker of the pool: its slot in the worker table and the generation of that slot,
/// so that anything naming a worker that has since been replaced (a timer, an epoll
/// event) is recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WorkerId {
    slot: u32,
    generation: u32,
}

impl WorkerId {
    pub fn new(slot: usize, generation: u32) -> WorkerId {
        WorkerId { slot: slot as u32, generation }
    }

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
