//! HTTP CONNECT proxies: an in-process proxy that records what it was asked, and tunnels to
//! a real server (whatever host name the client asked for, so that nothing is resolved).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use nwebsocket::crossbeam_channel::{self, Receiver};
use nwebsocket::{Error, Event, ProxyErrorKind, WebSocket};

use crate::support::*;

/// What the proxy saw: the request line and the `Proxy-Authorization` header, if any.
#[derive(Debug)]
struct Seen {
    request_line: String,
    authorization: Option<String>,
}

/// A one-connection CONNECT proxy that tunnels to `upstream`. With `require`, it answers
/// 407 unless `Proxy-Authorization` equals it.
fn connect_proxy(
    upstream: SocketAddr,
    require: Option<&'static str>,
) -> (SocketAddr, Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else {
            return;
        };
        client.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        let head = read_http_head(&mut client);
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default().to_owned();
        let authorization = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
            .map(|(_, v)| v.trim().to_owned());
        let allowed = require.is_none_or(|r| authorization.as_deref() == Some(r));
        let _ = tx.send(Seen {
            request_line,
            authorization,
        });
        if !allowed {
            let _ = client.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
            );
            return;
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            return;
        };
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .unwrap();
        pipe(client, server);
    });
    (addr, rx)
}

/// Copies both ways until either side ends.
fn pipe(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let (mut a, mut b) = (a, b);
    let t = thread::spawn(move || {
        let _ = io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Both);
    });
    let _ = io::copy(&mut b, &mut a);
    let _ = a.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
}

#[test]
fn ws_through_a_connect_proxy_with_basic_auth() {
    let _g = shared();
    let upstream = echo_server();
    let (proxy, seen) = connect_proxy(upstream.addr, Some("Basic dXNlcjpwYXNz"));
    let (ws, events) = WebSocket::builder()
        .proxy(format!("http://user:pass@{proxy}"))
        .connect_pull("ws://chat.example.test:9000/room?x=1")
        .expect("connect through the proxy");
    let seen = seen.recv_timeout(WAIT).expect("the proxy was asked");
    assert_eq!(seen.request_line, "CONNECT chat.example.test:9000 HTTP/1.1");
    assert_eq!(seen.authorization.as_deref(), Some("Basic dXNlcjpwYXNz"));
    ws.send("through the tunnel").unwrap();
    loop {
        match next_event(&events) {
            Event::Message(m) => {
                assert_eq!(m.as_text(), Some("through the tunnel"));
                break;
            }
            Event::Open => {}
            other => panic!("{other:?}"),
        }
    }
    ws.close().unwrap();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
}

#[test]
fn a_proxy_refusing_the_tunnel_is_a_typed_error() {
    let _g = shared();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let (proxy, seen) = connect_proxy(upstream.local_addr().unwrap(), Some("Basic secret"));
    let result = WebSocket::builder()
        .proxy(format!("http://{proxy}"))
        .connect_pull("ws://example.test/");
    match result {
        Err(Error::Proxy {
            kind: ProxyErrorKind::Auth,
            message,
            ..
        }) => assert!(message.contains("407"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.recv_timeout(WAIT).unwrap().authorization, None);
}

#[test]
fn a_proxy_that_never_answers_hits_the_handshake_timeout() {
    let _g = shared();
    let silent = raw_server(|mut s| {
        let _ = read_http_head(&mut s);
        read_to_end_quietly(&mut s);
    });
    let result = WebSocket::builder()
        .proxy(format!("http://{}", silent.addr))
        .handshake_timeout(Duration::from_millis(300))
        .connect_pull("ws://example.test/");
    assert!(
        matches!(result, Err(Error::Timeout(nwebsocket::Timeout::Handshake))),
        "{result:?}"
    );
}

#[test]
fn bad_proxy_urls_are_refused_synchronously() {
    // SOCKS5 is supported (see below); SOCKS4 and TLS to the proxy are not.
    for url in [
        "socks4://127.0.0.1:1080",
        "https://127.0.0.1:3128",
        "http://",
    ] {
        let result = WebSocket::builder()
            .proxy(url)
            .open_pull("ws://example.test/");
        assert!(matches!(result, Err(Error::Proxy { .. })), "{url}: {result:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Through a real proxy: tinyproxy, started by `.ci/proxy.sh`, whose URL (with credentials)
// is in `NWS_PROXY_URL`. These tests are `#[ignore]`d (a plain `cargo test` lists them as
// ignored, never as passed); `.ci/proxy.sh` runs them with `--ignored`. Run without
// `NWS_PROXY_URL`, they fail.
// ---------------------------------------------------------------------------------------

fn tinyproxy_url() -> String {
    match std::env::var("NWS_PROXY_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "NWS_PROXY_URL is not set: run .ci/proxy.sh, which starts tinyproxy and runs \
             these tests with --ignored"
        ),
    }
}

#[test]
#[ignore = "needs tinyproxy: run .ci/proxy.sh"]
fn tinyproxy_tunnels_ws() {
    let proxy = tinyproxy_url();
    let _g = shared();
    let server = echo_server();
    let (ws, events) = WebSocket::builder()
        .proxy(proxy)
        .connect_pull(&server.url_with("/through/tinyproxy?q=1"))
        .expect("connect through tinyproxy");
    ws.send("via tinyproxy").unwrap();
    ws.send(vec![7u8; 100_000]).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match next_event(&events) {
            Event::Message(m) => got.push(m),
            Event::Open => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got[0].as_text(), Some("via tinyproxy"));
    assert_eq!(got[1].as_bytes(), &[7u8; 100_000][..]);
    ws.close().unwrap();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    assert_eq!(server.join(), 2);
}

#[test]
#[ignore = "needs tinyproxy: run .ci/proxy.sh"]
fn tinyproxy_tunnels_wss_end_to_end() {
    let proxy = tinyproxy_url();
    let _g = shared();
    let pki = crate::tls::pki();
    let server = crate::tls::tls_echo_server(crate::tls::server_config(&pki.localhost, false));
    let (ws, events) = WebSocket::builder()
        .proxy(proxy)
        .add_root_certificate(&pki.ca_pem)
        .connect_pull(&format!("wss://127.0.0.1:{}/tls", server.port()))
        .expect("connect through tinyproxy");
    ws.send("TLS inside the tunnel").unwrap();
    loop {
        match next_event(&events) {
            Event::Message(m) => {
                assert_eq!(m.as_text(), Some("TLS inside the tunnel"));
                break;
            }
            Event::Open => {}
            other => panic!("{other:?}"),
        }
    }
    ws.close().unwrap();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    assert_eq!(server.join().expect("TLS server").echoed, 1);
}

#[test]
#[ignore = "needs tinyproxy: run .ci/proxy.sh"]
fn tinyproxy_refuses_wrong_credentials_with_a_typed_error() {
    let proxy = tinyproxy_url();
    let _g = shared();
    let wrong = proxy.replace("s3cret", "wrong");
    assert_ne!(wrong, proxy);
    let result = WebSocket::builder()
        .proxy(wrong)
        .connect_pull("ws://127.0.0.1:9/");
    match result {
        // tinyproxy says 401 where RFC 9110 says 407; either is a refusal.
        Err(Error::Proxy { message: m, .. }) => {
            assert!(m.contains(" 401 ") || m.contains(" 407 "), "{m}")
        }
        other => panic!("{other:?}"),
    }
}
