//! The core's rules, one test each, without processes: the test plays the shell and the
//! workers. It reads the frames the core sends, answers as a worker would, marks starts
//! on a real progress page (shared memory, no process), and reports exits and timers.
//!
//! Every test also checks "started at most once": the harness counts each task and item
//! it starts, and refuses any frame that would hand a worker a task, or a chunk from an
//! item, that had already started (unless the test allows retries).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::*;
use crate::arena::{self, Area, Arena};
use crate::outcome::{ExitStatus, LossCause, Outcome, TaskError};
use crate::page::Page;
use crate::pool::config::Config;
use crate::pool::events::{EventKind, PoolEvent};
use crate::pool::lifecycle::Timing;
use crate::pool::shared::{Command, Gate, Reply, Shared, lock};
use crate::pool::task::{Sink, Task, TaskState};
use crate::process::WorkerCommand;
use crate::wire::{self, Decoder, Frame, Kind};

const GRACE: Duration = Duration::from_secs(1);
const KILL_WAIT: Duration = Duration::from_millis(500);

fn config() -> Config {
    Config {
        cmd: WorkerCommand::new("/nonexistent"),
        workers: 1,
        task_timeout: None,
        timing: Timing { grace: GRACE, kill_wait: KILL_WAIT },
        startup_timeout: Duration::from_secs(5),
        max_tasks_per_worker: None,
        max_startup_failures: 3,
        init_payload: b"init".to_vec(),
        max_frame: 1 << 20,
        prefetch: 1,
        prefetch_below: None,
        stderr_tail: 64,
        forward_stderr: false,
        max_memory: None,
        memory_poll: Duration::from_millis(100),
        retries: 0,
        stack_dump: None,
        on_event: None,
        cgroup_parent: None,
        fork_server: false,
        keep_fork_server: Duration::ZERO,
    }
}

/// One outcome as a sink received it: the task, the items it covers (0..1 for a single
/// task) and the outcome.
#[derive(Debug)]
struct Got {
    task: TaskId,
    first: u32,
    count: u32,
    outcome: Outcome,
}

struct Rec {
    first_id: TaskId,
    log: Arc<Mutex<Vec<Got>>>,
}

impl Sink for Rec {
    fn complete(&self, index: usize, outcome: Outcome) {
        let task = self.first_id.nth(index);
        lock(&self.log).push(Got { task, first: 0, count: 1, outcome });
    }

    fn complete_items(&self, index: usize, first: u32, count: u32, _raised: u32, outcome: Outcome) {
        let task = self.first_id.nth(index);
        lock(&self.log).push(Got { task, first, count, outcome });
    }
}

/// A frame the core sent: to which worker, what kind, for which task, and of a chunk the
/// first item it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    worker: WorkerId,
    kind: Kind,
    task: TaskId,
    from: u32,
}

struct H {
    core: Core,
    shared: Arc<Shared>,
    t0: Instant,
    now: Instant,
    next_id: TaskId,
    log: Arc<Mutex<Vec<Got>>>,
    events: Arc<Mutex<Vec<EventKind>>>,
    /// The worker side of each worker's progress page.
    pages: HashMap<WorkerId, Page>,
    /// How often each (task, item) started; a single task is item 0.
    started: HashMap<(TaskId, u32), u32>,
    /// Every frame the core sent, in order.
    sent: Vec<Sent>,
    /// Retries are on: a task may start again after its worker died.
    may_restart: bool,
}

impl H {
    fn new(cfg: Config) -> H {
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let cfg = Config { on_event: Some(Arc::new(move |e: &PoolEvent| lock(&ev).push(e.kind))), ..cfg };
        let may_restart = cfg.retries > 0;
        let shared = Arc::new(Shared::new().expect("an eventfd"));
        let t0 = Instant::now();
        H {
            core: Core::new(shared.clone(), cfg),
            shared,
            t0,
            now: t0,
            next_id: TaskId::new(1),
            log: Arc::default(),
            events,
            pages: HashMap::new(),
            started: HashMap::new(),
            sent: Vec::new(),
            may_restart,
        }
    }

    fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
    }

    /// Takes the effects the core queued, checking each frame it sends against what has
    /// started already.
    fn effects(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        while let Some(e) = self.core.next_effect() {
            if let Effect::Send(w, bytes) = &e {
                let mut dec = Decoder::new(1 << 20);
                dec.feed(bytes);
                while let Some(f) = dec.next_frame().expect("the core sends whole frames") {
                    let from = if f.kind == Kind::Chunk {
                        let t = &f.payload[f.payload.len() - wire::CHUNK_TRAILER..];
                        u32::from_le_bytes(t[..4].try_into().unwrap())
                    } else {
                        0
                    };
                    if matches!(f.kind, Kind::Task | Kind::Chunk) && !self.may_restart {
                        let again = self.started.keys().any(|&(t, i)| t.get() == f.task_id && i >= from);
                        assert!(!again, "task {} sent again from item {from} after it started", f.task_id);
                    }
                    self.sent.push(Sent { worker: *w, kind: f.kind, task: TaskId::new(f.task_id), from });
                }
            }
            out.push(e);
        }
        out
    }

    fn handle(&mut self, ev: Event) -> Vec<Effect> {
        self.core.handle(ev, self.now);
        self.effects()
    }

    /// One turn of the shell's loop, without starting workers.
    fn turn(&mut self) -> Vec<Effect> {
        self.core.tidy(self.now);
        self.core.dispatch(self.now);
        self.effects()
    }

    fn timers(&mut self) -> Vec<Effect> {
        self.core.fire_timers(self.now);
        self.effects()
    }

    fn submit(&mut self, tasks: Vec<Task>, chunksize: usize) -> Vec<TaskId> {
        let first_id = self.next_id;
        let ids = (0..tasks.len()).map(|i| first_id.nth(i)).collect();
        self.next_id = first_id.nth(tasks.len());
        let sink = Arc::new(Rec { first_id, log: self.log.clone() });
        self.handle(Event::Command(Command::Submit { sink, first_id, tasks, chunksize }));
        ids
    }

    fn tasks(&mut self, n: usize) -> Vec<TaskId> {
        self.submit((0..n).map(|i| Task::new(vec![i as u8])).collect(), 1)
    }

    /// A worker that started and said Ready, with its progress page.
    fn worker(&mut self, pid: i32) -> WorkerId {
        let w = self.starting_worker(pid);
        self.frame(w, Kind::Ready, TaskId::new(0), vec![]);
        w
    }

    fn starting_worker(&mut self, pid: i32) -> WorkerId {
        let w = self.core.worker_started(Pid::from_raw(pid).expect("a pid"), self.now);
        let effects = self.effects();
        assert!(matches!(&effects[..], [Effect::Send(x, _)] if *x == w), "init frame: {effects:?}");
        let page = Page::create().unwrap();
        let fd = rustix::io::fcntl_dupfd_cloexec(page.fd(), 3).unwrap();
        self.handle(Event::Page(w, Page::from_worker(fd).unwrap()));
        self.pages.insert(w, page);
        w
    }

    fn frame(&mut self, w: WorkerId, kind: Kind, task: TaskId, payload: Vec<u8>) -> Vec<Effect> {
        self.handle(Event::Frame(w, Frame { kind, task_id: task.get(), payload, arena: false }))
    }

    fn value(&mut self, w: WorkerId, task: TaskId) -> Vec<Effect> {
        self.frame(w, Kind::Value, task, b"ok".to_vec())
    }

    /// Item outcomes `first..first + count` of chunk `task`, all values.
    fn items(&mut self, w: WorkerId, task: TaskId, first: u32, count: u32) -> Vec<Effect> {
        let mut p = b"vals".to_vec();
        for x in [first, count, 0] {
            p.extend_from_slice(&x.to_le_bytes());
        }
        self.frame(w, Kind::Items, task, p)
    }

    fn count_start(&mut self, task: TaskId, item: u32) {
        let n = self.started.entry((task, item)).or_default();
        *n += 1;
        assert!(*n == 1 || self.may_restart, "task {task} item {item} started twice");
    }

    /// The worker claims `task` (as it does before starting it); false if revoked.
    fn claim(&mut self, w: WorkerId, task: TaskId) -> bool {
        let sent = self.sent.iter().any(|s| s.worker == w && s.task == task);
        assert!(sent, "worker {w:?} claims task {task} it was not sent");
        let ok = self.pages[&w].claim(task.get());
        if ok && self.core.tasks.get(&task).is_none_or(|e| e.items == 0) {
            self.count_start(task, 0);
        }
        ok
    }

    /// The worker starts item `i` of the chunk it claimed.
    fn start_item(&mut self, w: WorkerId, task: TaskId, i: u32) -> bool {
        let ok = self.pages[&w].start_item(i);
        if ok {
            self.count_start(task, i);
        }
        ok
    }

    fn exit(&mut self, w: WorkerId, status: ExitStatus) -> Vec<Effect> {
        self.handle(Event::Exited { worker: w, status, oom: false })
    }

    fn outcomes(&self) -> Vec<Got> {
        std::mem::take(&mut *lock(&self.log))
    }

    fn state(&mut self, task: TaskId) -> TaskState {
        let reply = Arc::new(Reply::default());
        self.handle(Event::Command(Command::State(task, reply.clone())));
        reply.wait(&self.shared).expect("answered")
    }

    fn sent_to(&self, w: WorkerId) -> Vec<TaskId> {
        self.sent
            .iter()
            .filter(|s| s.worker == w && matches!(s.kind, Kind::Task | Kind::Chunk))
            .map(|s| s.task)
            .collect()
    }

    fn events(&self) -> Vec<EventKind> {
        lock(&self.events).clone()
    }
}

fn is_value(o: &Outcome) -> bool {
    matches!(o, Outcome::Value(_))
}

fn lost(o: &Outcome) -> &crate::outcome::WorkerLost {
    match o {
        Outcome::Failed(TaskError::WorkerLost(l)) => l,
        other => panic!("expected worker lost, got {other:?}"),
    }
}

fn has(effects: &[Effect], want: &Effect) -> bool {
    effects.iter().any(|e| e == want)
}

// ----- dispatch and send-ahead ----------------------------------------------------------

#[test]
fn dispatch_fills_idle_workers_first_then_sends_ahead_up_to_prefetch() {
    let mut h = H::new(Config { workers: 2, prefetch: 2, ..config() });
    let (a, b) = (h.worker(10), h.worker(11));
    let t = h.tasks(6);
    let effects = h.turn();
    assert_eq!(effects.iter().filter(|e| matches!(e, Effect::Send(..))).count(), 2, "one write per worker");
    assert_eq!(h.sent_to(a), [t[0], t[2]]);
    assert_eq!(h.sent_to(b), [t[1], t[3]]);
    assert_eq!(h.state(t[0]), TaskState::Running);
    assert_eq!(h.state(t[2]), TaskState::SentAhead);
    assert_eq!(h.state(t[4]), TaskState::Queued);
    h.claim(a, t[0]);
    h.value(a, t[0]);
    h.turn();
    assert_eq!(h.sent_to(a), [t[0], t[2], t[4]], "a freed slot takes the next chunk");
    assert_eq!(h.state(t[0]), TaskState::Done);
    assert_eq!(h.state(t[2]), TaskState::Running);
    let got = h.outcomes();
    assert_eq!(got.len(), 1);
    assert!(got[0].task == t[0] && is_value(&got[0].outcome));
}

#[test]
fn chunksize_groups_tasks_into_one_dispatch() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.submit((0..5).map(|_| Task::new(b"x".to_vec())).collect(), 3);
    h.turn();
    assert_eq!(h.sent_to(w), [t[0], t[1], t[2]]);
    for &id in &t[..3] {
        h.claim(w, id);
        h.value(w, id);
    }
    h.turn();
    assert_eq!(h.sent_to(w), t);
}

#[test]
fn prefetch_below_sends_ahead_only_behind_tasks_known_to_be_short() {
    let mut h = H::new(Config { prefetch: 2, prefetch_below: Some(Duration::from_millis(100)), ..config() });
    let w = h.worker(10);
    let t = h.tasks(4);
    h.turn();
    assert_eq!(h.sent_to(w), [t[0]], "nothing ahead before a task's duration is known");
    h.at(10);
    h.claim(w, t[0]);
    h.value(w, t[0]);
    h.turn();
    assert_eq!(h.sent_to(w), [t[0], t[1], t[2]], "behind a short task, one more goes ahead");
    h.claim(w, t[1]);
    h.at(500);
    h.value(w, t[1]);
    h.turn();
    // t[1] took 490 ms: the smoothed duration passes the threshold, nothing goes ahead.
    assert_eq!(h.sent_to(w), [t[0], t[1], t[2]]);
    assert_eq!(h.state(t[3]), TaskState::Queued);
}

#[test]
fn a_worker_is_retired_after_max_tasks_per_worker() {
    let mut h = H::new(Config { prefetch: 4, max_tasks_per_worker: Some(2), ..config() });
    let w = h.worker(10);
    let t = h.tasks(3);
    h.turn();
    assert_eq!(h.sent_to(w), [t[0], t[1]], "never more than its budget");
    for &id in &t[..2] {
        h.claim(w, id);
        h.value(w, id);
    }
    assert!(!h.core.wants_worker());
    h.turn();
    assert_eq!(h.sent.last().map(|s| s.kind), Some(Kind::Shutdown), "asked to leave");
    assert!(h.core.wants_worker(), "a retiring worker is replaced");
    assert!(h.events().contains(&EventKind::Recycled));
    assert_eq!(h.shared.stats.snapshot().workers_recycled, 1);
    let w2 = h.worker(11);
    h.turn();
    assert_eq!(h.sent_to(w2), [t[2]]);
    // It does not leave: SIGTERM after the grace period, SIGKILL after another.
    h.at(GRACE.as_millis() as u64);
    let effects = h.timers();
    assert!(has(&effects, &Effect::SignalGroup(w, Signal::TERM)), "{effects:?}");
}

// ----- outcomes -------------------------------------------------------------------------

#[test]
fn values_and_raised_reach_the_sink_once() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.tasks(2);
    h.turn();
    h.claim(w, t[0]);
    h.frame(w, Kind::Raised, t[0], b"boom".to_vec());
    h.turn();
    h.claim(w, t[1]);
    h.value(w, t[1]);
    let got = h.outcomes();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].outcome, Outcome::Raised(b"boom".to_vec()));
    assert_eq!(got[1].outcome, Outcome::Value(b"ok".to_vec()));
    let s = h.shared.stats.snapshot();
    assert_eq!((s.values, s.raised), (1, 1));
}

#[test]
fn an_answer_for_a_task_the_worker_was_not_running_breaks_the_protocol() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.tasks(1);
    h.turn();
    h.claim(w, t[0]);
    let effects = h.frame(w, Kind::Value, TaskId::new(999), vec![]);
    assert!(has(&effects, &Effect::CloseChannel(w)) && has(&effects, &Effect::SignalGroup(w, Signal::TERM)));
    let got = h.outcomes();
    assert!(matches!(&got[..], [g] if matches!(g.outcome, Outcome::Failed(TaskError::Protocol { .. }))));
    assert_eq!(h.shared.stats.snapshot().workers_lost, 1);
}

// ----- deaths ---------------------------------------------------------------------------

#[test]
fn a_death_mid_task_fails_that_task_and_requeues_what_was_sent_ahead() {
    let mut h = H::new(Config { prefetch: 2, ..config() });
    let w = h.worker(10);
    let t = h.tasks(2);
    h.turn();
    assert_eq!(h.sent_to(w), t);
    h.claim(w, t[0]);
    let effects = h.exit(w, ExitStatus::Signal(11));
    assert!(has(&effects, &Effect::Forget(w)));
    let got = h.outcomes();
    assert_eq!(got.len(), 1, "only the running task fails: {got:?}");
    let l = lost(&got[0].outcome);
    assert_eq!((got[0].task, l.pid, &l.cause), (t[0], 10, &LossCause::Exited(ExitStatus::Signal(11))));
    assert_eq!(h.state(t[1]), TaskState::Queued, "the task sent ahead runs elsewhere");
    assert!(h.core.wants_worker());
    let w2 = h.worker(11);
    h.turn();
    assert_eq!(h.sent_to(w2), [t[1]]);
    h.claim(w2, t[1]);
    h.value(w2, t[1]);
    assert!(is_value(&h.outcomes()[0].outcome));
}

#[test]
fn a_head_the_page_says_was_never_claimed_is_requeued_without_a_failure() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.tasks(1);
    h.turn();
    h.exit(w, ExitStatus::Code(1));
    assert!(h.outcomes().is_empty(), "a task that never started does not fail");
    assert!(h.events().contains(&EventKind::WorkerLost));
    let w2 = h.worker(11);
    h.turn();
    assert_eq!(h.sent_to(w2), t);
}

#[test]
fn a_death_mid_chunk_keeps_what_came_fails_the_item_it_was_on_and_requeues_the_rest() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.submit(vec![Task::chunk(b"c".to_vec(), 6)], 1)[0];
    h.turn();
    h.claim(w, t);
    h.start_item(w, t, 0);
    h.items(w, t, 0, 1);
    h.start_item(w, t, 1);
    h.start_item(w, t, 2);
    // Item 1 finished but its outcome never came; the worker died on item 2.
    h.exit(w, ExitStatus::Signal(9));
    let got = h.outcomes();
    let parts: Vec<(u32, u32)> = got.iter().map(|g| (g.first, g.count)).collect();
    assert_eq!(parts, [(0, 1), (1, 1), (2, 1)], "{got:?}");
    assert!(is_value(&got[0].outcome));
    assert!(lost(&got[1].outcome).finished, "item 1 finished, its outcome was lost");
    assert!(!lost(&got[2].outcome).finished, "item 2 is the one it was on");
    let w2 = h.worker(11);
    h.turn();
    let again = *h.sent.last().unwrap();
    assert_eq!((again.worker, again.kind, again.task, again.from), (w2, Kind::Chunk, t, 3));
    h.claim(w2, t);
    for i in 3..6 {
        h.start_item(w2, t, i);
    }
    h.items(w2, t, 3, 3);
    let got = h.outcomes();
    assert!(matches!(&got[..], [g] if (g.first, g.count) == (3, 3) && is_value(&g.outcome)));
    let s = h.shared.stats.snapshot();
    assert_eq!((s.values, s.worker_lost), (4, 2), "a chunk counts as its items");
}

#[test]
fn a_worker_dying_before_it_claims_a_chunk_fails_its_first_item_only() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.submit(vec![Task::chunk(b"c".to_vec(), 3)], 1)[0];
    h.turn();
    h.claim(w, t);
    h.exit(w, ExitStatus::Code(3));
    let got = h.outcomes();
    assert!(matches!(&got[..], [g] if (g.first, g.count) == (0, 1)), "{got:?}");
    h.worker(11);
    h.turn();
    assert_eq!(h.sent.last().map(|s| (s.task, s.from)), Some((t, 1)));
}

#[test]
fn a_closed_channel_gets_a_moment_for_the_exit_then_the_worker_is_stopped() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.tasks(1);
    h.turn();
    h.claim(w, t[0]);
    let effects = h.handle(Event::ChannelClosed(w));
    assert_eq!(effects, [Effect::CloseChannel(w)]);
    h.at(LINGER.as_millis() as u64);
    assert_eq!(h.timers(), [Effect::CheckExit(w)]);
    let effects = h.handle(Event::StillAlive(w));
    assert!(has(&effects, &Effect::SignalGroup(w, Signal::TERM)), "{effects:?}");
    assert_eq!(lost(&h.outcomes()[0].outcome).cause, LossCause::ChannelClosed);
}

// ----- retries --------------------------------------------------------------------------

#[test]
fn retries_run_a_task_again_and_quarantine_it_after_the_last() {
    let mut h = H::new(Config { retries: 1, ..config() });
    let t = h.tasks(1)[0];
    let w = h.worker(10);
    h.turn();
    h.claim(w, t);
    h.exit(w, ExitStatus::Signal(9));
    assert!(h.outcomes().is_empty(), "a retry, not an outcome");
    assert!(h.events().contains(&EventKind::Retry));
    let w2 = h.worker(11);
    h.turn();
    assert_eq!(h.sent_to(w2), [t]);
    h.claim(w2, t);
    h.exit(w2, ExitStatus::Code(2));
    let got = h.outcomes();
    let l = lost(&got[0].outcome);
    assert_eq!(l.earlier.len(), 1, "every earlier attempt is listed");
    assert_eq!(l.earlier[0].pid, 10);
    assert_eq!(h.started[&(t, 0)], 2);
    let s = h.shared.stats.snapshot();
    assert_eq!((s.retries, s.worker_lost, s.workers_lost), (1, 1, 2));
}

// ----- time limits ----------------------------------------------------------------------

#[test]
fn a_late_task_is_asked_for_its_stack_then_timed_out_and_its_worker_stopped() {
    let dump = (Signal::USR1, Duration::from_millis(200));
    let mut h = H::new(Config { task_timeout: Some(Duration::from_secs(1)), stack_dump: Some(dump), ..config() });
    let w = h.worker(10);
    let t = h.tasks(2);
    h.turn();
    h.claim(w, t[0]);
    h.at(999);
    assert!(h.timers().is_empty());
    h.at(1000);
    assert_eq!(h.timers(), [Effect::SignalWorker(w, Signal::USR1)]);
    assert!(!h.pages[&w].claim(t[1].get()), "from the time-out on, the worker starts nothing");
    let effects = h.frame(w, Kind::Stack, t[0], b"in f()".to_vec());
    assert!(has(&effects, &Effect::CloseChannel(w)) && has(&effects, &Effect::SignalGroup(w, Signal::TERM)));
    let got = h.outcomes();
    match &got[0].outcome {
        Outcome::Failed(TaskError::TimedOut { stack, limit, .. }) => {
            assert_eq!((stack.as_deref(), *limit), (Some("in f()"), Duration::from_secs(1)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.state(t[1]), TaskState::Queued);
    h.at(1000 + GRACE.as_millis() as u64);
    assert_eq!(h.timers(), [Effect::Kill(w)]);
    h.at(1000 + (GRACE + KILL_WAIT).as_millis() as u64);
    assert_eq!(h.timers(), [Effect::Forget(w)], "abandoned, never waited for");
    assert_eq!(h.shared.stats.snapshot().workers_abandoned, 1);
}

#[test]
fn without_a_stack_the_time_out_comes_after_the_dump_wait() {
    let dump = (Signal::USR1, Duration::from_millis(200));
    let mut h = H::new(Config { task_timeout: Some(Duration::from_secs(1)), stack_dump: Some(dump), ..config() });
    let w = h.worker(10);
    let t = h.tasks(1)[0];
    h.turn();
    h.claim(w, t);
    h.at(1000);
    h.timers();
    h.at(1199);
    assert!(h.timers().is_empty());
    h.at(1200);
    assert!(has(&h.timers(), &Effect::SignalGroup(w, Signal::TERM)));
    let got = h.outcomes();
    assert!(matches!(&got[0].outcome, Outcome::Failed(TaskError::TimedOut { stack: None, stack_requested: true, .. })));
}

#[test]
fn a_worker_that_dies_when_asked_for_its_stack_still_times_out() {
    let dump = (Signal::USR1, Duration::from_millis(200));
    let mut h = H::new(Config { task_timeout: Some(Duration::from_secs(1)), stack_dump: Some(dump), ..config() });
    let w = h.worker(10);
    let t = h.tasks(1)[0];
    h.turn();
    h.claim(w, t);
    h.at(1000);
    h.timers();
    let effects = h.exit(w, ExitStatus::Signal(10));
    assert!(!effects.iter().any(|e| matches!(e, Effect::SignalGroup(..) | Effect::Kill(_))), "it is reaped already");
    assert!(matches!(&h.outcomes()[0].outcome, Outcome::Failed(TaskError::TimedOut { .. })));
}

#[test]
fn a_chunks_time_limit_is_per_item() {
    // The page's clock is the real one: this test runs in real time.
    let limit = Duration::from_millis(200);
    let mut h = H::new(Config { task_timeout: Some(limit), ..config() });
    let w = h.worker(10);
    let t = h.submit(vec![Task::chunk(b"c".to_vec(), 4)], 1)[0];
    h.now = Instant::now();
    h.turn();
    let sent_at = h.now;
    h.claim(w, t);
    h.start_item(w, t, 0);
    h.items(w, t, 0, 1);
    std::thread::sleep(Duration::from_millis(30));
    h.start_item(w, t, 1);
    h.now = sent_at + limit;
    assert!(h.timers().is_empty(), "item 1 started later: its own limit has not passed");
    assert_eq!(h.outcomes().len(), 1);
    h.now = sent_at + limit * 10;
    let effects = h.timers();
    assert!(has(&effects, &Effect::SignalGroup(w, Signal::TERM)), "{effects:?}");
    let got = h.outcomes();
    assert!(
        matches!(&got[..], [g] if (g.first, g.count) == (1, 1)
        && matches!(g.outcome, Outcome::Failed(TaskError::TimedOut { .. }))),
        "{got:?}"
    );
    assert!(!h.pages[&w].start_item(2), "the late worker starts no other item");
    h.worker(11);
    h.turn();
    assert_eq!(h.sent.last().map(|s| (s.task, s.from)), Some((t, 2)), "the rest runs elsewhere");
}

// ----- memory limit ---------------------------------------------------------------------

#[test]
fn a_worker_over_the_memory_limit_fails_its_task_and_is_stopped() {
    let mut h = H::new(Config { max_memory: Some(1000), ..config() });
    let w = h.worker(10);
    let t = h.tasks(1)[0];
    h.turn();
    h.claim(w, t);
    h.at(100);
    assert_eq!(h.timers(), [Effect::PollMemory(vec![(w, Pid::from_raw(10).unwrap())])]);
    assert!(h.handle(Event::Memory(vec![(w, Some(900))])).is_empty());
    h.at(200);
    assert_eq!(h.timers(), [Effect::PollMemory(vec![(w, Pid::from_raw(10).unwrap())])], "polled again while busy");
    let effects = h.handle(Event::Memory(vec![(w, Some(1500))]));
    assert!(has(&effects, &Effect::SignalGroup(w, Signal::TERM)));
    match &h.outcomes()[0].outcome {
        Outcome::Failed(TaskError::MemoryLimit { limit, peak, pid, .. }) => {
            assert_eq!((*limit, *peak, *pid), (1000, 1500, 10))
        }
        other => panic!("{other:?}"),
    }
    h.at(300);
    assert!(!h.timers().iter().any(|e| matches!(e, Effect::PollMemory(_))), "no busy worker, no polling");
}

#[test]
fn the_memory_limit_mid_chunk_fails_only_the_item_it_was_on() {
    let mut h = H::new(Config { max_memory: Some(1000), ..config() });
    let w = h.worker(10);
    let t = h.submit(vec![Task::chunk(b"c".to_vec(), 4)], 1)[0];
    h.turn();
    h.claim(w, t);
    h.start_item(w, t, 0);
    h.items(w, t, 0, 1);
    h.start_item(w, t, 1);
    h.at(100);
    h.timers();
    h.handle(Event::Memory(vec![(w, Some(5000))]));
    let got = h.outcomes();
    assert!(
        matches!(&got[..], [a, b] if is_value(&a.outcome) && (b.first, b.count) == (1, 1)
        && matches!(b.outcome, Outcome::Failed(TaskError::MemoryLimit { .. }))),
        "{got:?}"
    );
    h.worker(11);
    h.turn();
    assert_eq!(h.sent.last().map(|s| (s.task, s.from)), Some((t, 2)));
}

#[test]
fn a_retried_chunk_runs_again_from_the_item_its_worker_died_on() {
    let mut h = H::new(Config { retries: 1, ..config() });
    let w = h.worker(10);
    let t = h.submit(vec![Task::chunk(b"c".to_vec(), 3)], 1)[0];
    h.turn();
    h.claim(w, t);
    h.start_item(w, t, 0);
    h.items(w, t, 0, 1);
    h.start_item(w, t, 1);
    h.exit(w, ExitStatus::Signal(9));
    assert_eq!(h.outcomes().len(), 1, "item 0 keeps its value; item 1 is retried, not failed");
    let w2 = h.worker(11);
    h.turn();
    assert_eq!(h.sent.last().map(|s| (s.worker, s.task, s.from)), Some((w2, t, 1)));
    h.claim(w2, t);
    h.start_item(w2, t, 1);
    h.exit(w2, ExitStatus::Signal(9));
    let got = h.outcomes();
    assert!(matches!(&got[..], [g] if (g.first, g.count) == (1, 1) && lost(&g.outcome).earlier.len() == 1), "{got:?}");
    h.worker(12);
    h.turn();
    assert_eq!(h.sent.last().map(|s| (s.task, s.from)), Some((t, 2)), "item 2 never started: it runs next");
    assert_eq!(h.started.get(&(t, 2)), None);
}

// ----- cancel ---------------------------------------------------------------------------

#[test]
fn cancelling_a_queued_task_ends_it_and_it_is_never_sent() {
    let mut h = H::new(config());
    let t = h.tasks(2);
    let reply = Arc::new(Reply::default());
    h.handle(Event::Command(Command::CancelQueued(t[0], reply.clone())));
    assert_eq!(reply.wait(&h.shared), Some(true));
    let w = h.worker(10);
    h.turn();
    assert_eq!(h.sent_to(w), [t[1]]);
    assert!(matches!(h.outcomes()[0].outcome, Outcome::Failed(TaskError::Cancelled(_))));
}

#[test]
fn cancel_if_queued_refuses_a_task_a_worker_has() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.tasks(1)[0];
    h.turn();
    let reply = Arc::new(Reply::default());
    h.handle(Event::Command(Command::CancelQueued(t, reply.clone())));
    assert_eq!(reply.wait(&h.shared), Some(false));
    assert!(h.outcomes().is_empty());
    h.claim(w, t);
    h.value(w, t);
    assert!(is_value(&h.outcomes()[0].outcome));
}

#[test]
fn cancelling_a_task_sent_ahead_ends_it_at_once_and_drops_its_late_result() {
    let mut h = H::new(Config { prefetch: 2, ..config() });
    let w = h.worker(10);
    let t = h.tasks(2);
    h.turn();
    let effects = h.handle(Event::Command(Command::Cancel(t[1])));
    assert!(effects.is_empty(), "the worker goes on: {effects:?}");
    assert!(matches!(h.outcomes()[0].outcome, Outcome::Failed(TaskError::Cancelled(_))));
    assert_eq!(h.state(t[1]), TaskState::Done);
    h.claim(w, t[0]);
    h.value(w, t[0]);
    h.claim(w, t[1]);
    h.value(w, t[1]);
    let got = h.outcomes();
    assert_eq!(got.iter().map(|g| g.task).collect::<Vec<_>>(), [t[0]], "one outcome per task");
}

#[test]
fn cancelling_a_running_task_stops_its_worker_and_requeues_the_one_sent_ahead() {
    let mut h = H::new(Config { prefetch: 2, ..config() });
    let w = h.worker(10);
    let t = h.tasks(2);
    h.turn();
    h.claim(w, t[0]);
    let effects = h.handle(Event::Command(Command::Cancel(t[0])));
    assert_eq!(effects, [Effect::CloseChannel(w), Effect::SignalGroup(w, Signal::TERM)]);
    assert!(matches!(h.outcomes()[0].outcome, Outcome::Failed(TaskError::Cancelled(_))));
    assert_eq!(h.state(t[1]), TaskState::Queued);
    assert!(!h.pages[&w].claim(t[1].get()), "the stopped worker cannot start it any more");
    h.exit(w, ExitStatus::Signal(15));
    assert!(h.outcomes().is_empty(), "its exit is no loss: it was being stopped");
    let w2 = h.worker(11);
    h.turn();
    assert_eq!(h.sent_to(w2), [t[1]]);
}

#[test]
fn a_task_sent_ahead_that_the_stopped_worker_had_already_started_is_lost_not_rerun() {
    let mut h = H::new(Config { prefetch: 2, ..config() });
    let w = h.worker(10);
    let t = h.tasks(2);
    h.turn();
    h.claim(w, t[0]);
    // It finished t[0] and started t[1]; t[0]'s answer has not been read yet.
    h.claim(w, t[1]);
    h.handle(Event::Command(Command::Cancel(t[0])));
    let got = h.outcomes();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].task, t[1]);
    assert_eq!(lost(&got[1].outcome).cause, LossCause::Stopped);
    assert_eq!(h.state(t[1]), TaskState::Done);
}

// ----- close, terminate, broken ---------------------------------------------------------

#[test]
fn close_lets_queued_work_finish_then_retires_the_workers() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.tasks(2);
    h.handle(Event::Command(Command::Close));
    h.turn();
    h.claim(w, t[0]);
    h.value(w, t[0]);
    h.turn();
    assert_eq!(h.sent_to(w), t, "queued tasks still run");
    assert!(!h.core.is_finished());
    h.claim(w, t[1]);
    h.value(w, t[1]);
    h.turn();
    assert_eq!(h.sent.last().map(|s| s.kind), Some(Kind::Shutdown));
    assert!(!h.core.wants_worker());
    h.exit(w, ExitStatus::Code(0));
    assert!(h.core.is_finished());
    assert_eq!(h.outcomes().len(), 2);
}

#[test]
fn a_requested_worker_counts_as_one_and_a_closing_pool_waits_for_it() {
    // A fork server's first fork: asked for, its process comes later.
    let mut h = H::new(Config { workers: 2, ..config() });
    assert!(h.core.wants_worker());
    h.core.worker_requested();
    assert!(h.core.wants_worker(), "one more is wanted besides the requested one");
    h.core.worker_requested();
    assert!(!h.core.wants_worker());
    let t = h.tasks(1);
    h.handle(Event::Command(Command::Close));
    h.turn();
    assert!(!h.core.is_finished(), "a closing pool waits for its requested workers");
    let w = h.worker(10);
    h.turn();
    assert_eq!(h.sent_to(w), t, "work submitted before the worker came runs on it");
    h.claim(w, t[0]);
    h.value(w, t[0]);
    // The other one could not be started after all: nothing is awaited any more.
    h.handle(Event::SpawnFailed("no second worker".into()));
    h.turn();
    h.exit(w, ExitStatus::Code(0));
    assert!(h.core.is_finished());
}

#[test]
fn a_terminating_pool_does_not_wait_for_a_requested_worker() {
    let mut h = H::new(config());
    h.core.worker_requested();
    h.tasks(1);
    h.handle(Event::Command(Command::Terminate));
    assert!(h.core.is_finished());
    assert!(!h.core.wants_worker());
    assert!(matches!(h.outcomes()[..], [Got { outcome: Outcome::Failed(TaskError::Terminated(_)), .. }]));
}

#[test]
fn terminate_ends_every_task_and_stops_every_worker() {
    let mut h = H::new(Config { workers: 2, ..config() });
    let (a, b) = (h.worker(10), h.worker(11));
    let t = h.tasks(3);
    h.turn();
    h.claim(a, t[0]);
    let effects = h.handle(Event::Command(Command::Terminate));
    for w in [a, b] {
        assert!(has(&effects, &Effect::CloseChannel(w)) && has(&effects, &Effect::SignalGroup(w, Signal::TERM)));
    }
    let got = h.outcomes();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|g| matches!(g.outcome, Outcome::Failed(TaskError::Terminated(_)))));
    assert!(!h.core.wants_worker());
    h.exit(a, ExitStatus::Signal(15));
    assert!(!h.core.is_finished());
    h.exit(b, ExitStatus::Signal(15));
    assert!(h.core.is_finished());
    assert!(h.outcomes().is_empty(), "nothing more after the one outcome each");
}

#[test]
fn start_up_failures_break_the_pool_after_the_limit() {
    let mut h = H::new(Config { max_startup_failures: 2, ..config() });
    let t = h.tasks(2);
    let a = h.starting_worker(10);
    h.exit(a, ExitStatus::Code(1));
    assert!(h.outcomes().is_empty(), "one failure is retried");
    assert!(h.core.wants_worker());
    let b = h.starting_worker(11);
    h.stderr_line(b);
    h.exit(b, ExitStatus::Code(1));
    let got = h.outcomes();
    assert_eq!(got.len(), 2);
    for g in &got {
        match &g.outcome {
            Outcome::Failed(TaskError::StartupFailed {
                failure: StartupFailure::ExitedEarly { stderr_tail, .. },
                ..
            }) => {
                assert_eq!(stderr_tail, "Traceback...\nno module named x\n");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(lock(&h.shared.inbox).gate, Gate::Broken(_)));
    assert!(!h.core.wants_worker());
    assert!(h.core.is_finished());
    let late = h.tasks(1)[0];
    assert!(matches!(&h.outcomes()[..], [g] if g.task == late
        && matches!(g.outcome, Outcome::Failed(TaskError::StartupFailed { .. }))));
    let _ = t;
}

#[test]
fn a_ready_worker_resets_the_start_up_failure_count() {
    let mut h = H::new(Config { max_startup_failures: 2, ..config() });
    h.tasks(1);
    let a = h.starting_worker(10);
    h.exit(a, ExitStatus::Code(1));
    h.worker(11);
    let c = h.starting_worker(12);
    h.exit(c, ExitStatus::Code(1));
    assert!(matches!(lock(&h.shared.inbox).gate, Gate::Open));
}

#[test]
fn an_initializer_failure_and_a_start_up_timeout_count_as_start_up_failures() {
    let mut h = H::new(Config { max_startup_failures: 2, ..config() });
    let t = h.tasks(1)[0];
    let a = h.starting_worker(10);
    let effects = h.frame(a, Kind::InitFailed, TaskId::new(0), b"ValueError".to_vec());
    assert!(has(&effects, &Effect::SignalGroup(a, Signal::TERM)));
    h.exit(a, ExitStatus::Code(1));
    assert!(h.outcomes().is_empty());
    let b = h.starting_worker(11);
    h.at(5000);
    let effects = h.timers();
    assert!(has(&effects, &Effect::SignalGroup(b, Signal::TERM)), "{effects:?}");
    let got = h.outcomes();
    assert!(
        matches!(&got[..], [g] if g.task == t && matches!(&g.outcome,
        Outcome::Failed(TaskError::StartupFailed { failure: StartupFailure::Timeout(_), .. }))),
        "{got:?}"
    );
}

#[test]
fn a_failed_spawn_arms_a_retry_timer() {
    let mut h = H::new(config());
    h.handle(Event::SpawnFailed("no such file".into()));
    assert_eq!(h.core.next_deadline(), Some(h.now + Duration::from_millis(50)));
    assert_eq!(h.shared.stats.snapshot().startup_failures, 1);
    assert!(h.core.wants_worker());
}

#[test]
fn stale_events_for_a_replaced_worker_are_ignored() {
    let mut h = H::new(config());
    let w = h.worker(10);
    h.exit(w, ExitStatus::Code(0));
    let w2 = h.worker(11);
    assert_eq!(w.slot(), w2.slot(), "the slot is reused");
    assert_ne!(w, w2, "with a new generation");
    assert!(h.value(w, TaskId::new(1)).is_empty());
    assert!(h.exit(w, ExitStatus::Code(0)).is_empty());
    let (id, kind) = WorkerId::from_token(w2.token(2));
    assert_eq!((id, kind), (w2, 2));
}

impl H {
    fn stderr_line(&mut self, w: WorkerId) {
        self.core.stderr(w, b"Traceback...\nno module named x\n");
    }
}

#[test]
fn a_pool_closed_before_its_first_workers_started_still_starts_them_once() {
    let mut h = H::new(Config { workers: 2, ..config() });
    h.handle(Event::Command(Command::Close));
    assert!(h.core.wants_worker(), "the first workers start, so each runs its initializer");
    let a = h.worker(10);
    assert!(h.core.wants_worker());
    let b = h.worker(11);
    assert!(!h.core.wants_worker(), "only the first ones: nothing is queued");
    h.turn();
    let asked: Vec<_> = h.sent.iter().filter(|s| s.kind == Kind::Shutdown).map(|s| s.worker).collect();
    assert_eq!(asked.len(), 2, "both asked to leave once ready: {asked:?} ({a:?}, {b:?})");
    assert!(!h.core.wants_worker(), "and none replaces them");
}

// ----- the arena ------------------------------------------------------------------------

/// A ready worker that passed an arena; returns the worker's own mapping of it.
fn arena_worker(h: &mut H, pid: i32) -> (WorkerId, Arena) {
    let w = h.starting_worker(pid);
    let a = Arena::create().unwrap();
    let fd = rustix::io::fcntl_dupfd_cloexec(a.fd(), 3).unwrap();
    h.handle(Event::Arena(w, Arena::from_worker(fd).unwrap()));
    h.frame(w, Kind::Ready, TaskId::new(0), vec![]);
    (w, a)
}

/// A frame whose payload is in the worker's area, `len` bytes at `offset`.
fn arena_frame(h: &mut H, w: WorkerId, kind: Kind, task: TaskId, offset: usize, len: usize) -> Vec<Effect> {
    let payload = arena::descriptor(offset, len).to_vec();
    h.handle(Event::Frame(w, Frame { kind, task_id: task.get(), payload, arena: true }))
}

/// The frames in the effects, raw: (kind byte, task id, payload).
fn raw_frames(effects: &[Effect]) -> Vec<(u8, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for e in effects {
        if let Effect::Send(_, bytes) = e {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let h: &[u8; wire::HEADER_LEN] = rest[..wire::HEADER_LEN].try_into().unwrap();
                let (_, len, id) = wire::parse_header(h, u64::MAX).unwrap();
                let end = wire::HEADER_LEN + len as usize;
                out.push((rest[0], id, rest[wire::HEADER_LEN..end].to_vec()));
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn large_payloads_travel_through_the_arena_both_ways_and_regions_are_reused() {
    let mut h = H::new(Config { prefetch: 4, ..config() });
    let (w, a) = arena_worker(&mut h, 10);
    let n = arena::THRESHOLD;
    let t = h.submit(vec![Task::new(vec![1; n]), Task::new(vec![2; n]), Task::new(vec![3; n - 1])], 1);
    let frames = raw_frames(&h.turn());
    assert_eq!(frames.len(), 3, "{:?}", frames.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>());
    for (i, (kind, id, payload)) in frames.iter().enumerate() {
        assert_eq!(*id, t[i].get());
        if i < 2 {
            assert_eq!(*kind, Kind::Task as u8 | wire::IN_ARENA);
            let r = arena::parse_descriptor(payload, u64::MAX).unwrap();
            assert_eq!(r, i * n..(i + 1) * n, "lowest free regions, one per task sent ahead");
            assert_eq!(a.read(Area::ToWorker, r), vec![i as u8 + 1; n]);
        } else {
            assert_eq!((*kind, payload.len()), (Kind::Task as u8, n - 1), "below the threshold: on the channel");
        }
    }
    h.claim(w, t[0]);
    a.write(Area::ToPool, 0, &[b"big ", &[7; 100]]);
    arena_frame(&mut h, w, Kind::Value, t[0], 0, 104);
    assert_eq!(a.consumed(), 1, "the pool copied the answer out");
    a.write(Area::ToPool, 0, &[b"overwritten"]);
    let got = h.outcomes();
    let mut want = b"big ".to_vec();
    want.extend_from_slice(&[7; 100]);
    assert!(matches!(&got[..], [g] if g.outcome == Outcome::Value(want.clone())), "{got:?}");
    // The first task's region is free again: the next large task takes it.
    let t2 = h.submit(vec![Task::new(vec![9; n])], 1);
    let frames = raw_frames(&h.turn());
    let (_, id, payload) = frames.last().expect("sent");
    assert_eq!((*id, arena::parse_descriptor(payload, u64::MAX).unwrap()), (t2[0].get(), 0..n));
}

#[test]
fn a_descriptor_outside_the_arena_is_a_protocol_error() {
    for (offset, len) in [(arena::AREA - 10, 11), (usize::MAX, 2), (0, (1 << 20) + 1)] {
        let mut h = H::new(config());
        let (w, a) = arena_worker(&mut h, 10);
        let t = h.tasks(1);
        h.turn();
        h.claim(w, t[0]);
        let effects = arena_frame(&mut h, w, Kind::Value, t[0], offset, len);
        assert!(has(&effects, &Effect::CloseChannel(w)), "{offset} + {len}");
        let got = h.outcomes();
        assert!(matches!(&got[..], [g] if matches!(g.outcome, Outcome::Failed(TaskError::Protocol { .. }))));
        assert_eq!(a.consumed(), 0);
    }
}

#[test]
fn an_arena_frame_from_a_worker_without_an_arena_is_a_protocol_error() {
    let mut h = H::new(config());
    let w = h.worker(10);
    let t = h.tasks(1);
    let frames = raw_frames(&h.turn());
    assert_eq!(frames[0].0, Kind::Task as u8, "no arena, nothing placed");
    h.claim(w, t[0]);
    let effects = arena_frame(&mut h, w, Kind::Value, t[0], 0, 1);
    assert!(has(&effects, &Effect::CloseChannel(w)));
    let got = h.outcomes();
    assert!(matches!(&got[..], [g] if matches!(g.outcome, Outcome::Failed(TaskError::Protocol { .. }))));
}

#[test]
fn shared_parts_are_sent_after_the_own_bytes_through_the_arena_or_the_channel() {
    let n = arena::THRESHOLD;
    let shared: Vec<crate::SharedPart> = vec![Arc::new(vec![2u8; n]), Arc::new(b"tail".to_vec())];
    let mut want = b"own".to_vec();
    want.extend_from_slice(&vec![2u8; n]);
    want.extend_from_slice(b"tail");
    // Through the arena of a worker that has one.
    let mut h = H::new(config());
    let (_, a) = arena_worker(&mut h, 10);
    h.submit(vec![Task::new(b"own".to_vec()).with_shared(shared.clone())], 1);
    let frames = raw_frames(&h.turn());
    assert_eq!(frames[0].0, Kind::Task as u8 | wire::IN_ARENA);
    assert_eq!(a.read(Area::ToWorker, arena::parse_descriptor(&frames[0].2, u64::MAX).unwrap()), want);
    // On the channel to a worker without one, and as a chunk with its trailer.
    let mut h = H::new(config());
    h.worker(11);
    h.submit(vec![Task::chunk(b"own".to_vec(), 3).with_shared(shared)], 1);
    let frames = raw_frames(&h.turn());
    assert_eq!(frames[0].0, Kind::Chunk as u8);
    let (payload, trailer) = frames[0].2.split_at(frames[0].2.len() - wire::CHUNK_TRAILER);
    assert_eq!(payload, &want[..]);
    assert_eq!(trailer, [0, 0, 0, 0, 3, 0, 0, 0]);
}
