#![no_main]
//! `just fuzz correlation_id`: see gatewasm_fuzz::correlation_id.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::correlation_id(data));
