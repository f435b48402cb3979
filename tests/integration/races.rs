//! Races from the user's side: several threads on one connection at once, against a raw
//! server that records every frame the client put on the wire, in order, and what (if
//! anything) came after the client's Close. The invariants checked each time:
//! every `send` that returned `Ok` arrives exactly once, in its thread's order, before our
//! Close; every `send` that returned `Err` hands its message back, and that message never
//! arrives; nothing follows our Close; `buffered_amount()` never takes absurd values and
//! is 0 after a clean close.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use nwebsocket::{Error, Event, Message, Reconnect, SendError, WebSocket, WebSocketRef};
use tungstenite::handshake::derive_accept_key;

use crate::support::*;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Above any `buffered_amount()` these tests can make: a value past it is an underflow.
const ABSURD: usize = 1 << 40;

/// Reads the client's request and answers 101 (no extension: frames are plain).
fn accept_handshake(stream: &mut TcpStream) {
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
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).unwrap();
}

/// A server frame (unmasked, FIN set), payload under 126 bytes.
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x80 | opcode, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

/// One client frame: (opcode, unmasked payload); `None` at the end of the stream.
fn read_client_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).ok()?;
    assert_eq!(head[0] & 0x80, 0x80, "server: a fragmented client frame");
    assert_eq!(head[0] & 0x70, 0, "server: reserved bits (no extension)");
    assert_eq!(head[1] & 0x80, 0x80, "server: an unmasked client frame");
    let len = match head[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut mask = [0u8; 4];
    stream.read_exact(&mut mask).ok()?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Some((head[0] & 0x0F, payload))
}

/// What the server saw on one connection.
#[derive(Debug, Default)]
struct Wire {
    /// Data and ping frames before the client's Close, in order.
    before_close: Vec<(u8, Vec<u8>)>,
    /// The client's Close payload, if it came.
    close: Option<Vec<u8>>,
    /// Every frame after the client's Close (must stay empty).
    after_close: Vec<(u8, Vec<u8>)>,
}

/// When the raw server sends its own Close.
#[derive(Clone, Copy, Debug)]
enum ServerClose {
    /// Only to echo the client's.
    Echo,
    /// After this many data frames (and echoes nothing then).
    After(usize),
    /// Goes away (no Close, the socket shut) after this many data frames.
    Vanish(usize),
}

/// Serves one accepted connection: records every client frame, answers pings, sends its
/// Close as `policy` says (or echoes the client's), ends its side once both Close frames
/// went by, and reads on to the end of the client's stream.
fn record_wire(mut stream: TcpStream, policy: ServerClose) -> Wire {
    accept_handshake(&mut stream);
    record_wire_after_handshake(stream, policy)
}

/// [`record_wire`] once the handshake is done.
fn record_wire_after_handshake(mut stream: TcpStream, policy: ServerClose) -> Wire {
    let mut wire = Wire::default();
    let mut data = 0usize;
    let mut sent_close = false;
    while let Some((op, payload)) = read_client_frame(&mut stream) {
        if wire.close.is_some() {
            wire.after_close.push((op, payload));
            continue;
        }
        match op {
            CLOSE => {
                wire.close = Some(payload);
                if !sent_close {
                    let _ = stream.write_all(&server_frame(CLOSE, &1000u16.to_be_bytes()));
                }
                // Both Close frames went by: the server ends the TCP stream (RFC 6455
                // §7.1.1), and reads on to the client's end to see if anything follows.
                let _ = stream.shutdown(Shutdown::Write);
            }
            PING => {
                if !sent_close {
                    let _ = stream.write_all(&server_frame(PONG, &payload));
                }
                wire.before_close.push((op, payload));
            }
            TEXT | BINARY => {
                data += 1;
                wire.before_close.push((op, payload));
                if matches!(policy, ServerClose::Vanish(n) if n == data) {
                    let _ = stream.shutdown(Shutdown::Both);
                    return wire;
                }
                if matches!(policy, ServerClose::After(n) if n == data) {
                    sent_close = true;
                    let _ = stream.write_all(&server_frame(CLOSE, &1000u16.to_be_bytes()));
                }
            }
            _ => wire.before_close.push((op, payload)),
        }
    }
    wire
}

fn wire_server(policy: ServerClose) -> Server<Wire> {
    raw_server(move |stream| record_wire(stream, policy))
}

/// The message thread `t` sends as its `seq`th: text for even threads, binary for odd
/// ones (some of them large: another path through the outbox), with `t` and `seq` in it.
fn nth(t: usize, seq: usize) -> Message {
    if t % 2 == 0 {
        Message::from(format!("{t}:{seq}"))
    } else {
        let len = if seq % 7 == 3 { 3000 } else { 16 };
        let mut b = vec![0u8; len];
        b[0] = t as u8;
        b[1..9].copy_from_slice(&(seq as u64).to_be_bytes());
        Message::from(b)
    }
}

/// (thread, seq) of a data frame sent by [`nth`].
fn decode(op: u8, payload: &[u8]) -> (usize, usize) {
    match op {
        TEXT => {
            let s = std::str::from_utf8(payload).unwrap();
            let (t, seq) = s.split_once(':').unwrap();
            (t.parse().unwrap(), seq.parse().unwrap())
        }
        BINARY => (
            payload[0] as usize,
            u64::from_be_bytes(payload[1..9].try_into().unwrap()) as usize,
        ),
        other => panic!("not a data frame: {other}"),
    }
}

/// Checks that the data frames of `wires` (connections in order) are, per thread, exactly
/// the accepted sequence numbers, each once and in order, and that nothing followed a
/// Close.
fn assert_exactly_accepted(wires: &[Wire], accepted: &[Vec<usize>], what: &str) {
    let mut got = vec![Vec::new(); accepted.len()];
    for (i, wire) in wires.iter().enumerate() {
        assert!(
            wire.after_close.is_empty(),
            "{what}: connection {i}: {} frames after the client's Close, first {:?}",
            wire.after_close.len(),
            wire.after_close.first()
        );
        for (op, payload) in &wire.before_close {
            if *op == TEXT || *op == BINARY {
                let (t, seq) = decode(*op, payload);
                got[t].push(seq);
            }
        }
    }
    for (t, (got, accepted)) in got.iter().zip(accepted).enumerate() {
        if got != accepted {
            let missing: Vec<_> = accepted.iter().filter(|s| !got.contains(s)).collect();
            let extra: Vec<_> = got.iter().filter(|s| !accepted.contains(s)).collect();
            panic!(
                "{what}: thread {t}: {} accepted, {} on the wire; missing {:?}, never \
                 accepted but sent {:?}",
                accepted.len(),
                got.len(),
                &missing[..missing.len().min(10)],
                &extra[..extra.len().min(10)],
            );
        }
    }
}

/// Watches `buffered_amount()` until `stop`: the largest value seen.
fn watch_buffered(ws: WebSocketRef, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut max = 0;
        while !stop.load(SeqCst) {
            max = max.max(ws.buffered_amount());
            thread::yield_now();
        }
        max
    })
}

/// Sends `nth(t, seq)` for seq = 0, 1, … until a send fails; checks the failure hands
/// back the very message; returns the accepted sequence numbers. `hook(seq)` runs after
/// each accepted send.
fn send_until_refused(ws: &WebSocketRef, t: usize, mut hook: impl FnMut(usize)) -> Vec<usize> {
    let mut accepted = Vec::new();
    for seq in 0.. {
        let msg = nth(t, seq);
        match ws.send(msg.clone()) {
            Ok(()) => {
                accepted.push(seq);
                hook(seq);
            }
            Err(SendError::Closed(back)) => {
                assert_eq!(back, msg, "thread {t}: the refused message handed back");
                break;
            }
            Err(e) => panic!("thread {t}: {e:?}"),
        }
    }
    accepted
}

/// `threads` threads each sending `nth(t, seq)` for seq = 0, 1, … until `stop`, across
/// reconnects: a refusal (between connections) must hand back the very message, which
/// is then skipped for good. Each returns the accepted sequence numbers.
fn send_across_reconnects(
    ws: &WebSocket,
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<usize>>> {
    (0..threads)
        .map(|t| {
            let ws = ws.downgrade();
            let stop = Arc::clone(stop);
            thread::spawn(move || {
                let mut accepted = Vec::new();
                let mut seq = 0;
                while !stop.load(SeqCst) {
                    let msg = nth(t, seq);
                    match ws.send(msg.clone()) {
                        Ok(()) => accepted.push(seq),
                        Err(SendError::Closed(m) | SendError::NotOpen(m)) => {
                            assert_eq!(m, msg, "thread {t}: handed back");
                            thread::yield_now();
                        }
                        Err(e) => panic!("thread {t}: {e:?}"),
                    }
                    seq += 1;
                }
                accepted
            })
        })
        .collect()
}

/// The server closes after a different number of messages each round while four threads
/// send as fast as they can, and (in odd rounds) one of them calls `close()` at about the
/// same moment: the two closing handshakes race. Every accepted message arrives once, in
/// order, before our Close (the echo or ours); every refused one is handed back and never
/// arrives; nothing follows our Close; the close is clean and `buffered_amount()` ends at
/// 0, never wrapping below it meanwhile.
#[test]
fn server_close_racing_senders_and_close_loses_nothing_and_sends_nothing_after() {
    let _g = shared();
    const THREADS: usize = 4;
    for round in 0..12 {
        let at = 1 + 150 * round;
        let server = wire_server(ServerClose::After(at));
        let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_buffered(ws.downgrade(), Arc::clone(&stop));
        let barrier = Arc::new(Barrier::new(THREADS));
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let ws = ws.downgrade();
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    send_until_refused(&ws, t, |seq| {
                        if t == 0 && round % 2 == 1 && seq * THREADS == at {
                            ws.close();
                        }
                    })
                })
            })
            .collect();
        let accepted: Vec<Vec<usize>> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        let c = ws.wait_closed_timeout(WAIT).expect("closed");
        assert!(c.was_clean, "round {round}: {c:?}");
        assert_eq!(ws.buffered_amount(), 0, "round {round}");
        stop.store(true, SeqCst);
        let max = watcher.join().unwrap();
        assert!(max < ABSURD, "round {round}: buffered_amount() was {max}");
        drop(events);
        drop(ws);
        let wire = server.join();
        assert!(
            wire.close.is_some(),
            "round {round}: no Close from the client"
        );
        assert_exactly_accepted(&[wire], &accepted, &format!("round {round}"));
    }
}

/// Senders on `WebSocketRef`s while the last `WebSocket` is dropped on another thread:
/// what they got `Ok` for goes out before the 1001 Close, what was refused never does.
#[test]
fn sends_racing_the_last_handles_drop_lose_nothing_accepted() {
    let _g = shared();
    const THREADS: usize = 3;
    for round in 0..8 {
        let server = wire_server(ServerClose::Echo);
        let ws = WebSocket::connect(&server.url(), ()).expect("connect");
        let sent = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(THREADS + 1));
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let ws = ws.downgrade();
                let barrier = Arc::clone(&barrier);
                let sent = Arc::clone(&sent);
                thread::spawn(move || {
                    barrier.wait();
                    send_until_refused(&ws, t, |_| {
                        sent.fetch_add(1, SeqCst);
                    })
                })
            })
            .collect();
        barrier.wait();
        while sent.load(SeqCst) < 100 * round {
            thread::yield_now();
        }
        drop(ws); // the last owner: closes with 1001 and joins the threads
        let accepted: Vec<Vec<usize>> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        let wire = server.join();
        assert_eq!(
            wire.close
                .as_deref()
                .map(|p| u16::from_be_bytes([p[0], p[1]])),
            Some(1001),
            "round {round}"
        );
        assert_exactly_accepted(&[wire], &accepted, &format!("round {round}"));
    }
}

/// `ping()` from four threads at once, with data in between: every ping that returned
/// `Ok` reaches the server once, in its thread's order, before our Close; the refused
/// ones (16 waiting) never do.
#[test]
fn pings_from_many_threads_each_go_out_once_in_order() {
    let _g = shared();
    const THREADS: usize = 4;
    const EACH: usize = 300;
    let server = wire_server(ServerClose::Echo);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let barrier = Arc::new(Barrier::new(THREADS));
    let pingers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ws = ws.downgrade();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let mut ok = Vec::new();
                for seq in 0..EACH {
                    let payload = format!("{t}:{seq}").into_bytes();
                    match ws.ping(payload) {
                        Ok(()) => ok.push(seq),
                        Err(Error::PingsWaiting(_)) => thread::yield_now(),
                        Err(e) => panic!("ping: {e:?}"),
                    }
                    if seq % 10 == 0 {
                        ws.send(nth(t, seq / 10)).unwrap();
                    }
                }
                ok
            })
        })
        .collect();
    let accepted: Vec<Vec<usize>> = pingers.into_iter().map(|p| p.join().unwrap()).collect();
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    drop(events);
    drop(ws);
    let wire = server.join();
    assert!(wire.after_close.is_empty(), "{:?}", wire.after_close);
    let mut got = vec![Vec::new(); THREADS];
    for (op, payload) in &wire.before_close {
        if *op == PING {
            let (t, seq) = decode(TEXT, payload);
            got[t].push(seq);
        }
    }
    assert_eq!(got, accepted, "pings on the wire = pings accepted");
}

/// Reconnecting, with the server closing each connection cleanly after a different
/// number of messages (`stop_on_clean_close(false)`), while three threads send without a
/// pause: every send that returned `Ok` goes out exactly once, on the connection that
/// accepted it, in its thread's order; every send refused between two connections is
/// handed back and never goes out on the next one.
#[test]
fn sends_racing_clean_reconnects_each_go_out_once_or_come_back() {
    let _g = shared();
    const THREADS: usize = 3;
    const CONNECTIONS: usize = 8;
    let server = crate::reconnect::multi_server(CONNECTIONS, |i, stream| {
        let policy = if i + 1 < CONNECTIONS {
            ServerClose::After(50 + 97 * i)
        } else {
            ServerClose::Echo
        };
        record_wire(stream, policy)
    });
    let (ws, events) = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(2))
                .jitter(0.0)
                .stop_on_clean_close(false),
        )
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_buffered(ws.downgrade(), Arc::clone(&stop));
    let senders = send_across_reconnects(&ws, THREADS, &stop);
    let mut opens = 0;
    while opens < CONNECTIONS {
        match events.recv_timeout(WAIT) {
            Ok(Event::Open) => opens += 1,
            Ok(Event::Error(e)) => panic!("after {opens} opens: {e:?}"),
            Ok(_) => {}
            Err(e) => panic!("{opens} connections opened: {e}"),
        }
    }
    // Some sends on the last connection too.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(50) {
        thread::yield_now();
    }
    ws.close();
    let c = ws.wait_closed_timeout(WAIT).expect("closed");
    stop.store(true, SeqCst);
    let accepted: Vec<Vec<usize>> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    assert!(c.was_clean, "{c:?}");
    assert_eq!(ws.buffered_amount(), 0);
    let max = watcher.join().unwrap();
    assert!(max < ABSURD, "buffered_amount() was {max}");
    drop(events);
    drop(ws);
    let wires = server.join();
    assert_eq!(wires.len(), CONNECTIONS);
    for (i, w) in wires.iter().enumerate() {
        assert!(
            w.close.is_some(),
            "connection {i}: no Close from the client"
        );
    }
    assert_exactly_accepted(&wires, &accepted, "reconnects");
}

/// `dispatch_pending` on one thread while another takes events with `recv`: every event
/// is taken exactly once, by one of them, each seeing its share in order.
#[test]
fn dispatch_pending_and_recv_on_two_threads_share_the_events_exactly_once() {
    let _g = shared();
    const N: usize = 20_000;
    let server = server(|mut ws| {
        for i in 0..N {
            ws.write(tungstenite::Message::text(i.to_string())).unwrap();
        }
        ws.flush().unwrap();
        read_until_close(&mut ws);
    });
    let (ws, events) = WebSocket::builder()
        .incoming_queue(64)
        .connect_pull(&server.url())
        .expect("connect");
    let done = Arc::new(AtomicUsize::new(0));
    struct Take(Vec<usize>, Arc<AtomicUsize>);
    impl nwebsocket::Handler for Take {
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            self.0.push(msg.as_text().unwrap().parse().unwrap());
            self.1.fetch_add(1, SeqCst);
        }
    }
    let dispatcher = {
        let (ws, events, done) = (ws.downgrade(), events.clone(), Arc::clone(&done));
        thread::spawn(move || {
            let mut h = Take(Vec::new(), Arc::clone(&done));
            let deadline = Instant::now() + WAIT;
            while done.load(SeqCst) < N && Instant::now() < deadline {
                ws.dispatch_pending(&events, &mut h);
                thread::yield_now();
            }
            h.0
        })
    };
    let mut mine = Vec::new();
    let deadline = Instant::now() + WAIT;
    while done.load(SeqCst) < N && Instant::now() < deadline {
        if let Ok(Event::Message(m)) = events.recv_timeout(Duration::from_millis(10)) {
            mine.push(m.as_text().unwrap().parse::<usize>().unwrap());
            done.fetch_add(1, SeqCst);
        }
    }
    let theirs = dispatcher.join().unwrap();
    assert!(
        mine.windows(2).all(|w| w[0] < w[1]),
        "recv's share in order"
    );
    assert!(
        theirs.windows(2).all(|w| w[0] < w[1]),
        "dispatch's share in order"
    );
    let mut all: Vec<usize> = mine.iter().chain(&theirs).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "each message exactly once");
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    drop(ws);
    server.join();
}

/// Pull style: once `wait_closed` has returned, the connection's last events are all in
/// the channel: a caller that then takes what waits without blocking (`try_iter`,
/// `dispatch_pending`) finds its `Close`, as callback style's `wait_closed` returns after
/// `onclose` ran. Repeated: the end is reported on the I/O thread while this one wakes.
#[test]
fn after_wait_closed_the_close_event_waits_in_the_pull_channel() {
    let _g = shared();
    let mut missing = 0;
    const ROUNDS: usize = 100;
    for _ in 0..ROUNDS {
        let server = wire_server(ServerClose::Echo);
        let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
        ws.send("x").unwrap();
        ws.close();
        let c = ws.wait_closed_timeout(WAIT).expect("closed");
        assert!(c.was_clean, "{c:?}");
        let got: Vec<Event> = events.try_iter().collect();
        if !matches!(got.last(), Some(Event::Close(_))) {
            missing += 1;
        }
        drop(ws);
        server.join();
    }
    assert_eq!(
        missing, 0,
        "{missing} of {ROUNDS} rounds: no Close in the channel after wait_closed"
    );
}

/// The same for `connect_batches` and `dispatch_batches`.
#[test]
fn after_wait_closed_the_close_event_waits_in_the_batches() {
    let _g = shared();
    #[derive(Default)]
    struct Closes(usize);
    impl nwebsocket::Handler for Closes {
        fn onclose(&mut self, _ws: &WebSocketRef, _e: nwebsocket::CloseEvent) {
            self.0 += 1;
        }
    }
    let mut missing = 0;
    const ROUNDS: usize = 100;
    for _ in 0..ROUNDS {
        let server = wire_server(ServerClose::Echo);
        let (ws, batches) = WebSocket::builder()
            .connect_batches(&server.url())
            .expect("connect");
        ws.send("x").unwrap();
        ws.close();
        let c = ws.wait_closed_timeout(WAIT).expect("closed");
        assert!(c.was_clean, "{c:?}");
        let mut h = Closes::default();
        ws.dispatch_batches(&batches, &mut h);
        if h.0 != 1 {
            missing += 1;
        }
        drop(ws);
        server.join();
    }
    assert_eq!(
        missing, 0,
        "{missing} of {ROUNDS} rounds: onclose did not run after wait_closed"
    );
}

/// `request` from eight threads at once, the server answering each group of eight in the
/// reverse order, with an unrelated message (that looks like a reply to nobody) before
/// each reply: every caller gets its own reply, and every other message reaches the
/// consumer once.
#[test]
fn requests_from_many_threads_with_replies_out_of_order() {
    use serde_json::{json, Value};
    let _g = shared();
    const THREADS: usize = 8;
    const EACH: usize = 50;
    let server = server(|mut ws| {
        for _ in 0..EACH {
            let mut asks = Vec::new();
            while asks.len() < THREADS {
                match ws.read().expect("server: read") {
                    tungstenite::Message::Text(t) => {
                        asks.push(serde_json::from_str::<Value>(&t).unwrap());
                    }
                    _ => continue,
                }
            }
            for ask in asks.iter().rev() {
                let noise = json!({"type": "noise", "id": 1u64 << 60});
                ws.write(tungstenite::Message::text(noise.to_string()))
                    .unwrap();
                let reply = json!({"id": ask["id"], "echo": ask["data"]});
                ws.write(tungstenite::Message::text(reply.to_string()))
                    .unwrap();
            }
            ws.flush().unwrap();
        }
        read_until_close(&mut ws);
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ws = ws.downgrade();
            thread::spawn(move || {
                for i in 0..EACH {
                    let data = format!("{t}-{i}");
                    let reply: Value = ws
                        .request(&json!({"data": data}), WAIT)
                        .unwrap_or_else(|e| panic!("thread {t}, request {i}: {e}"));
                    assert_eq!(reply["echo"], data.as_str(), "someone else's reply");
                }
            })
        })
        .collect();
    let mut noise = 0;
    let mut other = Vec::new();
    while noise < THREADS * EACH {
        match events.recv_timeout(WAIT).expect("noise") {
            Event::Message(m) => match m.json::<Value>() {
                Ok(v) if v["type"] == "noise" => noise += 1,
                _ => other.push(m),
            },
            Event::Open => {}
            e => panic!("{e:?}"),
        }
    }
    for w in workers {
        w.join().expect("requester");
    }
    assert!(
        other.is_empty(),
        "replies leaked to the consumer: {other:?}"
    );
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    assert!(matches!(events.try_iter().last(), Some(Event::Close(_))));
    drop(ws);
    server.join();
}

/// `ping()` from four threads while one of them closes: every ping that returned `Ok`
/// (accepted while OPEN) goes out before our Close ("none accepted is dropped"), and
/// those refused after `close` never do.
#[test]
fn pings_accepted_before_close_go_out_before_the_close_frame() {
    let _g = shared();
    const THREADS: usize = 4;
    let mut lost_rounds = Vec::new();
    for round in 0..30 {
        let server = wire_server(ServerClose::Echo);
        let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
        let barrier = Arc::new(Barrier::new(THREADS));
        let pingers: Vec<_> = (0..THREADS)
            .map(|t| {
                let ws = ws.downgrade();
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    let mut ok = Vec::new();
                    for seq in 0.. {
                        match ws.ping(format!("{t}:{seq}").into_bytes()) {
                            Ok(()) => ok.push(seq),
                            Err(Error::PingsWaiting(_)) => thread::yield_now(),
                            Err(Error::InvalidState(_)) => break,
                            Err(e) => panic!("ping: {e:?}"),
                        }
                        if t == 0 && seq == 20 + 10 * round {
                            ws.close();
                        }
                    }
                    ok
                })
            })
            .collect();
        let accepted: Vec<Vec<usize>> = pingers.into_iter().map(|p| p.join().unwrap()).collect();
        assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
        drop(events);
        drop(ws);
        let wire = server.join();
        assert!(wire.after_close.is_empty(), "{:?}", wire.after_close);
        let mut got = vec![Vec::new(); THREADS];
        for (op, payload) in &wire.before_close {
            if *op == PING {
                let (t, seq) = decode(TEXT, payload);
                got[t].push(seq);
            }
        }
        for t in 0..THREADS {
            assert!(
                got[t].iter().all(|s| accepted[t].contains(s)),
                "round {round}: a refused ping went out"
            );
        }
        let lost: usize = (0..THREADS).map(|t| accepted[t].len() - got[t].len()).sum();
        if lost > 0 {
            lost_rounds.push((round, lost));
        }
    }
    assert!(
        lost_rounds.is_empty(),
        "(round, accepted pings never sent): {lost_rounds:?}"
    );
}

/// Pings accepted while a large message of ours is still going out (so the I/O thread
/// holds its 16 unwritten pings and 16 more wait for it), then `close`: every accepted
/// ping goes out before our Close, none is dropped.
#[test]
fn pings_waiting_behind_a_large_message_go_out_before_a_close() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        cap_receive_buffer(&stream, 64 << 10);
        accept_handshake(&mut stream);
        thread::sleep(Duration::from_millis(300)); // the client's socket fills
        record_wire_after_handshake(stream, ServerClose::Echo)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    ws.send(vec![7u8; 8 << 20]).unwrap();
    let mut accepted = Vec::new();
    let start = Instant::now();
    let mut seq = 0;
    while accepted.len() < 32 && start.elapsed() < Duration::from_millis(200) {
        match ws.ping(format!("0:{seq}").into_bytes()) {
            Ok(()) => {
                accepted.push(seq);
                seq += 1;
            }
            Err(Error::PingsWaiting(_)) => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e:?}"),
        }
    }
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    drop(events);
    drop(ws);
    let wire = server.join();
    let got: Vec<usize> = wire
        .before_close
        .iter()
        .filter(|(op, _)| *op == PING)
        .map(|(_, p)| decode(TEXT, p).1)
        .collect();
    assert_eq!(got, accepted, "pings on the wire = pings accepted");
}

/// As [`sends_racing_clean_reconnects_each_go_out_once_or_come_back`], with servers that
/// vanish (no Close) after a different number of messages: what was accepted may be lost
/// with its connection, but nothing goes out twice or on a later connection than the one
/// that accepted it out of order, nothing refused ever goes out, and `buffered_amount()`
/// starts each connection from 0 (it is 0 after the last one's clean close).
#[test]
fn sends_racing_lost_connections_never_go_out_twice_or_after_a_refusal() {
    let _g = shared();
    const THREADS: usize = 3;
    const CONNECTIONS: usize = 8;
    let server = crate::reconnect::multi_server(CONNECTIONS, |i, stream| {
        let policy = if i + 1 < CONNECTIONS {
            ServerClose::Vanish(50 + 97 * i)
        } else {
            ServerClose::Echo
        };
        record_wire(stream, policy)
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
    let watcher = watch_buffered(ws.downgrade(), Arc::clone(&stop));
    let senders = send_across_reconnects(&ws, THREADS, &stop);
    let mut opens = 0;
    while opens < CONNECTIONS {
        match events.recv_timeout(WAIT) {
            Ok(Event::Open) => opens += 1,
            Ok(_) => {}
            Err(e) => panic!("{opens} connections opened: {e}"),
        }
    }
    thread::sleep(Duration::from_millis(50));
    ws.close();
    let c = ws.wait_closed_timeout(WAIT).expect("closed");
    stop.store(true, SeqCst);
    let accepted: Vec<Vec<usize>> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    assert!(c.was_clean, "{c:?}");
    assert_eq!(ws.buffered_amount(), 0);
    let max = watcher.join().unwrap();
    assert!(max < ABSURD, "buffered_amount() was {max}");
    drop(events);
    drop(ws);
    let wires = server.join();
    assert_eq!(wires.len(), CONNECTIONS);
    let mut got = vec![Vec::new(); THREADS];
    for (i, wire) in wires.iter().enumerate() {
        assert!(wire.after_close.is_empty(), "connection {i}");
        for (op, payload) in &wire.before_close {
            if *op == TEXT || *op == BINARY {
                let (t, seq) = decode(*op, payload);
                got[t].push(seq);
            }
        }
    }
    for t in 0..THREADS {
        assert!(
            got[t].windows(2).all(|w| w[0] < w[1]),
            "thread {t}: out of order or twice"
        );
        let refused: Vec<_> = got[t]
            .iter()
            .filter(|s| accepted[t].binary_search(s).is_err())
            .collect();
        assert!(
            refused.is_empty(),
            "thread {t}: refused but sent: {refused:?}"
        );
    }
}
