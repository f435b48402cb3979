//! The fuzz harness, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by
//! `tests/fuzz_replay.rs` (through `#[path]`), so both run exactly the same checks.
//!
//! Three entry points, one per target:
//!
//! - [`after_handshake`]: a real server completes the opening handshake with
//!   `tungstenite::accept`, then writes the input raw to the socket (as frames, or not) and
//!   ends its side of the stream. The client must report it by the contract, and must agree
//!   with tungstenite itself reading the same bytes from memory (the *reference*).
//! - [`handshake_response`]: the server reads the client's request head and answers with
//!   the input. The client must end with a typed error from `connect` (or, if the input
//!   is a valid `101`, open and behave), within the handshake timeout, without a panic.
//!   `@ACCEPT@` in the input is replaced with the right `Sec-WebSocket-Accept` value, so the
//!   fuzzer can reach the successful handshake, and the frames that follow it in the same
//!   write, at all.
//! - [`after_deflate_handshake`]: the server answers the client's request with a valid
//!   `101` that negotiates permessage-deflate (parameters from the input's first byte),
//!   then writes the rest raw. The reference is [`deflate_reference`] (tungstenite's frame
//!   header parser, flate2's inflater); the server also checks what the client sent.
//!
//! Each returns `Err(violation)` when the client broke a rule; the fuzz targets panic with
//! it, the replay test fails with it. A panic on the client's I/O thread shows up as a
//! channel that disconnects before `Close` (and aborts the process under libFuzzer).
//!
//! Only `nwebsocket`, `tungstenite`, `std` and (for the deflate reference) `flate2`.

// Each fuzz target uses half of it. `ErrorResponse` is tungstenite's type, large or not.
#![allow(dead_code, clippy::result_large_err)]

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel::{RecvTimeoutError, TryRecvError};
use nwebsocket::{Builder, CloseEvent, Error, Event, Message, Timeout, WebSocket};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::{Role, WebSocketConfig};

/// The client's frame size limit: small, so that inputs of a few KiB reach it for real.
pub const MAX_FRAME: usize = 2 << 10;
/// The client's message size limit (several frames' worth, for fragmented messages).
pub const MAX_MESSAGE: usize = 4 << 10;

/// The client's size limits, and tungstenite's in the reference read.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_frame: usize,
    pub max_message: usize,
}

/// The fuzz targets' limits: [`MAX_FRAME`] and [`MAX_MESSAGE`].
pub const SMALL: Limits = Limits {
    max_frame: MAX_FRAME,
    max_message: MAX_MESSAGE,
};

/// Limits above the transport's large-frame size (16 KiB), so that large binary frames
/// take the path that reads them into buffers of their own (used by `tests/fuzz_replay.rs`
/// with inputs built for it; the fuzzers' inputs stay small).
pub const LARGE: Limits = Limits {
    max_frame: 64 << 10,
    max_message: 128 << 10,
};
/// The opening-handshake timeout in [`handshake_response`], where the input is the
/// response: nothing in it may make `connect` wait longer than about this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
/// The opening-handshake timeout in [`after_handshake`], where the handshake is a real,
/// correct one that the input cannot touch: generous, so a loaded machine does not make it
/// look like a finding.
const REAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The closing-handshake timeout.
pub const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// The whole life of one connection, from connect to `Close`: past this it hangs.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// `connect` must have returned by the handshake timeout plus this.
const CONNECT_SLACK: Duration = Duration::from_secs(3);
/// Read/write timeout of the server's socket, and how long it waits for the client.
const SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// The request header that tells this iteration's connection from a stale one.
const ID_HEADER: &str = "x-fuzz-id";
/// Replaced, in a handshake response input, by the right `Sec-WebSocket-Accept` value.
pub const ACCEPT_MARKER: &[u8] = b"@ACCEPT@";
/// The subprotocols the client offers in [`handshake_response`].
pub const OFFERED: [&str; 2] = ["chat", "superchat"];

/// How one input ended, for statistics and for tests that want to see variety.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// OPEN, then a closing handshake.
    Clean {
        /// Messages, pings and pongs delivered.
        delivered: usize,
        /// The close code.
        code: u16,
    },
    /// OPEN, then `Error` and `Close` 1006.
    Failed {
        /// Messages, pings and pongs delivered.
        delivered: usize,
        /// The error, as displayed.
        error: String,
    },
    /// `connect` returned this error (handshake response inputs only).
    Refused(String),
}

/// The one loopback listener of this process, and a counter to tag each connection.
struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    next_id: u64,
}

/// One iteration at a time: takes the process's listener (binds it the first time).
fn server() -> MutexGuard<'static, Server> {
    static SERVER: OnceLock<Mutex<Server>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            listener
                .set_nonblocking(true)
                .expect("a non-blocking listener");
            let addr = listener.local_addr().expect("the listener's address");
            Mutex::new(Server {
                listener,
                addr,
                next_id: 0,
            })
        })
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Accepts the next connection, bounded by [`SERVER_TIMEOUT`]; `None` if none came.
fn accept(listener: &TcpListener, deadline: Instant) -> Option<TcpStream> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let ok = stream.set_nonblocking(false).is_ok()
                    && stream.set_nodelay(true).is_ok()
                    && stream.set_read_timeout(Some(SERVER_TIMEOUT)).is_ok()
                    && stream.set_write_timeout(Some(SERVER_TIMEOUT)).is_ok();
                if ok {
                    return Some(stream);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                thread::sleep(Duration::from_micros(50));
            }
            Err(_) if Instant::now() >= deadline => return None,
            Err(_) => thread::sleep(Duration::from_micros(50)),
        }
    }
}

/// Writes `bytes` (for one input in four, in a few pieces with short pauses between, so the
/// client also sees frames cut across reads and readiness edges in the middle of them),
/// ends the server's side of the stream, and reads (discarding: the client's pongs, its
/// Close) until the client ends its side. Reading to the end matters: a socket closed with
/// unread data sends RST, and the client could lose what was sent.
fn write_and_drain(stream: &mut TcpStream, bytes: &[u8]) {
    write_and_capture(stream, bytes, 0);
}

/// [`write_and_drain`], keeping the first `keep` bytes the client sent meanwhile.
fn write_and_capture(stream: &mut TcpStream, bytes: &[u8], keep: usize) -> Vec<u8> {
    let mut pieces = pieces(bytes).into_iter().peekable();
    while let Some(piece) = pieces.next() {
        let _ = stream.write_all(piece);
        let _ = stream.flush();
        if pieces.peek().is_some() {
            thread::sleep(PAUSE);
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + SERVER_TIMEOUT;
    let mut buf = [0u8; 4096];
    let mut kept = Vec::new();
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = keep - kept.len().min(keep);
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    kept
}

/// The pause between the pieces of a cut-up write.
const PAUSE: Duration = Duration::from_micros(300);

/// How the server cuts `bytes` into writes: decided by a hash of the input, so that one
/// input is always sent the same way (up to the kernel's timing).
fn pieces(bytes: &[u8]) -> Vec<&[u8]> {
    // FNV-1a, then xorshift64 for the cut points.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    if hash % 4 != 0 || bytes.len() < 2 {
        return vec![bytes];
    }
    let mut x = hash | 1;
    let mut cuts: Vec<usize> = (0..1 + (hash >> 8) % 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + (x % (bytes.len() as u64 - 1)) as usize
        })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        out.push(&bytes[start..cut]);
        start = cut;
    }
    out.push(&bytes[start..]);
    out
}

/// The server of [`after_handshake`]: a real `tungstenite::accept` of this iteration's
/// connection, then the input, raw.
fn serve_after_handshake(listener: &TcpListener, id: &str, input: &[u8]) {
    let deadline = Instant::now() + SERVER_TIMEOUT;
    while let Some(stream) = accept(listener, deadline) {
        let ours = Cell::new(false);
        let check = |request: &Request, response: Response| {
            let tagged = request
                .headers()
                .get(ID_HEADER)
                .is_some_and(|v| v.as_bytes() == id.as_bytes());
            ours.set(tagged);
            if tagged {
                Ok(response)
            } else {
                let mut refused = ErrorResponse::new(Some("stale connection".into()));
                *refused.status_mut() = tungstenite::http::StatusCode::GONE;
                Err(refused)
            }
        };
        match tungstenite::accept_hdr(stream, check) {
            Ok(mut ws) => {
                write_and_drain(ws.get_mut(), input);
                return;
            }
            // Ours, and the handshake failed: the client will say why.
            Err(_) if ours.get() => return,
            // A connection left over from an earlier iteration: wait for ours.
            Err(_) => {}
        }
    }
}

/// The server of [`handshake_response`]: reads this iteration's request head, answers with
/// the input (with `@ACCEPT@` replaced).
fn serve_handshake_response(listener: &TcpListener, id: &str, input: &[u8]) {
    let deadline = Instant::now() + SERVER_TIMEOUT;
    while let Some(mut stream) = accept(listener, deadline) {
        let Some(head) = read_head(&mut stream) else {
            continue;
        };
        if header(&head, ID_HEADER).as_deref() != Some(id) {
            continue; // stale
        }
        let key = header(&head, "sec-websocket-key").unwrap_or_default();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let response = replace_all(input, ACCEPT_MARKER, accept.as_bytes());
        write_and_drain(&mut stream, &response);
        return;
    }
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`), at most 16 KiB.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return None;
        }
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    String::from_utf8(head).ok()
}

/// The value of a header in a request head (names compared without case).
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn replace_all(input: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

/// The client's settings: small limits, short timeouts, every event reported, nothing
/// that leaves the machine (no proxy from the environment, no redirects followed).
fn client(id: &str, handshake_timeout: Duration, limits: Limits) -> Builder {
    WebSocket::builder()
        .connect_timeout(Duration::from_secs(3))
        .handshake_timeout(handshake_timeout)
        .close_timeout(CLOSE_TIMEOUT)
        .max_frame_size(limits.max_frame)
        .max_message_size(limits.max_message)
        .incoming_queue(4) // small: the held-back-event path runs too
        .ping_events(true)
        .max_redirects(0)
        .no_proxy()
        .header(ID_HEADER, id)
}

/// Runs `client` against a server thread that runs `serve`, on this process's listener.
fn with_server<T>(
    input: &[u8],
    serve: fn(&TcpListener, &str, &[u8]),
    client: impl FnOnce(&str, &str) -> T,
) -> T {
    with_capturing_server(input, serve, client).0
}

/// [`with_server`] with a server that returns something (what the client sent), once the
/// client is done and the server has seen the end of the client's stream.
fn with_capturing_server<T, S: Default + Send>(
    input: &[u8],
    serve: fn(&TcpListener, &str, &[u8]) -> S,
    client: impl FnOnce(&str, &str) -> T,
) -> (T, S) {
    let mut server = server();
    server.next_id += 1;
    let id = format!("{}-{}", std::process::id(), server.next_id);
    let url = format!("ws://{}/fuzz", server.addr);
    let listener = &server.listener;
    thread::scope(|scope| {
        let id = id.as_str();
        let server = thread::Builder::new()
            .name("fuzz-server".into())
            .spawn_scoped(scope, move || serve(listener, id, input))
            .expect("spawn the server thread");
        let result = client(&url, id);
        let served = server.join().unwrap_or_default();
        (result, served)
    })
}

// -------------------------------------------------------------------------------------
// Target 1: arbitrary bytes after a valid handshake.
// -------------------------------------------------------------------------------------

/// Connects to a server that completes a real handshake and then sends `input` raw;
/// checks the events against the contract and against tungstenite reading `input` alone.
pub fn after_handshake(input: &[u8]) -> Result<Outcome, String> {
    after_handshake_with(input, SMALL)
}

/// [`after_handshake`] with the [`LARGE`] limits.
#[allow(dead_code)] // not used by the fuzz targets
pub fn after_handshake_large(input: &[u8]) -> Result<Outcome, String> {
    after_handshake_with(input, LARGE)
}

fn after_handshake_with(input: &[u8], limits: Limits) -> Result<Outcome, String> {
    with_server(input, serve_after_handshake, |url, id| {
        let started = Instant::now();
        let (ws, events) = client(id, REAL_HANDSHAKE_TIMEOUT, limits)
            .connect_pull(url)
            .map_err(|e| format!("connect failed after a valid handshake: {e:?}"))?;
        // The client talks too, while the input arrives: the write path (and a send that
        // races with the server's Close, refused or dropped with a warning) runs as well.
        // Either may fail once the connection is closing; neither may disturb the rest.
        let _ = ws.send("from the client");
        let _ = ws.ping(b"hb".to_vec());
        let seen = collect(ws, &events, started)?;
        check_open_sequence(&seen)?;
        compare_with_reference(input, &seen, limits)?;
        Ok(outcome(&seen))
    })
}

/// Takes every event until `Close`, drops the handle, and checks that the channel is
/// then over: no event after `Close`, no I/O thread left behind.
fn collect(
    ws: WebSocket,
    events: &nwebsocket::Events,
    started: Instant,
) -> Result<Vec<Event>, String> {
    let deadline = started + CONNECTION_DEADLINE;
    let mut seen = Vec::new();
    loop {
        match events.recv_deadline(deadline) {
            Ok(event) => {
                let last = matches!(event, Event::Close(_));
                seen.push(event);
                if last {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "no Close within {CONNECTION_DEADLINE:?} (state {:?}); events: {}",
                    ws.ready_state(),
                    show(&seen)
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "the event channel ended without a Close (did the I/O thread panic?); events: {}",
                    show(&seen)
                ));
            }
        }
    }
    // The last handle: closes, and joins the I/O thread within the close timeout.
    drop(ws);
    match events.try_recv() {
        Err(TryRecvError::Disconnected) => Ok(seen),
        Ok(event) => Err(format!(
            "an event after Close: {event:?}; events: {}",
            show(&seen)
        )),
        Err(TryRecvError::Empty) => Err(format!(
            "the I/O thread outlived the last handle; events: {}",
            show(&seen)
        )),
    }
}

/// The contract's shape of a connection that opened: `Open`; messages, pings and pongs;
/// at most one `Error`, right before `Close`; one `Close`, last, which is 1006 and unclean
/// exactly when an `Error` came.
fn check_open_sequence(seen: &[Event]) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{why}; events: {}", show(seen)));
    if !matches!(seen.first(), Some(Event::Open)) {
        return fail("the first event is not Open");
    }
    let Some(Event::Close(close)) = seen.last() else {
        return fail("the last event is not Close");
    };
    let body = &seen[1..seen.len() - 1];
    let (error, middle) = match body.split_last() {
        Some((Event::Error(e), rest)) => (Some(e), rest),
        _ => (None, body),
    };
    for event in middle {
        match event {
            Event::Message(_) | Event::Ping(_) | Event::Pong(_) => {}
            Event::Open => return fail("a second Open"),
            Event::Error(_) => return fail("an Error that Close does not follow at once"),
            Event::Close(_) => return fail("a Close that is not the last event"),
            _ => return fail("an unknown event"),
        }
    }
    check_close(error, close).or_else(|why| fail(&why))
}

/// `Error` ⇔ `Close` 1006 with `was_clean == false`.
fn check_close(error: Option<&Error>, close: &CloseEvent) -> Result<(), String> {
    match (error.is_some(), close.was_clean, close.code) {
        (true, false, 1006) => Ok(()),
        (true, _, _) => Err("an Error, then a Close that is not 1006/unclean".into()),
        (false, false, _) => Err("an unclean Close without an Error".into()),
        (false, true, 1006) => Err("a clean Close with code 1006".into()),
        (false, true, _) => Ok(()),
    }
}

fn outcome(seen: &[Event]) -> Outcome {
    let delivered = seen
        .iter()
        .filter(|e| matches!(e, Event::Message(_) | Event::Ping(_) | Event::Pong(_)))
        .count();
    let error = seen.iter().find_map(|e| match e {
        Event::Error(e) => Some(e.to_string()),
        _ => None,
    });
    match (error, seen.last()) {
        (Some(error), _) => Outcome::Failed { delivered, error },
        (None, Some(Event::Close(c))) => Outcome::Clean {
            delivered,
            code: c.code,
        },
        (None, _) => Outcome::Failed {
            delivered,
            error: "no Close".into(),
        },
    }
}

/// What tungstenite itself makes of `input`, read from memory as a client with the same
/// limits: every message/ping/pong in order, then how it ended.
struct Reference {
    delivered: Vec<Delivered>,
    end: Result<Option<(u16, String)>, tungstenite::Error>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Delivered {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

/// The input to read, and a sink for what the client writes back (pongs, Close).
struct Memory<'a> {
    input: &'a [u8],
}

impl Read for Memory<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Memory<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the contract departs from tungstenite's reading (RFC 6455 §5.2, as browsers do):
/// a frame whose length is not in its shortest form fails the connection, as soon as its
/// header is there. The offset of the first such header in `input`, walking whole frames
/// from the start (one within the frame limit and unmasked: a larger or masked one fails
/// for that first).
fn first_long_length(input: &[u8], limits: Limits) -> Option<usize> {
    use tungstenite::protocol::frame::FrameHeader;
    let mut at = 0;
    loop {
        let mut cursor = io::Cursor::new(&input[at..]);
        let (header, len) = FrameHeader::parse(&mut cursor).ok()??;
        let head = cursor.position() as usize;
        let long = (head == 4 && len < 126) || (head == 10 && len <= 0xFFFF);
        if long && header.mask.is_none() && len as usize <= limits.max_frame {
            return Some(at);
        }
        at = at
            .checked_add(head)?
            .checked_add(usize::try_from(len).ok()?)?;
        if at >= input.len() {
            return None;
        }
    }
}

fn reference(input: &[u8], limits: Limits) -> Reference {
    // The stream as read up to such a frame, which then ends it as a protocol error.
    let input = &input[..first_long_length(input, limits).unwrap_or(input.len())];
    let config = WebSocketConfig::default()
        .max_frame_size(Some(limits.max_frame))
        .max_message_size(Some(limits.max_message));
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(Memory { input }, Role::Client, Some(config));
    let mut delivered = Vec::new();
    let end = loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => delivered.push(Delivered::Text(t.as_str().into())),
            Ok(tungstenite::Message::Binary(b)) => delivered.push(Delivered::Binary(b.to_vec())),
            Ok(tungstenite::Message::Ping(p)) => delivered.push(Delivered::Ping(p.to_vec())),
            Ok(tungstenite::Message::Pong(p)) => delivered.push(Delivered::Pong(p.to_vec())),
            Ok(tungstenite::Message::Close(frame)) => {
                let close = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_owned())
                });
                // Where the contract departs from tungstenite's reading (RFC 6455 §7.1.7 and
                // §1.4, as browsers do): a Close with an invalid code fails the connection
                // (tungstenite instead returns its own reply, 1002 "Protocol violation"),
                // and whatever follows the server's Close is discarded.
                if close == (1002, "Protocol violation".to_owned()) {
                    break Err(tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::InvalidCloseSequence,
                    ));
                }
                break Ok(Some(close));
            }
            Ok(tungstenite::Message::Frame(_)) => {}
            Err(tungstenite::Error::ConnectionClosed) => break Ok(None),
            Err(e) => break Err(e),
        }
    };
    Reference { delivered, end }
}

fn delivered(event: &Event) -> Option<Delivered> {
    match event {
        Event::Message(Message::Text(t)) => Some(Delivered::Text(t.as_str().into())),
        Event::Message(Message::Binary(b)) => Some(Delivered::Binary(b.to_vec())),
        Event::Ping(p) => Some(Delivered::Ping(p.to_vec())),
        Event::Pong(p) => Some(Delivered::Pong(p.to_vec())),
        _ => None,
    }
}

/// Where two readings part: the first index at which they differ, or where the shorter
/// one ends.
fn first_difference<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Rule 3 (every complete message delivered once, in order), rule 6 (the server's code and
/// reason), rule 4 (a failure is an `Error`, of the right kind), against the reference.
fn compare_with_reference(input: &[u8], seen: &[Event], limits: Limits) -> Result<(), String> {
    let expected = reference(input, limits);
    let got: Vec<Delivered> = seen.iter().filter_map(delivered).collect();
    if got != expected.delivered {
        let first = first_difference(&got, &expected.delivered);
        return Err(format!(
            "delivered {} messages/pings/pongs, tungstenite reads {}; first difference at #{first}: {:?} vs {:?}",
            got.len(),
            expected.delivered.len(),
            got.get(first),
            expected.delivered.get(first),
        ));
    }
    let error = seen.iter().find_map(|e| match e {
        Event::Error(e) => Some(e),
        _ => None,
    });
    let Some(Event::Close(close)) = seen.last() else {
        return Err("no Close".into());
    };
    match (&expected.end, error) {
        (Ok(Some((code, reason))), None) => {
            if (close.code, close.reason.as_str()) != (*code, reason.as_str()) || !close.was_clean {
                return Err(format!(
                    "closed with {close:?}, the server's Close was {code} {reason:?}"
                ));
            }
        }
        (Ok(None), None) => {
            return Err(format!(
                "a clean {close:?}, but tungstenite saw no Close frame"
            ))
        }
        (Ok(_), Some(e)) => {
            return Err(format!(
                "failed with {e:?}, but tungstenite reads a clean closing handshake: {:?}",
                expected.end
            ))
        }
        (Err(want), None) => {
            return Err(format!(
                "no Error ({close:?}), but tungstenite fails with {want:?}"
            ))
        }
        (Err(want), Some(got)) => {
            if !same_kind(want, got) {
                return Err(format!("failed with {got:?}, tungstenite with {want:?}"));
            }
        }
    }
    Ok(())
}

/// Whether the crate's error is the kind that tungstenite's error maps to.
fn same_kind(want: &tungstenite::Error, got: &Error) -> bool {
    use tungstenite::error::ProtocolError;
    match want {
        // RFC 6455 §5.2: a 64-bit length with its top bit set is a protocol error.
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
            size,
            ..
        }) if *size > i64::MAX as usize => matches!(got, Error::Protocol { .. }),
        tungstenite::Error::Capacity(_) => matches!(got, Error::Capacity { .. }),
        // The stream ended inside a frame. tungstenite checks a frame only once its payload
        // is all there; the crate checks the header as soon as it is, so a bad header
        // before the end is a protocol error there.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            matches!(got, Error::Io(_) | Error::Protocol { .. })
        }
        tungstenite::Error::Protocol(_)
        | tungstenite::Error::Utf8(_)
        | tungstenite::Error::AttackAttempt => matches!(got, Error::Protocol { .. }),
        _ => true,
    }
}

// -------------------------------------------------------------------------------------
// Target 2: arbitrary handshake responses.
// -------------------------------------------------------------------------------------

/// Connects to a server that answers the opening handshake with `input` (`@ACCEPT@`
/// replaced), twice: with `connect_pull` (a typed `Err`, in time, or an open connection
/// that behaves) and with `open_pull` (the same story told as events: `Error` then one
/// `Close` 1006, or `Open` first).
pub fn handshake_response(input: &[u8]) -> Result<Outcome, String> {
    let first = with_server(input, serve_handshake_response, connect_blocking)?;
    let second = with_server(input, serve_handshake_response, connect_browser_style)?;
    let agree = match (&first, &second) {
        (Outcome::Refused(a), Outcome::Refused(b)) => kind(a) == kind(b),
        (Outcome::Refused(_), _) | (_, Outcome::Refused(_)) => false,
        _ => true,
    };
    if !agree {
        return Err(format!(
            "the same response gave {first:?} from connect_pull and {second:?} from open_pull"
        ));
    }
    Ok(first)
}

fn offering(id: &str) -> Builder {
    OFFERED
        .iter()
        .fold(client(id, HANDSHAKE_TIMEOUT, SMALL), |b, p| {
            b.subprotocol(*p)
        })
}

fn connect_blocking(url: &str, id: &str) -> Result<Outcome, String> {
    let started = Instant::now();
    let result = offering(id).connect_pull(url);
    let took = started.elapsed();
    if took > HANDSHAKE_TIMEOUT + CONNECT_SLACK {
        return Err(format!(
            "connect took {took:?}, the handshake timeout is {HANDSHAKE_TIMEOUT:?}: {result:?}"
        ));
    }
    match result {
        Err(e) => {
            check_handshake_error(&e)?;
            Ok(Outcome::Refused(describe(&e)))
        }
        Ok((ws, events)) => {
            check_opened(&ws)?;
            let seen = collect(ws, &events, started)?;
            check_open_sequence(&seen)?;
            Ok(outcome(&seen))
        }
    }
}

fn connect_browser_style(url: &str, id: &str) -> Result<Outcome, String> {
    let started = Instant::now();
    let (ws, events) = offering(id)
        .open_pull(url)
        .map_err(|e| format!("open_pull refused a valid URL: {e:?}"))?;
    // The first event says how the handshake went; the handle is looked at before the rest.
    let first = match events.recv_deadline(started + CONNECTION_DEADLINE) {
        Ok(Event::Open) => {
            check_opened(&ws)?;
            Event::Open
        }
        Ok(event @ Event::Error(_)) => event,
        Ok(other) => return Err(format!("the first event is {other:?}")),
        Err(e) => return Err(format!("no first event: {e:?}")),
    };
    let opened = matches!(first, Event::Open);
    let mut seen = vec![first];
    seen.extend(collect(ws, &events, started)?);
    if opened {
        check_open_sequence(&seen)?;
        return Ok(outcome(&seen));
    }
    let took = started.elapsed();
    if took > HANDSHAKE_TIMEOUT + CONNECT_SLACK {
        return Err(format!("the handshake failure took {took:?} to report"));
    }
    match seen.as_slice() {
        [Event::Error(e), Event::Close(close)] => {
            check_handshake_error(e)?;
            check_close(Some(e), close)?;
            Ok(Outcome::Refused(describe(e)))
        }
        _ => Err(format!(
            "a failed handshake must give Error then Close, and nothing else: {}",
            show(&seen)
        )),
    }
}

/// After a successful handshake: one of the offered subprotocols (tungstenite insists on
/// one when some were offered), and no extension but the permessage-deflate offered by
/// default.
fn check_opened(ws: &WebSocket) -> Result<(), String> {
    let protocol = ws.protocol();
    if !OFFERED.contains(&protocol.as_str()) {
        return Err(format!("opened with protocol {protocol:?}"));
    }
    let ext = ws.extensions();
    if !ext.is_empty() && !ext.starts_with("permessage-deflate") {
        return Err(format!("opened with extensions {ext:?}"));
    }
    Ok(())
}

/// The errors a bad handshake response may give.
fn check_handshake_error(e: &Error) -> Result<(), String> {
    match e {
        Error::Handshake { .. }
        | Error::HandshakeRejected { .. }
        | Error::TooManyRedirects { .. }
        | Error::Timeout(Timeout::Handshake)
        | Error::Io(_) => Ok(()),
        other => Err(format!("a bad handshake response gave {other:?}")),
    }
}

fn describe(e: &Error) -> String {
    format!("{}: {e}", kind_of(e))
}

fn kind_of(e: &Error) -> &'static str {
    match e {
        Error::Handshake { .. } => "Handshake",
        Error::HandshakeRejected { .. } => "HandshakeRejected",
        Error::TooManyRedirects { .. } => "TooManyRedirects",
        Error::Timeout(_) => "Timeout",
        Error::Io(_) => "Io",
        _ => "other",
    }
}

fn kind(described: &str) -> &str {
    described.split(':').next().unwrap_or_default()
}

fn show(events: &[Event]) -> String {
    const SHOWN: usize = 12;
    let mut out: Vec<String> = events
        .iter()
        .take(SHOWN)
        .map(|e| format!("{e:?}"))
        .collect();
    if events.len() > SHOWN {
        out.push(format!("… {} more", events.len() - SHOWN));
    }
    format!("[{}]", out.join(", "))
}

// -------------------------------------------------------------------------------------
// Target 3: arbitrary bytes after a handshake that negotiated permessage-deflate.
// -------------------------------------------------------------------------------------

/// The limits of [`after_deflate_handshake`]: frames of 16 KiB and up (the transport's
/// large-frame size) are allowed, so that a large compressed frame is inflated as it
/// arrives (`Reader::inflate_arrived`) as well as whole; messages are limited after
/// inflating, so a few compressed bytes reach the message limit.
pub const DEFLATE: Limits = Limits {
    max_frame: 20 << 10,
    max_message: 24 << 10,
};

/// What the server of [`after_deflate_handshake`] answers to the client's offer
/// (`permessage-deflate; client_max_window_bits`), from the input's first byte:
/// bit 0 `server_no_context_takeover`, bit 1 `client_no_context_takeover`, bits 2–4
/// `server_max_window_bits` (0: not sent, k: 8 + k, so 9 to 15), bits 5–7 the same for
/// `client_max_window_bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateChoice {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    pub client_max_window_bits: Option<u8>,
}

impl DeflateChoice {
    pub fn from_byte(b: u8) -> Self {
        let bits = |k: u8| (k != 0).then_some(8 + k);
        DeflateChoice {
            server_no_context_takeover: b & 1 != 0,
            client_no_context_takeover: b & 2 != 0,
            server_max_window_bits: bits((b >> 2) & 7),
            client_max_window_bits: bits(b >> 5),
        }
    }

    /// The `Sec-WebSocket-Extensions` answer.
    pub fn answer(&self) -> String {
        let mut answer = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            answer.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        if let Some(bits) = self.client_max_window_bits {
            answer.push_str(&format!("; client_max_window_bits={bits}"));
        }
        answer
    }

    fn server_window(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(15)
    }

    fn client_window(&self) -> u8 {
        self.client_max_window_bits.unwrap_or(15)
    }
}

/// The messages the client sends in [`after_deflate_handshake`], racing the input: a
/// short one (below the compression threshold: sent as it is) and twice a long one
/// (compressed, the second with context takeover referring back to the first, further
/// back than a small window allows).
fn client_messages() -> [String; 3] {
    let long: String = (0..90)
        .map(|i| format!("{i:03}: the client's message, compressed; "))
        .collect();
    ["from the client".to_owned(), long.clone(), long]
}

/// Connects to a server that answers the client's real request with a `101` that
/// negotiates permessage-deflate (parameters from `input[0]`, see [`DeflateChoice`]),
/// then sends the rest of `input` raw and ends the stream. Checks the event sequence,
/// compares with the reference reading of the same bytes ([`deflate_reference`]), and
/// reads what the client sent: masked frames, its compressed messages inflating to what
/// it sent within the window it agreed to, and a Close with the code its error calls for.
pub fn after_deflate_handshake(input: &[u8]) -> Result<Outcome, String> {
    let choice = DeflateChoice::from_byte(input.first().copied().unwrap_or(0));
    let frames = input.get(1..).unwrap_or_default();
    let (seen, sent) = with_capturing_server(input, serve_after_deflate_handshake, |url, id| {
        let started = Instant::now();
        let (ws, events) = client(id, REAL_HANDSHAKE_TIMEOUT, DEFLATE)
            .connect_pull(url)
            .map_err(|e| format!("connect failed after a valid deflate handshake: {e:?}"))?;
        if ws.extensions() != choice.answer() {
            return Err(format!(
                "opened with extensions {:?}, the server answered {:?}",
                ws.extensions(),
                choice.answer()
            ));
        }
        for m in client_messages() {
            let _ = ws.send(m);
        }
        let _ = ws.ping(b"hb".to_vec());
        collect(ws, &events, started)
    });
    let seen = seen?;
    check_open_sequence(&seen)?;
    compare_with_deflate_reference(frames, &choice, &seen)?;
    check_client_side(&sent, &choice, &seen)?;
    Ok(outcome(&seen))
}

/// The server of [`after_deflate_handshake`]: reads this iteration's request, answers
/// `101` with the extension chosen by `input[0]`, writes the rest raw (cut in pieces for
/// one input in four), and returns what the client sent.
fn serve_after_deflate_handshake(listener: &TcpListener, id: &str, input: &[u8]) -> Vec<u8> {
    let choice = DeflateChoice::from_byte(input.first().copied().unwrap_or(0));
    let deadline = Instant::now() + SERVER_TIMEOUT;
    while let Some(mut stream) = accept(listener, deadline) {
        let Some(head) = read_head(&mut stream) else {
            continue;
        };
        if header(&head, ID_HEADER).as_deref() != Some(id) {
            continue; // stale
        }
        let key = header(&head, "sec-websocket-key").unwrap_or_default();
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: {}\r\n\r\n",
            tungstenite::handshake::derive_accept_key(key.as_bytes()),
            choice.answer()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return Vec::new();
        }
        return write_and_capture(&mut stream, input.get(1..).unwrap_or_default(), 1 << 20);
    }
    Vec::new()
}

/// The kinds of failure the reference tells apart, as the client reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Error::Protocol` of kind `Frame`: RFC 6455 or RFC 7692 §6.1 broken (1002).
    Frame,
    /// `Error::Protocol` of kind `Utf8`: a text message or close reason (1007).
    Utf8,
    /// `Error::Protocol` of kind `Compression`: a message that does not inflate (1007).
    Compression,
    /// `Error::Capacity`: past a limit, a compressed message's after inflating (1009).
    Capacity,
    /// `Error::Io`: the stream ended without a closing handshake (no Close sent).
    Io,
}

impl Kind {
    fn of(e: &Error) -> Option<Kind> {
        use nwebsocket::ProtocolErrorKind as P;
        match e {
            Error::Protocol { kind, .. } => match kind {
                P::Frame => Some(Kind::Frame),
                P::Utf8 => Some(Kind::Utf8),
                P::Compression => Some(Kind::Compression),
                _ => None,
            },
            Error::Capacity { .. } => Some(Kind::Capacity),
            Error::Io(_) => Some(Kind::Io),
            _ => None,
        }
    }

    /// The code of the Close the client must send for this kind of failure
    /// (`docs/CONTRACT.md`, `ProtocolErrorKind`): RFC 7692 names none for data that does
    /// not inflate; the crate uses 1007, as for invalid UTF-8 ("data inconsistent with
    /// the type of the message").
    fn close_code(self) -> Option<u16> {
        match self {
            Kind::Frame => Some(1002),
            Kind::Utf8 | Kind::Compression => Some(1007),
            Kind::Capacity => Some(1009),
            Kind::Io => None,
        }
    }
}

/// How the reference reading ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeflateEnd {
    /// The server's Close: code (1005 for none) and reason.
    Closed(u16, String),
    /// A failure, of any of these kinds (more than one where the rules allow it).
    Failed(Vec<Kind>),
}

/// What the reference makes of the bytes after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateReference {
    delivered: Vec<Delivered>,
    pub end: DeflateEnd,
}

struct RefPartial {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
}

/// Whether `data` has an invalid UTF-8 sequence (not just an incomplete one at its end).
fn invalid_utf8(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_err_and(|e| e.error_len().is_some())
}

/// Inflates `input` onto `out` (no more than `limit` bytes: past it, `Capacity`) with
/// output steps of at most `step` bytes. A final block (BFINAL) ends the raw deflate
/// stream; what follows starts a new one with an empty window (RFC 7692 §7.2.3 has a
/// message end in a BFINAL block then an empty stored block's header).
///
/// With `step == 1` the window is held exactly: zlib lets a match reach back into what
/// the same call wrote as well as into its window, so with larger steps a match further
/// back than the window may pass or not depending on how the output is cut.
fn ref_inflate(
    d: &mut flate2::Decompress,
    bits: u8,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
    step: usize,
) -> Result<(), Kind> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut buf = [0u8; 4096];
    loop {
        let room = (limit + 1 - out.len().min(limit + 1))
            .clamp(1, buf.len())
            .min(step);
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let result = d.decompress(input, &mut buf[..room], FlushDecompress::Sync);
        let used = (d.total_in() - before_in) as usize;
        let made = (d.total_out() - before_out) as usize;
        input = &input[used..];
        // What inflated before an error counts too (for the UTF-8 rule).
        out.extend_from_slice(&buf[..made]);
        if out.len() > limit {
            return Err(Kind::Capacity);
        }
        let status = result.map_err(|_| Kind::Compression)?;
        if status == Status::StreamEnd {
            *d = Decompress::new_with_window_bits(false, bits);
        } else if used == 0 && made == 0 {
            // zlib needs more input (all of it is in) or can make no progress.
            return if input.is_empty() {
                Ok(())
            } else {
                Err(Kind::Compression)
            };
        }
        if input.is_empty() && made < room {
            return Ok(());
        }
    }
}

/// The reference reading of `input` (the bytes after the handshake) with the deflate
/// parameters of `choice`, inflating with a window of `2^bits` in output steps of `step`
/// bytes (see [`ref_inflate`]), under the [`DEFLATE`] limits. tungstenite's frame codec
/// parses the headers; the rules are RFC 6455, RFC 7692 and the contract's:
///
/// - a header is checked as soon as it is all there, the size first (then: masked, length
///   not in its shortest form, RSV2/RSV3, RSV1 on a control or continuation frame,
///   reserved opcode, fragmented or oversized control frame, continuation without a
///   message, a new message inside a fragmented one, and an uncompressed message past the
///   message limit): `Frame`, or `Capacity` for the limits;
/// - a compressed message is inflated frame by frame, the trailer `00 00 ff ff` appended
///   after its last frame, and held to the message limit as it inflates (`Capacity`);
///   data that does not inflate is `Compression`; without `server_no_context_takeover` the
///   window carries over to the next message;
/// - text is checked as each frame of a fragmented message comes (an invalid sequence
///   fails at that frame) and whole at the end (`Utf8`);
/// - the server's Close: an allowed code and a UTF-8 reason (else `Frame`, `Utf8`); what
///   follows it is not read;
/// - the stream ending without a Close: `Io`.
///
/// Where the client may legitimately report another kind, both are accepted:
///
/// - a compressed message that fails to inflate or goes past the limit may fail with
///   `Utf8` instead if what inflated of it before that point is invalid text (the client
///   checks text as each read of a large frame arrives);
/// - a compressed frame cut by the end of the stream may fail with what inflating the
///   part that came gives (`Compression`, `Capacity`, `Utf8`) instead of `Io` (the client
///   inflates a large frame as it arrives).
pub fn deflate_reference(
    input: &[u8],
    choice: &DeflateChoice,
    bits: u8,
    step: usize,
) -> DeflateReference {
    use flate2::Decompress;
    use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;
    const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
    let limits = DEFLATE;
    let mut delivered = Vec::new();
    let mut partial: Option<RefPartial> = None;
    let mut d = Decompress::new_with_window_bits(false, bits);
    let mut at = 0;
    let fail = |kinds: &[Kind]| DeflateEnd::Failed(kinds.to_vec());
    let end = loop {
        let rest = &input[at..];
        let mut cursor = io::Cursor::new(rest);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Err(_) => break fail(&[Kind::Frame]),
            Ok(None) => break fail(&[Kind::Io]),
            Ok(Some(parsed)) => parsed,
        };
        let head = cursor.position() as usize;
        if len > i64::MAX as u64 {
            break fail(&[Kind::Frame]);
        }
        if len > limits.max_frame as u64 {
            break fail(&[Kind::Capacity]);
        }
        let short_form = match head {
            4 => len >= 126,
            10 => len > 0xFFFF,
            _ => true,
        };
        let len = len as usize;
        let control = matches!(header.opcode, OpCode::Control(_));
        let continuation = header.opcode == OpCode::Data(Data::Continue);
        if header.mask.is_some()
            || !short_form
            || header.rsv2
            || header.rsv3
            || (header.rsv1 && (control || continuation))
        {
            break fail(&[Kind::Frame]);
        }
        let data = match header.opcode {
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                break fail(&[Kind::Frame])
            }
            OpCode::Control(_) if !header.is_final || len > 125 => break fail(&[Kind::Frame]),
            OpCode::Control(_) => None,
            OpCode::Data(Data::Continue) if partial.is_none() => break fail(&[Kind::Frame]),
            OpCode::Data(Data::Text | Data::Binary) if partial.is_some() => {
                break fail(&[Kind::Frame])
            }
            OpCode::Data(data) => Some(data),
        };
        let compressed = header.rsv1 || partial.as_ref().is_some_and(|p| p.compressed);
        if data.is_some() && !compressed {
            let so_far = partial.as_ref().map_or(0, |p| p.data.len());
            if so_far + len > limits.max_message {
                break fail(&[Kind::Capacity]);
            }
        }
        let new_partial = |data: Option<Data>| RefPartial {
            text: data == Some(Data::Text),
            compressed,
            data: Vec::new(),
        };
        let Some(payload) = rest.get(head..head + len) else {
            // Cut by the end of the stream.
            let mut kinds = vec![Kind::Io];
            if data.is_some() && compressed {
                let p = partial.get_or_insert_with(|| new_partial(data));
                let arrived = &rest[head..];
                if let Err(kind) =
                    ref_inflate(&mut d, bits, arrived, &mut p.data, limits.max_message, step)
                {
                    kinds.push(kind);
                }
                if p.text && invalid_utf8(&p.data) {
                    kinds.push(Kind::Utf8);
                }
            } else if data.is_some() {
                // Uncompressed text is checked as it arrives (RFC 6455 §8.1): invalid
                // bytes before the cut may fail it first.
                let text = partial
                    .as_ref()
                    .map_or(data == Some(Data::Text), |p| p.text);
                let so_far = partial.as_ref().map_or(&[][..], |p| &p.data[..]);
                if text && invalid_utf8(&[so_far, &rest[head..]].concat()) {
                    kinds.push(Kind::Utf8);
                }
            }
            break DeflateEnd::Failed(kinds);
        };
        at += head + len;
        let Some(data) = data else {
            match header.opcode {
                OpCode::Control(Control::Ping) => delivered.push(Delivered::Ping(payload.to_vec())),
                OpCode::Control(Control::Pong) => delivered.push(Delivered::Pong(payload.to_vec())),
                _ => {
                    break match payload {
                        [] => DeflateEnd::Closed(1005, String::new()),
                        [_] => fail(&[Kind::Frame]),
                        [hi, lo, reason @ ..] => {
                            let code = u16::from_be_bytes([*hi, *lo]);
                            match std::str::from_utf8(reason) {
                                _ if !CloseCode::from(code).is_allowed() => fail(&[Kind::Frame]),
                                Ok(reason) => DeflateEnd::Closed(code, reason.to_owned()),
                                Err(_) => fail(&[Kind::Utf8]),
                            }
                        }
                    }
                }
            }
            continue;
        };
        let mut p = partial.take().unwrap_or_else(|| new_partial(Some(data)));
        if compressed {
            let mut inflated =
                ref_inflate(&mut d, bits, payload, &mut p.data, limits.max_message, step);
            if header.is_final && inflated.is_ok() {
                inflated = ref_inflate(
                    &mut d,
                    bits,
                    &TRAILER,
                    &mut p.data,
                    limits.max_message,
                    step,
                );
            }
            if let Err(kind) = inflated {
                let mut kinds = vec![kind];
                if p.text && invalid_utf8(&p.data) {
                    kinds.push(Kind::Utf8);
                }
                break DeflateEnd::Failed(kinds);
            }
            if header.is_final && choice.server_no_context_takeover {
                d = Decompress::new_with_window_bits(false, bits);
            }
        } else {
            p.data.extend_from_slice(payload);
        }
        if p.text && invalid_utf8(&p.data) {
            break fail(&[Kind::Utf8]);
        }
        if !header.is_final {
            partial = Some(p);
            continue;
        }
        if !p.text {
            delivered.push(Delivered::Binary(p.data));
            continue;
        }
        match String::from_utf8(p.data) {
            Ok(text) => delivered.push(Delivered::Text(text)),
            Err(_) => break fail(&[Kind::Utf8]),
        }
    };
    DeflateReference { delivered, end }
}

/// Compares the client's events with the reference. The reference inflates with a
/// 2^15 window, which reads any data a server that keeps to a smaller window sends, and
/// reads it the same however the output is cut. A server that reaches back further than
/// the window it agreed to breaks RFC 7692 §7.1.2.1: when the strict reading (the agreed
/// window, held exactly) fails where the 2^15 one does not, the client may read on as
/// with 2^15 or fail with `Compression` at that message or a later one (zlib, with the
/// agreed window, fails such a match or not depending on how the output is cut).
fn compare_with_deflate_reference(
    input: &[u8],
    choice: &DeflateChoice,
    seen: &[Event],
) -> Result<(), String> {
    let wide = deflate_reference(input, choice, 15, usize::MAX);
    let got: Vec<Delivered> = seen.iter().filter_map(delivered).collect();
    let error = seen.iter().find_map(|e| match e {
        Event::Error(e) => Some(e),
        _ => None,
    });
    let Some(Event::Close(close)) = seen.last() else {
        return Err("no Close".into());
    };
    let verdict = against_reference(&wide, &got, error, close);
    if verdict.is_ok() || choice.server_window() == 15 {
        return verdict;
    }
    let strict = deflate_reference(input, choice, choice.server_window(), 1);
    if strict == wide {
        return verdict;
    }
    let window_failure =
        matches!(&strict.end, DeflateEnd::Failed(k) if k.contains(&Kind::Compression));
    let failed_with_compression = error.and_then(Kind::of) == Some(Kind::Compression);
    if window_failure
        && failed_with_compression
        && got.len() >= strict.delivered.len()
        && wide.delivered.starts_with(&got)
    {
        return Ok(());
    }
    verdict.map_err(|e| format!("{e} (reading with the agreed window: {strict:?})"))
}

fn against_reference(
    expected: &DeflateReference,
    got: &[Delivered],
    error: Option<&Error>,
    close: &CloseEvent,
) -> Result<(), String> {
    if got != expected.delivered {
        let first = first_difference(got, &expected.delivered);
        return Err(format!(
            "delivered {} messages/pings/pongs, the reference reads {}; first difference at #{first}: {:?} vs {:?} (reference end: {:?})",
            got.len(),
            expected.delivered.len(),
            got.get(first).map(brief),
            expected.delivered.get(first).map(brief),
            expected.end,
        ));
    }
    match (&expected.end, error) {
        (DeflateEnd::Closed(code, reason), None) => {
            if (close.code, close.reason.as_str()) != (*code, reason.as_str()) || !close.was_clean {
                return Err(format!(
                    "closed with {close:?}, the server's Close was {code} {reason:?}"
                ));
            }
        }
        (DeflateEnd::Closed(..), Some(e)) => {
            return Err(format!(
                "failed with {e:?}, but the reference reads a clean closing handshake: {:?}",
                expected.end
            ))
        }
        (DeflateEnd::Failed(kinds), None) => {
            return Err(format!(
                "no Error ({close:?}), but the reference fails with {kinds:?}"
            ))
        }
        (DeflateEnd::Failed(kinds), Some(e)) => {
            if !Kind::of(e).is_some_and(|k| kinds.contains(&k)) {
                return Err(format!("failed with {e:?}, the reference with {kinds:?}"));
            }
        }
    }
    Ok(())
}

/// A delivered item, shortened for a message.
fn brief(d: &Delivered) -> String {
    let s = format!("{d:?}");
    if s.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}… ({} chars)", &s[..cut], s.len())
    } else {
        s
    }
}

/// What the client sent, as the server read it: every frame masked, no RSV2/RSV3, its
/// messages (compressed ones inflating, with the window it agreed to held exactly) among
/// those it was asked to send, in order; and when it failed the connection for a reason
/// other than the stream's end, a Close with the code for that kind of failure.
fn check_client_side(sent: &[u8], choice: &DeflateChoice, seen: &[Event]) -> Result<(), String> {
    use flate2::Decompress;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;
    let bits = choice.client_window();
    let mut d = Decompress::new_with_window_bits(false, bits);
    let expected = client_messages();
    let mut next_expected = 0;
    let mut message: Option<(bool, Vec<u8>)> = None;
    let mut close_code = None;
    let mut at = 0;
    while close_code.is_none() {
        let mut cursor = io::Cursor::new(&sent[at..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(e) => return Err(format!("the client sent a frame that does not parse: {e}")),
        };
        let head = cursor.position() as usize;
        let Some(mut payload) = sent
            .get(at + head..at + head + len as usize)
            .map(<[u8]>::to_vec)
        else {
            break;
        };
        at += head + len as usize;
        let Some(mask) = header.mask else {
            return Err("the client sent an unmasked frame".into());
        };
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        if header.rsv2 || header.rsv3 {
            return Err("the client set RSV2/RSV3".into());
        }
        match header.opcode {
            OpCode::Control(Control::Close) => {
                close_code = Some(match payload[..] {
                    [hi, lo, ..] => u16::from_be_bytes([hi, lo]),
                    _ => 1005,
                });
            }
            OpCode::Control(_) => {}
            OpCode::Data(data) => {
                let (compressed, mut body) = match (data, message.take()) {
                    (Data::Continue, Some(m)) => m,
                    (Data::Text | Data::Binary, None) => (header.rsv1, Vec::new()),
                    _ => return Err(format!("the client sent a stray {:?} frame", header.opcode)),
                };
                if compressed {
                    let mut inflated = ref_inflate(&mut d, bits, &payload, &mut body, 1 << 20, 1);
                    if header.is_final && inflated.is_ok() {
                        inflated =
                            ref_inflate(&mut d, bits, &[0, 0, 0xff, 0xff], &mut body, 1 << 20, 1);
                    }
                    if let Err(kind) = inflated {
                        return Err(format!(
                            "a compressed message from the client does not inflate with the agreed window of 2^{bits}: {kind:?}"
                        ));
                    }
                    if header.is_final && choice.client_no_context_takeover {
                        d = Decompress::new_with_window_bits(false, bits);
                    }
                } else {
                    body.extend_from_slice(&payload);
                }
                if !header.is_final {
                    message = Some((compressed, body));
                    continue;
                }
                let Some(i) = expected[next_expected..]
                    .iter()
                    .position(|m| m.as_bytes() == body)
                else {
                    return Err(format!(
                        "the client sent a message it was not asked to, or out of order: {:?}",
                        String::from_utf8_lossy(&body[..body.len().min(100)])
                    ));
                };
                next_expected += i + 1;
            }
        }
    }
    let error = seen.iter().find_map(|e| match e {
        Event::Error(e) => Some(e),
        _ => None,
    });
    if let Some(want) = error.and_then(Kind::of).and_then(Kind::close_code) {
        if close_code != Some(want) {
            return Err(format!(
                "failed with {error:?}, which closes with {want}; the client's Close: {close_code:?}"
            ));
        }
    }
    Ok(())
}
