//! UUID generation (RFC 9562 versions 4 and 7) into a fixed 36-byte buffer — no heap allocation.
//!
//! Layout of a version 7 UUID (big-endian, 128 bits):
//! `unix_ts_ms:48 | ver=0111:4 | rand_a:12 | var=10:2 | rand_b:62`.
//! `rand_a` and `rand_b` together form a 74-bit "tail" used as in RFC 9562 §6.2 method 2
//! (monotonic random): a new millisecond starts the tail at a random value with its top bit
//! clear; each further ID in the same (or an earlier — the clock went back) millisecond adds a
//! random increment in 1..=2^32. If the tail would overflow, the timestamp is advanced by 1 ms.
//! So IDs from one VM are strictly increasing (as bytes and as text), and IDs from different VMs
//! collide only if two independent 73-bit random starts land within a few increments.

use crate::config::Generator;
use gatewasm_common::rng::Xoshiro256pp;

const TAIL_BITS: u32 = 74;
const TAIL_MAX: u128 = (1 << TAIL_BITS) - 1;
/// A fresh tail uses 73 random bits, leaving at least 2^73 of headroom for increments.
const FRESH_TAIL_MASK: u128 = (1 << (TAIL_BITS - 1)) - 1;
/// Largest 48-bit timestamp (year 10889).
const MAX_UNIX_MS: u64 = (1 << 48) - 1;

const VERSION_SHIFT: u32 = 76;
const VARIANT_SHIFT: u32 = 62;
const VARIANT_RFC: u128 = 0b10;

/// A UUID in its canonical text form: 36 lowercase ASCII bytes, `8-4-4-4-12`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UuidText([u8; 36]);

impl UuidText {
    /// Canonical text form of a 128-bit value.
    pub fn from_u128(value: u128) -> Self {
        // Byte by byte (two digits each) rather than 32 shifts of a 128-bit value: a third of
        // the instructions, on every generated ID.
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut out = [b'-'; 36];
        for (byte, at) in value.to_be_bytes().into_iter().zip(AT) {
            if let Some([high, low]) = out.get_mut(at..at + 2) {
                *high = hex_digit(byte >> 4);
                *low = hex_digit(byte & 0xf);
            }
        }
        Self(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Always ASCII hex digits and hyphens.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for UuidText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for UuidText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const fn hex_digit(nibble: u8) -> u8 {
    if nibble < 10 {
        b'0' + nibble
    } else {
        b'a' + nibble - 10
    }
}

/// Per-VM ID generator: the PRNG plus the version 7 monotonic state. `Copy` so the glue can keep
/// it in a `Cell` (no `RefCell` borrow that could panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdGenerator {
    rng: Xoshiro256pp,
    /// Timestamp of the last version 7 ID.
    last_ms: u64,
    /// 74-bit tail of the last version 7 ID.
    last_tail: u128,
    /// Whether a version 7 ID has been issued (before that, `last_*` are meaningless).
    issued_v7: bool,
}

impl IdGenerator {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            rng: Xoshiro256pp::from_seed(seed),
            last_ms: 0,
            last_tail: 0,
            issued_v7: false,
        }
    }

    /// Replace the PRNG state; keeps the version 7 state so IDs stay monotonic across reseeds.
    pub fn reseed(&mut self, seed: [u8; 32]) {
        self.rng = Xoshiro256pp::from_seed(seed);
    }

    /// A new ID of the given kind. `unix_ms` is only called for version 7 (it is a host call).
    pub fn generate(&mut self, kind: Generator, unix_ms: impl FnOnce() -> u64) -> UuidText {
        let value = match kind {
            Generator::Uuid4 => self.uuid4(),
            Generator::Uuid7 => self.uuid7(unix_ms()),
        };
        UuidText::from_u128(value)
    }

    /// Version 4: 122 random bits.
    pub fn uuid4(&mut self) -> u128 {
        let random = self.rng.next_u128();
        let cleared = random & !(0xf << VERSION_SHIFT) & !(0b11 << VARIANT_SHIFT);
        cleared | (0x4 << VERSION_SHIFT) | (VARIANT_RFC << VARIANT_SHIFT)
    }

    /// Version 7 for the given Unix time in milliseconds; strictly greater than the previous
    /// version 7 ID of this generator.
    pub fn uuid7(&mut self, unix_ms: u64) -> u128 {
        let now = unix_ms.min(MAX_UNIX_MS);
        if !self.issued_v7 || now > self.last_ms {
            self.last_ms = now;
            self.last_tail = self.fresh_tail();
            self.issued_v7 = true;
        } else {
            // Same millisecond, or the clock went backwards: keep the last timestamp and count up.
            let increment = u128::from(self.rng.next_u64() >> 32) + 1;
            let next = self.last_tail + increment;
            if next <= TAIL_MAX {
                self.last_tail = next;
            } else {
                // ~2^41 IDs in one millisecond: borrow the next millisecond.
                self.last_ms = (self.last_ms + 1).min(MAX_UNIX_MS);
                self.last_tail = self.fresh_tail();
            }
        }
        let rand_a = self.last_tail >> VARIANT_SHIFT; // top 12 bits of the tail
        let rand_b = self.last_tail & ((1 << VARIANT_SHIFT) - 1); // low 62 bits
        (u128::from(self.last_ms) << 80)
            | (0x7 << VERSION_SHIFT)
            | (rand_a << 64)
            | (VARIANT_RFC << VARIANT_SHIFT)
            | rand_b
    }

    fn fresh_tail(&mut self) -> u128 {
        self.rng.next_u128() & FRESH_TAIL_MASK
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::incoming::validate_id;
    use std::collections::HashSet;

    fn seed(n: u8) -> [u8; 32] {
        [n; 32]
    }

    /// Checks the canonical 8-4-4-4-12 lowercase-hex shape and returns the 32 hex digits.
    fn assert_canonical(id: &UuidText) -> String {
        let s = id.as_str();
        assert_eq!(s.len(), 36, "{s}");
        for (i, c) in s.chars().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, '-', "{s}");
            } else {
                assert!(matches!(c, '0'..='9' | 'a'..='f'), "{s}");
            }
        }
        // Every generated ID passes our own incoming validation (so the next hop keeps it).
        assert_eq!(validate_id(id.as_bytes(), 36), Ok(()));
        s.replace('-', "")
    }

    #[test]
    fn text_form() {
        assert_eq!(
            UuidText::from_u128(0).as_str(),
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            UuidText::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210).as_str(),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
        assert_eq!(
            UuidText::from_u128(u128::MAX).as_str(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
    }

    #[test]
    fn uuid4_format_version_variant() {
        let mut g = IdGenerator::from_seed(seed(1));
        for _ in 0..1000 {
            let id = g.generate(Generator::Uuid4, || panic!("uuid4 must not read the clock"));
            let hex = assert_canonical(&id);
            let s = id.as_str();
            assert_eq!(&s[14..15], "4", "{s}");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
            let v = u128::from_str_radix(&hex, 16).unwrap();
            assert_eq!((v >> 76) & 0xf, 4);
            assert_eq!((v >> 62) & 0b11, 0b10);
        }
    }

    #[test]
    fn uuid4_bits_are_random() {
        // Every one of the 122 random bit positions takes both values.
        let mut g = IdGenerator::from_seed(seed(2));
        let (mut ones, mut zeros) = (0u128, 0u128);
        for _ in 0..256 {
            let v = g.uuid4();
            ones |= v;
            zeros |= !v;
        }
        let fixed = (0xf << 76) | (0b11 << 62);
        assert_eq!(ones & zeros, !fixed);
    }

    #[test]
    fn uuid7_format_and_time_prefix() {
        let mut g = IdGenerator::from_seed(seed(3));
        let now_ms: u64 = 1_767_225_600_123; // 2026-01-01T00:00:00.123Z
        let id = g.generate(Generator::Uuid7, || now_ms);
        let hex = assert_canonical(&id);
        let s = id.as_str();
        assert_eq!(&s[14..15], "7", "{s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_eq!(u64::from_str_radix(&hex[..12], 16).unwrap(), now_ms);
        assert_eq!(
            &s[..13],
            format!("{:08x}-{:04x}", now_ms >> 16, now_ms & 0xffff)
        );
    }

    #[test]
    fn uuid7_monotonic_when_clock_stalls_or_goes_back() {
        let mut g = IdGenerator::from_seed(seed(4));
        let start: u64 = 1_700_000_000_000;
        let clock = [
            start,
            start,
            start,
            start - 5,
            start - 1000,
            start + 1,
            start + 1,
            start,
            start + 2,
        ];
        let mut prev: Option<UuidText> = None;
        for _ in 0..500 {
            for &t in &clock {
                let id = g.generate(Generator::Uuid7, || t);
                assert_canonical(&id);
                if let Some(p) = prev {
                    assert!(id > p, "{id} !> {p}");
                }
                prev = Some(id);
            }
        }
        // Stalled or backwards clock keeps the latest timestamp seen.
        let last = prev.unwrap();
        assert_eq!(
            u64::from_str_radix(&last.as_str().replace('-', "")[..12], 16).unwrap(),
            start + 2
        );
    }

    #[test]
    fn uuid7_new_millisecond_uses_it() {
        let mut g = IdGenerator::from_seed(seed(5));
        let a = g.uuid7(1000);
        let b = g.uuid7(1001);
        assert_eq!(a >> 80, 1000);
        assert_eq!(b >> 80, 1001);
        assert!(b > a);
    }

    #[test]
    fn uuid7_tail_overflow_borrows_next_millisecond() {
        let mut g = IdGenerator::from_seed(seed(6));
        g.uuid7(42);
        g.last_tail = TAIL_MAX; // force the overflow path
        let v = g.uuid7(42);
        assert_eq!(v >> 80, 43);
        assert_eq!((v >> 76) & 0xf, 7);
        assert_eq!((v >> 62) & 0b11, 0b10);
        assert!(g.uuid7(42) > v);
    }

    #[test]
    fn uuid7_clamps_far_future_time() {
        let mut g = IdGenerator::from_seed(seed(7));
        let v = g.uuid7(u64::MAX);
        assert_eq!(v >> 80, u128::from(MAX_UNIX_MS));
    }

    #[test]
    fn reseed_keeps_uuid7_monotonic() {
        let mut g = IdGenerator::from_seed(seed(8));
        let a = g.uuid7(5000);
        g.reseed(seed(9));
        let b = g.uuid7(5000);
        assert!(b > a);
    }

    #[test]
    fn unique_over_100k_per_generator() {
        for kind in [Generator::Uuid4, Generator::Uuid7] {
            let mut g = IdGenerator::from_seed(seed(10));
            let mut seen = HashSet::with_capacity(100_000);
            let mut t: u64 = 1_700_000_000_000;
            for i in 0..100_000u32 {
                if i % 1000 == 0 {
                    t += 1; // ~1000 IDs per millisecond
                }
                assert!(
                    seen.insert(g.generate(kind, || t)),
                    "{kind:?} duplicate at {i}"
                );
            }
        }
    }

    #[test]
    fn unique_across_vms_in_the_same_millisecond() {
        // Eight "worker VMs" with different seeds, all generating in the same millisecond.
        for kind in [Generator::Uuid4, Generator::Uuid7] {
            let mut vms: Vec<IdGenerator> = (0..8)
                .map(|n| IdGenerator::from_seed(gatewasm_common::rng::os_seed().unwrap_or(seed(n))))
                .collect();
            let mut seen = HashSet::with_capacity(100_000);
            for i in 0..100_000usize {
                let vm = &mut vms[i % 8];
                assert!(
                    seen.insert(vm.generate(kind, || 1_700_000_000_000)),
                    "{kind:?} duplicate at {i}"
                );
            }
        }
    }
}
