//! Arbitrary bytes from the server after an opening handshake that negotiated
//! permessage-deflate (its parameters from the first byte). The checks are in
//! `fuzz/harness.rs`, shared with `tests/fuzz_replay.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = harness::after_deflate_handshake(data) {
        panic!("contract violated: {violation}");
    }
});
