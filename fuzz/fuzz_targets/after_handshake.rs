//! Arbitrary bytes from the server after a valid opening handshake.
//! The checks are in `fuzz/harness.rs`, shared with `tests/fuzz_replay.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = harness::after_handshake(data) {
        panic!("contract violated: {violation}");
    }
});
