//! The I/O thread: one per connection, the only owner of the socket.
//!
//! It is one state machine, [`Phase`]: `Connecting` (non-blocking TCP connect to each
//! resolved address in turn) → `Handshaking` (TLS and the HTTP upgrade, resumed on each
//! readiness event) → `Open` (which covers CLOSING too: tungstenite tracks the closing
//! handshake) → the end, reported once as [`End`].
//!
//! Each turn of the loop runs the queued commands, makes what progress the phase allows
//! without blocking, checks the timers, then sleeps in exactly one place:
//! - in `mio::Poll`, on socket readiness and the waker that `send` pokes (only when this
//!   thread is asleep), with a timeout only when a timer is set; or
//! - when the event channel is full, in a crossbeam `Select` on "room in the event channel"
//!   and "a command arrived". The socket is not read then, so TCP pushes back on the server.
//!
//! It never runs user code.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{fence, Ordering::SeqCst};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::handshake::client::{ClientHandshake, Request, Response};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::http::{header, HeaderName, HeaderValue};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::config::Config;
use crate::delivery::{Level, Outlet, Waited};
use crate::error::{Error, Timeout, UrlError};
use crate::framing::Outbox;
use crate::message::{Binary, CloseEvent, Event, Message, Text};
use crate::proxy::Proxy;
use crate::state::ReadyState;
use crate::transport::{tls_error, Transport};
use crate::url::Target;
use crate::websocket::Shared;

pub(crate) const SOCKET: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);

/// What handles ask of the I/O thread, in order.
#[derive(Debug)]
pub(crate) enum Command {
    /// The outbox went from empty to not: write it (one nudge per batch of messages).
    Flush,
    Ping(Bytes),
    /// Start the closing handshake (or abort the opening one).
    Close(Option<(u16, String)>),
    /// The last `WebSocket` handle is gone: close with 1001 and finish within the close
    /// timeout, whatever the event consumer does.
    Drop,
}

type Ws = tungstenite::WebSocket<Transport>;
type Mid = MidHandshake<ClientHandshake<Transport>>;

enum Phase {
    Connecting {
        addrs: VecDeque<SocketAddr>,
        tcp: Option<TcpStream>,
        last_error: Option<io::Error>,
    },
    /// Through an HTTP proxy: CONNECT written from `out`, the answer read into `answer`.
    Tunneling {
        tcp: TcpStream,
        out: Vec<u8>,
        written: usize,
        answer: Vec<u8>,
    },
    Handshaking(Mid),
    Open(Ws),
    Done,
}

/// How the connection ended.
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
    /// The HTTP proxy this attempt tunnels through.
    proxy: Option<Proxy>,
    request: Option<Request>,
    /// `close` was called or the last handle dropped: no more reconnecting.
    stopped: bool,
    /// This attempt reached OPEN.
    opened: bool,
    /// Consecutive failed attempts, for the reconnect backoff.
    failures: u32,
    last_close: Option<CloseEvent>,
    rng: u64,
    /// Events read in this burst, not yet handed over. They go together at the end of the
    /// burst, so a consumer that drains faster than the socket fills is woken once per
    /// burst, not once per message. While the outlet is full they wait here, and once
    /// they make a whole burst ([`Outlet::burst_full`]), the socket is not read.
    pending: VecDeque<Event>,
    /// Payload bytes in `pending`.
    pending_bytes: usize,
    /// Messages read since the socket was last found drained (see [`own_small`]).
    burst_nth: usize,
    /// How long to nap while pull style's channel is full (see [`Level`]).
    nap: Duration,
    /// The consumer emptied the outlet lately: when it is full, wait for it to drain
    /// (see [`Io::await_drain`]) rather than block or nap.
    consumer_keeps_up: bool,
    receiver_gone: bool,
    /// Set by `Command::Drop`: the time by which everything must be over.
    drop_deadline: Option<Instant>,
    /// Edge-triggered readiness, remembered until a read returns `WouldBlock`.
    readable: bool,
    write_blocked: bool,
    /// tungstenite holds a pong, close or ping frame to flush.
    needs_flush: bool,
    connect_deadline: Instant,
    handshake_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    /// When this thread last wrote to the socket (see `SPIN`).
    wrote_at: Instant,
    /// We queued our Close frame.
    close_sent: bool,
    /// Our Close frame is queued but not yet handed to the OS.
    close_queued: bool,
    /// Our Close frame, waiting behind the messages sent before it.
    deferred_close: Option<Option<CloseFrame>>,
    /// We failed the connection with a Close code: let it reach the server before the
    /// socket is dropped (see [`IoThread::linger`]).
    linger: bool,
    /// The server's Close frame, once it arrived.
    peer_close: Option<CloseEvent>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    ping_seq: u64,
}

impl IoThread {
    pub fn new(
        shared: Arc<Shared>,
        poll: Poll,
        commands: Receiver<Command>,
        outlet: Outlet,
    ) -> Self {
        let connect_deadline = Instant::now() + shared.config.connect_timeout;
        let target = shared.target.clone();
        // Seed for the backoff jitter; it only needs to differ between processes and
        // connections, not to be unpredictable.
        let rng = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            ^ (Arc::as_ptr(&shared) as usize as u64);
        IoThread {
            phase: Phase::Done,
            io: Io {
                shared,
                poll,
                commands,
                outlet,
                target,
                redirects: 0,
                proxy: None,
                request: None,
                stopped: false,
                opened: false,
                failures: 0,
                last_close: None,
                rng: rng | 1,
                pending: VecDeque::new(),
                pending_bytes: 0,
                burst_nth: 0,
                nap: NAP_MIN,
                consumer_keeps_up: true,
                receiver_gone: false,
                drop_deadline: None,
                readable: false,
                write_blocked: false,
                needs_flush: false,
                connect_deadline,
                handshake_deadline: None,
                close_deadline: None,
                wrote_at: Instant::now() - SPIN,
                close_sent: false,
                close_queued: false,
                deferred_close: None,
                linger: false,
                peer_close: None,
                next_ping: None,
                pong_deadline: None,
                ping_seq: 0,
            },
        }
    }

    /// Connects, serves until the connection ends, and reconnects while the policy says so.
    pub fn run(mut self: Box<Self>) {
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
        if !self.io.shared.callback_mode {
            let last = self
                .io
                .last_close
                .take()
                .unwrap_or_else(CloseEvent::abnormal);
            self.io.shared.set_closed(last);
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
        while let Ok(command) = self.io.commands.try_recv() {
            self.command(command)?;
        }
        match &mut self.phase {
            Phase::Connecting { .. } => self.progress_connect()?,
            Phase::Tunneling { .. } => self.progress_tunnel()?,
            Phase::Handshaking(_) => self.progress_handshake()?,
            Phase::Open(ws) => {
                self.io.read(ws)?;
                self.io.timers(ws)?;
                self.io.flush(ws)?;
            }
            Phase::Done => {}
        }
        let now = Instant::now();
        match self.phase {
            Phase::Connecting { .. } if now >= self.io.connect_deadline => {
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
                    Phase::Open(_) => {
                        io.start_close(frame);
                        Ok(())
                    }
                    Phase::Done => Ok(()),
                    Phase::Connecting { .. } | Phase::Tunneling { .. } | Phase::Handshaking(_) => {
                        Err(Error::Aborted.into())
                    }
                }
            }
            Command::Flush => {
                io.needs_flush = true;
                Ok(())
            }
            Command::Ping(payload) => match &mut self.phase {
                Phase::Open(ws) => io.write_control(ws, tungstenite::Message::Ping(payload)),
                _ => Ok(()),
            },
        }
    }

    /// DNS, on this thread (the resolver blocks; the connect timeout bounds the rest).
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn resolve(&mut self) -> Result<(), End> {
        self.io.request = Some(build_request(&self.io.target, &self.io.shared.config)?);
        self.io.proxy = crate::proxy::for_target(&self.io.shared.config.proxy, &self.io.target)?;
        let (host, port) = match &self.io.proxy {
            Some(proxy) => {
                log::debug!(
                    "{}: through proxy {}:{}",
                    self.io.url(),
                    proxy.host,
                    proxy.port
                );
                (proxy.host.clone(), proxy.port)
            }
            None => (self.io.target.host.clone(), self.io.target.port),
        };
        let addrs: VecDeque<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| Error::Dns {
                host: host.clone(),
                source: Arc::new(e),
            })?
            .collect();
        if addrs.is_empty() {
            let e = io::Error::new(io::ErrorKind::NotFound, "no addresses");
            return Err(Error::Dns {
                host,
                source: Arc::new(e),
            }
            .into());
        }
        log::debug!("{}: resolved to {addrs:?}", self.io.url());
        self.phase = Phase::Connecting {
            addrs,
            tcp: None,
            last_error: None,
        };
        self.connect_next()
    }

    /// Starts a non-blocking connect to the next address.
    fn connect_next(&mut self) -> Result<(), End> {
        let Phase::Connecting {
            addrs,
            tcp,
            last_error,
        } = &mut self.phase
        else {
            return Ok(());
        };
        if let Some(mut old) = tcp.take() {
            let _ = self.io.poll.registry().deregister(&mut old);
        }
        while let Some(addr) = addrs.pop_front() {
            log::debug!("connecting to {addr}");
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    self.io
                        .poll
                        .registry()
                        .register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)
                        .map_err(Error::io)?;
                    *tcp = Some(stream);
                    return Ok(());
                }
                Err(e) => *last_error = Some(e),
            }
        }
        let e = last_error
            .take()
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to"));
        Err(Error::Connect(Arc::new(e)).into())
    }

    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn progress_connect(&mut self) -> Result<(), End> {
        let Phase::Connecting {
            tcp: Some(stream),
            last_error,
            ..
        } = &mut self.phase
        else {
            return Ok(());
        };
        // mio's recipe: an error, or a peer address once connected.
        let failure = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            log::debug!("connect failed: {e}");
            *last_error = Some(e);
            return self.connect_next();
        }
        let Phase::Connecting { tcp: Some(tcp), .. } =
            std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return Ok(());
        };
        let io = &mut self.io;
        log::debug!("{}: TCP connected", io.url());
        tcp.set_nodelay(io.shared.config.nodelay)
            .map_err(Error::io)?;
        io.handshake_deadline = Some(Instant::now() + io.shared.config.handshake_timeout);
        match &io.proxy {
            Some(proxy) => {
                self.phase = Phase::Tunneling {
                    out: proxy.connect_request(&io.target),
                    tcp,
                    written: 0,
                    answer: Vec::new(),
                };
                self.progress_tunnel()
            }
            None => self.start_handshake(tcp),
        }
    }

    /// Writes the CONNECT request and reads the proxy's answer, without blocking.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn progress_tunnel(&mut self) -> Result<(), End> {
        let Phase::Tunneling {
            tcp,
            out,
            written,
            answer,
        } = &mut self.phase
        else {
            return Ok(());
        };
        let broken = |e: io::Error| Error::Proxy(format!("the tunnel broke: {e}"));
        while *written < out.len() {
            match tcp.write(&out[*written..]) {
                Ok(0) => return Err(broken(io::ErrorKind::WriteZero.into()).into()),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(broken(e).into()),
            }
        }
        loop {
            let mut chunk = [0u8; 512];
            match tcp.read(&mut chunk) {
                Ok(0) => return Err(broken(io::ErrorKind::UnexpectedEof.into()).into()),
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    if crate::proxy::parse_connect_response(answer)?.is_some() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(broken(e).into()),
            }
        }
        let Phase::Tunneling { tcp, .. } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        log::debug!("{}: proxy tunnel open", self.io.url());
        self.start_handshake(tcp)
    }

    /// TLS (for `wss://`) and the WebSocket upgrade, over a connected socket or tunnel.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn start_handshake(&mut self, tcp: TcpStream) -> Result<(), End> {
        let io = &mut self.io;
        let target = &io.target;
        let tls = io.shared.config.tls.as_ref();
        let transport = Transport::new(tcp, target.tls, &target.host, tls)?;
        let Some(request) = io.request.take() else {
            return Err(Error::Handshake("request already used".into()).into());
        };
        let result =
            tungstenite::client::client_with_config(request, transport, Some(io.ws_config()));
        self.handshake_result(result)
    }

    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn progress_handshake(&mut self) -> Result<(), End> {
        let Phase::Handshaking(mid) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        self.handshake_result(mid.handshake())
    }

    fn handshake_result(
        &mut self,
        result: Result<(Ws, Response), HandshakeError<ClientHandshake<Transport>>>,
    ) -> Result<(), End> {
        match result {
            Ok((mut ws, response)) => {
                self.io.opened(&response)?;
                // Read at once only if something may be waiting; an idle connection then
                // never touches its read buffer.
                self.io.readable = ws.get_mut().may_have_data();
                let config = &self.io.shared.config;
                let fast_max = config.max_message_size.min(config.max_frame_size);
                ws.get_mut().start_read_ahead(Some(fast_max));
                self.phase = Phase::Open(ws);
                Ok(())
            }
            Err(HandshakeError::Interrupted(mid)) => {
                self.phase = Phase::Handshaking(mid);
                Ok(())
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(response)))
                if redirect_location(&response).is_some() =>
            {
                let location = redirect_location(&response).unwrap_or_default();
                self.redirect(&location)
            }
            Err(HandshakeError::Failure(e)) => {
                Err(map_error(e, true, &self.io.shared.config).into())
            }
        }
    }

    /// Follows a redirect of the opening handshake: a new attempt at the new target.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn redirect(&mut self, location: &str) -> Result<(), End> {
        let io = &mut self.io;
        let config = &io.shared.config;
        if io.redirects >= config.max_redirects {
            return Err(Error::TooManyRedirects {
                limit: config.max_redirects,
                location: location.to_owned(),
            }
            .into());
        }
        let bad = |e: &dyn std::fmt::Display| {
            Error::Handshake(format!("bad redirect location {location:?}: {e}"))
        };
        let joined = io.target.url.join(location).map_err(|e| bad(&e))?;
        let mut next = crate::url::parse(joined.as_str()).map_err(|e| bad(&e))?;
        if io.target.tls && !next.tls {
            let refused = format!("refused redirect from wss:// to {}", next.url);
            return Err(Error::Handshake(refused).into());
        }
        if (&next.host, next.port) == (&io.target.host, io.target.port) {
            next.credentials = next.credentials.or_else(|| io.target.credentials.clone());
        } else {
            // URL credentials are for the host they were written for.
            next.credentials = None;
        }
        io.redirects += 1;
        log::info!(
            "{}: redirected ({}/{}) to {}",
            io.url(),
            io.redirects,
            config.max_redirects,
            next.url
        );
        io.connect_deadline = Instant::now() + config.connect_timeout;
        io.target = next;
        self.phase = Phase::Done;
        self.resolve()
    }

    /// After failing the connection with a Close code: flush that Close, end our side of
    /// the stream, and read (discarding) until the server ends its side, for at most a
    /// second. Dropping a socket with unread data makes the kernel send RST, and the
    /// server would lose the Close (and learn nothing of why).
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn linger(&mut self) {
        let Phase::Open(ws) = &mut self.phase else {
            return;
        };
        if !std::mem::take(&mut self.io.linger) {
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
        let mut flushed = false;
        let mut buf = vec![0u8; 4096]; // not on the stack: this thread's stack stays small
        loop {
            if !flushed {
                match ws.flush() {
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => {
                        flushed = true;
                        let _ = ws.get_mut().tcp().shutdown(std::net::Shutdown::Write);
                    }
                }
            }
            if flushed {
                match ws.get_mut().tcp().read(&mut buf) {
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

    /// Sleeps until there is something to do.
    fn wait(&mut self, events: &mut Events) -> Result<(), End> {
        let busy = self.io.has_work(&self.phase);
        let deadline = self.io.next_deadline(&self.phase);
        if !busy && !self.io.pending.is_empty() {
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
        let shared = &self.io.shared;
        shared.io_sleeping.store(true, SeqCst);
        fence(SeqCst);
        let timeout = if busy || !self.io.commands.is_empty() {
            Some(Duration::ZERO)
        } else {
            deadline.map(|d| d.saturating_duration_since(Instant::now()))
        };
        // Just after a write an answer is likely within microseconds: look a few times,
        // yielding the CPU in between, before sleeping for real.
        let spin_until = self.io.wrote_at + SPIN;
        let mut polled = if timeout != Some(Duration::ZERO) && Instant::now() < spin_until {
            let mut polled = self.io.poll.poll(events, Some(Duration::ZERO));
            while matches!(polled, Ok(())) && events.is_empty() && Instant::now() < spin_until {
                std::thread::yield_now();
                polled = self.io.poll.poll(events, Some(Duration::ZERO));
            }
            polled
        } else {
            self.io.poll.poll(events, timeout)
        };
        if matches!(polled, Ok(())) && events.is_empty() && timeout != Some(Duration::ZERO) {
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            polled = self.io.poll.poll(events, timeout);
        }
        shared.io_sleeping.store(false, SeqCst);
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
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    self.io.write_blocked = false;
                    if self.io.close_queued {
                        // Room in a full send buffer: the server took some of what waits
                        // before our Close. It is alive; give it time.
                        self.io.rearm_close_timer();
                    }
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
        let retry_writes = io.write_blocked && io.needs_flush;
        let deadline = match (deadline, retry_writes) {
            (d, true) => Some(d.map_or(Instant::now() + RETRY, |d| d.min(Instant::now() + RETRY))),
            (d, false) => d,
        };
        let blocked = Instant::now();
        if let Outlet::Events(pull) = &mut io.outlet {
            if !pull.held() {
                io.deliver_pending(); // the caller took some since the last look
                return Ok(());
            }
            // Nothing wakes this thread when the caller takes a message: look again after
            // a nap, or at once on a command.
            let until = blocked + io.nap;
            return match io
                .commands
                .recv_deadline(deadline.map_or(until, |d| d.min(until)))
            {
                Ok(command) => self.command(command),
                Err(_) => {
                    if Instant::now() >= until {
                        io.nap = next_nap(io.nap, pull.level());
                    }
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
/// tungstenite splits each payload off its read buffer, so a payload keeps that whole
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

/// How long the I/O thread keeps looking for an answer after a write before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

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

/// How often output stuck behind a full socket is retried while the consumer is also full.
const RETRY: Duration = Duration::from_millis(5);

/// The `Location` of a redirect response to the opening handshake.
fn redirect_location(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> Option<String> {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    Some(location.to_owned())
}

impl Io {
    fn url(&self) -> &str {
        self.target.url.as_str()
    }

    fn dropped(&mut self) {
        let timeout = self.shared.config.close_timeout;
        self.drop_deadline.get_or_insert(Instant::now() + timeout);
        self.stopped = true;
    }

    /// After the end: takes the commands still queued (a close or drop ends reconnecting)
    /// and empties the outbox, whose messages will not go out on this connection.
    fn drain_after_end(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Close(_) => self.stopped = true,
                Command::Drop => self.dropped(),
                Command::Flush | Command::Ping(_) => {}
            }
        }
        *self
            .shared
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Outbox::default();
    }

    /// How long to wait before reconnecting, or `None` when this was the last connection.
    fn retry_delay(&mut self, end: &End) -> Option<Duration> {
        let policy = self.shared.config.reconnect.as_ref()?;
        if self.stopped || (matches!(end, End::Clean(_)) && policy.stop_on_clean_close) {
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
        // xorshift64, for the jitter only.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        Some(policy.delay(self.failures - 1, unit))
    }

    /// Waits out the reconnect delay; `false` if `close` or the last handle's drop ended it.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn backoff(&mut self, delay: Duration) -> bool {
        log::info!(
            "{}: reconnecting in {delay:?} (attempt {})",
            self.url(),
            self.failures
        );
        let deadline = Instant::now() + delay;
        loop {
            match self.commands.recv_deadline(deadline) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return !self.stopped,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return false,
                Ok(Command::Close(_)) => return false,
                Ok(Command::Drop) => {
                    self.dropped();
                    return false;
                }
                // The gate refuses sends and pings while CLOSED.
                Ok(Command::Flush | Command::Ping(_)) => {}
            }
        }
    }

    /// Resets everything that belongs to one connection, and goes CONNECTING again.
    fn new_attempt(&mut self) {
        self.target = self.shared.target.clone();
        self.redirects = 0;
        self.opened = false;
        self.readable = false;
        self.burst_nth = 0;
        self.write_blocked = false;
        self.needs_flush = false;
        self.connect_deadline = Instant::now() + self.shared.config.connect_timeout;
        self.handshake_deadline = None;
        self.close_deadline = None;
        self.close_sent = false;
        self.close_queued = false;
        self.deferred_close = None;
        self.linger = false;
        self.peer_close = None;
        self.next_ping = None;
        self.pong_deadline = None;
        self.shared
            .transition(&[ReadyState::Closed], ReadyState::Connecting);
    }

    /// Reports the end of one connection: state CLOSED, the held-back event, `Error` if
    /// any, then `Close`.
    #[inline(never)] // cold: keeps the steady-state loop's stack frame small
    fn finish(&mut self, end: End, last: bool) {
        let shared = Arc::clone(&self.shared);
        shared.transition(
            &[
                ReadyState::Connecting,
                ReadyState::Open,
                ReadyState::Closing,
            ],
            ReadyState::Closed,
        );
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
        if last && !shared.callback_mode {
            shared.set_closed(close.clone());
        }
        log::debug!("{}: closed {close:?}", self.url());
        self.last_close = Some(close.clone());
        self.pending.extend(error.map(Event::Error));
        self.pending.push_back(Event::Close(close));
        self.deliver_all();
    }

    fn ws_config(&self) -> WebSocketConfig {
        let c = &self.shared.config;
        WebSocketConfig::default()
            .read_buffer_size(c.read_buffer_size)
            .max_message_size(Some(c.max_message_size))
            .max_frame_size(Some(c.max_frame_size))
    }

    /// The handshake succeeded: check what the server chose, go OPEN, report `Open`.
    fn opened(&mut self, response: &Response) -> Result<(), End> {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let extensions = header("Sec-WebSocket-Extensions");
        if !extensions.trim().is_empty() {
            // RFC 6455 §4.1: an extension that was not offered fails the connection.
            return Err(Error::Handshake(format!(
                "the server chose extensions {extensions:?}, none were offered"
            ))
            .into());
        }
        let _ = self.shared.protocol.set(header("Sec-WebSocket-Protocol"));
        let _ = self.shared.extensions.set(extensions);
        if !self
            .shared
            .transition(&[ReadyState::Connecting], ReadyState::Open)
        {
            // `close` was called while the handshake finished.
            return Err(Error::Aborted.into());
        }
        self.shared.set_open(Ok(()));
        self.opened = true;
        self.emit(Event::Open);
        self.deliver_pending();
        self.next_ping = self.shared.config.ping_interval.map(|i| Instant::now() + i);
        Ok(())
    }

    fn read(&mut self, ws: &mut Ws) -> Result<(), End> {
        // Bounded, so queued sends and timers get a turn during a flood.
        let mut budget: usize = 256;
        while self.readable && budget > 0 {
            if self.pending_full() {
                self.deliver_pending();
                if self.pending_full() {
                    break; // the consumer is behind: let TCP push back on the server
                }
            }
            budget -= 1;
            // Simple frames first, straight from the transport, while tungstenite holds
            // nothing; tungstenite's turn when the transport says so.
            match ws.get_mut().read_fast() {
                Ok(true) => {
                    self.take_fast(ws, &mut budget);
                    continue;
                }
                Ok(false) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    self.burst_nth = 0;
                    continue;
                }
                Err(e) => return Err(self.fail(ws, tungstenite::Error::Io(e))),
            }
            match ws.read() {
                Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => {
                    self.message(m);
                }
                Ok(tungstenite::Message::Ping(p)) => {
                    log::trace!("ping {p:?}");
                    // tungstenite queued the pong; flush it this turn.
                    self.needs_flush = true;
                    if self.shared.config.ping_events {
                        self.emit(Event::Ping(Binary(p)));
                    }
                }
                Ok(tungstenite::Message::Pong(p)) => {
                    log::trace!("pong {p:?}");
                    self.pong_deadline = None;
                    if self.shared.config.ping_events {
                        self.emit(Event::Pong(Binary(p)));
                    }
                }
                Ok(tungstenite::Message::Close(frame)) => self.peer_closed(frame),
                Ok(tungstenite::Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The transport's fast path may have taken simple frames instead of
                    // tungstenite: they come right after what tungstenite returned.
                    if !self.take_fast(ws, &mut budget) {
                        self.readable = false;
                        self.burst_nth = 0;
                    }
                }
                Err(tungstenite::Error::ConnectionClosed) => {
                    // Both Close frames went by and the server ended the TCP stream.
                    return Err(End::Clean(self.peer_close.take().unwrap_or_else(|| {
                        CloseEvent {
                            code: 1005,
                            reason: String::new(),
                            was_clean: true,
                        }
                    })));
                }
                Err(e) => return Err(self.fail(ws, e)),
            }
        }
        self.deliver_pending();
        Ok(())
    }

    /// The messages the transport's fast path took, each counted against the read
    /// `budget`; returns whether it took them (rather than finding the socket drained).
    fn take_fast(&mut self, ws: &mut Ws, budget: &mut usize) -> bool {
        let first = self.pending.len();
        let (bytes, yielded) = ws.get_mut().take_fast(&mut self.pending);
        let taken = self.pending.len() - first;
        // What `message` does one by one, here once for the lot.
        let own = COPY_FIRST.saturating_sub(self.burst_nth).min(taken);
        for (i, event) in self.pending.range_mut(first..first + own).enumerate() {
            if let Event::Message(m) = event {
                own_small(m, self.burst_nth + i);
            }
        }
        self.burst_nth += taken;
        *budget = budget.saturating_sub(taken);
        self.pending_bytes += bytes;
        if self.shared.pending_requests.load(SeqCst) > 0 {
            let taken = self.pending.split_off(first);
            for event in taken {
                match event {
                    Event::Message(m) => self.json_or_emit(m),
                    other => self.emit(other),
                }
            }
            self.recount_pending();
        }
        yielded
    }

    /// A message, or the reply a `request_json` waits for.
    fn json_or_emit(&mut self, m: Message) {
        if let Some(m) = crate::json::route_reply(&self.shared, m) {
            self.emit(Event::Message(m));
        }
    }

    /// A text or binary message from tungstenite.
    fn message(&mut self, m: tungstenite::Message) {
        let mut m = match m {
            tungstenite::Message::Text(t) => Message::Text(Text(t)),
            tungstenite::Message::Binary(b) => Message::Binary(Binary(b)),
            _ => return,
        };
        own_small(&mut m, self.burst_nth);
        self.burst_nth += 1;
        self.json_or_emit(m);
    }

    fn peer_closed(&mut self, frame: Option<CloseFrame>) {
        let event = match frame {
            Some(f) => CloseEvent {
                code: u16::from(f.code),
                reason: f.reason.as_str().to_owned(),
                was_clean: true,
            },
            None => CloseEvent {
                code: 1005,
                reason: String::new(),
                was_clean: true,
            },
        };
        log::debug!(
            "{}: server sent Close {} {:?}",
            self.url(),
            event.code,
            event.reason
        );
        self.peer_close = Some(event);
        // tungstenite queued the echo (when the server closed first); flush it.
        self.needs_flush = true;
        self.shared
            .transition(&[ReadyState::Open], ReadyState::Closing);
        self.arm_close_timer();
    }

    fn rearm_close_timer(&mut self) {
        self.close_deadline = Some(Instant::now() + self.shared.config.close_timeout);
    }

    fn arm_close_timer(&mut self) {
        let timeout = self.shared.config.close_timeout;
        self.close_deadline
            .get_or_insert_with(|| Instant::now() + timeout);
        self.next_ping = None;
    }

    /// Starts the closing handshake. The Close frame itself goes out from `flush`, after
    /// every message sent before `close` (they may still wait in the outbox).
    fn start_close(&mut self, frame: Option<(u16, String)>) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        let frame = frame.map(|(code, reason)| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        });
        log::debug!("{}: sending Close {frame:?}", self.url());
        // Our Close may wait behind megabytes: until it is handed to the OS, this bounds a
        // stall only, re-armed whenever the server takes data (see `wait`); from then on,
        // the server's answer.
        self.rearm_close_timer();
        self.close_queued = true;
        self.deferred_close = Some(frame);
        self.next_ping = None;
        self.needs_flush = true;
    }

    /// Queues a control frame (a ping) with tungstenite; `flush` writes it.
    fn write_control(&mut self, ws: &mut Ws, msg: tungstenite::Message) -> Result<(), End> {
        match ws.write(msg) {
            Ok(()) => {}
            // The frame is buffered; the socket (or our frame batch) is full for now.
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The closing handshake has started: no more pings.
            Err(tungstenite::Error::Protocol(ProtocolError::SendAfterClosing))
            | Err(tungstenite::Error::AlreadyClosed) => return Ok(()),
            Err(e) => return Err(self.fail(ws, e)),
        }
        self.needs_flush = true;
        Ok(())
    }

    /// Writes, in this order and until the socket is full: the rest of the frame batch in
    /// progress, tungstenite's own frames (pongs, pings, the Close echo), the next batch
    /// from the outbox, and a Close that waited for the messages sent before it. Our
    /// batches and tungstenite's frames never interleave: a batch starts only when
    /// tungstenite has nothing pending, and tungstenite cannot write while one is left.
    fn flush(&mut self, ws: &mut Ws) -> Result<(), End> {
        if self.write_blocked || !self.needs_flush {
            return Ok(());
        }
        loop {
            if ws.get_ref().raw_pending() {
                match ws.get_mut().write_raw() {
                    Ok(Some(app_bytes)) => {
                        self.shared.sent(app_bytes);
                        self.wrote_at = Instant::now();
                    }
                    Ok(None) => {
                        self.write_blocked = true;
                        return Ok(());
                    }
                    Err(e) => return Err(End::Failed(Error::io(e))),
                }
            }
            match ws.flush() {
                Ok(()) => {
                    if self.close_queued && self.deferred_close.is_none() {
                        // Our Close frame just went out: the server's time to answer starts.
                        self.close_queued = false;
                        self.rearm_close_timer();
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return Ok(());
                }
                Err(tungstenite::Error::ConnectionClosed) => {
                    return Err(End::Clean(
                        self.peer_close.take().unwrap_or_else(CloseEvent::abnormal),
                    ));
                }
                Err(e) => return Err(self.fail(ws, e)),
            }
            {
                let mut outbox = self
                    .shared
                    .outbox
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !outbox.is_empty() {
                    let app_bytes = std::mem::take(&mut outbox.app_bytes);
                    ws.get_mut().start_raw(&mut outbox.frames, app_bytes);
                    continue;
                }
            }
            if let Some(frame) = self.deferred_close.take() {
                match ws.close(frame) {
                    Ok(()) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The server closed first; its Close is being echoed instead.
                    Err(tungstenite::Error::Protocol(ProtocolError::SendAfterClosing)) => {}
                    Err(e) => return Err(self.fail(ws, e)),
                }
                continue;
            }
            self.needs_flush = false;
            return Ok(());
        }
    }

    /// Keepalive and the closing-handshake timer. While the consumer holds the I/O thread
    /// back, the socket is not read, so the server cannot be blamed for a late pong or
    /// Close: those timers wait, unless the last handle is gone.
    fn timers(&mut self, ws: &mut Ws) -> Result<(), End> {
        let now = Instant::now();
        let judging = self.pending.is_empty() || self.drop_deadline.is_some();
        if judging && !self.readable {
            if self.close_deadline.is_some_and(|d| now >= d) {
                return Err(match self.peer_close.take() {
                    // Both Close frames went by; only the TCP end is missing.
                    Some(close) if self.close_sent || !ws.can_write() => End::Clean(close),
                    _ => End::Failed(Error::Timeout(Timeout::Close)),
                });
            }
            if self.pong_deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout(Timeout::Pong).into());
            }
        }
        if self.drop_deadline.is_some_and(|d| now >= d) {
            return Err(Error::Timeout(Timeout::Close).into());
        }
        ws.get_mut().expire_pool(now);
        if let (Some(due), Some(interval)) = (self.next_ping, self.shared.config.ping_interval) {
            if now >= due {
                self.ping_seq += 1;
                let payload = Bytes::copy_from_slice(&self.ping_seq.to_be_bytes());
                self.write_control(ws, tungstenite::Message::Ping(payload))?;
                self.next_ping = Some(now + interval);
                let timeout = self.shared.config.pong_timeout;
                self.pong_deadline.get_or_insert(now + timeout);
            }
        }
        Ok(())
    }

    /// "Fail the WebSocket connection": tell the server why when the RFC gives a code
    /// (best effort, never waiting), then end.
    fn fail(&mut self, ws: &mut Ws, e: tungstenite::Error) -> End {
        let code = match &e {
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
            tungstenite::Error::Protocol(_) | tungstenite::Error::AttackAttempt => Some(1002),
            tungstenite::Error::Utf8(_) => Some(1007),
            tungstenite::Error::Capacity(_) => Some(1009),
            _ => None,
        };
        // Unless half a batch of our frames is out: a Close now would land inside a frame.
        if let Some(code) = code.filter(|_| ws.get_mut().discard_raw()) {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            };
            let _ = ws.close(Some(frame));
            self.linger = true;
        }
        End::Failed(map_error(e, false, &self.shared.config))
    }

    fn emit(&mut self, event: Event) {
        if let Event::Message(m) = &event {
            self.pending_bytes += m.len();
        }
        self.pending.push_back(event);
    }

    fn pending_full(&self) -> bool {
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
        if let Err(gone) = self.outlet.push(&mut self.pending) {
            self.discard(gone);
        }
        self.recount_pending();
    }

    fn discard(&mut self, events: Vec<Event>) {
        if !self.receiver_gone {
            self.receiver_gone = true;
            log::debug!(
                "{}: the event receiver was dropped; events are discarded",
                self.url()
            );
        }
        log::trace!("discarded {events:?}");
    }

    /// Delivers the connection's last events (all that are pending), waiting for room;
    /// gives up only when the receiver is gone, or when the last handle is gone and its
    /// deadline passed. Leaves `pending` empty.
    fn deliver_all(&mut self) {
        self.pending_bytes = 0; // no reading follows; the next attempt starts from nothing
        while !self.pending.is_empty() {
            match self
                .outlet
                .push_wait(&mut self.pending, &self.commands, self.drop_deadline)
            {
                Waited::Sent => {}
                Waited::Gone(events) => return self.discard(events),
                Waited::TimedOut => {
                    let undelivered = std::mem::take(&mut self.pending);
                    log::debug!(
                        "{}: last handle dropped; undelivered {undelivered:?}",
                        self.url()
                    );
                    return;
                }
                Waited::Command(Some(Command::Drop)) => self.dropped(),
                Waited::Command(Some(Command::Close(_))) => self.stopped = true,
                Waited::Command(_) => {}
            }
        }
    }

    /// Whether another turn can make progress at once.
    fn has_work(&self, phase: &Phase) -> bool {
        let open = matches!(phase, Phase::Open(_));
        (open && self.readable && !self.pending_full())
            || (open && self.needs_flush && !self.write_blocked)
    }

    fn next_deadline(&self, phase: &Phase) -> Option<Instant> {
        let judging = self.pending.is_empty() || self.drop_deadline.is_some();
        let candidates = match phase {
            Phase::Connecting { .. } => [Some(self.connect_deadline), None, None, None, None],
            Phase::Handshaking(_) | Phase::Tunneling { .. } => {
                [self.handshake_deadline, None, None, None, None]
            }
            Phase::Open(ws) => [
                self.close_deadline.filter(|_| judging),
                self.pong_deadline.filter(|_| judging),
                self.next_ping,
                self.drop_deadline,
                ws.get_ref().pool_expiry(),
            ],
            Phase::Done => [None; 5],
        };
        candidates.into_iter().flatten().min()
    }
}

/// The opening handshake request: the URL's path and query intact, subprotocols,
/// Origin, extra headers, and `Authorization: Basic` from URL credentials.
pub(crate) fn build_request(target: &Target, config: &Config) -> Result<Request, Error> {
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Url(UrlError::Parse(e.to_string())))?;
    let bad = |name: &str, reason: &str| Error::InvalidHeader {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let value = |name: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| bad(name, "not a valid header value"))
    };
    let headers = request.headers_mut();
    if !config.subprotocols.is_empty() {
        let offered = config.subprotocols.join(", ");
        headers.insert(
            "Sec-WebSocket-Protocol",
            value("Sec-WebSocket-Protocol", &offered)?,
        );
    }
    if !config.cookies.is_empty() {
        let pairs: Vec<String> = config
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let mut cookie = value("Cookie", &pairs.join("; "))?;
        cookie.set_sensitive(true);
        headers.append(header::COOKIE, cookie);
    }
    if let Some(origin) = &config.origin {
        headers.insert(header::ORIGIN, value("Origin", origin)?);
    }
    for (name, v) in &config.headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(name, "not a valid header name"))?;
        const OWN: [&str; 6] = [
            "host",
            "connection",
            "upgrade",
            "sec-websocket-version",
            "sec-websocket-key",
            "sec-websocket-protocol",
        ];
        if OWN.contains(&header_name.as_str()) {
            return Err(bad(
                name,
                "set by the handshake itself (use `subprotocol` for protocols)",
            ));
        }
        headers.append(header_name, value(name, v)?);
    }
    if let Some(credentials) = &target.credentials {
        if !headers.contains_key(header::AUTHORIZATION) {
            let basic = format!("Basic {}", crate::url::base64(credentials.as_bytes()));
            let mut v = value("Authorization", &basic)?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    Ok(request)
}

/// Maps tungstenite's error to ours. `handshake` tells protocol errors during the upgrade
/// (a bad response) from those after it (a bad frame).
fn map_error(e: tungstenite::Error, handshake: bool, config: &Config) -> Error {
    use tungstenite::Error as T;
    match e {
        T::Io(e) => match tls_error(&e) {
            Some(tls) => Error::Tls(tls.to_string()),
            None if handshake && e.kind() == io::ErrorKind::UnexpectedEof => {
                Error::Handshake("the server closed the connection during the handshake".into())
            }
            None => Error::io(e),
        },
        T::Tls(e) => Error::Tls(e.to_string()),
        T::Capacity(CapacityError::MessageTooLong { size, max_size }) => Error::Capacity {
            what: if max_size == config.max_frame_size && max_size != config.max_message_size {
                "frame"
            } else {
                "message"
            },
            size,
            limit: max_size,
        },
        T::Capacity(c) => Error::Handshake(c.to_string()),
        T::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Error::io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the TCP connection without a closing handshake",
        )),
        T::Protocol(p) if handshake => Error::Handshake(p.to_string()),
        T::Protocol(p) => Error::Protocol(p.to_string()),
        // During the handshake there are no messages yet: a response header is not text.
        T::Utf8(s) if handshake => Error::Handshake(format!("a response header is not text: {s}")),
        T::Utf8(s) => Error::Protocol(format!("invalid UTF-8 in a text message: {s}")),
        T::AttackAttempt => Error::Protocol("attack attempt detected".into()),
        T::Http(response) => Error::HandshakeRejected {
            status: response.status().as_u16(),
            body: response.into_body(),
        },
        T::HttpFormat(e) => Error::Handshake(e.to_string()),
        T::Url(e) => Error::Url(UrlError::Parse(e.to_string())),
        other => Error::io(io::Error::other(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::{next_nap, own_small, COPY_FIRST, NAP_MAX, NAP_MIN, OWN_BELOW};
    use crate::delivery::Level;
    use std::time::Duration;

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
