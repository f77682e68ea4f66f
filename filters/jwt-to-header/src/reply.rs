//! Refusals as RFC 6750 describes them: `WWW-Authenticate: Bearer realm="…"` with
//! `error="invalid_token"` / `"insufficient_scope"` and an `error_description` (no `error` for a
//! missing token), plus the common JSON body `{"error":"<reason>","message":"…"}`. The
//! descriptions are fixed strings: nothing from the token is ever echoed.

use gatewasm_common::reply::json_error_body;

use crate::auth::{Denial, Reason};

/// Seconds a client is told to wait (`Retry-After`) when no keys are available.
pub const RETRY_AFTER_S: &str = "5";

/// The `WWW-Authenticate` value for a 400/401/403; `None` for 503.
pub fn www_authenticate(realm: &str, denial: &Denial) -> Option<String> {
    if !matches!(denial.reason.status(), 400 | 401 | 403) {
        return None;
    }
    let mut v = String::with_capacity(96);
    v.push_str("Bearer realm=\"");
    push_quoted(&mut v, realm);
    v.push('"');
    if let Some(error) = denial.reason.bearer_error() {
        v.push_str(", error=\"");
        v.push_str(error);
        v.push_str("\", error_description=\"");
        push_quoted(&mut v, denial.description);
        v.push('"');
    }
    Some(v)
}

/// RFC 6750 restricts these values to printable ASCII without `"` and `\`.
fn push_quoted(out: &mut String, s: &str) {
    out.extend(
        s.chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .filter(|c| *c != '"' && *c != '\\'),
    );
}

/// The JSON body of a refusal.
pub fn body(denial: &Denial) -> String {
    json_error_body(denial.reason.name(), denial.description)
}

/// Header pairs of a refusal besides `content-type`.
pub fn headers(realm: &str, denial: &Denial) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(2);
    if let Some(v) = www_authenticate(realm, denial) {
        out.push(("www-authenticate", v));
    }
    if denial.reason == Reason::JwksUnavailable {
        out.push(("retry-after", RETRY_AFTER_S.to_owned()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn d(reason: Reason, description: &'static str) -> Denial {
        Denial {
            reason,
            description,
        }
    }

    #[test]
    fn rfc6750_challenges() {
        assert_eq!(
            www_authenticate("api", &d(Reason::Missing, "a bearer token is required")).unwrap(),
            r#"Bearer realm="api""#
        );
        assert_eq!(
            www_authenticate("api", &d(Reason::Expired, "the token has expired")).unwrap(),
            r#"Bearer realm="api", error="invalid_token", error_description="the token has expired""#
        );
        assert_eq!(
            www_authenticate("a\"b\\c\n", &d(Reason::Scope, "x")).unwrap(),
            r#"Bearer realm="abc", error="insufficient_scope", error_description="x""#
        );
        assert!(www_authenticate("api", &d(Reason::JwksUnavailable, "x")).is_none());
    }

    #[test]
    fn headers_and_body() {
        let h = headers("api", &d(Reason::JwksUnavailable, "keys unavailable"));
        assert_eq!(h, vec![("retry-after", "5".to_owned())]);
        let b: serde_json::Value =
            serde_json::from_str(&body(&d(Reason::BadSignature, "bad"))).unwrap();
        assert_eq!(b["error"], "bad_signature");
        assert_eq!(b["message"], "bad");
        for r in Reason::ALL {
            assert!(matches!(r.status(), 400 | 401 | 403 | 503));
        }
    }
}
