//! permessage-deflate (RFC 7692): the offer, the check of the server's answer, the
//! inflater the [`Reader`](super::incoming::Reader) uses for messages with RSV1 set, and
//! the compressor the sending threads share.
//!
//! Both contexts are made at the first compressed message in their direction, so an idle
//! connection that negotiated deflate costs what one that did not costs. Without context
//! takeover in a direction, its context is dropped after each message: memory goes back
//! to that level, for the price of making a context per compressed message.
//!
//! Window bits: flate2 (and zlib, for raw deflate) takes 9 to 15. When 8 is negotiated,
//! 9 is used both ways. Inflating with a window larger than the sender's is always valid.
//! Compressing with 9 stays within a 256-byte window: zlib and zlib-rs never reach back
//! further than the window less 262 bytes (`MAX_DIST`), 250 bytes for a 512-byte window,
//! which is why zlib itself silently turns 8 into 9. Autobahn's cases 13.3 and 13.5
//! (client window 8, inflated by Python's zlib with a 256-byte window) check it.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::incoming::Violation;
use crate::config::Deflate;
use crate::error::{Error, ProtocolErrorKind};

/// The trailer a sync flush ends with, taken off each message (RFC 7692 §7.2.1) and put
/// back before inflating (§7.2.2).
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the handshake settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: u8,
    pub client_max_window_bits: u8,
}

/// The `Sec-WebSocket-Extensions` offer for `config`.
pub(crate) fn offer(config: &Deflate) -> String {
    let mut offer = String::from("permessage-deflate");
    if config.server_no_context_takeover {
        offer.push_str("; server_no_context_takeover");
    }
    if config.client_no_context_takeover {
        offer.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = config.server_max_window_bits {
        offer.push_str(&format!("; server_max_window_bits={bits}"));
    }
    match config.client_max_window_bits {
        Some(bits) => offer.push_str(&format!("; client_max_window_bits={bits}")),
        None if config.offer_client_max_window_bits => offer.push_str("; client_max_window_bits"),
        None => {}
    }
    offer
}

/// Checks the server's `Sec-WebSocket-Extensions` (all its lines joined with `,`)
/// against our offer (RFC 7692 §5 and §7.1): one extension, ours, each parameter known,
/// once, with a valid value, and allowed by what we offered. `Ok(None)`: the server
/// declined (no extension).
pub(crate) fn accept(config: &Deflate, response: &str) -> Result<Option<Params>, String> {
    let extensions: Vec<&str> = response
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let ext = match extensions[..] {
        [] => return Ok(None),
        [ext] => ext,
        _ => {
            return Err(format!(
                "the server chose more than one extension: {response:?}"
            ))
        }
    };
    let mut parts = ext.split(';').map(str::trim);
    let name = parts.next().unwrap_or("");
    if name != "permessage-deflate" {
        return Err(format!(
            "the server chose extension {name:?}, only permessage-deflate was offered"
        ));
    }
    let mut params = Params {
        server_no_context_takeover: false,
        client_no_context_takeover: config.client_no_context_takeover,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let mut seen: Vec<&str> = Vec::new();
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim()))),
            None => (part, None),
        };
        if seen.contains(&key) {
            return Err(format!("permessage-deflate parameter {key} repeated"));
        }
        seen.push(key);
        let bad = |why: &str| Err(format!("permessage-deflate parameter {part:?}: {why}"));
        match (key, value) {
            ("server_no_context_takeover", None) => params.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => params.client_no_context_takeover = true,
            ("server_no_context_takeover" | "client_no_context_takeover", Some(_)) => {
                return bad("takes no value")
            }
            ("server_max_window_bits", Some(v)) => {
                let Some(bits) = window_bits(v) else {
                    return bad("not a number from 8 to 15");
                };
                if config.server_max_window_bits.is_some_and(|max| bits > max) {
                    return bad("larger than offered");
                }
                params.server_max_window_bits = bits;
            }
            ("client_max_window_bits", Some(v)) => {
                if config.client_max_window_bits.is_none() && !config.offer_client_max_window_bits {
                    return bad("not offered");
                }
                let Some(bits) = window_bits(v) else {
                    return bad("not a number from 8 to 15");
                };
                if config.client_max_window_bits.is_some_and(|max| bits > max) {
                    return bad("larger than offered");
                }
                params.client_max_window_bits = bits;
            }
            ("server_max_window_bits" | "client_max_window_bits", None) => {
                return bad("needs a value")
            }
            _ => return bad("unknown"),
        }
    }
    if let Some(bits) = config.server_max_window_bits {
        // RFC 7692 §7.1.2.1: the server accepts the bound by answering with it; without
        // it the answer is not to our offer, and it would compress with 2^15.
        if !seen.contains(&"server_max_window_bits") {
            return Err(format!(
                "the server did not agree to server_max_window_bits={bits}: {ext:?}"
            ));
        }
    }
    if let Some(max) = config.client_max_window_bits {
        // We said we would use no more than this, answered or not.
        params.client_max_window_bits = params.client_max_window_bits.min(max);
    }
    Ok(Some(params))
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// 8 to 15, written as RFC 7692 §7.1.2 says: no sign, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    match v {
        "8" => Some(8),
        "9" => Some(9),
        "10" | "11" | "12" | "13" | "14" | "15" => v.parse().ok(),
        _ => None,
    }
}

/// flate2 takes 9 to 15 (see the module docs for 8).
fn flate_bits(bits: u8) -> u8 {
    bits.clamp(9, 15)
}

fn corrupt(e: impl std::fmt::Display) -> Violation {
    Violation {
        code: 1007,
        error: Error::protocol(
            ProtocolErrorKind::Compression,
            format!("invalid compressed data: {e}"),
        ),
    }
}

/// The incoming side's context: made at the first compressed message.
#[derive(Debug)]
pub(crate) struct Inflater {
    window_bits: u8,
    no_context_takeover: bool,
    inner: Option<Box<Decompress>>,
}

impl Inflater {
    pub fn new(params: &Params) -> Self {
        Inflater {
            window_bits: flate_bits(params.server_max_window_bits),
            no_context_takeover: params.server_no_context_takeover,
            inner: None,
        }
    }

    /// Inflates one frame's `payload` of a compressed message onto `out`, which may hold
    /// no more than `limit` bytes: past it, 1009 before more memory is spent. `fin`: the
    /// message's last frame (its trailer is put back, and the context reset without
    /// context takeover).
    pub fn inflate(
        &mut self,
        payload: &[u8],
        fin: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), Violation> {
        let bits = self.window_bits;
        let d = self
            .inner
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, bits)));
        run_inflate(d, payload, out, limit)?;
        if fin {
            run_inflate(d, &TRAILER, out, limit)?;
            if self.no_context_takeover {
                // Nothing to keep: the next message makes a fresh context, and an idle
                // connection holds none.
                self.inner = None;
            }
        }
        Ok(())
    }
}

fn run_inflate(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), Violation> {
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(too_big(out.len(), limit));
            }
            // Doubling, but never past the limit (plus the byte that shows it exceeded).
            let room = out.len().max(256).min(limit.saturating_add(1) - out.len());
            out.reserve_exact(room);
        }
        let (before_in, before_out) = (d.total_in(), out.len());
        let status = d.decompress_vec(input, out, FlushDecompress::Sync);
        // What inflated before an error counts first: past the limit, that is the first
        // violation in the stream (1009), the corrupt data after it the second.
        if out.len() > limit {
            return Err(too_big(out.len(), limit));
        }
        let status = status.map_err(corrupt)?;
        let used = (d.total_in() - before_in) as usize;
        input = &input[used..];
        let stalled = used == 0 && out.len() == before_out;
        if status == Status::StreamEnd {
            // A final block (BFINAL) ended the stream: what follows starts a new one.
            d.reset(false);
        } else if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        } else if stalled && out.len() < out.capacity() {
            return Err(corrupt("the inflater made no progress"));
        }
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

fn too_big(size: usize, limit: usize) -> Violation {
    Violation {
        code: 1009,
        error: Error::Capacity {
            what: "message",
            size,
            limit,
        },
    }
}

/// The compressor the sending threads share, one per connection; set by the I/O thread
/// before each connection opens.
///
/// Order: with context takeover, the server inflates messages in the order they are on
/// the wire, so they must be compressed in that order. A sending thread takes this lock,
/// compresses, and appends the frame to the outbox *before* it lets go of it: the order
/// of compression is the order in the outbox. The outbox's own lock (the one the I/O
/// thread takes) is held only for the append, never while compressing. Messages below
/// the threshold skip this lock and go as they are; no other message's context depends
/// on them.
#[derive(Debug)]
pub(crate) struct SendDeflate {
    /// Payloads of this size and up are compressed; `usize::MAX` while nothing was
    /// negotiated (one relaxed load on every send).
    threshold: AtomicUsize,
    state: Mutex<SendState>,
}

#[derive(Debug, Default)]
struct SendState {
    /// Negotiated for the current connection.
    params: Option<OutParams>,
    compress: Option<Box<Compress>>,
    /// The compressed payload of the message being sent, reused.
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct OutParams {
    window_bits: u8,
    no_context_takeover: bool,
    level: u32,
}

impl Default for SendDeflate {
    fn default() -> Self {
        SendDeflate {
            threshold: AtomicUsize::new(usize::MAX),
            state: Mutex::new(SendState::default()),
        }
    }
}

impl SendDeflate {
    /// A new connection opened with `params` (or without deflate): a fresh context,
    /// made at its first compressed message.
    pub fn start(&self, params: Option<(&Params, &Deflate)>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = SendState::default();
        state.params = params.map(|(p, config)| OutParams {
            window_bits: flate_bits(p.client_max_window_bits),
            no_context_takeover: p.client_no_context_takeover,
            level: config.level,
        });
        let threshold = params.map_or(usize::MAX, |(_, c)| c.threshold);
        self.threshold.store(threshold, Relaxed);
    }

    /// Compresses `payload` if deflate is on and it is large enough, and hands the
    /// compressed bytes to `then` while the context's lock is held (see the type's docs).
    /// `None`: it goes uncompressed (`then` was not called).
    ///
    /// Only if `open`, asked under the lock: a message compressed and then refused would
    /// leave in the context what the server never sees. Refused once OPEN, it is the end
    /// of this context's connection (CLOSING); but a sender that saw the last connection
    /// OPEN could otherwise compress with the next one's context, started before it is
    /// OPEN (reconnect), be refused, and spoil its first messages.
    pub fn compress<R>(
        &self,
        payload: &[u8],
        open: impl FnOnce() -> bool,
        then: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        if payload.len() < self.threshold.load(Relaxed) {
            return None;
        }
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        let params = state.params?;
        if !open() {
            return None; // refused when it is appended: not through this context
        }
        let c = state.compress.get_or_insert_with(|| {
            let level = Compression::new(params.level);
            Box::new(Compress::new_with_window_bits(
                level,
                false,
                params.window_bits,
            ))
        });
        state.buf.clear();
        if run_deflate(c, payload, &mut state.buf).is_err() {
            // Cannot happen with a sync flush into a growing buffer; if it did, the
            // context is in an unknown state: drop it and send this one uncompressed,
            // with a fresh context for the next (the server's context has not seen
            // this message either).
            state.compress = None;
            return None;
        }
        let body = match state.buf.strip_suffix(&TRAILER).unwrap_or(&state.buf) {
            // A sync flush with nothing to flush writes nothing (an empty message after
            // another, with context takeover). The payload is never empty: an empty
            // stored block, as RFC 7692 §7.2.3.6 has it, keeps the server in step.
            [] => &[0x00],
            body => body,
        };
        let done = then(body);
        if params.no_context_takeover {
            // Nothing to keep: the next message makes a fresh context, and an idle
            // connection holds none.
            state.compress = None;
        }
        if state.buf.capacity() > 64 << 10 {
            state.buf = Vec::new(); // a large message's buffer is not kept
        }
        Some(done)
    }
}

fn run_deflate(c: &mut Compress, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    out.reserve(input.len() / 2 + 64);
    loop {
        let before = c.total_in();
        c.compress_vec(input, out, FlushCompress::Sync)
            .map_err(|_| ())?;
        input = &input[(c.total_in() - before) as usize..];
        // Done once everything is in and the flush did not fill the buffer.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
        out.reserve(out.capacity().max(64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Deflate {
        Deflate::new()
    }

    #[test]
    fn the_default_offer_is_the_browsers() {
        assert_eq!(
            offer(&config()),
            "permessage-deflate; client_max_window_bits"
        );
        let all = config()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(10)
            .client_max_window_bits(12);
        assert_eq!(
            offer(&all),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
    }

    #[test]
    fn valid_answers_are_accepted() {
        let c = config();
        assert_eq!(accept(&c, ""), Ok(None));
        let p = accept(&c, "permessage-deflate").unwrap().unwrap();
        assert_eq!(
            p,
            Params {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            }
        );
        let p = accept(
            &c,
            "permessage-deflate; server_no_context_takeover;client_no_context_takeover; \
             server_max_window_bits=9; client_max_window_bits=\"8\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p,
            Params {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 9,
                client_max_window_bits: 8,
            }
        );
        // What we asked for holds even if the answer leaves it out.
        let asked = config()
            .client_no_context_takeover(true)
            .client_max_window_bits(10);
        let p = accept(&asked, "permessage-deflate").unwrap().unwrap();
        assert!(p.client_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 10);
    }

    #[test]
    fn invalid_answers_are_refused() {
        let c = config();
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; foo",
            "permessage-deflate; foo=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=true",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=9; client_max_window_bits=9",
        ] {
            assert!(accept(&c, bad).is_err(), "{bad}");
        }
        let not_offered = config().offer_client_max_window_bits(false);
        assert!(accept(
            &not_offered,
            "permessage-deflate; client_max_window_bits=10"
        )
        .is_err());
        let limited = config()
            .server_max_window_bits(10)
            .client_max_window_bits(10);
        assert!(accept(&limited, "permessage-deflate; server_max_window_bits=11").is_err());
        assert!(accept(&limited, "permessage-deflate; client_max_window_bits=11").is_err());
        assert!(accept(&limited, "permessage-deflate; server_max_window_bits=10").is_ok());
    }

    /// Our compressor, as the server's inflater reads it.
    fn inflate_all(messages: &[Vec<u8>], params: &Params) -> Vec<Vec<u8>> {
        let mut inflater = Inflater::new(&Params {
            server_max_window_bits: params.client_max_window_bits,
            server_no_context_takeover: params.client_no_context_takeover,
            ..*params
        });
        messages
            .iter()
            .map(|m| {
                let mut out = Vec::new();
                inflater.inflate(m, true, &mut out, usize::MAX).unwrap();
                out
            })
            .collect()
    }

    /// Past the limit before corrupt data in the same inflate call: the limit is the
    /// first violation (1009), as the fuzz harness's reference reads it (found by the CI
    /// fuzz pass, 2026-12-07: the client reported the corrupt block, 1007).
    #[test]
    fn output_past_the_limit_counts_before_corrupt_data_after_it() {
        let params = Params {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        };
        // A stored block of 11 bytes, then a block of the reserved type 3: the output
        // fills the 11 bytes of room (the limit and the byte that shows it passed), and
        // the inflater reads the next block's header in the same call, needing no room.
        let mut raw = vec![0x00, 11, 0, !11, 0xff];
        raw.extend_from_slice(&[b'x'; 11]);
        raw.push(0x07);
        let mut out = Vec::new();
        let err = Inflater::new(&params)
            .inflate(&raw, false, &mut out, 10)
            .unwrap_err();
        assert_eq!(err.code, 1009, "{:?}", err.error);
        let mut out = Vec::new();
        let err = Inflater::new(&params)
            .inflate(&raw, false, &mut out, 100)
            .unwrap_err();
        assert_eq!(err.code, 1007, "{:?}", err.error);
    }

    #[test]
    fn round_trip_with_and_without_context_takeover() {
        let msg =
            br#"{"type":"trade","symbol":"BTC-USD","price":"43210.5","size":"0.25"}"#.repeat(20);
        for no_takeover in [false, true] {
            for bits in [8, 9, 12, 15] {
                let params = Params {
                    server_no_context_takeover: false,
                    client_no_context_takeover: no_takeover,
                    server_max_window_bits: 15,
                    client_max_window_bits: bits,
                };
                let d = SendDeflate::default();
                let cfg = config().threshold(0);
                d.start(Some((&params, &cfg)));
                let wire: Vec<Vec<u8>> = (0..3)
                    .map(|_| d.compress(&msg, || true, |c| c.to_vec()).unwrap())
                    .collect();
                assert!(wire[0].len() < msg.len() / 5);
                if no_takeover {
                    assert_eq!(wire[1], wire[0], "each message compressed alone");
                } else if bits == 15 {
                    assert!(
                        wire[1].len() < wire[0].len() / 2,
                        "the second refers to the first"
                    );
                }
                for got in inflate_all(&wire, &params) {
                    assert_eq!(got, msg);
                }
            }
        }
    }

    #[test]
    fn below_the_threshold_or_not_negotiated_nothing_is_compressed() {
        let d = SendDeflate::default();
        assert!(d.compress(&[0; 4096], || true, |_| ()).is_none());
        let params = accept(&config(), "permessage-deflate").unwrap().unwrap();
        d.start(Some((&params, &config())));
        assert!(d.compress(&[0; 1023], || true, |_| ()).is_none());
        assert!(d.compress(&[0; 1024], || true, |_| ()).is_some());
        d.start(None);
        assert!(d.compress(&[0; 4096], || true, |_| ()).is_none());
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let bomb = {
            let d = SendDeflate::default();
            let params = accept(&config(), "permessage-deflate").unwrap().unwrap();
            d.start(Some((&params, &config())));
            d.compress(&vec![0u8; 8 << 20], || true, |c| c.to_vec())
                .unwrap()
        };
        assert!(bomb.len() < 16 << 10, "{}", bomb.len());
        let params = accept(&config(), "permessage-deflate").unwrap().unwrap();
        let mut inflater = Inflater::new(&params);
        let mut out = Vec::new();
        let e = inflater
            .inflate(&bomb, true, &mut out, 1 << 20)
            .unwrap_err();
        assert_eq!(e.code, 1009);
        assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
    }
}
