//! Replays the fuzzers' saved inputs, and a few hundred deterministic pseudo-random ones,
//! through the same harness the cargo-fuzz targets run (`fuzz/harness.rs`): a real server
//! on 127.0.0.1 that sends arbitrary bytes after a valid handshake, or an arbitrary
//! handshake response, and the contract's checks on what the client reports.
//!
//! - `fuzz/corpus/<target>/`: the minimized corpus from the fuzzing runs (`fuzz/README.md`).
//! - `fuzz/regressions/<target>/`: inputs that once broke a rule; each must pass now.
//!
//! The pseudo-random inputs come from a fixed-seed xorshift: the same ones every run.
//! `FUZZ_REPLAY_VERBOSE=1 cargo test --test fuzz_replay -- --nocapture` prints how each
//! input ended.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::Instant;

use harness::Outcome;

fn inputs(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| Some((e.path(), std::fs::read(e.path()).ok()?)))
        .collect();
    files.sort();
    files
}

/// Runs every input; fails with the list of the ones that broke a rule.
fn replay<'a>(
    what: &str,
    target: fn(&[u8]) -> Result<Outcome, String>,
    inputs: impl IntoIterator<Item = (String, &'a [u8])>,
) -> Vec<Outcome> {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut violations = Vec::new();
    let verbose = std::env::var_os("FUZZ_REPLAY_VERBOSE").is_some();
    for (name, input) in inputs {
        match target(input) {
            Ok(outcome) => {
                if verbose {
                    eprintln!("{name}: {outcome:?}");
                }
                outcomes.push(outcome)
            }
            Err(violation) => {
                violations.push(format!("{name} ({} bytes): {violation}", input.len()))
            }
        }
    }
    eprintln!(
        "{what}: {} inputs in {:?}",
        outcomes.len() + violations.len(),
        started.elapsed()
    );
    assert!(
        violations.is_empty(),
        "{what}: {} input(s) broke the contract:\n{}",
        violations.len(),
        violations.join("\n")
    );
    outcomes
}

fn replay_dir(
    target_name: &str,
    dir: &str,
    target: fn(&[u8]) -> Result<Outcome, String>,
) -> Vec<Outcome> {
    let files = inputs(&format!("{dir}/{target_name}"));
    replay(
        &format!("{dir}/{target_name}"),
        target,
        files
            .iter()
            .map(|(path, data)| (path.display().to_string(), data.as_slice())),
    )
}

#[test]
fn corpus_after_handshake() {
    let outcomes = replay_dir("after_handshake", "corpus", harness::after_handshake);
    assert!(outcomes.len() >= 10, "the saved corpus is missing");
    // The corpus reaches both ends: a closing handshake, and a failure.
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Clean { .. })));
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Failed { .. })));
}

#[test]
fn corpus_handshake_response() {
    let outcomes = replay_dir("handshake_response", "corpus", harness::handshake_response);
    assert!(outcomes.len() >= 10, "the saved corpus is missing");
    // Both a refused handshake and an opened connection.
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Refused(_))));
    assert!(outcomes.iter().any(|o| !matches!(o, Outcome::Refused(_))));
}

/// (Needs permessage-deflate, the default feature `deflate`.)
#[cfg(feature = "deflate")]
#[test]
fn corpus_after_deflate_handshake() {
    let outcomes = replay_dir(
        "after_deflate_handshake",
        "corpus",
        harness::after_deflate_handshake,
    );
    assert!(outcomes.len() >= 10, "the saved corpus is missing");
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Clean { .. })));
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Failed { .. })));
}

#[test]
fn regressions() {
    replay_dir("after_handshake", "regressions", harness::after_handshake);
    #[cfg(feature = "deflate")]
    replay_dir(
        "after_deflate_handshake",
        "regressions",
        harness::after_deflate_handshake,
    );
    replay_dir(
        "handshake_response",
        "regressions",
        harness::handshake_response,
    );
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Fewer than `n` random bytes.
    fn up_to(&mut self, n: usize) -> Vec<u8> {
        let len = self.below(n);
        self.bytes(len)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A server frame (unmasked unless asked), with the length in whichever encoding fits.
fn frame(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(u8::from(fin) << 7 | (rsv & 7) << 4 | (opcode & 15));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

const TEXTS: [&[u8]; 6] = [
    b"",
    b"hello",
    "h\u{e9}llo \u{1f600}".as_bytes(),
    b"\xe2\x82",
    b"\xac",
    b"\xff",
];
const CODES: [u16; 10] = [1000, 1001, 1002, 1005, 1006, 1011, 999, 3000, 4999, 5000];

/// A run of mostly well-formed frames with occasional faults (bad bits, bad UTF-8,
/// bad codes, oversize, truncation, stray bytes), so most inputs get past the first frame.
fn frames(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(12) {
        let fin = !rng.chance(4);
        let rsv = if rng.chance(30) {
            rng.below(8) as u8
        } else {
            0
        };
        let mask = rng.chance(40).then_some([1, 2, 3, 4]);
        let (opcode, payload): (u8, Vec<u8>) = match rng.below(10) {
            0..=2 => (1, rng.pick(&TEXTS).to_vec()),
            3 | 4 => {
                let n = *rng.pick(&[0, 1, 125, 126, 1000, 2048, 2049, 3000]);
                (2, rng.bytes(n))
            }
            5 => (0, rng.pick(&TEXTS).to_vec()),
            6 => (9, rng.up_to(130)),
            7 => (10, rng.up_to(10)),
            8 => {
                let mut p = Vec::new();
                if !rng.chance(5) {
                    p.extend_from_slice(&rng.pick(&CODES).to_be_bytes());
                    let text: &&[u8] = rng.pick(&TEXTS);
                    p.extend_from_slice(text);
                }
                (8, p)
            }
            _ => (rng.below(16) as u8, rng.up_to(8)),
        };
        frame(
            &mut out,
            fin || opcode >= 8 && !rng.chance(10),
            rsv,
            opcode,
            &payload,
            mask,
        );
    }
    match rng.below(8) {
        0 => out.truncate(rng.below(out.len() + 1)),
        1 => out.extend(rng.up_to(16)),
        2 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] ^= 1 << rng.below(8);
        }
        _ => {}
    }
    out
}

/// Like [`frames`], around the transport's large-frame path (binary frames of 16 KiB and
/// up, read into buffers of their own) under [`harness::LARGE`]'s limits: binary frames
/// on either side of 16 KiB and of the 64 KiB frame limit, large text frames (sometimes
/// with a bad last byte), large final fragments, control frames between, the same
/// occasional faults, and often a truncation, which can fall inside a large frame.
fn large_frames(rng: &mut Rng) -> Vec<u8> {
    const SIZES: [usize; 9] = [
        16_383, 16_384, 16_385, 30_000, 65_535, 65_536, 65_537, 100_000, 200,
    ];
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let rsv = if rng.chance(30) { 1 } else { 0 };
        let mask = rng.chance(30).then_some([1, 2, 3, 4]);
        match rng.below(8) {
            0..=3 => {
                let len = *rng.pick(&SIZES);
                let payload = rng.bytes(len);
                frame(&mut out, !rng.chance(8), rsv, 2, &payload, mask);
            }
            4 => {
                let mut text = vec![b'a'; *rng.pick(&SIZES)];
                if let Some(last) = text.last_mut().filter(|_| rng.chance(3)) {
                    *last = 0xff;
                }
                frame(&mut out, true, rsv, 1, &text, mask);
            }
            5 => {
                let opcode = *rng.pick(&[1, 2]);
                frame(&mut out, false, 0, opcode, b"head", None);
                frame(&mut out, true, 0, 9, b"ping", None);
                let len = *rng.pick(&SIZES);
                let tail = rng.bytes(len);
                frame(&mut out, true, rsv, 0, &tail, mask);
            }
            6 => frame(
                &mut out,
                true,
                0,
                *rng.pick(&[9, 10]),
                &rng.up_to(126),
                None,
            ),
            _ => {
                let text: &&[u8] = rng.pick(&TEXTS);
                frame(&mut out, true, 0, 1, text, None);
            }
        }
    }
    if rng.chance(3) {
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        frame(&mut out, true, 0, 8, &close, None);
    }
    match rng.below(4) {
        0 => out.truncate(rng.below(out.len() + 1)),
        1 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] ^= 1 << rng.below(8);
        }
        _ => {}
    }
    out
}

/// Handshake responses from a table of status lines and headers, sometimes right
/// (`@ACCEPT@` and an offered protocol), sometimes not, sometimes followed by frames.
fn response(rng: &mut Rng) -> Vec<u8> {
    const STATUS: [&str; 8] = [
        "HTTP/1.1 101 Switching Protocols",
        "HTTP/1.1 101 Switching Protocols",
        "HTTP/1.1 101 Switching Protocols",
        "HTTP/1.0 101 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 302 Found",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 1 x",
    ];
    const HEADERS: [&str; 14] = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: @ACCEPT@",
        "Sec-WebSocket-Protocol: chat",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: @ACCEPT@",
        "Sec-WebSocket-Protocol: superchat",
        "Sec-WebSocket-Protocol: nope",
        "Sec-WebSocket-Extensions: permessage-deflate",
        "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "Location: /elsewhere",
        "Content-Length: 4",
        "Transfer-Encoding: chunked",
    ];
    let mut out = Vec::new();
    let eol: &[u8] = if rng.chance(10) { b"\n" } else { b"\r\n" };
    out.extend_from_slice(rng.pick(&STATUS).as_bytes());
    out.extend_from_slice(eol);
    if rng.chance(2) {
        for h in [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: @ACCEPT@",
            "Sec-WebSocket-Protocol: chat",
        ] {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(eol);
        }
    }
    for _ in 0..rng.below(6) {
        out.extend_from_slice(rng.pick(&HEADERS).as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    if rng.chance(2) {
        out.extend(frames(rng));
    }
    match rng.below(6) {
        0 => out.truncate(rng.below(out.len() + 1)),
        1 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] = rng.next() as u8;
        }
        _ => {}
    }
    out
}

/// Runs `n` inputs from `generate` (seeded with `seed`) through `target`.
fn replay_generated(
    what: &str,
    target: fn(&[u8]) -> Result<Outcome, String>,
    seed: u64,
    n: usize,
    generate: fn(&mut Rng) -> Vec<u8>,
) -> Vec<Outcome> {
    let mut rng = Rng(seed);
    let inputs: Vec<Vec<u8>> = (0..n).map(|_| generate(&mut rng)).collect();
    replay(
        what,
        target,
        inputs
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("#{i}"), v.as_slice())),
    )
}

/// The inputs reached both ends: a closing handshake, and a failure after messages.
fn reach_both_ends(outcomes: &[Outcome]) {
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Clean { .. })));
    assert!(outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Failed { delivered, .. } if *delivered > 0)));
}

#[test]
fn pseudo_random_after_handshake() {
    let outcomes = replay_generated(
        "pseudo-random after_handshake",
        harness::after_handshake,
        0x6e77_6562_736f_636b,
        300,
        frames,
    );
    reach_both_ends(&outcomes);
}

/// The large-frame path against tungstenite reading the same bytes alone: every message
/// delivered once, in order, byte for byte, and the same ending (a clean close, or the
/// same kind of failure).
#[test]
fn pseudo_random_after_handshake_with_large_frames() {
    let outcomes = replay_generated(
        "pseudo-random after_handshake, large frames",
        harness::after_handshake_large,
        0x6c61_7267_6566_726d,
        80,
        large_frames,
    );
    reach_both_ends(&outcomes);
}

#[test]
fn pseudo_random_handshake_response() {
    let outcomes = replay_generated(
        "pseudo-random handshake_response",
        harness::handshake_response,
        0x6861_6e64_7368_616b,
        150,
        response,
    );
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Refused(_))));
    assert!(outcomes.iter().any(|o| !matches!(o, Outcome::Refused(_))));
}

/// Found by the `handshake_response` fuzzer, 26 s into its first run: a `101` whose
/// `Sec-WebSocket-Protocol` value has a byte that is not visible ASCII (`chat\xff`).
/// tungstenite's check of the subprotocol calls `HeaderValue::to_str()`, whose error
/// becomes `tungstenite::Error::Utf8`; the crate's `map_error` turns every `Utf8` into
/// `Error::Protocol("invalid UTF-8 in a text message: …")`, also during the handshake, so
/// `connect` returned a protocol violation about a text message that never existed.
/// A bad handshake response is `Error::Handshake`.
/// (Also in `fuzz/regressions/handshake_response/`.)
#[test]
fn regression_non_ascii_subprotocol_header_is_a_handshake_error() {
    let input =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: @ACCEPT@\r\nSec-WebSocket-Protocol: chat\xff\r\n\r\n";
    match harness::handshake_response(input) {
        Ok(Outcome::Refused(e)) if e.starts_with("Handshake:") => {}
        other => panic!("expected a Handshake error from connect, got {other:?}"),
    }
}
