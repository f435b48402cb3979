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

/// A resolver that stalls until `release` is sent to, or `STALL` passes: a DNS server
/// that does not answer.
fn stalled_resolver(
    release: crossbeam_channel::Receiver<()>,
    calls: crossbeam_channel::Sender<(String, u16)>,
) -> impl Fn(&str, u16) -> std::io::Result<Vec<std::net::SocketAddr>> + Send + Sync + 'static {
    const STALL: Duration = Duration::from_secs(8);
    move |host, port| {
        let _ = calls.send((host.to_owned(), port));
        let _ = release.recv_timeout(STALL);
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the name server did not answer",
        ))
    }
}

/// The connect timeout bounds DNS too: a resolver that never answers fails the connection
/// with `Timeout::Connect` once the connect timeout has passed, as a TCP connect that
/// never completes does. (Until 2026-12-07 the I/O thread resolved names itself, in the
/// resolver's blocking call: `connect` returned only after the connect and handshake
/// timeouts and a second, and the I/O thread went on waiting for the resolver.)
#[test]
fn the_connect_timeout_bounds_a_stalled_resolver() {
    let _g = shared();
    let (_release, release_rx) = crossbeam_channel::bounded::<()>(1);
    let (calls_tx, calls) = crossbeam_channel::unbounded();
    let started = Instant::now();
    let result = WebSocket::builder()
        .resolver(stalled_resolver(release_rx, calls_tx))
        .connect_timeout(Duration::from_millis(300))
        .handshake_timeout(Duration::from_secs(10))
        .connect_pull("ws://stalled.invalid:9/");
    let took = started.elapsed();
    assert_eq!(
        calls.try_recv().ok(),
        Some(("stalled.invalid".to_owned(), 9)),
        "the resolver was asked"
    );
    match result {
        Err(Error::Timeout(Timeout::Connect)) => {}
        other => panic!("expected Timeout(Connect), got {other:?}"),
    }
    assert!(took < Duration::from_secs(2), "connect took {took:?}");
}

/// `close` (and dropping the last handle) while a name is being resolved ends the
/// connection at once: `onclose` comes, and the drop joins both threads, without waiting
/// for the resolver.
#[test]
fn close_while_resolving_ends_at_once() {
    let _g = exclusive();
    let (release, release_rx) = crossbeam_channel::bounded::<()>(1);
    let (calls_tx, calls) = crossbeam_channel::unbounded();
    let before = crate_threads();
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .resolver(stalled_resolver(release_rx, calls_tx))
        .connect_timeout(Duration::from_secs(30))
        .close_timeout(Duration::from_millis(300))
        .open("ws://stalled.invalid:9/", rec)
        .expect("open");
    calls.recv_timeout(WAIT).expect("the resolver was asked");
    let (ours, dns): (Vec<_>, Vec<_>) = new_crate_threads(&before, 3)
        .into_iter()
        .partition(|(_, name)| name != "nwebsocket-dns");
    assert_eq!(dns.len(), 1, "one DNS thread: {dns:?}");
    let started = Instant::now();
    ws.close();
    let recs = recs_until_close(&rx);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "onclose {took:?} after close"
    );
    assert_failure_tail(&recs, |_| true);
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    let started = Instant::now();
    drop(ws);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the drop took {took:?}");
    let alive = alive_after_join(&ours);
    assert!(alive.is_empty(), "alive after the drop: {alive:?}");
    // The resolver's thread ends once the resolver returns.
    let _ = release.send(());
    assert!(
        eventually(WAIT, || !thread_alive(dns[0].0)),
        "the DNS thread lives on"
    );
}

/// The resolver given to the builder is asked for host names (the name and port of the
/// URL), and the connection goes to the addresses it returns; its error is
/// `Error::Dns` for that host. An IP address in the URL is not resolved.
#[test]
fn a_custom_resolver_is_used_for_host_names() {
    let _g = shared();
    let server = echo_server();
    let addr = server.addr;
    let (calls_tx, calls) = crossbeam_channel::unbounded();
    let resolver = move |host: &str, port: u16| {
        let _ = calls_tx.send((host.to_owned(), port));
        match host {
            "echo.test" => Ok(vec![addr]),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such host",
            )),
        }
    };
    let builder = WebSocket::builder().resolver(resolver);
    let url = format!("ws://echo.test:{}/", addr.port());
    let (ws, events) = builder.clone().connect_pull(&url).expect("connect");
    assert_eq!(
        calls.try_recv().ok(),
        Some(("echo.test".to_owned(), addr.port()))
    );
    ws.send("via the resolver").unwrap();
    loop {
        match events.recv_timeout(WAIT).expect("an event") {
            Event::Open => continue,
            Event::Message(m) => {
                assert_eq!(m.as_text(), Some("via the resolver"));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    ws.close();
    drop(ws);
    match builder.clone().connect_pull("ws://nowhere.test:80/") {
        Err(Error::Dns { host, .. }) => assert_eq!(host, "nowhere.test"),
        other => panic!("expected Error::Dns, got {other:?}"),
    }
    assert_eq!(calls.try_recv().ok(), Some(("nowhere.test".to_owned(), 80)));
    server.join();
    let server = echo_server();
    let (ws, _events) = builder
        .connect_pull(&server.url())
        .expect("connect by address");
    assert!(calls.try_recv().is_err(), "an address was resolved");
    ws.close();
    drop(ws);
    server.join();
}

/// With reconnect, a name server that does not answer costs one thread, not one per
/// attempt: each attempt that times out leaves its lookup running, and the next attempt
/// for the same name waits for that one instead of starting another (until 2026-12-07
/// they piled up, 4 after 4 attempts; found by a review helper).
#[test]
fn reconnecting_past_a_stalled_resolver_keeps_one_dns_thread() {
    let _g = exclusive();
    let (release, release_rx) = crossbeam_channel::bounded::<()>(0);
    let (calls_tx, calls) = crossbeam_channel::unbounded();
    let before = crate_threads();
    let (ws, events) = WebSocket::builder()
        .resolver(stalled_resolver(release_rx, calls_tx))
        .connect_timeout(Duration::from_millis(100))
        .reconnect(
            nwebsocket::Reconnect::new()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(10))
                .jitter(0.0),
        )
        .open_pull("ws://stalled.invalid:9/")
        .expect("open");
    calls.recv_timeout(WAIT).expect("the resolver was asked");
    // Four attempts fail on the connect timeout.
    let mut timeouts = 0;
    while timeouts < 4 {
        match events.recv_timeout(WAIT).expect("an event") {
            Event::Error(Error::Timeout(Timeout::Connect)) => timeouts += 1,
            Event::Close(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let dns: Vec<_> = crate_threads()
        .into_iter()
        .filter(|t| !before.contains(t) && t.1 == "nwebsocket-dns")
        .collect();
    let asked = 1 + calls.try_iter().count();
    ws.close();
    drop(ws);
    while release.send_timeout((), Duration::from_millis(200)).is_ok() {}
    assert!(dns.len() <= 1, "{} DNS threads: {dns:?}", dns.len());
    assert_eq!(asked, 1, "the resolver was asked {asked} times");
}
