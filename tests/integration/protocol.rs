//! Issue 15: the defects of the I/O core, one or more regression tests each, against raw
//! TCP servers that write exact bytes and parse the client's (masked) frames themselves.
//!
//! 1. No data frame follows our own Close, even with a sender in a tight loop (both styles).
//! 2. A 101 response with bare `\n` line endings does not desync later reads.
//! 3. A panic on the I/O thread is impossible or contained (`usize::MAX` limits with a
//!    2^63-1 frame length; every timeout set to `Duration::MAX`).
//! 4. A server Close with an invalid code (or a bad payload) fails the connection:
//!    `Error`, then `Close(1006)`, and 1002 (or 1007) on the wire.
//! 5. Data after the server's Close is discarded; the close is clean with its code.
//! 6. A 64-bit frame length with the top bit set is a protocol error (1002).
//! 7. Memory stays bounded against a peer that pings and never reads, and under `ping()`.
//! 8. A pong does not wait behind a backlog of data.
//!
//! (Defect 9, the dependency on undocumented tungstenite behaviour, has no runtime test.)

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Deref;
use std::thread;
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel::{self, RecvTimeoutError};
use nwebsocket::{Builder, Error, Event, Message, ReadyState, SendError, WebSocket, WebSocketRef};
use tungstenite::handshake::derive_accept_key;

use crate::support::*;

// ---------------------------------------------------------------------------------------
// The raw server's side: the handshake, frames out, the client's frames parsed.
// ---------------------------------------------------------------------------------------

const CRLF: &str = "\r\n";
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Reads the client's request and answers 101, with `eol` as the line ending.
fn accept_handshake(stream: &mut TcpStream, eol: &str) {
    let head = read_http_head(stream);
    let key = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("server: no Sec-WebSocket-Key");
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols{eol}Upgrade: websocket{eol}Connection: Upgrade{eol}\
         Sec-WebSocket-Accept: {accept}{eol}{eol}"
    );
    stream
        .write_all(response.as_bytes())
        .expect("server: writing the 101");
}

/// A server frame (unmasked, FIN set).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A Close frame whose payload is `code` then `reason` (raw bytes: may be invalid UTF-8).
fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(CLOSE, &payload)
}

/// A frame as the client sent it, unmasked.
#[derive(Debug)]
struct WireFrame {
    fin: bool,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl WireFrame {
    fn is_data(&self) -> bool {
        self.opcode < 0x8
    }

    /// The code of a Close frame (None without one).
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Parses a complete frame at the start of `buf`: the frame and its length on the wire.
fn parse_frame(buf: &[u8]) -> Option<(WireFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as u64,
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()), 10),
        n => (u64::from(n), 2),
    };
    let mut mask = [0u8; 4];
    if masked {
        mask.copy_from_slice(buf.get(at..at + 4)?);
        at += 4;
    }
    let len = usize::try_from(len).expect("client frame length");
    let mut payload = buf.get(at..at + len)?.to_vec();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    let frame = WireFrame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        masked,
        payload,
    };
    Some((frame, at + len))
}

/// One accepted connection, after the handshake.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    fn new(stream: TcpStream) -> Self {
        Peer {
            stream,
            buf: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("server: write");
    }

    /// The client's next frame; `None` at EOF, on an error, or after the socket timeout.
    fn next_frame(&mut self) -> Option<WireFrame> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                assert!(frame.masked, "server: an unmasked client frame: {frame:?}");
                return Some(frame);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads every frame until EOF (bounded by the socket timeout). At the client's Close:
    /// echoes it unless `close_sent`, then ends our side (FIN), so the client sees the end
    /// of the stream. Returns the frames read.
    fn finish(&mut self, close_sent: bool) -> Vec<WireFrame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame() {
            if f.opcode == CLOSE && !frames.iter().any(|g: &WireFrame| g.opcode == CLOSE) {
                if !close_sent {
                    let echo = frame(CLOSE, &f.payload[..f.payload.len().min(2)]);
                    let _ = self.stream.write_all(&echo);
                }
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            frames.push(f);
        }
        frames
    }
}

/// The code of the first Close frame among `frames`, if any (`Some(None)`: no code).
fn first_close(frames: &[WireFrame]) -> Option<Option<u16>> {
    frames
        .iter()
        .find(|f| f.opcode == CLOSE)
        .map(WireFrame::close_code)
}

// ---------------------------------------------------------------------------------------
// The client's side.
// ---------------------------------------------------------------------------------------

/// Events up to and including `Close`, without `Ping`/`Pong`; stops early (and says why)
/// if none comes within [`WAIT`] or the channel disconnects.
fn events_until_close_or_end(events: &nwebsocket::Events) -> (Vec<Event>, &'static str) {
    let mut out = Vec::new();
    loop {
        match events.recv_timeout(WAIT) {
            Ok(Event::Ping(_) | Event::Pong(_)) => {}
            Ok(e) => {
                let done = matches!(e, Event::Close(_));
                out.push(e);
                if done {
                    return (out, "Close");
                }
            }
            Err(RecvTimeoutError::Timeout) => return (out, "no event within WAIT"),
            Err(RecvTimeoutError::Disconnected) => return (out, "the event channel disconnected"),
        }
    }
}

/// "Fail the connection": after `Open`, exactly `Error(e)` with `check(e)`, then
/// `Close(1006, was_clean = false)`.
fn is_failure(evs: &[Event], check: impl Fn(&Error) -> bool) -> bool {
    matches!(evs, [Event::Open, Event::Error(e), Event::Close(c)]
        if check(e) && c.code == 1006 && !c.was_clean)
}

/// Runs `f` on its own thread and waits at most `limit` for it: a hang fails the test
/// instead of hanging it, and a panic inside is reported with `what`.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let handle = thread::Builder::new()
        .name("test-within".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn");
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(RecvTimeoutError::Timeout) => panic!("{what}: did not return within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => {
            let panic = handle.join().expect_err("no value and no panic");
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{what}: panicked: {msg}")
        }
    }
}

/// Owns a connection's last handle and drops it on another thread, bounded: a drop that
/// panics or hangs fails the test, and while a test is already failing it is left behind
/// instead of aborting the whole test binary (a panic in a destructor during unwinding).
struct Guarded<H: Send + 'static>(Option<WebSocket<H>>);

fn guarded<H: Send + 'static>(ws: WebSocket<H>) -> Guarded<H> {
    Guarded(Some(ws))
}

impl<H: Send + 'static> Deref for Guarded<H> {
    type Target = WebSocket<H>;

    fn deref(&self) -> &WebSocket<H> {
        self.0.as_ref().expect("not dropped yet")
    }
}

impl<H: Send + 'static> Drop for Guarded<H> {
    fn drop(&mut self) {
        let Some(ws) = self.0.take() else { return };
        if thread::panicking() {
            let _ = thread::Builder::new()
                .name("test-drop".into())
                .spawn(move || drop(ws));
        } else {
            within(WAIT * 2, "dropping the last handle", move || drop(ws));
        }
    }
}

/// This process's resident set, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// 1. No data frame after our own Close.
// ---------------------------------------------------------------------------------------

/// What the server of defect 1 saw.
#[derive(Debug)]
struct AfterClose {
    /// Data frames before the client's Close.
    before: usize,
    /// Data frames after the client's Close: must be none.
    after: usize,
    /// The code of the client's Close (the echo of our 1000).
    client_close: Option<Option<u16>>,
}

/// Reads `FRAMES_FIRST` client frames, sends Close 1000, then reads to EOF.
fn close_under_sends_server() -> Server<AfterClose> {
    const FRAMES_FIRST: usize = 50;
    raw_server(|mut stream| {
        accept_handshake(&mut stream, CRLF);
        let mut peer = Peer::new(stream);
        let mut first = 0;
        while first < FRAMES_FIRST {
            let f = peer
                .next_frame()
                .expect("server: the client's first frames");
            assert!(f.is_data(), "server: {f:?}");
            first += 1;
        }
        peer.write(&close_frame(1000, b""));
        let frames = peer.finish(true);
        let at = frames.iter().position(|f| f.opcode == CLOSE);
        let (before, after) = match at {
            Some(i) => (
                frames[..i].iter().filter(|f| f.is_data()).count(),
                frames[i..].iter().filter(|f| f.is_data()).count(),
            ),
            None => (frames.iter().filter(|f| f.is_data()).count(), 0),
        };
        AfterClose {
            before: first + before,
            after,
            client_close: first_close(&frames),
        }
    })
}

/// Sends small messages in a tight loop until a send fails (bounded by [`WAIT`]); returns
/// how many were taken and the first error.
fn send_until_refused(ws: WebSocketRef) -> thread::JoinHandle<(usize, Option<SendError>)> {
    thread::Builder::new()
        .name("test-sender".into())
        .spawn(move || {
            let deadline = Instant::now() + WAIT;
            let mut n = 0usize;
            while Instant::now() < deadline {
                if let Err(e) = ws.send(format!("message {n}")) {
                    return (n, Some(e));
                }
                n += 1;
            }
            (n, None)
        })
        .expect("spawn sender")
}

fn check_after_close(i: usize, server: AfterClose, sent: (usize, Option<SendError>)) {
    assert!(server.before >= 50, "run {i}: {server:?}");
    assert_eq!(
        server.after, 0,
        "run {i}: data frames followed the client's Close on the wire: {server:?}, sender {sent:?}"
    );
    assert_eq!(
        server.client_close,
        Some(Some(1000)),
        "run {i}: the client's Close echoes 1000: {server:?}"
    );
    assert!(
        matches!(sent.1, Some(SendError::Closed(_))),
        "run {i}: sends end with SendError::Closed: {sent:?}"
    );
}

#[test]
fn no_data_frame_follows_our_close_pull_style() {
    let _g = shared();
    for i in 0..5 {
        let server = close_under_sends_server();
        let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
        let ws = guarded(ws);
        assert!(matches!(next_event(&events), Event::Open));
        let sender = send_until_refused(WebSocketRef::clone(&ws));
        let (evs, end) = events_until_close_or_end(&events);
        assert!(
            matches!(evs.as_slice(), [Event::Close(c)] if c.code == 1000 && c.was_clean),
            "run {i}: {evs:?} ({end})"
        );
        let sent = sender.join().expect("sender");
        drop(ws);
        check_after_close(i, server.join(), sent);
    }
}

#[test]
fn no_data_frame_follows_our_close_callback_style() {
    let _g = shared();
    for i in 0..5 {
        let server = close_under_sends_server();
        let (rec, rx) = recorder();
        let ws = WebSocket::connect(&server.url(), rec).expect("connect");
        let ws = guarded(ws);
        let sender = send_until_refused(WebSocketRef::clone(&ws));
        let recs = recs_until_close(&rx);
        assert!(
            matches!(recs.as_slice(), [Rec::Open { .. }, Rec::Close(c, _)] if c.code == 1000 && c.was_clean),
            "run {i}: {recs:?}"
        );
        let sent = sender.join().expect("sender");
        drop(ws);
        check_after_close(i, server.join(), sent);
    }
}

// ---------------------------------------------------------------------------------------
// 2. A 101 response with bare LF line endings.
// ---------------------------------------------------------------------------------------

/// 300 bytes with `\r\n\r\n` in the middle.
fn crlf_payload() -> Vec<u8> {
    let mut v: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8 | 0x20).collect();
    v[150..154].copy_from_slice(b"\r\n\r\n");
    v
}

/// A text of 5,000 bytes (more than the old core's fast path takes) with `\r\n\r\n` inside.
fn long_crlf_text() -> Vec<u8> {
    let mut v: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
    v[2500..2504].copy_from_slice(b"\r\n\r\n");
    v
}

/// A ping whose payload holds `\r\n\r\n` and then the start of a frame header (binary,
/// 7 bytes), followed in the same write by a 12-byte binary message whose payload, from
/// its 6th byte, reads as a whole text frame "bogus". The old core, still looking for
/// the end of a bare-LF head, took the ping's last two bytes for a frame start: it then
/// placed a frame boundary inside the binary message, delivered "bogus", and built the
/// binary message from the bytes of the next one.
fn ping_with_a_head_end_then_binary() -> (Vec<u8>, Vec<u8>) {
    let mut bytes = frame(PING, b"\r\n\r\n\x82\x07");
    let mut payload = b"12345".to_vec();
    payload.extend(frame(TEXT, b"bogus"));
    assert_eq!(payload.len(), 12);
    bytes.extend(frame(BINARY, &payload));
    (bytes, payload)
}

/// After a 101 with bare `\n` line endings, payloads holding `\r\n\r\n` (alone, behind
/// a ping, inside a ping, in a long text) are delivered intact and in order.
#[test]
fn a_bare_lf_handshake_does_not_desync_later_reads() {
    let _g = shared();
    let (tricky, tricky_payload) = ping_with_a_head_end_then_binary();
    let mut ping_then_binary = frame(PING, b"p");
    ping_then_binary.extend(frame(BINARY, &crlf_payload()));
    let mut crlf_ping_then_text = frame(PING, b"ping\r\n\r\nping");
    crlf_ping_then_text.extend(frame(TEXT, b"after the ping"));
    // Each write brings one message.
    let script: Vec<(Vec<u8>, Message)> = vec![
        (frame(TEXT, b"first"), Message::from("first")),
        (
            frame(BINARY, &crlf_payload()),
            Message::from(crlf_payload()),
        ),
        (tricky, Message::from(tricky_payload)),
        (ping_then_binary, Message::from(crlf_payload())),
        (
            frame(TEXT, &long_crlf_text()),
            Message::from(String::from_utf8(long_crlf_text()).unwrap()),
        ),
        (crlf_ping_then_text, Message::from("after the ping")),
        (frame(TEXT, b"third"), Message::from("third")),
        (frame(BINARY, &[1, 2, 3]), Message::from(vec![1u8, 2, 3])),
    ];
    let (writes, expected): (Vec<Vec<u8>>, Vec<Message>) = script.into_iter().unzip();
    // Each write waits for the client's acknowledgement of the one before, so each
    // reaches the client in a read of its own.
    let server = raw_server(move |mut stream| {
        accept_handshake(&mut stream, "\n");
        let mut peer = Peer::new(stream);
        for w in writes.iter().chain([&close_frame(1000, b"")]) {
            // "ready" after Open, then "ack" after each message (pongs go by).
            loop {
                match peer.next_frame() {
                    Some(f) if f.opcode == TEXT => break,
                    Some(f) if f.opcode == PONG => {}
                    _ => return None,
                }
            }
            peer.write(w);
        }
        first_close(&peer.finish(true))
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let ws = guarded(ws);
    assert!(matches!(next_event(&events), Event::Open));
    ws.send("ready").unwrap();
    let mut got = Vec::new();
    // Up to the Close, or the first wrong message.
    let (close, end) = loop {
        match events.recv_timeout(WAIT) {
            Ok(Event::Message(m)) => {
                let wrong = expected.get(got.len()) != Some(&m);
                got.push(m);
                if wrong {
                    break (None, "a wrong message");
                }
                let _ = ws.send("ack");
            }
            Ok(Event::Close(c)) => break (Some(c), "Close"),
            Ok(other) => panic!("unexpected {other:?} after {got:?}"),
            Err(e) => {
                break (
                    None,
                    if e.is_timeout() {
                        "timeout"
                    } else {
                        "disconnected"
                    },
                )
            }
        }
    };
    assert_eq!(got, expected, "(then {close:?}, {end})");
    assert!(
        matches!(&close, Some(c) if c.code == 1000 && c.was_clean),
        "{close:?} ({end})"
    );
    drop(ws);
    assert_eq!(server.join(), Some(Some(1000)));
}

// ---------------------------------------------------------------------------------------
// 3. Panics on the I/O thread: capacity overflow, Duration::MAX.
// ---------------------------------------------------------------------------------------

/// After the handshake, writes `bytes`, then reads to EOF; returns the client's Close code.
fn raw_bytes_server(bytes: Vec<u8>) -> Server<Option<Option<u16>>> {
    raw_server(move |mut stream| {
        accept_handshake(&mut stream, CRLF);
        let mut peer = Peer::new(stream);
        peer.write(&bytes);
        first_close(&peer.finish(false))
    })
}

#[test]
fn a_huge_frame_length_with_unlimited_sizes_fails_the_connection() {
    let _g = shared();
    // Binary, 64-bit length 2^63 - 1, then a few payload bytes.
    let mut bytes = vec![0x82, 127];
    bytes.extend_from_slice(&0x7FFF_FFFF_FFFF_FFFFu64.to_be_bytes());
    bytes.extend_from_slice(b"abcd");
    let server = raw_bytes_server(bytes);
    let (ws, events) = WebSocket::builder()
        .max_message_size(usize::MAX)
        .max_frame_size(usize::MAX)
        .connect_pull(&server.url())
        .expect("connect");
    let ws = guarded(ws);
    let (evs, end) = events_until_close_or_end(&events);
    assert!(is_failure(&evs, |_| true), "{evs:?} ({end})");
    eprintln!("huge frame length: {evs:?}");
    let closed = ws.wait_closed_timeout(WAIT);
    assert!(
        matches!(&closed, Some(c) if c.code == 1006 && !c.was_clean),
        "{closed:?}"
    );
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    let handle = WebSocketRef::clone(&ws);
    let sent = within(WAIT, "send after the failure", move || handle.send("late"));
    assert!(
        matches!(&sent, Err(e) if e.message().as_text() == Some("late")),
        "an error that hands the message back: {sent:?}"
    );
    drop(ws);
    server.join();
}

/// Connects with `configure`d settings to an echo server, (with `pong`, waits for a pong to
/// a keepalive ping,) echoes a message, closes cleanly, and drops the handle: every step
/// bounded, a panic in any step reported.
fn with_max_timeouts(configure: fn(Builder) -> Builder, pong: bool) {
    let _g = shared();
    let server = echo_server();
    let url = server.url();
    let (ws, events) = within(WAIT * 2, "connect_pull", move || {
        configure(WebSocket::builder()).connect_pull(&url)
    })
    .expect("connect");
    let ws = guarded(ws);
    assert!(matches!(next_event(&events), Event::Open));
    if pong {
        let e = events.recv_timeout(WAIT);
        assert!(
            matches!(e, Ok(Event::Pong(_))),
            "a pong to the keepalive ping: {e:?}"
        );
    }
    let handle = WebSocketRef::clone(&ws);
    within(WAIT, "send", move || handle.send("echo me")).expect("send");
    let echoed = loop {
        match events.recv_timeout(WAIT) {
            Ok(Event::Ping(_) | Event::Pong(_)) => {}
            other => break other,
        }
    };
    assert!(
        matches!(&echoed, Ok(Event::Message(m)) if m.as_text() == Some("echo me")),
        "{echoed:?}"
    );
    let handle = WebSocketRef::clone(&ws);
    within(WAIT, "close", move || handle.close());
    let handle = WebSocketRef::clone(&ws);
    let closed = within(WAIT * 2, "wait_closed_timeout", move || {
        handle.wait_closed_timeout(WAIT)
    });
    assert!(
        matches!(&closed, Some(c) if c.code == 1000 && c.was_clean),
        "{closed:?}"
    );
    let (evs, end) = events_until_close_or_end(&events);
    assert!(
        matches!(evs.as_slice(), [Event::Close(c)] if c.code == 1000 && c.was_clean),
        "{evs:?} ({end})"
    );
    drop(ws);
    assert_eq!(server.join(), 1);
}

#[test]
fn connect_timeout_max_never_panics() {
    with_max_timeouts(|b| b.connect_timeout(Duration::MAX), false);
}

#[test]
fn handshake_timeout_max_never_panics() {
    with_max_timeouts(|b| b.handshake_timeout(Duration::MAX), false);
}

#[test]
fn close_timeout_max_never_panics() {
    with_max_timeouts(|b| b.close_timeout(Duration::MAX), false);
}

#[test]
fn ping_interval_max_never_panics() {
    with_max_timeouts(|b| b.ping_interval(Duration::MAX), false);
}

#[test]
fn pong_timeout_max_never_panics() {
    // A keepalive ping goes out, so the pong deadline is computed.
    with_max_timeouts(
        |b| {
            b.pong_timeout(Duration::MAX)
                .ping_interval(Duration::from_millis(50))
                .ping_events(true)
        },
        true,
    );
}

#[test]
fn every_timeout_max_at_once_never_panics() {
    with_max_timeouts(
        |b| {
            b.connect_timeout(Duration::MAX)
                .handshake_timeout(Duration::MAX)
                .close_timeout(Duration::MAX)
                .ping_interval(Duration::MAX)
                .pong_timeout(Duration::MAX)
        },
        false,
    );
}

/// Rule 13 for the handle's own bounded calls: `Duration::MAX` means no limit.
#[test]
fn blocking_calls_with_duration_max_never_panic() {
    let _g = shared();
    let server = echo_server();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let ws = guarded(ws);
    assert!(matches!(next_event(&events), Event::Open));
    let handle = WebSocketRef::clone(&ws);
    within(WAIT, "send_timeout(Duration::MAX)", move || {
        handle.send_timeout("x", Duration::MAX)
    })
    .expect("send_timeout");
    assert!(matches!(next_event(&events), Event::Message(_)));
    close_cleanly(&ws, &events);
    let handle = WebSocketRef::clone(&ws);
    let closed = within(WAIT, "wait_closed_timeout(Duration::MAX)", move || {
        handle.wait_closed_timeout(Duration::MAX)
    });
    assert!(matches!(&closed, Some(c) if c.code == 1000), "{closed:?}");
    drop(ws);
    server.join();
}

// ---------------------------------------------------------------------------------------
// 4. A server Close with an invalid code or payload.
// ---------------------------------------------------------------------------------------

/// The server sends `close` (raw bytes); returns the events and the client's wire code.
fn server_close_case(close: Vec<u8>) -> (Vec<Event>, &'static str, Option<Option<u16>>) {
    let server = raw_server(move |mut stream| {
        accept_handshake(&mut stream, CRLF);
        let mut peer = Peer::new(stream);
        peer.write(&close);
        first_close(&peer.finish(true))
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let ws = guarded(ws);
    let (evs, end) = events_until_close_or_end(&events);
    drop(ws);
    (evs, end, server.join())
}

#[test]
fn a_server_close_with_an_invalid_code_fails_the_connection() {
    let _g = shared();
    let mut wrong = Vec::new();
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
        let (evs, end, wire) = server_close_case(close_frame(code, b""));
        let events_ok = is_failure(&evs, |e| matches!(e, Error::Protocol { .. }));
        if !events_ok || wire != Some(Some(1002)) {
            wrong.push(format!(
                "code {code}: events {evs:?} ({end}), on the wire {wire:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "expected Error(Protocol), Close(1006, unclean), 1002 on the wire:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_server_close_with_a_one_byte_payload_fails_with_1002() {
    let _g = shared();
    let (evs, end, wire) = server_close_case(frame(CLOSE, &[0x03]));
    assert!(
        is_failure(&evs, |e| matches!(e, Error::Protocol { .. })),
        "{evs:?} ({end})"
    );
    assert_eq!(wire, Some(Some(1002)));
}

#[test]
fn a_server_close_with_an_invalid_utf8_reason_fails_with_1007() {
    let _g = shared();
    let (evs, end, wire) = server_close_case(close_frame(1000, &[b'o', b'k', 0xFF, 0xFE]));
    assert!(is_failure(&evs, |_| true), "{evs:?} ({end})");
    eprintln!("invalid UTF-8 close reason: {evs:?}");
    assert_eq!(wire, Some(Some(1007)), "events: {evs:?}");
}

// ---------------------------------------------------------------------------------------
// 5. Data after the server's Close is discarded.
// ---------------------------------------------------------------------------------------

#[test]
fn data_after_the_servers_close_is_discarded() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        accept_handshake(&mut stream, CRLF);
        let mut peer = Peer::new(stream);
        let mut bytes = close_frame(1000, b"bye");
        bytes.extend(frame(TEXT, b"after the close"));
        bytes.extend(frame(PING, b"after the close too"));
        peer.write(&bytes);
        let frames = peer.finish(true);
        let at = frames.iter().position(|f| f.opcode == CLOSE);
        let data_after = at.map_or(0, |i| frames[i..].iter().filter(|f| f.is_data()).count());
        (first_close(&frames), data_after)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let ws = guarded(ws);
    let (evs, end) = events_until_close_or_end(&events);
    assert!(
        matches!(evs.as_slice(), [Event::Open, Event::Close(c)]
            if c.code == 1000 && c.reason == "bye" && c.was_clean),
        "{evs:?} ({end})"
    );
    drop(ws);
    let (echo, data_after) = server.join();
    assert_eq!(echo, Some(Some(1000)), "the client echoes the Close");
    assert_eq!(data_after, 0);
}

// ---------------------------------------------------------------------------------------
// 6. A 64-bit length with the most significant bit set.
// ---------------------------------------------------------------------------------------

#[test]
fn a_frame_length_with_the_top_bit_set_is_a_protocol_error() {
    let _g = shared();
    let mut bytes = vec![0x82, 127];
    bytes.extend_from_slice(&0x8000_0000_0000_0005u64.to_be_bytes());
    bytes.extend_from_slice(b"hello");
    let server = raw_bytes_server(bytes);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let ws = guarded(ws);
    let (evs, end) = events_until_close_or_end(&events);
    assert!(
        is_failure(&evs, |e| matches!(e, Error::Protocol { .. })),
        "{evs:?} ({end})"
    );
    drop(ws);
    assert_eq!(server.join(), Some(Some(1002)));
}

// ---------------------------------------------------------------------------------------
// 7. Memory bounded against a peer that pings and never reads.
// ---------------------------------------------------------------------------------------

#[test]
fn memory_stays_bounded_against_a_peer_that_pings_and_never_reads() {
    let _g = exclusive();
    const FLOOD: Duration = Duration::from_secs(3);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<u64>(1);
    let (end_tx, end_rx) = crossbeam_channel::bounded::<()>(1);
    let server = raw_server(move |mut stream| {
        accept_handshake(&mut stream, CRLF);
        stream
            .set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let one = frame(PING, &[0x5A; 125]);
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 500).collect();
        let (mut at, mut written) = (0usize, 0u64);
        let deadline = Instant::now() + FLOOD;
        while Instant::now() < deadline {
            match stream.write(&batch[at..]) {
                Ok(n) => {
                    written += n as u64;
                    at = (at + n) % batch.len();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break, // the client failed the connection
            }
        }
        done_tx.send(written).unwrap();
        // Never read; end when the test says so (or after a bound).
        let _ = end_rx.recv_timeout(WAIT * 3);
    });
    let (ws, events) = WebSocket::builder()
        .close_timeout(Duration::from_secs(1))
        .connect_pull(&server.url())
        .expect("connect");
    let ws = guarded(ws);
    assert!(matches!(next_event(&events), Event::Open));
    let before = rss();
    let mut peak = before;
    let written = loop {
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(n) => break n,
            Err(RecvTimeoutError::Timeout) => peak = peak.max(rss()),
            Err(RecvTimeoutError::Disconnected) => panic!("the server died"),
        }
    };
    peak = peak.max(rss());
    let (evs, end) = events_until_close_or_end(&events);
    let _ = end_tx.send(());
    eprintln!(
        "ping flood: {} MiB of pings written, RSS {} -> peak {} MiB, events {evs:?} ({end})",
        written / MIB as u64,
        before / MIB,
        peak / MIB
    );
    assert!(
        peak.saturating_sub(before) < 32 * MIB,
        "RSS grew by {} MiB under a ping flood (events: {evs:?})",
        (peak - before) / MIB
    );
    // `Open` was taken above.
    assert!(
        matches!(&evs[..], [Event::Error(_), Event::Close(c)] if c.code == 1006 && !c.was_clean),
        "{evs:?} ({end})"
    );
    drop(ws);
    server.join();
}

#[test]
fn ping_calls_against_a_peer_that_never_reads_stay_bounded() {
    let _g = exclusive();
    // 200,000 grew RSS by 31 MiB on the old core: a million leaves no doubt.
    const PINGS: usize = 1_000_000;
    let (end_tx, end_rx) = crossbeam_channel::bounded::<()>(1);
    let server = raw_server(move |mut stream| {
        accept_handshake(&mut stream, CRLF);
        // Never read; end when the test says so (or after a bound).
        let _ = end_rx.recv_timeout(WAIT * 3);
        drop(stream);
    });
    let (ws, events) = WebSocket::builder()
        .close_timeout(Duration::from_secs(1))
        .connect_pull(&server.url())
        .expect("connect");
    let ws = guarded(ws);
    assert!(matches!(next_event(&events), Event::Open));
    let before = rss();
    let mut peak = before;
    let (mut ok, mut refused) = (0usize, 0usize);
    for i in 0..PINGS {
        match ws.ping(vec![0u8; 125]) {
            Ok(()) => ok += 1,
            Err(_) => refused += 1,
        }
        if i % 10_000 == 0 {
            peak = peak.max(rss());
        }
    }
    peak = peak.max(rss());
    let _ = end_tx.send(());
    eprintln!(
        "{PINGS} pings: {ok} taken, {refused} refused; RSS {} -> peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(
        peak.saturating_sub(before) < 32 * MIB,
        "RSS grew by {} MiB under {PINGS} ping() calls ({ok} taken)",
        (peak - before) / MIB
    );
    drop(ws);
    server.join();
}

// ---------------------------------------------------------------------------------------
// 8. Control frames never wait behind data.
// ---------------------------------------------------------------------------------------

/// A first large message (the "plug") fills the socket buffers while the server does not
/// read, so that the 256 messages sent after it wait in the client as one backlog. Then
/// the server reads the plug and pings while the client writes that backlog: the pong may
/// follow what the socket buffers already hold, not the whole backlog.
#[test]
fn a_pong_does_not_wait_behind_a_data_backlog() {
    let _g = shared();
    const PLUG: usize = 16 * MIB;
    const N: usize = 256;
    const LEN: usize = 64 * 1024;
    let (plug_tx, plug_rx) = crossbeam_channel::bounded::<()>(1);
    let (queued_tx, queued_rx) = crossbeam_channel::bounded::<()>(1);
    let server = raw_server(move |mut stream| {
        accept_handshake(&mut stream, CRLF);
        // The plug's first bytes: the client is writing it (without a read here).
        stream.peek(&mut [0u8; 1]).expect("server: the plug");
        plug_tx.send(()).unwrap();
        // Once the client has its backlog queued, read the plug, and ping at once: by then
        // the client is writing its backlog, and only what the socket buffers hold
        // (about 4 MiB on Linux loopback) may go before the pong.
        queued_rx
            .recv_timeout(WAIT)
            .expect("server: backlog queued");
        let mut peer = Peer::new(stream);
        let mut plug = 0;
        loop {
            let f = peer.next_frame().expect("server: the plug");
            assert!(f.is_data(), "server: {f:?}");
            plug += f.payload.len();
            if f.fin {
                break;
            }
        }
        assert_eq!(plug, PLUG);
        peer.write(&frame(PING, b"urgent"));
        // Data messages (the plug first) before the pong.
        let (mut data, mut pong_at) = (1usize, None);
        while data < 1 + N || pong_at.is_none() {
            let Some(f) = peer.next_frame() else { break };
            match f.opcode {
                PONG => {
                    assert_eq!(f.payload, b"urgent");
                    pong_at.get_or_insert(data);
                }
                CLOSE => break,
                _ if f.is_data() && f.fin => data += 1,
                _ => {}
            }
        }
        peer.write(&close_frame(1000, b""));
        peer.finish(true);
        (pong_at, data)
    });
    let (ws, events) = WebSocket::builder()
        .high_water_mark(64 * MIB)
        .connect_pull(&server.url())
        .expect("connect");
    let ws = guarded(ws);
    assert!(matches!(next_event(&events), Event::Open));
    let handle = WebSocketRef::clone(&ws);
    within(WAIT * 2, "queueing the backlog", move || {
        handle.send(vec![0xAB; PLUG]).expect("send the plug");
        // Once the server sees its first bytes, the I/O thread is writing the plug.
        plug_rx
            .recv_timeout(WAIT)
            .expect("the plug reached the server");
        for i in 0..N {
            handle
                .send(vec![(i % 251) as u8; LEN])
                .expect("send below the high-water mark");
        }
    });
    eprintln!(
        "backlog queued: buffered_amount {} bytes",
        ws.buffered_amount()
    );
    queued_tx.send(()).unwrap();
    let (evs, end) = events_until_close_or_end(&events);
    assert!(
        matches!(evs.as_slice(), [Event::Close(c)] if c.code == 1000 && c.was_clean),
        "{evs:?} ({end})"
    );
    drop(ws);
    let (pong_at, data) = server.join();
    assert_eq!(data, 1 + N, "every data message arrived");
    let pong_at = pong_at.expect("the ping was answered");
    eprintln!("pong after {pong_at} of {} data messages", 1 + N);
    assert!(
        pong_at < 200,
        "the pong came after {pong_at} of {} data messages (the plug, then {N}): it waited \
         behind the backlog",
        1 + N
    );
}
