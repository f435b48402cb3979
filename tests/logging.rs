//! Contract rule 11: logging goes through `log`, state changes at debug, frames at trace.
//! Its own test binary: it installs a logger, which a process can do once.

use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

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

#[test]
fn a_session_logs_state_changes_at_debug_and_frames_at_trace() {
    log::set_logger(&RECORDER).expect("the only logger");
    log::set_max_level(log::LevelFilter::Trace);
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
