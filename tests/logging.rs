//! Contract rule 11: logging goes through `log`, state changes at debug, frames at trace.
//! Its own test binary: it installs a logger, which a process can do once.

use std::net::TcpListener;
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use nwebsocket::{Event, WebSocket};

struct Recorder(Mutex<Vec<(log::Level, String, String)>>);

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.target().starts_with("nwebsocket") {
            let mut records = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            records.push((
                record.level(),
                record.target().to_owned(),
                record.args().to_string(),
            ));
        }
    }
    fn flush(&self) {}
}

static RECORDER: Recorder = Recorder(Mutex::new(Vec::new()));

/// One test at a time (they share the logger): installs it the first time, and starts
/// each test with no records.
fn recording() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    static INSTALL: Once = Once::new();
    let guard = ONE.lock().unwrap_or_else(PoisonError::into_inner);
    INSTALL.call_once(|| {
        log::set_logger(&RECORDER).expect("the only logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
    RECORDER
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    guard
}

/// The warnings recorded so far that contain `text`.
fn warnings(text: &str) -> usize {
    let records = RECORDER.0.lock().unwrap_or_else(PoisonError::into_inner);
    records
        .iter()
        .filter(|(l, _, m)| *l == log::Level::Warn && m.contains(text))
        .count()
}

#[test]
fn a_session_logs_state_changes_at_debug_and_frames_at_trace() {
    let _one = recording();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut ws = tungstenite::accept(stream).expect("handshake");
        while let Ok(m) = ws.read() {
            if m.is_text() {
                ws.send(m).expect("echo");
            }
        }
    });
    let (ws, events) = WebSocket::connect_pull(&format!("ws://{addr}/")).expect("connect");
    ws.send("hello").expect("send");
    let wait = Duration::from_secs(10);
    loop {
        match events.recv_timeout(wait).expect("an event") {
            Event::Message(m) => {
                assert_eq!(m.as_text(), Some("hello"));
                break;
            }
            Event::Open => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.close();
    assert!(ws.wait_closed_timeout(wait).is_some_and(|c| c.was_clean));
    drop(ws);
    server.join().expect("server");
    let records = RECORDER.0.lock().unwrap_or_else(PoisonError::into_inner);
    let has = |level: log::Level, text: &str| {
        records
            .iter()
            .any(|(l, _, m)| *l == level && m.contains(text))
    };
    assert!(has(log::Level::Debug, "Connecting -> Open"), "{records:#?}");
    assert!(has(log::Level::Debug, "Open -> Closing"), "{records:#?}");
    assert!(
        has(log::Level::Trace, "frame out: Data(Text) len=5"),
        "{records:#?}"
    );
    assert!(
        has(log::Level::Trace, "frame in: Data(Text) fin=true len=5"),
        "{records:#?}"
    );
    assert!(
        has(log::Level::Trace, "frame in: Control(Close)"),
        "{records:#?}"
    );
    // A clean session has nothing to warn about.
    assert!(
        records.iter().all(|(l, _, _)| *l > log::Level::Warn),
        "{records:#?}"
    );
}

const FULL: &str = "the event queue has been full";

/// A server that sends `n` messages, then pings every 100 ms until the client goes.
fn pinging_server(n: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut ws = tungstenite::accept(stream).expect("handshake");
        for i in 0..n {
            ws.send(tungstenite::Message::text(format!("m{i}")))
                .expect("send");
        }
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            if ws
                .send(tungstenite::Message::Ping(Vec::new().into()))
                .is_err()
            {
                return;
            }
        }
    });
    (url, server)
}

/// The consumer takes nothing: a few events wait behind a full queue and the socket is
/// not read, so the warning comes once the ping interval has passed, and only once.
/// (Until 2026-12-07 it never came unless the I/O thread's own list of events waiting
/// was full too, which it is not while the socket goes unwatched.)
#[test]
fn a_full_queue_is_warned_of_once_after_the_ping_interval() {
    let _one = recording();
    let (url, server) = pinging_server(74);
    let (ws, events) = WebSocket::builder()
        .incoming_queue(64)
        .ping_interval(Duration::from_millis(300))
        .pong_timeout(Duration::from_secs(30))
        .close_timeout(Duration::from_millis(200))
        .connect_pull(&url)
        .expect("connect");
    let until = Instant::now() + Duration::from_secs(10);
    while warnings(FULL) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(warnings(FULL), 1);
    drop(events);
    drop(ws);
    server.join().expect("server");
    assert_eq!(warnings(FULL), 1, "once");
}

/// Without a ping interval the warning comes after 10 s: a timer of its own wakes the
/// I/O thread for it. (Until 2026-12-07 nothing did: it never came.)
#[test]
fn a_full_queue_is_warned_of_without_a_ping_interval() {
    let _one = recording();
    let (url, server) = pinging_server(74);
    let (ws, events) = WebSocket::builder()
        .incoming_queue(64)
        .close_timeout(Duration::from_millis(200))
        .connect_pull(&url)
        .expect("connect");
    let until = Instant::now() + Duration::from_secs(20);
    while warnings(FULL) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(warnings(FULL), 1);
    drop(events);
    drop(ws);
    server.join().expect("server");
}
