#![no_main]
//! `just fuzz tenant_host`: see gatewasm_fuzz::tenant_host.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::tenant_host(data));
