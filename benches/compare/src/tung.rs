//! Raw `tungstenite` sync client on one thread, default configuration, blocking
//! `std::net::TcpStream` with `TCP_NODELAY` (as this crate sets it). Sends that come in a
//! burst use `write` per message and one `flush` (tungstenite's own batching).

use std::hint::black_box;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::{Bytes, Message};

use crate::corun::{self, CorunOut, Latencies};
use crate::{burn, sys, Idle, Res, RssOut, RTT_PAYLOAD, WAIT};

type Ws = tungstenite::WebSocket<TcpStream>;

fn connect(url: &str) -> Res<Ws> {
    let hostport = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or("bad url")?;
    let tcp = TcpStream::connect(hostport)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(WAIT))?;
    let (ws, _) = tungstenite::client(url, tcp).map_err(|e| e.to_string())?;
    Ok(ws)
}

fn next_data(ws: &mut Ws) -> Res<Message> {
    loop {
        let m = ws.read()?;
        if m.is_text() || m.is_binary() {
            return Ok(m);
        }
    }
}

fn close(ws: &mut Ws) -> Res<()> {
    ws.get_mut().set_read_timeout(Some(WAIT))?;
    ws.close(None)?;
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

pub fn rtt(url: &str, n: usize) -> Res<(Duration, Vec<u64>)> {
    let mut ws = connect(url)?;
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        ws.send(Message::text(RTT_PAYLOAD))?;
        black_box(next_data(&mut ws)?.len());
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let wall = t0.elapsed();
    close(&mut ws)?;
    Ok((wall, lat))
}

pub fn stream(url: &str, n: usize) -> Res<(Duration, u64)> {
    let mut ws = connect(url)?;
    let t0 = Instant::now();
    ws.send(Message::text("go"))?;
    let mut bytes = 0u64;
    for _ in 0..n {
        bytes += next_data(&mut ws)?.len() as u64;
    }
    let wall = t0.elapsed();
    close(&mut ws)?;
    Ok((wall, bytes))
}

pub fn send(url: &str, n: usize, payload: &[u8]) -> Res<Duration> {
    let mut ws = connect(url)?;
    let t0 = Instant::now();
    for _ in 0..n {
        ws.write(Message::Binary(Bytes::copy_from_slice(payload)))?;
    }
    ws.flush()?;
    next_data(&mut ws)?;
    let wall = t0.elapsed();
    close(&mut ws)?;
    Ok(wall)
}

pub fn idle(url: &str, d: Duration) -> Res<Idle> {
    let mut ws = connect(url)?;
    std::thread::sleep(Duration::from_millis(100));
    ws.get_mut().set_read_timeout(Some(d))?;
    let before = sys::tasks();
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => return Err(format!("idle read returned {other:?}").into()),
    }
    let after = sys::tasks();
    // This one thread is the connection: count it.
    let (cpu_ns, ctx, threads) = sys::task_delta(&before, &after, None);
    close(&mut ws)?;
    Ok(Idle {
        cpu_ns,
        ctx,
        threads,
    })
}

/// One thread cannot compute and answer pings at once: it computes in 1 ms chunks and
/// reads what arrived (answering pings) between them.
pub fn busy(url: &str, d: Duration) -> Res<Duration> {
    let mut ws = connect(url)?;
    ws.get_mut().set_nonblocking(true)?;
    let t0 = Instant::now();
    let end = t0 + d;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        black_box(burn((now + Duration::from_millis(1)).min(end)));
        loop {
            match ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let wall = t0.elapsed();
    ws.get_mut().set_nonblocking(false)?;
    close(&mut ws)?;
    Ok(wall)
}

/// The connection on a thread of its own (blocking reads; tungstenite answers pings on
/// the next read), each message handed to the main thread over a channel
/// (`std::sync::mpsc`); the main thread, one of the compute threads, drains the channel
/// between its chunks.
pub fn corun(url: &str, threads: usize, d: Duration) -> Res<CorunOut> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    let mut ws = connect(url)?;
    ws.send(Message::text("go"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Bytes>();
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("tung-reader".into())
            .spawn(move || -> Result<(), String> {
                // Messages come every 100 µs, so the flag is seen within one.
                while !stop.load(Ordering::Relaxed) {
                    if let Message::Binary(b) = ws.read().map_err(|e| e.to_string())? {
                        if tx.send(b).is_err() {
                            break;
                        }
                    }
                }
                close(&mut ws).map_err(|e| e.to_string())
            })?
    };
    let mut lat = Latencies::with_capacity((d.as_secs_f64() * 12_000.0) as usize);
    let computed = corun::compute(threads, d, || {
        while let Ok(b) = rx.try_recv() {
            lat.handle(&b);
        }
    });
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    reader.join().map_err(|_| "the reader thread panicked")??;
    Ok(CorunOut { computed, lat })
}

pub fn rss(url: &str, n: usize) -> Res<RssOut> {
    {
        let mut ws = connect(url)?;
        ws.send(Message::text(RTT_PAYLOAD))?;
        next_data(&mut ws)?;
        close(&mut ws)?;
    }
    std::thread::sleep(Duration::from_millis(100));
    let kib0 = sys::rss_kib();
    sys::dump_smaps("0-before");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(connect(url)?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let kib_idle = sys::rss_kib();
    sys::dump_smaps("1-idle");
    for ws in &mut conns {
        ws.send(Message::text(RTT_PAYLOAD))?;
    }
    for ws in &mut conns {
        next_data(ws)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let kib_after = sys::rss_kib();
    sys::dump_smaps("2-after");
    for ws in &mut conns {
        close(ws)?;
    }
    Ok(RssOut {
        kib0,
        kib_idle,
        kib_after,
    })
}
