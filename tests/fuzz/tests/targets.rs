//! Every fuzz target on its checked-in corpus and on a bounded number of random inputs (fixed
//! seed), so `cargo test` catches regressions without a nightly toolchain or libFuzzer.
//! `PROPTEST_CASES=N` runs more.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatewasm_fuzz::{TARGETS, corpus};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

#[test]
fn every_target_has_a_corpus_and_passes_it() {
    for (name, target) in TARGETS {
        let files = corpus(name);
        assert!(!files.is_empty(), "corpus/{name}/ is empty");
        for (file, bytes) in files {
            let result = std::panic::catch_unwind(|| target(&bytes));
            assert!(result.is_ok(), "{name}: corpus/{name}/{file} fails");
        }
    }
}

/// Bytes biased towards the characters the parsers care about, plus anything at all.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let structural =
        prop::sample::select(b"0123456789abcdefABCDEF-=,;:./%[]{}\"' \t\nxyzt_@*?&#".to_vec());
    let byte = prop_oneof![4 => structural, 1 => any::<u8>()];
    prop_oneof![
        3 => prop::collection::vec(byte, 0..80),
        1 => prop::collection::vec(any::<u8>(), 0..600),
    ]
}

#[test]
fn every_target_survives_random_input() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3000);
    for (i, (name, target)) in TARGETS.iter().enumerate() {
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[i as u8 + 1; 32]),
        );
        let result = runner.run(&input(), |data| {
            let outcome = std::panic::catch_unwind(|| target(&data));
            prop_assert!(outcome.is_ok(), "{name} panicked");
            Ok(())
        });
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
    }
}
