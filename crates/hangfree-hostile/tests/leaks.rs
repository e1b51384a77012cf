//! Contract 7, "nothing leaks": after a pool is closed or terminated, joined and dropped, this
//! process has the same open descriptors, the same threads and no child (live or zombie)
//! that it had before.
//!
//! This is its own test binary with a single test, because the counts are of the whole
//! process and the tests of one binary run in parallel threads.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hangfree::{Outcome, Pool, TaskError, WorkerCommand};

const BIN: &str = env!("CARGO_BIN_EXE_hangfree-hostile");

#[derive(Debug, PartialEq, Eq)]
struct Usage {
    fds: Vec<String>,
    threads: usize,
    children: Vec<(i32, char)>,
}

fn usage() -> Usage {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
            Some(format!("{}->{}", e.file_name().to_string_lossy(), target))
        })
        .collect();
    // The read_dir handle itself shows up as one fd with a varying number: drop it.
    fds.retain(|f| !f.contains(&format!("/proc/{}/fd", std::process::id())));
    fds.sort();
    let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
    let me = std::process::id() as i32;
    let children = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &text[text.rfind(')')? + 2..];
            let mut f = rest.split_whitespace();
            let state = f.next()?.chars().next()?;
            let ppid: i32 = f.next()?.parse().ok()?;
            (ppid == me).then_some((pid, state))
        })
        .collect();
    Usage { fds, threads, children }
}

fn wait(h: &hangfree::TaskHandle) -> Outcome {
    h.wait_timeout(Duration::from_secs(20)).expect("outcome within 20 s")
}

/// One pool's life, with every kind of trouble the engine must clean up after.
fn exercise(round: usize) {
    let fds_before = usage().fds;
    let pool = Pool::builder(WorkerCommand::new(BIN))
        .workers(2)
        .grace(Duration::from_millis(200))
        .kill_wait(Duration::from_millis(500))
        .forward_stderr(false)
        // Every other round forks its workers from a fork server: it must leave nothing
        // either.
        .fork_server(round % 2 == 1)
        .build()
        .unwrap();
    let batch = pool.submit_batch((0..300).map(|i| format!("{i}").into_bytes()), 10).unwrap();
    for (i, o) in batch.wait_all().into_iter().enumerate() {
        assert_eq!(o, Outcome::Value(i.to_string().into_bytes()));
    }
    let dead = pool.submit(b"!exit 4".to_vec()).unwrap();
    assert!(matches!(wait(&dead), Outcome::Failed(TaskError::WorkerLost(_))));
    let late = pool.submit(hangfree::Task::new(b"!sleep 10000".to_vec()).timeout(Duration::from_millis(100))).unwrap();
    assert!(matches!(wait(&late), Outcome::Failed(TaskError::TimedOut { .. })));
    let garbage = pool.submit(b"!garbage".to_vec()).unwrap();
    assert!(matches!(wait(&garbage), Outcome::Failed(TaskError::Protocol { .. })));
    let closed = pool.submit(b"!close-channel".to_vec()).unwrap();
    assert!(matches!(wait(&closed), Outcome::Failed(TaskError::WorkerLost(_))));
    // After the channel test: a worker whose grandchild holds a copy of its channel cannot
    // be seen closing it (no end of file ever comes), so it would just look busy.
    let gc = pool.submit(b"!grandchild".to_vec()).unwrap();
    assert!(wait(&gc).is_value());
    let gce = pool.submit(b"!grandchild-exit 2".to_vec()).unwrap();
    assert!(matches!(wait(&gce), Outcome::Failed(TaskError::WorkerLost(_))));
    let busy = pool.submit(b"!ignore-term 60000".to_vec()).unwrap();
    match round % 3 {
        0 => {
            pool.terminate();
            pool.join(Some(Duration::from_secs(10))).unwrap();
        }
        1 => {
            // close waits for queued work: cancel the stubborn task first.
            busy.cancel();
            pool.close();
            pool.join(Some(Duration::from_secs(10))).unwrap();
        }
        _ => {} // dropped below, busy
    }
    if round % 3 != 2 {
        // A joined pool holds no descriptor, even while its handle lives on.
        assert_eq!(usage().fds, fds_before, "descriptors held by a joined pool");
    }
    drop(pool);
    assert!(!matches!(busy.wait_timeout(Duration::from_secs(5)), None | Some(Outcome::Value(_))));
}

#[test]
fn pools_leave_no_descriptor_thread_or_child_behind() {
    let (tx, rx) = mpsc::channel();
    let body = thread::spawn(move || {
        // Warm up once: std's lazily created statics (stderr lock, thread names…) and the
        // first use of /proc are not the pool's.
        exercise(0);
        let before = usage();
        for round in 0..6 {
            exercise(round);
        }
        // Threads that were joined may linger in /proc/self/task for a moment.
        let t0 = Instant::now();
        let mut after = usage();
        while after != before && t0.elapsed() < Duration::from_secs(3) {
            thread::sleep(Duration::from_millis(20));
            after = usage();
        }
        println!("before: {before:?}\nafter:  {after:?}");
        assert_eq!(after.fds, before.fds, "descriptors leaked");
        assert_eq!(after.threads, before.threads, "threads leaked");
        assert_eq!(after.children, before.children, "children (or zombies) left");
        assert!(after.children.is_empty(), "{:?}", after.children);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(()) => body.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = body.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("leak test still running after 90 s: HANG"),
    }
}
