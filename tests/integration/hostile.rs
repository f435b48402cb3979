//! A hostile or broken server, as raw TCP servers on 127.0.0.1: what a review of such
//! peers found on 2026-12-07 (each test failed then; its comment says what happened).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nwebsocket::{Error, Event, Reconnect, WebSocket};
use tungstenite::handshake::derive_accept_key;

use crate::support::*;

/// The `Sec-WebSocket-Key` of a request head.
fn key_of(head: &str) -> String {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("server: no Sec-WebSocket-Key")
}

/// A 101 answer for `head` with the given `Connection` header lines, then `extra` lines
/// (each line ending in CRLF).
fn answer_101_with(head: &str, connection: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n{connection}\
         Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
        derive_accept_key(key_of(head).as_bytes())
    )
}

fn answer_101(head: &str, extra: &str) -> String {
    answer_101_with(head, "Connection: Upgrade\r\n", extra)
}

/// The bytes the client sends, until EOF or `for_at_most`.
fn client_bytes(stream: &mut TcpStream, for_at_most: Duration) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + for_at_most;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    out
}

/// The status code of the first Close frame in the client's (masked) frames.
fn first_close_code(mut bytes: &[u8]) -> Option<u16> {
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0F;
        let masked = bytes[1] & 0x80 != 0;
        let (len, mut at) = match bytes[1] & 0x7F {
            126 => (
                u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask: [u8; 4] = if masked {
            let m = bytes.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            m
        } else {
            [0; 4]
        };
        let payload: Vec<u8> = bytes
            .get(at..at + len)?
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        bytes = &bytes[at + len..];
    }
    None
}

// ---------------------------------------------------------------------------------------
// 1. A chunked rejection body panics the I/O thread.
// ---------------------------------------------------------------------------------------

/// A 403 whose chunked body announces a chunk of 2^64-1 bytes (after a first chunk of 2).
///
/// Now: `decode_chunked` (src/io/connect.rs) computes `size + 2` and `out.len() + size`
/// unchecked: the I/O thread panics ("attempt to add with overflow" in debug builds; in
/// release the sums wrap and `&raw[..size]` panics instead), and `connect` returns
/// `Err(Internal("attempt to add with overflow"))`.
/// Should: no panic on anything a server sends; the rejection is reported as
/// `HandshakeRejected { status: 403 }` with what arrived of the body.
#[test]
fn a_chunked_rejection_with_a_huge_chunk_size_is_still_a_rejection() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        read_http_head(&mut stream);
        stream
            .write_all(
                b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n\
                  2\r\nab\r\nffffffffffffffff\r\nxyz",
            )
            .unwrap();
        read_to_end_quietly(&mut stream);
    });
    let r = WebSocket::connect_pull(&server.url());
    assert!(
        matches!(&r, Err(Error::HandshakeRejected { status: 403, .. })),
        "{r:?}"
    );
    drop(r);
    server.join();
}

/// The same rejection with reconnect on: the panic also ends reconnecting for good.
///
/// Now: the first attempt's panic is caught in `IoThread::run`, which reports it and
/// ends the thread: no second attempt is made (one connection seen).
/// Should: a rejection is an ordinary failed attempt; the policy retries (two connections
/// within a second with a 10 ms delay).
#[test]
fn a_chunked_rejection_with_a_huge_chunk_size_does_not_end_reconnecting() {
    let _g = shared();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let counter = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = 0;
        let mut held = Vec::new();
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    seen += 1;
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    read_http_head(&mut s);
                    let _ = s.write_all(
                        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n\
                          2\r\nab\r\nffffffffffffffff\r\nxyz",
                    );
                    held.push(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        seen
    });
    let (ws, events) = WebSocket::builder()
        .reconnect(Reconnect::new().initial_delay(Duration::from_millis(10)))
        .open_pull(&format!("ws://{addr}/"))
        .expect("open");
    let seen = counter.join().unwrap();
    drop(ws);
    let evs: Vec<Event> = events.try_iter().collect();
    assert!(seen >= 2, "connections seen: {seen}; events: {evs:?}");
}

// ---------------------------------------------------------------------------------------
// 2. A valid 101 whose Connection header lists more than one token is refused.
// ---------------------------------------------------------------------------------------

fn connection_variant(connection: &'static str) -> Result<(WebSocket, nwebsocket::Events), Error> {
    let server = raw_server(move |mut stream| {
        let head = read_http_head(&mut stream);
        let a = answer_101_with(&head, connection, "");
        stream.write_all(a.as_bytes()).unwrap();
        read_to_end_quietly(&mut stream);
    });
    let r = WebSocket::builder()
        .no_deflate()
        .close_timeout(Duration::from_secs(1))
        .connect_pull(&server.url());
    if let Ok((ws, _)) = &r {
        ws.close();
    }
    r
}

/// `Connection: keep-alive, Upgrade` in the 101 (and the same as two header lines).
///
/// Now: refused with `Handshake { kind: InvalidUpgrade, "No \"Connection: upgrade\"
/// header" }`: tungstenite's client check (handshake/client.rs, `verify_response`) wants
/// the first `Connection` value to equal "Upgrade", and nwebsocket relies on it.
/// Should: open. RFC 6455 §4.1 (client step 3) fails the connection only if the header
/// "doesn't contain a token that is an ASCII case-insensitive match for Upgrade"; a
/// token list (RFC 7230 §6.1), on one line or several, is valid, and browsers accept it
/// (Python's websocket-client fixed the same bug: websocket-client#626).
#[test]
fn a_101_with_a_connection_token_list_opens() {
    let _g = shared();
    for connection in [
        "Connection: keep-alive, Upgrade\r\n",
        "Connection: Upgrade, keep-alive\r\n",
        "Connection: keep-alive\r\nConnection: Upgrade\r\n",
    ] {
        let r = connection_variant(connection);
        assert!(r.is_ok(), "{connection:?}: {:?}", r.err());
    }
}

// ---------------------------------------------------------------------------------------
// 3. Duplicated handshake headers are read as their first line.
// ---------------------------------------------------------------------------------------

/// Two `Sec-WebSocket-Protocol` lines in the 101, both offered protocols.
///
/// Now: opens with `protocol() == "chat"` (tungstenite and `Io::opened` read the first
/// line only). Should: fail the handshake (Negotiation): the field's value is
/// "chat, superchat" (RFC 7230 §3.2.2), which is not one offered subprotocol (RFC 6455
/// §4.1 step 6); browsers fail it ("Sec-WebSocket-Protocol header must not appear more
/// than once in a response").
#[test]
fn a_101_choosing_two_subprotocols_fails() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        let head = read_http_head(&mut stream);
        let a = answer_101(
            &head,
            "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: superchat\r\n",
        );
        stream.write_all(a.as_bytes()).unwrap();
        read_to_end_quietly(&mut stream);
    });
    let r = WebSocket::builder()
        .subprotocol("chat")
        .subprotocol("superchat")
        .close_timeout(Duration::from_secs(1))
        .connect_pull(&server.url());
    let opened = r
        .as_ref()
        .map(|(ws, _)| ws.protocol())
        .map_err(|e| e.to_string());
    drop(r);
    server.join();
    assert!(opened.is_err(), "opened with protocol {opened:?}");
}

/// Two `Sec-WebSocket-Accept` lines in the 101, the first right, the second wrong.
///
/// Now: opens (only the first line is compared). Should: fail the handshake: the field's
/// value is not the expected key (RFC 6455 §4.1 step 4); browsers fail it
/// ("Sec-WebSocket-Accept header must not appear more than once in a response").
#[test]
fn a_101_with_two_accept_lines_fails() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        let head = read_http_head(&mut stream);
        let a = answer_101(
            &head,
            "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
        );
        stream.write_all(a.as_bytes()).unwrap();
        read_to_end_quietly(&mut stream);
    });
    let r = WebSocket::builder()
        .close_timeout(Duration::from_secs(1))
        .connect_pull(&server.url());
    let opened = r.is_ok();
    drop(r);
    server.join();
    assert!(!opened, "opened");
}

// ---------------------------------------------------------------------------------------
// 4. A frame length not in its minimal encoding is accepted.
// ---------------------------------------------------------------------------------------

/// "hi" with its length in the 16-bit extended field, then in the 64-bit one.
///
/// Now: delivered as `Message(Text("hi"))` (tungstenite's `FrameHeader::parse` does not
/// check, nor does `Reader::check` in src/protocol/incoming.rs). Should: fail the
/// connection with 1002: RFC 6455 §5.2 "the minimal number of bytes MUST be used to
/// encode the length"; Chromium's frame parser fails such frames as a protocol error.
#[test]
fn a_non_minimal_length_encoding_fails_with_1002() {
    let _g = shared();
    let mut wide = vec![0x81, 127];
    wide.extend_from_slice(&2u64.to_be_bytes());
    wide.extend_from_slice(b"hi");
    for frame in [vec![0x81, 126, 0, 2, b'h', b'i'], wide] {
        let server = raw_server(move |mut stream| {
            let head = read_http_head(&mut stream);
            stream.write_all(answer_101(&head, "").as_bytes()).unwrap();
            stream.write_all(&frame).unwrap();
            first_close_code(&client_bytes(&mut stream, Duration::from_secs(3)))
        });
        let (ws, events) = WebSocket::builder()
            .no_deflate()
            .open_pull(&server.url())
            .expect("open");
        let evs = events_until_close(&events);
        drop(ws);
        let code = server.join();
        assert!(
            matches!(evs.as_slice(), [Event::Open, Event::Error(_), Event::Close(c)] if c.code == 1006 && !c.was_clean),
            "{evs:?}"
        );
        assert_eq!(code, Some(1002), "{evs:?}");
    }
}

/// The token list is the only thing let through: a `Connection` with no `Upgrade` token,
/// or a list with a wrong accept key, is refused as before; and after a list is accepted,
/// a frame sent with the 101 in one write is the first message.
#[test]
fn a_connection_token_list_is_checked_like_the_rest_of_the_101() {
    let _g = shared();
    let answer = |connection: &'static str, accept_ok: bool| {
        raw_server(move |mut stream| {
            let head = read_http_head(&mut stream);
            let mut a = answer_101_with(&head, connection, "");
            if !accept_ok {
                let key = derive_accept_key(key_of(&head).as_bytes());
                a = a.replace(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
            }
            let mut wire = a.into_bytes();
            wire.extend_from_slice(&[0x81, 2, b'h', b'i']);
            stream.write_all(&wire).unwrap();
            read_to_end_quietly(&mut stream);
        })
    };
    for (connection, accept_ok) in [
        ("Connection: keep-alive\r\n", true),
        ("Connection: keep-alive, Upgrade\r\n", false),
        ("Connection: keep-alive, Upgraded\r\n", true),
    ] {
        let server = answer(connection, accept_ok);
        let r = WebSocket::builder()
            .no_deflate()
            .connect_pull(&server.url());
        assert!(
            matches!(&r, Err(Error::Handshake { .. })),
            "{connection:?}, accept ok {accept_ok}: {r:?}"
        );
        drop(r);
        server.join();
    }
    let server = answer("Connection: keep-alive, Upgrade\r\n", true);
    let (ws, events) = WebSocket::builder()
        .no_deflate()
        .close_timeout(Duration::from_secs(1))
        .connect_pull(&server.url())
        .expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    match next_event(&events) {
        Event::Message(m) => assert_eq!(m.as_text(), Some("hi")),
        other => panic!("{other:?}"),
    }
    drop(ws);
    server.join();
}
