//! Peers that break the protocol after a valid handshake: each gives one typed error,
//! `onclose(1006)`, the RFC 6455 close code on the wire, and no hang or panic.

use std::io::{Read, Write};
use std::time::Duration;

use nwebsocket::{Error, WebSocket};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

/// After the handshake, writes `bytes` raw, then reads the client's Close frame code.
fn raw_after_handshake(bytes: &'static [u8]) -> Server<Option<CloseCode>> {
    server(move |mut ws| {
        ws.send(tungstenite::Message::text("before")).unwrap();
        ws.get_mut().write_all(bytes).expect("server: raw write");
        read_until_close(&mut ws).1.map(|f| f.code)
    })
}

fn expect_protocol_failure(bytes: &'static [u8], wire_code: CloseCode) {
    let _g = shared();
    let server = raw_after_handshake(bytes);
    let (rec, rx) = recorder();
    let ws = WebSocket::connect(&server.url(), rec).expect("connect");
    let recs = recs_until_close(&rx);
    assert!(
        matches!(&recs[1], Rec::Message(m) if m.as_text() == Some("before")),
        "{recs:?}"
    );
    assert_failure_tail(&recs, |e| matches!(e, Error::Protocol { .. }));
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    assert_eq!(server.join(), Some(wire_code));
}

#[test]
fn a_masked_frame_from_the_server_fails_with_1002() {
    // FIN + text, MASK bit + length 5, mask key, "hello" masked.
    const MASKED: &[u8] = &[
        0x81,
        0x85,
        0x01,
        0x02,
        0x03,
        0x04,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    expect_protocol_failure(MASKED, CloseCode::Protocol);
}

#[test]
fn a_reserved_data_opcode_fails_with_1002() {
    expect_protocol_failure(&[0x83, 0x02, b'h', b'i'], CloseCode::Protocol);
}

#[test]
fn a_reserved_control_opcode_fails_with_1002() {
    expect_protocol_failure(&[0x8B, 0x00], CloseCode::Protocol);
}

#[test]
fn reserved_bits_without_an_extension_fail_with_1002() {
    expect_protocol_failure(&[0xC1, 0x02, b'h', b'i'], CloseCode::Protocol);
}

#[test]
fn a_fragmented_control_frame_fails_with_1002() {
    expect_protocol_failure(&[0x09, 0x00], CloseCode::Protocol);
}

#[test]
fn a_continuation_without_a_start_fails_with_1002() {
    expect_protocol_failure(&[0x80, 0x02, b'h', b'i'], CloseCode::Protocol);
}

/// An HTTP response where frames should be. Its first bytes read as a frame header with
/// RSV1 set and an 84-byte payload ('H' = 0x48, 'T' = 0x54); the frame is judged once
/// complete, so the garbage must be at least that long. (A peer that sends a partial
/// header and then nothing is a silent peer: `ping_interval` is what detects those.)
#[test]
fn bytes_that_are_not_websocket_fail_with_1002() {
    const GARBAGE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 62\r\n\r\n\
        <html><body>this is not a WebSocket frame at all</body></html>";
    assert!(GARBAGE.len() >= 2 + 84);
    expect_protocol_failure(GARBAGE, CloseCode::Protocol);
}

#[test]
fn a_close_frame_with_a_bad_payload_fails() {
    // A Close frame with a one-byte payload (a code needs two).
    let _g = shared();
    let server = raw_after_handshake(&[0x88, 0x01, 0x03]);
    let (rec, rx) = recorder();
    let _ws = WebSocket::connect(&server.url(), rec).expect("connect");
    let recs = recs_until_close(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Protocol { .. }));
    server.join();
}

/// The server resets the TCP connection (closing a socket with unread data sends RST).
#[test]
fn a_tcp_reset_fails_the_connection() {
    let _g = shared();
    let server = server(|ws| {
        // Leave what the client sends unread, then close: the kernel answers with RST.
        let _ = ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(1)));
        let mut peek = [0u8; 1];
        let deadline = std::time::Instant::now() + WAIT;
        while ws.get_ref().peek(&mut peek).map_or(true, |n| n == 0)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(ws);
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::connect(&server.url(), rec).expect("connect");
    ws.send("unread by the server").unwrap();
    server.join();
    let recs = recs_until_close(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Io(_)));
}

/// A peer that answers the handshake with something that is not HTTP at all.
#[test]
fn a_handshake_answer_that_is_not_http_fails_cleanly() {
    let _g = shared();
    let server = raw_server(|mut s| {
        let _ = read_http_head(&mut s);
        s.write_all(b"\x00\x01\x02garbage\r\n\r\n").unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let result = WebSocket::builder()
        .handshake_timeout(Duration::from_secs(5))
        .connect_pull(&server.url());
    assert!(matches!(result, Err(Error::Handshake { .. })), "{result:?}");
}
