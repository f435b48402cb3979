//! This crate, in pull style (the caller's thread takes events from the channel), in pull
//! style in batches (whole read bursts from `connect_batches`), and in callback style (a
//! `Handler` on the callback thread), each used as its docs show.

use std::hint::black_box;
use std::mem;
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel::{self as cb, Receiver, Sender};
use nwebsocket::{Builder, Event, Handler, Message, WebSocket, WebSocketRef};

use crate::corun::{self, CorunOut, Latencies};
use crate::{burn, sys, Idle, Res, RssOut, RTT_PAYLOAD, WAIT};

/// The co-run consumer: the latency of each message, taken when it is handled.
struct Corun(Latencies);

impl Handler for Corun {
    fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
        if let Message::Binary(b) = &msg {
            self.0.handle(b);
        }
    }
}

fn corun_capacity(d: Duration) -> usize {
    (d.as_secs_f64() * 12_000.0) as usize
}

/// Closes while taking events (`drain`), as a pull-style consumer does: the server keeps
/// sending until it has our Close.
fn close_draining<H>(ws: &WebSocket<H>, mut drain: impl FnMut()) -> Res<()> {
    ws.close();
    let deadline = Instant::now() + WAIT;
    loop {
        drain();
        if ws.wait_closed_timeout(Duration::from_millis(1)).is_some() {
            drain();
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the close did not complete".into());
        }
    }
}

fn next_message(events: &nwebsocket::Events) -> Res<Message> {
    loop {
        // `try_recv` first: `recv_timeout` reads the clock on every call, a cost of this
        // harness's guard against hanging, not of the crate.
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(_) => events.recv_timeout(WAIT)?,
        };
        match event {
            Event::Message(m) => return Ok(m),
            Event::Open => {}
            other => return Err(format!("unexpected event {other:?}").into()),
        }
    }
}

fn close<H>(ws: &WebSocket<H>) -> Res<()> {
    ws.close();
    ws.wait_closed_timeout(WAIT)
        .ok_or("the close did not complete")?;
    Ok(())
}

/// Default settings, but for `NWSC_INCOMING_QUEUE=N` (an experiment knob: the size of
/// the event queue, see `Builder::incoming_queue`).
fn builder() -> Builder {
    let b = WebSocket::builder();
    match std::env::var("NWSC_INCOMING_QUEUE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => b.incoming_queue(n),
        None => b,
    }
}

/// CPU time and context switches of the connection's threads while it idles for `d`.
fn idle_for<H>(ws: &WebSocket<H>, d: Duration) -> Res<Idle> {
    std::thread::sleep(Duration::from_millis(100));
    let before = sys::tasks();
    std::thread::sleep(d);
    let after = sys::tasks();
    // The main thread only sleeps here: it is the harness, not the connection.
    let (cpu_ns, ctx, threads) = sys::task_delta(&before, &after, Some(sys::main_tid()));
    close(ws)?;
    Ok(Idle {
        cpu_ns,
        ctx,
        threads,
    })
}

/// Sends `n` × `payload` and waits (`counted`) for the server's count of them (send_small);
/// returns the wall time.
fn send_burst<H>(
    ws: &WebSocket<H>,
    n: usize,
    payload: &[u8],
    counted: impl FnOnce() -> Res<()>,
) -> Res<Duration> {
    let t0 = Instant::now();
    for _ in 0..n {
        ws.send(payload)?;
    }
    counted()?;
    let wall = t0.elapsed();
    close(ws)?;
    Ok(wall)
}

/// The main thread computes for `d` while the connection's threads answer the server's
/// pings (busy_main); returns how long it computed.
fn busy_for<H>(ws: &WebSocket<H>, d: Duration) -> Res<Duration> {
    let t0 = Instant::now();
    black_box(burn(t0 + d));
    let wall = t0.elapsed();
    close(ws)?;
    Ok(wall)
}

/// RSS before, with `n` idle connections from `connect`, and after one echo on each
/// (`answer` takes one connection's echo).
fn rss_of<H, C>(
    n: usize,
    connect: impl Fn() -> Res<(WebSocket<H>, C)>,
    answer: impl Fn(&C) -> Res<()>,
) -> Res<RssOut> {
    {
        // Warm-up: lazy statics, the allocator's first arenas.
        let (ws, c) = connect()?;
        ws.send(RTT_PAYLOAD)?;
        answer(&c)?;
        close(&ws)?;
    }
    std::thread::sleep(Duration::from_millis(100));
    let kib0 = sys::rss_kib();
    sys::dump_smaps("0-before");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(connect()?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let kib_idle = sys::rss_kib();
    sys::dump_smaps("1-idle");
    for (ws, _) in &conns {
        ws.send(RTT_PAYLOAD)?;
    }
    for (_, c) in &conns {
        answer(c)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let kib_after = sys::rss_kib();
    sys::dump_smaps("2-after");
    for (ws, _) in &conns {
        ws.close();
    }
    for (ws, _) in &conns {
        ws.wait_closed_timeout(WAIT).ok_or("close timed out")?;
    }
    Ok(RssOut {
        kib0,
        kib_idle,
        kib_after,
    })
}

// ---------------------------------------------------------------------------- pull style

pub mod pull {
    use super::*;

    pub fn rtt(url: &str, n: usize) -> Res<(Duration, Vec<u64>)> {
        let (ws, events) = builder().connect_pull(url)?;
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            ws.send(RTT_PAYLOAD)?;
            black_box(next_message(&events)?.len());
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let wall = t0.elapsed();
        close(&ws)?;
        Ok((wall, lat))
    }

    pub fn stream(url: &str, n: usize) -> Res<(Duration, u64)> {
        let (ws, events) = builder().connect_pull(url)?;
        let t0 = Instant::now();
        ws.send("go")?;
        let mut bytes = 0u64;
        for _ in 0..n {
            bytes += next_message(&events)?.len() as u64;
        }
        let wall = t0.elapsed();
        close(&ws)?;
        Ok((wall, bytes))
    }

    pub fn send(url: &str, n: usize, payload: &[u8]) -> Res<Duration> {
        let (ws, events) = builder().connect_pull(url)?;
        send_burst(&ws, n, payload, || next_message(&events).map(drop))
    }

    pub fn idle(url: &str, d: Duration) -> Res<Idle> {
        let (ws, _events) = builder().connect_pull(url)?;
        idle_for(&ws, d)
    }

    pub fn busy(url: &str, d: Duration) -> Res<Duration> {
        let (ws, _events) = builder().connect_pull(url)?;
        busy_for(&ws, d)
    }

    /// Compute on every thread; the caller's thread takes events with `dispatch_pending`
    /// between its chunks.
    pub fn corun(url: &str, threads: usize, d: Duration) -> Res<CorunOut> {
        let (ws, events) = builder().connect_pull(url)?;
        let mut h = Corun(Latencies::with_capacity(corun_capacity(d)));
        ws.send("go")?;
        let computed = corun::compute(threads, d, || {
            ws.dispatch_pending(&events, &mut h);
        });
        let (handled, seen) = (h.0.handled, h.0.ns.len());
        close_draining(&ws, || {
            ws.dispatch_pending(&events, &mut h);
        })?;
        // Only what was handled within the window counts.
        h.0.handled = handled;
        h.0.ns.truncate(seen);
        Ok(CorunOut { computed, lat: h.0 })
    }

    pub fn rss(url: &str, n: usize) -> Res<RssOut> {
        rss_of(
            n,
            || Ok(builder().connect_pull(url)?),
            |events| next_message(events).map(drop),
        )
    }
}

// ---------------------------------------------------------------- pull style, in batches

pub mod batches {
    use super::*;
    use nwebsocket::EventBatches;

    fn next_batch(batches: &EventBatches) -> Res<Vec<Event>> {
        // `try_recv` first, as in `next_message`.
        Ok(match batches.try_recv() {
            Ok(batch) => batch,
            Err(_) => batches.recv_timeout(WAIT)?,
        })
    }

    /// Takes batches until one holds a message; returns its payload length.
    fn next_message_len(batches: &EventBatches) -> Res<usize> {
        loop {
            let mut batch = next_batch(batches)?;
            let mut len = None;
            for event in batch.drain(..) {
                match event {
                    Event::Message(m) if len.is_none() => len = Some(m.len()),
                    Event::Open => {}
                    other => return Err(format!("unexpected event {other:?}").into()),
                }
            }
            batches.recycle(batch);
            if let Some(len) = len {
                return Ok(len);
            }
        }
    }

    pub fn rtt(url: &str, n: usize) -> Res<(Duration, Vec<u64>)> {
        let (ws, batches) = builder().connect_batches(url)?;
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            ws.send(RTT_PAYLOAD)?;
            black_box(next_message_len(&batches)?);
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let wall = t0.elapsed();
        close(&ws)?;
        Ok((wall, lat))
    }

    pub fn stream(url: &str, n: usize) -> Res<(Duration, u64)> {
        let (ws, batches) = builder().connect_batches(url)?;
        let t0 = Instant::now();
        ws.send("go")?;
        let (mut got, mut bytes) = (0, 0u64);
        while got < n {
            let mut batch = next_batch(&batches)?;
            for event in batch.drain(..) {
                match event {
                    Event::Message(m) => {
                        bytes += m.len() as u64;
                        got += 1;
                    }
                    Event::Open => {}
                    other => return Err(format!("unexpected event {other:?}").into()),
                }
            }
            batches.recycle(batch);
        }
        let wall = t0.elapsed();
        close(&ws)?;
        Ok((wall, bytes))
    }

    pub fn send(url: &str, n: usize, payload: &[u8]) -> Res<Duration> {
        let (ws, batches) = builder().connect_batches(url)?;
        send_burst(&ws, n, payload, || next_message_len(&batches).map(drop))
    }

    pub fn idle(url: &str, d: Duration) -> Res<Idle> {
        let (ws, _batches) = builder().connect_batches(url)?;
        idle_for(&ws, d)
    }

    pub fn busy(url: &str, d: Duration) -> Res<Duration> {
        let (ws, _batches) = builder().connect_batches(url)?;
        busy_for(&ws, d)
    }

    /// As in pull style, with `dispatch_batches` between chunks.
    pub fn corun(url: &str, threads: usize, d: Duration) -> Res<CorunOut> {
        let (ws, batches) = builder().connect_batches(url)?;
        let mut h = Corun(Latencies::with_capacity(corun_capacity(d)));
        ws.send("go")?;
        let computed = corun::compute(threads, d, || {
            ws.dispatch_batches(&batches, &mut h);
        });
        let (handled, seen) = (h.0.handled, h.0.ns.len());
        close_draining(&ws, || {
            ws.dispatch_batches(&batches, &mut h);
        })?;
        h.0.handled = handled;
        h.0.ns.truncate(seen);
        Ok(CorunOut { computed, lat: h.0 })
    }

    pub fn rss(url: &str, n: usize) -> Res<RssOut> {
        rss_of(
            n,
            || Ok(builder().connect_batches(url)?),
            |batches| next_message_len(batches).map(drop),
        )
    }
}

// ------------------------------------------------------------------------ callback style

pub mod callback {
    use super::*;

    type Done = Sender<Result<(), String>>;

    /// Round trips driven from `onmessage`: each echo sends the next message.
    struct Rtt {
        left: usize,
        sent_at: Instant,
        lat: Vec<u64>,
        done: Done,
    }

    impl Handler for Rtt {
        fn onmessage(&mut self, ws: &WebSocketRef, msg: Message) {
            self.lat.push(self.sent_at.elapsed().as_nanos() as u64);
            black_box(msg.len());
            if self.left == 0 {
                let _ = self.done.send(Ok(()));
                return;
            }
            self.left -= 1;
            self.sent_at = Instant::now();
            if let Err(e) = ws.send(RTT_PAYLOAD) {
                let _ = self.done.send(Err(e.to_string()));
            }
        }
        fn onerror(&mut self, _ws: &WebSocketRef, err: nwebsocket::Error) {
            let _ = self.done.send(Err(err.to_string()));
        }
    }

    /// Counts messages; says so after `want` of them.
    struct Count {
        want: u64,
        got: u64,
        bytes: u64,
        done: Done,
    }

    impl Count {
        fn new(want: u64, done: Done) -> Self {
            Count {
                want,
                got: 0,
                bytes: 0,
                done,
            }
        }
    }

    impl Handler for Count {
        fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
            self.got += 1;
            self.bytes += msg.len() as u64;
            if self.got == self.want {
                let _ = self.done.send(Ok(()));
            }
        }
        fn onerror(&mut self, _ws: &WebSocketRef, err: nwebsocket::Error) {
            let _ = self.done.send(Err(err.to_string()));
        }
    }

    fn wait(done: &Receiver<Result<(), String>>) -> Res<()> {
        Ok(done.recv_timeout(WAIT)??)
    }

    pub fn rtt(url: &str, n: usize) -> Res<(Duration, Vec<u64>)> {
        let (tx, rx) = cb::unbounded();
        let handler = Rtt {
            left: n.saturating_sub(1),
            sent_at: Instant::now(),
            lat: Vec::with_capacity(n),
            done: tx,
        };
        let ws = builder().connect(url, handler)?;
        let t0 = Instant::now();
        ws.handler().sent_at = Instant::now();
        ws.send(RTT_PAYLOAD)?;
        wait(&rx)?;
        let wall = t0.elapsed();
        let lat = mem::take(&mut ws.handler().lat);
        close(&ws)?;
        Ok((wall, lat))
    }

    pub fn stream(url: &str, n: usize) -> Res<(Duration, u64)> {
        let (tx, rx) = cb::unbounded();
        let ws = builder().connect(url, Count::new(n as u64, tx))?;
        let t0 = Instant::now();
        ws.send("go")?;
        wait(&rx)?;
        let wall = t0.elapsed();
        let bytes = ws.handler().bytes;
        close(&ws)?;
        Ok((wall, bytes))
    }

    pub fn send(url: &str, n: usize, payload: &[u8]) -> Res<Duration> {
        let (tx, rx) = cb::unbounded();
        let ws = builder().connect(url, Count::new(1, tx))?;
        send_burst(&ws, n, payload, || wait(&rx))
    }

    pub fn idle(url: &str, d: Duration) -> Res<Idle> {
        let (tx, _rx) = cb::unbounded();
        let ws = builder().connect(url, Count::new(u64::MAX, tx))?;
        idle_for(&ws, d)
    }

    pub fn busy(url: &str, d: Duration) -> Res<Duration> {
        let (tx, _rx) = cb::unbounded();
        let ws = builder().connect(url, Count::new(u64::MAX, tx))?;
        busy_for(&ws, d)
    }

    /// Compute on every thread; events in `onmessage` on the callback thread.
    pub fn corun(url: &str, threads: usize, d: Duration) -> Res<CorunOut> {
        let ws = builder().connect(url, Corun(Latencies::with_capacity(corun_capacity(d))))?;
        ws.send("go")?;
        let computed = corun::compute(threads, d, || {});
        // The guard is dropped before the close.
        let lat = mem::take(&mut ws.handler().0);
        close(&ws)?;
        Ok(CorunOut { computed, lat })
    }

    pub fn rss(url: &str, n: usize) -> Res<RssOut> {
        let (tx, rx) = cb::unbounded();
        rss_of(
            n,
            || Ok((builder().connect(url, Count::new(1, tx.clone()))?, ())),
            |()| wait(&rx),
        )
    }
}
