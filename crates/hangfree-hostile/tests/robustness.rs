//! No panic reaches a caller: durations past what the clock can hold, zero time limits,
//! a panic on the supervisor thread, and a kernel (or seccomp profile) that refuses
//! `epoll_pwait2`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hangfree::{BuildError, EventKind, MAX_DURATION, Outcome, SubmitError, Task, TaskError};

#[test]
fn durations_past_the_clock_are_taken_as_no_limit() {
    wd(|| {
        let tag = new_tag("huge");
        let pool = builder(&tag)
            .workers(2)
            .task_timeout(Duration::MAX)
            .grace(Duration::MAX)
            .kill_wait(Duration::MAX)
            .startup_timeout(Duration::MAX)
            .prefetch_below(Duration::MAX)
            .memory_poll(Duration::MAX)
            .max_memory(1 << 40)
            .stack_dump(10, Duration::MAX)
            .build()
            .expect("build");
        let h = pool.submit(Task::new(b"one".to_vec()).timeout(Duration::MAX)).unwrap();
        assert_eq!(h.wait_timeout(Duration::MAX), Some(Outcome::Value(b"one".to_vec())));
        let mut batch = pool.submit_batch((0..4).map(|i| Task::new(vec![b'a' + i]).timeout(MAX_DURATION)), 2).unwrap();
        let mut got = 0;
        while let Some((_, o)) = batch.next_timeout(Duration::MAX).unwrap() {
            assert!(o.is_value(), "{o:?}");
            got += 1;
        }
        assert_eq!(got, 4);
        pool.close();
        // The workers exit on the Shutdown frame: no escalation is needed.
        pool.join(Some(Duration::MAX)).expect("join");
        let st = pool.stats();
        assert_eq!((st.values, st.timed_out, st.pool_failed), (5, 0, 0), "{st:?}");
    });
}

#[test]
fn zero_time_limits_are_refused() {
    wd(|| {
        let tag = new_tag("zero");
        let e = builder(&tag).task_timeout(Duration::ZERO).build().unwrap_err();
        assert!(matches!(e, BuildError::Invalid("task_timeout must be > 0 or None")), "{e}");
        let e = builder(&tag).startup_timeout(Duration::ZERO).build().unwrap_err();
        assert!(matches!(e, BuildError::Invalid("startup_timeout must be > 0")), "{e}");
        let pool = builder(&tag).workers(1).build().unwrap();
        let tasks = vec![Task::new(b"a".to_vec()), Task::new(b"b".to_vec()).timeout(Duration::ZERO)];
        assert_eq!(
            pool.submit_batch(tasks, 1).unwrap_err(),
            SubmitError::Invalid("a task's timeout must be > 0 or None")
        );
        // Nothing of the refused submission was queued.
        assert_eq!(pool.stats().submitted, 0);
        assert_eq!(s(&value(&submit(&pool, "fine"))), "fine");
        shutdown(&pool);
    });
}

/// The event hook runs on the supervisor thread: one that panics is a real way to panic
/// that thread, with no hook for tests in the engine.
#[test]
fn a_panic_on_the_supervisor_thread_fails_every_task_and_the_pool() {
    wd(|| {
        let tag = new_tag("panic");
        let pool = builder(&tag)
            .workers(2)
            .prefetch(1)
            .grace(Duration::from_secs(30))
            .on_event(|e| {
                if e.kind == EventKind::WorkerLost {
                    panic!("boom in the event hook");
                }
            })
            .build()
            .unwrap();
        let busy: Vec<_> = (0..2).map(|_| submit(&pool, "!ignore-term 60000")).collect();
        wait_until(LONG, "both busy tasks to start", || {
            busy.iter().all(|h| pool.task_state(h.id()) == hangfree::TaskState::Running)
        });
        let queued: Vec<_> = (0..4).map(|_| submit(&pool, "!sleep 60000")).collect();
        let workers = workers_of(&tag);
        assert_eq!(workers.len(), 2, "{:?}", tagged(&tag));
        let t0 = Instant::now();
        // A worker killed from outside: the pool reports it lost, and the hook panics.
        // SAFETY: a plain kill of our own child.
        unsafe { libc::kill(workers[0], libc::SIGKILL) };
        for h in busy.iter().chain(&queued) {
            match failed(wait(h)) {
                TaskError::PoolFailed { task, reason } => {
                    assert_eq!(task.id, h.id());
                    assert!(reason.contains("supervisor thread panicked (boom in the event hook)"), "{reason}");
                }
                e => panic!("task {} ended as {e}", h.id()),
            }
        }
        // Not after the 30 s grace: after a panic every worker is killed at once.
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        match pool.submit(b"later".to_vec()) {
            Err(SubmitError::Failed(why)) => assert!(why.contains("panicked"), "{why}"),
            other => panic!("a submission to a failed pool: {other:?}"),
        }
        assert!(pool.startup_failure().is_none());
        pool.join(Some(LONG)).expect("join after the panic");
        assert_eq!(pool.stats().pool_failed, 6, "{:?}", pool.stats());
        for pid in workers {
            assert!(is_dead(pid), "worker {pid} outlived the failed pool");
        }
        assert!(workers_of(&tag).is_empty(), "{:?}", tagged(&tag));
    });
}

/// Makes `epoll_pwait2` fail with `errno` for this thread and the threads it starts (the
/// pool's supervisor), as an old kernel or a container's seccomp profile does.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn refuse_epoll_pwait2(errno: u32) {
    const NR_EPOLL_PWAIT2: u32 = 441; // The same on every architecture (Linux 5.11).
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 1, 0, AUDIT_ARCH),
        op(RET_K, 0, 0, RET_ALLOW),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JEQ_K, 0, 1, NR_EPOLL_PWAIT2),
        op(RET_K, 0, 0, RET_ERRNO | errno),
        op(RET_K, 0, 0, RET_ALLOW),
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: plain prctl calls; the filter program outlives the call that copies it.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const _), 0);
        // The filter is in place: the call now fails as a kernel without it would.
        let r = libc::syscall(NR_EPOLL_PWAIT2 as libc::c_long, -1, 0, 0, 0, 0);
        assert_eq!((r, std::io::Error::last_os_error().raw_os_error()), (-1, Some(errno as i32)));
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn pool_without_epoll_pwait2(errno: u32) {
    wd(move || {
        refuse_epoll_pwait2(errno);
        let tag = new_tag("no-pwait2");
        let pool = Arc::new(builder(&tag).workers(2).grace(Duration::from_millis(200)).build().unwrap());
        // Outcomes, a wake-up by a submission, and a timer (a time-out) all work.
        assert_eq!(s(&value(&submit(&pool, "hello"))), "hello");
        let t0 = Instant::now();
        let late = pool.submit(Task::new(b"!sleep 60000".to_vec()).timeout(Duration::from_millis(300))).unwrap();
        match failed(wait(&late)) {
            TaskError::TimedOut { limit, .. } => assert_eq!(limit, Duration::from_millis(300)),
            e => panic!("{e}"),
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        let batch: Vec<_> = (0..50).map(|i| submit(&pool, &format!("item{i}"))).collect();
        for (i, h) in batch.iter().enumerate() {
            assert_eq!(s(&value(h)), format!("item{i}"));
        }
        let _busy = submit(&pool, "!ignore-term 60000");
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        shutdown(&pool);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(pool.stats().pool_failed, 0);
    });
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn the_pool_runs_where_epoll_pwait2_is_missing() {
    pool_without_epoll_pwait2(libc::ENOSYS as u32);
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn the_pool_runs_where_seccomp_forbids_epoll_pwait2() {
    pool_without_epoll_pwait2(libc::EPERM as u32);
}
