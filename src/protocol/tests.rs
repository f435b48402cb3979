//! The core without sockets: byte slices in, events and bytes out.

use super::*;

fn limits() -> Limits {
    Limits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
    }
}

fn timers() -> Timers {
    Timers {
        close_timeout: Some(Duration::from_secs(10)),
        ping_interval: None,
        pong_timeout: Some(Duration::from_secs(10)),
    }
}

fn conn() -> Connection {
    Connection::new(limits(), timers(), &[], Instant::now())
}

/// Feeds `bytes` to the core as one read.
fn feed(c: &mut Connection, bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = c
            .read_with(|buf| {
                let n = buf.len().min(rest.len());
                buf[..n].copy_from_slice(&rest[..n]);
                Ok(n)
            })
            .unwrap();
        rest = &rest[n..];
    }
}

fn events(c: &mut Connection) -> Vec<Event> {
    let now = Instant::now();
    std::iter::from_fn(|| c.poll_event(now)).collect()
}

/// An unmasked server frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_text_message_split_at_every_byte_comes_out_once() {
    let wire = [frame(0x81, b"hello"), frame(0x82, &[1, 2, 3])].concat();
    for split in 0..=wire.len() {
        let mut c = conn();
        feed(&mut c, &wire[..split]);
        let mut got = events(&mut c);
        feed(&mut c, &wire[split..]);
        got.extend(events(&mut c));
        assert_eq!(got.len(), 2, "split at {split}: {got:?}");
        assert!(matches!(&got[0], Event::Message(m) if m.as_text() == Some("hello")));
        assert!(matches!(&got[1], Event::Message(m) if m.as_bytes() == [1, 2, 3]));
    }
}

fn ended(got: &[Event]) -> Option<&End> {
    got.iter().find_map(|e| match e {
        Event::End(end) => Some(end),
        _ => None,
    })
}

/// Everything the core writes, unmasked: (opcode byte, payload) per frame.
fn written(c: &mut Connection) -> Vec<(u8, Vec<u8>)> {
    let now = Instant::now();
    let mut wire = Vec::new();
    while let Some(bytes) = c.transmit() {
        let n = bytes.len();
        wire.extend_from_slice(bytes);
        c.advance(n, now);
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let mut cursor = std::io::Cursor::new(&wire[at..]);
        let (header, len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
            .unwrap()
            .unwrap();
        let start = at + cursor.position() as usize;
        let mask = header.mask.expect("client frames are masked");
        let payload: Vec<u8> = wire[start..start + len as usize]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let mut first = Vec::new();
        header.format(len, &mut first).unwrap();
        frames.push((first[0], payload));
        at = start + len as usize;
    }
    frames
}

fn eof(c: &mut Connection) {
    c.read_with(|_| Ok(0)).unwrap();
}

#[test]
fn fragments_with_control_frames_between_split_at_every_byte() {
    let wire = [
        frame(0x01, b"hel"),
        frame(0x89, b"ping"),
        frame(0x00, b"lo "),
        frame(0x8A, b"pong"),
        frame(0x80, "wörld".as_bytes()),
        frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']),
    ]
    .concat();
    for split in 0..=wire.len() {
        let mut c = conn();
        feed(&mut c, &wire[..split]);
        let mut got = events(&mut c);
        feed(&mut c, &wire[split..]);
        got.extend(events(&mut c));
        let kinds: Vec<String> = got
            .iter()
            .map(|e| match e {
                Event::Message(m) => format!("msg {:?}", m.as_text()),
                Event::Ping(p) => format!("ping {p:?}"),
                Event::Pong(p) => format!("pong {p:?}"),
                Event::PeerClose(c) => format!("close {}", c.code),
                Event::End(_) => "end".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "ping b\"ping\"",
                "pong b\"pong\"",
                "msg Some(\"hello wörld\")",
                "close 1000"
            ],
            "split at {split}"
        );
    }
}

#[test]
fn a_reset_after_both_close_frames_is_a_clean_end() {
    let mut c = conn();
    let now = Instant::now();
    feed(&mut c, &frame(0x88, &[0x03, 0xe8]));
    assert!(matches!(&events(&mut c)[..], [Event::PeerClose(_)]));
    c.close(None, now);
    written(&mut c);
    let reset = c.read_with(|_| Err(std::io::ErrorKind::ConnectionReset.into()));
    assert!(matches!(reset, Ok(0)), "{reset:?}");
    let got = events(&mut c);
    assert!(
        matches!(ended(&got), Some(End::Clean(e)) if e.code == 1000 && e.was_clean),
        "{got:?}"
    );
    // Before the closing handshake, a reset is an error.
    let mut c = conn();
    assert!(c
        .read_with(|_| Err(std::io::ErrorKind::ConnectionReset.into()))
        .is_err());
}

#[test]
fn the_server_closes_first_the_echo_carries_its_code_and_the_end_is_clean() {
    let mut c = conn();
    let now = Instant::now();
    feed(&mut c, &frame(0x88, &[0x0f, 0xa0, b'x'])); // 4000 "x"
    let got = events(&mut c);
    assert!(matches!(&got[..], [Event::PeerClose(e)] if e.code == 4000 && e.reason == "x"));
    c.close(None, now);
    assert_eq!(written(&mut c), [(0x88, vec![0x0f, 0xa0])]);
    eof(&mut c);
    let got = events(&mut c);
    assert!(
        matches!(ended(&got), Some(End::Clean(e)) if e.code == 4000 && e.was_clean),
        "{got:?}"
    );
    assert!(c.poll_event(now).is_none(), "the end is reported once");
}

#[test]
fn we_close_first_then_the_server_answers() {
    let mut c = conn();
    let now = Instant::now();
    c.close(Some((1000, "bye")), now);
    assert_eq!(written(&mut c), [(0x88, b"\x03\xe8bye".to_vec())]);
    // Messages the server sent before it saw our Close still arrive.
    feed(
        &mut c,
        &[frame(0x81, b"late"), frame(0x88, &[0x03, 0xe8])].concat(),
    );
    let got = events(&mut c);
    assert!(matches!(&got[..], [Event::Message(m)] if m.as_text() == Some("late")));
    eof(&mut c);
    let got = events(&mut c);
    assert!(
        matches!(ended(&got), Some(End::Clean(e)) if e.code == 1000),
        "{got:?}"
    );
}

#[test]
fn data_after_the_servers_close_is_discarded() {
    let mut c = conn();
    let wire = [
        frame(0x88, &[0x03, 0xe8]),
        frame(0x81, b"after"),
        frame(0x89, b"p"),
    ]
    .concat();
    feed(&mut c, &wire);
    let got = events(&mut c);
    assert!(
        matches!(&got[..], [Event::PeerClose(e)] if e.code == 1000),
        "{got:?}"
    );
    c.close(None, Instant::now());
    assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xe8])], "no pong");
    eof(&mut c);
    assert!(matches!(ended(&events(&mut c)), Some(End::Clean(e)) if e.code == 1000));
}

#[test]
fn no_data_frame_follows_our_close() {
    let mut c = conn();
    let now = Instant::now();
    let mut outbox = Outbox::default();
    push(
        &Message::from("before"),
        &SendDeflate::default(),
        || true,
        |append| append(&mut outbox),
    );
    c.queue_data(outbox.take(None)).unwrap();
    c.close(Some((1000, "")), now);
    push(
        &Message::from("after"),
        &SendDeflate::default(),
        || true,
        |append| append(&mut outbox),
    );
    assert!(c.queue_data(outbox.take(None)).is_err());
    let ops: Vec<u8> = written(&mut c).into_iter().map(|(op, _)| op).collect();
    assert_eq!(ops, [0x81, 0x88]);
    // A ping from the server after our Close is answered (RFC 6455 §5.5.2), with a pong:
    // a control frame, not data.
    feed(&mut c, &frame(0x89, b"p"));
    let _ = events(&mut c);
    assert_eq!(written(&mut c), [(0x8A, b"p".to_vec())]);
}

#[test]
fn invalid_close_codes_fail_the_connection_with_1002() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
        let mut c = conn();
        feed(&mut c, &frame(0x88, &code.to_be_bytes()));
        let got = events(&mut c);
        assert!(
            matches!(ended(&got), Some(End::Failed(Error::Protocol { .. }))),
            "code {code}: {got:?}"
        );
        assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xea])], "code {code}");
    }
    let mut c = conn();
    feed(&mut c, &frame(0x88, &[0x03]));
    assert!(matches!(
        ended(&events(&mut c)),
        Some(End::Failed(Error::Protocol { .. }))
    ));
    let mut c = conn();
    feed(&mut c, &frame(0x88, &[0x03, 0xe8, 0xff]));
    assert!(matches!(
        ended(&events(&mut c)),
        Some(End::Failed(Error::Protocol { .. }))
    ));
    assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xef])], "1007");
}

#[test]
fn malformed_frames_fail_with_the_right_code() {
    let mut top_bit = vec![0x82, 127];
    top_bit.extend_from_slice(&0x8000_0000_0000_0005u64.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("masked", vec![0x81, 0x81, 1, 2, 3, 4, b'a'], 1002),
        ("rsv1", frame(0xC1, b"a"), 1002),
        ("rsv3", frame(0x91, b"a"), 1002),
        ("reserved opcode", frame(0x83, b"a"), 1002),
        ("reserved control opcode", frame(0x8B, b"a"), 1002),
        ("fragmented ping", frame(0x09, b"a"), 1002),
        ("long ping", frame(0x89, &[0; 126]), 1002),
        ("continuation first", frame(0x80, b"a"), 1002),
        (
            "text inside fragments",
            [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
            1002,
        ),
        ("64-bit length top bit", top_bit, 1002),
        ("bad utf-8", frame(0x81, &[0xff, 0xfe]), 1007),
        (
            "bad utf-8 fragmented",
            [frame(0x01, &[0xe2]), frame(0x80, &[0x28])].concat(),
            1007,
        ),
        (
            "frame over the limit",
            frame(0x82, &vec![0; (1 << 20) + 1]),
            1009,
        ),
    ];
    for (what, wire, code) in cases {
        let mut c = conn();
        feed(&mut c, &wire);
        let got = events(&mut c);
        assert!(
            matches!(ended(&got), Some(End::Failed(_))),
            "{what}: {got:?}"
        );
        if code == 1009 {
            assert!(
                matches!(ended(&got), Some(End::Failed(Error::Capacity { .. }))),
                "{what}"
            );
        } else {
            assert!(
                matches!(ended(&got), Some(End::Failed(Error::Protocol { .. }))),
                "{what}"
            );
        }
        assert_eq!(
            written(&mut c),
            [(0x88, code.to_be_bytes().to_vec())],
            "{what}"
        );
        assert!(
            c.poll_event(Instant::now()).is_none(),
            "{what}: nothing after the end"
        );
    }
}

/// Invalid UTF-8 in a text frame fails with 1007 as soon as it has arrived, before the
/// frame is whole: small and large (own buffer) frames, a message's first frame and a
/// continuation. The rest of each frame never comes.
#[test]
fn invalid_text_fails_before_its_frame_is_whole() {
    let bad = b"ok\xC0\xAF and more";
    for len in [100, 60_000] {
        for (what, mut wire) in [
            ("first frame", header_only(0x81, len)),
            (
                "continuation",
                [frame(0x01, "caf\u{e9}".as_bytes()), header_only(0x80, len)].concat(),
            ),
        ] {
            wire.extend_from_slice(bad);
            fails_with_1007(&wire, &format!("{what}, {len} bytes"));
        }
    }
}

/// A frame's header announcing `len` bytes of payload, without them.
fn header_only(first: u8, len: usize) -> Vec<u8> {
    let mut f = frame(first, &vec![b'x'; len]);
    f.truncate(f.len() - len);
    f
}

/// `wire`, read at once, fails the connection with a protocol error and 1007 on the wire.
fn fails_with_1007(wire: &[u8], what: &str) {
    let mut c = conn();
    feed(&mut c, wire);
    let got = events(&mut c);
    assert!(
        matches!(ended(&got), Some(End::Failed(Error::Protocol { .. }))),
        "{what}: {got:?}"
    );
    assert_eq!(
        written(&mut c),
        [(0x88, 1007u16.to_be_bytes().to_vec())],
        "{what}"
    );
}

/// Checking text as it arrives fails nothing valid: characters split between reads, and
/// between a message's frames (a continuation that starts with the rest of a character),
/// in small and large frames, fed in pieces of every size here.
#[test]
fn valid_text_split_anywhere_is_not_failed_as_it_arrives() {
    // 10 bytes a repeat, 30,000 in all; 20,002 and 5,002 fall inside an 'é'.
    let long = "a\u{e9}\u{20ac}\u{1f600}".repeat(3000);
    let (long_b, smile) = (long.as_bytes(), "\u{1f600}".as_bytes());
    let wire = [
        frame(0x01, &[b"x", &smile[..2]].concat()),
        frame(0x00, &[&smile[2..], b"y"].concat()),
        frame(0x80, "z\u{e9}".as_bytes()),
        frame(0x01, &long_b[..20_002]), // large, ends inside a character
        frame(0x80, &long_b[20_002..]),
        frame(0x81, long_b),
        frame(0x01, &long_b[..5_002]),
        frame(0x80, &long_b[5_002..]), // large, starts inside a character
    ]
    .concat();
    for piece in [1usize, 3, 7, 1000, 16_384, 1 << 20] {
        let mut c = conn();
        let mut got = Vec::new();
        for chunk in wire.chunks(piece) {
            feed(&mut c, chunk);
            got.extend(events(&mut c));
        }
        let texts: Vec<Option<&str>> = got
            .iter()
            .map(|e| match e {
                Event::Message(m) => m.as_text(),
                _ => None,
            })
            .collect();
        let expected = ["x\u{1f600}yz\u{e9}", &long, &long, &long];
        assert_eq!(texts, expected.map(Some), "pieces of {piece}");
    }
}

#[test]
fn a_fragmented_message_over_the_limit_fails_with_1009() {
    let limits = Limits {
        max_frame: 100,
        max_message: 150,
    };
    let mut c = Connection::new(limits, timers(), &[], Instant::now());
    feed(
        &mut c,
        &[frame(0x02, &[0; 100]), frame(0x80, &[0; 51])].concat(),
    );
    let got = events(&mut c);
    assert!(matches!(
        ended(&got),
        Some(End::Failed(Error::Capacity {
            what: "message",
            size: 151,
            limit: 150
        }))
    ));
}

#[test]
fn limits_of_usize_max_and_a_huge_announced_frame_do_not_panic() {
    let limits = Limits {
        max_frame: usize::MAX,
        max_message: usize::MAX,
    };
    let mut c = Connection::new(limits, timers(), &[], Instant::now());
    let mut wire = vec![0x82, 127];
    wire.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
    wire.extend_from_slice(b"a few bytes");
    feed(&mut c, &wire);
    assert!(events(&mut c).is_empty());
    eof(&mut c);
    assert!(matches!(
        ended(&events(&mut c)),
        Some(End::Failed(Error::Io(_)))
    ));
}

#[test]
fn a_large_frame_is_read_into_its_own_buffer_in_any_pieces() {
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let wire = [frame(0x82, &payload), frame(0x81, b"next")].concat();
    for piece in [1usize, 1000, 16_384, 65_536, 1 << 20] {
        let mut c = conn();
        let mut got = Vec::new();
        for chunk in wire.chunks(piece) {
            feed(&mut c, chunk);
            got.extend(events(&mut c));
        }
        assert_eq!(got.len(), 2, "pieces of {piece}");
        assert!(matches!(&got[0], Event::Message(m) if m.as_bytes() == &payload[..]));
        assert!(matches!(&got[1], Event::Message(m) if m.as_text() == Some("next")));
    }
}

#[test]
fn the_close_timeout_runs_from_our_close_going_out() {
    let mut c = conn();
    let t0 = Instant::now();
    c.close(Some((1000, "")), t0);
    // Stuck behind a full socket: nothing written, no timeout before the deadline.
    let later = t0 + Duration::from_secs(5);
    c.handle_timeout(later, true);
    assert!(!c.has_end());
    // Written at t0 + 5 s: the server has until t0 + 15 s.
    let n = c.transmit().unwrap().len();
    c.advance(n, later);
    c.handle_timeout(t0 + Duration::from_secs(14), true);
    assert!(!c.has_end());
    assert_eq!(c.poll_timeout(true), Some(later + Duration::from_secs(10)));
    // Judged even while the driver holds reading back (the consumer is behind).
    c.handle_timeout(t0 + Duration::from_secs(16), false);
    assert!(matches!(
        ended(&events(&mut c)),
        Some(End::Failed(Error::Timeout(Timeout::Close)))
    ));
}

#[test]
fn keepalive_pings_and_a_missing_pong_fail_the_connection() {
    let t0 = Instant::now();
    let timers = Timers {
        close_timeout: Some(Duration::from_secs(10)),
        ping_interval: Some(Duration::from_secs(1)),
        pong_timeout: Some(Duration::from_secs(3)),
    };
    let mut c = Connection::new(limits(), timers, &[], t0);
    assert_eq!(c.poll_timeout(true), Some(t0 + Duration::from_secs(1)));
    c.handle_timeout(t0 + Duration::from_secs(1), true);
    assert_eq!(written(&mut c), [(0x89, 1u64.to_be_bytes().to_vec())]);
    feed(&mut c, &frame(0x8A, &1u64.to_be_bytes()));
    assert!(matches!(&events(&mut c)[..], [Event::Pong(_)]));
    c.handle_timeout(t0 + Duration::from_secs(2), true);
    let _ = written(&mut c);
    c.handle_timeout(t0 + Duration::from_secs(5), true);
    assert!(matches!(
        ended(&events(&mut c)),
        Some(End::Failed(Error::Timeout(Timeout::Pong)))
    ));
}

#[test]
fn a_peer_that_pings_and_never_reads_is_failed_after_the_close_timeout() {
    let t0 = Instant::now();
    let mut c = conn();
    for i in 0..1000u32 {
        feed(&mut c, &frame(0x89, &i.to_be_bytes()));
        let _ = events(&mut c);
    }
    // Nothing could be written: the pongs wait, bounded.
    assert!(c.has_output());
    c.handle_timeout(t0 + Duration::from_secs(9), true);
    assert!(!c.has_end());
    c.handle_timeout(t0 + Duration::from_secs(11), true);
    assert!(matches!(
        ended(&events(&mut c)),
        Some(End::Failed(Error::Timeout(Timeout::Write)))
    ));
    assert!(written(&mut c).len() <= 32, "pongs waiting are bounded");
}

#[test]
fn durations_of_max_mean_no_limit() {
    let t0 = Instant::now();
    let timers = Timers {
        close_timeout: after(t0, Some(Duration::MAX)).map(|_| Duration::MAX),
        ping_interval: Some(Duration::MAX),
        pong_timeout: Some(Duration::MAX),
    };
    let mut c = Connection::new(limits(), timers, &[], t0);
    c.close(Some((1000, "")), t0);
    let _ = written(&mut c);
    assert_eq!(c.poll_timeout(true), None);
    c.handle_timeout(t0 + Duration::from_secs(1 << 30), true);
    assert!(!c.has_end());
}

// ---------------------------------------------------------------------------------------
// The core and tungstenite's own `WebSocket` agree on random streams, valid and not.
// ---------------------------------------------------------------------------------------

mod agreement {
    use super::*;
    use proptest::prelude::*;
    use tungstenite::protocol::{Role, WebSocketConfig};

    /// What a reader reports, up to the server's Close.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(u16, String),
        /// The connection failed.
        Failed,
    }

    const LIMIT: usize = 400;

    /// One frame: the first header byte's parts, the mask bit, and the payload.
    fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
        let opcode = prop_oneof![
            6 => Just(0x1u8),
            6 => Just(0x2u8),
            4 => Just(0x0u8),
            2 => Just(0x9u8),
            2 => Just(0xAu8),
            1 => Just(0x8u8),
            1 => Just(0x3u8),
            1 => Just(0xBu8),
        ];
        let payload = prop_oneof![
            4 => "[a-zé€😀]{0,40}".prop_map(String::into_bytes),
            3 => proptest::collection::vec(any::<u8>(), 0..60),
            1 => proptest::collection::vec(any::<u8>(), 120..130),
            1 => proptest::collection::vec(any::<u8>(), 390..410),
            1 => (0u16..5100, "[a-z]{0,10}").prop_map(|(code, reason)| {
                [&code.to_be_bytes()[..], reason.as_bytes()].concat()
            }),
        ];
        (
            opcode,
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.03),
            prop::bool::weighted(0.03),
            payload,
        )
            .prop_map(|(opcode, fin, rsv, masked, payload)| {
                let first = opcode | if fin { 0x80 } else { 0 } | if rsv { 0x40 } else { 0 };
                let mut f = frame(first, &payload);
                if masked {
                    // A mask of zeros: the payload reads the same, but the bit is set.
                    f[1] |= 0x80;
                    let at = match payload.len() {
                        n if n < 126 => 2,
                        n if n < 65536 => 4,
                        _ => 10,
                    };
                    f.splice(at..at, [0u8; 4]);
                }
                f
            })
    }

    fn ours(wire: &[u8], splits: &[usize]) -> Vec<Seen> {
        let limits = Limits {
            max_frame: LIMIT,
            max_message: LIMIT,
        };
        let mut c = Connection::new(limits, timers(), &[], Instant::now());
        let mut seen = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(wire.len());
        for cut in cuts {
            feed(&mut c, &wire[at..cut.max(at)]);
            at = at.max(cut);
            seen.extend(events(&mut c));
        }
        eof(&mut c);
        seen.extend(events(&mut c));
        let mut out = Vec::new();
        for e in seen {
            match e {
                Event::Message(Message::Text(t)) => out.push(Seen::Text(t.as_str().into())),
                Event::Message(Message::Binary(b)) => out.push(Seen::Binary(b.to_vec())),
                Event::Ping(p) => out.push(Seen::Ping(p.to_vec())),
                Event::Pong(p) => out.push(Seen::Pong(p.to_vec())),
                Event::PeerClose(c) => {
                    out.push(Seen::Close(c.code, c.reason));
                    break;
                }
                Event::End(End::Failed(_)) => out.push(Seen::Failed),
                Event::End(End::Clean(_)) => {}
            }
        }
        out
    }

    struct Memory<'a>(&'a [u8]);
    impl std::io::Read for Memory<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::io::Read::read(&mut self.0, buf)
        }
    }
    impl std::io::Write for Memory<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn tungstenites(wire: &[u8]) -> Vec<Seen> {
        let config = WebSocketConfig::default()
            .max_frame_size(Some(LIMIT))
            .max_message_size(Some(LIMIT));
        let mut ws =
            tungstenite::WebSocket::from_raw_socket(Memory(wire), Role::Client, Some(config));
        let mut out = Vec::new();
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => out.push(Seen::Text(t.as_str().into())),
                Ok(tungstenite::Message::Binary(b)) => out.push(Seen::Binary(b.to_vec())),
                Ok(tungstenite::Message::Ping(p)) => out.push(Seen::Ping(p.to_vec())),
                Ok(tungstenite::Message::Pong(p)) => out.push(Seen::Pong(p.to_vec())),
                Ok(tungstenite::Message::Close(frame)) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    });
                    // tungstenite answers an invalid code with its own 1002 and returns
                    // that; the contract fails the connection (RFC 6455 §7.1.7).
                    if (code, reason.as_str()) == (1002, "Protocol violation") {
                        out.push(Seen::Failed);
                    } else {
                        out.push(Seen::Close(code, reason));
                    }
                    break;
                }
                Ok(tungstenite::Message::Frame(_)) => {}
                Err(_) => {
                    out.push(Seen::Failed);
                    break;
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn the_core_reads_what_tungstenite_reads(
            frames in proptest::collection::vec(frame_strategy(), 0..12),
            splits in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let wire = frames.concat();
            prop_assert_eq!(ours(&wire, &splits), tungstenites(&wire));
        }
    }
}

#[test]
fn a_reset_after_the_servers_close_is_still_a_clean_close() {
    let mut c = conn();
    let now = Instant::now();
    feed(&mut c, &frame(0x88, &[]));
    assert!(matches!(&events(&mut c)[..], [Event::PeerClose(_)]));
    c.close(None, now);
    let _ = written(&mut c);
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    c.abort(Error::io(reset));
    assert!(matches!(ended(&events(&mut c)), Some(End::Clean(e)) if e.code == 1005));
    // Before the server's Close, a reset is a failure.
    let mut c = conn();
    c.close(Some((1000, "")), now);
    let _ = written(&mut c);
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    c.abort(Error::io(reset));
    assert!(matches!(
        ended(&events(&mut c)),
        Some(End::Failed(Error::Io(_)))
    ));
}

#[test]
fn the_write_stall_counts_from_the_pong_not_from_data_waiting_before_it() {
    let t0 = Instant::now();
    let mut c = conn();
    let mut outbox = Outbox::default();
    push(
        &Message::from(vec![0u8; 100_000]),
        &SendDeflate::default(),
        || true,
        |append| append(&mut outbox),
    );
    c.queue_data(outbox.take(None)).unwrap();
    // The server reads nothing for a long while; then we close: no write stall for a
    // Close (the close timeout judges it).
    let later = t0 + Duration::from_secs(30);
    c.close(Some((1000, "")), later);
    c.handle_timeout(later + Duration::from_secs(1), true);
    assert!(
        !c.has_end(),
        "a Close behind stalled data is not a write stall"
    );
    // A pong owed from now on: the stall counts from here.
    let mut c = conn();
    let mut outbox = Outbox::default();
    push(
        &Message::from(vec![0u8; 100_000]),
        &SendDeflate::default(),
        || true,
        |append| append(&mut outbox),
    );
    c.queue_data(outbox.take(None)).unwrap();
    feed(&mut c, &frame(0x89, b"p"));
    let _ = events(&mut c);
    let owed = c.poll_timeout(true).expect("a stall deadline");
    assert!(
        owed >= t0 + Duration::from_secs(10) && owed < later,
        "{owed:?}"
    );
}

/// What the driver needs to tell whether the keepalive ping can have reached the server:
/// none while it waits behind data, then the bytes written after it, until its pong.
#[test]
fn the_bytes_written_after_the_keepalive_ping_are_counted_until_its_pong() {
    let t0 = Instant::now();
    let timers = Timers {
        close_timeout: Some(Duration::from_secs(10)),
        ping_interval: Some(Duration::from_secs(1)),
        pong_timeout: Some(Duration::from_secs(3)),
    };
    let mut c = Connection::new(limits(), timers, &[], t0);
    let mut outbox = Outbox::default();
    push(
        &Message::from(vec![0u8; 100_000]),
        &SendDeflate::default(),
        || true,
        |append| append(&mut outbox),
    );
    c.queue_data(outbox.take(None)).unwrap();
    // Part of the frame is out when the ping is queued behind it.
    let n = c.transmit().unwrap().len().min(1000);
    c.advance(n, t0);
    c.handle_timeout(t0 + Duration::from_secs(1), true);
    assert!(c.pong_deadline().is_some());
    assert_eq!(
        c.written_since_ping(),
        None,
        "the ping waits behind the frame"
    );
    // The rest of the frame, then the ping: written after it, nothing.
    let mut wrote_ping = false;
    while let Some(bytes) = c.transmit() {
        let n = bytes.len();
        let ping = bytes[0] == 0x89;
        c.advance(n, t0 + Duration::from_secs(1));
        if ping {
            wrote_ping = true;
            break;
        }
    }
    assert!(wrote_ping);
    assert_eq!(c.written_since_ping(), Some(0));
    // A message after it counts.
    let mut outbox = Outbox::default();
    push(
        &Message::from("after"),
        &SendDeflate::default(),
        || true,
        |append| append(&mut outbox),
    );
    c.queue_data(outbox.take(None)).unwrap();
    let after = written(&mut c);
    assert_eq!(after.len(), 1);
    assert_eq!(c.written_since_ping(), Some(6 + 5)); // a masked header, "after"
                                                     // Its pong: nothing awaited, nothing counted.
    feed(&mut c, &frame(0x8A, &1u64.to_be_bytes()));
    let _ = events(&mut c);
    assert_eq!(c.written_since_ping(), None);
}

/// permessage-deflate in the core: the server's side is flate2, as a server would use it.
#[cfg(feature = "deflate")]
mod deflate {
    use super::*;
    use crate::config::Deflate;
    use crate::protocol::deflate::{accept, Params};
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

    fn params(answer: &str) -> Params {
        accept(&Deflate::new(), answer).unwrap().unwrap()
    }

    fn deflating(answer: &str, limits: Limits) -> Connection {
        let mut c = Connection::new(limits, timers(), &[], Instant::now());
        c.inflate_with(&params(answer));
        c
    }

    /// A server's compressor: raw deflate, sync flush, trailer taken off.
    struct Server(Compress);

    impl Server {
        fn new() -> Self {
            Server(Compress::new(Compression::default(), false))
        }

        fn compress(&mut self, data: &[u8]) -> Vec<u8> {
            let mut out = Vec::with_capacity(data.len() + 64);
            let mut input = data;
            loop {
                let before = self.0.total_in();
                self.0
                    .compress_vec(input, &mut out, FlushCompress::Sync)
                    .unwrap();
                input = &input[(self.0.total_in() - before) as usize..];
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
                out.reserve(out.capacity());
            }
            assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
            out.truncate(out.len() - 4);
            out
        }
    }

    fn texts(got: &[Event]) -> Vec<String> {
        got.iter()
            .map(|e| match e {
                Event::Message(Message::Text(t)) => t.as_str().to_owned(),
                Event::Message(Message::Binary(b)) => format!("binary {}", b.len()),
                Event::Ping(p) => format!("ping {p:?}"),
                Event::Pong(p) => format!("pong {p:?}"),
                Event::PeerClose(c) => format!("close {}", c.code),
                Event::End(e) => format!("end {e:?}"),
            })
            .collect()
    }

    #[test]
    fn fragmented_compressed_messages_split_at_every_byte() {
        let mut server = Server::new();
        let first = "wörld, hello wörld, hello wörld!".repeat(3);
        let z = server.compress(first.as_bytes());
        let second = server.compress(first.as_bytes()); // refers back to the first
        assert!(second.len() < z.len());
        let (a, b) = z.split_at(z.len() / 3);
        let (b, c3) = b.split_at(b.len() / 2);
        let wire = [
            frame(0x41, a), // RSV1 on the first frame only
            frame(0x89, b"ping"),
            frame(0x00, b),
            frame(0x8A, b"pong"),
            frame(0x80, c3),
            frame(0xC1, &second),  // whole, compressed
            frame(0x81, b"plain"), // uncompressed between compressed ones
            frame(0x88, &[0x03, 0xe8]),
        ]
        .concat();
        for split in 0..=wire.len() {
            let mut c = deflating("permessage-deflate", limits());
            feed(&mut c, &wire[..split]);
            let mut got = events(&mut c);
            feed(&mut c, &wire[split..]);
            got.extend(events(&mut c));
            assert_eq!(
                texts(&got),
                [
                    "ping b\"ping\"",
                    "pong b\"pong\"",
                    first.as_str(),
                    first.as_str(),
                    "plain",
                    "close 1000"
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_large_compressed_frame_is_read_and_inflated() {
        // Incompressible bytes: the compressed frame takes the large-frame path.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let z = Server::new().compress(&data);
        assert!(z.len() > 64 << 10);
        let mut c = deflating("permessage-deflate", limits());
        for piece in frame(0xC2, &z).chunks(1000) {
            feed(&mut c, piece);
        }
        let got = events(&mut c);
        assert!(
            matches!(&got[..], [Event::Message(m)] if m.as_bytes() == &data[..]),
            "{}",
            texts(&got).join("; ")
        );
    }

    #[test]
    fn rsv1_in_each_illegal_place_fails_with_1002() {
        let z = Server::new().compress(b"hello");
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("not negotiated", frame(0xC1, &z), false),
            ("on a ping", frame(0xC9, b"p"), true),
            ("on a pong", frame(0xCA, b"p"), true),
            ("on a close", frame(0xC8, &[0x03, 0xe8]), true),
            (
                "on a continuation",
                [frame(0x41, &z), frame(0xC0, &z)].concat(),
                true,
            ),
            (
                "on a continuation of an uncompressed message",
                [frame(0x01, b"a"), frame(0xC0, &z)].concat(),
                true,
            ),
            ("RSV2 with deflate", frame(0xA1, b"a"), true),
            ("RSV3 with deflate", frame(0x91, b"a"), true),
        ];
        for (what, wire, negotiated) in cases {
            let mut c = if negotiated {
                deflating("permessage-deflate", limits())
            } else {
                conn()
            };
            feed(&mut c, &wire);
            let got = events(&mut c);
            assert!(
                matches!(ended(&got), Some(End::Failed(Error::Protocol { .. }))),
                "{what}: {got:?}"
            );
            assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xea])], "{what}");
        }
    }

    #[test]
    fn invalid_compressed_data_fails_with_1007() {
        for (what, payload) in [
            ("reserved block type", vec![0xff, 0xff, 0xff]),
            (
                "stored block with a bad length",
                vec![0x00, 0x05, 0x00, 0x00, 0x00],
            ),
        ] {
            let mut c = deflating("permessage-deflate", limits());
            feed(&mut c, &frame(0xC2, &payload));
            let got = events(&mut c);
            assert!(
                matches!(ended(&got), Some(End::Failed(Error::Protocol { .. }))),
                "{what}: {got:?}"
            );
            assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xef])], "{what}");
        }
        // Valid deflate, invalid UTF-8 inside: 1007 as for plain text.
        let mut c = deflating("permessage-deflate", limits());
        feed(&mut c, &frame(0xC1, &Server::new().compress(&[0xff, 0xfe])));
        events(&mut c);
        assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xef])]);
    }

    #[test]
    fn a_bomb_fails_with_1009_before_its_memory_is_spent() {
        // 8 MiB of zeros in about 8 KiB, against a 1 MiB limit, whole and fragmented.
        let zeros = vec![0u8; 8 << 20];
        let z = Server::new().compress(&zeros);
        assert!(z.len() < 16 << 10, "{}", z.len());
        let (a, b) = z.split_at(z.len() / 2);
        for wire in [frame(0xC2, &z), [frame(0x42, a), frame(0x80, b)].concat()] {
            let limits = Limits {
                max_frame: 1 << 20,
                max_message: 1 << 20,
            };
            let mut c = deflating("permessage-deflate", limits);
            feed(&mut c, &wire);
            let got = events(&mut c);
            assert!(
                matches!(
                    ended(&got),
                    Some(End::Failed(Error::Capacity { limit, .. })) if *limit == 1 << 20
                ),
                "{got:?}"
            );
            assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xf1])]);
        }
    }

    #[test]
    fn context_takeover_is_honoured_both_ways() {
        let msg = br#"{"type":"ticker","product_id":"ETH-USD","price":"2301.17"}"#;
        // The server keeps its context: the second message is a back-reference.
        let mut server = Server::new();
        let z1 = server.compress(msg);
        let z2 = server.compress(msg);
        assert!(z2.len() < z1.len() / 2);
        // Without server context takeover, each message is inflated alone: a
        // back-reference to the previous message is then invalid (1007).
        let mut c = deflating("permessage-deflate; server_no_context_takeover", limits());
        feed(&mut c, &[frame(0xC1, &z1), frame(0xC1, &z1)].concat());
        assert_eq!(texts(&events(&mut c)).len(), 2, "each alone is fine");
        feed(&mut c, &frame(0xC1, &z2));
        events(&mut c);
        assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xef])]);
        // With it, the reference resolves.
        let mut c = deflating("permessage-deflate", limits());
        feed(&mut c, &[frame(0xC1, &z1), frame(0xC1, &z2)].concat());
        let got = texts(&events(&mut c));
        assert_eq!(got, [std::str::from_utf8(msg).unwrap(); 2]);
    }

    /// Frames from our outbox, inflated as a server does: each compressed message's
    /// payload, with the trailer put back.
    fn server_reads(outbox: &mut Outbox, server: &mut Decompress) -> Vec<(bool, Vec<u8>)> {
        let mut out = Output::new();
        out.queue_data(outbox.take(None)).unwrap();
        let mut wire = Vec::new();
        while let Some(b) = out.transmit() {
            let n = b.len();
            wire.extend_from_slice(b);
            out.advance(n, Instant::now());
        }
        let mut got = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let mut cursor = std::io::Cursor::new(&wire[at..]);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            let start = at + cursor.position() as usize;
            let mask = header.mask.unwrap();
            let mut payload: Vec<u8> = wire[start..start + len as usize]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            at = start + len as usize;
            if header.rsv1 {
                payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
                let mut plain = Vec::with_capacity(1 << 20);
                server
                    .decompress_vec(&payload, &mut plain, FlushDecompress::Sync)
                    .unwrap();
                got.push((true, plain));
            } else {
                got.push((false, payload));
            }
        }
        got
    }

    use tungstenite::protocol::frame::FrameHeader;

    /// A message refused before it is compressed leaves the context as it was: the next
    /// one compresses exactly as it would have without it.
    #[test]
    fn a_message_for_a_connection_not_open_does_not_touch_the_context() {
        let p = params("permessage-deflate");
        let big = "market data, market data, market data; ".repeat(50);
        let compressed = |deflate: &SendDeflate, open: bool| {
            deflate.compress(big.as_bytes(), || open, |body| body.to_vec())
        };
        let spoiled = SendDeflate::default();
        spoiled.start(Some((&p, &Deflate::new())));
        assert_eq!(compressed(&spoiled, false), None);
        let fresh = SendDeflate::default();
        fresh.start(Some((&p, &Deflate::new())));
        let first = compressed(&fresh, true).expect("compressed");
        assert_eq!(compressed(&spoiled, true), Some(first));
    }

    #[test]
    fn our_messages_round_trip_through_a_servers_inflater() {
        for answer in [
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=8",
        ] {
            let p = params(answer);
            let deflate = SendDeflate::default();
            deflate.start(Some((&p, &Deflate::new())));
            let big = "market data, market data, market data; ".repeat(50);
            let messages: Vec<Message> = vec![
                big.clone().into(),
                "small, sent as it is".into(),
                big.clone().into(),
                big.as_bytes().to_vec().into(),
            ];
            let mut outbox = Outbox::default();
            for m in &messages {
                push(m, &deflate, || true, |append| append(&mut outbox));
            }
            let mut server = Decompress::new(false);
            let got = server_reads(&mut outbox, &mut server);
            let flags: Vec<bool> = got.iter().map(|(z, _)| *z).collect();
            assert_eq!(flags, [true, false, true, true], "{answer}");
            for (m, (_, data)) in messages.iter().zip(&got) {
                assert_eq!(m.as_bytes(), &data[..], "{answer}");
            }
        }
    }
}

#[test]
fn after_a_failed_write_what_was_read_still_counts() {
    let now = Instant::now();
    let pipe = || Error::io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    let close = |code: u16| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        frame(0x88, &p)
    };
    // The server's messages and Close wait behind the failed write: all of them, then a
    // clean end with its code, and nothing is written (no echo).
    let mut c = conn();
    c.write_failed(pipe(), now);
    feed(
        &mut c,
        &[frame(0x81, b"one"), frame(0x82, b"two"), close(4001)].concat(),
    );
    let got = events(&mut c);
    assert!(
        matches!(&got[..], [Event::Message(_), Event::Message(_), Event::End(End::Clean(e))] if e.code == 4001 && e.reason == "bye"),
        "{got:?}"
    );
    // No Close: the stream's end (or a reset) fails the connection with the write's
    // error, after the messages.
    for end_with_reset in [false, true] {
        let mut c = conn();
        c.write_failed(pipe(), now);
        feed(&mut c, &frame(0x81, b"one"));
        assert!(matches!(&events(&mut c)[..], [Event::Message(_)]));
        if end_with_reset {
            c.abort(Error::io(std::io::ErrorKind::ConnectionReset.into()));
        } else {
            eof(&mut c);
        }
        let got = events(&mut c);
        assert!(
            matches!(&got[..], [Event::End(End::Failed(Error::Io(e)))] if e.kind() == std::io::ErrorKind::BrokenPipe),
            "{got:?}"
        );
    }
    // Nothing comes: the close timeout ends it, with the write's error.
    let mut c = conn();
    c.write_failed(pipe(), now);
    let later = now + Duration::from_secs(11);
    assert!(c.poll_timeout(true).is_some_and(|t| t <= later));
    c.handle_timeout(later, true);
    assert!(
        matches!(ended(&events(&mut c)), Some(End::Failed(Error::Io(e))) if e.kind() == std::io::ErrorKind::BrokenPipe)
    );
    // After the server's Close, a failed write is the clean end it always was.
    let mut c = conn();
    feed(&mut c, &close(1000));
    assert!(matches!(&events(&mut c)[..], [Event::PeerClose(_)]));
    c.write_failed(pipe(), now);
    assert!(matches!(ended(&events(&mut c)), Some(End::Clean(e)) if e.code == 1000));
}

/// RFC 6455 §5.5.2: a Ping is answered "unless it already received a Close frame". After
/// our Close, a ping that comes in the same read as the server's Close is not answered
/// once that Close is in: the server has ended its side (tungstenite drops a pending pong
/// when the Close arrives). Before pongs were written after our Close, none was.
#[test]
fn no_pong_is_written_after_the_servers_close() {
    let mut c = conn();
    let now = Instant::now();
    c.close(Some((1000, "")), now);
    assert_eq!(written(&mut c), [(0x88, vec![0x03, 0xe8])]);
    feed(
        &mut c,
        &[frame(0x89, b"p"), frame(0x88, &[0x03, 0xe8])].concat(),
    );
    let _ = events(&mut c);
    assert_eq!(written(&mut c), [], "a pong after the server's Close");
}

/// Invalid UTF-8 at the start of a continuation frame fails as it arrives too, as it
/// does anywhere else in the frame: `check_arriving` skips up to three leading
/// continuation bytes of a continuation frame whatever the message's earlier fragments
/// left incomplete (nothing, or a lead byte that wants one more), so stray bytes there,
/// followed by valid text, hold the connection until the frame is whole, which a
/// server that stalls never makes it. Small and large (own buffer) frames.
#[test]
fn invalid_bytes_opening_a_continuation_fail_as_they_arrive() {
    for len in [100, 60_000] {
        for (what, first, bad) in [
            (
                "after a whole character",
                &b"ok"[..],
                &b"\x80\x80 and more"[..],
            ),
            (
                "after a 2-byte lead",
                &b"caf\xC3"[..],
                &b"\xA9\x80\x80 and more"[..],
            ),
        ] {
            let mut wire = [frame(0x01, first), header_only(0x80, len)].concat();
            wire.extend_from_slice(bad);
            fails_with_1007(&wire, &format!("{what}, {len} bytes"));
        }
    }
}
