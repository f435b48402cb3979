//! The protocol core: one WebSocket connection after its opening handshake, with no
//! socket, thread or clock of its own (the shape of quinn-proto's and rustls's
//! connections).
//!
//! The I/O thread drives it:
//! - bytes in: [`Connection::read_with`] lets it fill the core's buffer from the socket;
//! - events out: [`Connection::poll_event`] gives messages, pings, pongs, the server's
//!   Close and, once, how the connection [`End`]ed;
//! - commands in: [`queue_data`](Connection::queue_data) (frames the sending threads
//!   encoded), [`ping`](Connection::ping), [`close`](Connection::close);
//! - bytes out: [`transmit`](Connection::transmit) says what to write next and
//!   [`advance`](Connection::advance) how much went;
//! - timers: [`poll_timeout`](Connection::poll_timeout) says when it next needs
//!   [`handle_timeout`](Connection::handle_timeout).
//!
//! The closing handshake is one state, [`Closing`]: every rule of RFC 6455 §5.5.1 and §7
//! is a transition of it. Frames are parsed by tungstenite's frame codec alone
//! ([`FrameHeader`](tungstenite::protocol::frame::FrameHeader)).

#[cfg(feature = "deflate")]
mod deflate;
mod incoming;
mod outgoing;

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Error, Timeout};
use crate::message::{CloseEvent, Message};

#[cfg(feature = "deflate")]
pub(crate) use deflate::{
    accept as accept_deflate, offer as offer_deflate, Params as DeflateParams, SendDeflate,
};
pub(crate) use incoming::Limits;
use incoming::{Incoming, Reader, Violation};
use outgoing::Output;
pub(crate) use outgoing::{push, Chunk, Outbox, PINGS};

/// Without the `deflate` feature: nothing to compress with.
#[cfg(not(feature = "deflate"))]
#[derive(Debug, Default)]
pub(crate) struct SendDeflate {}

/// How the connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The closing handshake completed; the event carries the server's code and reason.
    Clean(CloseEvent),
    Failed(Error),
}

impl From<Error> for End {
    fn from(e: Error) -> Self {
        End::Failed(e)
    }
}

/// What the core has for the driver.
#[derive(Debug)]
pub(crate) enum Event {
    Message(Message),
    Ping(Bytes),
    Pong(Bytes),
    /// The server's Close arrived first. The driver stops the senders, queues what they
    /// sent before, and calls [`Connection::close`], which echoes it.
    PeerClose(CloseEvent),
    /// The end, reported once; nothing follows.
    End(End),
}

/// The timers' settings; `None` is "no limit".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    pub close_timeout: Option<Duration>,
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Option<Duration>,
}

/// The closing handshake (RFC 6455 §7), in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Closing {
    Open,
    /// Our Close is queued (or written); the server's has not come.
    Sent,
    /// The server's Close came first; our echo is not queued yet.
    Received(CloseEvent),
    /// Both Close frames (ours queued or written): the server ends the TCP stream next.
    Both(CloseEvent),
    /// The connection failed, or ended: nothing more is read or reported.
    Over,
}

/// One connection's protocol state. See the module docs.
#[derive(Debug)]
pub(crate) struct Connection {
    reader: Reader,
    out: Output,
    closing: Closing,
    timers: Timers,
    /// The server ended its side of the TCP stream.
    eof: bool,
    /// The end, once known, until [`Connection::poll_event`] reports it.
    end: Option<End>,
    close_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    /// The ping that `pong_deadline` waits on is not all written yet: while it waits
    /// behind a frame the server is taking, its time runs from each write.
    timed_ping_unwritten: bool,
    /// Bytes handed to the stream so far ([`advance`](Self::advance)).
    written: u64,
    /// `written` when that ping's last byte went: from there on it may still wait in the
    /// operating system's send queue (see [`written_since_ping`](Self::written_since_ping)).
    ping_end: Option<u64>,
    ping_seq: u64,
    /// A write failed (see [`Connection::write_failed`]): the error the connection fails
    /// with, unless the server's Close is still read.
    write_error: Option<Error>,
}

/// `now + d`, or `None` (never) for `None` or a time too far to represent.
pub(crate) fn after(now: Instant, d: Option<Duration>) -> Option<Instant> {
    d.and_then(|d| now.checked_add(d))
}

/// `now + d`, saturating at a deadline decades away: for waits that need an instant.
pub(crate) fn saturating_deadline(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

impl Connection {
    /// A connection that just opened; `tail` is what came after the handshake's response.
    pub fn new(limits: Limits, timers: Timers, tail: &[u8], now: Instant) -> Self {
        Connection {
            reader: Reader::new(limits, tail),
            out: Output::new(),
            closing: Closing::Open,
            timers,
            eof: false,
            end: None,
            close_deadline: None,
            next_ping: after(now, timers.ping_interval),
            pong_deadline: None,
            timed_ping_unwritten: false,
            written: 0,
            ping_end: None,
            ping_seq: 0,
            write_error: None,
        }
    }

    /// Inflates incoming messages marked compressed, as the handshake negotiated.
    #[cfg(feature = "deflate")]
    pub fn inflate_with(&mut self, params: &DeflateParams) {
        self.reader.inflate_with(params);
    }

    /// Reads: `read` fills the buffer it is given (a socket read). `Ok(0)` is the end of
    /// the server's stream.
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let n = match self.reader.read_with(read) {
            // Both Close frames went by: a server that closed its socket at once resets
            // the connection when our echo reaches it. That ends its stream all the same.
            Err(e)
                if matches!(self.closing, Closing::Both(_))
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
            {
                log::debug!("reset after the closing handshake: {e}");
                0
            }
            r => r?,
        };
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }

    /// The driver found the socket drained without a read that would block: the read
    /// buffer is let go if it holds nothing (as such a read does), so that an idle
    /// connection holds none.
    pub fn drained(&mut self) {
        self.reader.drained();
    }

    /// Whether the end is known and not yet reported by [`poll_event`](Self::poll_event).
    pub fn has_end(&self) -> bool {
        self.end.is_some()
    }

    /// Whether the driver should read the socket at all.
    pub fn wants_read(&self) -> bool {
        !self.eof && self.closing != Closing::Over
    }

    /// Bytes still to come of the large frame being read, if one is (for the socket's
    /// receive low-water mark).
    pub fn large_frame_left(&self) -> Option<usize> {
        self.reader.large_frame_left()
    }

    /// The next event, from the bytes read so far.
    pub fn poll_event(&mut self, now: Instant) -> Option<Event> {
        loop {
            if let Some(end) = self.end.take() {
                return Some(Event::End(end));
            }
            match &self.closing {
                Closing::Over => return None,
                Closing::Received(close) | Closing::Both(close) => {
                    // RFC 6455 §1.4: nothing the server sends after its Close counts.
                    self.reader.discard();
                    if self.eof {
                        self.end(End::Clean(close.clone()));
                        continue;
                    }
                    return None;
                }
                Closing::Open | Closing::Sent => {}
            }
            match self.reader.next(now) {
                Ok(Some(incoming)) => {
                    if let Some(event) = self.incoming(incoming, now) {
                        return Some(event);
                    }
                }
                Ok(None) if self.eof => {
                    let what = if self.reader.has_partial_frame() {
                        "the server closed the TCP connection in the middle of a frame"
                    } else {
                        "the server closed the TCP connection without a closing handshake"
                    };
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, what);
                    let error = self.write_error.take().unwrap_or_else(|| Error::io(e));
                    self.end(End::Failed(error));
                }
                Ok(None) => return None,
                Err(Violation { code, error }) => self.fail(Some(code), error),
            }
        }
    }

    /// The whole messages at the front of what was read, at most `max`, each to `each`:
    /// a faster [`poll_event`](Self::poll_event) for floods of small messages. Returns how
    /// many; 0 when the next event is anything else (then `poll_event` has it).
    pub fn poll_messages(&mut self, max: usize, each: &mut impl FnMut(Message)) -> usize {
        if !matches!(self.closing, Closing::Open | Closing::Sent) {
            return 0;
        }
        match self.reader.take_run(max, each) {
            Ok(taken) => taken,
            Err(Violation { code, error }) => {
                self.fail(Some(code), error);
                0
            }
        }
    }

    fn incoming(&mut self, incoming: Incoming, now: Instant) -> Option<Event> {
        match incoming {
            Incoming::Message(m) => Some(Event::Message(m)),
            Incoming::Ping(payload) => {
                log::trace!("ping {payload:?}");
                self.out.queue_pong(payload.clone(), now);
                Some(Event::Ping(payload))
            }
            Incoming::Pong(payload) => {
                log::trace!("pong {payload:?}");
                self.pong_deadline = None;
                Some(Event::Pong(payload))
            }
            Incoming::Close(frame) => {
                let close = match frame {
                    Some((code, reason)) => CloseEvent {
                        code,
                        reason,
                        was_clean: true,
                    },
                    None => CloseEvent {
                        code: 1005,
                        reason: String::new(),
                        was_clean: true,
                    },
                };
                log::debug!("the server sent Close {} {:?}", close.code, close.reason);
                self.next_ping = None;
                self.pong_deadline = None;
                self.out.peer_closed();
                if self.write_error.is_some() {
                    // Its Close came before it went away; nothing can answer it now.
                    self.end(End::Clean(close));
                    return None;
                }
                if self.closing == Closing::Sent {
                    self.closing = Closing::Both(close);
                    return None;
                }
                self.closing = Closing::Received(close.clone());
                self.close_deadline = after(now, self.timers.close_timeout);
                Some(Event::PeerClose(close))
            }
        }
    }

    /// Queues frames encoded by the sending threads. Refused (handed back) once our
    /// Close is queued: no data frame ever follows it.
    pub fn queue_data(&mut self, chunks: VecDeque<Chunk>) -> Result<(), VecDeque<Chunk>> {
        match self.closing {
            _ if chunks.is_empty() => Ok(()),
            Closing::Open | Closing::Received(_) => self.out.queue_data(chunks),
            _ => Err(chunks),
        }
    }

    /// An emptied buffer of small frames, for the outbox to reuse.
    pub fn take_spare(&mut self) -> Option<outgoing::Spare> {
        self.out.take_spare()
    }

    /// Queues a ping (replacing one not yet written). Only while open.
    pub fn ping(&mut self, payload: Bytes) {
        if self.closing == Closing::Open {
            self.out.queue_ping(payload);
        }
    }

    /// The pings accepted before the closing handshake began, all of them (see
    /// [`Output::queue_last_pings`]): they go before our Close. Not once it is queued.
    pub fn last_pings(&mut self, payloads: Vec<Bytes>) {
        if matches!(self.closing, Closing::Open | Closing::Received(_)) {
            self.out.queue_last_pings(payloads);
        }
    }

    /// How many more pings can wait to be written without one being dropped.
    pub fn ping_room(&self) -> usize {
        if self.closing == Closing::Open {
            self.out.ping_room()
        } else {
            0
        }
    }

    /// Starts the closing handshake with our Close (`None`: no status code), behind the
    /// data queued so far; or, after the server's Close, echoes its code. Once only.
    pub fn close(&mut self, frame: Option<(u16, &str)>, now: Instant) {
        let payload = match (&self.closing, frame) {
            (Closing::Open, Some((code, reason))) => close_payload(code, reason),
            (Closing::Open, None) => Vec::new(),
            // RFC 6455 §5.5.1: echo the status code received.
            (Closing::Received(c), _) if c.code == 1005 => Vec::new(),
            (Closing::Received(c), _) => close_payload(c.code, ""),
            _ => return,
        };
        log::debug!("sending Close {payload:?}");
        self.closing = match std::mem::replace(&mut self.closing, Closing::Over) {
            Closing::Received(c) => Closing::Both(c),
            _ => Closing::Sent,
        };
        self.out.queue_close(payload);
        // Until our Close is out this bounds a stall only (re-armed whenever the server
        // takes data, in `advance`); from then on, the server's answer.
        self.close_deadline = after(now, self.timers.close_timeout);
        self.next_ping = None;
        self.pong_deadline = None;
    }

    /// The bytes to write next, if any.
    pub fn transmit(&mut self) -> Option<&[u8]> {
        self.out.transmit()
    }

    /// Whether anything waits to be written.
    pub fn has_output(&self) -> bool {
        self.out.has_output()
    }

    /// Whether data frames wait to be written (then more can wait in the outbox: they are
    /// taken in one batch once these are out).
    pub fn has_data(&self) -> bool {
        self.out.has_data()
    }

    /// `n` bytes of what [`transmit`](Self::transmit) returned were written. Returns the
    /// application bytes whose frames are now all out.
    pub fn advance(&mut self, n: usize, now: Instant) -> usize {
        let (app_bytes, close_written) = self.out.advance(n, now);
        self.written += n as u64;
        if n > 0 && self.timed_ping_unwritten && self.pong_deadline.is_some() {
            // The ping waits behind a frame the server is taking (or just went out): the
            // server cannot answer it yet, and is alive. Its time runs from its write.
            self.pong_deadline = after(now, self.timers.pong_timeout);
            self.timed_ping_unwritten = self.out.ping_waiting();
            if !self.timed_ping_unwritten {
                // (A control frame is written on its own: this write ended with it.)
                self.ping_end = Some(self.written);
            }
        }
        if n > 0 && self.out.close_queued() {
            // The server takes data: it is alive. Our Close (when it is out) starts its
            // time to answer.
            self.close_deadline = after(now, self.timers.close_timeout);
        }
        if close_written {
            log::trace!("our Close is out");
        }
        app_bytes
    }

    /// The driver held reading back past the pong's deadline: the server gets a pong
    /// timeout from now (see `Io::looking_for_pong`).
    pub fn restart_pong_timer(&mut self, now: Instant) {
        if self.pong_deadline.is_some() {
            self.pong_deadline = after(now, self.timers.pong_timeout);
        }
    }

    /// While a pong is awaited and the ping is written: the bytes written after it. The
    /// stream (the operating system's send queue) may still hold the ping: it has
    /// reached the server only once fewer than this many bytes are left unacknowledged.
    pub fn written_since_ping(&self) -> Option<u64> {
        let end = self.ping_end.filter(|_| self.pong_deadline.is_some())?;
        Some(self.written - end)
    }

    /// When a pong is due, if one is (whether or not the driver judges it now).
    pub fn pong_deadline(&self) -> Option<Instant> {
        self.pong_deadline.filter(|_| self.closing != Closing::Over)
    }

    /// "Fail the WebSocket connection" (RFC 6455 §7.1.7): tell the server why if there is
    /// a code and our Close is not out yet, report the error, read and report nothing more.
    fn fail(&mut self, code: Option<u16>, error: Error) {
        log::debug!("failing the connection: {error}");
        let dropped = self.out.fail(code.map(|c| close_payload(c, "")));
        if dropped > 0 {
            log::debug!("{dropped} bytes of application data not sent");
        }
        self.end(End::Failed(error));
    }

    fn end(&mut self, end: End) {
        if self.closing != Closing::Over {
            self.closing = Closing::Over;
            self.end = Some(end);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next needed, if ever. While the
    /// driver holds reading back (`judging` false: the consumer is behind), the server
    /// is not blamed for a late pong. The close timeout runs whatever the consumer does
    /// (the driver reads on while closing: see `io::DRAIN_BYTES`).
    pub fn poll_timeout(&self, judging: bool) -> Option<Instant> {
        if self.closing == Closing::Over {
            return None;
        }
        [self.pong_deadline]
            .into_iter()
            .filter(|_| judging)
            .chain([
                self.close_deadline,
                self.stall_deadline(),
                self.next_ping,
                self.reader.pool_expiry(),
            ])
            .flatten()
            .min()
    }

    /// A peer owed a control frame (a pong) that takes nothing we write for the close
    /// timeout is failed: it will never read its pongs.
    fn stall_deadline(&self) -> Option<Instant> {
        if self.write_error.is_some() {
            return None; // nothing is written any more: the close deadline decides
        }
        after(self.out.pong_owed_since()?, self.timers.close_timeout)
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant, judging: bool) {
        if self.closing == Closing::Over {
            return;
        }
        self.reader.expire_pool(now);
        let due = |d: Option<Instant>| d.is_some_and(|d| now >= d);
        if due(self.close_deadline) {
            match &self.closing {
                // Both Close frames went by; only the TCP end is missing.
                Closing::Both(c) if self.out.close_written() => {
                    let close = c.clone();
                    self.end(End::Clean(close));
                }
                _ => {
                    let error = self.write_error.take();
                    self.fail(None, error.unwrap_or(Error::Timeout(Timeout::Close)))
                }
            }
            return;
        }
        if judging && due(self.pong_deadline) {
            return self.fail(None, Error::Timeout(Timeout::Pong));
        }
        if due(self.stall_deadline()) {
            return self.fail(None, Error::Timeout(Timeout::Write));
        }
        if due(self.next_ping) {
            self.ping_seq += 1;
            let payload = Bytes::copy_from_slice(&self.ping_seq.to_be_bytes());
            if self.out.ping_room() > 0 {
                // (Else 16 pings wait unwritten already: a pong to any of them will do.)
                self.out.queue_ping(payload);
            }
            self.next_ping = after(now, self.timers.ping_interval);
            if self.pong_deadline.is_none() {
                self.pong_deadline = after(now, self.timers.pong_timeout);
                self.timed_ping_unwritten = true;
                self.ping_end = None;
            }
        }
    }

    /// The stream failed (an I/O error): nothing more is written or reported. Once the
    /// server's Close came, that is the end of the TCP connection after the closing
    /// handshake, a clean close whatever the socket says (a reset, say).
    pub fn abort(&mut self, error: Error) {
        match &self.closing {
            Closing::Received(close) | Closing::Both(close) => {
                log::debug!("the stream ended after the server's Close: {error}");
                let close = close.clone();
                self.out.fail(None);
                self.end(End::Clean(close));
            }
            _ => {
                let error = self.write_error.take().unwrap_or(error);
                self.fail(None, error)
            }
        }
    }

    /// A write failed (the server reset the connection, say): nothing more can be written,
    /// but what the server sent before may still wait to be read, its Close among it (a
    /// server that closed and went away while the consumer held reading back). After the
    /// server's Close this is the clean end [`abort`](Self::abort) gives. Before it, the
    /// driver reads on, whatever the consumer does: every message that came is reported,
    /// then the server's Close (a clean end with its code), or else, when the stream ends
    /// or the close timeout passes, the connection fails with `error`.
    pub fn write_failed(&mut self, error: Error, now: Instant) {
        match self.closing {
            Closing::Open | Closing::Sent => {
                log::debug!("a write failed ({error}): reading what the server sent before");
                self.write_error.get_or_insert(error);
                self.next_ping = None;
                self.pong_deadline = None;
                self.close_deadline = after(now, self.timers.close_timeout);
            }
            _ => self.abort(error),
        }
    }
}

/// A Close frame's payload: the code, then the reason.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

#[cfg(test)]
mod tests;
