//! Pull style with a small `incoming_queue` and a caller that works on each event: what
//! share of its time the caller spends working (the rest it waits for the I/O thread,
//! which nothing wakes when the caller takes a message; see `next_nap` in
//! `src/io_thread.rs`).
//!
//! ```text
//! cargo run --release -p nwebsocket-compare --bin slow_consumer
//! ```
//!
//! A server on loopback sends binary messages of 64 bytes as fast as TCP lets it; the
//! caller takes each from its `Receiver<Event>` and then spins for a fixed time. Prints one
//! line per (queue, work) pair: 1.00 means the caller never waited.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use nwebsocket::{Event, WebSocket};

const CASES: [(usize, u64); 7] = [
    (1, 50),
    (1, 200),
    (1, 1000),
    (1, 3000),
    (2, 1000),
    (4, 200),
    (8, 500),
];

fn main() {
    for (queue, work_us) in CASES.into_iter().chain([(4096, 200)]) {
        let work = Duration::from_micros(work_us);
        // About 0.3 s of work per case.
        let n = (300_000 / work_us).clamp(100, 3000) as usize;
        let share = run(queue, work, n);
        println!("queue {queue:>4}, work {work_us:>4} us per event, {n:>4} events: working {share:.2} of the time");
    }
}

/// The share of the time the caller spent working while it took `n` events.
fn run(queue: usize, work: Duration, n: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = thread::spawn(move || {
        let mut ws = tungstenite::accept(listener.accept().unwrap().0).expect("handshake");
        for i in 0..n {
            ws.send(tungstenite::Message::binary(vec![i as u8; 64]))
                .expect("server: send");
        }
        // Until the client closes.
        while ws.read().is_ok() {}
    });
    let (ws, events) = WebSocket::builder()
        .incoming_queue(queue)
        .connect_pull(&url)
        .expect("connect");
    let start = Instant::now();
    let mut working = Duration::ZERO;
    let mut taken = 0;
    while taken < n {
        match events
            .recv_timeout(Duration::from_secs(10))
            .expect("an event")
        {
            Event::Message(_) => taken += 1,
            Event::Open => continue,
            other => panic!("unexpected {other:?}"),
        }
        let t = Instant::now();
        while t.elapsed() < work {
            std::hint::spin_loop();
        }
        working += t.elapsed();
    }
    let share = working.as_secs_f64() / start.elapsed().as_secs_f64();
    ws.close();
    ws.wait_closed_timeout(Duration::from_secs(10));
    drop(ws);
    server.join().expect("server thread");
    share
}
