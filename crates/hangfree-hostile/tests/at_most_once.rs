//! Guarantee 8 with real workers: a task, and each item of a chunk, starts at most once
//! unless `retries` asks for more. Every item appends its name to a log file, so the tests
//! count the real starts.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangfree::{LossCause, Outcome, Sink, Task, TaskError};

/// Collects every part of every chunk's outcome: `(index, first, count, outcome)`.
#[derive(Default)]
struct Parts(Mutex<Vec<(usize, u32, u32, Outcome)>>);

impl Sink for Parts {
    fn complete(&self, index: usize, outcome: Outcome) {
        self.0.lock().unwrap().push((index, 0, 1, outcome));
    }
    fn complete_items(&self, index: usize, first: u32, count: u32, _raised: u32, outcome: Outcome) {
        self.0.lock().unwrap().push((index, first, count, outcome));
    }
}

impl Parts {
    /// Waits until items of chunk 0 numbering `n` have outcomes; returns one per item.
    fn items(&self, n: u32) -> Vec<Outcome> {
        wait_until(LONG, "every item's outcome", || self.0.lock().unwrap().iter().map(|p| p.2).sum::<u32>() >= n);
        let parts = self.0.lock().unwrap();
        let mut by_item: BTreeMap<u32, Outcome> = BTreeMap::new();
        for (_, first, count, o) in parts.iter() {
            for i in *first..*first + *count {
                assert!(by_item.insert(i, o.clone()).is_none(), "item {i} got two outcomes");
            }
        }
        assert_eq!(by_item.len(), n as usize);
        by_item.into_values().collect()
    }
}

fn log_path(tag: &str) -> String {
    std::env::temp_dir().join(format!("hangfree-{tag}.log")).to_string_lossy().into_owned()
}

/// How often each name was logged.
fn runs(path: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *m.entry(line.to_owned()).or_insert(0) += 1;
    }
    m
}

fn once(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    names.into_iter().map(|n| (n, 1)).collect()
}

#[test]
fn a_chunk_whose_worker_dies_keeps_what_finished_and_runs_the_rest_elsewhere() {
    wd(|| {
        let tag = new_tag("chunk-death");
        let log = log_path(&tag);
        let lines: Vec<String> =
            (0..6).map(|i| if i == 2 { format!("log {log} i{i} exit 3") } else { format!("log {log} i{i}") }).collect();
        let pool = builder(&tag).workers(1).build().expect("pool");
        let parts = Arc::new(Parts::default());
        pool.submit_to(parts.clone(), vec![Task::chunk(lines.join("\n").into_bytes(), 6)], 1).expect("submit");
        let got = parts.items(6);
        for (i, o) in got.iter().enumerate() {
            match (i, o) {
                (2, Outcome::Failed(TaskError::WorkerLost(w))) => {
                    assert_eq!(w.cause, LossCause::Exited(hangfree::ExitStatus::Code(3)));
                    assert!(!w.finished);
                }
                (2, o) => panic!("item 2: {o:?}"),
                (i, Outcome::Value(v)) => assert_eq!(s(v), format!("i{i}")),
                (i, o) => panic!("item {i}: {o:?}"),
            }
        }
        assert_eq!(runs(&log), once((0..6).map(|i| format!("i{i}"))));
        let st = pool.stats();
        assert_eq!((st.submitted, st.values, st.worker_lost), (6, 5, 1), "{st:?}");
        shutdown(&pool);
        let _ = std::fs::remove_file(&log);
    });
}

#[test]
fn a_time_limit_in_a_chunk_is_per_item_and_ends_only_the_late_one() {
    wd(|| {
        let tag = new_tag("chunk-timeout");
        let log = log_path(&tag);
        // Five items of 150 ms (750 ms together) and one of 10 s, under a 500 ms limit.
        let lines: Vec<String> = (0..6)
            .map(|i| if i == 4 { format!("log {log} i{i} sleep 10000") } else { format!("log {log} i{i} sleep 150") })
            .collect();
        let pool = builder(&tag).workers(1).task_timeout(Duration::from_millis(500)).build().expect("pool");
        let parts = Arc::new(Parts::default());
        let t0 = Instant::now();
        pool.submit_to(parts.clone(), vec![Task::chunk(lines.join("\n").into_bytes(), 6)], 1).expect("submit");
        let got = parts.items(6);
        assert!(t0.elapsed() < Duration::from_secs(8), "took {:?}", t0.elapsed());
        for (i, o) in got.iter().enumerate() {
            match (i, o) {
                (4, Outcome::Failed(TaskError::TimedOut { .. })) => {}
                (i, Outcome::Value(v)) if i != 4 => assert_eq!(s(v), format!("i{i}")),
                (i, o) => panic!("item {i}: {o:?}"),
            }
        }
        assert_eq!(runs(&log), once((0..6).map(|i| format!("i{i}"))));
        shutdown(&pool);
        let _ = std::fs::remove_file(&log);
    });
}

#[test]
fn retries_run_again_only_the_item_that_killed_its_worker() {
    wd(|| {
        let tag = new_tag("chunk-retry");
        let log = log_path(&tag);
        let lines: Vec<String> =
            (0..5).map(|i| if i == 1 { format!("log {log} i{i} exit 9") } else { format!("log {log} i{i}") }).collect();
        let pool = builder(&tag).workers(1).retries(2).build().expect("pool");
        let parts = Arc::new(Parts::default());
        pool.submit_to(parts.clone(), vec![Task::chunk(lines.join("\n").into_bytes(), 5)], 1).expect("submit");
        let got = parts.items(5);
        match &got[1] {
            Outcome::Failed(TaskError::WorkerLost(w)) => assert_eq!(w.earlier.len(), 2),
            o => panic!("item 1: {o:?}"),
        }
        let mut expected = once((0..5).map(|i| format!("i{i}")));
        expected.insert("i1".into(), 3);
        assert_eq!(runs(&log), expected);
        assert_eq!(pool.stats().retries, 2);
        shutdown(&pool);
        let _ = std::fs::remove_file(&log);
    });
}

/// Tasks sent ahead to a worker that is then stopped (its running task passed its time
/// limit; it ignores SIGTERM and lives on through the grace period) run once, on another
/// worker. The race this guards against — the worker answering its task and starting
/// the next in the microseconds before the pool stops it — is too narrow to provoke
/// here; the page's own test (`racing_starts_and_a_revoke_agree_on_what_started`) runs it
/// on threads.
#[test]
fn a_task_sent_ahead_to_a_stopped_worker_is_started_only_elsewhere() {
    wd(|| {
        let tag = new_tag("sent-ahead");
        let log = log_path(&tag);
        let pool = builder(&tag).workers(1).prefetch(4).grace(Duration::from_secs(3)).build().expect("pool");
        let late = pool
            .submit(Task::new(format!("!item log {log} late ignore-term 800")).timeout(Duration::from_millis(300)))
            .expect("submit");
        let ahead: Vec<_> = (0..3).map(|i| submit(&pool, &format!("!item log {log} ahead{i}"))).collect();
        assert!(matches!(failed(wait(&late)), TaskError::TimedOut { .. }));
        for (i, h) in ahead.iter().enumerate() {
            assert_eq!(s(&value(h)), format!("ahead{i}"));
        }
        // The stopped worker lives on through its grace period: give it time to misbehave.
        std::thread::sleep(Duration::from_millis(1200));
        let mut expected = once((0..3).map(|i| format!("ahead{i}")));
        expected.insert("late".into(), 1);
        assert_eq!(runs(&log), expected);
        shutdown(&pool);
        let _ = std::fs::remove_file(&log);
    });
}
