//! The real rate_limit.wasm in the harness, `global` and `hybrid` rules: the test plays the
//! rate-limit service, answering each `ShouldRateLimit` call the filter makes (OK, OVER_LIMIT,
//! gRPC errors, DEADLINE_EXCEEDED — what Envoy reports when `timeout_ms` passes — and garbage),
//! and checks the request stays paused until then, the 429 and its headers, `failure_mode`,
//! the hybrid local bucket in front, and the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use prost::Message;
use proxy_wasm_harness::testing;
use proxy_wasm_harness::{
    GrpcResponse, Host, PendingGrpcCall, StreamId, StreamOptions, StreamView, Worker,
};
use rate_limit::rls::{
    Code, DescriptorStatus, Duration, HeaderValue, RateLimit, RateLimitRequest, RateLimitResponse,
    Unit,
};

fn worker(host: &Host, config: &str) -> Worker {
    testing::worker(host, "rate-limit", "rate-limit", config)
}

fn host() -> Host {
    let host = Host::new();
    host.add_cluster("rls");
    host
}

/// Sends the request headers; returns the stream and the gRPC call it made, if any.
fn start(w: &mut Worker, path: &str) -> (StreamId, Option<PendingGrpcCall>) {
    let id = w
        .open_stream_with(StreamOptions {
            source_address: "10.0.0.7:4000".to_owned(),
            ..StreamOptions::default()
        })
        .unwrap();
    w.send_request_headers(
        id,
        &[
            (":method", "GET"),
            (":path", path),
            (":authority", "gw.example.com"),
            ("x-tenant", "acme"),
        ],
        true,
    )
    .unwrap();
    let mut calls = w.pending_grpc_calls();
    assert!(calls.len() <= 1, "{calls:?}");
    (id, calls.pop())
}

/// Lets the upstream answer (when the request got there) and completes the stream.
fn finish(w: &mut Worker, id: StreamId) -> StreamView {
    let v = w.stream(id).unwrap();
    if v.local_response.is_none() {
        assert!(v.upstream_request_headers.is_some(), "request still paused");
        w.send_response_headers(id, &[(":status", "200")], true)
            .unwrap();
    }
    w.complete(id).unwrap()
}

fn answer(code: Code, remaining: u32, reset_s: i64) -> Vec<u8> {
    RateLimitResponse {
        overall_code: code as i32,
        statuses: vec![DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                name: "server-side".into(),
                requests_per_unit: 100,
                unit: Unit::Minute as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration {
                seconds: reset_s,
                nanos: 0,
            }),
        }],
        response_headers_to_add: vec![HeaderValue {
            key: "x-ratelimit-by".into(),
            value: "rls".into(),
            raw_value: Vec::new(),
        }],
        request_headers_to_add: vec![HeaderValue {
            key: "x-ratelimit-checked".into(),
            value: "global".into(),
            raw_value: Vec::new(),
        }],
    }
    .encode_to_vec()
}

const GLOBAL: &str = r#"{"rules":[{"name":"api","key":["client_ip",{"header":"x-tenant"}],
    "mode":"global","service":{"cluster":"rls","domain":"gatewasm","timeout_ms":25}}]}"#;

#[test]
fn global_ok_and_over_limit() {
    let host = host();
    let mut w = worker(&host, GLOBAL);
    let (id, call) = start(&mut w, "/api/orders?x=1");
    let call = call.expect("a ShouldRateLimit call");
    assert_eq!(call.upstream, "rls");
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    assert_eq!(call.timeout, std::time::Duration::from_millis(25));
    let req = RateLimitRequest::decode(call.messages[0].as_slice()).unwrap();
    assert_eq!(req.domain, "gatewasm");
    let entries: Vec<(&str, &str)> = req.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        entries,
        [
            ("rule", "api"),
            ("remote_address", "10.0.0.7"),
            ("x-tenant", "acme")
        ]
    );
    // Paused until the service answers.
    let v = w.stream(id).unwrap();
    assert!(v.upstream_request_headers.is_none() && v.local_response.is_none());
    w.respond_grpc_call(call.id, GrpcResponse::ok(answer(Code::Ok, 41, 30)))
        .unwrap();
    let v = finish(&mut w, id);
    assert_eq!(v.status(), Some(200));
    let up = v.upstream_request_headers.as_ref().unwrap();
    assert_eq!(up.get("x-ratelimit-checked").as_deref(), Some("global"));
    let resp = v.client_response_headers.as_ref().unwrap();
    assert_eq!(resp.get("ratelimit-remaining").as_deref(), Some("41"));
    assert_eq!(resp.get("ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(resp.get("ratelimit-reset").as_deref(), Some("30"));
    assert_eq!(
        resp.get("ratelimit-policy").as_deref(),
        Some("\"api\";q=100;w=60")
    );
    assert_eq!(resp.get("x-ratelimit-by").as_deref(), Some("rls"));

    let (id, call) = start(&mut w, "/api/orders");
    w.respond_grpc_call(
        call.unwrap().id,
        GrpcResponse::ok(answer(Code::OverLimit, 0, 12)),
    )
    .unwrap();
    let v = finish(&mut w, id);
    assert!(v.upstream_request_headers.is_none());
    let reply = v.local_response.as_ref().unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after").as_deref(), Some("12"));
    assert_eq!(
        reply.headers.get("ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(reply.headers.get("ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(reply.headers.get("x-ratelimit-by").as_deref(), Some("rls"));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "rate_limited");

    assert_eq!(host.counter("gatewasm_rate_limit_global_ok_api"), 1);
    assert_eq!(host.counter("gatewasm_rate_limit_global_over_limit_api"), 1);
    assert_eq!(host.counter("gatewasm_rate_limit_allowed_api"), 1);
    assert_eq!(host.counter("gatewasm_rate_limit_denied_api"), 1);
}

#[test]
fn failures_follow_failure_mode_and_garbage_does_not_trap() {
    for mode in ["allow", "deny"] {
        let host = host();
        let config = GLOBAL.replace(
            r#""timeout_ms":25"#,
            &format!(r#""timeout_ms":25,"failure_mode":"{mode}""#),
        );
        let mut w = worker(&host, &config);
        let responses = [
            GrpcResponse::error(14, "upstream connect error"),
            GrpcResponse::error(4, "deadline exceeded"),
            GrpcResponse::ok(vec![0xff; 7]),
            GrpcResponse::ok(Vec::new()),
        ];
        for response in responses {
            let (id, call) = start(&mut w, "/api/x");
            w.respond_grpc_call(call.unwrap().id, response).unwrap();
            let v = finish(&mut w, id);
            if mode == "allow" {
                assert_eq!(v.status(), Some(200), "{mode}");
                assert!(
                    v.client_response_headers
                        .as_ref()
                        .unwrap()
                        .get("ratelimit-remaining")
                        .is_none()
                );
            } else {
                let reply = v.local_response.as_ref().unwrap();
                assert_eq!(reply.status, 429);
                assert_eq!(reply.headers.get("retry-after").as_deref(), Some("1"));
                let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
                assert_eq!(body["error"], "rate_limit_unavailable");
            }
        }
        assert_eq!(host.counter("gatewasm_rate_limit_global_error_api"), 3);
        assert_eq!(host.counter("gatewasm_rate_limit_global_timeout_api"), 1);
        assert_eq!(host.counter("gatewasm_rate_limit_global_ok_api"), 0);
        let (allowed, denied) = if mode == "allow" { (4, 0) } else { (0, 4) };
        assert_eq!(host.counter("gatewasm_rate_limit_allowed_api"), allowed);
        assert_eq!(host.counter("gatewasm_rate_limit_denied_api"), denied);
    }
}

#[test]
fn a_failure_at_the_deadline_is_a_timeout() {
    // Envoy reports a timed-out call as UNAVAILABLE (its async client's 504); the filter tells
    // it from an error by the time elapsed since the dispatch: 90 % of the 25 ms timeout.
    let host = host();
    let mut w = worker(&host, GLOBAL);
    let (id, call) = start(&mut w, "/api/x");
    w.advance(std::time::Duration::from_millis(22)).unwrap();
    w.respond_grpc_call(
        call.unwrap().id,
        GrpcResponse::error(14, "upstream connect error"),
    )
    .unwrap();
    assert_eq!(finish(&mut w, id).status(), Some(200));
    let (id, call) = start(&mut w, "/api/x");
    w.advance(std::time::Duration::from_millis(23)).unwrap();
    w.respond_grpc_call(
        call.unwrap().id,
        GrpcResponse::error(14, "upstream request timeout"),
    )
    .unwrap();
    assert_eq!(finish(&mut w, id).status(), Some(200));
    assert_eq!(host.counter("gatewasm_rate_limit_global_error_api"), 1);
    assert_eq!(host.counter("gatewasm_rate_limit_global_timeout_api"), 1);
}

#[test]
fn unknown_cluster_is_a_failure_without_a_pause() {
    let host = Host::new(); // no "rls" cluster: dispatch_grpc_call fails at once
    let config = GLOBAL.replace(r#""timeout_ms":25"#, r#""failure_mode":"deny""#);
    let mut w = worker(&host, &config);
    let (id, call) = start(&mut w, "/api/x");
    assert!(call.is_none());
    let v = finish(&mut w, id);
    assert_eq!(v.local_response.as_ref().unwrap().status, 429);
    assert_eq!(host.counter("gatewasm_rate_limit_global_error_api"), 1);
}

#[test]
fn hybrid_asks_the_service_only_when_the_local_bucket_allows() {
    let host = host();
    let config = r#"{"rules":[{"name":"h","key":["route"],"mode":"hybrid","limit":3,
        "window_s":60,"service":{"cluster":"rls","domain":"gw"}},
        {"name":"other","match":{"path_prefix":"/none"},"key":["route"],"limit":1}]}"#;
    let mut w = worker(&host, config);
    // 1: local OK (2 left), global OK with fewer remaining: the global figures are shown.
    let (id, call) = start(&mut w, "/a");
    w.respond_grpc_call(call.unwrap().id, GrpcResponse::ok(answer(Code::Ok, 0, 5)))
        .unwrap();
    let v = finish(&mut w, id);
    let resp = v.client_response_headers.as_ref().unwrap();
    assert_eq!(resp.get("ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(resp.get("ratelimit-limit").as_deref(), Some("100"));
    // 2: local OK (1 left), global OK with more remaining: the local figures are shown.
    let (id, call) = start(&mut w, "/a");
    let req = RateLimitRequest::decode(call.as_ref().unwrap().messages[0].as_slice()).unwrap();
    assert_eq!(req.descriptors[0].entries.len(), 1, "route: the rule only");
    w.respond_grpc_call(call.unwrap().id, GrpcResponse::ok(answer(Code::Ok, 50, 5)))
        .unwrap();
    let v = finish(&mut w, id);
    let resp = v.client_response_headers.as_ref().unwrap();
    assert_eq!(resp.get("ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(resp.get("ratelimit-limit").as_deref(), Some("3"));
    // 3: local OK (0 left), global OVER_LIMIT: the client sees the service's figures, not the
    //    local bucket's, and the service's header once (the reply passes the response path).
    let (id, call) = start(&mut w, "/a");
    w.respond_grpc_call(
        call.unwrap().id,
        GrpcResponse::ok(answer(Code::OverLimit, 0, 9)),
    )
    .unwrap();
    let v = finish(&mut w, id);
    assert_eq!(v.status(), Some(429));
    let resp = v.client_response_headers.as_ref().unwrap();
    assert_eq!(resp.get("ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(resp.get("retry-after").as_deref(), Some("9"));
    assert_eq!(resp.get_all("x-ratelimit-by"), vec!["rls".to_owned()]);
    // 4: the local bucket is empty: 429 at once, the service is not asked.
    let (id, call) = start(&mut w, "/a");
    assert!(call.is_none());
    let v = finish(&mut w, id);
    assert_eq!(v.local_response.as_ref().unwrap().status, 429);
    assert_eq!(host.counter("gatewasm_rate_limit_global_ok_h"), 2);
    assert_eq!(host.counter("gatewasm_rate_limit_global_over_limit_h"), 1);
    assert_eq!(host.counter("gatewasm_rate_limit_allowed_h"), 3);
    assert_eq!(host.counter("gatewasm_rate_limit_denied_h"), 2);
}

#[test]
fn a_stream_gone_before_the_answer_is_harmless() {
    let host = host();
    let mut w = worker(&host, GLOBAL);
    let (id, call) = start(&mut w, "/api/x");
    // The client goes away; the answer arrives afterwards (the SDK finds no context for it).
    w.complete(id).unwrap();
    w.respond_grpc_call(call.unwrap().id, GrpcResponse::ok(answer(Code::Ok, 1, 1)))
        .unwrap();
    // The VM still works.
    let (id, call) = start(&mut w, "/api/y");
    w.respond_grpc_call(call.unwrap().id, GrpcResponse::ok(answer(Code::Ok, 1, 1)))
        .unwrap();
    assert_eq!(finish(&mut w, id).status(), Some(200));
}

/// Issue #19: the request headers the service asks to add were appended, so a copy the client
/// sent first survived (and most upstreams read the first value). The first value of a name now
/// replaces the client's copies; further values of that name from the service are appended.
#[test]
fn service_request_headers_replace_the_clients() {
    let host = host();
    let mut w = worker(&host, GLOBAL);
    let id = w
        .open_stream_with(StreamOptions {
            source_address: "10.0.0.7:4000".to_owned(),
            ..StreamOptions::default()
        })
        .unwrap();
    w.send_request_headers(
        id,
        &[
            (":method", "GET"),
            (":path", "/api/x"),
            (":authority", "gw.example.com"),
            ("x-tenant", "acme"),
            ("x-ratelimit-foo", "spoof"),
            ("X-RateLimit-Foo", "spoof-2"),
            ("x-ratelimit-plan", "spoof"),
        ],
        true,
    )
    .unwrap();
    let call = w
        .pending_grpc_calls()
        .pop()
        .expect("a ShouldRateLimit call");
    let header = |key: &str, value: &str| HeaderValue {
        key: key.into(),
        value: value.into(),
        raw_value: Vec::new(),
    };
    let answer = RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: Vec::new(),
        response_headers_to_add: Vec::new(),
        request_headers_to_add: vec![
            header("x-ratelimit-foo", "real"),
            header("X-RateLimit-Plan", "gold"),
            header("x-ratelimit-plan", "silver"),
        ],
    };
    w.respond_grpc_call(call.id, GrpcResponse::ok(answer.encode_to_vec()))
        .unwrap();
    let v = finish(&mut w, id);
    let up = v.upstream_request_headers.as_ref().unwrap();
    assert_eq!(up.get_all("x-ratelimit-foo"), vec!["real".to_owned()]);
    assert_eq!(
        up.get_all("x-ratelimit-plan"),
        vec!["gold".to_owned(), "silver".to_owned()],
        "the service's own values are all kept"
    );
    assert_eq!(up.get("x-tenant").as_deref(), Some("acme"));
}
