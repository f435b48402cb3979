//! Arbitrary responses to the opening handshake (`@ACCEPT@` is replaced by the right
//! `Sec-WebSocket-Accept`). The checks are in `fuzz/harness.rs`, shared with
//! `tests/fuzz_replay.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = harness::handshake_response(data) {
        panic!("contract violated: {violation}");
    }
});
