//! Redirects of the opening handshake (issue 4): 301/302/303/307/308 followed to the new
//! target with its path and query, relative locations, the limit (default 3) ending a
//! loop in `Error::TooManyRedirects`, no downgrade from `wss://` to `ws://`, and URL
//! credentials kept for the same host and port only.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use nwebsocket::{Error, Event, HandshakeErrorKind, ReadyState, WebSocket};

use crate::reconnect::multi_server;
use crate::support::*;
use crate::tls::{pki, server_config, tls_server, wss_url};

/// The request line's target: `GET /path?q HTTP/1.1` → `/path?q`.
fn request_target(head: &str) -> String {
    head.lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned()
}

/// A header's value in a raw request head (case-insensitive name).
fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn redirect_response(status: u16, location: &str) -> String {
    let reason = match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        _ => "Redirect",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// Answers one request with a redirect; returns the request head.
fn write_redirect(stream: &mut impl ReadWrite, status: u16, location: &str) -> String {
    let head = read_http_head(stream);
    stream
        .write_all(redirect_response(status, location).as_bytes())
        .expect("server: write redirect");
    stream.flush().expect("server: flush");
    head
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn redirecting_server(status: u16, location: String) -> Server<String> {
    raw_server(move |mut stream| {
        let head = write_redirect(&mut stream, status, &location);
        read_to_end_quietly(&mut stream);
        head
    })
}

/// A listener that must never see a connection.
struct Untouched(TcpListener);

impl Untouched {
    fn new() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("listener");
        l.set_nonblocking(true).expect("listener");
        Untouched(l)
    }
    fn port(&self) -> u16 {
        self.0.local_addr().expect("listener").port()
    }
    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the redirect target was contacted: {other:?}"),
        }
    }
}

#[test]
fn found_302_leads_to_the_second_server_with_path_and_query() {
    let _g = shared();
    let target = request_capturing_server();
    let first = redirecting_server(302, target.url_with("/final?x=1"));
    let url = first.url_with("/start?a=b");
    let (rec, rx) = recorder();
    let ws = WebSocket::connect(&url, rec).expect("connect through the redirect");
    assert!(is_open(&next_rec(&rx)), "onopen once, at the final server");
    assert_eq!(ws.ready_state(), ReadyState::Open);
    assert_eq!(ws.url(), url, "url() stays the URL given");
    ws.close();
    let r = next_rec(&rx);
    assert!(
        matches!(&r, Rec::Close(c, _) if c.code == 1000 && c.was_clean),
        "{r:?}"
    );
    drop(ws);
    assert!(leftover_recs(&rx).is_empty());
    let head = first.join();
    assert_eq!(request_target(&head), "/start?a=b");
    let target_port = target.port();
    let seen = target.join();
    assert_eq!(seen.uri, "/final?x=1");
    assert_eq!(
        seen.header("host").as_deref(),
        Some(format!("127.0.0.1:{target_port}").as_str()),
        "Host is the new target's"
    );
}

#[test]
fn every_redirect_status_is_followed() {
    let _g = shared();
    for status in [301, 302, 303, 307, 308] {
        let target = request_capturing_server();
        let first = redirecting_server(status, target.url_with(&format!("/after-{status}")));
        let (ws, events) = WebSocket::connect_pull(&first.url_with("/"))
            .unwrap_or_else(|e| panic!("{status}: {e:?}"));
        assert!(matches!(next_event(&events), Event::Open), "{status}");
        ws.close();
        let evs = events_until_close(&events);
        assert!(
            matches!(evs.as_slice(), [Event::Close(c)] if c.code == 1000),
            "{status}: {evs:?}"
        );
        drop(ws);
        first.join();
        assert_eq!(target.join().uri, format!("/after-{status}"), "{status}");
    }
}

/// A relative `Location` is resolved against the current URL (here: the same server).
#[test]
#[allow(clippy::result_large_err)] // tungstenite's handshake callback type
fn relative_location_is_resolved_against_the_current_url() {
    let _g = shared();
    let server = multi_server(2, |i, mut stream| {
        if i == 0 {
            let head = write_redirect(&mut stream, 307, "/other?y=2");
            read_to_end_quietly(&mut stream);
            request_target(&head)
        } else {
            let mut uri = String::new();
            let mut ws = tungstenite::accept_hdr(
                stream,
                |req: &tungstenite::handshake::server::Request, resp| {
                    uri = req.uri().to_string();
                    Ok(resp)
                },
            )
            .expect("server: handshake");
            read_until_close(&mut ws);
            uri
        }
    });
    let url = server.url_with("/dir/first");
    let (ws, events) = WebSocket::connect_pull(&url).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    assert_eq!(ws.url(), url);
    ws.close();
    events_until_close(&events);
    drop(ws);
    assert_eq!(server.join(), vec!["/dir/first", "/other?y=2"]);
}

/// A server that redirects to itself: the default limit of 3 redirects means exactly 4
/// requests, then `Error::TooManyRedirects { limit: 3 }`, with `onerror` + `onclose(1006)`.
#[test]
fn redirect_loop_ends_in_too_many_redirects_after_four_requests() {
    let _g = shared();
    let port = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let port_in = std::sync::Arc::clone(&port);
    let server = multi_server(10, move |_, mut stream| {
        let location = format!("ws://127.0.0.1:{}/loop", port_in.get().unwrap());
        let head = write_redirect(&mut stream, 302, &location);
        read_to_end_quietly(&mut stream);
        request_target(&head)
    });
    port.set(server.port()).unwrap();
    let (rec, rx) = recorder();
    let r = WebSocket::connect(&server.url_with("/start"), rec);
    let expected_location = format!("ws://127.0.0.1:{}/loop", server.port());
    match &r {
        Err(Error::TooManyRedirects { limit: 3, location }) => {
            assert_eq!(location, &expected_location)
        }
        other => panic!("{other:?}"),
    }
    drop(r);
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| {
        matches!(e, Error::TooManyRedirects { limit: 3, .. })
    });
    assert_eq!(recs.len(), 2, "{recs:?}");
    // Four requests by the time the client gave up, and no fifth, even given time.
    let accepted: Vec<usize> = server.accepted.try_iter().map(|(n, _)| n).collect();
    assert_eq!(accepted, vec![0, 1, 2, 3]);
    assert_eq!(server.next_accept(Duration::from_millis(500)), None);
    assert_eq!(
        server.join(),
        vec!["/start", "/loop", "/loop", "/loop"],
        "the requests the server got"
    );
}

#[test]
fn max_redirects_zero_refuses_the_first_redirect() {
    let _g = shared();
    let target = Untouched::new();
    let location = format!("ws://127.0.0.1:{}/never", target.port());
    let first = redirecting_server(301, location.clone());
    let r = WebSocket::builder()
        .max_redirects(0)
        .handshake_timeout(Duration::from_secs(3))
        .connect_pull(&first.url_with("/"));
    match &r {
        Err(Error::TooManyRedirects {
            limit: 0,
            location: l,
        }) => assert_eq!(l, &location),
        other => panic!("{other:?}"),
    }
    drop(r);
    first.join();
    target.assert_untouched();

    // And a limit of 1 allows exactly one hop.
    let target = request_capturing_server();
    let first = redirecting_server(302, target.url_with("/one-hop"));
    let (ws, events) = WebSocket::builder()
        .max_redirects(1)
        .connect_pull(&first.url_with("/"))
        .expect("one redirect allowed");
    assert!(matches!(next_event(&events), Event::Open));
    ws.close();
    events_until_close(&events);
    drop(ws);
    first.join();
    assert_eq!(target.join().uri, "/one-hop");
}

/// A redirect without a `Location` is a rejected handshake, not a redirect.
#[test]
fn redirect_without_location_is_handshake_rejected() {
    let _g = shared();
    let server = raw_server(|mut stream| {
        read_http_head(&mut stream);
        stream
            .write_all(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        read_to_end_quietly(&mut stream);
    });
    let r = WebSocket::connect_pull(&server.url());
    assert!(
        matches!(&r, Err(Error::HandshakeRejected { status: 302, .. })),
        "{r:?}"
    );
    drop(r);
    server.join();
}

/// From `wss://` to `ws://` would drop TLS mid-way: refused, and the plain target is never
/// contacted.
#[test]
fn redirect_from_wss_to_ws_is_refused() {
    let _g = shared();
    let target = Untouched::new();
    let location = format!("ws://127.0.0.1:{}/plain", target.port());
    let server = tls_server(server_config(&pki().localhost, false), move |mut tls| {
        let head = write_redirect(&mut tls, 302, &location);
        tls.conn.send_close_notify();
        let _ = tls.flush();
        let mut buf = [0u8; 256];
        while matches!(tls.read(&mut buf), Ok(n) if n > 0) {}
        head
    });
    let (rec, rx) = recorder();
    let r = WebSocket::builder()
        .add_root_certificate(&pki().ca_pem)
        .handshake_timeout(Duration::from_secs(3))
        .connect(&wss_url(server.port()), rec);
    match &r {
        Err(Error::Handshake {
            kind: HandshakeErrorKind::Redirect,
            message: m,
            ..
        }) => assert!(m.contains("refused redirect"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop(r);
    let recs = leftover_recs(&rx);
    assert_failure_tail(&recs, |e| matches!(e, Error::Handshake { .. }));
    let head = server.join();
    assert_eq!(request_target(&head), "/tls?q=1");
    target.assert_untouched();
}

/// From `wss://` to another `wss://` server is fine (TLS all the way).
#[test]
fn redirect_from_wss_to_wss_is_followed() {
    let _g = shared();
    let target = crate::tls::tls_echo_server(server_config(&pki().localhost, false));
    let location = format!("wss://localhost:{}/secure-final", target.port());
    let first = tls_server(server_config(&pki().localhost, false), move |mut tls| {
        let head = write_redirect(&mut tls, 308, &location);
        tls.conn.send_close_notify();
        let _ = tls.flush();
        head
    });
    let (ws, events) = WebSocket::builder()
        .add_root_certificate(&pki().ca_pem)
        .connect_pull(&wss_url(first.port()))
        .expect("wss -> wss");
    assert!(matches!(next_event(&events), Event::Open));
    ws.send("hop").unwrap();
    let e = next_event(&events);
    assert!(
        matches!(&e, Event::Message(m) if m.as_text() == Some("hop")),
        "{e:?}"
    );
    ws.close();
    events_until_close(&events);
    drop(ws);
    first.join();
    assert_eq!(target.join().expect("target").echoed, 1);
}

/// Credentials from the URL (`ws://u:p@host/`) go with the first request, and with a
/// redirect to the same host and port; never to another host or port.
#[test]
#[allow(clippy::result_large_err)] // tungstenite's handshake callback type
fn url_credentials_follow_same_host_redirects_only() {
    let _g = shared();
    const BASIC: &str = "Basic dTpw"; // base64("u:p")

    // Same host and port (a relative location): sent again.
    let server = multi_server(2, |i, mut stream| {
        if i == 0 {
            let head = write_redirect(&mut stream, 302, "/next");
            read_to_end_quietly(&mut stream);
            head_header(&head, "authorization")
        } else {
            let mut auth = None;
            let mut ws = tungstenite::accept_hdr(
                stream,
                |req: &tungstenite::handshake::server::Request, resp| {
                    auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned());
                    Ok(resp)
                },
            )
            .expect("server: handshake");
            read_until_close(&mut ws);
            auth
        }
    });
    let url = format!("ws://u:p@127.0.0.1:{}/", server.port());
    let (ws, events) = WebSocket::connect_pull(&url).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    assert!(
        !ws.url().contains("u:p"),
        "url() without credentials: {}",
        ws.url()
    );
    ws.close();
    events_until_close(&events);
    drop(ws);
    assert_eq!(
        server.join(),
        vec![Some(BASIC.to_owned()), Some(BASIC.to_owned())],
        "same host and port: credentials kept"
    );

    // Same host, another port: not sent.
    let target = request_capturing_server();
    let first = redirecting_server(302, target.url_with("/elsewhere"));
    let url = format!("ws://u:p@127.0.0.1:{}/", first.port());
    let (ws, events) = WebSocket::connect_pull(&url).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    ws.close();
    events_until_close(&events);
    drop(ws);
    assert_eq!(
        head_header(&first.join(), "authorization").as_deref(),
        Some(BASIC)
    );
    assert_eq!(
        target.join().header("authorization"),
        None,
        "another port: credentials dropped"
    );

    // Another host name, same port (localhost vs 127.0.0.1): not sent.
    let server = multi_server(2, |i, mut stream| {
        if i == 0 {
            let port = stream.local_addr().unwrap().port();
            let head = write_redirect(&mut stream, 302, &format!("ws://localhost:{port}/named"));
            read_to_end_quietly(&mut stream);
            (head_header(&head, "authorization"), request_target(&head))
        } else {
            let mut seen = (None, String::new());
            let mut ws = tungstenite::accept_hdr(
                stream,
                |req: &tungstenite::handshake::server::Request, resp| {
                    seen = (
                        req.headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned()),
                        req.uri().to_string(),
                    );
                    Ok(resp)
                },
            )
            .expect("server: handshake");
            read_until_close(&mut ws);
            seen
        }
    });
    let url = format!("ws://u:p@127.0.0.1:{}/", server.port());
    let (ws, events) = WebSocket::connect_pull(&url).expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    ws.close();
    events_until_close(&events);
    drop(ws);
    assert_eq!(
        server.join(),
        vec![
            (Some(BASIC.to_owned()), "/".to_owned()),
            (None, "/named".to_owned())
        ],
        "another host name: credentials dropped"
    );
}

/// The builder's `Authorization` header and cookies are for the host of the URL given:
/// a redirect to another host (or port) does not carry them (as browsers drop them on a
/// cross-origin redirect), and one to the same host and port does. (Until 2026-12-07
/// only the URL's own credentials were dropped.)
#[test]
fn builder_credentials_follow_same_host_redirects_only() {
    let _g = shared();
    let credentials = || {
        WebSocket::builder()
            .header("Authorization", "Bearer top-secret")
            .header("X-Trace", "kept")
            .cookie("session", "secret-cookie")
            .header_provider(|| vec![("Authorization".into(), "Bearer provided".into())])
    };
    // Another port (and host name).
    let target = request_capturing_server();
    let first = redirecting_server(302, format!("ws://localhost:{}/next", target.port()));
    let (ws, events) = credentials()
        .connect_pull(&first.url())
        .expect("connect after the redirect");
    assert!(matches!(next_event(&events), Event::Open));
    ws.close();
    events_until_close(&events);
    drop(ws);
    let first_head = first.join();
    assert!(first_head.contains("Bearer provided"), "{first_head}");
    assert!(first_head.contains("secret-cookie"), "{first_head}");
    let seen = target.join();
    assert_eq!(seen.header("authorization"), None, "{:?}", seen.headers);
    assert_eq!(
        seen.all("cookie"),
        Vec::<String>::new(),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-trace").as_deref(), Some("kept"));

    // The same host and port: kept.
    let server = multi_server(2, |i, mut stream| {
        if i == 0 {
            let head = write_redirect(&mut stream, 302, "/next");
            read_to_end_quietly(&mut stream);
            (
                head_header(&head, "authorization"),
                head_header(&head, "cookie"),
            )
        } else {
            let mut seen = (None, None);
            let mut ws = tungstenite::accept_hdr(
                stream,
                |req: &tungstenite::handshake::server::Request, resp| {
                    let get =
                        |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                    seen = (get("authorization"), get("cookie"));
                    Ok(resp)
                },
            )
            .expect("server: handshake");
            read_until_close(&mut ws);
            seen
        }
    });
    let (ws, events) = credentials()
        .connect_pull(&server.url_with("/"))
        .expect("connect");
    assert!(matches!(next_event(&events), Event::Open));
    ws.close();
    events_until_close(&events);
    drop(ws);
    let both = (
        Some("Bearer provided".to_owned()),
        Some("session=secret-cookie".to_owned()),
    );
    assert_eq!(server.join(), vec![both.clone(), both]);
}

/// A password in a `Location` never reaches an error's text.
#[test]
fn redirect_errors_do_not_show_a_password_from_the_location() {
    let _g = shared();
    for (location, max) in [
        ("ws://user:hunter2@127.0.0.1:9/next", 0),
        ("ftp://user:hunter2@127.0.0.1:9/next", 3),
    ] {
        let first = redirecting_server(302, location.to_owned());
        let err = WebSocket::builder()
            .max_redirects(max)
            .connect_pull(&first.url())
            .map(drop)
            .expect_err("refused");
        first.join();
        let shown = format!("{err} / {err:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

/// Each hop of a redirect chain has its own connect and handshake timeouts: a chain whose
/// every step keeps to them opens, however long it takes in all. (Until 2026-12-07 an
/// outer bound of one connect and one handshake timeout cut it short with
/// `Timeout(Connect)`, while the handler was told `Aborted`.)
#[test]
fn a_slow_redirect_chain_within_each_timeout_opens() {
    let _g = shared();
    const SLOW: Duration = Duration::from_millis(700);
    // Three redirects (the default limit) and the 101: 2.8 s in all, more than one
    // connect and one handshake timeout and a second (2.3 s).
    let server = multi_server(4, |i, mut stream| {
        let head = read_http_head(&mut stream);
        std::thread::sleep(SLOW); // within the handshake timeout, each time
        if i < 3 {
            stream
                .write_all(redirect_response(302, &format!("/hop{i}")).as_bytes())
                .unwrap();
            read_to_end_quietly(&mut stream);
        } else {
            let key = head_header(&head, "sec-websocket-key").expect("key");
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            stream
                .write_all(
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .unwrap();
            read_to_end_quietly(&mut stream);
        }
    });
    let (ws, events) = WebSocket::builder()
        .connect_timeout(Duration::from_millis(300))
        .handshake_timeout(Duration::from_secs(1))
        .connect_pull(&server.url_with("/"))
        .expect("every hop kept to its timeouts");
    assert!(matches!(next_event(&events), Event::Open));
    drop(ws);
    server.join();
}
