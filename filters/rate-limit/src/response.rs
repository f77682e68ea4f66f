//! The rate-limit response headers, rendered from a [`Quota`] and its limit: the values that
//! only depend on the configuration are borrowed from it, the others take one allocation each,
//! and every value is handed on as it is.
//!
//! - `draft` (draft-ietf-httpapi-ratelimit-headers-08 and later, current as of draft 10):
//!   `RateLimit-Policy: "<rule>";q=<limit>;w=<window_s>` and `RateLimit: "<rule>";r=<remaining>;t=<reset>`.
//! - `draft03`: `RateLimit-Limit: <limit>`, `RateLimit-Remaining: <remaining>`,
//!   `RateLimit-Reset: <reset>` (seconds).
//!
//! `remaining` is the whole number of requests the bucket would allow right now (up to
//! `limit + burst`); `reset` is the number of seconds until the bucket is full again.

use std::borrow::Cow;

use crate::config::{CompiledLimit, HeaderFormat};
use crate::limiter::Quota;
use crate::rls::GlobalQuota;

/// Room for most values (a rule name, quotes and three figures) without regrowth.
const VALUE_CAPACITY: usize = 48;

/// A piece of a header value: text, or a number written in decimal. Values are built from
/// these rather than with `format_args!` into a fixed buffer: core's formatting machinery and
/// the copies of the buffers (a 900-byte set of five) cost about a thousand Wasm instructions
/// per header, several times the writing itself.
enum Part<'a> {
    Str(&'a str),
    Num(u64),
}

/// `parts`, written out.
fn render(parts: &[Part<'_>]) -> String {
    let mut value = String::with_capacity(VALUE_CAPACITY);
    for part in parts {
        match part {
            Part::Str(s) => value.push_str(s),
            Part::Num(n) => {
                // The digits last to first into a buffer, then appended at once (not a
                // character at a time).
                let mut digits = [0u8; 20];
                let mut start = digits.len();
                let mut n = *n;
                while let Some(d) = start.checked_sub(1).and_then(|i| digits.get_mut(i)) {
                    *d = b'0' + (n % 10) as u8;
                    start -= 1;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let digits = digits.get(start..).unwrap_or_default();
                value.push_str(std::str::from_utf8(digits).unwrap_or_default());
            }
        }
    }
    value
}

/// Up to five `(name, value)` pairs, in a fixed order. Each value is borrowed from the
/// configuration or a `String` the caller hands on (to a header edit or a local reply), so
/// nothing is copied again.
pub struct RateLimitHeaders<'a> {
    items: [(&'static str, Cow<'a, str>); 5],
    len: usize,
}

impl<'a> RateLimitHeaders<'a> {
    fn new() -> Self {
        Self {
            items: Default::default(),
            len: 0,
        }
    }

    fn push(&mut self, name: &'static str, parts: &[Part<'_>]) {
        self.push_value(name, Cow::Owned(render(parts)));
    }

    fn push_value(&mut self, name: &'static str, value: Cow<'a, str>) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The pairs, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.items
            .iter()
            .take(self.len)
            .map(|(n, v)| (*n, v.as_ref()))
    }

    /// The pairs, their values moved out (as bytes: header values).
    pub fn into_values(self) -> impl Iterator<Item = (&'static str, Cow<'a, [u8]>)> {
        self.items.into_iter().take(self.len).map(|(n, v)| {
            let v = match v {
                Cow::Borrowed(v) => Cow::Borrowed(v.as_bytes()),
                Cow::Owned(v) => Cow::Owned(v.into_bytes()),
            };
            (n, v)
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The headers to add for `quota`.
pub fn rate_limit_headers<'a>(
    format: HeaderFormat,
    quota: &Quota,
    limit: &'a CompiledLimit,
) -> RateLimitHeaders<'a> {
    let mut out = RateLimitHeaders::new();
    if matches!(format, HeaderFormat::Draft | HeaderFormat::Both) {
        out.push_value("ratelimit-policy", Cow::Borrowed(&limit.policy));
        // The policy value starts with the quoted rule name.
        let name = limit.policy.split(';').next().unwrap_or_default();
        out.push(
            "ratelimit",
            &[
                Part::Str(name),
                Part::Str(";r="),
                Part::Num(quota.remaining),
                Part::Str(";t="),
                Part::Num(quota.reset_s),
            ],
        );
    }
    if matches!(format, HeaderFormat::Draft03 | HeaderFormat::Both) {
        out.push_value("ratelimit-limit", Cow::Borrowed(&limit.limit_text));
        out.push("ratelimit-remaining", &[Part::Num(quota.remaining)]);
        out.push("ratelimit-reset", &[Part::Num(quota.reset_s)]);
    }
    out
}

/// The headers to add for a limit the global service reported for rule `rule_name`:
/// `RateLimit-Policy: "<rule>";q=<requests_per_unit>;w=<unit in seconds>` and so on.
pub fn global_rate_limit_headers(
    format: HeaderFormat,
    rule_name: &str,
    quota: &GlobalQuota,
) -> RateLimitHeaders<'static> {
    let mut out = RateLimitHeaders::new();
    if matches!(format, HeaderFormat::Draft | HeaderFormat::Both) {
        out.push(
            "ratelimit-policy",
            &[
                Part::Str("\""),
                Part::Str(rule_name),
                Part::Str("\";q="),
                Part::Num(quota.limit),
                Part::Str(";w="),
                Part::Num(quota.window_s),
            ],
        );
        out.push(
            "ratelimit",
            &[
                Part::Str("\""),
                Part::Str(rule_name),
                Part::Str("\";r="),
                Part::Num(quota.remaining),
                Part::Str(";t="),
                Part::Num(quota.reset_s),
            ],
        );
    }
    if matches!(format, HeaderFormat::Draft03 | HeaderFormat::Both) {
        out.push("ratelimit-limit", &[Part::Num(quota.limit)]);
        out.push("ratelimit-remaining", &[Part::Num(quota.remaining)]);
        out.push("ratelimit-reset", &[Part::Num(quota.reset_s)]);
    }
    out
}

/// `Retry-After` seconds as a header value.
pub fn retry_after(seconds: u64) -> String {
    render(&[Part::Num(seconds)])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;

    #[test]
    fn formats() {
        let long = "r".repeat(64);
        let json = format!(
            r#"{{"rules":[{{"name":"per-ip","key":["client_ip"],"limit":100,"burst":5}},
               {{"name":"{long}","key":["route"],"limit":18446744073,"window_s":1,"burst":1}}]}}"#
        );
        let s = parse_settings(Some(json.as_bytes())).unwrap();
        let q = Quota {
            rule: 0,
            override_index: None,
            remaining: 42,
            reset_s: 35,
        };
        let l = &s.rules[0].limit;
        let pairs = |f, q: &Quota, l| {
            rate_limit_headers(f, q, l)
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(HeaderFormat::Draft, &q, l),
            [
                "ratelimit-policy: \"per-ip\";q=100;w=60",
                "ratelimit: \"per-ip\";r=42;t=35"
            ]
        );
        assert_eq!(
            pairs(HeaderFormat::Draft03, &q, l),
            [
                "ratelimit-limit: 100",
                "ratelimit-remaining: 42",
                "ratelimit-reset: 35"
            ]
        );
        assert_eq!(rate_limit_headers(HeaderFormat::Both, &q, l).len(), 5);
        assert!(rate_limit_headers(HeaderFormat::None, &q, l).is_empty());
        // The longest values still fit.
        let big = Quota {
            rule: 1,
            override_index: None,
            remaining: u64::MAX,
            reset_s: u64::MAX,
        };
        let got = pairs(HeaderFormat::Both, &big, &s.rules[1].limit);
        assert_eq!(got.len(), 5);
        assert_eq!(
            got[1],
            format!("ratelimit: \"{long}\";r={};t={}", u64::MAX, u64::MAX)
        );
        assert_eq!(retry_after(20), "20");
        let g = GlobalQuota {
            limit: 100,
            window_s: 60,
            remaining: 7,
            reset_s: 12,
        };
        let got: Vec<String> = global_rate_limit_headers(HeaderFormat::Both, "api", &g)
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        assert_eq!(
            got,
            [
                "ratelimit-policy: \"api\";q=100;w=60",
                "ratelimit: \"api\";r=7;t=12",
                "ratelimit-limit: 100",
                "ratelimit-remaining: 7",
                "ratelimit-reset: 12"
            ]
        );
    }
}
