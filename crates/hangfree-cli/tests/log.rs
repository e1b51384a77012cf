//! The job log in GNU parallel's format, read back by `--resume`, `--resume-failed` and
//! `--retry-failed`; the results file.

mod common;

use std::time::Duration;

use common::{at, run_in, s, tempdir};

fn run(dir: &std::path::Path, args: &[&str]) -> common::Run {
    run_in(dir, args, b"", Duration::from_secs(30))
}

#[test]
fn joblog_has_gnu_parallels_header_and_fields() {
    let dir = tempdir();
    let d = dir.path();
    let log = at(d, "log");
    let r = run(d, &["run", "-k", "--joblog", &s(&log), "echo {}; exit {}", ":::", "0", "3"]);
    assert_eq!(r.code, Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"));
    let mut rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    rows.sort_by_key(|r| r[0].to_owned());
    assert_eq!(rows.len(), 2);
    for (row, (seq, exit, cmd)) in rows.iter().zip([("1", "0", "echo 0; exit 0"), ("2", "3", "echo 3; exit 3")]) {
        assert_eq!(row.len(), 9);
        assert_eq!((row[0], row[1], row[4], row[5], row[6], row[7], row[8]), (seq, ":", "0", "0", exit, "0", cmd));
        let start: f64 = row[2].parse().unwrap();
        assert!(start > 1.6e9 && row[2].split('.').nth(1).unwrap().len() == 3, "{}", row[2]);
        assert!(row[3].len() == 10 && row[3].trim().parse::<f64>().unwrap() >= 0.0, "runtime {:?}", row[3]);
    }
}

#[test]
fn resume_skips_logged_jobs_and_resume_failed_reruns_failed_ones() {
    let dir = tempdir();
    let d = dir.path();
    let log = s(&at(d, "log"));
    let job = "echo {} >> ran; [ {} != bad ]";
    let r = run(d, &["run", "-k", "-j", "1", "--joblog", &log, "--halt", "soon,fail=1", job, ":::", "a", "bad", "c"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(std::fs::read_to_string(at(d, "ran")).unwrap(), "a\nbad\n");
    // --resume: only the job never run.
    let r = run(d, &["run", "-k", "-j", "1", "--joblog", &log, "--resume", job, ":::", "a", "bad", "c"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(at(d, "ran")).unwrap(), "a\nbad\nc\n");
    // Everything is logged now: nothing runs.
    let r = run(d, &["run", "--joblog", &log, "--resume", job, ":::", "a", "bad", "c"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(std::fs::read_to_string(at(d, "ran")).unwrap(), "a\nbad\nc\n");
    // --resume-failed: the failed one again.
    let r = run(d, &["run", "--joblog", &log, "--resume-failed", job, ":::", "a", "bad", "c"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(std::fs::read_to_string(at(d, "ran")).unwrap(), "a\nbad\nc\nbad\n");
    let text = std::fs::read_to_string(at(d, "log")).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("Seq\t")).count(), 1, "one header: {text}");
    assert_eq!(text.lines().count(), 5);
}

#[test]
fn retry_failed_reruns_the_logged_commands() {
    let dir = tempdir();
    let d = dir.path();
    let log = s(&at(d, "log"));
    let r = run(d, &["run", "--joblog", &log, "echo {} >> ran; [ {} != bad ]", ":::", "ok", "bad"]);
    assert_eq!(r.code, Some(1));
    let r = run(d, &["run", "--joblog", &log, "--retry-failed"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let mut ran: Vec<String> = std::fs::read_to_string(at(d, "ran")).unwrap().lines().map(str::to_owned).collect();
    ran.sort();
    assert_eq!(ran, ["bad", "bad", "ok"]);
}

#[test]
fn a_log_that_does_not_match_the_input_is_refused() {
    let dir = tempdir();
    let d = dir.path();
    let log = s(&at(d, "log"));
    let r = run(d, &["run", "--joblog", &log, "echo {}", ":::", "a", "b"]);
    assert_eq!(r.code, Some(0));
    let r = run(d, &["run", "--joblog", &log, "--resume", "touch {}", ":::", "a", "b", "c"]);
    assert_eq!(r.code, Some(255));
    assert!(r.stderr.contains("does not match"), "{}", r.stderr);
    assert!(!at(d, "c").exists(), "a job ran after the log was refused");
    let r = run(d, &["run", "--joblog", &log, "--resume", "echo {}", ":::", "a"]);
    assert_eq!(r.code, Some(255));
    assert!(r.stderr.contains("only 1 jobs"), "{}", r.stderr);
}

#[test]
fn results_hold_one_json_record_per_job() {
    let dir = tempdir();
    let d = dir.path();
    let res = at(d, "r.jsonl");
    let r = run(
        d,
        &[
            "run",
            "-k",
            "--timeout",
            "0.5",
            "--results",
            &s(&res),
            "echo out {}; echo err {} >&2; sleep {}",
            ":::",
            "0",
            "5",
        ],
    );
    assert_eq!(r.code, Some(1));
    let recs: Vec<serde_json::Value> =
        std::fs::read_to_string(&res).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 2);
    let quick = recs.iter().find(|r| r["seq"] == 1).unwrap();
    assert_eq!(quick["stdout"], "out 0\n");
    assert_eq!(quick["stderr"], "err 0\n");
    assert_eq!(
        (quick["exitval"].as_i64(), quick["reason"].as_str(), quick["attempt"].as_u64()),
        (Some(0), Some("exit"), Some(1))
    );
    assert_eq!(quick["args"], serde_json::json!(["0"]));
    for field in ["host", "starttime", "jobruntime", "send", "receive", "signal", "command", "peak_rss"] {
        assert!(quick.get(field).is_some(), "{field} missing: {quick}");
    }
    let slow = recs.iter().find(|r| r["seq"] == 2).unwrap();
    assert_eq!((slow["exitval"].as_i64(), slow["reason"].as_str()), (Some(-1), Some("timeout")));
    assert_eq!(slow["stdout"], "out 5\n", "output until the time-out");
}

#[test]
fn jobs_stopped_by_a_halt_are_not_logged_so_resume_runs_them() {
    let dir = tempdir();
    let d = dir.path();
    let log = s(&at(d, "log"));
    let job = "echo {} >> ran; if [ {} = bad ]; then sleep 0.3; exit 1; fi; sleep 30";
    let r = run(d, &["run", "-j", "2", "--joblog", &log, "--halt", "now,fail=1", job, ":::", "slow", "bad"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let text = std::fs::read_to_string(at(d, "log")).unwrap();
    assert_eq!(text.lines().count(), 2, "the header and the failed job: {text}");
    // The same command: only the halted job runs again (a time limit, which is not part
    // of the command, ends it this time).
    let r = run(d, &["run", "--joblog", &log, "--resume", "--timeout", "0.3", job, ":::", "slow", "bad"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(std::fs::read_to_string(at(d, "ran")).unwrap().lines().filter(|l| *l == "slow").count(), 2);
    assert_eq!(std::fs::read_to_string(at(d, "ran")).unwrap().lines().filter(|l| *l == "bad").count(), 1);
}
