//! A stored log entry. See `muster_fuzz::log_entry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| muster_fuzz::log_entry(data));
