//! The rate-limit response headers, rendered from a [`Quota`] and its limit into fixed-size
//! buffers (no allocation per response).
//!
//! - `draft` (draft-ietf-httpapi-ratelimit-headers-08 and later, current as of draft 10):
//!   `RateLimit-Policy: "<rule>";q=<limit>;w=<window_s>` and `RateLimit: "<rule>";r=<remaining>;t=<reset>`.
//! - `draft03`: `RateLimit-Limit: <limit>`, `RateLimit-Remaining: <remaining>`,
//!   `RateLimit-Reset: <reset>` (seconds).
//!
//! `remaining` is the whole number of requests the bucket would allow right now (up to
//! `limit + burst`); `reset` is the number of seconds until the bucket is full again.

use std::fmt::{self, Write};

use crate::config::{CompiledLimit, HeaderFormat};
use crate::limiter::Quota;
use crate::rls::GlobalQuota;

/// Room for the longest value: a 64-byte rule name, quotes and three u64 figures.
const VALUE_CAP: usize = 160;

/// One header value in an inline buffer.
#[derive(Clone, Copy)]
struct Value {
    buf: [u8; VALUE_CAP],
    len: usize,
}

impl Value {
    const EMPTY: Value = Value {
        buf: [0; VALUE_CAP],
        len: 0,
    };

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for Value {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Up to five `(name, value)` pairs.
pub struct RateLimitHeaders {
    items: [(&'static str, Value); 5],
    len: usize,
}

impl RateLimitHeaders {
    fn push(&mut self, name: &'static str, args: fmt::Arguments<'_>) {
        let mut value = Value::EMPTY;
        if value.write_fmt(args).is_ok()
            && let Some(slot) = self.items.get_mut(self.len)
        {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The pairs, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.items[..self.len].iter().map(|(n, v)| (*n, v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The headers to add for `quota`.
pub fn rate_limit_headers(
    format: HeaderFormat,
    quota: &Quota,
    limit: &CompiledLimit,
) -> RateLimitHeaders {
    let mut out = RateLimitHeaders {
        items: [("", Value::EMPTY); 5],
        len: 0,
    };
    if matches!(format, HeaderFormat::Draft | HeaderFormat::Both) {
        out.push("ratelimit-policy", format_args!("{}", limit.policy));
        // The policy value starts with the quoted rule name.
        let name = limit.policy.split(';').next().unwrap_or_default();
        out.push(
            "ratelimit",
            format_args!("{name};r={};t={}", quota.remaining, quota.reset_s),
        );
    }
    if matches!(format, HeaderFormat::Draft03 | HeaderFormat::Both) {
        out.push("ratelimit-limit", format_args!("{}", limit.limit.limit));
        out.push("ratelimit-remaining", format_args!("{}", quota.remaining));
        out.push("ratelimit-reset", format_args!("{}", quota.reset_s));
    }
    out
}

/// The headers to add for a limit the global service reported for rule `rule_name`:
/// `RateLimit-Policy: "<rule>";q=<requests_per_unit>;w=<unit in seconds>` and so on.
pub fn global_rate_limit_headers(
    format: HeaderFormat,
    rule_name: &str,
    quota: &GlobalQuota,
) -> RateLimitHeaders {
    let mut out = RateLimitHeaders {
        items: [("", Value::EMPTY); 5],
        len: 0,
    };
    if matches!(format, HeaderFormat::Draft | HeaderFormat::Both) {
        out.push(
            "ratelimit-policy",
            format_args!("\"{rule_name}\";q={};w={}", quota.limit, quota.window_s),
        );
        out.push(
            "ratelimit",
            format_args!("\"{rule_name}\";r={};t={}", quota.remaining, quota.reset_s),
        );
    }
    if matches!(format, HeaderFormat::Draft03 | HeaderFormat::Both) {
        out.push("ratelimit-limit", format_args!("{}", quota.limit));
        out.push("ratelimit-remaining", format_args!("{}", quota.remaining));
        out.push("ratelimit-reset", format_args!("{}", quota.reset_s));
    }
    out
}

/// `Retry-After` seconds as a header value, without allocating.
pub fn retry_after(seconds: u64) -> impl AsRef<str> {
    struct Secs(Value);
    impl AsRef<str> for Secs {
        fn as_ref(&self) -> &str {
            self.0.as_str()
        }
    }
    let mut v = Value::EMPTY;
    let _ = write!(v, "{seconds}");
    Secs(v)
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
        assert_eq!(retry_after(20).as_ref(), "20");
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
