//! Finding the token in a request (headers, query parameters, cookies) and splitting it into
//! its verified-later parts: the JOSE header (`alg`, `kid`), the payload claims, the signing
//! input and the signature. Nothing here trusts the token; [`crate::verify`] does the rest.

use serde::Deserialize;

use crate::config::{MAX_TOKEN_LEN, Settings, Source};
use crate::jwk::{Alg, b64url_decode};

/// Where a token was found (for removing it before the upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    /// Index into [`Settings::sources`].
    pub source: usize,
    /// Within [`MAX_TOKEN_LEN`], but not yet checked to be token text (nor UTF-8): [`text`]
    /// checks it. The verified-token cache compares these bytes with tokens that were checked
    /// when they were verified, so a cache hit skips the check (on the cached path it was the
    /// filter's largest piece of work); anything else checks it first.
    pub token: &'a [u8],
}

/// The answer to a value that is not token text (base64url and dots).
pub const NOT_COMPACT_JWS: &str = "token is not a compact JWS";

/// `token` as text if it is token text: base64url and the two dots ([`NOT_COMPACT_JWS`] if
/// not).
pub fn text(token: &[u8]) -> Result<&str, &'static str> {
    if is_token_text(token) {
        // SAFETY: `is_token_text` admits ASCII bytes only, and ASCII is UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(token) })
    } else {
        Err(NOT_COMPACT_JWS)
    }
}

/// The [`Extracted::Invalid`] reason for a request with more than one token (RFC 6750
/// `invalid_request`, 400; the other reasons are `invalid_token`, 401).
pub const MULTIPLE_TOKENS: &str = "more than one token in the request";

/// The outcome of looking for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted<'a> {
    None,
    One(Found<'a>),
    /// More than one token (different values, or the same source repeated), or a token
    /// above [`MAX_TOKEN_LEN`], or a source present but not in the expected form.
    Invalid(&'static str),
}

/// The query string of a `:path` (after `?`, before `#`).
pub fn query_of(path: &[u8]) -> &[u8] {
    match path.iter().position(|&b| b == b'?') {
        None => &[],
        Some(i) => {
            let rest = &path[i + 1..];
            let end = rest.iter().position(|&b| b == b'#').unwrap_or(rest.len());
            &rest[..end]
        }
    }
}

/// The path without the query.
pub fn path_only(path: &[u8]) -> &[u8] {
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    &path[..end]
}

fn strip_prefix_ci<'a>(value: &'a [u8], prefix: &str) -> Option<&'a [u8]> {
    let p = prefix.as_bytes();
    if value.len() >= p.len() && value[..p.len()].eq_ignore_ascii_case(p) {
        Some(&value[p.len()..])
    } else {
        None
    }
}

/// `TOKEN_CHARS[b]`: whether byte `b` may appear in a compact JWS (base64url and `.`).
static TOKEN_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
        i += 1;
    }
    t
};

/// Token characters: base64url and the two dots. Anything else (spaces, `%`-escapes, quotes)
/// means the value is not a compact JWS. This runs over every byte of every token, cached or
/// not — on the cached path it was a third of the filter's own work — so it checks eight bytes
/// per step ([`word_is_token_text`]) and only the tail byte by byte.
fn is_token_text(b: &[u8]) -> bool {
    if b.is_empty() {
        return false;
    }
    let mut words = b.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        if !word_is_token_text(u64::from_le_bytes(w)) {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&c| TOKEN_CHARS[usize::from(c)])
}

/// Whether all eight bytes of `w` are token characters (SWAR). A byte with its high bit set
/// fails at once; for the others, `x + (0x80 - lo)` has its high bit set iff `x >= lo`, and
/// `x + (0x7f - hi)` iff `x > hi`, and neither sum carries into the next byte (both stay below
/// 0x100), so each range test is two additions and a mask for all eight bytes.
fn word_is_token_text(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if w & HIGH != 0 {
        return false;
    }
    let in_range = |lo: u8, hi: u8| {
        w.wrapping_add(ONES * u64::from(0x80 - lo)) & !w.wrapping_add(ONES * u64::from(0x7f - hi))
    };
    let ok = in_range(b'0', b'9')
        | in_range(b'A', b'Z')
        | in_range(b'a', b'z')
        | in_range(b'-', b'.')
        | in_range(b'_', b'_');
    ok & HIGH == HIGH
}

/// Look for the token in every configured source. `headers` is the request header list; the
/// `:path` in it supplies the query. At most one token (one source, once) is accepted.
pub fn extract<'a, K: AsRef<str>, V: AsRef<[u8]>>(
    settings: &Settings,
    headers: &'a [(K, V)],
) -> Extracted<'a> {
    let mut found: Option<Found<'a>> = None;
    let mut record = |source: usize, raw: &'a [u8]| -> Result<(), &'static str> {
        // The answers are those of checking each token's text as it is found (the first
        // failure wins); only the text check of a lone token is left to the caller.
        if let Some(first) = &found {
            text(first.token)?;
        }
        if raw.len() > MAX_TOKEN_LEN {
            return Err("token too large");
        }
        if found.is_some() {
            text(raw)?;
            return Err(MULTIPLE_TOKENS);
        }
        found = Some(Found { source, token: raw });
        Ok(())
    };
    let mut path: Option<&'a [u8]> = None;
    for (idx, src) in settings.sources.iter().enumerate() {
        let result = match src {
            Source::Header { name, prefix } => {
                let mut r = Ok(());
                for (k, v) in headers {
                    if k.as_ref().eq_ignore_ascii_case(name) {
                        match strip_prefix_ci(v.as_ref(), prefix) {
                            // A header with a different scheme (e.g. `Basic`) is not ours.
                            None => continue,
                            Some(tok) => {
                                r = record(idx, tok.trim_ascii());
                                if r.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
                r
            }
            Source::Param(name) => {
                let p = *path.get_or_insert_with(|| {
                    headers
                        .iter()
                        .find(|(k, _)| k.as_ref() == ":path")
                        .map_or(&[][..], |(_, v)| v.as_ref())
                });
                let mut r = Ok(());
                for pair in query_of(p).split(|&b| b == b'&') {
                    let (k, v) = split_once(pair, b'=');
                    if k == name.as_bytes() && !v.is_empty() {
                        r = record(idx, v);
                        if r.is_err() {
                            break;
                        }
                    }
                }
                r
            }
            Source::Cookie(name) => {
                let mut r = Ok(());
                'outer: for (k, v) in headers {
                    if k.as_ref() != "cookie" {
                        continue;
                    }
                    for pair in v.as_ref().split(|&b| b == b';') {
                        let (ck, cv) = split_once(pair.trim_ascii(), b'=');
                        if ck == name.as_bytes() && !cv.is_empty() {
                            r = record(idx, cv);
                            if r.is_err() {
                                break 'outer;
                            }
                        }
                    }
                }
                r
            }
        };
        if let Err(why) = result {
            return Extracted::Invalid(why);
        }
    }
    match found {
        None => Extracted::None,
        Some(f) => Extracted::One(f),
    }
}

fn split_once(s: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == sep) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

/// `:path` with every `name=...` parameter removed (for `forward: false` with a query source).
pub fn remove_param(path: &[u8], name: &str) -> Vec<u8> {
    let Some(q) = path.iter().position(|&b| b == b'?') else {
        return path.to_vec();
    };
    let (base, rest) = (&path[..q], &path[q + 1..]);
    let frag_at = rest.iter().position(|&b| b == b'#').unwrap_or(rest.len());
    let (query, frag) = (&rest[..frag_at], &rest[frag_at..]);
    let mut out = base.to_vec();
    let mut first = true;
    for pair in query.split(|&b| b == b'&') {
        if pair.is_empty() || split_once(pair, b'=').0 == name.as_bytes() {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        first = false;
        out.extend_from_slice(pair);
    }
    out.extend_from_slice(frag);
    out
}

/// A `cookie` header value with the cookie `name` removed; `None` when nothing is left.
pub fn remove_cookie(value: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    for pair in value.split(|&b| b == b';') {
        let t = pair.trim_ascii();
        if t.is_empty() || split_once(t, b'=').0 == name.as_bytes() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(t);
    }
    (!out.is_empty()).then_some(out)
}

/// Why a token could not be parsed (reported as `malformed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    Structure,
    Header,
    UnsupportedAlg,
    Critical,
    Payload,
}

impl ParseError {
    pub fn describe(self) -> &'static str {
        match self {
            ParseError::Structure => "the token is not a compact JWS",
            ParseError::Header => "the token header is invalid",
            ParseError::UnsupportedAlg => "the token algorithm is not supported",
            ParseError::Critical => "the token has critical header parameters",
            ParseError::Payload => "the token payload is not a JSON object",
        }
    }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
    #[serde(default)]
    typ: Option<String>,
}

/// `typ`, when present, must say JWT (`JWT`, or an explicit type such as `at+jwt`), so the
/// native and the jwt-simple paths accept the same tokens.
fn typ_ok(typ: Option<&str>) -> bool {
    typ.is_none_or(|t| {
        t.eq_ignore_ascii_case("jwt")
            || (t.len() > 4
                && t.get(t.len() - 4..)
                    .is_some_and(|s| s.eq_ignore_ascii_case("+jwt")))
    })
}

/// A token split and decoded, nothing verified yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `header.payload`: what the signature covers.
    pub signing_input: &'a str,
    /// The base64url payload segment (forwarded as is by `forward_payload_header`).
    pub payload_b64: &'a str,
    pub signature: Vec<u8>,
}

/// Split and decode a compact JWS. `alg: none` and unknown algorithms fail here.
pub fn parse(token: &str) -> Result<Parsed<'_>, ParseError> {
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Structure);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(ParseError::Structure);
    }
    let header_bytes = b64url_decode(h).ok_or(ParseError::Header)?;
    let header: JoseHeader =
        serde_json::from_slice(&header_bytes).map_err(|_| ParseError::Header)?;
    let alg = Alg::parse(&header.alg).ok_or(ParseError::UnsupportedAlg)?;
    if !typ_ok(header.typ.as_deref()) {
        return Err(ParseError::Header);
    }
    if header.crit.is_some() {
        return Err(ParseError::Critical);
    }
    let payload_bytes = b64url_decode(p).ok_or(ParseError::Payload)?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&payload_bytes).map_err(|_| ParseError::Payload)?;
    let signature = b64url_decode(s).ok_or(ParseError::Structure)?;
    Ok(Parsed {
        alg,
        kid: header.kid,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn token_text_check_agrees_with_the_table_for_every_byte_at_every_position() {
        // 17 bytes: two whole words and a one-byte tail, so every lane and the tail are hit.
        for len in [1usize, 7, 8, 9, 16, 17] {
            for pos in 0..len {
                for byte in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    b[pos] = byte;
                    assert_eq!(
                        is_token_text(&b),
                        TOKEN_CHARS[usize::from(byte)],
                        "byte {byte:#04x} at {pos} of {len}"
                    );
                }
            }
        }
        assert!(!is_token_text(b""));
        assert!(is_token_text(b"eyJhbGciOiJFUzI1NiJ9.e30.sig-_"));
    }
    use crate::config::parse_settings;

    fn settings() -> Settings {
        let v = serde_json::json!({
            "providers": {"p": {"issuer": "i",
                "jwks": {"keys": [{"kty":"oct","k":crate::config::tests::HS_KEY}]},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "},
                                 {"name": "x-token"}],
                "from_params": ["access_token"], "from_cookies": ["jwt"]}},
        });
        parse_settings(Some(&serde_json::to_vec(&v).unwrap())).unwrap()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn finds_the_token_in_each_source() {
        let s = settings();
        let cases: &[(&[(&str, &str)], usize)] = &[
            (&[("authorization", "Bearer a.b.c")], 0),
            (&[("authorization", "bearer   a.b.c ")], 0),
            (&[("x-token", "a.b.c")], 1),
            (&[(":path", "/x?y=1&access_token=a.b.c#f")], 2),
            (&[("cookie", "a=1; jwt=a.b.c; z=2")], 3),
        ];
        for (headers, source) in cases {
            let list = h(headers);
            assert_eq!(
                extract(&s, &list),
                Extracted::One(Found {
                    source: *source,
                    token: b"a.b.c"
                }),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn missing_and_other_schemes_are_no_token() {
        let s = settings();
        for headers in [
            &[(":path", "/x?access_token=")][..],
            &[("authorization", "Basic dXNlcjpwYXNz")],
            &[("cookie", "other=a.b.c")],
            &[],
        ] {
            assert_eq!(extract(&s, &h(headers)), Extracted::None, "{headers:?}");
        }
    }

    #[test]
    fn two_tokens_or_oversized_tokens_are_invalid() {
        let s = settings();
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        for headers in [
            vec![("authorization", "Bearer a.b.c"), ("x-token", "a.b.c")],
            vec![
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer d.e.f"),
            ],
            vec![(":path", "/?access_token=a.b.c&access_token=a.b.c")],
            vec![("authorization", big.as_str())],
        ] {
            assert!(
                matches!(extract(&s, &h(&headers)), Extracted::Invalid(_)),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn a_lone_token_is_checked_by_the_caller_and_a_bad_one_among_two_is_not_text() {
        let s = settings();
        // One token: found, its text left to `text` (a cached token skips it).
        for headers in [
            vec![("authorization", "Bearer a b")],
            vec![("cookie", "jwt=\"a.b.c\"")],
        ] {
            let list = h(&headers);
            let Extracted::One(found) = extract(&s, &list) else {
                panic!("{headers:?}");
            };
            assert_eq!(text(found.token), Err(NOT_COMPACT_JWS), "{headers:?}");
        }
        assert_eq!(text(b"a.b-_.C9"), Ok("a.b-_.C9"));
        // Two tokens: the first bad text wins over "more than one token", as when each token
        // was checked as it was found.
        for headers in [
            vec![("authorization", "Bearer a b"), ("x-token", "a.b.c")],
            vec![("authorization", "Bearer a.b.c"), ("x-token", "a b")],
        ] {
            assert_eq!(
                extract(&s, &h(&headers)),
                Extracted::Invalid(NOT_COMPACT_JWS),
                "{headers:?}"
            );
        }
        // Not UTF-8 is not text: alone, found and refused by `text`; beside another token,
        // refused at once.
        let raw: Vec<(String, Vec<u8>)> =
            vec![("authorization".into(), b"Bearer a.\xff.c".to_vec())];
        let Extracted::One(found) = extract(&s, &raw) else {
            panic!("one token");
        };
        assert_eq!(text(found.token), Err(NOT_COMPACT_JWS));
        let mut two = raw.clone();
        two.push(("x-token".into(), b"a.b.c".to_vec()));
        assert_eq!(extract(&s, &two), Extracted::Invalid(NOT_COMPACT_JWS));
    }

    #[test]
    fn removes_params_and_cookies() {
        assert_eq!(remove_param(b"/a?x=1&t=2&y=3", "t"), b"/a?x=1&y=3");
        assert_eq!(remove_param(b"/a?t=2", "t"), b"/a");
        assert_eq!(remove_param(b"/a?t=2&x#f", "t"), b"/a?x#f");
        assert_eq!(remove_param(b"/a", "t"), b"/a");
        assert_eq!(
            remove_cookie(b"a=1; jwt=x;b=2", "jwt").unwrap(),
            b"a=1; b=2"
        );
        assert_eq!(remove_cookie(b"jwt=x", "jwt"), None);
    }

    fn b64(s: &str) -> String {
        use ct_codecs::{Base64UrlSafeNoPadding, Encoder};
        Base64UrlSafeNoPadding::encode_to_string(s).unwrap()
    }

    #[test]
    fn parses_and_rejects_bad_structure() {
        let tok = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#),
            b64(r#"{"sub":"u"}"#),
            b64("sig")
        );
        let p = parse(&tok).unwrap();
        assert_eq!(p.alg, Alg::RS256);
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims["sub"], "u");
        assert_eq!(p.signature, b"sig");
        assert_eq!(p.signing_input.matches('.').count(), 1);

        let none = format!("{}.{}.{}", b64(r#"{"alg":"none"}"#), b64("{}"), b64("x"));
        assert_eq!(parse(&none).unwrap_err(), ParseError::UnsupportedAlg);
        let none_empty_sig = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(parse(&none_empty_sig).unwrap_err(), ParseError::Structure);
        let crit = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"HS256","crit":["b64"]}"#),
            b64("{}"),
            b64("x")
        );
        assert_eq!(parse(&crit).unwrap_err(), ParseError::Critical);
        for (typ, ok) in [
            ("JWT", true),
            ("jwt", true),
            ("at+jwt", true),
            ("JOSE", false),
            ("+jwt", false),
        ] {
            let t = format!(
                "{}.{}.{}",
                b64(&format!(r#"{{"alg":"HS256","typ":"{typ}"}}"#)),
                b64("{}"),
                b64("x")
            );
            assert_eq!(parse(&t).is_ok(), ok, "{typ}");
        }
        let arr = format!("{}.{}.{}", b64(r#"{"alg":"HS256"}"#), b64("[1]"), b64("x"));
        assert_eq!(parse(&arr).unwrap_err(), ParseError::Payload);
        for bad in ["a.b", "a.b.c.d", "..", "!!.a.b"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
