//! The outgoing side: frames encoded by the sending threads (the [`Outbox`]), and the
//! [`Output`] queue that decides, frame by frame, what goes on the wire next.
//!
//! A `send` encodes one complete, masked frame on the sending thread and puts it in the
//! connection's outbox; the I/O thread moves the outbox into the [`Output`] as it is. Small
//! frames share one buffer (a flood of them goes out in one write); a large frame is
//! encoded in a buffer of its own before the outbox lock is taken, so a large `send` never
//! holds the lock the I/O thread needs while it copies and masks.
//!
//! The [`Output`] writes data in whole runs of frames, but control frames (pong, ping,
//! Close) never wait behind a run: while one waits, the write stops at the end of the
//! frame in progress and the control frame goes next. Once our Close is queued, no more
//! data is accepted, and once it is written, only pongs are: no data frame follows our
//! Close (RFC 6455 §5.5.1), but the peer's pings are answered until its own (§5.5.2).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Cursor;
use std::time::Instant;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::SendDeflate;
use crate::message::Message;

/// Payloads up to this size are framed in the sending thread's scratch buffer and copied
/// into the shared buffer of small frames; larger ones get a buffer of their own.
const SMALL: usize = 512;
/// The longest client frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;
/// The most pings that wait to be written (`ping` refuses more while as many wait for
/// the I/O thread); past it, the oldest is dropped.
pub(crate) const PINGS: usize = 16;
/// The most pongs that wait to be written; past it the oldest is dropped. 32: a burst of
/// pings read in one go (Autobahn 2.10 sends 10 in one write) all get their pongs.
const PONGS: usize = 32;

/// Complete frames, in order, and the application bytes they carry.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    bytes: Vec<u8>,
    app_bytes: usize,
    /// Small frames may still be appended (it is not one large frame's own buffer).
    open: bool,
    /// A run of small frames: where each ends in `bytes`, and its message's application
    /// bytes, so that each is credited as soon as it is out (`buffered_amount` is exact
    /// per message). Empty for one large frame, credited whole.
    ends: Vec<(usize, usize)>,
}

impl Chunk {
    /// The application bytes its frames carry.
    pub fn app_bytes(&self) -> usize {
        self.app_bytes
    }
}

/// Frames encoded by `send`, waiting for the I/O thread. Shared behind a mutex.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    chunks: VecDeque<Chunk>,
    /// Emptied buffers, back from the I/O thread, for the next run of small frames.
    spare: Spare,
}

/// A run's emptied buffers (its bytes and its frame ends), for the next run.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    bytes: Vec<u8>,
    ends: Vec<(usize, usize)>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Everything queued, for the I/O thread; `spare` (an emptied run's buffers) is kept
    /// for reuse.
    pub fn take(&mut self, spare: Option<Spare>) -> VecDeque<Chunk> {
        if let Some(mut spare) = spare.filter(|_| self.spare.bytes.capacity() == 0) {
            spare.bytes.clear();
            spare.ends.clear();
            self.spare = spare;
        }
        std::mem::take(&mut self.chunks)
    }

    fn append_small(&mut self, frame: &[u8], app_bytes: usize) {
        let reuse = self.chunks.back().is_some_and(|c| c.open);
        if !reuse {
            let Spare { bytes, ends } = std::mem::take(&mut self.spare);
            self.chunks.push_back(Chunk {
                bytes,
                app_bytes: 0,
                open: true,
                ends,
            });
        }
        if let Some(run) = self.chunks.back_mut() {
            run.bytes.extend_from_slice(frame);
            run.app_bytes += app_bytes;
            run.ends.push((run.bytes.len(), app_bytes));
        }
    }
}

thread_local! {
    /// Where a small message's frame is built before it is copied into the outbox.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Frames `msg` as one final, masked frame (a fresh random mask for every frame, RFC 6455
/// §5.3) and appends it to an outbox: `lock` locks the outbox and calls the appender it is
/// given on it, and what `lock` returns is returned. The lock is held only for a small
/// frame's copy, or to move a large frame's buffer in.
///
/// With permessage-deflate, a message that `deflate` compresses is compressed and
/// appended while `deflate`'s own lock is held (see [`SendDeflate`]): messages go out
/// in the order they were compressed. `open` says whether the connection is OPEN; it is
/// asked under that lock, before compressing (see [`SendDeflate::compress`]).
pub(crate) fn push<R>(
    msg: &Message,
    deflate: &SendDeflate,
    open: impl FnOnce() -> bool,
    lock: impl FnOnce(&mut dyn FnMut(&mut Outbox)) -> R,
) -> R {
    let (opcode, payload) = match msg {
        Message::Text(t) => (Data::Text, t.as_bytes()),
        Message::Binary(b) => (Data::Binary, &b[..]),
    };
    let mut lock = Some(lock);
    #[cfg(feature = "deflate")]
    {
        let compressed = deflate.compress(payload, open, |body| {
            let mut bytes = Vec::new();
            encode_frame(OpCode::Data(opcode), true, body, &mut bytes);
            let app_bytes = payload.len();
            let small = bytes.len() <= SMALL + MAX_HEADER;
            let mut chunk = Some(Chunk {
                bytes,
                app_bytes,
                open: false,
                ends: Vec::new(),
            });
            lock.take().map(|lock| {
                lock(&mut |outbox: &mut Outbox| match chunk.take() {
                    Some(c) if small => outbox.append_small(&c.bytes, c.app_bytes),
                    c => outbox.chunks.extend(c),
                })
            })
        });
        if let Some(Some(done)) = compressed {
            return done;
        }
    }
    #[cfg(not(feature = "deflate"))]
    let _ = (deflate, open);
    if payload.len() <= SMALL {
        let built = SCRATCH.try_with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            encode(OpCode::Data(opcode), payload, &mut buf);
            lock.take().map(|lock| {
                lock(&mut |outbox: &mut Outbox| outbox.append_small(&buf, payload.len()))
            })
        });
        if let Ok(Some(done)) = built {
            return done;
        }
        // The thread's locals are being torn down: a buffer of its own instead.
    }
    let mut bytes = Vec::new();
    encode(OpCode::Data(opcode), payload, &mut bytes);
    let mut chunk = Some(Chunk {
        bytes,
        app_bytes: payload.len(),
        open: false,
        ends: Vec::new(),
    });
    let lock = lock.expect("`lock` is only taken on the path that returned");
    lock(&mut |outbox: &mut Outbox| outbox.chunks.extend(chunk.take()))
}

/// Appends one final, masked client frame to `buf`.
pub(crate) fn encode(opcode: OpCode, payload: &[u8], buf: &mut Vec<u8>) {
    encode_frame(opcode, false, payload, buf);
}

/// Appends one final, masked client frame to `buf`; `rsv1`: a compressed message.
fn encode_frame(opcode: OpCode, rsv1: bool, payload: &[u8], buf: &mut Vec<u8>) {
    // One `u32` from the thread's ChaCha generator, its bytes the mask: the same 32 bits
    // of entropy as `random::<[u8; 4]>()`, which draws a whole `u32` for each byte
    // (rand 0.10; tungstenite masks that way). A quarter of the generator's work, which
    // was a tenth of send_small's profile.
    let mask = rand::random::<u32>().to_ne_bytes();
    let header = FrameHeader {
        is_final: true,
        rsv1,
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let compressed = if rsv1 { " compressed" } else { "" };
    log::trace!("frame out: {opcode:?}{compressed} len={}", payload.len());
    buf.reserve(MAX_HEADER + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, buf);
    let start = buf.len();
    buf.extend_from_slice(payload);
    apply_mask(&mut buf[start..], mask);
}

/// XORs `buf` with the repeated 4-byte `mask`, eight bytes at a time.
fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Where our Close frame stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CloseOut {
    NotQueued,
    /// Queued (its payload), behind the data queued before it.
    Queued(Vec<u8>),
    /// Being written (it is the staged frame).
    Writing,
    Written,
}

/// The kind of control frame in [`Output::staged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Staged {
    Pong,
    Ping,
    Close,
}

/// What goes on the wire next, in order. See the module docs.
#[derive(Debug)]
pub(crate) struct Output {
    data: VecDeque<Chunk>,
    /// Bytes of `data.front()` already written.
    at: usize,
    /// A frame boundary in `data.front()`, at or before `at` until a control frame waits;
    /// then the end of the frame in progress (where the write stops).
    boundary: usize,
    /// At most [`PONGS`] pongs (the answers to the latest pings: RFC 6455 §5.5.3 allows
    /// answering only the latest) and [`PINGS`] pings (no more are taken in) wait: a peer
    /// that pings and never reads cannot make this queue grow.
    pongs: VecDeque<Bytes>,
    pings: VecDeque<Bytes>,
    close: CloseOut,
    /// The connection failed (see [`fail`](Self::fail)): no pong is written any more.
    failed: bool,
    /// The control frame being written, encoded, and how much of it is out.
    staged: Vec<u8>,
    staged_at: usize,
    staged_kind: Option<Staged>,
    /// Of `data.front()`, a run of small frames: how many of its frames are out, and the
    /// application bytes they carry (credited already).
    ends_out: usize,
    credited: usize,
    /// An emptied run's buffers, for the outbox to reuse.
    spare: Option<Spare>,
    /// Since when a pong has been owed with nothing we write going out (the start of its
    /// wait, or the last write since).
    owed_since: Option<Instant>,
}

impl Output {
    pub fn new() -> Self {
        Output {
            data: VecDeque::new(),
            at: 0,
            boundary: 0,
            pongs: VecDeque::new(),
            pings: VecDeque::new(),
            close: CloseOut::NotQueued,
            failed: false,
            staged: Vec::new(),
            staged_at: 0,
            staged_kind: None,
            ends_out: 0,
            credited: 0,
            spare: None,
            owed_since: None,
        }
    }

    /// Queues data frames. Refused (handed back) once our Close is queued.
    pub fn queue_data(&mut self, chunks: VecDeque<Chunk>) -> Result<(), VecDeque<Chunk>> {
        if chunks.is_empty() {
            return Ok(());
        }
        if self.close != CloseOut::NotQueued {
            return Err(chunks);
        }
        if self.data.is_empty() {
            self.data = chunks;
        } else {
            self.data.extend(chunks);
        }
        Ok(())
    }

    /// Queues the answer to a ping (dropping the oldest unsent one past [`PONGS`]), also
    /// after our Close: RFC 6455 §5.5.2 answers every ping until the peer's Close (after
    /// which the reader takes none), and only data frames may not follow our Close
    /// (§5.5.1). Not once the connection failed.
    pub fn queue_pong(&mut self, payload: Bytes, now: Instant) {
        if !self.failed {
            self.owed_since.get_or_insert(now);
            if self.pongs.len() == PONGS {
                self.pongs.pop_front();
            }
            self.pongs.push_back(payload);
        }
    }

    /// Queues a ping. Its callers look at [`ping_room`](Self::ping_room) first; past
    /// [`PINGS`] the oldest unsent one would be dropped.
    pub fn queue_ping(&mut self, payload: Bytes) {
        if self.accepts_control() {
            if self.pings.len() == PINGS {
                self.pings.pop_front();
            }
            self.pings.push_back(payload);
        }
    }

    /// The server's Close came: if ours is out (or going), the closing handshake is over
    /// and pongs still waiting are dropped, as tungstenite drops them (the server has
    /// ended its side; RFC 6455 §5.5.2 answers no ping after its Close). Before ours,
    /// they go ahead of it, as they did.
    pub fn peer_closed(&mut self) {
        if matches!(self.close, CloseOut::Writing | CloseOut::Written) {
            self.pongs.clear();
            if self.staged_kind != Some(Staged::Pong) {
                self.owed_since = None;
            }
        }
    }

    /// Queues the pings `ping` accepted that still wait, just before our Close is
    /// queued: past [`PINGS`] this once (none accepted is dropped). Bounded all the same:
    /// `ping` holds at most [`PINGS`] and refuses more once the connection is closing.
    pub fn queue_last_pings(&mut self, payloads: Vec<Bytes>) {
        if self.accepts_control() {
            self.pings.extend(payloads);
        }
    }

    /// Queues our Close frame (its payload) behind everything queued so far. Once only.
    pub fn queue_close(&mut self, payload: Vec<u8>) {
        if self.close == CloseOut::NotQueued {
            self.close = CloseOut::Queued(payload);
        }
    }

    /// The connection failed: the frame in progress is finished (a Close in the middle
    /// of a frame would be garbage), every other data frame is dropped, and `close` (the
    /// payload of a Close frame) goes next, unless our Close is queued already. With
    /// `None`, nothing more is written. Returns the application bytes dropped.
    pub fn fail(&mut self, close: Option<Vec<u8>>) -> usize {
        let keep = usize::from(self.at > 0);
        let mut dropped = 0;
        if let (1, Some(front)) = (keep, self.data.front_mut()) {
            let end = next_boundary(&front.bytes, &mut self.boundary, self.at);
            front.bytes.truncate(end);
            if !front.ends.is_empty() {
                // A run: the messages after the frame in progress are not sent.
                let kept = front.ends.partition_point(|&(e, _)| e <= end);
                let cut: usize = front.ends.drain(kept..).map(|(_, app)| app).sum();
                front.app_bytes -= cut;
                dropped += cut;
            }
        }
        dropped += self.data.drain(keep..).map(|c| c.app_bytes).sum::<usize>();
        self.failed = true;
        self.pongs.clear();
        self.owed_since = None;
        self.pings.clear();
        match close {
            Some(payload) => self.queue_close(payload),
            None => self.close = CloseOut::Written,
        }
        dropped
    }

    /// Whether our Close frame is queued (or written): no more data is accepted.
    pub fn close_queued(&self) -> bool {
        self.close != CloseOut::NotQueued
    }

    /// Whether our Close frame is out.
    pub fn close_written(&self) -> bool {
        self.close == CloseOut::Written
    }

    /// How many more pings can wait to be written.
    pub fn ping_room(&self) -> usize {
        if self.accepts_control() {
            PINGS - self.pings.len()
        } else {
            0
        }
    }

    /// Whether a ping of ours waits to be written, or is being written.
    pub fn ping_waiting(&self) -> bool {
        !self.pings.is_empty() || self.staged_kind == Some(Staged::Ping)
    }

    /// Whether a pong the peer is owed waits.
    fn owes_pong(&self) -> bool {
        !self.pongs.is_empty() || self.staged_kind == Some(Staged::Pong)
    }

    /// Since when a pong has been owed with nothing we write going out, if one is.
    pub fn pong_owed_since(&self) -> Option<Instant> {
        self.owed_since
    }

    /// An emptied run buffer for the outbox to reuse, if there is one.
    pub fn take_spare(&mut self) -> Option<Spare> {
        self.spare.take()
    }

    /// Whether data frames wait to be written.
    pub fn has_data(&self) -> bool {
        !self.data.is_empty()
    }

    /// Whether anything waits to be written.
    pub fn has_output(&self) -> bool {
        self.staged_at < self.staged.len()
            || !self.pongs.is_empty()
            || (self.close != CloseOut::Written
                && (!self.data.is_empty()
                    || self.controls_waiting()
                    || matches!(self.close, CloseOut::Queued(_))))
    }

    /// The bytes to write next, if any: write them (or a part), then call
    /// [`advance`](Self::advance) with how many went out.
    pub fn transmit(&mut self) -> Option<&[u8]> {
        if self.staged_at == self.staged.len() && !self.stage_next() {
            return match self.data.front() {
                Some(front) if self.close != CloseOut::Written => {
                    let end = if self.controls_waiting() {
                        self.boundary
                    } else {
                        front.bytes.len()
                    };
                    Some(&front.bytes[self.at..end])
                }
                _ => None,
            };
        }
        Some(&self.staged[self.staged_at..])
    }

    /// Stages the next control frame if it is its turn; `false` if data goes next (or
    /// nothing).
    fn stage_next(&mut self) -> bool {
        if self.close == CloseOut::Written {
            // Only pongs follow our Close.
            let Some(p) = self.pongs.pop_front() else {
                return false;
            };
            self.stage(Staged::Pong, OpCode::Control(Control::Pong), &p);
            return true;
        }
        if let Some(front) = self.data.front() {
            if !self.controls_waiting() {
                return false;
            }
            // Finish the frame in progress first.
            if next_boundary(&front.bytes, &mut self.boundary, self.at) > self.at {
                return false;
            }
        }
        let (kind, opcode, payload) = if let Some(p) = self.pongs.pop_front() {
            (Staged::Pong, OpCode::Control(Control::Pong), p.to_vec())
        } else if let Some(p) = self.pings.pop_front() {
            (Staged::Ping, OpCode::Control(Control::Ping), p.to_vec())
        } else if !self.data.is_empty() {
            return false;
        } else if let CloseOut::Queued(_) = &self.close {
            let CloseOut::Queued(payload) = std::mem::replace(&mut self.close, CloseOut::Writing)
            else {
                return false;
            };
            (Staged::Close, OpCode::Control(Control::Close), payload)
        } else {
            return false;
        };
        self.stage(kind, opcode, &payload);
        true
    }

    fn stage(&mut self, kind: Staged, opcode: OpCode, payload: &[u8]) {
        self.staged.clear();
        self.staged_at = 0;
        encode(opcode, payload, &mut self.staged);
        self.staged_kind = Some(kind);
    }

    /// `n` bytes of what [`transmit`](Self::transmit) returned went out. Returns the
    /// application bytes whose frames are now all out, and whether our Close just went.
    pub fn advance(&mut self, n: usize, now: Instant) -> (usize, bool) {
        let mut done = (0, false);
        if self.staged_at < self.staged.len() {
            self.staged_at += n;
            if self.staged_at == self.staged.len() {
                if self.staged_kind.take() == Some(Staged::Close) {
                    self.close = CloseOut::Written;
                    done.1 = true;
                }
                self.staged.clear();
                self.staged_at = 0;
            }
        } else if let Some(front) = self.data.front() {
            self.at += n;
            if self.at >= front.bytes.len() {
                if let Some(chunk) = self.data.pop_front() {
                    done.0 = chunk.app_bytes.saturating_sub(self.credited);
                    if chunk.open {
                        self.spare = Some(Spare {
                            bytes: chunk.bytes,
                            ends: chunk.ends,
                        });
                    }
                }
                self.at = 0;
                self.boundary = 0;
                self.ends_out = 0;
                self.credited = 0;
            } else {
                // The messages of a run whose frames are out by now.
                while let Some(&(end, app_bytes)) = front.ends.get(self.ends_out) {
                    if end > self.at {
                        break;
                    }
                    self.ends_out += 1;
                    self.credited += app_bytes;
                    done.0 += app_bytes;
                }
            }
        }
        if n > 0 {
            self.owed_since = self.owes_pong().then_some(now);
        }
        done
    }

    fn controls_waiting(&self) -> bool {
        !self.pongs.is_empty() || !self.pings.is_empty()
    }

    fn accepts_control(&self) -> bool {
        matches!(self.close, CloseOut::NotQueued | CloseOut::Queued(_))
    }
}

/// The first frame boundary in `bytes` at or after `at`, walking frame headers from
/// `walked` (a boundary at or before `at`, updated). Our own frames: the walk uses the
/// same frame codec as everything else; if it ever failed, the end of the buffer is the
/// boundary.
fn next_boundary(bytes: &[u8], walked: &mut usize, at: usize) -> usize {
    while *walked < at {
        let mut cursor = Cursor::new(&bytes[*walked..]);
        match FrameHeader::parse(&mut cursor) {
            Ok(Some((_, len))) => {
                let size = (cursor.position() as usize).saturating_add(len as usize);
                *walked = walked.saturating_add(size).min(bytes.len());
            }
            _ => *walked = bytes.len(),
        }
    }
    *walked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox_of(messages: &[Message]) -> Outbox {
        let mut outbox = Outbox::default();
        for m in messages {
            push(
                m,
                &SendDeflate::default(),
                || true,
                |append| append(&mut outbox),
            );
        }
        outbox
    }

    /// Everything the output writes, `step` bytes per write.
    fn drain(out: &mut Output, step: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        let now = Instant::now();
        while let Some(bytes) = out.transmit() {
            let n = bytes.len().min(step);
            wire.extend_from_slice(&bytes[..n]);
            out.advance(n, now);
        }
        wire
    }

    /// The frames on `wire`, as a server reads them: (opcode, unmasked payload).
    fn frames(wire: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        framed(wire).into_iter().map(|(op, p, _)| (op, p)).collect()
    }

    /// (opcode, unmasked payload, offset of the frame on the wire).
    fn framed(wire: &[u8]) -> Vec<(OpCode, Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let mut cursor = Cursor::new(&wire[at..]);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            let start = at + cursor.position() as usize;
            let mut payload = wire[start..start + len as usize].to_vec();
            apply_mask(&mut payload, header.mask.unwrap());
            out.push((header.opcode, payload, at));
            at = start + len as usize;
        }
        out
    }

    /// `buffered_amount` is exact per message: each message of a run of small frames is
    /// credited as soon as its frame is out, not when the whole run is. (Until 2026-12-07
    /// a run was credited whole: 100,000 small messages behind a large one counted as
    /// waiting although half of them had been written.)
    #[test]
    fn each_message_is_credited_when_its_frame_is_out() {
        let messages: Vec<Message> = (0..10).map(|i| format!("{i:0100}").into()).collect();
        let mut outbox = outbox_of(&messages);
        let mut out = Output::new();
        out.queue_data(outbox.take(None)).unwrap();
        let now = Instant::now();
        let frame = out.transmit().unwrap().len() / 10; // 100 bytes and a 6-byte header
        assert_eq!(frame, 106);
        // Three frames and a bit of the fourth: three messages.
        assert_eq!(out.advance(3 * frame + 10, now), (300, false));
        // The fourth's last byte but one, then its last.
        assert_eq!(out.advance(frame - 11, now), (0, false));
        assert_eq!(out.advance(1, now), (100, false));
        // The rest at once.
        let rest = out.transmit().unwrap().len();
        assert_eq!(out.advance(rest, now), (600, false));
        assert!(out.transmit().is_none());
        // A run behind a large message: credited as its frames go, the large one whole.
        let mut outbox = outbox_of(&[vec![1u8; 4096].into(), "a".repeat(100).into()]);
        let mut out = Output::new();
        out.queue_data(outbox.take(None)).unwrap();
        assert_eq!(out.advance(4000, now), (0, false));
        let rest = out.transmit().unwrap().len();
        assert_eq!(out.advance(rest, now), (4096, false));
        assert_eq!(out.advance(106, now), (100, false));
    }

    #[test]
    fn frames_decode_as_tungstenite_reads_them() {
        let messages: Vec<Message> = vec![
            "".into(),
            "hello".into(),
            "é".repeat(100).into(),
            vec![7u8; 125].into(),
            vec![1u8; 126].into(),
            vec![4u8; 512].into(),
            vec![5u8; 513].into(),
            vec![2u8; 65_535].into(),
            vec![3u8; 65_536].into(),
            (0..=255u8).cycle().take(1001).collect::<Vec<u8>>().into(),
        ];
        let mut outbox = outbox_of(&messages);
        let mut out = Output::new();
        out.queue_data(outbox.take(None)).unwrap();
        let wire = drain(&mut out, usize::MAX);
        let mut server = tungstenite::WebSocket::from_raw_socket(
            Wire(std::io::Cursor::new(wire)),
            tungstenite::protocol::Role::Server,
            None,
        );
        for m in &messages {
            let got = server.read().unwrap();
            assert_eq!(got.into_data().as_ref(), m.as_bytes());
        }
    }

    #[test]
    fn masks_differ_between_frames() {
        let a: Message = "a".into();
        let mut outbox = outbox_of(&[a.clone(), a]);
        let chunks = outbox.take(None);
        let bytes = &chunks[0].bytes;
        assert_eq!(bytes.len(), 14);
        assert_ne!(bytes[2..6], bytes[9..13]);
    }

    #[test]
    fn a_control_frame_goes_at_the_next_frame_boundary_whatever_the_write_sizes() {
        let messages: Vec<Message> = (0..20)
            .map(|i| vec![i as u8; 100 + i * 37].into())
            .collect();
        for step in [1, 3, 50, 333, 100_000] {
            for pong_after in [0, 1, 7, 150, 901] {
                let mut out = Output::new();
                let now = Instant::now();
                out.queue_data(outbox_of(&messages).take(None)).unwrap();
                let mut wire = Vec::new();
                let mut queued_at = None;
                loop {
                    if queued_at.is_none() && wire.len() >= pong_after {
                        out.queue_pong(Bytes::from_static(b"p"), now);
                        queued_at = Some(wire.len());
                    }
                    let Some(bytes) = out.transmit() else { break };
                    let n = bytes.len().min(step);
                    wire.extend_from_slice(&bytes[..n]);
                    out.advance(n, now);
                }
                let got = framed(&wire);
                assert_eq!(got.len(), 21, "step {step}, pong after {pong_after}");
                let (_, _, pong_at) = got
                    .iter()
                    .find(|(op, _, _)| *op == OpCode::Control(Control::Pong))
                    .unwrap();
                // The first frame boundary at or after the moment the pong was queued.
                let queued_at = queued_at.unwrap();
                let first_boundary = got
                    .iter()
                    .map(|(_, _, at)| *at)
                    .find(|at| *at >= queued_at)
                    .unwrap();
                assert_eq!(
                    *pong_at, first_boundary,
                    "step {step}, queued at {queued_at}"
                );
                let data: Vec<_> = got
                    .iter()
                    .filter(|(op, _, _)| matches!(op, OpCode::Data(_)))
                    .collect();
                assert_eq!(data.len(), messages.len());
                for (m, (_, p, _)) in messages.iter().zip(&data) {
                    assert_eq!(m.as_bytes(), &p[..]);
                }
            }
        }
    }

    #[test]
    fn only_pongs_follow_our_close_and_no_data_is_accepted_after_it() {
        let now = Instant::now();
        let mut out = Output::new();
        out.queue_data(outbox_of(&["a".into(), "b".into()]).take(None))
            .unwrap();
        out.queue_close(vec![0x03, 0xe8]);
        assert!(out
            .queue_data(outbox_of(&["late".into()]).take(None))
            .is_err());
        let mut wire = drain(&mut out, 5);
        // RFC 6455 §5.5.2: the peer's pings are answered until its Close; ours stop.
        out.queue_ping(Bytes::from_static(b"y"));
        out.queue_pong(Bytes::from_static(b"x"), now);
        assert!(out.has_output());
        wire.extend(drain(&mut out, 5));
        assert!(out.transmit().is_none(), "nothing else after the Close");
        let got = frames(&wire);
        let ops: Vec<OpCode> = got.iter().map(|(op, _)| *op).collect();
        assert_eq!(
            ops,
            [
                OpCode::Data(Data::Text),
                OpCode::Data(Data::Text),
                OpCode::Control(Control::Close),
                OpCode::Control(Control::Pong)
            ]
        );
        assert_eq!(got[3].1, b"x");
        // Once the connection failed, not even a pong.
        out.fail(None);
        out.queue_pong(Bytes::from_static(b"z"), now);
        assert!(!out.has_output() && out.transmit().is_none());
    }

    #[test]
    fn pongs_for_a_flood_of_pings_are_bounded_and_answer_the_latest() {
        let now = Instant::now();
        let mut out = Output::new();
        for i in 0..10_000u32 {
            out.queue_pong(Bytes::copy_from_slice(&i.to_be_bytes()), now);
        }
        let got = frames(&drain(&mut out, usize::MAX));
        assert_eq!(got.len(), PONGS);
        let last: Vec<Vec<u8>> = (10_000 - PONGS as u32..10_000)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        assert_eq!(got.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), last);
    }

    #[test]
    fn failing_finishes_the_frame_in_progress_then_closes() {
        let now = Instant::now();
        let mut out = Output::new();
        let big: Message = vec![9u8; 1000].into();
        out.queue_data(outbox_of(&[big.clone(), big]).take(None))
            .unwrap();
        let mut wire = out.transmit().unwrap()[..10].to_vec();
        out.advance(10, now);
        out.fail(Some(vec![0x03, 0xea]));
        wire.extend(drain(&mut out, 7));
        let got = frames(&wire);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, OpCode::Control(Control::Close));
        assert_eq!(got[1].1, [0x03, 0xea]);
    }

    struct Wire(std::io::Cursor<Vec<u8>>);
    impl std::io::Read for Wire {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl std::io::Write for Wire {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
