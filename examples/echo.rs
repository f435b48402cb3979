//! The smallest program: start an echo server in-process, connect, send, print the echoes.
//!
//! `cargo run --example echo` (or `-- ws://host:port/` to use your own echo server).

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use nwebsocket::{Event, WebSocket};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => format!("ws://{}/echo", spawn_echo_server()?),
    };

    let (ws, events) = WebSocket::connect_pull(&url)?;
    println!("connected to {} (state {:?})", ws.url(), ws.ready_state());
    for text in ["hello", "from", "a blocking program"] {
        ws.send(text)?;
    }
    ws.send(vec![0xde, 0xad, 0xbe, 0xef])?;

    let mut echoes = 0;
    while echoes < 4 {
        match events.recv_timeout(Duration::from_secs(5))? {
            Event::Message(msg) => {
                println!("echo: {msg:?}");
                echoes += 1;
            }
            other => println!("event: {other:?}"),
        }
    }
    ws.close();
    let closed = ws.wait_closed()?;
    println!("closed: code {} clean {}", closed.code, closed.was_clean);
    Ok(())
}

/// A tungstenite echo server on 127.0.0.1:0 that serves one connection.
fn spawn_echo_server() -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        while let Ok(msg) = ws.read() {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).is_err() {
                break;
            }
        }
    });
    Ok(addr)
}
