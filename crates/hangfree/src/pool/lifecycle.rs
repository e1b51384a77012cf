//! A worker's life as a pure state machine: `(phase, event, now) → (phase, action)`.
//!
//! The escalation policy lives here and only here: a stop is SIGTERM to the group, then
//! SIGKILL to the group after the grace period, then, if the process still has not
//! exited after `kill_wait`, it is *abandoned* — reported and never waited for again.
//! The supervisor feeds events in and carries the actions out; the hard cases are tested
//! below with a fake clock and no processes.

use std::time::{Duration, Instant};

use crate::outcome::ExitStatus;

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Spawned; waiting for its `Ready` frame until `ready_by`.
    Starting { ready_by: Instant },
    /// Ready; idle or busy (the supervisor tracks its tasks).
    Running,
    /// Asked to exit by a `Shutdown` frame (pool closing, or recycled); escalates at
    /// `term_at` if it has not.
    Retiring { term_at: Instant },
    /// SIGTERM sent to its group; SIGKILL at `kill_at`.
    Stopping { kill_at: Instant },
    /// SIGKILL sent to its group; abandoned at `abandon_at` if it still has not exited.
    Killed { abandon_at: Instant },
    /// Exited, swept and reaped.
    Dead(ExitStatus),
    /// Could not be reaped even after SIGKILL and `kill_wait`; never waited for again.
    Abandoned,
}

/// What happened to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// It sent `Ready`.
    Ready,
    /// Its pidfd reported an exit with this status.
    Exited(ExitStatus),
    /// The clock reached the phase's deadline (ignored if it did not).
    Deadline,
    /// The pool wants it gone now (timeout, cancel, terminate, broken channel).
    Stop,
    /// The pool wants it to finish and exit on its own (close, recycle).
    Retire,
}

/// What the supervisor must do for a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send a `Shutdown` frame.
    SendShutdown,
    /// SIGTERM to the process group.
    Term,
    /// SIGKILL to the process group.
    Kill,
    /// Sweep the group and reap the process (its status was already read).
    Collect,
    /// Report the process abandoned and close its descriptors.
    Abandon,
}

/// The durations the policy needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// Time between SIGTERM and SIGKILL (and between `Shutdown` and SIGTERM).
    pub grace: Duration,
    /// Time after SIGKILL before a process is abandoned.
    pub kill_wait: Duration,
}

impl Phase {
    /// The instant at which this phase wants a `Deadline` event, if any.
    pub fn deadline(&self) -> Option<Instant> {
        match *self {
            Phase::Starting { ready_by } => Some(ready_by),
            Phase::Retiring { term_at } => Some(term_at),
            Phase::Stopping { kill_at } => Some(kill_at),
            Phase::Killed { abandon_at } => Some(abandon_at),
            Phase::Running | Phase::Dead(_) | Phase::Abandoned => None,
        }
    }

    /// Whether the process may still be running (not dead, not abandoned).
    pub fn is_live(&self) -> bool {
        !matches!(self, Phase::Dead(_) | Phase::Abandoned)
    }

    /// Whether the pool is winding this worker down (it no longer takes tasks).
    pub fn is_going(&self) -> bool {
        matches!(self, Phase::Retiring { .. } | Phase::Stopping { .. } | Phase::Killed { .. })
    }
}

/// The transition function. Events that mean nothing in a phase leave it unchanged.
pub(crate) fn step(phase: Phase, ev: Event, now: Instant, t: &Timing) -> (Phase, Option<Action>) {
    use Phase::*;
    let stop = (Stopping { kill_at: now + t.grace }, Some(Action::Term));
    match (phase, ev) {
        (Dead(_) | Abandoned, _) => (phase, None),
        (_, Event::Exited(st)) => (Dead(st), Some(Action::Collect)),
        (Starting { .. }, Event::Ready) => (Running, None),
        (Starting { .. } | Running | Retiring { .. }, Event::Stop) => stop,
        (Running, Event::Retire) => (Retiring { term_at: now + t.grace }, Some(Action::SendShutdown)),
        (p, Event::Deadline) if p.deadline().is_some_and(|d| now >= d) => match p {
            Starting { .. } | Retiring { .. } => stop,
            Stopping { .. } => (Killed { abandon_at: now + t.kill_wait }, Some(Action::Kill)),
            Killed { .. } => (Abandoned, Some(Action::Abandon)),
            _ => (p, None),
        },
        (p, _) => (p, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing { grace: Duration::from_secs(2), kill_wait: Duration::from_secs(1) };

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn stop_escalates_term_grace_kill_then_abandons() {
        let t0 = Instant::now();
        let (p, a) = step(Phase::Running, Event::Stop, t0, &T);
        assert_eq!((p, a), (Phase::Stopping { kill_at: at(t0, 2000) }, Some(Action::Term)));
        // Early deadline events change nothing.
        assert_eq!(step(p, Event::Deadline, at(t0, 1999), &T), (p, None));
        // A second stop request does not restart the grace period.
        assert_eq!(step(p, Event::Stop, at(t0, 1500), &T), (p, None));
        let (p, a) = step(p, Event::Deadline, at(t0, 2000), &T);
        assert_eq!((p, a), (Phase::Killed { abandon_at: at(t0, 3000) }, Some(Action::Kill)));
        let (p, a) = step(p, Event::Deadline, at(t0, 3000), &T);
        assert_eq!((p, a), (Phase::Abandoned, Some(Action::Abandon)));
        // Nothing brings an abandoned process back.
        assert_eq!(step(p, Event::Exited(ExitStatus::Signal(9)), at(t0, 4000), &T), (Phase::Abandoned, None));
    }

    #[test]
    fn exit_during_any_live_phase_is_collected() {
        let t0 = Instant::now();
        for p in [
            Phase::Starting { ready_by: t0 },
            Phase::Running,
            Phase::Retiring { term_at: t0 },
            Phase::Stopping { kill_at: t0 },
            Phase::Killed { abandon_at: t0 },
        ] {
            let st = ExitStatus::Code(1);
            assert_eq!(step(p, Event::Exited(st), t0, &T), (Phase::Dead(st), Some(Action::Collect)));
        }
    }

    #[test]
    fn startup_timeout_stops_the_worker() {
        let t0 = Instant::now();
        let p = Phase::Starting { ready_by: at(t0, 500) };
        assert_eq!(step(p, Event::Ready, at(t0, 100), &T), (Phase::Running, None));
        assert_eq!(step(p, Event::Deadline, at(t0, 499), &T), (p, None));
        assert_eq!(
            step(p, Event::Deadline, at(t0, 500), &T),
            (Phase::Stopping { kill_at: at(t0, 2500) }, Some(Action::Term))
        );
    }

    #[test]
    fn retire_asks_first_and_escalates_after_grace() {
        let t0 = Instant::now();
        let (p, a) = step(Phase::Running, Event::Retire, t0, &T);
        assert_eq!((p, a), (Phase::Retiring { term_at: at(t0, 2000) }, Some(Action::SendShutdown)));
        let (p, a) = step(p, Event::Deadline, at(t0, 2000), &T);
        assert_eq!((p, a), (Phase::Stopping { kill_at: at(t0, 4000) }, Some(Action::Term)));
        // Retiring a worker that is already stopping does nothing.
        assert_eq!(step(p, Event::Retire, at(t0, 2100), &T), (p, None));
    }

    #[test]
    fn ready_outside_starting_is_ignored() {
        let t0 = Instant::now();
        let p = Phase::Stopping { kill_at: t0 };
        assert_eq!(step(p, Event::Ready, t0, &T), (p, None));
        assert!(!Phase::Dead(ExitStatus::Unknown).is_live());
        assert!(Phase::Killed { abandon_at: t0 }.is_going());
    }
}
