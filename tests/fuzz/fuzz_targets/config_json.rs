#![no_main]
//! `just fuzz config_json`: see gatewasm_fuzz::config_json.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::config_json(data));
