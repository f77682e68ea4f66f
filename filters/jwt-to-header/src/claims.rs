//! Claim checks (`iss`, `aud`, `sub`, `exp`/`nbf`/`iat` with skew, lifetime), scopes, and
//! rendering claims as header values (dotted paths; arrays joined; objects as compact JSON;
//! values with control bytes refused).

use serde_json::{Map, Value};

use crate::config::{ClaimHeader, Provider};

/// Why the claims are not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    Audience,
    Subject,
    /// `exp` missing while required, or not a number.
    MissingExp,
    /// A time claim that is not a number.
    BadTime,
    Expired,
    NotYetValid,
    /// `exp` − `iat` (or `nbf`) above `max_lifetime_s`.
    Lifetime,
    /// A claim for a header has a value no header can carry (control bytes).
    BadHeaderValue,
}

/// The time claims of a verified token, kept in the cache to re-check on every hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Times {
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, ClaimError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                // RFC 7519 NumericDate may have a fraction; whole seconds are precise enough.
                Ok(Some(
                    f.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64
                ))
            } else {
                Err(ClaimError::BadTime)
            }
        }
        Some(_) => Err(ClaimError::BadTime),
    }
}

pub fn times(claims: &Map<String, Value>) -> Result<Times, ClaimError> {
    Ok(Times {
        exp: numeric_date(claims, "exp")?,
        nbf: numeric_date(claims, "nbf")?,
        iat: numeric_date(claims, "iat")?,
    })
}

/// `exp`/`nbf`/`iat` against `now` (Unix seconds) with `skew` seconds of tolerance.
pub fn check_times(t: Times, now: i64, skew: i64) -> Result<(), ClaimError> {
    if let Some(exp) = t.exp
        && now > exp.saturating_add(skew)
    {
        return Err(ClaimError::Expired);
    }
    if let Some(nbf) = t.nbf
        && now.saturating_add(skew) < nbf
    {
        return Err(ClaimError::NotYetValid);
    }
    if let Some(iat) = t.iat
        && now.saturating_add(skew) < iat
    {
        return Err(ClaimError::NotYetValid);
    }
    Ok(())
}

/// Whether the token names this provider's issuer. This selects the provider whose keys are
/// tried; it is the only claim read before the signature is verified.
pub fn issuer_matches(p: &Provider, claims: &Map<String, Value>) -> bool {
    claims.get("iss").and_then(Value::as_str) == Some(p.issuer.as_str())
}

/// Everything about the claims a provider checks, once the signature is verified (the issuer
/// was matched before: [`issuer_matches`]).
pub fn check(p: &Provider, claims: &Map<String, Value>, now: i64) -> Result<Times, ClaimError> {
    let t = times(claims)?;
    if p.require_exp && t.exp.is_none() {
        return Err(ClaimError::MissingExp);
    }
    check_times(t, now, p.clock_skew_s)?;
    if let (Some(max), Some(exp)) = (p.max_lifetime_s, t.exp) {
        let start = t.iat.or(t.nbf).unwrap_or(now);
        if exp.saturating_sub(start) > max {
            return Err(ClaimError::Lifetime);
        }
    }
    if !p.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => p.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| p.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(ClaimError::Audience);
        }
    }
    if !p.subjects.is_empty() {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !p
            .subjects
            .iter()
            .any(|prefix| sub.starts_with(prefix.as_str()))
        {
            return Err(ClaimError::Subject);
        }
    }
    Ok(t)
}

/// The scopes of a token: `scope` (space-delimited string) and `scp` (array, or string).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => {
                out.extend(s.split(' ').filter(|x| !x.is_empty()).map(str::to_owned))
            }
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    out
}

/// Whether `have` contains every scope in `need`.
pub fn has_scopes(have: &[String], need: &[String]) -> bool {
    need.iter().all(|n| have.iter().any(|h| h == n))
}

/// The claim at a dotted path.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for seg in rest {
        v = v.as_object()?.get(seg)?;
    }
    Some(v)
}

fn push_scalar(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        // Nested arrays and objects: compact JSON (serialising a Value cannot fail).
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

/// A claim as a header value: strings as they are, numbers and bools as JSON writes them,
/// arrays joined with `separator`, objects as compact JSON. `Ok(None)`: absent or null (the
/// header is not set). A value with a control byte (CR, LF, NUL, …) or DEL is an error.
pub fn render(v: Option<&Value>, separator: &str) -> Result<Option<String>, ClaimError> {
    let mut out = String::new();
    match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                push_scalar(&mut out, item);
            }
        }
        Some(other) => push_scalar(&mut out, other),
    }
    if out.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ClaimError::BadHeaderValue);
    }
    // Leading/trailing whitespace would be trimmed by HTTP; keep values exact instead.
    if out.starts_with([' ', '\t']) || out.ends_with([' ', '\t']) {
        return Err(ClaimError::BadHeaderValue);
    }
    Ok(Some(out))
}

/// Render every configured claim header: (index into `claim_to_headers`, value).
pub fn render_all(
    map: &[ClaimHeader],
    claims: &Map<String, Value>,
) -> Result<Vec<(usize, String)>, ClaimError> {
    let mut out = Vec::with_capacity(map.len());
    for (i, c) in map.iter().enumerate() {
        if let Some(v) = render(lookup(claims, &c.path), &c.separator)? {
            out.push((i, v));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn provider(extra: Value) -> Provider {
        let mut p = json!({"issuer": "https://idp",
            "jwks": {"keys": [{"kty":"oct","k":crate::config::tests::HS_KEY}]}});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        let cfg = json!({"providers": {"p": p}});
        parse_settings(Some(&serde_json::to_vec(&cfg).unwrap()))
            .unwrap()
            .providers
            .remove(0)
    }

    const NOW: i64 = 1_767_225_600;

    #[test]
    fn time_checks_with_skew() {
        let t = |exp, nbf, iat| Times { exp, nbf, iat };
        assert_eq!(check_times(t(Some(NOW), None, None), NOW, 0), Ok(()));
        assert_eq!(
            check_times(t(Some(NOW - 1), None, None), NOW, 0),
            Err(ClaimError::Expired)
        );
        assert_eq!(check_times(t(Some(NOW - 60), None, None), NOW, 60), Ok(()));
        assert_eq!(
            check_times(t(Some(NOW - 61), None, None), NOW, 60),
            Err(ClaimError::Expired)
        );
        assert_eq!(check_times(t(None, Some(NOW + 60), None), NOW, 60), Ok(()));
        assert_eq!(
            check_times(t(None, Some(NOW + 61), None), NOW, 60),
            Err(ClaimError::NotYetValid)
        );
        assert_eq!(
            check_times(t(None, None, Some(NOW + 61)), NOW, 60),
            Err(ClaimError::NotYetValid)
        );
        assert_eq!(
            check_times(t(Some(i64::MAX), Some(i64::MIN), Some(i64::MIN)), NOW, 60),
            Ok(())
        );
    }

    #[test]
    fn provider_checks() {
        let p = provider(
            json!({"audiences": ["api", "web"], "subjects": ["user:"], "max_lifetime_s": 3600}),
        );
        let good = json!({"iss": "https://idp", "aud": ["x", "web"], "sub": "user:1", "exp": NOW + 10, "iat": NOW});
        assert_eq!(
            check(&p, &obj(good.clone()), NOW).unwrap().exp,
            Some(NOW + 10)
        );
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            check(&p, &obj(c), NOW)
        };
        // The issuer selects the provider before the signature; `check` does not look at it.
        assert!(with("iss", json!("https://evil")).is_ok());
        let with_iss = |v: Value| {
            let mut c = good.clone();
            c["iss"] = v;
            issuer_matches(&p, &obj(c))
        };
        assert!(with_iss(json!("https://idp")));
        assert!(!with_iss(json!("https://evil")));
        assert!(!with_iss(json!(["https://idp"])));
        assert_eq!(with("aud", json!("other")), Err(ClaimError::Audience));
        assert_eq!(with("aud", json!("api")).map(|_| ()), Ok(()));
        assert_eq!(with("aud", Value::Null), Err(ClaimError::Audience));
        assert_eq!(with("sub", json!("admin:1")), Err(ClaimError::Subject));
        assert_eq!(with("exp", json!("soon")), Err(ClaimError::BadTime));
        assert_eq!(with("exp", Value::Null), Err(ClaimError::MissingExp));
        assert_eq!(with("exp", json!(NOW - 100)), Err(ClaimError::Expired));
        assert_eq!(
            with("exp", json!((NOW + 10) as f64 + 0.5)).map(|_| ()),
            Ok(())
        );
        assert_eq!(with("exp", json!(NOW + 7200)), Err(ClaimError::Lifetime));
        assert_eq!(with("nbf", json!(NOW + 600)), Err(ClaimError::NotYetValid));

        let lax = provider(json!({"require_exp": false}));
        assert!(check(&lax, &obj(json!({"iss": "https://idp"})), NOW).is_ok());
    }

    #[test]
    fn scopes_from_scope_and_scp() {
        let s = scopes(&obj(json!({"scope": "read  write", "scp": ["admin", 5]})));
        assert_eq!(s, vec!["read", "write", "admin"]);
        assert!(has_scopes(&s, &["write".into(), "admin".into()]));
        assert!(!has_scopes(&s, &["delete".into()]));
        assert!(has_scopes(&[], &[]));
        assert_eq!(scopes(&obj(json!({"scp": "a b"}))), vec!["a", "b"]);
    }

    #[test]
    fn claim_rendering() {
        let c = obj(json!({
            "sub": "u1", "n": 42, "f": 1.5, "b": true, "roles": ["a", "b", 3],
            "realm": {"access": {"roles": ["x"]}, "id": 7}, "nul": null,
            "crlf": "a\r\nx-admin: true", "nul_byte": "a\u{0}b", "tab": "a\tb", "arr_bad": ["ok", "b\n"],
            "del": "a\u{7f}", "utf": "zoë", "space": " x"
        }));
        let r = |path: &str, sep: &str| {
            let p: Vec<String> = path.split('.').map(str::to_owned).collect();
            render(lookup(&c, &p), sep)
        };
        assert_eq!(r("sub", ",").unwrap().as_deref(), Some("u1"));
        assert_eq!(r("n", ",").unwrap().as_deref(), Some("42"));
        assert_eq!(r("f", ",").unwrap().as_deref(), Some("1.5"));
        assert_eq!(r("b", ",").unwrap().as_deref(), Some("true"));
        assert_eq!(r("roles", ",").unwrap().as_deref(), Some("a,b,3"));
        assert_eq!(r("roles", " ").unwrap().as_deref(), Some("a b 3"));
        assert_eq!(r("realm.access.roles", ",").unwrap().as_deref(), Some("x"));
        assert_eq!(r("realm.id", ",").unwrap().as_deref(), Some("7"));
        assert_eq!(
            r("realm.access", ",").unwrap().as_deref(),
            Some(r#"{"roles":["x"]}"#)
        );
        assert_eq!(r("realm.missing", ",").unwrap(), None);
        assert_eq!(r("sub.deeper", ",").unwrap(), None);
        assert_eq!(r("nul", ",").unwrap(), None);
        assert_eq!(r("tab", ",").unwrap().as_deref(), Some("a\tb"));
        assert_eq!(r("utf", ",").unwrap().as_deref(), Some("zoë"));
        for bad in ["crlf", "nul_byte", "arr_bad", "del", "space"] {
            assert_eq!(r(bad, ","), Err(ClaimError::BadHeaderValue), "{bad}");
        }
    }
}
