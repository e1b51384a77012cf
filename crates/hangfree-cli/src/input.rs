//! Where jobs' arguments come from: `:::` lists, `::::` and `-a` files, standard input;
//! records split at newlines or, with `-0`, at NUL bytes. Several sources give every
//! combination, the last source varying fastest, as GNU parallel does.

use std::fs::File;
use std::io::{BufRead, BufReader};

/// One input source.
pub enum Source {
    /// Arguments given on the command line after `:::`.
    Args(Vec<String>),
    /// Records read from a file or standard input; `name` is for messages.
    Reader { name: String, reader: Box<dyn BufRead + Send> },
}

impl Source {
    /// Opens `path` now, so that an unreadable file stops the run before anything runs.
    /// `-` is standard input.
    pub fn file(path: &str) -> Result<Source, String> {
        if path == "-" {
            return Ok(Source::stdin());
        }
        let f = File::open(path).map_err(|e| format!("cannot read input file {path}: {e}"))?;
        Ok(Source::Reader { name: path.to_owned(), reader: Box::new(BufReader::new(f)) })
    }

    /// Standard input.
    pub fn stdin() -> Source {
        Source::Reader { name: "standard input".into(), reader: Box::new(BufReader::new(std::io::stdin())) }
    }
}

/// Yields the records of a reader, split at `sep`.
struct Records {
    name: String,
    reader: Box<dyn BufRead + Send>,
    sep: u8,
}

impl Iterator for Records {
    type Item = Result<String, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::new();
        match self.reader.read_until(self.sep, &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                if buf.last() == Some(&self.sep) {
                    buf.pop();
                }
                Some(Ok(String::from_utf8_lossy(&buf).into_owned()))
            }
            Err(e) => Some(Err(format!("cannot read {}: {e}", self.name))),
        }
    }
}

/// Every combination of the sources' records, in GNU parallel's order. The first source
/// is read as jobs are taken (so jobs from a pipe start before it ends); the others are
/// read whole first, since each of their records is used once per record of the first.
pub struct Combinations {
    first: Box<dyn Iterator<Item = Result<String, String>> + Send>,
    rest: Vec<Vec<String>>,
    current: Option<String>,
    /// Index into each of `rest`, the last varying fastest.
    odometer: Vec<usize>,
}

impl Combinations {
    /// Combines `sources`, splitting readers' records at `sep`.
    pub fn new(sources: Vec<Source>, sep: u8) -> Result<Combinations, String> {
        let mut iters = sources.into_iter().map(|s| -> Box<dyn Iterator<Item = Result<String, String>> + Send> {
            match s {
                Source::Args(a) => Box::new(a.into_iter().map(Ok)),
                Source::Reader { name, reader } => Box::new(Records { name, reader, sep }),
            }
        });
        let first = iters.next().unwrap_or_else(|| Box::new(std::iter::empty()));
        let rest = iters.map(|it| it.collect::<Result<Vec<String>, String>>()).collect::<Result<Vec<_>, _>>()?;
        let odometer = vec![0; rest.len()];
        Ok(Combinations { first, rest, current: None, odometer })
    }
}

impl Iterator for Combinations {
    type Item = Result<Vec<String>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.iter().any(Vec::is_empty) {
            return None;
        }
        if self.current.is_none() {
            match self.first.next()? {
                Ok(a) => self.current = Some(a),
                Err(e) => return Some(Err(e)),
            }
            self.odometer.iter_mut().for_each(|i| *i = 0);
        }
        let mut args = vec![self.current.clone().expect("set above")];
        args.extend(self.rest.iter().zip(&self.odometer).map(|(src, &i)| src[i].clone()));
        // Advance the odometer; when it wraps, the next record of the first source is due.
        let mut wrapped = true;
        for k in (0..self.rest.len()).rev() {
            self.odometer[k] += 1;
            if self.odometer[k] < self.rest[k].len() {
                wrapped = false;
                break;
            }
            self.odometer[k] = 0;
        }
        if wrapped {
            self.current = None;
        }
        Some(Ok(args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Source {
        Source::Args(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn every_combination_last_fastest() {
        let c: Vec<Vec<String>> = Combinations::new(vec![args(&["a", "b"]), args(&["1", "2"]), args(&["x"])], b'\n')
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let flat: Vec<String> = c.iter().map(|v| v.join(" ")).collect();
        assert_eq!(flat, ["a 1 x", "a 2 x", "b 1 x", "b 2 x"]);
    }

    #[test]
    fn records_split_at_the_separator() {
        let r = |text: &'static [u8]| Source::Reader { name: "t".into(), reader: Box::new(text) };
        let c: Vec<String> =
            Combinations::new(vec![r(b"a b\n\nc\n")], b'\n').unwrap().map(|v| v.unwrap().join("|")).collect();
        assert_eq!(c, ["a b", "", "c"]);
        let c: Vec<String> = Combinations::new(vec![r(b"x\ny\0z")], 0).unwrap().map(|v| v.unwrap().join("|")).collect();
        assert_eq!(c, ["x\ny", "z"]);
    }

    #[test]
    fn an_empty_source_gives_no_jobs() {
        assert_eq!(Combinations::new(vec![args(&["a"]), args(&[])], b'\n').unwrap().count(), 0);
    }
}
