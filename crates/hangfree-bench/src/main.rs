//! `hangfree-bench`: measures the hangfree engine against its hostile echo worker.
//!
//! Four measurements:
//!
//! - **round trip**: sequential `submit().wait()` of a 64-byte payload, 1 and 2 workers,
//!   median and p99 over many round trips after a warm-up;
//! - **batch throughput**: `submit_batch` of 64-byte items, 2 workers, several chunk
//!   sizes, in items per second (from the `submit_batch` call to the last outcome read);
//! - **death detection**: a `!exit 1` task, time from submit to its *worker lost* outcome;
//! - **terminate**: workers that ignore SIGTERM, time for `terminate()` + `join()` against
//!   the configured grace period.
//!
//! The worker is `hangfree-hostile`, found with `--worker PATH`, the `HANGFREE_HOSTILE`
//! environment variable, or next to this binary (`cargo build --release -p
//! hangfree-hostile` puts it there).
//!
//! ```text
//! cargo build --release -p hangfree-hostile -p hangfree-bench
//! target/release/hangfree-bench            # full run
//! target/release/hangfree-bench --quick    # a few seconds
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hangfree::{Outcome, Pool, TaskError, WorkerCommand};

const PAYLOAD_LEN: usize = 64;
/// Targets from the issue, on a 2-core machine.
const TARGET_RT_MEDIAN_US: f64 = 30.0;
const TARGET_BATCH_ITEMS_PER_S: f64 = 300_000.0;

struct Opts {
    worker: Option<PathBuf>,
    quick: bool,
    round_trips: usize,
    warmup: usize,
    items: usize,
    chunksizes: Vec<usize>,
    prefetch: Option<usize>,
    death_reps: usize,
    term_reps: usize,
    grace: Duration,
    only: Option<String>,
}

const USAGE: &str = "\
usage: hangfree-bench [options]

  --worker PATH        the hostile worker (default: $HANGFREE_HOSTILE, else
                       hangfree-hostile next to this binary)
  --quick              small counts; runs in a few seconds
  --round-trips N      measured round trips per worker count (default 20000)
  --warmup N           round trips before measuring (default 2000)
  --items N            items per batch run (default 1000000)
  --chunksizes A,B,..  batch chunk sizes (default 64,256,1024)
  --prefetch N         the pool's prefetch setting (default: the engine's)
  --death-reps N       death-detection repetitions (default 20)
  --term-reps N        terminate repetitions (default 3)
  --grace-ms N         grace period for the terminate measurement (default 500)
  --only WHAT          run one section: rt, batch, death, term or floor
                       (floor: the same 64-byte round trip without the pool, straight
                       over a socket to the worker, and between two threads; reference
                       figures for what the kernel costs)
";

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        worker: None,
        quick: false,
        round_trips: 20_000,
        warmup: 2_000,
        items: 1_000_000,
        chunksizes: vec![64, 256, 1024],
        prefetch: None,
        death_reps: 20,
        term_reps: 3,
        grace: Duration::from_millis(500),
        only: None,
    };
    let mut explicit = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |s: String, name: &str| s.parse::<usize>().map_err(|_| format!("{name}: not a number: {s}"));
        match a.as_str() {
            "--worker" => o.worker = Some(PathBuf::from(val("--worker")?)),
            "--quick" => o.quick = true,
            "--round-trips" => o.round_trips = num(val(&a)?, &a)?,
            "--warmup" => o.warmup = num(val(&a)?, &a)?,
            "--items" => o.items = num(val(&a)?, &a)?,
            "--chunksizes" => {
                o.chunksizes = val(&a)?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().map_err(|_| format!("--chunksizes: not a number: {s}")))
                    .collect::<Result<_, _>>()?
            }
            "--prefetch" => o.prefetch = Some(num(val(&a)?, &a)?),
            "--death-reps" => o.death_reps = num(val(&a)?, &a)?,
            "--term-reps" => o.term_reps = num(val(&a)?, &a)?,
            "--grace-ms" => o.grace = Duration::from_millis(num(val(&a)?, &a)? as u64),
            "--only" => o.only = Some(val(&a)?),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
        explicit.push(a);
    }
    if o.quick {
        // Quick mode shrinks whatever was not given explicitly.
        let given = |f: &str| explicit.iter().any(|a| a == f);
        if !given("--round-trips") {
            o.round_trips = 3_000;
        }
        if !given("--warmup") {
            o.warmup = 500;
        }
        if !given("--items") {
            o.items = 100_000;
        }
        if !given("--death-reps") {
            o.death_reps = 5;
        }
        if !given("--term-reps") {
            o.term_reps = 1;
        }
        if !given("--grace-ms") {
            o.grace = Duration::from_millis(200);
        }
    }
    if let Some(w) = &o.only
        && !["rt", "batch", "death", "term", "floor"].contains(&w.as_str())
    {
        return Err(format!("--only: expected rt, batch, death, term or floor, got {w}"));
    }
    Ok(o)
}

fn find_worker(o: &Opts) -> Result<PathBuf, String> {
    let candidate = if let Some(p) = &o.worker {
        p.clone()
    } else if let Some(p) = std::env::var_os("HANGFREE_HOSTILE") {
        PathBuf::from(p)
    } else {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary's path: {e}"))?;
        exe.parent().map(|d| d.join("hangfree-hostile")).unwrap_or_else(|| PathBuf::from("hangfree-hostile"))
    };
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "hostile worker not found at {}\nbuild it first: cargo build --release -p hangfree-hostile \
             (or pass --worker PATH / set HANGFREE_HOSTILE)",
            candidate.display()
        ))
    }
}

struct Row {
    section: &'static str,
    case: String,
    value: String,
    target: String,
    verdict: &'static str,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Summary of a sample of durations, in µs.
struct Summary {
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort_unstable();
    let n = v.len();
    let pick = |q: f64| us(v[(((n as f64) * q) as usize).min(n - 1)]);
    Summary {
        min: us(v[0]),
        median: pick(0.5),
        p99: pick(0.99),
        max: us(v[n - 1]),
        mean: v.iter().map(|d| us(*d)).sum::<f64>() / n as f64,
    }
}

fn builder(worker: &PathBuf, workers: usize, o: &Opts) -> hangfree::PoolBuilder {
    let mut b = Pool::builder(WorkerCommand::new(worker)).workers(workers).forward_stderr(false);
    if let Some(p) = o.prefetch {
        b = b.prefetch(p);
    }
    b
}

/// Waits until `n` distinct workers have answered, so a measurement does not include
/// worker start-up.
fn wait_all_ready(pool: &Pool, n: usize) -> Result<(), String> {
    let t0 = Instant::now();
    let mut pids = std::collections::HashSet::new();
    while pids.len() < n {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!("only {} of {n} workers answered within 30 s", pids.len()));
        }
        let batch = pool.submit_batch((0..4 * n).map(|_| b"!pid".to_vec()), 1).map_err(|e| e.to_string())?;
        for (_, o) in batch {
            match o {
                Outcome::Value(p) => {
                    pids.insert(p);
                }
                other => return Err(format!("warm-up task failed: {other:?}")),
            }
        }
    }
    Ok(())
}

fn close_pool(pool: Pool) {
    pool.close();
    let _ = pool.join(Some(Duration::from_secs(10)));
}

fn bench_round_trip(worker: &PathBuf, o: &Opts, rows: &mut Vec<Row>) -> Result<(), String> {
    let payload = vec![b'x'; PAYLOAD_LEN];
    for workers in [1usize, 2] {
        let pool = builder(worker, workers, o).build().map_err(|e| e.to_string())?;
        wait_all_ready(&pool, workers)?;
        let one = || -> Result<Duration, String> {
            let t = Instant::now();
            let h = pool.submit(payload.clone()).map_err(|e| e.to_string())?;
            match h.wait() {
                Outcome::Value(v) if v.len() == PAYLOAD_LEN => Ok(t.elapsed()),
                other => Err(format!("round trip failed: {other:?}")),
            }
        };
        for _ in 0..o.warmup {
            one()?;
        }
        let mut samples = Vec::with_capacity(o.round_trips);
        let t_all = Instant::now();
        for _ in 0..o.round_trips {
            samples.push(one()?);
        }
        let wall = t_all.elapsed();
        close_pool(pool);
        let s = summarize(samples);
        let met = s.median <= TARGET_RT_MEDIAN_US;
        rows.push(Row {
            section: "round trip",
            case: format!("{workers} worker{}, 64 B, median", if workers > 1 { "s" } else { "" }),
            value: format!("{:.1} µs", s.median),
            target: format!("≤ {TARGET_RT_MEDIAN_US:.0} µs"),
            verdict: if met { "MET" } else { "MISSED" },
        });
        rows.push(Row {
            section: "round trip",
            case: format!("{workers} worker{}, 64 B, p99", if workers > 1 { "s" } else { "" }),
            value: format!("{:.1} µs", s.p99),
            target: String::new(),
            verdict: "",
        });
        rows.push(Row {
            section: "round trip",
            case: format!("  (min / mean / max over {})", o.round_trips),
            value: format!("{:.1} / {:.1} / {:.0} µs", s.min, s.mean, s.max),
            target: format!("{:.0} rt/s", o.round_trips as f64 / wall.as_secs_f64()),
            verdict: "",
        });
    }
    Ok(())
}

fn bench_batch(worker: &PathBuf, o: &Opts, rows: &mut Vec<Row>) -> Result<(), String> {
    let pool = builder(worker, 2, o).build().map_err(|e| e.to_string())?;
    wait_all_ready(&pool, 2)?;
    // Warm the path once with a small batch.
    let warm = pool
        .submit_batch((0..10_000).map(|i| vec![b'a' + (i % 26) as u8; PAYLOAD_LEN]), 256)
        .map_err(|e| e.to_string())?;
    if !warm.wait_all().iter().all(Outcome::is_value) {
        return Err("warm-up batch had failures".into());
    }
    for &cs in &o.chunksizes {
        // Payloads are made before the clock starts; turning them into tasks, submitting,
        // running and reading every outcome are inside it.
        let payloads: Vec<Vec<u8>> = (0..o.items).map(|i| vec![b'a' + (i % 26) as u8; PAYLOAD_LEN]).collect();
        let t = Instant::now();
        let batch = pool.submit_batch(payloads, cs).map_err(|e| e.to_string())?;
        let mut values = 0usize;
        let mut bad = 0usize;
        for (i, out) in batch {
            match out {
                Outcome::Value(v) if v.len() == PAYLOAD_LEN && v[0] == b'a' + (i % 26) as u8 => values += 1,
                _ => bad += 1,
            }
        }
        let el = t.elapsed();
        if bad > 0 || values != o.items {
            return Err(format!("batch chunksize {cs}: {values} values, {bad} wrong outcomes"));
        }
        let rate = o.items as f64 / el.as_secs_f64();
        rows.push(Row {
            section: "batch",
            case: format!("2 workers, {} × 64 B, chunksize {cs}", o.items),
            value: format!("{:.0} items/s", rate),
            target: format!("≥ {:.0} items/s", TARGET_BATCH_ITEMS_PER_S),
            verdict: if rate >= TARGET_BATCH_ITEMS_PER_S { "MET" } else { "MISSED" },
        });
        rows.push(Row {
            section: "batch",
            case: "  (wall time)".into(),
            value: format!("{:.3} s", el.as_secs_f64()),
            target: String::new(),
            verdict: "",
        });
    }
    close_pool(pool);
    Ok(())
}

fn bench_death(worker: &PathBuf, o: &Opts, rows: &mut Vec<Row>) -> Result<(), String> {
    let pool = builder(worker, 1, o).build().map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    for _ in 0..o.death_reps {
        // A ready worker first, so the sample is detection, not start-up.
        wait_all_ready(&pool, 1)?;
        let t = Instant::now();
        let h = pool.submit(b"!exit 1".to_vec()).map_err(|e| e.to_string())?;
        let out = h.wait();
        let el = t.elapsed();
        match out {
            Outcome::Failed(TaskError::WorkerLost(_)) => samples.push(el),
            other => return Err(format!("!exit 1 gave {other:?}, expected worker lost")),
        }
    }
    let lost = pool.stats().workers_lost;
    close_pool(pool);
    let s = summarize(samples);
    rows.push(Row {
        section: "death",
        case: format!("`!exit 1`, submit → outcome, median of {}", o.death_reps),
        value: format!("{:.0} µs", s.median),
        target: "\"within ms\"".into(),
        verdict: if s.median < 10_000.0 { "ok" } else { "SLOW" },
    });
    rows.push(Row {
        section: "death",
        case: format!("  (min / max; {lost} workers lost)"),
        value: format!("{:.0} / {:.0} µs", s.min, s.max),
        target: String::new(),
        verdict: "",
    });
    Ok(())
}

fn bench_terminate(worker: &PathBuf, o: &Opts, rows: &mut Vec<Row>) -> Result<(), String> {
    let kill_wait = Duration::from_secs(1);
    let mut samples = Vec::new();
    for _ in 0..o.term_reps {
        let pool = builder(worker, 2, o).grace(o.grace).kill_wait(kill_wait).build().map_err(|e| e.to_string())?;
        wait_all_ready(&pool, 2)?;
        let hs: Vec<_> = (0..2)
            .map(|_| pool.submit(b"!ignore-term 60000".to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        // Let both workers install SIG_IGN before the SIGTERM comes.
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        pool.terminate();
        pool.join(Some(o.grace + kill_wait + Duration::from_secs(5))).map_err(|e| format!("join: {e}"))?;
        let el = t.elapsed();
        for h in hs {
            match h.wait() {
                Outcome::Failed(TaskError::Terminated(_)) => {}
                other => return Err(format!("ignore-term task gave {other:?}, expected terminated")),
            }
        }
        samples.push(el);
    }
    let s = summarize(samples);
    let grace_ms = o.grace.as_secs_f64() * 1e3;
    let over_ms = s.max / 1e3 - grace_ms;
    rows.push(Row {
        section: "terminate",
        case: format!("2 SIGTERM-ignoring workers, grace {grace_ms:.0} ms, terminate+join"),
        value: format!("{:.1} ms", s.median / 1e3),
        target: "grace + small".into(),
        verdict: if over_ms < 50.0 { "ok" } else { "SLOW" },
    });
    rows.push(Row {
        section: "terminate",
        case: format!("  (worst of {}; over grace)", o.term_reps),
        value: format!("{:.1} ms", s.max / 1e3),
        target: format!("+{over_ms:.1} ms"),
        verdict: "",
    });
    Ok(())
}

/// Reference figures: the pool's round trip is caller → supervisor (eventfd) →
/// worker (socket) → supervisor (socket) → caller (futex), four cross-thread wake-ups.
/// These time the two halves alone: the socket ping-pong with the worker and no pool,
/// and a Mutex+Condvar ping-pong between two threads.
fn bench_floor(worker: &PathBuf, o: &Opts, rows: &mut Vec<Row>) -> Result<(), String> {
    use hangfree::wire::{self, Kind};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Condvar, Mutex};

    let n = o.round_trips;
    // 1. Socket ping-pong with the worker, no supervisor.
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let mut child = Command::new(worker)
        .env("HANGFREE_PARENT_PID", std::process::id().to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", worker.display()))?;
    let max = wire::DEFAULT_MAX_FRAME;
    let io = |e: std::io::Error| e.to_string();
    wire::write_frame(&mut ours, Kind::Init, 0, b"").map_err(io)?;
    match wire::read_frame(&mut ours, max) {
        Ok(Some(f)) if f.kind == Kind::Ready => {}
        other => return Err(format!("worker handshake: {other:?}")),
    }
    let payload = vec![b'x'; PAYLOAD_LEN];
    let mut samples = Vec::with_capacity(n);
    for i in 0..(o.warmup + n) as u64 {
        let t = Instant::now();
        wire::write_frame(&mut ours, Kind::Task, i + 1, &payload).map_err(io)?;
        match wire::read_frame(&mut ours, max) {
            Ok(Some(f)) if f.kind == Kind::Value && f.task_id == i + 1 => {}
            other => return Err(format!("direct round trip: {other:?}")),
        }
        if i as usize >= o.warmup {
            samples.push(t.elapsed());
        }
    }
    let _ = wire::write_frame(&mut ours, Kind::Shutdown, 0, b"");
    let _ = child.wait();
    let s = summarize(samples);
    rows.push(Row {
        section: "floor",
        case: "socket ping-pong with the worker, no pool".into(),
        value: format!("{:.1} µs", s.median),
        target: format!("p99 {:.1} µs", s.p99),
        verdict: "ref",
    });

    // 2. Thread ping-pong through Mutex+Condvar (the caller ↔ supervisor half).
    #[derive(Default)]
    struct Ball {
        turn: Mutex<(u64, bool)>,
        cv: Condvar,
    }
    let ball = Arc::new(Ball::default());
    let b2 = ball.clone();
    let total = (o.warmup + n) as u64;
    let echo = std::thread::spawn(move || {
        for i in 0..total {
            let mut g = b2.turn.lock().unwrap();
            while g.0 != i || g.1 {
                g = b2.cv.wait(g).unwrap();
            }
            g.1 = true;
            drop(g);
            b2.cv.notify_all();
        }
    });
    let mut samples = Vec::with_capacity(n);
    for i in 0..total {
        let t = Instant::now();
        {
            let mut g = ball.turn.lock().unwrap();
            *g = (i, false);
        }
        ball.cv.notify_all();
        let mut g = ball.turn.lock().unwrap();
        while !g.1 {
            g = ball.cv.wait(g).unwrap();
        }
        drop(g);
        if i as usize >= o.warmup {
            samples.push(t.elapsed());
        }
    }
    echo.join().map_err(|_| "echo thread panicked".to_string())?;
    let s = summarize(samples);
    rows.push(Row {
        section: "floor",
        case: "thread ping-pong, Mutex+Condvar".into(),
        value: format!("{:.1} µs", s.median),
        target: format!("p99 {:.1} µs", s.p99),
        verdict: "ref",
    });
    Ok(())
}

fn print_table(rows: &[Row]) {
    let w1 = rows.iter().map(|r| r.section.chars().count()).max().unwrap_or(0).max(7);
    let w2 = rows.iter().map(|r| r.case.chars().count()).max().unwrap_or(0).max(4);
    let w3 = rows.iter().map(|r| r.value.chars().count()).max().unwrap_or(0).max(5);
    let w4 = rows.iter().map(|r| r.target.chars().count()).max().unwrap_or(0).max(6);
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let lpad = |s: &str, w: usize| format!("{}{s}", " ".repeat(w.saturating_sub(s.chars().count())));
    println!("{} | {} | {} | {} | result", pad("section", w1), pad("case", w2), lpad("value", w3), pad("target", w4));
    println!("{}", "-".repeat(w1 + w2 + w3 + w4 + 20));
    let mut last = "";
    for r in rows {
        let sec = if r.section == last { "" } else { r.section };
        last = r.section;
        println!(
            "{} | {} | {} | {} | {}",
            pad(sec, w1),
            pad(&r.case, w2),
            lpad(&r.value, w3),
            pad(&r.target, w4),
            r.verdict
        );
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hangfree-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let worker = match find_worker(&o) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("hangfree-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "hangfree-bench{}: worker {} ({} CPUs, {} build)",
        if o.quick { " --quick" } else { "" },
        worker.display(),
        cpus,
        if cfg!(debug_assertions) { "DEBUG — numbers are meaningless" } else { "release" }
    );
    let mut rows = Vec::new();
    let run = |what: &str| o.only.as_deref().is_none_or(|w| w == what);
    let t0 = Instant::now();
    let result = (|| -> Result<(), String> {
        if run("rt") {
            bench_round_trip(&worker, &o, &mut rows)?;
        }
        if run("batch") {
            bench_batch(&worker, &o, &mut rows)?;
        }
        if run("death") {
            bench_death(&worker, &o, &mut rows)?;
        }
        if run("term") {
            bench_terminate(&worker, &o, &mut rows)?;
        }
        if run("floor") {
            bench_floor(&worker, &o, &mut rows)?;
        }
        Ok(())
    })();
    println!();
    print_table(&rows);
    println!("\n(total {:.1} s)", t0.elapsed().as_secs_f64());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hangfree-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
