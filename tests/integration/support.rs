//! Real servers on 127.0.0.1:0, a recording handler, and bounded waits.
//!
//! Every server thread ends by itself: `accept` gives up after [`SOCKET_TIMEOUT`], and
//! every accepted socket has read and write timeouts of [`SOCKET_TIMEOUT`].

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel::{self, Receiver, RecvTimeoutError, Sender};
use nwebsocket::{CloseEvent, Error, Event, Handler, Message, ReadyState, WebSocket, WebSocketRef};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::HeaderMap;

/// How long a test waits for something that should happen (generous: the machine is noisy).
pub const WAIT: Duration = Duration::from_secs(10);
/// Read/write timeout on every server socket, and the bound on `accept`.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(15);

pub type ServerWs = tungstenite::WebSocket<TcpStream>;

// ---------------------------------------------------------------------------------------
// Thread accounting: tests that count the crate's threads run alone.
// ---------------------------------------------------------------------------------------

static LOCK: RwLock<()> = RwLock::new(());

/// Taken by every test that opens connections: many may hold it at once.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    LOCK.read().unwrap_or_else(PoisonError::into_inner)
}

/// Taken by tests that count or measure the crate's threads: no other test runs meanwhile,
/// so no other connection's threads come or go while they look.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    LOCK.write().unwrap_or_else(PoisonError::into_inner)
}

/// The ids of this process's threads named `nwebsocket-io` / `nwebsocket-cb`.
pub fn crate_threads() -> BTreeSet<(u32, String)> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim().to_owned();
        if comm.starts_with("nwebsocket-") {
            out.insert((tid, comm));
        }
    }
    out
}

/// The crate's threads that are not in `before`, once there are `count` of them (a new
/// thread takes its name only once it runs, so wait for it, bounded). Only meaningful under
/// [`exclusive`].
pub fn new_crate_threads(before: &BTreeSet<(u32, String)>, count: usize) -> Vec<(u32, String)> {
    let old: BTreeSet<u32> = before.iter().map(|(tid, _)| *tid).collect();
    let fresh = || -> Vec<(u32, String)> {
        crate_threads()
            .into_iter()
            .filter(|(tid, _)| !old.contains(tid))
            .collect()
    };
    eventually(WAIT, || fresh().len() >= count);
    let found = fresh();
    assert_eq!(found.len(), count, "new nwebsocket threads: {found:?}");
    found
}

/// Whether the thread `tid` still exists in this process.
pub fn thread_alive(tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// The threads of `tids` still alive after a join returned, allowing for the kernel's
/// exit: `pthread_join` returns once the exiting thread clears its tid (in `exit_mm`),
/// before the kernel removes its `/proc/self/task` entry, so a joined thread can show
/// for a few microseconds more (seen once in CI, 2026-12-07). A thread that was not
/// joined is still there after the 100 ms allowed here.
pub fn alive_after_join(tids: &[(u32, String)]) -> Vec<&(u32, String)> {
    eventually(Duration::from_millis(100), || {
        tids.iter().all(|(tid, _)| !thread_alive(*tid))
    });
    tids.iter().filter(|(tid, _)| thread_alive(*tid)).collect()
}

/// Waits until none of the threads `tids` has been scheduled for `quiet` in a row (they
/// are asleep, their start-up work done), at most [`WAIT`]; false if they never settled.
/// Tests that count wake-ups over a window start it with this rather than a fixed sleep,
/// which a loaded machine can make too short.
pub fn settled(tids: &[u32], quiet: Duration) -> bool {
    let switches = || tids.iter().map(|&t| thread_switches(t)).collect::<Vec<_>>();
    let deadline = Instant::now() + WAIT;
    let mut last = switches();
    while Instant::now() < deadline {
        thread::sleep(quiet);
        let now = switches();
        if now == last {
            return true;
        }
        last = now;
    }
    false
}

/// The id of this process's thread named `name` (as `/proc` shows it: at most 15 bytes),
/// waiting for it at most [`WAIT`] (a new thread takes its name only once it runs).
pub fn thread_named(name: &str) -> Option<u32> {
    let find = || -> Option<u32> {
        std::fs::read_dir("/proc/self/task")
            .ok()?
            .flatten()
            .find(|entry| {
                std::fs::read_to_string(entry.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == name)
            })
            .and_then(|entry| entry.file_name().to_string_lossy().parse().ok())
    };
    let mut found = None;
    eventually(WAIT, || {
        found = find();
        found.is_some()
    });
    found
}

/// Waits until thread `tid` is blocked and has stayed so for `quiet` (asleep, and not
/// woken once meanwhile), at most [`WAIT`]; false if it never was, or it ended. (A thread
/// that waits for a core shows as running, not asleep, so load cannot pass for this.)
pub fn blocked_for(tid: u32, quiet: Duration) -> bool {
    let look = || -> Option<(char, u64)> {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let state = field("State:")?.chars().next()?;
        let switches = field("voluntary_ctxt_switches:")?.parse().ok()?;
        Some((state, switches))
    };
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let Some((_, before)) = look() else {
            return false;
        };
        thread::sleep(quiet);
        let Some((state, after)) = look() else {
            return false;
        };
        if state == 'S' && after == before {
            return true;
        }
    }
    false
}

/// utime + stime of thread `tid`, in clock ticks.
pub fn thread_cpu_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .unwrap_or_else(|e| panic!("reading stat of thread {tid}: {e}"));
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("stat has a comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// The voluntary context switches of thread `tid`: how often it blocked, so how often it
/// woke up. (Not the non-voluntary ones: those count how often a busy machine took the
/// core from it while it ran, and a loaded CI machine made a thread woken 25 times show
/// 211.)
pub fn thread_switches(tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .unwrap_or_else(|e| panic!("reading status of thread {tid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches for thread {tid}"))
}

/// Retries `check` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------
// Servers.
// ---------------------------------------------------------------------------------------

/// A server thread serving one connection; `join` returns what its body returned and
/// re-raises its panics (so server-side assertions fail the test).
pub struct Server<T> {
    pub addr: SocketAddr,
    handle: Option<JoinHandle<T>>,
}

impl<T> Server<T> {
    /// `ws://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// `ws://127.0.0.1:PORT` followed by `path` (which should start with `/` or `?`).
    pub fn url_with(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Waits for the server thread (bounded by its socket timeouts) and returns its result.
    pub fn join(mut self) -> T {
        let handle = self.handle.take().expect("joined once");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn accept_bounded(listener: &TcpListener) -> io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
                stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no client connected",
                    ));
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A `ws://` URL on 127.0.0.1 where nothing listens (a port just let go of).
pub fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("ws://{addr}/")
}

/// A raw TCP server: `body` gets the accepted socket and may write anything.
pub fn raw_server<T, F>(body: F) -> Server<T>
where
    T: Send + 'static,
    F: FnOnce(TcpStream) -> T + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let handle = thread::Builder::new()
        .name("test-server".into())
        .spawn(move || {
            let stream = accept_bounded(&listener).expect("server: accept");
            drop(listener);
            body(stream)
        })
        .expect("spawn server");
    Server {
        addr,
        handle: Some(handle),
    }
}

/// Bytes this socket has sent that the peer's kernel has not acknowledged, or not yet
/// sent (`TIOCOUTQ`): 0 once everything written is in the peer's receive queue. Linux
/// only; elsewhere 0.
pub fn unacked_bytes(tcp: &TcpStream) -> i32 {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    {
        use std::os::fd::AsRawFd;
        const TIOCOUTQ: u64 = 0x5411;
        extern "C" {
            fn ioctl(fd: i32, request: u64, ...) -> i32;
        }
        let mut n: i32 = 0;
        // SAFETY: a valid socket descriptor, and a pointer to an int that outlives the call.
        let r = unsafe { ioctl(tcp.as_raw_fd(), TIOCOUTQ, &mut n as *mut i32) };
        assert_eq!(r, 0, "ioctl(TIOCOUTQ): {}", io::Error::last_os_error());
        n
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tcp;
        0
    }
}

/// Waits until the peer's kernel has acknowledged everything written on `tcp` (see
/// [`unacked_bytes`]), at most [`WAIT`]: what a server wrote is then in the client's socket,
/// none of it still on its way. Panics if that takes longer.
pub fn until_acked(tcp: &TcpStream) {
    assert!(
        eventually(WAIT, || unacked_bytes(tcp) == 0),
        "server: {} bytes still unacknowledged after {WAIT:?}",
        unacked_bytes(tcp)
    );
}

/// Caps the kernel's receive buffer of an accepted socket (`SO_RCVBUF`, which also stops
/// Linux from growing it by itself, up to `tcp_rmem`'s maximum: 32 MiB on some machines),
/// so that a test knows how much of the client's data can wait between the client and a
/// slow reader. Call it before the first read: until then the kernel has not grown it.
/// Linux only (no safe wrapper sets it, and the crate's `libc` is not a dev-dependency);
/// elsewhere it does nothing.
pub fn cap_receive_buffer(tcp: &TcpStream, bytes: i32) {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    {
        use std::os::fd::AsRawFd;
        const SOL_SOCKET: i32 = 1;
        const SO_RCVBUF: i32 = 8;
        extern "C" {
            fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
        }
        // SAFETY: a valid socket descriptor, and a pointer to an int of the stated size
        // that outlives the call.
        let r = unsafe { setsockopt(tcp.as_raw_fd(), SOL_SOCKET, SO_RCVBUF, &bytes, 4) };
        assert_eq!(
            r,
            0,
            "setsockopt(SO_RCVBUF): {}",
            io::Error::last_os_error()
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (tcp, bytes);
}

/// A tungstenite server: `body` gets the accepted WebSocket.
pub fn server<T, F>(body: F) -> Server<T>
where
    T: Send + 'static,
    F: FnOnce(ServerWs) -> T + Send + 'static,
{
    raw_server(move |stream| {
        let ws = tungstenite::accept(stream).expect("server: WebSocket handshake");
        body(ws)
    })
}

/// A tungstenite server whose handshake goes through `on_request` (to inspect the request,
/// change the response, or delay it).
pub fn server_hdr<T, C, F>(on_request: C, body: F) -> Server<T>
where
    T: Send + 'static,
    C: FnOnce(&Request, Response) -> Result<Response, ErrorResponse> + Send + 'static,
    F: FnOnce(ServerWs) -> T + Send + 'static,
{
    raw_server(move |stream| {
        let ws = tungstenite::accept_hdr(stream, on_request).expect("server: WebSocket handshake");
        body(ws)
    })
}

/// What the server saw of the opening handshake request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub uri: String,
    pub headers: HeaderMap,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_owned())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII header").to_owned())
            .collect()
    }
}

/// A server that records the handshake request, then waits for the client's Close.
pub fn request_capturing_server() -> Server<SeenRequest> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    server_hdr(
        move |req: &Request, resp: Response| {
            let _ = tx.send(SeenRequest {
                uri: req.uri().to_string(),
                headers: req.headers().clone(),
            });
            Ok(resp)
        },
        move |mut ws| {
            read_until_close(&mut ws);
            rx.try_recv().expect("request recorded")
        },
    )
}

/// Echoes text and binary messages until the client closes (or the connection ends);
/// returns how many messages it echoed.
pub fn echo_server() -> Server<usize> {
    server(|mut ws| {
        let mut n = 0;
        loop {
            match ws.read() {
                Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => {
                    if ws.send(m).is_err() {
                        break;
                    }
                    n += 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        n
    })
}

/// Reads (answering pings and the Close) until the connection ends; returns the data
/// messages and the client's Close frame, if one came.
pub fn read_until_close(
    ws: &mut ServerWs,
) -> (
    Vec<tungstenite::Message>,
    Option<tungstenite::protocol::CloseFrame>,
) {
    let mut messages = Vec::new();
    let mut close = None;
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                close = Some(frame.unwrap_or(tungstenite::protocol::CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Status,
                    reason: "".into(),
                }));
            }
            Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => {
                messages.push(m);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = ws.flush();
    (messages, close)
}

/// Reads an HTTP request head (up to the blank line) from a raw socket or a TLS stream.
pub fn read_http_head(stream: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("server: reading the request head: {e}"),
        }
        assert!(head.len() < 64 * 1024, "request head too long");
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads from a raw socket until EOF, an error, or the socket timeout.
pub fn read_to_end_quietly(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// A handler that records every callback, in order, on a channel.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub enum Rec {
    Open {
        state: ReadyState,
        protocol: String,
        extensions: String,
        thread: Option<String>,
    },
    Message(Message),
    Error(Error),
    Close(CloseEvent, ReadyState),
}

/// Records each callback as a [`Rec`]; panics inside `onmessage` on a text equal to
/// `panic_on`.
pub struct Recorder {
    tx: Sender<Rec>,
    pub panic_on: Option<String>,
}

pub fn recorder() -> (Recorder, Receiver<Rec>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (Recorder { tx, panic_on: None }, rx)
}

impl Handler for Recorder {
    fn onopen(&mut self, ws: &WebSocketRef) {
        let _ = self.tx.send(Rec::Open {
            state: ws.ready_state(),
            protocol: ws.protocol().to_owned(),
            extensions: ws.extensions().to_owned(),
            thread: thread::current().name().map(str::to_owned),
        });
    }

    fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
        if let (Some(p), Some(t)) = (&self.panic_on, msg.as_text()) {
            if p == t {
                panic!("deliberate panic in onmessage on {t:?}");
            }
        }
        let _ = self.tx.send(Rec::Message(msg));
    }

    fn onerror(&mut self, _ws: &WebSocketRef, err: Error) {
        let _ = self.tx.send(Rec::Error(err));
    }

    fn onclose(&mut self, ws: &WebSocketRef, event: CloseEvent) {
        let _ = self.tx.send(Rec::Close(event, ws.ready_state()));
    }
}

/// The next record, waiting at most [`WAIT`].
/// An `onopen` that saw the state OPEN.
pub fn is_open(r: &Rec) -> bool {
    matches!(
        r,
        Rec::Open {
            state: ReadyState::Open,
            ..
        }
    )
}

pub fn next_rec(rx: &Receiver<Rec>) -> Rec {
    match rx.recv_timeout(WAIT) {
        Ok(r) => r,
        Err(e) => panic!("no callback within {WAIT:?}: {e}"),
    }
}

/// Records up to and including the `Close` (each waited for at most [`WAIT`]).
pub fn recs_until_close(rx: &Receiver<Rec>) -> Vec<Rec> {
    let mut out = Vec::new();
    loop {
        let r = next_rec(rx);
        let done = matches!(r, Rec::Close(..));
        out.push(r);
        if done {
            return out;
        }
    }
}

/// After the handler was dropped (all handles dropped, threads joined), whatever is left
/// on the channel: nothing may follow `onclose`.
pub fn leftover_recs(rx: &Receiver<Rec>) -> Vec<Rec> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(r) => out.push(r),
            Err(RecvTimeoutError::Disconnected) => return out,
            Err(RecvTimeoutError::Timeout) => {
                panic!("the handler was not dropped within {WAIT:?} (left: {out:?})")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pull style.
// ---------------------------------------------------------------------------------------

/// The next event, waiting at most [`WAIT`].
pub fn next_event(events: &nwebsocket::Events) -> Event {
    match events.recv_timeout(WAIT) {
        Ok(e) => e,
        Err(e) => panic!("no event within {WAIT:?}: {e}"),
    }
}

/// Pull style: `close()`, then the only event left is a clean `Close` with code 1000.
pub fn close_cleanly(ws: &WebSocket, events: &nwebsocket::Events) {
    ws.close();
    let evs = events_until_close(events);
    assert!(
        matches!(evs.as_slice(), [Event::Close(c)] if c.code == 1000 && c.was_clean),
        "{evs:?}"
    );
}

/// Events up to and including `Close`.
pub fn events_until_close(events: &nwebsocket::Events) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let e = next_event(events);
        let done = matches!(e, Event::Close(_));
        out.push(e);
        if done {
            return out;
        }
    }
}

/// After the last handle was dropped: events left on the channel until it disconnects.
pub fn leftover_events(events: &nwebsocket::Events) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        match events.recv_deadline(deadline) {
            Ok(e) => out.push(e),
            Err(RecvTimeoutError::Disconnected) => return out,
            Err(RecvTimeoutError::Timeout) => {
                panic!("the event channel did not disconnect within {WAIT:?} (left: {out:?})")
            }
        }
    }
}

/// Asserts a failure's tail: exactly one `Error` (checked by `check`), then one
/// `Close(1006, was_clean = false)`, last.
pub fn assert_failure_tail(recs: &[Rec], check: impl Fn(&Error) -> bool) {
    let errors: Vec<&Error> = recs
        .iter()
        .filter_map(|r| match r {
            Rec::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "exactly one onerror expected: {recs:?}");
    assert!(check(errors[0]), "unexpected error: {:?}", errors[0]);
    let n = recs.len();
    assert!(n >= 2, "{recs:?}");
    assert!(
        matches!(recs[n - 2], Rec::Error(_)),
        "onerror right before onclose: {recs:?}"
    );
    assert!(
        matches!(&recs[n - 1], Rec::Close(c, ReadyState::Closed) if c.code == 1006 && !c.was_clean),
        "onclose(1006, was_clean=false) last: {recs:?}"
    );
    assert_eq!(
        recs.iter().filter(|r| matches!(r, Rec::Close(..))).count(),
        1,
        "exactly one onclose: {recs:?}"
    );
}

/// A deterministic payload for message `i`: text for even `i`, binary for odd.
pub fn nth_message(i: usize) -> tungstenite::Message {
    let len = (i * 37) % 300;
    if i % 2 == 0 {
        let mut s = format!("text #{i} ");
        s.extend(std::iter::repeat_n('é', len / 2));
        tungstenite::Message::text(s)
    } else {
        let mut b = (i as u64).to_be_bytes().to_vec();
        b.extend((0..len).map(|k| (k ^ i) as u8));
        tungstenite::Message::binary(b)
    }
}

/// The same payload as the crate's `Message`.
pub fn nth_expected(i: usize) -> Message {
    match nth_message(i) {
        tungstenite::Message::Text(t) => Message::from(t.as_str()),
        tungstenite::Message::Binary(b) => Message::from(b.to_vec()),
        _ => unreachable!(),
    }
}

/// The `i`th message of [`flooding_server`]: `len` bytes, starting with `i`.
pub fn flood_payload(i: usize, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; len];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

/// A server that sends `n` binary messages of `len` bytes as fast as the client takes
/// them, then closes. The receiver gets the index of the first message whose write
/// blocked (TCP pushing back) and the server thread returns it too.
pub fn flooding_server(
    n: usize,
    len: usize,
) -> (Server<Option<usize>>, crossbeam_channel::Receiver<usize>) {
    let (blocked_tx, blocked_rx) = crossbeam_channel::bounded::<usize>(1);
    let server = server(move |mut ws| {
        ws.get_ref()
            .set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut blocked_at = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..n {
            let mut result = ws.send(tungstenite::Message::binary(flood_payload(i, len)));
            // On a timed-out write the frame stays buffered in tungstenite: flush again.
            while let Err(tungstenite::Error::Io(e)) = &result {
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "server: {e}"
                );
                assert!(Instant::now() < deadline, "server: stuck for a minute");
                if blocked_at.is_none() {
                    blocked_at = Some(i);
                    blocked_tx.send(i).unwrap();
                }
                result = ws.flush();
            }
            result.expect("server: send");
        }
        ws.get_ref()
            .set_write_timeout(Some(SOCKET_TIMEOUT))
            .unwrap();
        ws.close(None).unwrap();
        read_until_close(&mut ws);
        blocked_at
    });
    (server, blocked_rx)
}

/// Waits until thread `tid` has not been scheduled for `quiet` in a row, or has ended, at
/// most `max`: for a test that must let a thread reach a resting point it cannot observe
/// otherwise, and that goes on either way (a thread that polls never rests).
pub fn rested_or_gone(tid: u32, quiet: Duration, max: Duration) {
    let switches = || {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
    };
    let deadline = Instant::now() + max;
    let mut last = switches();
    while last.is_some() && Instant::now() < deadline {
        thread::sleep(quiet);
        let now = switches();
        if now == last {
            return;
        }
        last = now;
    }
}
