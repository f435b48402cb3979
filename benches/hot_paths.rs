//! Criterion benches of the crate's hot paths, against an in-process tungstenite server on
//! `127.0.0.1:0`:
//!
//! - `send`: `ws.send(&[u8])` until `buffered_amount()` is back to 0 (every byte handed to
//!   the OS), 64 B and 16 KiB messages; the server only counts frames.
//! - `receive`: the server writes pre-encoded frames as fast as the socket takes them; the
//!   pull style takes them with `recv`, the callback style in `onmessage`.
//! - `round_trip`: one 32-byte text echo in flight, pull style (send, `recv`) and callback
//!   style (`onmessage` sends the next one).
//! - `handoff`: no socket: what handing events to another thread costs per event, on one
//!   thread, 256 at a time (an I/O thread's read burst): through a crossbeam unbounded
//!   channel one by one (pull style's raw receiver, once `select!` used it), through a
//!   bounded one (an array, which writes all its slots up front), as one `Vec` per burst
//!   (callback style, batches), and as one `Vec` per burst popped from a buffer one event
//!   at a time (pull style's `Events`). What separated pull style's small-message rate
//!   from the others' (see the bench notes).
//!
//! `cargo bench --bench hot_paths` (add `-- send` to run one group). The side-by-side
//! comparison with raw tungstenite and tokio-tungstenite is `benches/compare`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nwebsocket::crossbeam_channel::{self as cb, Sender};
use nwebsocket::{Event, Handler, Message, WebSocket, WebSocketRef};

const WAIT: Duration = Duration::from_secs(30);
const RTT_PAYLOAD: &str = "0123456789abcdef0123456789abcdef";

// ------------------------------------------------------------------------------- server

/// What the server does with one connection.
#[derive(Clone, Copy)]
enum Mode {
    /// Counts frames, answers the Close.
    Sink,
    /// Each text message "N" asks for N binary messages of `size` bytes.
    Stream { size: usize },
    /// tungstenite echo.
    Echo,
}

/// Starts a server for one connection; returns its `ws://` URL.
fn server(mode: Mode) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            let mut ws = tungstenite::accept(tcp).expect("handshake");
            match mode {
                Mode::Echo => loop {
                    match ws.read() {
                        Ok(m) if m.is_text() || m.is_binary() => {
                            if ws.send(m).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                },
                // The client sends only after our 101: tungstenite has buffered nothing.
                Mode::Sink => frames(ws.get_ref().try_clone().expect("clone"), |_, _| {}),
                Mode::Stream { size } => {
                    let one = frame(0x2, &vec![0xa5; size]);
                    let per = ((256 << 10) / one.len()).max(1);
                    let chunk = one.repeat(per);
                    frames(
                        ws.get_ref().try_clone().expect("clone"),
                        move |tcp, payload| {
                            let n: usize = std::str::from_utf8(payload)
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            let mut left = n;
                            while left > 0 {
                                let k = left.min(per);
                                if tcp.write_all(&chunk[..k * one.len()]).is_err() {
                                    return;
                                }
                                left -= k;
                            }
                        },
                    )
                }
            }
        })
        .expect("spawn");
    format!("ws://{addr}/")
}

/// A complete unmasked frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Walks the client's (masked) frames. Small data frames are unmasked and handed to
/// `on_data`; larger ones are only skipped. A Close is answered and ends the connection.
fn frames(mut tcp: TcpStream, mut on_data: impl FnMut(&mut TcpStream, &[u8])) {
    let mut buf = vec![0u8; 256 << 10];
    let (mut start, mut end) = (0usize, 0usize);
    let mut skip = 0usize; // payload bytes of a large frame still to discard
    loop {
        loop {
            if skip > 0 {
                let k = skip.min(end - start);
                start += k;
                skip -= k;
                if skip > 0 {
                    break;
                }
            }
            let avail = &buf[start..end];
            if avail.len() < 2 {
                break;
            }
            let (b0, b1) = (avail[0], avail[1]);
            let (len, ext) = match b1 & 0x7f {
                126 if avail.len() >= 4 => (u16::from_be_bytes([avail[2], avail[3]]) as usize, 2),
                127 if avail.len() >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&avail[2..10]);
                    (u64::from_be_bytes(l) as usize, 8)
                }
                126 | 127 => break,
                l => (l as usize, 0),
            };
            let header = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
            if avail.len() < header {
                break;
            }
            let opcode = b0 & 0x0f;
            if len > 1024 && opcode < 0x8 {
                start += header;
                skip = len;
                continue;
            }
            if avail.len() < header + len {
                break;
            }
            let mut payload = avail[header..header + len].to_vec();
            if b1 & 0x80 != 0 {
                let mask = &avail[header - 4..header];
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            start += header + len;
            match opcode {
                0x8 => {
                    let _ = tcp.write_all(&frame(0x8, &1000u16.to_be_bytes()));
                    return;
                }
                0x0..=0x2 => on_data(&mut tcp, &payload),
                _ => {}
            }
        }
        if start == end {
            (start, end) = (0, 0);
        } else if start > buf.len() / 2 {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        match tcp.read(&mut buf[end..]) {
            Ok(0) | Err(_) => return,
            Ok(r) => end += r,
        }
    }
}

// ------------------------------------------------------------------------------ helpers

fn next_message(events: &nwebsocket::Events) -> Message {
    loop {
        match events.recv_timeout(WAIT).expect("an event in time") {
            Event::Message(m) => return m,
            Event::Open => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// Waits until every accepted byte went to the OS.
fn drained(ws: &WebSocketRef) {
    let deadline = Instant::now() + WAIT;
    while ws.buffered_amount() > 0 {
        assert!(Instant::now() < deadline, "send queue did not drain");
        thread::yield_now();
    }
}

/// Counts messages; reports on `done` when `want` have arrived.
struct Count {
    want: u64,
    got: u64,
    done: Sender<()>,
}

impl Handler for Count {
    fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
        black_box(msg.len());
        self.got += 1;
        if self.got == self.want {
            let _ = self.done.send(());
        }
    }
}

/// Round trips driven from `onmessage`.
struct PingPong {
    left: u64,
    done: Sender<()>,
}

impl Handler for PingPong {
    fn onmessage(&mut self, ws: &WebSocketRef, msg: Message) {
        black_box(msg.len());
        if self.left == 0 {
            let _ = self.done.send(());
            return;
        }
        self.left -= 1;
        ws.send(RTT_PAYLOAD).expect("send from the callback");
    }
}

// ------------------------------------------------------------------------------ benches

fn send(c: &mut Criterion) {
    let mut g = c.benchmark_group("send");
    for size in [64usize, 16 << 10] {
        let (ws, _events) = WebSocket::connect_pull(&server(Mode::Sink)).expect("connect");
        let payload = vec![0x5a_u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("pull", size), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    ws.send(&payload[..]).expect("send");
                }
                drained(&ws);
                t.elapsed()
            })
        });
        ws.close();
        ws.wait_closed_timeout(WAIT).expect("closed");
    }
    g.finish();
}

fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("receive");
    for size in [64usize, 64 << 10] {
        g.throughput(Throughput::Bytes(size as u64));
        let (ws, events) =
            WebSocket::connect_pull(&server(Mode::Stream { size })).expect("connect");
        g.bench_function(BenchmarkId::new("pull", size), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                ws.send(iters.to_string()).expect("send");
                for _ in 0..iters {
                    black_box(next_message(&events).len());
                }
                t.elapsed()
            })
        });
        ws.close();
        ws.wait_closed_timeout(WAIT).expect("closed");

        let (tx, rx) = cb::unbounded();
        let handler = Count {
            want: 0,
            got: 0,
            done: tx,
        };
        let ws = WebSocket::connect(&server(Mode::Stream { size }), handler).expect("connect");
        g.bench_function(BenchmarkId::new("callback", size), |b| {
            b.iter_custom(|iters| {
                {
                    let mut h = ws.handler();
                    h.got = 0;
                    h.want = iters;
                }
                let t = Instant::now();
                ws.send(iters.to_string()).expect("send");
                rx.recv_timeout(WAIT).expect("all messages in time");
                t.elapsed()
            })
        });
        ws.close();
        ws.wait_closed_timeout(WAIT).expect("closed");
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    g.throughput(Throughput::Elements(1));
    let (ws, events) = WebSocket::connect_pull(&server(Mode::Echo)).expect("connect");
    g.bench_function("pull/32", |b| {
        b.iter(|| {
            ws.send(RTT_PAYLOAD).expect("send");
            black_box(next_message(&events).len())
        })
    });
    ws.close();
    ws.wait_closed_timeout(WAIT).expect("closed");

    let (tx, rx) = cb::unbounded();
    let ws =
        WebSocket::connect(&server(Mode::Echo), PingPong { left: 0, done: tx }).expect("connect");
    g.bench_function("callback/32", |b| {
        b.iter_custom(|iters| {
            ws.handler().left = iters.saturating_sub(1);
            let t = Instant::now();
            ws.send(RTT_PAYLOAD).expect("send");
            rx.recv_timeout(WAIT).expect("round trips in time");
            t.elapsed()
        })
    });
    ws.close();
    ws.wait_closed_timeout(WAIT).expect("closed");
    g.finish();
}

fn handoff(c: &mut Criterion) {
    const BURST: usize = 256;
    let mut g = c.benchmark_group("handoff");
    g.throughput(Throughput::Elements(BURST as u64));
    // An event the size of any other (56 bytes), so each hand-off copies a whole slot.
    let one_by_one = |tx: Sender<Event>, rx: cb::Receiver<Event>| {
        move || {
            for _ in 0..BURST {
                tx.try_send(Event::Open).expect("room");
            }
            let mut n = 0;
            while let Ok(event) = rx.try_recv() {
                n += black_box(matches!(event, Event::Open)) as usize;
            }
            assert_eq!(n, BURST);
        }
    };
    let (tx, rx) = cb::unbounded();
    let mut unbounded = one_by_one(tx, rx);
    g.bench_function("unbounded", |b| b.iter(&mut unbounded));
    let (tx, rx) = cb::bounded(4096 + BURST);
    let mut bounded = one_by_one(tx, rx);
    g.bench_function("bounded", |b| b.iter(&mut bounded));
    let (tx, rx) = cb::unbounded::<Vec<Event>>();
    let mut spare = Vec::with_capacity(BURST);
    g.bench_function("batch", |b| {
        b.iter(|| {
            let mut batch = std::mem::take(&mut spare);
            for _ in 0..BURST {
                batch.push(Event::Open);
            }
            tx.try_send(batch).expect("room");
            let mut batch = rx.try_recv().expect("a batch");
            let mut n = 0;
            for event in batch.drain(..) {
                n += black_box(matches!(event, Event::Open)) as usize;
            }
            assert_eq!(n, BURST);
            spare = batch;
        })
    });
    // Pull style's `Events`: each burst taken into a buffer, handed out one event at a time.
    let (tx, rx) = cb::unbounded::<Vec<Event>>();
    let buf = std::cell::RefCell::new(std::collections::VecDeque::<Event>::new());
    let mut spare = Vec::with_capacity(BURST);
    g.bench_function("batch_popped", |b| {
        b.iter(|| {
            let mut batch = std::mem::take(&mut spare);
            for _ in 0..BURST {
                batch.push(Event::Open);
            }
            tx.try_send(batch).expect("room");
            let mut n = 0;
            loop {
                let next = buf.borrow_mut().pop_front();
                match next {
                    Some(event) => n += black_box(matches!(event, Event::Open)) as usize,
                    None => {
                        let Ok(batch) = rx.try_recv() else { break };
                        let emptied = std::mem::replace(&mut *buf.borrow_mut(), batch.into());
                        spare = emptied.into();
                    }
                }
            }
            assert_eq!(n, BURST);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = send, receive, round_trip, handoff
}
criterion_main!(benches);
