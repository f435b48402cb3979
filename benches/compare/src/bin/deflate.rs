//! permessage-deflate: what it costs and what it saves (issue 16).
//!
//! ```text
//! cargo run --release -p nwebsocket-compare --bin deflate            # both parts
//! cargo run --release -p nwebsocket-compare --bin deflate -- rss     # memory only
//! cargo run --release -p nwebsocket-compare --bin deflate -- stream  # JSON stream only
//! ```
//!
//! The server is this binary started again (`--serve`), a separate process speaking
//! permessage-deflate with flate2 (tungstenite servers cannot); it never counts in the
//! client's RSS or CPU.
//!
//! - `rss`: for each setting, a fresh child process opens 200 connections: RSS growth per
//!   connection once open and idle, then after one compressed message each way (the
//!   server sends 2 KiB of JSON, the client echoes it, compressed since it is over 1 KiB).
//! - `stream`: the server streams 200,000 JSON messages of about 500 bytes, shaped like
//!   market data (compressed beforehand, so it is never the bottleneck), to one pull-style
//!   client: messages/s, client CPU per message (getrusage), and bytes on the wire per
//!   message, compression on (context takeover) and off.

#[path = "../sys.rs"]
#[allow(dead_code)]
mod sys;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use nwebsocket::{Builder, Deflate, Event, WebSocket};

const CONNS: usize = 200;
const STREAM: usize = 200_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve") => serve(),
        Some("--rss-child") => rss_child(&args[1], &args[2]),
        _ => {
            let all = args.is_empty();
            let server = Server::start();
            if all || args.iter().any(|a| a == "rss") {
                rss(&server.url);
            }
            if all || args.iter().any(|a| a == "stream") {
                stream(&server.url);
            }
        }
    }
}

/// A ticker message of about 500 bytes.
fn ticker(i: usize) -> String {
    format!(
        r#"{{"type":"ticker","sequence":{},"product_id":"{}","price":"{}.{:02}","open_24h":"42011.53","volume_24h":"{}.{:08}","low_24h":"41800.00","high_24h":"44120.17","volume_30d":"412345.12345678","best_bid":"{}.{:02}","best_bid_size":"0.{:08}","best_ask":"{}.{:02}","best_ask_size":"1.{:08}","side":"{}","time":"2024-01-15T14:{:02}:{:02}.{:06}Z","trade_id":{},"last_size":"0.{:08}"}}"#,
        7_000_000_000u64 + i as u64,
        ["BTC-USD", "ETH-USD", "SOL-USD"][i % 3],
        43000 + (i * 7) % 500,
        (i * 13) % 100,
        12000 + i % 900,
        (i as u64 * 7919) % 100_000_000,
        43000 + (i * 7) % 500,
        (i * 11) % 100,
        (i as u64 * 104_729) % 100_000_000,
        43000 + (i * 7) % 500 + 1,
        (i * 17) % 100,
        (i as u64 * 15_485_863) % 100_000_000,
        ["buy", "sell"][i % 2],
        (i / 60_000) % 60,
        (i / 1000) % 60,
        (i * 997) % 1_000_000,
        600_000_000 + i,
        (i as u64 * 32_452_843) % 100_000_000,
    )
}

// ---------------------------------------------------------------------------------------
// The client side.

struct Server {
    url: String,
    child: std::process::Child,
}

impl Server {
    fn start() -> Server {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .arg("--serve")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server's port");
        Server {
            url: format!("ws://127.0.0.1:{}", line.trim()),
            child,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(name: &str) -> Builder {
    let b = WebSocket::builder();
    match name {
        "off" => b.no_deflate(),
        "default" => b,
        "no_context_takeover" => b.deflate(
            Deflate::new()
                .server_no_context_takeover(true)
                .client_no_context_takeover(true),
        ),
        "windows_9" => b.deflate(
            Deflate::new()
                .server_max_window_bits(9)
                .client_max_window_bits(9),
        ),
        other => panic!("unknown setting {other}"),
    }
}

const SETTINGS: [&str; 4] = ["off", "default", "no_context_takeover", "windows_9"];

fn rss(url: &str) {
    println!("RSS per connection ({CONNS} connections, KiB): idle / after one compressed message each way");
    for name in SETTINGS {
        let exe = std::env::current_exe().expect("current_exe");
        let out = Command::new(exe)
            .args(["--rss-child", name, url])
            .output()
            .expect("run the child");
        print!("  {name:<20} {}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{name}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn rss_child(name: &str, url: &str) {
    let base = sys::rss_kib();
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let (ws, events) = settings(name)
            .connect_pull(&format!("{url}/echo1"))
            .expect("connect");
        conns.push((ws, events));
    }
    std::thread::sleep(Duration::from_millis(300));
    let idle = sys::rss_kib();
    for (ws, _) in &conns {
        ws.send("start").expect("start"); // small: sent as it is
    }
    for (ws, events) in &conns {
        loop {
            match events.recv_timeout(Duration::from_secs(10)).expect("event") {
                Event::Message(m) => {
                    ws.send(m).expect("echo");
                    break;
                }
                Event::Open => {}
                other => panic!("{other:?}"),
            }
        }
    }
    // Each server answers "ok" once it has read the echo.
    for (_, events) in &conns {
        match events.recv_timeout(Duration::from_secs(10)).expect("ok") {
            Event::Message(m) if m.as_text() == Some("ok") => {}
            other => panic!("{other:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = sys::rss_kib();
    let ext = conns[0].0.extensions().to_owned();
    let per = |kib: u64| (kib.saturating_sub(base)) as f64 / CONNS as f64;
    println!(
        "{:>6.1} / {:>6.1}   ({})",
        per(idle),
        per(after),
        if ext.is_empty() { "no extension" } else { &ext }
    );
    // Not 200 closing handshakes: the figures are out.
    std::process::exit(0);
}

fn stream(url: &str) {
    println!(
        "JSON stream: {STREAM} messages of about {} bytes, pull style",
        ticker(STREAM / 2).len()
    );
    for name in ["off", "default", "no_context_takeover"] {
        let mut best: Option<(f64, f64, f64)> = None;
        for _ in 0..3 {
            let r = stream_once(url, name);
            if best.is_none_or(|b| r.0 > b.0) {
                best = Some(r);
            }
        }
        let (rate, cpu_us, wire) = best.expect("ran");
        println!(
            "  {name:<20} {:>9.0} msg/s   {:>5.2} us CPU/msg   {:>6.1} bytes/msg on the wire",
            rate, cpu_us, wire
        );
    }
}

/// (messages/s, client CPU µs per message, bytes on the wire per message).
fn stream_once(url: &str, name: &str) -> (f64, f64, f64) {
    let (ws, events) = settings(name)
        .connect_pull(&format!("{url}/stream"))
        .expect("connect");
    assert!(matches!(events.recv().expect("open"), Event::Open));
    // The server has encoded the stream.
    match events.recv_timeout(Duration::from_secs(60)).expect("ready") {
        Event::Message(m) if m.as_text() == Some("ready") => {}
        other => panic!("{other:?}"),
    }
    let cpu0 = sys::process_cpu_ns();
    let t0 = Instant::now();
    ws.send("go").expect("go");
    let mut n = 0;
    let wire = loop {
        match events.recv_timeout(Duration::from_secs(30)).expect("event") {
            Event::Message(m) => match m.as_text().and_then(|t| t.strip_prefix("done ")) {
                Some(bytes) => break bytes.parse::<f64>().expect("bytes"),
                None => n += 1,
            },
            other => panic!("{other:?}"),
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (sys::process_cpu_ns() - cpu0) as f64 / 1000.0;
    assert_eq!(n, STREAM);
    drop(ws);
    (n as f64 / secs, cpu / n as f64, wire / n as f64)
}

// ---------------------------------------------------------------------------------------
// The server: a raw permessage-deflate server, one thread per connection.

fn serve() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("flush");
    // Built once: the stream's messages.
    let messages: std::sync::Arc<Vec<String>> =
        std::sync::Arc::new((0..STREAM).map(ticker).collect());
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let messages = messages.clone();
        std::thread::spawn(move || {
            let _ = connection(tcp, &messages);
        });
    }
}

struct Negotiated {
    on: bool,
    server_reset: bool,
    client_reset: bool,
    server_bits: u8,
}

fn handshake(tcp: &mut TcpStream) -> std::io::Result<(String, Negotiated)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let header = |want: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(want)
                .then(|| v.trim().to_owned())
        })
    };
    let key = header("sec-websocket-key").unwrap_or_default();
    let offer = header("sec-websocket-extensions").unwrap_or_default();
    let mut n = Negotiated {
        on: offer.starts_with("permessage-deflate"),
        server_reset: false,
        client_reset: false,
        server_bits: 15,
    };
    let mut answer = String::from("permessage-deflate");
    for p in offer.split(';').skip(1).map(str::trim) {
        match p.split_once('=') {
            Some(("server_max_window_bits", v)) => {
                n.server_bits = v.parse().unwrap_or(15).max(9);
                answer.push_str(&format!("; server_max_window_bits={v}"));
            }
            Some(("client_max_window_bits", v)) => {
                answer.push_str(&format!("; client_max_window_bits={v}"))
            }
            None if p == "server_no_context_takeover" => {
                n.server_reset = true;
                answer.push_str("; server_no_context_takeover");
            }
            None if p == "client_no_context_takeover" => {
                n.client_reset = true;
                answer.push_str("; client_no_context_takeover");
            }
            _ => {}
        }
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let ext = if n.on {
        format!("Sec-WebSocket-Extensions: {answer}\r\n")
    } else {
        String::new()
    };
    write!(
        tcp,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{ext}\r\n"
    )?;
    Ok((path, n))
}

fn header(first: u8, len: usize, out: &mut Vec<u8>) {
    out.push(first);
    match len {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// Appends one text message, compressed when negotiated.
fn text(n: &Negotiated, c: &mut Compress, data: &[u8], out: &mut Vec<u8>) {
    if !n.on {
        header(0x81, data.len(), out);
        out.extend_from_slice(data);
        return;
    }
    let mut z = Vec::with_capacity(data.len() + 64);
    let mut input = data;
    loop {
        let before = c.total_in();
        c.compress_vec(input, &mut z, FlushCompress::Sync)
            .expect("compress");
        input = &input[(c.total_in() - before) as usize..];
        if input.is_empty() && z.len() < z.capacity() {
            break;
        }
        z.reserve(z.capacity());
    }
    z.truncate(z.len() - 4);
    if n.server_reset {
        c.reset();
    }
    header(0xC1, z.len(), out);
    out.extend_from_slice(&z);
}

/// The client's next data message, inflated.
fn read_message(
    tcp: &mut TcpStream,
    n: &Negotiated,
    d: &mut Decompress,
) -> std::io::Result<Vec<u8>> {
    loop {
        let mut h = [0u8; 2];
        tcp.read_exact(&mut h)?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                tcp.read_exact(&mut b)?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                tcp.read_exact(&mut b)?;
                u64::from_be_bytes(b) as usize
            }
            l => l as usize,
        };
        let mut mask = [0u8; 4];
        tcp.read_exact(&mut mask)?;
        let mut p = vec![0u8; len];
        tcp.read_exact(&mut p)?;
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match h[0] & 0x0f {
            0x8 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            0x1 | 0x2 if h[0] & 0x40 != 0 => {
                p.extend_from_slice(&[0, 0, 0xff, 0xff]);
                let mut out = Vec::with_capacity(p.len() * 8 + 1024);
                d.decompress_vec(&p, &mut out, FlushDecompress::Sync)
                    .expect("inflate");
                if n.client_reset {
                    d.reset(false);
                }
                return Ok(out);
            }
            0x1 | 0x2 => return Ok(p),
            _ => {}
        }
    }
}

fn connection(mut tcp: TcpStream, messages: &[String]) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let (path, n) = handshake(&mut tcp)?;
    let mut c = Compress::new_with_window_bits(Compression::default(), false, n.server_bits);
    let mut d = Decompress::new(false);
    let mut out = Vec::new();
    if path.starts_with("/echo1") {
        // Idle until the client says so: its contexts are made only then.
        let _ = read_message(&mut tcp, &n, &mut d)?;
        let body = format!("[{}]", (0..4).map(ticker).collect::<Vec<_>>().join(","));
        text(&n, &mut c, body.as_bytes(), &mut out);
        tcp.write_all(&out)?;
        let _ = read_message(&mut tcp, &n, &mut d)?;
        out.clear();
        header(0x81, 2, &mut out);
        out.extend_from_slice(b"ok");
        tcp.write_all(&out)?;
    } else if path.starts_with("/stream") {
        // Everything encoded before "go": the server is never the bottleneck.
        for m in messages {
            text(&n, &mut c, m.as_bytes(), &mut out);
        }
        let wire = out.len();
        let mut ready = Vec::new();
        header(0x81, 5, &mut ready);
        ready.extend_from_slice(b"ready");
        tcp.write_all(&ready)?;
        let _ = read_message(&mut tcp, &n, &mut d)?; // "go"
        for chunk in out.chunks(256 << 10) {
            tcp.write_all(chunk)?;
        }
        let done = format!("done {wire}");
        let mut tail = Vec::new();
        header(0x81, done.len(), &mut tail);
        tail.extend_from_slice(done.as_bytes());
        tcp.write_all(&tail)?;
    }
    // Until the client closes.
    let mut sink = [0u8; 4096];
    while tcp.read(&mut sink)? > 0 {}
    Ok(())
}
