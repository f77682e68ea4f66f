#![no_main]
//! `just fuzz jwks`: see gatewasm_fuzz::jwks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::jwks(data));
