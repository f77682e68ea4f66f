//! Hostile input against the real modules: random request and response header maps — odd
//! sizes, duplicates, pseudo-headers repeated or missing, obs-text bytes, very long values — fed
//! through the whole edge chain of `envoy-configs/gateway.yaml` (every gatewasm filter, with the
//! configuration users copy) in the harness. For every input: no module traps, and every header
//! the upstream or the client receives is one an HTTP/1.1 peer accepts (a token name, a value
//! without CR, LF, NUL or other control bytes but tab). Bounded (a fixed number of cases from a
//! fixed seed), so it runs in `just test`; `PROPTEST_CASES=N` runs more.
//!
//! Needs `just build`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;

use gatewasm_tests::deploy;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use proxy_wasm_harness::{HeaderMap, Host, PluginConfig, StreamOptions, Worker, testing};

/// The gatewasm filters of gateway.yaml, in chain order, with their configurations.
fn gateway_chain() -> Vec<PluginConfig> {
    deploy::FILTERS
        .iter()
        .filter_map(|f| {
            let config =
                deploy::envoy_filter_configuration("gateway.yaml", &f.envoy_filter_name()).ok()?;
            let module = testing::module(f.name);
            Some(
                PluginConfig::new(&module)
                    .name(&f.envoy_filter_name())
                    .vm_id(&f.envoy_filter_name())
                    .configuration(config.to_string()),
            )
        })
        .collect()
}

fn token_char() -> impl Strategy<Value = u8> {
    prop::sample::select(b"abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~".to_vec())
}

/// Names: mostly the ones our filters read (so the interesting paths run), some random tokens.
fn header_name() -> impl Strategy<Value = Vec<u8>> {
    let known = prop::sample::select(vec![
        "x-request-id",
        "traceparent",
        "tracestate",
        "baggage",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "x-tenant-id",
        "x-tenant-cluster",
        "x-tenant-tier",
        "x-forwarded-for",
        "authorization",
        "cookie",
        "host",
        ":path",
        ":authority",
        ":method",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    prop_oneof![
        3 => known,
        1 => prop::collection::vec(token_char(), 1..40),
    ]
}

/// Values an HTTP/1.1 or HTTP/2 codec lets through: visible ASCII, space, tab, obs-text.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        8 => 0x21u8..=0x7e,
        1 => Just(b' '),
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    let interesting = prop::sample::select(vec![
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-0000000000000000-00",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90",
        "acme.tenants.localhost",
        "ACME.tenants.localhost.:8080",
        "[::1]:80",
        "/t/acme/api/x?y=1",
        "/t/%61cme/",
        "/t/%zz/",
        "/api/items",
        "Bearer a.b.c",
        "1.2.3.4, 5.6.7.8",
        "",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    prop_oneof![
        2 => interesting,
        3 => prop::collection::vec(byte.clone(), 0..64),
        1 => prop::collection::vec(byte, 1000..9000),
    ]
}

fn header_list(max: usize) -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    prop::collection::vec((header_name(), header_value()), 0..max)
}

/// What a peer accepts: a lowercase token name (or a pseudo-header), a value without CR, LF,
/// NUL or other control bytes (tab allowed).
fn check_map(what: &str, map: &HeaderMap) -> Result<(), TestCaseError> {
    for (name, value) in map.pairs() {
        let body = name.strip_prefix(b":").unwrap_or(name);
        prop_assert!(
            !body.is_empty()
                && body.iter().all(|&b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
                }),
            "{what}: invalid header name {:?}",
            String::from_utf8_lossy(name)
        );
        prop_assert!(
            value
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "{what}: header {} has a control byte: {:?}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value)
        );
    }
    Ok(())
}

#[test]
fn the_gateway_chain_survives_hostile_headers() {
    let chain = gateway_chain();
    assert!(chain.len() >= 4, "gateway.yaml's gatewasm filters");
    let host = Host::new();
    let worker = RefCell::new(Worker::new(&host, &chain).unwrap_or_else(|e| panic!("{e}")));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = (
        header_list(24),
        header_list(12),
        prop::sample::select(vec!["127.0.0.1:5000", "[2001:db8::1]:443", "10.0.0.7:1"]),
    );
    let result = runner.run(&strategy, |(request, response, peer)| {
        let mut w = worker.borrow_mut();
        let mut req = HeaderMap::new();
        // Pseudo-headers first, as codecs hand them over; the random ones may repeat them.
        req.add(b":method", b"GET");
        req.add(b":scheme", b"http");
        req.add(b":path", b"/api/x");
        req.add(b":authority", b"gw.example.com");
        for (k, v) in &request {
            req.add(k, v);
        }
        let id = w
            .open_stream_with(StreamOptions {
                source_address: peer.to_string(),
                ..StreamOptions::default()
            })
            .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
        w.send_request_headers_map(id, req, true)
            .map_err(|e| TestCaseError::fail(format!("request headers: {e}")))?;
        let view = w
            .stream(id)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if view.local_response.is_none() && view.upstream_request_complete {
            let mut resp: Vec<(String, String)> = vec![(":status".into(), "200".into())];
            resp.extend(
                response
                    .iter()
                    .filter(|(k, _)| !k.starts_with(b":"))
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        )
                    }),
            );
            let refs: Vec<(&str, &str)> =
                resp.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            w.send_response_headers(id, &refs, true)
                .map_err(|e| TestCaseError::fail(format!("response headers: {e}")))?;
        }
        let view = w
            .complete(id)
            .map_err(|e| TestCaseError::fail(format!("end of stream: {e}")))?;
        if let Some(up) = &view.upstream_request_headers {
            check_map("upstream request", up)?;
        }
        if let Some(client) = &view.client_response_headers {
            check_map("client response", client)?;
        } else {
            prop_assert!(false, "the client got no response");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
