//! Rule 3 (delivery), rule 8 (callback panics), rule 9 (pings), rule 10 (limits).

use std::io::Write;
use std::time::Duration;

use nwebsocket::{Error, Event, Message, ReadyState, SendError, WebSocket};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::CloseFrame;

use crate::support::*;

const MANY: usize = 10_000;

fn flood_then_close(mut ws: ServerWs) {
    for i in 0..MANY {
        ws.write(nth_message(i)).unwrap();
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "flood done".into(),
    }))
    .unwrap();
    read_until_close(&mut ws);
}

#[test]
fn ten_thousand_mixed_messages_delivered_once_in_order_callback_style() {
    let _g = shared();
    let server = server(flood_then_close);
    let (rec, rx) = recorder();
    let ws = WebSocket::connect(&server.url(), rec).expect("connect");
    let recs = recs_until_close(&rx);
    assert!(matches!(recs[0], Rec::Open { .. }), "{:?}", recs[0]);
    assert_eq!(recs.len(), MANY + 2, "Open + messages + Close");
    for (i, r) in recs[1..=MANY].iter().enumerate() {
        match r {
            Rec::Message(m) => assert_eq!(*m, nth_expected(i), "message {i}"),
            other => panic!("message {i}: got {other:?}"),
        }
    }
    assert!(
        matches!(&recs[MANY + 1], Rec::Close(c, ReadyState::Closed) if c.code == 1000 && c.reason == "flood done" && c.was_clean),
        "{:?}",
        recs[MANY + 1]
    );
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    server.join();
}

#[test]
fn ten_thousand_mixed_messages_delivered_once_in_order_pull_style() {
    let _g = shared();
    let server = server(flood_then_close);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let evs = events_until_close(&events);
    assert!(matches!(evs[0], Event::Open), "{:?}", evs[0]);
    assert_eq!(evs.len(), MANY + 2);
    for (i, e) in evs[1..=MANY].iter().enumerate() {
        match e {
            Event::Message(m) => assert_eq!(*m, nth_expected(i), "message {i}"),
            other => panic!("message {i}: got {other:?}"),
        }
    }
    assert!(matches!(&evs[MANY + 1], Event::Close(c) if c.code == 1000 && c.was_clean));
    assert_eq!(ws.wait_closed_timeout(WAIT).map(|c| c.code), Some(1000));
    drop(ws);
    assert!(leftover_events(&events).is_empty());
    server.join();
}

/// Both directions at once: the client sends 10,000 mixed messages to an echo server and
/// reads the echoes as they come.
#[test]
fn ten_thousand_echoes_round_trip_in_order() {
    let _g = shared();
    let server = echo_server();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let sender = {
        let ws = ws.clone();
        std::thread::spawn(move || {
            for i in 0..MANY {
                ws.send(nth_expected(i)).expect("send");
            }
        })
    };
    for i in 0..MANY {
        match next_event(&events) {
            Event::Message(m) => assert_eq!(m, nth_expected(i), "echo {i}"),
            other => panic!("echo {i}: got {other:?}"),
        }
    }
    sender.join().unwrap();
    close_cleanly(&ws, &events);
    drop(ws);
    assert_eq!(server.join(), MANY);
}

/// One message in flight at a time: each send comes just after the I/O thread handed over
/// the echo before it, while it still looks for more (the look after a write), which a
/// send does not wake it from. A send that neither the look nor a wake-up saw would wait
/// for a timer this connection does not have.
#[test]
fn strict_round_trips_each_go_out_at_once() {
    let _g = shared();
    let server = echo_server();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    const ROUND_TRIPS: usize = 2_000;
    for i in 0..ROUND_TRIPS {
        ws.send(nth_expected(i)).expect("send");
        match next_event(&events) {
            Event::Message(m) => assert_eq!(m, nth_expected(i), "echo {i}"),
            other => panic!("echo {i}: got {other:?}"),
        }
    }
    close_cleanly(&ws, &events);
    drop(ws);
    assert_eq!(server.join(), ROUND_TRIPS);
}

#[test]
fn fragmented_messages_are_reassembled() {
    let _g = shared();
    let server = server(|mut ws| {
        let frame = |data: &[u8], op: OpCode, fin: bool| {
            tungstenite::Message::Frame(Frame::message(data.to_vec(), op, fin))
        };
        let text = OpCode::Data(Data::Text);
        let bin = OpCode::Data(Data::Binary);
        let cont = OpCode::Data(Data::Continue);
        // Text in three fragments with a ping in between (control frames may interleave).
        ws.write(frame(b"Hel", text, false)).unwrap();
        ws.write(frame(b"lo ", cont, false)).unwrap();
        ws.write(tungstenite::Message::Ping(b"mid".to_vec().into()))
            .unwrap();
        ws.write(frame(b"world", cont, true)).unwrap();
        // A multi-byte character split across fragments.
        let snow = "sn\u{2603}w".as_bytes(); // "sn☃w": ☃ is 3 bytes
        ws.write(frame(&snow[..3], text, false)).unwrap();
        ws.write(frame(&snow[3..4], cont, false)).unwrap();
        ws.write(frame(&snow[4..], cont, true)).unwrap();
        // Binary in many fragments, some empty.
        let payload: Vec<u8> = (0..=255u8).collect();
        ws.write(frame(&payload[..100], bin, false)).unwrap();
        ws.write(frame(&[], cont, false)).unwrap();
        ws.write(frame(&payload[100..200], cont, false)).unwrap();
        ws.write(frame(&payload[200..], cont, true)).unwrap();
        ws.write(tungstenite::Message::text("after")).unwrap();
        ws.flush().unwrap();
        read_until_close(&mut ws)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let expected: Vec<Message> = vec![
        "Hello world".into(),
        "sn\u{2603}w".into(),
        (0..=255u8).collect::<Vec<u8>>().into(),
        "after".into(),
    ];
    for want in &expected {
        match next_event(&events) {
            Event::Message(m) => assert_eq!(&m, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
    close_cleanly(&ws, &events);
    drop(ws);
    let (_, close) = server.join();
    assert!(close.is_some(), "the server got the client's Close");
}

/// A frame with first byte `first` (FIN and opcode), as tungstenite writes it.
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Frame::message(payload.to_vec(), OpCode::Data(Data::Binary), true);
    f.header_mut().is_final = first & 0x80 != 0;
    f.header_mut().opcode = OpCode::from(first & 0x0F);
    let mut out = Vec::new();
    f.format(&mut out).unwrap();
    out
}

/// Serves `stream` raw after the handshake, in pieces of the sizes in `pieces` (in a
/// cycle), then closes with 1000 and waits for the client's Close.
fn serve_in_pieces(
    stream: Vec<u8>,
    pieces: &'static [usize],
) -> Server<(Vec<tungstenite::Message>, Option<CloseFrame>)> {
    server(move |mut ws| {
        let tcp = ws.get_mut();
        tcp.set_nodelay(true).unwrap();
        let mut at = 0;
        for (k, piece) in pieces.iter().cycle().enumerate() {
            if at >= stream.len() {
                break;
            }
            let end = (at + piece).min(stream.len());
            tcp.write_all(&stream[at..end]).unwrap();
            tcp.flush().unwrap();
            at = end;
            if k % 64 == 63 {
                std::thread::yield_now(); // let the client read what is there
            }
        }
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
        read_until_close(&mut ws)
    })
}

/// Takes `expected` messages, in order, then a clean Close with 1000.
fn expect_in_order(events: &nwebsocket::Events, expected: &[Message]) {
    assert!(matches!(next_event(events), Event::Open));
    for (i, want) in expected.iter().enumerate() {
        match next_event(events) {
            Event::Message(m) => assert!(
                &m == want,
                "message {i}: expected {} bytes, got {} ({:?}...)",
                want.len(),
                m.len(),
                &m.as_bytes()[..m.len().min(16)]
            ),
            other => panic!("message {i}: expected {want:?}, got {other:?}"),
        }
    }
    expect_clean_close(events);
}

/// The server's Close with 1000, and the closing handshake completed.
fn expect_clean_close(events: &nwebsocket::Events) {
    match next_event(events) {
        Event::Close(c) => assert!(c.was_clean && c.code == 1000, "{c:?}"),
        other => panic!("expected the Close, got {other:?}"),
    }
}

/// The transport takes simple frames (whole, final, small text or binary) out of the
/// stream before tungstenite sees them, and leaves it everything else. Mixed together and
/// written in pieces of 1 to 7 bytes, so that frames and headers straddle reads, every
/// message still arrives once, in order, as tungstenite would read it.
#[test]
fn simple_and_other_frames_mixed_and_split_anywhere_arrive_in_order() {
    let _g = shared();
    let mut stream = Vec::new();
    let mut expected: Vec<Message> = Vec::new();
    for i in 0..300usize {
        match i % 6 {
            0 => {
                let t = format!("text {i} h\u{e9}llo \u{2603}");
                stream.extend(raw_frame(0x81, t.as_bytes()));
                expected.push(t.into());
            }
            1 => {
                let b = vec![i as u8; i % 50];
                stream.extend(raw_frame(0x82, &b));
                expected.push(b.into());
            }
            2 => {
                // Fragmented, with a ping in between: tungstenite's.
                stream.extend(raw_frame(0x01, format!("frag {i} ").as_bytes()));
                stream.extend(raw_frame(0x89, b"ping"));
                stream.extend(raw_frame(0x80, b"end"));
                expected.push(format!("frag {i} end").into());
            }
            3 => {
                // Above the fast path's size: tungstenite's.
                let b = vec![(i % 251) as u8; 5000 + i];
                stream.extend(raw_frame(0x82, &b));
                expected.push(b.into());
            }
            4 => stream.extend(raw_frame(0x8A, b"unsolicited pong")),
            _ => {
                let b = vec![i as u8; 125];
                stream.extend(raw_frame(0x82, &b));
                expected.push(b.into());
            }
        }
    }
    let server = serve_in_pieces(stream, &[1, 3, 7, 2, 5, 4, 6]);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    expect_in_order(&events, &expected);
    drop(ws);
    server.join();
}

/// Large binary frames (16 KiB and up) are read by the transport into buffers of their
/// own, in large reads. Mixed with frames on either side of that size, a large text frame,
/// a fragmented message with a large final fragment, control frames, and a frame exactly
/// at the frame limit, and written in pieces from 1 byte (a header split across reads) to
/// 100 KB, each arrives once, in order, byte for byte.
#[test]
fn large_binary_frames_mixed_and_split_anywhere_arrive_in_order() {
    const LIMIT: usize = (1 << 20) + 1;
    let _g = shared();
    let mut stream = Vec::new();
    let mut expected: Vec<Message> = Vec::new();
    let pattern = |len: usize, seed: usize| -> Vec<u8> {
        (0..len).map(|k| ((k * 31 + seed) % 251) as u8).collect()
    };
    for (i, len) in [
        16_384,
        16_383,
        70_000,
        1 << 20,
        200,
        16_385,
        LIMIT,
        0,
        100_000,
    ]
    .into_iter()
    .enumerate()
    {
        let b = pattern(len, i);
        stream.extend(raw_frame(0x82, &b));
        expected.push(b.into());
        match i % 3 {
            0 => {
                let t = "\u{2603}".repeat(7_000); // 21 KB of text: tungstenite's
                stream.extend(raw_frame(0x81, t.as_bytes()));
                expected.push(t.into());
            }
            1 => {
                let tail = pattern(40_000, i + 100);
                stream.extend(raw_frame(0x02, b"head"));
                stream.extend(raw_frame(0x89, b"ping"));
                stream.extend(raw_frame(0x80, &tail));
                let mut whole = b"head".to_vec();
                whole.extend(&tail);
                expected.push(whole.into());
            }
            _ => {
                stream.extend(raw_frame(0x8A, b"pong"));
                stream.extend(raw_frame(0x81, format!("small {i}").as_bytes()));
                expected.push(format!("small {i}").into());
            }
        }
    }
    let server = serve_in_pieces(stream, &[1, 5, 3, 4093, 65_536, 2, 16_384, 100_000, 7]);
    let (ws, events) = WebSocket::builder()
        .max_frame_size(LIMIT)
        .max_message_size(LIMIT)
        .connect_pull(&server.url())
        .expect("connect");
    expect_in_order(&events, &expected);
    drop(ws);
    server.join();
}

/// Large binary messages are read into buffers that come back when the caller drops
/// them, and the next large frame of about the same size is read into one (a buffer up
/// to a quarter longer than the frame, holding an older message's bytes). Every message
/// arrives byte for byte, and the messages the caller keeps stay as they were while
/// later ones are read into the buffers of those it dropped.
#[test]
fn large_messages_in_reused_buffers_arrive_whole_and_stay_whole() {
    let _g = shared();
    let pattern = |len: usize, seed: usize| -> Vec<u8> {
        (0..len)
            .map(|k| ((k * 7 + seed * 13) % 251) as u8)
            .collect()
    };
    let sizes = [
        1 << 20,
        1 << 20,
        900_000,
        (1 << 20) - 1,
        850_000,
        300_000,
        1 << 20,
        70_000,
        16_384,
        1 << 20,
        1 << 20,
        999_999,
        16_385,
        1 << 20,
    ];
    let mut stream = Vec::new();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for round in 0..3 {
        for (i, &len) in sizes.iter().enumerate() {
            let b = pattern(len, round * 100 + i);
            stream.extend(raw_frame(0x82, &b));
            expected.push(b);
        }
        let t = format!("round {round} done");
        stream.extend(raw_frame(0x81, t.as_bytes()));
    }
    let server = serve_in_pieces(stream, &[65_536, 4093, 100_000, 1, 262_144, 7]);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let mut kept = Vec::new();
    for (i, want) in expected.iter().enumerate() {
        let m = match next_event(&events) {
            Event::Message(m) => m,
            other => panic!("message {i}: expected it, got {other:?}"),
        };
        assert!(
            m.as_bytes() == want.as_slice(),
            "message {i}: {} bytes, expected {}",
            m.len(),
            want.len()
        );
        if i % 3 == 0 {
            kept.push((i, m)); // the rest are dropped here, and their buffers reused
        }
        if i % sizes.len() == sizes.len() - 1 {
            match next_event(&events) {
                Event::Message(m) if m.as_text().is_some_and(|t| t.ends_with("done")) => {}
                other => panic!("expected the round's text, got {other:?}"),
            }
        }
    }
    for (i, m) in &kept {
        assert!(
            m.as_bytes() == expected[*i].as_slice(),
            "kept message {i} changed"
        );
    }
    expect_clean_close(&events);
    drop(ws);
    server.join();
}

#[test]
fn empty_and_large_messages_are_delivered() {
    let _g = shared();
    let big = vec![0xa5u8; 3 << 20];
    let big_text = "x".repeat(1 << 20);
    let (b, t) = (big.clone(), big_text.clone());
    let server = server(move |mut ws| {
        ws.send(tungstenite::Message::text("")).unwrap();
        ws.send(tungstenite::Message::binary(Vec::new())).unwrap();
        ws.send(tungstenite::Message::binary(b)).unwrap();
        ws.send(tungstenite::Message::text(t)).unwrap();
        read_until_close(&mut ws)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let want: [Message; 4] = ["".into(), Vec::new().into(), big.into(), big_text.into()];
    for w in want {
        match next_event(&events) {
            Event::Message(m) => {
                assert_eq!(m.is_text(), w.is_text());
                assert_eq!(m, w);
            }
            other => panic!("{other:?}"),
        }
    }
    ws.close();
    drop(ws);
    server.join();
}

// ---------------------------------------------------------------------------------------
// Rule 8: a panicking callback.
// ---------------------------------------------------------------------------------------

#[test]
fn panic_in_onmessage_is_reported_to_onerror_and_later_messages_arrive() {
    let _g = shared();
    let server = server(|mut ws| {
        for t in ["a", "boom", "b"] {
            ws.send(tungstenite::Message::text(t)).unwrap();
        }
        // The connection carries on: the client can still send, and receive.
        let m = ws.read().expect("server: message after the panic");
        ws.send(m).unwrap();
        read_until_close(&mut ws)
    });
    let (mut rec, rx) = recorder();
    rec.panic_on = Some("boom".into());
    let ws = WebSocket::connect(&server.url(), rec).expect("connect");
    assert!(matches!(next_rec(&rx), Rec::Open { .. }));
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Message(m) if m.as_text() == Some("a")),
        "{r:?}"
    );
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Error(Error::CallbackPanic(text)) if text.contains("deliberate panic")),
        "{r:?}"
    );
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Message(m) if m.as_text() == Some("b")),
        "{r:?}"
    );
    assert_eq!(ws.ready_state(), ReadyState::Open);
    ws.send("after the panic").unwrap();
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Message(m) if m.as_text() == Some("after the panic")),
        "{r:?}"
    );
    ws.close();
    let rest = recs_until_close(&rx);
    assert!(
        matches!(rest.as_slice(), [Rec::Close(c, _)] if c.code == 1000 && c.was_clean),
        "{rest:?}"
    );
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    server.join();
}

#[test]
fn panic_in_pull_style_dispatch_is_reported_too() {
    let _g = shared();
    let server = server(|mut ws| {
        for t in ["boom", "fine"] {
            ws.send(tungstenite::Message::text(t)).unwrap();
        }
        read_until_close(&mut ws)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let (mut rec, rx) = recorder();
    rec.panic_on = Some("boom".into());
    for _ in 0..3 {
        let e = next_event(&events);
        ws.dispatch(&mut rec, e);
    }
    let recs: Vec<Rec> = rx.try_iter().collect();
    assert!(
        matches!(recs.as_slice(), [Rec::Open { .. }, Rec::Error(Error::CallbackPanic(_)), Rec::Message(m)] if m.as_text() == Some("fine")),
        "{recs:?}"
    );
    ws.close();
    drop(ws);
    server.join();
}

// ---------------------------------------------------------------------------------------
// Rule 9: pings.
// ---------------------------------------------------------------------------------------

#[test]
fn server_pings_are_answered_with_the_same_payload() {
    let _g = shared();
    let payloads: Vec<Vec<u8>> = vec![b"hello-ping-42".to_vec(), Vec::new(), (0..125u8).collect()];
    let sent = payloads.clone();
    let server = server(move |mut ws| {
        let mut pongs = Vec::new();
        for p in sent {
            ws.send(tungstenite::Message::Ping(p.into())).unwrap();
            match ws.read().expect("server: waiting for a pong") {
                tungstenite::Message::Pong(data) => pongs.push(data.to_vec()),
                other => panic!("server: expected a pong, got {other:?}"),
            }
        }
        ws.send(tungstenite::Message::text("done")).unwrap();
        read_until_close(&mut ws);
        pongs
    });
    let (ws, events) = WebSocket::builder()
        .ping_events(true)
        .connect_pull(&server.url())
        .expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    for p in &payloads {
        let e = next_event(&events);
        assert!(matches!(&e, Event::Ping(b) if **b == **p), "{e:?}");
    }
    let e = next_event(&events);
    assert!(
        matches!(&e, Event::Message(m) if m.as_text() == Some("done")),
        "{e:?}"
    );
    ws.close();
    drop(ws);
    assert_eq!(server.join(), payloads);
}

#[test]
fn client_ping_gets_the_servers_pong() {
    let _g = shared();
    let server = server(|mut ws| read_until_close(&mut ws));
    let (ws, events) = WebSocket::builder()
        .ping_events(true)
        .connect_pull(&server.url())
        .expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    ws.ping(b"are you there".to_vec()).unwrap();
    let e = next_event(&events);
    assert!(
        matches!(&e, Event::Pong(b) if &**b == b"are you there"),
        "{e:?}"
    );
    let r = ws.ping(vec![0u8; 126]);
    assert!(matches!(r, Err(Error::InvalidPingPayload(126))), "{r:?}");
    ws.close();
    let r = ws.ping(b"late".to_vec());
    assert!(
        matches!(
            r,
            Err(Error::InvalidState(
                ReadyState::Closing | ReadyState::Closed
            ))
        ),
        "{r:?}"
    );
    drop(ws);
    server.join();
}

/// Without `ping_events`, pings are answered but not reported.
#[test]
fn pings_are_not_reported_by_default() {
    let _g = shared();
    let server = server(|mut ws| {
        ws.send(tungstenite::Message::Ping(b"p".to_vec().into()))
            .unwrap();
        let pong = ws.read().expect("server: pong");
        assert!(
            matches!(&pong, tungstenite::Message::Pong(p) if &p[..] == b"p"),
            "{pong:?}"
        );
        ws.send(tungstenite::Message::text("after ping")).unwrap();
        read_until_close(&mut ws)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let e = next_event(&events);
    assert!(
        matches!(&e, Event::Message(m) if m.as_text() == Some("after ping")),
        "{e:?}"
    );
    ws.close();
    drop(ws);
    server.join();
}

#[test]
fn keepalive_pings_keep_the_connection_open() {
    let _g = shared();
    let server = server(|mut ws| {
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let start = std::time::Instant::now();
        let mut pings = 0;
        while start.elapsed() < Duration::from_millis(1500) {
            match ws.read() {
                Ok(tungstenite::Message::Ping(_)) => pings += 1,
                Ok(other) => panic!("server: unexpected {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("server: {e}"),
            }
        }
        ws.get_ref().set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        // Send the pong tungstenite may still hold for the last ping *before* our Close
        // (tungstenite would otherwise write it after the Close frame).
        ws.flush().unwrap();
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
        read_until_close(&mut ws);
        pings
    });
    let (ws, events) = WebSocket::builder()
        .ping_interval(Duration::from_millis(100))
        .pong_timeout(Duration::from_millis(1000))
        .connect_pull(&server.url())
        .expect("connect");
    let evs = events_until_close(&events);
    assert!(
        matches!(evs.as_slice(), [Event::Open, Event::Close(c)] if c.code == 1000 && c.was_clean),
        "{evs:?}"
    );
    drop(ws);
    let pings = server.join();
    assert!(
        pings >= 3,
        "only {pings} keepalive pings in 1.5 s at a 100 ms interval"
    );
}

/// Rule 9: a pong missing past the pong timeout fails the connection (rule 4).
#[test]
fn missing_pong_fails_the_connection() {
    let _g = shared();
    let (done_tx, done_rx) = nwebsocket::crossbeam_channel::bounded::<()>(1);
    // The server never reads, so it never answers pings.
    let server = server(move |ws| {
        let _ = done_rx.recv_timeout(SOCKET_TIMEOUT);
        drop(ws);
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .ping_interval(Duration::from_millis(100))
        .pong_timeout(Duration::from_millis(300))
        .connect(&server.url(), rec)
        .expect("connect");
    let recs = recs_until_close(&rx);
    done_tx.send(()).unwrap();
    assert!(matches!(recs[0], Rec::Open { .. }));
    assert_failure_tail(&recs, |e| {
        matches!(e, Error::Timeout(nwebsocket::Timeout::Pong))
    });
    assert_eq!(recs.len(), 3, "{recs:?}");
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    server.join();
}

// ---------------------------------------------------------------------------------------
// Rule 10: limits.
// ---------------------------------------------------------------------------------------

/// Sends the given frames, then reads until the client's Close; returns its code.
fn send_then_expect_close(
    frames: Vec<tungstenite::Message>,
) -> impl FnOnce(ServerWs) -> Option<CloseCode> {
    move |mut ws| {
        for f in frames {
            if ws.write(f).is_err() {
                break;
            }
        }
        let _ = ws.flush();
        read_until_close(&mut ws).1.map(|f| f.code)
    }
}

fn assert_capacity_failure(
    builder: nwebsocket::Builder,
    frames: Vec<tungstenite::Message>,
    delivered_first: usize,
    check: impl Fn(&Error) -> bool,
) {
    let server = server(send_then_expect_close(frames));
    let (rec, rx) = recorder();
    let ws = builder.connect(&server.url(), rec).expect("connect");
    let recs = recs_until_close(&rx);
    assert!(matches!(recs[0], Rec::Open { .. }), "{recs:?}");
    assert_eq!(
        recs.iter().filter(|r| matches!(r, Rec::Message(_))).count(),
        delivered_first,
        "messages under the limit are delivered: {recs:?}"
    );
    assert_failure_tail(&recs, check);
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    assert_eq!(
        server.join(),
        Some(CloseCode::Size),
        "the server gets a Close with 1009"
    );
}

#[test]
fn message_above_max_message_size_fails_with_1009() {
    let _g = shared();
    let frames = vec![
        tungstenite::Message::binary(vec![1u8; 1000]),
        tungstenite::Message::binary(vec![2u8; 1001]),
    ];
    assert_capacity_failure(
        WebSocket::builder().max_message_size(1000),
        frames,
        1,
        |e| matches!(e, Error::Capacity { what: "message", size, limit: 1000 } if *size > 1000),
    );
}

#[test]
fn fragmented_message_above_max_message_size_fails_with_1009() {
    let _g = shared();
    let frag = |op: Data, fin: bool| {
        tungstenite::Message::Frame(Frame::message(vec![b'x'; 600], OpCode::Data(op), fin))
    };
    // Each frame is under the frame limit; the message (1800 bytes) is not.
    let frames = vec![
        tungstenite::Message::text("small"),
        frag(Data::Text, false),
        frag(Data::Continue, false),
        frag(Data::Continue, true),
    ];
    assert_capacity_failure(
        WebSocket::builder()
            .max_message_size(1000)
            .max_frame_size(1000),
        frames,
        1,
        |e| {
            matches!(
                e,
                Error::Capacity {
                    what: "message",
                    limit: 1000,
                    ..
                }
            )
        },
    );
}

#[test]
fn large_binary_frame_above_max_frame_size_fails_with_1009() {
    let _g = shared();
    let frames = vec![
        tungstenite::Message::binary(vec![1u8; 20_000]),
        tungstenite::Message::binary(vec![2u8; 20_001]),
    ];
    assert_capacity_failure(
        WebSocket::builder().max_frame_size(20_000),
        frames,
        1,
        |e| {
            matches!(
                e,
                Error::Capacity {
                    what: "frame",
                    size: 20_001,
                    limit: 20_000
                }
            )
        },
    );
}

#[test]
fn frame_above_max_frame_size_fails_with_1009() {
    let _g = shared();
    let frames = vec![
        tungstenite::Message::text("ok"),
        tungstenite::Message::binary(vec![3u8; 2000]),
    ];
    assert_capacity_failure(
        WebSocket::builder().max_frame_size(1000),
        frames,
        1,
        |e| matches!(e, Error::Capacity { what: "frame", size, limit: 1000 } if *size > 1000),
    );
}

/// Rule 4 "protocol violation": invalid UTF-8 in a text message fails with 1007.
#[test]
fn invalid_utf8_text_fails_the_connection_with_1007() {
    let _g = shared();
    let server = server(|mut ws| {
        ws.write(tungstenite::Message::Frame(Frame::message(
            vec![b'o', b'k', 0xff, 0xfe],
            OpCode::Data(Data::Text),
            true,
        )))
        .unwrap();
        ws.flush().unwrap();
        read_until_close(&mut ws).1.map(|f| f.code)
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::connect(&server.url(), rec).expect("connect");
    let recs = recs_until_close(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Protocol { .. }));
    assert_eq!(recs.len(), 3, "{recs:?}");
    drop(ws);
    assert_eq!(server.join(), Some(CloseCode::Invalid));
}

/// RFC 6455 §8.1: an endpoint that finds a text payload is not UTF-8 "MUST _Fail the
/// WebSocket Connection_", and the crate checks fragmented messages "at the fragment that
/// makes it invalid" (src/protocol/incoming.rs, `Partial`). Within one frame it waits for
/// the frame's last byte: a text frame whose first bytes are already invalid (0xC0 0xAF,
/// an overlong '/') and whose rest never comes holds the connection open for ever (the
/// Autobahn TestSuite's cases 6.4.3 and 6.4.4 grade this NON-STRICT), and a large frame's
/// garbage is buffered up to `max_message_size` first. Small (100 bytes announced) and
/// large (60,000 announced, read into a buffer of its own) frames; 20 bytes are sent.
#[test]
fn invalid_utf8_fails_as_soon_as_it_arrives_not_at_the_end_of_its_frame() {
    let _g = shared();
    let mut wrong = Vec::new();
    for announced in [100usize, 60_000] {
        let server = server(move |mut ws| {
            let mut wire = vec![0x81u8];
            if announced < 126 {
                wire.push(announced as u8);
            } else {
                wire.push(126);
                wire.extend_from_slice(&(announced as u16).to_be_bytes());
            }
            wire.extend_from_slice(b"ok\xC0\xAF");
            wire.extend_from_slice(&[b'x'; 16]); // and never the rest
            ws.get_mut().write_all(&wire).unwrap();
            read_until_close(&mut ws).1.map(|f| f.code)
        });
        let (ws, events) = WebSocket::builder()
            .no_deflate()
            .connect_pull(&server.url())
            .expect("connect");
        let mut evs = Vec::new();
        // Detectable at once: a generous bound for a loaded machine, not a guess at a delay.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while let Ok(e) = events.recv_deadline(deadline) {
            let done = matches!(e, Event::Close(_));
            evs.push(e);
            if done {
                break;
            }
        }
        drop(ws); // without the failure, this is the client's first Close (1001)
        let code = server.join();
        let failed = matches!(evs.as_slice(),
            [Event::Open, Event::Error(Error::Protocol { .. }), Event::Close(c)]
                if c.code == 1006 && !c.was_clean);
        if !failed || code != Some(CloseCode::Invalid) {
            wrong.push(format!(
                "{announced} bytes announced: events {evs:?}, close code on the wire {code:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "expected a failure with 1007 within 3 s:\n{}",
        wrong.join("\n")
    );
}

/// Rule 10: the limits have bounded defaults (a 32 MiB + 1 message is refused with no
/// configuration at all; tungstenite alone would take up to 64 MiB).
#[test]
fn default_limits_are_bounded() {
    let _g = shared();
    let server = server(|mut ws| {
        let _ = ws.send(tungstenite::Message::binary(vec![0u8; (32 << 20) + 1]));
        read_until_close(&mut ws).1.map(|f| f.code)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let evs = events_until_close(&events);
    assert!(
        matches!(evs.as_slice(), [Event::Open, Event::Error(Error::Capacity { .. }), Event::Close(c)] if c.code == 1006 && !c.was_clean),
        "{evs:?}"
    );
    drop(ws);
    server.join();
}

/// A server that sends `flood`, then waits for the client's Close.
fn flood_then_echo_server(flood: Vec<tungstenite::Message>) -> Server<Option<CloseFrame>> {
    server(move |mut ws| {
        for m in flood {
            ws.send(m).unwrap();
        }
        read_until_close(&mut ws).1
    })
}

/// With the event receiver dropped, nobody takes the events: the connection goes away
/// (1001) at once instead of reading and discarding what the server sends, and a later
/// send hands its message back. (Issue 17: it used to stay OPEN, discarding.)
fn assert_works_without_receiver(ws: WebSocket, server: Server<Option<CloseFrame>>) {
    let c = ws.wait_closed_timeout(WAIT).expect("closed");
    assert!(c.was_clean && c.code == 1001, "{c:?}");
    assert!(matches!(ws.send("after"), Err(SendError::Closed(_))));
    drop(ws);
    assert_eq!(server.join().map(|f| u16::from(f.code)), Some(1001));
}

/// As below, with large messages: the receiver is dropped while its channel is full by
/// the bytes in it (not by the count of events).
#[test]
fn dropping_the_event_receiver_while_large_messages_wait_does_not_block_the_connection() {
    let _g = shared();
    let flood = (0..40u8)
        .map(|i| tungstenite::Message::binary(vec![i; 256 << 10]))
        .collect();
    let server = flood_then_echo_server(flood);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    // Let the channel fill up to its byte bound: Open and four messages of 256 KiB.
    assert!(
        eventually(WAIT, || events.len() >= 5),
        "{} events waiting",
        events.len()
    );
    drop(events);
    assert_works_without_receiver(ws, server);
}

/// Pull style: a program that drops its receiver closes the connection (1001), nothing
/// blocks. The receiver is dropped while its channel is full: nothing wakes the I/O
/// thread then, but crossbeam discards what waited, and the I/O thread's next look finds
/// room and then the receiver gone.
#[test]
fn dropping_the_event_receiver_does_not_block_the_connection() {
    let _g = shared();
    let server = flood_then_echo_server((0..2000).map(nth_message).collect());
    let (ws, events) = WebSocket::builder()
        .incoming_queue(4)
        .connect_pull(&server.url())
        .expect("connect");
    assert!(
        eventually(WAIT, || events.len() >= 4),
        "{} events waiting",
        events.len()
    );
    drop(events);
    assert_works_without_receiver(ws, server);
}

/// Autobahn 5.19 (found when the I/O thread started calling the fast path before
/// tungstenite): a fragmented message, a ping, a pause, then the rest of the fragments
/// with another ping, all in one write. Inside a fragmented message the transport lets
/// tungstenite read straight from the socket, which took the second ping and the last
/// fragment at once; tungstenite returned the ping and still held the fragment, and the
/// message waited for the next bytes from the server. The server here waits for the first
/// pong (so the client has read everything before) instead of a fixed pause.
#[test]
fn a_fragmented_message_resumed_after_a_pause_arrives_without_more_traffic() {
    let _g = shared();
    let server = server(|mut ws| {
        let text = OpCode::Data(Data::Text);
        ws.send(tungstenite::Message::Frame(Frame::message(
            b"fragment1".to_vec(),
            text,
            false,
        )))
        .unwrap();
        ws.send(tungstenite::Message::Ping(b"pongme 1!".to_vec().into()))
            .unwrap();
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Pong(p)) if p.as_ref() == b"pongme 1!" => break,
                Ok(_) => {}
                Err(e) => panic!("server: {e}"),
            }
        }
        let mut rest = raw_frame(0x00, b"fragment2");
        rest.extend(raw_frame(0x89, b"pongme 2!"));
        rest.extend(raw_frame(0x80, b"fragment3"));
        ws.get_mut().write_all(&rest).unwrap();
        read_until_close(&mut ws)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    match next_event(&events) {
        Event::Message(m) => assert_eq!(m.as_text(), Some("fragment1fragment2fragment3")),
        other => panic!("expected the message, got {other:?}"),
    }
    drop(ws);
    server.join();
}

/// Whether a binary payload is a whole allocation of its own (nothing else keeps its
/// buffer alive): then `into_vec` takes it over without a copy.
fn owns_its_buffer(b: nwebsocket::Binary) -> bool {
    let at = b.as_ptr();
    let v = b.into_vec();
    v.as_ptr() == at
}

/// A quiet connection's small messages each get an allocation of their own, so a program
/// that keeps them does not keep a read buffer per message; a flood's stay in the buffer
/// they were read into (copying them all would cost more than it saves).
#[test]
fn a_quiet_connections_small_messages_do_not_pin_the_read_buffer() {
    let _g = shared();
    let server = echo_server();
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    for i in 0..3u8 {
        ws.send(vec![i; 64]).unwrap();
        match next_event(&events) {
            Event::Message(Message::Binary(b)) => {
                assert_eq!(&b[..], &[i; 64][..]);
                assert!(owns_its_buffer(b), "message {i} pins a read buffer");
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    ws.close();
    drop(ws);
    server.join();

    let (server, _blocked) = flooding_server(200, 64);
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    let mut kept_in_place = 0;
    for i in 0..200 {
        match next_event(&events) {
            Event::Message(Message::Binary(b)) => {
                assert_eq!(&b[..], flood_payload(i, 64));
                kept_in_place += usize::from(!owns_its_buffer(b));
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert!(kept_in_place > 0, "every message of the flood was copied");
    drop(ws);
    server.join();
}

/// `send` takes text from `&str`, `String` and `&String`, binary from `&[u8]`, arrays,
/// `Vec<u8>` and `&Vec<u8>` (until 2026-12-07 `ws.send(&vec)` did not compile, while
/// `ws.send(&string)` did).
#[test]
fn send_takes_text_and_binary_by_value_and_by_reference() {
    let text = String::from("t");
    let bytes = vec![1u8, 2];
    let all = [
        Message::from("t"),
        Message::from(text.clone()),
        Message::from(&text),
        Message::from(&bytes[..]),
        Message::from(&[1u8, 2]),
        Message::from(bytes.clone()),
        Message::from(&bytes),
    ];
    for m in &all[..3] {
        assert_eq!(m.as_text(), Some("t"));
    }
    for m in &all[3..] {
        assert_eq!(m.as_bytes(), [1, 2]);
        assert!(m.as_text().is_none());
    }
}
