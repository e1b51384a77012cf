//! A pool of three badly behaved workers that still never hangs.
//!
//! ```text
//! cargo build -p hangfree-hostile            # the worker program, once
//! cargo run -p hangfree --example demo
//! ```
//!
//! (`--release` works too: build the worker with `--release` as well.) The worker is
//! found through the `HANGFREE_HOSTILE` environment variable, or next to the example's
//! executable: examples live in `target/<profile>/examples/`, the worker in
//! `target/<profile>/hangfree-hostile`.
//!
//! The tasks: plain echoes, one that crashes its worker (`!exit 3`), one that sleeps far
//! past its 1 s limit (`!sleep 60000`), and one that ignores SIGTERM (`!ignore-term
//! 60000`), which is still running when the pool is terminated with a 500 ms grace. Each
//! outcome is printed with the time it took, then the pool's counters.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hangfree::{Outcome, Pool, Task, TaskError, WorkerCommand};

const GRACE: Duration = Duration::from_millis(500);

fn find_worker() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HANGFREE_HOSTILE") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("HANGFREE_HOSTILE={} is not a file", p.display())) };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    // target/<profile>/examples/demo → target/<profile>/hangfree-hostile
    let dir = exe.parent().ok_or("no parent directory")?;
    let candidates = [dir.parent().map(|d| d.join("hangfree-hostile")), Some(dir.join("hangfree-hostile"))];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return Ok(c);
        }
    }
    let profile = dir.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned());
    let flag = if profile.as_deref() == Some("release") { " --release" } else { "" };
    Err(format!(
        "the hostile worker was not found next to {}.\n\
         Build it first:   cargo build{flag} -p hangfree-hostile\n\
         or point HANGFREE_HOSTILE at a hangfree-hostile binary.",
        exe.display()
    ))
}

/// What the demo expects of each task, checked at the end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Echo,
    Crash,
    TimedOut,
    Terminated,
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Value(v) => format!("value {:?}", String::from_utf8_lossy(v)),
        Outcome::Raised(p) => format!("raised: {}", String::from_utf8_lossy(p)),
        Outcome::Failed(e) => e.to_string(),
    }
}

fn matches(expect: Expect, o: &Outcome) -> bool {
    matches!(
        (expect, o),
        (Expect::Echo, Outcome::Value(_))
            | (Expect::Crash, Outcome::Failed(TaskError::WorkerLost(_)))
            | (Expect::TimedOut, Outcome::Failed(TaskError::TimedOut { .. }))
            | (Expect::Terminated, Outcome::Failed(TaskError::Terminated(_)))
    )
}

fn main() -> ExitCode {
    let worker = match find_worker() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    println!("worker program: {}", worker.display());

    let pool = match Pool::builder(WorkerCommand::new(&worker))
        .workers(3)
        .grace(GRACE)
        .kill_wait(Duration::from_secs(1))
        // Send tasks to idle workers only. With the default prefetch of 2, a task can be
        // sent ahead to a worker that is busy with the 60-second task and wait behind it.
        .prefetch(1)
        // Worker stderr goes into the outcome messages instead of this terminal.
        .forward_stderr(false)
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("demo: cannot build the pool: {e}");
            return ExitCode::from(1);
        }
    };

    // (label, payload, own time limit, what must happen)
    let plan: Vec<(&str, &str, Option<Duration>, Expect)> = vec![
        ("echo #1", "hello", None, Expect::Echo),
        ("crash", "!exit 3", None, Expect::Crash),
        ("hang", "!sleep 60000", Some(Duration::from_secs(1)), Expect::TimedOut),
        ("ignore-term", "!ignore-term 60000", None, Expect::Terminated),
        ("echo #2", "world", None, Expect::Echo),
        ("echo #3", "still here after a crash", None, Expect::Echo),
        ("echo #4", "more work while one worker hangs", None, Expect::Echo),
    ];

    // Each handle is waited for on its own thread, so every time printed is from the
    // task's submission to the moment its outcome arrived.
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let mut expected = Vec::new();
    std::thread::scope(|s| {
        for (name, payload, limit, expect) in plan {
            let mut task = Task::new(payload.as_bytes().to_vec()).label(name);
            let mut label = format!("{name} {payload:?}");
            if let Some(l) = limit {
                task = task.timeout(l);
                label.push_str(&format!(" (timeout {} s)", l.as_secs()));
            }
            let submitted = Instant::now();
            match pool.submit(task) {
                Ok(h) => {
                    expected.push((name, expect));
                    let tx = tx.clone();
                    s.spawn(move || {
                        let o = h.wait();
                        let _ = tx.send((name, label, submitted.elapsed(), o));
                    });
                }
                Err(e) => {
                    eprintln!("demo: submit {name} refused: {e}");
                }
            }
        }
        drop(tx);

        let mut seen = Vec::new();
        let mut terminated_at = None;
        let mut join_took = None;
        // Every task but the SIGTERM-ignoring one finishes on its own.
        let own = expected.iter().filter(|(_, e)| *e != Expect::Terminated).count();
        for (name, label, took, o) in rx.iter() {
            println!("{:>9.1} ms  {label}\n             → {}", took.as_secs_f64() * 1e3, describe(&o));
            seen.push((name, o));
            if seen.len() == own && terminated_at.is_none() {
                println!(
                    "\n-- every other task is done; terminating the pool (grace {} ms) while \
                     `ignore-term` still runs --\n",
                    GRACE.as_millis()
                );
                let t = Instant::now();
                pool.terminate();
                let joined = pool.join(Some(GRACE + Duration::from_secs(5)));
                join_took = Some((t.elapsed(), joined));
                terminated_at = Some(t);
            }
        }

        println!();
        if let Some((took, joined)) = join_took {
            match joined {
                Ok(()) => println!(
                    "terminate + join: {:.1} ms (grace {} ms: SIGTERM was ignored, SIGKILL followed)",
                    took.as_secs_f64() * 1e3,
                    GRACE.as_millis()
                ),
                Err(e) => println!("terminate + join: {e}"),
            }
        }
        let st = pool.stats();
        println!("\nstats after {:.2} s:", t0.elapsed().as_secs_f64());
        println!("  submitted {:>3}   values {:>3}   raised {:>3}", st.submitted, st.values, st.raised);
        println!(
            "  worker lost {:>3}   timed out {:>3}   cancelled {:>3}   terminated {:>3}",
            st.worker_lost, st.timed_out, st.cancelled, st.terminated
        );
        println!(
            "  workers spawned {:>3}   lost {:>3}   abandoned {:>3}   startup failures {:>3}",
            st.workers_spawned, st.workers_lost, st.workers_abandoned, st.startup_failures
        );

        let mut ok = join_took.is_some_and(|(_, j)| j.is_ok()) && seen.len() == expected.len();
        for (name, expect) in &expected {
            match seen.iter().find(|(n, _)| n == name) {
                Some((_, o)) if matches(*expect, o) => {}
                Some((_, o)) => {
                    ok = false;
                    eprintln!("demo: {name}: expected {expect:?}, got {}", describe(o));
                }
                None => {
                    ok = false;
                    eprintln!("demo: {name}: no outcome");
                }
            }
        }
        if ok {
            println!("\nevery task got exactly one outcome; nothing hung.");
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}
