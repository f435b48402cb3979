//! The server side, run as its own process (`--serve`), so that it can sit on another CPU
//! than the client and so that its memory never counts in the client's RSS.
//!
//! One thread per connection. The handshake is tungstenite's (`accept_hdr`, which also
//! gives the path that selects the mode); after it, the modes that must outrun any client
//! write pre-encoded frames straight to the socket (`/stream`) or count frames by walking
//! their headers without unmasking (`/sink`), so the server is never the bottleneck. Each
//! connection thread measures its own CPU time (`/proc/thread-self/schedstat`).
//!
//! Modes (path), parameters in the query string (`id` labels the connection's stats):
//! - `/echo`: echoes text and binary messages (tungstenite read + send).
//! - `/stream?n=N&size=S`: after the client's first message, writes N binary messages of
//!   S bytes as fast as the socket takes them.
//! - `/sink?n=N`: counts data frames; after the Nth, sends the text message `ok`.
//! - `/idle`: reads until the close.
//! - `/ping?interval=MS`: pings every MS ms and records each pong's latency.
//! - `/corun?rate=R&size=S&interval=MS`: after the client's first message, sends R binary
//!   messages a second of S bytes, each on its own schedule (every 1/R s, those that are
//!   due when the thread is late), each stamped with its send time (`CLOCK_MONOTONIC` ns,
//!   little-endian, first 8 bytes); pings every MS ms and records each pong's latency.
//!
//! Control, on stdin/stdout, one line each: the server prints `listening ADDR` once;
//! `stats ID` answers one JSON line (after that connection has ended, waiting up to 10 s).
//! EOF on stdin ends the process.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Bytes, Message};

use crate::sys;
use crate::Res;

type Ws = tungstenite::WebSocket<TcpStream>;

#[derive(Default)]
struct Registry {
    stats: Mutex<HashMap<u64, Value>>,
    changed: Condvar,
}

impl Registry {
    fn put(&self, id: u64, v: Value) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.insert(id, v);
        self.changed.notify_all();
    }

    fn take(&self, id: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = s.remove(&id) {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                return json!({"id": id, "error": "no stats (connection still open?)"});
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

pub fn serve(pin: Option<usize>) -> Res<()> {
    if let Some(cpu) = pin {
        sys::set_affinity(&[cpu])?;
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let registry = Arc::new(Registry::default());
    let reg = Arc::clone(&registry);
    thread::Builder::new()
        .name("srv-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let reg = Arc::clone(&reg);
                let spawned = thread::Builder::new()
                    .name("srv-conn".into())
                    .stack_size(256 << 10)
                    .spawn(move || {
                        if let Err(e) = handle(stream, &reg) {
                            eprintln!("server: connection failed: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("server: cannot spawn: {e}");
                }
            }
        })?;
    for line in io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|w| w.parse::<u64>().ok()),
        ) {
            (Some("stats"), Some(id)) => {
                let v = registry.take(id, Duration::from_secs(10));
                let mut out = io::stdout().lock();
                writeln!(out, "{v}")?;
                out.flush()?;
            }
            (Some("quit"), _) => break,
            _ => eprintln!("server: unknown command {line:?}"),
        }
    }
    Ok(())
}

fn handle(stream: TcpStream, registry: &Registry) -> Res<()> {
    stream.set_nodelay(true)?;
    let mut uri = String::new();
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let ws = tungstenite::accept_hdr(stream, |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    })
    .map_err(|e| e.to_string())?;
    let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
    let params: HashMap<&str, u64> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let param = |k: &str, default: u64| params.get(k).copied().unwrap_or(default);
    let cpu0 = sys::thread_cpu_ns();
    let t0 = Instant::now();
    let mut extra = json!({});
    let count = match path {
        "/echo" => echo(ws)?,
        "/stream" => stream_out(ws, param("n", 1000), param("size", 64) as usize)?,
        "/sink" => sink(ws, param("n", 1000))?,
        "/idle" => drain(ws)?,
        "/corun" => {
            let (msgs, pings, lat) = corun(
                ws,
                param("rate", 10_000),
                param("size", 256) as usize,
                Duration::from_millis(param("interval", 100)),
            )?;
            extra = json!({"pings": pings, "lat_us": lat, "msgs": msgs});
            msgs
        }
        "/ping" => {
            let (pings, lat) = ping(ws, Duration::from_millis(param("interval", 100)))?;
            extra = json!({"pings": pings, "lat_us": lat});
            lat.len() as u64
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    let cpu_ns = sys::thread_cpu_ns().saturating_sub(cpu0);
    let wall_ns = t0.elapsed().as_nanos() as u64;
    if let Some(&id) = params.get("id") {
        let mut v =
            json!({"id": id, "mode": path, "cpu_ns": cpu_ns, "wall_ns": wall_ns, "count": count});
        if let (Some(v), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(e.clone());
        }
        registry.put(id, v);
    }
    Ok(())
}

fn finished(e: &tungstenite::Error) -> bool {
    use tungstenite::error::ProtocolError;
    matches!(
        e,
        tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
    ) || matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionReset)
}

fn echo(mut ws: Ws) -> Res<u64> {
    let mut n = 0;
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                ws.send(m)?;
                n += 1;
            }
            Ok(_) => {}
            Err(e) if finished(&e) => return Ok(n),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads (answering pings and the close) until the connection ends.
fn drain(mut ws: Ws) -> Res<u64> {
    let mut n = 0;
    loop {
        match ws.read() {
            Ok(Message::Text(_) | Message::Binary(_)) => n += 1,
            Ok(_) => {}
            Err(e) if finished(&e) => return Ok(n),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A complete unmasked (server-to-client) frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
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

fn stream_out(mut ws: Ws, n: u64, size: usize) -> Res<u64> {
    // Wait for the client's "go", so that its clock starts before the first byte.
    loop {
        match ws.read()? {
            Message::Text(_) | Message::Binary(_) => break,
            _ => {}
        }
    }
    let mut tcp = ws.get_ref().try_clone()?;
    let one = frame(0x2, &vec![0xa5; size]);
    if one.len() >= 64 << 10 {
        for _ in 0..n {
            tcp.write_all(&one)?;
        }
    } else {
        let per = ((256 << 10) / one.len()).max(1) as u64;
        let chunk = one.repeat(per as usize);
        let mut left = n;
        while left >= per {
            tcp.write_all(&chunk)?;
            left -= per;
        }
        tcp.write_all(&chunk[..left as usize * one.len()])?;
    }
    drain(ws)?;
    Ok(n)
}

/// Counts data frames without unmasking them; after the `n`th sends `ok`; answers the
/// client's Close and ends.
fn sink(ws: Ws, n: u64) -> Res<u64> {
    // Nothing can sit in tungstenite's buffer: the client sends only after our 101.
    let mut tcp = ws.get_ref().try_clone()?;
    let mut buf = vec![0u8; 256 << 10];
    let (mut start, mut end) = (0usize, 0usize);
    let mut count = 0u64;
    loop {
        loop {
            let avail = &buf[start..end];
            if avail.len() < 2 {
                break;
            }
            let (b0, b1) = (avail[0], avail[1]);
            let (len, mut header) = match b1 & 0x7f {
                126 if avail.len() >= 4 => (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4),
                127 if avail.len() >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&avail[2..10]);
                    (u64::from_be_bytes(l) as usize, 10)
                }
                126 | 127 => break,
                l => (l as usize, 2),
            };
            if b1 & 0x80 != 0 {
                header += 4;
            }
            if header + len > buf.len() {
                return Err(format!("sink: a {len}-byte frame is larger than its buffer").into());
            }
            if avail.len() < header + len {
                break;
            }
            match b0 & 0x0f {
                0x0..=0x2 if b0 & 0x80 != 0 => {
                    count += 1;
                    if count == n {
                        tcp.write_all(&frame(0x1, b"ok"))?;
                    }
                }
                0x8 => {
                    tcp.write_all(&frame(0x8, &1000u16.to_be_bytes()))?;
                    let _ = tcp.shutdown(std::net::Shutdown::Write);
                    return Ok(count);
                }
                _ => {}
            }
            start += header + len;
        }
        if start == end {
            (start, end) = (0, 0);
        } else if start > buf.len() / 2 {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let r = tcp.read(&mut buf[end..])?;
        if r == 0 {
            return Ok(count);
        }
        end += r;
    }
}

/// Pings every `interval` until the client closes; returns (pings sent, pong latencies µs).
fn ping(mut ws: Ws, interval: Duration) -> Res<(u64, Vec<u64>)> {
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut lat = Vec::new();
    let mut seq = 0u64;
    let mut next = Instant::now() + interval;
    let mut closing = false;
    loop {
        let now = Instant::now();
        if !closing && now >= next {
            seq += 1;
            ws.send(Message::Ping(Bytes::copy_from_slice(&seq.to_be_bytes())))?;
            sent.insert(seq, Instant::now());
            next += interval;
            if next < now {
                next = now + interval;
            }
            continue;
        }
        let wait = if closing {
            Duration::from_secs(10)
        } else {
            next.saturating_duration_since(now)
                .max(Duration::from_micros(100))
        };
        ws.get_mut().set_read_timeout(Some(wait))?;
        match ws.read() {
            Ok(Message::Pong(p)) if p.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&p);
                if let Some(t) = sent.remove(&u64::from_be_bytes(b)) {
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            Ok(Message::Close(_)) => closing = true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if closing {
                    return Ok((seq, lat));
                }
            }
            Err(e) if finished(&e) => return Ok((seq, lat)),
            Err(e) => return Err(e.into()),
        }
    }
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

/// Paced stream plus pings (corun); returns (messages sent, pings sent, pong latencies µs).
/// Non-blocking, waiting in `ppoll` until the next message or ping is due or a pong comes.
fn corun(mut ws: Ws, rate: u64, size: usize, interval: Duration) -> Res<(u64, u64, Vec<u64>)> {
    use std::os::fd::AsRawFd;
    loop {
        match ws.read()? {
            Message::Text(_) | Message::Binary(_) => break,
            _ => {}
        }
    }
    ws.get_mut().set_nonblocking(true)?;
    let fd = ws.get_ref().as_raw_fd();
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut payload = vec![0x5a; size.max(8)];
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut lat = Vec::new();
    let (mut msgs, mut seq) = (0u64, 0u64);
    let t0 = Instant::now();
    let (mut next_msg, mut next_ping) = (t0, t0 + interval);
    let mut closing: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if closing.is_none() {
            let mut wrote = false;
            if now >= next_ping {
                seq += 1;
                ws.write(Message::Ping(Bytes::copy_from_slice(&seq.to_be_bytes())))?;
                sent.insert(seq, Instant::now());
                next_ping += interval;
                if next_ping < now {
                    next_ping = now + interval;
                }
                wrote = true;
            }
            while next_msg <= now {
                payload[..8].copy_from_slice(&sys::mono_ns().to_le_bytes());
                ws.write(Message::Binary(Bytes::copy_from_slice(&payload)))?;
                msgs += 1;
                next_msg += period;
                wrote = true;
            }
            if wrote {
                match ws.flush() {
                    Err(e) if !would_block(&e) => return Err(e.into()),
                    _ => {}
                }
            }
        } else if closing.is_some_and(|t| now - t > Duration::from_secs(10)) {
            return Ok((msgs, seq, lat));
        }
        loop {
            match ws.read() {
                Ok(Message::Pong(p)) if p.len() == 8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&p);
                    if let Some(t) = sent.remove(&u64::from_be_bytes(b)) {
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                }
                Ok(Message::Close(_)) => closing = closing.or(Some(now)),
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) if finished(&e) => return Ok((msgs, seq, lat)),
                Err(e) => return Err(e.into()),
            }
        }
        let until = match closing {
            Some(_) => Instant::now() + Duration::from_millis(10),
            None => next_msg.min(next_ping),
        };
        sys::wait_readable(fd, until.saturating_duration_since(Instant::now()));
    }
}

/// The client side's view of a server process.
pub struct ServerProc {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: io::BufReader<std::process::ChildStdout>,
    pub addr: String,
}

impl ServerProc {
    /// Starts `<this binary> --serve [--pin CPU]`.
    pub fn spawn(pin: Option<usize>) -> Res<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--serve");
        if let Some(cpu) = pin {
            cmd.arg("--pin").arg(cpu.to_string());
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("server said {line:?}"))?
            .to_owned();
        Ok(ServerProc {
            child,
            stdin,
            stdout,
            addr,
        })
    }

    /// The stats of connection `id` (waits for it to end).
    pub fn stats(&mut self, id: u64) -> Res<Value> {
        let stdin = self.stdin.as_mut().ok_or("server stdin closed")?;
        writeln!(stdin, "stats {id}")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
