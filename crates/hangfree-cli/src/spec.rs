//! Values of flags written as text, parsed before anything runs: time limits, the term
//! sequence, the halt condition, the number of jobs. Each parser's error says what was
//! expected, so that bad input stops the run with a clear message.

use std::time::Duration;

/// `--timeout`: a fixed limit, or a percentage of the median runtime of successful jobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Timeout {
    /// Every job gets this limit.
    Fixed(Duration),
    /// A job gets this fraction (2.0 for `200%`) of the median runtime of the jobs that
    /// succeeded before it started.
    OfMedian(f64),
}

/// Parses `--timeout`: seconds (`30`, `0.5`), a duration with units (`1m30s`, `250ms`),
/// or a percentage (`200%`).
pub fn parse_timeout(text: &str) -> Result<Timeout, String> {
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| format!("--timeout {text:?}: expected a percentage such as 200%"))?;
        if !(p.is_finite() && p > 0.0) {
            return Err(format!("--timeout {text:?}: the percentage must be above 0"));
        }
        return Ok(Timeout::OfMedian(p / 100.0));
    }
    let d = parse_duration(t).map_err(|e| format!("--timeout {text:?}: {e}"))?;
    Ok(Timeout::Fixed(d))
}

/// A positive duration: plain seconds (GNU parallel's unit) or humantime's `1m30s`.
fn parse_duration(t: &str) -> Result<Duration, String> {
    let d = match t.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e12 => Duration::from_secs_f64(s),
        Ok(_) => return Err("expected a positive number of seconds".into()),
        Err(_) => humantime::parse_duration(t)
            .map_err(|_| "expected seconds (30, 0.5), a duration (1m30s, 250ms) or a percentage (200%)".to_string())?,
    };
    if d.is_zero() {
        return Err("a time limit must be above zero".into());
    }
    Ok(d)
}

/// What the engine can do of a term sequence: SIGTERM to the job's process group,
/// `grace`, then SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermSeq {
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// GNU parallel's default `--termseq`.
pub const DEFAULT_TERM_SEQ: &str = "TERM,200,TERM,100,TERM,50,KILL,25";

/// Parses GNU parallel's `--termseq` (`SIG,MS,SIG,MS,...,SIG[,MS]`).
///
/// The engine's escalation is one SIGTERM, a grace period, one SIGKILL; it sends no other
/// signal. So the sequence must start with TERM and end with KILL, and repeated TERMs
/// between them are folded into one: their waits add up to the grace period (GNU's
/// default becomes SIGTERM, 350 ms, SIGKILL). The wait after the final KILL is not
/// needed (the engine waits for the kill itself) and is ignored. Other signals are an
/// error rather than silently changed.
pub fn parse_term_seq(text: &str) -> Result<TermSeq, String> {
    let err = |why: &str| format!("--term-seq {text:?}: {why}");
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let mut grace_ms: u64 = 0;
    let mut signals = Vec::new();
    for (i, pair) in parts.chunks(2).enumerate() {
        let sig = pair[0].trim_start_matches("SIG").to_ascii_uppercase();
        let sig = match sig.as_str() {
            "TERM" | "15" => "TERM",
            "KILL" | "9" => "KILL",
            "" => return Err(err("a signal name is missing")),
            other => {
                return Err(err(&format!(
                    "signal {other} cannot be sent: hangfree stops a job with SIGTERM, a grace period and SIGKILL, \
                     so the sequence is TERM,MS[,TERM,MS...],KILL[,MS]"
                )));
            }
        };
        let wait: u64 = match pair.get(1) {
            Some(ms) => ms.parse().map_err(|_| err(&format!("{ms:?} is not a number of milliseconds")))?,
            None => 0,
        };
        if sig == "TERM" && signals.last() == Some(&"KILL") {
            return Err(err("nothing can follow KILL"));
        }
        if i == 0 && sig != "TERM" {
            return Err(err("the sequence must start with TERM"));
        }
        if sig == "TERM" {
            grace_ms = grace_ms.saturating_add(wait);
        }
        signals.push(sig);
    }
    if signals.last() != Some(&"KILL") {
        return Err(err("the sequence must end with KILL: a job that ignores SIGTERM would otherwise run forever"));
    }
    Ok(TermSeq { grace: Duration::from_millis(grace_ms) })
}

/// When to stop: `--halt WHEN,WHY=N|P%`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Halt {
    /// Kill running jobs at once (`now`), or let them finish but start no more (`soon`).
    pub now: bool,
    /// Which finished jobs count.
    pub on: HaltOn,
    /// How many must have finished that way.
    pub threshold: Threshold,
}

/// Which finished jobs `--halt` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltOn {
    /// Jobs that failed.
    Fail,
    /// Jobs that succeeded.
    Success,
    /// Every job.
    Done,
}

/// A count of jobs, or a share of all jobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// At least this many.
    Count(u64),
    /// At least this percentage of all jobs.
    Percent(f64),
}

impl Halt {
    /// Whether `n` jobs counted out of `total` reach the threshold.
    pub fn reached(&self, n: u64, total: u64) -> bool {
        match self.threshold {
            Threshold::Count(c) => n >= c,
            Threshold::Percent(p) => total > 0 && (n as f64) * 100.0 >= p * total as f64,
        }
    }
}

/// Parses `--halt`: `now|soon,fail|success|done=N|P%`, or GNU's older numbers (`0`
/// never, `1` = `soon,fail=1`, `2` = `now,fail=1`). `Ok(None)` means never.
pub fn parse_halt(text: &str) -> Result<Option<Halt>, String> {
    let err = |why: &str| {
        format!("--halt {text:?}: {why}; expected now|soon,fail|success|done=N|P% (for example now,fail=1)")
    };
    match text.trim() {
        "0" | "never" => return Ok(None),
        "1" => return Ok(Some(Halt { now: false, on: HaltOn::Fail, threshold: Threshold::Count(1) })),
        "2" => return Ok(Some(Halt { now: true, on: HaltOn::Fail, threshold: Threshold::Count(1) })),
        _ => {}
    }
    let (when, cond) = text.split_once(',').ok_or_else(|| err("no condition"))?;
    let now = match when.trim() {
        "now" => true,
        "soon" => false,
        other => return Err(err(&format!("{other:?} is neither now nor soon"))),
    };
    let (why, n) = cond.split_once('=').ok_or_else(|| err("no =N after the condition"))?;
    let on = match why.trim() {
        "fail" => HaltOn::Fail,
        "success" => HaltOn::Success,
        "done" => HaltOn::Done,
        other => return Err(err(&format!("{other:?} is not fail, success or done"))),
    };
    let n = n.trim();
    let threshold = if let Some(p) = n.strip_suffix('%') {
        match p.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Threshold::Percent(p),
            _ => return Err(err(&format!("{n:?} is not a percentage above 0 and at most 100"))),
        }
    } else {
        match n.parse::<u64>() {
            Ok(c) if c > 0 => Threshold::Count(c),
            _ => return Err(err(&format!("{n:?} is not a count of at least 1"))),
        }
    };
    Ok(Some(Halt { now, on, threshold }))
}

/// Parses `-j`: a number of jobs, `N%` of the cores, `+N` or `-N` cores.
pub fn parse_jobs(text: &str, cores: usize) -> Result<usize, String> {
    let t = text.trim();
    let err = || format!("-j {text:?}: expected a number of jobs (4), a share of the cores (50%), or +N/-N cores");
    let n: i64 = if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| err())?;
        (cores as f64 * p / 100.0).floor() as i64
    } else if let Some(d) = t.strip_prefix('+') {
        cores as i64 + d.parse::<i64>().map_err(|_| err())?
    } else if t.starts_with('-') {
        cores as i64 + t.parse::<i64>().map_err(|_| err())?
    } else {
        let n: i64 = t.parse().map_err(|_| err())?;
        if n == 0 {
            return Err(format!("-j {text:?}: 0 (as many as possible) is not supported: give a number of jobs"));
        }
        n
    };
    Ok(n.clamp(1, 4096) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2"), Ok(Timeout::Fixed(Duration::from_secs(2))));
        assert_eq!(parse_timeout("0.25"), Ok(Timeout::Fixed(Duration::from_millis(250))));
        assert_eq!(parse_timeout("1m30s"), Ok(Timeout::Fixed(Duration::from_secs(90))));
        assert_eq!(parse_timeout("200%"), Ok(Timeout::OfMedian(2.0)));
        for bad in ["0", "-1", "soon", "%", "0%", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn term_seqs() {
        assert_eq!(parse_term_seq(DEFAULT_TERM_SEQ), Ok(TermSeq { grace: Duration::from_millis(350) }));
        assert_eq!(parse_term_seq("TERM,1000,KILL"), Ok(TermSeq { grace: Duration::from_secs(1) }));
        assert_eq!(parse_term_seq("SIGTERM,50,SIGKILL,25"), Ok(TermSeq { grace: Duration::from_millis(50) }));
        assert!(parse_term_seq("INT,100,KILL,25").unwrap_err().contains("INT"));
        assert!(parse_term_seq("TERM,100").unwrap_err().contains("end with KILL"));
        assert!(parse_term_seq("TERM,x,KILL").unwrap_err().contains("milliseconds"));
        assert!(parse_term_seq("KILL,25").is_err());
        assert!(parse_term_seq("TERM,1,KILL,2,TERM,3").is_err());
    }

    #[test]
    fn halts() {
        let h = parse_halt("now,fail=1").unwrap().unwrap();
        assert!(h.now && h.on == HaltOn::Fail && h.threshold == Threshold::Count(1));
        let h = parse_halt("soon,done=50%").unwrap().unwrap();
        assert!(!h.now && h.on == HaltOn::Done && h.reached(5, 10) && !h.reached(4, 10));
        assert_eq!(parse_halt("0"), Ok(None));
        assert!(parse_halt("2").unwrap().unwrap().now);
        for bad in ["later,fail=1", "now,fail", "now,oops=1", "now,fail=0", "now,fail=x", "now", "now,fail=200%"] {
            assert!(parse_halt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jobs() {
        assert_eq!(parse_jobs("3", 2), Ok(3));
        assert_eq!(parse_jobs("+2", 2), Ok(4));
        assert_eq!(parse_jobs("-1", 2), Ok(1));
        assert_eq!(parse_jobs("-5", 2), Ok(1));
        assert_eq!(parse_jobs("200%", 2), Ok(4));
        assert!(parse_jobs("0", 2).is_err());
        assert!(parse_jobs("many", 2).is_err());
    }
}
