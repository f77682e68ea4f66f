//! Envoy's rate-limit service protocol (`envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`): the few protobuf messages it needs, written by hand with `prost`'s derive
//! (field numbers from `envoy/service/ratelimit/v3/rls.proto`,
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto` and `envoy/config/core/v3/base.proto`;
//! fields this filter neither sends nor reads are left out, and prost skips them when decoding),
//! the request encoding and the interpretation of an answer. Pure: no host calls.
//!
//! The test RLS servers use the same messages: `tests/src/rls_server.rs` and
//! `tools/limitador-rls` (Limitador).

use prost::Message;

/// The gRPC service and method.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// 0 = 1 hit.
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor` (without `limit` and
/// `hits_addend`).
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse` (without `raw_body`, `dynamic_metadata`
/// and `quota`).
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
}

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

/// `RateLimitResponse.DescriptorStatus` (without `quota`).
#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimit {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
}

/// `RateLimitResponse.RateLimit.Unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Unit {
    Unknown = 0,
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
    Week = 7,
}

impl Unit {
    /// The unit in seconds (a month is 30 days, a year 365), `None` for `Unknown`.
    pub const fn seconds(self) -> Option<u64> {
        match self {
            Unit::Unknown => None,
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3_600),
            Unit::Day => Some(86_400),
            Unit::Week => Some(7 * 86_400),
            Unit::Month => Some(30 * 86_400),
            Unit::Year => Some(365 * 86_400),
        }
    }
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A `RateLimitRequest` with only `domain` set, encoded (once, at configuration time).
pub fn request_prefix(domain: &str) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: Vec::new(),
        hits_addend: 0,
    }
    .encode_to_vec()
}

/// The encoded `RateLimitRequest` of `prefix` (from [`request_prefix`]) with one descriptor
/// made of `entries`: protobuf concatenation merges the repeated field.
pub fn encode_request<'a>(
    prefix: &[u8],
    entries: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let entries_len: usize = entries
        .clone()
        .map(|(k, v)| {
            let inner = string_len(1, k) + string_len(2, v);
            1 + encoded_len_varint(inner as u64) + inner
        })
        .sum();
    let mut buf =
        Vec::with_capacity(prefix.len() + 1 + encoded_len_varint(entries_len as u64) + entries_len);
    buf.extend_from_slice(prefix);
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(entries_len as u64, &mut buf);
    for (k, v) in entries {
        let inner = string_len(1, k) + string_len(2, v);
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(inner as u64, &mut buf);
        put_string(1, k, &mut buf);
        put_string(2, v, &mut buf);
    }
    buf
}

/// The encoded length of a string field (proto3: an empty string is not written).
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag)
            + prost::encoding::encoded_len_varint(s.len() as u64)
            + s.len()
    }
}

fn put_string(tag: u32, s: &str, buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.extend_from_slice(s.as_bytes());
    }
}

/// gRPC status `DEADLINE_EXCEEDED`. Envoy 1.40 reports a call that hit its timeout as
/// UNAVAILABLE (14) instead; the glue maps a failure at or after the deadline to this.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// A limit as the service reported it, for the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalQuota {
    /// `current_limit.requests_per_unit` and its unit in seconds.
    pub limit: u64,
    pub window_s: u64,
    pub remaining: u64,
    /// `duration_until_reset`, rounded up to whole seconds.
    pub reset_s: u64,
}

/// The service's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `OK`. The quota when the service reported a limit.
    Ok {
        quota: Option<GlobalQuota>,
        headers: Headers,
    },
    /// `OVER_LIMIT`.
    OverLimit {
        quota: Option<GlobalQuota>,
        /// Seconds until the limit resets (≥ 1), when reported.
        reset_s: Option<u64>,
        headers: Headers,
    },
    /// The call failed (any gRPC status but OK and DEADLINE_EXCEEDED, an undecodable message,
    /// or overall code UNKNOWN).
    Error,
    /// DEADLINE_EXCEEDED, or a failure at or after the deadline: `timeout_ms` passed without
    /// an answer.
    Timeout,
}

/// The headers the service asks to add: `(name, value)`, names lowercased; only well-formed
/// ones (a token name that is no pseudo-header, a value of visible ASCII, spaces and tabs) and
/// at most [`MAX_HEADERS_TO_ADD`] of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub response: Vec<(String, String)>,
    pub request: Vec<(String, String)>,
}

/// At most this many headers of each kind are taken from one answer.
pub const MAX_HEADERS_TO_ADD: usize = 16;

fn well_formed(h: &HeaderValue) -> Option<(String, String)> {
    let value = if h.value.is_empty() {
        std::str::from_utf8(&h.raw_value).ok()?
    } else {
        h.value.as_str()
    };
    let name_ok = !h.key.is_empty()
        && h.key.len() <= 256
        && h.key.bytes().all(gatewasm_common::headers::is_tchar);
    let value_ok = value.len() <= 4096
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    (name_ok && value_ok).then(|| (h.key.to_ascii_lowercase(), value.trim().to_owned()))
}

fn headers(list: &[HeaderValue]) -> Vec<(String, String)> {
    list.iter()
        .filter_map(well_formed)
        .take(MAX_HEADERS_TO_ADD)
        .collect()
}

/// How one request header the service asked for is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOp {
    /// Set it: every copy already in the request (the client's) is removed.
    Replace,
    /// Add another value (the service asked for this name more than once).
    Append,
}

/// The request headers the service(s) asked to add, in order, each with how to apply it: the
/// first of a name **replaces** the request's copies, later ones of that name are appended.
/// Why replace: an upstream trusts a header the rate-limit service sets (`x-ratelimit-*`, a
/// plan, a verdict); appended, a copy the client sent first would survive and most upstreams
/// read the first value. Allocation-free (≤ 16 headers per answer, so the scan is short).
pub fn request_header_ops(
    headers: &[(String, String)],
) -> impl Iterator<Item = (HeaderOp, &str, &str)> {
    headers.iter().enumerate().map(|(i, (name, value))| {
        let seen = headers[..i].iter().any(|(n, _)| n == name);
        let op = if seen {
            HeaderOp::Append
        } else {
            HeaderOp::Replace
        };
        (op, name.as_str(), value.as_str())
    })
}

fn ceil_duration(d: &Duration) -> Option<u64> {
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    let secs = u64::try_from(d.seconds).ok()?;
    Some(secs.saturating_add(u64::from(d.nanos > 0)))
}

fn quota(status: &DescriptorStatus) -> Option<GlobalQuota> {
    let limit = status.current_limit.as_ref()?;
    let window_s = Unit::try_from(limit.unit).ok()?.seconds()?;
    Some(GlobalQuota {
        limit: u64::from(limit.requests_per_unit),
        window_s,
        remaining: u64::from(status.limit_remaining),
        reset_s: status
            .duration_until_reset
            .as_ref()
            .and_then(ceil_duration)
            .unwrap_or(window_s),
    })
}

/// Interpret a call's outcome: the gRPC status and, for status OK, the response message.
pub fn interpret(grpc_status: u32, message: Option<&[u8]>) -> Answer {
    match grpc_status {
        0 => {}
        GRPC_DEADLINE_EXCEEDED => return Answer::Timeout,
        _ => return Answer::Error,
    }
    let Ok(response) = RateLimitResponse::decode(message.unwrap_or_default()) else {
        return Answer::Error;
    };
    // One descriptor per call, so one status; the tightest if a service sends more.
    let status = response
        .statuses
        .iter()
        .filter(|s| s.code == Code::OverLimit as i32)
        .chain(response.statuses.iter())
        .next();
    let quota = status.and_then(quota);
    let headers = Headers {
        response: headers(&response.response_headers_to_add),
        request: headers(&response.request_headers_to_add),
    };
    match Code::try_from(response.overall_code) {
        Ok(Code::Ok) => Answer::Ok { quota, headers },
        Ok(Code::OverLimit) => Answer::OverLimit {
            quota,
            reset_s: status
                .and_then(|s| s.duration_until_reset.as_ref())
                .and_then(ceil_duration),
            headers,
        },
        Ok(Code::Unknown) | Err(_) => Answer::Error,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding_decodes_as_the_message() {
        let prefix = request_prefix("gatewasm");
        let entries = [
            ("rule", "per-ip"),
            ("remote_address", "10.0.0.1"),
            ("e", ""),
        ];
        let bytes = encode_request(&prefix, entries.iter().copied());
        let decoded = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        let expected = RateLimitRequest {
            domain: "gatewasm".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
            }],
            hits_addend: 0,
        };
        assert_eq!(decoded, expected);
        assert_eq!(bytes, expected.encode_to_vec());
        // Long values (multi-byte length varints) too.
        let long = "v".repeat(300);
        let bytes = encode_request(&prefix, [("k", long.as_str())].into_iter());
        let decoded = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.descriptors[0].entries[0].value, long);
    }

    fn response(code: Code, status: Option<DescriptorStatus>) -> Vec<u8> {
        RateLimitResponse {
            overall_code: code as i32,
            statuses: status.into_iter().collect(),
            response_headers_to_add: vec![
                HeaderValue {
                    key: "X-RateLimit-Source".into(),
                    value: "rls".into(),
                    raw_value: Vec::new(),
                },
                HeaderValue {
                    key: ":status".into(),
                    value: "200".into(),
                    raw_value: Vec::new(),
                },
                HeaderValue {
                    key: "x-bad".into(),
                    value: "a\r\nb".into(),
                    raw_value: Vec::new(),
                },
                HeaderValue {
                    key: "x-raw".into(),
                    value: String::new(),
                    raw_value: b"raw".to_vec(),
                },
            ],
            request_headers_to_add: vec![HeaderValue {
                key: "x-global".into(),
                value: "checked".into(),
                raw_value: Vec::new(),
            }],
        }
        .encode_to_vec()
    }

    fn status(
        code: Code,
        rpu: u32,
        unit: Unit,
        remaining: u32,
        reset: (i64, i32),
    ) -> DescriptorStatus {
        DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                name: "x".into(),
                requests_per_unit: rpu,
                unit: unit as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration {
                seconds: reset.0,
                nanos: reset.1,
            }),
        }
    }

    #[test]
    fn answers() {
        let h = Headers {
            response: vec![
                ("x-ratelimit-source".into(), "rls".into()),
                ("x-raw".into(), "raw".into()),
            ],
            request: vec![("x-global".into(), "checked".into())],
        };
        let ok = response(
            Code::Ok,
            Some(status(Code::Ok, 100, Unit::Minute, 42, (17, 5))),
        );
        assert_eq!(
            interpret(0, Some(&ok)),
            Answer::Ok {
                quota: Some(GlobalQuota {
                    limit: 100,
                    window_s: 60,
                    remaining: 42,
                    reset_s: 18
                }),
                headers: h.clone()
            }
        );
        let over = response(
            Code::OverLimit,
            Some(status(Code::OverLimit, 5, Unit::Hour, 0, (120, 0))),
        );
        assert_eq!(
            interpret(0, Some(&over)),
            Answer::OverLimit {
                quota: Some(GlobalQuota {
                    limit: 5,
                    window_s: 3600,
                    remaining: 0,
                    reset_s: 120
                }),
                reset_s: Some(120),
                headers: h.clone()
            }
        );
        // No status at all: still a verdict, without figures.
        assert_eq!(
            interpret(0, Some(&response(Code::OverLimit, None))),
            Answer::OverLimit {
                quota: None,
                reset_s: None,
                headers: h
            }
        );
        assert_eq!(interpret(4, None), Answer::Timeout);
        assert_eq!(interpret(14, None), Answer::Error);
        assert_eq!(interpret(0, None), Answer::Error, "empty = overall UNKNOWN");
        assert_eq!(
            interpret(0, Some(&response(Code::Unknown, None))),
            Answer::Error
        );
    }

    #[test]
    fn request_headers_replace_then_append() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        let list = h(&[("x-a", "1"), ("x-b", "2"), ("x-a", "3"), ("x-a", "4")]);
        let ops: Vec<_> = request_header_ops(&list).collect();
        assert_eq!(
            ops,
            [
                (HeaderOp::Replace, "x-a", "1"),
                (HeaderOp::Replace, "x-b", "2"),
                (HeaderOp::Append, "x-a", "3"),
                (HeaderOp::Append, "x-a", "4"),
            ]
        );
        assert_eq!(request_header_ops(&[]).count(), 0);
    }

    #[test]
    fn garbage_never_panics() {
        let ok = response(
            Code::Ok,
            Some(status(Code::Ok, 100, Unit::Minute, 42, (17, 5))),
        );
        for cut in 0..ok.len() {
            let _ = interpret(0, Some(&ok[..cut]));
        }
        for bytes in [
            &[0xff; 16][..],
            &[0x08, 0x63][..],             // overall_code 99
            &[0x12, 0x05, 0x08][..],       // truncated status
            &[0x0a, 0xff, 0xff, 0xff][..], // bad varint length
        ] {
            assert!(
                matches!(interpret(0, Some(bytes)), Answer::Error),
                "{bytes:?}"
            );
        }
        // Negative durations and an unknown unit give no figures, not a panic.
        let odd = response(
            Code::OverLimit,
            Some(status(Code::OverLimit, 1, Unit::Unknown, 0, (-5, -1))),
        );
        assert!(matches!(
            interpret(0, Some(&odd)),
            Answer::OverLimit {
                quota: None,
                reset_s: None,
                ..
            }
        ));
    }
}
