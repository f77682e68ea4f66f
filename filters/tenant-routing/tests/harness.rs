//! The real tenant_routing.wasm in the harness: every source and option, the consistency rules,
//! header hygiene, the route-cache clear, metrics and bad configurations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm_harness::testing::{self, upstream};
use proxy_wasm_harness::{Host, LogLevel, StreamView, Worker, assert_configs_rejected};
use serde_json::{Value, json};

fn worker(host: &Host, config: &str) -> Worker {
    testing::worker(host, "tenant-routing", "tenants", config)
}

/// Two tenants, every source, path stripping.
const CONFIG: &str = r#"{
    "sources": [
        {"header": "x-tenant-id"},
        {"host": "{tenant}.api.example.com"},
        {"path_prefix": "/t/{tenant}/", "strip": true},
        {"query": "tenant"}
    ],
    "tenants": {
        "acme": {"cluster": "acme_backend", "headers": {"x-tenant-tier": "gold"}},
        "globex": {"cluster": "globex_backend"}
    }
}"#;

fn exchange(w: &mut Worker, authority: &str, path: &str, extra: &[(&str, &str)]) -> StreamView {
    let mut req = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", authority),
    ];
    req.extend_from_slice(extra);
    w.exchange(&req, None, &[(":status", "200")], None)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Status and the `error` of the JSON body of a local reply.
fn rejected(v: &StreamView) -> (u32, String) {
    assert!(v.upstream_request_headers.is_none(), "reached the upstream");
    let reply = v.local_response.as_ref().expect("a local reply");
    assert_eq!(
        reply.headers.get("content-type").as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(body["message"].is_string());
    (reply.status, body["error"].as_str().unwrap().to_owned())
}

fn routed(v: &StreamView) -> (String, String) {
    let h = upstream(v);
    assert_eq!(h.get_all("x-tenant-id").len(), 1);
    assert_eq!(h.get_all("x-tenant-cluster").len(), 1);
    assert_eq!(v.route_cache_clears, 1, "route cache cleared once");
    (
        h.get("x-tenant-id").unwrap(),
        h.get("x-tenant-cluster").unwrap(),
    )
}

fn pair(t: &str, c: &str) -> (String, String) {
    (t.to_owned(), c.to_owned())
}

const REQ_ACME: &str = "gatewasm_tenant_routing_requests_acme";
const REQ_GLOBEX: &str = "gatewasm_tenant_routing_requests_globex";
const REQ_UNKNOWN: &str = "gatewasm_tenant_routing_requests_unknown";

#[test]
fn routes_by_host() {
    let host = Host::new();
    let mut w = worker(&host, CONFIG);
    for authority in [
        "acme.api.example.com",
        "ACME.api.example.com:8443",
        "acme.api.example.com.",
    ] {
        let v = exchange(&mut w, authority, "/orders", &[]);
        assert_eq!(routed(&v), pair("acme", "acme_backend"), "{authority}");
        assert_eq!(upstream(&v).get("x-tenant-tier").as_deref(), Some("gold"));
        assert_eq!(upstream(&v).get(":path").as_deref(), Some("/orders"));
    }
    let v = exchange(&mut w, "globex.api.example.com", "/", &[]);
    assert_eq!(routed(&v), pair("globex", "globex_backend"));
    assert!(!upstream(&v).contains("x-tenant-tier"));
    assert_eq!((host.counter(REQ_ACME), host.counter(REQ_GLOBEX)), (3, 1));
}

#[test]
fn routes_by_path_and_strips_it() {
    let host = Host::new();
    let mut w = worker(&host, CONFIG);
    for (path, stripped) in [
        ("/t/acme/orders/7?x=1", "/orders/7?x=1"),
        ("/t/acme", "/"),
        // Percent-encoded tenant: decoded, then validated — it is acme, not "no tenant".
        ("/t/%61cme/orders", "/orders"),
    ] {
        let v = exchange(&mut w, "gw.example.com", path, &[]);
        assert_eq!(routed(&v), pair("acme", "acme_backend"), "{path}");
        assert_eq!(
            upstream(&v).get(":path").as_deref(),
            Some(stripped),
            "{path}"
        );
    }
    let config = CONFIG.replace(r#", "strip": true"#, "");
    let mut w = worker(&Host::new(), &config);
    let v = exchange(&mut w, "gw.example.com", "/t/globex/a", &[]);
    assert_eq!(routed(&v), pair("globex", "globex_backend"));
    assert_eq!(upstream(&v).get(":path").as_deref(), Some("/t/globex/a"));
}

#[test]
fn routes_by_trusted_header_and_query() {
    let host = Host::new();
    let mut w = worker(&host, CONFIG);
    let v = exchange(&mut w, "gw.example.com", "/", &[("x-tenant-id", "globex")]);
    assert_eq!(routed(&v), pair("globex", "globex_backend"));
    let v = exchange(&mut w, "gw.example.com", "/x?a=1&tenant=acme", &[]);
    assert_eq!(routed(&v), pair("acme", "acme_backend"));
    assert_eq!(
        upstream(&v).get(":path").as_deref(),
        Some("/x?a=1&tenant=acme")
    );
}

/// (host, path, extra request headers).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn conflicting_sources_are_refused_with_403() {
    let host = Host::new();
    let mut w = worker(&host, CONFIG);
    let cases: &[Case] = &[
        // The verified claim says acme, the host says globex.
        ("globex.api.example.com", "/", &[("x-tenant-id", "acme")]),
        ("gw.example.com", "/t/acme/?tenant=globex", &[]),
        ("globex.api.example.com", "/t/%61cme/", &[]),
        (
            "gw.example.com",
            "/",
            &[("x-tenant-id", "acme"), ("x-tenant-id", "globex")],
        ),
    ];
    for (authority, path, extra) in cases {
        let v = exchange(&mut w, authority, path, extra);
        assert_eq!(
            rejected(&v),
            (403, "tenant_conflict".into()),
            "{path} {extra:?}"
        );
        assert_eq!(v.route_cache_clears, 0);
    }
    assert_eq!(host.counter("gatewasm_tenant_routing_rejected_conflict"), 4);
    assert_eq!(host.counter(REQ_ACME) + host.counter(REQ_GLOBEX), 0);
    // Agreeing sources are fine.
    let v = exchange(
        &mut w,
        "acme.api.example.com",
        "/t/acme/x",
        &[("x-tenant-id", "acme")],
    );
    assert_eq!(routed(&v), pair("acme", "acme_backend"));
}

#[test]
fn consistency_first_takes_the_first_source() {
    let host = Host::new();
    let config = CONFIG.replace(r#""tenants""#, r#""consistency": "first", "tenants""#);
    let mut w = worker(&host, &config);
    let v = exchange(
        &mut w,
        "globex.api.example.com",
        "/",
        &[("x-tenant-id", "acme")],
    );
    assert_eq!(routed(&v), pair("acme", "acme_backend"));
    let v = exchange(&mut w, "globex.api.example.com", "/t/acme/x", &[]);
    assert_eq!(routed(&v), pair("globex", "globex_backend"));
    assert_eq!(
        upstream(&v).get(":path").as_deref(),
        Some("/t/acme/x"),
        "not globex's prefix"
    );
}

#[test]
fn missing_and_unknown_tenants() {
    let host = Host::new();
    let mut w = worker(&host, CONFIG);
    let v = exchange(&mut w, "gw.example.com", "/", &[]);
    assert_eq!(rejected(&v), (400, "tenant_missing".into()));
    for (authority, path) in [
        ("initech.api.example.com", "/"),
        ("gw.example.com", "/t/ACME/"),
        ("gw.example.com", "/t/ac%2fme/"),
        ("gw.example.com", "/?tenant=%zz"),
    ] {
        let v = exchange(&mut w, authority, path, &[]);
        assert_eq!(
            rejected(&v),
            (404, "tenant_unknown".into()),
            "{authority}{path}"
        );
    }
    assert_eq!(host.counter("gatewasm_tenant_routing_rejected_missing"), 1);
    assert_eq!(host.counter("gatewasm_tenant_routing_rejected_unknown"), 4);
    assert_eq!(host.counter(REQ_UNKNOWN), 4);
    // Metrics are bounded: no counter per unknown tenant name.
    assert!(
        host.metrics()
            .iter()
            .all(|(name, _)| !name.contains("initech")),
        "{:?}",
        host.metrics()
    );
    let names: Vec<String> = host.metrics().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 7, "{names:?}"); // acme, globex, unknown + 4 reasons

    // Custom statuses.
    let config = CONFIG.replace(
        r#""tenants""#,
        r#""unknown_tenant_status": 421, "missing_tenant_status": 401, "tenants""#,
    );
    let mut w = worker(&Host::new(), &config);
    assert_eq!(rejected(&exchange(&mut w, "gw", "/", &[])).0, 401);
    assert_eq!(rejected(&exchange(&mut w, "gw", "/t/nope/", &[])).0, 421);
}

#[test]
fn default_tenant() {
    let host = Host::new();
    let config = CONFIG.replace(r#""tenants""#, r#""default_tenant": "globex", "tenants""#);
    let mut w = worker(&host, &config);
    let v = exchange(&mut w, "gw.example.com", "/", &[]);
    assert_eq!(routed(&v), pair("globex", "globex_backend"));
    let v = exchange(&mut w, "gw.example.com", "/t/nope/", &[]);
    assert_eq!(rejected(&v), (404, "tenant_unknown".into()));
}

#[test]
fn client_cannot_choose_cluster_tenant_or_tier() {
    let host = Host::new();
    // No header source: a client-sent x-tenant-id is not trusted.
    let config = CONFIG.replace(r#"{"header": "x-tenant-id"},"#, "");
    let mut w = worker(&host, &config);
    let v = exchange(
        &mut w,
        "globex.api.example.com",
        "/",
        &[
            ("x-tenant-cluster", "acme_backend"),
            ("x-tenant-cluster", "other"),
            ("x-tenant-id", "acme"),
            ("x-tenant-tier", "gold"),
        ],
    );
    assert_eq!(routed(&v), pair("globex", "globex_backend"));
    assert!(
        !upstream(&v).contains("x-tenant-tier"),
        "globex has no tier"
    );
    // Without any tenant, the client headers never reach an upstream at all.
    let v = exchange(
        &mut w,
        "gw.example.com",
        "/",
        &[("x-tenant-cluster", "acme_backend")],
    );
    assert_eq!(rejected(&v).0, 400);
}

#[test]
fn custom_output_and_cluster_headers() {
    let host = Host::new();
    let config = CONFIG.replace(
        r#""tenants""#,
        r#""output_header": "X-Org", "cluster_header": "x-route-to", "tenants""#,
    );
    let mut w = worker(&host, &config);
    let v = exchange(
        &mut w,
        "acme.api.example.com",
        "/",
        &[("x-tenant-cluster", "evil")],
    );
    let h = upstream(&v);
    assert_eq!(h.get("x-org").as_deref(), Some("acme"));
    assert_eq!(h.get("x-route-to").as_deref(), Some("acme_backend"));
    assert_eq!(
        h.get("x-tenant-cluster").as_deref(),
        Some("evil"),
        "not ours any more"
    );
    assert!(!h.contains("x-tenant-id"));
}

#[test]
fn allowed_hosts() {
    let host = Host::new();
    let config = r#"{
        "sources": [{"header": "x-tenant-id"}],
        "tenants": {
            "acme": {"cluster": "a", "allowed_hosts": ["acme.example.com", "*.acme.example.com"]},
            "globex": {"cluster": "g"}
        }
    }"#;
    let mut w = worker(&host, config);
    for authority in [
        "acme.example.com",
        "ACME.example.com.:443",
        "eu.acme.example.com",
    ] {
        let v = exchange(&mut w, authority, "/", &[("x-tenant-id", "acme")]);
        assert_eq!(routed(&v), pair("acme", "a"), "{authority}");
    }
    let v = exchange(
        &mut w,
        "globex.example.com",
        "/",
        &[("x-tenant-id", "acme")],
    );
    assert_eq!(rejected(&v), (403, "tenant_host_not_allowed".into()));
    assert_eq!(
        host.counter("gatewasm_tenant_routing_rejected_host_not_allowed"),
        1
    );
    let v = exchange(&mut w, "anything", "/", &[("x-tenant-id", "globex")]);
    assert_eq!(routed(&v), pair("globex", "g"));
}

/// A small valid configuration with the top-level members of `patch` replaced (`null`
/// removes one).
fn patched(patch: Value) -> String {
    let mut config = json!({"sources": [{"query": "t"}], "tenants": {"a": {"cluster": "c"}}});
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            config.as_object_mut().unwrap().remove(k);
        } else {
            config[k] = v.clone();
        }
    }
    config.to_string()
}

/// Every kind of broken configuration is refused by `on_configure`, and the error line names
/// the field and what is wrong with it.
#[test]
fn bad_configurations_are_rejected_naming_the_field() {
    let long = "c".repeat(257);
    let id64 = "a".repeat(64);
    let cases: Vec<(String, &[&str])> = vec![
        // Not a JSON object / wrong types.
        ("[]".into(), &["the configuration must be a JSON object"]),
        (
            "not json".into(),
            &["the configuration must be a JSON object"],
        ),
        (
            patched(json!({"sources": {"query": "t"}})),
            &["sources: invalid type: map, expected a sequence"],
        ),
        (
            patched(json!({"tenants": ["a"]})),
            &["tenants: invalid type: sequence, expected a map"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": 5}}})),
            &["tenants.a.cluster: invalid type: integer `5`, expected a string"],
        ),
        (
            patched(json!({"tenants": {"a": "c"}})),
            &["tenants.a: invalid type: string \"c\", expected struct TenantConfig"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "c", "headers": ["x-plan"]}}})),
            &["tenants.a.headers: invalid type: sequence, expected a map"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "c", "headers": {"x-plan": 1}}}})),
            &["tenants.a.headers.x-plan: invalid type: integer `1`, expected a string"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "c", "allowed_hosts": "a.example.com"}}})),
            &[
                "tenants.a.allowed_hosts: invalid type: string \"a.example.com\", expected a sequence",
            ],
        ),
        (
            patched(json!({"sources": [{"path_prefix": "/t/{tenant}/", "strip": "yes"}]})),
            &["sources[0].strip: invalid type: string \"yes\", expected a boolean"],
        ),
        (
            patched(json!({"sources": ["query"]})),
            &["sources[0]: invalid type: string \"query\", expected struct SourceConfig"],
        ),
        (
            patched(json!({"unknown_tenant_status": "404"})),
            &["unknown_tenant_status: invalid type: string \"404\", expected u16"],
        ),
        (
            patched(json!({"default_tenant": 1})),
            &["default_tenant: invalid type: integer `1`, expected a string"],
        ),
        // Unknown fields, top level and nested.
        (
            patched(json!({"x": 1})),
            &["x: unknown field `x`, expected one of"],
        ),
        (
            patched(json!({"tenant": "a"})),
            &["tenant: unknown field `tenant`"],
        ),
        (
            patched(json!({"sources": [{"hedaer": "x-tenant"}]})),
            &["sources[0].hedaer: unknown field `hedaer`"],
        ),
        (
            patched(json!({"sources": [{"query": "t", "required": true}]})),
            &["sources[0].required: unknown field `required`"],
        ),
        (
            patched(json!({"tenants": {"a": {"clustr": "c"}}})),
            &["tenants.a.clustr: unknown field `clustr`"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "c", "header": {"x-plan": "gold"}}}})),
            &["tenants.a.header: unknown field `header`"],
        ),
        // Empty or missing required values.
        ("".into(), &["tenants: at least one tenant is required"]),
        ("{}".into(), &["tenants: at least one tenant is required"]),
        (
            patched(json!({"tenants": {}})),
            &["tenants: at least one tenant is required"],
        ),
        (
            patched(json!({"sources": []})),
            &["sources: at least one source is required (or set `default_tenant`)"],
        ),
        (
            patched(json!({"sources": [{}]})),
            &["sources[0]: needs exactly one of `header`, `host`, `path_prefix`, `query`"],
        ),
        (
            patched(json!({"sources": [{"query": ""}]})),
            &["sources[0].query: must not be empty"],
        ),
        (
            patched(json!({"sources": [{"header": ""}]})),
            &["sources[0].header: header name must not be empty"],
        ),
        (
            patched(json!({"sources": [{"host": ""}]})),
            &["sources[0].host: empty label"],
        ),
        (
            patched(json!({"sources": [{"path_prefix": ""}]})),
            &["sources[0].path_prefix: must start with '/'"],
        ),
        (
            patched(json!({"tenants": {"a": {}}})),
            &["tenants.a: missing field `cluster`"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": ""}}})),
            &["tenants.a.cluster: must be 1 to 256 visible ASCII characters"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "c", "allowed_hosts": []}}})),
            &["tenants.a.allowed_hosts: must not be empty"],
        ),
        (
            patched(json!({"output_header": ""})),
            &["output_header: header name must not be empty"],
        ),
        (
            patched(json!({"cluster_header": ""})),
            &["cluster_header: header name must not be empty"],
        ),
        (
            patched(json!({"tenants": {"": {"cluster": "c"}}})),
            &["tenants.: tenant ids must match"],
        ),
        // Invalid patterns, names and values.
        (
            patched(json!({"sources": [{"host": "example.com"}]})),
            &["sources[0].host: the pattern needs one `{tenant}` label"],
        ),
        (
            patched(json!({"sources": [{"host": "{tenant}.{tenant}.example.com"}]})),
            &["sources[0].host: `{tenant}` must occur exactly once"],
        ),
        (
            patched(json!({"sources": [{"host": "t-{tenant}.example.com"}]})),
            &["sources[0].host: `{tenant}` must be a whole label"],
        ),
        (
            patched(json!({"sources": [{"host": "{tenant}.example.com:8080"}]})),
            &["sources[0].host: a host pattern has no port"],
        ),
        (
            patched(json!({"sources": [{"host": "{tenant}.exämple.com"}]})),
            &["sources[0].host: non-ASCII host"],
        ),
        (
            patched(json!({"sources": [{"path_prefix": "/t/{tenant}/x/"}]})),
            &["sources[0].path_prefix: the last segment must be `{tenant}`"],
        ),
        (
            patched(json!({"sources": [{"path_prefix": "/t//{tenant}/"}]})),
            &["sources[0].path_prefix: empty segment"],
        ),
        (
            patched(json!({"sources": [{"path_prefix": "/%74/{tenant}/"}]})),
            &["sources[0].path_prefix: segment \"%74\": only unescaped path characters"],
        ),
        (
            patched(json!({"sources": [{"query": "t=1"}]})),
            &["sources[0].query: only letters, digits and - . _ ~ are allowed"],
        ),
        (
            patched(json!({"sources": [{"header": "x tenant"}]})),
            &["sources[0].header: invalid character at position 1"],
        ),
        (
            patched(json!({"tenants": {"Bad": {"cluster": "c"}}})),
            &["tenants.Bad: tenant ids must match [a-z0-9][a-z0-9-]{0,62}"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "c"}, id64: {"cluster": "c"}}})),
            &["tenants.aaaa", ": tenant ids must match"],
        ),
        (
            patched(json!({"tenants": {"unknown": {"cluster": "c"}}})),
            &["tenants.unknown: `unknown` is reserved"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "my cluster"}}})),
            &["tenants.a.cluster: must be 1 to 256 visible ASCII characters"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": long}}})),
            &["tenants.a.cluster: must be 1 to 256 visible ASCII characters"],
        ),
        (
            patched(
                json!({"tenants": {"a": {"cluster": "c", "headers": {"x-plan": "gold\r\nx-evil: 1"}}}}),
            ),
            &["tenants.a.headers.x-plan: the value must be printable ASCII"],
        ),
        (
            patched(
                json!({"tenants": {"a": {"cluster": "c", "headers": {"X-Plan": "a", "x-plan": "b"}}}}),
            ),
            &[
                "tenants.a.headers.",
                ": duplicate header (names are case-insensitive)",
            ],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "c", "headers": {"x-tenant-id": "a"}}}})),
            &[
                "tenants.a.headers.x-tenant-id: must differ from `output_header` and `cluster_header`",
            ],
        ),
        (
            patched(
                json!({"tenants": {"a": {"cluster": "c", "headers": {"content-length": "0"}}}}),
            ),
            &["tenants.a.headers.content-length: connection/framing headers"],
        ),
        (
            patched(json!({"tenants": {"a": {"cluster": "c", "allowed_hosts": ["*"]}}})),
            &["tenants.a.allowed_hosts[0]: label \"*\" has a character outside"],
        ),
        (
            patched(
                json!({"tenants": {"a": {"cluster": "c", "allowed_hosts": ["a.example.com", "a..example.com"]}}}),
            ),
            &["tenants.a.allowed_hosts[1]: empty label"],
        ),
        (
            patched(json!({"output_header": ":authority"})),
            &["output_header: pseudo-headers"],
        ),
        (
            patched(json!({"cluster_header": "X-Tenant-ID"})),
            &["cluster_header: must differ from `output_header`"],
        ),
        (
            patched(json!({"sources": [{"header": "x-tenant-cluster"}]})),
            &["sources[0].header: must not be `cluster_header`"],
        ),
        // Sources that set more than one thing, or options that do not apply.
        (
            patched(json!({"sources": [{"query": "t", "header": "x-tenant"}]})),
            &["sources[0]: needs exactly one of"],
        ),
        (
            patched(json!({"sources": [{"query": "t", "strip": true}]})),
            &["sources[0].strip: only applies to a `path_prefix` source"],
        ),
        // Impossible limits (HTTP statuses of the refusals).
        (
            patched(json!({"unknown_tenant_status": 200})),
            &["unknown_tenant_status: must be between 400 and 599, got 200"],
        ),
        (
            patched(json!({"unknown_tenant_status": 600})),
            &["unknown_tenant_status: must be between 400 and 599, got 600"],
        ),
        (
            patched(json!({"missing_tenant_status": 0})),
            &["missing_tenant_status: must be between 400 and 599, got 0"],
        ),
        (
            patched(json!({"missing_tenant_status": -400})),
            &["missing_tenant_status: invalid value: integer `-400`, expected u16"],
        ),
        (
            patched(json!({"missing_tenant_status": 65936})),
            &["missing_tenant_status: invalid value: integer `65936`, expected u16"],
        ),
        // References to names that do not exist.
        (
            patched(json!({"default_tenant": "b"})),
            &["default_tenant: must be one of the configured tenants"],
        ),
        (
            patched(json!({"sources": [], "default_tenant": "unknown"})),
            &["default_tenant: must be one of the configured tenants"],
        ),
        // Bad enum values.
        (
            patched(json!({"consistency": "x"})),
            &["consistency: unknown variant `x`, expected `reject` or `first`"],
        ),
        (
            patched(json!({"consistency": "Reject"})),
            &["consistency: unknown variant `Reject`"],
        ),
        (
            patched(json!({"consistency": true})),
            &["consistency: expected value"],
        ),
    ];
    assert_configs_rejected(
        &testing::module("tenant-routing"),
        "tenant-routing: invalid plugin configuration: ",
        &cases,
    );
}

#[test]
fn per_request_cost_in_wasm_instructions() {
    let host = Host::new();
    let mut w = worker(&host, CONFIG);
    exchange(&mut w, "acme.api.example.com", "/", &[]);
    w.clear_history();
    exchange(
        &mut w,
        "acme.api.example.com",
        "/t/acme/orders?tenant=acme",
        &[
            ("user-agent", "curl/8"),
            ("accept", "*/*"),
            ("x-tenant-id", "acme"),
        ],
    );
    let fuel: u64 = w
        .history()
        .iter()
        .filter(|c| c.callback.contains("headers"))
        .map(|c| c.fuel)
        .sum();
    eprintln!("tenant-routing: {fuel} wasm instructions for request + response headers");
    assert!(fuel < 300_000, "{fuel}");
}

#[test]
fn a_host_without_clear_route_cache_still_gets_the_routing_headers() {
    // Envoy offers clear_route_cache; other hosts answer NotFound, which must not fail the
    // request (their header matches then see the route chosen before the filter ran).
    let host = Host::new();
    host.remove_foreign_function("clear_route_cache");
    let mut w = worker(&host, CONFIG);
    let v = exchange(&mut w, "acme.api.example.com", "/orders", &[]);
    assert_eq!(v.route_cache_clears, 0, "the host has no clear_route_cache");
    let up = upstream(&v);
    assert_eq!(up.get("x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(up.get("x-tenant-cluster").as_deref(), Some("acme_backend"));
    assert!(v.local_response.is_none());
    assert!(
        w.logs().iter().all(|l| l.level < LogLevel::Warn),
        "{:?}",
        w.logs()
    );
}

#[test]
fn underscore_spellings_of_tenant_headers_never_reach_the_upstream() {
    // #19: `x_tenant_id: acme` reaches CGI/WSGI/Rack upstreams as HTTP_X_TENANT_ID, the same
    // variable as the x-tenant-id this filter sets (Envoy's default lets such headers through).
    let host = Host::new();
    let mut w = worker(&host, CONFIG);
    let v = exchange(
        &mut w,
        "globex.api.example.com",
        "/",
        &[
            ("x_tenant_id", "acme"),
            ("x_tenant-cluster", "acme_backend"),
            ("x_tenant_tier", "gold"),
            ("x_unrelated", "kept"),
        ],
    );
    assert_eq!(routed(&v), pair("globex", "globex_backend"));
    let h = upstream(&v);
    for spoof in ["x_tenant_id", "x_tenant-cluster", "x_tenant_tier"] {
        assert!(h.get(spoof).is_none(), "{spoof} reached the upstream");
    }
    assert_eq!(h.get("x_unrelated").as_deref(), Some("kept"));
}
