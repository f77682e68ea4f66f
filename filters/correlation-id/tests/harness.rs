//! The real correlation_id.wasm in the harness: every option, the metrics, bad configurations,
//! and the ID on local replies produced by a filter later in the chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm_harness::testing::{self, upstream};
use proxy_wasm_harness::{
    HeaderMap, Host, PluginConfig, StreamView, Worker, assert_configs_rejected,
};
use std::collections::HashSet;

fn worker(host: &Host, config: &str) -> Worker {
    testing::worker(host, "correlation-id", "cid", config)
}

const GENERATED: &str = "gatewasm_correlation_id_generated";
const PRESERVED: &str = "gatewasm_correlation_id_preserved";
const REPLACED: &str = "gatewasm_correlation_id_replaced_invalid";

fn exchange(w: &mut Worker, extra: &[(&str, &str)], response: &[(&str, &str)]) -> StreamView {
    let mut req = vec![
        (":method", "GET"),
        (":path", "/"),
        (":authority", "api.example.com"),
    ];
    req.extend_from_slice(extra);
    let mut resp = vec![(":status", "200")];
    resp.extend_from_slice(response);
    w.exchange(&req, None, &resp, None)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn client(v: &StreamView) -> HeaderMap {
    v.client_response_headers
        .clone()
        .expect("client got a response")
}

fn is_uuid(s: &str, version: char) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && s.chars()
            .filter(|c| *c != '-')
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && b[14] == version as u8
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

#[test]
fn generates_a_uuid4_and_echoes_it_to_the_client() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let v = exchange(&mut w, &[], &[]);
    let id = upstream(&v).get("x-request-id").unwrap();
    assert!(is_uuid(&id, '4'), "{id}");
    assert_eq!(upstream(&v).get_all("x-request-id").len(), 1);
    assert_eq!(client(&v).get("x-request-id"), Some(id));
    assert_eq!(
        (
            host.counter(GENERATED),
            host.counter(PRESERVED),
            host.counter(REPLACED)
        ),
        (1, 0, 0)
    );
}

#[test]
fn keeps_a_valid_incoming_id_and_replaces_what_the_upstream_sent() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let v = exchange(
        &mut w,
        &[("x-request-id", "abc.DEF_1:2-3")],
        &[("x-request-id", "upstream-made-this")],
    );
    assert_eq!(
        upstream(&v).get("x-request-id").as_deref(),
        Some("abc.DEF_1:2-3")
    );
    assert_eq!(client(&v).get_all("x-request-id"), vec!["abc.DEF_1:2-3"]);
    assert_eq!(host.counter(PRESERVED), 1);
}

#[test]
fn replaces_invalid_incoming_ids_and_never_logs_them() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let long = "a".repeat(129);
    let exact = "b".repeat(128);
    let bad: Vec<&str> = vec![
        "",
        "has space",
        "quote\"d",
        "semi;colon",
        "tab\there",
        "ünïcode",
        &long,
        "evil\u{7f}",
    ];
    for value in &bad {
        let v = exchange(&mut w, &[("x-request-id", value)], &[]);
        let got = upstream(&v).get("x-request-id").unwrap();
        assert!(is_uuid(&got, '4'), "{value:?} was forwarded as {got:?}");
    }
    assert_eq!(host.counter(REPLACED), bad.len() as u64);
    let v = exchange(&mut w, &[("x-request-id", &exact)], &[]);
    assert_eq!(
        upstream(&v).get("x-request-id"),
        Some(exact.clone()),
        "128 characters is the limit, inclusive"
    );
    let logs = w.logs();
    assert!(
        !logs
            .iter()
            .any(|l| l.message.contains("has space") || l.message.contains("evil"))
    );
}

#[test]
fn a_duplicated_header_is_invalid_and_becomes_one_fresh_id() {
    let host = Host::new();
    let mut w = worker(&host, "");
    let v = exchange(
        &mut w,
        &[("x-request-id", "first"), ("X-Request-Id", "second")],
        &[],
    );
    let all = upstream(&v).get_all("x-request-id");
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(is_uuid(&all[0], '4'));
    assert_eq!(host.counter(REPLACED), 1);
}

#[test]
fn trust_incoming_false_always_generates() {
    let host = Host::new();
    let mut w = worker(&host, r#"{"trust_incoming": false}"#);
    let v = exchange(&mut w, &[("x-request-id", "perfectly-valid")], &[]);
    let id = upstream(&v).get("x-request-id").unwrap();
    assert_ne!(id, "perfectly-valid");
    assert!(is_uuid(&id, '4'));
    assert_eq!(host.counter(GENERATED), 1);
}

#[test]
fn uuid7_ids_are_time_ordered_with_the_virtual_clock() {
    let host = Host::new();
    let mut w = worker(&host, r#"{"generator": "uuid7"}"#);
    let mut ids = Vec::new();
    for _ in 0..50 {
        let v = exchange(&mut w, &[], &[]);
        ids.push(upstream(&v).get("x-request-id").unwrap());
        w.advance(std::time::Duration::from_millis(3)).unwrap();
    }
    assert!(ids.iter().all(|id| is_uuid(id, '7')), "{ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "uuid7 sorts by creation time");
    // The first 48 bits are the Unix time in ms: the harness clock starts at 2026-01-01.
    let ms = u64::from_str_radix(&ids[0].replace('-', "")[..12], 16).unwrap();
    assert_eq!(ms, 1_767_225_600_000);
}

#[test]
fn custom_header_name_max_length_and_response_header() {
    let host = Host::new();
    let mut w = worker(
        &host,
        r#"{"header": "X-Correlation-ID", "max_length": 8, "response_header": "x-trace-ref"}"#,
    );
    let v = exchange(&mut w, &[("x-correlation-id", "12345678")], &[]);
    assert_eq!(
        upstream(&v).get("x-correlation-id").as_deref(),
        Some("12345678")
    );
    assert_eq!(client(&v).get("x-trace-ref").as_deref(), Some("12345678"));
    assert!(!client(&v).contains("x-correlation-id"));
    let v = exchange(&mut w, &[("x-correlation-id", "123456789")], &[]);
    assert_ne!(
        upstream(&v).get("x-correlation-id").as_deref(),
        Some("123456789")
    );
    assert!(
        !upstream(&v).contains("x-request-id"),
        "only the configured header is touched"
    );
}

#[test]
fn echo_downstream_false_leaves_the_response_alone() {
    let host = Host::new();
    let mut w = worker(&host, r#"{"echo_downstream": false}"#);
    let v = exchange(&mut w, &[], &[]);
    assert!(upstream(&v).contains("x-request-id"));
    assert!(!client(&v).contains("x-request-id"));
}

#[test]
fn ids_are_unique_across_workers() {
    let host = Host::new();
    let mut seen = HashSet::new();
    let mut workers: Vec<Worker> = (0..2)
        .map(|_| worker(&host, r#"{"trust_incoming": false}"#))
        .collect();
    for i in 0..2000 {
        let v = exchange(&mut workers[i % 2], &[], &[]);
        assert!(seen.insert(upstream(&v).get("x-request-id").unwrap()));
    }
    assert_eq!(host.counter(GENERATED), 2000);
}

/// Every kind of broken configuration is refused by `on_configure`, and the error line names
/// the field and what is wrong with it.
#[test]
fn bad_configurations_are_rejected_naming_the_field() {
    assert_configs_rejected(
        &testing::module("correlation-id"),
        "correlation-id: invalid plugin configuration: ",
        &[
            // Wrong types.
            (
                r#"{"trust_incoming": "yes"}"#,
                &["trust_incoming: invalid type: string \"yes\", expected a boolean"],
            ),
            (
                r#"{"echo_downstream": 1}"#,
                &["echo_downstream: invalid type: integer `1`, expected a boolean"],
            ),
            (
                r#"{"max_length": "64"}"#,
                &["max_length: invalid type: string \"64\", expected u32"],
            ),
            (
                r#"{"max_length": 64.5}"#,
                &["max_length: invalid type: floating point `64.5`, expected u32"],
            ),
            (
                r#"{"header": 42}"#,
                &["header: invalid type: integer `42`, expected a string"],
            ),
            (
                r#"{"header": ["x-request-id"]}"#,
                &["header: invalid type: sequence, expected a string"],
            ),
            (
                r#"{"header": null}"#,
                &["header: invalid type: null, expected a string"],
            ),
            (
                r#"{"response_header": true}"#,
                &["response_header: invalid type: boolean `true`, expected a string"],
            ),
            // Not a JSON object at all.
            (r#"[1, 2]"#, &["the configuration must be a JSON object"]),
            ("not json", &["the configuration must be a JSON object"]),
            (
                r#""x-request-id""#,
                &["the configuration must be a JSON object"],
            ),
            (r#"{"max_length": 64"#, &["EOF while parsing an object"]),
            (r#"{} {}"#, &["trailing characters"]),
            // Unknown fields (there are no nested objects in this configuration).
            (
                r#"{"headr": "x"}"#,
                &["headr: unknown field `headr`, expected one of"],
            ),
            (
                r#"{"maxLength": 5}"#,
                &["maxLength: unknown field `maxLength`"],
            ),
            (
                r#"{"header": "x-id", "generator": "uuid4", "trust": false}"#,
                &["trust: unknown field `trust`"],
            ),
            // Duplicate fields (serde names the field in the message, not as a path).
            (
                r#"{"header": "a", "header": "b"}"#,
                &["duplicate field `header`"],
            ),
            // Empty required values.
            (
                r#"{"header": ""}"#,
                &["header: header name must not be empty"],
            ),
            (
                r#"{"response_header": ""}"#,
                &["response_header: header name must not be empty"],
            ),
            // Invalid header names.
            (
                r#"{"header": "bad header"}"#,
                &["header: invalid character at position 3"],
            ),
            (
                r#"{"header": "x-id:"}"#,
                &["header: invalid character at position 4"],
            ),
            (
                r#"{"header": "x-ïd"}"#,
                &["header: invalid character at position 2"],
            ),
            (r#"{"header": ":path"}"#, &["header: pseudo-headers"]),
            (
                r#"{"header": "Content-Length"}"#,
                &["header: connection/framing headers"],
            ),
            (
                r#"{"response_header": "connection"}"#,
                &["response_header: connection/framing headers"],
            ),
            // Impossible limits: zero, too large, negative, beyond u32.
            (
                r#"{"max_length": 0}"#,
                &["max_length: must be between 1 and 1024, got 0"],
            ),
            (
                r#"{"max_length": 1025}"#,
                &["max_length: must be between 1 and 1024, got 1025"],
            ),
            (
                r#"{"max_length": -1}"#,
                &["max_length: invalid value: integer `-1`, expected u32"],
            ),
            (
                r#"{"max_length": 4294967296}"#,
                &["max_length: invalid value: integer `4294967296`, expected u32"],
            ),
            (
                r#"{"max_length": 1e3}"#,
                &["max_length: invalid type: floating point `1000.0`, expected u32"],
            ),
            // Bad enum values.
            (
                r#"{"generator": "uuid1"}"#,
                &["generator: unknown variant `uuid1`, expected `uuid4` or `uuid7`"],
            ),
            (
                r#"{"generator": "UUID4"}"#,
                &["generator: unknown variant `UUID4`"],
            ),
            (r#"{"generator": ""}"#, &["generator: unknown variant ``"]),
            (r#"{"generator": 4}"#, &["generator: expected value"]),
            (r#"{"generator": null}"#, &["generator: expected value"]),
        ],
    );
}

#[test]
fn the_id_is_on_local_replies_sent_by_a_later_filter() {
    // The harness test module sends a 403 local reply when asked; correlation-id runs first.
    let host = Host::new();
    let replier = testing::module("harness-test-module");
    let mut w = Worker::new(
        &host,
        &[
            PluginConfig::new(&testing::module("correlation-id")).name("cid"),
            PluginConfig::new(&replier).name("auth"),
        ],
    )
    .unwrap();
    let id = w.open_stream().unwrap();
    w.send_request_headers(
        id,
        &[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "a"),
            ("x-cmd", "local-reply"),
        ],
        true,
    )
    .unwrap();
    let v = w.stream(id).unwrap();
    assert!(v.upstream_request_headers.is_none());
    assert_eq!(v.status(), Some(403));
    let echoed = client(&v)
        .get("x-request-id")
        .expect("the 403 carries the ID");
    assert!(is_uuid(&echoed, '4'));
}

#[test]
fn per_request_cost_in_wasm_instructions() {
    // Fuel is deterministic: print it so regressions show in test output; assert only a sane bound
    // far above today's figure, as a tripwire for accidental quadratic work.
    let host = Host::new();
    let mut w = worker(&host, "");
    exchange(&mut w, &[], &[]);
    w.clear_history();
    exchange(
        &mut w,
        &[
            ("x-request-id", "keep-me"),
            ("user-agent", "curl/8"),
            ("accept", "*/*"),
        ],
        &[],
    );
    let fuel: u64 = w
        .history()
        .iter()
        .filter(|c| c.callback.contains("headers"))
        .map(|c| c.fuel)
        .sum();
    eprintln!("correlation-id: {fuel} wasm instructions for request + response headers");
    assert!(fuel < 200_000, "{fuel}");
}
