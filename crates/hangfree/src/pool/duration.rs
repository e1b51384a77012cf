//! The one rule for durations given to a pool: each is capped at [`MAX_DURATION`], so
//! that no deadline computed from one can overflow the clock.

use std::time::Duration;

/// The longest duration a pool keeps: 100 years (of 365 days).
///
/// Every duration given to a pool — each setting of [`PoolBuilder`](crate::PoolBuilder), a task's
/// [`Task::timeout`](crate::Task::timeout), the limit of a wait — that is longer than this
/// is taken as this one, so no deadline the pool computes can overflow the clock (the
/// standard library panics on that). For a time limit it means *no limit* in practice,
/// and [`PoolBuilder::task_timeout`](crate::PoolBuilder::task_timeout) says so exactly: a longer value is no limit at all.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The one place where a duration given to the pool is made safe to add to a clock
/// reading: longer than [`MAX_DURATION`] is [`MAX_DURATION`].
pub(crate) fn saturate(d: Duration) -> Duration {
    d.min(MAX_DURATION)
}
