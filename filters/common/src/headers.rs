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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

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
