//! The out-of-band payload layout of `PROTOCOL.md`, written and read here only.
//!
//! The pool never looks inside payloads. The Python front sends large buffers out of
//! band (pickle protocol 5): such a payload is a head, the pickle stream and the buffers
//! end to end. The head is the byte [`MARKER`] (a pickle starts with `0x80`), a u32
//! buffer count, a u64 stream length, and one u64 per buffer: its length, with the top
//! bit set when the buffer was writable (all little-endian). Both the Python package and
//! its binding use this module, so the layout is parsed in one place.

use std::ops::Range;

/// The first byte of a payload with out-of-band buffers.
pub const MARKER: u8 = 0x01;

/// The top bit of a buffer's length in the head: the buffer was writable.
const WRITABLE: u64 = 1 << 63;

/// Bytes of the head before the buffer lengths: marker, count, stream length.
const FIXED: usize = 1 + 4 + 8;

/// Where the parts of an out-of-band payload are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The head: marker, count and lengths.
    pub head: Range<usize>,
    /// The pickle stream.
    pub stream: Range<usize>,
    /// Each buffer, and whether it was writable.
    pub buffers: Vec<(Range<usize>, bool)>,
}

/// Why a payload that starts with [`MARKER`] is not a valid out-of-band payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid out-of-band payload: {0}")]
pub struct LayoutError(&'static str);

const SHORT: LayoutError = LayoutError("shorter than its head says");

/// The head of a payload whose stream is `stream_len` bytes, followed by buffers of
/// these lengths (and whether each was writable).
pub fn head(stream_len: usize, buffers: &[(usize, bool)]) -> Vec<u8> {
    let mut h = Vec::with_capacity(FIXED + 8 * buffers.len());
    h.push(MARKER);
    h.extend_from_slice(&u32::try_from(buffers.len()).expect("fewer than 2^32 buffers").to_le_bytes());
    h.extend_from_slice(&(stream_len as u64).to_le_bytes());
    for &(len, writable) in buffers {
        h.extend_from_slice(&(len as u64 | if writable { WRITABLE } else { 0 }).to_le_bytes());
    }
    h
}

/// The layout of `payload`: `Ok(None)` for a payload without out-of-band buffers (one
/// that does not start with [`MARKER`]), an error for one whose lengths do not add up to
/// its size.
pub fn parse(payload: &[u8]) -> Result<Option<Layout>, LayoutError> {
    if payload.first() != Some(&MARKER) {
        return Ok(None);
    }
    let u64_at = |at: usize| payload.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let count = payload.get(1..5).map(|b| u32::from_le_bytes(b.try_into().unwrap())).ok_or(SHORT)?;
    let stream_len = u64_at(5).ok_or(SHORT)?;
    let head_len = (count as usize).checked_mul(8).and_then(|n| n.checked_add(FIXED)).ok_or(SHORT)?;
    // Checked before anything is allocated for `count`, which comes from the payload.
    let stream_end = usize::try_from(stream_len).ok().and_then(|n| n.checked_add(head_len)).ok_or(SHORT)?;
    if stream_end > payload.len() {
        return Err(SHORT);
    }
    let mut buffers = Vec::with_capacity(count as usize);
    let mut at = stream_end;
    for i in 0..count as usize {
        let raw = u64_at(FIXED + 8 * i).ok_or(SHORT)?;
        let end = usize::try_from(raw & !WRITABLE).ok().and_then(|n| at.checked_add(n)).ok_or(SHORT)?;
        if end > payload.len() {
            return Err(SHORT);
        }
        buffers.push((at..end, raw & WRITABLE != 0));
        at = end;
    }
    if at != payload.len() {
        return Err(LayoutError("longer than its head says"));
    }
    Ok(Some(Layout { head: 0..head_len, stream: head_len..stream_end, buffers }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(stream: &[u8], buffers: &[(&[u8], bool)]) -> Vec<u8> {
        let lens: Vec<_> = buffers.iter().map(|(b, w)| (b.len(), *w)).collect();
        let mut p = head(stream.len(), &lens);
        p.extend_from_slice(stream);
        for (b, _) in buffers {
            p.extend_from_slice(b);
        }
        p
    }

    #[test]
    fn a_payload_reads_back_as_it_was_written() {
        let p = payload(b"stream", &[(b"abc", false), (b"", true), (b"defgh", true)]);
        let l = parse(&p).unwrap().unwrap();
        assert_eq!(l.head, 0..FIXED + 24);
        assert_eq!(&p[l.stream.clone()], b"stream");
        let parts: Vec<_> = l.buffers.iter().map(|(r, w)| (&p[r.clone()], *w)).collect();
        assert_eq!(parts, [(&b"abc"[..], false), (&b""[..], true), (&b"defgh"[..], true)]);
    }

    #[test]
    fn a_plain_pickle_has_no_layout() {
        assert_eq!(parse(b"\x80\x05N."), Ok(None));
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn lengths_that_do_not_add_up_are_an_error() {
        let p = payload(b"stream", &[(b"abc", false)]);
        for cut in [1, 5, 12, FIXED + 4, p.len() - 1] {
            assert!(parse(&p[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = p.clone();
        longer.push(0);
        assert_eq!(parse(&longer), Err(LayoutError("longer than its head says")));
        // A count or length from a hostile payload allocates nothing and overflows nothing.
        let mut huge = head(0, &[(usize::MAX >> 1, false)]);
        assert!(parse(&huge).is_err());
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).is_err());
        let mut long_stream = head(0, &[]);
        long_stream[5..13].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&long_stream).is_err());
    }
}
