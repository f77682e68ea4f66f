#![no_main]
//! `just fuzz traceparent`: see gatewasm_fuzz::traceparent.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::traceparent(data));
