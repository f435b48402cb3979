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
    ws.close();
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
        assert!(
            matches!(result, Err(Error::Proxy { .. })),
            "{url}: {result:?}"
        );
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
    ws.close();
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
    ws.close();
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

// ---------------------------------------------------------------------------------------
// SOCKS5 (RFC 1928, with RFC 1929 username/password): an in-process server, so that
// `cargo test` covers it, and microsocks, started by `.ci/socks.sh`.
// ---------------------------------------------------------------------------------------

/// What the SOCKS5 server was asked: the credentials, and the target as sent (a name for
/// `socks5h://`, an address for `socks5://`) with its port.
#[derive(Debug, PartialEq, Eq)]
struct SocksSeen {
    credentials: Option<(String, String)>,
    target: String,
    port: u16,
}

/// A one-connection SOCKS5 server that tunnels to `upstream` whatever the target. With
/// `require`, only username/password auth with those credentials is accepted.
fn socks5_proxy(
    upstream: SocketAddr,
    require: Option<(&'static str, &'static str)>,
) -> (SocketAddr, Receiver<SocksSeen>) {
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind SOCKS5 proxy");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    thread::spawn(move || {
        let Ok((mut c, _)) = listener.accept() else {
            return;
        };
        c.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
        let byte = |c: &mut TcpStream| {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).map(|_| b[0])
        };
        let bytes = |c: &mut TcpStream, n: usize| {
            let mut v = vec![0u8; n];
            c.read_exact(&mut v).map(|_| v)
        };
        // Greeting: VER NMETHODS METHODS.
        assert_eq!(byte(&mut c).unwrap(), 5);
        let n = byte(&mut c).unwrap() as usize;
        let methods = bytes(&mut c, n).unwrap();
        let mut credentials = None;
        if let Some((user, pass)) = require {
            if !methods.contains(&2) {
                c.write_all(&[5, 0xff]).unwrap();
                return;
            }
            c.write_all(&[5, 2]).unwrap();
            assert_eq!(byte(&mut c).unwrap(), 1);
            let n = byte(&mut c).unwrap() as usize;
            let u = String::from_utf8(bytes(&mut c, n).unwrap()).unwrap();
            let n = byte(&mut c).unwrap() as usize;
            let p = String::from_utf8(bytes(&mut c, n).unwrap()).unwrap();
            let ok = (u.as_str(), p.as_str()) == (user, pass);
            credentials = Some((u, p));
            c.write_all(&[1, if ok { 0 } else { 1 }]).unwrap();
            if !ok {
                let _ = tx.send(SocksSeen {
                    credentials,
                    target: String::new(),
                    port: 0,
                });
                return;
            }
        } else {
            assert!(methods.contains(&0), "{methods:?}");
            c.write_all(&[5, 0]).unwrap();
        }
        // Request: VER CMD RSV ATYP DST.ADDR DST.PORT.
        assert_eq!(bytes(&mut c, 3).unwrap(), [5, 1, 0]);
        let target = match byte(&mut c).unwrap() {
            1 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes(&mut c, 4).unwrap()).unwrap())
                .to_string(),
            4 => {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes(&mut c, 16).unwrap()).unwrap())
                    .to_string()
            }
            3 => {
                let n = byte(&mut c).unwrap() as usize;
                String::from_utf8(bytes(&mut c, n).unwrap()).unwrap()
            }
            other => panic!("address type {other}"),
        };
        let port = u16::from_be_bytes(<[u8; 2]>::try_from(bytes(&mut c, 2).unwrap()).unwrap());
        let _ = tx.send(SocksSeen {
            credentials,
            target,
            port,
        });
        let Ok(server) = TcpStream::connect(upstream) else {
            c.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
            return;
        };
        c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90])
            .unwrap();
        pipe(c, server);
    });
    (addr, rx)
}

/// Sends one text through `ws` and expects it echoed.
fn echo_once(ws: &WebSocket, events: &nwebsocket::Events, text: &str) {
    ws.send(text).unwrap();
    loop {
        match next_event(events) {
            Event::Message(m) => {
                assert_eq!(m.as_text(), Some(text));
                break;
            }
            Event::Open => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn ws_through_socks5h_with_username_and_password() {
    let _g = shared();
    let upstream = echo_server();
    let (proxy, seen) = socks5_proxy(upstream.addr, Some(("al ice", "p@ss")));
    // The proxy resolves the name (socks5h): it is sent as is, never looked up here.
    let (ws, events) = WebSocket::builder()
        .proxy(format!("socks5h://al%20ice:p%40ss@{proxy}"))
        .connect_pull("ws://chat.example.test:9000/room")
        .expect("connect through SOCKS5");
    let seen = seen.recv_timeout(WAIT).expect("the proxy was asked");
    assert_eq!(
        seen,
        SocksSeen {
            credentials: Some(("al ice".into(), "p@ss".into())),
            target: "chat.example.test".into(),
            port: 9000,
        }
    );
    echo_once(&ws, &events, "through SOCKS5");
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
}

#[test]
fn socks5_resolves_locally_and_sends_the_address() {
    let _g = shared();
    let upstream = echo_server();
    let (proxy, seen) = socks5_proxy(upstream.addr, None);
    let (ws, events) = WebSocket::builder()
        .proxy(format!("socks5://{proxy}"))
        .connect_pull(&format!("ws://localhost:{}/", upstream.port()))
        .expect("connect through SOCKS5");
    let seen = seen.recv_timeout(WAIT).expect("the proxy was asked");
    assert!(
        seen.target == "127.0.0.1" || seen.target == "::1",
        "{seen:?}"
    );
    assert_eq!((seen.port, seen.credentials), (upstream.port(), None));
    echo_once(&ws, &events, "resolved here");
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
}

#[test]
fn socks5_wrong_credentials_and_refusals_are_typed_errors() {
    let _g = shared();
    let nowhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let (proxy, seen) = socks5_proxy(nowhere.local_addr().unwrap(), Some(("u", "right")));
    let result = WebSocket::builder()
        .proxy(format!("socks5h://u:wrong@{proxy}"))
        .connect_pull("ws://example.test/");
    assert!(
        matches!(
            &result,
            Err(Error::Proxy {
                kind: ProxyErrorKind::Auth,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(
        seen.recv_timeout(WAIT).unwrap().credentials,
        Some(("u".into(), "wrong".into()))
    );
    // No credentials offered to a proxy that requires them.
    let (proxy, _seen) = socks5_proxy(nowhere.local_addr().unwrap(), Some(("u", "p")));
    let result = WebSocket::builder()
        .proxy(format!("socks5h://{proxy}"))
        .connect_pull("ws://example.test/");
    assert!(
        matches!(
            &result,
            Err(Error::Proxy {
                kind: ProxyErrorKind::Auth,
                ..
            })
        ),
        "{result:?}"
    );
    // The target refuses: the proxy's reply code, in words.
    drop(nowhere);
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (proxy, _seen) = socks5_proxy(gone, None);
    match WebSocket::builder()
        .proxy(format!("socks5h://{proxy}"))
        .connect_pull("ws://example.test/")
    {
        Err(
            e @ Error::Proxy {
                kind: ProxyErrorKind::Refused,
                ..
            },
        ) => assert!(e.to_string().contains("connection refused"), "{e}"),
        other => panic!("{other:?}"),
    }
}

fn socks_url() -> String {
    match std::env::var("NWS_SOCKS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "NWS_SOCKS_URL is not set: run .ci/socks.sh, which starts microsocks and runs \
             these tests with --ignored"
        ),
    }
}

#[test]
#[ignore = "needs microsocks: run .ci/socks.sh"]
fn microsocks_tunnels_ws_and_wss() {
    let proxy = socks_url();
    let _g = shared();
    let server = echo_server();
    let (ws, events) = WebSocket::builder()
        .proxy(proxy.clone())
        .connect_pull(&server.url_with("/through/microsocks"))
        .expect("connect through microsocks");
    echo_once(&ws, &events, "via microsocks");
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    assert_eq!(server.join(), 1);

    let pki = crate::tls::pki();
    let server = crate::tls::tls_echo_server(crate::tls::server_config(&pki.localhost, false));
    let (ws, events) = WebSocket::builder()
        .proxy(proxy.replace("socks5://", "socks5h://"))
        .add_root_certificate(&pki.ca_pem)
        .connect_pull(&format!("wss://localhost:{}/tls", server.port()))
        .expect("wss through microsocks");
    echo_once(&ws, &events, "TLS inside SOCKS5");
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    assert_eq!(server.join().expect("TLS server").echoed, 1);
}

#[test]
#[ignore = "needs microsocks: run .ci/socks.sh"]
fn microsocks_refuses_wrong_credentials_with_a_typed_error() {
    let proxy = socks_url();
    let _g = shared();
    let wrong = proxy.replace("s3cret", "wrong");
    assert_ne!(wrong, proxy);
    let result = WebSocket::builder()
        .proxy(wrong)
        .connect_pull("ws://127.0.0.1:9/");
    assert!(
        matches!(
            &result,
            Err(Error::Proxy {
                kind: ProxyErrorKind::Auth,
                ..
            })
        ),
        "{result:?}"
    );
}

/// `wss://` through the in-process CONNECT proxy (the tinyproxy test needs tinyproxy): the
/// tunnel is asked for the target's name and port, and TLS is made with the target, by
/// name, through it.
#[test]
fn wss_through_a_connect_proxy() {
    let _g = shared();
    let tls = crate::tls::pki();
    let server = crate::tls::tls_echo_server(crate::tls::server_config(&tls.localhost, false));
    let (proxy, seen) = connect_proxy(server.addr, None);
    let (ws, events) = WebSocket::builder()
        .proxy(format!("http://{proxy}"))
        .add_root_certificate(&tls.ca_pem)
        .connect_pull(&crate::tls::wss_url(server.port()))
        .expect("wss through the proxy");
    let seen = seen.recv_timeout(WAIT).expect("the proxy was asked");
    assert_eq!(
        seen.request_line,
        format!("CONNECT localhost:{} HTTP/1.1", server.port())
    );
    echo_once(&ws, &events, "through TLS in the tunnel");
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
    drop(ws);
    assert_eq!(server.join().expect("server").echoed, 1);
}
