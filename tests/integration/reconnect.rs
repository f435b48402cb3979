//! Reconnect (issue 4): backoff that grows, an attempt limit that holds, one `onopen` and
//! one `onclose` per connection, no thread piling up across 50 reconnects, `close()` ending
//! it, sends in between handed back, and the clean-close rule.
//!
//! Also home of [`multi_server`], a raw server that accepts several connections in turn
//! (used by the redirect tests too).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel::{self, Receiver, RecvTimeoutError};
use nwebsocket::{Error, Event, Message, ReadyState, Reconnect, SendError, WebSocket};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

use crate::support::*;

// ---------------------------------------------------------------------------------------
// A server that accepts up to `max` connections, one after the other.
// ---------------------------------------------------------------------------------------

/// A raw TCP server on 127.0.0.1:0 that accepts up to `max` connections in turn and runs
/// `body(index, socket)` for each on its one thread. It ends by itself after `max`
/// connections, after [`SOCKET_TIMEOUT`] + [`WAIT`] in all, or when stopped.
pub struct MultiServer<T> {
    pub addr: SocketAddr,
    /// `(index, time)` of each accepted connection, as it is accepted.
    pub accepted: Receiver<(usize, Instant)>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<T>>>,
}

impl<T> MultiServer<T> {
    /// `ws://127.0.0.1:PORT` followed by `path`.
    pub fn url_with(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next accepted connection's time, waiting at most `timeout`.
    pub fn next_accept(&self, timeout: Duration) -> Option<(usize, Instant)> {
        match self.accepted.recv_timeout(timeout) {
            Ok(a) => Some(a),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Stops accepting and returns what each connection's body returned, in order
    /// (re-raising a body's panic).
    pub fn join(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.handle.take().expect("joined once");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<T> Drop for MultiServer<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub fn multi_server<T, F>(max: usize, mut body: F) -> MultiServer<T>
where
    T: Send + 'static,
    F: FnMut(usize, TcpStream) -> T + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local_addr");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, accepted) = crossbeam_channel::unbounded();
    let stopped = Arc::clone(&stop);
    let handle = thread::Builder::new()
        .name("test-multi-server".into())
        .spawn(move || {
            let deadline = Instant::now() + SOCKET_TIMEOUT + WAIT;
            let mut out = Vec::new();
            while out.len() < max && !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let at = Instant::now();
                        let _ = tx.send((out.len(), at));
                        stream
                            .set_nonblocking(false)
                            .expect("server: socket option");
                        stream
                            .set_read_timeout(Some(SOCKET_TIMEOUT))
                            .expect("server: socket option");
                        stream
                            .set_write_timeout(Some(SOCKET_TIMEOUT))
                            .expect("server: socket option");
                        stream.set_nodelay(true).expect("server: socket option");
                        out.push(body(out.len(), stream));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("server: accept: {e}"),
                }
            }
            out
        })
        .expect("spawn server");
    MultiServer {
        addr,
        accepted,
        stop,
        handle: Some(handle),
    }
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Backoff and the attempt limit.
// ---------------------------------------------------------------------------------------

/// Every attempt fails in the handshake (the server accepts and hangs up). With
/// `initial_delay(50ms).multiplier(2).jitter(0).max_attempts(3)` there are exactly 4
/// attempts, 50, 100 and 200 ms apart at least, each reported with its own `onerror` and
/// `onclose`; then the client gives up and `wait_closed_timeout` returns.
#[test]
fn failing_attempts_back_off_exponentially_and_stop_at_the_limit() {
    let _g = shared();
    let server = multi_server(10, |_, stream| drop(stream));
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(50))
                .multiplier(2.0)
                .jitter(0.0)
                .max_attempts(3),
        )
        .open(&server.url_with("/"), rec)
        .expect("open");
    let mut accepts = Vec::new();
    for i in 0..4 {
        let (n, at) = server
            .next_accept(WAIT)
            .unwrap_or_else(|| panic!("attempt {i} never reached the server"));
        assert_eq!(n, i);
        accepts.push(at);
    }
    let closed = ws
        .wait_closed_timeout(WAIT)
        .expect("the client gave up and closed");
    assert_eq!((closed.code, closed.was_clean), (1006, false));
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    // The next delay would have been 400 ms: nothing may come within 1.5 s.
    assert_eq!(
        server.next_accept(Duration::from_millis(1500)),
        None,
        "an attempt after the limit"
    );

    let gaps: Vec<Duration> = accepts.windows(2).map(|w| w[1] - w[0]).collect();
    let delays = [50, 100, 200].map(Duration::from_millis);
    for (gap, delay) in gaps.iter().zip(delays) {
        assert!(
            *gap >= delay && *gap < delay + Duration::from_secs(2),
            "gaps between attempts {gaps:?}, expected at least {delays:?}"
        );
    }

    drop(ws);
    let recs = leftover_recs(&rx);
    assert_eq!(
        recs.len(),
        8,
        "onerror + onclose for each of 4 attempts: {recs:?}"
    );
    for pair in recs.chunks(2) {
        assert!(
            matches!(pair[0], Rec::Error(Error::Handshake { .. } | Error::Io(_))),
            "{recs:?}"
        );
        assert!(
            matches!(&pair[1], Rec::Close(c, _) if c.code == 1006 && !c.was_clean),
            "{recs:?}"
        );
    }
    assert_eq!(server.join().len(), 4);
}

// ---------------------------------------------------------------------------------------
// 50 lost connections.
// ---------------------------------------------------------------------------------------

/// The server completes the handshake, then drops TCP without a Close frame, 50 times in a
/// row. Each lost connection gets its own `onclose`, each new one its own `onopen`,
/// `ready_state()` is OPEN again each time, the crate keeps exactly its two threads
/// throughout, `close()` ends reconnecting, and dropping the handle ends both threads.
#[test]
fn fifty_lost_connections_reconnect_without_piling_up_threads() {
    let _g = exclusive();
    const DROPS: usize = 50;
    let (go_tx, go_rx) = crossbeam_channel::unbounded::<()>();
    let server = multi_server(DROPS + 5, move |i, stream| {
        let mut ws = tungstenite::accept(stream).expect("server: handshake");
        if i < DROPS {
            // Hang up once the test has looked at the open connection.
            go_rx.recv_timeout(WAIT).expect("server: go");
            drop(ws);
            None
        } else {
            let (messages, close) = read_until_close(&mut ws);
            Some((messages, close.map(|c| u16::from(c.code))))
        }
    });
    let before = crate_threads();
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(5))
                .jitter(0.0)
                .max_attempts(3),
        )
        .connect(&server.url_with("/drop"), rec)
        .expect("connect");
    let threads: Vec<(u32, String)> = new_crate_threads(&before, 2);
    let mine = |before: &std::collections::BTreeSet<(u32, String)>| {
        crate_threads()
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect::<Vec<_>>()
    };

    for i in 0..DROPS {
        let r = next_rec(&rx);
        assert!(is_open(&r), "connection {i}: {r:?}");
        assert_eq!(ws.ready_state(), ReadyState::Open, "connection {i}");
        assert_eq!(mine(&before), threads, "crate threads at connection {i}");
        go_tx.send(()).unwrap();
        let r = next_rec(&rx);
        assert!(
            matches!(r, Rec::Error(Error::Io(_))),
            "connection {i}: {r:?}"
        );
        let r = next_rec(&rx);
        assert!(
            matches!(&r, Rec::Close(c, _) if c.code == 1006 && !c.was_clean),
            "connection {i}: {r:?}"
        );
    }
    // The 51st stays up until we close it.
    let r = next_rec(&rx);
    assert!(is_open(&r), "connection {DROPS}: {r:?}");
    assert_eq!(ws.ready_state(), ReadyState::Open);
    assert_eq!(mine(&before), threads);
    ws.send("last").unwrap();
    ws.close();
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Close(c, ReadyState::Closed) if c.code == 1000 && c.was_clean),
        "{r:?}"
    );
    let closed = ws.wait_closed_timeout(WAIT).expect("closed");
    assert_eq!((closed.code, closed.was_clean), (1000, true));

    // Every accept so far, then nothing more: `close()` ended reconnecting.
    let accepted: Vec<usize> = server.accepted.try_iter().map(|(n, _)| n).collect();
    assert_eq!(accepted, (0..=DROPS).collect::<Vec<_>>());
    assert_eq!(
        server.next_accept(Duration::from_millis(1000)),
        None,
        "a connection attempt after close()"
    );

    drop(ws);
    assert!(
        eventually(WAIT, || mine(&before).is_empty()),
        "threads left after the last handle was dropped: {:?}",
        mine(&before)
    );
    assert!(leftover_recs(&rx).is_empty());
    let results = server.join();
    assert_eq!(results.len(), DROPS + 1);
    let last = results[DROPS]
        .clone()
        .expect("the last connection's result");
    assert_eq!(last.0, vec![tungstenite::Message::text("last")]);
    assert_eq!(last.1, Some(1000));
}

// ---------------------------------------------------------------------------------------
// Between two connections.
// ---------------------------------------------------------------------------------------

/// While disconnected (CLOSED, waiting to reconnect) `send` hands the message back in
/// `SendError::Closed`, and in CONNECTING in `SendError::NotOpen`; `ready_state()` goes
/// CLOSED → CONNECTING → OPEN, and sends work again on the new connection.
#[test]
fn sends_between_connections_hand_the_message_back() {
    let _g = shared();
    const DELAY: Duration = Duration::from_millis(1500);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    let server = multi_server(2, move |i, stream| {
        if i == 0 {
            let mut ws = tungstenite::accept(stream).expect("server: handshake");
            let m = ws.read().expect("server: the first message");
            drop(ws);
            vec![m]
        } else {
            // Hold the new connection in CONNECTING until the test has looked.
            go_rx.recv_timeout(WAIT).expect("server: go");
            let mut ws = tungstenite::accept(stream).expect("server: handshake");
            read_until_close(&mut ws).0
        }
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(DELAY)
                .jitter(0.0)
                .max_attempts(1),
        )
        .connect(&server.url_with("/"), rec)
        .expect("connect");
    // `onopen` (the server may already be closing, so the state it saw is not checked).
    assert!(matches!(next_rec(&rx), Rec::Open { .. }));
    // The server hangs up when this arrives: the connection is lost after this instant,
    // and the reconnect delay counts from the loss.
    let before_loss = Instant::now();
    ws.send("bye").unwrap();
    assert!(matches!(next_rec(&rx), Rec::Error(_)));
    let r = next_rec(&rx);
    assert!(matches!(&r, Rec::Close(c, _) if c.code == 1006), "{r:?}");

    assert_eq!(ws.ready_state(), ReadyState::Closed);
    match ws.send("while down") {
        Err(SendError::Closed(m)) => assert_eq!(m.as_text(), Some("while down")),
        other => panic!("send while disconnected: {other:?}"),
    }
    match ws.try_send(vec![1u8, 2, 3]) {
        Err(SendError::Closed(m)) => assert_eq!(m, Message::from(vec![1u8, 2, 3])),
        other => panic!("try_send while disconnected: {other:?}"),
    }
    match ws.send_json(&serde_json::json!({"k": 1})) {
        Err(Error::Send(SendError::Closed(m))) => assert_eq!(m.as_text(), Some(r#"{"k":1}"#)),
        other => panic!("send_json while disconnected: {other:?}"),
    }
    assert!(
        matches!(
            ws.ping(b"x".to_vec()),
            Err(Error::InvalidState(ReadyState::Closed))
        ),
        "ping while disconnected"
    );
    // The checks above ran while disconnected: still CLOSED after them. (This was a
    // clock check, `elapsed < DELAY - 300 ms`; the state says it without a clock, and a
    // stall of the whole 1.5 s delay would be needed to fail it.)
    assert_eq!(
        ws.ready_state(),
        ReadyState::Closed,
        "reconnecting began before the checks above were done"
    );

    assert!(
        eventually(WAIT, || ws.ready_state() == ReadyState::Connecting),
        "CLOSED -> CONNECTING, state now {:?}",
        ws.ready_state()
    );
    // Counted from before the loss, so a late `onclose` (a loaded machine) cannot make
    // the delay look short; this was counted from `onclose`, 200 ms short of the delay.
    // 200 ms of slack for the timer's rounding; no wait at all would be 1.3 s short.
    assert!(
        before_loss.elapsed() >= DELAY - Duration::from_millis(200),
        "reconnected {:?} after the loss, the delay is {DELAY:?}",
        before_loss.elapsed()
    );
    match ws.send("too early") {
        Err(SendError::NotOpen(m)) => assert_eq!(m.as_text(), Some("too early")),
        other => panic!("send while connecting: {other:?}"),
    }
    go_tx.send(()).unwrap();
    let r = next_rec(&rx);
    assert!(is_open(&r), "{r:?}");
    assert_eq!(ws.ready_state(), ReadyState::Open);
    ws.send("after").unwrap();
    ws.close();
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Close(c, _) if c.code == 1000 && c.was_clean),
        "{r:?}"
    );
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    let got = server.join();
    assert_eq!(
        got,
        vec![
            vec![tungstenite::Message::text("bye")],
            vec![tungstenite::Message::text("after")]
        ]
    );
}

/// `close()` while waiting to reconnect ends it at once: `wait_closed` returns long before
/// the delay would have passed, and no new attempt is made.
#[test]
fn close_while_waiting_to_reconnect_ends_reconnecting() {
    let _g = shared();
    const DELAY: Duration = Duration::from_secs(5);
    let server = multi_server(3, |_, stream| {
        let ws = tungstenite::accept(stream).expect("server: handshake");
        drop(ws);
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .reconnect(Reconnect::new().initial_delay(DELAY).jitter(0.0))
        .open(&server.url_with("/"), rec)
        .expect("open");
    // `onopen` (the server may already be closing, so the state it saw is not checked).
    assert!(matches!(next_rec(&rx), Rec::Open { .. }));
    assert!(matches!(next_rec(&rx), Rec::Error(Error::Io(_))));
    assert!(matches!(next_rec(&rx), Rec::Close(c, _) if c.code == 1006));
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    let t = Instant::now();
    ws.close();
    let closed = ws.wait_closed_timeout(WAIT).expect("closed");
    // At once, not after the delay: 4 s leaves a loaded machine its margin and is still
    // a second short of the 5 s delay (this was 2 s).
    assert!(
        t.elapsed() < DELAY - Duration::from_secs(1),
        "close() during a {DELAY:?} backoff took {:?}",
        t.elapsed()
    );
    assert_eq!((closed.code, closed.was_clean), (1006, false));
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    ws.close(); // twice: a no-op
    drop(ws);
    assert!(leftover_recs(&rx).is_empty(), "nothing after close()");
    assert!(server.next_accept(Duration::from_millis(500)).is_some());
    assert_eq!(server.next_accept(Duration::ZERO), None);
    assert_eq!(server.join().len(), 1, "attempts after close()");
}

/// Rule 2 for every connection: the second connection's `onopen` (and the handle after it)
/// sees the subprotocol and extensions its own handshake chose. (Until 2026-12-07 they
/// were the first connection's for the handle's life.)
#[test]
fn each_connection_reports_its_own_protocol_and_extensions() {
    let _g = shared();
    let server = multi_server(2, |i, stream| {
        let answer = move |_: &Request, mut response: Response| {
            let headers = response.headers_mut();
            if i == 0 {
                headers.insert("Sec-WebSocket-Protocol", "alpha".parse().unwrap());
                headers.insert(
                    "Sec-WebSocket-Extensions",
                    "permessage-deflate".parse().unwrap(),
                );
            } else {
                headers.insert("Sec-WebSocket-Protocol", "beta".parse().unwrap());
            }
            Ok(response)
        };
        let mut ws = tungstenite::accept_hdr(stream, answer).expect("server: handshake");
        if i == 1 {
            read_until_close(&mut ws);
        }
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .subprotocol("alpha")
        .subprotocol("beta")
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(20))
                .jitter(0.0),
        )
        .connect(&server.url_with("/"), rec)
        .expect("connect");
    let opened = |r: Rec| match r {
        Rec::Open {
            protocol,
            extensions,
            ..
        } => (protocol, extensions),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        opened(next_rec(&rx)),
        ("alpha".to_owned(), "permessage-deflate".to_owned())
    );
    assert!(matches!(next_rec(&rx), Rec::Error(_)));
    assert!(matches!(next_rec(&rx), Rec::Close(..)));
    assert_eq!(opened(next_rec(&rx)), ("beta".to_owned(), String::new()));
    assert_eq!((ws.protocol(), ws.extensions()), ("beta".into(), "".into()));
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    drop(ws);
    server.join();
}

/// Rule 13: delays of `Duration::MAX` mean waiting without a limit, not a panic. (Until
/// 2026-12-07 the delay's computation overflowed: the I/O thread panicked, and the refused
/// connection was reported as `Error::Internal`.)
#[test]
fn reconnect_delays_of_duration_max_wait_until_close() {
    let _g = shared();
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::MAX)
                .max_delay(Duration::MAX)
                .jitter(0.0),
        )
        .open(&refused_url(), rec)
        .expect("open");
    let first = next_rec(&rx);
    assert!(
        matches!(first, Rec::Error(Error::Connect { .. })),
        "{first:?}"
    );
    assert!(matches!(next_rec(&rx), Rec::Close(c, _) if c.code == 1006));
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "no attempt"
    );
    ws.close();
    assert_eq!(ws.wait_closed_timeout(WAIT).expect("closed").code, 1006);
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
}

// ---------------------------------------------------------------------------------------
// A clean close from the server.
// ---------------------------------------------------------------------------------------

/// By default a clean close from the server (a Close frame) ends reconnecting.
#[test]
fn clean_close_from_the_server_ends_reconnecting_by_default() {
    let _g = shared();
    let server = multi_server(3, |_, stream| {
        let mut ws = tungstenite::accept(stream).expect("server: handshake");
        ws.close(Some(close_frame(1000, "bye"))).unwrap();
        read_until_close(&mut ws);
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .reconnect(Reconnect::new().initial_delay(Duration::from_millis(50)))
        .connect(&server.url_with("/"), rec)
        .expect("connect");
    let closed = ws.wait_closed_timeout(WAIT).expect("closed");
    assert_eq!(
        (closed.code, closed.reason.as_str(), closed.was_clean),
        (1000, "bye", true)
    );
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    assert!(server.next_accept(Duration::ZERO).is_some());
    assert_eq!(
        server.next_accept(Duration::from_millis(1000)),
        None,
        "reconnected after a clean close"
    );
    drop(ws);
    let recs = leftover_recs(&rx);
    assert!(
        matches!(recs.as_slice(), [Rec::Open { .. }, Rec::Close(c, ReadyState::Closed)] if c.code == 1000 && c.was_clean),
        "{recs:?}"
    );
    assert_eq!(server.join().len(), 1);
}

/// With `stop_on_clean_close(false)` a clean close from the server (a restart, say) is
/// followed by a new connection, with its own `onopen`.
#[test]
fn clean_close_reconnects_when_stop_on_clean_close_is_false() {
    let _g = shared();
    let server = multi_server(3, |i, stream| {
        let mut ws = tungstenite::accept(stream).expect("server: handshake");
        if i == 0 {
            ws.close(Some(close_frame(1001, "restart"))).unwrap();
        }
        read_until_close(&mut ws).1.map(|c| u16::from(c.code))
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(50))
                .stop_on_clean_close(false),
        )
        .connect(&server.url_with("/"), rec)
        .expect("connect");
    // `onopen` (the server may already be closing, so the state it saw is not checked).
    assert!(matches!(next_rec(&rx), Rec::Open { .. }));
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Close(c, _) if c.code == 1001 && c.reason == "restart" && c.was_clean),
        "{r:?}"
    );
    let r = next_rec(&rx);
    assert!(is_open(&r), "{r:?}");
    ws.close();
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Close(c, _) if c.code == 1000 && c.was_clean),
        "{r:?}"
    );
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    // The first connection's Close was the echo of the server's; the second the client's.
    assert_eq!(server.join(), vec![Some(1001), Some(1000)]);
}

/// The header provider is called for each attempt (a fresh token each time), and
/// `handshake_response()` is each connection's own `101` response, readable from `onopen`.
#[test]
fn header_provider_runs_on_every_attempt_and_each_response_is_readable() {
    let _g = shared();
    let server = multi_server(2, |i, stream| {
        let mut auth = String::new();
        let mut ws = tungstenite::accept_hdr(
            stream,
            |req: &tungstenite::handshake::server::Request,
             mut resp: tungstenite::handshake::server::Response| {
                auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                resp.headers_mut()
                    .insert("x-connection", i.to_string().parse().unwrap());
                Ok(resp)
            },
        )
        .expect("server: handshake");
        if i == 0 {
            // Lost without a closing handshake: the client reconnects.
            drop(ws);
        } else {
            while ws.read().is_ok() {}
        }
        auth
    });
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let (ws, events) = WebSocket::builder()
        .header("Authorization", "Bearer static")
        .header_provider(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            vec![("Authorization".into(), format!("Bearer token-{n}"))]
        })
        .reconnect(Reconnect::new().initial_delay(Duration::from_millis(10)))
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next_event(&events) {
            nwebsocket::Event::Open => {
                let response = ws.handshake_response().expect("known once OPEN");
                assert_eq!(response.status(), 101);
                seen.push(response.header("X-Connection").map(str::to_owned));
            }
            nwebsocket::Event::Error(_) | nwebsocket::Event::Close(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, [Some("0".to_owned()), Some("1".to_owned())]);
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    assert_eq!(server.join(), ["Bearer token-1", "Bearer token-2"]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A thread sends all the time while the server drops each connection after 40 ms (or
/// at its first message, if that comes later): every connection gets messages, a send
/// that raced the end of one never stalls the next, and `buffered_amount` stays sane.
/// (Until 2026-12-07 a send accepted while a connection was being torn down, after its
/// outbox was emptied and before the state said CLOSED, stayed in the outbox with no
/// wake-up: the next connections sent nothing until `close()`, which wrote the stale
/// frame and took its bytes off twice: `buffered_amount` wrapped.)
#[test]
fn sends_racing_lost_connections_never_stall_the_next_one() {
    let _g = shared();
    use std::sync::atomic::AtomicU64;
    const N: usize = 20;
    let server = multi_server(N + 1, |i, stream| {
        let mut ws = tungstenite::accept(stream).expect("server: handshake");
        let mut got = Vec::new();
        if i < N {
            ws.get_ref()
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            // 40 ms of reading, and on until a first message (at most 2 s): a server thread
            // that waited 40 ms for a core (a loaded machine) before its first read would
            // otherwise hang up having read nothing, with the client's messages in its
            // socket. A connection stalled by the bug gets nothing in 2 s either.
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(40)
                || (got.is_empty() && start.elapsed() < Duration::from_secs(2))
            {
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => got.push(t.to_string()),
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        } else {
            got = read_until_close(&mut ws)
                .0
                .into_iter()
                .filter_map(|m| m.into_text().ok().map(|t| t.to_string()))
                .collect();
        }
        got
    });
    let (ws, events) = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(2))
                .jitter(0.0),
        )
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (ws, stop, sent) = (ws.clone(), Arc::clone(&stop), Arc::clone(&sent));
        thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                match ws.send_timeout(format!("m{seq}"), Duration::from_millis(200)) {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => thread::yield_now(),
                }
            }
        })
    };
    let mut opens = 0;
    while opens < N + 1 {
        match events.recv_timeout(WAIT) {
            Ok(Event::Open) => opens += 1,
            Ok(_) => {}
            Err(e) => panic!("{opens} connections opened: {e}"),
        }
    }
    // The last connection lasts: some of the sender's messages go out on it.
    let on_last = sent.load(Ordering::SeqCst);
    assert!(eventually(WAIT, || sent.load(Ordering::SeqCst) > on_last + 10));
    stop.store(true, Ordering::SeqCst);
    sender.join().expect("sender");
    ws.send("final").expect("the last connection is open");
    assert!(
        eventually(WAIT, || ws.buffered_amount() == 0),
        "stalled: {} bytes waiting",
        ws.buffered_amount()
    );
    ws.close();
    ws.wait_closed_timeout(WAIT).expect("closed");
    assert!(ws.buffered_amount() < 1 << 20, "{}", ws.buffered_amount());
    drop(ws);
    let got = server.join();
    let empty: Vec<usize> = (0..N).filter(|&i| got[i].is_empty()).collect();
    assert!(empty.is_empty(), "connections that got nothing: {empty:?}");
    assert_eq!(got[N].last().map(String::as_str), Some("final"));
}

/// `close()` while the server's closing handshake is under way (CLOSING) still ends
/// reconnecting. (Until 2026-12-07 it was a no-op there, and the client connected again.)
#[test]
fn close_while_the_server_is_closing_ends_reconnecting() {
    let _g = shared();
    let (closing_tx, closing_rx) = crossbeam_channel::bounded::<()>(1);
    let server = multi_server(2, move |i, stream| {
        let mut ws = tungstenite::accept(stream).expect("server: handshake");
        if i == 0 {
            ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "".into(),
            }))
            .expect("server: close");
            ws.flush().expect("server: flush");
            // Keeps the TCP connection open: the client stays CLOSING meanwhile.
            let _ = closing_rx.recv_timeout(WAIT);
        }
        read_until_close(&mut ws);
    });
    let (ws, events) = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(10))
                .jitter(0.0)
                .stop_on_clean_close(false),
        )
        .close_timeout(Duration::from_secs(5))
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    assert!(eventually(WAIT, || ws.ready_state() == ReadyState::Closing));
    ws.close();
    closing_tx.send(()).unwrap();
    assert!(
        ws.wait_closed_timeout(WAIT).is_some(),
        "still reconnecting: {:?}",
        ws.ready_state()
    );
    let opens = leftover_events(&events)
        .iter()
        .filter(|e| matches!(e, Event::Open))
        .count();
    assert_eq!(opens, 1, "one connection");
    drop(ws);
    assert_eq!(server.join().len(), 1, "no second attempt");
}

/// Dropping the pull receiver while waiting to reconnect ends reconnecting: nobody would
/// take the next connection's events. (Until 2026-12-07 it went on connecting, each
/// new connection closed with 1001 as soon as it opened.)
#[test]
fn dropping_the_receiver_while_waiting_to_reconnect_ends_reconnecting() {
    let _g = shared();
    let server = multi_server(3, |_, stream| {
        drop(tungstenite::accept(stream).expect("server: handshake"));
    });
    let (ws, events) = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_secs(2))
                .jitter(0.0),
        )
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    loop {
        match events
            .recv_timeout(WAIT)
            .expect("the first connection's events")
        {
            Event::Close(_) => break,
            _ => continue,
        }
    }
    let t = Instant::now();
    drop(events); // in the 2 s wait
    assert!(ws.wait_closed_timeout(WAIT).is_some(), "still reconnecting");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    drop(ws);
    assert_eq!(server.join().len(), 1, "no second attempt");
}

/// The same in batches: dropping the `EventBatches` while waiting to reconnect ends
/// reconnecting at once. (Until 2026-12-07 nothing told the I/O thread: it waited out
/// the delay, connected again, and only then found nobody to take the events.)
#[test]
fn dropping_the_batches_receiver_while_waiting_to_reconnect_ends_reconnecting() {
    let _g = shared();
    let server = multi_server(3, |_, stream| {
        drop(tungstenite::accept(stream).expect("server: handshake"));
    });
    let (ws, batches) = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_secs(2))
                .jitter(0.0),
        )
        .connect_batches(&server.url_with("/"))
        .expect("connect");
    'first: loop {
        let batch = batches
            .recv_timeout(WAIT)
            .expect("the first connection's events");
        for event in batch {
            if matches!(event, Event::Close(_)) {
                break 'first;
            }
        }
    }
    let t = Instant::now();
    drop(batches); // in the 2 s wait
    assert!(ws.wait_closed_timeout(WAIT).is_some(), "still reconnecting");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    drop(ws);
    assert_eq!(server.join().len(), 1, "no second attempt");
}

// ---------------------------------------------------------------------------------------
// The state a callback sees.
// ---------------------------------------------------------------------------------------

/// Records, for each callback, its name and `ready_state()` as the callback sees it.
struct States(Vec<(&'static str, ReadyState)>);

impl nwebsocket::Handler for States {
    fn onopen(&mut self, ws: &nwebsocket::WebSocketRef) {
        self.0.push(("open", ws.ready_state()));
    }
    fn onmessage(&mut self, ws: &nwebsocket::WebSocketRef, _msg: Message) {
        self.0.push(("message", ws.ready_state()));
    }
    fn onerror(&mut self, ws: &nwebsocket::WebSocketRef, _err: Error) {
        self.0.push(("error", ws.ready_state()));
    }
    fn onclose(&mut self, ws: &nwebsocket::WebSocketRef, _event: nwebsocket::CloseEvent) {
        self.0.push(("close", ws.ready_state()));
    }
}

/// Rule 2 and the browser's `readyState` under reconnect: the events of a lost connection,
/// taken once the next one is OPEN, show that connection's states: OPEN in `onopen` and
/// `onmessage`, CLOSED in `onerror` and `onclose` (until 2026-12-07 they all showed the
/// I/O thread's state, OPEN: the next connection's).
#[test]
fn callbacks_see_the_state_of_their_connection_not_the_next_ones() {
    let _g = shared();
    let server = multi_server(2, |i, stream| {
        let mut ws = tungstenite::accept(stream).expect("server: handshake");
        if i == 0 {
            ws.send(tungstenite::Message::text("m0")).unwrap();
            ws.flush().unwrap();
            drop(ws); // lost: no Close frame
        } else {
            read_until_close(&mut ws);
        }
    });
    let (ws, events) = WebSocket::builder()
        .reconnect(Reconnect::new().initial_delay(Duration::ZERO).jitter(0.0))
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    for i in 0..2 {
        assert!(server.next_accept(WAIT).is_some(), "connection {i}");
    }
    assert!(eventually(WAIT, || events.len() >= 5
        && ws.ready_state() == ReadyState::Open));
    let mut states = States(Vec::new());
    ws.dispatch_pending(&events, &mut states);
    assert_eq!(
        states.0,
        [
            ("open", ReadyState::Open),
            ("message", ReadyState::Open),
            ("error", ReadyState::Closed),
            ("close", ReadyState::Closed),
            ("open", ReadyState::Open),
        ]
    );
    // Outside a callback: the current state.
    assert_eq!(ws.ready_state(), ReadyState::Open);
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    drop(ws);
    server.join();
}

/// `close()` inside a callback: from then on the callbacks see CLOSING (as in a browser,
/// where `close()` sets it at once), then CLOSED in `onclose`.
#[test]
fn a_callback_that_closes_sees_closing_at_once() {
    let _g = shared();
    struct CloseOnFirst(Vec<(&'static str, ReadyState)>);
    impl nwebsocket::Handler for CloseOnFirst {
        fn onmessage(&mut self, ws: &nwebsocket::WebSocketRef, _msg: Message) {
            self.0.push(("message", ws.ready_state()));
            if self.0.len() == 1 {
                ws.close();
                self.0.push(("closed", ws.ready_state()));
            }
        }
        fn onclose(&mut self, ws: &nwebsocket::WebSocketRef, _event: nwebsocket::CloseEvent) {
            self.0.push(("close", ws.ready_state()));
        }
    }
    let server = server(|mut ws| {
        for m in ["a", "b"] {
            ws.send(tungstenite::Message::text(m)).unwrap();
        }
        read_until_close(&mut ws)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(eventually(WAIT, || events.len() >= 3));
    let mut handler = CloseOnFirst(Vec::new());
    while !matches!(handler.0.last(), Some(("close", _))) {
        let event = events.recv_timeout(WAIT).expect("an event");
        ws.dispatch(&mut handler, event);
    }
    assert_eq!(
        handler.0,
        [
            ("message", ReadyState::Open),
            ("closed", ReadyState::Closing),
            ("message", ReadyState::Closing),
            ("close", ReadyState::Closed),
        ]
    );
    drop(ws);
    server.join();
}

/// Rule 2 under reconnect, for `protocol()` and `extensions()` as for `ready_state()`:
/// when `onopen` runs, they hold what *its* server chose, however late the consumer takes
/// it (until 2026-12-07 they were the latest connection's). Here the first connection's
/// `onopen` is taken only once the second connection is OPEN, with another subprotocol
/// and no extension.
#[test]
fn a_late_onopen_sees_its_own_connections_protocol_and_extensions() {
    let _g = shared();
    let server = alpha_then_beta_server();
    let (ws, events) = alpha_or_beta_at_once()
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    for i in 0..2 {
        assert!(server.next_accept(WAIT).is_some(), "connection {i}");
    }
    // Open, Error, Close of the first connection, Open of the second; nothing taken yet.
    assert!(eventually(WAIT, || events.len() >= 4
        && ws.ready_state() == ReadyState::Open));
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut opened = SeesItsOwn(tx);
    ws.dispatch_pending(&events, &mut opened);
    assert_eq!(
        rx.try_iter().collect::<Vec<_>>(),
        alpha_then_beta(),
        "each onopen should see its own connection's handshake"
    );
    // Outside callbacks: the latest connection's.
    assert_eq!(ws.protocol(), "beta");
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    drop(ws);
    server.join();
}

/// As above, in callback style: the callback thread is held back (the handler's guard
/// is taken) until the second connection is OPEN.
#[test]
fn a_late_onopen_on_the_callback_thread_sees_its_own_connections_handshake() {
    let _g = shared();
    let server = alpha_then_beta_server();
    let (tx, rx) = crossbeam_channel::unbounded();
    let ws = alpha_or_beta_at_once()
        .open(&server.url_with("/"), SeesItsOwn(tx))
        .expect("open");
    let guard = ws.handler();
    for i in 0..2 {
        assert!(server.next_accept(WAIT).is_some(), "connection {i}");
    }
    assert!(eventually(WAIT, || ws.ready_state() == ReadyState::Open
        && ws.protocol() == "beta"));
    drop(guard);
    let seen: Vec<_> = (0..2)
        .map(|_| rx.recv_timeout(WAIT).expect("onopen"))
        .collect();
    assert_eq!(seen, alpha_then_beta());
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    drop(ws);
    server.join();
}

/// As above, with batches and `dispatch_batches`: each callback sees its own
/// connection's handshake, `onclose` of the first included (the `Open`s are noted event
/// by event as they are handled, in case a batch holds the end of one connection and the
/// start of the next).
#[test]
fn dispatch_batches_sees_each_connections_handshake_event_by_event() {
    let _g = shared();
    let server = alpha_then_beta_server();
    let (ws, batches) = alpha_or_beta_at_once()
        .connect_batches(&server.url_with("/"))
        .expect("connect");
    // (The second connection is made once the consumer has taken the first one's end,
    // which may come in the batch of its `Open`.)
    struct Seen(Vec<(&'static str, String)>);
    impl nwebsocket::Handler for Seen {
        fn onopen(&mut self, ws: &nwebsocket::WebSocketRef) {
            self.0.push(("open", ws.protocol()));
        }
        fn onclose(&mut self, ws: &nwebsocket::WebSocketRef, _: nwebsocket::CloseEvent) {
            self.0.push(("close", ws.protocol()));
        }
    }
    let mut seen = Seen(Vec::new());
    assert!(eventually(WAIT, || {
        ws.dispatch_batches(&batches, &mut seen);
        seen.0.len() >= 3
    }));
    assert_eq!(
        seen.0,
        [
            ("open", "alpha".to_owned()),
            ("close", "alpha".to_owned()),
            ("open", "beta".to_owned())
        ]
    );
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    drop(ws);
    server.join();
}

/// Offers "alpha" and "beta", and reconnects at once.
fn alpha_or_beta_at_once() -> nwebsocket::Builder {
    WebSocket::builder()
        .subprotocol("alpha")
        .subprotocol("beta")
        .reconnect(Reconnect::new().initial_delay(Duration::ZERO).jitter(0.0))
}

/// Two connections: the first chooses "alpha" and permessage-deflate and is then lost,
/// the second chooses "beta" and no extension.
fn alpha_then_beta_server() -> MultiServer<()> {
    multi_server(2, |i, stream| {
        let answer = move |_: &Request, mut response: Response| {
            let headers = response.headers_mut();
            if i == 0 {
                headers.insert("Sec-WebSocket-Protocol", "alpha".parse().unwrap());
                headers.insert(
                    "Sec-WebSocket-Extensions",
                    "permessage-deflate".parse().unwrap(),
                );
            } else {
                headers.insert("Sec-WebSocket-Protocol", "beta".parse().unwrap());
            }
            Ok(response)
        };
        let mut ws = tungstenite::accept_hdr(stream, answer).expect("server: handshake");
        if i == 0 {
            drop(ws); // lost: no Close frame
        } else {
            read_until_close(&mut ws);
        }
    })
}

/// What each `onopen` saw: protocol(), extensions(), and the handshake response's
/// `Sec-WebSocket-Protocol`.
struct SeesItsOwn(crossbeam_channel::Sender<(String, String, String)>);

impl nwebsocket::Handler for SeesItsOwn {
    fn onopen(&mut self, ws: &nwebsocket::WebSocketRef) {
        let response = ws.handshake_response().expect("a handshake response");
        let chosen = response
            .header("Sec-WebSocket-Protocol")
            .unwrap_or_default()
            .to_owned();
        let _ = self.0.send((ws.protocol(), ws.extensions(), chosen));
    }
}

fn alpha_then_beta() -> Vec<(String, String, String)> {
    vec![
        ("alpha".into(), "permessage-deflate".into(), "alpha".into()),
        ("beta".into(), String::new(), "beta".into()),
    ]
}
