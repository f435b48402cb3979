//! Through a real HTTP CONNECT proxy (tinyproxy, started by `.ci/proxy.sh`), whose URL,
//! with credentials, is in `NWS_PROXY_URL`. Without it these tests print a note and pass,
//! so a plain `cargo test` needs nothing installed.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use nwebsocket::{Error, Event, WebSocket};

const WAIT: Duration = Duration::from_secs(10);

fn proxy_url() -> Option<String> {
    match std::env::var("NWS_PROXY_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("NWS_PROXY_REQUIRE").is_ok() => panic!("NWS_PROXY_URL is required"),
        _ => {
            eprintln!("skipped: NWS_PROXY_URL is not set (.ci/proxy.sh sets it)");
            None
        }
    }
}

/// A tungstenite echo server for one connection, on loopback.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        while let Ok(m) = ws.read() {
            if (m.is_text() || m.is_binary()) && ws.send(m).is_err() {
                break;
            }
        }
    });
    format!("ws://{addr}/through/tinyproxy?q=1")
}

#[test]
fn ws_through_tinyproxy() {
    let Some(proxy) = proxy_url() else { return };
    let url = echo_server();
    let (ws, events) = WebSocket::builder()
        .proxy(proxy)
        .connect_pull(&url)
        .expect("connect through tinyproxy");
    ws.send("via tinyproxy").unwrap();
    ws.send(vec![0u8; 100_000]).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match events.recv_timeout(WAIT).expect("an event") {
            Event::Message(m) => got.push(m),
            Event::Open => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got[0].as_text(), Some("via tinyproxy"));
    assert_eq!(got[1].len(), 100_000);
    ws.close().unwrap();
    assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
}

#[test]
fn tinyproxy_refuses_wrong_credentials_with_a_typed_error() {
    let Some(proxy) = proxy_url() else { return };
    let wrong = proxy.replace("s3cret", "wrong");
    assert_ne!(wrong, proxy);
    let result = WebSocket::builder()
        .proxy(wrong)
        .connect_pull(&echo_server());
    match result {
        // tinyproxy says 401 where RFC 9110 says 407; either is a refusal.
        Err(Error::Proxy(m)) => assert!(m.contains(" 401 ") || m.contains(" 407 "), "{m}"),
        other => panic!("{other:?}"),
    }
}
