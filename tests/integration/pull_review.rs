//! Pull style's bursts (each `Events` clone hands out events from a buffer of its own):
//! what a clone holds when it is dropped, or when the raw receiver is used, reaches the
//! other clones, through the crate's methods and through `select!`, at once and in order;
//! `len` on a clone that takes nothing takes nothing from the others.

use std::thread;
use std::time::Duration;

use nwebsocket::crossbeam_channel::{self, select, RecvError, RecvTimeoutError, Sender};
use nwebsocket::{Event, Events, WebSocket};

use crate::support::*;

/// The number of a numbered message (text `"17"`).
fn num(event: &Event) -> usize {
    match event {
        Event::Message(m) => m
            .as_text()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("not a numbered message: {m:?}")),
        other => panic!("expected a numbered message, got {other:?}"),
    }
}

#[track_caller]
fn assert_msg(event: &Event, expected: usize) {
    assert!(
        matches!(event, Event::Message(_)),
        "expected message {expected}, got {event:?}"
    );
    assert_eq!(num(event), expected, "messages out of order");
}

/// A server that sends each of `stages` (numbered messages `start..end`, in one flush) at
/// the test's go, then closes once the last has gone (`close`) or waits for the client's Close.
fn staged_server(stages: &[(usize, usize)], close: bool) -> (Server<()>, Sender<()>) {
    let (go_tx, go) = crossbeam_channel::unbounded::<()>();
    let stages = stages.to_vec();
    let server = server(move |mut ws| {
        for (start, end) in stages {
            go.recv_timeout(WAIT).expect("server: the test's go");
            for i in start..end {
                ws.write(tungstenite::Message::text(i.to_string()))
                    .expect("server: write");
            }
            ws.flush().expect("server: flush");
        }
        if close {
            ws.close(None).expect("server: close");
        }
        read_until_close(&mut ws);
    });
    (server, go_tx)
}

/// Once the `total` messages `0..total` wait (the only events waiting, none in `other`'s
/// buffer), `taker` takes the first and as many more as it needs to have taken every
/// burst from the channel: the rest of the last burst is in its buffer. Returns the
/// number of the first message it holds.
fn hold_burst(taker: &Events, other: &Events, total: usize) -> usize {
    assert!(
        eventually(WAIT, || other.len() == total),
        "{} of {total} messages arrived",
        other.len()
    );
    let mut next = 0;
    loop {
        assert_msg(&next_event(taker), next);
        next += 1;
        // `other` has nothing of its own: what it counts waits in the channel.
        if other.is_empty() {
            break;
        }
    }
    assert!(
        !taker.is_empty(),
        "the last burst held one message only: nothing left in the taker's buffer"
    );
    next
}

/// One event through `select!` on the raw receiver, at most [`WAIT`]: `Err` once the
/// channel has disconnected.
fn select_one(events: &Events) -> Result<Event, RecvError> {
    let own = crossbeam_channel::never::<()>();
    select! {
        recv(events) -> event => event,
        recv(own) -> _ => unreachable!(),
        default(WAIT) => panic!("no event through select! within {WAIT:?}"),
    }
}

fn select_event(events: &Events) -> Event {
    select_one(events).expect("an event, not the channel's end")
}

/// A clone takes part of a burst; the original, moved to a thread, blocks in `recv`
/// (nothing waits for it); the clone is dropped. The events it held are the original's
/// at once, on an idle connection, and before the messages that come after them.
#[test]
fn a_clone_blocked_in_recv_gets_at_once_what_a_dropped_clone_left() {
    let _g = shared();
    let (server, go) = staged_server(&[(0, 10), (10, 20)], true);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let b = events.clone();
    go.send(()).unwrap();
    let next = hold_burst(&b, &events, 10);
    let (tx, got) = crossbeam_channel::unbounded();
    let taker = thread::Builder::new()
        .name("review-taker-1".into())
        .spawn(move || loop {
            match events.recv_timeout(WAIT) {
                Ok(e) => {
                    let _ = tx.send(e);
                }
                Err(e) => return e,
            }
        })
        .unwrap();
    let tid = thread_named("review-taker-1").expect("the taker's thread");
    assert!(
        blocked_for(tid, Duration::from_millis(50)),
        "the taker blocks in recv: nothing waits for it"
    );
    drop(b);
    match got.recv_timeout(Duration::from_secs(3)) {
        Ok(e) => assert_msg(&e, next),
        Err(_) => panic!(
            "the clone blocked in recv did not get the {} events the dropped clone left",
            10 - next
        ),
    }
    go.send(()).unwrap();
    for i in next + 1..20 {
        assert_msg(&got.recv_timeout(WAIT).expect("a message"), i);
    }
    assert!(matches!(got.recv_timeout(WAIT), Ok(Event::Close(_))));
    assert_eq!(taker.join().unwrap(), RecvTimeoutError::Disconnected);
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    server.join();
}

/// A clone takes part of a burst; the original switches to the raw receiver (nothing
/// waits for it then); the clone is dropped: the raw receiver gets what it held, before
/// the messages that come after.
#[test]
fn a_clone_dropped_after_the_switch_leaves_its_events_to_the_raw_receiver() {
    let _g = shared();
    let (server, go) = staged_server(&[(0, 10), (10, 20)], true);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let b = events.clone();
    go.send(()).unwrap();
    let next = hold_burst(&b, &events, 10);
    assert!(
        events.receiver().is_empty(),
        "nothing waits for the original"
    );
    drop(b);
    go.send(()).unwrap();
    for i in next..20 {
        assert_msg(&select_event(&events), i);
    }
    assert!(matches!(select_event(&events), Event::Close(_)));
    assert!(select_one(&events).is_err(), "the end after Close");
    assert!(ws.wait_closed_timeout(WAIT).is_some());
    server.join();
}

/// A clone that only counts (`len`, `is_empty`) while another is dropped with events in
/// its buffer: the events stay for the clone that takes, and both count them.
#[test]
fn len_on_a_clone_that_takes_nothing_leaves_a_dropped_clones_events_to_the_others() {
    let _g = shared();
    let (server, go) = staged_server(&[(0, 10)], false);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let counter = events.clone();
    let b = events.clone();
    go.send(()).unwrap();
    let next = hold_burst(&b, &events, 10);
    drop(b);
    assert_eq!(counter.len(), 10 - next);
    assert!(!counter.is_empty());
    assert_eq!(events.len(), 10 - next, "the counting clone took them");
    for i in next..10 {
        assert_msg(&events.try_recv().expect("waiting"), i);
    }
    assert_eq!(counter.len(), 0);
    ws.close();
    assert!(matches!(next_event(&events), Event::Close(_)));
    assert!(matches!(
        events.recv_timeout(WAIT),
        Err(RecvTimeoutError::Disconnected)
    ));
    server.join();
}

/// After the end, a clone takes part of what waits with `recv`; the original switches to
/// the raw receiver (which takes the rest and ends); then the clone switches too: through
/// `select!` it finds what it held, then the end. Every event is taken once.
#[test]
fn a_clone_holding_events_after_the_end_finds_them_through_its_raw_receiver() {
    let _g = shared();
    const M: usize = 10;
    let (server, go) = staged_server(&[(0, M)], true);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    go.send(()).unwrap();
    ws.wait_closed_timeout(WAIT).expect("the server closed");
    let b = events.clone();
    let mut taken = vec![b.try_recv().expect("Open waits")];
    // Until the clone holds some of what waits in its buffer.
    while b.len() == events.len() && !events.is_empty() {
        taken.push(b.try_recv().expect("waiting"));
    }
    assert!(b.len() > events.len(), "the clone holds events: {taken:?}");
    while let Ok(e) = select_one(&events) {
        taken.push(e);
    }
    while let Ok(e) = select_one(&b) {
        taken.push(e);
    }
    assert!(matches!(taken[0], Event::Open), "{taken:?}");
    let mut numbers: Vec<usize> = taken
        .iter()
        .filter(|e| matches!(e, Event::Message(_)))
        .map(num)
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..M).collect::<Vec<_>>(), "{taken:?}");
    assert_eq!(
        taken
            .iter()
            .filter(|e| matches!(e, Event::Close(_)))
            .count(),
        1,
        "{taken:?}"
    );
    assert_eq!(taken.len(), M + 2, "{taken:?}");
    server.join();
}
