//! CPU-heavy numeric code with a live connection: the main thread computes at 100% in
//! chunks and takes events only between chunks (`dispatch_pending`), while the I/O thread
//! answers the server's pings the whole time.
//!
//! The embedded server pings every 100 ms, measures each pong's delay, and streams
//! "parameter updates" that the computation picks up between chunks.
//!
//! `cargo run --release --example numeric`

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use nwebsocket::{Handler, Message, WebSocket, WebSocketRef};

/// Lives on the main thread only: no `Send`, no lock.
struct Params {
    rate: f64,
    updates: usize,
}

impl Handler for Params {
    fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
        if let Some(rate) = msg.as_text().and_then(|t| t.parse::<f64>().ok()) {
            self.rate = rate;
            self.updates += 1;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let (addr, report) = spawn_pinging_server()?;
    let (ws, events) = WebSocket::connect_pull(&format!("ws://{addr}/"))?;
    let mut params = Params {
        rate: 3.7,
        updates: 0,
    };

    // ~2 s of work in chunks of ~50 ms; events only between chunks.
    let started = Instant::now();
    let mut x = 0.5_f64;
    let mut chunks = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let chunk = Instant::now();
        while chunk.elapsed() < Duration::from_millis(50) {
            for _ in 0..10_000 {
                x = params.rate * x * (1.0 - x);
            }
        }
        chunks += 1;
        ws.dispatch_pending(&events, &mut params);
    }
    ws.send(format!("done: x = {x:.6} after {chunks} chunks"))?;
    ws.close();
    let closed = ws
        .wait_closed_timeout(Duration::from_secs(10))
        .ok_or("close timed out")?;

    let pongs: Vec<Duration> = report.recv_timeout(Duration::from_secs(10))?;
    let mut sorted = pongs.clone();
    sorted.sort();
    let p = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!("computed {chunks} chunks of ~50 ms at 100% CPU; x = {x:.6}");
    println!("parameter updates taken between chunks: {}", params.updates);
    println!(
        "server pinged every 100 ms meanwhile: {} pongs, delay p50 {:.2} ms, max {:.2} ms",
        pongs.len(),
        p(0.5),
        p(1.0)
    );
    println!("closed cleanly: {}", closed.was_clean);
    if pongs.len() < 10 || !closed.was_clean {
        return Err("the connection was not kept alive".into());
    }
    Ok(())
}

/// A tungstenite server that pings every 100 ms, sends a parameter update every 300 ms,
/// and reports the pong delays when the client closes.
fn spawn_pinging_server(
) -> std::io::Result<(SocketAddr, crossbeam_channel::Receiver<Vec<Duration>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        let _ = ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(10)));
        let mut delays = Vec::new();
        let mut sent_at: Option<Instant> = None;
        let mut next_ping = Instant::now();
        let mut next_update = Instant::now();
        let mut rate = 3.7;
        loop {
            let now = Instant::now();
            if now >= next_ping && sent_at.is_none() {
                let _ = ws.send(tungstenite::Message::Ping(b"alive?"[..].into()));
                sent_at = Some(now);
                next_ping = now + Duration::from_millis(100);
            }
            if now >= next_update {
                rate = if rate > 3.8 { 3.6 } else { rate + 0.05 };
                let _ = ws.send(tungstenite::Message::text(format!("{rate}")));
                next_update = now + Duration::from_millis(300);
            }
            match ws.read() {
                Ok(tungstenite::Message::Pong(_)) => {
                    if let Some(t) = sent_at.take() {
                        delays.push(t.elapsed());
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(delays);
    });
    Ok((addr, rx))
}
