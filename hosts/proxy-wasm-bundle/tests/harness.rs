//! The real gatewasm.wasm in the harness: root ids select a filter (or refuse, saying why);
//! chain mode runs the stages in one pass with fewer host calls than separate filters, stops
//! at a local reply while the response side of earlier stages still runs, names the stage and
//! field of a bad configuration, and resumes at the next stage after waiting for keys.
//! (Every scenario under tests/scenarios also runs in both shapes: tests/tests/scenarios.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use proxy_wasm_harness::testing::{self, upstream};
use proxy_wasm_harness::{
    HarnessError, Host, HttpCallResponse, LogLevel, PluginConfig, StreamView, Worker,
};
use serde_json::{Value, json};

/// The demo token of envoy-configs (ES256, kid `gatewasm-demo`, tenant acme, valid until 2089).
const TOKEN: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImdhdGV3YXNtLWRlbW8iLCJ0eXAiOiJKV1QifQ.eyJpYXQiOjE3NjcyMjU2MDAsImV4cCI6Mzc2NzIyNTYwMCwibmJmIjoxNzY3MjI1NjAwLCJpc3MiOiJodHRwczovL2lzc3Vlci5nYXRld2FzbS5leGFtcGxlIiwic3ViIjoiYWxpY2UiLCJhdWQiOiJnYXRld2FzbS1kZW1vIiwicm9sZSI6ImFkbWluIiwidGVuYW50IjoiYWNtZSJ9.ngmpeyPiyTR3s97miUvED-ueyflUuWoqIJ1aYu_RyeVcWrdAIamZBEi42t3PFXWlELjBNKC5BRbPVovV-WVWLw";

fn demo_jwks() -> Value {
    json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
        "kid": "gatewasm-demo", "x": "PhS_GHsTBSg3g_9iHaQhMYQnhF9lwfciycj63CivbKA",
        "y": "e99YgDgR3q4vj_wovddATtP2b_Q0ID_7Tn2sgU87c_g"}]})
}

/// jwt-to-header with the demo provider; `keys`: its `jwks` or `remote_jwks` entry.
fn jwt_config(keys: Value) -> Value {
    let mut provider = json!({
        "issuer": "https://issuer.gatewasm.example",
        "audiences": ["gatewasm-demo"],
        "claim_to_headers": [{"claim": "tenant", "header": "x-jwt-tenant"},
                             {"claim": "sub", "header": "x-user-id"}]
    });
    for (k, v) in keys.as_object().unwrap() {
        provider[k] = v.clone();
    }
    json!({
        "providers": {"demo": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": "demo"}]
    })
}

fn tenant_config() -> Value {
    json!({
        "sources": [{"header": "x-jwt-tenant"}, {"header": "x-tenant"}],
        "tenants": {"acme": {"cluster": "acme_backend", "headers": {"x-tenant-tier": "gold"}}},
        "output_header": "x-tenant-id",
        "cluster_header": "x-tenant-cluster"
    })
}

/// The filters of `stages` as separate plugins of their own modules.
fn separate(stages: &[(&str, Value)]) -> Vec<PluginConfig> {
    stages
        .iter()
        .map(|(filter, config)| {
            PluginConfig::new(&testing::module(filter))
                .name(filter)
                .configuration(config.to_string())
        })
        .collect()
}

/// The filters of `stages` as plugins of the bundle, one VM id.
fn bundled(stages: &[(&str, Value)]) -> Vec<PluginConfig> {
    stages
        .iter()
        .map(|(filter, config)| {
            PluginConfig::new(&testing::module("gatewasm"))
                .name(filter)
                .root_id(filter)
                .vm_id("gatewasm")
                .configuration(config.to_string())
        })
        .collect()
}

fn chain_config(stages: &[(&str, Value)]) -> String {
    let stages: Vec<Value> = stages
        .iter()
        .map(|(filter, config)| json!({"filter": filter, "config": config}))
        .collect();
    json!({ "stages": stages }).to_string()
}

/// The filters of `stages` as one chain-mode plugin.
fn chained(stages: &[(&str, Value)]) -> Vec<PluginConfig> {
    vec![
        PluginConfig::new(&testing::module("gatewasm"))
            .name("chain")
            .root_id("chain")
            .vm_id("gatewasm")
            .configuration(chain_config(stages)),
    ]
}

fn run(host: &Host, plugins: &[PluginConfig], headers: &[(&str, &str)]) -> (StreamView, u64) {
    let mut w = Worker::new(host, plugins).unwrap_or_else(|e| panic!("{e}"));
    let mut request = vec![(":method", "GET"), (":path", "/api"), (":authority", "a")];
    request.extend_from_slice(headers);
    w.clear_history();
    let view = w
        .exchange(&request, None, &[(":status", "200")], None)
        .unwrap_or_else(|e| panic!("{e}"));
    let host_calls = w.history().iter().map(|r| r.host_calls).sum();
    (view, host_calls)
}

fn stages() -> Vec<(&'static str, Value)> {
    vec![
        ("correlation-id", json!({})),
        (
            "trace-propagation",
            json!({"response_header": "x-trace-id"}),
        ),
        ("jwt-to-header", jwt_config(json!({"jwks": demo_jwks()}))),
        ("tenant-routing", tenant_config()),
        (
            "rate-limit",
            json!({"rules": [{"name": "per-tenant", "key": [{"header": "x-tenant-id"}],
                             "limit": 10, "window_s": 60}]}),
        ),
    ]
}

/// The error lines of a plugin the harness refused at configuration; panics if it was not
/// refused that way.
fn refusal(plugin: PluginConfig) -> Vec<String> {
    match Worker::new(&Host::new(), &[plugin]) {
        Ok(_) => panic!("accepted"),
        Err(HarnessError::ConfigRejected { logs, .. }) => logs
            .into_iter()
            .filter(|l| l.level >= LogLevel::Error)
            .map(|l| l.message)
            .collect(),
        Err(other) => panic!("not a configuration rejection: {other}"),
    }
}

fn assert_refused(plugin: PluginConfig, expected: &str) {
    let lines = refusal(plugin);
    assert!(
        lines.iter().any(|l| l.contains(expected)),
        "no error line contains {expected:?}: {lines:?}"
    );
}

#[test]
fn a_root_id_that_names_no_filter_is_refused_with_the_names_it_may_be() {
    let bundle = || PluginConfig::new(&testing::module("gatewasm")).configuration("{}");
    assert_refused(
        bundle().root_id("auth"),
        "gatewasm: invalid plugin: root_id \"auth\" names no filter of this module: use one of \
         correlation-id, trace-propagation, jwt-to-header, tenant-routing, rate-limit, or chain",
    );
    assert_refused(bundle(), "root_id \"\" names no filter");
}

#[test]
fn a_filter_root_id_refuses_what_its_own_module_refuses_in_the_same_words() {
    let bundle = PluginConfig::new(&testing::module("gatewasm"))
        .root_id("correlation-id")
        .configuration(r#"{"max_length": 0}"#);
    let own =
        PluginConfig::new(&testing::module("correlation-id")).configuration(r#"{"max_length": 0}"#);
    let lines = refusal(bundle);
    assert_eq!(lines, refusal(own));
    assert!(lines[0].starts_with("correlation-id: invalid plugin configuration: max_length"));
}

#[test]
fn the_three_shapes_agree_on_a_gateway_request() {
    let auth = format!("Bearer {TOKEN}");
    let request = [("authorization", auth.as_str()), ("x-jwt-tenant", "forged")];
    let stages = stages();
    let mut seen = Vec::new();
    for (shape, plugins) in [
        ("separate", separate(&stages)),
        ("bundle", bundled(&stages)),
        ("chain", chained(&stages)),
    ] {
        let host = Host::new();
        let (view, host_calls) = run(&host, &plugins, &request);
        let up = upstream(&view);
        assert_eq!(up.get("x-jwt-tenant").as_deref(), Some("acme"), "{shape}");
        assert_eq!(up.get("x-user-id").as_deref(), Some("alice"), "{shape}");
        assert_eq!(up.get("x-tenant-id").as_deref(), Some("acme"), "{shape}");
        assert_eq!(up.get("x-tenant-cluster").as_deref(), Some("acme_backend"));
        assert_eq!(up.get("x-tenant-tier").as_deref(), Some("gold"), "{shape}");
        assert_eq!(up.get_all("x-request-id").len(), 1, "{shape}");
        assert_eq!(up.get_all("traceparent").len(), 1, "{shape}");
        let client = view.client_response_headers.clone().unwrap();
        assert_eq!(
            client.get("x-request-id"),
            up.get("x-request-id"),
            "{shape}"
        );
        assert_eq!(client.get_all("x-trace-id").len(), 1, "{shape}");
        assert!(client.get("ratelimit").is_some() || client.get("ratelimit-remaining").is_some());
        let counters = [
            "gatewasm_correlation_id_generated",
            "gatewasm_jwt_to_header_allowed",
            "gatewasm_tenant_routing_requests_acme",
            "gatewasm_rate_limit_allowed_per-tenant",
        ]
        .map(|name| host.counter(name));
        assert_eq!(counters, [1, 1, 1, 1], "{shape}");
        seen.push((shape, host_calls, view.route_cache_clears));
    }
    let (_, separate_calls, separate_clears) = seen[0];
    let (_, chain_calls, chain_clears) = seen[2];
    // Separate filters: jwt-to-header and tenant-routing each clear the route cache; the chain
    // once. And the chain reads the header map once instead of five times.
    assert_eq!((separate_clears, chain_clears), (2, 1), "{seen:?}");
    assert!(
        chain_calls + 6 <= separate_calls,
        "chain {chain_calls} host calls vs separate {separate_calls}: {seen:?}"
    );
}

#[test]
fn a_local_reply_stops_later_stages_and_earlier_stages_still_answer_on_the_response() {
    let stages = stages();
    for (shape, plugins) in [("separate", separate(&stages)), ("chain", chained(&stages))] {
        let host = Host::new();
        // No token: jwt-to-header refuses; tenant-routing and rate-limit never see the request.
        let (view, _) = run(&host, &plugins, &[("x-request-id", "call-1")]);
        assert_eq!(view.status(), Some(401), "{shape}");
        assert!(view.upstream_request_headers.is_none(), "{shape}");
        let client = view.client_response_headers.clone().unwrap();
        assert_eq!(
            client.get("x-request-id").as_deref(),
            Some("call-1"),
            "{shape}"
        );
        assert_eq!(client.get_all("x-trace-id").len(), 1, "{shape}");
        assert!(client.get("www-authenticate").is_some(), "{shape}");
        assert_eq!(host.counter("gatewasm_tenant_routing_requests_acme"), 0);
        assert_eq!(
            host.counter("gatewasm_correlation_id_preserved"),
            1,
            "{shape}"
        );
    }
}

#[test]
fn a_bad_stage_configuration_names_the_stage_and_the_field() {
    let chain = |config: String| {
        PluginConfig::new(&testing::module("gatewasm"))
            .root_id("chain")
            .configuration(config)
    };
    let prefix = "gatewasm chain: invalid plugin configuration: ";
    for (config, expected) in [
        (
            chain_config(&[("correlation-id", json!({"max_length": 0}))]),
            "stages[0].config.max_length: correlation-id: must be between",
        ),
        (
            chain_config(&[
                ("correlation-id", json!({})),
                ("tenant-routing", json!({"tenants": {}, "sourcess": []})),
            ]),
            "stages[1].config.sourcess: tenant-routing: unknown field `sourcess`",
        ),
        (
            r#"{"stages": []}"#.to_string(),
            "stages: the chain needs at least one stage",
        ),
        (
            r#"{"stages": [{"filter": "auth"}]}"#.to_string(),
            "stages[0].filter: unknown variant `auth`",
        ),
        (
            chain_config(&[("rate-limit", json!({})), ("rate-limit", json!({}))]),
            "stages[1].filter: rate-limit appears twice",
        ),
    ] {
        assert_refused(chain(config), &format!("{prefix}{expected}"));
    }
}

#[test]
fn a_chain_waiting_for_keys_resumes_at_the_next_stage() {
    let remote = json!({"remote_jwks": {"cluster": "idp", "authority": "idp.example.com",
        "path": "/jwks", "timeout_ms": 2000}});
    let stages = vec![
        ("correlation-id", json!({})),
        ("jwt-to-header", jwt_config(remote)),
        ("tenant-routing", tenant_config()),
    ];
    let host = Host::new();
    host.add_cluster("idp");
    let mut w = Worker::new(&host, &chained(&stages)).unwrap_or_else(|e| panic!("{e}"));
    let id = w.open_stream().unwrap();
    let auth = format!("Bearer {TOKEN}");
    w.send_request_headers(
        id,
        &[
            (":method", "GET"),
            (":path", "/api"),
            (":authority", "a"),
            ("authorization", &auth),
        ],
        true,
    )
    .unwrap();
    assert!(w.request_paused(id), "waits for the first JWKS fetch");
    w.advance(Duration::from_millis(100)).unwrap();
    let calls = w.pending_http_calls();
    assert_eq!(calls.len(), 1, "one fetch");
    w.respond_http_call(
        calls[0].id,
        HttpCallResponse::new(200, demo_jwks().to_string()),
    )
    .unwrap();
    assert!(!w.request_paused(id), "resumed once the keys arrived");
    let view = w.stream(id).unwrap();
    let up = upstream(&view);
    assert_eq!(up.get("x-user-id").as_deref(), Some("alice"));
    // The stages after the one that waited ran on the resumed request.
    assert_eq!(up.get("x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(up.get_all("x-request-id").len(), 1);
    assert_eq!(view.route_cache_clears, 1);
    assert_eq!(host.counter("gatewasm_tenant_routing_requests_acme"), 1);
}
