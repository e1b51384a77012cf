//! Real-process contract tests for the hangfree engine, driven by the hostile worker.
//!
//! Each test runs under a watchdog (a hang fails the test instead of hanging the run),
//! every wait in it is bounded, and the timings the contract promises are asserted with
//! margins wide enough for a loaded two-core machine. Measured figures are printed (see
//! them with `--nocapture`).
//!
//! Every pool gets a unique `HF_TEST_TAG` in its workers' environment, so a test can find
//! its own workers (and their descendants) in /proc even though the tests of this binary
//! run in parallel in one process.

mod common;

use common::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use hangfree::{
    BuildError, ExitStatus, JoinError, LossCause, Outcome, Pool, StartupFailure, SubmitError, Task, TaskError,
    TaskHandle, WorkerCommand,
};

const BIN: &str = env!("CARGO_BIN_EXE_hangfree-hostile");
/// Generous bound on any single wait that should finish "soon".
const LONG: Duration = Duration::from_secs(20);

// ----- 1. death mid-task ----------------------------------------------------------------

#[test]
fn death_mid_task_is_worker_lost_at_once_and_others_go_on() {
    wd(|| {
        for (cmd, status, words) in [
            ("!exit 3", ExitStatus::Code(3), "exit code 3"),
            ("!segv", ExitStatus::Signal(11), "SIGSEGV"),
            ("!abort", ExitStatus::Signal(6), "SIGABRT"),
        ] {
            let tag = new_tag("death");
            let pool = builder(&tag).workers(2).build().unwrap();
            // Warm up: both workers ready.
            let warm: Vec<_> = (0..4).map(|i| submit(&pool, &format!("warm{i}"))).collect();
            warm.iter().for_each(|h| drop(value(h)));
            wait_until(LONG, "two workers up", || workers_of(&tag).len() == 2);
            let before = pool.stats();
            let pids: BTreeSet<i32> = workers_of(&tag).into_iter().collect();

            let t0 = Instant::now();
            let dying = submit(&pool, cmd);
            let others: Vec<_> = (0..30).map(|i| submit(&pool, &format!("other{i}"))).collect();
            let slow = submit(&pool, "!sleep 200");
            let o = wait(&dying);
            let took = t0.elapsed();
            println!("{cmd}: outcome {took:?} after submit");
            let e = failed(o);
            let TaskError::WorkerLost(lost) = &e else { panic!("{cmd}: expected WorkerLost, got {e:?}") };
            assert_eq!(lost.task.id, dying.id());
            assert_eq!(lost.cause, LossCause::Exited(status), "{cmd}");
            assert!(pids.contains(&lost.pid), "{cmd}: pid {} is not one of the workers {pids:?}", lost.pid);
            let msg = e.to_string();
            assert!(msg.contains(words), "{cmd}: {msg}");
            assert!(msg.contains(&format!("worker {}", lost.pid)), "{cmd}: {msg}");
            assert!(took < Duration::from_millis(600), "{cmd}: death noticed only after {took:?}");

            for (i, h) in others.iter().enumerate() {
                assert_eq!(s(&value(h)), format!("other{i}"), "{cmd}");
            }
            assert_eq!(value(&slow), b"slept");
            wait_until(LONG, "replacement spawned", || pool.stats().workers_spawned > before.workers_spawned);
            let st = pool.stats();
            assert_eq!(st.workers_lost, before.workers_lost + 1, "{st:?}");
            assert_eq!(st.worker_lost, 1, "{st:?}");
            // The dead worker is reaped, and the pool still has two workers and serves.
            wait_until(LONG, "dead worker reaped", || stat(lost.pid).is_none() || is_dead(lost.pid));
            wait_until(LONG, "two workers again", || workers_of(&tag).len() == 2);
            assert!(!workers_of(&tag).contains(&lost.pid));
            assert_eq!(value(&submit(&pool, "after")), b"after");
            shutdown(&pool);
        }
    });
}

// ----- 2. stderr tail -----------------------------------------------------------------

#[test]
fn worker_lost_carries_the_stderr_tail() {
    wd(|| {
        let tag = new_tag("tail");
        let pool = builder(&tag).workers(1).build().unwrap();
        assert_eq!(value(&submit(&pool, "!stderr MARKER-7f3a last words")), b"ok");
        let e = failed(wait(&submit(&pool, "!exit 1")));
        let TaskError::WorkerLost(lost) = &e else { panic!("{e:?}") };
        assert_eq!(lost.cause, LossCause::Exited(ExitStatus::Code(1)));
        assert!(lost.stderr_tail.contains("MARKER-7f3a last words"), "{:?}", lost.stderr_tail);
        assert!(e.to_string().contains("MARKER-7f3a"), "{e}");
        assert_eq!(value(&submit(&pool, "x")), b"x");
        shutdown(&pool);
    });
}

// ----- 3. timeouts --------------------------------------------------------------------

#[test]
fn timeout_kills_only_the_late_task_and_its_worker() {
    wd(|| {
        let tag = new_tag("timeout");
        let limit = Duration::from_millis(300);
        let pool = builder(&tag).workers(1).task_timeout(limit).grace(Duration::from_millis(200)).build().unwrap();
        let p0 = pid_of(&pool);
        let spawned = pool.stats().workers_spawned;
        let t0 = Instant::now();
        let h = submit(&pool, "!sleep 10000");
        let o = wait(&h);
        let took = t0.elapsed();
        println!("pool task_timeout 300 ms: TimedOut after {took:?}");
        match failed(o) {
            TaskError::TimedOut { task, limit: l, pid, .. } => {
                assert_eq!(task.id, h.id());
                assert_eq!(l, limit);
                assert_eq!(pid, p0);
            }
            e => panic!("expected TimedOut, got {e:?}"),
        }
        assert!(took >= limit, "timed out early: {took:?}");
        assert!(took < limit + Duration::from_millis(500), "timed out late: {took:?}");
        // The late worker is stopped (within grace) and replaced; the next task runs.
        wait_until(Duration::from_secs(3), "timed-out worker gone", || is_dead(p0));
        let p1 = pid_of(&pool);
        assert_ne!(p1, p0);
        assert!(pool.stats().workers_spawned > spawned);

        // A task's own limit overrides the pool's.
        let t0 = Instant::now();
        let h = pool
            .submit(Task::new(b"!sleep 10000".to_vec()).timeout(Duration::from_millis(150)).label("napper"))
            .unwrap();
        let e = failed(wait(&h));
        let took = t0.elapsed();
        println!("Task::timeout 150 ms: TimedOut after {took:?}");
        assert!(
            matches!(e, TaskError::TimedOut { limit, pid, .. } if limit == Duration::from_millis(150) && pid == p1),
            "{e:?}"
        );
        assert!(e.to_string().contains("napper"), "{e}");
        assert!(took < Duration::from_millis(150 + 500), "{took:?}");
        // A fast task under the limit is unaffected.
        assert_eq!(value(&submit(&pool, "!sleep 50")), b"slept");
        assert_eq!(pool.stats().timed_out, 2);
        shutdown(&pool);
    });
}

// ----- 4. terminate with SIGTERM-ignoring workers -------------------------------------

#[test]
fn terminate_with_sigterm_ignoring_workers_is_bounded_and_leaves_nothing() {
    wd(|| {
        let tag = new_tag("term");
        let grace = Duration::from_millis(500);
        let pool = builder(&tag).workers(3).prefetch(1).grace(grace).kill_wait(Duration::from_secs(1)).build().unwrap();
        assert_eq!(pool.join(Some(Duration::from_millis(10))), Err(JoinError::StillOpen));
        let hs: Vec<_> = (0..3).map(|_| submit(&pool, "!ignore-term 60000")).collect();
        wait_until(LONG, "three workers ignoring SIGTERM", || {
            let w = workers_of(&tag);
            w.len() == 3 && w.iter().all(|&p| ignores_sigterm(p))
        });
        let groups: BTreeSet<i32> = workers_of(&tag).into_iter().collect();
        let t0 = Instant::now();
        pool.terminate();
        assert!(t0.elapsed() < Duration::from_millis(100), "terminate() blocked for {:?}", t0.elapsed());
        pool.join(Some(Duration::from_secs(10))).expect("join");
        let took = t0.elapsed();
        println!("terminate+join with SIGTERM-ignoring workers, grace 500 ms: {took:?}");
        assert!(took >= grace, "workers ignoring SIGTERM cannot be gone before the grace period: {took:?}");
        assert!(took < grace + Duration::from_millis(500), "terminate+join took {took:?}");
        for h in &hs {
            assert!(matches!(h.try_outcome(), Some(Outcome::Failed(TaskError::Terminated(_)))));
        }
        let left = left_in_groups(&groups);
        assert!(left.is_empty(), "processes left in worker groups: {left:?}");
        assert!(tagged(&tag).is_empty(), "tagged processes left: {:?}", tagged(&tag));
        assert!(pool.is_finished());
        assert_eq!(pool.submit(b"x".to_vec()).unwrap_err(), SubmitError::Terminated);
        assert_eq!(pool.stats().terminated, 3);
    });
}

// ----- 5. grandchildren -----------------------------------------------------------------

#[test]
fn grandchild_dies_with_its_worker() {
    wd(|| {
        let tag = new_tag("grandchild");
        let grace = Duration::from_millis(300);
        let pool = builder(&tag).workers(1).grace(grace).build().unwrap();
        let w = pid_of(&pool);
        let g: i32 = s(&value(&submit(&pool, "!grandchild"))).parse().unwrap();
        let gp = stat(g).expect("grandchild alive");
        assert_eq!(gp.pgid, w, "grandchild is in its worker's group");
        wait_until(LONG, "grandchild ignores SIGTERM", || ignores_sigterm(g));
        let t0 = Instant::now();
        pool.terminate();
        pool.join(Some(Duration::from_secs(10))).unwrap();
        println!("terminate+join with a SIGTERM-ignoring grandchild: {:?}", t0.elapsed());
        assert!(t0.elapsed() < grace + Duration::from_millis(500), "{:?}", t0.elapsed());
        wait_until(Duration::from_secs(2), "grandchild dead after join", || is_dead(g));
        assert!(is_dead(w));
        assert!(tagged(&tag).is_empty(), "{:?}", tagged(&tag));
    });
}

#[test]
fn grandchild_of_an_exiting_worker_is_swept() {
    wd(|| {
        let tag = new_tag("grandchild-exit");
        let pool = builder(&tag).workers(1).build().unwrap();
        let w = pid_of(&pool);
        let t0 = Instant::now();
        let e = failed(wait(&submit(&pool, "!grandchild-exit 3")));
        let took = t0.elapsed();
        println!("worker exit with a grandchild holding its channel and stderr: noticed after {took:?}");
        // The grandchild holds the channel and stderr open: only the pidfd can tell.
        assert!(took < Duration::from_secs(1), "{took:?}");
        let TaskError::WorkerLost(lost) = &e else { panic!("{e:?}") };
        assert_eq!(lost.pid, w);
        assert_eq!(lost.cause, LossCause::Exited(ExitStatus::Code(3)));
        let g: i32 = lost
            .stderr_tail
            .lines()
            .find_map(|l| l.trim().strip_prefix("grandchild "))
            .unwrap_or_else(|| panic!("no grandchild pid in the stderr tail {:?}", lost.stderr_tail))
            .parse()
            .unwrap();
        wait_until(Duration::from_secs(1), "grandchild swept", || is_dead(g));
        assert_eq!(value(&submit(&pool, "still here")), b"still here");
        shutdown(&pool);
        assert!(tagged(&tag).is_empty(), "{:?}", tagged(&tag));
    });
}

// ----- 6. protocol errors -------------------------------------------------------------

#[test]
fn garbage_and_wrong_ids_are_protocol_errors_on_one_task() {
    wd(|| {
        let tag = new_tag("garbage");
        let pool = builder(&tag).workers(2).grace(Duration::from_millis(200)).build().unwrap();
        let others: Vec<_> = (0..20).map(|i| submit(&pool, &format!("o{i}"))).collect();
        let t0 = Instant::now();
        let g = submit(&pool, "!garbage");
        let more: Vec<_> = (0..20).map(|i| submit(&pool, &format!("m{i}"))).collect();
        let e = failed(wait(&g));
        println!("garbage noticed after {:?}", t0.elapsed());
        assert!(t0.elapsed() < Duration::from_secs(2));
        match &e {
            TaskError::Protocol { task, pid, error } => {
                assert_eq!(task.id, g.id());
                assert!(*pid > 0);
                assert_eq!(*error, hangfree::wire::ProtocolError::UnknownKind(0xfe));
                let pid = *pid;
                wait_until(Duration::from_secs(3), "garbage worker stopped", || is_dead(pid));
            }
            e => panic!("expected Protocol, got {e:?}"),
        }
        assert!(e.to_string().contains("protocol"), "{e}");
        for (i, h) in others.iter().enumerate() {
            assert_eq!(s(&value(h)), format!("o{i}"));
        }
        for (i, h) in more.iter().enumerate() {
            assert_eq!(s(&value(h)), format!("m{i}"));
        }
        let w = submit(&pool, "!wrong-id");
        match failed(wait(&w)) {
            TaskError::Protocol { task, error: hangfree::wire::ProtocolError::Unexpected(what), .. } => {
                assert_eq!(task.id, w.id());
                assert!(what.contains(&(w.id() + 1_000_000).to_string()), "{what}");
            }
            e => panic!("expected Protocol, got {e:?}"),
        }
        assert_eq!(value(&submit(&pool, "fine")), b"fine");
        let st = pool.stats();
        assert_eq!(st.protocol_errors, 2, "{st:?}");
        assert_eq!(st.values, 41, "{st:?}");
        shutdown(&pool);
    });
}

// ----- 7. closed channel --------------------------------------------------------------

#[test]
fn closed_channel_is_worker_lost_and_the_worker_is_killed() {
    wd(|| {
        let tag = new_tag("close-channel");
        let pool = builder(&tag).workers(1).grace(Duration::from_millis(200)).build().unwrap();
        let w = pid_of(&pool);
        let t0 = Instant::now();
        let e = failed(wait(&submit(&pool, "!close-channel")));
        println!("closed channel noticed after {:?}", t0.elapsed());
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        let TaskError::WorkerLost(lost) = &e else { panic!("{e:?}") };
        assert_eq!(lost.cause, LossCause::ChannelClosed);
        assert_eq!(lost.pid, w);
        assert!(e.to_string().contains("closed its channel"), "{e}");
        // The process kept running; the pool must stop it (SIGTERM works for it).
        wait_until(Duration::from_secs(2), "channel-closing worker killed", || is_dead(w));
        let w2 = pid_of(&pool);
        assert_ne!(w2, w);
        assert!(pool.stats().workers_spawned >= 2);
        shutdown(&pool);
    });
}

// ----- 8. stopped worker ----------------------------------------------------------------

#[test]
fn sigstopped_worker_times_out_and_is_killed() {
    wd(|| {
        let tag = new_tag("sigstop");
        let pool = builder(&tag)
            .workers(1)
            .task_timeout(Duration::from_millis(300))
            .grace(Duration::from_millis(200))
            .kill_wait(Duration::from_millis(500))
            .build()
            .unwrap();
        let w = pid_of(&pool);
        let t0 = Instant::now();
        let h = submit(&pool, "!sigstop");
        wait_until(Duration::from_secs(2), "worker stopped", || stat(w).is_some_and(|p| p.state == 'T'));
        let e = failed(wait(&h));
        println!("SIGSTOPped worker timed out after {:?}", t0.elapsed());
        assert!(matches!(e, TaskError::TimedOut { pid, .. } if pid == w), "{e:?}");
        assert!(t0.elapsed() < Duration::from_millis(800));
        wait_until(Duration::from_secs(2), "stopped worker killed", || is_dead(w));
        assert_eq!(value(&submit(&pool, "next")), b"next");
        shutdown(&pool);
    });
}

// ----- 9. blocking wait woken by terminate ----------------------------------------------

#[test]
fn blocking_wait_is_woken_by_terminate_from_another_thread() {
    wd(|| {
        let tag = new_tag("wake");
        let pool = Arc::new(builder(&tag).workers(1).grace(Duration::from_millis(200)).build().unwrap());
        let w = pid_of(&pool);
        let h = submit(&pool, "!sleep 60000");
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let o = h.wait(); // no timeout: only terminate can end this
            let _ = tx.send((o, Instant::now()));
        });
        thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "wait returned before terminate");
        let t0 = Instant::now();
        pool.terminate();
        let (o, at) = rx.recv_timeout(Duration::from_secs(5)).expect("wait() not woken by terminate");
        let took = at.duration_since(t0);
        println!("wait() woken {took:?} after terminate()");
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(matches!(o, Outcome::Failed(TaskError::Terminated(_))), "{o:?}");
        waiter.join().unwrap();
        pool.join(Some(Duration::from_secs(5))).unwrap();
        assert!(is_dead(w));
    });
}

// ----- 10. many tasks with random deaths ----------------------------------------------

#[test]
fn ten_thousand_tasks_with_deaths_each_get_exactly_one_outcome() {
    wd(|| {
        let tag = new_tag("10k");
        let pool = builder(&tag).workers(2).build().unwrap();
        let dies = |i: usize| i % 97 == 13;
        let payload = |i: usize| if dies(i) { "!exit 1".to_string() } else { format!("v{i}") };
        let n = 10_000;
        let half = n / 2;
        let t0 = Instant::now();
        // First half as a batch in chunks (deaths mid-chunk: later items must run elsewhere)…
        let mut batch = pool.submit_batch((0..half).map(|i| payload(i).into_bytes()), 16).unwrap();
        assert_eq!(batch.len(), half);
        // …second half as individual tasks.
        let singles: Vec<_> = (half..n).map(|i| submit(&pool, &payload(i))).collect();
        let mut seen = vec![0u32; n];
        let mut deaths = 0;
        let check = |i: usize, o: Outcome, deaths: &mut usize| {
            if dies(i) {
                match o {
                    Outcome::Failed(TaskError::WorkerLost(l)) => {
                        assert_eq!(l.cause, LossCause::Exited(ExitStatus::Code(1)), "item {i}");
                        *deaths += 1;
                    }
                    o => panic!("item {i} should have died: {o:?}"),
                }
            } else {
                assert_eq!(o, Outcome::Value(format!("v{i}").into_bytes()), "item {i}");
            }
        };
        loop {
            match batch.next_timeout(LONG) {
                Ok(Some((i, o))) => {
                    assert!(i < half);
                    seen[i] += 1;
                    check(i, o, &mut deaths);
                }
                Ok(None) => break,
                Err(()) => panic!("batch stalled: no outcome in {LONG:?}"),
            }
        }
        for (k, h) in singles.iter().enumerate() {
            let i = half + k;
            seen[i] += 1;
            check(i, wait(h), &mut deaths);
            assert!(h.try_outcome().is_none(), "second outcome for item {i}");
        }
        println!("10k tasks with {deaths} deaths in {:?}", t0.elapsed());
        assert!(seen.iter().all(|&c| c == 1), "some item did not get exactly one outcome");
        assert_eq!(deaths, (0..n).filter(|&i| dies(i)).count());
        let st = pool.stats();
        assert_eq!(st.submitted, n as u64);
        assert_eq!(st.finished(), n as u64, "{st:?}");
        assert_eq!(st.worker_lost, deaths as u64, "{st:?}");
        // The last death's replacement may start just after its task's outcome is out.
        wait_until(Duration::from_secs(5), "a replacement for every lost worker", || {
            pool.stats().workers_spawned >= 2 + deaths as u64
        });
        pool.close();
        pool.join(Some(LONG)).unwrap();
        assert!(tagged(&tag).is_empty());
    });
}

// ----- 12. startup failures ------------------------------------------------------------

fn check_broken_pool(tag: &str, pool: &Pool, early: Vec<TaskHandle>, failed_before: u64, words: &str, max_spawns: u64) {
    for h in &early {
        match failed(wait(h)) {
            TaskError::StartupFailed { failure, .. } => {
                assert!(failure.to_string().contains(words), "{failure}")
            }
            e => panic!("expected StartupFailed, got {e:?}"),
        }
    }
    wait_until(LONG, "pool broken", || pool.startup_failure().is_some());
    match pool.submit(b"late".to_vec()) {
        Err(SubmitError::Broken(f)) => {
            assert!(f.to_string().contains(words), "{f}");
            assert!(SubmitError::Broken(f).to_string().contains(words));
        }
        r => panic!("expected Broken, got {r:?}"),
    }
    let spawned = pool.stats().workers_spawned;
    thread::sleep(Duration::from_millis(500));
    let st = pool.stats();
    assert_eq!(st.workers_spawned, spawned, "the broken pool kept respawning: {st:?}");
    assert!(st.workers_spawned <= max_spawns, "{st:?}");
    assert_eq!(st.startup_failed, failed_before + early.len() as u64, "{st:?}");
    // A broken pool winds down by itself; terminate + join are still bounded.
    shutdown(pool);
    assert!(tagged(tag).is_empty(), "{:?}", tagged(tag));
}

#[test]
fn failing_initializer_breaks_the_pool_with_its_message() {
    wd(|| {
        let tag = new_tag("init-fail");
        let pool = builder(&tag).workers(2).max_startup_failures(3).init_payload("fail boom").build().unwrap();
        let early: Vec<_> = (0..5).filter_map(|i| pool.submit(format!("e{i}").into_bytes()).ok()).collect();
        check_broken_pool(&tag, &pool, early, 0, "boom", 4);
        assert!(matches!(pool.startup_failure(), Some(StartupFailure::InitFailed { .. })));
    });
}

#[test]
fn worker_exiting_before_ready_breaks_the_pool() {
    wd(|| {
        let tag = new_tag("init-exit");
        let pool = builder(&tag).workers(1).max_startup_failures(3).init_payload("exit 2").build().unwrap();
        let early: Vec<_> = (0..3).filter_map(|i| pool.submit(format!("e{i}").into_bytes()).ok()).collect();
        check_broken_pool(&tag, &pool, early, 0, "exit code 2", 3);
        assert!(matches!(
            pool.startup_failure(),
            Some(StartupFailure::ExitedEarly { status: ExitStatus::Code(2), .. })
        ));
    });
}

#[test]
fn hanging_initializer_times_out_and_breaks_the_pool() {
    wd(|| {
        let tag = new_tag("init-hang");
        let t0 = Instant::now();
        let pool = builder(&tag)
            .workers(1)
            .max_startup_failures(3)
            .startup_timeout(Duration::from_millis(500))
            .grace(Duration::from_millis(200))
            .init_payload("hang")
            .build()
            .unwrap();
        let h = submit(&pool, "never runs");
        let e = failed(wait(&h));
        let took = t0.elapsed();
        println!("3 start-up timeouts of 500 ms: task failed after {took:?}");
        assert!(
            matches!(&e, TaskError::StartupFailed { failure: StartupFailure::Timeout(d), .. } if *d == Duration::from_millis(500)),
            "{e:?}"
        );
        assert!(took >= Duration::from_millis(1500), "{took:?}");
        assert!(took < Duration::from_millis(1500 + 1500), "{took:?}");
        check_broken_pool(&tag, &pool, vec![], 1, "not ready within 0.500 s", 3);
    });
}

// ----- 13. recycling --------------------------------------------------------------------

#[test]
fn workers_are_recycled_after_max_tasks() {
    wd(|| {
        let tag = new_tag("recycle");
        let pool = builder(&tag).workers(1).max_tasks_per_worker(3).build().unwrap();
        let pids: Vec<i32> = (0..9).map(|_| pid_of(&pool)).collect();
        println!("pids over 9 tasks with max_tasks_per_worker(3): {pids:?}");
        for k in 0..3 {
            assert!(pids[3 * k..3 * k + 3].iter().all(|&p| p == pids[3 * k]), "{pids:?}");
        }
        assert_ne!(pids[2], pids[3], "{pids:?}");
        assert_ne!(pids[5], pids[6], "{pids:?}");
        wait_until(LONG, "recycled count", || pool.stats().workers_recycled >= 2);
        // Also when the tasks arrive at once as one batch (sent ahead, several per chunk).
        let b = pool.submit_batch((0..9).map(|_| b"!pid".to_vec()), 2).unwrap();
        let mut by_pid: HashMap<Vec<u8>, usize> = HashMap::new();
        for o in b.wait_all() {
            let Outcome::Value(v) = o else { panic!("{o:?}") };
            *by_pid.entry(v).or_default() += 1;
        }
        assert!(by_pid.values().all(|&n| n <= 3), "{by_pid:?}");
        assert!(by_pid.len() >= 3, "{by_pid:?}");
        let st = pool.stats();
        assert!(st.workers_recycled >= 4, "{st:?}");
        assert_eq!(st.workers_lost, 0, "{st:?}");
        shutdown(&pool);
    });
}

// ----- 14. cancel -------------------------------------------------------------------------

#[test]
fn cancel_queued_and_running_tasks() {
    wd(|| {
        let tag = new_tag("cancel");
        let pool = builder(&tag).workers(1).prefetch(1).grace(Duration::from_millis(200)).build().unwrap();
        let w = pid_of(&pool);
        let running = submit(&pool, "!sleep 60000");
        let queued = submit(&pool, "q1");
        let after = submit(&pool, "q2");
        thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(queued.cancel());
        let o = queued.wait_timeout(Duration::from_secs(2)).expect("queued cancel");
        println!("queued task cancelled in {:?}", t0.elapsed());
        assert!(t0.elapsed() < Duration::from_millis(300));
        assert!(matches!(o, Outcome::Failed(TaskError::Cancelled(ref t)) if t.id == queued.id()), "{o:?}");
        assert!(!queued.cancel() || queued.try_outcome().is_none());
        let t0 = Instant::now();
        assert!(running.cancel());
        let o = running.wait_timeout(Duration::from_secs(2)).expect("running cancel");
        println!("running task cancelled in {:?}", t0.elapsed());
        assert!(t0.elapsed() < Duration::from_millis(300));
        assert!(matches!(o, Outcome::Failed(TaskError::Cancelled(_))), "{o:?}");
        wait_until(Duration::from_secs(2), "cancelled task's worker stopped", || is_dead(w));
        assert_eq!(value(&after), b"q2");
        // Cancelling a finished task changes nothing.
        let done = submit(&pool, "done");
        wait_until(LONG, "done", || done.is_done());
        assert!(!done.cancel());
        assert_eq!(done.try_outcome(), Some(Outcome::Value(b"done".to_vec())));
        let st = pool.stats();
        assert_eq!(st.cancelled, 2, "{st:?}");
        shutdown(&pool);
    });
}

#[test]
fn cancel_a_task_sent_ahead_to_a_busy_worker() {
    wd(|| {
        let tag = new_tag("cancel-ahead");
        let pool = builder(&tag).workers(1).prefetch(2).build().unwrap();
        let w = pid_of(&pool);
        let running = submit(&pool, "!sleep 400");
        let ahead = submit(&pool, "ahead");
        thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        ahead.cancel();
        let o = ahead.wait_timeout(Duration::from_secs(2)).expect("cancel of a task sent ahead");
        assert!(t0.elapsed() < Duration::from_millis(300), "{:?}", t0.elapsed());
        assert!(matches!(o, Outcome::Failed(TaskError::Cancelled(_))), "{o:?}");
        assert_eq!(value(&running), b"slept");
        assert_eq!(value(&submit(&pool, "next")), b"next");
        // The worker was not stopped for a task it had not started.
        assert_eq!(pid_of(&pool), w);
        let st = pool.stats();
        assert_eq!((st.cancelled, st.values), (1, 4), "{st:?}");
        shutdown(&pool);
    });
}

// ----- 15. drop -------------------------------------------------------------------------

#[test]
fn dropping_a_pool_with_stubborn_busy_workers_is_bounded() {
    wd(|| {
        let tag = new_tag("drop");
        let (grace, kill_wait) = (Duration::from_millis(400), Duration::from_millis(400));
        let pool = builder(&tag).workers(2).prefetch(1).grace(grace).kill_wait(kill_wait).build().unwrap();
        let hs: Vec<_> = (0..2).map(|_| submit(&pool, "!ignore-term 60000")).collect();
        wait_until(LONG, "two workers ignoring SIGTERM", || {
            let w = workers_of(&tag);
            w.len() == 2 && w.iter().all(|&p| ignores_sigterm(p))
        });
        let groups: BTreeSet<i32> = workers_of(&tag).into_iter().collect();
        let t0 = Instant::now();
        drop(pool);
        let took = t0.elapsed();
        println!("drop with stubborn workers (grace 400 ms, kill_wait 400 ms): {took:?}");
        assert!(took < grace + kill_wait + Duration::from_millis(500), "{took:?}");
        for h in &hs {
            assert!(matches!(h.try_outcome(), Some(Outcome::Failed(TaskError::Terminated(_)))));
        }
        assert!(left_in_groups(&groups).is_empty(), "{:?}", left_in_groups(&groups));
    });
}

// ----- 16. bad sizes and programs -------------------------------------------------------

#[test]
fn oversized_payloads_and_missing_programs_are_refused_up_front() {
    wd(|| {
        let tag = new_tag("sizes");
        let pool = builder(&tag).workers(1).max_frame(1024).build().unwrap();
        let big = vec![b'x'; 2000];
        assert_eq!(pool.submit(big.clone()).unwrap_err(), SubmitError::TooLarge { index: 0, len: 2000, max: 1024 });
        let items = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), big.clone()];
        assert_eq!(pool.submit_batch(items, 1).unwrap_err(), SubmitError::TooLarge { index: 3, len: 2000, max: 1024 });
        assert_eq!(pool.stats().submitted, 0, "nothing of a refused submission is queued");
        let fits = vec![b'y'; 1024];
        let h = pool.submit(fits.clone()).unwrap();
        assert_eq!(value(&h), fits);
        assert_eq!(value(&submit(&pool, "small")), b"small");
        shutdown(&pool);

        match Pool::builder(WorkerCommand::new("/nonexistent/hangfree-worker")).workers(1).build() {
            Err(BuildError::Spawn(e)) => assert!(e.to_string().contains("/nonexistent/hangfree-worker"), "{e}"),
            r => panic!("expected BuildError::Spawn, got {:?}", r.map(|_| ())),
        }
        assert!(matches!(builder(&tag).workers(0).build(), Err(BuildError::Invalid(_))));
        assert!(matches!(
            builder(&tag).max_frame(4).init_payload("fail too long").build(),
            Err(BuildError::Invalid(_))
        ));
    });
}

/// With `start_in_background` (a front's default), `build` returns before the first
/// worker starts: a missing program is still refused up front, and one that exists but
/// cannot run fails the pool's tasks as start-up failures, not `build` and not by hanging.
#[test]
fn a_background_start_refuses_missing_programs_and_fails_tasks_of_unrunnable_ones() {
    wd(|| {
        match Pool::builder(WorkerCommand::new("/nonexistent/hangfree-worker")).start_in_background(true).build() {
            Err(BuildError::Spawn(e)) => assert!(e.to_string().contains("/nonexistent/hangfree-worker"), "{e}"),
            r => panic!("expected BuildError::Spawn, got {:?}", r.map(|_| ())),
        }
        let dir = std::env::temp_dir().join(format!("hangfree-contract-{}", new_tag("noexec")));
        std::fs::create_dir_all(&dir).unwrap();
        match Pool::builder(WorkerCommand::new(&dir)).start_in_background(true).build() {
            Err(BuildError::Spawn(_)) => {}
            r => panic!("a directory as the program: expected BuildError::Spawn, got {:?}", r.map(|_| ())),
        }
        // Executable, but not a format the kernel runs (ENOEXEC at the exec).
        let prog = dir.join("worker");
        std::fs::write(&prog, b"\x7fELF not really").unwrap();
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let t0 = Instant::now();
        let pool = Pool::builder(WorkerCommand::new(&prog))
            .workers(1)
            .max_startup_failures(2)
            .forward_stderr(false)
            .start_in_background(true)
            .build()
            .unwrap();
        match pool.submit(b"never".to_vec()) {
            Err(SubmitError::Broken(f)) => assert!(matches!(f, StartupFailure::Spawn(_)), "{f:?}"),
            Err(e) => panic!("{e:?}"),
            Ok(h) => {
                let o = h.wait_timeout(Duration::from_secs(10)).expect("the task must fail, not wait");
                match failed(o) {
                    TaskError::StartupFailed { failure: StartupFailure::Spawn(msg), .. } => {
                        assert!(msg.contains("worker"), "{msg}")
                    }
                    e => panic!("expected StartupFailed(Spawn), got {e:?}"),
                }
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert_eq!(pool.stats().startup_failures, 2);
        shutdown(&pool);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

// ----- 17. many submitting threads ------------------------------------------------------

#[test]
fn eight_threads_submitting_at_once() {
    wd(|| {
        let tag = new_tag("threads");
        let pool = Arc::new(builder(&tag).workers(2).build().unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let pool = pool.clone();
                thread::spawn(move || {
                    let hs: Vec<_> = (0..500).map(|i| (i, submit(&pool, &format!("t{t}-{i}")))).collect();
                    for (i, h) in hs {
                        assert_eq!(s(&value(&h)), format!("t{t}-{i}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = pool.stats();
        assert_eq!((st.submitted, st.values), (4000, 4000), "{st:?}");
        pool.close();
        pool.join(Some(LONG)).unwrap();
        assert!(tagged(&tag).is_empty());
    });
}

// ----- beyond the list: a worker program that disappears --------------------------------

/// If the program vanishes after the pool started, respawning fails and nothing else may
/// ever wake the supervisor (no worker, no I/O, no deadline near): the pool must retry on
/// its own and, after `max_startup_failures`, fail the waiting task, not leave it forever.
#[test]
fn program_removed_after_build_fails_tasks_instead_of_hanging() {
    wd(|| {
        let dir = std::env::temp_dir().join(format!("hangfree-contract-{}", new_tag("gone")));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("worker");
        std::fs::copy(BIN, &prog).unwrap();
        let pool = Pool::builder(WorkerCommand::new(&prog))
            .workers(1)
            .max_tasks_per_worker(1)
            .max_startup_failures(5)
            // Far-off phase deadlines, so no stale timer happens to wake the supervisor.
            .grace(Duration::from_secs(30))
            .startup_timeout(Duration::from_secs(60))
            .forward_stderr(false)
            .build()
            .unwrap();
        std::fs::remove_file(&prog).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        // The only worker runs this, is retired, and cannot be replaced.
        assert_eq!(value(&submit(&pool, "hi")), b"hi");
        let t0 = Instant::now();
        let h = match pool.submit(b"orphan".to_vec()) {
            Ok(h) => h,
            Err(SubmitError::Broken(f)) => {
                assert!(matches!(f, StartupFailure::Spawn(_)), "{f:?}");
                return shutdown(&pool);
            }
            Err(e) => panic!("{e:?}"),
        };
        let o = h.wait_timeout(Duration::from_secs(10)).unwrap_or_else(|| {
            panic!("task still waiting {:?} after its pool's program vanished: {:?}", t0.elapsed(), pool.stats())
        });
        println!("task failed {:?} after the program vanished: {:?}", t0.elapsed(), pool.stats());
        match failed(o) {
            TaskError::StartupFailed { failure: StartupFailure::Spawn(msg), .. } => {
                assert!(msg.contains("worker"), "{msg}")
            }
            e => panic!("expected StartupFailed(Spawn), got {e:?}"),
        }
        assert_eq!(pool.stats().startup_failures, 5);
        shutdown(&pool);
    });
}

// ----- beyond the list: wake-ups racing with the supervisor ------------------------------

/// Submissions from several threads race with the supervisor consuming its wake-up. After
/// each racing phase the pool is quiet, and one more submission (and finally `terminate`)
/// must still be seen at once: a lost wake-up leaves it sitting in the inbox for good.
#[test]
fn racing_submissions_never_lose_a_wakeup() {
    wd(|| {
        let tag = new_tag("wakeups");
        let pool = Arc::new(builder(&tag).workers(2).build().unwrap());
        for round in 0..8 {
            let threads: Vec<_> = (0..3)
                .map(|t| {
                    let pool = pool.clone();
                    thread::spawn(move || {
                        for i in 0..100 {
                            let h = submit(&pool, &format!("r{round}-{t}-{i}"));
                            assert_eq!(s(&value(&h)), format!("r{round}-{t}-{i}"));
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            // A storm of wake-ups (cancels of no task) keeps the supervisor consuming its
            // waker while callers write to it: the race the waker must survive.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let storm: Vec<_> = (0..2)
                .map(|_| {
                    let (pool, stop) = (pool.clone(), stop.clone());
                    thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            pool.cancel(u64::MAX);
                        }
                    })
                })
                .collect();
            thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            storm.into_iter().for_each(|t| t.join().unwrap());
            // Quiet now: nothing but this submission can wake the supervisor.
            let h = submit(&pool, "quiet");
            let o = h.wait_timeout(Duration::from_secs(5));
            assert_eq!(
                o,
                Some(Outcome::Value(b"quiet".to_vec())),
                "round {round}: a submission to a quiet pool was not seen"
            );
        }
        let t0 = Instant::now();
        pool.terminate();
        pool.join(Some(Duration::from_secs(5))).expect("terminate of a quiet pool was not seen");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    });
}

#[test]
fn cancelled_queued_tasks_neither_block_the_ones_behind_nor_close() {
    wd(|| {
        let tag = new_tag("cancel-queued");
        let pool = builder(&tag).workers(1).prefetch(1).build().unwrap();
        let busy = submit(&pool, "!sleep 300");
        let doomed: Vec<TaskHandle> = (0..5).map(|i| submit(&pool, &format!("doomed {i}"))).collect();
        let live = submit(&pool, "live");
        for h in &doomed {
            assert!(pool.cancel_if_queued(h.id()));
        }
        for h in &doomed {
            assert!(matches!(failed(wait(h)), TaskError::Cancelled(_)));
        }
        assert_eq!(value(&busy), b"slept");
        assert_eq!(value(&live), b"live");
        // All that is left queued is cancelled: close must let the worker go.
        let more: Vec<TaskHandle> = (0..3).map(|i| submit(&pool, &format!("late {i}"))).collect();
        let blocker = submit(&pool, "!sleep 200");
        let _ = blocker;
        for h in &more {
            pool.cancel(h.id());
        }
        pool.close();
        let t0 = Instant::now();
        pool.join(Some(LONG)).expect("join after cancelling the queued tasks");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    });
}

#[test]
fn large_payloads_round_trip_through_the_arena_at_every_size() {
    wd(|| {
        let tag = new_tag("arena-sizes");
        let pool = builder(&tag).workers(2).prefetch(3).build().unwrap();
        let t = hangfree::arena::THRESHOLD;
        // Filler never starts with '!' (a command for this worker): it is echoed back.
        let payload = |n: usize| (0..n).map(|i| b'a' + (i % 23) as u8).collect::<Vec<u8>>();
        let m = hangfree::arena::MAX_PAYLOAD;
        let sizes = [0, 1, t - 1, t, t + 1, 1 << 20, m, m + 1, 64 << 20];
        let hs: Vec<_> = sizes.iter().map(|&n| pool.submit(payload(n)).expect("submit")).collect();
        for (h, &n) in hs.iter().zip(&sizes) {
            assert!(value(h) == payload(n), "{n} bytes");
        }
        // Kept values are the caller's own: more answers through the same arenas leave
        // them as they were.
        let kept = value(&pool.submit(payload(1 << 20)).unwrap());
        let more: Vec<_> = (0..30).map(|i| pool.submit(vec![b'a' + i as u8; 2 << 20]).unwrap()).collect();
        for (i, h) in more.iter().enumerate() {
            assert!(value(h) == vec![b'a' + i as u8; 2 << 20], "answer {i}");
        }
        assert!(kept == payload(1 << 20));
        // The pool mapped its workers' arenas (they are what the answers came through).
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps.contains("/memfd:hangfree-arena"), "no arena mapped");
    });
}

#[test]
fn an_answer_naming_bytes_outside_the_arena_is_a_protocol_error() {
    wd(|| {
        let tag = new_tag("arena-garbage");
        let pool = builder(&tag).workers(1).grace(Duration::from_millis(200)).build().unwrap();
        for offset in [u64::MAX, hangfree::arena::AREA as u64, 1 << 32] {
            let g = submit(&pool, &format!("!arena-garbage {offset}"));
            match failed(wait(&g)) {
                TaskError::Protocol { error: hangfree::wire::ProtocolError::Unexpected(why), pid, .. } => {
                    assert!(why.starts_with("invalid arena descriptor"), "{why}");
                    wait_until(Duration::from_secs(3), "garbage worker stopped", || is_dead(pid));
                }
                e => panic!("expected a protocol error, got {e:?}"),
            }
            // The pool goes on, with a new worker and its arena.
            let big = vec![b'z'; 3 << 20];
            assert!(value(&pool.submit(big.clone()).unwrap()) == big);
        }
    });
}
