//! The whole connection handler: arbitrary bytes from the server side of a
//! socket, through request reading, parsing, body reading, response framing
//! and draining (`lswsgi::harness::serve_bytes`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lswsgi::harness::serve_bytes(data);
});
