//! A discovery query string, or two separated by a line break. See `muster_fuzz::discovery_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| muster_fuzz::discovery_query(data));
