//! The byte stream under the WebSocket: plain TCP or rustls over TCP, always non-blocking.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Buf, BytesMut};

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};

use crate::error::Error;
use crate::frames::{frame_size, front, Front, Tracker};
use crate::low_water;
use crate::message::{Binary, Event, Message, Text};
use crate::recycle::Pool;

/// What the tungstenite `WebSocket` reads and writes. Both kinds of stream are
/// non-blocking: reads and writes return `WouldBlock` and the I/O thread waits for
/// readiness.
#[derive(Debug)]
pub(crate) struct Transport {
    stream: Stream,
    head: HeadScan,
    /// A batch of complete frames from the outbox, being written; `raw_at` bytes of it are
    /// out. While any of it is left, tungstenite's own writes get `WouldBlock`, so its
    /// frames (pongs, Close) never land inside one of ours.
    raw: Vec<u8>,
    raw_at: usize,
    /// The application bytes the batch carries, reported once it is all out.
    raw_app_bytes: usize,
    /// Small reads of a plain socket, once the connection is open. Boxed: the opening
    /// handshake moves the transport by value through several stack frames, and the
    /// deepest of them decides how many stack pages each I/O thread keeps resident.
    ahead: Box<ReadAhead>,
}

/// Bytes read from a plain socket ahead of tungstenite, and the fast path.
///
/// tungstenite reads into the free capacity of its read buffer. While messages split off
/// that buffer are alive (a consumer has not dropped them yet), it cannot reuse the space
/// and reserves a new buffer sized for the next frame, often a few hundred bytes: a flood
/// of small messages would cost a system call per handful of messages. A small read is
/// served from one `recv` of [`AHEAD`] bytes instead, and the buffer is released once the
/// socket is drained, so an idle connection holds none. Off during the opening handshake,
/// whose small reads would otherwise make every connection touch (and keep resident) a
/// buffer it may never need.
///
/// With the fast path on ([`crate::frames`]), simple frames at the front of the buffer,
/// met while tungstenite holds nothing, become messages here, split off the buffer
/// without a copy; the read then returns `WouldBlock` with [`ReadAhead::yielded`] set, so
/// that the I/O thread takes them (in order: tungstenite has returned everything before
/// them) and reads on. A large binary frame ([`Front::Large`]) is read into a buffer of
/// its own (from [`Pool`]: one the caller dropped, if one fits), in reads of up to
/// [`LARGE_READ`], and handed over the same way once whole.
#[derive(Debug, Default)]
struct ReadAhead {
    on: bool,
    /// The largest payload the fast path may take (the configured limits), once on.
    fast_max: Option<usize>,
    buf: BytesMut,
    /// The frames of every byte handed to tungstenite.
    tracker: Tracker,
    /// Messages taken by the fast path, for the I/O thread, already as the events it
    /// hands over: it takes them all at once (see [`Transport::take_fast`]).
    fast: VecDeque<Event>,
    /// Their payload bytes.
    fast_bytes: usize,
    /// A large binary frame being read.
    large: Option<LargeFrame>,
    /// The buffers of large frames, back from the caller; made at the first large frame,
    /// dropped [`crate::recycle::IDLE`] after the last.
    pool: Option<Pool>,
    /// The socket's receive low-water mark, as last set (0: never set, so 1).
    low_water: usize,
    /// tungstenite may hold whole frames it has not returned yet (those that came with
    /// the handshake's response, or a direct read inside a fragmented message that went
    /// past the fragment): since bytes last went to it and until it asks for more, it
    /// reads first.
    held: bool,
    /// The size of the next fill: [`FIRST_FILL`] once the buffer was released (0 stands
    /// for that), four times larger after each fill that came back full, up to [`AHEAD`].
    fill_size: usize,
    yielded: bool,
    /// The socket reported its end while bytes were still buffered.
    eof: bool,
}

/// A large binary frame's payload, being read (see [`Front::Large`]).
#[derive(Debug)]
struct LargeFrame {
    /// Initialized up to its length: zeroed ahead of the reads, [`LARGE_READ`] at a
    /// time, up to `len` (a reused buffer may be longer already).
    payload: Vec<u8>,
    /// The payload's length.
    len: usize,
    /// Bytes of it read so far.
    filled: usize,
    /// The most the low-water mark may be raised to while it is read: a quarter of the
    /// socket's receive buffer, looked up at the first wait (0 until then).
    low_water_max: usize,
}

/// At most this many fast-path messages per read, so that the I/O thread's bounds on
/// what it holds apply.
const FAST_BATCH: usize = 64;

impl ReadAhead {
    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.fast.is_empty() && self.large.is_none()
    }

    fn read(&mut self, tcp: &mut TcpStream, out: &mut [u8]) -> io::Result<usize> {
        self.held = false; // tungstenite reads only once it has parsed what it holds
        if !self.on {
            return tcp.read(out);
        }
        loop {
            if self.read_fast(tcp)? {
                self.yielded = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.buf.is_empty() {
                if self.eof {
                    return Ok(0);
                }
                // A large read straight into tungstenite's buffer: inside a frame it is
                // in, up to that frame's end (never while the fast path could take the
                // next frame).
                let direct = match self.tracker.to_frame_end() {
                    Some(left) => usize::try_from(left).unwrap_or(usize::MAX).min(out.len()),
                    None if self.fast_max.is_none() || !self.tracker.at_boundary() => out.len(),
                    None => 0,
                };
                if direct >= DIRECT {
                    let n = tcp.read(&mut out[..direct])?;
                    self.tracker.feed(&out[..n]);
                    self.held = n > 0;
                    return Ok(n);
                }
                if self.fill(tcp)? == 0 {
                    return Ok(0);
                }
                continue;
            }
            // Hand bytes to tungstenite: up to the end of the frame it is in (or the one
            // at the front), so that the next frame boundary is seen.
            let frame_end = match self.tracker.to_frame_end() {
                Some(left) => Some(left),
                None if self.tracker.at_boundary() => frame_size(&self.buf),
                None => None,
            };
            let mut n = out.len().min(self.buf.len());
            if let Some(end) = frame_end {
                n = n.min(usize::try_from(end).unwrap_or(usize::MAX));
            }
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.advance(n);
            self.tracker.feed(&out[..n]);
            self.held = n > 0;
            return Ok(n);
        }
    }

    /// The fast path, without tungstenite: takes simple frames (up to [`FAST_BATCH`]) or
    /// one large frame into [`ReadAhead::fast`], reading the socket as needed. `Ok(true)`
    /// when it took some; `Ok(false)` when the next bytes are tungstenite's (the fast path
    /// is off, tungstenite holds frames from the handshake's read, a frame or fragmented
    /// message is in progress, the frame at the front is not one the fast path takes, or
    /// the stream ended); `WouldBlock` when the socket is drained.
    fn read_fast(&mut self, tcp: &mut TcpStream) -> io::Result<bool> {
        if !self.on || self.held {
            return Ok(false);
        }
        loop {
            if self.large.is_some() {
                if self.read_large(tcp)? {
                    return Ok(true);
                }
                continue;
            }
            let Some(max) = self.fast_max.filter(|_| self.tracker.at_boundary()) else {
                return Ok(false);
            };
            let (taken, next) = self.take_simple(max);
            if taken > 0 {
                return Ok(true);
            }
            match next {
                Front::NeedMore if !self.eof => {
                    if self.fill(tcp)? == 0 {
                        self.eof = true;
                    }
                }
                Front::Large { header, len } => self.start_large(header, len),
                _ => return Ok(false),
            }
        }
    }

    /// Takes the simple frames at the front of the buffer, up to [`FAST_BATCH`]; returns
    /// how many, and what stopped it.
    ///
    /// The frames are found first; then their run is split off the buffer once, and each
    /// payload sliced out of that run. Splitting the buffer once per message instead
    /// (`advance` past the header, `split_to` the payload) rewrote the buffer's fields
    /// just before reading them again, and each message stalled on those reads: pull
    /// style, unpinned stream_small measured 15 % faster this way, callback style 20-25 %
    /// (see `benches/compare/README.md`).
    fn take_simple(&mut self, max: usize) -> (usize, Front) {
        // (text, payload start, payload length), within the run.
        let mut spans = [(false, 0, 0); FAST_BATCH];
        let mut taken = 0;
        let mut at = 0;
        let next = loop {
            let next = front(&self.buf[at..], max);
            let Front::Simple { text, header, len } = next else {
                break next;
            };
            if taken == FAST_BATCH {
                break next;
            }
            spans[taken] = (text, at + header, len);
            taken += 1;
            at += header + len;
        };
        if taken == 0 {
            return (0, next);
        }
        let run = self.buf.split_to(at).freeze();
        for &(text, start, len) in &spans[..taken] {
            let payload = run.slice(start..start + len);
            // (`front` checked the UTF-8: the conversion checks it again, and cannot fail.)
            let message = match text {
                true => match tungstenite::Utf8Bytes::try_from(payload) {
                    Ok(t) => Message::Text(Text(t)),
                    Err(_) => Message::Binary(Binary(run.slice(start..start + len))),
                },
                false => Message::Binary(Binary(payload)),
            };
            self.fast.push_back(Event::Message(message));
            self.fast_bytes += len;
        }
        (taken, next)
    }

    /// Starts taking the large frame at the front of the buffer (`header` bytes of header,
    /// `len` of payload): its payload goes to a buffer of its own, with what of it is
    /// already here.
    fn start_large(&mut self, header: usize, len: usize) {
        self.buf.advance(header);
        let here = len.min(self.buf.len());
        let now = Instant::now();
        let mut payload = self
            .pool
            .get_or_insert_with(|| Pool::new(now))
            .take(len, now);
        // A reused buffer is initialized (to old bytes) as far as its length.
        let init = payload.len().min(here);
        payload[..init].copy_from_slice(&self.buf[..init]);
        payload.extend_from_slice(&self.buf[init..here]);
        self.buf.advance(here);
        self.large = Some(LargeFrame {
            payload,
            len,
            filled: here,
            low_water_max: 0,
        });
    }

    /// Reads on into the large frame's payload; `Ok(true)` once it is whole and handed
    /// to [`ReadAhead::fast`]. At the end of the stream the partial frame is dropped and
    /// the end reported, as tungstenite would for a frame cut short.
    fn read_large(&mut self, tcp: &mut TcpStream) -> io::Result<bool> {
        let Some(frame) = &mut self.large else {
            return Ok(false);
        };
        if frame.filled < frame.len {
            if frame.filled >= frame.payload.len() {
                // Zeroed once: a read that returns less leaves the rest for the next.
                let more = (frame.len - frame.filled).min(LARGE_READ);
                frame.payload.resize(frame.filled + more, 0);
            }
            let end = frame
                .payload
                .len()
                .min(frame.len)
                .min(frame.filled + LARGE_READ);
            match tcp.read(&mut frame.payload[frame.filled..end]) {
                Ok(0) => {
                    self.large = None;
                    self.eof = true;
                }
                Ok(n) => frame.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Sleep until a read's worth of the rest is here, not the next segment.
                    if frame.low_water_max == 0 {
                        let buffer = low_water::receive_buffer(tcp).unwrap_or(0);
                        frame.low_water_max = (buffer / 4).max(1);
                    }
                    let mark = (frame.len - frame.filled)
                        .min(LARGE_READ)
                        .min(frame.low_water_max);
                    self.set_low_water(tcp, mark);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            return Ok(false);
        }
        self.set_low_water(tcp, 1);
        if let Some(frame) = self.large.take() {
            let pool = self.pool.get_or_insert_with(|| Pool::new(Instant::now()));
            let payload = Binary(pool.wrap(frame.payload, frame.len));
            self.fast
                .push_back(Event::Message(Message::Binary(payload)));
            self.fast_bytes += frame.len;
        }
        Ok(true)
    }

    /// Sets the socket's receive low-water mark to `mark` bytes, unless it is that
    /// already. Best effort: if the system refuses, the I/O thread only wakes more often.
    fn set_low_water(&mut self, tcp: &TcpStream, mark: usize) {
        if mark != self.low_water.max(1) && low_water::set(tcp, mark).is_ok() {
            self.low_water = mark;
        }
    }

    /// When the buffers kept for reuse should be dropped, if there are any (not while a
    /// large frame is being read: one will be needed when it ends).
    fn pool_expiry(&self) -> Option<Instant> {
        self.pool
            .as_ref()
            .filter(|_| self.large.is_none())
            .map(Pool::expiry)
    }

    /// Appends what the socket holds, up to [`AHEAD`] bytes; `Ok(0)` at its end.
    ///
    /// A quiet connection reads one small message at a time, and each fill zeroes what it
    /// reads into (and the read that finds the socket empty zeroes it again): so fills
    /// start at [`FIRST_FILL`] and grow only while they come back full.
    fn fill(&mut self, tcp: &mut TcpStream) -> io::Result<usize> {
        let len = self.buf.len();
        let want = self.fill_size.clamp(FIRST_FILL, AHEAD);
        self.buf.resize(len + want, 0);
        match tcp.read(&mut self.buf[len..]) {
            Ok(n) => {
                self.buf.truncate(len + n);
                if n == want {
                    self.fill_size = want * 4;
                }
                Ok(n)
            }
            Err(e) => {
                self.buf.truncate(len);
                if self.buf.is_empty() {
                    self.buf = BytesMut::new(); // drained: release it
                    self.fill_size = 0;
                }
                Err(e)
            }
        }
    }
}

/// The size of the read-ahead buffer's fills in a flood. (16 KiB measured 2-5 % slower
/// in stream_small, 64 KiB the same as 32.)
const AHEAD: usize = 32 << 10;

/// tungstenite's reads of this size and up go straight to the socket (its read buffer
/// is configured to this size).
const DIRECT: usize = 16 << 10;

/// The first fill after the read-ahead buffer was released (see [`ReadAhead::fill`]).
const FIRST_FILL: usize = 2 << 10;

/// The largest read into a large frame's payload: twice raw tungstenite's with its
/// default configuration (stream_large on one core: 128 KiB 0.92-0.94x, 256 KiB
/// 1.00-1.06x, 1 MiB 1.04-1.07x of raw tungstenite), and small enough that the zeroing
/// before each read and the kernel's copy into it stay in the cache.
const LARGE_READ: usize = 256 << 10;

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// Watches the bytes read during the opening handshake for the end of the HTTP response
/// head (`\r\n\r\n`), to know whether frames came in the same reads (the "tail").
#[derive(Debug, Default)]
struct HeadScan {
    /// How much of `\r\n\r\n` the last bytes matched.
    matched: usize,
    /// Bytes read after the head ended, once it has.
    tail: Option<usize>,
}

impl HeadScan {
    /// Follows `bytes`; returns where in them the tail starts, if they hold the head's end.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        if let Some(tail) = &mut self.tail {
            *tail += bytes.len();
            return Some(0);
        }
        for (i, &b) in bytes.iter().enumerate() {
            self.matched = match (self.matched, b) {
                (0 | 2, b'\r') => self.matched + 1,
                (1 | 3, b'\n') => self.matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.matched == 4 {
                self.tail = Some(bytes.len() - i - 1);
                return Some(i + 1);
            }
        }
        None
    }
}

impl Transport {
    /// Wraps a connected socket, starting TLS when the URL's scheme asked for it.
    pub fn new(
        tcp: TcpStream,
        tls: bool,
        host: &str,
        config: Option<&Arc<ClientConfig>>,
    ) -> Result<Self, Error> {
        let stream = if tls {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| Error::Tls(format!("invalid server name {host:?}: {e}")))?;
            let config = match config {
                Some(c) => Arc::clone(c),
                None => default_tls_config()?,
            };
            let conn =
                ClientConnection::new(config, name).map_err(|e| Error::Tls(e.to_string()))?;
            Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
        } else {
            Stream::Plain(tcp)
        };
        Ok(Transport {
            stream,
            head: HeadScan::default(),
            raw: Vec::new(),
            raw_at: 0,
            raw_app_bytes: 0,
            ahead: Box::default(),
        })
    }

    /// The socket under TLS, if any.
    pub fn tcp(&mut self) -> &mut TcpStream {
        match &mut self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &mut s.sock,
        }
    }

    /// Whether a batch of outbox frames is still being written.
    pub fn raw_pending(&self) -> bool {
        self.raw_at < self.raw.len()
    }

    /// Takes a batch of outbox frames to write, swapping in the old (empty) buffer so its
    /// allocation is reused. Only when nothing is pending: see [`Transport::raw`].
    pub fn start_raw(&mut self, frames: &mut Vec<u8>, app_bytes: usize) {
        debug_assert!(!self.raw_pending());
        self.raw.clear();
        std::mem::swap(&mut self.raw, frames);
        self.raw_at = 0;
        self.raw_app_bytes = app_bytes;
    }

    /// The connection failed: drops the batch if none of it is out yet, and says whether
    /// a frame may follow (not when a batch is half written: it would land inside a frame).
    pub fn discard_raw(&mut self) -> bool {
        if self.raw_at == 0 {
            self.raw.clear();
        }
        !self.raw_pending()
    }

    /// Writes what is left of the batch. `Ok(Some(app_bytes))` once it is all out,
    /// `Ok(None)` when the socket is full.
    pub fn write_raw(&mut self) -> io::Result<Option<usize>> {
        while self.raw_pending() {
            let n = match &mut self.stream {
                Stream::Plain(s) => s.write(&self.raw[self.raw_at..]),
                Stream::Tls(s) => s.write(&self.raw[self.raw_at..]),
            };
            match n {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.raw_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        if let Stream::Tls(s) = &mut self.stream {
            // rustls keeps encrypted records until flushed.
            match s.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                other => other?,
            }
        }
        Ok(Some(std::mem::take(&mut self.raw_app_bytes)))
    }

    /// The connection is open: small reads may go through a [`ReadAhead`] from now on,
    /// and with `fast_max` set, simple frames of up to that many bytes take the fast path.
    pub fn start_read_ahead(&mut self, fast_max: Option<usize>) {
        self.ahead.on = true;
        self.ahead.fast_max = fast_max;
    }

    /// Runs the fast path directly, when tungstenite holds nothing (see
    /// [`ReadAhead::read_fast`]): `Ok(true)` when it took messages, for
    /// [`take_fast`](Self::take_fast); `Ok(false)` when tungstenite must read next (and
    /// always with TLS). Calling tungstenite's `read` would do the same, but it first zeroes
    /// the free part of its own read buffer (16 KiB) on every call.
    pub fn read_fast(&mut self) -> io::Result<bool> {
        match &mut self.stream {
            Stream::Plain(s) => self.ahead.read_fast(s),
            Stream::Tls(_) => Ok(false),
        }
    }

    /// Moves the messages the fast path took to the back of `pending`, in order (whole,
    /// when `pending` is empty: the two queues trade buffers). Returns their payload
    /// bytes, and whether the read that returned `WouldBlock` did so only to hand them
    /// over (the socket may hold more).
    pub fn take_fast(&mut self, pending: &mut VecDeque<Event>) -> (usize, bool) {
        let ahead = &mut self.ahead;
        if pending.is_empty() {
            std::mem::swap(pending, &mut ahead.fast);
        } else {
            pending.append(&mut ahead.fast);
        }
        let bytes = std::mem::take(&mut ahead.fast_bytes);
        (bytes, std::mem::take(&mut ahead.yielded))
    }

    /// When the I/O thread should call [`Transport::expire_pool`], if ever.
    pub fn pool_expiry(&self) -> Option<Instant> {
        self.ahead.pool_expiry()
    }

    /// Drops the buffers kept for reuse if no large frame came for a while (see
    /// [`crate::recycle`]); those still out with the caller go to the allocator when
    /// dropped.
    pub fn expire_pool(&mut self, now: Instant) {
        if self.ahead.pool_expiry().is_some_and(|at| now >= at) {
            self.ahead.pool = None;
        }
    }

    /// After the opening handshake: whether there may be something to read that no
    /// readiness event will announce (the handshake stops reading at the end of the
    /// response head, and its reads consumed the edges). True when bytes came after the
    /// head, when the head's end was never seen, when the socket holds data or the end of
    /// the stream, and always with TLS (rustls may hold decrypted records). False only
    /// when the socket is provably empty: then anything later brings a fresh edge.
    pub fn may_have_data(&mut self) -> bool {
        if matches!(self.stream, Stream::Tls(_))
            || self.head.tail != Some(0)
            || !self.ahead.is_empty()
        {
            return true;
        }
        !matches!(self.tcp().peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.stream {
            Stream::Plain(s) => self.ahead.read(s, buf)?,
            Stream::Tls(s) => s.read(buf)?,
        };
        // Only until the head's end is seen, plus a counter: one comparison per read after.
        if self.head.tail.is_none() {
            // Frames in the same read as the head's end are tungstenite's from the start.
            if let Some(tail) = self.head.feed(&buf[..n]) {
                self.ahead.tracker.feed(&buf[tail..n]);
                self.ahead.held = tail < n;
            }
        }
        Ok(n)
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.raw_pending() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match &mut self.stream {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.raw_pending() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match &mut self.stream {
            Stream::Plain(s) => s.write_vectored(bufs),
            Stream::Tls(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// TLS settings from the builder, as given (PEM), checked when connecting.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsOptions {
    pub extra_roots_pem: Vec<Vec<u8>>,
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub accept_invalid_certs: bool,
}

impl TlsOptions {
    /// `None` when the defaults apply (the shared default config is used then).
    pub fn build(&self) -> Result<Option<Arc<ClientConfig>>, Error> {
        if self.extra_roots_pem.is_empty()
            && self.client_cert_pem.is_none()
            && !self.accept_invalid_certs
        {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = webpki_root_store();
        for pem in &self.extra_roots_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| Error::Tls(format!("bad root certificate PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("unusable root certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::Tls(
                    "no certificate in the root certificate PEM".into(),
                ));
            }
        }
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let builder = if self.accept_invalid_certs {
            log::warn!("TLS certificate verification is OFF: any server can impersonate any host");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            builder.with_root_certificates(roots)
        };
        let config = match &self.client_cert_pem {
            None => builder.with_no_client_auth(),
            Some((chain_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(chain_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Tls(format!("bad client certificate PEM: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| Error::Tls(format!("bad client key PEM: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Tls(format!("unusable client certificate: {e}")))?
            }
        };
        Ok(Some(Arc::new(config)))
    }
}

fn webpki_root_store() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// rustls with the `ring` provider and the Mozilla roots from `webpki-roots`, built once
/// per process. The roots are compiled in, so `wss://` works the same on every machine.
fn default_tls_config() -> Result<Arc<ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    Arc::new(
                        b.with_root_certificates(webpki_root_store())
                            .with_no_client_auth(),
                    )
                })
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::Tls)
}

/// The explicit opt-out of certificate verification: any certificate is taken, but the
/// handshake signatures are still checked, so the session is encrypted to *someone*.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error inside an I/O error, if that is what it is.
pub(crate) fn tls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use super::{HeadScan, Transport, AHEAD, DIRECT};
    use std::io::{ErrorKind, Read, Write};

    /// A plain transport over loopback, and the peer's end.
    fn loopback() -> (Transport, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        let tcp = mio::net::TcpStream::from_std(client);
        (Transport::new(tcp, false, "127.0.0.1", None).unwrap(), peer)
    }

    /// Reads with `size`-byte requests until `want` bytes came (the peer wrote them all
    /// before, so `WouldBlock` before that is a lost byte).
    fn read_all(t: &mut Transport, size: usize, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0; size];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < want {
            match t.read(&mut buf) {
                Ok(0) => panic!("end of stream after {} bytes", got.len()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "stuck at {}",
                        got.len()
                    );
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn small_reads_through_the_read_ahead_buffer_keep_the_stream_intact() {
        let (mut t, mut peer) = loopback();
        t.start_read_ahead(None);
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).unwrap();
        // Requests of every size below the buffer, then one large enough to bypass it.
        let mut got = Vec::new();
        for size in [1, 7, 66, 300, 4093, DIRECT - 1] {
            got.extend(read_all(&mut t, size, 10_000));
        }
        got.extend(read_all(&mut t, DIRECT, sent.len() - got.len()));
        assert_eq!(got, sent);
        // Drained: the next read says so, and the buffer is given back.
        let e = t.read(&mut [0; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        assert_eq!(
            t.ahead.buf.capacity(),
            0,
            "the read-ahead buffer is released"
        );
    }

    #[test]
    fn fills_start_small_after_a_release_and_grow_while_they_come_back_full() {
        let (mut t, mut peer) = loopback();
        t.start_read_ahead(None);
        peer.write_all(b"hi").unwrap();
        assert_eq!(read_all(&mut t, 8, 2), b"hi");
        assert!(
            t.ahead.buf.capacity() < AHEAD / 2,
            "a quiet connection's message is read into a small buffer: {}",
            t.ahead.buf.capacity()
        );
        peer.write_all(&[7u8; 60_000]).unwrap();
        let got = read_all(&mut t, 100, 40_000);
        assert!(got.iter().all(|&b| b == 7), "the burst arrives intact");
        assert!(
            t.ahead.fill_size >= AHEAD,
            "a burst is read {AHEAD} bytes at a time: {}",
            t.ahead.fill_size
        );
    }

    #[test]
    fn before_the_connection_opens_reads_go_straight_to_the_socket() {
        let (mut t, mut peer) = loopback();
        let head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        peer.write_all(head).unwrap();
        assert_eq!(read_all(&mut t, 4, head.len()), head);
        assert_eq!(
            t.ahead.buf.capacity(),
            0,
            "no read-ahead during the handshake"
        );
    }

    fn tail_of(chunks: &[&[u8]]) -> Option<usize> {
        let mut scan = HeadScan::default();
        for c in chunks {
            scan.feed(c);
        }
        scan.tail
    }

    #[test]
    fn finds_the_end_of_the_head_across_reads() {
        assert_eq!(tail_of(&[b"HTTP/1.1 101 OK\r\nA: b\r\n\r\n"]), Some(0));
        assert_eq!(
            tail_of(&[b"HTTP/1.1 101 OK\r\n\r", b"\n\x81\x02hi"]),
            Some(4)
        );
        assert_eq!(
            tail_of(&[b"HTTP/1.1 101 OK\r\n", b"\r\n", b"\x81"]),
            Some(1)
        );
        assert_eq!(tail_of(&[b"HTTP/1.1 101 OK\r\nA: b\r\n"]), None);
        assert_eq!(tail_of(&[b"\r\r\n\r\n"]), Some(0));
    }
}
