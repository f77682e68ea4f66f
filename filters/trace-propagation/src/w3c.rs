//! W3C Trace Context (Level 2): `traceparent` parsing and rendering, `tracestate` validation,
//! truncation and rendering.
//!
//! `traceparent` (`version "-" trace-id "-" parent-id "-" trace-flags`, lowercase hex only):
//! - Surrounding optional whitespace (SP/HTAB) is ignored.
//! - The version must be 2 lowercase hex digits followed by `-`; `ff` is forbidden.
//! - Version `00` must be exactly 55 characters. A higher version must be at least 55 characters
//!   and the flags must be followed by the end or by `-`; fields after the flags are ignored, and
//!   the context is re-emitted as version `00` ("downgrade").
//! - An all-zero trace-id or parent-id makes the header invalid.
//! - Flags: bit 0 `sampled`, bit 1 `random-trace-id` (Level 2). Other bits are reserved: parsed,
//!   then cleared on output ("vendors MUST set those to zero").
//!
//! `tracestate` (only looked at when `traceparent` is valid):
//! - Several header fields are combined in order, as RFC 9110 says (they are one comma list).
//! - Empty and whitespace-only list-members are allowed and skipped.
//! - `key = (lcalpha / DIGIT) 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@")` — Level 2
//!   dropped Level 1's `tenant@system` structure, so any number of `@` is allowed.
//! - `value = 0*255(chr) nblk-chr` — 1 to 256 printable ASCII characters except `,` and `=`, not
//!   ending in a space.
//! - A duplicated key keeps its first (left-most) occurrence; later ones are dropped and the
//!   rest of the list is kept. W3C moves a modified key to the left, so the left-most entry is
//!   the most recent one; the spec lets a receiver discard duplicates it does not own, and the
//!   w3c/trace-context suite (since its PR #477) expects the header to survive them.
//! - More than 32 list-members (distinct keys, counted after dropping duplicates) or a malformed
//!   member (even a duplicated one) invalidates the *whole* `tracestate`: it is discarded, never
//!   partly forwarded.
//! - Truncation to a length limit removes whole entries: first entries longer than 128 characters
//!   (right-most first, only as many as needed), then entries from the right.

use crate::context::{Extracted, Invalid, Outgoing, Sampling};
use crate::ids::{Text, parse_hex_u8, parse_hex_u64, parse_lower_hex, trim_ows};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

pub const FLAG_SAMPLED: u8 = 0x01;
/// Level 2 `random-trace-id` flag.
pub const FLAG_RANDOM: u8 = 0x02;
/// The flags this implementation knows; every other bit is cleared on output.
pub const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// A valid incoming `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    /// Never zero.
    pub trace_id: u128,
    /// Never zero.
    pub parent_id: u64,
    /// The flags as sent, unknown bits included.
    pub flags: u8,
}

impl TraceParent {
    pub const fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    pub const fn random(&self) -> bool {
        self.flags & FLAG_RANDOM != 0
    }

    pub const fn to_extracted(&self) -> Extracted {
        Extracted {
            trace_id: self.trace_id,
            short_trace_id: false,
            span_id: self.parent_id,
            parent_span_id: None,
            sampling: if self.sampled() {
                Sampling::Accept
            } else {
                Sampling::Deny
            },
            random: self.random(),
        }
    }
}

/// `s[at]`, or `None` past the end.
fn byte_at(s: &[u8], at: usize) -> Option<u8> {
    s.get(at).copied()
}

/// Parse one `traceparent` value.
pub fn parse_traceparent(raw: &[u8]) -> Result<TraceParent, Invalid> {
    let v = trim_ows(raw);
    if v.is_empty() {
        return Err(Invalid("empty value"));
    }
    let version = match (v.get(..2).and_then(parse_hex_u8), byte_at(v, 2)) {
        (Some(version), Some(b'-')) => version,
        _ => {
            return Err(Invalid(
                "the version is not 2 lowercase hex digits followed by '-'",
            ));
        }
    };
    if version == 0xff {
        return Err(Invalid("version ff is forbidden"));
    }
    if version == 0 {
        if v.len() != TRACEPARENT_LEN {
            return Err(Invalid("a version 00 value must be exactly 55 characters"));
        }
    } else {
        if v.len() < TRACEPARENT_LEN {
            return Err(Invalid("a higher-version value shorter than 55 characters"));
        }
        if v.len() > TRACEPARENT_LEN && byte_at(v, TRACEPARENT_LEN) != Some(b'-') {
            return Err(Invalid(
                "the trace-flags are followed by something other than '-'",
            ));
        }
    }
    let trace_id = match (
        v.get(3..35).and_then(|s| parse_lower_hex(s, 32)),
        byte_at(v, 35),
    ) {
        (Some(id), Some(b'-')) => id,
        _ => {
            return Err(Invalid(
                "the trace-id is not 32 lowercase hex digits followed by '-'",
            ));
        }
    };
    let parent_id = match (v.get(36..52).and_then(parse_hex_u64), byte_at(v, 52)) {
        (Some(id), Some(b'-')) => id,
        _ => {
            return Err(Invalid(
                "the parent-id is not 16 lowercase hex digits followed by '-'",
            ));
        }
    };
    let Some(flags) = v.get(53..55).and_then(parse_hex_u8) else {
        return Err(Invalid("the trace-flags are not 2 lowercase hex digits"));
    };
    if trace_id == 0 {
        return Err(Invalid("the trace-id is all zeroes"));
    }
    if parent_id == 0 {
        return Err(Invalid("the parent-id is all zeroes"));
    }
    Ok(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

/// Render the outgoing context as a version-00 `traceparent` (always 55 bytes).
pub fn render_traceparent(out: &Outgoing) -> Text<TRACEPARENT_LEN> {
    let mut flags = 0u8;
    if out.sampled {
        flags |= FLAG_SAMPLED;
    }
    if out.random {
        flags |= FLAG_RANDOM;
    }
    let mut t = Text::new();
    t.push_str(b"00-");
    t.push_hex(out.trace_id, 32);
    t.push(b'-');
    t.push_hex(u128::from(out.span_id), 16);
    t.push(b'-');
    t.push_hex(u128::from(flags), 2);
    t
}

/// Most list-members a `tracestate` may have.
pub const MAX_MEMBERS: usize = 32;
/// Longest key and longest value.
pub const MAX_KEY_LEN: usize = 256;
pub const MAX_VALUE_LEN: usize = 256;
/// Entries longer than this are the first to go when truncating.
pub const LARGE_MEMBER_LEN: usize = 128;

const fn is_lcalpha_or_digit(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9')
}

const fn is_keychar(b: u8) -> bool {
    is_lcalpha_or_digit(b) || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E` (printable, not space, `,` or `=`).
const fn is_nblk_chr(b: u8) -> bool {
    matches!(b, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e)
}

fn check_key(key: &[u8]) -> Result<(), Invalid> {
    match key.first() {
        None => return Err(Invalid("a list-member has an empty key")),
        Some(&first) if !is_lcalpha_or_digit(first) => {
            return Err(Invalid(
                "a key does not start with a lowercase letter or digit",
            ));
        }
        Some(_) => {}
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Invalid("a key is longer than 256 characters"));
    }
    if !key.iter().all(|&b| is_keychar(b)) {
        return Err(Invalid(
            "a key contains a character outside a-z 0-9 _ - * / @",
        ));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Invalid> {
    match value.last() {
        None => return Err(Invalid("a list-member has an empty value")),
        Some(&b' ') => return Err(Invalid("a value ends with a space")),
        Some(_) => {}
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(Invalid("a value is longer than 256 characters"));
    }
    if !value.iter().all(|&b| b == b' ' || is_nblk_chr(b)) {
        return Err(Invalid(
            "a value contains '=' or a character outside printable ASCII",
        ));
    }
    Ok(())
}

/// One `key=value` list-member (OWS trimmed), borrowed from the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Member<'a> {
    text: &'a [u8],
    key_len: usize,
}

impl<'a> Member<'a> {
    pub fn text(&self) -> &'a [u8] {
        self.text
    }

    pub fn key(&self) -> &'a [u8] {
        self.text.get(..self.key_len).unwrap_or(&[])
    }
}

/// A valid `tracestate`: up to 32 members with distinct keys, in order; truncation marks
/// members as dropped.
#[derive(Debug, Clone)]
pub struct TraceState<'a> {
    members: [Member<'a>; MAX_MEMBERS],
    kept: [bool; MAX_MEMBERS],
    len: usize,
    dropped_duplicates: bool,
}

impl<'a> TraceState<'a> {
    /// Validate the (combined) `tracestate` header fields. Any invalid member invalidates all;
    /// a repeated key is not invalid: only its first occurrence is kept.
    ///
    /// The 32-member limit counts the members kept, i.e. distinct keys: the limit is about the
    /// list that is propagated, and counting dropped duplicates would discard a list whose
    /// forwarded form is valid — the loss of the whole header the spec's "MAY discard
    /// duplicate keys" is meant to avoid. The work stays bounded: a repeated member costs one
    /// comparison with each of at most 32 stored keys.
    pub fn parse<I>(fields: I) -> Result<Self, Invalid>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut state = Self {
            members: [Member::default(); MAX_MEMBERS],
            kept: [false; MAX_MEMBERS],
            len: 0,
            dropped_duplicates: false,
        };
        for field in fields {
            for raw in field.split(|&b| b == b',') {
                let text = trim_ows(raw);
                if text.is_empty() {
                    continue;
                }
                let Some(eq) = text.iter().position(|&b| b == b'=') else {
                    return Err(Invalid("a list-member has no '='"));
                };
                let key = text.get(..eq).unwrap_or(&[]);
                let value = text.get(eq + 1..).unwrap_or(&[]);
                check_key(key)?;
                check_value(value)?;
                // Checked after the member's own validation, so a malformed repeat still
                // invalidates the whole header like any other malformed member.
                if state.members().any(|m| m.key() == key) {
                    // Keep the first: modified keys move to the left (W3C), so the left-most
                    // entry is the vendor's most recent position.
                    state.dropped_duplicates = true;
                    continue;
                }
                let (Some(slot), Some(kept)) = (
                    state.members.get_mut(state.len),
                    state.kept.get_mut(state.len),
                ) else {
                    return Err(Invalid("more than 32 list-members"));
                };
                *slot = Member { text, key_len: eq };
                *kept = true;
                state.len += 1;
            }
        }
        Ok(state)
    }

    /// The members still kept, in order.
    pub fn members(&self) -> impl Iterator<Item = Member<'a>> + '_ {
        self.members
            .iter()
            .zip(self.kept.iter())
            .take(self.len)
            .filter(|(_, kept)| **kept)
            .map(|(m, _)| *m)
    }

    pub fn count(&self) -> usize {
        self.members().count()
    }

    /// A later occurrence of a key was dropped while parsing: the fields as received are not
    /// what may be forwarded, so they must be re-rendered.
    pub fn dropped_duplicates(&self) -> bool {
        self.dropped_duplicates
    }

    /// Length of the kept members joined by `,`.
    pub fn combined_len(&self) -> usize {
        let (n, bytes) = self.members().fold((0usize, 0usize), |(n, bytes), m| {
            (n + 1, bytes + m.text.len())
        });
        bytes + n.saturating_sub(1)
    }

    fn drop_last_where(&mut self, pred: impl Fn(&Member<'a>) -> bool) -> bool {
        let last = (0..self.len).rev().find(|&i| {
            self.kept.get(i).copied().unwrap_or(false) && self.members.get(i).is_some_and(&pred)
        });
        match last.and_then(|i| self.kept.get_mut(i)) {
            Some(kept) => {
                *kept = false;
                true
            }
            None => false,
        }
    }

    /// Drop whole entries until the combined length is at most `max`: entries longer than 128
    /// characters first (right-most first, only as many as needed), then from the right.
    /// Returns whether anything was dropped.
    pub fn truncate(&mut self, max: usize) -> bool {
        let mut dropped = false;
        while self.combined_len() > max && self.drop_last_where(|m| m.text.len() > LARGE_MEMBER_LEN)
        {
            dropped = true;
        }
        while self.combined_len() > max && self.drop_last_where(|_| true) {
            dropped = true;
        }
        dropped
    }

    /// The kept members joined by `,` (no whitespace).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.combined_len());
        for (i, m) in self.members().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m.text);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn ok(v: &str) -> TraceParent {
        parse_traceparent(v.as_bytes()).unwrap_or_else(|e| panic!("{v:?}: {e}"))
    }

    fn bad(v: &str) -> Invalid {
        match parse_traceparent(v.as_bytes()) {
            Ok(tp) => panic!("{v:?} accepted as {tp:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_traceparents() {
        let tp = ok(TP);
        assert_eq!(
            tp,
            TraceParent {
                version: 0,
                trace_id: 0x0af7651916cd43dd8448eb211c80319c,
                parent_id: 0xb7ad6b7169203331,
                flags: 1
            }
        );
        assert!(tp.sampled() && !tp.random());
        let tp = ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!tp.sampled());
        // Random flag (Level 2) and unknown flags are parsed.
        let tp = ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
        assert!(tp.sampled() && tp.random());
        assert_eq!(
            ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").flags,
            0xff
        );
        assert_eq!(
            ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-08").flags,
            0x08
        );
        // OWS around the value (w3c test suite: test_traceparent_ows_handling).
        for v in [
            " 00-12345678901234567890123456789012-1234567890123456-01",
            "\t00-12345678901234567890123456789012-1234567890123456-01",
            "00-12345678901234567890123456789012-1234567890123456-01 ",
            "00-12345678901234567890123456789012-1234567890123456-01\t",
            "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
        ] {
            assert_eq!(ok(v).trace_id, 0x12345678901234567890123456789012);
        }
    }

    #[test]
    fn future_versions() {
        // test_traceparent_version_0xcc
        let tp = ok("cc-12345678901234567890123456789012-1234567890123456-01");
        assert_eq!(
            (tp.version, tp.trace_id),
            (0xcc, 0x12345678901234567890123456789012)
        );
        let tp = ok(
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        );
        assert_eq!(tp.parent_id, 0x1234567890123456);
        let tp = ok("01-12345678901234567890123456789012-1234567890123456-03-");
        assert!(tp.random());
        bad("cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like");
        bad("cc-12345678901234567890123456789012-1234567890123456-0");
        bad("cc-12345678901234567890123456789012-1234567890123456-011");
        // Higher versions still need lowercase hex fields and non-zero ids.
        bad("cc-1234567890123456789012345678901A-1234567890123456-01");
        bad("cc-00000000000000000000000000000000-1234567890123456-01");
        bad("cc-12345678901234567890123456789012-0000000000000000-01-x");
    }

    /// Invalid inputs, from the spec and the w3c/trace-context test suite.
    #[test]
    fn invalid_traceparents() {
        let cases: &[(&str, &str)] = &[
            ("", "empty value"),
            ("   ", "empty value"),
            // version 00 with extra data
            (
                "00-12345678901234567890123456789012-1234567890123456-01.",
                "a version 00 value must be exactly 55 characters",
            ),
            (
                "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
                "a version 00 value must be exactly 55 characters",
            ),
            // version ff
            (
                "ff-12345678901234567890123456789012-1234567890123456-01",
                "version ff is forbidden",
            ),
            // version illegal characters / length / case
            (
                ".0-12345678901234567890123456789012-1234567890123456-01",
                "the version is not 2 lowercase hex digits followed by '-'",
            ),
            (
                "0.-12345678901234567890123456789012-1234567890123456-01",
                "the version is not 2 lowercase hex digits followed by '-'",
            ),
            (
                "000-12345678901234567890123456789012-1234567890123456-01",
                "the version is not 2 lowercase hex digits followed by '-'",
            ),
            (
                "0000-12345678901234567890123456789012-1234567890123456-01",
                "the version is not 2 lowercase hex digits followed by '-'",
            ),
            (
                "0-12345678901234567890123456789012-1234567890123456-01",
                "the version is not 2 lowercase hex digits followed by '-'",
            ),
            (
                "CC-12345678901234567890123456789012-1234567890123456-01",
                "the version is not 2 lowercase hex digits followed by '-'",
            ),
            // trace-id
            (
                "00-00000000000000000000000000000000-1234567890123456-01",
                "the trace-id is all zeroes",
            ),
            (
                "00-.2345678901234567890123456789012-1234567890123456-01",
                "the trace-id is not 32 lowercase hex digits followed by '-'",
            ),
            (
                "00-1234567890123456789012345678901.-1234567890123456-01",
                "the trace-id is not 32 lowercase hex digits followed by '-'",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "the trace-id is not 32 lowercase hex digits followed by '-'",
            ),
            (
                "00-123456789012345678901234567890123-1234567890123456-01",
                "a version 00 value must be exactly 55 characters",
            ),
            (
                "00-1234567890123456789012345678901-1234567890123456-01",
                "a version 00 value must be exactly 55 characters",
            ),
            // parent-id
            (
                "00-12345678901234567890123456789012-0000000000000000-01",
                "the parent-id is all zeroes",
            ),
            (
                "00-12345678901234567890123456789012-.234567890123456-01",
                "the parent-id is not 16 lowercase hex digits followed by '-'",
            ),
            (
                "00-12345678901234567890123456789012-123456789012345.-01",
                "the parent-id is not 16 lowercase hex digits followed by '-'",
            ),
            (
                "00-12345678901234567890123456789012-00F067AA0BA902B7-01",
                "the parent-id is not 16 lowercase hex digits followed by '-'",
            ),
            (
                "00-12345678901234567890123456789012-12345678901234567-01",
                "a version 00 value must be exactly 55 characters",
            ),
            (
                "00-12345678901234567890123456789012-123456789012345-01",
                "a version 00 value must be exactly 55 characters",
            ),
            // trace-flags
            (
                "00-12345678901234567890123456789012-1234567890123456-.0",
                "the trace-flags are not 2 lowercase hex digits",
            ),
            (
                "00-12345678901234567890123456789012-1234567890123456-0.",
                "the trace-flags are not 2 lowercase hex digits",
            ),
            (
                "00-12345678901234567890123456789012-1234567890123456-0A",
                "the trace-flags are not 2 lowercase hex digits",
            ),
            (
                "00-12345678901234567890123456789012-1234567890123456-001",
                "a version 00 value must be exactly 55 characters",
            ),
            (
                "00-12345678901234567890123456789012-1234567890123456-1",
                "a version 00 value must be exactly 55 characters",
            ),
            // wrong delimiters at the right length
            (
                "00_12345678901234567890123456789012-1234567890123456-01",
                "the version is not 2 lowercase hex digits followed by '-'",
            ),
            (
                "00-12345678901234567890123456789012_1234567890123456-01",
                "the trace-id is not 32 lowercase hex digits followed by '-'",
            ),
            (
                "00-12345678901234567890123456789012-1234567890123456_01",
                "the parent-id is not 16 lowercase hex digits followed by '-'",
            ),
            // inner whitespace, CR/LF, non-ASCII
            (
                "00-12345678901234567890123456789012-1234567890123456 -01",
                "a version 00 value must be exactly 55 characters",
            ),
            (
                "00-1234567890123456789012345678901\n-1234567890123456-01",
                "the trace-id is not 32 lowercase hex digits followed by '-'",
            ),
            (
                "00-1234567890123456789012345678901é-1234567890123456-01",
                "a version 00 value must be exactly 55 characters",
            ),
            // higher version, too short
            (
                "01-12345678901234567890123456789012-1234567890123456-1",
                "a higher-version value shorter than 55 characters",
            ),
        ];
        for (value, want) in cases {
            assert_eq!(bad(value).0, *want, "{value:?}");
        }
    }

    #[test]
    fn rendering() {
        let out = Outgoing {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            short_trace_id: false,
            span_id: 0xb7ad6b7169203331,
            parent_span_id: None,
            sampled: true,
            debug: false,
            random: false,
        };
        assert_eq!(render_traceparent(&out).as_bytes(), TP.as_bytes());
        let t = render_traceparent(&Outgoing {
            sampled: false,
            random: true,
            trace_id: 1,
            span_id: 2,
            ..out
        });
        assert_eq!(
            t.as_bytes(),
            b"00-00000000000000000000000000000001-0000000000000002-02"
        );
        assert_eq!(t.len(), TRACEPARENT_LEN);
        let t = render_traceparent(&Outgoing {
            random: true,
            trace_id: u128::MAX,
            span_id: u64::MAX,
            ..out
        });
        assert_eq!(
            t.as_bytes(),
            b"00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-03"
        );
        assert_eq!(ok(std::str::from_utf8(t.as_bytes()).unwrap()).flags, 3);
    }

    #[test]
    fn extracted_view() {
        let e = ok("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02").to_extracted();
        assert_eq!(e.sampling, Sampling::Deny);
        assert!(e.random && !e.short_trace_id && e.parent_span_id.is_none());
        assert_eq!(e.span_id, 0x00f067aa0ba902b7);
    }

    fn ts(fields: &[&str]) -> Result<Vec<String>, Invalid> {
        TraceState::parse(fields.iter().map(|f| f.as_bytes())).map(|s| {
            s.members()
                .map(|m| String::from_utf8(m.text().to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn valid_tracestates() {
        assert_eq!(
            ts(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).unwrap(),
            ["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]
        );
        // Several fields combine in order (test_tracestate_multiple_headers_different_keys).
        assert_eq!(
            ts(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).unwrap(),
            ["foo=1", "bar=2", "rojo=1", "congo=2", "baz=3"]
        );
        // Empty headers and members are allowed (test_tracestate_empty_header).
        assert_eq!(ts(&[""]).unwrap(), Vec::<String>::new());
        assert_eq!(ts(&["foo=1", ""]).unwrap(), ["foo=1"]);
        assert_eq!(ts(&["", "foo=1"]).unwrap(), ["foo=1"]);
        assert_eq!(ts(&[" , ,foo=1,, \t,"]).unwrap(), ["foo=1"]);
        // OWS (test_tracestate_ows_handling).
        assert_eq!(
            ts(&["foo=1 \t , \t bar=2, \t baz=3"]).unwrap(),
            ["foo=1", "bar=2", "baz=3"]
        );
        assert_eq!(ts(&["\t foo=1 \t"]).unwrap(), ["foo=1"]);
        // Leading spaces belong to the value.
        assert_eq!(ts(&["foo= 1"]).unwrap(), ["foo= 1"]);
        // Every allowed character (test_tracestate_all_allowed_characters).
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let value: String = (0x20u8..=0x7e)
            .filter(|b| *b != b',' && *b != b'=')
            .map(char::from)
            .collect();
        let member = format!("{key}={value}");
        assert_eq!(ts(&[&member]).unwrap(), vec![member]);
        let member = format!("{key}@a-z0-9_-*/={value}");
        assert_eq!(ts(&[&member]).unwrap(), vec![member]);
        // Level 2 keys: digits first, any number of '@'.
        assert_eq!(ts(&["0abc=1,a@b@c=2,foo@=3,x@@y=4"]).unwrap().len(), 4);
        // Limits: 256-character key and value, 32 members (test_tracestate_member_count_limit).
        let long_key = format!("{}=1", "z".repeat(256));
        assert_eq!(ts(&["foo=1", &long_key]).unwrap().len(), 2);
        let long_value = format!("foo={}", "v".repeat(256));
        assert_eq!(ts(&[&long_value]).unwrap().len(), 1);
        let members: Vec<String> = (1..=32).map(|i| format!("bar{i:02}={i:02}")).collect();
        assert_eq!(ts(&[&members.join(",")]).unwrap().len(), 32);
        assert_eq!(
            ts(&[&members[..10].join(","), &members[10..].join(",")])
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn invalid_tracestates() {
        let key_257 = format!("{}=1", "z".repeat(257));
        let value_257 = format!("foo={}", "v".repeat(257));
        let members_33: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
        let members_33 = members_33.join(",");
        let cases: &[(&[&str], &str)] = &[
            (&["foo"], "a list-member has no '='"),
            (&["foo=1,bar"], "a list-member has no '='"),
            (&["=1"], "a list-member has an empty key"),
            (&["foo="], "a list-member has an empty value"),
            // test_tracestate_value_illegal_characters
            (&["foo=,bar=3"], "a list-member has an empty value"),
            (
                &["foo=bar=baz"],
                "a value contains '=' or a character outside printable ASCII",
            ),
            // test_tracestate_key_illegal_characters
            (
                &["foo =1"],
                "a key contains a character outside a-z 0-9 _ - * / @",
            ),
            (
                &["FOO=1"],
                "a key does not start with a lowercase letter or digit",
            ),
            (
                &["fOO=1"],
                "a key contains a character outside a-z 0-9 _ - * / @",
            ),
            (
                &["foo.bar=1"],
                "a key contains a character outside a-z 0-9 _ - * / @",
            ),
            (
                &["@foo=1,bar=2"],
                "a key does not start with a lowercase letter or digit",
            ),
            (
                &["_foo=1"],
                "a key does not start with a lowercase letter or digit",
            ),
            // A duplicated key is not a reason to discard, but a malformed repeat still is.
            (&["foo=1,foo="], "a list-member has an empty value"),
            (
                &["foo=1", "foo=1,FOO=2"],
                "a key does not start with a lowercase letter or digit",
            ),
            // limits
            (&["foo=1", &key_257], "a key is longer than 256 characters"),
            (&[&value_257], "a value is longer than 256 characters"),
            (&[&members_33], "more than 32 list-members"),
            // control characters, non-ASCII, inner tab
            (
                &["foo=a\tb"],
                "a value contains '=' or a character outside printable ASCII",
            ),
            (
                &["foo=a\r\nx-evil: 1"],
                "a value contains '=' or a character outside printable ASCII",
            ),
            (
                &["foo=é"],
                "a value contains '=' or a character outside printable ASCII",
            ),
            (
                &["foo=\x7f"],
                "a value contains '=' or a character outside printable ASCII",
            ),
        ];
        for (fields, want) in cases {
            assert_eq!(ts(fields).unwrap_err().0, *want, "{fields:?}");
        }
    }

    #[test]
    fn duplicated_keys_keep_the_first_occurrence() {
        // test_tracestate_duplicated_keys (w3c/trace-context since PR #477): the header survives.
        let cases: &[(&[&str], &[&str])] = &[
            (&["foo=1,foo=1"], &["foo=1"]),
            (&["foo=1,foo=2"], &["foo=1"]),
            (&["foo=1", "foo=1"], &["foo=1"]),
            (&["foo=1", "foo=2"], &["foo=1"]),
            // Order kept, only the later repeat goes, whatever lies between.
            (&["foo=1,bar=2,foo=3"], &["foo=1", "bar=2"]),
            (
                &["rojo=1,congo=2", " rojo=3 ,baz=4,congo=5,rojo=6"],
                &["rojo=1", "congo=2", "baz=4"],
            ),
            // Keys are compared exactly: a prefix or a suffix is another key.
            (&["foo=1,foo@x=2,fo=3,foo=4"], &["foo=1", "foo@x=2", "fo=3"]),
        ];
        for (fields, want) in cases {
            assert_eq!(ts(fields).unwrap(), *want, "{fields:?}");
            let state = TraceState::parse(fields.iter().map(|f| f.as_bytes())).unwrap();
            assert!(state.dropped_duplicates(), "{fields:?}");
        }
        assert!(!parsed("foo=1,bar=2").dropped_duplicates());
        assert_eq!(parsed("a=1,b=2,a=3,b=4").render(), b"a=1,b=2");
        assert_eq!(parsed("a=1,b=2,a=3,b=4").combined_len(), "a=1,b=2".len());
        // The 32-member limit counts distinct keys: 32 of them plus repeats are valid...
        let distinct: Vec<String> = (1..=32).map(|i| format!("bar{i:02}={i:02}")).collect();
        let with_repeats = format!("{},bar01=x,bar32=y", distinct.join(","));
        assert_eq!(ts(&[&with_repeats]).unwrap(), distinct);
        let many_repeats = vec!["foo=1"; 1000].join(",");
        assert_eq!(ts(&[&many_repeats]).unwrap(), ["foo=1"]);
        // ...and a 33rd distinct key is still too many, repeats or not.
        let too_many = format!("{with_repeats},bar33=33");
        assert_eq!(ts(&[&too_many]).unwrap_err().0, "more than 32 list-members");
    }

    #[test]
    fn duplicates_are_dropped_before_truncation() {
        // 3 × 200-character entries, one of them a repeat: 602 bytes as sent, 401 once the
        // repeat is gone — within 512, so nothing is truncated.
        let a = format!("a={}", "x".repeat(198));
        let b = format!("b={}", "y".repeat(198));
        let a2 = format!("a={}", "z".repeat(198));
        let field = [a.as_str(), &a2, &b].join(",");
        let mut s = parsed(&field);
        assert_eq!(s.combined_len(), 401);
        assert!(!s.truncate(512));
        assert_eq!(s.render(), [a.as_str(), &b].join(",").into_bytes());
    }

    fn parsed(field: &str) -> TraceState<'_> {
        TraceState::parse([field.as_bytes()]).unwrap()
    }

    #[test]
    fn combined_length_and_rendering() {
        let s = parsed(" a=1 , bb=22,\t,c=3 ");
        assert_eq!(s.combined_len(), "a=1,bb=22,c=3".len());
        assert_eq!(s.render(), b"a=1,bb=22,c=3");
        assert_eq!(s.count(), 3);
        let s = parsed("");
        assert_eq!((s.combined_len(), s.count(), s.render()), (0, 0, vec![]));
    }

    #[test]
    fn truncation_drops_large_entries_first_then_from_the_right() {
        let large1 = format!("l1={}", "x".repeat(200));
        let large2 = format!("l2={}", "y".repeat(150));
        let small: Vec<String> = (0..20)
            .map(|i| format!("s{i:02}={}", "z".repeat(16)))
            .collect();
        // small1 large1 small2 large2 small...: 20 × 20 + 203 + 153 + 21 commas = 777 bytes.
        let mut parts = vec![
            small[0].clone(),
            large1.clone(),
            small[1].clone(),
            large2.clone(),
        ];
        parts.extend(small[2..].iter().cloned());
        let field = parts.join(",");
        let mut s = parsed(&field);
        assert_eq!(s.combined_len(), 777);
        // Dropping the right-most large entry (large2, 154 bytes with its comma) is enough.
        assert!(s.truncate(700));
        let rendered = String::from_utf8(s.render()).unwrap();
        assert!(rendered.contains(&large1) && !rendered.contains(&large2));
        assert_eq!(s.combined_len(), 623);
        // At 512 large1 goes too, and the 20 small entries (419 bytes) fit.
        let mut s = parsed(&field);
        assert!(s.truncate(512));
        assert_eq!(s.count(), 20);
        assert_eq!(s.combined_len(), 419);
        // At 100 only small entries from the left survive: 4 × 20 + 3 = 83.
        let mut s = parsed(&field);
        assert!(s.truncate(100));
        let kept: Vec<&[u8]> = s.members().map(|m| m.key()).collect();
        assert_eq!(kept, [&b"s00"[..], b"s01", b"s02", b"s03"]);
        // Nothing to do when it fits; a limit of 0 drops everything.
        let mut s = parsed(&field);
        assert!(!s.truncate(777));
        assert!(s.truncate(0));
        assert_eq!(s.count(), 0);
    }
}
