//! Fuzzes the frame decoders with arbitrary bytes in arbitrary splits.
//!
//! Input layout: byte 0 picks the decoder's maximum frame size, byte 1 seeds the split
//! sizes, the rest is the stream. Checked, besides "never panics":
//!
//! - `Decoder` (fed in pieces, and reading from a short-read stream) and `read_frame`
//!   return the same frames, in the same order, up to the first error;
//! - no returned payload is longer than the maximum;
//! - every frame re-encodes to exactly the bytes it was decoded from.

#![no_main]

use std::io::{self, Read};

use hangfree::wire::{self, Decoder, Frame};
use libfuzzer_sys::fuzz_target;

/// A stream that hands out its bytes in the given piece sizes (short reads), with an
/// `Interrupted` error now and then, as a real socket may.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: Splits,
    calls: u32,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls % 7 == 3 {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "EINTR"));
        }
        let n = self.sizes.next_size().min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A cheap deterministic sequence of piece sizes (1..=64, sometimes large).
#[derive(Clone)]
struct Splits(u32);

impl Splits {
    fn next_size(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let r = (self.0 >> 16) as usize;
        if r % 16 == 0 { 4096 } else { 1 + r % 64 }
    }
}

fn check(f: &Frame, max: u64, stream: &[u8], at: usize) -> usize {
    assert!(f.payload.len() as u64 <= max);
    let mut again = Vec::new();
    wire::encode_into(&mut again, f.kind, f.task_id, &f.payload);
    assert_eq!(&stream[at..at + again.len()], &again[..], "frame does not re-encode to its bytes");
    at + again.len()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Small limits make the too-large path reachable; 0 allows only empty payloads.
    let max: u64 = match data[0] % 4 {
        0 => 0,
        1 => u64::from(data[0]) * 4,
        2 => 4096,
        _ => wire::DEFAULT_MAX_FRAME,
    };
    let seed = data[1] as u32;
    let stream = &data[2..];

    // 1. Decoder, fed in pieces.
    let mut dec = Decoder::new(max);
    let mut fed_frames = Vec::new();
    let mut fed_err = None;
    let mut splits = Splits(seed);
    let mut rest = stream;
    let mut at = 0;
    'feed: while !rest.is_empty() {
        let n = splits.next_size().min(rest.len());
        dec.feed(&rest[..n]);
        rest = &rest[n..];
        let _ = dec.wanted();
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    at = check(&f, max, stream, at);
                    fed_frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    fed_err = Some(e);
                    break 'feed;
                }
            }
        }
    }
    if fed_err.is_none() {
        // Whatever is left is a partial frame: exactly the bytes not returned.
        assert_eq!(dec.buffered(), stream.len() - at);
        assert_eq!(dec.finish().is_some(), dec.buffered() > 0);
    }

    // 2. Decoder reading from a short-read stream.
    let mut dec = Decoder::new(max);
    let mut src = Pieces { data: stream, sizes: Splits(seed ^ 0x5a5a), calls: 0 };
    let mut read_frames = Vec::new();
    'read: loop {
        let want = dec.wanted().clamp(1, 1 << 16);
        match dec.read_from(&mut src, want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => unreachable!("Pieces only fails with Interrupted"),
        }
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => read_frames.push(f),
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
    }
    assert_eq!(read_frames, fed_frames, "Decoder::read_from and Decoder::feed disagree");

    // 3. The blocking reader the worker side uses.
    let mut src = Pieces { data: stream, sizes: Splits(seed.rotate_left(7)), calls: 0 };
    let mut blocking = Vec::new();
    loop {
        match wire::read_frame(&mut src, max) {
            Ok(Some(f)) => {
                assert!(f.payload.len() <= max as usize);
                blocking.push(f);
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    assert_eq!(blocking, fed_frames, "read_frame and Decoder disagree");
});
