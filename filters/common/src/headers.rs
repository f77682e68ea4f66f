//! Header helpers: validating header names from configuration, and looking a header up in the
//! list that `get_http_request_headers_bytes()` returns while noticing duplicates (Envoy's single
//! value lookup, `proxy_get_header_map_value`, only ever returns the first copy).

use std::fmt;

/// Why a configured header name was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderNameError {
    /// The name is empty.
    Empty,
    /// The name starts with `:` (`:path`, `:authority`, ...); filters must not own those.
    PseudoHeader,
    /// The byte at this 0-based position is not an RFC 9110 `tchar`.
    InvalidCharacter { position: usize },
    /// A connection-level or message-framing header (see [`is_reserved_header`]).
    Reserved,
}

impl fmt::Display for HeaderNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("header name must not be empty"),
            Self::PseudoHeader => f.write_str("pseudo-headers (starting with ':') are not allowed"),
            Self::InvalidCharacter { position } => write!(
                f,
                "invalid character at position {position} of the header name \
                 (allowed: letters, digits and !#$%&'*+-.^_`|~)"
            ),
            Self::Reserved => f.write_str(
                "connection/framing headers (host, content-length, transfer-encoding, connection, \
                 keep-alive, proxy-connection, te, trailer, upgrade) are not allowed",
            ),
        }
    }
}

impl std::error::Error for HeaderNameError {}

/// RFC 9110 `tchar`: the characters allowed in a header field name.
pub const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// Headers that describe the connection or the message framing. A filter that sets a
/// configurable header must not be pointed at one of these. `name` must be lowercase.
pub fn is_reserved_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// Validate a header name taken from configuration and return it lowercased (hosts such as Envoy
/// store header keys lowercased). Rejects empty names, pseudo-headers, non-`tchar` characters and
/// [reserved](is_reserved_header) headers.
pub fn normalize_header_name(name: &str) -> Result<String, HeaderNameError> {
    if name.is_empty() {
        return Err(HeaderNameError::Empty);
    }
    if name.starts_with(':') {
        return Err(HeaderNameError::PseudoHeader);
    }
    if let Some(position) = name.bytes().position(|b| !is_tchar(b)) {
        return Err(HeaderNameError::InvalidCharacter { position });
    }
    let lower = name.to_ascii_lowercase();
    if is_reserved_header(&lower) {
        return Err(HeaderNameError::Reserved);
    }
    Ok(lower)
}

/// Whether a request's `:method` is the configured method `rule` (upper case, as configuration
/// loading stores it). Compared ASCII-case-insensitively: RFC 9110 makes methods case-sensitive,
/// but Envoy forwards an HTTP/2 `:method: post` as `post` and many upstream frameworks treat it
/// as `POST`, so a rule for `POST` must also catch `post` and `PoSt` — otherwise a token or rate
/// limit on writes is bypassed by changing the case. Every filter that matches methods uses this.
pub fn method_matches(rule: &str, request_method: &[u8]) -> bool {
    rule.as_bytes().eq_ignore_ascii_case(request_method)
}

/// The first value of `name` in a stage's view of the headers. Names are compared exactly:
/// hosts hand lower-case names and configurations are lower-cased when loaded. In Wasm a word
/// at a time ([`crate::bytes::eq`]), not with the byte-at-a-time `memcmp` `==` calls there.
pub fn first_value<'h>(headers: &[(&str, &'h [u8])], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| crate::bytes::eq(k.as_bytes(), name.as_bytes()))
        .map(|(_, v)| *v)
}

/// Whether request header `name` reaches a CGI-style upstream as the same variable as the header
/// `ours` that a filter sets, without being `ours` itself: CGI, WSGI and Rack turn `-` into `_`
/// (`x_user_id` and `x-user-id` both become `HTTP_X_USER_ID`), so with Envoy's default
/// `headers_with_underscores_action: ALLOW` a client-sent `x_user_id: admin` would sit beside
/// the filter's `x-user-id` and may win. Compared ASCII-case-insensitively, `-` ≡ `_`.
pub fn is_underscore_variant(name: &str, ours: &str) -> bool {
    name.len() == ours.len()
        && name != ours
        && name.bytes().zip(ours.bytes()).all(|(a, b)| {
            a.eq_ignore_ascii_case(&b) || matches!((a, b), (b'-' | b'_', b'-' | b'_'))
        })
}

/// The names a filter writes, for finding their [underscore variants](is_underscore_variant)
/// in a request: compiled once per configuration, with the lengths as bits (a variant has the
/// length of one of the names, so one test rules out nearly every request header; a length of
/// 63 and more shares bit 63, and such headers are compared name by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnNames {
    names: Vec<String>,
    lengths: u64,
}

/// A name length as one bit of a set of lengths (63 and more share bit 63).
pub(crate) fn length_bit(len: usize) -> u64 {
    1u64 << len.min(63)
}

impl OwnNames {
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let lengths = names.iter().fold(0, |bits, n| bits | length_bit(n.len()));
        Self { names, lengths }
    }

    /// The request header names that are underscore variants of one of these names, each
    /// once: the filter removes them along with the exact names. Allocates only when it finds
    /// one.
    pub fn underscore_variants<'h>(&self, headers: &[(&'h str, &[u8])]) -> Vec<&'h str> {
        let mut found = Vec::new();
        for (name, _) in headers {
            if self.lengths & length_bit(name.len()) != 0
                && !found.contains(name)
                && self.names.iter().any(|o| is_underscore_variant(name, o))
            {
                found.push(*name);
            }
        }
        found
    }
}

/// How often a header occurs in a header list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Occurrence<V> {
    /// Not present.
    Absent,
    /// Present exactly once, with this value.
    Once(V),
    /// Present this many (≥ 2) times.
    Repeated(usize),
}

/// Find header `name` in `headers` (compared ASCII-case-insensitively; Envoy already lowercases
/// keys) and say whether it occurs once, several times or not at all. Works on an owned list
/// (moves the value out, no copy) or a borrowed one (`list.iter().map(|(k, v)| (k, &v[..]))`).
pub fn single_value<K, V, I>(headers: I, name: &str) -> Occurrence<V>
where
    K: AsRef<str>,
    I: IntoIterator<Item = (K, V)>,
{
    let mut found = Occurrence::Absent;
    for (key, value) in headers {
        if key.as_ref().eq_ignore_ascii_case(name) {
            found = match found {
                Occurrence::Absent => Occurrence::Once(value),
                Occurrence::Once(_) => Occurrence::Repeated(2),
                Occurrence::Repeated(n) => Occurrence::Repeated(n.saturating_add(1)),
            };
        }
    }
    found
}

/// A header list borrowed from the host's serialised map: `(name, value)` pairs.
pub type HeaderPairs<'a> = Vec<(&'a str, &'a [u8])>;

/// Borrowed pairs from an owned header list (tests, and anything built natively).
pub fn borrow_pairs(list: &[(String, Vec<u8>)]) -> HeaderPairs<'_> {
    list.iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect()
}

/// A header name as `&str`, `None` if it is not UTF-8. Names are ASCII in practice (every HTTP
/// codec insists on it), and for a name of a few bytes `str::from_utf8` costs more in its set-up
/// than in its scan — most of the parse's work, per header, before this fast path.
pub(crate) fn header_name_str(name: &[u8]) -> Option<&str> {
    if all_ascii(name) {
        // SAFETY: ASCII bytes are valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(name) })
    } else {
        std::str::from_utf8(name).ok()
    }
}

/// Whether every byte of `bytes` is ASCII: eight at a time, OR-ed together, then the rest.
/// (`<[u8]>::is_ascii` checks a slice shorter than 16 bytes — most header names — byte by
/// byte; a native module checks every request header's name.)
fn all_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let (words, tail) = bytes.as_chunks::<8>();
    let words = words
        .iter()
        .fold(0u64, |all, w| all | u64::from_ne_bytes(*w));
    let tail = tail.iter().fold(0u8, |all, &b| all | b);
    words & HIGH == 0 && tail.is_ascii()
}

/// Parses a header map as the host serialises it for `proxy_get_header_map_pairs` (Proxy-Wasm
/// ABI): a little-endian u32 count, a (name length, value length) u32 pair per header, then
/// each name and each value followed by a NUL byte. The pairs borrow from `bytes`: one small
/// vector instead of the SDK's two allocations and copies per header (`get_map_bytes`), which
/// were most of a filter's per-request instructions. Names that are not UTF-8 (no HTTP codec
/// lets one through) are skipped; a malformed buffer gives `None`. An empty buffer is an empty
/// map.
pub fn parse_header_map(bytes: &[u8]) -> Option<HeaderPairs<'_>> {
    let mut pairs = Vec::with_capacity(header_count(bytes));
    for_each_header(bytes, |name, value| pairs.push((name, value)))?;
    Some(pairs)
}

/// How many headers a serialised map says it holds (bounded by what its size allows: a
/// capacity to reserve, not a promise).
pub fn header_count(bytes: &[u8]) -> usize {
    bytes.first_chunk::<4>().map_or(0, |b| {
        (u32::from_le_bytes(*b) as usize).min(bytes.len() / 8)
    })
}

/// The walk of [`parse_header_map`], for a caller that keeps the headers its own way: `header`
/// gets each (UTF-8 name, value) in order. `None` for a malformed buffer (some headers may have
/// been handed out by then).
pub fn for_each_header<'b>(
    bytes: &'b [u8],
    mut header: impl FnMut(&'b str, &'b [u8]),
) -> Option<()> {
    if bytes.is_empty() {
        return Some(());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0)?;
    let mut data = n.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    for i in 0..n {
        let name_len = u32_at(4 + i * 8)?;
        let value_len = u32_at(8 + i * 8)?;
        let name_end = data.checked_add(name_len)?;
        let name = bytes.get(data..name_end)?;
        let value_at = name_end.checked_add(1)?;
        let value_end = value_at.checked_add(value_len)?;
        let value = bytes.get(value_at..value_end)?;
        data = value_end.checked_add(1)?;
        if let Some(name) = header_name_str(name) {
            header(name, value);
        }
    }
    Some(())
}

/// The inverse of [`parse_header_map`]: `(name, value)` pairs in the host's serialisation.
pub fn serialize_header_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let pairs: Vec<(&str, &[u8])> = pairs.into_iter().collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in &pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in &pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_serialised_map_parses_back() {
        let pairs: Vec<(&str, &[u8])> = vec![(":path", b"/"), ("x", b""), ("x", b"2")];
        let bytes = serialize_header_map(pairs.iter().copied());
        assert_eq!(parse_header_map(&bytes), Some(pairs));
        assert_eq!(parse_header_map(&serialize_header_map([])), Some(vec![]));
    }

    #[test]
    fn underscore_variants_are_found_but_not_the_name_itself() {
        assert!(is_underscore_variant("x_user_id", "x-user-id"));
        assert!(is_underscore_variant("x_user-id", "x-user-id"));
        assert!(is_underscore_variant("X_USER_ID", "x-user-id"));
        assert!(is_underscore_variant("x-tenant-id", "x_tenant_id"));
        assert!(!is_underscore_variant("x-user-id", "x-user-id"));
        assert!(!is_underscore_variant("x_user_ids", "x-user-id"));
        assert!(!is_underscore_variant("x.user.id", "x-user-id"));
        let headers: Vec<(&str, &[u8])> = vec![
            ("x-user-id", b"alice"),
            ("x_user_id", b"admin"),
            ("x_user_role", b"root"),
            ("x_user_id", b"again"),
            ("x_other", b"1"),
        ];
        let ours = ["x-user-id", "x-user-role"];
        assert_eq!(
            OwnNames::new(ours).underscore_variants(&headers),
            ["x_user_id", "x_user_role"]
        );
        // Names of 63 characters and more share one length bit: compared name by name.
        let long = format!("x-{}", "a".repeat(70));
        let long_variant = long.replace('-', "_");
        let longer_variant = format!("{long_variant}_b");
        let headers: Vec<(&str, &[u8])> = vec![
            (longer_variant.as_str(), b"1"),
            (long_variant.as_str(), b"2"),
            ("x_user_role", b"3"),
        ];
        assert_eq!(
            OwnNames::new([long.as_str(), "x-user-id"]).underscore_variants(&headers),
            [long_variant.as_str()]
        );
    }

    #[test]
    fn all_ascii_agrees_with_the_standard_library() {
        let base: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..base.len() {
            let name = &base[..len];
            assert!(all_ascii(name));
            for at in 0..len {
                let mut high = name.to_vec();
                high[at] |= 0x80;
                assert_eq!(all_ascii(&high), high.is_ascii(), "len {len}, byte {at}");
                assert!(!all_ascii(&high));
            }
        }
    }

    #[test]
    fn methods_match_whatever_their_case() {
        assert!(method_matches("POST", b"POST"));
        assert!(method_matches("POST", b"post"));
        assert!(method_matches("POST", b"PoSt"));
        assert!(!method_matches("POST", b"PUT"));
        assert!(!method_matches("POST", b"POSTX"));
        assert!(!method_matches("POST", b""));
    }

    fn serialise(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn parses_the_hosts_serialised_header_map_without_copies() {
        let bytes = serialise(&[
            (b":path", b"/a"),
            (b"x-empty", b""),
            (b"x-bin", b"\xff\x00\x01"),
            (b"x-dup", b"1"),
            (b"x-dup", b"2"),
        ]);
        let pairs = parse_header_map(&bytes).unwrap();
        assert_eq!(
            pairs,
            vec![
                (":path", &b"/a"[..]),
                ("x-empty", &b""[..]),
                ("x-bin", &b"\xff\x00\x01"[..]),
                ("x-dup", &b"1"[..]),
                ("x-dup", &b"2"[..]),
            ]
        );
        assert_eq!(parse_header_map(&[]).unwrap(), vec![]);
        assert_eq!(parse_header_map(&serialise(&[])).unwrap(), vec![]);
    }

    #[test]
    fn skips_non_utf8_names_and_rejects_malformed_maps() {
        let bytes = serialise(&[(b"x-\xff", b"v"), (b"ok", b"1")]);
        assert_eq!(parse_header_map(&bytes).unwrap(), vec![("ok", &b"1"[..])]);
        // Not ASCII but UTF-8: kept (the slow path of the name check).
        let bytes = serialise(&[("x-\u{e9}".as_bytes(), b"v")]);
        assert_eq!(
            parse_header_map(&bytes).unwrap(),
            vec![("x-\u{e9}", &b"v"[..])]
        );
        let good = serialise(&[(b"name", b"value")]);
        for cut in 1..good.len() - 1 {
            assert_eq!(parse_header_map(&good[..cut]), None, "cut at {cut}");
        }
        // A count whose size table cannot fit, and one that overflows.
        assert_eq!(parse_header_map(&[9, 0, 0, 0, 1, 0, 0, 0]), None);
        assert_eq!(parse_header_map(&[0xff, 0xff, 0xff, 0xff]), None);
    }
    #[test]
    fn normalizes_valid_names() {
        assert_eq!(
            normalize_header_name("X-Request-ID").unwrap(),
            "x-request-id"
        );
        assert_eq!(normalize_header_name("x_b3.id~1").unwrap(), "x_b3.id~1");
        assert_eq!(
            normalize_header_name("!#$%&'*+-.^_`|~0aZ").unwrap(),
            "!#$%&'*+-.^_`|~0az"
        );
    }

    #[test]
    fn rejects_bad_names() {
        use HeaderNameError::*;
        let cases: &[(&str, HeaderNameError)] = &[
            ("", Empty),
            (":path", PseudoHeader),
            (":authority", PseudoHeader),
            ("x request", InvalidCharacter { position: 1 }),
            ("x-id:", InvalidCharacter { position: 4 }),
            ("x-id\r\n", InvalidCharacter { position: 4 }),
            ("\"q\"", InvalidCharacter { position: 0 }),
            ("x-é", InvalidCharacter { position: 2 }),
            ("a(b)", InvalidCharacter { position: 1 }),
            ("Host", Reserved),
            ("content-length", Reserved),
            ("Transfer-Encoding", Reserved),
            ("connection", Reserved),
            ("te", Reserved),
        ];
        for (name, want) in cases {
            assert_eq!(normalize_header_name(name).as_ref(), Err(want), "{name:?}");
        }
    }

    #[test]
    fn errors_render_without_echoing_the_name() {
        let msg = normalize_header_name("bad\nname").unwrap_err().to_string();
        assert!(msg.contains("position 3"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    fn list(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn single_value_owned() {
        let h = list(&[(":path", "/"), ("x-request-id", "abc"), ("accept", "*/*")]);
        assert_eq!(
            single_value(h, "x-request-id"),
            Occurrence::Once(b"abc".to_vec())
        );
    }

    #[test]
    fn single_value_absent_and_repeated() {
        let h = list(&[("a", "1"), ("X-Id", "1"), ("x-id", "2"), ("x-id", "")]);
        assert_eq!(
            single_value(h.iter().map(|(k, v)| (k, &v[..])), "b"),
            Occurrence::Absent
        );
        assert_eq!(
            single_value(h.iter().map(|(k, v)| (k, &v[..])), "x-id"),
            Occurrence::Repeated(3)
        );
        assert_eq!(
            single_value(h.iter().map(|(k, v)| (k, &v[..])), "a"),
            Occurrence::Once(&b"1"[..])
        );
        let empty: Vec<(String, Vec<u8>)> = Vec::new();
        assert_eq!(single_value(empty, "a"), Occurrence::Absent);
    }
}
