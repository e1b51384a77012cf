//! `Pool::task_state` with real workers: a task is queued while the workers are busy,
//! sent ahead when it waits in a busy worker's channel, running once its worker has
//! started it, and done after its outcome; `cancel_if_queued` succeeds exactly while it
//! is queued.

mod common;

use common::*;
use std::time::Duration;

use hangfree::TaskState;

#[test]
fn task_state_follows_a_task_from_queue_to_done() {
    wd(|| {
        let tag = new_tag("task-state");
        // One worker, which may hold a second chunk behind the one it runs.
        let pool = builder(&tag).workers(1).prefetch(2).build().expect("pool");
        let first = submit(&pool, "!sleep 1500");
        let ahead = submit(&pool, "!sleep 1500");
        let queued = submit(&pool, "!sleep 10");
        let last = submit(&pool, "!sleep 10");
        // A submission that returned is seen by the next query: never "done" before it ran.
        assert_ne!(pool.task_state(last.id()), TaskState::Done);
        wait_until(LONG, "the first task to run", || pool.task_state(first.id()) == TaskState::Running);
        assert_eq!(pool.task_state(ahead.id()), TaskState::SentAhead);
        assert_eq!(pool.task_state(queued.id()), TaskState::Queued);
        assert_eq!(pool.task_state(last.id()), TaskState::Queued);
        // cancel_if_queued agrees: it refuses what a worker has, takes what none has.
        assert!(!pool.cancel_if_queued(first.id()));
        assert!(!pool.cancel_if_queued(ahead.id()));
        assert!(pool.cancel_if_queued(last.id()));
        assert_eq!(pool.task_state(last.id()), TaskState::Done);
        assert!(failed(wait(&last)).to_string().contains("cancelled"));
        // The first one finishes: the one sent ahead starts, the queued one goes ahead.
        assert_eq!(s(&value(&first)), "slept");
        assert_eq!(pool.task_state(first.id()), TaskState::Done);
        wait_until(LONG, "the task sent ahead to start", || pool.task_state(ahead.id()) == TaskState::Running);
        wait_until(LONG, "the queued task to be sent ahead", || pool.task_state(queued.id()) == TaskState::SentAhead);
        assert_eq!(s(&value(&ahead)), "slept");
        assert_eq!(s(&value(&queued)), "slept");
        assert_eq!(pool.task_state(ahead.id()), TaskState::Done);
        assert_eq!(pool.task_state(queued.id()), TaskState::Done);
        // An id the pool never gave.
        assert_eq!(pool.task_state(1 << 40), TaskState::Done);
        shutdown(&pool);
        // A finished pool answers at once.
        assert_eq!(pool.task_state(first.id()), TaskState::Done);
    });
}

#[test]
fn a_task_queued_behind_busy_workers_is_not_running_until_one_is_free() {
    wd(|| {
        let tag = new_tag("task-state-busy");
        // prefetch(1): nothing is ever sent ahead.
        let pool = builder(&tag).workers(2).prefetch(1).build().expect("pool");
        let busy: Vec<_> = (0..2).map(|_| submit(&pool, "!sleep 2500")).collect();
        let waiting = submit(&pool, "!sleep 300");
        for h in &busy {
            wait_until(LONG, "both workers to be busy", || pool.task_state(h.id()) == TaskState::Running);
        }
        for _ in 0..20 {
            assert_eq!(pool.task_state(waiting.id()), TaskState::Queued);
            std::thread::sleep(Duration::from_millis(10));
        }
        wait_until(LONG, "the waiting task to start", || pool.task_state(waiting.id()) == TaskState::Running);
        assert_eq!(s(&value(&waiting)), "slept");
        assert_eq!(pool.task_state(waiting.id()), TaskState::Done);
        shutdown(&pool);
    });
}
