//! The incoming side: bytes from the server become frames (with tungstenite's frame
//! codec, the only parser), frames become messages (assembly, UTF-8, limits).
//!
//! Bytes are read into one buffer and each payload is split off it without a copy. A
//! large data frame's payload is read into a buffer of its own instead (from the
//! [`Pool`], one the caller dropped if one fits), in reads as large as what is left of
//! it; the buffer is never grown ahead of the bytes that arrive beyond
//! [`PREALLOC_MAX`], so a peer that announces a huge frame costs only what it sends.

use std::io::{self, Cursor};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::error::{Error, ProtocolErrorKind};
use crate::message::{Binary, Message, Text};
use crate::recycle::Pool;

/// The size limits of incoming frames and messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_frame: usize,
    pub max_message: usize,
}

/// A frame, or a whole message, from the server.
#[derive(Debug)]
pub(crate) enum Incoming {
    Message(Message),
    Ping(Bytes),
    Pong(Bytes),
    /// The server's Close: its code and reason, or `None` for an empty payload.
    Close(Option<(u16, String)>),
}

/// The server broke the protocol: the Close code to tell it, and the error to report.
#[derive(Debug)]
pub(crate) struct Violation {
    pub code: u16,
    pub error: Error,
}

fn protocol(what: impl Into<String>) -> Violation {
    Violation {
        code: 1002,
        error: Error::protocol(ProtocolErrorKind::Frame, what),
    }
}

/// The size of the read buffer's fills in a flood.
const AHEAD: usize = 32 << 10;
/// The first fill after the read buffer was released: a quiet connection reads one small
/// message at a time, and each fill zeroes what it reads into.
const FIRST_FILL: usize = 2 << 10;
/// Data frames with payloads of this size and up that are not all here yet are read
/// into a buffer of their own.
const LARGE_MIN: usize = 16 << 10;
/// The largest read into a large frame's payload (see the bench notes).
const LARGE_READ: usize = 256 << 10;
/// A large frame's buffer is allocated for its announced size up to this; beyond, it
/// grows with what arrives.
const PREALLOC_MAX: usize = 16 << 20;

/// A large data frame's payload, being read.
#[derive(Debug)]
struct Large {
    is_final: bool,
    data: Data,
    /// RSV1: the first frame of a compressed message.
    rsv1: bool,
    /// Initialized up to its length, which runs ahead of `filled` by at most a read.
    payload: Vec<u8>,
    /// The payload's length; of a compressed frame, what is left of it after what was
    /// inflated so far.
    len: usize,
    filled: usize,
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// How much of a text message's `data` is checked UTF-8 (all but an incomplete
    /// character at its end): invalid text fails at the fragment that makes it so.
    checked: usize,
    /// Compressed (RSV1 on its first frame): `data` holds what was inflated so far.
    compressed: bool,
}

impl Partial {
    fn append(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        self.data.extend_from_slice(bytes);
        self.check_text()
    }

    /// Checks the text added since the last check.
    fn check_text(&mut self) -> Result<(), Violation> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(e) => return Err(invalid_utf8(e)),
        }
        Ok(())
    }
}

/// Checks what arrived of an unfinished, uncompressed text frame from `*checked` on, and
/// moves `*checked` past what is valid (all but an incomplete character at the end):
/// invalid text fails as soon as it is here (RFC 6455 §8.1; the Autobahn TestSuite's
/// 6.4.x call waiting for the frame's end non-strict), rather than when the frame is
/// whole, which a server that never sends the rest puts off for ever, and a large frame
/// only after buffering up to the message limit. The whole frame is checked again when
/// it is complete (with the message's earlier fragments), so this only looks for errors.
/// `carry`: of a continuation frame, the message's last character so far when it is
/// incomplete (at most 3 bytes): the frame's first bytes must end it.
fn check_arriving(arrived: &[u8], checked: &mut usize, carry: &[u8]) -> Result<(), Violation> {
    if *checked == 0 && !carry.is_empty() {
        let width: usize = match carry[0] {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        let want = width.saturating_sub(carry.len()).min(3);
        let have = arrived.len().min(want);
        let mut joined = [0u8; 7];
        joined[..carry.len()].copy_from_slice(carry);
        joined[carry.len()..carry.len() + have].copy_from_slice(&arrived[..have]);
        match std::str::from_utf8(&joined[..carry.len() + have]) {
            Err(e) if e.error_len().is_some() => return Err(invalid_utf8(e)),
            // Still incomplete: looked at again with more.
            _ if have < want => return Ok(()),
            _ => *checked = want,
        }
    }
    let Some(unchecked) = arrived.get(*checked..) else {
        return Ok(());
    };
    match std::str::from_utf8(unchecked) {
        Ok(_) => *checked = arrived.len(),
        Err(e) if e.error_len().is_none() => *checked += e.valid_up_to(),
        Err(e) => return Err(invalid_utf8(e)),
    }
    Ok(())
}

/// Whether a data frame of `data` (with RSV1 as `rsv1`), with `partial` in progress, is
/// uncompressed text: its bytes on the wire are the message's, and can be checked as
/// they arrive. If so, the message's incomplete last character so far, for
/// [`check_arriving`].
fn plain_text(partial: &Option<Partial>, data: Data, rsv1: bool) -> Option<&[u8]> {
    match (data, partial) {
        (Data::Text, None) if !rsv1 => Some(&[]),
        (Data::Continue, Some(p)) if p.text && !p.compressed => Some(&p.data[p.checked..]),
        _ => None,
    }
}

fn invalid_utf8(e: std::str::Utf8Error) -> Violation {
    Violation {
        code: 1007,
        error: Error::protocol(
            ProtocolErrorKind::Utf8,
            format!("invalid UTF-8 in a text message: {e}"),
        ),
    }
}

/// Bytes in, frames and messages out.
#[derive(Debug)]
pub(crate) struct Reader {
    limits: Limits,
    input: BytesMut,
    /// The next fill's size: [`FIRST_FILL`] after a release (0 stands for that), four
    /// times larger after each fill that came back full, up to [`AHEAD`].
    fill_size: usize,
    large: Option<Large>,
    partial: Option<Partial>,
    /// How much of the unfinished text frame's payload [`check_arriving`] found valid.
    arrived_checked: usize,
    /// The buffers of large frames, back from the caller; made at the first large frame,
    /// dropped [`crate::recycle::IDLE`] after the last.
    pool: Option<Pool>,
    /// permessage-deflate, when negotiated.
    #[cfg(feature = "deflate")]
    inflater: Option<super::deflate::Inflater>,
}

impl Reader {
    /// A reader that starts with `tail`: what came after the handshake's response.
    pub fn new(limits: Limits, tail: &[u8]) -> Self {
        Reader {
            limits,
            input: BytesMut::from(tail),
            fill_size: 0,
            large: None,
            partial: None,
            arrived_checked: 0,
            pool: None,
            #[cfg(feature = "deflate")]
            inflater: None,
        }
    }

    /// Inflates messages with RSV1 set, as negotiated.
    #[cfg(feature = "deflate")]
    pub fn inflate_with(&mut self, params: &super::deflate::Params) {
        self.inflater = Some(super::deflate::Inflater::new(params));
    }

    /// Whether permessage-deflate was negotiated (RSV1 is then allowed on the first
    /// frame of a data message).
    fn deflates(&self) -> bool {
        #[cfg(feature = "deflate")]
        return self.inflater.is_some();
        #[cfg(not(feature = "deflate"))]
        false
    }

    /// Lets `read` fill a buffer: the rest of a large frame's payload, or the input
    /// buffer's free space. Returns what `read` returned.
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if let Some(large) = self.large.as_mut().filter(|l| l.filled < l.len) {
            if large.filled >= large.payload.len() {
                // Zeroed once: a read that returns less leaves the rest for the next.
                let more = (large.len - large.filled).min(LARGE_READ);
                large.payload.resize(large.filled + more, 0);
            }
            let end = large
                .payload
                .len()
                .min(large.len)
                .min(large.filled + LARGE_READ);
            let n = read(&mut large.payload[large.filled..end])?;
            large.filled += n;
            return Ok(n);
        }
        let len = self.input.len();
        let want = self.fill_size.clamp(FIRST_FILL, AHEAD);
        self.input.resize(len + want, 0);
        match read(&mut self.input[len..]) {
            Ok(n) => {
                self.input.truncate(len + n);
                if n == want {
                    self.fill_size = want * 4;
                }
                Ok(n)
            }
            Err(e) => {
                self.input.truncate(len);
                self.drained();
                Err(e)
            }
        }
    }

    /// The socket is drained: an empty read buffer is let go, so that an idle connection
    /// holds none.
    pub fn drained(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
            self.fill_size = 0;
        }
    }

    /// Bytes still to come for the large frame being read, if one is.
    pub fn large_frame_left(&self) -> Option<usize> {
        self.large.as_ref().map(|l| l.len - l.filled)
    }

    /// Whether bytes were read that are not a whole frame yet.
    pub fn has_partial_frame(&self) -> bool {
        !self.input.is_empty() || self.large.is_some()
    }

    /// Drops everything read and not parsed (data after the server's Close).
    pub fn discard(&mut self) {
        self.input.clear();
        self.large = None;
        self.partial = None;
        self.arrived_checked = 0;
    }

    /// The next frame or whole message from what was read; `Ok(None)` until more bytes
    /// come.
    pub fn next(&mut self, now: Instant) -> Result<Option<Incoming>, Violation> {
        loop {
            if let Some(large) = &self.large {
                if large.filled < large.len {
                    if let Some(carry) = plain_text(&self.partial, large.data, large.rsv1) {
                        let arrived = &large.payload[..large.filled];
                        check_arriving(arrived, &mut self.arrived_checked, carry)?;
                    }
                    #[cfg(feature = "deflate")]
                    self.inflate_arrived()?;
                    return Ok(None);
                }
                self.arrived_checked = 0;
                if let Some(large) = self.large.take() {
                    let pool = self.pool.get_or_insert_with(|| Pool::new(now));
                    let payload = pool.wrap(large.payload, large.len);
                    if let Some(m) = self.data(large.is_final, large.data, large.rsv1, payload)? {
                        return Ok(Some(Incoming::Message(m)));
                    }
                }
                continue;
            }
            let mut cursor = Cursor::new(&self.input[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(e) => return Err(protocol(e.to_string())),
            };
            let head = cursor.position() as usize;
            let len = self.check(&header, head, len)?;
            log::trace!(
                "frame in: {:?} fin={} len={len}",
                header.opcode,
                header.is_final
            );
            if self.input.len() - head < len {
                if let OpCode::Data(data) = header.opcode {
                    if len >= LARGE_MIN {
                        self.start_large(&header, data, head, len, now);
                        continue;
                    }
                    if let Some(carry) = plain_text(&self.partial, data, header.rsv1) {
                        let arrived = &self.input[head..];
                        check_arriving(arrived, &mut self.arrived_checked, carry)?;
                    }
                }
                self.fill_size = self.fill_size.max(head + len - self.input.len());
                return Ok(None);
            }
            self.arrived_checked = 0;
            self.input.advance(head);
            let payload = self.input.split_to(len).freeze();
            match header.opcode {
                OpCode::Control(Control::Ping) => return Ok(Some(Incoming::Ping(payload))),
                OpCode::Control(Control::Pong) => return Ok(Some(Incoming::Pong(payload))),
                OpCode::Control(Control::Close) => return close(&payload).map(Some),
                OpCode::Control(Control::Reserved(op)) | OpCode::Data(Data::Reserved(op)) => {
                    return Err(protocol(format!("reserved opcode {op}")));
                }
                OpCode::Data(data) => {
                    if let Some(m) = self.data(header.is_final, data, header.rsv1, payload)? {
                        return Ok(Some(Incoming::Message(m)));
                    }
                }
            }
        }
    }

    /// Takes the run of whole, final data frames at the front of what was read (at most
    /// `max`, and none while a large frame or a fragmented message is in progress): the
    /// run is split off the buffer once and each payload sliced out of it, where
    /// [`next`](Self::next) splits the buffer once per frame. Each message goes to `each`,
    /// in order. Anything else at the front (a control frame, a fragment, a frame not all
    /// here, a frame [`check`](Self::check) refuses) ends the run and is left to `next`.
    ///
    /// Splitting once per message rewrote the buffer's fields just before reading them
    /// again, and each message stalled on those reads (see the bench notes).
    pub fn take_run(
        &mut self,
        max: usize,
        each: &mut impl FnMut(Message),
    ) -> Result<usize, Violation> {
        const RUN: usize = 64;
        if self.large.is_some() || self.partial.is_some() {
            return Ok(0);
        }
        // (text, payload start, payload length), within the run.
        let mut spans = [(false, 0, 0); RUN];
        let mut taken = 0;
        let mut at = 0;
        // What `check` asks of a whole, final data frame with no message in progress, in
        // one comparison; anything else ends the run and `next` checks it in full.
        let limit = self.limits.max_frame.min(self.limits.max_message) as u64;
        let tracing = log::log_enabled!(log::Level::Trace);
        while taken < max.min(RUN) {
            let mut cursor = Cursor::new(&self.input[at..]);
            // Read in place, field by field: moving the parsed header out whole loads it
            // wider than it was stored, and each frame stalled on that.
            let parsed = FrameHeader::parse(&mut cursor);
            let Ok(Some((header, len))) = &parsed else {
                break;
            };
            let len = *len;
            let head = cursor.position() as usize;
            let plain = header.is_final
                && !(header.rsv1 || header.rsv2 || header.rsv3) // rsv1: `next` inflates
                && header.mask.is_none()
                && len <= limit
                && shortest_length(head, len);
            let text = match header.opcode {
                OpCode::Data(Data::Text) if plain => true,
                OpCode::Data(Data::Binary) if plain => false,
                _ => break,
            };
            let len = len as usize; // at most a limit, which is a usize
            if self.input.len() - at - head < len {
                break;
            }
            if tracing {
                log::trace!("frame in: {:?} fin=true len={len}", header.opcode);
            }
            spans[taken] = (text, at + head, len);
            taken += 1;
            at += head + len;
        }
        if taken == 0 {
            return Ok(0);
        }
        // The frame at the front may have been checked as it arrived (see `next`).
        self.arrived_checked = 0;
        let run = self.input.split_to(at).freeze();
        for &(text, start, len) in &spans[..taken] {
            let payload = run.slice(start..start + len);
            each(if text {
                Message::Text(Text(
                    tungstenite::Utf8Bytes::try_from(payload).map_err(invalid_utf8)?,
                ))
            } else {
                Message::Binary(Binary(payload))
            });
        }
        Ok(taken)
    }

    /// Checks a frame's header (`head` bytes long) against RFC 6455 §5.2 and the limits;
    /// returns its length.
    fn check(&self, header: &FrameHeader, head: usize, len: u64) -> Result<usize, Violation> {
        if len > i64::MAX as u64 {
            return Err(protocol("frame length with the most significant bit set"));
        }
        // The size first, as tungstenite does: before anything else is looked at.
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        let Limits {
            max_frame,
            max_message,
        } = self.limits;
        if size > max_frame {
            let what = if max_frame == max_message {
                "message"
            } else {
                "frame"
            };
            return Err(too_big(what, size, max_frame));
        }
        if header.mask.is_some() {
            return Err(protocol("the server sent a masked frame"));
        }
        if !shortest_length(head, len) {
            return Err(protocol(format!(
                "a length of {len} not in its shortest form (RFC 6455 §5.2)"
            )));
        }
        if header.rsv2 || header.rsv3 || (header.rsv1 && !self.deflates()) {
            return Err(protocol("reserved bits set with no extension negotiated"));
        }
        if header.rsv1 {
            // RFC 7692 §6.1: RSV1 marks a compressed message on its first frame only.
            match header.opcode {
                OpCode::Control(_) => return Err(protocol("RSV1 set on a control frame")),
                OpCode::Data(Data::Continue) => {
                    return Err(protocol("RSV1 set on a continuation frame"))
                }
                OpCode::Data(_) => {}
            }
        }
        match header.opcode {
            OpCode::Control(_) if !header.is_final => Err(protocol("fragmented control frame")),
            OpCode::Control(_) if len > 125 => {
                Err(protocol(format!("control frame of {len} bytes (max 125)")))
            }
            OpCode::Control(_) => Ok(size),
            OpCode::Data(Data::Continue) if self.partial.is_none() => {
                Err(protocol("continuation frame with no message to continue"))
            }
            OpCode::Data(Data::Text | Data::Binary) if self.partial.is_some() => {
                Err(protocol("new data message inside a fragmented one"))
            }
            // A compressed message's limit applies to what it inflates to, as it inflates.
            OpCode::Data(_)
                if header.rsv1 || self.partial.as_ref().is_some_and(|p| p.compressed) =>
            {
                Ok(size)
            }
            OpCode::Data(_) => {
                let so_far = self.partial.as_ref().map_or(0, |p| p.data.len());
                let total = size.saturating_add(so_far);
                if total > max_message {
                    return Err(too_big("message", total, max_message));
                }
                Ok(size)
            }
        }
    }

    fn start_large(
        &mut self,
        header: &FrameHeader,
        data: Data,
        head: usize,
        len: usize,
        now: Instant,
    ) {
        self.input.advance(head);
        let here = self.input.len();
        // A compressed frame is inflated as it comes (see `inflate_arrived`): its buffer
        // holds a read at a time, not the frame.
        let compressed = header.rsv1 || self.partial.as_ref().is_some_and(|p| p.compressed);
        let prealloc = if compressed { LARGE_READ } else { PREALLOC_MAX };
        let pool = self.pool.get_or_insert_with(|| Pool::new(now));
        let mut payload = pool.take(len.min(prealloc), now);
        // A reused buffer is initialized (to old bytes) as far as its length.
        let init = payload.len().min(here);
        payload[..init].copy_from_slice(&self.input[..init]);
        payload.extend_from_slice(&self.input[init..here]);
        self.input.clear();
        self.large = Some(Large {
            is_final: header.is_final,
            data,
            rsv1: header.rsv1,
            payload,
            len,
            filled: here,
        });
    }

    /// A data frame: a whole message, or a fragment of one.
    fn data(
        &mut self,
        is_final: bool,
        data: Data,
        rsv1: bool,
        payload: Bytes,
    ) -> Result<Option<Message>, Violation> {
        #[cfg(feature = "deflate")]
        if rsv1 || self.partial.as_ref().is_some_and(|p| p.compressed) {
            return self.inflated(is_final, data, &payload);
        }
        let _ = rsv1; // `check` refused it without the feature
        let (text, payload) = match (data, self.partial.take()) {
            (Data::Continue, Some(mut partial)) => {
                partial.append(&payload)?;
                if !is_final {
                    self.partial = Some(partial);
                    return Ok(None);
                }
                (partial.text, Bytes::from(trimmed(partial.data)))
            }
            (Data::Text | Data::Binary, None) if !is_final => {
                let mut partial = Partial {
                    text: data == Data::Text,
                    data: Vec::new(),
                    checked: 0,
                    compressed: false,
                };
                partial.append(&payload)?;
                self.partial = Some(partial);
                return Ok(None);
            }
            (data, _) => (data == Data::Text, payload),
        };
        message(text, payload).map(Some)
    }

    /// A frame of a compressed message: inflated onto what came before, within the
    /// message size limit.
    #[cfg(feature = "deflate")]
    fn inflated(
        &mut self,
        is_final: bool,
        data: Data,
        payload: &[u8],
    ) -> Result<Option<Message>, Violation> {
        let Some(inflater) = self.inflater.as_mut() else {
            return Err(protocol("RSV1 set with no extension negotiated"));
        };
        let mut partial = self.partial.take().unwrap_or(Partial {
            text: data == Data::Text,
            data: Vec::new(),
            checked: 0,
            compressed: true,
        });
        let whole = is_final && partial.data.is_empty();
        inflater.inflate(
            payload,
            is_final,
            &mut partial.data,
            self.limits.max_message,
        )?;
        if !whole {
            // Fragmented text fails at the fragment that makes it invalid.
            partial.check_text()?;
        }
        if !is_final {
            self.partial = Some(partial);
            return Ok(None);
        }
        message(partial.text, Bytes::from(trimmed(partial.data))).map(Some)
    }

    /// Inflates what arrived of a large compressed frame, and makes room for the rest in
    /// the same buffer: the message limit applies to what came so far (1009 without
    /// waiting for the rest of a frame that already inflates past it, as an uncompressed
    /// frame's header does), and no more than a read's worth of compressed bytes is held,
    /// whatever the frame's size. The frame's last bytes are left to
    /// [`data`](Self::data), with the frame's end.
    #[cfg(feature = "deflate")]
    fn inflate_arrived(&mut self) -> Result<(), Violation> {
        let Some(large) = self.large.as_mut() else {
            return Ok(());
        };
        let compressed = large.rsv1 || self.partial.as_ref().is_some_and(|p| p.compressed);
        if !compressed || large.filled == 0 {
            return Ok(());
        }
        let Some(inflater) = self.inflater.as_mut() else {
            return Err(protocol("RSV1 set with no extension negotiated"));
        };
        let partial = self.partial.get_or_insert_with(|| Partial {
            text: large.data == Data::Text,
            data: Vec::new(),
            checked: 0,
            compressed: true,
        });
        inflater.inflate(
            &large.payload[..large.filled],
            false,
            &mut partial.data,
            self.limits.max_message,
        )?;
        partial.check_text()?;
        // What is left of the frame is read from the start of the buffer again.
        large.len -= large.filled;
        large.filled = 0;
        Ok(())
    }

    /// When the buffers kept for reuse should be dropped, if any are kept.
    pub fn pool_expiry(&self) -> Option<Instant> {
        self.pool
            .as_ref()
            .filter(|_| self.large.is_none())
            .map(Pool::expiry)
    }

    /// Drops the buffers kept for reuse if no large frame came for a while.
    pub fn expire_pool(&mut self, now: Instant) {
        if self.pool_expiry().is_some_and(|at| now >= at) {
            self.pool = None;
        }
    }
}

/// A whole message's payload as a message; text must be UTF-8.
fn message(text: bool, payload: Bytes) -> Result<Message, Violation> {
    if !text {
        return Ok(Message::Binary(Binary(payload)));
    }
    match tungstenite::Utf8Bytes::try_from(payload) {
        Ok(t) => Ok(Message::Text(Text(t))),
        Err(e) => Err(invalid_utf8(e)),
    }
}

fn too_big(what: &'static str, size: usize, limit: usize) -> Violation {
    Violation {
        code: 1009,
        error: Error::Capacity { what, size, limit },
    }
}

/// The server's Close frame: an allowed code (RFC 6455 §7.4) and a UTF-8 reason, or no
/// payload at all.
fn close(payload: &[u8]) -> Result<Incoming, Violation> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(protocol("a Close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(protocol(format!(
                    "the server closed with invalid code {code}"
                )));
            }
            match std::str::from_utf8(reason) {
                Ok(reason) => Ok(Incoming::Close(Some((code, reason.to_owned())))),
                Err(_) => Err(Violation {
                    code: 1007,
                    error: Error::protocol(
                        ProtocolErrorKind::Utf8,
                        "the Close frame's reason is not UTF-8",
                    ),
                }),
            }
        }
    }
}

/// A message assembled in `buf` (grown by doubling), let go of the room it does not use
/// when that is much: a message kept holds about its own size, not up to twice it.
fn trimmed(mut buf: Vec<u8>) -> Vec<u8> {
    let spare = buf.capacity() - buf.len();
    if spare > 4096 && spare > buf.len() / 4 {
        buf.shrink_to_fit();
    }
    buf
}

/// Whether a frame header of `head` bytes (an unmasked one: the server's) gives its
/// payload length `len` in the shortest form: RFC 6455 §5.2, "the minimal number of bytes
/// MUST be used to encode the length" (browsers fail such frames too).
fn shortest_length(head: usize, len: u64) -> bool {
    match head {
        4 => len >= 126,
        10 => len > 0xFFFF,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    /// A fragmented message of 10 MiB assembled by doubling held 16 MiB until 2026-12-07.
    #[test]
    fn an_assembled_message_keeps_little_room() {
        let mut buf = Vec::new();
        for _ in 0..160 {
            buf.extend_from_slice(&[7u8; 64 << 10]);
        }
        buf.extend_from_slice(&[1u8; 12_345]);
        let len = buf.len();
        assert!(buf.capacity() > len * 5 / 4);
        let buf = super::trimmed(buf);
        assert!(buf.capacity() <= len + 4096, "{} for {len}", buf.capacity());
        // A small one with a little room is left alone (no copy for nothing).
        let mut small = Vec::with_capacity(128);
        small.extend_from_slice(&[1u8; 100]);
        assert_eq!(super::trimmed(small).capacity(), 128);
    }
}
