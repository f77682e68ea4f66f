//! Where a tenant id can be found in a request, and how requests are normalised before looking:
//! host patterns (`{tenant}.api.example.com`), path prefixes (`/t/{tenant}/`), query parameters,
//! exact/wildcard host rules for `allowed_hosts`, and tenant-id syntax. Pure, no host calls.
//!
//! **Hosts** (`:authority`): the port is dropped, ASCII is compared case-insensitively and one
//! trailing dot (the DNS root) is ignored, so `ACME.api.example.com.:8443` matches
//! `{tenant}.api.example.com` with tenant `acme`. IPv6 literals never match. Patterns must be
//! ASCII: internationalised names are configured and matched in their punycode (`xn--…`) form,
//! which is what HTTP clients send; a raw UTF-8 host never matches an ASCII pattern.
//!
//! **Paths** (`:path`) are matched *decode-then-validate*: each segment of the request path is
//! percent-decoded before it is compared with the pattern's literal segments, and the tenant
//! segment is decoded before it is looked up. So `/t/%61cme/` resolves to `acme`, exactly what an
//! upstream that decodes the path would see; it cannot be used to slip past the gateway's
//! decision (as "no tenant" or as a different tenant). A decoded tenant containing `/`, `%` or
//! anything outside the tenant-id syntax is simply not a configured tenant (→ unknown). A
//! malformed escape (`%zz`) in a literal segment means "no match"; in the tenant segment the raw
//! text is used, which is never a valid tenant id (→ unknown).

use std::borrow::Cow;

/// Longest tenant id.
pub const MAX_TENANT_ID_LEN: usize = 63;

/// `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_valid_tenant_id(id: &[u8]) -> bool {
    match id.split_first() {
        None => false,
        Some((first, rest)) => {
            id.len() <= MAX_TENANT_ID_LEN
                && (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
    }
}

const fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode `raw` (RFC 3986 `%HH`). Borrowed when there is nothing to decode; `None` when
/// an escape is malformed (`%`, `%4`, `%zz`). `+` is left alone.
pub fn percent_decode(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !raw.contains(&b'%') {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            match tail {
                [h, l, after @ ..] => {
                    let (h, l) = (hex_value(*h)?, hex_value(*l)?);
                    out.push(h << 4 | l);
                    rest = after;
                }
                _ => return None,
            }
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Some(Cow::Owned(out))
}

// ---------------------------------------------------------------------------------------------
// Hosts

/// The host of an `:authority` value, normalised: port removed, one trailing dot removed, ASCII
/// lowercased. `None` for an IPv6 literal, an empty host or a host with an empty label.
pub fn normalize_host(authority: &[u8]) -> Option<Cow<'_, [u8]>> {
    if authority.first() == Some(&b'[') {
        return None;
    }
    let host = match authority.iter().rposition(|b| *b == b':') {
        Some(colon) => {
            let (host, port) = authority.split_at(colon);
            if !port.iter().skip(1).all(u8::is_ascii_digit) {
                return None;
            }
            host
        }
        None => authority,
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    // One pass: no empty label (the host itself empty, a leading dot, two dots in a row, or
    // a trailing dot after the one stripped), and whether anything is upper case.
    let (mut after_dot, mut upper) = (true, false);
    for &b in host {
        if b == b'.' {
            if after_dot {
                return None;
            }
            after_dot = true;
        } else {
            after_dot = false;
            upper |= b.is_ascii_uppercase();
        }
    }
    if after_dot {
        return None;
    }
    // Hosts usually arrive in lower case: borrowed then, no copy.
    Some(if upper {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// Why a host pattern or host rule from the configuration was rejected.
fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label (two dots in a row, or a leading dot)".into());
    }
    if label.len() > 63 {
        return Err(format!("label of {} characters (at most 63)", label.len()));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "label {label:?} has a character outside a-z 0-9 - _ \
             (internationalised names must be written in punycode, xn--…)"
        ));
    }
    Ok(())
}

fn config_host_labels(pattern: &str) -> Result<Vec<String>, String> {
    if !pattern.is_ascii() {
        return Err("non-ASCII host: write internationalised names in punycode (xn--…)".into());
    }
    if pattern.contains(':') {
        return Err("a host pattern has no port (ports are ignored when matching)".into());
    }
    let lower = pattern.to_ascii_lowercase();
    let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
    Ok(trimmed.split('.').map(str::to_owned).collect())
}

/// A host pattern with exactly one whole label `{tenant}`: `{tenant}.api.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    labels: Vec<String>,
    tenant_label: usize,
}

impl HostPattern {
    pub const PLACEHOLDER: &'static str = "{tenant}";

    /// Compile a pattern from the configuration (case-insensitive, trailing dot ignored).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let labels = config_host_labels(pattern)?;
        let mut tenant_label = None;
        for (i, label) in labels.iter().enumerate() {
            if label == Self::PLACEHOLDER {
                if tenant_label.is_some() {
                    return Err("`{tenant}` must occur exactly once".into());
                }
                tenant_label = Some(i);
            } else if label.contains('{') || label.contains('}') {
                return Err("`{tenant}` must be a whole label, e.g. {tenant}.example.com".into());
            } else {
                check_label(label)?;
            }
        }
        let tenant_label =
            tenant_label.ok_or_else(|| "the pattern needs one `{tenant}` label".to_owned())?;
        Ok(Self {
            labels,
            tenant_label,
        })
    }

    /// The tenant label of a [normalised](normalize_host) host, if the host matches.
    pub fn matches<'h>(&self, host: &'h [u8]) -> Option<&'h [u8]> {
        let mut found = None;
        let mut labels = host.split(|b| *b == b'.');
        for (i, want) in self.labels.iter().enumerate() {
            let label = labels.next()?;
            if i == self.tenant_label {
                found = Some(label);
            } else if !gatewasm_common::bytes::eq(label, want.as_bytes()) {
                return None;
            }
        }
        if labels.next().is_some() {
            return None;
        }
        found.filter(|label| !label.is_empty())
    }
}

/// An `allowed_hosts` entry: an exact host, or `*.suffix` (one or more labels before `suffix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    Exact(String),
    /// Stored with its leading dot: `.example.com`.
    Wildcard(String),
}

impl HostRule {
    pub fn parse(rule: &str) -> Result<Self, String> {
        let (wildcard, rest) = match rule.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, rule),
        };
        let labels = config_host_labels(rest)?;
        for label in &labels {
            check_label(label)?;
        }
        let host = labels.join(".");
        Ok(if wildcard {
            Self::Wildcard(format!(".{host}"))
        } else {
            Self::Exact(host)
        })
    }

    /// Does a [normalised](normalize_host) host satisfy this rule?
    pub fn allows(&self, host: &[u8]) -> bool {
        match self {
            Self::Exact(want) => host == want.as_bytes(),
            Self::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_bytes())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// A path prefix whose last segment is `{tenant}`: `/t/{tenant}/` (the trailing slash is
/// optional and means the same: the tenant segment ends at `/`, `?`, `#` or the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The literal segments before `{tenant}` (no `%`; matched byte for byte, not decoded).
    literals: Vec<String>,
}

/// A request path that matched a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMatch<'p> {
    /// The tenant segment, percent-decoded (the raw text when its escapes are malformed).
    pub tenant: Cow<'p, [u8]>,
    /// Byte offset in `:path` where the part after the tenant segment starts (at a `/`, `?`,
    /// `#`, or the end).
    pub rest: usize,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let body = pattern
            .strip_prefix('/')
            .ok_or_else(|| "must start with '/'".to_owned())?;
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segments: Vec<&str> = body.split('/').collect();
        if segments.pop() != Some(HostPattern::PLACEHOLDER) {
            return Err("the last segment must be `{tenant}`, e.g. /t/{tenant}/".into());
        }
        let mut literals = Vec::with_capacity(segments.len());
        for segment in segments {
            if segment.is_empty() {
                return Err("empty segment ('//')".into());
            }
            if !segment.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                            | b':'
                            | b'@'
                    )
            }) || segment == "."
                || segment == ".."
            {
                return Err(format!(
                    "segment {segment:?}: only unescaped path characters are allowed \
                     (no '%', '{{', '}}', '?', '#', '.' or '..' segments)"
                ));
            }
            literals.push(segment.to_owned());
        }
        Ok(Self { literals })
    }

    /// Match a request's `:path`.
    pub fn matches<'p>(&self, path: &'p [u8]) -> Option<PathMatch<'p>> {
        let end = path
            .iter()
            .position(|b| *b == b'?' || *b == b'#')
            .unwrap_or(path.len());
        let path_only = path.get(..end)?;
        let mut pos = 1usize;
        if path_only.first() != Some(&b'/') {
            return None;
        }
        for literal in &self.literals {
            let rest = path_only.get(pos..)?;
            let slash = rest.iter().position(|b| *b == b'/')?;
            let segment = rest.get(..slash)?;
            // Literal segments match as written, never decoded: the other path matchers of a
            // chain (jwt-to-header's rules, rate-limit's path_prefix, Envoy's route table without
            // `normalize_path`) compare the raw path, and a prefix only this filter recognised
            // (`/%74/acme/…`) would be stripped here after they let it pass as something else.
            if segment != literal.as_bytes() {
                return None;
            }
            pos = pos.checked_add(slash)?.checked_add(1)?;
        }
        let rest = path_only.get(pos..)?;
        let len = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
        let raw = rest.get(..len)?;
        if raw.is_empty() {
            return None;
        }
        let tenant = percent_decode(raw).unwrap_or(Cow::Borrowed(raw));
        Some(PathMatch {
            tenant,
            rest: pos.checked_add(len)?,
        })
    }
}

/// The `:path` with the matched prefix removed: `/t/acme/a?b` → `/a?b`, `/t/acme` → `/`.
pub fn strip_prefix(path: &[u8], rest: usize) -> Vec<u8> {
    let tail = path.get(rest..).unwrap_or_default();
    let mut out = Vec::with_capacity(tail.len().saturating_add(1));
    if tail.first() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(tail);
    out
}

// ---------------------------------------------------------------------------------------------
// Query

/// A query parameter's values from `:path`: every `name=value` whose (decoded) name is `name`,
/// values percent-decoded (raw text when malformed). Empty values are skipped.
pub fn query_values<'p>(path: &'p [u8], name: &'p str) -> impl Iterator<Item = Cow<'p, [u8]>> {
    let path = path
        .iter()
        .position(|b| *b == b'#')
        .and_then(|h| path.get(..h))
        .unwrap_or(path);
    let query = path
        .iter()
        .position(|b| *b == b'?')
        .and_then(|q| path.get(q.saturating_add(1)..))
        .unwrap_or_default();
    query.split(|b| *b == b'&').filter_map(move |pair| {
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (key, value) = (pair.get(..eq)?, pair.get(eq.saturating_add(1)..)?);
        if *percent_decode(key)? != *name.as_bytes() || value.is_empty() {
            return None;
        }
        Some(percent_decode(value).unwrap_or(Cow::Borrowed(value)))
    })
}

/// Validate a query parameter name from the configuration.
pub fn check_query_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    {
        return Err("only letters, digits and - . _ ~ are allowed".into());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in [
            "a",
            "0",
            "acme",
            "acme-corp",
            "a-",
            "xn--caf-dma",
            &"a".repeat(63),
        ] {
            assert!(is_valid_tenant_id(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "Acme",
            "a_b",
            "a.b",
            "a/b",
            "%61",
            "é",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_tenant_id(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(&*percent_decode(b"acme").unwrap(), b"acme");
        assert!(matches!(percent_decode(b"acme").unwrap(), Cow::Borrowed(_)));
        assert_eq!(&*percent_decode(b"%61cme").unwrap(), b"acme");
        assert_eq!(&*percent_decode(b"%41%2f%2F+").unwrap(), b"A//+");
        for bad in [&b"%"[..], b"%4", b"%zz", b"a%g1"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }

    /// Host table: (pattern, request :authority, expected tenant).
    #[test]
    fn host_pattern_table() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "{tenant}.api.example.com",
                "acme.api.example.com",
                Some("acme"),
            ),
            (
                "{tenant}.api.example.com",
                "acme.api.example.com:8443",
                Some("acme"),
            ),
            (
                "{tenant}.api.example.com",
                "acme.api.example.com:",
                Some("acme"),
            ),
            (
                "{tenant}.api.example.com",
                "ACME.Api.Example.COM",
                Some("acme"),
            ),
            (
                "{tenant}.api.example.com",
                "acme.api.example.com.",
                Some("acme"),
            ),
            (
                "{tenant}.api.example.com",
                "acme.api.example.com.:80",
                Some("acme"),
            ),
            (
                "{tenant}.API.example.com.",
                "acme.api.example.com",
                Some("acme"),
            ),
            (
                "{tenant}.api.example.com",
                "xn--caf-dma.api.example.com",
                Some("xn--caf-dma"),
            ),
            (
                "{tenant}.api.example.com",
                "XN--CAF-DMA.api.example.com",
                Some("xn--caf-dma"),
            ),
            // Extra or missing labels, wrong suffix, empty labels:
            ("{tenant}.api.example.com", "a.acme.api.example.com", None),
            ("{tenant}.api.example.com", "api.example.com", None),
            ("{tenant}.api.example.com", "acme.api.example.org", None),
            ("{tenant}.api.example.com", "acme.api.example.com..", None),
            ("{tenant}.api.example.com", ".api.example.com", None),
            ("{tenant}.api.example.com", "acme..api.example.com", None),
            (
                "{tenant}.api.example.com",
                "acme.api.example.com.evil.com",
                None,
            ),
            ("{tenant}.api.example.com", "acme.api.example.com:80x", None),
            ("{tenant}.api.example.com", "[::1]:443", None),
            ("{tenant}.api.example.com", "", None),
            // Raw UTF-8 (not punycode) never equals an ASCII literal label:
            ("{tenant}.api.example.com", "acme.äpi.example.com", None),
            (
                "api.{tenant}.example.com",
                "api.globex.example.com",
                Some("globex"),
            ),
            ("{tenant}.localhost", "acme.localhost:10000", Some("acme")),
        ];
        for (pattern, authority, want) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            let host = normalize_host(authority.as_bytes());
            let got = host.as_deref().and_then(|h| p.matches(h));
            assert_eq!(got, want.map(str::as_bytes), "{pattern} vs {authority:?}");
        }
        // A non-ASCII tenant label is returned as is (lowercasing is ASCII only) and then fails
        // the tenant-id syntax, so it is an unknown tenant:
        let p = HostPattern::parse("{tenant}.example.com").unwrap();
        let host = normalize_host("CAFÉ.example.com".as_bytes()).unwrap();
        let got = p.matches(&host).unwrap();
        assert!(!is_valid_tenant_id(got));
    }

    #[test]
    fn normalize_host_agrees_with_splitting_into_labels() {
        // The definition: port and one trailing dot dropped, no empty label, lower case.
        fn by_labels(authority: &[u8]) -> Option<Vec<u8>> {
            if authority.first() == Some(&b'[') {
                return None;
            }
            let host = match authority.iter().rposition(|b| *b == b':') {
                Some(colon) => {
                    let (host, port) = authority.split_at(colon);
                    if !port.iter().skip(1).all(u8::is_ascii_digit) {
                        return None;
                    }
                    host
                }
                None => authority,
            };
            let host = host.strip_suffix(b".").unwrap_or(host);
            if host.is_empty() || host.split(|b| *b == b'.').any(<[u8]>::is_empty) {
                return None;
            }
            Some(host.to_ascii_lowercase())
        }
        // Every string of up to five characters over a small alphabet.
        let alphabet = [b'a', b'B', b'.', b':', b'1'];
        let mut inputs: Vec<Vec<u8>> = vec![vec![]];
        for len in 1..=5 {
            let mut n = alphabet.len().pow(len);
            while n > 0 {
                n -= 1;
                let mut k = n;
                inputs.push(
                    (0..len)
                        .map(|_| {
                            let c = alphabet[k % alphabet.len()];
                            k /= alphabet.len();
                            c
                        })
                        .collect(),
                );
            }
        }
        inputs.push(b"[::1]:80".to_vec());
        inputs.push(b"Acme.Tenants.localhost:10000".to_vec());
        for input in &inputs {
            assert_eq!(
                normalize_host(input).map(Cow::into_owned),
                by_labels(input),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Lower case is borrowed.
        assert!(matches!(
            normalize_host(b"acme.example.com:443"),
            Some(Cow::Borrowed(b"acme.example.com"))
        ));
    }

    #[test]
    fn bad_host_patterns() {
        for bad in [
            "api.example.com",
            "{tenant}.{tenant}.example.com",
            "x{tenant}.example.com",
            "{tenant}.example.com:443",
            "{tenant}..example.com",
            "{tenant}.bücher.example",
            "{tenant}.exa mple.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(HostPattern::parse("{tenant}.xn--bcher-kva.example").is_ok());
    }

    #[test]
    fn host_rules() {
        let exact = HostRule::parse("Acme.Example.com.").unwrap();
        assert_eq!(exact, HostRule::Exact("acme.example.com".into()));
        let wild = HostRule::parse("*.acme.example.com").unwrap();
        let norm = |h: &str| normalize_host(h.as_bytes()).unwrap().into_owned();
        assert!(exact.allows(&norm("ACME.example.com:443")));
        assert!(exact.allows(&norm("acme.example.com.")));
        assert!(!exact.allows(&norm("x.acme.example.com")));
        assert!(wild.allows(&norm("x.acme.example.com")));
        assert!(wild.allows(&norm("a.b.acme.example.com")));
        assert!(!wild.allows(&norm("acme.example.com")));
        assert!(!wild.allows(&norm("xacme.example.com")));
        for bad in ["", "*.", "a..b", "a.b:80", "bücher.de", "*"] {
            assert!(HostRule::parse(bad).is_err(), "{bad}");
        }
    }

    /// (pattern, :path, expected (tenant, stripped path)).
    type PathCase<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);

    /// Path table: (pattern, :path, expected tenant, expected stripped path).
    #[test]
    fn path_pattern_table() {
        let cases: &[PathCase] = &[
            (
                "/t/{tenant}/",
                "/t/acme/orders/1",
                Some(("acme", "/orders/1")),
            ),
            ("/t/{tenant}/", "/t/acme/", Some(("acme", "/"))),
            ("/t/{tenant}/", "/t/acme", Some(("acme", "/"))),
            ("/t/{tenant}", "/t/acme?x=1", Some(("acme", "/?x=1"))),
            ("/t/{tenant}/", "/t/acme/a?b=/c", Some(("acme", "/a?b=/c"))),
            ("/t/{tenant}/", "/t/acme#frag", Some(("acme", "/#frag"))),
            ("/{tenant}/", "/acme/x", Some(("acme", "/x"))),
            (
                "/api/v1/{tenant}/",
                "/api/v1/globex/y",
                Some(("globex", "/y")),
            ),
            // Decode-then-validate the tenant: an encoded tenant is what the upstream sees.
            ("/t/{tenant}/", "/t/%61cme/x", Some(("acme", "/x"))),
            ("/t/{tenant}/", "/t/%61%63%6D%65/x", Some(("acme", "/x"))),
            // Literal segments are not decoded (the chain's other matchers see the raw path).
            ("/t/{tenant}/", "/%74/acme/x", None),
            // Decoded to something that is no tenant id (→ unknown, never "no tenant"):
            ("/t/{tenant}/", "/t/ac%2Fme/x", Some(("ac/me", "/x"))),
            ("/t/{tenant}/", "/t/%zzacme/x", Some(("%zzacme", "/x"))),
            ("/t/{tenant}/", "/t/ACME/x", Some(("ACME", "/x"))),
            // No match:
            ("/t/{tenant}/", "/t/", None),
            ("/t/{tenant}/", "/t//acme", None),
            ("/t/{tenant}/", "/t", None),
            ("/t/{tenant}/", "/x/acme/", None),
            ("/t/{tenant}/", "/T/acme/", None),
            ("/t/{tenant}/", "/tt/acme/", None),
            ("/t/{tenant}/", "/%zz/acme/", None),
            ("/t/{tenant}/", "t/acme/", None),
            ("/t/{tenant}/", "/?t/acme/", None),
            ("/t/{tenant}/", "", None),
        ];
        for (pattern, path, want) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            let got = p.matches(path.as_bytes());
            let got = got.map(|m| {
                (
                    String::from_utf8(m.tenant.to_vec()).unwrap(),
                    String::from_utf8(strip_prefix(path.as_bytes(), m.rest)).unwrap(),
                )
            });
            let want = want.map(|(t, s)| (t.to_owned(), s.to_owned()));
            assert_eq!(got, want, "{pattern} vs {path:?}");
        }
    }

    #[test]
    fn bad_path_patterns() {
        for bad in [
            "t/{tenant}/",
            "/t/",
            "/{tenant}/x/",
            "/t/{tenant}{tenant}/",
            "/t//{tenant}/",
            "/%74/{tenant}/",
            "/../{tenant}/",
            "/t?/{tenant}",
            "/x{tenant}/",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_parameters() {
        let vals = |path: &str, name: &str| -> Vec<String> {
            query_values(path.as_bytes(), name)
                .map(|v| String::from_utf8(v.into_owned()).unwrap())
                .collect()
        };
        assert_eq!(vals("/x?tenant=acme", "tenant"), ["acme"]);
        assert_eq!(vals("/x?a=1&tenant=%61cme&b", "tenant"), ["acme"]);
        assert_eq!(vals("/x?%74enant=acme", "tenant"), ["acme"]);
        assert_eq!(vals("/x?tenant=a&tenant=b", "tenant"), ["a", "b"]);
        assert_eq!(vals("/x?tenant=&tenant", "tenant"), Vec::<String>::new());
        assert_eq!(vals("/x?tenants=acme", "tenant"), Vec::<String>::new());
        assert_eq!(vals("/x#?tenant=acme", "tenant"), Vec::<String>::new());
        assert_eq!(vals("/x?tenant=acme#frag", "tenant"), ["acme"]);
        assert_eq!(vals("/tenant=acme", "tenant"), Vec::<String>::new());
        assert!(check_query_name("tenant").is_ok());
        assert!(check_query_name("").is_err());
        assert!(check_query_name("a=b").is_err());
    }
}
