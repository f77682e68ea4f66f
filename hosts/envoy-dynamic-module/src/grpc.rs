//! A unary gRPC call as one HTTP/2 request over the ABI's HTTP callout, host-free: the request
//! (`POST /<service>/<method>`, `content-type: application/grpc`, `te: trailers`, the message
//! in a 5-byte length-prefixed frame) and the reading of its answer.
//!
//! Envoy 1.40's callout hands back the response's headers and body, not its trailers
//! (`on_http_filter_http_callout_done` has no trailer arguments). A gRPC server puts
//! `grpc-status` in the trailers after a message, or in the headers of a trailers-only
//! answer (what servers send for an error without a message). So: `grpc-status` in the headers
//! is the status; without it, an HTTP 200 whose body is exactly one uncompressed frame is a
//! success (a unary call's message is only sent on success); anything else is an error, its
//! status the one Envoy's own gRPC client derives from the HTTP status (`:status` 503, 504 —
//! Envoy's answer for an unreachable service or a timeout — are UNAVAILABLE, as Wasm sees them).

use gatewasm_common::stage::GrpcCall;

/// gRPC status UNKNOWN.
pub const UNKNOWN: u32 = 2;
/// gRPC status UNAVAILABLE.
pub const UNAVAILABLE: u32 = 14;

/// The request headers of `call` (`authority`: the `:authority` and `host`; Envoy requires one).
pub fn request_headers(call: &GrpcCall, authority: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".to_owned()),
        (":path", format!("/{}/{}", call.service, call.method)),
        (":authority", authority.to_owned()),
        ("content-type", "application/grpc".to_owned()),
        ("te", "trailers".to_owned()),
        // The service may stop working on it once the caller has given up.
        ("grpc-timeout", format!("{}m", call.timeout_ms)),
    ]
}

/// The request body: the message in one uncompressed frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    out
}

/// The message of a body that is exactly one uncompressed frame.
fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = body.split_first()?;
    let len = rest.get(..4)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let message = rest.get(4..)?;
    (flag == 0 && message.len() == len).then_some(message)
}

/// The gRPC status Envoy's gRPC client gives an HTTP status without `grpc-status`
/// (`Grpc::Utility::httpToGrpcStatus`).
fn from_http(status: u32) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// The answer of a completed callout: its gRPC status and, for status 0, the message.
/// `header(name)`: a response header's value.
pub fn answer<'b>(
    header: impl Fn(&str) -> Option<&'b [u8]>,
    body: &'b [u8],
) -> (u32, Option<&'b [u8]>) {
    let number = |name: &str| {
        header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    let http = number(":status").unwrap_or(0);
    if let Some(status) = number("grpc-status") {
        return if status == 0 {
            (0, unframe(body))
        } else {
            (status, None)
        };
    }
    match (http, unframe(body)) {
        (200, Some(message)) => (0, Some(message)),
        (200, None) => (UNKNOWN, None),
        (http, _) => (from_http(http), None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    #[test]
    fn frames_and_reads_back_one_message() {
        let framed = frame(b"abc");
        assert_eq!(framed, b"\0\0\0\0\x03abc");
        assert_eq!(unframe(&framed), Some(&b"abc"[..]));
        assert_eq!(unframe(&framed[..6]), None, "cut short");
        assert_eq!(unframe(b"\x01\0\0\0\x01a"), None, "compressed");
        assert_eq!(unframe(b""), None);
        let empty = frame(b"");
        assert_eq!(unframe(&empty), Some(&b""[..]));
    }

    #[test]
    fn the_status_comes_from_the_headers_or_the_message() {
        let body = frame(b"msg");
        // Trailers are not handed over: a 200 with one message is a success.
        assert_eq!(
            answer(headers(&[(":status", "200")]), &body),
            (0, Some(&b"msg"[..]))
        );
        // A trailers-only answer carries its status in the headers.
        assert_eq!(
            answer(headers(&[(":status", "200"), ("grpc-status", "8")]), b""),
            (8, None)
        );
        assert_eq!(
            answer(headers(&[(":status", "200"), ("grpc-status", "0")]), &body),
            (0, Some(&b"msg"[..]))
        );
        // No message and no status: not a success.
        assert_eq!(answer(headers(&[(":status", "200")]), b""), (UNKNOWN, None));
        // Envoy's own answers when the service is down or slow.
        assert_eq!(
            answer(headers(&[(":status", "503")]), b"no healthy upstream"),
            (UNAVAILABLE, None)
        );
        assert_eq!(
            answer(headers(&[(":status", "504")]), b""),
            (UNAVAILABLE, None)
        );
        assert_eq!(answer(headers(&[(":status", "404")]), b""), (12, None));
        assert_eq!(answer(headers(&[]), b""), (UNKNOWN, None));
    }

    #[test]
    fn the_request_is_a_grpc_post() {
        let call = GrpcCall {
            cluster: "rls".into(),
            service: "envoy.service.ratelimit.v3.RateLimitService",
            method: "ShouldRateLimit",
            message: vec![1],
            timeout_ms: 250,
        };
        let h = request_headers(&call, "rls");
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get(":method"), Some("POST"));
        assert_eq!(
            get(":path"),
            Some("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
        );
        assert_eq!(get("content-type"), Some("application/grpc"));
        assert_eq!(get("te"), Some("trailers"));
        assert_eq!(get("grpc-timeout"), Some("250m"));
        assert_eq!(get(":authority"), Some("rls"));
    }
}
