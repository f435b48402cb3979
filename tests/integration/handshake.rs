//! Rule 1 (URLs, the handshake request) and rule 2 (`onopen`).

use std::io::Read;
use std::time::Duration;

use nwebsocket::{Error, Event, ReadyState, UrlError, WebSocket};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::http::HeaderValue;

use crate::support::*;

#[test]
fn ws_and_http_urls_connect_and_http_maps_to_ws() {
    let _g = shared();
    for scheme in ["ws", "http", "HTTP", "Ws"] {
        let server = request_capturing_server();
        let url = format!("{scheme}://{}/path", server.addr);
        let (ws, events) = WebSocket::connect_pull(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(matches!(next_event(&events), Event::Open));
        assert_eq!(ws.url(), format!("ws://{}/path", server.addr), "{url}");
        ws.close();
        let seen = server.join();
        assert_eq!(seen.uri, "/path", "{url}");
    }
}

/// TLS follows the scheme (`wss`/`https`), never the port: the first bytes the server gets
/// are a TLS ClientHello record (0x16) or an HTTP `GET`.
#[test]
fn tls_is_chosen_by_scheme_not_port() {
    let _g = shared();
    for (scheme, tls) in [
        ("ws", false),
        ("http", false),
        ("wss", true),
        ("https", true),
    ] {
        let server = raw_server(|mut stream| {
            let mut first = [0u8; 4];
            stream.read_exact(&mut first).expect("server: first bytes");
            first
        });
        let url = format!("{scheme}://127.0.0.1:{}/", server.port());
        let (ws, events) = WebSocket::builder()
            .handshake_timeout(Duration::from_secs(5))
            .open_pull(&url)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let mapped = if tls { "wss://" } else { "ws://" };
        assert!(ws.url().starts_with(mapped), "{url} -> {}", ws.url());
        let first = server.join();
        if tls {
            assert_eq!(
                first[0], 0x16,
                "{url}: expected a TLS handshake record, got {first:?}"
            );
        } else {
            assert_eq!(&first, b"GET ", "{url}");
        }
        // The server hung up without answering: a failure, per rule 4.
        let evs = events_until_close(&events);
        assert!(
            matches!(evs.last(), Some(Event::Close(c)) if c.code == 1006 && !c.was_clean),
            "{evs:?}"
        );
        assert!(evs.iter().any(|e| matches!(e, Event::Error(_))), "{evs:?}");
        assert!(!evs.iter().any(|e| matches!(e, Event::Open)), "{evs:?}");
    }
}

#[test]
fn bad_urls_are_synchronous_url_errors() {
    let _g = shared();
    type Check = fn(&UrlError) -> bool;
    let cases: &[(&str, Check)] = &[
        (
            "ftp://127.0.0.1/",
            |e| matches!(e, UrlError::Scheme(s) if s == "ftp"),
        ),
        ("file:///tmp/x", |e| matches!(e, UrlError::Scheme(_))),
        ("mailto:someone@127.0.0.1", |e| {
            matches!(e, UrlError::Scheme(_))
        }),
        ("ws://127.0.0.1:1/#frag", |e| {
            matches!(e, UrlError::Fragment)
        }),
        ("ws://127.0.0.1:1/path?q=1#", |e| {
            matches!(e, UrlError::Fragment)
        }),
        ("wss://127.0.0.1:1/#x", |e| matches!(e, UrlError::Fragment)),
        ("http://127.0.0.1:1/#x", |e| matches!(e, UrlError::Fragment)),
        ("ws://", |e| {
            matches!(e, UrlError::NoHost | UrlError::Parse(_))
        }),
        ("ws:///", |e| {
            matches!(e, UrlError::NoHost | UrlError::Parse(_))
        }),
        ("ws://:80/", |e| {
            matches!(e, UrlError::NoHost | UrlError::Parse(_))
        }),
        ("http://", |e| {
            matches!(e, UrlError::NoHost | UrlError::Parse(_))
        }),
        ("not a url", |e| matches!(e, UrlError::Parse(_))),
        ("", |e| matches!(e, UrlError::Parse(_))),
        ("/relative/path", |e| matches!(e, UrlError::Parse(_))),
    ];
    for (url, check) in cases {
        let results = [
            WebSocket::open_pull(url).err(),
            WebSocket::connect_pull(url).err(),
            WebSocket::open(url, ()).err(),
            WebSocket::builder().connect(url, ()).err(),
        ];
        for r in results {
            match r {
                Some(Error::Url(e)) => assert!(check(&e), "{url:?}: unexpected {e:?}"),
                other => panic!("{url:?}: expected Error::Url, got {other:?}"),
            }
        }
    }
}

#[test]
fn bad_or_duplicate_subprotocols_are_synchronous_errors() {
    let _g = shared();
    // Nothing listens on port 1: a missing check would show as a connect error instead.
    let url = "ws://127.0.0.1:1/";
    let cases: &[(&[&str], &str)] = &[
        (&[""], ""),
        (&["a b"], "a b"),
        (&["chat", "a,b"], "a,b"),
        (&["chat", "chat"], "chat"),
        (&["x", "y", "x"], "x"),
        (&["caf\u{e9}"], "caf\u{e9}"),
        (&["semi;colon"], "semi;colon"),
    ];
    for (protocols, bad) in cases {
        let builder = protocols
            .iter()
            .fold(WebSocket::builder(), |b, p| b.subprotocol(*p));
        let results = [
            builder.clone().open_pull(url).err(),
            builder.clone().connect_pull(url).err(),
            builder.clone().open(url, ()).err(),
        ];
        for r in results {
            assert!(
                matches!(&r, Some(Error::InvalidSubprotocol(p)) if p == bad),
                "{protocols:?}: expected InvalidSubprotocol({bad:?}), got {r:?}"
            );
        }
    }
    // Valid tokens are accepted synchronously.
    let ok = WebSocket::builder()
        .subprotocol("chat.v1")
        .subprotocol("x-custom_2+json")
        .open_pull(url);
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn bad_headers_are_synchronous_errors() {
    let _g = shared();
    let url = "ws://127.0.0.1:1/";
    let r = WebSocket::builder().header("Bad Name", "v").open_pull(url);
    assert!(
        matches!(&r, Err(Error::InvalidHeader { name, .. }) if name == "Bad Name"),
        "{r:?}"
    );
    let r = WebSocket::builder()
        .header("X-Ok", "line\nbreak")
        .open_pull(url);
    assert!(
        matches!(&r, Err(Error::InvalidHeader { name, .. }) if name == "X-Ok"),
        "{r:?}"
    );
}

#[test]
fn path_and_query_arrive_intact() {
    let _g = shared();
    for (suffix, expected) in [
        (
            "/chat/room%201/?x=1&y=%2F&empty=&flag",
            "/chat/room%201/?x=1&y=%2F&empty=&flag",
        ),
        ("", "/"),
        ("?only=query", "/?only=query"),
        ("/a/b/c.json?q=%E2%9C%93", "/a/b/c.json?q=%E2%9C%93"),
    ] {
        let server = request_capturing_server();
        let url = server.url_with(suffix);
        let ws = WebSocket::connect(&url, ()).unwrap_or_else(|e| panic!("{url}: {e}"));
        ws.close();
        assert_eq!(server.join().uri, expected, "{url}");
    }
}

#[test]
fn extra_headers_and_origin_arrive() {
    let _g = shared();
    let server = request_capturing_server();
    let ws = WebSocket::builder()
        .header("X-Custom", "one")
        .header("X-Multi", "a")
        .header("X-Multi", "b")
        .header("Cookie", "session=abc; theme=dark")
        .origin("https://example.org")
        .connect(&server.url(), ())
        .expect("connect");
    ws.close();
    let seen = server.join();
    assert_eq!(seen.header("x-custom").as_deref(), Some("one"));
    assert_eq!(seen.all("x-multi"), ["a", "b"]);
    assert_eq!(
        seen.header("cookie").as_deref(),
        Some("session=abc; theme=dark")
    );
    assert_eq!(
        seen.header("origin").as_deref(),
        Some("https://example.org")
    );
    assert_eq!(
        seen.header("upgrade")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(seen.header("sec-websocket-version").as_deref(), Some("13"));
    assert_eq!(
        seen.header("sec-websocket-protocol"),
        None,
        "no subprotocol offered"
    );
}

#[test]
fn url_userinfo_becomes_basic_authorization() {
    let _g = shared();
    let server = request_capturing_server();
    let url = format!("ws://al%20ice:s%3Acret@{}/private", server.addr);
    let ws = WebSocket::connect(&url, ()).expect("connect");
    assert_eq!(
        ws.url(),
        format!("ws://{}/private", server.addr),
        "credentials leave the URL"
    );
    ws.close();
    let seen = server.join();
    // base64("al ice:s:cret")
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Basic YWwgaWNlOnM6Y3JldA==")
    );
    assert_eq!(seen.uri, "/private");

    // An explicit Authorization header wins over the URL's userinfo.
    let server = request_capturing_server();
    let url = format!("ws://user:pw@{}/", server.addr);
    let ws = WebSocket::builder()
        .header("Authorization", "Bearer token")
        .connect(&url, ())
        .expect("connect");
    ws.close();
    assert_eq!(server.join().all("authorization"), ["Bearer token"]);
}

// ---------------------------------------------------------------------------------------
// Rule 2: onopen.
// ---------------------------------------------------------------------------------------

fn pick(
    protocol: &'static str,
) -> impl FnOnce(&Request, Response) -> Result<Response, tungstenite::handshake::server::ErrorResponse>
{
    move |req: &Request, mut resp: Response| {
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert_eq!(
            offered, "chat.v1, chat.v2",
            "offered in order of preference"
        );
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        Ok(resp)
    }
}

#[test]
fn onopen_fires_once_before_messages_with_state_open_and_protocol_known() {
    let _g = shared();
    let server = server_hdr(pick("chat.v2"), |mut ws| {
        // Messages right after the handshake: they must still come after onopen.
        for i in 0..5 {
            ws.send(tungstenite::Message::text(format!("m{i}")))
                .unwrap();
        }
        read_until_close(&mut ws)
    });
    let (rec, rx) = recorder();
    let ws = WebSocket::builder()
        .subprotocol("chat.v1")
        .subprotocol("chat.v2")
        .connect(&server.url(), rec)
        .expect("connect");
    assert_eq!(ws.ready_state(), ReadyState::Open);
    assert_eq!(ws.protocol(), "chat.v2");
    assert_eq!(ws.extensions(), "");
    let first = next_rec(&rx);
    assert!(
        matches!(&first, Rec::Open { state: ReadyState::Open, protocol, extensions, thread }
            if protocol == "chat.v2" && extensions.is_empty() && thread.as_deref() == Some("nwebsocket-cb")),
        "{first:?}"
    );
    for i in 0..5 {
        let r = next_rec(&rx);
        assert!(
            matches!(&r, Rec::Message(m) if m.as_text() == Some(&*format!("m{i}"))),
            "{r:?}"
        );
    }
    ws.close();
    let rest = recs_until_close(&rx);
    assert!(
        matches!(rest.last(), Some(Rec::Close(c, _)) if c.code == 1000 && c.was_clean),
        "{rest:?}"
    );
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    assert!(
        !rest.iter().any(|r| matches!(r, Rec::Open { .. })),
        "onopen only once: {rest:?}"
    );
    server.join();
}

/// Rule 2 says `onopen` runs with the state OPEN; the state is the I/O thread's, read when
/// the callback runs, so a consumer that takes `Open` after the connection has ended sees
/// CLOSED in `onopen` (and, in callback style, so does a callback thread that the I/O
/// thread outruns when the server hangs up at once). A browser changes `readyState` in the
/// task that fires the event, so its `onopen` always sees OPEN. Found by the contract audit
/// of 2026-12-07; now `ready_state()` inside a callback is the state of its event (see
/// `WebSocketRef::ready_state`).
#[test]
fn onopen_sees_open_even_when_taken_after_the_connection_ended() {
    let _g = shared();
    let server = server(|mut ws| {
        ws.close(None).unwrap();
        read_until_close(&mut ws)
    });
    let (ws, events) = WebSocket::connect_pull(&server.url()).expect("connect");
    // The consumer computes while the connection opens and ends.
    assert!(ws.wait_closed_timeout(WAIT).is_some(), "the server's close");
    let (mut rec, rx) = recorder();
    ws.dispatch_pending(&events, &mut rec);
    let first = next_rec(&rx);
    assert!(
        matches!(
            &first,
            Rec::Open {
                state: ReadyState::Open,
                ..
            }
        ),
        "{first:?}"
    );
    drop(ws);
    server.join();
}

#[test]
fn browser_style_open_returns_connecting_then_onopen() {
    let _g = shared();
    let (gate_tx, gate_rx) = nwebsocket::crossbeam_channel::bounded::<()>(1);
    let server = server_hdr(
        move |_req: &Request, resp: Response| {
            let _ = gate_rx.recv_timeout(WAIT);
            Ok(resp)
        },
        |mut ws| read_until_close(&mut ws),
    );
    let (rec, rx) = recorder();
    let ws = WebSocket::open(&server.url(), rec).expect("open");
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    assert_eq!(ws.protocol(), "");
    gate_tx.send(()).unwrap();
    let first = next_rec(&rx);
    assert!(is_open(&first), "{first:?}");
    assert_eq!(ws.ready_state(), ReadyState::Open);
    ws.close();
    let c = ws.wait_closed_timeout(WAIT).expect("closed");
    assert!(c.was_clean && c.code == 1000, "{c:?}");
    server.join();
}

#[test]
fn server_choosing_a_subprotocol_not_offered_fails() {
    let _g = shared();
    let server = server_hdr(pick("evil"), |mut ws| read_until_close(&mut ws));
    let (rec, rx) = recorder();
    let r = WebSocket::builder()
        .subprotocol("chat.v1")
        .subprotocol("chat.v2")
        .connect(&server.url(), rec);
    assert!(matches!(&r, Err(Error::Handshake { .. })), "{r:?}");
    drop(r);
    let recs = leftover_recs(&rx);
    assert!(
        !recs.iter().any(|r| matches!(r, Rec::Open { .. })),
        "{recs:?}"
    );
    assert_failure_tail(&recs, |e| matches!(e, Error::Handshake { .. }));
    assert_eq!(recs.len(), 2, "{recs:?}");
    server.join();
}

/// Opening with `builder` against `server` fails in the handshake: `Error::Handshake`,
/// then close 1006, and nothing else.
fn assert_handshake_fails<T>(builder: nwebsocket::Builder, server: Server<T>) {
    let (ws, events) = builder.open_pull(&server.url()).expect("open");
    let evs = events_until_close(&events);
    assert!(
        matches!(evs.as_slice(), [Event::Error(Error::Handshake { .. }), Event::Close(c)] if c.code == 1006 && !c.was_clean),
        "{evs:?}"
    );
    drop(ws);
    server.join();
}

#[test]
fn server_choosing_a_subprotocol_when_none_was_offered_fails() {
    let _g = shared();
    let server = server_hdr(
        |_req: &Request, mut resp: Response| {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("chat.v1"),
            );
            Ok(resp)
        },
        |mut ws| read_until_close(&mut ws),
    );
    assert_handshake_fails(WebSocket::builder(), server);
}

/// Like browsers (Chrome: "Sent non-empty 'Sec-WebSocket-Protocol' header but no response
/// was received"), offering subprotocols and getting none back fails the connection.
#[test]
fn server_answering_no_subprotocol_when_some_were_offered_fails() {
    let _g = shared();
    let server = server(|mut ws| read_until_close(&mut ws));
    assert_handshake_fails(WebSocket::builder().subprotocol("chat.v1"), server);
}

#[test]
fn server_choosing_an_extension_fails() {
    let _g = shared();
    // Not offered at all, and one never offered (see deflate.rs for the offered one).
    for (builder, extension) in [
        (WebSocket::builder().no_deflate(), "permessage-deflate"),
        (WebSocket::builder(), "x-webkit-deflate-frame"),
    ] {
        let server = server_hdr(
            move |_req: &Request, mut resp: Response| {
                resp.headers_mut().insert(
                    "sec-websocket-extensions",
                    HeaderValue::from_static(extension),
                );
                Ok(resp)
            },
            |mut ws| read_until_close(&mut ws),
        );
        assert_handshake_fails(builder, server);
    }
}

#[test]
fn cookies_go_in_one_header() {
    let _g = shared();
    let server = request_capturing_server();
    let (ws, _events) = WebSocket::builder()
        .cookie("session", "abc123")
        .cookie("theme", "dark")
        .connect_pull(&server.url())
        .expect("connect");
    drop(ws);
    let seen = server.join();
    assert_eq!(seen.all("cookie"), ["session=abc123; theme=dark"]);

    // A `Cookie` header of the caller's joins them (RFC 6265 §5.4: one `Cookie` header).
    let server = request_capturing_server();
    let (ws, _events) = WebSocket::builder()
        .cookie("session", "abc123")
        .header("Cookie", "theme=dark")
        .connect_pull(&server.url())
        .expect("connect");
    drop(ws);
    let seen = server.join();
    assert_eq!(seen.all("cookie"), ["session=abc123; theme=dark"]);
}

/// A cookie is a name (an HTTP token) and a value of RFC 6265's cookie octets, optionally
/// in double quotes: anything else is refused when connecting with `InvalidHeader`, whose
/// message names the cookie but not its value. (Until 2026-12-07 neither part was checked:
/// `cookie("session", "x; admin=1")` went out as `Cookie: session=x; admin=1`, a second
/// cookie smuggled in.)
#[test]
fn a_cookie_that_would_change_the_cookie_header_is_refused() {
    let _g = shared();
    let bad = [
        ("session", "x; admin=1"),
        ("session", "a,b"),
        ("session", "two words"),
        ("session", "back\\slash"),
        ("session", "half\"quoted"),
        ("session", "line\r\nX-Evil: 1"),
        ("a=b", "v4lue"),
        ("", "v4lue"),
        ("semi;colon", "v4lue"),
        ("sp ace", "v4lue"),
    ];
    for (name, value) in bad {
        let r = WebSocket::builder()
            .cookie(name, value)
            .open_pull("ws://127.0.0.1:9/");
        match r {
            Err(e @ Error::InvalidHeader { .. }) => {
                let shown = e.to_string();
                assert!(shown.contains(&format!("{name:?}")), "{shown}");
                assert!(!shown.contains(value), "the value is shown: {shown}");
            }
            other => panic!("cookie({name:?}, {value:?}): {other:?}"),
        }
    }
    // Quotes around the whole value, and the octets RFC 6265 allows, go out as given.
    let server = request_capturing_server();
    let (ws, _events) = WebSocket::builder()
        .cookie("q", "\"a-b\"")
        .cookie("t", "!#$%&'()*+-./0:<=>?@[]^_`{|}~")
        .cookie("e", "")
        .connect_pull(&server.url())
        .expect("connect");
    drop(ws);
    let seen = server.join();
    assert_eq!(
        seen.all("cookie"),
        ["q=\"a-b\"; t=!#$%&'()*+-./0:<=>?@[]^_`{|}~; e="]
    );
}

/// The header provider may not set what the handshake sets itself, as `header` may not:
/// the attempt fails with `Error::InvalidHeader` (once, then Close 1006).
#[test]
fn the_header_provider_may_not_set_the_handshakes_own_headers() {
    let _g = shared();
    for name in ["Host", "Sec-WebSocket-Key", "Sec-WebSocket-Extensions"] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let (ws, events) = WebSocket::builder()
            .header_provider(move || vec![(name.into(), "x".into())])
            .open_pull(&url)
            .expect("open");
        let evs = events_until_close(&events);
        assert!(
            matches!(&evs[..], [Event::Error(Error::InvalidHeader { .. }), Event::Close(c)] if c.code == 1006),
            "{name}: {evs:?}"
        );
        drop(ws);
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{name}: the server was contacted"
        );
    }
}
