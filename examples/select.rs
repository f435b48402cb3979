//! Events in a `crossbeam_channel::select!` beside a ticker and a work queue: the pull
//! style for programs that already run an event loop of their own.
//!
//! `cargo run --example select`

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use nwebsocket::crossbeam_channel::{never, select, tick, unbounded};
use nwebsocket::{Event, WebSocket};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let addr = spawn_echo_server()?;
    let (ws, events) = WebSocket::connect_pull(&format!("ws://{addr}/"))?;

    // A producer thread hands us jobs; results go out over the WebSocket.
    let (jobs_tx, mut jobs) = unbounded::<u64>();
    thread::spawn(move || {
        for n in 1..=5 {
            let _ = jobs_tx.send(n);
            thread::sleep(Duration::from_millis(30));
        }
    });
    let ticker = tick(Duration::from_millis(100));
    let mut echoed = 0;
    let mut ticks = 0;

    loop {
        select! {
            recv(jobs) -> job => match job {
                Ok(n) => ws.send(format!("job {n}: {n} squared is {}", n * n))?,
                // The producer is done: a disconnected channel is always ready, so stop
                // selecting on it (else this loop would spin).
                Err(_) => jobs = never::<u64>(),
            },
            recv(ticker) -> _ => {
                ticks += 1;
                println!("tick {ticks}: {echoed} echoes so far, buffered {} bytes", ws.buffered_amount());
            },
            recv(events) -> event => match event? {
                Event::Message(m) => {
                    println!("echo: {}", m.as_text().unwrap_or("<binary>"));
                    echoed += 1;
                    if echoed == 5 {
                        ws.close();
                    }
                }
                Event::Close(c) => {
                    println!("closed: code {} clean {}", c.code, c.was_clean);
                    break;
                }
                Event::Error(e) => return Err(e.into()),
                _ => {}
            },
        }
    }
    Ok(())
}

fn spawn_echo_server() -> std::io::Result<SocketAddr> {
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
