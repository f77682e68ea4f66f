#![no_main]
//! `just fuzz tracestate`: see gatewasm_fuzz::tracestate.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::tracestate(data));
