//! The real rate_limit.wasm in the harness: exact totals with worker VMs racing on threads,
//! bounded shared data under a key flood, header formats, client IP from the peer vs a spoofed
//! x-forwarded-for, refill on the virtual clock, metrics and bad configurations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use proxy_wasm_harness::testing;
use proxy_wasm_harness::{
    Host, LogLevel, StreamOptions, StreamView, Worker, assert_configs_rejected,
};
use serde_json::{Value, json};

fn worker(host: &Host, config: &str) -> Worker {
    testing::worker(host, "rate-limit", "rate-limit", config)
}

/// One exchange from `peer` (`ip:port`) with extra request headers.
fn request(w: &mut Worker, peer: &str, extra: &[(&str, &str)]) -> StreamView {
    request_to(w, peer, "GET", "/api/orders", extra)
}

/// One exchange with the given method and path.
fn request_to(
    w: &mut Worker,
    peer: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> StreamView {
    let id = w
        .open_stream_with(StreamOptions {
            source_address: peer.to_owned(),
            ..StreamOptions::default()
        })
        .unwrap();
    let mut req = vec![
        (":method", method),
        (":path", path),
        (":authority", "gw.example.com"),
    ];
    req.extend_from_slice(extra);
    w.send_request_headers(id, &req, true).unwrap();
    let v = w.stream(id).unwrap();
    if v.local_response.is_none() {
        w.send_response_headers(id, &[(":status", "200")], true)
            .unwrap();
    }
    w.complete(id).unwrap()
}

fn ok(v: &StreamView) -> bool {
    match v.status() {
        Some(200) => true,
        Some(429) => false,
        other => panic!("unexpected status {other:?}"),
    }
}

fn header(v: &StreamView, name: &str) -> Option<String> {
    v.client_response_headers.as_ref()?.get(name)
}

const PER_IP: &str = r#"{"rules":[{"name":"per-ip","key":["client_ip"],"limit":5,"window_s":10}]}"#;

#[test]
fn limits_per_client_with_headers_and_refill() {
    let host = Host::new();
    let mut w = worker(&host, PER_IP);
    for i in 0..5 {
        let v = request(&mut w, "10.0.0.1:4000", &[]);
        assert!(ok(&v), "request {i}");
        assert_eq!(header(&v, "ratelimit-remaining"), Some((4 - i).to_string()));
        assert_eq!(header(&v, "ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(
            header(&v, "ratelimit-policy").as_deref(),
            Some("\"per-ip\";q=5;w=10")
        );
        assert_eq!(
            header(&v, "ratelimit"),
            Some(format!("\"per-ip\";r={};t={}", 4 - i, 2 * (i + 1)))
        );
    }
    let v = request(&mut w, "10.0.0.1:4001", &[]);
    assert!(!ok(&v));
    assert!(v.upstream_request_headers.is_none());
    let reply = v.local_response.as_ref().unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after").as_deref(), Some("2"));
    assert_eq!(
        reply.headers.get("ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(reply.headers.get("ratelimit-reset").as_deref(), Some("10"));
    assert_eq!(
        reply.headers.get("content-type").as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Another client is not affected.
    assert!(ok(&request(&mut w, "10.0.0.2:4000", &[])));
    // One token back every 2 s on the virtual clock.
    w.advance(Duration::from_millis(1999)).unwrap();
    assert!(!ok(&request(&mut w, "10.0.0.1:4000", &[])));
    w.advance(Duration::from_millis(1)).unwrap();
    assert!(ok(&request(&mut w, "10.0.0.1:4000", &[])));
    assert!(!ok(&request(&mut w, "10.0.0.1:4000", &[])));
    assert_eq!(host.counter("gatewasm_rate_limit_allowed_per-ip"), 7);
    assert_eq!(host.counter("gatewasm_rate_limit_denied_per-ip"), 3);
}

#[test]
fn header_formats() {
    for (format, present, absent) in [
        (
            "draft",
            &["ratelimit", "ratelimit-policy"][..],
            &["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"][..],
        ),
        (
            "draft03",
            &["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"][..],
            &["ratelimit", "ratelimit-policy"][..],
        ),
        (
            "none",
            &[][..],
            &[
                "ratelimit",
                "ratelimit-policy",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ][..],
        ),
    ] {
        let config = format!(
            r#"{{"rules":[{{"name":"r","key":["route"],"limit":1}}],"response":{{"headers":"{format}","status":503}}}}"#
        );
        let mut w = worker(&Host::new(), &config);
        let v = request(&mut w, "10.0.0.1:1", &[]);
        for h in present {
            assert!(header(&v, h).is_some(), "{format}: {h} missing");
        }
        for h in absent {
            assert!(header(&v, h).is_none(), "{format}: {h} present");
        }
        let v = request(&mut w, "10.0.0.1:1", &[]);
        assert_eq!(v.status(), Some(503));
        assert_eq!(header(&v, "retry-after").as_deref(), Some("60"));
        for h in absent {
            assert!(header(&v, h).is_none(), "{format}: {h} present on denial");
        }
    }
}

/// With the peer address, a client cannot escape its bucket by sending x-forwarded-for; with
/// `xff` and one trusted hop, the right-most entry is the client.
#[test]
fn client_ip_from_peer_ignores_spoofed_xff() {
    let host = Host::new();
    let config = r#"{"rules":[{"name":"ip","key":["client_ip"],"limit":2}]}"#;
    let mut w = worker(&host, config);
    let mut allowed = 0;
    for i in 0..10 {
        let spoof = format!("198.51.100.{i}");
        allowed += u32::from(ok(&request(
            &mut w,
            "[2001:db8::1]:5555",
            &[("x-forwarded-for", &spoof)],
        )));
    }
    assert_eq!(allowed, 2);
    // IPv6 peer with a different port is the same client.
    assert!(!ok(&request(&mut w, "[2001:db8::1]:6666", &[])));

    let xff = r#"{"rules":[{"name":"ip","key":["client_ip"],"limit":2}],
                 "client_ip":{"from":"xff","trusted_hops":1}}"#;
    let mut w = worker(&Host::new(), xff);
    let mut allowed = 0;
    for i in 0..10 {
        let chain = format!("198.51.100.{i}, 203.0.113.5");
        allowed += u32::from(ok(&request(
            &mut w,
            "127.0.0.1:1",
            &[("x-forwarded-for", &chain)],
        )));
    }
    assert_eq!(allowed, 2, "the spoofable left-most entry is ignored");
}

/// Issue #19: a `POST` rule was escaped by sending `post` (Envoy forwards an HTTP/2 `:method`
/// as the client wrote it). Methods match case-insensitively, and the `method` key part is one
/// bucket for every spelling.
#[test]
fn method_rules_cannot_be_escaped_by_case() {
    let host = Host::new();
    let config = r#"{"rules":[{"name":"login","match":{"methods":["POST"],"path_prefix":"/rl/login"},
                     "key":["client_ip"],"limit":1,"window_s":60}]}"#;
    let mut w = worker(&host, config);
    let login =
        |w: &mut Worker, method: &str| request_to(w, "10.0.0.1:1", method, "/rl/login", &[]);
    assert_eq!(login(&mut w, "POST").status(), Some(200));
    for method in ["POST", "post", "PoSt"] {
        assert_eq!(login(&mut w, method).status(), Some(429), "{method}");
    }
    assert_eq!(login(&mut w, "GET").status(), Some(200), "not a POST");
    assert_eq!(host.counter("gatewasm_rate_limit_denied_login"), 3);

    let config = r#"{"rules":[{"name":"m","key":["method"],"limit":1}]}"#;
    let mut w = worker(&Host::new(), config);
    let call = |w: &mut Worker, method: &str| request_to(w, "10.0.0.1:1", method, "/", &[]);
    assert_eq!(call(&mut w, "post").status(), Some(200));
    assert_eq!(call(&mut w, "POST").status(), Some(429), "one bucket");
    assert_eq!(call(&mut w, "Post").status(), Some(429), "one bucket");
}

/// Issue #19: every IPv6 address was its own bucket, so a client with a /64 had 2⁶⁴ of them.
/// By default addresses are cut to /64 (IPv6) and /32 (IPv4); `client_ip_prefix` sets both.
#[test]
fn ipv6_clients_are_limited_per_64() {
    let mut w = worker(&Host::new(), PER_IP);
    let mut allowed = 0;
    for i in 0..20 {
        let peer = format!("[2001:db8:1:2:{i:x}::{i:x}]:4000");
        allowed += u32::from(ok(&request(&mut w, &peer, &[])));
    }
    assert_eq!(allowed, 5, "twenty addresses of one /64 share one bucket");
    assert!(
        ok(&request(&mut w, "[2001:db8:1:3::1]:4000", &[])),
        "another /64"
    );
    // An IPv4-mapped peer is that IPv4 client (/32 by default).
    for _ in 0..5 {
        assert!(ok(&request(&mut w, "192.0.2.9:1", &[])));
    }
    assert!(!ok(&request(&mut w, "[::ffff:192.0.2.9]:1", &[])));
    assert!(ok(&request(&mut w, "192.0.2.10:1", &[])));

    let config = r#"{"rules":[{"name":"per-ip","key":["client_ip"],"limit":1}],
                     "client_ip_prefix":{"ipv4":24,"ipv6":128}}"#;
    let mut w = worker(&Host::new(), config);
    assert!(ok(&request(&mut w, "[2001:db8::1]:1", &[])));
    assert!(
        ok(&request(&mut w, "[2001:db8::2]:1", &[])),
        "/128: each address"
    );
    assert!(ok(&request(&mut w, "192.0.2.1:1", &[])));
    assert!(
        !ok(&request(&mut w, "192.0.2.200:1", &[])),
        "/24: one network"
    );
}

/// Which group of `rule`'s table holds a bucket (the group whose value is no longer empty).
fn used_groups(host: &Host, config: &str) -> Vec<u32> {
    let settings = rate_limit::config::parse_settings(Some(config.as_bytes())).unwrap();
    let rule = &settings.rules[0];
    (0..rule.layout.groups)
        .filter(|g| {
            let key = rate_limit::table::EntryKey::new(rule.table_id, *g);
            let (value, _) = host.shared_data("", key.as_str().as_bytes()).unwrap();
            value[1..].iter().any(|b| *b != 0)
        })
        .collect()
}

/// Issue #19: the key hash had fixed keys, so anyone could compute which table group a key
/// lands in and aim keys at a victim's group. Now each process (Host) draws a seed once, in
/// the first VM, and shares it through shared data: its workers agree (one exact bucket across
/// them), another process places the same key elsewhere.
#[test]
fn the_key_hash_seed_is_per_process_and_shared_by_its_workers() {
    let config = r#"{"rules":[{"name":"ip","key":["client_ip"],"limit":10,"window_s":3600}],
                     "on_contention":"deny"}"#;
    let seed_key = rate_limit::limiter::SEED_KEY.as_bytes();
    let process = |random: u64| {
        let host = Host::new();
        // Two processes get different randomness from their OS.
        host.seed_random(random);
        // Four workers start at once: one seed wins and all of them use it.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let host = host.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut w = worker(&host, config);
                    barrier.wait();
                    let mut allowed = 0u64;
                    for i in 0..10 {
                        let peer = format!("10.0.0.1:{}", 1000 + i);
                        allowed += u64::from(ok(&request(&mut w, &peer, &[])));
                    }
                    allowed
                })
            })
            .collect();
        let allowed: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, 10, "one exact bucket across the workers");
        let (seed, _) = host.shared_data("", seed_key).unwrap();
        assert_eq!(seed.len(), 32);
        let groups = used_groups(&host, config);
        assert_eq!(groups.len(), 1, "{groups:?}");
        // A worker that starts later reads the same seed: the bucket is still empty for it.
        let mut late = worker(&host, config);
        assert!(!ok(&request(&mut late, "10.0.0.1:1", &[])));
        assert_eq!(host.shared_data("", seed_key).unwrap().0, seed);
        (seed, groups[0])
    };
    let (seed_a, group_a) = process(1);
    let (seed_b, group_b) = process(2);
    assert_ne!(seed_a, seed_b);
    assert_ne!(group_a, group_b, "the same client lands in another group");
}

/// 2–4 worker VMs of one process on threads, racing on one bucket: exactly `limit` requests are
/// allowed in total.
#[test]
fn racing_workers_share_one_exact_bucket() {
    for workers in [2usize, 4] {
        let host = Host::new();
        // on_contention deny: exact even if a request lost the CAS race 32 times in a row.
        let config = r#"{"rules":[{"name":"all","key":["route"],"limit":150,"window_s":3600}],
                         "on_contention":"deny"}"#;
        // Start every worker first (on_configure creates the table once).
        let ws: Vec<Worker> = (0..workers).map(|_| worker(&host, config)).collect();
        let handles: Vec<_> = ws
            .into_iter()
            .map(|mut w| {
                std::thread::spawn(move || {
                    let mut allowed = 0u64;
                    let mut denied = 0u64;
                    for _ in 0..100 {
                        if ok(&request(&mut w, "10.0.0.1:1", &[])) {
                            allowed += 1;
                        } else {
                            denied += 1;
                        }
                    }
                    (allowed, denied)
                })
            })
            .collect();
        let results: Vec<(u64, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let allowed: u64 = results.iter().map(|r| r.0).sum();
        assert_eq!(allowed, 150, "{workers} workers: {results:?}");
        assert_eq!(host.counter("gatewasm_rate_limit_allowed_all"), 150);
        assert_eq!(
            host.counter("gatewasm_rate_limit_denied_all"),
            100 * workers as u64 - 150
        );
        eprintln!(
            "{workers} workers: CAS retries {}, exhausted {}",
            host.counter("gatewasm_rate_limit_contention_retries"),
            host.counter("gatewasm_rate_limit_contention_exhausted")
        );
    }
}

/// A worker that starts after others have served does not reset their buckets.
#[test]
fn a_late_worker_does_not_reset_buckets() {
    let host = Host::new();
    let config = r#"{"rules":[{"name":"all","key":["route"],"limit":3}]}"#;
    let mut a = worker(&host, config);
    for _ in 0..3 {
        assert!(ok(&request(&mut a, "10.0.0.1:1", &[])));
    }
    let mut b = worker(&host, config);
    assert!(!ok(&request(&mut b, "10.0.0.1:1", &[])));
    // A new config with another limit keeps the same table (same name and key). The bucket's
    // state is time: 3 of 3 used = 60 s of debt, which at 4 per minute (τ = 45 s) is 15 s too
    // much; 15 s later one request is allowed.
    let mut c = worker(
        &host,
        r#"{"rules":[{"name":"all","key":["route"],"limit":4}]}"#,
    );
    assert!(!ok(&request(&mut c, "10.0.0.1:1", &[])));
    c.advance(Duration::from_secs(15)).unwrap();
    assert!(ok(&request(&mut c, "10.0.0.1:1", &[])));
    assert!(!ok(&request(&mut c, "10.0.0.1:1", &[])));
}

/// 20,000 distinct clients against a table of 160 keys: shared data stays at its configured
/// size, and a client that keeps its bucket live keeps its exact state.
#[test]
fn key_flood_keeps_shared_data_bounded() {
    let host = Host::new();
    let config =
        r#"{"rules":[{"name":"ip","key":["client_ip"],"limit":10,"window_s":1,"max_keys":160}]}"#;
    let mut w = worker(&host, config);
    let vm_id = "";
    let size_before = host.shared_data_size(vm_id);
    assert_eq!(
        size_before.0, 11,
        "160 keys = 10 groups of 16, created up front, and the key seed"
    );
    let mut active_allowed = 0;
    for i in 0..20_000u32 {
        let peer = format!("10.{}.{}.{}:1", i >> 16, (i >> 8) & 255, i & 255);
        request(&mut w, &peer, &[]);
        if i % 100 == 0 {
            active_allowed += u32::from(ok(&request(&mut w, "192.0.2.1:1", &[])));
        }
        if i % 10 == 0 {
            w.advance(Duration::from_millis(1)).unwrap();
        }
    }
    assert_eq!(host.shared_data_size(vm_id), size_before, "no growth");
    // 200 active requests in 2 s of virtual time at 10/s + 10 burst: its bucket was never
    // reset by the flood, so no more than 10 + 2·10 were allowed.
    assert!(active_allowed <= 30, "{active_allowed}");
    assert!(host.counter("gatewasm_rate_limit_slots_reclaimed") > 0);
    eprintln!(
        "flood: overflow {} reclaimed {} active allowed {active_allowed}",
        host.counter("gatewasm_rate_limit_overflow"),
        host.counter("gatewasm_rate_limit_slots_reclaimed")
    );
}

/// A one-rule configuration (`{"name":"a","key":["route"],"limit":10}`) with the members of
/// `rule` replaced in the rule and those of `top` at the top level (`null` removes a member).
fn patched(rule: Value, top: Value) -> String {
    let merge = |into: &mut Value, patch: &Value| {
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                into.as_object_mut().unwrap().remove(k);
            } else {
                into[k] = v.clone();
            }
        }
    };
    let mut r = json!({"name": "a", "key": ["route"], "limit": 10});
    merge(&mut r, &rule);
    let mut config = json!({ "rules": [r] });
    merge(&mut config, &top);
    config.to_string()
}

fn with_rule(rule: Value) -> String {
    patched(rule, json!({}))
}

fn with_top(top: Value) -> String {
    patched(json!({}), top)
}

/// A rule in mode `global` with the members of `patch` replaced.
fn global(patch: Value) -> String {
    let mut rule = json!({"mode": "global", "limit": null,
        "service": {"cluster": "rls", "domain": "gateway"}});
    for (k, v) in patch.as_object().unwrap() {
        rule[k] = v.clone();
    }
    with_rule(rule)
}

/// Every kind of broken configuration is refused by `on_configure`, and the error line names
/// the field and what is wrong with it.
#[test]
fn bad_configurations_name_the_field() {
    let max = u64::MAX;
    let rules = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({"name": format!("r{i}"), "key": ["route"], "limit": 1}))
            .collect()
    };
    let overrides = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({"when_header": {"x-plan": format!("p{i}")}, "limit": 1}))
            .collect()
    };
    let cases: Vec<(String, &[&str])> = vec![
        // Not a JSON object / wrong types.
        ("[]".into(), &["the configuration must be a JSON object"]),
        (
            r#"{"rules":[}"#.into(),
            &["expected value at line 1 column 11"],
        ),
        (
            with_top(json!({"rules": {"a": {"limit": 1}}})),
            &["rules: invalid type: map, expected a sequence"],
        ),
        (
            with_top(json!({"rules": ["a"]})),
            &["rules[0]: invalid type: string \"a\", expected struct RuleConfig"],
        ),
        (
            with_rule(json!({"name": 5})),
            &["rules[0].name: invalid type: integer `5`, expected a string"],
        ),
        (
            with_rule(json!({"limit": "10"})),
            &["rules[0].limit: invalid type: string \"10\", expected u64"],
        ),
        (
            with_rule(json!({"limit": 10.5})),
            &["rules[0].limit: invalid type: floating point `10.5`, expected u64"],
        ),
        (
            with_rule(json!({"window_s": "1m"})),
            &["rules[0].window_s: invalid type: string \"1m\", expected u64"],
        ),
        (
            with_rule(json!({"burst": true})),
            &["rules[0].burst: invalid type: boolean `true`, expected u64"],
        ),
        (
            with_rule(json!({"shadow": "yes"})),
            &["rules[0].shadow: invalid type: string \"yes\", expected a boolean"],
        ),
        (
            with_rule(json!({"key": "route"})),
            &["rules[0].key: invalid type: string \"route\", expected a sequence"],
        ),
        (
            with_rule(json!({"max_keys": "1000"})),
            &["rules[0].max_keys: invalid type: string \"1000\", expected u32"],
        ),
        (
            with_rule(json!({"match": {"methods": "GET"}})),
            &["rules[0].match.methods: invalid type: string \"GET\", expected a sequence"],
        ),
        (
            with_rule(json!({"match": {"headers": [["x-plan", "gold"]]}})),
            &["rules[0].match.headers: invalid type: sequence, expected a map"],
        ),
        (
            with_rule(json!({"overrides": {"when_header": {"x-plan": "gold"}}})),
            &["rules[0].overrides: invalid type: map, expected a sequence"],
        ),
        (
            with_top(json!({"response": {"status": "429"}})),
            &["response.status: invalid type: string \"429\", expected u16"],
        ),
        (
            with_top(json!({"client_ip": "xff"})),
            &["client_ip: invalid type: string \"xff\""],
        ),
        (
            with_top(json!({"client_ip": {"from": "xff", "trusted_hops": "1"}})),
            &["client_ip", "invalid type: string \"1\", expected u32"],
        ),
        // Unknown fields, top level and nested.
        (
            with_top(json!({"rule": []})),
            &["rule: unknown field `rule`, expected one of"],
        ),
        (
            with_top(json!({"on_overload": "deny"})),
            &["on_overload: unknown field `on_overload`"],
        ),
        (
            with_rule(json!({"limt": 10})),
            &["rules[0].limt: unknown field `limt`"],
        ),
        (
            with_rule(json!({"match": {"path": "/api"}})),
            &["rules[0].match.path: unknown field `path`"],
        ),
        (
            with_top(json!({"response": {"code": 429}})),
            &["response.code: unknown field `code`"],
        ),
        (
            with_rule(json!({"overrides": [{"when_header": {"x-plan": "gold"}, "limt": 1}]})),
            &["rules[0].overrides[0].limt: unknown field `limt`"],
        ),
        (
            global(json!({"service": {"cluster": "rls", "domain": "d", "timeout": 5}})),
            &["rules[0].service.timeout: unknown field `timeout`"],
        ),
        (
            with_top(json!({"client_ip": {"from": "xff", "trusted_hops": 1, "hops": 2}})),
            &["client_ip", "unknown field `hops`"],
        ),
        (
            with_top(json!({"client_ip": {"from": "peer", "trusted_hops": 1}})),
            &["client_ip: unknown field `trusted_hops`, there are no fields"],
        ),
        // Empty or missing required values.
        ("".into(), &["rules: at least one rule is required"]),
        ("{}".into(), &["rules: at least one rule is required"]),
        (
            with_top(json!({"rules": []})),
            &["rules: at least one rule is required"],
        ),
        (
            with_rule(json!({"name": null})),
            &["rules[0]: missing field `name`"],
        ),
        (
            with_rule(json!({"key": null})),
            &["rules[0]: missing field `key`"],
        ),
        (
            with_rule(json!({"name": ""})),
            &["rules[0].name: must match [a-z0-9_-]{1,64}"],
        ),
        (
            with_rule(json!({"key": []})),
            &["rules[0].key: must not be empty"],
        ),
        (
            with_rule(json!({"key": [{"header": ""}]})),
            &["rules[0].key[0].header: header name must not be empty"],
        ),
        (
            with_rule(json!({"limit": null})),
            &["rules[0].limit: required for mode local and hybrid"],
        ),
        (
            with_rule(json!({"match": {"methods": [""]}})),
            &["rules[0].match.methods[0]: must be an HTTP method token"],
        ),
        (
            with_rule(json!({"overrides": [{"when_header": {}, "limit": 1}]})),
            &["rules[0].overrides[0].when_header: must name at least one header"],
        ),
        (
            with_rule(json!({"overrides": [{"limit": 1}]})),
            &["rules[0].overrides[0]: missing field `when_header`"],
        ),
        (
            global(json!({"service": {"cluster": "", "domain": "d"}})),
            &["rules[0].service.cluster: must name an Envoy cluster"],
        ),
        (
            global(json!({"service": {"cluster": "rls", "domain": ""}})),
            &["rules[0].service.domain: must not be empty"],
        ),
        (
            global(json!({"service": {"cluster": "rls"}})),
            &["rules[0].service: missing field `domain`"],
        ),
        (
            global(json!({"service": null})),
            &["rules[0].service: required for mode global and hybrid"],
        ),
        // Invalid names and headers.
        (
            with_rule(json!({"name": "API"})),
            &["rules[0].name: must match [a-z0-9_-]{1,64}"],
        ),
        (
            with_rule(json!({"name": "a".repeat(65)})),
            &["rules[0].name: must match [a-z0-9_-]{1,64}"],
        ),
        (
            with_top(json!({"rules": [
                {"name": "a", "key": ["route"], "limit": 1},
                {"name": "a", "key": ["path"], "limit": 2}
            ]})),
            &["rules[1].name: duplicate rule name"],
        ),
        (
            with_rule(json!({"key": ["route", "route"]})),
            &["rules[0].key[1]: duplicate key part"],
        ),
        (
            with_rule(json!({"key": [{"header": "X-User"}, {"header": "x-user"}]})),
            &["rules[0].key[1]: duplicate key part"],
        ),
        (
            with_rule(json!({"key": [{"header": "x user"}]})),
            &["rules[0].key[0].header: invalid character at position 1"],
        ),
        (
            with_rule(json!({"key": [{"header": ":path"}]})),
            &["rules[0].key[0].header: pseudo-headers"],
        ),
        (
            with_rule(json!({"match": {"path_prefix": "api"}})),
            &["rules[0].match.path_prefix: must start with '/'"],
        ),
        (
            with_rule(json!({"match": {"methods": ["GET", "GE T"]}})),
            &["rules[0].match.methods[1]: must be an HTTP method token"],
        ),
        (
            with_rule(json!({"match": {"headers": {"x plan": "gold"}}})),
            &["rules[0].match.headers.x plan: invalid character at position 1"],
        ),
        (
            with_rule(json!({"match": {"headers": {"X-Plan": "a", "x-plan": "b"}}})),
            &[
                "rules[0].match.headers.",
                ": duplicate header (names are case-insensitive)",
            ],
        ),
        (
            with_rule(json!({"overrides": [{"when_header": {":path": "/"}, "limit": 1}]})),
            &["rules[0].overrides[0].when_header.:path: pseudo-headers"],
        ),
        // Impossible limits: zero, negative, beyond the integer type, overflowing arithmetic.
        (
            with_rule(json!({"limit": 0})),
            &["rules[0].limit: must be > 0"],
        ),
        (
            with_rule(json!({"limit": -1})),
            &["rules[0].limit: invalid value: integer `-1`, expected u64"],
        ),
        (
            with_rule(json!({"limit": 18_446_744_073_709_551_616.0_f64})),
            &["rules[0].limit: invalid type: floating point"],
        ),
        (
            r#"{"rules":[{"name":"a","key":["route"],"limit":18446744073709551616}]}"#.into(),
            &["rules[0].limit: invalid type: floating point"],
        ),
        (
            with_rule(json!({"limit": max})),
            &["rules[0]: limit, window_s and burst are too large"],
        ),
        (
            with_rule(json!({"window_s": 0})),
            &["rules[0].window_s: must be > 0"],
        ),
        (
            with_rule(json!({"window_s": -60})),
            &["rules[0].window_s: invalid value: integer `-60`, expected u64"],
        ),
        (
            with_rule(json!({"window_s": max})),
            &["rules[0]: limit, window_s and burst are too large"],
        ),
        (
            with_rule(json!({"limit": 1, "window_s": 3_153_600_001_u64})),
            &["rules[0]: limit, window_s and burst are too large"],
        ),
        (
            with_rule(json!({"burst": -1})),
            &["rules[0].burst: invalid value: integer `-1`, expected u64"],
        ),
        (
            with_rule(json!({"burst": max})),
            &["rules[0]: limit, window_s and burst are too large"],
        ),
        (
            with_rule(json!({"limit": 10, "window_s": 1, "burst": 1_000_000_000_000_000_000_u64})),
            &["rules[0]: limit, window_s and burst are too large"],
        ),
        (
            with_rule(json!({"overrides": [{"when_header": {"x-plan": "gold"}, "limit": 0}]})),
            &["rules[0].overrides[0].limit: must be > 0"],
        ),
        (
            with_rule(json!({"overrides": [{"when_header": {"x-plan": "gold"}, "window_s": 0}]})),
            &["rules[0].overrides[0].window_s: must be > 0"],
        ),
        (
            with_rule(json!({"overrides": [{"when_header": {"x-plan": "gold"}, "burst": max}]})),
            &["rules[0].overrides[0]: limit, window_s and burst are too large"],
        ),
        (
            with_rule(json!({"overrides": [{"when_header": {"x-plan": "gold"}, "limit": -5}]})),
            &["rules[0].overrides[0].limit: invalid value: integer `-5`, expected u64"],
        ),
        (
            with_rule(json!({"overrides": overrides(33)})),
            &["rules[0].overrides: at most 32 overrides"],
        ),
        (
            with_top(json!({"rules": rules(33)})),
            &["rules: at most 32 rules"],
        ),
        (
            with_rule(json!({"max_keys": 0})),
            &["rules[0].max_keys: must be between 1 and 1000000"],
        ),
        (
            with_rule(json!({"max_keys": 1_000_001})),
            &["rules[0].max_keys: must be between 1 and 1000000"],
        ),
        (
            with_rule(json!({"max_keys": -1})),
            &["rules[0].max_keys: invalid value: integer `-1`, expected u32"],
        ),
        (
            with_rule(json!({"max_keys": 4_294_967_296_u64})),
            &["rules[0].max_keys: invalid value: integer `4294967296`, expected u32"],
        ),
        (
            global(json!({"service": {"cluster": "rls", "domain": "d", "timeout_ms": 0}})),
            &["rules[0].service.timeout_ms: must be between 1 and 60000"],
        ),
        (
            global(json!({"service": {"cluster": "rls", "domain": "d", "timeout_ms": 60_001}})),
            &["rules[0].service.timeout_ms: must be between 1 and 60000"],
        ),
        (
            with_top(json!({"client_ip": {"from": "xff", "trusted_hops": 0}})),
            &["client_ip.trusted_hops: must be > 0"],
        ),
        (
            with_top(json!({"client_ip": {"from": "xff", "trusted_hops": -1}})),
            &["client_ip", "invalid value: integer `-1`, expected u32"],
        ),
        (
            with_top(json!({"client_ip_prefix": {"ipv4": 0}})),
            &["client_ip_prefix.ipv4: must be between 1 and 32, got 0"],
        ),
        (
            with_top(json!({"client_ip_prefix": {"ipv4": 33}})),
            &["client_ip_prefix.ipv4: must be between 1 and 32, got 33"],
        ),
        (
            with_top(json!({"client_ip_prefix": {"ipv6": 0}})),
            &["client_ip_prefix.ipv6: must be between 1 and 128, got 0"],
        ),
        (
            with_top(json!({"client_ip_prefix": {"ipv6": 129}})),
            &["client_ip_prefix.ipv6: must be between 1 and 128, got 129"],
        ),
        (
            with_top(json!({"client_ip_prefix": {"ipv6": 256}})),
            &["client_ip_prefix.ipv6: invalid value: integer `256`, expected u8"],
        ),
        (
            with_top(json!({"client_ip_prefix": {"ipv6": "64"}})),
            &["client_ip_prefix.ipv6: invalid type: string \"64\", expected u8"],
        ),
        (
            with_top(json!({"client_ip_prefix": {"v6": 64}})),
            &["client_ip_prefix.v6: unknown field `v6`, expected `ipv4` or `ipv6`"],
        ),
        (
            with_top(json!({"client_ip_prefix": 64})),
            &["client_ip_prefix: invalid type: integer `64`"],
        ),
        (
            with_top(json!({"response": {"status": 200}})),
            &["response.status: must be between 400 and 599, got 200"],
        ),
        (
            with_top(json!({"response": {"status": 600}})),
            &["response.status: must be between 400 and 599, got 600"],
        ),
        (
            with_top(json!({"response": {"status": 70_000}})),
            &["response.status: invalid value: integer `70000`, expected u16"],
        ),
        // Settings that contradict the rule's mode.
        (
            with_rule(json!({"service": {"cluster": "rls", "domain": "d"}})),
            &["rules[0].service: only for mode global or hybrid"],
        ),
        (
            global(json!({"limit": 10})),
            &["rules[0].limit: must be absent in mode global"],
        ),
        (
            global(json!({"burst": 5})),
            &["rules[0].burst: must be absent in mode global"],
        ),
        (
            global(json!({"overrides": [{"when_header": {"x-plan": "gold"}, "limit": 1}]})),
            &["rules[0].overrides: must be absent in mode global"],
        ),
        (
            global(json!({"mode": "hybrid"})),
            &["rules[0].limit: required for mode local and hybrid"],
        ),
        // Bad enum values.
        (
            with_rule(json!({"mode": "distributed"})),
            &[
                "rules[0].mode: unknown variant `distributed`, expected one of `local`, `global`, `hybrid`",
            ],
        ),
        (
            with_rule(json!({"mode": "Local"})),
            &["rules[0].mode: unknown variant `Local`"],
        ),
        (
            with_rule(json!({"on_missing_key": "allow"})),
            &["rules[0].on_missing_key: unknown variant `allow`"],
        ),
        (
            with_top(json!({"on_contention": "block"})),
            &["on_contention: unknown variant `block`, expected `allow` or `deny`"],
        ),
        (
            with_top(json!({"on_overflow": 0})),
            &["on_overflow: expected value"],
        ),
        (
            with_top(json!({"response": {"headers": "draft02"}})),
            &["response.headers: unknown variant `draft02`"],
        ),
        (
            with_top(json!({"client_ip": {"from": "forwarded"}})),
            &[
                "client_ip",
                "unknown variant `forwarded`, expected `peer` or `xff`",
            ],
        ),
        (
            with_top(json!({"client_ip": {"trusted_hops": 1}})),
            &["client_ip", "missing field `from`"],
        ),
        (
            with_rule(json!({"key": ["rout"]})),
            &["rules[0].key[0]: data did not match any variant of untagged enum KeyPartConfig"],
        ),
        (
            with_rule(json!({"key": [{"query": "user"}]})),
            &["rules[0].key[0]: data did not match any variant of untagged enum KeyPartConfig"],
        ),
        (
            global(json!({"service": {"cluster": "rls", "domain": "d", "failure_mode": "open"}})),
            &["rules[0].service.failure_mode: unknown variant `open`, expected `allow` or `deny`"],
        ),
    ];
    assert_configs_rejected(
        &testing::module("rate-limit"),
        "rate-limit: invalid plugin configuration: ",
        &cases,
    );
}

#[test]
fn per_request_cost_in_wasm_instructions() {
    let host = Host::new();
    let mut w = worker(&host, PER_IP);
    request(&mut w, "10.0.0.1:1", &[]);
    w.clear_history();
    request(&mut w, "10.0.0.1:1", &[]);
    let fuel: u64 = w
        .history()
        .iter()
        .filter(|c| c.callback != "proxy_on_context_create")
        .map(|c| c.fuel)
        .sum();
    eprintln!(
        "rate-limit: {fuel} wasm instructions per allowed request (one rule, both header sets)"
    );
    assert!(fuel < 300_000, "{fuel}");
}

/// The table is where the README says: `gatewasm.rl.<table-id>.<group>`, one fixed-size entry
/// per group, all created by the first worker's `on_configure`, none added later.
#[test]
fn table_layout_in_shared_data() {
    let host = Host::new();
    let config = r#"{"rules":[{"name":"ip","key":["client_ip"],"limit":1,"max_keys":100}]}"#;
    let settings = rate_limit::config::parse_settings(Some(config.as_bytes())).unwrap();
    let rule = &settings.rules[0];
    let mut w = worker(&host, config);
    // The table, and the process's key seed (`gatewasm.rl.key-seed`, 32 bytes).
    let seed = rate_limit::limiter::SEED_KEY.len() + 32;
    assert_eq!(host.shared_data_size(""), (8, 7 * (257 + 30) + seed));
    for g in 0..7 {
        let key = rate_limit::table::EntryKey::new(rule.table_id, g);
        assert!(key.as_str().starts_with("gatewasm.rl."));
        let (value, cas) = host.shared_data("", key.as_str().as_bytes()).unwrap();
        assert_eq!((value.len(), value[0]), (257, rate_limit::table::VERSION));
        assert_ne!(cas, 0);
    }
    for i in 0..50 {
        request(&mut w, &format!("10.0.0.{i}:1"), &[]);
    }
    assert_eq!(host.shared_data_size(""), (8, 7 * (257 + 30) + seed));
}

/// Shadow rules count and log but never deny; overrides and missing keys in the real module.
#[test]
fn shadow_overrides_and_missing_keys() {
    let host = Host::new();
    let config = r#"{"rules":[
        {"name":"trial","key":["route"],"limit":1,"shadow":true},
        {"name":"tenant","key":[{"header":"x-tenant-id"}],"limit":1,"on_missing_key":"deny",
         "overrides":[{"when_header":{"x-tenant-tier":"gold"},"limit":3}]}
    ]}"#;
    let mut w = worker(&host, config);
    let gold = [("x-tenant-id", "acme"), ("x-tenant-tier", "gold")];
    for _ in 0..3 {
        let v = request(&mut w, "10.0.0.1:1", &gold);
        assert!(ok(&v));
        // The shadow rule never shows up in the headers.
        assert!(header(&v, "ratelimit").unwrap().starts_with("\"tenant\";"));
    }
    assert!(!ok(&request(&mut w, "10.0.0.1:1", &gold)));
    assert!(ok(&request(
        &mut w,
        "10.0.0.1:1",
        &[("x-tenant-id", "globex")]
    )));
    let v = request(&mut w, "10.0.0.1:1", &[]);
    assert!(!ok(&v));
    let body: serde_json::Value =
        serde_json::from_slice(&v.local_response.as_ref().unwrap().body).unwrap();
    assert_eq!(body["error"], "rate_limit_key_missing");
    assert_eq!(host.counter("gatewasm_rate_limit_allowed_trial"), 1);
    assert_eq!(host.counter("gatewasm_rate_limit_shadow_denied_trial"), 5);
    assert_eq!(host.counter("gatewasm_rate_limit_allowed_tenant"), 4);
    assert_eq!(host.counter("gatewasm_rate_limit_denied_tenant"), 2);
    assert!(w.logged(LogLevel::Info, "shadow rule trial would have denied"));
}

/// A damaged or foreign entry (another filter's value under our key, a future format) reads as
/// an empty group and is replaced by the next write: no panic, no stuck bucket.
#[test]
fn damaged_entries_heal() {
    let host = Host::new();
    let config = r#"{"rules":[{"name":"all","key":["route"],"limit":2,"max_keys":1}]}"#;
    let settings = rate_limit::config::parse_settings(Some(config.as_bytes())).unwrap();
    let key = rate_limit::table::EntryKey::new(settings.rules[0].table_id, 0);
    let mut w = worker(&host, config);
    host.set_shared_data("", key.as_str().as_bytes(), b"junk", 0);
    assert!(ok(&request(&mut w, "10.0.0.1:1", &[])));
    let (value, _) = host.shared_data("", key.as_str().as_bytes()).unwrap();
    assert_eq!((value.len(), value[0]), (17, rate_limit::table::VERSION));
    assert!(ok(&request(&mut w, "10.0.0.1:1", &[])));
    assert!(!ok(&request(&mut w, "10.0.0.1:1", &[])));
}
