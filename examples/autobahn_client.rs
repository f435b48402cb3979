//! The Autobahn TestSuite client: runs every case of a `wstest -m fuzzingserver` against
//! this crate, through its public API only, echoing each text and binary message back.
//!
//! `.ci/autobahn.sh` installs and starts the fuzzing server, runs this, and reads the
//! reports. By hand: start a fuzzingserver, then
//! `cargo run --release --example autobahn_client -- ws://127.0.0.1:9001`
//! (the default URL). Set `RUST_LOG=nwebsocket=debug` to watch the connections.

use std::error::Error;
use std::time::{Duration, Instant};

use nwebsocket::crossbeam_channel::RecvTimeoutError;
use nwebsocket::{Event, WebSocket};

/// The name the reports are filed under (`reports/clients/nwebsocket_case_*.json`).
const AGENT: &str = "nwebsocket";
/// Case 9.* sends messages up to 16 MiB; keep well above that.
const LIMIT: usize = 64 << 20;
/// The longest any one case may take before we give up on it and move on. Every case
/// normally ends within a second or two, when the server closes the connection.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> Result<(), Box<dyn Error>> {
    env_logger::init();
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let base = base.trim_end_matches('/');

    let count = case_count(base)?;
    println!("{count} cases to run against {base}");

    let started = Instant::now();
    let mut trouble = Vec::new();
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={AGENT}");
        if let Err(e) = run_case(&url) {
            eprintln!("case {case}: {e}");
            trouble.push(case);
        }
    }
    println!(
        "ran {count} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    update_reports(base)?;
    if trouble.is_empty() {
        Ok(())
    } else {
        Err(format!("the client could not run cases {trouble:?}").into())
    }
}

fn builder() -> nwebsocket::Builder {
    WebSocket::builder()
        .max_message_size(LIMIT)
        .max_frame_size(LIMIT)
        .high_water_mark(LIMIT)
}

/// Asks the server how many cases its spec selects.
fn case_count(base: &str) -> Result<usize, Box<dyn Error>> {
    let (ws, events) = builder().connect_pull(&format!("{base}/getCaseCount"))?;
    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut count = None;
    loop {
        match events.recv_deadline(deadline) {
            Ok(Event::Message(msg)) => {
                let text = msg.as_text().ok_or("getCaseCount answered with binary")?;
                count = Some(text.trim().parse::<usize>()?);
            }
            Ok(Event::Error(e)) => return Err(format!("getCaseCount: {e}").into()),
            Ok(Event::Close(_)) => break,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                ws.close();
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    count.ok_or_else(|| "getCaseCount sent no count".into())
}

/// Runs one case: echo every message until the connection closes. An error *inside* the
/// connection (the server's fuzzing is meant to cause some) is part of the case and the
/// server judges it; only failing to run the case at all is an error here.
fn run_case(url: &str) -> Result<(), Box<dyn Error>> {
    let (ws, events) = builder().connect_pull(url)?;
    let deadline = Instant::now() + CASE_TIMEOUT;
    loop {
        match events.recv_deadline(deadline) {
            Ok(Event::Message(msg)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Refused once the connection is closing: the server has stopped
                // listening by then, so there is nobody to echo to.
                if let Err(e) = ws.send_timeout(msg, left) {
                    log::debug!("echo not sent: {e}");
                }
            }
            Ok(Event::Error(e)) => log::info!("{url}: error: {e}"),
            Ok(Event::Close(close)) => {
                log::info!(
                    "{url}: closed {} {:?} clean={}",
                    close.code,
                    close.reason,
                    close.was_clean
                );
                return Ok(());
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                ws.close();
                let closed = ws.wait_closed_timeout(Duration::from_secs(15));
                return Err(format!(
                    "no close within {CASE_TIMEOUT:?} (after our close: {closed:?})"
                )
                .into());
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("the event channel ended without a Close event".into())
            }
        }
    }
}

/// Tells the server to write its reports for this agent; it closes when they are done.
fn update_reports(base: &str) -> Result<(), Box<dyn Error>> {
    let (ws, events) = builder().connect_pull(&format!("{base}/updateReports?agent={AGENT}"))?;
    let deadline = Instant::now() + CASE_TIMEOUT;
    loop {
        match events.recv_deadline(deadline) {
            Ok(Event::Close(_)) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Ok(Event::Error(e)) => return Err(format!("updateReports: {e}").into()),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                ws.close();
                return Err("updateReports: the server did not close in time".into());
            }
        }
    }
}
