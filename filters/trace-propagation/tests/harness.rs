//! The real trace_propagation.wasm in the harness: every option, format conversion, the
//! metrics, bad configurations, and the trace id on local replies.
//!
//! Build first: `cargo build --release --target wasm32-wasip1 -p trace-propagation
//! -p harness-test-module` (the second module is only for the local-reply tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm_harness::testing::{self, upstream};
use proxy_wasm_harness::{
    HeaderMap, Host, LogLevel, PluginConfig, StreamView, Worker, assert_configs_rejected,
};
use std::collections::HashSet;

fn worker(host: &Host, config: &str) -> Worker {
    testing::worker(host, "trace-propagation", "trace", config)
}

const EXTRACTED_W3C: &str = "gatewasm_trace_propagation_extracted_w3c";
const EXTRACTED_B3: &str = "gatewasm_trace_propagation_extracted_b3";
const EXTRACTED_B3MULTI: &str = "gatewasm_trace_propagation_extracted_b3multi";
const RESTARTED: &str = "gatewasm_trace_propagation_restarted_invalid";
const STARTED: &str = "gatewasm_trace_propagation_started";
const SAMPLED: &str = "gatewasm_trace_propagation_sampled";

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";
const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";

fn exchange(w: &mut Worker, extra: &[(&str, &str)]) -> StreamView {
    let mut req = vec![(":method", "GET"), (":path", "/"), (":authority", "a")];
    req.extend_from_slice(extra);
    w.exchange(&req, None, &[(":status", "200")], None)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn client(v: &StreamView) -> HeaderMap {
    v.client_response_headers
        .clone()
        .expect("client got a response")
}

/// The single value of `name` upstream (fails if absent or repeated).
fn one(v: &StreamView, name: &str) -> String {
    match upstream(v).get_all(name).as_slice() {
        [value] => value.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

fn counters(host: &Host) -> [u64; 6] {
    [
        EXTRACTED_W3C,
        EXTRACTED_B3,
        EXTRACTED_B3MULTI,
        RESTARTED,
        STARTED,
        SAMPLED,
    ]
    .map(|name| host.counter(name))
}

/// An independent check of a version-00 traceparent: (trace-id, parent-id, flags).
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    let lower_hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    assert!(
        lower_hex(parts[1], 32) && parts[1] != "0".repeat(32),
        "{value}"
    );
    assert!(
        lower_hex(parts[2], 16) && parts[2] != "0".repeat(16),
        "{value}"
    );
    assert!(matches!(parts[3], "00" | "01" | "02" | "03"), "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[test]
fn no_context_starts_a_sampled_random_trace() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let v = exchange(&mut w, &[]);
    let (trace, _, flags) = traceparent(&one(&v, "traceparent"));
    assert_eq!(flags, "03", "sampled (ratio 1 by default) and random");
    assert_eq!(trace.len(), 32);
    assert!(!upstream(&v).contains("tracestate") && !upstream(&v).contains("b3"));
    assert_eq!(counters(&host), [0, 0, 0, 0, 1, 1]);
    // Every request gets its own trace.
    let traces: HashSet<String> = (0..20)
        .map(|_| traceparent(&one(&exchange(&mut w, &[]), "traceparent")).0)
        .collect();
    assert_eq!(traces.len(), 20);
    assert_eq!(host.counter(STARTED), 21);
}

#[test]
fn span_role_continues_the_trace_with_a_new_parent_per_request() {
    let host = Host::new();
    let mut w = worker(&host, r#"{"role":"span"}"#);
    let mut parents = HashSet::new();
    for _ in 0..10 {
        let v = exchange(&mut w, &[("traceparent", TP)]);
        let (trace, parent, flags) = traceparent(&one(&v, "traceparent"));
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
        assert_ne!(parent, PARENT);
        parents.insert(parent);
    }
    assert_eq!(parents.len(), 10, "a different parent-id for every request");
    assert_eq!(counters(&host), [10, 0, 0, 0, 0, 10]);
}

#[test]
fn passthrough_keeps_ids_and_tracestate() {
    let host = Host::new();
    let mut w = worker(&host, r#"{"role":"passthrough"}"#);
    let v = exchange(
        &mut w,
        &[
            ("traceparent", TP),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ],
    );
    assert_eq!(one(&v, "traceparent"), TP);
    assert_eq!(
        one(&v, "tracestate"),
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );
    // A future version is downgraded to 00, unknown flags cleared, ids kept.
    let v = exchange(
        &mut w,
        &[(
            "traceparent",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0b-extra-fields",
        )],
    );
    assert_eq!(
        one(&v, "traceparent"),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"
    );
    assert_eq!(host.counter(EXTRACTED_W3C), 2);
}

#[test]
fn random_flag_is_propagated_never_invented() {
    let host = Host::new();
    let mut w = worker(&host, "");
    for flags in ["00", "01", "02", "03"] {
        let tp = format!("00-{TRACE}-{PARENT}-{flags}");
        let v = exchange(&mut w, &[("traceparent", &tp)]);
        assert_eq!(traceparent(&one(&v, "traceparent")).2, flags);
    }
}

#[test]
fn extract_order_decides_which_format_wins() {
    let b3 = format!("{B3_TRACE}-{B3_SPAN}-1");
    let headers = [("traceparent", TP), ("b3", b3.as_str())];
    let host = Host::new();
    let mut w = worker(&host, "");
    let v = exchange(&mut w, &headers);
    assert_eq!(traceparent(&one(&v, "traceparent")).0, TRACE);
    let mut w = worker(&host, r#"{"extract":["b3","w3c"]}"#);
    let v = exchange(&mut w, &headers);
    assert_eq!(traceparent(&one(&v, "traceparent")).0, B3_TRACE);
    // b3 was not injected, so it passes through as it came.
    assert_eq!(one(&v, "b3"), b3);
    let mut w = worker(&host, r#"{"extract":["b3multi"]}"#);
    let v = exchange(
        &mut w,
        &[
            ("traceparent", TP),
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-sampled", "1"),
        ],
    );
    assert_eq!(traceparent(&one(&v, "traceparent")).0, B3_TRACE);
    assert_eq!(counters(&host)[..3], [1, 1, 1]);
}

#[test]
fn b3_callers_are_converted_to_w3c_and_back() {
    let host = Host::new();
    // A 64-bit B3 trace id is left-padded for W3C.
    let mut w = worker(&host, r#"{"inject":["w3c"],"role":"passthrough"}"#);
    let v = exchange(&mut w, &[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
    assert_eq!(
        one(&v, "traceparent"),
        "00-000000000000000064fe8b2a57d3eff7-e457b5a2e4d86bd1-01"
    );
    assert_eq!(host.counter(EXTRACTED_B3), 1);
    // Multi-header B3 in, every format out, as a span.
    let mut w = worker(&host, r#"{"inject":["w3c","b3","b3multi"]}"#);
    let v = exchange(
        &mut w,
        &[
            ("X-B3-TraceId", B3_TRACE),
            ("X-B3-SpanId", B3_SPAN),
            ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
            ("X-B3-Sampled", "true"),
        ],
    );
    let (trace, span, flags) = traceparent(&one(&v, "traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (B3_TRACE, "01"));
    assert_ne!(span, B3_SPAN);
    assert_eq!(
        one(&v, "b3"),
        format!("{B3_TRACE}-{span}-1"),
        "no ParentSpanId in b3"
    );
    assert_eq!(one(&v, "x-b3-traceid"), B3_TRACE);
    assert_eq!(one(&v, "x-b3-spanid"), span);
    assert_eq!(
        one(&v, "x-b3-parentspanid"),
        B3_SPAN,
        "the caller's span is our parent"
    );
    assert_eq!(
        one(&v, "x-b3-sampled"),
        "1",
        "lenient true is re-emitted as 1"
    );
    assert_eq!(host.counter(EXTRACTED_B3MULTI), 1);
    // W3C caller to a B3 service, ParentSpanId in the single header when configured.
    let mut w = worker(
        &host,
        r#"{"inject":["b3"],"b3_single_parent_span_id":true,"clear_extracted":true}"#,
    );
    let v = exchange(&mut w, &[("traceparent", TP), ("tracestate", "a=1")]);
    let b3 = one(&v, "b3");
    let fields: Vec<&str> = b3.split('-').collect();
    assert_eq!(fields.len(), 4, "{b3}");
    assert_eq!((fields[0], fields[2], fields[3]), (TRACE, "1", PARENT));
    assert!(!upstream(&v).contains("traceparent") && !upstream(&v).contains("tracestate"));
}

#[test]
fn b3_debug_and_sampling_only() {
    let host = Host::new();
    let mut w = worker(
        &host,
        r#"{"inject":["b3multi","w3c"],"sampling":{"ratio":0}}"#,
    );
    let v = exchange(&mut w, &[("b3", &format!("{B3_TRACE}-{B3_SPAN}-d"))]);
    assert_eq!(one(&v, "x-b3-flags"), "1");
    assert!(
        !upstream(&v).contains("x-b3-sampled"),
        "debug implies sampled: no X-B3-Sampled"
    );
    assert_eq!(traceparent(&one(&v, "traceparent")).2, "01");
    // `b3: 0` alone: a new trace, not sampled, counted as started.
    let mut w = worker(&host, r#"{"sampling":{"ratio":1}}"#);
    let v = exchange(&mut w, &[("b3", "0")]);
    assert_eq!(traceparent(&one(&v, "traceparent")).2, "02");
    assert_eq!(host.counter(STARTED), 1);
}

#[test]
fn sampling_ratio_zero_and_one() {
    let host = Host::new();
    let mut w = worker(&host, r#"{"sampling":{"ratio":0}}"#);
    for _ in 0..20 {
        let v = exchange(&mut w, &[]);
        assert_eq!(traceparent(&one(&v, "traceparent")).2, "02");
    }
    assert_eq!((host.counter(STARTED), host.counter(SAMPLED)), (20, 0));
    let host = Host::new();
    let mut w = worker(&host, r#"{"sampling":{"ratio":1.0}}"#);
    for _ in 0..20 {
        let v = exchange(&mut w, &[]);
        assert_eq!(traceparent(&one(&v, "traceparent")).2, "03");
    }
    assert_eq!((host.counter(STARTED), host.counter(SAMPLED)), (20, 20));
}

#[test]
fn respect_incoming_keeps_or_overrides_the_caller_decision() {
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let host = Host::new();
    let mut w = worker(&host, r#"{"sampling":{"ratio":1,"respect_incoming":true}}"#);
    let v = exchange(&mut w, &[("traceparent", &unsampled)]);
    assert_eq!(traceparent(&one(&v, "traceparent")).2, "00");
    assert_eq!(host.counter(SAMPLED), 0);
    let mut w = worker(
        &host,
        r#"{"sampling":{"ratio":1,"respect_incoming":false}}"#,
    );
    let v = exchange(&mut w, &[("traceparent", &unsampled)]);
    let (trace, parent, flags) = traceparent(&one(&v, "traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(parent, PARENT);
    assert_eq!(host.counter(SAMPLED), 1);
    // A client cannot force tracing with B3 debug either.
    let mut w = worker(
        &host,
        r#"{"inject":["b3"],"sampling":{"ratio":0,"respect_incoming":false}}"#,
    );
    let v = exchange(&mut w, &[("b3", &format!("{B3_TRACE}-{B3_SPAN}-d"))]);
    assert!(one(&v, "b3").ends_with("-0"), "{}", one(&v, "b3"));
    // Passthrough that flips the sampled flag must change the parent-id too (W3C rule).
    let mut w = worker(
        &host,
        r#"{"role":"passthrough","sampling":{"ratio":0,"respect_incoming":false}}"#,
    );
    let v = exchange(&mut w, &[("traceparent", TP)]);
    let (trace, parent, flags) = traceparent(&one(&v, "traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_ne!(parent, PARENT);
}

#[test]
fn clear_extracted_removes_formats_that_are_not_injected() {
    let b3 = format!("{B3_TRACE}-{B3_SPAN}-1");
    let headers = [
        ("traceparent", TP),
        ("b3", b3.as_str()),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-sampled", "1"),
    ];
    let host = Host::new();
    let mut w = worker(&host, r#"{"clear_extracted":false}"#);
    let v = exchange(&mut w, &headers);
    assert_eq!(one(&v, "b3"), b3);
    assert_eq!(one(&v, "x-b3-traceid"), B3_TRACE);
    let mut w = worker(&host, r#"{"clear_extracted":true}"#);
    let v = exchange(&mut w, &headers);
    let names: Vec<String> = upstream(&v)
        .pairs()
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .filter(|k| !k.starts_with(':'))
        .collect();
    assert_eq!(names, ["traceparent"]);
}

#[test]
fn response_header_echoes_the_trace_id() {
    let host = Host::new();
    let mut w = worker(&host, r#"{"response_header":"X-Trace-Id"}"#);
    let v = exchange(&mut w, &[("traceparent", TP)]);
    assert_eq!(client(&v).get_all("x-trace-id"), [TRACE]);
    // A new trace: the echoed id is the one the upstream got; an upstream value is replaced.
    let id = w.open_stream().unwrap();
    w.send_request_headers(
        id,
        &[(":method", "GET"), (":path", "/"), (":authority", "a")],
        true,
    )
    .unwrap();
    w.send_response_headers(id, &[(":status", "200"), ("x-trace-id", "upstream")], true)
        .unwrap();
    let v = w.complete(id).unwrap();
    let (trace, _, _) = traceparent(&one(&v, "traceparent"));
    assert_eq!(client(&v).get_all("x-trace-id"), [trace]);
    // 64-bit B3 trace injected only as B3: echoed in the width the upstream sees.
    let mut w = worker(&host, r#"{"inject":["b3"],"response_header":"x-trace-id"}"#);
    let v = exchange(&mut w, &[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
    assert_eq!(
        client(&v).get("x-trace-id").as_deref(),
        Some("64fe8b2a57d3eff7")
    );
    // Off by default.
    let mut w = worker(&host, "");
    let v = exchange(&mut w, &[("traceparent", TP)]);
    assert!(!client(&v).contains("x-trace-id"));
}

#[test]
fn trace_id_is_echoed_on_local_replies_of_later_filters_only() {
    let replier = testing::module("harness-test-module");
    let host = Host::new();
    let trace = PluginConfig::new(&testing::module("trace-propagation"))
        .name("trace")
        .configuration(r#"{"response_header":"x-trace-id"}"#);
    let other = PluginConfig::new(&replier).name("replier");
    // trace-propagation first: the 403 of the later filter carries the id.
    let mut w = Worker::new(&host, &[trace.clone(), other.clone()]).unwrap();
    let v = exchange(&mut w, &[("traceparent", TP), ("x-cmd", "local-reply")]);
    assert_eq!(v.status(), Some(403));
    assert_eq!(client(&v).get("x-trace-id").as_deref(), Some(TRACE));
    // A filter before it replies: the request phase never ran, so there is nothing to echo
    // (and no attempt to read request headers, which Envoy would refuse).
    let mut w = Worker::new(&host, &[other, trace]).unwrap();
    let v = exchange(&mut w, &[("traceparent", TP), ("x-cmd", "local-reply")]);
    assert_eq!(v.status(), Some(403));
    assert!(!client(&v).contains("x-trace-id"));
}

#[test]
fn invalid_traceparents_restart_the_trace_and_are_counted() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let invalid = [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        "hello\r\nx-evil: 1",
    ];
    for tp in invalid {
        let v = exchange(&mut w, &[("traceparent", tp), ("tracestate", "foo=1")]);
        let (trace, _, flags) = traceparent(&one(&v, "traceparent"));
        assert_ne!(trace, TRACE, "{tp}");
        assert_eq!(flags, "03");
        assert!(
            !upstream(&v).contains("tracestate"),
            "tracestate is dropped on restart"
        );
    }
    assert_eq!(host.counter(RESTARTED), invalid.len() as u64);
    assert_eq!(host.counter(STARTED), 0);
    // One debug line per refusal, naming the rule but never the value.
    assert!(w.logged(
        LogLevel::Debug,
        "ignoring invalid traceparent: the trace-id is all zeroes"
    ));
    assert!(w.logged(LogLevel::Debug, "version ff is forbidden"));
    assert!(!w.logs().iter().any(|l| l.message.contains("x-evil")));
}

#[test]
fn duplicated_traceparent_restarts() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let v = exchange(&mut w, &[("traceparent", TP), ("traceparent", TP)]);
    let values = upstream(&v).get_all("traceparent");
    assert_eq!(values.len(), 1, "exactly one traceparent upstream");
    assert_ne!(traceparent(&values[0]).0, TRACE);
    assert_eq!(host.counter(RESTARTED), 1);
    assert!(w.logged(LogLevel::Debug, "the header is sent more than once"));
}

#[test]
fn tracestate_with_duplicated_keys_keeps_the_first_of_each() {
    // w3c/trace-context's test_tracestate_duplicated_keys (since its PR #477): the header is
    // passed on; a receiver may drop the repeats. The first (left-most, most recent) stays.
    let host = Host::new();
    let mut w = worker(&host, "");
    for (fields, want) in [
        (&["foo=1,foo=1"][..], "foo=1"),
        (&["foo=1,bar=2,foo=3"][..], "foo=1,bar=2"),
        (&["foo=1", "foo=2"][..], "foo=1"),
    ] {
        let mut headers = vec![("traceparent", TP)];
        headers.extend(fields.iter().map(|f| ("tracestate", *f)));
        let v = exchange(&mut w, &headers);
        assert_eq!(one(&v, "tracestate"), want, "{fields:?}");
        assert_eq!(traceparent(&one(&v, "traceparent")).0, TRACE);
    }
    assert!(!w.logged(LogLevel::Debug, "ignoring invalid tracestate"));
    // Also in passthrough, where a valid tracestate otherwise goes through byte for byte.
    let mut w = worker(&host, r#"{"role":"passthrough"}"#);
    let v = exchange(
        &mut w,
        &[
            ("traceparent", TP),
            ("tracestate", "rojo=1, congo=2,rojo=3"),
        ],
    );
    assert_eq!(one(&v, "tracestate"), "rojo=1,congo=2");
    assert_eq!(one(&v, "traceparent"), TP);
    // Continued traces, not restarts, and nothing logged as invalid.
    assert_eq!(host.counter(EXTRACTED_W3C), 4);
    assert_eq!(host.counter(RESTARTED), 0);
    assert!(!w.logged(LogLevel::Debug, "ignoring invalid tracestate"));
}

#[test]
fn tracestate_is_combined_validated_and_bounded() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let v = exchange(
        &mut w,
        &[
            ("traceparent", TP),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "baz=3"),
        ],
    );
    assert_eq!(one(&v, "tracestate"), "foo=1,bar=2,baz=3");
    // Any invalid member discards it all; the traceparent is unaffected.
    let v = exchange(
        &mut w,
        &[("traceparent", TP), ("tracestate", "foo=1,Bad=2")],
    );
    assert!(!upstream(&v).contains("tracestate"));
    assert_eq!(traceparent(&one(&v, "traceparent")).0, TRACE);
    assert!(w.logged(LogLevel::Debug, "ignoring invalid tracestate"));
    // Longer than 512: whole entries dropped, large ones first.
    let large = format!("big={}", "x".repeat(200));
    let small: Vec<String> = (0..12)
        .map(|i| format!("k{i:02}={}", "v".repeat(30)))
        .collect();
    let value = format!("{},{large},{}", small[..6].join(","), small[6..].join(","));
    let v = exchange(&mut w, &[("traceparent", TP), ("tracestate", &value)]);
    assert_eq!(one(&v, "tracestate"), small.join(","));
    assert_eq!(host.counter(EXTRACTED_W3C), 3);
}

#[test]
fn baggage_over_the_limits_loses_whole_members_from_the_right() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let within: Vec<String> = (0..64).map(|i| format!("k{i}=v{i}")).collect();
    let v = exchange(&mut w, &[("baggage", &within.join(","))]);
    assert_eq!(one(&v, "baggage"), within.join(","));
    let over: Vec<String> = (0..80).map(|i| format!("k{i}=v{i}")).collect();
    let v = exchange(
        &mut w,
        &[
            ("baggage", &over[..50].join(",")),
            ("baggage", &over[50..].join(",")),
        ],
    );
    assert_eq!(one(&v, "baggage"), over[..64].join(","));
    let wide: Vec<String> = (0..3)
        .map(|i| format!("k{i}={}", "v".repeat(3000)))
        .collect();
    let v = exchange(&mut w, &[("baggage", &wide.join(","))]);
    assert_eq!(one(&v, "baggage"), wide[..2].join(","));
}

#[test]
fn non_utf8_and_garbage_headers_never_trap() {
    let host = Host::new();
    let mut w = worker(&host, r#"{"inject":["w3c","b3","b3multi"]}"#);
    let garbage: [&[u8]; 5] = [b"\xff\xfe\x00", b"00-\xc3\xa9", b"", b"-", b"0-0-0-0-0"];
    for bytes in garbage {
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/".to_vec()),
            (b":authority".to_vec(), b"a".to_vec()),
        ];
        for name in [
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
            "x-b3-flags",
            "baggage",
        ] {
            pairs.push((name.as_bytes().to_vec(), bytes.to_vec()));
        }
        let id = w.open_stream().unwrap();
        w.send_request_headers_map(id, HeaderMap::from_byte_pairs(pairs), true)
            .unwrap();
        let v = w.stream(id).unwrap();
        traceparent(&one(&v, "traceparent"));
        let b3 = one(&v, "b3");
        assert_eq!(b3.split('-').count(), 3, "{b3}");
        assert!(!upstream(&v).contains("tracestate"));
    }
    assert_eq!(host.counter(RESTARTED), 5);
}

/// Every kind of broken configuration is refused by `on_configure`, and the error line names
/// the field and what is wrong with it.
#[test]
fn bad_configurations_are_rejected_naming_the_field() {
    assert_configs_rejected(
        &testing::module("trace-propagation"),
        "trace-propagation: invalid plugin configuration: ",
        &[
            // Wrong types.
            (
                r#"{"extract":"w3c"}"#,
                &["extract: invalid type: string \"w3c\", expected a sequence"],
            ),
            (
                r#"{"inject":{"w3c":true}}"#,
                &["inject: invalid type: map, expected a sequence"],
            ),
            (
                r#"{"sampling":0.5}"#,
                &["sampling: invalid type: floating point `0.5`"],
            ),
            (
                r#"{"sampling":{"ratio":"0.5"}}"#,
                &["sampling.ratio: invalid type: string \"0.5\", expected f64"],
            ),
            (
                r#"{"sampling":{"respect_incoming":"no"}}"#,
                &["sampling.respect_incoming: invalid type: string \"no\", expected a boolean"],
            ),
            (
                r#"{"clear_extracted":1}"#,
                &["clear_extracted: invalid type: integer `1`, expected a boolean"],
            ),
            (
                r#"{"b3_single_parent_span_id":"true"}"#,
                &["b3_single_parent_span_id: invalid type: string"],
            ),
            (
                r#"{"response_header":7}"#,
                &["response_header: invalid type: integer `7`, expected a string"],
            ),
            (
                r#"{"tracestate_max_length":"1024"}"#,
                &["tracestate_max_length: invalid type: string \"1024\", expected u32"],
            ),
            ("[1]", &["the configuration must be a JSON object"]),
            ("w3c", &["the configuration must be a JSON object"]),
            (r#"{"role":"span""#, &["EOF while parsing an object"]),
            // Unknown fields, top level and nested.
            (
                r#"{"clear":true}"#,
                &["clear: unknown field `clear`, expected one of"],
            ),
            (
                r#"{"inject_formats":["w3c"]}"#,
                &["inject_formats: unknown field `inject_formats`"],
            ),
            (
                r#"{"sampling":{"rate":1}}"#,
                &["sampling.rate: unknown field `rate`"],
            ),
            (
                r#"{"sampling":{"ratio":0.5,"respect_incomming":true}}"#,
                &["sampling.respect_incomming: unknown field `respect_incomming`"],
            ),
            // Empty required values.
            (
                r#"{"inject":[]}"#,
                &["inject: must name at least one format"],
            ),
            (
                r#"{"response_header":""}"#,
                &["response_header: header name must not be empty"],
            ),
            // Duplicates.
            (
                r#"{"extract":["w3c","w3c"]}"#,
                &["extract: \"w3c\" is listed more than once"],
            ),
            (
                r#"{"inject":["b3","w3c","b3"]}"#,
                &["inject: \"b3\" is listed more than once"],
            ),
            // Invalid header names.
            (
                r#"{"response_header":"x trace"}"#,
                &["response_header: invalid character at position 1"],
            ),
            (
                r#"{"response_header":":status"}"#,
                &["response_header: pseudo-headers"],
            ),
            (
                r#"{"response_header":"transfer-encoding"}"#,
                &["response_header: connection/framing headers"],
            ),
            // Impossible limits.
            (
                r#"{"sampling":{"ratio":1.5}}"#,
                &["sampling.ratio: must be between 0.0 and 1.0, got 1.5"],
            ),
            (
                r#"{"sampling":{"ratio":-0.01}}"#,
                &["sampling.ratio: must be between 0.0 and 1.0, got -0.01"],
            ),
            (
                r#"{"sampling":{"ratio":1e400}}"#,
                &["sampling.ratio: number out of range"],
            ),
            (
                r#"{"tracestate_max_length":100}"#,
                &["tracestate_max_length: must be between 512 and 16447, got 100"],
            ),
            (
                r#"{"tracestate_max_length":16448}"#,
                &["tracestate_max_length: must be between 512 and 16447, got 16448"],
            ),
            (
                r#"{"tracestate_max_length":0}"#,
                &["tracestate_max_length: must be between 512 and 16447, got 0"],
            ),
            (
                r#"{"tracestate_max_length":-512}"#,
                &["tracestate_max_length: invalid value: integer `-512`, expected u32"],
            ),
            (
                r#"{"tracestate_max_length":4294967808}"#,
                &["tracestate_max_length: invalid value: integer `4294967808`, expected u32"],
            ),
            // Bad enum values.
            (
                r#"{"extract":["zipkin"]}"#,
                &["extract[0]: unknown variant `zipkin`"],
            ),
            (
                r#"{"extract":["w3c","B3"]}"#,
                &["extract[1]: unknown variant `B3`"],
            ),
            (
                r#"{"inject":["b3-multi"]}"#,
                &["inject[0]: unknown variant `b3-multi`"],
            ),
            (r#"{"inject":[null]}"#, &["inject[0]: expected value"]),
            (
                r#"{"role":"proxy"}"#,
                &["role: unknown variant `proxy`, expected `span` or `passthrough`"],
            ),
            (r#"{"role":"Span"}"#, &["role: unknown variant `Span`"]),
            (r#"{"role":true}"#, &["role: expected value"]),
        ],
    );
}

#[test]
fn per_request_cost_stays_small() {
    // Wasm instructions (harness fuel, host calls excluded) for the request + response header
    // callbacks of one typical exchange. Deterministic; the budget catches regressions.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 3] = [
        ("no context, new trace", "", &[]),
        ("w3c span", "", &[("traceparent", TP)]),
        (
            "w3c + tracestate, all formats injected, echo",
            r#"{"inject":["w3c","b3","b3multi"],"response_header":"x-trace-id"}"#,
            &[
                ("traceparent", TP),
                ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            ],
        ),
    ];
    for (label, config, extra) in cases {
        let host = Host::new();
        let mut w = worker(&host, config);
        let mut headers = vec![("user-agent", "curl/8"), ("accept", "*/*")];
        headers.extend_from_slice(extra);
        exchange(&mut w, &headers);
        w.clear_history();
        exchange(&mut w, &headers);
        let fuel: u64 = w
            .history()
            .iter()
            .filter(|c| c.callback.contains("headers"))
            .map(|c| c.fuel)
            .sum();
        eprintln!(
            "trace-propagation, {label}: {fuel} wasm instructions for request + response headers"
        );
        assert!(fuel < 60_000, "{label}: {fuel}");
    }
}
