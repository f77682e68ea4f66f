#![no_main]
//! `just fuzz b3`: see gatewasm_fuzz::b3_headers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::b3_headers(data));
