//! Where a language front collects a pool's outcomes and events for its own threads.
//!
//! One *result thread* drains every outcome, tagged with its submission's key, and every
//! pool event ([`Mailbox::take`], [`Mailbox::take_events`]). A submission of one call may
//! be *claimable*: a caller waiting for that call ([`Mailbox::wait_claim`]) takes its
//! outcome itself, which saves a wake-up of the result thread on a round trip. The
//! supervisor only pushes into the mailbox, through the [`Sink`]s it hands out and
//! [`Mailbox::push_event`]; neither blocks beyond a short lock.
//!
//! The mailbox never touches the front's language: the Python binding wraps each call in
//! a release of the GIL and slices long waits itself to let signal handlers run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{MAX_DURATION, Outcome, PoolEvent, Sink};

/// How long the result thread polls for the next outcome before it sleeps. Shorter than a
/// caller's poll ([`crate::spin::WAIT`]): this thread competes with the workers for the
/// CPUs in a large map (chunksize-1 map of 20,000 from Python: 224 ms with no poll,
/// 140-155 ms with 20-100 µs).
const RESULT_POLL: Duration = Duration::from_micros(30);

/// How many finished claimable keys are remembered (see [`Mailbox::completed`]); the race
/// they cover lasts microseconds, so this bounds memory without ever mattering.
const FINISHED_KEPT: usize = 4096;

/// One outcome, as the result thread takes it.
#[derive(Debug)]
pub struct Delivery {
    /// The key of its submission (given to [`Mailbox::sink`]).
    pub key: u64,
    /// The task's index in its submission.
    pub index: usize,
    /// How the task, or the items below, ended.
    pub outcome: Outcome,
    /// For a part of a chunk: its first item and how many items it covers; `(0, 1)` for
    /// a task that is not a chunk.
    pub items: (u32, u32),
}

/// The outcomes and events of one pool, for a front's threads (see the module docs).
#[derive(Default)]
pub struct Mailbox {
    items: Mutex<VecDeque<Delivery>>,
    /// Result threads asleep on `cv`, counted under the `items` lock: an outcome wakes
    /// one only then (a futex call per outcome otherwise, mostly for nobody).
    sleepers: AtomicUsize,
    /// Whether `items` holds anything, for the result thread to poll without taking the
    /// lock (polling the lock itself made the supervisor's every push contend for it).
    nonempty: AtomicBool,
    events: Mutex<VecDeque<PoolEvent>>,
    cv: Condvar,
    claims: Mutex<Claims>,
    claims_cv: Condvar,
}

#[derive(Default)]
struct Claims {
    /// Outcomes taken out of the stream for a waiting caller, not yet picked up.
    ready: HashMap<u64, Outcome>,
    /// Claimable submissions someone is waiting for now, with how many threads wait:
    /// their outcome goes to `ready` instead of the result thread.
    waiting: HashMap<u64, usize>,
    /// The claimable keys lately finished by someone other than their waiter, oldest
    /// first in `finished_order`. A waiter that saw its call not done and then registered
    /// may have missed that moment: it finds the key here.
    finished: HashSet<u64>,
    finished_order: VecDeque<u64>,
}

/// A poisoned lock only means a panic elsewhere; these small states stay consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mailbox {
    /// A sink for the submission `key`: its outcomes go to the result thread, tagged with
    /// `key` and each task's index. A `claimable` submission (of one task) gives its
    /// outcome to a caller waiting in [`Mailbox::wait_claim`] if there is one.
    pub fn sink(self: &Arc<Self>, key: u64, claimable: bool) -> Arc<dyn Sink> {
        Arc::new(KeyedSink { key, mailbox: self.clone(), claimable })
    }

    /// Keeps a pool event for [`Mailbox::take_events`] and wakes the result thread (for
    /// [`crate::PoolBuilder::on_event`]).
    pub fn push_event(&self, event: PoolEvent) {
        lock(&self.events).push_back(event);
        // Taken and let go: a result thread that found no event under this lock is then
        // asleep on `cv`, and this wake-up reaches it.
        drop(lock(&self.items));
        self.cv.notify_one();
    }

    /// Whether events wait for [`Mailbox::take_events`].
    pub fn has_events(&self) -> bool {
        !lock(&self.events).is_empty()
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&self) -> Vec<PoolEvent> {
        lock(&self.events).drain(..).collect()
    }

    /// Every outcome ready, oldest first; if there is none, waits up to `limit` for one
    /// (not at all while events wait). It polls briefly before it sleeps: in a stream of
    /// outcomes the next one is microseconds away, and the supervisor then need not wake
    /// this thread for each. May return nothing before `limit` (after [`Mailbox::wake`]).
    pub fn take(&self, limit: Duration) -> Vec<Delivery> {
        crate::spin::poll_for(RESULT_POLL.min(limit), || self.nonempty.load(Ordering::Acquire));
        let mut q = lock(&self.items);
        if q.is_empty() && !limit.is_zero() && !self.has_events() {
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            q = self.cv.wait_timeout(q, limit.min(MAX_DURATION)).unwrap_or_else(|e| e.into_inner()).0;
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
        self.nonempty.store(false, Ordering::Release);
        q.drain(..).collect()
    }

    /// Wakes every thread waiting in [`Mailbox::take`] (for instance once the pool has
    /// finished, which the caller checks).
    pub fn wake(&self) {
        self.cv.notify_all();
    }

    /// Waits up to `limit` for the outcome of the claimable submission `key` and takes
    /// it. Returns `None` on time-out, or as soon as [`Mailbox::completed`] says that
    /// someone else finished it (the result thread took the outcome). Polls briefly
    /// before sleeping: the answer usually comes sooner than a cross-CPU wake-up.
    pub fn wait_claim(&self, key: u64, limit: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + limit.min(MAX_DURATION);
        let mut c = lock(&self.claims);
        if let Some(o) = c.ready.remove(&key) {
            return Some(o);
        }
        *c.waiting.entry(key).or_insert(0) += 1;
        drop(c);
        let mut got = None;
        let poll = crate::spin::WAIT.min(deadline.saturating_duration_since(Instant::now()));
        crate::spin::poll_for(poll, || {
            let mut c = lock(&self.claims);
            got = c.ready.remove(&key);
            got.is_some() || c.finished.contains(&key)
        });
        let mut c = lock(&self.claims);
        while got.is_none() && !c.finished.contains(&key) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            c = self.claims_cv.wait_timeout(c, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
            got = c.ready.remove(&key);
        }
        // Leave: an outcome that came meanwhile is taken now, never stranded.
        if got.is_none() {
            got = c.ready.remove(&key);
        }
        if let Some(n) = c.waiting.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                c.waiting.remove(&key);
            }
        }
        got
    }

    /// Says that the claimable submission `key` is finished: the threads waiting for it
    /// in [`Mailbox::wait_claim`] return, and so does one that registers a moment later.
    pub fn completed(&self, key: u64) {
        let mut c = lock(&self.claims);
        if c.finished.insert(key) {
            c.finished_order.push_back(key);
            if c.finished_order.len() > FINISHED_KEPT
                && let Some(old) = c.finished_order.pop_front()
            {
                c.finished.remove(&old);
            }
        }
        let wake = c.waiting.contains_key(&key);
        drop(c);
        if wake {
            self.claims_cv.notify_all();
        }
    }

    /// Hands an outcome to the result thread.
    fn push(&self, delivery: Delivery) {
        let mut q = lock(&self.items);
        q.push_back(delivery);
        self.nonempty.store(true, Ordering::Release);
        let asleep = self.sleepers.load(Ordering::Relaxed) > 0;
        drop(q);
        if asleep {
            self.cv.notify_one();
        }
    }
}

/// Where a submission's outcomes go (see [`Mailbox::sink`]).
struct KeyedSink {
    key: u64,
    mailbox: Arc<Mailbox>,
    claimable: bool,
}

impl Sink for KeyedSink {
    fn complete(&self, index: usize, outcome: Outcome) {
        if self.claimable {
            let mut c = lock(&self.mailbox.claims);
            if c.waiting.contains_key(&self.key) {
                c.ready.insert(self.key, outcome);
                drop(c);
                self.mailbox.claims_cv.notify_all();
                return;
            }
        }
        self.mailbox.push(Delivery { key: self.key, index, outcome, items: (0, 1) });
    }

    fn complete_items(&self, index: usize, first: u32, count: u32, _raised: u32, outcome: Outcome) {
        self.mailbox.push(Delivery { key: self.key, index, outcome, items: (first, count) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;
    use std::thread;

    const LONG: Duration = Duration::from_secs(20);

    fn value(n: u8) -> Outcome {
        Outcome::Value(vec![n])
    }

    fn event() -> PoolEvent {
        PoolEvent { kind: EventKind::WorkerLost, pid: Some(7), task_id: None, message: "lost".into() }
    }

    /// Waits until `n` threads wait for `key` in `wait_claim`.
    fn until_waiting(m: &Mailbox, key: u64, n: usize) {
        let start = Instant::now();
        while lock(&m.claims).waiting.get(&key).copied().unwrap_or(0) < n {
            assert!(start.elapsed() < LONG, "no waiter registered");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn outcomes_reach_the_result_thread_tagged_and_in_order() {
        let m = Arc::new(Mailbox::default());
        let a = m.sink(1, false);
        let b = m.sink(2, false);
        a.complete(0, value(10));
        b.complete_items(3, 5, 2, 0, value(20));
        a.complete(1, value(11));
        let got: Vec<_> = m.take(Duration::ZERO).into_iter().map(|d| (d.key, d.index, d.outcome, d.items)).collect();
        assert_eq!(got, [(1, 0, value(10), (0, 1)), (2, 3, value(20), (5, 2)), (1, 1, value(11), (0, 1))]);
        assert!(m.take(Duration::ZERO).is_empty());
    }

    #[test]
    fn a_sleeping_result_thread_wakes_for_an_outcome() {
        let m = Arc::new(Mailbox::default());
        let sink = m.sink(1, false);
        let pusher = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            sink.complete(0, value(1));
        });
        let start = Instant::now();
        let mut got = m.take(LONG);
        // A wake-up is allowed to find nothing; the outcome is there by the next one.
        if got.is_empty() {
            got = m.take(LONG);
        }
        assert_eq!(got.len(), 1);
        assert!(start.elapsed() < LONG / 2);
        pusher.join().unwrap();
    }

    #[test]
    fn an_event_wakes_the_result_thread_and_is_kept_for_it() {
        let m = Arc::new(Mailbox::default());
        let m2 = m.clone();
        let pusher = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            m2.push_event(event());
        });
        let start = Instant::now();
        assert!(m.take(LONG).is_empty());
        assert!(start.elapsed() < LONG / 2);
        pusher.join().unwrap();
        assert!(m.has_events());
        // With events waiting, a take does not sleep.
        let start = Instant::now();
        assert!(m.take(LONG).is_empty());
        assert!(start.elapsed() < LONG / 2);
        assert_eq!(m.take_events(), [event()]);
        assert!(!m.has_events());
    }

    #[test]
    fn a_claimable_outcome_goes_to_its_waiter_and_not_to_the_result_thread() {
        let m = Arc::new(Mailbox::default());
        let m2 = m.clone();
        let waiter = thread::spawn(move || m2.wait_claim(5, LONG));
        until_waiting(&m, 5, 1);
        m.sink(5, true).complete(0, value(5));
        assert_eq!(waiter.join().unwrap(), Some(value(5)));
        assert!(m.take(Duration::ZERO).is_empty());
        assert!(lock(&m.claims).waiting.is_empty());
    }

    #[test]
    fn a_claimable_outcome_nobody_waits_for_goes_to_the_result_thread() {
        let m = Arc::new(Mailbox::default());
        m.sink(5, true).complete(0, value(5));
        let got = m.take(Duration::ZERO);
        assert_eq!((got[0].key, &got[0].outcome), (5, &value(5)));
    }

    /// The race the finished keys cover: the caller sees its call not done, the result
    /// thread then takes the outcome (no waiter is registered yet) and says `completed`,
    /// and only then does the caller register in `wait_claim`. It must return at once,
    /// not sleep until its limit.
    #[test]
    fn a_waiter_registering_after_its_call_finished_elsewhere_returns_at_once() {
        let m = Arc::new(Mailbox::default());
        m.sink(5, true).complete(0, value(5));
        assert_eq!(m.take(Duration::ZERO).len(), 1);
        m.completed(5);
        let start = Instant::now();
        assert_eq!(m.wait_claim(5, LONG), None);
        assert!(start.elapsed() < LONG / 2);
        assert!(lock(&m.claims).waiting.is_empty());
    }

    #[test]
    fn completed_wakes_a_waiter_whose_outcome_went_elsewhere() {
        let m = Arc::new(Mailbox::default());
        let mut waiters: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || m.wait_claim(5, LONG))
            })
            .collect();
        until_waiting(&m, 5, 2);
        m.sink(5, true).complete(0, value(5));
        // One waiter takes the outcome; the front then says the call is done.
        let start = Instant::now();
        let winner = loop {
            if let Some(i) = waiters.iter().position(|w| w.is_finished()) {
                break waiters.remove(i).join().unwrap();
            }
            assert!(start.elapsed() < LONG / 2, "nobody took the outcome");
            thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(winner, Some(value(5)));
        m.completed(5);
        let start = Instant::now();
        assert_eq!(waiters.pop().unwrap().join().unwrap(), None);
        assert!(start.elapsed() < LONG / 2);
        assert!(m.take(Duration::ZERO).is_empty());
    }

    #[test]
    fn a_waiter_that_timed_out_strands_nothing() {
        let m = Arc::new(Mailbox::default());
        assert_eq!(m.wait_claim(5, Duration::from_millis(5)), None);
        assert!(lock(&m.claims).waiting.is_empty());
        m.sink(5, true).complete(0, value(5));
        assert_eq!(m.take(Duration::ZERO).len(), 1);
        assert!(lock(&m.claims).ready.is_empty());
    }

    #[test]
    fn an_outcome_ready_before_the_wait_is_taken_at_once() {
        let m = Arc::new(Mailbox::default());
        lock(&m.claims).waiting.insert(5, 1);
        m.sink(5, true).complete(0, value(5));
        lock(&m.claims).waiting.clear();
        assert_eq!(m.wait_claim(5, Duration::ZERO), Some(value(5)));
    }

    #[test]
    fn finished_keys_are_remembered_within_a_bound() {
        let m = Mailbox::default();
        let n = FINISHED_KEPT as u64 + 10;
        for key in 0..n {
            m.completed(key);
        }
        m.completed(n - 1);
        let c = lock(&m.claims);
        assert_eq!((c.finished.len(), c.finished_order.len()), (FINISHED_KEPT, FINISHED_KEPT));
        assert!(!c.finished.contains(&9) && c.finished.contains(&10) && c.finished.contains(&(n - 1)));
    }
}
