//! Pull style in batches (`Builder::connect_batches`): the same events as pull style, in
//! order, whole read bursts at a time, bounded, and dispatchable on the caller's thread.

use std::time::Duration;

use nwebsocket::{Error, Event, EventBatches, Handler, Message, WebSocket, WebSocketRef};

use crate::support::*;

/// Every event of `batches` until the channel disconnects (bounded by `WAIT` per batch).
fn all_events(batches: &EventBatches) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut count = 0;
    loop {
        match batches.recv_timeout(WAIT) {
            Ok(mut batch) => {
                assert!(!batch.is_empty(), "an empty batch");
                count += 1;
                events.append(&mut batch);
                batches.recycle(batch);
            }
            Err(nwebsocket::crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return (events, count)
            }
            Err(e) => panic!("no batch and no end within {WAIT:?}: {e}"),
        }
    }
}

/// The messages among `events`.
fn messages(events: &[Event]) -> Vec<&Message> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn a_flood_arrives_whole_and_in_order_in_batches_then_the_channel_ends() {
    let _g = shared();
    const N: usize = 20_000;
    let server = server(|mut ws| {
        for i in 0..N {
            ws.write(nth_message(i)).unwrap();
        }
        ws.flush().unwrap();
        ws.close(None).unwrap();
        read_until_close(&mut ws);
    });
    let (ws, batches) = WebSocket::builder()
        .connect_batches(&server.url())
        .expect("connect");
    let (events, count) = all_events(&batches);
    assert!(
        matches!(events.first(), Some(Event::Open)),
        "{:?}",
        events.first()
    );
    assert!(
        matches!(events.last(), Some(Event::Close(c)) if c.was_clean && c.code == 1005),
        "{:?}",
        events.last()
    );
    let messages = messages(&events);
    assert_eq!(messages.len(), N, "events: {}", events.len());
    assert_eq!(events.len(), N + 2, "only Open, the messages and Close");
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(**m, nth_expected(i), "message {i}");
    }
    // Bursts, not one batch per event (and never more than 512 events in one).
    assert!(count < N / 4, "{count} batches for {N} messages");
    assert!(batches.recv().is_err(), "the channel ends after Close");
    drop(ws);
    server.join();
}

/// Backpressure: while nobody takes batches, the I/O thread stops reading, so the
/// server's writes block after what one batch, one pending burst and the sockets hold.
#[test]
fn batches_nobody_takes_push_back_on_the_server() {
    let _g = shared();
    const N: usize = 4000;
    const LEN: usize = 16 << 10;
    let (server, blocked_rx) = flooding_server(N, LEN);
    let (ws, batches) = WebSocket::builder()
        .connect_batches(&server.url())
        .expect("connect");
    let blocked_at = blocked_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server's writes never blocked while nobody took batches");
    // Two batches of at most 2 MiB (128 messages of 16 KiB) and a few MiB of socket
    // buffers; without the bound all 4,000 (62 MiB) would have been read.
    assert!(
        blocked_at < 1000,
        "the server blocked only at message {blocked_at}"
    );
    assert!(batches.receiver().len() <= 1, "one batch waits at most");
    let (events, _) = all_events(&batches);
    let messages = messages(&events);
    assert_eq!(messages.len(), N);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.as_bytes(), flood_payload(i, LEN), "message {i}");
    }
    drop(ws);
    assert_eq!(server.join(), Some(blocked_at));
}

#[test]
fn dispatch_batches_runs_the_handler_on_the_callers_thread() {
    struct Seen {
        on: std::thread::ThreadId,
        texts: Vec<String>,
        closed: bool,
    }
    impl Handler for Seen {
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            assert_eq!(std::thread::current().id(), self.on);
            self.texts
                .push(msg.as_text().unwrap_or_default().to_owned());
        }
        fn onclose(&mut self, _ws: &WebSocketRef, _c: nwebsocket::CloseEvent) {
            self.closed = true;
        }
    }
    let _g = shared();
    let server = echo_server();
    let (ws, batches) = WebSocket::builder()
        .connect_batches(&server.url())
        .expect("connect");
    for i in 0..10 {
        ws.send(format!("echo {i}")).unwrap();
    }
    let mut seen = Seen {
        on: std::thread::current().id(),
        texts: Vec::new(),
        closed: false,
    };
    assert!(eventually(WAIT, || {
        ws.dispatch_batches(&batches, &mut seen);
        seen.texts.len() == 10
    }));
    let want: Vec<String> = (0..10).map(|i| format!("echo {i}")).collect();
    assert_eq!(seen.texts, want);
    ws.close();
    assert!(eventually(WAIT, || {
        ws.dispatch_batches(&batches, &mut seen);
        seen.closed
    }));
    drop(ws);
    server.join();
}

/// The connection ends while a batch still waits untaken: its last events are set aside,
/// and `dispatch_batches` hands them over too (the messages, then `onclose`). (Until
/// 2026-12-07 it looked only at the channel, which had disconnected: the last 99 messages
/// and the Close were never dispatched, and each call returned 0.)
#[test]
fn dispatch_batches_hands_over_the_events_set_aside_at_the_end() {
    #[derive(Default)]
    struct Seen {
        texts: Vec<String>,
        closes: Vec<nwebsocket::CloseEvent>,
    }
    impl Handler for Seen {
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            self.texts
                .push(msg.as_text().unwrap_or_default().to_owned());
        }
        fn onclose(&mut self, _ws: &WebSocketRef, c: nwebsocket::CloseEvent) {
            self.closes.push(c);
        }
    }
    let _g = exclusive();
    let (go_tx, go_rx) = nwebsocket::crossbeam_channel::bounded::<()>(1);
    let server = server(move |mut ws| {
        ws.send(tungstenite::Message::text("0")).unwrap();
        go_rx.recv_timeout(SOCKET_TIMEOUT).expect("server: go");
        for i in 1..100 {
            ws.send(tungstenite::Message::text(i.to_string())).unwrap();
        }
        ws.close(None).unwrap();
        read_until_close(&mut ws);
    });
    let before = crate_threads();
    let (ws, batches) = WebSocket::builder()
        .connect_batches(&server.url())
        .expect("connect");
    let io = new_crate_threads(&before, 1)[0].0;
    // A batch (Open, perhaps the first message) waits untaken when the rest comes.
    assert!(eventually(WAIT, || batches.receiver().len() == 1));
    go_tx.send(()).unwrap();
    assert!(ws.wait_closed_timeout(WAIT).is_some(), "never closed");
    // The I/O thread has set the rest aside and gone.
    assert!(
        eventually(WAIT, || !thread_alive(io)),
        "the I/O thread lives on"
    );
    let mut seen = Seen::default();
    for _ in 0..3 {
        ws.dispatch_batches(&batches, &mut seen);
    }
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(seen.texts, want);
    assert_eq!(seen.closes.len(), 1, "{:?}", seen.closes);
    assert_eq!(seen.closes[0].code, 1005);
    drop(ws);
    server.join();
}

/// A failure reaches a batch consumer as it reaches a pull consumer: `Error`, then
/// `Close` 1006, then the end of the channel.
#[test]
fn a_refused_connection_gives_error_then_close_in_a_batch() {
    let _g = shared();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_ws, batches) = WebSocket::builder()
        .open_batches(&format!("ws://127.0.0.1:{port}/"))
        .expect("open");
    let (events, _) = all_events(&batches);
    assert!(
        matches!(
            events.as_slice(),
            [Event::Error(Error::Connect { .. }), Event::Close(c)] if c.code == 1006 && !c.was_clean
        ),
        "{events:?}"
    );
}

// Review of 85f641e (2026-12-07): the wake-up that replaced `RETRY` in `IoThread::wait`.

/// Closing while the consumer takes every batch through the raw receiver (`select!`), the
/// server's Close behind more messages than the I/O thread reads past the consumer
/// (`DRAIN_EVENTS`, 65,536): the consumer makes room batch after batch, so the server's
/// Close must be read and the close end cleanly, after every message. Raw takes never send
/// the `Command::Room` that `Outlet::wake_when_taken` asked for, and nothing else looks
/// again (no `RETRY` since 85f641e): the I/O thread sleeps until the close timeout.
#[test]
fn closing_behind_a_flood_ends_cleanly_when_batches_are_taken_through_the_raw_receiver() {
    let _g = exclusive();
    const NOISE: usize = 70_000;
    let (sent_tx, sent) = nwebsocket::crossbeam_channel::bounded::<()>(1);
    let server = server(move |mut ws| {
        for n in 0..NOISE {
            ws.write(tungstenite::Message::text(n.to_string()))
                .expect("server: noise");
        }
        ws.flush().expect("server: flush");
        sent_tx.send(()).unwrap();
        read_until_close(&mut ws); // answers the client's Close
    });
    let before = crate_threads();
    let (ws, batches) = WebSocket::builder()
        .close_timeout(Duration::from_secs(5))
        .connect_batches(&server.url())
        .expect("connect");
    let (io, _) = new_crate_threads(&before, 1).remove(0);
    sent.recv_timeout(WAIT).expect("the server sent the flood");
    rested_or_gone(io, Duration::from_millis(200), Duration::from_secs(2));
    let closing = std::time::Instant::now();
    ws.close();
    // It reads on past the consumer up to its bound, and sleeps (or, before 85f641e, looks
    // for room every 5 ms).
    rested_or_gone(io, Duration::from_millis(200), Duration::from_secs(2));
    let rx = batches.receiver();
    let mut messages = 0;
    let mut close = None;
    while close.is_none() {
        let batch = match rx.recv_timeout(WAIT) {
            Ok(batch) => batch,
            // The connection's last events, set aside (see `EventBatches::receiver`).
            Err(nwebsocket::crossbeam_channel::RecvTimeoutError::Disconnected) => {
                match batches.try_recv() {
                    Ok(batch) => batch,
                    Err(_) => break,
                }
            }
            Err(e) => panic!("no batch within {WAIT:?}: {e}"),
        };
        for event in batch {
            match event {
                Event::Message(_) => {
                    assert!(close.is_none(), "a message after Close");
                    messages += 1;
                }
                Event::Close(c) => close = Some(c),
                _ => {}
            }
        }
    }
    let took = closing.elapsed();
    let close = close.expect("a Close event");
    assert!(
        messages == NOISE && close.was_clean && close.code == 1000,
        "the server answered the Close behind {NOISE} messages, but the close ended \
         {close:?} after {took:?}, with {messages} of them delivered"
    );
    server.join();
}
