#![no_main]
//! `just fuzz jwt`: see gatewasm_fuzz::jwt.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::jwt(data));
