//! The open connection: the I/O thread drives the protocol core. Each turn reads what
//! the socket holds into the core and turns it into events (bounded, so queued sends and
//! timers get their turn during a flood), runs the core's timers, and writes what the
//! core has to send until the socket is full.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::Events;

use super::transport::{tls_io_error, Transport};
use super::{Io, IoThread, Phase};
use crate::error::{Error, Timeout};
use crate::message::{Binary, Event, Message, Text};
use crate::protocol::{self, Connection, End};
use crate::state::ReadyState;

/// The protocol core and the stream under it.
pub(super) struct Open {
    pub conn: Connection,
    pub transport: Transport,
}

/// At most this many events per turn, so queued sends and timers get a turn in a flood.
const BURST: usize = 256;

impl Io {
    /// One turn of an open connection: read, timers, write.
    pub(super) fn drive(&mut self, open: &mut Open) -> Result<(), End> {
        let now = Instant::now();
        if self.receiver_gone && !self.draining {
            // Nobody takes the events: rather than read and drop them, go away.
            self.stopped = true;
            self.shared
                .transition(&[ReadyState::Open], ReadyState::Closing);
            self.close(open, Some((1001, String::new())));
        }
        let pong_due = open.conn.pong_deadline().is_some_and(|due| now >= due);
        if pong_due && self.ping_on_its_way(open) {
            // The server is still taking what we wrote before the ping: it cannot answer
            // yet, and it is alive. A pong timeout from now.
            open.conn.restart_pong_timer(now);
        } else if pong_due && !self.looking_for_pong && !self.judging() {
            // The consumer holds reading back, and a pong is due: the answer may wait in
            // the socket, behind what the consumer has not taken, or not be written yet
            // (the server could not write while nothing was read). Read for it past the
            // consumer's bound, give it a pong timeout from now, and judge once the
            // socket is drained. Until the pong comes (see `events`).
            self.looking_for_pong = true;
            self.readable = true;
            open.conn.restart_pong_timer(now);
        }
        self.read(open, now)?;
        // Write first: a server that took data while this thread waited to run (a loaded
        // machine) is credited before the timers judge it.
        self.flush(open);
        let now = Instant::now();
        open.conn.handle_timeout(now, self.judging());
        match open.conn.pong_deadline() {
            None => self.ping_unsent = None,
            // A ping just queued: what the send queue holds in front of it.
            Some(_) if self.ping_unsent.is_none() => self.ping_unsent = open.transport.unsent(),
            Some(_) => {}
        }
        if self.drop_deadline.is_some_and(|d| now >= d) {
            return Err(Error::Timeout(Timeout::Close).into());
        }
        // A ping the timers queued; then the end, if a timer or a failed write found it.
        self.flush(open);
        self.events(open, now, 0).map(drop)
    }

    /// Whether the ping a pong is due for has yet to reach the server (it waits to be
    /// written behind a large frame of ours, or in the socket's send queue), while the
    /// server has taken some of what we wrote since the last look (the ping's queueing,
    /// a write while it waited, or the last time this answered `true`).
    ///
    /// A server reading a large message at 1 MiB/s takes seconds to get through the
    /// 4 MiB a Linux send queue holds, and this thread cannot write again until a third
    /// of it is gone: such a server is alive, and not to be blamed for a ping it has not
    /// received. One that takes nothing for a pong timeout is. (Where the queue cannot be
    /// read, not Linux, the pong's time runs from the ping's last write, as
    /// `Connection::advance` has it.)
    fn ping_on_its_way(&mut self, open: &mut Open) -> bool {
        let Some(unsent) = open.transport.unsent() else {
            return false;
        };
        let taken = self.ping_unsent.is_some_and(|last| unsent < last);
        self.ping_unsent = Some(unsent);
        let not_there = match open.conn.written_since_ping() {
            // Not written yet.
            None => true,
            // Unacknowledged bytes are the last ones written: more than were written
            // after the ping, and the ping is among them.
            Some(after) => unsent as u64 > after,
        };
        not_there && taken
    }

    /// Reads while the socket has bytes and the consumer has room; turns them into events.
    fn read(&mut self, open: &mut Open, now: Instant) -> Result<(), End> {
        let mut budget = BURST;
        // The last read returned less than it was given room for: the socket is drained
        // (see `Transport::short_read_drains`).
        let mut drained = false;
        loop {
            budget = self.events(open, now, budget)?;
            if self.pending_full() {
                self.deliver_pending();
                if self.pending_full() {
                    break; // the consumer is behind: let TCP push back on the server
                }
                continue;
            }
            if budget == 0 || !self.readable || !open.conn.wants_read() {
                break;
            }
            if drained {
                // What a read that would block says, one `recv` sooner.
                open.conn.drained();
                self.socket_drained(open);
                break;
            }
            let transport = &mut open.transport;
            let mut room = 0;
            match open.conn.read_with(|buf| {
                room = buf.len();
                transport.read(buf)
            }) {
                Ok(n) => {
                    drained = 0 < n
                        && n < room
                        && !self.read_closed
                        && open.transport.short_read_drains();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.socket_drained(open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => open.conn.abort(io_error(e)),
            }
        }
        self.deliver_pending();
        Ok(())
    }

    /// The socket has nothing more: wait for its next readiness event.
    fn socket_drained(&mut self, open: &mut Open) {
        self.readable = false;
        self.burst_nth = 0;
        open.transport.set_low_water(open.conn.large_frame_left());
    }

    /// Turns what the core holds into events, at most `budget` of them and while the
    /// consumer has room (the end is reported whatever the budget); returns what is left
    /// of the budget.
    fn events(&mut self, open: &mut Open, now: Instant, mut budget: usize) -> Result<usize, End> {
        let polling = budget > 0;
        loop {
            let held_back = budget == 0 || self.pending_full();
            if held_back && !open.conn.has_end() {
                // Frames may be left in the core: another turn takes them.
                self.buffered |= polling;
                return Ok(budget);
            }
            let taken = self.take_messages(open, budget);
            if taken > 0 {
                budget = budget.saturating_sub(taken);
                continue;
            }
            let Some(event) = open.conn.poll_event(now) else {
                self.buffered = false;
                return Ok(budget);
            };
            budget = budget.saturating_sub(1);
            match event {
                protocol::Event::Message(m) => self.message(m),
                protocol::Event::Ping(p) if self.shared.config.ping_events => {
                    self.emit(Event::Ping(Binary(p)));
                }
                protocol::Event::Pong(p) => {
                    self.looking_for_pong = false; // (any pong answers the keepalive)
                    if self.shared.config.ping_events {
                        self.emit(Event::Pong(Binary(p)));
                    }
                }
                protocol::Event::Ping(_) => {}
                protocol::Event::PeerClose(close) => {
                    log::debug!("{}: the server closed: {close:?}", self.url());
                    // Stop the senders first: what they sent before goes out before the echo.
                    self.shared
                        .transition(&[ReadyState::Open], ReadyState::Closing);
                    self.close(open, None);
                }
                protocol::Event::End(end) => return Err(end),
            }
        }
    }

    /// The run of whole messages at the front of what the core read (see
    /// [`Connection::poll_messages`]), straight into `pending`; what [`Io::message`] does
    /// one by one, here once for the lot. Returns how many.
    fn take_messages(&mut self, open: &mut Open, max: usize) -> usize {
        let first = self.pending.len();
        let mut bytes = 0;
        let pending = &mut self.pending;
        let taken = open.conn.poll_messages(max, &mut |m| {
            bytes += m.len();
            pending.push_back(Event::Message(m));
        });
        self.pending_bytes += bytes;
        let own = COPY_FIRST.saturating_sub(self.burst_nth).min(taken);
        for (i, event) in self.pending.range_mut(first..first + own).enumerate() {
            if let Event::Message(m) = event {
                own_small(m, self.burst_nth + i);
            }
        }
        self.burst_nth += taken;
        if self.shared.pending_requests.load(SeqCst) > 0 {
            // Replies go to the `request` waiting for them instead. Looked at once per run,
            // not per message: routing each message in the loop above measured pull-style
            // stream_small 5-15 % slower.
            for event in self.pending.split_off(first) {
                match event {
                    Event::Message(m) => {
                        let len = m.len();
                        match crate::json::route_reply(&self.shared, m) {
                            Some(m) => self.pending.push_back(Event::Message(m)),
                            None => self.pending_bytes = self.pending_bytes.saturating_sub(len), // to its requester
                        }
                    }
                    other => self.pending.push_back(other),
                }
            }
        }
        taken
    }

    /// A message: to the consumer, or to the `request` waiting for it.
    fn message(&mut self, mut m: Message) {
        own_small(&mut m, self.burst_nth);
        self.burst_nth += 1;
        if let Some(m) = crate::json::route_reply(&self.shared, m) {
            self.emit(Event::Message(m));
        }
    }

    /// Starts (or answers) the closing handshake. The senders are stopped already (the
    /// state is CLOSING): what they sent before goes out first, then our Close.
    pub(super) fn close(&mut self, open: &mut Open, frame: Option<(u16, String)>) {
        self.draining = true;
        self.take_outbox(open);
        // The pings `ping` accepted (while OPEN) that wait for room in the core: theirs
        // is now, before our Close, or never (the core takes none after it).
        let (pings, _) = self.shared.take_pings(usize::MAX);
        open.conn.last_pings(pings);
        self.pings_left = false;
        let frame = frame
            .as_ref()
            .map(|(code, reason)| (*code, reason.as_str()));
        open.conn.close(frame, Instant::now());
    }

    /// Moves what `send` queued into the core.
    pub(super) fn take_outbox(&mut self, open: &mut Open) {
        self.outbox_waiting = false;
        let spare = open.conn.take_spare();
        let chunks = self.shared.lock_outbox().take(spare);
        if let Err(refused) = open.conn.queue_data(chunks) {
            // Cannot happen: sends stop (CLOSING) before our Close is queued.
            let bytes: usize = refused.iter().map(protocol::Chunk::app_bytes).sum();
            log::warn!(
                "{}: {bytes} bytes sent after our Close were dropped",
                self.url()
            );
            self.shared.sent(bytes);
        }
    }

    /// Writes what the core has to send until the socket is full, and the outbox's next
    /// batch once the core's data is out.
    fn flush(&mut self, open: &mut Open) {
        if self.write_failed {
            self.output_waiting = false;
            return;
        }
        let mut wrote = false;
        while !self.write_blocked {
            if self.outbox_waiting && !open.conn.has_data() {
                self.take_outbox(open);
            }
            let Some(bytes) = open.conn.transmit() else {
                break;
            };
            match open.transport.write(bytes) {
                Ok(0) => {
                    self.fail_writes(open, io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => {
                    let now = Instant::now();
                    self.shared.sent(open.conn.advance(n, now));
                    if open.conn.pong_deadline().is_some()
                        && open
                            .conn
                            .written_since_ping()
                            .is_none_or(|after| after == 0)
                    {
                        // The ping a pong is awaited for waits behind this write, or just
                        // went: what the send queue holds now (see `ping_on_its_way`).
                        self.ping_unsent = open.transport.unsent();
                    }
                    self.wrote_at = now;
                    self.handed_over = false;
                    wrote = true;
                    // Senders that found the outbox busy did not say so again.
                    self.outbox_waiting |= !open.conn.has_data();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_writes(open, e);
                    break;
                }
            }
        }
        if wrote && open.transport.is_tls() && !self.write_failed {
            // rustls keeps encrypted records until flushed.
            match open.transport.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_blocked = true,
                Err(e) => self.fail_writes(open, e),
                Ok(()) => {}
            }
        }
        if wrote && self.pings_left {
            self.take_pings(open); // room made for them: the next turn writes them
        }
        self.output_waiting = open.conn.has_output() && !self.write_failed;
    }

    /// Moves the pings `ping` asked for into the core, as many as it has room for: the
    /// rest stay in the handle's queue, which `ping` refuses to fill past 16, so none is
    /// dropped. Looked at again after each write (see `flush`).
    pub(super) fn take_pings(&mut self, open: &mut Open) {
        let (pings, left) = self.shared.take_pings(open.conn.ping_room());
        for payload in pings {
            open.conn.ping(payload);
        }
        self.pings_left = left;
    }

    /// A write failed. The server may have sent more before it went away, its Close
    /// among it, and a consumer that held reading back has not seen it yet: write nothing
    /// more, and read the socket to its end whatever the consumer does (as while closing),
    /// before the core decides how the connection ended (`Connection::write_failed`).
    fn fail_writes(&mut self, open: &mut Open, error: io::Error) {
        self.write_failed = true;
        self.draining = true;
        open.conn.write_failed(io_error(error), Instant::now());
    }
}

impl IoThread {
    /// After failing the connection with a Close code: flush that Close, end our side of
    /// the stream, and read (discarding) until the server ends its side, for at most a
    /// second. Dropping a socket with unread data makes the kernel send RST, and the
    /// server would lose the Close (and learn nothing of why).
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    pub(super) fn linger(&mut self) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let dropped_late = self.io.drop_deadline.is_some_and(|d| Instant::now() >= d);
        if !open.conn.has_output() || dropped_late || self.io.write_failed {
            return;
        }
        let timeout = self
            .io
            .shared
            .config
            .close_timeout
            .min(Duration::from_secs(1));
        let deadline = Instant::now() + timeout;
        let mut events = Events::with_capacity(4);
        let mut buf = vec![0u8; 4096]; // not on the stack: this thread's stack stays small
        loop {
            while let Some(bytes) = open.conn.transmit() {
                match open.transport.write(bytes) {
                    Ok(n) if n > 0 => {
                        open.conn.advance(n, Instant::now());
                    }
                    _ => break,
                }
            }
            let _ = open.transport.flush();
            if !open.conn.has_output() {
                let Some(tcp) = open.transport.tcp() else {
                    return;
                };
                let _ = tcp.shutdown(std::net::Shutdown::Write);
                match tcp.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                log::debug!(
                    "{}: the server did not end the stream after our Close",
                    self.io.url()
                );
                return;
            }
            if self
                .io
                .poll
                .poll(&mut events, Some(deadline - now))
                .is_err()
            {
                return;
            }
        }
    }
}

/// An I/O error of the stream, as the crate reports it.
fn io_error(e: io::Error) -> Error {
    tls_io_error(&e).unwrap_or_else(|| Error::io(e))
}

/// Payloads up to this size are copied out of the read buffer, for the first
/// [`COPY_FIRST`] messages of a read burst.
const OWN_BELOW: usize = 512;

/// How many messages at the start of each read burst get their own allocation.
const COPY_FIRST: usize = 8;

/// Whether the payload (`len` bytes) of the `nth` message of a read burst gets an
/// allocation of its own (see [`own_small`]).
fn gets_own(len: usize, nth: usize) -> bool {
    nth < COPY_FIRST && len <= OWN_BELOW
}

/// Gives the payload of the `nth` message of a read burst (the messages read since the
/// socket was last found drained) an allocation of its own, if it is small and among the
/// first few.
///
/// The core splits each payload off its read buffer, so a payload keeps that whole
/// buffer (16 KiB or more) alive for as long as it lives. In a flood that is free and
/// fair: a burst's messages share one buffer, and the consumer drops them together. On a
/// quiet connection each message would pin a buffer of its own, and a program that keeps
/// its messages (a chat history) would hold 16 KiB per message. So a small payload among
/// the first few of its burst, which is every message of a quiet connection, gets an
/// allocation of its own size; the rest of a flood stays where it was read.
///
/// (Copying every small payload of a flood into a block per burst was measured too, twice,
/// and was slower than leaving them in place: see `benches/compare/README.md`.)
fn own_small(message: &mut Message, nth: usize) {
    match message {
        Message::Text(Text(t)) if gets_own(t.len(), nth) => {
            *t = tungstenite::Utf8Bytes::from(t.as_str());
        }
        Message::Binary(Binary(b)) if gets_own(b.len(), nth) => {
            *b = Bytes::copy_from_slice(b);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::{own_small, COPY_FIRST, OWN_BELOW};

    use crate::message::{Binary, Message, Text};
    use bytes::{Bytes, BytesMut};

    /// The payload as `own_small` leaves it, for a binary message or a text one.
    fn kept(payload: Bytes, nth: usize, text: bool) -> Bytes {
        let mut m = match text {
            true => Message::Text(Text(payload.try_into().unwrap())),
            false => Message::Binary(Binary(payload)),
        };
        own_small(&mut m, nth);
        match m {
            Message::Text(Text(t)) => Bytes::from(t),
            Message::Binary(Binary(b)) => b,
        }
    }

    /// A read buffer with `n` payloads of `len` bytes split off it, as tungstenite does.
    fn split_payloads(n: usize, len: usize) -> (BytesMut, Vec<Bytes>) {
        let mut buffer = BytesMut::from(&vec![7u8; n * len + 100][..]);
        let payloads = (0..n).map(|_| buffer.split_to(len).freeze()).collect();
        (buffer, payloads)
    }

    #[test]
    fn the_first_small_payloads_of_a_burst_stop_pinning_the_read_buffer() {
        let (_buffer, payloads) = split_payloads(COPY_FIRST + 2, 64);
        for (nth, payload) in payloads.into_iter().enumerate() {
            let text = nth % 2 == 1;
            let kept = kept(payload, nth, text);
            assert_eq!(&kept[..], &[7u8; 64][..]);
            assert_eq!(
                kept.is_unique(),
                nth < COPY_FIRST,
                "message {nth} of the burst (text: {text})"
            );
        }
    }

    #[test]
    fn a_large_payload_is_never_copied() {
        let (_buffer, mut payloads) = split_payloads(1, OWN_BELOW + 1);
        let payload = payloads.pop().unwrap();
        let at = payload.as_ptr();
        assert_eq!(kept(payload, 0, false).as_ptr(), at, "moved, not copied");
    }
}
