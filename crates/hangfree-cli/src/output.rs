//! Jobs' output, copied from the files the jobs wrote to this process's stdout and
//! stderr: a job's output at once when it ends (grouped), or as whole lines while it
//! runs (`--line-buffer`); never a line of one job inside a line of another, because
//! only this thread writes and it writes whole lines or whole outputs.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Which stream a job's file is copied to.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

/// The part of one output file already copied.
#[derive(Clone, Debug, Default)]
pub struct Tail {
    /// Bytes of the file already written out.
    pub offset: u64,
}

/// Copies the file at `path` from `tail.offset` to `stream`. With `whole_lines`, only up
/// to the last newline (the rest waits for the job to write more or end). Each line is
/// prefixed with `tag` and a tab if given. Returns whether anything was written.
pub fn copy(path: &Path, tail: &mut Tail, stream: Stream, tag: Option<&str>, whole_lines: bool) -> io::Result<bool> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= tail.offset {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(tail.offset))?;
    let mut out: Box<dyn Write> = match stream {
        Stream::Out => Box::new(io::stdout().lock()),
        Stream::Err => Box::new(io::stderr().lock()),
    };
    let mut wrote = false;
    if whole_lines {
        // Only what the file held when we looked, so a job writing fast cannot keep this
        // loop from returning.
        let mut r = BufReader::new(f.take(len - tail.offset));
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            write_line(&mut out, tag, &line)?;
            tail.offset += n as u64;
            wrote = true;
        }
    } else if let Some(tag) = tag {
        let mut r = BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            write_line(&mut out, Some(tag), &line)?;
            tail.offset += n as u64;
            wrote = true;
        }
    } else {
        // Straight to the descriptor, in large blocks: through the line-buffered stdout,
        // a 64 KiB output took 8 reads and 16 writes.
        out.flush()?;
        tail.offset += copy_raw(&mut f, stream)?;
        wrote = true;
    }
    out.flush()?;
    Ok(wrote)
}

/// Copies `f` to the descriptor of `stream` (whose lock the caller holds, with nothing
/// buffered) in blocks of 64 KiB; returns the bytes copied.
fn copy_raw(f: &mut File, stream: Stream) -> io::Result<u64> {
    use std::os::fd::FromRawFd;
    let fd = match stream {
        Stream::Out => 1,
        Stream::Err => 2,
    };
    // SAFETY: the process's own stdout or stderr, open for its whole life; ManuallyDrop
    // keeps it from being closed here.
    let raw = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        (&*raw).write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn write_line(out: &mut dyn Write, tag: Option<&str>, line: &[u8]) -> io::Result<()> {
    if let Some(t) = tag {
        out.write_all(t.as_bytes())?;
        out.write_all(b"\t")?;
    }
    out.write_all(line)
}

/// The whole file as text (lossy), for the results file.
pub fn read_text(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}
