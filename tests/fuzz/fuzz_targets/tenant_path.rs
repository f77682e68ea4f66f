#![no_main]
//! `just fuzz tenant_path`: see gatewasm_fuzz::tenant_path.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::tenant_path(data));
