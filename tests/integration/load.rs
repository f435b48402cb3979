//! Load and leaks: many senders on one connection, many connections one after another.

use std::net::TcpListener;
use std::thread;
use std::time::Instant;

use nwebsocket::WebSocket;

use crate::support::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// 16 threads × 100,000 messages on one connection: all arrive, each thread's in order.
#[test]
fn sixteen_threads_send_a_hundred_thousand_messages_each() {
    const THREADS: u32 = 16;
    const EACH: u32 = 100_000;
    let _g = shared();
    let server = server(|mut ws| {
        let mut next = vec![0u32; THREADS as usize];
        let mut total = 0u64;
        while total < u64::from(THREADS * EACH) {
            let msg = ws.read().expect("server: read");
            let b = msg.into_data();
            let t = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let i = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            assert_eq!(i, next[t], "thread {t}: out of order");
            next[t] += 1;
            total += 1;
        }
        read_until_close(&mut ws);
        total
    });
    let (ws, _events) = WebSocket::connect_pull(&server.url()).expect("connect");
    let started = Instant::now();
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let ws = ws.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 16];
                buf[..4].copy_from_slice(&t.to_be_bytes());
                for i in 0..EACH {
                    buf[4..8].copy_from_slice(&i.to_be_bytes());
                    ws.send(&buf).expect("send");
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    ws.close();
    assert!(ws.wait_closed_timeout(WAIT * 6).expect("closed").was_clean);
    assert_eq!(server.join(), u64::from(THREADS * EACH));
    eprintln!(
        "1,600,000 messages from 16 threads in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// 1,000 connect/close cycles: threads and file descriptors return to the baseline.
#[test]
fn a_thousand_connect_close_cycles_leak_nothing() {
    const CYCLES: usize = 1_000;
    let _g = exclusive();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        for _ in 0..CYCLES {
            let (stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
            let mut ws = tungstenite::accept(stream).expect("handshake");
            read_until_close(&mut ws);
        }
    });
    // One warm-up cycle, so lazily created process-wide state is in the baseline.
    let url = format!("ws://{addr}/");
    let cycle = |n: usize| {
        let (ws, _events) = WebSocket::connect_pull(&url).expect("connect");
        if n % 2 == 0 {
            ws.close();
            assert!(ws.wait_closed_timeout(WAIT).expect("closed").was_clean);
        } // odd cycles: dropping the handle closes with 1001
    };
    cycle(0);
    // The warm-up's thread was joined, but a joined thread can still show in /proc for a
    // moment (see `support::alive_after_join`): wait for it to go, bounded.
    assert!(
        eventually(WAIT, || crate_threads().is_empty()),
        "{:?}",
        crate_threads()
    );
    let fds = open_fds();
    for n in 1..CYCLES {
        cycle(n);
    }
    server.join().unwrap();
    assert!(
        eventually(WAIT, || crate_threads().is_empty()),
        "{:?}",
        crate_threads()
    );
    assert!(
        eventually(WAIT, || open_fds() <= fds),
        "file descriptors: {} before, {} after",
        fds,
        open_fds()
    );
}
