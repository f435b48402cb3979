//! The I/O thread: one per connection, the only owner of the socket, and the driver of
//! the protocol core ([`crate::protocol::Connection`]).
//!
//! It is one state machine, [`Phase`]: `Connecting` (non-blocking TCP connect to each
//! resolved address in turn) → `Tunneling` (through a proxy) → `Handshaking` (TLS and the
//! HTTP upgrade, resumed on each readiness event) → `Open` (the protocol core: it covers
//! CLOSING too) → the end, reported once as [`End`]. Reaching OPEN is in `connect.rs`;
//! driving the core (bytes in, events out, bytes out, timers) in `open.rs`.
//!
//! Each turn of the loop runs the queued commands, makes what progress the phase allows
//! without blocking, checks the timers, then sleeps in exactly one place:
//! - in `mio::Poll`, on socket readiness and the waker that `send` pokes (only when this
//!   thread is asleep), with a timeout only when a timer is set; or
//! - when the event channel is full, in a crossbeam `Select` on "room in the event channel"
//!   and "a command arrived". The socket is not read then, so TCP pushes back on the server.
//!
//! It never runs user code, and it runs under a guard: a panic on it (a bug) is reported
//! as `Error`, then `Close` 1006, and every waiter is released.

mod connect;
mod open;
pub(crate) mod proxy;
mod transport;

pub(crate) mod sockopt;

pub(crate) use connect::build_request;
pub use transport::TlsBackend;
pub(crate) use transport::{TlsConfig, TlsOptions};

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::handshake::client::{ClientHandshake, Request};
use tungstenite::handshake::MidHandshake;

use crate::delivery::{recv_until, Level, Outlet, Waited};
use crate::error::{Error, Timeout};
use crate::message::{CloseEvent, Event};
use crate::protocol::{after, End, Outbox};
use crate::state::ReadyState;
use crate::url::Target;
use crate::websocket::Shared;
use open::Open;
use proxy::Proxy;

pub(crate) const SOCKET: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);

/// What handles ask of the I/O thread, in order.
#[derive(Debug)]
pub(crate) enum Command {
    /// The outbox went from empty to not: write it (one nudge per batch of messages).
    Flush,
    /// `ping` filled the ping slot (see [`Shared::ping`]).
    Ping,
    /// Start the closing handshake (or abort the opening one).
    Close(Option<(u16, String)>),
    /// The last `WebSocket` handle is gone: close with 1001 and finish within the close
    /// timeout, whatever the event consumer does.
    Drop,
    /// Pull style: the caller took half of a full queue, or dropped its receiver (see
    /// `delivery::Room`).
    Room,
    /// The answer of the DNS lookup with this number (see `IoThread::resolve`).
    Resolved(u64, Box<Result<connect::Resolved, Error>>),
}

type Mid = MidHandshake<ClientHandshake<transport::Shaking>>;

enum Phase {
    /// Waiting for the DNS lookup with this number, which runs on a thread of its own.
    Resolving {
        id: u64,
    },
    Connecting {
        addrs: VecDeque<SocketAddr>,
        tcp: Option<(SocketAddr, TcpStream)>,
        last_error: Option<(SocketAddr, io::Error)>,
    },
    /// Through a proxy: the tunnel's set-up (HTTP CONNECT or SOCKS5) in `tunnel`.
    Tunneling {
        tcp: TcpStream,
        tunnel: proxy::Tunnel,
    },
    Handshaking(Mid),
    Open(Box<Open>),
    Done,
}

pub(crate) struct IoThread {
    phase: Phase,
    io: Io,
}

/// Everything but the phase, so that methods can borrow the socket and this together.
struct Io {
    shared: Arc<Shared>,
    poll: Poll,
    commands: Receiver<Command>,
    /// Where events go to the consumer.
    outlet: Outlet,
    /// Where this attempt connects: the URL, or where a redirect pointed.
    target: Target,
    redirects: usize,
    /// DNS lookups started, to know the awaited one's answer (see `Phase::Resolving`).
    lookups: u64,
    /// In batches, how many events waited behind the untaken batch when the socket was
    /// last left unwatched (see `Io::moderation`).
    moderated_behind: Option<usize>,
    /// The lookup still running, if one is, and its hosts: a later attempt for the same
    /// hosts waits for it (see `IoThread::resolve`).
    lookup_running: Option<(u64, connect::LookupNames)>,
    /// The proxy this attempt tunnels through.
    proxy: Option<Proxy>,
    request: Option<Request>,
    /// The `Sec-WebSocket-Accept` this attempt's key asks for (see
    /// `IoThread::upgrade_in_a_token_list`).
    accept_key: String,
    /// `close` was called or the last handle dropped: no more reconnecting.
    stopped: bool,
    /// This attempt reached OPEN.
    opened: bool,
    /// Consecutive failed attempts, for the reconnect backoff.
    failures: u32,
    last_close: Option<CloseEvent>,
    /// Events read in this burst, not yet handed over. They go together at the end of the
    /// burst, so a consumer that drains faster than the socket fills is woken once per
    /// burst, not once per message. While the outlet is full they wait here, and once
    /// they make a whole burst ([`Outlet::burst_full`]), the socket is not read.
    pending: VecDeque<Event>,
    /// Payload bytes in `pending`.
    pending_bytes: usize,
    /// Messages read since the socket was last found drained (see `open::own_small`).
    burst_nth: usize,
    /// How long to nap while pull style's channel is full (see [`Level`]).
    nap: Duration,
    /// The consumer emptied the outlet lately: when it is full, wait for it to drain
    /// (see [`Io::await_drain`]) rather than block or nap.
    consumer_keeps_up: bool,
    receiver_gone: bool,
    /// Pings asked for by `ping` wait in the handle's queue for room in the core's (see
    /// `Io::take_pings`).
    pings_left: bool,
    /// A pong fell due while the consumer held reading back: the socket is read past the
    /// consumer's bound to look for it, the server given a pong timeout again from then
    /// (it could not write while nothing was read), and judged once the socket is drained
    /// (see `Io::judging`). Until the pong comes or the connection ends.
    looking_for_pong: bool,
    /// While the ping a pong is awaited for may still wait in the socket's send queue:
    /// the bytes in that queue at the last look (see `Io::ping_on_its_way`).
    ping_unsent: Option<usize>,
    /// Set by `Command::Drop`: the time by which everything must be over.
    drop_deadline: Option<Instant>,
    /// Edge-triggered readiness, remembered until a read returns `WouldBlock`.
    readable: bool,
    /// A readiness event said the server ended its stream (or the socket failed): the end
    /// may already be queued behind the data, with no event to come for it, so reads go
    /// on until they return it (a short read is not taken for a drained socket).
    read_closed: bool,
    /// The core holds complete frames not turned into events yet (a burst's budget ran
    /// out, or the consumer is behind).
    buffered: bool,
    write_blocked: bool,
    /// A write failed: nothing more is written, and the socket is read to its end (see
    /// `Connection::write_failed`).
    write_failed: bool,
    /// The core has output waiting (as of the last write).
    output_waiting: bool,
    /// The outbox has frames the core has not taken yet.
    outbox_waiting: bool,
    /// Since when the consumer has held reading back, and whether that was warned of.
    full_since: Option<Instant>,
    warned_full: bool,
    /// Our Close is queued: the consumer no longer holds reading back (up to
    /// [`DRAIN_BYTES`] and [`DRAIN_EVENTS`] waiting), so the server's answer is seen
    /// whatever the consumer does.
    draining: bool,
    connect_deadline: Option<Instant>,
    handshake_deadline: Option<Instant>,
    /// When this thread last wrote to the socket (see `SPIN`).
    wrote_at: Instant,
    /// Whether events went to the consumer since that write (see `IoThread::wait`).
    handed_over: bool,
    spin: Spin,
}

impl IoThread {
    pub fn new(
        shared: Arc<Shared>,
        poll: Poll,
        commands: Receiver<Command>,
        outlet: Outlet,
    ) -> Self {
        let connect_deadline = after(Instant::now(), Some(shared.config.connect_timeout));
        let target = shared.target.clone();
        IoThread {
            phase: Phase::Done,
            io: Io {
                shared,
                poll,
                commands,
                outlet,
                target,
                redirects: 0,
                lookups: 0,
                moderated_behind: None,
                lookup_running: None,
                proxy: None,
                request: None,
                accept_key: String::new(),
                stopped: false,
                opened: false,
                failures: 0,
                last_close: None,
                pending: VecDeque::new(),
                pending_bytes: 0,
                burst_nth: 0,
                nap: NAP_MIN,
                consumer_keeps_up: true,
                receiver_gone: false,
                pings_left: false,
                looking_for_pong: false,
                ping_unsent: None,
                drop_deadline: None,
                readable: false,
                read_closed: false,
                buffered: false,
                write_blocked: false,
                write_failed: false,
                output_waiting: false,
                outbox_waiting: false,
                draining: false,
                full_since: None,
                warned_full: false,
                connect_deadline,
                handshake_deadline: None,
                wrote_at: Instant::now()
                    .checked_sub(SPIN)
                    .unwrap_or_else(Instant::now),
                handed_over: false,
                spin: Spin::default(),
            },
        }
    }

    /// Runs the connection under a guard: a panic here is a bug, but the user still gets
    /// `Error`, then `Close` 1006, CLOSED, and every blocked call released.
    ///
    /// Without a callback thread (pull style, batches), `wait_closed` is released only
    /// once this thread has let go of the consumer's channel: the connection's last
    /// events are all there by then (batches set aside behind a waiting one are found
    /// once the channel disconnects), so a caller that takes what waits without blocking
    /// after `wait_closed` finds its `Close`, as callback style's `wait_closed` returns
    /// after `onclose` ran.
    pub fn run(mut self: Box<Self>) {
        let result = catch_unwind(AssertUnwindSafe(|| self.run_connections()));
        let shared = Arc::clone(&self.io.shared);
        let panicked = result.is_err();
        if let Err(panic) = result {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            log::error!("{}: the I/O thread panicked: {what}", self.io.url());
            self.phase = Phase::Done; // drops the socket
            self.io.stopped = true;
            // CLOSED before the `Close` event goes, as after any other end (see
            // `drain_after_end`): a caller that takes it finds the state CLOSED. And
            // whatever happens below, every waiter is released.
            shared.transition(
                &[
                    ReadyState::Connecting,
                    ReadyState::Open,
                    ReadyState::Closing,
                ],
                ReadyState::Closed,
            );
            let _ = catch_unwind(AssertUnwindSafe(|| {
                self.io.finish(End::Failed(Error::Internal(what)), true);
            }));
            shared.set_open(Err(Error::Aborted));
            self.io.last_close.get_or_insert_with(CloseEvent::abnormal);
        }
        let last = self
            .io
            .last_close
            .take()
            .unwrap_or_else(CloseEvent::abnormal);
        // The consumer's channel disconnects: its last events are visible.
        drop(self);
        // (Callback style: the callback thread, once `onclose` ran; after a panic here,
        // this thread too, whatever happened to that one.)
        if !shared.callback_mode || panicked {
            shared.set_closed(last);
        }
    }

    /// Connects, serves until the connection ends, and reconnects while the policy says so.
    fn run_connections(&mut self) {
        loop {
            let end = match self.resolve() {
                Ok(()) => self.serve(),
                Err(end) => end,
            };
            self.linger();
            self.phase = Phase::Done; // drop the socket: the server sees the end at once
            self.io.drain_after_end();
            let retry = self.io.retry_delay(&end);
            self.io.finish(end, retry.is_none());
            match retry {
                Some(delay) if self.io.backoff(delay) => self.io.new_attempt(),
                _ => break,
            }
        }
    }

    fn serve(&mut self) -> End {
        let mut events = Events::with_capacity(8);
        loop {
            if let Err(end) = self.step() {
                return end;
            }
            if let Err(end) = self.wait(&mut events) {
                return end;
            }
        }
    }

    /// One turn: commands, then whatever progress the phase can make without blocking.
    fn step(&mut self) -> Result<(), End> {
        #[cfg(test)]
        tests::maybe_panic(self.io.url());
        while let Ok(command) = self.io.commands.try_recv() {
            self.command(command)?;
        }
        match &mut self.phase {
            Phase::Connecting { .. } => self.progress_connect()?,
            Phase::Tunneling { .. } => self.progress_tunnel()?,
            Phase::Handshaking(_) => self.progress_handshake()?,
            Phase::Open(open) => self.io.drive(open)?,
            Phase::Resolving { .. } | Phase::Done => {}
        }
        let now = Instant::now();
        match self.phase {
            Phase::Resolving { .. } | Phase::Connecting { .. }
                if self.io.connect_deadline.is_some_and(|d| now >= d) =>
            {
                Err(Error::Timeout(Timeout::Connect).into())
            }
            Phase::Handshaking(_) | Phase::Tunneling { .. }
                if self.io.handshake_deadline.is_some_and(|d| now >= d) =>
            {
                Err(Error::Timeout(Timeout::Handshake).into())
            }
            _ => Ok(()),
        }
    }

    fn command(&mut self, command: Command) -> Result<(), End> {
        let io = &mut self.io;
        match command {
            Command::Drop => {
                io.dropped();
                io.shared.transition(
                    &[ReadyState::Connecting, ReadyState::Open],
                    ReadyState::Closing,
                );
                self.command(Command::Close(Some((1001, String::new()))))
            }
            Command::Close(frame) => {
                io.stopped = true;
                match &mut self.phase {
                    Phase::Open(open) => {
                        io.close(open, frame);
                        Ok(())
                    }
                    Phase::Done => Ok(()),
                    Phase::Resolving { .. }
                    | Phase::Connecting { .. }
                    | Phase::Tunneling { .. }
                    | Phase::Handshaking(_) => Err(Error::Aborted.into()),
                }
            }
            Command::Flush => {
                // Taken once what the core holds is out (see `flush`): one batch at a
                // time, while the senders fill the next.
                io.outbox_waiting = true;
                Ok(())
            }
            Command::Ping => {
                if let Phase::Open(open) = &mut self.phase {
                    io.take_pings(open);
                }
                Ok(())
            }
            Command::Room => {
                io.deliver_pending();
                if !io.receiver_gone && io.outlet.receiver_gone() {
                    // The last receiver was dropped: an open connection closes with 1001
                    // (see `drive`) even when it has nothing to deliver. (Until
                    // 2026-12-07 only a delivery found out: an idle connection whose
                    // receiver was dropped stayed open, pinging, for as long as its
                    // `WebSocket` lived.)
                    io.discard(Vec::new());
                }
                Ok(())
            }
            Command::Resolved(id, answer) => self.lookup_done(id, *answer),
        }
    }

    /// Sleeps until there is something to do.
    fn wait(&mut self, events: &mut Events) -> Result<(), End> {
        let busy = self.io.has_work(&self.phase);
        let mut deadline = self.io.next_deadline(&self.phase);
        let held = !busy && !self.io.pending.is_empty();
        let pong_watch = self.io.looking_for_pong && !self.io.pending_full();
        let mut take_wanted = false;
        if held && !self.io.holds_reading() {
            // Batches: one waits untaken, and the next has room: the socket is read on,
            // and the consumer's take wakes this thread to hand the next one over. A
            // consumer that keeps up takes it within microseconds (see `await_drain`);
            // one that does not is busy elsewhere, and the socket is read for it at most
            // once per `MODERATE` until it takes (see `moderation`).
            if self.io.consumer_keeps_up {
                if self.io.await_drain() {
                    self.io.deliver_pending();
                    return Ok(());
                }
                self.io.consumer_keeps_up = false;
            }
            if !self.io.outlet.wake_on_take() {
                self.io.deliver_pending(); // taken meanwhile
                return Ok(());
            }
            take_wanted = true;
        } else if held && (self.io.draining || self.io.requests_waiting() || pong_watch) {
            // Closing, a request waits, or a pong is looked for (the socket drained, short
            // of the bound): the socket is read whatever the consumer does (the answer
            // must be seen), and the events wait for room, which the consumer's next take
            // makes and wakes this thread for. (Until 2026-12-07 it looked every 5 ms,
            // 200 wake-ups a second for as long as a request waited on a consumer busy
            // elsewhere.) Takes through the raw receiver wake nobody: then it looks again
            // after `RETRY`.
            self.io.deliver_pending();
            if !self.io.pending.is_empty() {
                match self.io.outlet.wake_when_taken() {
                    Some(true) => take_wanted = true,
                    Some(false) => {
                        self.io.deliver_pending(); // taken meanwhile
                        return Ok(());
                    }
                    None => {
                        let soon = Instant::now() + RETRY;
                        deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
                    }
                }
            }
        } else if held {
            // The outlet is full: it takes no more until the consumer makes room.
            if self.io.consumer_keeps_up {
                if self.io.await_drain() {
                    self.io.deliver_pending();
                    return Ok(());
                }
                self.io.consumer_keeps_up = false;
            }
            return self.wait_for_consumer(deadline);
        }
        // A caller busy elsewhere: the socket is not watched for a while (see `MODERATE`).
        let moderated = if busy {
            None
        } else {
            self.io.moderation(&mut self.phase)
        };
        if let Some(until) = moderated {
            deadline = Some(deadline.map_or(until, |d| d.min(until)));
        }
        // Just after a write an answer is likely within microseconds: look a few times,
        // yielding the CPU in between, before sleeping for real (see `Spin`).
        let spin_until = self.io.wrote_at + SPIN;
        let spinning = moderated.is_none()
            && !busy
            && self.io.commands.is_empty()
            && Instant::now() < spin_until
            && self.io.spin.should();
        let polled = if spinning {
            // After a hand-over, the consumer's answer (its next send) is likely what comes:
            // the thread counts as awake and the look watches the command channel, so that
            // send costs no write to the waker. After a write alone (a stream of sends) it
            // counts as asleep, as it always did: the first send of each batch writes to
            // the waker, which the look sees (send_small on one core 2-6 % faster than
            // with every look awake). Waiting consumers yield on while it looks
            // (`io_looking`, see `Batches::look`).
            let awake = self.io.handed_over;
            let shared = &self.io.shared;
            shared.io_looking.store(true, Relaxed);
            if !awake {
                shared.io_sleeping.store(true, SeqCst);
                fence(SeqCst);
            }
            let mut polled = self.io.poll.poll(events, Some(Duration::ZERO));
            while matches!(polled, Ok(()))
                && events.is_empty()
                && (!awake || self.io.commands.is_empty())
                && Instant::now() < spin_until
            {
                std::thread::yield_now();
                polled = self.io.poll.poll(events, Some(Duration::ZERO));
            }
            shared.io_looking.store(false, Relaxed);
            let found = !events.is_empty() || (awake && !self.io.commands.is_empty());
            self.io.spin.paid(found);
            match polled {
                Ok(()) if !found => self.io.sleep(events, until(deadline)),
                polled => {
                    self.io.shared.io_sleeping.store(false, SeqCst);
                    polled
                }
            }
        } else if busy {
            self.io.poll.poll(events, Some(Duration::ZERO))
        } else {
            self.io.sleep(events, until(deadline))
        };
        if take_wanted {
            // Woken by the take, or by anything else: hand over what can go now.
            self.io.outlet.stop_waking_on_take();
            self.io.deliver_pending();
        }
        if moderated.is_some() {
            self.io.end_moderation(&mut self.phase)?;
        }
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(e).into()),
        }
        for event in events.iter() {
            if event.token() == SOCKET {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.io.readable = true;
                }
                if event.is_read_closed() || event.is_error() {
                    self.io.read_closed = true;
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    self.io.write_blocked = false;
                }
            }
        }
        Ok(())
    }

    /// The outlet is full: wait for room in it or for a command, not for the socket.
    fn wait_for_consumer(&mut self, deadline: Option<Instant>) -> Result<(), End> {
        let io = &mut self.io;
        // Output stuck behind a full socket buffer cannot be watched from here; retry it
        // on a short timer. This needs a slow consumer and a slow server at once.
        let retry_writes = io.write_blocked && io.output_waiting;
        let deadline = match (deadline, retry_writes) {
            (d, true) => Some(d.map_or(Instant::now() + RETRY, |d| d.min(Instant::now() + RETRY))),
            (d, false) => d,
        };
        let blocked = Instant::now();
        if let Outlet::Events(pull) = &mut io.outlet {
            // Woken by the caller's take that brings the queue down to half (see
            // `delivery::Room`), or by a command. Takes through the raw receiver wake
            // nobody: once the caller has used it, look again after a nap too.
            if !pull.held() || !pull.wake_on_room() {
                io.deliver_pending(); // the caller took some since the last look
                return Ok(());
            }
            let nap = pull.raw().then_some(blocked + io.nap);
            let wake = [deadline, nap].into_iter().flatten().min();
            let got = recv_until(&io.commands, wake);
            pull.stop_waiting();
            return match got {
                Ok(command) => self.command(command),
                Err(_) => {
                    if nap.is_some_and(|nap| Instant::now() >= nap) {
                        io.nap = next_nap(io.nap, pull.level());
                    }
                    io.write_blocked &= !retry_writes;
                    io.deliver_pending();
                    Ok(())
                }
            };
        }
        if io.outlet.is_lane() {
            // Pull style in bursts: its channel takes all (for the connection's last
            // events); the burst waits for the caller's next take, which wakes this thread.
            if !io.outlet.wake_on_take() {
                io.deliver_pending(); // taken meanwhile
                return Ok(());
            }
            let got = recv_until(&io.commands, deadline);
            io.outlet.stop_waking_on_take();
            return match got {
                Ok(command) => {
                    // Woken within microseconds: the caller keeps up after all.
                    if matches!(command, Command::Room) && blocked.elapsed() < SPIN {
                        io.consumer_keeps_up = true;
                    }
                    self.command(command)
                }
                Err(_) => {
                    io.write_blocked &= !retry_writes;
                    io.deliver_pending();
                    Ok(())
                }
            };
        }
        match io.outlet.push_wait(&mut io.pending, &io.commands, deadline) {
            Waited::Sent => {
                // Room came within microseconds: the consumer keeps up after all (it was
                // preempted, say), and waking for each free slot would make it ping-pong.
                if blocked.elapsed() < SPIN {
                    io.consumer_keeps_up = true;
                }
                io.deliver_pending();
                Ok(())
            }
            Waited::Gone(events) => {
                io.discard(events);
                io.recount_pending();
                Ok(())
            }
            Waited::TimedOut => {
                io.write_blocked &= !retry_writes;
                Ok(())
            }
            Waited::Command(Some(command)) => self.command(command),
            Waited::Command(None) => Ok(()),
        }
    }
}

/// How long the I/O thread keeps looking for an answer after a write before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// Pull style: a caller that has taken nothing for this long while events wait for it is
/// busy, and the I/O thread reads for it at most once per [`MODERATE`] (and at its next
/// take) instead of once per message (see `Io::moderation`).
const MODERATE_AFTER: Duration = Duration::from_micros(300);
/// The longest the socket goes unwatched for a busy caller: a ping waits at most this
/// long for its pong, and a message for the caller's next look.
const MODERATE: Duration = Duration::from_millis(1);

/// Whether the look after a write pays: it is skipped after looks that found nothing (a
/// stream of sends, a server that takes its time), for twice as many writes each time,
/// up to [`SPIN_SKIP_MAX`], and tried again as soon as one finds an answer. A look costs
/// up to [`SPIN`] of CPU that a program computing on every core wants back.
#[derive(Debug, Default)]
struct Spin {
    /// Looks that found nothing in a row.
    misses: u32,
    /// Writes to go before the next look.
    skip: u32,
    /// How many writes the next run of misses skips.
    backoff: u32,
}

/// Looks that must miss in a row before they are skipped.
const SPIN_MISSES: u32 = 4;
/// The most writes skipped before looking again.
const SPIN_SKIP_MAX: u32 = 1024;

impl Spin {
    fn should(&mut self) -> bool {
        if self.skip == 0 {
            return true;
        }
        self.skip -= 1;
        false
    }

    fn paid(&mut self, found: bool) {
        if found {
            *self = Spin::default();
            return;
        }
        self.misses += 1;
        if self.misses >= SPIN_MISSES {
            self.misses = 0;
            self.backoff = (self.backoff * 2).clamp(SPIN_MISSES, SPIN_SKIP_MAX);
            self.skip = self.backoff;
        }
    }
}

/// The least number of yields before [`SPIN`] counts as spent, when waiting for the
/// consumer to drain a full outlet.
const SPIN_YIELDS: u32 = 32;

/// The shortest and longest naps of the I/O thread while pull style's channel is full
/// (see [`next_nap`]). A caller that stopped taking costs this thread 200 wake-ups a
/// second, while the server sends.
const NAP_MIN: Duration = Duration::from_micros(100);
const NAP_MAX: Duration = Duration::from_millis(5);

/// The nap after one of `nap` that ended with the channel at `level`: half as long if less
/// than a quarter of the limit still waited (the caller had nearly caught up, or sat
/// waiting), twice as long if more than half did (it took little). So the naps settle
/// near the time the caller takes to work through half the limit: with a limit of 1 to
/// 8 events and a caller that spends 50 µs to 3 ms on each, it spends 85–100 % of its
/// time working and waits for the I/O thread the rest (three runs of `cargo run
/// --release -p nwebsocket-compare --bin slow_consumer`).
fn next_nap(nap: Duration, level: Level) -> Duration {
    match level {
        Level::Low => (nap / 2).max(NAP_MIN),
        Level::Middle => nap,
        Level::High => (nap * 2).min(NAP_MAX),
    }
}

/// How long the consumer may hold reading back before a warning, without a ping interval.
const FULL_PATIENCE: Duration = Duration::from_secs(10);

/// While closing (or while a `request` waits), what may wait for the consumer beyond its
/// bounds: payload bytes and events. Past it the socket is not read, and the close timeout
/// (the request's) decides.
const DRAIN_BYTES: usize = 16 << 20;
const DRAIN_EVENTS: usize = 1 << 16;

/// How often output stuck behind a full socket is retried while the consumer is also full.
const RETRY: Duration = Duration::from_millis(5);

/// The time left until `deadline` (`None`: no limit).
fn until(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

impl Io {
    fn url(&self) -> &str {
        self.target.url.as_str()
    }

    /// Sleeps in `poll` (on the socket and the waker) for at most `timeout`: marked asleep
    /// (`io_sleeping`) first, then the command channel looked at, so that a command
    /// queued meanwhile either is seen here (then it does not sleep at all) or wakes the
    /// poll (pairs with the fence in `Shared::wake_io`). The main loop's sleep
    /// ([`IoThread::wait`]), and the wait for a rejection's body. (Until 2026-12-07 that
    /// wait polled without `io_sleeping` set, so no command woke it: a drop there gave up
    /// joining the threads after the close timeout and a second, and they lived on until
    /// the handshake timeout.)
    fn sleep(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        self.shared.io_sleeping.store(true, SeqCst);
        fence(SeqCst);
        let polled = if self.commands.is_empty() {
            self.poll.poll(events, timeout)
        } else {
            events.clear(); // (what an earlier poll found is no news)
            Ok(())
        };
        self.shared.io_sleeping.store(false, SeqCst);
        polled
    }

    /// Lookup `id` has answered: it runs no more.
    fn lookup_answered(&mut self, id: u64) {
        if self
            .lookup_running
            .as_ref()
            .is_some_and(|(running, _)| *running == id)
        {
            self.lookup_running = None;
        }
    }

    fn dropped(&mut self) {
        if self.drop_deadline.is_none() {
            self.drop_deadline = after(Instant::now(), Some(self.shared.config.close_timeout));
        }
        self.stopped = true;
    }

    /// After the end: takes the commands still queued (a close or drop ends reconnecting)
    /// and empties the outbox, whose messages will not go out on this connection.
    fn drain_after_end(&mut self) {
        // CLOSED first: senders are refused from here on (the outbox lock orders them),
        // so what is emptied below is all this connection had, and nothing lands in the
        // outbox between connections. (Emptied while the state still said OPEN, a send
        // could slip in after it and stay there, with no wake-up, into the next
        // connection.)
        self.shared.transition(
            &[
                ReadyState::Connecting,
                ReadyState::Open,
                ReadyState::Closing,
            ],
            ReadyState::Closed,
        );
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Close(_) => self.stopped = true,
                Command::Drop => self.dropped(),
                Command::Resolved(id, _) => self.lookup_answered(id),
                Command::Flush | Command::Ping | Command::Room => {}
            }
        }
        *self.shared.lock_outbox() = Outbox::default();
    }

    /// How long to wait before reconnecting, or `None` when this was the last connection.
    fn retry_delay(&mut self, end: &End) -> Option<Duration> {
        let shared = Arc::clone(&self.shared);
        let policy = shared.config.reconnect.as_ref()?;
        if self.stopped || (matches!(end, End::Clean(_)) && policy.stop_on_clean_close) {
            return None;
        }
        if self.receiver_gone || self.consumer_gone() {
            return None;
        }
        if self.opened {
            self.failures = 0;
        }
        self.failures += 1;
        if policy
            .max_attempts_limit()
            .is_some_and(|max| self.failures > max)
        {
            log::debug!(
                "{}: giving up after {} attempts",
                self.url(),
                self.failures - 1
            );
            return None;
        }
        // The jitter: `rand`, which also makes the frames' masks.
        let unit: f64 = rand::random();
        Some(policy.delay(self.failures - 1, unit))
    }

    /// Whether nobody takes events any more (see `Outlet::receiver_gone`): then there is
    /// no reconnecting.
    fn consumer_gone(&mut self) -> bool {
        let gone = self.outlet.receiver_gone();
        if gone {
            log::debug!(
                "{}: the event receiver is gone: no reconnecting",
                self.url()
            );
        }
        gone
    }

    /// Waits out the reconnect delay; `false` if `close` or the last handle's drop ended it.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn backoff(&mut self, delay: Duration) -> bool {
        if self.stopped {
            return false; // `close` or the drop came while the last events went over
        }
        log::info!(
            "{}: reconnecting in {delay:?} (attempt {})",
            self.url(),
            self.failures
        );
        let deadline = after(Instant::now(), Some(delay));
        loop {
            let next = recv_until(&self.commands, deadline);
            match next {
                Err(RecvTimeoutError::Timeout) => return !self.stopped,
                Err(RecvTimeoutError::Disconnected) => return false,
                Ok(Command::Close(_)) => return false,
                Ok(Command::Drop) => {
                    self.dropped();
                    return false;
                }
                // The last event receiver was dropped (or the consumer made room).
                Ok(Command::Room) => {
                    if self.consumer_gone() {
                        return false;
                    }
                }
                // A lookup of the attempt that ended answers nobody (the next attempt
                // starts another).
                Ok(Command::Resolved(id, _)) => self.lookup_answered(id),
                // Sends and pings are refused while CLOSED (checked under the outbox lock).
                Ok(Command::Flush | Command::Ping) => {}
            }
        }
    }

    /// Resets everything that belongs to one connection, and goes CONNECTING again.
    fn new_attempt(&mut self) {
        self.target = self.shared.target.clone();
        self.redirects = 0;
        self.opened = false;
        self.readable = false;
        self.buffered = false;
        self.burst_nth = 0;
        self.write_blocked = false;
        self.write_failed = false;
        self.looking_for_pong = false;
        self.ping_unsent = None;
        // Pings asked for on the last connection, not taken before it ended: not this
        // one's (and `ping` would find the queue full, or never wake this thread).
        let _ = self.shared.take_pings(usize::MAX);
        self.pings_left = false;
        self.output_waiting = false;
        self.outbox_waiting = false;
        self.draining = false;
        self.full_since = None;
        self.warned_full = false;
        self.moderated_behind = None;
        self.connect_deadline = after(Instant::now(), Some(self.shared.config.connect_timeout));
        self.handshake_deadline = None;
        self.shared
            .transition(&[ReadyState::Closed], ReadyState::Connecting);
    }

    /// Reports the end of one connection (the state is CLOSED already: see
    /// `drain_after_end`): the held-back events, `Error` if any, then `Close`.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn finish(&mut self, end: End, last: bool) {
        let shared = Arc::clone(&self.shared);
        let (error, close) = match end {
            End::Clean(close) => (None, close),
            End::Failed(e) => {
                log::debug!("{}: failed: {e}", self.url());
                (Some(e), CloseEvent::abnormal())
            }
        };
        let buffered = shared.buffered();
        if buffered > 0 {
            log::warn!(
                "{}: connection ended with {buffered} bytes of application data not sent",
                self.url()
            );
            if !last {
                // A new connection starts from nothing; the old one's leftovers are gone.
                shared.sent(buffered);
            }
        }
        crate::json::fail_requests(&shared);
        shared.set_open(Err(error.clone().unwrap_or(Error::Aborted)));
        // (`wait_closed` without a callback thread is released once this thread has let
        // go of the consumer's channel: see `IoThread::run`.)
        log::debug!("{}: closed {close:?}", self.url());
        self.last_close = Some(close.clone());
        self.pending.extend(error.map(Event::Error));
        self.pending.push_back(Event::Close(close));
        self.deliver_all(last);
    }

    fn emit(&mut self, event: Event) {
        if let Event::Message(m) = &event {
            self.pending_bytes += m.len();
        }
        self.pending.push_back(event);
    }

    /// Whether the consumer holds reading back: events wait that it has no room for, and
    /// (in batches, where one batch may wait while the next is gathered) the next batch is
    /// full too.
    fn holds_reading(&self) -> bool {
        !self.pending.is_empty()
            && match self.outlet {
                // Pull style, in bursts too: its channel holds the bound.
                Outlet::Events(_) | Outlet::Batches { lane: Some(_), .. } => true,
                Outlet::Batches { .. } => self.pending_full(),
            }
    }

    /// Whether the socket is read whatever the consumer does (up to [`DRAIN_EVENTS`] and
    /// [`DRAIN_BYTES`] waiting): while closing, since the server's answer must be seen,
    /// and while a `request` waits, since its reply may come behind more messages than
    /// the consumer has room for, and the thread that waits may be the consumer.
    fn reads_past_consumer(&self) -> bool {
        self.draining || self.looking_for_pong || self.requests_waiting()
    }

    fn requests_waiting(&self) -> bool {
        self.shared.pending_requests.load(SeqCst) > 0
    }

    fn pending_full(&self) -> bool {
        if self.reads_past_consumer() {
            return self.pending.len() >= DRAIN_EVENTS || self.pending_bytes >= DRAIN_BYTES;
        }
        self.outlet
            .burst_full(self.pending.len(), self.pending_bytes)
    }

    /// After some of `pending` went over: its payload bytes again.
    fn recount_pending(&mut self) {
        self.pending_bytes = self
            .pending
            .iter()
            .map(|e| match e {
                Event::Message(m) => m.len(),
                _ => 0,
            })
            .sum();
    }

    /// The outlet is full. A consumer that keeps up empties it in microseconds, but
    /// blocking for room would wake this thread at the first batch taken (callback style),
    /// or nap at least [`NAP_MIN`] (pull style): on a shared core the wake-ups preempt the
    /// consumer, and a nap leaves it idle. So first give the CPU away until the outlet is
    /// half empty or a command arrives, for at most [`SPIN`]. Returns `false` if that time
    /// ran out: then the caller blocks (or naps), and stops trying this until the consumer
    /// catches up again.
    fn await_drain(&mut self) -> bool {
        let until = Instant::now() + SPIN;
        let mut yields = 0;
        while self.outlet.crowded() && self.commands.is_empty() {
            // Both bounds: a yield that returns at once costs about a microsecond, but one
            // that ran the consumer (or anyone else) for a long while cost this thread
            // nothing, and should not count as the consumer falling behind.
            if yields >= SPIN_YIELDS && Instant::now() >= until {
                return false;
            }
            yields += 1;
            std::thread::yield_now();
        }
        true
    }

    /// Hands pending events over, in order, as many as fit.
    fn deliver_pending(&mut self) {
        if !self.pending.is_empty() && self.outlet.is_empty() {
            self.consumer_keeps_up = true;
        }
        let waiting = self.pending.len();
        match self.outlet.push(&mut self.pending) {
            // (Walking all of `pending` to count its bytes again cost a turn up to 0.3 ms
            // with 65,536 events waiting past the consumer's bound.)
            Ok(_) if self.pending.is_empty() => self.pending_bytes = 0,
            Ok(delivered) => self.pending_bytes = self.pending_bytes.saturating_sub(delivered),
            Err(gone) => {
                self.discard(gone);
                self.recount_pending();
            }
        }
        self.handed_over |= self.pending.len() < waiting;
        self.watch_full();
    }

    /// Warns once per connection when the consumer has held reading back for longer than
    /// the ping interval (10 s without one): the server's keepalive may give up soon.
    /// Reading is held back while events wait that the outlet has no room for (this
    /// thread then does not watch the socket), unless it reads past the consumer.
    fn watch_full(&mut self) {
        if !self.holds_reading() || self.reads_past_consumer() {
            self.full_since = None;
            return;
        }
        let now = Instant::now();
        let since = *self.full_since.get_or_insert(now);
        if !self.warned_full && now.saturating_duration_since(since) > self.full_patience() {
            self.warned_full = true;
            log::warn!(
                "{}: the event queue has been full for {:?}: the socket is not read, so the \
                 server's pings go unanswered meanwhile (see Builder::incoming_queue_bytes)",
                self.url(),
                now - since
            );
        }
    }

    fn full_patience(&self) -> Duration {
        self.shared.config.ping_interval.unwrap_or(FULL_PATIENCE)
    }

    /// When [`watch_full`](Self::watch_full) is due to warn, if it is to: a timer of its
    /// own, so that it comes without a ping interval too.
    fn full_warning_due(&self) -> Option<Instant> {
        let since = self.full_since.filter(|_| !self.warned_full)?;
        // Just past the patience: the check is `>`.
        after(since, Some(self.full_patience() + Duration::from_millis(1)))
    }

    fn discard(&mut self, events: Vec<Event>) {
        if !self.receiver_gone {
            self.receiver_gone = true;
            log::warn!(
                "{}: the event receiver was dropped: closing with 1001 (going away)",
                self.url()
            );
        }
        log::trace!("discarded {events:?}");
    }

    /// Delivers the connection's last events (all that are pending). Before a reconnect it
    /// waits for room (the next connection's events must come after them), until `close`
    /// or the last handle's drop makes this the last connection: then, as for the last,
    /// they are handed over without waiting. Leaves `pending` empty.
    fn deliver_all(&mut self, last: bool) {
        self.pending_bytes = 0; // no reading follows; the next attempt starts from nothing
        while !self.pending.is_empty() {
            if last || self.stopped {
                if let Err(gone) = self.outlet.push_last(&mut self.pending) {
                    self.discard(gone);
                }
                return;
            }
            match self
                .outlet
                .push_wait(&mut self.pending, &self.commands, self.drop_deadline)
            {
                Waited::Sent => {}
                Waited::Gone(events) => return self.discard(events),
                Waited::TimedOut => {}
                Waited::Command(Some(Command::Drop)) => self.dropped(),
                Waited::Command(Some(Command::Close(_))) => self.stopped = true,
                Waited::Command(_) => {}
            }
        }
    }

    /// Pull style, when the caller has taken nothing for [`MODERATE_AFTER`] while events
    /// wait for it (it computes, and takes events between chunks): instead of waking for
    /// each message as it arrives, this thread stops watching the socket until the
    /// caller's next take, a command, or [`MODERATE`] from now, whichever is first, and
    /// then reads all that came in one go. Returns that deadline. Not while anything of
    /// ours waits to be written (the socket's write readiness is not watched either), nor
    /// while the socket is read past the consumer (closing, a request or a pong looked
    /// for: each of its turns would end in a wait without the socket, every millisecond).
    ///
    /// In batches (callback style, `connect_batches`), the same while a batch waits
    /// untaken with events behind it: a callback thread that computing threads keep off
    /// the cores, or a caller that takes batches between chunks of work.
    fn moderation(&mut self, phase: &mut Phase) -> Option<Instant> {
        let Phase::Open(open) = phase else {
            return None;
        };
        let now = Instant::now();
        let quiet = !self.readable
            && !self.buffered
            && !self.reads_past_consumer()
            && !self.write_blocked
            && !self.outbox_waiting
            && !open.conn.has_output();
        if !quiet {
            return None;
        }
        let busy = match &mut self.outlet {
            Outlet::Events(pull) => pull
                .busy_since()
                .is_some_and(|since| now - since >= MODERATE_AFTER),
            // Pull style in bursts, as in its raw channel.
            Outlet::Batches { lane: Some(_), .. } => self
                .outlet
                .lane_busy_since()
                .is_some_and(|since| now - since >= MODERATE_AFTER),
            // A batch untaken with events behind it: the consumer did not take it while
            // this thread gave it the CPU (`wait`). Not while nothing new waits: a batch
            // left untaken (an `Open` nobody takes while sending, say) would make every
            // wait stop and start watching the socket again, for nothing. Nor again once
            // a wait without the socket brought nothing (the events behind the batch are
            // as many as then), as pull style's `busy_since`: a caller that takes nothing
            // from a silent server had this thread wake every `MODERATE`, 800-900 times a
            // second, until 2026-12-07.
            Outlet::Batches { .. } => {
                !self.pending.is_empty()
                    && self.outlet.batch_untaken()
                    && self.moderated_behind != Some(self.pending.len())
            }
        };
        if !busy {
            return None;
        }
        let tcp = open.transport.tcp()?;
        let asked = match &mut self.outlet {
            Outlet::Events(pull) => pull.wake_on_take(),
            Outlet::Batches { .. } => self.outlet.wake_on_next_take(),
        };
        if !asked {
            return None;
        }
        if self.poll.registry().deregister(tcp).is_err() {
            self.outlet.stop_waking_on_take();
            return None;
        }
        match &mut self.outlet {
            Outlet::Events(pull) => pull.moderating(),
            Outlet::Batches { lane: Some(_), .. } => self.outlet.lane_moderating(),
            Outlet::Batches { .. } => self.moderated_behind = Some(self.pending.len()),
        }
        Some(now + MODERATE)
    }

    /// Watches the socket again after [`Io::moderation`], and reads what came meanwhile.
    fn end_moderation(&mut self, phase: &mut Phase) -> Result<(), End> {
        self.outlet.stop_waking_on_take();
        let Phase::Open(open) = phase else {
            return Ok(());
        };
        if let Some(tcp) = open.transport.tcp() {
            self.poll
                .registry()
                .register(tcp, SOCKET, Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| End::from(Error::io(e)))?;
        }
        self.readable = true;
        Ok(())
    }

    /// Whether another turn can make progress at once.
    fn has_work(&self, phase: &Phase) -> bool {
        let Phase::Open(open) = phase else {
            return false;
        };
        ((self.readable || self.buffered) && !self.pending_full() && open.conn.wants_read())
            || ((open.conn.has_output() || self.outbox_waiting)
                && !self.write_blocked
                && !self.write_failed)
    }

    fn next_deadline(&self, phase: &Phase) -> Option<Instant> {
        match phase {
            Phase::Resolving { .. } | Phase::Connecting { .. } => self.connect_deadline,
            Phase::Handshaking(_) | Phase::Tunneling { .. } => self.handshake_deadline,
            Phase::Open(open) => {
                let judging = self.judging();
                [
                    open.conn.poll_timeout(judging),
                    self.drop_deadline,
                    self.full_warning_due(),
                    // Not judged while the consumer holds reading back, but looked for
                    // once due (see `looking_for_pong`).
                    open.conn.pong_deadline().filter(|_| !self.looking_for_pong),
                ]
                .into_iter()
                .flatten()
                .min()
            }
            Phase::Done => None,
        }
    }

    /// Whether the server may be blamed for a late pong or Close now. While the consumer
    /// holds the I/O thread back, the socket is not read, so the answer may be there,
    /// unread: those timers wait, unless the last handle is gone, or a pong is overdue and
    /// the socket has been read to its end past the consumer's bound.
    fn judging(&self) -> bool {
        (!self.holds_reading() || self.drop_deadline.is_some() || self.looking_for_pong)
            && !self.readable
    }
}

#[cfg(test)]
mod tests {
    use super::{next_nap, NAP_MAX, NAP_MIN};
    use crate::delivery::Level;
    use crate::{Error, Event, ReadyState, SendError, WebSocket};
    use std::sync::Mutex;
    use std::time::Duration;

    /// The URL whose I/O thread panics at its next turn (a stand-in for a bug).
    static PANIC_FOR: Mutex<Option<String>> = Mutex::new(None);

    pub(super) fn maybe_panic(url: &str) {
        let mut target = PANIC_FOR.lock().unwrap_or_else(|e| e.into_inner());
        if target.as_deref() == Some(url) {
            *target = None;
            drop(target);
            panic!("a bug, for the test");
        }
    }

    #[test]
    fn a_panic_on_the_io_thread_is_an_error_then_close_1006_and_releases_everyone() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut ws = tungstenite::accept(listener.accept().unwrap().0).unwrap();
            while ws.read().is_ok() {}
        });
        let url = format!("ws://{addr}/panic");
        let (ws, events) = WebSocket::connect_pull(&url).unwrap();
        let wait = Duration::from_secs(10);
        assert!(matches!(events.recv_timeout(wait), Ok(Event::Open)));
        *PANIC_FOR.lock().unwrap() = Some(ws.url().to_owned());
        ws.send("wake up").unwrap();
        assert!(matches!(
            events.recv_timeout(wait),
            Ok(Event::Error(Error::Internal(_)))
        ));
        assert!(
            matches!(events.recv_timeout(wait), Ok(Event::Close(c)) if c.code == 1006 && !c.was_clean)
        );
        assert_eq!(ws.ready_state(), ReadyState::Closed);
        assert!(ws.wait_closed_timeout(wait).is_some());
        assert!(matches!(ws.send("after"), Err(SendError::Closed(_))));
        drop(ws);
        server.join().unwrap();
    }

    #[test]
    fn looks_after_writes_stop_while_they_find_nothing_and_resume_when_one_does() {
        let mut spin = super::Spin::default();
        let mut looks = 0;
        for _ in 0..10_000 {
            if spin.should() {
                looks += 1;
                spin.paid(false);
            }
        }
        assert!(
            looks < 100,
            "{looks} looks in 10,000 writes that found nothing"
        );
        // One that finds an answer, and looking is back.
        while !spin.should() {}
        spin.paid(true);
        assert!((0..100).all(|_| {
            let look = spin.should();
            spin.paid(true);
            look
        }));
    }

    #[test]
    fn naps_halve_when_the_caller_caught_up_and_double_while_it_lags() {
        let ms = Duration::from_millis;
        assert_eq!(next_nap(ms(2), Level::Low), ms(1));
        assert_eq!(next_nap(ms(2), Level::Middle), ms(2));
        assert_eq!(next_nap(ms(2), Level::High), ms(4));
        assert_eq!(next_nap(NAP_MIN, Level::Low), NAP_MIN);
        assert_eq!(next_nap(NAP_MAX, Level::High), NAP_MAX);
        // A stalled caller: from the shortest nap to the longest in six steps.
        let stalled = (0..6).fold(NAP_MIN, |nap, _| next_nap(nap, Level::High));
        assert_eq!(stalled, NAP_MAX);
    }
}
