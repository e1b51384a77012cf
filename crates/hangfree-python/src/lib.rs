//! `hangfree._core`: the engine as seen from Python.
//!
//! Deliberately thin. Payloads are bytes (the Python package pickles); outcomes go to one
//! queue per engine, which the package's result thread drains. The engine's supervisor
//! thread never touches Python objects or the GIL: it only pushes plain Rust values into
//! that queue. Every blocking call here releases the GIL and wakes at least every 50 ms
//! to let Python run its signal handlers (Ctrl-C).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hangfree::fork_server::ForkHooks;
use hangfree::wire::Kind;
use hangfree::worker::WorkerChannel as RawChannel;
use hangfree::{
    ExitStatus, LossCause, Outcome, Pool, Sink, StartupFailure, SubmitError, Task, TaskError, TaskState, WorkerCommand,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// How often blocking calls come back to check for signals.
const SLICE: Duration = Duration::from_millis(50);

/// How long the result thread polls for the next outcome before it sleeps. Shorter than
/// a caller's poll: this thread competes with the workers for the CPUs in a large map
/// (chunksize-1 map of 20,000: 224 ms with no poll, 140-155 ms with 20-100 µs).
const RESULT_POLL: Duration = Duration::from_micros(30);

pyo3::create_exception!(_core, SubmitRefused, PyRuntimeError, "The engine refused a submission.");

struct Done {
    key: u64,
    index: usize,
    outcome: Outcome,
    /// Of a chunk's part: its first item and how many items.
    items: (u32, u32),
}

#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Done>>,
    /// Result threads asleep on `cv`, counted under the `items` lock: an outcome wakes
    /// one only then (a futex call per outcome otherwise, mostly for nobody).
    sleepers: std::sync::atomic::AtomicUsize,
    /// Whether `items` holds anything, for the result thread to poll without taking the
    /// lock (polling the lock itself made the supervisor's every push contend for it).
    nonempty: std::sync::atomic::AtomicBool,
    events: Mutex<VecDeque<hangfree::PoolEvent>>,
    cv: Condvar,
    /// Claimable submissions (one call each): outcomes a waiting caller takes itself.
    claims: Mutex<Claims>,
    claims_cv: Condvar,
}

/// A poisoned lock only means a panic elsewhere; these small states stay consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Claims {
    /// Outcomes taken out of the stream for a waiting caller, not yet picked up.
    ready: HashMap<u64, Outcome>,
    /// Claimable submissions someone is waiting for now (`wait_claim`), with how many
    /// threads wait: their outcome goes to `ready` instead of the result thread.
    waiting: HashMap<u64, usize>,
    /// The claimable keys finished lately by someone else than their waiter
    /// (`completed`), oldest first. A waiter that saw its call not done and then
    /// registered may have missed that moment: it finds the key here.
    finished: std::collections::HashSet<u64>,
    finished_order: VecDeque<u64>,
}

/// How many finished claimable keys are remembered; the race they cover lasts
/// microseconds, so this bounds memory without ever mattering.
const FINISHED_KEPT: usize = 4096;

impl Queue {
    /// Hands an outcome to the result thread.
    fn push(&self, done: Done) {
        let mut q = lock(&self.items);
        q.push_back(done);
        self.nonempty.store(true, Ordering::Release);
        let asleep = self.sleepers.load(Ordering::Relaxed) > 0;
        drop(q);
        if asleep {
            self.cv.notify_one();
        }
    }
}

/// Where a submission's outcomes go: the result thread, tagged with the submission's key
/// and each task's index; for a claimable one (a single call), straight to a thread
/// waiting for it in `wait_claim` if there is one — one wake-up fewer on a round trip.
struct KeyedSink {
    key: u64,
    queue: Arc<Queue>,
    claimable: bool,
}

impl Sink for KeyedSink {
    fn complete(&self, index: usize, outcome: Outcome) {
        if self.claimable {
            let mut c = lock(&self.queue.claims);
            if c.waiting.contains_key(&self.key) {
                c.ready.insert(self.key, outcome);
                drop(c);
                self.queue.claims_cv.notify_all();
                return;
            }
        }
        self.queue.push(Done { key: self.key, index, outcome, items: (0, 1) });
    }

    fn complete_items(&self, index: usize, first: u32, count: u32, _raised: u32, outcome: Outcome) {
        self.queue.push(Done { key: self.key, index, outcome, items: (first, count) });
    }
}

/// Seconds given from Python as a duration for the engine. NaN and negative values are a
/// ValueError naming `what`; any value past [`hangfree::MAX_DURATION`], infinity
/// included, is that duration (no limit in practice, see its rustdoc); zero stays zero,
/// for the engine to accept or refuse.
fn secs(v: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if s >= 0.0 => Ok(Some(wait_limit(s))),
        Some(s) => Err(PyValueError::new_err(format!("{what} must be a non-negative number of seconds, not {s}"))),
    }
}

/// The limit of one of this module's own waits: never negative, NaN or past
/// [`hangfree::MAX_DURATION`], so a deadline made from it cannot overflow the clock.
fn wait_limit(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX).min(hangfree::MAX_DURATION)
}

/// `retries` for the engine. Python ints have no upper bound; more than `u32::MAX`
/// retries (already unlimited in practice) is taken as `u32::MAX`.
fn retries_count(v: &Bound<'_, PyAny>) -> PyResult<u32> {
    match v.extract::<u32>() {
        Ok(n) => Ok(n),
        Err(_) if v.is_instance_of::<pyo3::types::PyInt>() && v.gt(0)? => Ok(u32::MAX),
        Err(_) => Err(PyValueError::new_err(format!("retries must be a non-negative int, not {}", v.repr()?))),
    }
}

/// Calls into the engine with the GIL released. A panic there (a bug in hangfree) is
/// raised as `hangfree.HangfreeError` naming it, never as pyo3's `PanicException`, a
/// BaseException that `except Exception` lets through.
fn engine_call<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))).map_err(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let msg = format!("the hangfree engine panicked ({what}); this is a bug in hangfree");
        match py.import("hangfree._errors").and_then(|m| m.getattr("HangfreeError")) {
            Ok(cls) => match cls.call1((msg.clone(),)) {
                Ok(e) => PyErr::from_value(e),
                Err(_) => PyRuntimeError::new_err(msg),
            },
            Err(_) => PyRuntimeError::new_err(msg),
        }
    })
}

/// A pool engine: worker processes running `argv`, supervised by a Rust thread.
#[pyclass(module = "hangfree._core")]
struct Engine {
    pool: Pool,
    queue: Arc<Queue>,
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (argv, *, workers, task_timeout=None, grace=1.0, kill_wait=1.0,
        startup_timeout=60.0, max_tasks_per_worker=None, max_startup_failures=3,
        init_payload=Vec::new(), prefetch=2, forward_stderr=true, env=Vec::new(),
        max_memory=None, retries=None, stack_dump_wait=None, events=false, prefetch_below=None, cgroup=false,
        fork_server=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        argv: Vec<String>,
        workers: usize,
        task_timeout: Option<f64>,
        grace: f64,
        kill_wait: f64,
        startup_timeout: f64,
        max_tasks_per_worker: Option<u64>,
        max_startup_failures: u32,
        init_payload: Vec<u8>,
        prefetch: usize,
        forward_stderr: bool,
        env: Vec<(String, String)>,
        max_memory: Option<u64>,
        retries: Option<Bound<'_, PyAny>>,
        stack_dump_wait: Option<f64>,
        events: bool,
        prefetch_below: Option<f64>,
        cgroup: bool,
        fork_server: bool,
    ) -> PyResult<Engine> {
        let Some((program, args)) = argv.split_first() else {
            return Err(PyValueError::new_err("argv must name the worker program"));
        };
        let mut cmd = WorkerCommand::new(program).args(args);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let mut b = Pool::builder(cmd)
            .workers(workers)
            .grace(secs(Some(grace), "grace")?.unwrap_or_default())
            .kill_wait(secs(Some(kill_wait), "kill_wait")?.unwrap_or_default())
            .startup_timeout(secs(Some(startup_timeout), "startup_timeout")?.unwrap_or_default())
            .max_startup_failures(max_startup_failures)
            .init_payload(init_payload)
            .prefetch(prefetch)
            .forward_stderr(forward_stderr);
        if let Some(t) = secs(task_timeout, "task_timeout")? {
            b = b.task_timeout(t);
        }
        if let Some(n) = max_tasks_per_worker {
            b = b.max_tasks_per_worker(n);
        }
        if let Some(m) = max_memory {
            b = b.max_memory(m);
        }
        b = b
            .retries(retries.as_ref().map(retries_count).transpose()?.unwrap_or(0))
            .cgroup(cgroup)
            .fork_server(fork_server);
        if let Some(d) = secs(prefetch_below, "prefetch_below")? {
            b = b.prefetch_below(d);
        }
        if let Some(w) = secs(stack_dump_wait, "stack_dump_wait")? {
            // The Python worker answers SIGUSR1 with the running task's stack.
            b = b.stack_dump(STACK_SIGNAL, w);
        }
        let queue = Arc::new(Queue::default());
        if events {
            let q = queue.clone();
            b = b.on_event(move |e| {
                lock(&q.events).push_back(e.clone());
                q.cv.notify_one();
            });
        }
        let pool = engine_call(py, || b.build())?.map_err(|e| match e {
            hangfree::BuildError::Invalid(m) => PyValueError::new_err(m),
            other => PyRuntimeError::new_err(other.to_string()),
        })?;
        Ok(Engine { pool, queue })
    }

    /// Submits payloads as one submission; outcomes arrive tagged with `key` and each
    /// payload's index. Returns the first task id (ids are consecutive).
    #[pyo3(signature = (key, payloads, *, chunksize=1, timeout=None, labels=None, claim=false, items=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        key: u64,
        payloads: Vec<Bound<'_, PyAny>>,
        chunksize: usize,
        timeout: Option<f64>,
        labels: Option<Vec<String>>,
        claim: bool,
        items: Option<Vec<u32>>,
    ) -> PyResult<u64> {
        // Refused like the engine's own refusals, so the caller forgets the submission.
        let timeout = secs(timeout, "a task's timeout")
            .map_err(|e| SubmitRefused::new_err(("invalid", e.value(py).to_string(), py.None())))?;
        let mut labels = labels.map(|l| l.into_iter());
        let mut items = items.map(|l| l.into_iter());
        let payloads: Vec<Vec<u8>> = payloads.iter().map(payload_vec).collect::<PyResult<_>>()?;
        let tasks: Vec<Task> = payloads
            .into_iter()
            .map(|p| {
                let mut t = match items.as_mut().and_then(|i| i.next()) {
                    Some(n) => Task::chunk(p, n),
                    None => Task::new(p),
                };
                if let Some(d) = timeout {
                    t = t.timeout(d);
                }
                if let Some(l) = labels.as_mut().and_then(|l| l.next()) {
                    t = t.label(l);
                }
                t
            })
            .collect();
        if claim && tasks.len() != 1 {
            return Err(PyValueError::new_err("a claimable submission is one task"));
        }
        let sink: Arc<dyn Sink> = Arc::new(KeyedSink { key, queue: self.queue.clone(), claimable: claim });
        let r = engine_call(py, || self.pool.submit_to(sink, tasks, chunksize))?;
        match r {
            Ok(ids) => Ok(ids.start),
            Err(e) => {
                let kind = match &e {
                    SubmitError::Closed => "closed",
                    SubmitError::Terminated => "terminated",
                    SubmitError::Broken(_) => "broken",
                    SubmitError::Forked { .. } => "forked",
                    SubmitError::TooLarge { .. } => "too_large",
                    SubmitError::Invalid(_) => "invalid",
                    SubmitError::Failed(_) => "failed",
                };
                let detail = match &e {
                    SubmitError::Broken(f) => Some(failure_details(py, f)?),
                    SubmitError::TooLarge { index, .. } => Some((*index).into_pyobject(py)?.into_any().unbind()),
                    _ => None,
                };
                Err(SubmitRefused::new_err((kind, e.to_string(), detail)))
            }
        }
    }

    /// Waits up to `timeout` seconds (GIL released, waking every 50 ms for signals) for
    /// outcomes; returns every outcome ready, as `(key, index, kind, data)` tuples where
    /// kind is "value" or "raised" (data: bytes) or a failure kind (data: a dict).
    fn next_outcomes<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let deadline = Instant::now() + wait_limit(timeout);
        let items: Vec<Done> = loop {
            let got = engine_call(py, || {
                let left = deadline.saturating_duration_since(Instant::now()).min(SLICE);
                // In a stream of outcomes the next one is microseconds away: poll for it
                // before sleeping, so the supervisor need not wake this thread for each.
                hangfree::spin::poll_for(RESULT_POLL.min(left), || self.queue.nonempty.load(Ordering::Acquire));
                let mut q = lock(&self.queue.items);
                if q.is_empty() && !left.is_zero() && !self.has_events() {
                    self.queue.sleepers.fetch_add(1, Ordering::Relaxed);
                    q = self.queue.cv.wait_timeout(q, left).unwrap_or_else(|e| e.into_inner()).0;
                    self.queue.sleepers.fetch_sub(1, Ordering::Relaxed);
                }
                self.queue.nonempty.store(false, Ordering::Release);
                q.drain(..).collect::<Vec<_>>()
            })?;
            // A finished pool has nothing more to say: let the result thread go at once.
            if !got.is_empty() || Instant::now() >= deadline || self.has_events() || self.pool.is_finished() {
                break got;
            }
            py.check_signals()?;
        };
        items.into_iter().map(|d| outcome_tuple(py, d)).collect()
    }

    /// Waits up to `timeout` seconds (GIL released) for the outcome of the claimable
    /// submission `key` and takes it: `(kind, data)` as in `next_outcomes`. Returns None on
    /// time-out, or at once when the result thread has finished it instead (`completed`):
    /// the caller then finds it done. Polls briefly before sleeping: the answer usually
    /// comes sooner than a cross-CPU wake-up would take.
    fn wait_claim<'py>(&self, py: Python<'py>, key: u64, timeout: f64) -> PyResult<Option<Bound<'py, PyAny>>> {
        let deadline = Instant::now() + wait_limit(timeout);
        let q = &self.queue;
        let got = engine_call(py, || {
            let mut c = lock(&q.claims);
            if let Some(o) = c.ready.remove(&key) {
                return Some(o);
            }
            *c.waiting.entry(key).or_insert(0) += 1;
            drop(c);
            let mut got = None;
            let limit = hangfree::spin::WAIT.min(deadline.saturating_duration_since(Instant::now()));
            hangfree::spin::poll_for(limit, || {
                let mut c = lock(&q.claims);
                got = c.ready.remove(&key);
                got.is_some() || c.finished.contains(&key)
            });
            let mut c = lock(&q.claims);
            while got.is_none() && !c.finished.contains(&key) {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                c = q.claims_cv.wait_timeout(c, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
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
        })?;
        got.map(|o| kind_and_data(py, key, o)).transpose()
    }

    /// Says that the claimable submission `key` is finished (its future is done); the
    /// threads waiting for it in `wait_claim` return.
    fn completed(&self, key: u64) {
        let mut c = lock(&self.queue.claims);
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
            self.queue.claims_cv.notify_all();
        }
    }

    /// The pool events since the last call, as `(kind, trouble, pid, task_id, message)`
    /// tuples (only with `events=True`).
    fn take_events(&self) -> Vec<EventTuple> {
        let mut q = lock(&self.queue.events);
        q.drain(..).map(|e| (format!("{:?}", e.kind), e.kind.is_trouble(), e.pid, e.task_id, e.message)).collect()
    }

    /// Cancels a task by id (a running one has its worker stopped).
    fn cancel(&self, py: Python<'_>, task_id: u64) -> PyResult<()> {
        engine_call(py, || self.pool.cancel(task_id))
    }

    /// Cancels a task only if no worker has it yet; returns whether it did.
    fn cancel_if_queued(&self, py: Python<'_>, task_id: u64) -> PyResult<bool> {
        engine_call(py, || self.pool.cancel_if_queued(task_id))
    }

    /// Where a task is: "queued" (no worker has it), "sent_ahead" (waiting in a busy
    /// worker's channel, not started), "running" (its worker has started it) or "done"
    /// (its outcome was delivered, or the id is unknown). A round trip to the supervisor
    /// thread, with the GIL released.
    fn task_state(&self, py: Python<'_>, task_id: u64) -> PyResult<&'static str> {
        Ok(match engine_call(py, || self.pool.task_state(task_id))? {
            TaskState::Queued => "queued",
            TaskState::SentAhead => "sent_ahead",
            TaskState::Running => "running",
            TaskState::Done => "done",
        })
    }

    /// Accepts no more tasks; workers exit after the queued ones.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        engine_call(py, || self.pool.close())
    }

    /// Ends every unfinished task as terminated and stops every worker.
    fn terminate(&self, py: Python<'_>) -> PyResult<()> {
        engine_call(py, || self.pool.terminate())
    }

    /// Waits for every worker to be gone, at most `timeout` seconds if given; returns
    /// whether it finished. Raises KeyboardInterrupt promptly on Ctrl-C.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = secs(timeout, "timeout")?.map(|d| Instant::now() + d);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
                None => SLICE,
            };
            match engine_call(py, || self.pool.join(Some(slice)))? {
                Ok(()) => {
                    // Wake the result thread from its wait: it sees the pool finished.
                    self.queue.cv.notify_all();
                    return Ok(true);
                }
                Err(hangfree::JoinError::StillOpen) => {
                    return Err(PyValueError::new_err("join() needs close() or terminate() first"));
                }
                Err(hangfree::JoinError::Timeout(_)) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            py.check_signals()?;
        }
    }

    /// Seconds `join` may take after `terminate`, at most (the engine's bound).
    #[getter]
    fn shutdown_bound(&self) -> f64 {
        self.pool.shutdown_bound().as_secs_f64()
    }

    /// Whether every worker is gone after close or terminate.
    fn is_finished(&self) -> bool {
        self.pool.is_finished()
    }

    /// The pool's counters, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.pool.stats();
        let d = PyDict::new(py);
        for (k, v) in [
            ("submitted", s.submitted),
            ("values", s.values),
            ("raised", s.raised),
            ("worker_lost", s.worker_lost),
            ("timed_out", s.timed_out),
            ("cancelled", s.cancelled),
            ("terminated", s.terminated),
            ("startup_failed", s.startup_failed),
            ("protocol_errors", s.protocol_errors),
            ("memory_limited", s.memory_limited),
            ("pool_failed", s.pool_failed),
            ("retries", s.retries),
            ("workers_spawned", s.workers_spawned),
            ("workers_lost", s.workers_lost),
            ("workers_recycled", s.workers_recycled),
            ("workers_abandoned", s.workers_abandoned),
            ("startup_failures", s.startup_failures),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// The start-up failure that broke the engine, as a dict, or None.
    fn startup_failure(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.pool.startup_failure().map(|f| failure_details(py, &f)).transpose()
    }
}

impl Engine {
    fn has_events(&self) -> bool {
        !lock(&self.queue.events).is_empty()
    }
}

/// A pool event as Python sees it: `(kind, trouble, pid, task_id, message)`.
type EventTuple = (String, bool, Option<i32>, Option<u64>, String);

/// The signal the Python worker answers with the running task's stack.
const STACK_SIGNAL: i32 = 10; // SIGUSR1

fn loss_fields(d: &Bound<'_, PyDict>, cause: &LossCause) -> PyResult<()> {
    match cause {
        LossCause::Exited(st) => status_fields(d, st),
        LossCause::ChannelClosed => d.set_item("channel_closed", true),
        LossCause::Stopped => d.set_item("stopped", true),
    }
}

fn status_fields(d: &Bound<'_, PyDict>, st: &ExitStatus) -> PyResult<()> {
    match *st {
        ExitStatus::Code(c) => d.set_item("exitcode", c)?,
        ExitStatus::Signal(s) => {
            d.set_item("signal", s)?;
            d.set_item("signal_name", hangfree::outcome::signal_name(s))?;
        }
        ExitStatus::Unknown => {}
    }
    Ok(())
}

fn failure_details(py: Python<'_>, f: &StartupFailure) -> PyResult<Py<PyAny>> {
    let d = PyDict::new(py);
    d.set_item("message", f.to_string())?;
    match f {
        StartupFailure::InitFailed { payload, stderr_tail } => {
            d.set_item("cause", "init_failed")?;
            d.set_item("payload", PyBytes::new(py, payload))?;
            d.set_item("stderr_tail", stderr_tail)?;
        }
        StartupFailure::ExitedEarly { status, stderr_tail } => {
            d.set_item("cause", "exited")?;
            status_fields(&d, status)?;
            d.set_item("stderr_tail", stderr_tail)?;
        }
        StartupFailure::Timeout(t) => {
            d.set_item("cause", "timeout")?;
            d.set_item("limit", t.as_secs_f64())?;
        }
        StartupFailure::Spawn(_) => d.set_item("cause", "spawn")?,
        StartupFailure::Broken(_) => d.set_item("cause", "broken")?,
    }
    Ok(d.into_any().unbind())
}

/// One outcome as `(kind, data)` (see `next_outcomes`).
fn kind_and_data<'py>(py: Python<'py>, key: u64, outcome: Outcome) -> PyResult<Bound<'py, PyAny>> {
    let t = outcome_tuple(py, Done { key, index: 0, outcome, items: (0, 1) })?;
    (t.get_item(2)?, t.get_item(3)?).into_pyobject(py).map(|t| t.into_any())
}

fn outcome_tuple<'py>(py: Python<'py>, done: Done) -> PyResult<Bound<'py, PyAny>> {
    let (kind, data): (&str, Bound<'py, PyAny>) = match done.outcome {
        Outcome::Value(v) => ("value", value_data(py, &v)?),
        Outcome::Raised(v) => ("raised", PyBytes::new(py, &v).into_any()),
        Outcome::Failed(e) => {
            let d = PyDict::new(py);
            d.set_item("message", e.to_string())?;
            d.set_item("task_id", e.task().id)?;
            let kind = match &e {
                TaskError::WorkerLost(w) => {
                    d.set_item("pid", w.pid)?;
                    d.set_item("stderr_tail", &w.stderr_tail)?;
                    d.set_item("probably_oom", w.probably_oom)?;
                    loss_fields(&d, &w.cause)?;
                    let attempts = pyo3::types::PyList::empty(py);
                    for a in &w.earlier {
                        let ad = PyDict::new(py);
                        ad.set_item("pid", a.pid)?;
                        loss_fields(&ad, &a.cause)?;
                        attempts.append(ad)?;
                    }
                    d.set_item("earlier_attempts", attempts)?;
                    d.set_item("finished", w.finished)?;
                    "worker_lost"
                }
                TaskError::TimedOut { limit, pid, stack, .. } => {
                    d.set_item("limit", limit.as_secs_f64())?;
                    d.set_item("pid", *pid)?;
                    d.set_item("stack", stack.as_deref())?;
                    "timed_out"
                }
                TaskError::MemoryLimit { pid, limit, peak, .. } => {
                    d.set_item("pid", *pid)?;
                    d.set_item("limit", *limit)?;
                    d.set_item("peak", *peak)?;
                    "memory_limit"
                }
                TaskError::Cancelled(_) => "cancelled",
                TaskError::Terminated(_) => "terminated",
                TaskError::StartupFailed { failure, .. } => {
                    d.set_item("failure", failure_details(py, failure)?)?;
                    "startup_failed"
                }
                TaskError::Protocol { pid, .. } => {
                    d.set_item("pid", *pid)?;
                    "protocol"
                }
                TaskError::PoolFailed { .. } => "pool_failed",
            };
            (kind, d.into_any())
        }
    };
    (done.key, done.index, kind, data, done.items.0, done.items.1).into_pyobject(py).map(|t| t.into_any())
}

/// A value's payload as `hangfree._pickling.loads` takes it: one `bytes`, or, for a large
/// payload with out-of-band buffers, a list of `bytes`: the head and pickle stream, then
/// each buffer. A large `bytes` result is then copied once, here, and the unpickler takes
/// that very object (copying it out of one joined `bytes` would be a second copy).
fn value_data<'py>(py: Python<'py>, v: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match oob_parts(v) {
        Some(parts) => Ok(pyo3::types::PyList::new(py, parts.into_iter().map(|r| PyBytes::new(py, &v[r])))?.into_any()),
        None => Ok(PyBytes::new(py, v).into_any()),
    }
}

/// Below this a payload is not worth splitting (`_pickling.OOB_MIN`, the smallest buffer
/// sent out of band).
const SPLIT_MIN: usize = 64 * 1024;

/// Where the parts of an out-of-band payload are, in `hangfree._pickling`'s layout
/// (PROTOCOL.md): `0x01`, a u32 buffer count, a u64 stream length, a u64 length per
/// buffer (top bit: writable), the stream, the buffers. `None` for anything else, or a
/// layout whose lengths do not add up (then `loads` gets the bytes and says what is wrong).
fn oob_parts(v: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    if v.len() < SPLIT_MIN || v[0] != 0x01 {
        return None;
    }
    let u64_at = |at: usize| Some(u64::from_le_bytes(v.get(at..at + 8)?.try_into().ok()?));
    let count = u32::from_le_bytes(v.get(1..5)?.try_into().ok()?) as usize;
    let stream_len = usize::try_from(u64_at(5)?).ok()?;
    let mut at = 13usize.checked_add(count.checked_mul(8)?)?.checked_add(stream_len)?;
    // Checked before anything is allocated for `count`, which comes from the payload.
    if at > v.len() {
        return None;
    }
    let mut parts = Vec::with_capacity(count + 1);
    parts.push(0..at);
    for i in 0..count {
        let n = usize::try_from(u64_at(13 + 8 * i)? & !(1 << 63)).ok()?;
        let end = at.checked_add(n)?;
        parts.push(at..end);
        at = end;
    }
    (at == v.len()).then_some(parts)
}

/// A payload given as bytes or as a list (or tuple) of bytes, as its parts.
fn payload_parts<'py>(payload: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    if let Ok(b) = payload.cast::<PyBytes>() {
        return Ok(vec![b.clone()]);
    }
    payload
        .try_iter()
        .map_err(|_| PyTypeError::new_err("a payload is bytes or a list of bytes"))?
        .map(|p| p?.cast_into::<PyBytes>().map_err(|_| PyTypeError::new_err("a payload part must be bytes")))
        .collect()
}

/// A payload as one buffer: its parts copied once, end to end.
fn payload_vec(payload: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = payload.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    let parts = payload_parts(payload)?;
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.as_bytes().len()).sum());
    for p in &parts {
        v.extend_from_slice(p.as_bytes());
    }
    Ok(v)
}

/// The worker's end of its channel (used by `hangfree._worker`).
#[pyclass(module = "hangfree._core")]
struct WorkerChannel {
    inner: Option<RawChannel>,
}

fn kind_from(k: u8) -> PyResult<Kind> {
    Kind::from_u8(k).ok_or_else(|| PyValueError::new_err(format!("unknown frame kind {k}")))
}

#[pymethods]
impl WorkerChannel {
    /// Takes the channel from stdin, puts /dev/null there, and arranges to die with the
    /// parent (raises OSError if the parent is already gone). In a process the pool
    /// started as its fork server, serves fork requests and returns only in each forked
    /// worker (with the interpreter's fork hooks run as `os.fork()` runs them).
    #[staticmethod]
    fn from_stdin(_py: Python<'_>) -> PyResult<WorkerChannel> {
        // The GIL stays held: a fork server has no other thread to give it to, and the
        // fork hooks need it.
        Ok(WorkerChannel { inner: Some(RawChannel::from_stdin_with(&mut InterpreterForkHooks)?) })
    }

    /// The next frame as `(kind, task_id, payload)`, or None when the pool closed the
    /// channel. The GIL is released while waiting.
    fn recv<'py>(&mut self, py: Python<'py>) -> PyResult<Option<(u8, u64, Bound<'py, PyBytes>)>> {
        let ch = self.inner.as_mut().ok_or_else(|| PyRuntimeError::new_err("channel closed"))?;
        let err = |e: hangfree::wire::ReadError| PyRuntimeError::new_err(e.to_string());
        let Some((kind, task_id, len)) = py.detach(|| ch.recv_header()).map_err(err)? else {
            return Ok(None);
        };
        // The payload is read straight into the new bytes object (its bytes are already
        // on their way: the GIL is held only while they are copied in).
        let payload = PyBytes::new_with(py, len, |buf| ch.recv_payload(buf).map_err(err))?;
        Ok(Some((kind as u8, task_id, payload)))
    }

    /// Sends one frame; `payload` is bytes, or a list of bytes objects sent one after
    /// the other as one payload (no joining copy).
    fn send(&mut self, py: Python<'_>, kind: u8, task_id: u64, payload: &Bound<'_, PyAny>) -> PyResult<()> {
        let kind = kind_from(kind)?;
        let ch = self.inner.as_mut().ok_or_else(|| PyRuntimeError::new_err("channel closed"))?;
        let parts = payload_parts(payload)?;
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        py.detach(|| ch.send_parts(kind, task_id, &slices))?;
        Ok(())
    }

    /// Closes the channel.
    fn close(&mut self) {
        self.inner = None;
    }

    /// The items `start..len(items)` of a chunk, as an iterator that marks each item's
    /// start on the progress page (see `ChunkItems`).
    fn items(&self, items: Bound<'_, PyAny>, start: usize) -> PyResult<ChunkItems> {
        let ch = self.inner.as_ref().ok_or_else(|| PyRuntimeError::new_err("channel closed"))?;
        let end = items.len()?;
        Ok(ChunkItems {
            page: ch.page(),
            items: items.unbind(),
            next: start,
            end,
            flushed_at: hangfree::page::coarse_ns(),
            since_flush: 0,
            revoked: false,
        })
    }
}

/// How long a chunk's finished items may wait in the worker before their outcomes are
/// sent (in nanoseconds of the coarse clock: 5 ms to 5 ms and a tick). What a crash can
/// lose (their results; they are never run again) against the cost of a message: each
/// costs the worker, the supervisor and the caller some 50 µs, 10 % of a CPU per worker
/// at one a millisecond.
const FLUSH_EVERY_NS: u64 = 5_000_000;

/// A chunk's items for the worker's loop (`list.extend(map(fn, items))`, which runs in C):
/// each `next` marks the item's start on the progress page, so a death or a time limit is
/// pinned on it and the items after it run elsewhere. It stops early — StopIteration, to
/// be resumed — when finished items have waited `FLUSH_EVERY_NS`, and for good
/// when the pool revoked the page (`revoked`: the worker must exit without starting more).
#[pyclass(module = "hangfree._core")]
struct ChunkItems {
    page: Arc<hangfree::page::Page>,
    items: Py<PyAny>,
    next: usize,
    end: usize,
    flushed_at: u64,
    since_flush: usize,
    revoked: bool,
}

#[pymethods]
impl ChunkItems {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if self.next >= self.end || self.revoked {
            return Ok(None);
        }
        if self.since_flush > 0 && hangfree::page::coarse_ns().saturating_sub(self.flushed_at) >= FLUSH_EVERY_NS {
            return Ok(None);
        }
        let i = self.next;
        if !self.page.start_item(u32::try_from(i).unwrap_or(u32::MAX)) {
            self.revoked = true;
            return Ok(None);
        }
        self.next += 1;
        self.since_flush += 1;
        Ok(Some(self.items.bind(py).get_item(i)?.unbind()))
    }

    /// The index of the next item to start.
    #[getter]
    fn next_index(&self) -> usize {
        self.next
    }

    /// Every item has started.
    #[getter]
    fn done(&self) -> bool {
        self.next >= self.end
    }

    /// The pool revoked this worker: it must start nothing more.
    #[getter]
    fn revoked(&self) -> bool {
        self.revoked
    }

    /// The finished items' outcomes were sent: the next wait for a flush starts now.
    fn flushed(&mut self) {
        self.since_flush = 0;
        self.flushed_at = hangfree::page::coarse_ns();
    }
}

/// The interpreter's own fork bookkeeping (import lock, thread states, functions given to
/// `os.register_at_fork`), run around the fork server's forks as `os.fork()` runs it.
struct InterpreterForkHooks;

impl ForkHooks for InterpreterForkHooks {
    fn before(&mut self) {
        // SAFETY: called with the GIL held (from_stdin holds it throughout).
        unsafe { pyo3::ffi::PyOS_BeforeFork() }
    }
    fn after_in_parent(&mut self) {
        // SAFETY: as above, in the process that called PyOS_BeforeFork.
        unsafe { pyo3::ffi::PyOS_AfterFork_Parent() }
    }
    fn after_in_child(&mut self) {
        // SAFETY: as above, in the new single-threaded child.
        unsafe { pyo3::ffi::PyOS_AfterFork_Child() }
    }
}

/// Ends this worker and its whole process group at once (its channel ended without a
/// Shutdown frame: the pool is gone or is stopping it).
#[pyfunction]
fn kill_own_group() {
    hangfree::worker::kill_own_group()
}

/// Parses a memory size such as "2GiB" or "512MB" into bytes (the engine's rules).
#[pyfunction]
fn parse_size(text: &str) -> PyResult<u64> {
    hangfree::memory::parse_size(text).map_err(PyValueError::new_err)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add_function(wrap_pyfunction!(kill_own_group, m)?)?;
    m.add_class::<Engine>()?;
    m.add_class::<WorkerChannel>()?;
    m.add_class::<ChunkItems>()?;
    m.add("SubmitRefused", m.py().get_type::<SubmitRefused>())?;
    for (name, k) in [
        ("KIND_INIT", Kind::Init),
        ("KIND_TASK", Kind::Task),
        ("KIND_SHUTDOWN", Kind::Shutdown),
        ("KIND_READY", Kind::Ready),
        ("KIND_INIT_FAILED", Kind::InitFailed),
        ("KIND_VALUE", Kind::Value),
        ("KIND_RAISED", Kind::Raised),
        ("KIND_STACK", Kind::Stack),
        ("KIND_CHUNK", Kind::Chunk),
        ("KIND_ITEMS", Kind::Items),
    ] {
        m.add(name, k as u8)?;
    }
    Ok(())
}
