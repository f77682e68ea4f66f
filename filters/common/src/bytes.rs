//! Byte-slice equality eight bytes at a time. In Wasm, `==` on slices is a call to
//! compiler-builtins' `memcmp`, which compares one byte per step (about eight instructions per
//! byte): comparing a cached JWT with the request's (≈ 350 bytes) cost 8k instructions, more
//! than anything else on jwt-to-header's cached path. [`eq`] compares `u64` words there; on a
//! native target `==` is the C library's vectorised `memcmp` (a tenth of the word loop's
//! instructions for a token), so it is used as it is.

/// Whether `a` and `b` hold the same bytes.
#[cfg(not(target_arch = "wasm32"))]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    a == b
}

/// Whether `a` and `b` hold the same bytes.
#[cfg(target_arch = "wasm32")]
#[inline]
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    by_words(a, b)
}

/// [`eq`] a word at a time (what Wasm uses; tested on every target).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
#[inline]
fn by_words(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, a_tail) = a.as_chunks::<8>();
    let (b_words, b_tail) = b.as_chunks::<8>();
    a_words
        .iter()
        .zip(b_words)
        .all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && a_tail.iter().zip(b_tail).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::{by_words, eq};

    #[test]
    fn equal_only_when_every_byte_is() {
        let a: Vec<u8> = (0..=255u8).cycle().take(355).collect();
        for len in [0, 1, 7, 8, 9, 16, 355] {
            let x = &a[..len];
            // A copy elsewhere in memory: equal by content, not by address.
            let copy = x.to_vec();
            assert!(eq(x, &copy) && by_words(x, &copy));
            for at in 0..len {
                let mut y = x.to_vec();
                y[at] ^= 0x20;
                assert!(!eq(x, &y), "len {len}, byte {at}");
                assert!(!by_words(x, &y), "len {len}, byte {at}");
            }
        }
        assert!(!eq(b"abc", b"abcd") && !by_words(b"abc", b"abcd"));
    }
}
