//! Feeds arbitrary bytes to the pgoutput decoder, as a message both outside and inside a
//! streamed block. The decoder must return (`Ok` or `Err`) and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_pg::pgoutput::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, false);
    let _ = decode(data, true);
});
