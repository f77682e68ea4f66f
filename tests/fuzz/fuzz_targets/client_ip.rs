#![no_main]
//! `just fuzz client_ip`: see gatewasm_fuzz::client_ip.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::client_ip(data));
