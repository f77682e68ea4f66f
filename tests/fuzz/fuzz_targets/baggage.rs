#![no_main]
//! `just fuzz baggage`: see gatewasm_fuzz::baggage_fields.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gatewasm_fuzz::baggage_fields(data));
