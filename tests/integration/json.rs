//! The JSON layer: `send_json`, `Message::json`, `Router`, and `request` with correlation
//! ids, including many threads at once among unrelated traffic, timeouts and late replies.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel;
use nwebsocket::{
    Error, Event, Handler, Message, ReadyState, Router, Timeout, WebSocket, WebSocketRef,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::support::*;

/// A server that answers each JSON text carrying an `id` (in `field`) with one unrelated
/// message first, then the reply `{"type": "reply", <field>: id, "echo": <data>}`.
/// Returns how many requests it answered.
fn reply_server(field: &'static str, expected: usize) -> Server<usize> {
    server(move |mut ws| {
        let mut answered = 0;
        while answered < expected {
            let msg = match ws.read() {
                Ok(m) => m,
                Err(_) => break,
            };
            let Ok(text) = msg.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            let id = v[field].clone();
            let noise = json!({"type": "noise", "n": answered});
            ws.write(tungstenite::Message::text(noise.to_string()))
                .expect("server: write noise");
            let reply = json!({"type": "reply", field: id, "echo": v["data"]});
            ws.write(tungstenite::Message::text(reply.to_string()))
                .expect("server: write reply");
            ws.flush().expect("server: flush");
            answered += 1;
        }
        read_until_close(&mut ws);
        answered
    })
}

/// Counts unrelated messages (and keeps their `n`) on the callback thread.
#[derive(Default)]
struct Noise {
    seen: Vec<u64>,
    other: Vec<Message>,
}

impl Handler for Noise {
    fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
        match msg.json::<Value>() {
            Ok(v) if v["type"] == "noise" => self.seen.push(v["n"].as_u64().unwrap()),
            _ => self.other.push(msg),
        }
    }
}

#[test]
fn send_json_and_typed_view_round_trip() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Point {
        x: i32,
        y: i32,
    }
    let _g = shared();
    let server = echo_server();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    ws.send_json(&Point { x: 1, y: -2 }).expect("send_json");
    ws.send("not json").unwrap();
    ws.send(vec![1u8, 2]).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Event::Message(m) = next_event(&events) {
            got.push(m);
        }
    }
    assert!(got[0].is_text());
    assert_eq!(got[0].json::<Point>().unwrap(), Point { x: 1, y: -2 });
    assert!(matches!(got[1].json::<Point>(), Err(Error::Json { .. })));
    assert!(matches!(got[2].json::<Value>(), Err(Error::Json { .. })));
    // A map with non-string keys cannot be JSON: a typed error, nothing sent.
    let bad: std::collections::HashMap<(i32, i32), i32> = [((1, 2), 3)].into();
    assert!(matches!(ws.send_json(&bad), Err(Error::Json { .. })));
}

#[test]
fn router_dispatches_by_type_with_a_fallback() {
    #[derive(Deserialize)]
    struct Chat {
        data: String,
    }
    let _g = shared();
    let server = server(|mut ws| {
        for text in [
            r#"{"type": "message", "data": "hello"}"#,
            r#"{"type": "presence", "who": "bob"}"#,
            r#"{"type": "unknown", "x": 1}"#,
            "plain text",
            r#"{"type": "message", "data": 42}"#,
            r#"{"no_type": true}"#,
        ] {
            ws.send(tungstenite::Message::text(text)).unwrap();
        }
        ws.send(tungstenite::Message::binary(vec![9u8])).unwrap();
        read_until_close(&mut ws);
    });
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    let (t1, t2, t3, t4) = (tx.clone(), tx.clone(), tx.clone(), tx);
    let router = Router::new()
        .on("message", move |_ws: &WebSocketRef, c: Chat| {
            t1.send(format!("chat:{}", c.data)).unwrap()
        })
        .on("presence", move |_ws: &WebSocketRef, v: Value| {
            t2.send(format!("presence:{}", v["who"].as_str().unwrap()))
                .unwrap()
        })
        .fallback(move |_ws, m| {
            let shown = match m.as_text() {
                Some(t) => format!("fallback:{t}"),
                None => format!("fallback-binary:{:?}", m.as_bytes()),
            };
            t3.send(shown).unwrap()
        })
        .on_close(move |_ws, c| t4.send(format!("close:{}", c.code)).unwrap());
    let ws = WebSocket::connect(&server.url(), router).expect("connect");
    let mut got = Vec::new();
    while got.len() < 7 {
        got.push(rx.recv_timeout(WAIT).expect("a routed message"));
    }
    assert_eq!(
        got,
        [
            "chat:hello",
            "presence:bob",
            r#"fallback:{"type": "unknown", "x": 1}"#,
            "fallback:plain text",
            // `data` is not a string: it does not fit `Chat`, so it is not lost either.
            r#"fallback:{"type": "message", "data": 42}"#,
            r#"fallback:{"no_type": true}"#,
            "fallback-binary:[9]",
        ]
    );
    ws.close();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "close:1000");
    server.join();
}

/// 8 threads × 1,000 requests, each reply preceded by an unrelated message: every reply
/// reaches its own requester, every unrelated message reaches `onmessage`, none twice.
#[test]
fn request_from_eight_threads_among_unrelated_traffic() {
    const THREADS: usize = 8;
    const EACH: usize = 1_000;
    let _g = shared();
    let server = reply_server("id", THREADS * EACH);
    let ws = WebSocket::connect(&server.url(), Noise::default()).expect("connect");
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ws = ws.downgrade();
            thread::spawn(move || {
                for i in 0..EACH {
                    let data = format!("t{t}-{i}");
                    let reply: Value = ws
                        .request(&json!({"type": "ask", "data": data}), WAIT)
                        .expect("reply");
                    assert_eq!(reply["type"], "reply");
                    assert_eq!(
                        reply["echo"],
                        data.as_str(),
                        "a reply reached the wrong caller"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("requester thread");
    }
    assert!(
        eventually(WAIT, || ws.handler().seen.len() >= THREADS * EACH),
        "unrelated messages delivered: {}",
        ws.handler().seen.len()
    );
    {
        let h = ws.handler();
        let distinct: BTreeSet<u64> = h.seen.iter().copied().collect();
        assert_eq!(
            h.seen.len(),
            THREADS * EACH,
            "duplicates among unrelated messages"
        );
        assert_eq!(distinct.len(), THREADS * EACH);
        assert!(
            h.other.is_empty(),
            "replies leaked to onmessage: {:?}",
            &h.other[..1]
        );
    }
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    assert_eq!(server.join(), THREADS * EACH);
}

#[test]
fn request_works_in_pull_style_with_a_custom_id_field() {
    let _g = shared();
    let server = reply_server("rid", 3);
    let (ws, events) = WebSocket::builder()
        .request_id_field("rid")
        .connect_pull(&server.url())
        .expect("connect");
    for i in 0..3 {
        let reply: Value = ws
            .request(&json!({"data": i, "id": "left alone"}), WAIT)
            .expect("reply");
        assert_eq!(reply["echo"], i);
    }
    let mut noise = 0;
    let mut leaked = Vec::new();
    while noise < 3 {
        match next_event(&events) {
            Event::Message(m) if m.json::<Value>().unwrap()["type"] == "noise" => noise += 1,
            Event::Message(m) => leaked.push(m),
            _ => {}
        }
    }
    assert!(leaked.is_empty(), "{leaked:?}");
    ws.close();
    server.join();
}

/// Answers one request with `noise` unrelated messages first, then the reply.
fn flood_then_reply_server(noise: usize) -> Server<()> {
    server(move |mut ws| {
        loop {
            let Ok(msg) = ws.read() else { return };
            let Some(v) = msg
                .to_text()
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
            else {
                continue;
            };
            for n in 0..noise {
                let m = json!({"type": "noise", "n": n}).to_string();
                ws.write(tungstenite::Message::text(m))
                    .expect("server: noise");
            }
            let reply = json!({"type": "reply", "id": v["id"].clone()}).to_string();
            ws.write(tungstenite::Message::text(reply))
                .expect("server: reply");
            ws.flush().expect("server: flush");
            break;
        }
        read_until_close(&mut ws);
    })
}

/// The reply comes behind more messages than the incoming queue holds, and the thread
/// that waits for it is the one that would take them: the I/O thread reads on past the
/// consumer's bound while a request waits (as it does while closing), so the reply is
/// found; then every other message is delivered, in order. (Until 2026-12-07 the I/O
/// thread stopped reading at the bound, and the request ran into its timeout.)
#[test]
fn a_request_made_from_the_consumer_finds_its_reply_behind_a_full_queue() {
    let _g = shared();
    const NOISE: usize = 5000;
    // Pull style: the requester is the program's only consumer.
    let server = flood_then_reply_server(NOISE);
    let (ws, events) = WebSocket::builder()
        .incoming_queue(64)
        .connect_pull(&server.url())
        .expect("connect");
    let started = Instant::now();
    let reply: Value = ws.request(&json!({"q": 1}), WAIT).expect("the reply");
    assert_eq!(reply["type"], "reply", "after {:?}", started.elapsed());
    for n in 0..NOISE {
        match next_event(&events) {
            Event::Open => match next_event(&events) {
                Event::Message(m) => assert_eq!(m.json::<Value>().unwrap()["n"], n),
                other => panic!("{other:?}"),
            },
            Event::Message(m) => assert_eq!(m.json::<Value>().unwrap()["n"], n),
            other => panic!("{other:?}"),
        }
    }
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    server.join();

    // Callback style: the request is made inside a callback.
    struct AsksInOnopen {
        reply: crossbeam_channel::Sender<Result<Value, Error>>,
        noise: Vec<u64>,
    }
    impl Handler for AsksInOnopen {
        fn onopen(&mut self, ws: &WebSocketRef) {
            let _ = self.reply.send(ws.request(&json!({"q": 2}), WAIT));
        }
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            self.noise
                .push(msg.json::<Value>().unwrap()["n"].as_u64().unwrap());
        }
    }
    let server = flood_then_reply_server(NOISE);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let ws = WebSocket::builder()
        .incoming_queue(64)
        .connect(
            &server.url(),
            AsksInOnopen {
                reply: tx,
                noise: Vec::new(),
            },
        )
        .expect("connect");
    let reply = rx.recv_timeout(WAIT + WAIT).expect("request returned");
    assert_eq!(reply.expect("the reply")["type"], "reply");
    assert!(eventually(WAIT, || ws.handler().noise.len() == NOISE));
    assert!(ws.handler().noise.iter().copied().eq(0..NOISE as u64));
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    drop(ws);
    server.join();
}

#[test]
fn request_times_out_and_a_late_reply_goes_to_onmessage() {
    let _g = shared();
    let server = server(|mut ws| {
        let first = ws.read().expect("server: request");
        let v: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        // Answer only after the client gave up (it waits 200 ms): the test tells us when.
        let go = ws.read().expect("server: go");
        assert_eq!(go.to_text().unwrap(), "late now");
        let reply = json!({"type": "reply", "id": v["id"], "late": true});
        ws.send(tungstenite::Message::text(reply.to_string()))
            .unwrap();
        read_until_close(&mut ws);
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let started = Instant::now();
    let result = ws.request::<_, Value>(&json!({"q": 1}), Duration::from_millis(200));
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout(Timeout::Request))),
        "{result:?}"
    );
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    ws.send("late now").unwrap();
    let late = loop {
        if let Event::Message(m) = next_event(&events) {
            break m;
        }
    };
    assert_eq!(late.json::<Value>().unwrap()["late"], true);
    ws.close();
    server.join();
}

#[test]
fn pending_requests_fail_at_once_when_the_connection_ends() {
    let _g = shared();
    let server = server(|mut ws| {
        let _ = ws.read();
        // Vanish without answering or closing.
        drop(ws);
    });
    let (ws, _events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let started = Instant::now();
    let result = ws.request::<_, Value>(&json!({"q": 1}), Duration::from_secs(30));
    assert!(
        matches!(result, Err(Error::InvalidState(ReadyState::Closed))),
        "{result:?}"
    );
    assert!(started.elapsed() < WAIT, "waited {:?}", started.elapsed());
    server.join();
}

#[test]
fn request_refuses_non_objects_and_closed_connections() {
    let _g = shared();
    let server = echo_server();
    let (ws, _events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(
        ws.request::<_, Value>(&json!([1, 2]), WAIT),
        Err(Error::Json { .. })
    ));
    ws.close();
    let result = ws.request::<_, Value>(&json!({"q": 1}), WAIT);
    match result {
        Err(Error::Send(e)) => assert!(e.into_message().as_text().unwrap().contains("\"q\":1")),
        other => panic!("{other:?}"),
    }
}

/// Waiting requesters are counted once each even when many time out at once.
#[test]
fn many_concurrent_timeouts_leave_nothing_pending() {
    let _g = shared();
    let server = server(|mut ws| {
        read_until_close(&mut ws);
    });
    let (ws, _events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let timeouts = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let ws = ws.downgrade();
            let timeouts = Arc::clone(&timeouts);
            thread::spawn(move || {
                for _ in 0..5 {
                    let r = ws.request::<_, Value>(&json!({}), Duration::from_millis(20));
                    if matches!(r, Err(Error::Timeout(Timeout::Request))) {
                        timeouts.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(timeouts.load(Ordering::SeqCst), 40);
    ws.close();
    server.join();
}

/// Answers the first request with each text `answers(id)` makes, in order, then reads
/// until the client closes.
fn answering_server(answers: fn(u64) -> Vec<String>) -> Server<()> {
    server(move |mut ws| {
        loop {
            let Ok(msg) = ws.read() else { return };
            let Some(id) = msg
                .to_text()
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|v| v["id"].as_u64())
            else {
                continue;
            };
            for text in answers(id) {
                ws.send(tungstenite::Message::text(text))
                    .expect("server: send");
            }
            break;
        }
        read_until_close(&mut ws);
    })
}

/// A text that is not one JSON document (a valid object followed by more) is not a reply,
/// whatever its first object says: it reaches the event channel as it came, and the
/// request times out. So is an object with its id field twice. (Until 2026-12-07 the
/// first went to the requester, which failed to read it, and the message was lost.)
#[test]
fn only_a_whole_json_object_with_one_id_is_a_reply() {
    let _g = shared();
    for answers in [
        (|id| vec![format!(r#"{{"id":{id}}} trailing"#)]) as fn(u64) -> Vec<String>,
        |id| vec![format!(r#"{{"id":{id}}}{{"id":{id}}}"#)],
        |id| vec![format!(r#"{{"id":{id},"id":"other"}}"#)],
    ] {
        let server = answering_server(answers);
        let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
        let r = ws.request::<_, Value>(&json!({"q": 1}), Duration::from_millis(300));
        assert!(matches!(r, Err(Error::Timeout(Timeout::Request))), "{r:?}");
        let sent = answers(1).remove(0);
        loop {
            match next_event(&events) {
                Event::Open => {}
                Event::Message(m) => {
                    assert_eq!(m.as_text(), Some(sent.as_str()));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        ws.close();
        drop(ws);
        server.join();
    }
}

/// `request`'s timeout bounds the whole call, the send included: above the high-water
/// mark, with a server that reads nothing, it returns within it. (Until 2026-12-07 its
/// send waited for room without a bound.)
#[test]
fn a_requests_timeout_bounds_its_send() {
    let _g = shared();
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let server = raw_server(move |stream| {
        cap_receive_buffer(&stream, 4096);
        let ws = tungstenite::accept(stream).expect("server: handshake");
        let _ = stop_rx.recv_timeout(SOCKET_TIMEOUT); // reads nothing
        drop(ws);
    });
    let (ws, _events) = WebSocket::builder()
        .high_water_mark(16 << 10)
        .no_deflate()
        .connect_pull(&server.url())
        .expect("connect");
    // Above the mark for good, the kernel's buffers full too: `Full` 40 times running,
    // 5 ms apart.
    let chunk = "x".repeat(64 << 10);
    let mut fulls = 0;
    for _ in 0..4000 {
        match ws.try_send(chunk.clone()) {
            Ok(()) => fulls = 0,
            Err(nwebsocket::SendError::Full(_)) => {
                fulls += 1;
                if fulls == 40 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(fulls, 40, "never stayed above the high-water mark");
    let started = Instant::now();
    let r = ws.request::<_, Value>(&json!({"q": 1}), Duration::from_millis(300));
    let took = started.elapsed();
    assert!(
        matches!(r, Err(Error::Send(nwebsocket::SendError::TimedOut(_)))),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    stop_tx.send(()).unwrap();
    drop(ws);
    server.join();
}

// Found by an audit of the JSON helpers (2026-12-07); each failed before its fix.

/// Pull style, a caller busy elsewhere (its queue full, nothing taken) while another thread
/// waits on a `request` the server takes its time to answer: the I/O thread has nothing to
/// do but wait for the socket, the consumer's take or the request's end. It must not wake
/// up every few milliseconds meanwhile (DESIGN: no CPU while idle; the README: "It sleeps
/// meanwhile and is woken when you make room").
#[test]
fn a_pending_request_with_the_queue_full_does_not_wake_the_io_thread_every_5_ms() {
    let _g = exclusive();
    let (asked_tx, asked) = crossbeam_channel::bounded::<()>(1);
    let server = server(move |mut ws| {
        for n in 0..100 {
            let m = json!({"type": "noise", "n": n}).to_string();
            ws.write(tungstenite::Message::text(m))
                .expect("server: noise");
        }
        ws.flush().expect("server: flush");
        // Reads the request (the client reads the rest of the flood to send it), then
        // answers nothing until the client closes.
        let request = ws.read().expect("server: the request");
        assert!(request.is_text());
        asked_tx.send(()).unwrap();
        read_until_close(&mut ws);
    });
    let before = crate_threads();
    let (ws, events) = WebSocket::builder()
        .incoming_queue(8)
        .connect_pull(&server.url())
        .expect("connect");
    let (io, name) = new_crate_threads(&before, 1).remove(0);
    assert!(
        eventually(WAIT, || events.len() >= 8),
        "the queue never filled"
    );
    let asker = {
        let ws = ws.downgrade();
        thread::spawn(move || ws.request::<_, Value>(&json!({"q": 1}), Duration::from_secs(60)))
    };
    asked
        .recv_timeout(WAIT)
        .expect("the server got the request");
    let switches0 = thread_switches(io);
    thread::sleep(Duration::from_secs(1)); // the window measured
    let switches = thread_switches(io) - switches0;
    ws.close();
    let r = asker.join().unwrap();
    assert!(matches!(r, Err(Error::InvalidState(_))), "{r:?}");
    // Idle but for the rest of the flood read at the start: a handful. Polling every
    // 5 ms (`RETRY`): about 200.
    assert!(
        switches < 20,
        "{name} woke up {switches} times in 1 s while a request waited and the consumer took nothing"
    );
    drop(events);
    server.join();
}

/// A reply that carries the right id but does not fit `R` (a server's error answer, say)
/// is taken from the stream and turned into `Error::Json`: its text must not vanish (DESIGN:
/// "nothing is lost"). It is neither in the error nor delivered as a message.
#[test]
fn a_reply_that_does_not_fit_r_is_not_lost() {
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Users {
        users: Vec<String>,
    }
    let _g = shared();
    let server =
        answering_server(|id| vec![format!(r#"{{"id":{id},"error":"forbidden: ask nicely"}}"#)]);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let r = ws.request::<_, Users>(&json!({"type": "query"}), WAIT);
    let err = r.expect_err("the reply does not fit");
    assert!(matches!(err, Error::Json { .. }), "{err:?}");
    ws.close();
    let delivered = events_until_close(&events);
    let in_error = format!("{err:?} {}", err.chain());
    let in_events = delivered.iter().any(
        |e| matches!(e, Event::Message(m) if m.as_text().is_some_and(|t| t.contains("forbidden"))),
    );
    assert!(
        in_error.contains("forbidden") || in_events,
        "the server's reply is gone: error {in_error}; events {delivered:?}"
    );
    server.join();
}

// Review of 85f641e (2026-12-07): the wake-up that replaced `RETRY` in `IoThread::wait`.

/// Batches taken through the raw receiver (`EventBatches::receiver`, documented for
/// `select!`) while a `request` waits whose reply comes behind more messages than the I/O
/// thread reads past the consumer (`DRAIN_EVENTS`, 65,536): each batch the consumer takes
/// makes room, so the rest, and the reply, must come. Raw takes do not run
/// `Batches::took`, so they never send the `Command::Room` that `wake_when_taken` asked
/// for, and since 85f641e nothing else (no `RETRY`) looks again.
#[test]
fn a_request_behind_a_flood_is_answered_when_batches_are_taken_through_the_raw_receiver() {
    let _g = exclusive();
    const NOISE: usize = 70_000;
    let (sent_tx, sent) = crossbeam_channel::bounded::<()>(1);
    let server = server(move |mut ws| {
        let id = loop {
            let msg = ws.read().expect("server: the request");
            if let Some(id) = msg
                .to_text()
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|v| v["id"].as_u64())
            {
                break id;
            }
        };
        for n in 0..NOISE {
            ws.write(tungstenite::Message::text(n.to_string()))
                .expect("server: noise");
        }
        let reply = json!({"id": id, "ok": true}).to_string();
        ws.write(tungstenite::Message::text(reply))
            .expect("server: reply");
        ws.flush().expect("server: flush");
        sent_tx.send(()).unwrap();
        read_until_close(&mut ws);
    });
    let before = crate_threads();
    let (ws, batches) = WebSocket::builder()
        .connect_batches(&server.url())
        .expect("connect");
    let (io, _) = new_crate_threads(&before, 1).remove(0);
    let asker = {
        let ws = ws.downgrade();
        thread::spawn(move || ws.request::<_, Value>(&json!({"q": 1}), Duration::from_secs(30)))
    };
    sent.recv_timeout(WAIT)
        .expect("the server sent the flood and the reply");
    // The I/O thread reads up to its bound past the consumer, and sleeps (or, before
    // 85f641e, looks for room every 5 ms).
    rested_or_gone(io, Duration::from_millis(200), Duration::from_secs(2));
    let rx = batches.receiver();
    let deadline = Instant::now() + WAIT;
    let mut messages = 0;
    while messages < NOISE {
        match rx.recv_deadline(deadline) {
            Ok(batch) => {
                messages += batch
                    .iter()
                    .filter(|e| matches!(e, Event::Message(_)))
                    .count()
            }
            Err(_) => break,
        }
    }
    assert_eq!(
        messages, NOISE,
        "the consumer took every batch through the raw receiver, but only {messages} of \
         {NOISE} messages came within {WAIT:?}"
    );
    let r = asker.join().unwrap();
    assert!(r.is_ok(), "{r:?}");
    ws.close();
    drop(batches);
    server.join();
}
