//! A registration: the instance path's service and id, then the JSON body. See `muster_fuzz::registration`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| muster_fuzz::registration(data));
