//! `hangfree-soak`: a soak test of the hangfree engine against its hostile worker.
//!
//! ```sh
//! cargo run --release -p hangfree-soak -- --quick      # 20,000 tasks (CI)
//! cargo run --release -p hangfree-soak                  # 200,000 tasks
//! ```
//!
//! Each task is normal (the worker echoes a payload carrying a checksum the soak verifies)
//! or, with probability `--fault-rate` per kind (1 % by default), one fault, through the
//! hostile worker's commands: `!exit 3`, `!segv`, `!abort`, `!kill-self` (the worker
//! SIGKILLs itself), `!sleep` past a 100 ms per-task limit, `!ignore-term` past that limit
//! (the pool must escalate to SIGKILL), `!garbage` (bytes that are not a frame), `!wrong-id`
//! (a well-formed frame for a task the worker was not given), `!raise`, and `!grandchild`
//! (leaves a SIGTERM-ignoring grandchild holding the channel). Tasks go in groups,
//! alternately one per dispatch and in chunks of 4, so a worker dying mid-chunk is covered.
//!
//! It checks that every task gets exactly one outcome, of the kind its fault calls for,
//! that every value is right, and after the pool is joined: no process of ours left
//! (through /proc, by an environment marker every worker and grandchild inherits, and by
//! the grandchild pids reported), no zombie child, no descriptor or thread left, the RSS
//! grown by less than 20 MiB after warm-up. Prints a table; exits 1 on any violation.
//!
//! The worker is `hangfree-hostile`, found with `--worker PATH`, `$HANGFREE_HOSTILE`, or
//! next to this binary; under `cargo run` it is built there first if missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hangfree::{ExitStatus, LossCause, Outcome, Pool, Sink, Task, TaskError, WorkerCommand};

const TAG_VAR: &str = "HANGFREE_SOAK_TAG";
const RSS_LIMIT: u64 = 20 << 20;
const TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Normal,
    Exit,
    Segfault,
    Abort,
    SigKill,
    Timeout,
    StubbornTimeout,
    Garbage,
    WrongId,
    Raise,
    Grandchild,
}

const FAULTS: [Kind; 10] = [
    Kind::Exit,
    Kind::Segfault,
    Kind::Abort,
    Kind::SigKill,
    Kind::Timeout,
    Kind::StubbornTimeout,
    Kind::Garbage,
    Kind::WrongId,
    Kind::Raise,
    Kind::Grandchild,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::Exit => "exit",
            Kind::Segfault => "segfault",
            Kind::Abort => "abort",
            Kind::SigKill => "sigkill",
            Kind::Timeout => "timeout",
            Kind::StubbornTimeout => "timeout, ignores SIGTERM",
            Kind::Garbage => "garbage frame",
            Kind::WrongId => "frame with a wrong id",
            Kind::Raise => "raise",
            Kind::Grandchild => "grandchild left running",
        }
    }

    fn task(self, i: usize) -> Task {
        let p = match self {
            Kind::Normal => format!("n {i} {}", checksum(i as u64)),
            Kind::Exit => "!exit 3".into(),
            Kind::Segfault => "!segv".into(),
            Kind::Abort => "!abort".into(),
            Kind::SigKill => "!kill-self".into(),
            Kind::Timeout => "!sleep 60000".into(),
            Kind::StubbornTimeout => "!ignore-term 60000".into(),
            Kind::Garbage => "!garbage".into(),
            Kind::WrongId => "!wrong-id".into(),
            Kind::Raise => format!("!raise soak {i}"),
            Kind::Grandchild => "!grandchild".into(),
        };
        let t = Task::new(p.into_bytes());
        match self {
            Kind::Timeout | Kind::StubbornTimeout => t.timeout(TIMEOUT),
            _ => t,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Normal | Kind::Grandchild => "value",
            Kind::Exit => "lost: exit code 3",
            Kind::Segfault => "lost: SIGSEGV",
            Kind::Abort => "lost: SIGABRT",
            Kind::SigKill => "lost: SIGKILL",
            Kind::Timeout | Kind::StubbornTimeout => "timed out",
            Kind::Garbage | Kind::WrongId => "protocol error",
            Kind::Raise => "raised",
        }
    }
}

fn checksum(i: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for k in 0..16 {
        h = (h ^ (i + k)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The outcome of a task started by a worker the pool stopped for another task's fault.
const STOPPED: &str = "lost: stopped for another task";

fn outcome_name(o: &Outcome) -> String {
    match o {
        Outcome::Value(_) => "value".into(),
        Outcome::Raised(_) => "raised".into(),
        Outcome::Failed(TaskError::WorkerLost(w)) => match w.cause {
            LossCause::Exited(ExitStatus::Code(c)) => format!("lost: exit code {c}"),
            LossCause::Exited(ExitStatus::Signal(s)) => {
                format!("lost: {}", hangfree::outcome::signal_name(s).map(str::to_owned).unwrap_or(s.to_string()))
            }
            LossCause::Exited(ExitStatus::Unknown) => "lost: unknown status".into(),
            LossCause::ChannelClosed => "lost: channel closed".into(),
            LossCause::Stopped => STOPPED.into(),
        },
        Outcome::Failed(TaskError::TimedOut { .. }) => "timed out".into(),
        Outcome::Failed(TaskError::Protocol { .. }) => "protocol error".into(),
        Outcome::Failed(TaskError::MemoryLimit { .. }) => "memory limit".into(),
        Outcome::Failed(TaskError::Cancelled(_)) => "cancelled".into(),
        Outcome::Failed(TaskError::Terminated(_)) => "terminated".into(),
        Outcome::Failed(TaskError::StartupFailed { .. }) => "startup failed".into(),
        Outcome::Failed(TaskError::PoolFailed { .. }) => "pool failed".into(),
    }
}

// ----- bookkeeping --------------------------------------------------------------------

#[derive(Default)]
struct Inner {
    calls: Vec<u8>,
    outcomes: BTreeMap<String, u64>,
    violations: Vec<String>,
    grandchildren: Vec<i32>,
    done: usize,
    inflight: usize,
}

struct State {
    kinds: Vec<Kind>,
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl State {
    fn record(&self, i: usize, o: Outcome) {
        let kind = self.kinds[i];
        let name = outcome_name(&o);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.calls[i] = g.calls[i].saturating_add(1);
        if g.calls[i] > 1 {
            g.violations.push(format!("task {i} ({}) got a second outcome: {name}", kind.name()));
            return;
        }
        g.done += 1;
        g.inflight -= 1;
        *g.outcomes.entry(name.clone()).or_default() += 1;
        if name == STOPPED {
            // Sent ahead to a worker that answered with a wrong id and went on to start
            // it: the pool stops such a worker, and what it started is not run again
            // (at most once). Counted against the wrong-id faults below.
        } else if name != kind.expected() {
            let text = format!("task {i} ({}): expected {}, got {o:?}", kind.name(), kind.expected());
            g.violations.push(text.chars().take(400).collect());
        } else {
            match (kind, &o) {
                (Kind::Normal, Outcome::Value(v)) if *v != format!("n {i} {}", checksum(i as u64)).into_bytes() => {
                    g.violations.push(format!("task {i}: wrong value {:?}", String::from_utf8_lossy(v)));
                }
                (Kind::Raise, Outcome::Raised(v)) if *v != format!("soak {i}").into_bytes() => {
                    g.violations
                        .push(format!("task {i}: raised another task's error {:?}", String::from_utf8_lossy(v)));
                }
                (Kind::Grandchild, Outcome::Value(v)) => match String::from_utf8_lossy(v).parse::<i32>() {
                    Ok(pid) => g.grandchildren.push(pid),
                    Err(_) => g.violations.push(format!("task {i}: grandchild answer {v:?} is not a pid")),
                },
                _ => {}
            }
        }
        drop(g);
        self.cv.notify_all();
    }
}

struct SoakSink {
    base: usize,
    state: Arc<State>,
}

impl Sink for SoakSink {
    fn complete(&self, index: usize, outcome: Outcome) {
        self.state.record(self.base + index, outcome);
    }
}

// ----- /proc --------------------------------------------------------------------------

fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    Some((f.next()?.chars().next()?, f.next()?.parse().ok()?))
}

fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn tagged(tag: &str) -> BTreeSet<i32> {
    let needle = format!("{TAG_VAR}={tag}\0");
    all_pids()
        .into_iter()
        .filter(|&pid| pid != std::process::id() as i32)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|&p| alive(p))
        .collect()
}

fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids().into_iter().filter(|&p| matches!(stat(p), Some(('Z', pp)) if pp == me)).collect()
}

fn fds() -> BTreeMap<String, String> {
    let listing = format!("/proc/{}/fd", std::process::id());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let t = std::fs::read_link(e.path()).ok()?.display().to_string();
            (t != listing).then(|| (e.file_name().to_string_lossy().into_owned(), t))
        })
        .collect()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().to_owned()))
        })
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn wait_gone(pids: &BTreeSet<i32>, limit: Duration) -> Vec<i32> {
    let t0 = Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || t0.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- the worker -----------------------------------------------------------------------

fn hostile(arg: Option<String>) -> Result<PathBuf, String> {
    if let Some(p) = arg.or_else(|| std::env::var("HANGFREE_HOSTILE").ok()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no directory for this binary")?;
    let path = dir.join("hangfree-hostile");
    if path.exists() {
        return Ok(path);
    }
    // Under `cargo run`, build the worker into the same profile directory.
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut c = std::process::Command::new(cargo);
        c.args(["build", "-q", "-p", "hangfree-hostile"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let ok = c.status().map(|s| s.success()).unwrap_or(false);
        if ok && path.exists() {
            return Ok(path);
        }
    }
    Err(format!(
        "hostile worker not found at {}; build it first: cargo build --release -p hangfree-hostile",
        path.display()
    ))
}

// ----- the run --------------------------------------------------------------------------

struct Args {
    tasks: usize,
    quick: bool,
    rate: f64,
    workers: usize,
    window: usize,
    seed: u64,
    worker: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args { tasks: 200_000, quick: false, rate: 0.01, workers: 4, window: 256, seed: 1, worker: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| die(&format!("{name} needs a value")));
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--tasks" => a.tasks = val("--tasks").parse().unwrap_or_else(|_| die("--tasks N")),
            "--fault-rate" => a.rate = val("--fault-rate").parse().unwrap_or_else(|_| die("--fault-rate P")),
            "--workers" => a.workers = val("--workers").parse().unwrap_or_else(|_| die("--workers N")),
            "--window" => a.window = val("--window").parse().unwrap_or_else(|_| die("--window N")),
            "--seed" => a.seed = val("--seed").parse().unwrap_or_else(|_| die("--seed N")),
            "--worker" => a.worker = Some(val("--worker")),
            "-h" | "--help" => {
                println!(
                    "hangfree-soak [--quick | --tasks N] [--fault-rate P] [--workers N] [--window N] [--seed N] [--worker PATH]"
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other}")),
        }
    }
    if a.quick {
        a.tasks = 20_000;
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("hangfree-soak: {msg}");
    std::process::exit(2)
}

struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() {
    let a = parse_args();
    let bin = hostile(a.worker.clone()).unwrap_or_else(|e| die(&e));
    let n = a.tasks;
    let limit = Duration::from_secs_f64(60.0 + n as f64 * 0.002);
    // A hang anywhere ends the soak: exit 1 (the workers die with us, PDEATHSIG).
    std::thread::Builder::new()
        .name("soak-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit + Duration::from_secs(30));
            eprintln!("hangfree-soak: HANG: still running after {:?}", limit + Duration::from_secs(30));
            std::process::exit(1);
        })
        .unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let tag = format!("{}-{nanos}", std::process::id());
    let cmd = || WorkerCommand::new(&bin).env(TAG_VAR, &tag);

    // Warm-up: a small pool first, so lasting first-use allocations are in the baselines.
    {
        let pool = Pool::builder(cmd()).workers(2).forward_stderr(false).build().expect("warm-up pool");
        let batch = pool.submit_batch((0..200).map(|i| format!("w {i}").into_bytes()), 8).unwrap();
        for o in batch.wait_all() {
            assert!(o.is_value(), "warm-up: {o:?}");
        }
        pool.close();
        pool.join(Some(Duration::from_secs(20))).expect("warm-up join");
    }
    let base_fds = fds();
    let base_threads = threads();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ a.seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let kinds: Vec<Kind> = (0..n)
        .map(|_| {
            let k = (rng.next_f64() / a.rate) as usize;
            FAULTS.get(k).copied().unwrap_or(Kind::Normal)
        })
        .collect();
    let state = Arc::new(State {
        kinds: kinds.clone(),
        inner: Mutex::new(Inner { calls: vec![0; n], ..Default::default() }),
        cv: Condvar::new(),
    });

    println!("hangfree-soak: {n} tasks, {} workers, {} ...", a.workers, bin.display());
    let t0 = Instant::now();
    let deadline = t0 + limit;
    let pool = Pool::builder(cmd())
        .workers(a.workers)
        .grace(Duration::from_millis(100))
        .kill_wait(Duration::from_secs(1))
        .forward_stderr(false)
        .build()
        .expect("pool");
    let mut violations: Vec<String> = Vec::new();
    let mut rss_warm = 0;
    const GROUP: usize = 16;
    let mut start = 0;
    let mut group = 0usize;
    while start < n {
        let end = (start + GROUP).min(n);
        {
            let mut g = state.inner.lock().unwrap();
            while g.inflight + (end - start) > a.window.max(GROUP) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                g = state.cv.wait_timeout(g, left.min(Duration::from_millis(100))).unwrap().0;
            }
            g.inflight += end - start;
        }
        if Instant::now() >= deadline {
            violations.push(format!("outcomes stopped coming: no room to submit task {start} within {limit:?}"));
            break;
        }
        if start <= n / 10 && n / 10 < end {
            rss_warm = rss();
        }
        let tasks: Vec<Task> = (start..end).map(|i| kinds[i].task(i)).collect();
        let chunk = if group.is_multiple_of(2) { 1 } else { 4 };
        if let Err(e) = pool.submit_to(Arc::new(SoakSink { base: start, state: state.clone() }), tasks, chunk) {
            violations.push(format!("submit refused at task {start}: {e}"));
            break;
        }
        start = end;
        group += 1;
    }
    {
        let mut g = state.inner.lock().unwrap();
        while g.done < n && Instant::now() < deadline {
            g = state.cv.wait_timeout(g, Duration::from_millis(100)).unwrap().0;
        }
        if g.done < n {
            violations.push(format!("only {} of {n} tasks had an outcome after {limit:?}", g.done));
        }
    }
    let rss_end = rss();
    let stats = pool.stats();
    pool.close();
    if let Err(e) = pool.join(Some(Duration::from_secs(30))) {
        violations.push(format!("join after close: {e}"));
        pool.terminate();
        let _ = pool.join(Some(Duration::from_secs(10)));
    }
    drop(pool);
    let wall = t0.elapsed();

    // ----- leaks -----
    let g = state.inner.lock().unwrap();
    violations.extend(g.violations.iter().cloned());
    // Only a worker that breaks the protocol and goes on serving (wrong-id) can have
    // started the task behind the faulty one when the pool stops it: one task each.
    let stopped = g.outcomes.get(STOPPED).copied().unwrap_or(0) as usize;
    let wrong_ids = kinds.iter().filter(|&&k| k == Kind::WrongId).count();
    if stopped > wrong_ids {
        violations.push(format!("{stopped} tasks lost to a stopped worker, more than the {wrong_ids} wrong-id faults"));
    }
    let lost = g.calls.iter().filter(|&&c| c == 0).count();
    if lost > 0 {
        violations.push(format!("{lost} tasks without an outcome"));
    }
    let mut leaks: Vec<String> = Vec::new();
    let mut ours = tagged(&tag);
    ours.extend(g.grandchildren.iter().copied());
    let left = wait_gone(&ours, Duration::from_secs(3));
    if !left.is_empty() {
        leaks.push(format!("processes left: {left:?}"));
        for p in &left {
            // Ours: found by our marker or reported by our tasks; killed by pid.
            let _ = std::process::Command::new("kill").args(["-KILL", &p.to_string()]).status();
        }
    }
    let z = zombie_children();
    if !z.is_empty() {
        leaks.push(format!("unreaped children: {z:?}"));
    }
    let t1 = Instant::now();
    let (extra, nthreads) = loop {
        let now = fds();
        let extra: Vec<String> =
            now.iter().filter(|(k, v)| base_fds.get(*k) != Some(v)).map(|(k, v)| format!("{k}->{v}")).collect();
        let nthreads = threads();
        if (extra.is_empty() && nthreads <= base_threads) || t1.elapsed() > Duration::from_secs(3) {
            break (extra, nthreads);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !extra.is_empty() {
        leaks.push(format!("descriptors left: {extra:?}"));
    }
    if nthreads > base_threads {
        leaks.push(format!("threads: {nthreads}, was {base_threads}"));
    }
    let rss_after = rss();
    let growth = rss_end.max(rss_after) as i64 - rss_warm as i64;
    if growth >= RSS_LIMIT as i64 {
        leaks.push(format!("RSS grew by {:.1} MiB after warm-up (limit 20 MiB)", growth as f64 / (1u64 << 20) as f64));
    }

    // ----- report -----
    let mut injected: BTreeMap<Kind, usize> = BTreeMap::new();
    for k in &kinds {
        *injected.entry(*k).or_default() += 1;
    }
    let mut rows: Vec<(String, String)> = vec![("tasks".into(), n.to_string())];
    for k in FAULTS {
        let mut v = injected.get(&k).copied().unwrap_or(0).to_string();
        if k == Kind::Grandchild {
            v = format!("{v} ({} left running)", g.grandchildren.len());
        }
        rows.push((format!("fault: {}", k.name()), v));
    }
    for (o, c) in &g.outcomes {
        rows.push((format!("outcome: {o}"), c.to_string()));
    }
    rows.push(("lost".into(), lost.to_string()));
    rows.push(("leaks".into(), leaks.len().to_string()));
    rows.push(("violations".into(), violations.len().to_string()));
    rows.push((
        "workers spawned / lost".into(),
        format!("{} / {} (abandoned {})", stats.workers_spawned, stats.workers_lost, stats.workers_abandoned),
    ));
    rows.push((
        "rss growth".into(),
        format!("{:+.1} MiB (from {} MiB)", growth as f64 / (1u64 << 20) as f64, rss_warm >> 20),
    ));
    rows.push(("wall".into(), format!("{:.1} s", wall.as_secs_f64())));
    for v in violations.iter().take(20) {
        println!("VIOLATION: {v}");
    }
    for l in &leaks {
        println!("LEAK: {l}");
    }
    let failed = !violations.is_empty() || !leaks.is_empty() || lost > 0;
    println!(
        "\nhangfree-soak ({}; fault rate {:.1}% per kind, seed {})",
        if a.quick { "quick" } else { "full" },
        a.rate * 100.0,
        a.seed
    );
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    let wv = rows.iter().map(|r| r.1.len()).max().unwrap_or(10).max(6);
    println!("| {:<w$} | {:<wv$} |", "", "engine");
    println!("|{}|{}|", "-".repeat(w + 2), "-".repeat(wv + 2));
    for (k, v) in &rows {
        println!("| {k:<w$} | {v:<wv$} |");
    }
    println!("\nresult: {}", if failed { "FAIL" } else { "PASS" });
    std::process::exit(if failed { 1 } else { 0 });
}
