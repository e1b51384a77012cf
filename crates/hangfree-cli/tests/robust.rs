//! The robustness flags against jobs that misbehave: time limits, the term sequence,
//! grandchildren, daemons, memory, retries, halts, signals to hangfree itself.

mod common;

use std::time::{Duration, Instant};

use common::{alive, at, command, gone_within, pids, run, run_in, s, tempdir, wait_bounded};

fn joblog_fields(path: &std::path::Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').map(|f| f.trim().to_owned()).collect())
        .collect()
}

#[test]
fn jobs_never_run_more_than_j_at_once() {
    let dir = tempdir();
    let d = dir.path();
    let job = "touch run.{}; n=$(ls run.* | wc -l); sleep 0.2; rm run.{}; echo $n";
    let r = run_in(d, &["run", "-j", "2", job, ":::", "1", "2", "3", "4", "5", "6"], b"", Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let most: usize = r.stdout.lines().map(|l| l.trim().parse::<usize>().unwrap()).max().unwrap();
    assert!(most <= 2, "more than 2 jobs ran at once: {}", r.stdout);
}

#[test]
fn a_job_past_its_timeout_is_stopped_with_its_grandchildren() {
    let dir = tempdir();
    let d = dir.path();
    let log = at(d, "log");
    let job = "sleep 60 & echo $! >> pids; sh -c 'sleep 60' & echo $! >> pids; echo started {}; wait";
    let t0 = Instant::now();
    let r =
        run_in(d, &["run", "--timeout", "0.5", "--joblog", &s(&log), job, ":::", "x"], b"", Duration::from_secs(30));
    assert_eq!(r.code, Some(1), "one job failed: {}", r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert_eq!(r.stdout, "started x\n", "a timed-out job's output so far is printed");
    let f = joblog_fields(&log);
    assert_eq!((f[0][6].as_str(), f[0][7].as_str()), ("-1", "15"), "killed: Exitval -1, Signal 15");
    for p in pids(&at(d, "pids")) {
        assert!(gone_within(p, Duration::from_secs(2)), "grandchild {p} outlived its job");
    }
}

#[test]
fn a_fixed_and_a_relative_timeout() {
    let r = run(&["run", "--timeout", "1m", "echo {}", ":::", "fine"]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "fine\n"));
    // Three quick successes make the median; 300% of it stops the slow fourth job.
    let t0 = Instant::now();
    let r = run(&["run", "-j", "1", "-k", "--timeout", "300%", "sleep {}; echo {}", ":::", "0.1", "0.1", "0.1", "20"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(r.stdout, "0.1\n0.1\n0.1\n");
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
}

#[test]
fn term_seq_gives_the_grace_period_then_kills() {
    let dir = tempdir();
    let d = dir.path();
    // A job that cleans up on SIGTERM gets the time to do it.
    let log = at(d, "log1");
    let job = "trap 'echo cleaned up {}; exit 3' TERM; sleep 30 & wait";
    let r = run_in(
        d,
        &["run", "--timeout", "0.3", "--term-seq", "TERM,2000,KILL,25", "--joblog", &s(&log), job, ":::", "a"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(r.stdout, "cleaned up a\n", "{}", r.stderr);
    // A job that ignores SIGTERM is SIGKILLed once the grace period is over.
    let log = at(d, "log2");
    let job = "trap '' TERM; echo $$ > pid; echo ignoring {}; while :; do sleep 0.05; done";
    let t0 = Instant::now();
    let r = run_in(
        d,
        &["run", "--timeout", "0.3", "--term-seq", "TERM,500,KILL", "--joblog", &s(&log), job, ":::", "b"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(1), "ignoring b\n"), "{}", r.stderr);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(750) && took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(joblog_fields(&log)[0][7], "9", "the log says it took SIGKILL");
    assert!(!alive(pids(&at(d, "pid"))[0]));
}

#[test]
fn processes_a_job_leaves_behind_die_when_it_ends_even_setsid_ones() {
    let dir = tempdir();
    let d = dir.path();
    let job = "sleep 60 & echo $! >> pids; setsid sleep 60 & echo $! >> pids; echo done {}";
    let r = run_in(d, &["run", job, ":::", "x"], b"", Duration::from_secs(30));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "done x\n"), "{}", r.stderr);
    let p = pids(&at(d, "pids"));
    assert_eq!(p.len(), 2);
    for pid in p {
        assert!(gone_within(pid, Duration::from_secs(2)), "{pid} outlived its job");
    }
}

#[test]
fn cgroup_mode_runs_or_says_why_not() {
    let r = run(&["run", "--cgroup", "echo {}", ":::", "in-a-cgroup"]);
    match r.code {
        Some(0) => assert_eq!(r.stdout, "in-a-cgroup\n"),
        Some(255) => {
            assert!(r.stderr.contains("cgroup"), "{}", r.stderr);
            eprintln!("skipped: cgroup mode is not available here: {}", r.stderr.trim());
        }
        other => panic!("{other:?}: {}", r.stderr),
    }
}

#[test]
fn a_job_tree_over_the_memory_limit_is_killed() {
    let dir = tempdir();
    let d = dir.path();
    let res = at(d, "results.jsonl");
    // Two processes of 60 MB each: each is under the 100 MiB limit, their sum is not.
    let hog = "{ head -c 60000000 /dev/zero; sleep 20; } | tail -c 60000000 > /dev/null";
    let job = format!("echo {{}}; {hog} & {hog} & wait");
    let t0 = Instant::now();
    let r = run_in(
        d,
        &["run", "--mem-limit", "100MiB", "--results", &s(&res), &job, ":::", "big"],
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(15), "took {:?}", t0.elapsed());
    let rec: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&res).unwrap().trim()).unwrap();
    assert_eq!(rec["reason"], "memory", "{rec}");
    assert!(rec["peak_rss"].as_u64().unwrap() > 100 << 20, "{rec}");
    let r = run_in(d, &["run", "--mem-limit", "100MiB", "echo {}", ":::", "small"], b"", Duration::from_secs(30));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "small\n"));
}

#[test]
fn retries_run_a_failing_job_again() {
    let dir = tempdir();
    let d = dir.path();
    let res = at(d, "r.jsonl");
    // Fails twice, then succeeds.
    let job = "echo x >> tries.{}; [ $(wc -l < tries.{}) -ge 3 ] && echo ok {}";
    let r = run_in(d, &["run", "--retries", "3", "--results", &s(&res), job, ":::", "a"], b"", Duration::from_secs(30));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "ok a\n"), "{}", r.stderr);
    let rec: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&res).unwrap().trim()).unwrap();
    assert_eq!(rec["attempt"], 3);
    let r =
        run_in(d, &["run", "--retries", "2", "echo {} >> tries.b; exit 1", ":::", "b"], b"", Duration::from_secs(30));
    assert_eq!(r.code, Some(1));
    assert_eq!(std::fs::read_to_string(at(d, "tries.b")).unwrap(), "b\nb\n", "2 runs in all");
}

#[test]
fn halt_now_stops_running_jobs_and_returns_the_failing_status() {
    let dir = tempdir();
    let d = dir.path();
    let t0 = Instant::now();
    let job = "if [ {} = fail ]; then sleep 0.3; exit 7; fi; echo $$ >> pids; sleep 30";
    let r = run_in(
        d,
        &["run", "-j", "3", "--halt", "now,fail=1", job, ":::", "s1", "fail", "s2", "s3", "s4"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(7), "the failing job's status: {}", r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(8), "took {:?}", t0.elapsed());
    for p in pids(&at(d, "pids")) {
        assert!(gone_within(p, Duration::from_secs(2)), "{p} survived the halt");
    }
    assert!(!r.stdout.contains("s4"));
}

#[test]
fn halt_soon_lets_running_jobs_finish_and_starts_no_more() {
    let dir = tempdir();
    let d = dir.path();
    let job = "if [ {} = fail ]; then exit 3; fi; sleep 0.5; echo {}";
    let r = run_in(
        d,
        &["run", "-j", "2", "--halt", "soon,fail=1", job, ":::", "slow", "fail", "never1", "never2"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert_eq!(r.stdout, "slow\n", "the running job finished; no new one started");
    let r = run(&["run", "-j", "1", "--halt", "soon,done=2", "echo {}", ":::", "1", "2", "3", "4"]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "1\n2\n"));
    let r = run(&["run", "-j", "1", "--halt", "now,success=50%", "echo {}", ":::", "1", "2", "3", "4"]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "1\n2\n"));
}

#[test]
fn exit_status_counts_failed_jobs_as_gnu_parallel() {
    let r = run(&["run", "exit {}", ":::", "0", "1", "2", "0"]);
    assert_eq!(r.code, Some(2));
    let many: Vec<String> = (0..102).map(|i| i.to_string()).collect();
    let mut args = vec!["run", "-j", "4", "exit 1 #"];
    args.push(":::");
    args.extend(many.iter().map(String::as_str));
    let r = run(&args);
    assert_eq!(r.code, Some(101), "more than 100 failed");
    let r = run(&["run", "kill -9 $$ #", ":::", "x"]);
    assert_eq!(r.code, Some(1), "a job killed by a signal failed");
}

fn stopped_by(sig: i32, code: i32) {
    let dir = tempdir();
    let d = dir.path();
    let job = ": {}; trap '' TERM; sleep 60 & echo $! >> pids; echo $$ >> pids; wait";
    let mut c = command(d, &["run", "-j", "2", "--term-seq", "TERM,300,KILL", job, ":::", "a", "b"]);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let t0 = Instant::now();
    while pids(&at(d, "pids")).len() < 4 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: our child.
    unsafe { libc::kill(pid, sig) };
    let t1 = Instant::now();
    let out = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(code), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t1.elapsed() < Duration::from_secs(5), "took {:?}", t1.elapsed());
    for p in pids(&at(d, "pids")) {
        assert!(gone_within(p, Duration::from_secs(2)), "{p} survived");
    }
}

#[test]
fn ctrl_c_stops_every_job_tree_and_exits_130() {
    stopped_by(libc::SIGINT, 130);
}

#[test]
fn sigterm_stops_every_job_tree_and_exits_143() {
    stopped_by(libc::SIGTERM, 143);
}

#[test]
fn when_hangfree_is_killed_its_jobs_die_within_a_second() {
    let dir = tempdir();
    let d = dir.path();
    let job = ": {}; sleep 60 & echo $! >> pids; echo $$ >> pids; wait";
    let mut c = command(d, &["run", "-j", "2", job, ":::", "a", "b"]);
    let mut child = c.spawn().unwrap();
    let t0 = Instant::now();
    while pids(&at(d, "pids")).len() < 4 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let p = pids(&at(d, "pids"));
    assert_eq!(p.len(), 4);
    for pid in p {
        assert!(gone_within(pid, Duration::from_secs(1)), "{pid} outlived hangfree's SIGKILL");
    }
}

#[test]
fn jobs_start_as_input_arrives_and_ctrl_c_works_while_input_waits() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempdir();
    let mut c = command(dir.path(), &["run", "echo got"]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"first\n").unwrap();
    input.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got first\n", "the first job ran while its input was still open");
    // SAFETY: our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    let done = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(done.status.code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    drop(input);
}

#[test]
fn a_timed_out_jobs_setsid_daemon_that_ignores_sigterm_dies_with_or_without_cgroup() {
    for cgroup in [false, true] {
        let dir = tempdir();
        let d = dir.path();
        // The whole tree ignores SIGTERM, so the job is still running when the grace
        // period ends, and the daemon has left the job's process group.
        let job = r#": {}; trap '' TERM; setsid sh -c "echo \$\$ > daemon; exec sleep 60" & sleep 60"#;
        let mut args = vec!["run", "--timeout", "0.5", "--term-seq", "TERM,300,KILL", job, ":::", "x"];
        if cgroup {
            args.insert(1, "--cgroup");
        }
        let r = run_in(d, &args, b"", Duration::from_secs(30));
        if cgroup && r.code == Some(255) && r.stderr.contains("cgroup") {
            eprintln!("skipped: cgroup mode is not available here: {}", r.stderr.trim());
            return;
        }
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        let daemon = pids(&at(d, "daemon"));
        assert_eq!(daemon.len(), 1, "the daemon started");
        assert!(gone_within(daemon[0], Duration::from_secs(2)), "cgroup {cgroup}: the daemon outlived its job");
    }
}

#[test]
fn a_relative_timeout_also_stops_jobs_that_started_before_there_was_a_median() {
    // The slow job starts first, with no median yet; three quick successes make one.
    let t0 = Instant::now();
    let r = run(&["run", "-j", "2", "--timeout", "500%", "sleep {}; echo {}", ":::", "30", "0.1", "0.1", "0.1", "0.1"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(r.sorted_lines(), ["0.1", "0.1", "0.1", "0.1"]);
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    assert!(r.stderr.contains("job 1 timed out"), "{}", r.stderr);
}

#[test]
fn on_a_timeout_background_processes_get_the_grace_period_too() {
    let dir = tempdir();
    let d = dir.path();
    // The shell dies of SIGTERM at once; its background child needs 0.5 s to clean up.
    let job = ": {}; sh -c 'trap \"sleep 0.5; echo cleaned > cleaned; exit\" TERM; sleep 60 & wait' & sleep 60";
    let r = run_in(
        d,
        &["run", "--timeout", "0.5", "--term-seq", "TERM,3000,KILL", job, ":::", "x"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(at(d, "cleaned")).unwrap_or_default(), "cleaned\n");
}

#[test]
fn no_two_running_jobs_share_a_slot_when_jobs_are_sent_ahead() {
    let dir = tempdir();
    let d = dir.path();
    // Short jobs: the engine sends them ahead to busy workers, and each takes its
    // worker's slot. A slot held by two jobs at once fails the second mkdir.
    let job = "mkdir slot.$PARALLEL_JOBSLOT || exit 9; sleep 0.01; rmdir slot.$PARALLEL_JOBSLOT; echo $PARALLEL_JOBSLOT; : {}";
    let seq: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    let mut args = vec!["run", "-j", "3", job, ":::"];
    args.extend(seq.iter().map(String::as_str));
    let r = run_in(d, &args, b"", Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "a slot was in use twice: {}", r.stderr);
    let slots: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(slots.len(), 60, "{}", r.stdout);
    assert!(slots.iter().all(|l| ["1", "2", "3"].contains(l)), "slots are 1..=j: {}", r.stdout);
}

#[test]
fn a_stopped_jobs_slot_is_not_reused_while_its_tree_still_runs() {
    let dir = tempdir();
    let d = dir.path();
    let log = at(d, "log");
    // The first job holds its slot's directory through its SIGTERM handler, half a second
    // into the grace period; the next jobs, in the worker that replaces its stopped one,
    // fail if they get the same slot before it is done.
    std::fs::write(
        at(d, "slow.sh"),
        "mkdir slot.$PARALLEL_JOBSLOT || exit 9\n\
         trap 'sleep 0.5; rmdir slot.$PARALLEL_JOBSLOT; exit 1' TERM\n\
         sleep 30 & wait\n",
    )
    .unwrap();
    std::fs::write(at(d, "quick.sh"), "mkdir slot.$PARALLEL_JOBSLOT || exit 9; rmdir slot.$PARALLEL_JOBSLOT\n")
        .unwrap();
    // Jobs may be sent ahead (their slot is their worker's), or not, with `{%}` (the run
    // gives each its slot).
    for cmd in ["sh {}", "sh {} {%}"] {
        let args = [
            "run",
            "-j",
            "1",
            "-k",
            "--timeout",
            "0.5",
            "--term-seq",
            "TERM,3000,KILL,25",
            "--joblog",
            &s(&log),
            cmd,
            ":::",
            "slow.sh",
            "quick.sh",
            "quick.sh",
        ];
        let r = run_in(d, &args, b"", Duration::from_secs(30));
        assert_eq!(r.code, Some(1), "only the slow job fails: {}", r.stderr);
        let f = joblog_fields(&log);
        let exits: Vec<(&str, &str)> = f.iter().map(|l| (l[0].as_str(), l[6].as_str())).collect();
        assert_eq!(exits, [("1", "-1"), ("2", "0"), ("3", "0")], "{cmd}: {}", r.stderr);
    }
}
