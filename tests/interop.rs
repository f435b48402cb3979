//! Interop tests against real third-party servers: Python `websockets` and Node `ws`.
//!
//! Every test runs once per peer (`python::*` and `node::*`). The peers' base URLs come
//! from `NWS_INTEROP_PY_URL` and `NWS_INTEROP_NODE_URL` (for example `ws://127.0.0.1:40123`).
//! Those two decline permessage-deflate; the same servers started with `--deflate`
//! (`NWS_INTEROP_PY_DEFLATE_URL`, `NWS_INTEROP_NODE_DEFLATE_URL`) negotiate it, and run
//! `python_deflate::*` and `node_deflate::*`: a subset of the tests above, compressed both
//! ways, and the compression tests.
//! Every test is `#[ignore]`d, so a plain `cargo test` needs nothing installed and lists
//! them as ignored (never as passed); `.ci/interop.sh` installs both servers, starts them
//! on loopback, sets the variables and runs `cargo test --test interop -- --ignored`.
//! Run without its variable, a test fails: it never passes without its server.
//!
//! The servers (`.ci/interop/py_server.py`, `.ci/interop/node_server.js`) behave by path;
//! the table is in `py_server.py`'s docstring. Every wait here is a bounded `recv_timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nwebsocket::crossbeam_channel::RecvTimeoutError;
use nwebsocket::{Builder, CloseEvent, Error, Event, Message, ReadyState, WebSocket};

/// The longest any single event may take to arrive.
const WAIT: Duration = Duration::from_secs(10);

/// The text the `/fragmented` path repeats: 1-, 2-, 3- and 4-byte UTF-8 sequences.
const TEXT_UNIT: &str = "Grüße, 世界! 😀 ";

#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "deflate"), allow(dead_code))]
enum Peer {
    Python,
    Node,
    /// The same servers, negotiating permessage-deflate.
    PythonDeflate,
    NodeDeflate,
}

impl Peer {
    fn var(self) -> &'static str {
        match self {
            Peer::Python => "NWS_INTEROP_PY_URL",
            Peer::Node => "NWS_INTEROP_NODE_URL",
            Peer::PythonDeflate => "NWS_INTEROP_PY_DEFLATE_URL",
            Peer::NodeDeflate => "NWS_INTEROP_NODE_DEFLATE_URL",
        }
    }

    /// The peer's base URL. A test that runs without it fails: it must never pass
    /// without having talked to the server.
    fn base(self, test: &str) -> String {
        match std::env::var(self.var()) {
            Ok(v) if !v.trim().is_empty() => v.trim().trim_end_matches('/').to_owned(),
            _ => panic!(
                "interop test {test} ({self:?}): {} is not set; run .ci/interop.sh, which \
                 starts the servers and runs these tests with --ignored",
                self.var()
            ),
        }
    }
}

/// One test's view of one peer.
struct Ctx {
    peer: Peer,
    base: String,
    test: &'static str,
}

impl Ctx {
    fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// A connection id, unique in this process, for the server's close log.
    fn id(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!(
            "{}-{:?}-{}-{}",
            self.test,
            self.peer,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// Connects (pull style), checks that the first event is `Open`, returns both ends.
    fn open(&self, builder: Builder, path_and_query: &str) -> (WebSocket, nwebsocket::Events) {
        let url = self.url(path_and_query);
        let (ws, rx) = builder
            .connect_pull(&url)
            .unwrap_or_else(|e| panic!("{:?}: connecting to {url} failed: {e}", self.peer));
        // The server may already be closing it (`/close`, `/abort`): only CONNECTING is wrong.
        assert_ne!(
            ws.ready_state(),
            ReadyState::Connecting,
            "connect_pull returned before OPEN"
        );
        match next(&rx) {
            Event::Open => {}
            other => panic!("{:?}: first event was {other:?}, not Open", self.peer),
        }
        (ws, rx)
    }

    /// What the server saw of the connection that had `?id=<id>`: close code and reason it
    /// received, message count, last text message. Waits (server side, bounded) for that
    /// connection to end.
    fn closelog(&self, id: &str) -> serde_json::Value {
        let (_ws, rx) = self.open(Builder::new(), &format!("/closelog?id={id}"));
        let text = text_of(next_message(&rx));
        let record: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("close log is not JSON ({e}): {text}"));
        assert!(record.get("error").is_none(), "{:?}: {record}", self.peer);
        let close = expect_close(&rx);
        assert_eq!(
            (close.code, close.was_clean),
            (1000, true),
            "closelog connection"
        );
        record
    }
}

fn run(peer: Peer, test: &'static str, body: fn(&Ctx)) {
    let base = peer.base(test);
    let _ = env_logger::builder().is_test(true).try_init();
    body(&Ctx { peer, base, test });
}

/// The next event, whatever it is; fails the test after [`WAIT`].
fn next(rx: &nwebsocket::Events) -> Event {
    match rx.recv_timeout(WAIT) {
        Ok(ev) => ev,
        Err(RecvTimeoutError::Timeout) => panic!("no event within {WAIT:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("the event channel ended without Close"),
    }
}

fn next_message(rx: &nwebsocket::Events) -> Message {
    match next(rx) {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn text_of(msg: Message) -> String {
    match msg.as_text() {
        Some(t) => t.to_owned(),
        None => panic!("expected a text message, got {msg:?}"),
    }
}

/// The next event must be `Close`, and it must be the last one: the channel then ends.
fn expect_close(rx: &nwebsocket::Events) -> CloseEvent {
    let close = match next(rx) {
        Event::Close(c) => c,
        other => panic!("expected Close, got {other:?}"),
    };
    expect_no_more(rx);
    close
}

/// Nothing may follow `Close`: the I/O thread drops its sender, so the channel ends.
fn expect_no_more(rx: &nwebsocket::Events) {
    match rx.recv_timeout(WAIT) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(ev) => panic!("an event after Close: {ev:?}"),
        Err(RecvTimeoutError::Timeout) => panic!("the event channel did not end after Close"),
    }
}

/// A failure: exactly one `Error`, then `Close` 1006 not clean, then nothing.
fn expect_failure(rx: &nwebsocket::Events) -> Error {
    let err = match next(rx) {
        Event::Error(e) => e,
        other => panic!("expected Error, got {other:?}"),
    };
    let close = expect_close(rx);
    assert_eq!(
        (close.code, close.reason.clone(), close.was_clean),
        (1006, String::new(), false),
        "a failure must close with 1006 (error was: {err})"
    );
    err
}

/// Closes normally from the client and checks the clean close.
fn close_clean(ws: &WebSocket, rx: &nwebsocket::Events) {
    ws.close();
    let close = expect_close(rx);
    assert_eq!((close.code, close.was_clean), (1000, true), "{close:?}");
}

/// Exactly `n` bytes of UTF-8 with 1- to 4-byte characters (ASCII fills the tail).
fn text_bytes(n: usize) -> String {
    let mut s = String::with_capacity(n);
    let mut chars = "aé世😀zß€𝄞".chars().cycle();
    while s.len() < n {
        let c = chars.next().unwrap_or('a');
        if s.len() + c.len_utf8() <= n {
            s.push(c);
        } else {
            s.push('a');
        }
    }
    s
}

fn binary_bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What the servers' `/fragmented` and `/send` paths send as binary.
fn server_binary_pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const SIZES: [usize; 9] = [0, 1, 125, 126, 127, 65535, 65536, 200_000, 1 << 20];

// ---------------------------------------------------------------------------------------
// Echo: text and binary, every length encoding, up to 1 MiB, pipelined.

fn echo_text_sizes(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/echo");
    let sent: Vec<String> = SIZES.iter().map(|&n| text_bytes(n)).collect();
    for s in &sent {
        ws.send(s.as_str()).expect("send");
    }
    for s in &sent {
        let m = next_message(&rx);
        assert!(m.is_text(), "a {}-byte text came back as {m:?}", s.len());
        assert_eq!(m.len(), s.len());
        assert!(
            m.as_text() == Some(s.as_str()),
            "{}-byte text echo differs",
            s.len()
        );
    }
    close_clean(&ws, &rx);
}

fn echo_binary_sizes(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/echo");
    let sent: Vec<Vec<u8>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| binary_bytes(n, i as u8))
        .collect();
    for b in &sent {
        ws.send(b.clone()).expect("send");
    }
    for b in &sent {
        let m = next_message(&rx);
        assert!(
            m.is_binary(),
            "a {}-byte binary came back as {m:?}",
            b.len()
        );
        assert_eq!(m.len(), b.len());
        assert!(
            m.as_bytes() == b.as_slice(),
            "{}-byte binary echo differs",
            b.len()
        );
    }
    close_clean(&ws, &rx);
}

fn echo_mixed_many_in_order(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/echo");
    const N: usize = 2000;
    for i in 0..N {
        if i % 2 == 0 {
            ws.send(format!("text {i}")).expect("send");
        } else {
            ws.send((i as u32).to_be_bytes().to_vec()).expect("send");
        }
    }
    for i in 0..N {
        let m = next_message(&rx);
        if i % 2 == 0 {
            assert_eq!(
                m.as_text(),
                Some(format!("text {i}").as_str()),
                "message {i}"
            );
        } else {
            assert!(m.is_binary(), "message {i}: {m:?}");
            assert_eq!(m.as_bytes(), (i as u32).to_be_bytes(), "message {i}");
        }
    }
    close_clean(&ws, &rx);
}

/// Many messages from the server with a tiny incoming queue: the I/O thread must stop
/// and resume reading without losing or reordering anything.
fn server_flood_small_queue_in_order(cx: &Ctx) {
    const N: u32 = 3000;
    let (ws, rx) = cx.open(
        Builder::new().incoming_queue(2),
        &format!("/flood?count={N}&size=700"),
    );
    let body = server_binary_pattern(696);
    for i in 0..N {
        let m = next_message(&rx);
        assert!(m.is_binary(), "flood message {i}: {m:?}");
        let b = m.as_bytes();
        assert_eq!(b.len(), 700, "flood message {i}");
        assert_eq!(
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            i,
            "flood message out of order"
        );
        assert!(b[4..] == body[..], "flood message {i} body differs");
    }
    assert_eq!(text_of(next_message(&rx)), "done");
    close_clean(&ws, &rx);
}

// ---------------------------------------------------------------------------------------
// Fragmented messages from the server.

fn fragmented_text_split_inside_utf8(cx: &Ctx) {
    for size in [1, 5, 7, 1000] {
        let reps = 40;
        let (ws, rx) = cx.open(
            Builder::new(),
            &format!("/fragmented?kind=text&reps={reps}&size={size}"),
        );
        let m = next_message(&rx);
        let want = TEXT_UNIT.repeat(reps);
        assert_eq!(
            m.as_text(),
            Some(want.as_str()),
            "text in {size}-byte fragments"
        );
        close_clean(&ws, &rx);
    }
}

fn fragmented_binary(cx: &Ctx) {
    for (len, size) in [(1000, 1), (100_000, 999), (1 << 20, 16 << 10)] {
        let (ws, rx) = cx.open(
            Builder::new(),
            &format!("/fragmented?kind=binary&len={len}&size={size}"),
        );
        let m = next_message(&rx);
        assert!(m.is_binary(), "{m:?}");
        assert_eq!(m.len(), len);
        assert!(
            m.as_bytes() == server_binary_pattern(len).as_slice(),
            "{len} bytes in {size}-byte fragments differ"
        );
        close_clean(&ws, &rx);
    }
}

/// A ping between two fragments of one message: reported (and answered) at once, and the
/// message still arrives whole.
fn fragmented_with_ping_between_frames(cx: &Ctx) {
    let (ws, rx) = cx.open(
        Builder::new().ping_events(true),
        "/fragmented?kind=text&reps=5&size=6&ping=mid-message",
    );
    match next(&rx) {
        Event::Ping(p) => assert_eq!(&*p, b"mid-message"),
        other => panic!("expected the ping sent between fragments first, got {other:?}"),
    }
    let want = TEXT_UNIT.repeat(5);
    assert_eq!(next_message(&rx).as_text(), Some(want.as_str()));
    // The connection is still healthy: an echo goes through.
    ws.send("after").expect("send");
    assert_eq!(text_of(next_message(&rx)), "after");
    close_clean(&ws, &rx);
}

// ---------------------------------------------------------------------------------------
// Close codes and reasons, server to client.

fn server_close_code_and_reason(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/close?code=4001&reason=bye");
    let close = expect_close(&rx);
    assert_eq!(
        (close.code, close.reason.clone(), close.was_clean),
        (4001, "bye".into(), true)
    );
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    assert_eq!(ws.wait_closed_timeout(WAIT), Some(close));
}

fn server_close_utf8_reason(cx: &Ctx) {
    let reason = "tschüß 👋 – 再见";
    let (ws, rx) = cx.open(
        Builder::new(),
        &format!("/close?code=4999&reason={}", enc(reason)),
    );
    let close = expect_close(&rx);
    assert_eq!(
        (close.code, close.reason.clone(), close.was_clean),
        (4999, reason.into(), true)
    );
    assert_eq!(ws.ready_state(), ReadyState::Closed);
}

/// The longest reason a Close frame can carry (123 bytes), with multi-byte characters.
fn server_close_longest_reason(cx: &Ctx) {
    let reason = text_bytes(123);
    let (_ws, rx) = cx.open(
        Builder::new(),
        &format!("/close?code=4123&reason={}", enc(&reason)),
    );
    let close = expect_close(&rx);
    assert_eq!(
        (close.code, close.reason.clone(), close.was_clean),
        (4123, reason, true)
    );
}

/// Big messages, then Close, through a one-event queue: the I/O thread pauses reading
/// over and over, and still delivers everything, in order, before `Close`.
fn server_close_after_large_messages_small_queue(cx: &Ctx) {
    let pad = 64 << 10;
    let (_ws, rx) = cx.open(
        Builder::new().incoming_queue(1),
        &format!("/close?code=4001&reason=drained&before=100&pad={pad}"),
    );
    let tail = "p".repeat(pad);
    for i in 0..100 {
        let text = text_of(next_message(&rx));
        assert!(
            text.starts_with(&format!("msg {i}p")),
            "message {i} out of order"
        );
        assert!(
            text.ends_with(&tail) && text.len() == format!("msg {i}").len() + pad,
            "message {i} differs"
        );
    }
    let close = expect_close(&rx);
    assert_eq!(
        (close.code, close.reason.clone(), close.was_clean),
        (4001, "drained".into(), true)
    );
}

fn server_close_normal_and_going_away(cx: &Ctx) {
    for code in [1000u16, 1001, 1011, 3000] {
        let (_ws, rx) = cx.open(Builder::new(), &format!("/close?code={code}"));
        let close = expect_close(&rx);
        assert_eq!(
            (close.code, close.reason.clone(), close.was_clean),
            (code, String::new(), true)
        );
    }
}

/// An empty Close frame (no status code) is reported as 1005, as the browser does.
fn server_close_without_status(cx: &Ctx) {
    let (_ws, rx) = cx.open(Builder::new(), "/close");
    let close = expect_close(&rx);
    assert_eq!(
        (close.code, close.reason.clone(), close.was_clean),
        (1005, String::new(), true)
    );
}

/// Every message sent before the server's Close is delivered, in order, before `Close`.
fn server_close_after_messages(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/close?code=4001&reason=done&before=500");
    for i in 0..500 {
        assert_eq!(text_of(next_message(&rx)), format!("msg {i}"));
    }
    let close = expect_close(&rx);
    assert_eq!(
        (close.code, close.reason.clone(), close.was_clean),
        (4001, "done".into(), true)
    );
    // After the close, sends are refused and hand the message back.
    let err = ws.send("too late").expect_err("send after close");
    assert_eq!(err.into_message().as_text(), Some("too late"));
}

/// The server closes while the client is still pushing megabytes at it: the client
/// finishes the frame it is writing, echoes the Close, and reports a clean close with the
/// server's code. Sends refused on the way hand their message back.
fn server_close_while_client_sends(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/close?code=4001&reason=busy");
    for i in 0..8u8 {
        if let Err(e) = ws.send(vec![i; 1 << 20]) {
            assert_eq!(e.into_message().len(), 1 << 20);
            break;
        }
    }
    let close = expect_close(&rx);
    assert_eq!(
        (close.code, close.reason.clone(), close.was_clean),
        (4001, "busy".into(), true)
    );
}

/// Both ends start the closing handshake at about the same time: whichever Close frame
/// the client sees, the close is clean and carries one of the two codes.
fn simultaneous_close_is_clean(cx: &Ctx) {
    for _ in 0..5 {
        let (ws, rx) = cx.open(Builder::new(), "/close?code=4001&reason=server");
        ws.close_with(4002, "client").expect("close_with");
        let close = expect_close(&rx);
        assert!(close.was_clean, "{close:?}");
        assert!(
            matches!(
                (close.code, close.reason.as_str()),
                (4001, "server") | (4002, "client")
            ),
            "{close:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Close codes and reasons, client to server.

fn client_close_code_and_reason(cx: &Ctx) {
    let id = cx.id();
    let (ws, rx) = cx.open(Builder::new(), &format!("/echo?id={id}"));
    let reason = "client bye ✓";
    ws.close_with(4002, reason).expect("close_with");
    assert!(ws.ready_state() >= ReadyState::Closing);
    let close = expect_close(&rx);
    assert!(close.was_clean, "{close:?}");
    // Both servers echo the client's Close frame.
    assert_eq!((close.code, close.reason.as_str()), (4002, reason));
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 4002, "{log}");
    assert_eq!(log["reason"], reason, "{log}");
}

fn client_close_default_is_1000(cx: &Ctx) {
    let id = cx.id();
    let (ws, rx) = cx.open(Builder::new(), &format!("/echo?id={id}"));
    close_clean(&ws, &rx);
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 1000, "{log}");
    assert_eq!(log["reason"], "", "{log}");
}

fn client_close_longest_reason(cx: &Ctx) {
    let id = cx.id();
    let (ws, rx) = cx.open(Builder::new(), &format!("/echo?id={id}"));
    let reason = text_bytes(123);
    assert_eq!(reason.len(), 123);
    // Too long, or a reserved code: refused synchronously, nothing sent.
    assert!(ws.close_with(4000, &text_bytes(124)).is_err());
    assert!(ws.close_with(1005, "").is_err());
    assert_eq!(ws.ready_state(), ReadyState::Open);
    ws.close_with(3999, &reason).expect("close_with");
    let close = expect_close(&rx);
    assert_eq!(
        (close.code, close.reason.as_str(), close.was_clean),
        (3999, reason.as_str(), true)
    );
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 3999, "{log}");
    assert_eq!(log["reason"], reason.as_str(), "{log}");
}

/// Every message sent before `close` reaches the server before the Close frame.
fn client_close_flushes_sent_messages_first(cx: &Ctx) {
    let id = cx.id();
    let (ws, rx) = cx.open(Builder::new(), &format!("/echo?id={id}"));
    ws.send(vec![7u8; 1 << 20]).expect("send");
    for i in 0..200 {
        ws.send(format!("m{i}")).expect("send");
    }
    ws.send("last").expect("send");
    ws.close_with(4003, "after sends").expect("close_with");
    // Echoes may or may not come back before the server's Close; then Close, clean.
    let close = loop {
        match next(&rx) {
            Event::Message(_) => {}
            Event::Close(c) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    expect_no_more(&rx);
    assert_eq!((close.code, close.was_clean), (4003, true), "{close:?}");
    let log = cx.closelog(&id);
    assert_eq!(log["messages"], 202, "{log}");
    assert_eq!(log["last"], "last", "{log}");
    assert_eq!(log["code"], 4003, "{log}");
}

/// Dropping the last handle closes with 1001 (going away).
fn drop_closes_going_away(cx: &Ctx) {
    let id = cx.id();
    let (ws, rx) = cx.open(Builder::new(), &format!("/echo?id={id}"));
    ws.send("hello").expect("send");
    assert_eq!(text_of(next_message(&rx)), "hello");
    drop(ws);
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 1001, "{log}");
    assert_eq!(log["messages"], 1, "{log}");
    // The receiver still gets the end of the story.
    let close = loop {
        match next(&rx) {
            Event::Close(c) => break c,
            Event::Message(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((close.code, close.was_clean), (1001, true), "{close:?}");
}

// ---------------------------------------------------------------------------------------
// Subprotocols, path and query.

fn subprotocol_first_known_offered(cx: &Ctx) {
    let builder = Builder::new()
        .subprotocol("unknown.v9")
        .subprotocol("chat.v2")
        .subprotocol("chat.v1");
    let (ws, rx) = cx.open(builder, "/info?x=1&y=a%20b&z=%E2%9C%93%2F%3F&bare");
    assert_eq!(ws.protocol(), "chat.v2");
    let info: serde_json::Value = serde_json::from_str(&text_of(next_message(&rx))).expect("JSON");
    assert_eq!(info["subprotocol"], "chat.v2", "{info}");
    assert_eq!(
        info["offered"],
        serde_json::json!(["unknown.v9, chat.v2, chat.v1"]),
        "{info}"
    );
    assert_eq!(info["path"], "/info", "{info}");
    assert_eq!(
        info["query"], "x=1&y=a%20b&z=%E2%9C%93%2F%3F&bare",
        "{info}"
    );
    close_clean(&ws, &rx);
}

/// The client offers subprotocols and the server picks none: the connection fails, as in
/// browsers (WHATWG WebSockets: "if protocols is not empty and the response has no
/// `Sec-WebSocket-Protocol`, fail the WebSocket connection"); tungstenite does the same.
fn subprotocol_none_chosen_fails_as_in_browsers(cx: &Ctx) {
    let url = cx.url("/info");
    match WebSocket::builder().subprotocol("nope").connect_pull(&url) {
        Ok((ws, _)) => panic!(
            "connected with protocol {:?} although the server chose none",
            ws.protocol()
        ),
        Err(Error::Handshake { .. }) => {}
        Err(e) => panic!("expected Error::Handshake, got {e:?}"),
    }
}

fn subprotocol_none_offered(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/info");
    assert_eq!(ws.protocol(), "");
    let info: serde_json::Value = serde_json::from_str(&text_of(next_message(&rx))).expect("JSON");
    assert_eq!(info["offered"], serde_json::json!([]), "{info}");
    assert_eq!(info["subprotocol"], serde_json::Value::Null, "{info}");
    close_clean(&ws, &rx);
}

/// A server that picks a subprotocol the client did not offer fails the connection.
fn subprotocol_not_offered_is_refused(cx: &Ctx) {
    let url = cx.url("/echo?bogus_protocol=1");
    match WebSocket::builder()
        .subprotocol("chat.v1")
        .connect_pull(&url)
    {
        Ok((ws, _)) => panic!("connected although the server chose {:?}", ws.protocol()),
        Err(Error::Handshake { .. }) => {}
        Err(e) => panic!("expected Error::Handshake, got {e:?}"),
    }
}

/// `http://` is mapped to `ws://`, as browsers do, and `url()` reports the mapped URL.
fn http_scheme_maps_to_ws(cx: &Ctx) {
    let http = cx.url("/echo").replacen("ws://", "http://", 1);
    assert!(http.starts_with("http://"), "{http}");
    let (ws, rx) = WebSocket::connect_pull(&http).unwrap_or_else(|e| panic!("{http}: {e}"));
    assert!(matches!(next(&rx), Event::Open));
    assert!(ws.url().starts_with("ws://"), "url() is {}", ws.url());
    ws.send("via http").expect("send");
    assert_eq!(text_of(next_message(&rx)), "via http");
    close_clean(&ws, &rx);
}

/// A host name, not an address: `localhost` may resolve to `::1` first, where nothing
/// listens, and the client must go on to `127.0.0.1`.
fn localhost_name_connects(cx: &Ctx) {
    let by_name = cx.url("/echo").replacen("127.0.0.1", "localhost", 1);
    assert!(
        by_name.contains("://localhost:"),
        "the peer URL is not on 127.0.0.1: {by_name}"
    );
    let (ws, rx) = WebSocket::connect_pull(&by_name).unwrap_or_else(|e| panic!("{by_name}: {e}"));
    assert!(matches!(next(&rx), Event::Open));
    ws.send("by name").expect("send");
    assert_eq!(text_of(next_message(&rx)), "by name");
    close_clean(&ws, &rx);
}

// ---------------------------------------------------------------------------------------
// Ping and pong.

fn client_ping_gets_pong(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new().ping_events(true), "/echo");
    let payloads: [Vec<u8>; 3] = [b"hello".to_vec(), Vec::new(), binary_bytes(125, 3)];
    for p in &payloads {
        ws.ping(p.clone()).expect("ping");
    }
    assert!(
        ws.ping(vec![0u8; 126]).is_err(),
        "a 126-byte ping payload must be refused"
    );
    for p in &payloads {
        match next(&rx) {
            Event::Pong(got) => assert_eq!(&*got, p.as_slice()),
            other => panic!("expected Pong, got {other:?}"),
        }
    }
    close_clean(&ws, &rx);
}

fn server_ping_answered_and_reported(cx: &Ctx) {
    for payload in ["srv-ping".to_owned(), String::new(), "p".repeat(125)] {
        let (ws, rx) = cx.open(
            Builder::new().ping_events(true),
            &format!("/ping?payload={payload}"),
        );
        match next(&rx) {
            Event::Ping(p) => assert_eq!(&*p, payload.as_bytes()),
            other => panic!("expected Ping, got {other:?}"),
        }
        assert_eq!(text_of(next_message(&rx)), format!("pong:{payload}"));
        close_clean(&ws, &rx);
    }
}

/// Pings are answered even when nobody asked to see them.
fn server_ping_answered_silently(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/ping?payload=quiet");
    assert_eq!(text_of(next_message(&rx)), "pong:quiet");
    close_clean(&ws, &rx);
}

/// Keepalive pings get the servers' automatic pongs; the connection stays up.
fn keepalive_pings_get_pongs(cx: &Ctx) {
    let builder = Builder::new()
        .ping_events(true)
        .ping_interval(Duration::from_millis(50))
        .pong_timeout(Duration::from_secs(5));
    let (ws, rx) = cx.open(builder, "/echo");
    let mut last = 0u64;
    for _ in 0..5 {
        match next(&rx) {
            Event::Pong(p) => {
                let seq =
                    u64::from_be_bytes(p.as_ref().try_into().expect("8-byte keepalive payload"));
                assert!(
                    seq > last,
                    "keepalive pongs out of order: {seq} after {last}"
                );
                last = seq;
            }
            other => panic!("expected a keepalive Pong, got {other:?}"),
        }
    }
    assert_eq!(ws.ready_state(), ReadyState::Open);
    close_clean(&ws, &rx);
}

// ---------------------------------------------------------------------------------------
// Failures the peer causes.

fn abrupt_tcp_close_is_1006(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new(), "/abort");
    let err = expect_failure(&rx);
    assert!(
        matches!(err, Error::Io(_)),
        "expected an I/O error, got {err:?}"
    );
    assert_eq!(ws.ready_state(), ReadyState::Closed);
}

fn invalid_utf8_fails_with_1007(cx: &Ctx) {
    let id = cx.id();
    let (_ws, rx) = cx.open(Builder::new(), &format!("/badutf8?id={id}"));
    let err = expect_failure(&rx);
    assert!(
        matches!(err, Error::Protocol { .. }),
        "expected a protocol error, got {err:?}"
    );
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 1007, "{log}");
}

fn oversized_message_fails_with_1009(cx: &Ctx) {
    let id = cx.id();
    let builder = Builder::new().max_message_size(1024);
    let (_ws, rx) = cx.open(builder, &format!("/send?kind=binary&size=4096&id={id}"));
    let err = expect_failure(&rx);
    assert!(
        matches!(
            err,
            Error::Capacity {
                size: 4096,
                limit: 1024,
                ..
            }
        ),
        "expected a capacity error, got {err:?}"
    );
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 1009, "{log}");
}

/// Small frames adding up to a message over the limit: 1009, as for one big frame.
///
/// Known crate bug (this test and the next fail in most runs): on a failure the I/O thread
/// writes its Close 1009 and then drops the socket while the server's later frames sit
/// unread in the receive buffer, so the kernel sends RST instead of FIN and the server
/// discards the unread Close frame: it records 1006, not 1009. A single frame that fits in
/// one read (`oversized_message_fails_with_1009`) does not hit it.
fn fragmented_message_over_limit_fails_with_1009(cx: &Ctx) {
    let id = cx.id();
    let builder = Builder::new().max_message_size(1024);
    let (_ws, rx) = cx.open(
        builder,
        &format!("/fragmented?kind=binary&len=5000&size=100&id={id}"),
    );
    let err = expect_failure(&rx);
    assert!(
        matches!(
            err,
            Error::Capacity {
                what: "message",
                limit: 1024,
                ..
            }
        ),
        "expected a message capacity error, got {err:?}"
    );
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 1009, "{log}");
}

/// One frame over the frame limit fails even when the message limit allows it.
/// Subject to the same RST bug as `fragmented_message_over_limit_fails_with_1009`.
fn frame_over_limit_fails_with_1009(cx: &Ctx) {
    let id = cx.id();
    let builder = Builder::new()
        .max_frame_size(1000)
        .max_message_size(1 << 20);
    let (_ws, rx) = cx.open(
        builder,
        &format!("/fragmented?kind=binary&len=5000&size=2000&id={id}"),
    );
    let err = expect_failure(&rx);
    assert!(
        matches!(
            err,
            Error::Capacity {
                what: "frame",
                limit: 1000,
                ..
            }
        ),
        "expected a frame capacity error, got {err:?}"
    );
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 1009, "{log}");
}

fn message_at_the_limit_is_accepted(cx: &Ctx) {
    let builder = Builder::new().max_message_size(4096);
    let (ws, rx) = cx.open(builder, "/send?kind=text&size=4096");
    assert_eq!(text_of(next_message(&rx)), "x".repeat(4096));
    close_clean(&ws, &rx);
}

// ---------------------------------------------------------------------------------------
// permessage-deflate (the `--deflate` servers).

/// JSON shaped like market data, over 1 KiB (so that we compress it too).
#[cfg(feature = "deflate")]
fn ticker(i: usize) -> String {
    let one = format!(
        r#"{{"type":"ticker","sequence":{},"product_id":"BTC-USD","price":"{}.{:02}","best_bid":"{}.00","best_ask":"{}.50","side":"buy","trade_id":{}}}"#,
        1000 + i,
        43000 + i % 97,
        i % 100,
        43000 + i % 89,
        43000 + i % 83,
        500_000 + i
    );
    format!("[{}]", vec![one; 8].join(","))
}

/// Compressed JSON both ways: the server compresses its echoes, we compress ours.
#[cfg(feature = "deflate")]
fn deflate_echo_json(cx: &Ctx, builder: Builder, want: &[&str]) {
    let (ws, rx) = cx.open(builder, "/echo");
    let ext = ws.extensions().to_owned();
    assert!(ext.starts_with("permessage-deflate"), "extensions: {ext:?}");
    for param in want {
        assert!(ext.contains(param), "{param} missing from {ext:?}");
    }
    const N: usize = 300;
    for i in 0..N {
        if i % 5 == 4 {
            ws.send(ticker(i).into_bytes()).expect("send");
        } else {
            ws.send(ticker(i)).expect("send");
        }
    }
    for i in 0..N {
        let m = next_message(&rx);
        assert_eq!(m.is_binary(), i % 5 == 4, "message {i}");
        assert_eq!(m.as_bytes(), ticker(i).as_bytes(), "message {i}");
    }
    close_clean(&ws, &rx);
}

#[cfg(feature = "deflate")]
fn deflate_json_with_context_takeover(cx: &Ctx) {
    deflate_echo_json(cx, Builder::new(), &[]);
}

#[cfg(feature = "deflate")]
fn deflate_json_without_context_takeover(cx: &Ctx) {
    let builder = Builder::new().deflate(
        nwebsocket::Deflate::new()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true),
    );
    deflate_echo_json(
        cx,
        builder,
        &["server_no_context_takeover", "client_no_context_takeover"],
    );
}

#[cfg(feature = "deflate")]
fn deflate_small_windows(cx: &Ctx) {
    let builder = Builder::new().deflate(
        nwebsocket::Deflate::new()
            .server_max_window_bits(9)
            .client_max_window_bits(9),
    );
    deflate_echo_json(cx, builder, &["server_max_window_bits=9"]);
}

#[cfg(feature = "deflate")]
fn deflate_declined_when_not_offered(cx: &Ctx) {
    let (ws, rx) = cx.open(Builder::new().no_deflate(), "/echo");
    assert_eq!(ws.extensions(), "");
    ws.send(ticker(1)).expect("send");
    assert_eq!(next_message(&rx).as_bytes(), ticker(1).as_bytes());
    close_clean(&ws, &rx);
}

/// The limit applies to the inflated size: a 4 KiB message that the server compresses
/// to a few bytes still fails a 1 KiB limit with 1009.
#[cfg(feature = "deflate")]
fn deflate_inflated_size_over_limit_fails_with_1009(cx: &Ctx) {
    let id = cx.id();
    let builder = Builder::new().max_message_size(1024);
    let (_ws, rx) = cx.open(builder, &format!("/send?kind=text&size=4096&id={id}"));
    let err = expect_failure(&rx);
    assert!(
        matches!(err, Error::Capacity { limit: 1024, .. }),
        "expected a capacity error, got {err:?}"
    );
    let log = cx.closelog(&id);
    assert_eq!(log["code"], 1009, "{log}");
}

// ---------------------------------------------------------------------------------------

macro_rules! interop_tests {
    ($($name:ident),* $(,)?) => {
        /// Against Python `websockets` (`NWS_INTEROP_PY_URL`).
        mod python {
            $(
                #[test]
                #[ignore = "needs the Python websockets server: run .ci/interop.sh"]
                fn $name() { super::run(super::Peer::Python, stringify!($name), super::$name); }
            )*
        }
        /// Against Node `ws` (`NWS_INTEROP_NODE_URL`).
        mod node {
            $(
                #[test]
                #[ignore = "needs the Node ws server: run .ci/interop.sh"]
                fn $name() { super::run(super::Peer::Node, stringify!($name), super::$name); }
            )*
        }
    };
}

#[cfg(feature = "deflate")]
macro_rules! deflate_tests {
    ($($name:ident),* $(,)?) => {
        /// Against Python `websockets` negotiating permessage-deflate.
        mod python_deflate {
            $(
                #[test]
                #[ignore = "needs the Python websockets server: run .ci/interop.sh"]
                fn $name() {
                    super::run(super::Peer::PythonDeflate, stringify!($name), super::$name);
                }
            )*
        }
        /// Against Node `ws` with `perMessageDeflate`.
        mod node_deflate {
            $(
                #[test]
                #[ignore = "needs the Node ws server: run .ci/interop.sh"]
                fn $name() {
                    super::run(super::Peer::NodeDeflate, stringify!($name), super::$name);
                }
            )*
        }
    };
}

#[cfg(feature = "deflate")]
deflate_tests!(
    deflate_json_with_context_takeover,
    deflate_json_without_context_takeover,
    deflate_small_windows,
    deflate_declined_when_not_offered,
    deflate_inflated_size_over_limit_fails_with_1009,
    echo_text_sizes,
    echo_binary_sizes,
    echo_mixed_many_in_order,
    server_flood_small_queue_in_order,
    fragmented_text_split_inside_utf8,
    fragmented_binary,
    fragmented_with_ping_between_frames,
    server_close_after_messages,
    client_close_flushes_sent_messages_first,
    message_at_the_limit_is_accepted,
    invalid_utf8_fails_with_1007,
);

interop_tests!(
    echo_text_sizes,
    echo_binary_sizes,
    echo_mixed_many_in_order,
    server_flood_small_queue_in_order,
    fragmented_text_split_inside_utf8,
    fragmented_binary,
    fragmented_with_ping_between_frames,
    server_close_code_and_reason,
    server_close_utf8_reason,
    server_close_longest_reason,
    server_close_after_large_messages_small_queue,
    server_close_normal_and_going_away,
    server_close_without_status,
    server_close_after_messages,
    server_close_while_client_sends,
    simultaneous_close_is_clean,
    client_close_code_and_reason,
    client_close_default_is_1000,
    client_close_longest_reason,
    client_close_flushes_sent_messages_first,
    drop_closes_going_away,
    subprotocol_first_known_offered,
    subprotocol_none_chosen_fails_as_in_browsers,
    subprotocol_none_offered,
    subprotocol_not_offered_is_refused,
    client_ping_gets_pong,
    server_ping_answered_and_reported,
    server_ping_answered_silently,
    keepalive_pings_get_pongs,
    abrupt_tcp_close_is_1006,
    invalid_utf8_fails_with_1007,
    oversized_message_fails_with_1009,
    message_at_the_limit_is_accepted,
    fragmented_message_over_limit_fails_with_1009,
    frame_over_limit_fails_with_1009,
    http_scheme_maps_to_ws,
    localhost_name_connects,
);
