//! GNU parallel's job log: one tab-separated line per finished job, read back by
//! `--resume`, `--resume-failed` and `--retry-failed`.

use std::collections::BTreeMap;
use std::io::Write;

/// The log's header line, as GNU parallel writes it.
pub const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// One line of a job log.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The job's sequence number (`{#}`).
    pub seq: u64,
    /// Start, seconds since the Unix epoch.
    pub start: f64,
    /// Seconds the job ran.
    pub runtime: f64,
    /// Exit code; -1 if hangfree killed the job (time limit, memory, halt), 0 if another
    /// signal killed it.
    pub exitval: i32,
    /// The signal that ended the job, or 0.
    pub signal: i32,
    /// The command as run.
    pub command: String,
}

impl Entry {
    /// Whether the job succeeded.
    pub fn ok(&self) -> bool {
        self.exitval == 0 && self.signal == 0
    }

    /// The line, in GNU parallel's format (newlines in the command become NUL bytes, as
    /// there, so that one job stays one line). Host is `:`, the local machine; Send and
    /// Receive count transferred files, none here.
    pub fn line(&self) -> String {
        format!(
            "{}\t:\t{:.3}\t{:10.3}\t0\t0\t{}\t{}\t{}\n",
            self.seq,
            self.start,
            self.runtime,
            self.exitval,
            self.signal,
            self.command.replace('\n', "\0")
        )
    }

    fn parse(line: &str) -> Option<Entry> {
        let f: Vec<&str> = line.splitn(9, '\t').collect();
        if f.len() != 9 {
            return None;
        }
        Some(Entry {
            seq: f[0].trim().parse().ok()?,
            start: f[2].trim().parse().ok()?,
            runtime: f[3].trim().parse().ok()?,
            exitval: f[6].trim().parse().ok()?,
            signal: f[7].trim().parse().ok()?,
            command: f[8].replace('\0', "\n"),
        })
    }
}

/// Reads a job log: the last entry of each job (a job run again appends a new line).
/// A missing file is an empty log; a line that is not a log line is an error.
pub fn read(path: &str) -> Result<BTreeMap<u64, Entry>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read job log {path}: {e}")),
    };
    let mut entries = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || (i == 0 && line.starts_with("Seq\t")) {
            continue;
        }
        let e = Entry::parse(line).ok_or_else(|| format!("{path}, line {}: not a job log line: {line:?}", i + 1))?;
        entries.insert(e.seq, e);
    }
    Ok(entries)
}

/// An open job log.
pub struct Writer {
    file: std::fs::File,
}

impl Writer {
    /// Opens `path`: appended to when resuming (with a header if it is new), truncated
    /// otherwise.
    pub fn open(path: &str, append: bool) -> Result<Writer, String> {
        let mut o = std::fs::OpenOptions::new();
        o.create(true);
        if append {
            o.append(true)
        } else {
            o.write(true).truncate(true)
        };
        let mut file = o.open(path).map_err(|e| format!("cannot write job log {path}: {e}"))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        if empty {
            file.write_all(format!("{HEADER}\n").as_bytes())
                .map_err(|e| format!("cannot write job log {path}: {e}"))?;
        }
        Ok(Writer { file })
    }

    /// Appends one entry; written at once, so the log survives a kill of this process.
    pub fn write(&mut self, e: &Entry) -> std::io::Result<()> {
        self.file.write_all(e.line().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_back() {
        let e =
            Entry { seq: 3, start: 1700000000.123, runtime: 0.5, exitval: 2, signal: 0, command: "echo a\nb".into() };
        assert_eq!(e.line(), "3\t:\t1700000000.123\t     0.500\t0\t0\t2\t0\techo a\0b\n");
        assert_eq!(Entry::parse(e.line().trim_end_matches('\n')), Some(e));
    }
}
