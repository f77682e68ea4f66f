//! W3C Baggage limits. The filter does not interpret baggage; it only bounds it.
//!
//! The W3C Baggage specification requires propagating *all* list-members when there are at most
//! 64 of them and they total at most 8192 bytes (several `baggage` header fields combined);
//! beyond that a platform may drop list-members, but only whole ones. So:
//! - within the limits (counting the header bytes as they came), the headers are left untouched;
//! - otherwise the members (split on `,`, OWS trimmed, empty ones skipped — values are
//!   percent-encoded, so a `,` never occurs inside a member) are re-joined with `,` and whole
//!   members are dropped **from the right** until at most 64 remain within 8192 bytes.

use crate::ids::trim_ows;

pub const BAGGAGE: &str = "baggage";
pub const MAX_MEMBERS: usize = 64;
pub const MAX_BYTES: usize = 8192;

/// What to do with the `baggage` header(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaggagePlan {
    /// Within the limits (or absent): forward as received.
    Untouched,
    /// Over the limits and no member fits: remove the header.
    Remove,
    /// Over the limits: replace every field with this one value.
    Replace(Vec<u8>),
}

/// Decide for the `baggage` field values of one request, in order.
pub fn bound<'a, I>(fields: I) -> BaggagePlan
where
    I: IntoIterator<Item = &'a [u8]> + Clone,
{
    let mut field_count = 0usize;
    let mut raw_len = 0usize;
    let mut members = 0usize;
    for field in fields.clone() {
        field_count += 1;
        raw_len += field.len();
        members += field
            .split(|&b| b == b',')
            .filter(|m| !trim_ows(m).is_empty())
            .count();
    }
    // Several fields are one list joined by commas (RFC 9110), so count those separators too.
    let combined_len = raw_len + field_count.saturating_sub(1);
    if field_count == 0 || (members <= MAX_MEMBERS && combined_len <= MAX_BYTES) {
        return BaggagePlan::Untouched;
    }
    let mut out: Vec<u8> = Vec::with_capacity(combined_len.min(MAX_BYTES));
    let mut kept = 0usize;
    'fields: for field in fields {
        for member in field.split(|&b| b == b',').map(trim_ows) {
            if member.is_empty() {
                continue;
            }
            let needed = member.len() + usize::from(kept > 0);
            if kept == MAX_MEMBERS || out.len() + needed > MAX_BYTES {
                // Everything from here on is dropped: whole members, from the right.
                break 'fields;
            }
            if kept > 0 {
                out.push(b',');
            }
            out.extend_from_slice(member);
            kept += 1;
        }
    }
    if kept == 0 {
        BaggagePlan::Remove
    } else {
        BaggagePlan::Replace(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn plan(fields: &[&str]) -> BaggagePlan {
        bound(fields.iter().map(|f| f.as_bytes()))
    }

    fn members(n: usize, width: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("k{i:03}={}", "v".repeat(width)))
            .collect()
    }

    #[test]
    fn within_limits_is_untouched() {
        assert_eq!(plan(&[]), BaggagePlan::Untouched);
        assert_eq!(
            plan(&["userId=alice,serverNode=DF%2028"]),
            BaggagePlan::Untouched
        );
        assert_eq!(plan(&["a=1", "b=2;prop=x"]), BaggagePlan::Untouched);
        assert_eq!(plan(&[""]), BaggagePlan::Untouched);
        // Exactly 64 members and exactly 8192 bytes.
        let m = members(64, 10).join(",");
        assert_eq!(plan(&[&m]), BaggagePlan::Untouched);
        let one = format!("k={}", "v".repeat(8190));
        assert_eq!(one.len(), 8192);
        assert_eq!(plan(&[&one]), BaggagePlan::Untouched);
        // Two fields totalling 8192 with the joining comma.
        let a = format!("a={}", "v".repeat(4093));
        let b = format!("b={}", "v".repeat(4094));
        assert_eq!(a.len() + b.len() + 1, 8192);
        assert_eq!(plan(&[&a, &b]), BaggagePlan::Untouched);
    }

    #[test]
    fn too_many_members_drops_from_the_right() {
        let m = members(70, 3);
        let BaggagePlan::Replace(out) = plan(&[&m.join(", ")]) else {
            panic!("expected a replacement")
        };
        assert_eq!(String::from_utf8(out).unwrap(), m[..64].join(","));
        // Split over fields.
        let BaggagePlan::Replace(out) = plan(&[&m[..40].join(","), &m[40..].join(",")]) else {
            panic!("expected a replacement")
        };
        assert_eq!(String::from_utf8(out).unwrap(), m[..64].join(","));
    }

    #[test]
    fn too_many_bytes_drops_whole_members() {
        // 10 members of 1004 bytes: 9 fit in 8192 with commas? 8 × 1004 + 7 = 8039; 9 → 9044.
        let m = members(10, 999);
        assert_eq!(m[0].len(), 1004);
        let BaggagePlan::Replace(out) = plan(&[&m.join(",")]) else {
            panic!("expected a replacement")
        };
        assert_eq!(out.len(), 8039);
        assert_eq!(String::from_utf8(out).unwrap(), m[..8].join(","));
        // A single member over 8192 bytes cannot be kept at all.
        let huge = format!("k={}", "v".repeat(9000));
        assert_eq!(plan(&[&huge]), BaggagePlan::Remove);
        // ... and the members after it are dropped too (from the right, never skipping).
        let BaggagePlan::Replace(out) = plan(&["a=1", &huge, "b=2"]) else {
            panic!("expected a replacement")
        };
        assert_eq!(out, b"a=1");
    }

    #[test]
    fn whitespace_only_excess_is_normalised_not_dropped() {
        // 9000 bytes of OWS around 2 members: all members must still be propagated.
        let padded = format!("a=1,{}b=2", " ".repeat(9000));
        assert_eq!(plan(&[&padded]), BaggagePlan::Replace(b"a=1,b=2".to_vec()));
    }
}
