//! Trace and span ids: strict lowercase-hex parsing, hex rendering into fixed buffers (no heap),
//! and fresh random ids from the per-VM PRNG.

use gatewasm_common::rng::Xoshiro256pp;

/// A small text buffer on the stack for header values the filter renders (ids, `traceparent`,
/// `b3`). Writes past the capacity are dropped (never happens with the sizes used here; the unit
/// tests check every renderer's length).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> std::fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl<const N: usize> Text<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    /// Append `s`, or nothing if it does not fit.
    pub fn push_str(&mut self, s: &[u8]) {
        let end = self.len.saturating_add(s.len());
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(s);
            self.len = end;
        }
    }

    /// Append the low `digits` (at most 32) hex digits of `value`, most significant first,
    /// lowercase. Works on 64-bit halves: u128 shifts by a variable amount are library calls in
    /// wasm32, and this runs for every id the filter writes.
    pub fn push_hex(&mut self, value: u128, digits: u32) {
        if digits > 16 {
            self.push_hex_u64((value >> 64) as u64, digits - 16);
            self.push_hex_u64(value as u64, 16);
        } else {
            self.push_hex_u64(value as u64, digits);
        }
    }

    fn push_hex_u64(&mut self, value: u64, digits: u32) {
        let digits = digits.min(16) as usize;
        let all = hex16(value);
        self.push_str(all.get(16 - digits..).unwrap_or(&[]));
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    pub const fn len(&self) -> usize {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The 16 lowercase hex digits of `value`, most significant first: eight digits at a time in a
/// `u64` (a quarter of the instructions of a digit at a time; six IDs a request are written).
fn hex16(value: u64) -> [u8; 16] {
    let [high, low] = [(value >> 32) as u32, value as u32].map(|half| hex8(half).to_be_bytes());
    let mut out = [0u8; 16];
    let (first, second) = out.split_at_mut(8);
    first.copy_from_slice(&high);
    second.copy_from_slice(&low);
    out
}

/// The 8 hex digits of `value` as the bytes of a `u64`, most significant digit in the most
/// significant byte: each nibble spread into a byte of its own, then `'0'` added, and
/// `'a' - '0' - 10 = 39` more where the nibble is above 9 (`nibble + 6` carries into bit 4).
fn hex8(value: u32) -> u64 {
    const NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut x = u64::from(value);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & NIBBLES;
    let above_nine = ((x + 6 * ONES) >> 4) & ONES;
    x + u64::from(b'0') * ONES + above_nine * 39
}

/// A lowercase hex digit's value (`HEXDIGLC`: `0-9a-f`; uppercase is not accepted).
pub const fn lower_hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// At most 16 lowercase hex digits → the number.
fn parse_hex_word(s: &[u8]) -> Option<u64> {
    if s.len() > 16 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in s {
        value = (value << 4) | u64::from(lower_hex_value(b)?);
    }
    Some(value)
}

/// Exactly `digits` lowercase hex digits (at most 32) → the number. Anything else → `None`.
pub fn parse_lower_hex(s: &[u8], digits: usize) -> Option<u128> {
    if s.len() != digits || digits > 32 {
        return None;
    }
    if digits <= 16 {
        return parse_hex_word(s).map(u128::from);
    }
    // Two 64-bit halves (cheaper than u128 arithmetic in wasm32).
    let (high, low) = s.split_at_checked(digits - 16)?;
    Some((u128::from(parse_hex_word(high)?) << 64) | u128::from(parse_hex_word(low)?))
}

/// 16 lowercase hex digits → a 64-bit id.
pub fn parse_hex_u64(s: &[u8]) -> Option<u64> {
    parse_lower_hex(s, 16).and_then(|v| u64::try_from(v).ok())
}

/// 2 lowercase hex digits → a byte.
pub fn parse_hex_u8(s: &[u8]) -> Option<u8> {
    parse_lower_hex(s, 2).and_then(|v| u8::try_from(v).ok())
}

/// A fresh, non-zero 128-bit trace id: all 128 bits from the PRNG, so the right-most 7 bytes are
/// uniformly random and the W3C `random-trace-id` flag may be set.
pub fn new_trace_id(rng: &mut Xoshiro256pp) -> u128 {
    for _ in 0..4 {
        let id = rng.next_u128();
        if id != 0 {
            return id;
        }
    }
    1
}

/// A fresh, non-zero 64-bit span id different from `previous` (the id the request came with).
pub fn new_span_id(rng: &mut Xoshiro256pp, previous: u64) -> u64 {
    for _ in 0..4 {
        let id = rng.next_u64();
        if id != 0 && id != previous {
            return id;
        }
    }
    previous.wrapping_add(1).max(1)
}

/// Trim HTTP optional whitespace (SP / HTAB) from both ends.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let mut t = Text::<32>::new();
        t.push_hex(0x0af7651916cd43dd8448eb211c80319c, 32);
        assert_eq!(t.as_bytes(), b"0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            parse_lower_hex(t.as_bytes(), 32),
            Some(0x0af7651916cd43dd8448eb211c80319c)
        );
        let mut t = Text::<16>::new();
        t.push_hex(0xb7ad6b7169203331, 16);
        assert_eq!(parse_hex_u64(t.as_bytes()), Some(0xb7ad6b7169203331));
        let mut t = Text::<4>::new();
        t.push_hex(0x1, 2);
        assert_eq!(t.as_bytes(), b"01");
        t.push_hex(u128::MAX, 32);
        assert_eq!(
            t.as_bytes(),
            b"01",
            "what does not fit is dropped, not a panic"
        );
    }

    #[test]
    fn hex_digits() {
        assert_eq!(&hex16(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex16(u64::MAX), b"ffffffffffffffff");
        assert_eq!(&hex16(0), b"0000000000000000");
        assert_eq!(&hex16(0xfedc_ba98_7654_3210), b"fedcba9876543210");
        assert_eq!(&hex16(0x9a0f_f09a_a9f0_0fa9), b"9a0ff09aa9f00fa9");
        // Every nibble value in every position, against a digit at a time.
        let hex_digit = |n: u8| b"0123456789abcdef"[usize::from(n)];
        for shift in 0..16 {
            for nibble in 0..16u64 {
                let value =
                    (nibble << (4 * shift)) | (0x5a5a_5a5a_5a5a_5a5a & !(0xf << (4 * shift)));
                let expected: Vec<u8> = (0..16)
                    .rev()
                    .map(|i| hex_digit(((value >> (4 * i)) & 0xf) as u8))
                    .collect();
                assert_eq!(hex16(value).to_vec(), expected, "{value:x}");
            }
        }
    }

    #[test]
    fn strict_lowercase_hex() {
        assert_eq!(parse_hex_u8(b"ff"), Some(0xff));
        assert_eq!(parse_hex_u8(b"FF"), None);
        assert_eq!(parse_hex_u8(b"0g"), None);
        assert_eq!(parse_hex_u8(b"0"), None);
        assert_eq!(parse_hex_u8(b"000"), None);
        assert_eq!(parse_hex_u64(b"00f067aa0ba902b7"), Some(0x00f067aa0ba902b7));
        assert_eq!(parse_hex_u64(b"00F067AA0BA902B7"), None);
        assert_eq!(parse_hex_u64(b"00f067aa0ba902b"), None);
        assert_eq!(parse_hex_u64(b"+0f067aa0ba902b7"), None);
        assert_eq!(parse_lower_hex(b"", 0), Some(0));
        assert_eq!(
            parse_lower_hex(b"1ffffffffffffffff", 17),
            Some(0x1ffffffffffffffff)
        );
        assert_eq!(parse_lower_hex(b"10000000000000000", 17), Some(1 << 64));
        assert_eq!(parse_lower_hex(b"1000000000000000g", 17), None);
        let mut t = Text::<32>::new();
        t.push_hex(0x1_0000_0000_0000_0002, 17);
        assert_eq!(t.as_bytes(), b"10000000000000002");
        assert_eq!(parse_lower_hex(&[b'1'; 33], 33), None);
    }

    #[test]
    fn fresh_ids_are_non_zero_and_new() {
        let mut rng = Xoshiro256pp::from_seed([7; 32]);
        for _ in 0..1000 {
            assert_ne!(new_trace_id(&mut rng), 0);
            assert_ne!(new_span_id(&mut rng, 5), 0);
        }
        // A PRNG stuck on one value still yields something different from `previous`.
        let mut rng = Xoshiro256pp::from_state(1, 2, 3, 4);
        let first = {
            let mut probe = rng;
            probe.next_u64()
        };
        assert_ne!(new_span_id(&mut rng, first), first);
    }

    #[test]
    fn ows_trimming() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b"\r\nx"), b"\r\nx");
    }
}
