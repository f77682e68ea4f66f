//! The rate-limit response headers, rendered from a [`Quota`] and its limit.
//!
//! - `draft` (draft-ietf-httpapi-ratelimit-headers-08 and later, current as of draft 10):
//!   `RateLimit-Policy: "<rule>";q=<limit>;w=<window_s>` and `RateLimit: "<rule>";r=<remaining>;t=<reset>`.
//! - `draft03`: `RateLimit-Limit: <limit>`, `RateLimit-Remaining: <remaining>`,
//!   `RateLimit-Reset: <reset>` (seconds).
//!
//! `remaining` is the whole number of requests the bucket would allow right now (up to
//! `limit + burst`); `reset` is the number of seconds until the bucket is full again.

use crate::config::{CompiledLimit, HeaderFormat};
use crate::limiter::Quota;

/// The headers to add for `quota` (at most 5 pairs), in a fixed order.
pub fn rate_limit_headers(
    format: HeaderFormat,
    quota: &Quota,
    limit: &CompiledLimit,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(5);
    let draft = matches!(format, HeaderFormat::Draft | HeaderFormat::Both);
    let draft03 = matches!(format, HeaderFormat::Draft03 | HeaderFormat::Both);
    if draft {
        out.push(("ratelimit-policy", limit.policy.clone()));
        // The policy value starts with the quoted rule name.
        let name_end = limit.policy.find(';').unwrap_or(limit.policy.len());
        out.push((
            "ratelimit",
            format!(
                "{};r={};t={}",
                &limit.policy[..name_end],
                quota.remaining,
                quota.reset_s
            ),
        ));
    }
    if draft03 {
        out.push(("ratelimit-limit", limit.limit.limit.to_string()));
        out.push(("ratelimit-remaining", quota.remaining.to_string()));
        out.push(("ratelimit-reset", quota.reset_s.to_string()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;

    #[test]
    fn formats() {
        let s = parse_settings(Some(
            br#"{"rules":[{"name":"per-ip","key":["client_ip"],"limit":100,"burst":5}]}"#,
        ))
        .unwrap();
        let q = Quota {
            rule: 0,
            override_index: None,
            remaining: 42,
            reset_s: 35,
        };
        let l = &s.rules[0].limit;
        let pairs = |f| {
            rate_limit_headers(f, &q, l)
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(HeaderFormat::Draft),
            [
                "ratelimit-policy: \"per-ip\";q=100;w=60",
                "ratelimit: \"per-ip\";r=42;t=35"
            ]
        );
        assert_eq!(
            pairs(HeaderFormat::Draft03),
            [
                "ratelimit-limit: 100",
                "ratelimit-remaining: 42",
                "ratelimit-reset: 35"
            ]
        );
        assert_eq!(pairs(HeaderFormat::Both).len(), 5);
        assert!(pairs(HeaderFormat::None).is_empty());
    }
}
