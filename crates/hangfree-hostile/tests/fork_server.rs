//! The fork server (`PoolBuilder::fork_server`) with real processes: workers forked from
//! it are the pool's own children, leading their own groups; their deaths carry their real
//! exit status; a crash in a worker never touches the server; a dead server is replaced
//! by exec; and the server dies with its pool and with the pool's process.
//!
//! The rest of the contract is checked in fork-server mode by running `contract.rs` again
//! with `HF_TEST_FORK_SERVER=1` (see `scripts/test.sh`).

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangfree::{EventKind, ExitStatus, LossCause, Outcome, Pool, TaskError, WorkerCommand};

/// The events a pool reported: kind and pid.
type Seen = Arc<Mutex<Vec<(EventKind, Option<i32>)>>>;

/// A fork-server pool of `n` workers and the events it reports.
fn forking_pool(tag: &str, n: usize) -> (Pool, Seen) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let pool = builder(tag)
        .workers(n)
        .grace(Duration::from_millis(200))
        .fork_server(true)
        .on_event(move |e| seen.lock().unwrap().push((e.kind, e.pid)))
        .build()
        .expect("pool");
    (pool, events)
}

fn servers(events: &Seen) -> Vec<i32> {
    events.lock().unwrap().iter().filter(|(k, _)| *k == EventKind::ForkServerStarted).filter_map(|(_, p)| *p).collect()
}

/// Whether `pid`'s memory image came from a fork server: only the server was started with
/// `HANGFREE_FORK_SERVER=1`, and a forked worker keeps the server's original environment
/// block (an exec'd worker never has it).
fn was_forked(pid: i32) -> bool {
    let needle = b"HANGFREE_FORK_SERVER=1\0";
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.windows(needle.len()).any(|w| w == needle))
        .unwrap_or(false)
}

fn lost_status(o: Outcome) -> ExitStatus {
    match failed(o) {
        TaskError::WorkerLost(w) => match w.cause {
            LossCause::Exited(st) => st,
            c => panic!("expected an exit, got {c:?}"),
        },
        e => panic!("expected worker lost, got {e}"),
    }
}

#[test]
fn forked_workers_are_our_children_in_their_own_groups_and_the_server_stands_apart() {
    wd(|| {
        let tag = new_tag("fs-shape");
        let (pool, events) = forking_pool(&tag, 2);
        let a = pid_of(&pool);
        let me = std::process::id() as i32;
        let server = servers(&events);
        assert_eq!(server.len(), 1, "one fork server: {:?}", events.lock().unwrap());
        let server = stat(server[0]).expect("the fork server runs");
        assert!(is_fork_server(&server), "the server names itself: {server:?}");
        assert_eq!((server.ppid, server.pgid), (me, server.pid), "{server:?}");
        let w = stat(a).expect("worker");
        assert_eq!((w.ppid, w.pgid), (me, a), "a forked worker is our child and leads its group: {w:?}");
        assert!(!is_fork_server(&w), "a worker takes its own name back: {w:?}");
        assert!(was_forked(a), "worker {a} was started by exec, not forked");
        assert_eq!(workers_of(&tag).len(), 2, "two workers besides the server");
        shutdown(&pool);
        wait_until(Duration::from_secs(2), "the fork server to be reaped", || stat(server.pid).is_none());
        assert!(tagged(&tag).is_empty(), "left after join: {:?}", tagged(&tag));
    });
}

#[test]
fn deaths_of_forked_workers_carry_their_status_and_never_touch_the_server() {
    wd(|| {
        let tag = new_tag("fs-deaths");
        let (pool, events) = forking_pool(&tag, 1);
        let _ = pid_of(&pool);
        let server = servers(&events)[0];
        assert_eq!(lost_status(wait(&submit(&pool, "!exit 3"))), ExitStatus::Code(3));
        // abort() raises SIGABRT through the C library's cached thread id: had the fork
        // not set it, the signal would have gone to the server.
        assert_eq!(lost_status(wait(&submit(&pool, "!abort"))), ExitStatus::Signal(libc::SIGABRT));
        assert_eq!(lost_status(wait(&submit(&pool, "!segv"))), ExitStatus::Signal(libc::SIGSEGV));
        assert_eq!(lost_status(wait(&submit(&pool, "!kill-self"))), ExitStatus::Signal(libc::SIGKILL));
        let st = stat(server).expect("the fork server survives its workers' deaths");
        assert_ne!(st.state, 'Z', "{st:?}");
        let t0 = Instant::now();
        let next = pid_of(&pool);
        println!("next worker served {:?} after the last death was reported", t0.elapsed());
        assert!(was_forked(next), "replacements are forked too");
        assert_eq!(servers(&events).len(), 1, "the same server throughout");
        assert!(events.lock().unwrap().iter().all(|(k, _)| *k != EventKind::ForkServerFailed));
        shutdown(&pool);
        assert!(tagged(&tag).is_empty(), "left after join: {:?}", tagged(&tag));
    });
}

#[test]
fn a_dead_fork_server_is_reported_and_workers_start_by_exec() {
    wd(|| {
        let tag = new_tag("fs-dead");
        let (pool, events) = forking_pool(&tag, 1);
        let first = pid_of(&pool);
        assert!(was_forked(first));
        let server = servers(&events)[0];
        rustix::process::kill_process(rustix::process::Pid::from_raw(server).unwrap(), rustix::process::Signal::KILL)
            .unwrap();
        assert_eq!(lost_status(wait(&submit(&pool, "!exit 1"))), ExitStatus::Code(1));
        let next = pid_of(&pool);
        assert_ne!(next, first);
        assert!(!was_forked(next), "with the server gone, worker {next} must have been exec'd");
        assert!(
            events.lock().unwrap().iter().any(|(k, p)| *k == EventKind::ForkServerFailed && *p == Some(server)),
            "the failure is reported: {:?}",
            events.lock().unwrap()
        );
        // The dead server was reaped, not left a zombie of ours.
        wait_until(Duration::from_secs(2), "the dead fork server to be reaped", || stat(server).is_none());
        assert_eq!(s(&value(&submit(&pool, "still here"))), "still here");
        shutdown(&pool);
        assert!(tagged(&tag).is_empty(), "left after join: {:?}", tagged(&tag));
    });
}

#[test]
fn a_fork_server_with_other_threads_refuses_to_fork_and_workers_start_by_exec() {
    wd(|| {
        let tag = new_tag("fs-threads");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let seen = messages.clone();
        let pool = Pool::builder(WorkerCommand::new(BIN).env("HF_TEST_TAG", &tag).env("HF_HOSTILE_THREAD", "1"))
            .forward_stderr(false)
            .workers(2)
            .grace(Duration::from_millis(200))
            .fork_server(true)
            .on_event(move |e| seen.lock().unwrap().push((e.kind, e.message.clone())))
            .build()
            .expect("pool");
        let a = pid_of(&pool);
        assert!(!was_forked(a), "worker {a} was forked from a server running two threads");
        assert!(
            messages
                .lock()
                .unwrap()
                .iter()
                .any(|(k, m)| *k == EventKind::ForkServerFailed && m.contains("runs threads besides its own")),
            "the refusal is reported: {:?}",
            messages.lock().unwrap()
        );
        assert_eq!(s(&value(&submit(&pool, "works"))), "works");
        shutdown(&pool);
        assert!(tagged(&tag).is_empty(), "left after join: {:?}", tagged(&tag));
    });
}

/// A two-worker pool whose fork server takes `delay_ms` to start serving (as an
/// interpreter importing a heavy script does), kept for `keep` after the pool, and the
/// events it reports.
fn slow_server_pool(tag: &str, delay_ms: u64, keep: Duration) -> (Pool, Seen) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let cmd = WorkerCommand::new(BIN).env("HF_TEST_TAG", tag).env("HF_HOSTILE_SERVE_DELAY_MS", delay_ms.to_string());
    let pool = Pool::builder(cmd)
        .forward_stderr(false)
        .workers(2)
        .grace(Duration::from_millis(200))
        .fork_server(true)
        .keep_fork_server(keep)
        .on_event(move |e| seen.lock().unwrap().push((e.kind, e.pid)))
        .build()
        .expect("pool");
    (pool, events)
}

fn count(events: &Seen, kind: EventKind) -> usize {
    events.lock().unwrap().iter().filter(|(k, _)| *k == kind).count()
}

/// The supervisor does not wait for the fork server's first answer: `terminate` right
/// after `build` is prompt (the server, still starting, is stopped, not kept), `close`
/// still starts the pool's workers, and a pool left alone runs the tasks submitted before
/// the server answered, on forked workers.
#[test]
fn a_slow_fork_server_holds_up_neither_terminate_nor_the_tasks_submitted_meanwhile() {
    const DELAY: u64 = 2000;
    wd(|| {
        let tag = new_tag("fs-slow-term");
        let (pool, events) = slow_server_pool(&tag, DELAY, Duration::from_secs(30));
        let early = submit(&pool, "early");
        let server = servers(&events)[0];
        let t0 = Instant::now();
        pool.terminate();
        pool.join(Some(LONG)).unwrap();
        let took = t0.elapsed();
        println!("terminate + join with the server still starting took {took:?} (it starts in {DELAY} ms)");
        assert!(took < Duration::from_millis(DELAY / 2), "terminate + join took {took:?}");
        assert!(matches!(failed(wait(&early)), TaskError::Terminated(_)));
        assert!(stat(server).is_none(), "the starting fork server is stopped (not kept) and reaped by join");
        assert_eq!(count(&events, EventKind::WorkerStarted), 0, "{:?}", events.lock().unwrap());
        assert!(tagged(&tag).is_empty(), "left after join: {:?}", tagged(&tag));

        let tag = new_tag("fs-slow-close");
        let (pool, events) = slow_server_pool(&tag, DELAY, Duration::ZERO);
        pool.close();
        pool.join(Some(LONG)).unwrap();
        assert_eq!(count(&events, EventKind::WorkerStarted), 2, "a closed pool still starts its workers");
        assert!(tagged(&tag).is_empty(), "left after join: {:?}", tagged(&tag));

        let tag = new_tag("fs-slow-run");
        let t0 = Instant::now();
        let (pool, events) = slow_server_pool(&tag, DELAY, Duration::ZERO);
        assert!(t0.elapsed() < Duration::from_millis(DELAY / 2), "build waited for the server");
        let before: Vec<_> = (0..4).map(|i| submit(&pool, &format!("before {i}"))).collect();
        for (i, h) in before.iter().enumerate() {
            assert_eq!(s(&value(h)), format!("before {i}"));
        }
        assert!(t0.elapsed() >= Duration::from_millis(DELAY), "answered before the server was up");
        let a = pid_of(&pool);
        assert!(was_forked(a), "worker {a} was started by exec");
        assert_eq!(count(&events, EventKind::ForkServerFailed), 0, "{:?}", events.lock().unwrap());
        shutdown(&pool);
        assert!(tagged(&tag).is_empty(), "left after join: {:?}", tagged(&tag));
    });
}

#[test]
fn terminate_with_forked_stubborn_workers_and_grandchildren_is_bounded() {
    wd(|| {
        let tag = new_tag("fs-term");
        let (pool, events) = forking_pool(&tag, 2);
        let gc: i32 = s(&value(&submit(&pool, "!grandchild"))).parse().unwrap();
        let stubborn: Vec<_> = (0..2).map(|_| submit(&pool, "!ignore-term 60000")).collect();
        wait_until(Duration::from_secs(5), "both workers to ignore SIGTERM", || {
            let w = workers_of(&tag);
            w.len() == 2 && w.iter().all(|&p| ignores_sigterm(p))
        });
        let server = servers(&events)[0];
        let t0 = Instant::now();
        pool.terminate();
        pool.join(Some(LONG)).unwrap();
        let took = t0.elapsed();
        println!("terminate + join took {took:?} (grace 200 ms)");
        assert!(took < Duration::from_millis(200 + 500), "terminate + join took {took:?}");
        for h in &stubborn {
            assert!(matches!(wait(h), Outcome::Failed(_)));
        }
        wait_until(Duration::from_secs(2), "the grandchild to die with its worker's group", || is_dead(gc));
        assert!(stat(server).is_none(), "the fork server is reaped by join");
        assert!(tagged(&tag).is_empty(), "left after join: {:?}", tagged(&tag));
    });
}

#[test]
fn fork_server_and_forked_workers_die_with_the_pools_process() {
    wd(|| {
        let tag = new_tag("fs-orphans");
        let (mut parent, pids) = pool_parent(&tag, true);
        assert!(was_forked(pids[0]), "the pool parent's worker {} was not forked", pids[0]);
        let server: Vec<i32> = tagged(&tag).into_iter().filter(is_fork_server).map(|p| p.pid).collect();
        assert_eq!(server.len(), 1, "{:?}", tagged(&tag));
        let t0 = Instant::now();
        parent.kill().unwrap();
        parent.wait().unwrap();
        wait_until(Duration::from_secs(2), "the server, the worker and its grandchild to die", || {
            pids.iter().chain(&server).all(|&p| is_dead(p))
        });
        println!("server, worker and grandchild gone {:?} after the parent's SIGKILL", t0.elapsed());
        assert!(tagged(&tag).iter().all(|p| p.state == 'Z'), "left: {:?}", tagged(&tag));
    });
}

#[test]
fn a_kept_fork_server_serves_the_next_pool_then_stops_when_idle_or_released() {
    wd(|| {
        let tag = new_tag("fs-kept");
        let me = std::process::id() as i32;
        let kept_pool = |tag: &str| {
            let events: Seen = Arc::new(Mutex::new(Vec::new()));
            let seen = events.clone();
            let pool = builder(tag)
                .workers(1)
                .fork_server(true)
                .keep_fork_server(Duration::from_millis(1500))
                .on_event(move |e| seen.lock().unwrap().push((e.kind, e.pid)))
                .build()
                .expect("pool");
            (pool, events)
        };
        let (first, events) = kept_pool(&tag);
        let a = pid_of(&first);
        let server = servers(&events)[0];
        shutdown(&first);
        wait_until(Duration::from_secs(2), "the first pool's worker to be reaped", || stat(a).is_none());
        let kept = stat(server).expect("the fork server is kept after its pool ended");
        assert!(is_fork_server(&kept) && kept.ppid == me, "{kept:?}");

        // The next pool of the same command takes it: its worker is forked at once by it.
        let (second, events) = kept_pool(&tag);
        let b = pid_of(&second);
        assert_eq!(servers(&events), vec![server], "the second pool took the kept server");
        assert!(was_forked(b) && stat(b).expect("worker").ppid == me);
        assert_eq!(
            tagged(&tag).iter().filter(|p| is_fork_server(p)).count(),
            1,
            "one server for both pools: {:?}",
            tagged(&tag)
        );
        shutdown(&second);

        // Idle past its keep time: stopped and reaped by the keeper.
        let t0 = Instant::now();
        wait_until(Duration::from_secs(6), "the idle kept server to be stopped", || stat(server).is_none());
        assert!(t0.elapsed() >= Duration::from_millis(1000), "stopped after {:?}, before its keep time", t0.elapsed());

        // Another command (here: another HF_TEST_TAG) never gets a kept server, and
        // release_kept stops what is kept at once. (Each pool runs a task first: a server
        // that has not answered yet when its pool ends is stopped, not kept.)
        let (third, events) = kept_pool(&tag);
        let third_server = servers(&events)[0];
        pid_of(&third);
        shutdown(&third);
        let other_tag = new_tag("fs-kept-other");
        let (fourth, events) = kept_pool(&other_tag);
        assert_ne!(servers(&events), vec![third_server], "a server is kept for its own command only");
        pid_of(&fourth);
        shutdown(&fourth);
        assert_eq!(hangfree::fork_server::release_kept(), 2);
        assert!(tagged(&tag).is_empty() && tagged(&other_tag).is_empty(), "left after release_kept");
    });
}
