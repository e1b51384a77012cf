//! The wire: length-prefixed frames on the private channel between the pool and a worker.
//!
//! Every frame is a fixed 16-byte header followed by an opaque payload:
//!
//! ```text
//! offset size field
//!  0     1    kind      (see [`Kind`])
//!  1     3    length    bits 32-55 of the payload length, little-endian (zero below 4 GiB)
//!  4     4    length    bits 0-31 of the payload length, little-endian
//!  8     8    task id   little-endian u64 (0 for frames about no task)
//! 16     len  payload
//! ```
//!
//! The task id sits outside the payload so that any failure can be pinned on one task
//! even when the payload is garbage. The [`Decoder`] checks the kind and the length
//! against a maximum *before* it buffers the payload, and grows a large payload's buffer
//! as its bytes arrive, so a claimed length is never allocated blindly and no input makes
//! it panic. `PROTOCOL.md` at the root of
//! the repository describes the same format for authors of workers in other languages.

use std::fmt;
use std::io::{self, Read, Write};

/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// The largest payload length a header can state (56 bits).
pub const MAX_LEN: u64 = (1 << 56) - 1;

/// Default largest payload accepted by a [`Decoder`]: any a header can state, as a
/// payload is limited by memory only (a false claim costs only what really arrives).
pub const DEFAULT_MAX_FRAME: u64 = MAX_LEN;

/// What a frame means. Values 1–15 travel from the pool to a worker, 16–31 back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Pool → worker, once, first: the initializer payload (may be empty).
    Init = 1,
    /// Pool → worker: run this task.
    Task = 2,
    /// Pool → worker: finish the current task, then exit with status 0.
    Shutdown = 3,
    /// Pool → worker: run items `start..count` of this chunk. The payload is the task's
    /// payload followed by an 8-byte trailer: `start` and `count`, little-endian u32s.
    /// Sent only to workers that passed a progress page (see [`crate::page`]).
    Chunk = 4,
    /// Worker → pool: initialised, ready for tasks.
    Ready = 16,
    /// Worker → pool: the initializer failed; the payload describes why. The worker exits.
    InitFailed = 17,
    /// Worker → pool: the task's value.
    Value = 18,
    /// Worker → pool: the task raised; the payload describes the error.
    Raised = 19,
    /// Worker → pool: where the running task is (UTF-8 text), sent when the pool asks
    /// with the stack-dump signal because the task passed its time limit.
    Stack = 20,
    /// Worker → pool: the outcomes of consecutive items of the running chunk. The payload
    /// is the worker's encoding of them followed by a 12-byte trailer: the first item's
    /// index, how many items, and how many of them raised (little-endian u32s). The chunk
    /// ends with the frame that covers its last item.
    Items = 21,
}

impl Kind {
    /// The kind for a raw byte, if it names one.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Init,
            2 => Kind::Task,
            3 => Kind::Shutdown,
            4 => Kind::Chunk,
            16 => Kind::Ready,
            17 => Kind::InitFailed,
            18 => Kind::Value,
            19 => Kind::Raised,
            20 => Kind::Stack,
            21 => Kind::Items,
            _ => return None,
        })
    }
}

/// The bit of a header's kind byte that says the payload is in the arena: the frame's
/// payload is then a descriptor of where (see [`crate::arena`]).
pub const IN_ARENA: u8 = 0x80;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the frame means.
    pub kind: Kind,
    /// The task it is about (0 for none).
    pub task_id: u64,
    /// The opaque payload.
    pub payload: Vec<u8>,
    /// The payload is an arena descriptor ([`IN_ARENA`]), not the payload itself.
    pub arena: bool,
}

/// A frame that breaks the protocol. The peer that sent it cannot be trusted further.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The kind byte names no known frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The claimed payload is larger than the maximum frame size.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length the header claimed.
        len: u64,
        /// The decoder's limit.
        max: u64,
    },
    /// A well-formed frame that makes no sense at this point (an answer for a task the
    /// worker was not running, a frame kind only the pool may send).
    #[error("{0}")]
    Unexpected(String),
    /// The stream ended in the middle of a frame.
    #[error("channel closed in the middle of a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes received of the frame.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
}

/// Parses the fixed header; returns (kind, payload length, task id).
///
/// A kind byte may carry [`IN_ARENA`] (read it from `h[0]`); such a frame's payload must
/// be an arena descriptor, so it is never mistaken for a large frame.
pub fn parse_header(h: &[u8; HEADER_LEN], max: u64) -> Result<(Kind, u64, u64), ProtocolError> {
    let kind = Kind::from_u8(h[0] & !IN_ARENA).ok_or(ProtocolError::UnknownKind(h[0]))?;
    let len = u64::from_le_bytes([h[4], h[5], h[6], h[7], h[1], h[2], h[3], 0]);
    if len > max {
        return Err(ProtocolError::TooLarge { len, max });
    }
    if h[0] & IN_ARENA != 0 && len != crate::arena::DESCRIPTOR_LEN as u64 {
        return Err(ProtocolError::Unexpected(format!("an arena frame of {len} bytes instead of a descriptor")));
    }
    let id = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    Ok((kind, len, id))
}

/// Builds a frame header.
///
/// # Panics
///
/// If `len` passes [`MAX_LEN`].
pub fn header(kind: Kind, task_id: u64, len: u64) -> [u8; HEADER_LEN] {
    assert!(len <= MAX_LEN, "frame payload of {len} bytes is longer than a header can state");
    let b = len.to_le_bytes();
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind as u8;
    h[1..4].copy_from_slice(&b[4..7]);
    h[4..8].copy_from_slice(&b[..4]);
    h[8..16].copy_from_slice(&task_id.to_le_bytes());
    h
}

/// Appends one encoded frame to `out`.
///
/// # Panics
///
/// If the payload is longer than [`MAX_LEN`]; callers check against their maximum frame
/// size first.
pub fn encode_into(out: &mut Vec<u8>, kind: Kind, task_id: u64, payload: &[u8]) {
    let len = payload.len() as u64;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(kind, task_id, len));
    out.extend_from_slice(payload);
}

/// Appends one encoded frame whose payload is `parts` end to end.
///
/// # Panics
///
/// As [`encode_into`].
pub fn encode_parts_into(out: &mut Vec<u8>, kind: Kind, task_id: u64, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&header(kind, task_id, len as u64));
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Appends a [`Kind::Chunk`] frame: items `start..count` of a chunk whose payload is
/// `payload`.
///
/// # Panics
///
/// As [`encode_into`], if the payload and its trailer pass [`MAX_LEN`].
pub fn encode_chunk_into(out: &mut Vec<u8>, task_id: u64, payload: &[u8], start: u32, count: u32) {
    let len = (payload.len() + CHUNK_TRAILER) as u64;
    out.reserve(HEADER_LEN + payload.len() + CHUNK_TRAILER);
    out.extend_from_slice(&header(Kind::Chunk, task_id, len));
    out.extend_from_slice(payload);
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
}

/// Length of a [`Kind::Chunk`] frame's trailer.
pub const CHUNK_TRAILER: usize = 8;

/// Length of a [`Kind::Items`] frame's trailer.
pub const ITEMS_TRAILER: usize = 12;

/// The trailer of a [`Kind::Items`] payload: `(first, count, raised)`, the payload
/// shortened to the worker's encoding. None if the payload is too short for one.
pub fn split_items(payload: &mut Vec<u8>) -> Option<(u32, u32, u32)> {
    let at = payload.len().checked_sub(ITEMS_TRAILER)?;
    let t = &payload[at..];
    let u = |i: usize| u32::from_le_bytes(t[i..i + 4].try_into().expect("4 bytes"));
    let r = (u(0), u(4), u(8));
    payload.truncate(at);
    Some(r)
}

/// An incremental frame decoder for a non-blocking byte stream.
///
/// Feed it whatever bytes arrive with [`Decoder::read_from`], [`Decoder::read_from_fd`] or
/// [`Decoder::feed`], then take frames with [`Decoder::next_frame`] until it returns
/// `Ok(None)`.
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max: u64,
    /// A large frame being received into its own buffer (see `read_from_fd`).
    big: Option<Big>,
}

/// The header of a large frame and its payload so far.
struct Big {
    kind: Kind,
    task_id: u64,
    need: usize,
    payload: Vec<u8>,
}

/// Frames at least this large are read straight into their own payload buffer, which is
/// handed out whole instead of copied out of the stream buffer.
const BIG_FRAME: usize = 256 * 1024;

/// A large frame's buffer is allocated whole up to this size when its header arrives.
const TRUSTED_LEN: usize = 1 << 30;

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder").field("buffered", &self.buffered()).field("max", &self.max).finish()
    }
}

impl Decoder {
    /// A decoder that refuses payloads larger than `max_frame` bytes.
    pub fn new(max_frame: u64) -> Decoder {
        Decoder { buf: Vec::new(), start: 0, max: max_frame, big: None }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        let big = self.big.as_ref().map_or(0, |b| HEADER_LEN + b.payload.len());
        self.buf.len() - self.start + big
    }

    /// Appends received bytes.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if let Some(b) = self.big.as_mut() {
            let take = (b.need - b.payload.len()).min(bytes.len());
            b.payload.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if bytes.is_empty() {
                return;
            }
            // The large frame is whole: the bytes after it wait in the stream buffer.
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Reads once from `r` (up to `chunk` bytes) into the buffer; returns the count read.
    pub fn read_from<R: Read>(&mut self, r: &mut R, chunk: usize) -> io::Result<usize> {
        if let Some(b) = self.big.as_mut() {
            let old = b.payload.len();
            // In steps, as in `read_frame`: a length may be claimed falsely.
            let left = (b.need - old).min(1 << 20);
            b.payload.resize(old + left, 0);
            let got = r.read(&mut b.payload[old..]);
            b.payload.truncate(old + *got.as_ref().unwrap_or(&0));
            return got;
        }
        self.compact();
        let old = self.buf.len();
        // Read straight into the buffer's tail: the stream's bytes are copied once.
        self.buf.resize(old + chunk, 0);
        match r.read(&mut self.buf[old..]) {
            Ok(n) => {
                self.buf.truncate(old + n);
                Ok(n)
            }
            Err(e) => {
                self.buf.truncate(old);
                Err(e)
            }
        }
    }

    /// Reads once from a descriptor (up to `chunk` bytes) straight into the buffer's spare
    /// capacity; returns the count read. Unlike [`Decoder::read_from`] it does not zero
    /// the space first, which matters on the supervisor's hot path.
    ///
    /// A large frame (from 256 KiB) is read into a buffer of its own once its header is
    /// in: [`Decoder::next_frame`] then hands that buffer out without copying it.
    pub fn read_from_fd(&mut self, fd: impl std::os::fd::AsFd, chunk: usize) -> io::Result<usize> {
        if let Some(b) = self.big.as_mut() {
            let left = b.need - b.payload.len();
            if b.payload.spare_capacity_mut().is_empty() {
                // Doubling: a length claimed falsely costs only what really arrived.
                b.payload.reserve_exact(left.min(b.payload.len().max(BIG_FRAME)));
            }
            let room = b.payload.spare_capacity_mut().len().min(left);
            let spare = &mut b.payload.spare_capacity_mut()[..room];
            let (filled, _) = rustix::io::read(fd, spare)?;
            let n = filled.len();
            // SAFETY: `read` initialised the first `n` bytes of the spare capacity.
            unsafe { b.payload.set_len(b.payload.len() + n) };
            return Ok(n);
        }
        self.compact();
        self.buf.reserve(chunk);
        let n = rustix::io::read(fd, rustix::buffer::spare_capacity(&mut self.buf))?;
        self.start_big_frame();
        Ok(n)
    }

    /// Moves a large, incomplete frame at the head of the buffer into its own buffer.
    fn start_big_frame(&mut self) {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return;
        }
        let h: &[u8; HEADER_LEN] = avail[..HEADER_LEN].try_into().expect("16 bytes");
        // A bad header is left where it is, for `next_frame` to report.
        let Ok((kind, len, task_id)) = parse_header(h, self.max) else { return };
        let Ok(need) = usize::try_from(len) else { return };
        if need < BIG_FRAME || avail.len() >= HEADER_LEN + need {
            return;
        }
        // Up to 1 GiB is taken at its word; beyond, the buffer grows as bytes arrive.
        let mut payload = Vec::with_capacity(need.min(TRUSTED_LEN).max(avail.len() - HEADER_LEN));
        payload.extend_from_slice(&avail[HEADER_LEN..]);
        self.buf.clear();
        self.start = 0;
        self.big = Some(Big { kind, task_id, need, payload });
    }

    /// How many more bytes the frame at the head of the buffer needs (at least 1 when a
    /// partial frame is buffered, 0 when the buffer is empty or holds a whole frame).
    pub fn wanted(&self) -> usize {
        if let Some(b) = &self.big {
            return b.need - b.payload.len();
        }
        let have = self.buffered();
        if have < HEADER_LEN {
            return if have == 0 { 0 } else { HEADER_LEN - have };
        }
        let h: &[u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN].try_into().expect("16 bytes");
        let len = parse_header(h, u64::MAX).map_or(0, |(_, len, _)| usize::try_from(len).unwrap_or(usize::MAX));
        HEADER_LEN.saturating_add(len).saturating_sub(have)
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the protocol error
    /// that makes the rest of the stream meaningless.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(b) = &self.big {
            if b.payload.len() < b.need {
                return Ok(None);
            }
            let b = self.big.take().expect("checked");
            return Ok(Some(Frame { kind: b.kind, task_id: b.task_id, payload: b.payload, arena: false }));
        }
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let h: &[u8; HEADER_LEN] = avail[..HEADER_LEN].try_into().expect("16 bytes");
        let (kind, len, task_id) = parse_header(h, self.max)?;
        let arena = h[0] & IN_ARENA != 0;
        let total = usize::try_from(len).map_or(usize::MAX, |l| l.saturating_add(HEADER_LEN));
        if avail.len() < total {
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..total].to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(Frame { kind, task_id, payload, arena }))
    }

    /// The error to report when the stream ended: `Some` if a partial frame was left.
    pub fn finish(&self) -> Option<ProtocolError> {
        let have = self.buffered();
        (have > 0).then(|| ProtocolError::Truncated { have, need: have + self.wanted().max(1) })
    }

    fn compact(&mut self) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Reads one whole frame from a blocking stream. `Ok(None)` on a clean end of stream
/// (no byte of a new frame read).
///
/// This is the worker side's reader: it allocates the payload only after the header has
/// passed [`parse_header`], and fills it as bytes arrive.
pub fn read_frame<R: Read>(r: &mut R, max: u64) -> Result<Option<Frame>, ReadError> {
    let Some((kind, arena, len, task_id)) = read_header_flagged(r, max)? else { return Ok(None) };
    let mut payload = Vec::new();
    let need = usize::try_from(len).map_err(|_| ProtocolError::TooLarge { len, max: usize::MAX as u64 })?;
    // Grow in steps so a lying length costs at most what the peer really sent.
    while payload.len() < need {
        let step = (need - payload.len()).min(1 << 20);
        let old = payload.len();
        payload.resize(old + step, 0);
        fill(r, &mut payload[old..], old, need)?;
    }
    Ok(Some(Frame { kind, task_id, payload, arena }))
}

/// Reads and checks one frame header from a blocking stream: `(kind, payload length,
/// task id)`, or `Ok(None)` on a clean end of stream (no byte of a new frame read).
pub fn read_header<R: Read>(r: &mut R, max: u64) -> Result<Option<(Kind, u64, u64)>, ReadError> {
    Ok(read_header_flagged(r, max)?.map(|(kind, _, len, id)| (kind, len, id)))
}

/// [`read_header`], and whether the payload is in the arena: `(kind, in arena, payload
/// length, task id)`.
pub fn read_header_flagged<R: Read>(r: &mut R, max: u64) -> Result<Option<(Kind, bool, u64, u64)>, ReadError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Truncated { have: got, need: HEADER_LEN }.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (kind, len, id) = parse_header(&h, max)?;
    Ok(Some((kind, h[0] & IN_ARENA != 0, len, id)))
}

/// Fills `buf` from a blocking stream with payload bytes `done..done + buf.len()` of a
/// payload of `need` bytes (the offsets only word the error of a truncated stream).
pub fn fill<R: Read>(r: &mut R, buf: &mut [u8], done: usize, need: usize) -> Result<(), ReadError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                let have = HEADER_LEN + done + filled;
                return Err(ProtocolError::Truncated { have, need: HEADER_LEN + need }.into());
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes one frame to a blocking stream.
pub fn write_frame<W: Write>(w: &mut W, kind: Kind, task_id: u64, payload: &[u8]) -> io::Result<()> {
    let len = payload.len() as u64;
    if len > MAX_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "payload longer than a frame can carry"));
    }
    let h = header(kind, task_id, len);
    if payload.len() <= 64 * 1024 {
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(&h);
        buf.extend_from_slice(payload);
        w.write_all(&buf)
    } else {
        w.write_all(&h)?;
        w.write_all(payload)
    }
}

/// A failure to read a frame from a blocking stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The read itself failed.
    #[error("channel read failed: {0}")]
    Io(#[from] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Init),
            Just(Kind::Task),
            Just(Kind::Shutdown),
            Just(Kind::Ready),
            Just(Kind::InitFailed),
            Just(Kind::Value),
            Just(Kind::Raised),
            Just(Kind::Stack),
            Just(Kind::Chunk),
            Just(Kind::Items),
        ]
    }

    #[test]
    fn header_layout_is_as_documented() {
        let mut out = Vec::new();
        encode_into(&mut out, Kind::Value, 0x0102_0304_0506_0708, b"abc");
        assert_eq!(out, [18, 0, 0, 0, 3, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, b'a', b'b', b'c']);
        // Lengths past 4 GiB keep their high bits in bytes 1-3.
        let h = header(Kind::Value, 1, 0x00ab_cdef_0102_0304);
        assert_eq!(h[..8], [18, 0xef, 0xcd, 0xab, 4, 3, 2, 1]);
        assert_eq!(parse_header(&h, MAX_LEN), Ok((Kind::Value, 0x00ab_cdef_0102_0304, 1)));
    }

    #[test]
    fn a_frame_past_4_gib_is_received_as_its_bytes_arrive() {
        // The header claims 5 GiB; only what arrives is held (the claim may be a lie).
        let claim = 5u64 << 30;
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        d.feed(&header(Kind::Value, 3, claim));
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::io::write(&a, &[7u8; 1000]).unwrap();
        assert_eq!(d.read_from_fd(&b, 64 * 1024).unwrap(), 1000);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.wanted() as u64, claim - 1000);
        assert!(d.buffered() < 2 << 20, "{} bytes held for a 1000-byte start", d.buffered());
    }

    #[test]
    fn oversized_claim_is_refused_before_allocation() {
        let mut d = Decoder::new(1024);
        d.feed(&header(Kind::Value, 1, u64::from(u32::MAX)));
        assert_eq!(d.next_frame(), Err(ProtocolError::TooLarge { len: u64::from(u32::MAX), max: 1024 }));
        let mut r = &header(Kind::Value, 1, MAX_LEN)[..];
        assert!(matches!(read_frame(&mut r, 1024), Err(ReadError::Protocol(ProtocolError::TooLarge { .. }))));
    }

    #[test]
    fn an_arena_frame_is_a_descriptor_and_nothing_else() {
        let mut h = header(Kind::Value, 7, crate::arena::DESCRIPTOR_LEN as u64);
        h[0] |= IN_ARENA;
        assert_eq!(parse_header(&h, u64::MAX), Ok((Kind::Value, 16, 7)));
        let mut dec = Decoder::new(u64::MAX);
        dec.feed(&h);
        dec.feed(&[0; 16]);
        let f = dec.next_frame().unwrap().unwrap();
        assert!(f.arena && f.kind == Kind::Value && f.payload.len() == 16);
        for len in [0, 15, 17, 1 << 40] {
            let mut h = header(Kind::Value, 7, len);
            h[0] |= IN_ARENA;
            assert!(matches!(parse_header(&h, u64::MAX), Err(ProtocolError::Unexpected(_))), "{len}");
        }
        let mut h = header(Kind::Value, 7, 16);
        h[0] = 0x80 | 0x7f;
        assert_eq!(parse_header(&h, u64::MAX), Err(ProtocolError::UnknownKind(0xff)));
    }

    #[test]
    fn garbage_kind_and_high_length_bytes_are_errors() {
        let mut d = Decoder::new(1024);
        d.feed(&[0xff; 16]);
        assert_eq!(d.next_frame(), Err(ProtocolError::UnknownKind(0xff)));
        let mut h = header(Kind::Task, 1, 0);
        h[2] = 7;
        let mut d = Decoder::new(1024);
        d.feed(&h);
        assert_eq!(d.next_frame(), Err(ProtocolError::TooLarge { len: 7 << 40, max: 1024 }));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut out = Vec::new();
        encode_into(&mut out, Kind::Task, 9, b"hello");
        let mut d = Decoder::new(1024);
        d.feed(&out[..10]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Some(ProtocolError::Truncated { have: 10, need: 16 }));
        let mut r = &out[..18];
        assert!(matches!(read_frame(&mut r, 1024), Err(ReadError::Protocol(ProtocolError::Truncated { .. }))));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 1024).unwrap().is_none());
    }

    #[test]
    fn large_frames_read_into_their_own_buffer_keep_the_stream_in_order() {
        use std::io::Write as _;
        use std::os::unix::net::UnixStream;
        let big: Vec<u8> = (0..(BIG_FRAME * 3 + 7)).map(|i| (i % 251) as u8).collect();
        let frames = vec![
            (Kind::Value, 1u64, b"small".to_vec()),
            (Kind::Value, 2, big.clone()),
            (Kind::Raised, 3, vec![9; 10]),
            (Kind::Value, 4, big[..BIG_FRAME].to_vec()),
            (Kind::Value, 5, Vec::new()),
        ];
        let mut stream = Vec::new();
        for (k, id, p) in &frames {
            encode_into(&mut stream, *k, *id, p);
        }
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            // Odd piece sizes, so headers and payloads straddle the reads.
            for piece in stream.chunks(70_001) {
                tx.write_all(piece).unwrap();
            }
        });
        let mut d = Decoder::new(1 << 24);
        let mut got = Vec::new();
        while got.len() < frames.len() {
            let n = d.read_from_fd(&rx, d.wanted().clamp(4096, 100_000)).unwrap();
            assert!(n > 0, "stream ended early");
            while let Some(f) = d.next_frame().unwrap() {
                got.push((f.kind, f.task_id, f.payload));
            }
        }
        writer.join().unwrap();
        assert_eq!(d.finish(), None);
        assert_eq!(got, frames);
    }

    proptest! {
        #[test]
        fn round_trip_in_any_split(
            frames in proptest::collection::vec((kinds(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
            cut in 1usize..64,
        ) {
            let mut stream = Vec::new();
            for (k, id, p) in &frames {
                encode_into(&mut stream, *k, *id, p);
            }
            let mut d = Decoder::new(4096);
            let mut got = Vec::new();
            for piece in stream.chunks(cut) {
                d.feed(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push((f.kind, f.task_id, f.payload));
                }
            }
            prop_assert_eq!(d.finish(), None);
            prop_assert_eq!(&got, &frames);
            let mut r = &stream[..];
            let mut again = Vec::new();
            while let Some(f) = read_frame(&mut r, 4096).unwrap() {
                again.push((f.kind, f.task_id, f.payload));
            }
            prop_assert_eq!(again, frames);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cut in 1usize..100) {
            let mut d = Decoder::new(512);
            'outer: for piece in bytes.chunks(cut) {
                d.feed(piece);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => prop_assert!(f.payload.len() <= 512),
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
            let _ = d.finish();
            let mut r = &bytes[..];
            while let Ok(Some(_)) = read_frame(&mut r, 512) {}
        }
    }
}
