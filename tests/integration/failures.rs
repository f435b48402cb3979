//! Rule 4: every failure gives `onerror` then `onclose(1006, was_clean = false)`, once each.

use std::io::Write;
use std::time::{Duration, Instant};

use nwebsocket::{Error, Event, HandshakeErrorKind, ReadyState, Timeout, WebSocket};
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::*;

#[test]
fn connection_refused_callback_style() {
    let _g = shared();
    let (rec, rx) = recorder();
    let r = WebSocket::connect(&refused_url(), rec);
    assert!(matches!(&r, Err(Error::Connect { .. })), "{r:?}");
    drop(r);
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Connect { .. }));
    assert_eq!(recs.len(), 2, "{recs:?}");
}

#[test]
fn connection_refused_pull_style() {
    let _g = shared();
    let r = WebSocket::connect_pull(&refused_url());
    assert!(matches!(&r, Err(Error::Connect { .. })), "{r:?}");

    let (ws, events) = WebSocket::open_pull(&refused_url()).expect("open");
    let evs = events_until_close(&events);
    assert!(
        matches!(evs.as_slice(), [Event::Error(Error::Connect { .. }), Event::Close(c)] if c.code == 1006 && !c.was_clean && c.reason.is_empty()),
        "{evs:?}"
    );
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    let c = ws.wait_closed_timeout(WAIT).expect("closed");
    assert_eq!((c.code, c.was_clean), (1006, false));
    drop(ws);
    assert!(leftover_events(&events).is_empty());
}

fn rejecting_server(response: &'static [u8]) -> Server<String> {
    raw_server(move |mut stream| {
        let head = read_http_head(&mut stream);
        stream.write_all(response).unwrap();
        stream.flush().unwrap();
        read_to_end_quietly(&mut stream);
        head
    })
}

#[test]
fn non_101_response_is_handshake_rejected_with_status() {
    let _g = shared();
    let server = rejecting_server(
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforbidden",
    );
    let (rec, rx) = recorder();
    let r = WebSocket::connect(&server.url(), rec);
    assert!(
        matches!(&r, Err(Error::HandshakeRejected { status: 403, .. })),
        "{r:?}"
    );
    // Status, headers and the whole body, every time (the body was read to its length).
    match &r {
        Err(Error::HandshakeRejected { response, .. }) => {
            assert_eq!(response.status(), 403);
            assert_eq!(response.header("content-type"), Some("text/plain"));
            assert_eq!(response.body(), b"forbidden");
        }
        other => panic!("{other:?}"),
    }
    let shown = r.as_ref().unwrap_err().to_string();
    assert!(
        shown.contains("403") && shown.contains("forbidden"),
        "{shown}"
    );
    drop(r);
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| {
        matches!(e, Error::HandshakeRejected { status: 403, .. })
    });
    assert_eq!(recs.len(), 2, "{recs:?}");
    let head = server.join();
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
}

#[test]
fn other_non_101_statuses_are_rejected() {
    let _g = shared();
    for (response, status) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..], 200u16),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 404),
        (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            503,
        ),
    ] {
        let server = rejecting_server(response);
        let (ws, events) = WebSocket::open_pull(&server.url()).expect("open");
        let evs = events_until_close(&events);
        assert!(
            matches!(evs.as_slice(), [Event::Error(Error::HandshakeRejected { status: s, .. }), Event::Close(c)] if *s == status && c.code == 1006 && !c.was_clean),
            "{status}: {evs:?}"
        );
        drop(ws);
        server.join();
    }
}

#[test]
fn invalid_upgrade_responses_are_handshake_errors() {
    let _g = shared();
    for response in [
        // 101 with a wrong Sec-WebSocket-Accept.
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"[..],
        // Not HTTP at all.
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ] {
        let server = rejecting_server(response);
        let (ws, events) = WebSocket::open_pull(&server.url()).expect("open");
        let evs = events_until_close(&events);
        assert!(
            matches!(evs.as_slice(), [Event::Error(Error::Handshake { .. }), Event::Close(c)] if c.code == 1006 && !c.was_clean),
            "{}: {evs:?}",
            String::from_utf8_lossy(response)
        );
        drop(ws);
        server.join();
    }
}

#[test]
fn server_hanging_up_during_the_handshake_fails() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        read_http_head(&mut stream);
        // Drop without answering.
    });
    let (rec, rx) = recorder();
    let r = WebSocket::connect(&server.url(), rec);
    assert!(
        matches!(&r, Err(Error::Handshake { .. } | Error::Io(_))),
        "{r:?}"
    );
    drop(r);
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| {
        matches!(e, Error::Handshake { .. } | Error::Io(_))
    });
    assert_eq!(recs.len(), 2, "{recs:?}");
    server.join();
}

/// A server that sends "last words", then `tail` raw, then drops the TCP connection
/// without a closing handshake: the client gets the message, then the failure (rule 4),
/// and nothing else. `check` looks at the closed handle before it is dropped.
fn vanishing_server_fails(tail: Vec<u8>, check: impl FnOnce(&WebSocket<Recorder>)) {
    let server = server(move |mut ws| {
        ws.send(tungstenite::Message::text("last words")).unwrap();
        ws.get_mut().write_all(&tail).unwrap();
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::connect(&server.url(), rec).expect("connect");
    let recs = recs_until_close(&rx);
    assert!(matches!(recs[0], Rec::Open { .. }), "{recs:?}");
    assert!(
        matches!(&recs[1], Rec::Message(m) if m.as_text() == Some("last words")),
        "{recs:?}"
    );
    assert_failure_tail(&recs, |e| matches!(e, Error::Io(_)));
    assert_eq!(recs.len(), 4, "{recs:?}");
    check(&ws);
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    server.join();
}

#[test]
fn server_vanishing_mid_connection_fails() {
    let _g = shared();
    vanishing_server_fails(Vec::new(), |ws| {
        assert_eq!(ws.ready_state(), ReadyState::Closed);
        let r = ws.send("too late");
        assert!(
            matches!(&r, Err(nwebsocket::SendError::Closed(m)) if m.as_text() == Some("too late")),
            "{r:?}"
        );
    });
}

/// The end of the stream in the middle of a large binary frame (which the transport reads
/// into a buffer of its own): the same failure as anywhere else, and the partial frame is
/// not delivered.
#[test]
fn server_vanishing_inside_a_large_frame_fails() {
    let _g = shared();
    let mut frame = Vec::new();
    let payload = vec![7u8; 100_000];
    tungstenite::protocol::frame::Frame::message(payload, OpCode::Data(Data::Binary), true)
        .format(&mut frame)
        .unwrap();
    frame.truncate(60_000); // 40 KB short of the frame's end
    vanishing_server_fails(frame, |_| {});
}

#[test]
fn handshake_timeout_fails() {
    let _g = shared();
    // Accepts and reads the request, never answers; ends when the client hangs up.
    let server = raw_server(|mut stream| {
        read_http_head(&mut stream);
        let start = Instant::now();
        read_to_end_quietly(&mut stream);
        start.elapsed()
    });
    let (rec, rx) = recorder();
    let start = Instant::now();
    let r = WebSocket::builder()
        .handshake_timeout(Duration::from_millis(300))
        .connect(&server.url(), rec);
    let took = start.elapsed();
    assert!(
        matches!(&r, Err(Error::Timeout(Timeout::Handshake))),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(250),
        "gave up too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "gave up too late: {took:?}");
    drop(r);
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Timeout(Timeout::Handshake)));
    assert_eq!(recs.len(), 2, "{recs:?}");
    // The client hung up rather than leaving the socket open.
    assert!(server.join() < Duration::from_secs(5));
}

#[test]
fn handshake_timeout_pull_style_open() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        read_http_head(&mut stream);
        read_to_end_quietly(&mut stream);
    });
    let (ws, events) = WebSocket::builder()
        .handshake_timeout(Duration::from_millis(200))
        .open_pull(&server.url())
        .expect("open");
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    let evs = events_until_close(&events);
    assert!(
        matches!(evs.as_slice(), [Event::Error(Error::Timeout(Timeout::Handshake)), Event::Close(c)] if c.code == 1006 && !c.was_clean),
        "{evs:?}"
    );
    drop(ws);
    server.join();
}

/// Response headers that never end fail the handshake as a handshake error (the head is
/// too large), not as a protocol violation or a timeout.
#[test]
fn endless_handshake_headers_are_a_handshake_error() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        read_http_head(&mut stream);
        let _ = stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\n");
        let line = format!("X-Padding: {}\r\n", "a".repeat(1000));
        // Until the client gives up (it must, long before this loop ends).
        for _ in 0..1000 {
            if stream.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
    let r = WebSocket::connect_pull(&server.url());
    assert!(
        matches!(
            &r,
            Err(Error::Handshake {
                kind: HandshakeErrorKind::TooLarge,
                ..
            })
        ),
        "{r:?}"
    );
    server.join();
}

/// A rejection whose body comes in pieces, chunked: the body is read whole and decoded.
#[test]
fn a_chunked_rejection_body_is_read_whole() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        read_http_head(&mut stream);
        stream
            .write_all(b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\nWWW-Authenticate: Bearer\r\n\r\n")
            .unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(b"6\r\ntoken \r\n").unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(b"7\r\nexpired\r\n0\r\n\r\n").unwrap();
        read_to_end_quietly(&mut stream);
    });
    match WebSocket::connect_pull(&server.url()) {
        Err(Error::HandshakeRejected {
            status, response, ..
        }) => {
            assert_eq!(status, 401);
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
            assert_eq!(response.body_text(), Some("token expired"));
        }
        other => panic!("{other:?}"),
    }
    server.join();
}
