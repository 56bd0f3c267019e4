//! A `Last-Event-ID` header value. See `muster_fuzz::last_event_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| muster_fuzz::last_event_id(data));
