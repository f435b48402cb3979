//! permessage-deflate: what it costs and what it saves (issue 16).
//!
//! ```text
//! cargo run --release -p nwebsocket-compare --bin deflate                 # every part
//! cargo run --release -p nwebsocket-compare --bin deflate -- rss          # memory only
//! cargo run --release -p nwebsocket-compare --bin deflate -- stream       # JSON stream only
//! cargo run --release -p nwebsocket-compare --bin deflate -- small        # the three below
//! cargo run --release -p nwebsocket-compare --bin deflate -- stream_small send_small rtt
//!     [--runs N] [--no-python]
//! ```
//!
//! The server is this binary started again (`--serve`), a separate process speaking
//! permessage-deflate with flate2 (tungstenite servers cannot); it never counts in the
//! client's RSS or CPU. When deflate is negotiated it compresses every message it sends,
//! however small, as Python `websockets` does.
//!
//! - `rss`: for each setting, a fresh child process opens 200 connections: RSS growth per
//!   connection once open and idle, then after one compressed message each way (the
//!   server sends 2 KiB of JSON, the client echoes it, compressed since it is over 1 KiB).
//! - `stream`: the server streams 200,000 JSON messages of about 400 bytes, shaped like
//!   market data (compressed beforehand, so it is never the bottleneck).
//! - `stream_small`: the server streams 200,000 binary messages of 64 bytes (the main
//!   binary's stream_small payload, `0xa5` × 64), compressed beforehand when negotiated.
//! - `send_small`: the client sends 200,000 binary messages of 64 bytes (`0x5a` × 64); the
//!   server inflates those that are compressed, counts them and answers after the last.
//!   This crate does not compress messages under its 1 KiB threshold, so with
//!   compression on it sends what it sends with compression off.
//! - `rtt`: 20,000 round trips of the 32-byte text of the main binary's rtt, one in
//!   flight; the server's echo is compressed when negotiated.
//!
//! Each reports messages (round trips) per second, client CPU per message (the whole
//! client process, user + system, every thread: getrusage, as `main.rs` does), and bytes
//! on the wire per message (counted by the server: whole frames, headers and masks
//! included; rtt: both directions), for this crate with `no_deflate()` and with the
//! default offer, and for Python `websockets` (compression on, its default, and off)
//! through `py/deflate_anchor.py`, when `python3` (or `$NWSC_PYTHON`) imports
//! `websockets`. Each figure is the median of `--runs` runs (default 5); each Python run
//! is a fresh process (its start is not timed). The clock and the CPU count start after
//! the connection is open and stop at the last message (`rtt`, `send_small`: the last
//! answer).

#[path = "../sys.rs"]
#[allow(dead_code)]
mod sys;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use nwebsocket::{Builder, Deflate, Event, Handler, Message, WebSocket, WebSocketRef};

const CONNS: usize = 200;
/// Messages of the JSON stream.
const STREAM: usize = 200_000;
/// Messages of stream_small and send_small.
const SMALL: usize = 200_000;
/// Round trips of rtt.
const RTT: usize = 20_000;
/// The main binary's rtt payload (`RTT_PAYLOAD` in `main.rs`).
const RTT_PAYLOAD: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(60);

const PARTS: [&str; 5] = ["rss", "stream", "stream_small", "send_small", "rtt"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve") => serve(),
        Some("--rss-child") => rss_child(&args[1], &args[2]),
        _ => {
            let mut parts = Vec::new();
            let mut runs = 5;
            let mut python = true;
            let mut it = args.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--runs" => {
                        runs = it
                            .next()
                            .and_then(|v| v.parse().ok())
                            .filter(|&n| n > 0)
                            .expect("--runs N")
                    }
                    "--no-python" => python = false,
                    "small" => parts.extend(["stream_small", "send_small", "rtt"]),
                    other => match PARTS.iter().find(|p| **p == other) {
                        Some(p) => parts.push(*p),
                        None => panic!("unknown argument {other}; parts: {PARTS:?} or small"),
                    },
                }
            }
            if parts.is_empty() {
                parts.extend(PARTS);
            }
            let py = if python { Python::find() } else { None };
            let server = Server::start();
            println!(
                "{}; load average {} at the start; {} run(s) a figure, medians",
                sys::machine(),
                sys::loadavg(),
                runs
            );
            match &py {
                Some(p) => println!("anchor: Python websockets {} ({})", p.version, p.exe),
                None if python => println!(
                    "Python websockets not importable (pip install websockets, or set NWSC_PYTHON): no anchor rows"
                ),
                None => {}
            }
            for part in parts {
                match part {
                    "rss" => rss(&server.url),
                    _ => scenario(&server.url, part, runs, py.as_ref()),
                }
            }
            println!("load average {} at the end", sys::loadavg());
        }
    }
}

/// A ticker message of about 400 bytes.
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

/// One run's figures: messages (round trips) per second, client CPU µs per message, bytes
/// on the wire per message.
#[derive(Clone, Copy)]
struct Figures {
    rate: f64,
    cpu_us: f64,
    wire: f64,
    /// The lowest and highest rate of the runs (in a median).
    lo: f64,
    hi: f64,
}

impl Figures {
    /// The rest of one run's figures (`lo` and `hi` are filled in by `median`).
    fn one() -> Figures {
        Figures {
            rate: 0.0,
            cpu_us: 0.0,
            wire: 0.0,
            lo: 0.0,
            hi: 0.0,
        }
    }
}

/// The median of each figure over the runs.
fn median(runs: &[Figures]) -> Figures {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    Figures {
        rate: mid(|f| f.rate),
        cpu_us: mid(|f| f.cpu_us),
        wire: mid(|f| f.wire),
        lo: runs.iter().map(|f| f.rate).fold(f64::INFINITY, f64::min),
        hi: runs.iter().map(|f| f.rate).fold(0.0, f64::max),
    }
}

/// A client of the table: this crate (style, setting) or Python `websockets` (API,
/// compression).
#[derive(Clone, Copy)]
enum Client {
    Ours(&'static str, &'static str),
    Python(&'static str, &'static str),
}

/// The server's path, what the Python script calls the scenario, and how many messages.
fn plan(part: &str) -> (&'static str, &'static str, usize) {
    match part {
        "stream" => ("/stream", "stream", STREAM),
        "stream_small" => ("/small", "stream", SMALL),
        "send_small" => ("/sink", "send", SMALL),
        "rtt" => ("/echo", "rtt", RTT),
        other => panic!("unknown part {other}"),
    }
}

fn scenario(url: &str, part: &str, runs: usize, py: Option<&Python>) {
    let (path, kind, n) = plan(part);
    let url = format!("{url}{path}?n={n}");
    let what = match part {
        "stream" => format!(
            "JSON stream: {n} text messages of about {} bytes from the server",
            ticker(n / 2).len()
        ),
        "stream_small" => format!("stream_small: {n} binary messages of 64 bytes from the server"),
        "send_small" => format!("send_small: {n} binary messages of 64 bytes to the server"),
        _ => format!(
            "rtt: {n} round trips of {} bytes of text",
            RTT_PAYLOAD.len()
        ),
    };
    let unit = if part == "rtt" { "rt" } else { "msg" };
    println!("{what}");
    // Each client's runs are interleaved with the others' (run 1 of every client, then
    // run 2, …), so that a change of load or placement during the part hits all of them.
    let mut clients: Vec<(String, Client)> = Vec::new();
    let mut ours: Vec<(&str, &str)> = vec![("pull", "off"), ("pull", "default")];
    if part == "stream" {
        ours.push(("pull", "no_context_takeover"));
    }
    if part == "stream" || part == "stream_small" {
        ours.extend([("callback", "off"), ("callback", "default")]);
    }
    for (style, setting) in ours {
        let name = format!("nwebsocket {style}, {}", label(setting));
        clients.push((name, Client::Ours(style, setting)));
    }
    if py.is_some() {
        for api in ["sync", "asyncio"] {
            for (compression, on) in [("deflate", "compression on"), ("none", "compression=None")] {
                clients.push((
                    format!("websockets {api}, {on}"),
                    Client::Python(api, compression),
                ));
            }
        }
    }
    let mut figs: Vec<Vec<Figures>> = vec![Vec::new(); clients.len()];
    for _ in 0..runs {
        for ((_, client), figs) in clients.iter().zip(&mut figs) {
            let f = match (*client, py) {
                (Client::Ours(style, setting), _) => Some(match (part, style) {
                    ("stream" | "stream_small", "pull") => stream_pull(&url, setting, n),
                    ("stream" | "stream_small", _) => stream_callback(&url, setting, n),
                    ("send_small", _) => send_pull(&url, setting, n),
                    _ => rtt_pull(&url, setting, n),
                }),
                (Client::Python(api, compression), Some(py)) => {
                    py.run(&url, kind, n, compression, api)
                }
                (Client::Python(..), None) => None,
            };
            figs.extend(f);
        }
    }
    let rows: Vec<(String, Figures)> = clients
        .into_iter()
        .zip(figs)
        .filter(|(_, f)| !f.is_empty())
        .map(|((name, _), f)| (name, median(&f)))
        .collect();
    let anchor = rows
        .iter()
        .find(|(name, _)| name == "websockets sync, compression on")
        .map(|r| r.1);
    println!(
        "  {:<44} {:>10} {:>19} {:>7} {:>9} {:>7} {:>9}",
        "client, setting",
        format!("{unit}/s"),
        "(min-max)",
        "x py",
        format!("us/{unit}"),
        "x py",
        format!("B/{unit}")
    );
    for (name, f) in &rows {
        let (r, c) = match anchor {
            Some(a) => (
                format!("{:.2}", f.rate / a.rate),
                format!("{:.2}", f.cpu_us / a.cpu_us),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "  {name:<44} {:>10.0} {:>19} {r:>7} {:>9.2} {c:>7} {:>9.1}",
            f.rate,
            format!("({:.0}-{:.0})", f.lo, f.hi),
            f.cpu_us,
            f.wire
        );
    }
}

fn label(setting: &str) -> &str {
    match setting {
        "off" => "no_deflate()",
        "default" => "default (deflate)",
        other => other,
    }
}

/// The `done …` text that ends each server's part: its numbers.
fn done_fields(m: &Message) -> Option<Vec<f64>> {
    let rest = m.as_text()?.strip_prefix("done ")?;
    Some(
        rest.split_whitespace()
            .map(|x| x.parse().expect("a number"))
            .collect(),
    )
}

fn next_message(events: &nwebsocket::Events) -> Message {
    loop {
        let event = match events.try_recv() {
            Ok(e) => e,
            Err(_) => events.recv_timeout(WAIT).expect("an event"),
        };
        match event {
            Event::Message(m) => return m,
            Event::Open => {}
            other => panic!("{other:?}"),
        }
    }
}

/// stream and stream_small in pull style.
fn stream_pull(url: &str, setting: &str, n: usize) -> Figures {
    let (ws, events) = settings(setting).connect_pull(url).expect("connect");
    // The server has encoded the stream.
    let ready = next_message(&events);
    assert_eq!(ready.as_text(), Some("ready"));
    let cpu0 = sys::process_cpu_ns();
    let t0 = Instant::now();
    ws.send("go").expect("go");
    let mut got = 0;
    let wire = loop {
        let m = next_message(&events);
        match done_fields(&m) {
            Some(f) => break f[0],
            None => got += 1,
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (sys::process_cpu_ns() - cpu0) as f64 / 1000.0;
    assert_eq!(got, n);
    drop(ws);
    Figures {
        rate: n as f64 / secs,
        cpu_us: cpu / n as f64,
        wire: wire / n as f64,
        ..Figures::one()
    }
}

/// Counts messages in `onmessage`; sends the server's `done` figure back.
struct Count {
    got: usize,
    ready: mpsc::Sender<()>,
    done: mpsc::Sender<(usize, f64)>,
}

impl Handler for Count {
    fn onmessage(&mut self, _ws: &WebSocketRef, msg: Message) {
        if msg.as_text() == Some("ready") {
            let _ = self.ready.send(());
        } else if let Some(f) = done_fields(&msg) {
            let _ = self.done.send((self.got, f[0]));
        } else {
            self.got += 1;
        }
    }
}

/// stream and stream_small in callback style.
fn stream_callback(url: &str, setting: &str, n: usize) -> Figures {
    let (ready_tx, ready) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let ws = settings(setting)
        .connect(
            url,
            Count {
                got: 0,
                ready: ready_tx,
                done: done_tx,
            },
        )
        .expect("connect");
    ready.recv_timeout(WAIT).expect("ready");
    let cpu0 = sys::process_cpu_ns();
    let t0 = Instant::now();
    ws.send("go").expect("go");
    let (got, wire) = done.recv_timeout(WAIT).expect("done");
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (sys::process_cpu_ns() - cpu0) as f64 / 1000.0;
    assert_eq!(got, n);
    drop(ws);
    Figures {
        rate: n as f64 / secs,
        cpu_us: cpu / n as f64,
        wire: wire / n as f64,
        ..Figures::one()
    }
}

/// send_small in pull style.
fn send_pull(url: &str, setting: &str, n: usize) -> Figures {
    let (ws, events) = settings(setting).connect_pull(url).expect("connect");
    // Open first, as the Python client is when its `connect` returns.
    assert!(matches!(events.recv_timeout(WAIT), Ok(Event::Open)));
    let payload = [0x5a_u8; 64];
    let cpu0 = sys::process_cpu_ns();
    let t0 = Instant::now();
    for _ in 0..n {
        ws.send(&payload[..]).expect("send");
    }
    let wire = done_fields(&next_message(&events)).expect("done")[0];
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (sys::process_cpu_ns() - cpu0) as f64 / 1000.0;
    drop(ws);
    Figures {
        rate: n as f64 / secs,
        cpu_us: cpu / n as f64,
        wire: wire / n as f64,
        ..Figures::one()
    }
}

/// rtt in pull style.
fn rtt_pull(url: &str, setting: &str, n: usize) -> Figures {
    let (ws, events) = settings(setting).connect_pull(url).expect("connect");
    assert!(matches!(events.recv_timeout(WAIT), Ok(Event::Open)));
    let cpu0 = sys::process_cpu_ns();
    let t0 = Instant::now();
    for _ in 0..n {
        ws.send(RTT_PAYLOAD).expect("send");
        let m = next_message(&events);
        assert_eq!(m.as_text(), Some(RTT_PAYLOAD));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (sys::process_cpu_ns() - cpu0) as f64 / 1000.0;
    let f = done_fields(&next_message(&events)).expect("done");
    drop(ws);
    Figures {
        rate: n as f64 / secs,
        cpu_us: cpu / n as f64,
        wire: (f[0] + f[1]) / n as f64,
        ..Figures::one()
    }
}

/// Python with `websockets`, and the anchor script.
struct Python {
    exe: String,
    version: String,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/deflate_anchor.py");

impl Python {
    fn find() -> Option<Python> {
        let exe = std::env::var("NWSC_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = Command::new(&exe)
            .args(["-c", "import websockets; print(websockets.__version__)"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| Python {
            exe,
            version: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        })
    }

    fn run(
        &self,
        url: &str,
        kind: &str,
        n: usize,
        compression: &str,
        api: &str,
    ) -> Option<Figures> {
        let out = Command::new(&self.exe)
            .args([SCRIPT, url, kind, &n.to_string()])
            .args(["--compression", compression, "--api", api])
            .stderr(Stdio::inherit())
            .output()
            .expect("run python");
        if !out.status.success() {
            eprintln!(
                "{SCRIPT} {kind} --compression {compression} --api {api}: {}",
                out.status
            );
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON line");
        let f = |k: &str| v[k].as_f64().expect(k);
        Some(Figures {
            rate: f("rate"),
            cpu_us: f("cpu_us"),
            wire: f("wire"),
            ..Figures::one()
        })
    }
}

// ---------------------------------------------------------------------------------------
// The server: a raw permessage-deflate server, one thread per connection.

fn serve() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("addr").port());
    std::io::stdout().flush().expect("flush");
    // Built once: the JSON stream's messages.
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

fn handshake(rd: &mut impl Read, wr: &mut TcpStream) -> std::io::Result<(String, Negotiated)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        rd.read_exact(&mut byte)?;
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
    // The first offer only (clients here make one).
    let first = offer.split(',').next().unwrap_or_default();
    for p in first.split(';').skip(1).map(str::trim) {
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
        wr,
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

/// One server connection.
struct Peer {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
    n: Negotiated,
    c: Compress,
    d: Decompress,
    /// Bytes of the client's data frames read so far, headers and masks included.
    rx: u64,
}

impl Peer {
    /// Appends one data message (`opcode` 1 or 2), compressed when negotiated, whatever
    /// its size.
    fn encode(&mut self, opcode: u8, data: &[u8], out: &mut Vec<u8>) {
        if !self.n.on {
            header(0x80 | opcode, data.len(), out);
            out.extend_from_slice(data);
            return;
        }
        let c = &mut self.c;
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
        if self.n.server_reset {
            c.reset();
        }
        header(0xC0 | opcode, z.len(), out);
        out.extend_from_slice(&z);
    }

    /// Writes one text message, uncompressed (the `ready` and `done` of each part).
    fn say(&mut self, text: &str) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 2);
        header(0x81, text.len(), &mut out);
        out.extend_from_slice(text.as_bytes());
        self.wr.write_all(&out)
    }

    fn inflate(&mut self, mut p: Vec<u8>) -> Vec<u8> {
        p.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let d = &mut self.d;
        let mut out = Vec::with_capacity(p.len() * 8 + 1024);
        let mut input = &p[..];
        loop {
            let before = d.total_in();
            d.decompress_vec(input, &mut out, FlushDecompress::Sync)
                .expect("inflate");
            input = &input[(d.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        if self.n.client_reset {
            d.reset(false);
        }
        out
    }

    /// The client's next data message (opcode, payload inflated), answering pings; `None`
    /// once the client has closed (its Close answered).
    fn read_message(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            let mut h = [0u8; 2];
            self.rd.read_exact(&mut h)?;
            let (len, extra) = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.rd.read_exact(&mut b)?;
                    (u16::from_be_bytes(b) as usize, 2)
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.rd.read_exact(&mut b)?;
                    (u64::from_be_bytes(b) as usize, 8)
                }
                l => (l as usize, 0),
            };
            let mut mask = [0u8; 4];
            self.rd.read_exact(&mut mask)?;
            let mut p = vec![0u8; len];
            self.rd.read_exact(&mut p)?;
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            let op = h[0] & 0x0f;
            match op {
                0x8 => {
                    let mut out = Vec::new();
                    header(0x88, p.len().min(2), &mut out);
                    out.extend_from_slice(&p[..p.len().min(2)]);
                    self.wr.write_all(&out)?;
                    let _ = self.wr.shutdown(Shutdown::Write);
                    return Ok(None);
                }
                0x9 => {
                    let mut out = Vec::new();
                    header(0x8A, p.len(), &mut out);
                    out.extend_from_slice(&p);
                    self.wr.write_all(&out)?;
                }
                0x1 | 0x2 => {
                    assert!(
                        h[0] & 0x80 != 0,
                        "fragmented messages are not expected here"
                    );
                    self.rx += (2 + extra + 4 + len) as u64;
                    let p = if h[0] & 0x40 != 0 { self.inflate(p) } else { p };
                    return Ok(Some((op, p)));
                }
                0x0 => panic!("fragmented messages are not expected here"),
                _ => {}
            }
        }
    }

    /// Pre-encoded `frames` (`count` bytes of messages) after `ready` and the client's
    /// `go`, then `done <count>`.
    fn stream(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.say("ready")?;
        let _ = self.read_message()?; // "go"
        for chunk in frames.chunks(256 << 10) {
            self.wr.write_all(chunk)?;
        }
        self.say(&format!("done {}", frames.len()))
    }
}

/// `n=` of the path's query.
fn param_n(path: &str) -> Option<usize> {
    path.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix("n="))?
        .parse()
        .ok()
}

fn connection(tcp: TcpStream, messages: &[String]) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut wr = tcp.try_clone()?;
    let mut rd = BufReader::with_capacity(256 << 10, tcp);
    let (path, n) = handshake(&mut rd, &mut wr)?;
    let c = Compress::new_with_window_bits(Compression::default(), false, n.server_bits);
    let d = Decompress::new(false);
    let mut peer = Peer {
        rd,
        wr,
        n,
        c,
        d,
        rx: 0,
    };
    let mut out = Vec::new();
    let count = param_n(&path);
    if path.starts_with("/echo1") {
        // Idle until the client says so: its contexts are made only then.
        let _ = peer.read_message()?;
        let body = format!("[{}]", (0..4).map(ticker).collect::<Vec<_>>().join(","));
        peer.encode(0x1, body.as_bytes(), &mut out);
        peer.wr.write_all(&out)?;
        let _ = peer.read_message()?;
        peer.say("ok")?;
    } else if path.starts_with("/stream") {
        // Everything encoded before "go": the server is never the bottleneck.
        let n = count.unwrap_or(STREAM).min(messages.len());
        for m in &messages[..n] {
            peer.encode(0x1, m.as_bytes(), &mut out);
        }
        peer.stream(&out)?;
    } else if path.starts_with("/small") {
        for _ in 0..count.unwrap_or(SMALL) {
            peer.encode(0x2, &[0xa5; 64], &mut out);
        }
        peer.stream(&out)?;
    } else if path.starts_with("/sink") {
        for _ in 0..count.unwrap_or(SMALL) {
            match peer.read_message()? {
                Some((_, p)) => assert_eq!(p.len(), 64, "send_small's messages are 64 bytes"),
                None => return Ok(()),
            }
        }
        let rx = peer.rx;
        peer.say(&format!("done {rx}"))?;
    } else if path.starts_with("/echo") {
        let mut tx = 0;
        for _ in 0..count.unwrap_or(RTT) {
            let Some((op, p)) = peer.read_message()? else {
                return Ok(());
            };
            out.clear();
            peer.encode(op, &p, &mut out);
            tx += out.len();
            peer.wr.write_all(&out)?;
        }
        let rx = peer.rx;
        peer.say(&format!("done {rx} {tx}"))?;
    }
    // Until the client closes.
    while peer.read_message()?.is_some() {}
    Ok(())
}
