//! Panics stop at the ABI boundary: every hook (`hooks`) runs its body through [`guard`], so a
//! panic in a stage never unwinds into Envoy (undefined behaviour across `extern "C"`) nor
//! aborts it. This only works where panics unwind: the shipped library is built with the
//! workspace's `native` profile (`panic = "unwind"`), never with `release` (`abort`, for Wasm);
//! the test below checks the profile says so.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Run a hook's `body`; after a panic, log it (naming `hook`) and return `fallback()`.
pub fn guard<T>(hook: &str, fallback: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            log::error!("gatewasm: a panic in {hook} was caught");
            fallback()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_fallback() {
        assert_eq!(guard("hook", || 7, || 1), 1);
        assert_eq!(guard("hook", || 7, || panic!("a stage failed")), 7);
        let index: Vec<u8> = Vec::new();
        assert_eq!(guard("hook", || 0, || index[3]), 0);
    }

    #[test]
    fn the_native_profile_unwinds() {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let text = std::fs::read_to_string(manifest).unwrap();
        let profile = text
            .split("\n[profile.native]\n")
            .nth(1)
            .expect("the workspace defines [profile.native]");
        let section = profile.split("\n[").next().unwrap();
        assert!(section.contains("panic = \"unwind\""), "{section}");
    }
}
