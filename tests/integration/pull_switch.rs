//! Pull style's switch to the raw receiver: events taken through the crate's methods
//! (`recv`, `recv_timeout`, `try_recv`, `try_iter`, `dispatch_pending_at_most`), then
//! through the raw crossbeam receiver (`receiver()`, `select!` through `Deref`), by
//! clones on other threads, across a full queue, the end of the connection and a
//! reconnect: every message exactly once, in order, `Close` last, then the channel
//! disconnects.
//!
//! Written before pull style's hand-over changes to whole bursts buffered inside each
//! `Events` (moved into the raw channel at the first use of the raw receiver): what must
//! hold before and after. Clones are moved into threads, never shared by reference
//! (`Events` is to stop being `Sync`).

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel::{self, select, RecvError, RecvTimeoutError, TryRecvError};
use nwebsocket::{Event, Events, Message, Reconnect, WebSocket, WebSocketRef};

use crate::reconnect::multi_server;
use crate::support::*;

/// The number of a numbered message (text `"17"`, or `"17 "` and padding).
fn num(event: &Event) -> usize {
    match event {
        Event::Message(m) => text_num(m),
        other => panic!("expected a numbered message, got {other:?}"),
    }
}

fn text_num(m: &Message) -> usize {
    let text = m.as_text().unwrap_or_else(|| panic!("not text: {m:?}"));
    let digits = text.split(' ').next().unwrap_or_default();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("not a numbered message: {text:?}"))
}

/// The text of message `i`: its number, then `pad` bytes of padding after a space.
fn numbered(i: usize, pad: usize) -> tungstenite::Message {
    if pad == 0 {
        tungstenite::Message::text(i.to_string())
    } else {
        tungstenite::Message::text(format!("{i} {}", "x".repeat(pad)))
    }
}

/// How a [`numbered_server`] ends its connection after the messages.
#[derive(Clone, Copy)]
enum End {
    /// It sends its Close right after the last message.
    ServerCloses,
    /// It waits for the client's Close.
    ClientCloses,
}

/// A server that writes messages `0..n` (each with `pad` bytes of padding) in one flood,
/// then ends as `end` says; returns the client's close code, if the client sent one.
fn numbered_server(n: usize, pad: usize, end: End) -> Server<Option<u16>> {
    server(move |mut ws| {
        for i in 0..n {
            ws.write(numbered(i, pad)).expect("server: write");
        }
        ws.flush().expect("server: flush");
        if let End::ServerCloses = end {
            ws.close(None).expect("server: close");
        }
        read_until_close(&mut ws).1.map(|f| u16::from(f.code))
    })
}

/// One event through `select!` on the raw receiver (beside a channel of the caller's own,
/// as a real program would), at most [`WAIT`]: `Err` once the channel has disconnected.
fn select_one(events: &Events) -> Result<Event, RecvError> {
    let own = crossbeam_channel::never::<()>();
    select! {
        recv(events) -> event => event,
        recv(own) -> _ => unreachable!("nothing is sent on our own channel"),
        default(WAIT) => panic!("no event through select! within {WAIT:?}"),
    }
}

/// The next event through `select!`, which must be one.
fn select_event(events: &Events) -> Event {
    select_one(events).expect("an event, not the channel's end")
}

/// The next event through `recv_timeout`, which must be one.
fn recv_event(events: &Events) -> Event {
    match events.recv_timeout(WAIT) {
        Ok(e) => e,
        Err(e) => panic!("no event within {WAIT:?}: {e}"),
    }
}

/// Asserts that `event` is message `expected`.
#[track_caller]
fn assert_msg(event: &Event, expected: usize) {
    assert!(
        matches!(event, Event::Message(_)),
        "expected message {expected}, got {event:?}"
    );
    assert_eq!(num(event), expected, "messages out of order");
}

/// Asserts that the channel has disconnected, seen through `select!` on the raw receiver
/// (no event may follow the `Close`).
#[track_caller]
fn assert_disconnected_in_select(events: &Events) {
    match select_one(events) {
        Err(RecvError) => {}
        Ok(e) => panic!("an event after Close: {e:?}"),
    }
}

/// Asserts that the channel has disconnected, seen through `recv_timeout` and `try_recv`.
#[track_caller]
fn assert_disconnected(events: &Events) {
    match events.recv_timeout(WAIT) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("expected the channel's end after Close, got {other:?}"),
    }
    assert!(
        matches!(events.try_recv(), Err(TryRecvError::Disconnected)),
        "try_recv after the end"
    );
}

// ---------------------------------------------------------------------------------------
// 1. A switch in the middle of a flood.
// ---------------------------------------------------------------------------------------

/// Takes `Open` and messages `0..k` with `recv_timeout`, then messages `k..n` through
/// `select!`.
fn open_then_k_then_select(events: &Events, k: usize, n: usize) {
    assert!(matches!(recv_event(events), Event::Open));
    for i in 0..k {
        assert_msg(&recv_event(events), i);
    }
    for i in k..n {
        assert_msg(&select_event(events), i);
    }
}

/// The server floods 5,000 messages and waits; the client takes `Open` and the first `k`
/// with `recv_timeout`, the rest through `select!` (for several `k`: right after `Open`,
/// within the first read burst, at its edge, past it), then closes: every message once,
/// in order, then a clean `Close`, then the channel's end, all seen through `select!`.
#[test]
fn a_switch_to_select_mid_flood_loses_and_doubles_nothing_then_the_client_closes() {
    let _g = shared();
    const N: usize = 5_000;
    for k in [0, 1, 10, 255, 256, 257, 1_000, 4_500] {
        let server = numbered_server(N, 0, End::ClientCloses);
        let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
        open_then_k_then_select(&events, k, N);
        ws.close();
        match select_event(&events) {
            Event::Close(c) => assert!(c.code == 1000 && c.was_clean, "k = {k}: {c:?}"),
            other => panic!("k = {k}: expected Close after the last message, got {other:?}"),
        }
        assert_disconnected_in_select(&events);
        assert_eq!(server.join(), Some(1000), "k = {k}");
    }
}

/// The same with the server closing right after its flood: the `Close` comes through
/// `select!` right after the last message, then the channel's end.
#[test]
fn a_switch_to_select_mid_flood_loses_and_doubles_nothing_then_the_server_closes() {
    let _g = shared();
    const N: usize = 5_000;
    for k in [0, 10, 256, 3_000] {
        let server = numbered_server(N, 0, End::ServerCloses);
        let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
        open_then_k_then_select(&events, k, N);
        match select_event(&events) {
            Event::Close(c) => assert!(c.was_clean, "k = {k}: {c:?}"),
            other => panic!("k = {k}: expected Close after the last message, got {other:?}"),
        }
        assert_disconnected_in_select(&events);
        assert!(ws.wait_closed_timeout(WAIT).is_some(), "k = {k}");
        server.join();
    }
}

// ---------------------------------------------------------------------------------------
// 2. A switch after the end.
// ---------------------------------------------------------------------------------------

/// The server sends 2,000 small messages and closes; once `wait_closed` has returned the
/// client takes `Open` and three messages with `try_recv`, a thousand through `select!`
/// and the rest with `receiver().recv_timeout`: all in order, `Close` last, then the end.
#[test]
fn a_switch_after_the_connection_ended_takes_everything_left_in_order() {
    let _g = shared();
    const N: usize = 2_000; // within the default queue: the server's Close is read
    let server = numbered_server(N, 0, End::ServerCloses);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let closed = ws.wait_closed_timeout(WAIT).expect("the server closed");
    assert!(closed.was_clean, "{closed:?}");
    assert!(matches!(events.try_recv(), Ok(Event::Open)));
    for i in 0..3 {
        assert_msg(&events.try_recv().expect("waiting already"), i);
    }
    for i in 3..1_000 {
        assert_msg(&select_event(&events), i);
    }
    let raw = events.receiver();
    for i in 1_000..N {
        assert_msg(&raw.recv_timeout(WAIT).expect("an event"), i);
    }
    match raw.recv_timeout(WAIT) {
        Ok(Event::Close(c)) => assert!(c.was_clean, "{c:?}"),
        other => panic!("expected Close after the last message, got {other:?}"),
    }
    assert!(
        matches!(raw.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected)),
        "the raw receiver's end after Close"
    );
    assert!(matches!(raw.try_recv(), Err(TryRecvError::Disconnected)));
    assert_disconnected(&events);
    server.join();
}

/// The same, the raw receiver used first through `Deref` (`select!`) for everything left
/// after `Open` was taken with `recv`, all of it waiting since the end.
#[test]
fn a_first_select_after_the_end_takes_everything_after_open() {
    let _g = shared();
    const N: usize = 1_000;
    let server = numbered_server(N, 0, End::ServerCloses);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    ws.wait_closed_timeout(WAIT).expect("the server closed");
    assert!(matches!(recv_event(&events), Event::Open));
    for i in 0..N {
        assert_msg(&select_event(&events), i);
    }
    assert!(matches!(select_event(&events), Event::Close(_)));
    assert_disconnected_in_select(&events);
    assert_disconnected(&events);
    server.join();
}

// ---------------------------------------------------------------------------------------
// 3. A switch while a full queue holds the I/O thread.
// ---------------------------------------------------------------------------------------

/// Takes `Open` and messages `0..3` with `recv`, waits (bounded) until `at_least` events
/// wait, the queue full and the I/O thread held by it, then takes messages `3..n`
/// through `select!`, then `Close` and the end.
fn stall_then_select(events: &Events, at_least: usize, n: usize) {
    assert!(matches!(events.recv(), Ok(Event::Open)));
    for i in 0..3 {
        assert_msg(&events.recv().expect("a message"), i);
    }
    assert!(
        eventually(WAIT, || events.len() >= at_least),
        "the queue never filled: {} events wait",
        events.len()
    );
    for i in 3..n {
        assert_msg(&select_event(events), i);
    }
    assert!(matches!(select_event(events), Event::Close(_)));
    assert_disconnected_in_select(events);
}

/// `incoming_queue(16)`, the server floods 20,000 messages; the consumer takes a few,
/// stalls until the queue is full, then switches to `select!`: every message, in order.
#[test]
fn a_switch_while_a_full_queue_of_events_holds_the_io_thread() {
    let _g = shared();
    const N: usize = 20_000;
    let server = numbered_server(N, 0, End::ServerCloses);
    let (ws, events) = WebSocket::builder()
        .incoming_queue(16)
        .connect_pull(&server.url())
        .expect("connect");
    let started = Instant::now();
    stall_then_select(&events, 16, N);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "20,000 messages through a queue of 16 took {:?}",
        started.elapsed()
    );
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    server.join();
}

/// The same with the queue bounded in payload bytes: 4 KiB, messages of about 200 bytes.
#[test]
fn a_switch_while_a_full_queue_of_bytes_holds_the_io_thread() {
    let _g = shared();
    const N: usize = 5_000;
    const PAD: usize = 200;
    let server = numbered_server(N, PAD, End::ServerCloses);
    let (ws, events) = WebSocket::builder()
        .incoming_queue_bytes(4 << 10)
        .connect_pull(&server.url())
        .expect("connect");
    // 4 KiB of messages of 202 to 205 bytes: 20 of them, Open and 3 taken. (Taken
    // bytes count as waiting until the channel is empty or 64 KiB more have gone over,
    // so after these takes the I/O thread puts no more in: 16 or 17 wait.)
    stall_then_select(&events, (4 << 10) / (PAD + 5) - 4, N);
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    server.join();
}

// ---------------------------------------------------------------------------------------
// 4. Clones.
// ---------------------------------------------------------------------------------------

/// A clone takes one message and is dropped; another, moved to a thread, takes 300 and
/// ends with its thread; the original takes all the rest: nothing the clones did not take
/// is lost, nothing is doubled.
#[test]
fn dropped_clones_leave_every_message_they_did_not_take_to_the_original() {
    let _g = shared();
    const N: usize = 5_000;
    let server = numbered_server(N, 0, End::ClientCloses);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(recv_event(&events), Event::Open));
    let c = events.clone();
    assert_msg(&recv_event(&c), 0);
    drop(c);
    let c = events.clone();
    let taken = thread::spawn(move || (1..301).map(|_| num(&recv_event(&c))).collect::<Vec<_>>())
        .join()
        .expect("the clone's thread");
    assert_eq!(taken, (1..301).collect::<Vec<_>>());
    for i in 301..N {
        assert_msg(&recv_event(&events), i);
    }
    ws.close();
    assert!(matches!(recv_event(&events), Event::Close(c) if c.was_clean));
    assert_disconnected(&events);
    assert_eq!(server.join(), Some(1000));
}

/// What one consumer of a shared channel saw: the message numbers, and where it saw
/// `Open` and `Close` (indices into its own sequence of events).
#[derive(Debug, Default)]
struct Share {
    numbers: Vec<usize>,
    open_at: Vec<usize>,
    close_at: Vec<usize>,
    events: usize,
}

impl Share {
    fn note(&mut self, event: &Event) {
        match event {
            Event::Open => self.open_at.push(self.events),
            Event::Close(_) => self.close_at.push(self.events),
            Event::Message(_) => self.numbers.push(num(event)),
            other => panic!("unexpected {other:?}"),
        }
        self.events += 1;
    }
}

/// Two consumers' shares: each in order, every message in exactly one, one `Open` (the
/// first event of whichever took it), one `Close` (the last of whichever took it).
fn assert_shared_exactly_once(a: &Share, b: &Share, n: usize) {
    for (name, s) in [("first", a), ("second", b)] {
        assert!(
            s.numbers.windows(2).all(|w| w[0] < w[1]),
            "the {name} consumer's share is out of order"
        );
        assert!(s.open_at.iter().all(|&i| i == 0), "{name}: Open not first");
        assert!(
            s.close_at.iter().all(|&i| i + 1 == s.events),
            "{name}: Close not last"
        );
    }
    assert_eq!(a.open_at.len() + b.open_at.len(), 1, "one Open");
    assert_eq!(a.close_at.len() + b.close_at.len(), 1, "one Close");
    let mut all: Vec<usize> = a.numbers.iter().chain(&b.numbers).copied().collect();
    all.sort_unstable();
    assert_eq!(all.len(), n, "messages taken in all");
    assert!(
        all.iter().copied().eq(0..n),
        "each message exactly once in the union"
    );
}

/// Takes events with `recv_timeout` until the channel's end, into `share`.
fn share_by_recv(events: &Events, mut share: Share) -> Share {
    loop {
        match events.recv_timeout(WAIT) {
            Ok(e) => share.note(&e),
            Err(RecvTimeoutError::Disconnected) => return share,
            Err(RecvTimeoutError::Timeout) => panic!("no event for {WAIT:?}: {share:?}"),
        }
    }
}

/// Takes events through `select!` until the channel's end, into `share`.
fn share_by_select(events: &Events, mut share: Share) -> Share {
    while let Ok(e) = select_one(events) {
        share.note(&e);
    }
    share
}

/// A clone moved to another thread and the original take at once, both with
/// `recv_timeout`, until the channel's end (the server closes after 20,000 messages).
#[test]
fn a_clone_on_another_thread_and_the_original_share_every_message_exactly_once() {
    let _g = shared();
    const N: usize = 20_000;
    let server = numbered_server(N, 0, End::ServerCloses);
    let (ws, events) = WebSocket::builder()
        .incoming_queue(64)
        .open_pull(&server.url())
        .expect("connect");
    let c = events.clone();
    let other = thread::spawn(move || share_by_recv(&c, Share::default()));
    let mine = share_by_recv(&events, Share::default());
    let theirs = other.join().expect("the clone's thread");
    assert_shared_exactly_once(&mine, &theirs, N);
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    server.join();
}

/// The same with the clone's thread taking through `select!` (the raw receiver) while the
/// original takes with `recv_timeout`.
#[test]
fn a_clone_taking_through_select_and_the_original_share_every_message_exactly_once() {
    let _g = shared();
    const N: usize = 20_000;
    let server = numbered_server(N, 0, End::ServerCloses);
    let (ws, events) = WebSocket::builder()
        .incoming_queue(64)
        .open_pull(&server.url())
        .expect("connect");
    let c = events.clone();
    let (started_tx, started) = mpsc::channel();
    let other = thread::spawn(move || {
        // Some of the events go through the methods first, then the switch.
        let mut share = Share::default();
        for _ in 0..50 {
            share.note(&recv_event(&c));
        }
        started_tx.send(()).unwrap();
        share_by_select(&c, share)
    });
    started.recv_timeout(WAIT).expect("the clone took 50");
    let mine = share_by_recv(&events, Share::default());
    let theirs = other.join().expect("the clone's thread");
    assert_shared_exactly_once(&mine, &theirs, N);
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    server.join();
}

// ---------------------------------------------------------------------------------------
// 5. `len`, `is_empty`, `try_iter`.
// ---------------------------------------------------------------------------------------

/// Once the server has sent ten messages and closed, and `wait_closed` has returned, all
/// the connection's events wait: `len()` counts `Open`, the ten and `Close`; one taken
/// with `recv` counts one less; `try_iter()` yields the rest in order; then the channel is
/// empty, and ended.
#[test]
fn len_counts_every_event_waiting_after_the_end_and_try_iter_takes_them_in_order() {
    let _g = shared();
    const M: usize = 10;
    let server = numbered_server(M, 0, End::ServerCloses);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    ws.wait_closed_timeout(WAIT).expect("the server closed");
    assert_eq!(events.len(), M + 2, "Open, {M} messages, Close");
    assert!(!events.is_empty());
    assert!(matches!(events.recv(), Ok(Event::Open)));
    assert_eq!(events.len(), M + 1, "after one taken");
    let rest: Vec<Event> = events.try_iter().collect();
    assert_eq!(rest.len(), M + 1, "{rest:?}");
    for (i, e) in rest[..M].iter().enumerate() {
        assert_msg(e, i);
    }
    assert!(matches!(rest[M], Event::Close(_)), "{:?}", rest[M]);
    assert!(events.is_empty());
    assert_eq!(events.len(), 0);
    assert_eq!(events.try_iter().count(), 0);
    assert_disconnected(&events);
    server.join();
}

/// The same counts seen through a clone, before and after the original took some.
#[test]
fn len_and_try_iter_through_a_clone_after_the_end() {
    let _g = shared();
    const M: usize = 10;
    let server = numbered_server(M, 0, End::ServerCloses);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    ws.wait_closed_timeout(WAIT).expect("the server closed");
    let c = events.clone();
    assert_eq!(c.len(), M + 2);
    assert!(matches!(events.try_recv(), Ok(Event::Open)));
    assert_msg(&events.try_recv().expect("waiting"), 0);
    drop(events);
    assert_eq!(c.len(), M, "nine messages and Close left for the clone");
    let rest: Vec<Event> = c.try_iter().collect();
    for (i, e) in rest[..M - 1].iter().enumerate() {
        assert_msg(e, i + 1);
    }
    assert!(matches!(rest.as_slice(), [.., Event::Close(_)]), "{rest:?}");
    assert_eq!(rest.len(), M);
    assert!(c.is_empty());
    assert_disconnected(&c);
    server.join();
}

// ---------------------------------------------------------------------------------------
// 6. `dispatch_pending_at_most`.
// ---------------------------------------------------------------------------------------

/// `Open` taken with `recv`, then `dispatch_pending_at_most(3)` while more wait: exactly
/// messages 0, 1 and 2; the next `recv` is message 3; `dispatch_pending` then takes the
/// rest and the `Close`.
#[test]
fn dispatch_pending_at_most_takes_exactly_that_many_and_recv_goes_on_after_them() {
    let _g = shared();
    const M: usize = 10;
    let server = numbered_server(M, 0, End::ServerCloses);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    ws.wait_closed_timeout(WAIT).expect("the server closed");
    assert!(matches!(events.recv(), Ok(Event::Open)));
    let (mut handler, recs) = recorder();
    assert_eq!(ws.dispatch_pending_at_most(&events, &mut handler, 3), 3);
    let got: Vec<usize> = recs
        .try_iter()
        .map(|r| match r {
            Rec::Message(m) => text_num(&m),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, [0, 1, 2]);
    assert_msg(&events.recv().expect("a message"), 3);
    assert_eq!(ws.dispatch_pending(&events, &mut handler), M - 4 + 1);
    let got: Vec<Rec> = recs.try_iter().collect();
    assert_eq!(got.len(), M - 4 + 1, "{got:?}");
    for (i, r) in got[..M - 4].iter().enumerate() {
        assert!(
            matches!(r, Rec::Message(m) if text_num(m) == i + 4),
            "{got:?}"
        );
    }
    assert!(matches!(got[M - 4], Rec::Close(..)), "{got:?}");
    assert_disconnected(&events);
    server.join();
}

/// The same while the connection is live and a flood comes in: `dispatch_pending_at_most`
/// right after the `recv` of `Open` takes exactly 3 once more than 3 wait.
#[test]
fn dispatch_pending_at_most_during_a_flood_takes_exactly_that_many() {
    let _g = shared();
    const N: usize = 3_000;
    let server = numbered_server(N, 0, End::ClientCloses);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(recv_event(&events), Event::Open));
    assert!(
        eventually(WAIT, || events.len() > 3),
        "never more than 3 waiting"
    );
    struct Nums(Vec<usize>);
    impl nwebsocket::Handler for Nums {
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            self.0.push(text_num(&msg));
        }
    }
    let mut h = Nums(Vec::new());
    assert_eq!(ws.dispatch_pending_at_most(&events, &mut h, 3), 3);
    assert_eq!(h.0, [0, 1, 2]);
    for i in 3..N {
        assert_msg(&recv_event(&events), i);
    }
    ws.close();
    assert!(matches!(recv_event(&events), Event::Close(_)));
    assert_disconnected(&events);
    server.join();
}

// ---------------------------------------------------------------------------------------
// 7. Alternating.
// ---------------------------------------------------------------------------------------

/// Takes alternate between `recv_timeout`, `select!` and `receiver().recv_timeout`, one
/// event each, over 3,000 messages through a queue of 64: strictly in order.
#[test]
fn alternating_recv_timeout_and_select_keeps_the_order() {
    let _g = shared();
    const N: usize = 3_000;
    let server = numbered_server(N, 0, End::ServerCloses);
    let (ws, events) = WebSocket::builder()
        .incoming_queue(64)
        .connect_pull(&server.url())
        .expect("connect");
    assert!(matches!(recv_event(&events), Event::Open));
    for i in 0..N {
        let e = match i % 3 {
            0 => recv_event(&events),
            1 => select_event(&events),
            _ => events
                .receiver()
                .recv_timeout(WAIT)
                .expect("an event through the raw receiver"),
        };
        assert_msg(&e, i);
    }
    assert!(matches!(recv_event(&events), Event::Close(_)));
    assert_disconnected_in_select(&events);
    assert_disconnected(&events);
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    server.join();
}

// ---------------------------------------------------------------------------------------
// 8. Reconnect.
// ---------------------------------------------------------------------------------------

/// Two connections, each with its numbered messages (the second's from 10,000 on): the
/// first closes cleanly once the test says so, the second waits for the client's Close.
/// The client switches to `select!` during the first connection, a few messages in: the
/// events of both arrive in order (`Open`, messages, `Close`, `Open`, messages, `Close`),
/// then the channel's end once `close()` has ended reconnecting.
#[test]
fn a_switch_during_the_first_connection_keeps_both_connections_events_in_order() {
    let _g = shared();
    const PER: usize = 2_000;
    let (go_tx, go) = crossbeam_channel::bounded::<()>(1);
    let server = multi_server(2, move |index, stream| {
        let mut ws = tungstenite::accept(stream).expect("server: handshake");
        for i in 0..PER {
            ws.write(numbered(index * 10_000 + i, 0))
                .expect("server: write");
        }
        ws.flush().expect("server: flush");
        if index == 0 {
            go.recv_timeout(WAIT).expect("server: the test's go");
            ws.close(None).expect("server: close");
        }
        read_until_close(&mut ws).1.map(|f| u16::from(f.code))
    });
    let (ws, events) = WebSocket::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(10))
                .jitter(0.0)
                .stop_on_clean_close(false),
        )
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    assert!(matches!(recv_event(&events), Event::Open));
    for i in 0..3 {
        assert_msg(&recv_event(&events), i);
    }
    // The switch, while the first connection is open.
    assert_msg(&select_event(&events), 3);
    go_tx.send(()).unwrap();
    for i in 4..PER {
        assert_msg(&select_event(&events), i);
    }
    match select_event(&events) {
        Event::Close(c) => assert!(c.was_clean, "{c:?}"),
        other => panic!("expected the first connection's Close, got {other:?}"),
    }
    assert!(
        matches!(select_event(&events), Event::Open),
        "the second connection"
    );
    for i in 0..PER {
        assert_msg(&select_event(&events), 10_000 + i);
    }
    ws.close();
    match select_event(&events) {
        Event::Close(c) => assert!(c.code == 1000 && c.was_clean, "{c:?}"),
        other => panic!("expected the second connection's Close, got {other:?}"),
    }
    assert_disconnected_in_select(&events);
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    drop(ws);
    let codes = server.join();
    assert_eq!(codes.len(), 2, "two connections");
    assert_eq!(codes[1], Some(1000), "the client's close() on the second");
}
