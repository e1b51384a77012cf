//! `hangfree._core`: the engine as seen from Python.
//!
//! Deliberately thin. Payloads are bytes (the Python package pickles); outcomes go to the
//! engine's [`Mailbox`], one per engine, which the package's result thread drains. The
//! engine's supervisor thread never touches Python objects or the GIL: it only pushes
//! plain Rust values into that mailbox. Every blocking call here releases the GIL (through
//! `gate::detach`, which keeps a thread from taking it back once the interpreter is
//! exiting) and wakes at least every 50 ms to let Python run its signal handlers (Ctrl-C).

mod cli;
mod gate;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use hangfree::fork_server::ForkHooks;
use hangfree::mailbox::{Delivery, Mailbox};
use hangfree::wire::Kind;
use hangfree::worker::WorkerChannel as RawChannel;
use hangfree::{
    ExitStatus, LossCause, Outcome, Pool, SharedPart, StartupFailure, SubmitError, Task, TaskError, TaskState,
    WorkerCommand,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyIterator, PySlice};

/// How often blocking calls come back to check for signals.
const SLICE: Duration = Duration::from_millis(50);

pyo3::create_exception!(_core, SubmitRefused, PyRuntimeError, "The engine refused a submission.");

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
    gate::detach(py, || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))).map_err(|p| {
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
    mailbox: Arc<Mailbox>,
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (argv, *, workers=None, task_timeout=None, grace=None, kill_wait=None,
        startup_timeout=None, max_tasks_per_worker=None, max_startup_failures=None,
        init_payload=Vec::new(), prefetch=None, forward_stderr=None, env=Vec::new(),
        max_memory=None, retries=None, events=false, cgroup=None, fork_server=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        argv: Vec<String>,
        workers: Option<usize>,
        task_timeout: Option<f64>,
        grace: Option<f64>,
        kill_wait: Option<f64>,
        startup_timeout: Option<f64>,
        max_tasks_per_worker: Option<u64>,
        max_startup_failures: Option<u32>,
        init_payload: Vec<u8>,
        prefetch: Option<usize>,
        forward_stderr: Option<bool>,
        env: Vec<(String, String)>,
        max_memory: Option<u64>,
        retries: Option<Bound<'_, PyAny>>,
        events: bool,
        cgroup: Option<bool>,
        fork_server: Option<bool>,
    ) -> PyResult<Engine> {
        let Some((program, args)) = argv.split_first() else {
            return Err(PyValueError::new_err("argv must name the worker program"));
        };
        let mut cmd = WorkerCommand::new(program).args(args);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        // The Python worker supports the fork server and answers the stack signal. Every
        // setting not given (None) keeps the engine's default.
        let mut b = Pool::builder(cmd).front_defaults().init_payload(init_payload);
        if let Some(n) = workers {
            b = b.workers(n);
        }
        if let Some(t) = secs(task_timeout, "task_timeout")? {
            b = b.task_timeout(t);
        }
        if let Some(g) = secs(grace, "grace")? {
            b = b.grace(g);
        }
        if let Some(w) = secs(kill_wait, "kill_wait")? {
            b = b.kill_wait(w);
        }
        if let Some(t) = secs(startup_timeout, "startup_timeout")? {
            b = b.startup_timeout(t);
        }
        if let Some(n) = max_tasks_per_worker {
            b = b.max_tasks_per_worker(n);
        }
        if let Some(n) = max_startup_failures {
            b = b.max_startup_failures(n);
        }
        if let Some(n) = prefetch {
            b = b.prefetch(n);
        }
        if let Some(on) = forward_stderr {
            b = b.forward_stderr(on);
        }
        if let Some(m) = max_memory {
            b = b.max_memory(m);
        }
        if let Some(n) = retries.as_ref().map(retries_count).transpose()? {
            b = b.retries(n);
        }
        if let Some(on) = cgroup {
            b = b.cgroup(on);
        }
        if let Some(on) = fork_server {
            b = b.fork_server(on);
        }
        let mailbox = Arc::new(Mailbox::default());
        if events {
            let m = mailbox.clone();
            b = b.on_event(move |e| m.push_event(e.clone()));
        }
        let pool = engine_call(py, || b.build())?.map_err(|e| match e {
            hangfree::BuildError::Invalid(m) => PyValueError::new_err(m),
            other => PyRuntimeError::new_err(other.to_string()),
        })?;
        Ok(Engine { pool, mailbox })
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
        let payloads: Vec<(Vec<u8>, Vec<SharedPart>)> = payloads.iter().map(payload_task).collect::<PyResult<_>>()?;
        let tasks: Vec<Task> = payloads
            .into_iter()
            .map(|(p, shared)| {
                let mut t = match items.as_mut().and_then(|i| i.next()) {
                    Some(n) => Task::chunk(p, n),
                    None => Task::new(p),
                };
                if !shared.is_empty() {
                    t = t.with_shared(shared);
                }
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
        let sink = self.mailbox.sink(key, claim);
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
        let items: Vec<Delivery> = loop {
            let got =
                engine_call(py, || self.mailbox.take(deadline.saturating_duration_since(Instant::now()).min(SLICE)))?;
            // A finished pool has nothing more to say: let the result thread go at once.
            if !got.is_empty() || Instant::now() >= deadline || self.mailbox.has_events() || self.pool.is_finished() {
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
        let got = engine_call(py, || self.mailbox.wait_claim(key, wait_limit(timeout)))?;
        got.map(|o| kind_and_data(py, key, o)).transpose()
    }

    /// Says that the claimable submission `key` is finished (its future is done); the
    /// threads waiting for it in `wait_claim` return.
    fn completed(&self, key: u64) {
        self.mailbox.completed(key)
    }

    /// The pool events since the last call, as `(kind, trouble, pid, task_id, message)`
    /// tuples (only with `events=True`).
    fn take_events(&self) -> Vec<EventTuple> {
        let events = self.mailbox.take_events();
        events
            .into_iter()
            .map(|e| (format!("{:?}", e.kind), e.kind.is_trouble(), e.pid, e.task_id, e.message))
            .collect()
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
                    self.mailbox.wake();
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

    /// The number of workers the engine keeps.
    #[getter]
    fn workers(&self) -> usize {
        self.pool.workers()
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

/// A pool event as Python sees it: `(kind, trouble, pid, task_id, message)`.
type EventTuple = (String, bool, Option<i32>, Option<u64>, String);

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
    let t = outcome_tuple(py, Delivery { key, index: 0, outcome, items: (0, 1) })?;
    (t.get_item(2)?, t.get_item(3)?).into_pyobject(py).map(|t| t.into_any())
}

fn outcome_tuple<'py>(py: Python<'py>, done: Delivery) -> PyResult<Bound<'py, PyAny>> {
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
/// payload with out-of-band buffers, a list: the pickle stream (`bytes`), then each
/// buffer (`bytes`, or `bytearray` where it was writable). A large `bytes` result is then
/// copied once, here, and the unpickler takes that very object (copying it out of one
/// joined `bytes` would be a second copy).
fn value_data<'py>(py: Python<'py>, v: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    // A layout whose lengths do not add up goes to `loads` whole, which says what is wrong.
    let layout = if v.len() < SPLIT_MIN { None } else { hangfree::oob::parse(v).ok().flatten() };
    let Some(layout) = layout else {
        return Ok(PyBytes::new(py, v).into_any());
    };
    let parts = pyo3::types::PyList::new(py, [PyBytes::new(py, &v[layout.stream])])?;
    for (r, writable) in layout.buffers {
        if writable {
            parts.append(PyByteArray::new(py, &v[r]))?;
        } else {
            parts.append(PyBytes::new(py, &v[r]))?;
        }
    }
    Ok(parts.into_any())
}

/// Below this a payload is not worth splitting (`_pickling.OOB_MIN`, the smallest buffer
/// sent out of band).
const SPLIT_MIN: usize = 64 * 1024;

/// The head of a payload with out-of-band buffers (PROTOCOL.md): for a pickle stream of
/// `stream_len` bytes and buffers of these `(length, writable)`.
#[pyfunction]
fn oob_head<'py>(py: Python<'py>, stream_len: usize, buffers: Vec<(usize, bool)>) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &hangfree::oob::head(stream_len, &buffers))
}

/// Where the pickle stream and the buffers of `data[:end]` are, as `((start, end),
/// [(start, end, writable), ...])`, or None for a payload without out-of-band buffers.
/// Raises ValueError for one whose lengths do not add up.
#[pyfunction]
#[pyo3(signature = (data, end=None))]
#[allow(clippy::type_complexity)]
fn oob_layout(data: &[u8], end: Option<usize>) -> PyResult<Option<((usize, usize), Vec<(usize, usize, bool)>)>> {
    let data = &data[..end.unwrap_or(data.len()).min(data.len())];
    let layout = hangfree::oob::parse(data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(layout.map(|l| {
        let buffers = l.buffers.into_iter().map(|(r, w)| (r.start, r.end, w)).collect();
        ((l.stream.start, l.stream.end), buffers)
    }))
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

/// A payload for a task: its first small parts copied, end to end, and every part from
/// the first large one on shared, not copied (see [`PyPart`]).
fn payload_task(payload: &Bound<'_, PyAny>) -> PyResult<(Vec<u8>, Vec<SharedPart>)> {
    if let Ok(b) = payload.cast::<PyBytes>() {
        return Ok((b.as_bytes().to_vec(), Vec::new()));
    }
    let parts = payload_parts(payload)?;
    let mut own = Vec::new();
    let mut shared: Vec<SharedPart> = Vec::new();
    for p in parts {
        if shared.is_empty() && p.as_bytes().len() < SPLIT_MIN {
            own.extend_from_slice(p.as_bytes());
        } else {
            shared.push(Arc::new(PyPart::new(p)));
        }
    }
    Ok((own, shared))
}

/// A large part of a payload (a `bytes` buffer sent out of band), read by the engine
/// where the object holds it: a copy of it would cost as much as sending it. A `bytes`
/// object never changes, and the reference keeps it alive until the task is done (the
/// engine may drop it without the GIL: pyo3 then defers the decref).
struct PyPart {
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are immutable and live as long as `_obj`; nothing else is touched.
unsafe impl Send for PyPart {}
unsafe impl Sync for PyPart {}

impl PyPart {
    fn new(b: Bound<'_, PyBytes>) -> PyPart {
        let s = b.as_bytes();
        PyPart { ptr: s.as_ptr(), len: s.len(), _obj: b.unbind() }
    }
}

impl AsRef<[u8]> for PyPart {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the type's comment.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
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
    /// A task's payload with out-of-band buffers that came through the arena is given as
    /// its parts (as `value_data` makes them): each buffer is copied once, out of the
    /// arena, into the object the unpickler takes as it is.
    fn recv<'py>(&mut self, py: Python<'py>) -> PyResult<Option<(u8, u64, Bound<'py, PyAny>)>> {
        let ch = self.inner.as_mut().ok_or_else(|| PyRuntimeError::new_err("channel closed"))?;
        let err = |e: hangfree::wire::ReadError| PyRuntimeError::new_err(e.to_string());
        let Some((kind, task_id, len)) = gate::detach(py, || ch.recv_header()).map_err(err)? else {
            return Ok(None);
        };
        if kind == Kind::Task
            && let Some(payload) = ch.arena_payload()
        {
            return Ok(Some((kind as u8, task_id, value_data(py, payload)?)));
        }
        // The payload is read straight into the new bytes object (its bytes are already
        // on their way: the GIL is held only while they are copied in).
        let payload = PyBytes::new_with(py, len, |buf| ch.recv_payload(buf).map_err(err))?;
        Ok(Some((kind as u8, task_id, payload.into_any())))
    }

    /// Sends one frame; `payload` is bytes, or a list of bytes objects sent one after
    /// the other as one payload (no joining copy).
    fn send(&mut self, py: Python<'_>, kind: u8, task_id: u64, payload: &Bound<'_, PyAny>) -> PyResult<()> {
        let kind = kind_from(kind)?;
        let ch = self.inner.as_mut().ok_or_else(|| PyRuntimeError::new_err("channel closed"))?;
        let parts = payload_parts(payload)?;
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        gate::detach(py, || ch.send_parts(kind, task_id, &slices))?;
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
            items: items.get_item(PySlice::new(items.py(), start as isize, end as isize, 1))?.try_iter()?.unbind(),
            next: AtomicUsize::new(start),
            end,
            flushed_at: AtomicU64::new(hangfree::page::coarse_ns()),
            since_flush: AtomicUsize::new(0),
            revoked: AtomicBool::new(false),
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
///
/// Frozen, its counters in relaxed atomics (plain loads and stores on x86): only the
/// worker's main thread uses it, and a `&mut self` method would pay PyO3's borrow check
/// on every item.
#[pyclass(module = "hangfree._core", frozen)]
struct ChunkItems {
    page: Arc<hangfree::page::Page>,
    /// The items from the first to start on, by the sequence's own iterator: a `range`
    /// (what `map` over a range sends) or a list yields each item in a few nanoseconds,
    /// where indexing (`__getitem__` with an int object, a range's bounds checked in
    /// Python ints) cost as much as a cheap task.
    items: Py<PyIterator>,
    next: AtomicUsize,
    end: usize,
    flushed_at: AtomicU64,
    since_flush: AtomicUsize,
    revoked: AtomicBool,
}

#[pymethods]
impl ChunkItems {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let i = self.next.load(Relaxed);
        if i >= self.end || self.revoked.load(Relaxed) {
            return Ok(None);
        }
        let now = hangfree::page::coarse_ns();
        let since_flush = self.since_flush.load(Relaxed);
        if since_flush > 0 && now.saturating_sub(self.flushed_at.load(Relaxed)) >= FLUSH_EVERY_NS {
            return Ok(None);
        }
        if !self.page.start_item_at(u32::try_from(i).unwrap_or(u32::MAX), now) {
            self.revoked.store(true, Relaxed);
            return Ok(None);
        }
        self.next.store(i + 1, Relaxed);
        self.since_flush.store(since_flush + 1, Relaxed);
        // SAFETY: `items` is an iterator object kept alive by `self`; PyIter_Next returns
        // a new reference, or null at the end or on an error (which PyErr::take tells apart).
        let item = unsafe { pyo3::ffi::PyIter_Next(self.items.as_ptr()) };
        if item.is_null() {
            return Err(PyErr::take(py).unwrap_or_else(|| {
                PyRuntimeError::new_err(format!("the chunk's items ended at item {i}, before its end"))
            }));
        }
        // SAFETY: a new, non-null reference, owned from here on.
        Ok(Some(unsafe { Bound::from_owned_ptr(py, item) }.unbind()))
    }

    /// How many items are left: `list.extend(map(...))` sizes the list once from it.
    fn __length_hint__(&self) -> usize {
        if self.revoked.load(Relaxed) { 0 } else { self.end.saturating_sub(self.next.load(Relaxed)) }
    }

    /// The index of the next item to start.
    #[getter]
    fn next_index(&self) -> usize {
        self.next.load(Relaxed)
    }

    /// Every item has started.
    #[getter]
    fn done(&self) -> bool {
        self.next.load(Relaxed) >= self.end
    }

    /// The pool revoked this worker: it must start nothing more.
    #[getter]
    fn revoked(&self) -> bool {
        self.revoked.load(Relaxed)
    }

    /// The finished items' outcomes were sent: the next wait for a flush starts now.
    fn flushed(&self) {
        self.since_flush.store(0, Relaxed);
        self.flushed_at.store(hangfree::page::coarse_ns(), Relaxed);
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

/// Stops the fork servers that ended pools kept for later ones (see
/// `PoolBuilder::keep_fork_server`); pools that end from now until the next one starts
/// keep none. Returns how many were stopped.
#[pyfunction]
fn release_fork_servers(py: Python<'_>) -> usize {
    gate::detach(py, hangfree::fork_server::release_kept)
}

/// The engine's default for every `Engine` setting left at None, as Python values
/// (seconds as floats; None for "no limit"), for the package's docstrings to be checked
/// against.
#[pyfunction]
fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    use hangfree::pool::defaults as d;
    let out = PyDict::new(py);
    out.set_item("workers", d::workers())?;
    out.set_item("task_timeout", py.None())?;
    out.set_item("grace", d::GRACE.as_secs_f64())?;
    out.set_item("kill_wait", d::KILL_WAIT.as_secs_f64())?;
    out.set_item("startup_timeout", d::STARTUP_TIMEOUT.as_secs_f64())?;
    out.set_item("max_tasks_per_worker", py.None())?;
    out.set_item("max_startup_failures", d::MAX_STARTUP_FAILURES)?;
    out.set_item("prefetch", d::PREFETCH)?;
    out.set_item("prefetch_below", d::FRONT_PREFETCH_BELOW.as_secs_f64())?;
    out.set_item("forward_stderr", d::FORWARD_STDERR)?;
    out.set_item("max_memory", py.None())?;
    out.set_item("retries", d::RETRIES)?;
    out.set_item("cgroup", d::CGROUP)?;
    out.set_item("fork_server", d::FRONT_FORK_SERVER)?;
    out.set_item("keep_fork_server", d::FRONT_KEEP_FORK_SERVER.as_secs_f64())?;
    out.set_item("stack_dump_signal", d::STACK_DUMP_SIGNAL)?;
    out.set_item("stack_dump_wait", d::STACK_DUMP_WAIT.as_secs_f64())?;
    Ok(out)
}

/// Parses a memory size such as "2GiB" or "512MB" into bytes (the engine's rules).
#[pyfunction]
fn parse_size(text: &str) -> PyResult<u64> {
    hangfree::memory::parse_size(text).map_err(PyValueError::new_err)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add_function(wrap_pyfunction!(defaults, m)?)?;
    m.add_function(wrap_pyfunction!(oob_head, m)?)?;
    m.add_function(wrap_pyfunction!(oob_layout, m)?)?;
    m.add("OOB_MARKER", hangfree::oob::MARKER)?;
    m.add("STACK_DUMP_SIGNAL", hangfree::pool::defaults::STACK_DUMP_SIGNAL)?;
    m.add_function(wrap_pyfunction!(kill_own_group, m)?)?;
    m.add_function(wrap_pyfunction!(release_fork_servers, m)?)?;
    m.add_function(wrap_pyfunction!(gate::close_gate, m)?)?;
    m.add_function(wrap_pyfunction!(gate::parked_threads, m)?)?;
    m.add_function(wrap_pyfunction!(cli::cli_main, m)?)?;
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
