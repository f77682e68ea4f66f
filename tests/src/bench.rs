//! `just bench`: what each filter costs in a real Envoy, side by side with Envoy's native
//! filters, in one run.
//!
//! Every case is one Envoy (`--concurrency 1`, pinned to one CPU) whose listener answers with a
//! `direct_response` — no upstream, so what is measured is Envoy plus the filters. The cases:
//!
//! - `baseline`: the edge gateway's connection manager with only the router;
//! - every gatewasm filter of `envoy-configs/gateway.yaml`, alone, with the configuration it has
//!   there (so the figures are for the configuration users copy), and the whole chain;
//! - Envoy's native equivalents: request-id generation, `header_mutation`, `local_ratelimit`,
//!   `jwt_authn` (when a JWT case exists), and their chain.
//!
//! For each case and repetition: start Envoy, warm up, then drive it to saturation with `wrk`
//! (pinned to the other CPU) and read Envoy's CPU time from `/proc/<pid>/stat` before and
//! after: **CPU time per request** is the primary figure (robust on a shared machine, unlike
//! throughput). Then a paced single-connection client measures p50/p99 latency at a fixed,
//! moderate rate, and `/proc/<pid>/status` gives the RSS after load. Repetitions are
//! interleaved (all cases, then all cases again, …), and the report gives medians with min–max;
//! "added" figures subtract the baseline of the same repetition.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::envoy::{Envoy, EnvoyBuilder};
use crate::{paths, render};

/// What a run measures and for how long.
#[derive(Clone, Debug)]
pub struct Options {
    /// Interleaved repetitions of every case.
    pub reps: usize,
    /// Warm-up load before measuring.
    pub warmup: Duration,
    /// Saturation load (CPU per request, req/s).
    pub saturate: Duration,
    /// wrk connections during saturation.
    pub connections: usize,
    /// Paced latency probe: requests per second and duration.
    pub paced_rate: u32,
    pub paced: Duration,
    /// CPU for Envoy, CPU for the load generators.
    pub envoy_cpu: usize,
    pub load_cpu: usize,
    /// Only cases whose name contains one of these (empty: all).
    pub only: Vec<String>,
}

impl Options {
    /// The full run: 3 repetitions, about 10 s per case and repetition.
    pub fn full() -> Self {
        Self {
            reps: 3,
            warmup: Duration::from_secs(1),
            saturate: Duration::from_secs(5),
            connections: 16,
            paced_rate: 500,
            paced: Duration::from_secs(3),
            envoy_cpu: 0,
            load_cpu: 1,
            only: Vec::new(),
        }
    }

    /// `--quick`: 3 repetitions, about 3.5 s per case and repetition (under 3 minutes).
    pub fn quick() -> Self {
        Self {
            warmup: Duration::from_secs(1),
            saturate: Duration::from_secs(1),
            paced: Duration::from_millis(500),
            ..Self::full()
        }
    }
}

/// Which family a case belongs to (for the report and chart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Baseline,
    Gatewasm,
    Native,
    /// Hand-written modules that price the platform: a VM entry, each kind of host call.
    Platform,
}

/// One Envoy configuration to measure.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub family: Family,
    /// HTTP filters before the router, as Envoy JSON.
    pub filters: Vec<Value>,
    /// Let Envoy's connection manager generate request IDs (the native request-id case).
    pub native_request_id: bool,
    /// The native case this one is compared with, if any.
    pub native_equivalent: Option<String>,
    /// Extra request headers this case needs (e.g. a JWT).
    pub headers: Vec<(String, String)>,
    /// Distinct tokens to send in turn as `authorization: Bearer …` (a fresh token per
    /// request: more tokens than any verified-token cache holds, sent in order, so an LRU never
    /// hits). `None`: every request carries the token in `headers`.
    pub rotating_tokens: Option<std::sync::Arc<[String]>>,
}

/// The path every request asks for: under /api/, where gateway.yaml requires a token and
/// applies its rate limits.
pub const BENCH_PATH: &str = "/api/bench";

/// Request headers every case gets: what an authenticated edge request of tenant acme looks
/// like (`token`: a demo-IdP JWT, see [`crate::demo_jwt`]).
pub fn common_headers(token: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = [
        ("host", "acme.tenants.localhost"),
        ("user-agent", "gatewasm-bench"),
        ("accept", "*/*"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    headers.push(("authorization".into(), format!("Bearer {token}")));
    headers
}

// ---- configurations ---------------------------------------------------------------------------

/// Ports rendered into gateway.yaml while we take it apart; replaced by placeholders again.
const SENTINEL_LISTEN: u16 = 61_001;
const SENTINEL_ADMIN: u16 = 61_002;

/// gateway.yaml, rendered with sentinel ports and `{{WASM_DIR}}` kept, as JSON.
pub fn gateway_config() -> Result<Value> {
    let template = std::fs::read_to_string(paths::envoy_configs_dir().join("gateway.yaml"))
        .context("reading envoy-configs/gateway.yaml")?;
    let vars: render::Vars = [
        ("LISTEN_PORT", SENTINEL_LISTEN.to_string()),
        ("ADMIN_PORT", SENTINEL_ADMIN.to_string()),
        ("UPSTREAM_PORT", "61003".to_string()),
        ("UPSTREAM2_PORT", "61004".to_string()),
        ("WASM_DIR", "{{WASM_DIR}}".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let rendered = render::render(&template, &vars)?;
    let docs = crate::deploy::parse_yaml_docs(&rendered)?;
    docs.into_iter().next().context("gateway.yaml is empty")
}

fn hcm(config: &mut Value) -> Result<&mut Value> {
    config
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .context("gateway.yaml: no HTTP connection manager on the first listener")
}

/// The gatewasm filters of gateway.yaml in chain order: (filter name, Envoy JSON).
pub fn gateway_wasm_filters(gateway: &Value) -> Result<Vec<(String, Value)>> {
    let mut gateway = gateway.clone();
    let filters = hcm(&mut gateway)?
        .get("http_filters")
        .and_then(Value::as_array)
        .context("gateway.yaml: no http_filters")?
        .clone();
    Ok(filters
        .into_iter()
        .filter_map(|mut f| {
            let name = f.get("name")?.as_str()?.to_string();
            let short = name.strip_prefix("gatewasm.")?.replace('_', "-");
            if short == "rate-limit" {
                never_deny(&mut f);
            }
            Some((short, f))
        })
        .collect())
}

/// The rate-limit filter's rules as configured, with limits no benchmark reaches: the cost of
/// evaluating and charging them, never a 429.
fn never_deny(filter: &mut Value) {
    let Some(value) = filter.pointer_mut("/typed_config/config/configuration/value") else {
        return;
    };
    let Some(mut config) = value
        .as_str()
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
    else {
        return;
    };
    if let Some(rules) = config.get_mut("rules").and_then(Value::as_array_mut) {
        for rule in rules {
            if rule.get("limit").is_some() {
                rule["limit"] = json!(1_000_000_000u64);
            }
            if let Some(overrides) = rule.get_mut("overrides").and_then(Value::as_array_mut) {
                for o in overrides {
                    if o.get("limit").is_some() {
                        o["limit"] = json!(1_000_000_000u64);
                    }
                }
            }
        }
    }
    *value = Value::String(config.to_string());
}

/// The Envoy config of `case`: gateway.yaml's listener and connection manager, a
/// direct-response route, the case's filters and the router. JSON text with `{{…}}`
/// placeholders for ports and the wasm directory, for [`EnvoyBuilder`].
pub fn envoy_config(gateway: &Value, case: &Case) -> Result<String> {
    let mut config = gateway.clone();
    if let Some(clusters) = config.pointer_mut("/static_resources/clusters") {
        *clusters = json!([]);
    }
    let manager = hcm(&mut config)?;
    manager["route_config"] = json!({
        "name": "bench",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [{
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}
            }]
        }]
    });
    let mut filters = case.filters.clone();
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    manager["http_filters"] = Value::Array(filters);
    if case.native_request_id {
        manager["generate_request_id"] = json!(true);
        manager["always_set_request_id_in_response"] = json!(true);
    }
    let text = serde_json::to_string_pretty(&config)?;
    let text = text
        .replace(
            &format!("\"port_value\": {SENTINEL_LISTEN}"),
            "\"port_value\": {{LISTEN_PORT}}",
        )
        .replace(
            &format!("\"port_value\": {SENTINEL_ADMIN}"),
            "\"port_value\": {{ADMIN_PORT}}",
        );
    ensure!(
        text.contains("{{LISTEN_PORT}}") && text.contains("{{ADMIN_PORT}}"),
        "could not find the listener and admin ports in gateway.yaml"
    );
    Ok(text)
}

/// The case that measures what any Proxy-Wasm filter costs before it does any work.
pub const WASM_FLOOR: &str = "idle wasm filter";

/// Where [`prepare_idle_filter`] writes the idle module, relative to the wasm directory.
pub const IDLE_FILTER_FILE: &str = "bench/idle_filter.wasm";

/// Writes the idle filter's module: the harness's test module with every optional stream
/// callback export removed (the post-link step of `just build`, applied to all of them), so it
/// makes the minimum three callbacks per request — context create, request headers, delete —
/// like the trimmed gatewasm filters, not the SDK's default seven.
pub fn prepare_idle_filter() -> Result<PathBuf> {
    use gatewasm_common::exports::{OPTIONAL_STREAM_CALLBACKS, remove_exports};
    let dir = paths::wasm_dir();
    let source = dir.join("harness_test_module.wasm");
    let bytes = std::fs::read(&source)
        .with_context(|| format!("reading {} (run `just build`)", source.display()))?;
    let drop: Vec<&str> = OPTIONAL_STREAM_CALLBACKS.iter().map(|(e, _)| *e).collect();
    let (trimmed, _) = remove_exports(&bytes, &drop).map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = dir.join(IDLE_FILTER_FILE);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, trimmed)?;
    Ok(out)
}

/// A host call a platform case makes in `proxy_on_request_headers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCall {
    /// `proxy_get_header_map_value(":path")`: Envoy calls the module's `malloc` for the value.
    HeaderValue,
    /// `proxy_get_header_map_pairs`: the whole map, serialised into one `malloc`ed buffer.
    HeaderPairs,
    /// `proxy_get_header_map_pairs`, then `proxy_set_header_map_pairs` with the same buffer:
    /// the whole map read and written back unchanged (one write for any number of headers).
    HeaderPairsWriteBack,
    /// `proxy_get_current_time_nanoseconds`: a value written to a given address.
    Clock,
    /// `proxy_replace_header_map_value("x-platform", "value")`.
    ReplaceHeader,
    /// `proxy_increment_metric` on a counter defined in `proxy_on_configure`.
    IncrementMetric,
    /// `proxy_call_foreign_function("clear_route_cache")`, as the filters call it.
    ClearRouteCache,
}

impl HostCall {
    /// How many host calls one use of this makes (the write-back is a read and a write).
    pub fn host_calls(self) -> u64 {
        match self {
            HostCall::HeaderPairsWriteBack => 2,
            _ => 1,
        }
    }

    fn wat(self) -> &'static str {
        match self {
            HostCall::HeaderValue => {
                "(drop (call $get_header (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 112) (i32.const 116)))"
            }
            HostCall::HeaderPairs => {
                "(drop (call $get_pairs (i32.const 0) (i32.const 112) (i32.const 116)))"
            }
            HostCall::HeaderPairsWriteBack => {
                "(drop (call $get_pairs (i32.const 0) (i32.const 112) (i32.const 116))) \
                 (drop (call $set_pairs (i32.const 0) (i32.load (i32.const 112)) (i32.load (i32.const 116))))"
            }
            HostCall::Clock => "(drop (call $now (i32.const 104)))",
            HostCall::ReplaceHeader => {
                "(drop (call $replace_header (i32.const 0) (i32.const 24) (i32.const 10) (i32.const 40) (i32.const 5)))"
            }
            HostCall::IncrementMetric => {
                "(drop (call $increment (i32.load (i32.const 48)) (i64.const 1)))"
            }
            HostCall::ClearRouteCache => {
                "(drop (call $foreign (i32.const 80) (i32.const 17) (i32.const 0) (i32.const 0) (i32.const 112) (i32.const 116)))"
            }
        }
    }
}

/// A platform case: a hand-written Wasm module (no SDK; a bump allocator reset per request)
/// exporting `stream_exports`, each returning at once after `calls` in
/// `proxy_on_request_headers`. Envoy enters the VM once per exported callback and skips the
/// others, so differences between these cases price a VM entry and each kind of host call.
pub struct PlatformCase {
    pub name: &'static str,
    pub stream_exports: &'static [&'static str],
    pub calls: &'static [(HostCall, u32)],
}

const ALL_STREAM_ENTRIES: &[&str] = &[
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_delete",
];

const fn three_entries(name: &'static str, calls: &'static [(HostCall, u32)]) -> PlatformCase {
    PlatformCase {
        name,
        stream_exports: ALL_STREAM_ENTRIES,
        calls,
    }
}

pub const PLATFORM_CASES: [PlatformCase; 10] = [
    PlatformCase {
        name: "wasm filter, 0 VM entries per request",
        stream_exports: &[],
        calls: &[],
    },
    PlatformCase {
        name: "wasm filter, 1 VM entry per request",
        stream_exports: &["proxy_on_request_headers"],
        calls: &[],
    },
    three_entries("wasm filter, 3 VM entries per request", &[]),
    three_entries(
        "wasm filter, 3 VM entries, 8 header reads",
        &[(HostCall::HeaderValue, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 header map reads",
        &[(HostCall::HeaderPairs, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 header map read-write-backs",
        &[(HostCall::HeaderPairsWriteBack, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 clock reads",
        &[(HostCall::Clock, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 header writes",
        &[(HostCall::ReplaceHeader, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 metric increments",
        &[(HostCall::IncrementMetric, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 route cache clears",
        &[(HostCall::ClearRouteCache, 8)],
    ),
];

/// The module of a platform case, as WebAssembly text: the ABI version marker, `memory`, a bump
/// `malloc` (reset at each request), root callbacks that accept any configuration (and define
/// one counter), and the stream callbacks of the case.
pub fn platform_module_wat(case: &PlatformCase) -> Result<String> {
    let mut wat = String::from(
        r#"(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (import "env" "proxy_call_foreign_function"
    (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) ":path")
  (data (i32.const 24) "x-platform")
  (data (i32.const 40) "value")
  (data (i32.const 56) "platform_counter")
  (data (i32.const 80) "clear_route_cache")
  (global $heap (mut i32) (i32.const 1024))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (if (i32.gt_u (i32.add (local.get $p) (local.get $n)) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define_metric (i32.const 0) (i32.const 56) (i32.const 16) (i32.const 48)))
    i32.const 1)
"#,
    );
    for export in case.stream_exports {
        let func = match *export {
            "proxy_on_context_create" => "(param i32 i32)".to_string(),
            "proxy_on_request_headers" => {
                let mut body = String::from(
                    "(param i32 i32 i32) (result i32)\n    (global.set $heap (i32.const 1024))\n",
                );
                for (call, times) in case.calls {
                    for _ in 0..*times {
                        body.push_str("    ");
                        body.push_str(call.wat());
                        body.push('\n');
                    }
                }
                body.push_str("    i32.const 0");
                body
            }
            "proxy_on_delete" => "(param i32)".to_string(),
            other => bail!("no platform module callback {other}"),
        };
        wat.push_str(&format!("  (func (export \"{export}\") {func})\n"));
    }
    wat.push_str(")\n");
    Ok(wat)
}

/// The file of a platform case's module, relative to the wasm directory.
fn platform_module_file(index: usize) -> String {
    format!("bench/platform_{index}.wasm")
}

/// Writes the platform cases' modules (binary Wasm compiled from [`platform_module_wat`]).
pub fn prepare_platform_modules() -> Result<()> {
    let dir = paths::wasm_dir();
    std::fs::create_dir_all(dir.join("bench"))?;
    for (index, case) in PLATFORM_CASES.iter().enumerate() {
        let binary = wat::parse_str(platform_module_wat(case)?)?;
        std::fs::write(dir.join(platform_module_file(index)), binary)?;
    }
    Ok(())
}

fn platform_filter(index: usize) -> Value {
    wasm_filter(
        &format!("gatewasm.platform.{index}"),
        &platform_module_file(index),
        "{}",
    )
}

/// An Envoy Wasm HTTP filter (V8, its own VM) running `file` of the wasm directory with
/// `configuration` as its plugin configuration.
fn wasm_filter(name: &str, file: &str, configuration: &str) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": format!("{{{{WASM_DIR}}}}/{file}")}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                }
            }
        }
    })
}

/// A Rust-SDK (proxy-wasm 0.2.5) filter that reads `:path` and continues: the harness's test
/// module configured to answer only a path no bench request asks for, trimmed to three
/// callbacks per request ([`prepare_idle_filter`]). What it adds is the platform's fixed cost
/// per request (V8 entries, Envoy's Wasm filter), the floor under every gatewasm filter.
pub fn idle_wasm_filter() -> Value {
    wasm_filter(
        "gatewasm.idle",
        IDLE_FILTER_FILE,
        r#"scenario-local-reply:{"status":500,"path_prefix":"/never"}"#,
    )
}

/// How many distinct tokens a fresh-token case cycles through: five times the verified-token
/// caches of gateway.yaml's jwt-to-header (1000 entries per worker) and of the native
/// `jwt_authn (cache)` case, so every request misses.
pub const FRESH_TOKENS: usize = 5000;

/// The fresh-token cases: gateway.yaml's jwt-to-header and native `jwt_authn` (no cache: it
/// would miss anyway), each request carrying a token neither has seen — the cost of a
/// signature verification, which the repeated-token cases hide behind the caches.
/// The names of [`fresh_token_cases`] (to know whether a run needs its tokens).
pub const FRESH_TOKEN_CASES: [&str; 2] = [
    "jwt-to-header (fresh tokens)",
    "native jwt_authn (fresh tokens)",
];

pub fn fresh_token_cases(
    gateway: &Value,
    token: &str,
    tokens: std::sync::Arc<[String]>,
) -> Result<Vec<Case>> {
    let jwt = gateway_wasm_filters(gateway)?
        .into_iter()
        .find(|(name, _)| name == "jwt-to-header")
        .map(|(_, f)| f)
        .context("gateway.yaml has no jwt-to-header filter")?;
    let case = |name: &str, family, filter: Value, native: Option<&str>| Case {
        name: name.to_string(),
        family,
        filters: vec![filter],
        native_request_id: false,
        native_equivalent: native.map(str::to_string),
        headers: common_headers(token),
        rotating_tokens: Some(tokens.clone()),
    };
    Ok(vec![
        case(
            FRESH_TOKEN_CASES[0],
            Family::Gatewasm,
            jwt,
            Some(FRESH_TOKEN_CASES[1]),
        ),
        case(
            FRESH_TOKEN_CASES[1],
            Family::Native,
            native_jwt_authn(false),
            None,
        ),
    ])
}

/// Envoy's `header_mutation` adding two request headers and one response header: the native
/// stand-in for a header-setting filter (tenant-routing, trace-propagation).
pub fn native_header_mutation() -> Value {
    let set = |k: &str, v: &str| json!({"append": {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}});
    json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [set("x-tenant-id", "acme"), set("x-tenant-cluster", "tenant_acme")],
                "response_mutations": [set("x-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736")]
            }
        }
    })
}

/// Envoy's `local_ratelimit` with a bucket that never runs dry (the cost of the check).
pub fn native_local_ratelimit() -> Value {
    let always = |key: &str| json!({"runtime_key": key, "default_value": {"numerator": 100, "denominator": "HUNDRED"}});
    json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
            "filter_enabled": always("bench_rl_enabled"),
            "filter_enforced": always("bench_rl_enforced")
        }
    })
}

/// Envoy's `jwt_authn` verifying the demo IdP's ES256 tokens (the same JWKS, issuer, audience
/// and claim headers as gateway.yaml's jwt-to-header), optionally with its verified-token cache.
pub fn native_jwt_authn(cache: bool) -> Value {
    let mut provider = json!({
        "issuer": crate::demo_jwt::DEMO_ISSUER,
        "audiences": [crate::demo_jwt::DEMO_AUDIENCE],
        "local_jwks": {"inline_string": crate::demo_jwt::DEMO_JWKS},
        "claim_to_headers": [
            {"header_name": "x-user-id", "claim_name": "sub"},
            {"header_name": "x-user-role", "claim_name": "role"},
            {"header_name": "x-jwt-tenant", "claim_name": "tenant"}
        ]
    });
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"demo": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "demo"}}]
        }
    })
}

/// The cases: baseline, each gatewasm filter of gateway.yaml alone, the gatewasm chain, the
/// native equivalents and the native chain. `extra` adds cases built elsewhere (e.g. JWT).
pub fn cases(gateway: &Value, token: &str) -> Result<Vec<Case>> {
    let wasm = gateway_wasm_filters(gateway)?;
    let headers = common_headers(token);
    let case = |name: &str, family, filters: Vec<Value>, native: Option<&str>| Case {
        name: name.to_string(),
        family,
        filters,
        native_request_id: false,
        native_equivalent: native.map(str::to_string),
        headers: headers.clone(),
        rotating_tokens: None,
    };
    let mut out = vec![case("baseline", Family::Baseline, vec![], None)];
    out.push(case(
        WASM_FLOOR,
        Family::Gatewasm,
        vec![idle_wasm_filter()],
        None,
    ));
    for (index, platform) in PLATFORM_CASES.iter().enumerate() {
        out.push(case(
            platform.name,
            Family::Platform,
            vec![platform_filter(index)],
            None,
        ));
    }
    for (name, filter) in &wasm {
        let native = match name.as_str() {
            "correlation-id" => Some("native request-id"),
            "trace-propagation" | "tenant-routing" => Some("native header_mutation"),
            "rate-limit" => Some("native local_ratelimit"),
            "jwt-to-header" => Some("native jwt_authn (cache)"),
            _ => None,
        };
        out.push(case(name, Family::Gatewasm, vec![filter.clone()], native));
    }
    out.push(case(
        &format!("gatewasm chain ({})", wasm.len()),
        Family::Gatewasm,
        wasm.iter().map(|(_, f)| f.clone()).collect(),
        Some("native chain"),
    ));
    let mut request_id = case("native request-id", Family::Native, vec![], None);
    request_id.native_request_id = true;
    out.push(request_id);
    out.push(case(
        "native header_mutation",
        Family::Native,
        vec![native_header_mutation()],
        None,
    ));
    out.push(case(
        "native local_ratelimit",
        Family::Native,
        vec![native_local_ratelimit()],
        None,
    ));
    out.push(case(
        "native jwt_authn",
        Family::Native,
        vec![native_jwt_authn(false)],
        None,
    ));
    out.push(case(
        "native jwt_authn (cache)",
        Family::Native,
        vec![native_jwt_authn(true)],
        None,
    ));
    let mut chain = case(
        "native chain",
        Family::Native,
        vec![
            native_jwt_authn(true),
            native_header_mutation(),
            native_local_ratelimit(),
        ],
        None,
    );
    chain.native_request_id = true;
    out.push(chain);
    Ok(out)
}

// ---- measuring --------------------------------------------------------------------------------

/// One repetition of one case.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub requests: u64,
    pub seconds: f64,
    pub envoy_cpu_seconds: f64,
    pub cpu_us_per_request: f64,
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rss_mib: f64,
}

/// Envoy's user + system CPU time so far.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; the fields after it are fixed.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<u64>()
            .context("bad tick count")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// Envoy's resident set size in MiB.
pub fn process_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS in /proc/<pid>/status")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// What one wrk run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// Parses wrk's summary ("N requests in 5.00s, …", "Non-2xx or 3xx responses: N",
/// "Socket errors: connect A, read B, write C, timeout D").
pub fn parse_wrk(output: &str) -> Result<WrkResult> {
    let mut result = WrkResult {
        requests: 0,
        seconds: 0.0,
        non_2xx: 0,
        socket_errors: 0,
    };
    let mut found = false;
    for line in output.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            result.requests = n.trim().parse().context("wrk request count")?;
            let secs = rest.split(',').next().unwrap_or("").trim();
            result.seconds = parse_wrk_duration(secs)?;
            found = true;
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.non_2xx = n.trim().parse().context("wrk non-2xx count")?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            result.socket_errors = errors
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    ensure!(found, "no summary in wrk's output:\n{output}");
    Ok(result)
}

fn parse_wrk_duration(s: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        bail!("unknown wrk duration {s:?}")
    };
    Ok(number.parse::<f64>().context("wrk duration")? * scale)
}

/// Runs wrk against `addr` on `cpu` for `duration`.
fn wrk(
    addr: SocketAddr,
    cpu: usize,
    duration: Duration,
    connections: usize,
    headers: &[(String, String)],
    script: Option<&Path>,
) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.args(["-t1", &format!("-c{connections}")])
        // wrk takes whole seconds (its units are s, m, h).
        .arg(format!("-d{}s", duration.as_secs_f64().ceil().max(1.0)))
        .arg("--timeout")
        .arg("5s");
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(format!("http://{addr}{BENCH_PATH}"));
    crate::envoy::pin_to_cpus(&mut cmd, &[cpu]);
    let out = cmd
        .output()
        .context("running wrk (`just bench` installs it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "wrk failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text)
}

/// A wrk script sending the tokens of `tokens_file` in turn (one per line) as the
/// `authorization` header; the other headers are wrk's (`-H`).
fn rotating_token_script(tokens_file: &Path) -> String {
    format!(
        r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  wrk.headers["authorization"] = "Bearer " .. tokens[i]
  return wrk.format()
end
"#,
        tokens_file.display()
    )
}

/// The request bytes: GET [`BENCH_PATH`] with `headers`, the `authorization` one replaced by
/// `Bearer <token>` when a token is given.
fn request_bytes(headers: &[(String, String)], token: Option<&str>) -> Vec<u8> {
    let mut request = format!("GET {BENCH_PATH} HTTP/1.1\r\n").into_bytes();
    for (k, v) in headers {
        let v = match token {
            Some(t) if k.eq_ignore_ascii_case("authorization") => format!("Bearer {t}"),
            _ => v.clone(),
        };
        request.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// A blocking HTTP/1.1 keep-alive connection for the paced latency probe.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends the request and reads the whole response; returns the status.
    fn round_trip(&mut self, request: &[u8]) -> Result<u16> {
        self.reader.get_mut().write_all(request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            ensure!(self.reader.read_line(&mut line)? > 0, "connection closed");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

/// Latencies of requests sent one at a time at `rate` per second for `duration` (open loop
/// on one connection: a slow response delays the next send, it is not skipped).
fn paced_latencies(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    headers: &[(String, String)],
    tokens: Option<&[String]>,
) -> Result<Vec<Duration>> {
    let mut conn = Connection::open(addr)?;
    let fixed = request_bytes(headers, None);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let count = (duration.as_secs_f64() * f64::from(rate)) as usize;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Measured from when the request was due: queueing behind a slow one counts.
        let sent = due.max(start);
        // Fresh tokens continue where the load left off (end of the list first: long unused).
        let rotated = tokens
            .filter(|t| !t.is_empty())
            .map(|t| request_bytes(headers, Some(&t[t.len() - 1 - i % t.len()])));
        let status = conn.round_trip(rotated.as_deref().unwrap_or(&fixed))?;
        ensure!(status == 200, "paced request answered {status}");
        latencies.push(Instant::now().saturating_duration_since(sent));
    }
    Ok(latencies)
}

/// The `q` quantile (0..=1) of `values` (sorted in place), nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Starts the case's Envoy and measures it once.
pub fn measure(gateway: &Value, case: &Case, opts: &Options, work: &Path) -> Result<Sample> {
    let config_path = work.join(format!("{}.json", slug(&case.name)));
    std::fs::write(&config_path, envoy_config(gateway, case)?)?;
    let envoy: Envoy = EnvoyBuilder::new(&config_path.display().to_string())
        .cpus(&[opts.envoy_cpu])
        .log_level("warning")
        .start()
        .with_context(|| format!("starting Envoy for {}", case.name))?;
    let pid = envoy.pid().context("Envoy has no pid")?;
    let addr = envoy.listen_addr();
    let script = match &case.rotating_tokens {
        Some(tokens) => {
            let tokens_file = work.join(format!("{}.tokens", slug(&case.name)));
            std::fs::write(&tokens_file, tokens.join("\n") + "\n")?;
            let script = work.join(format!("{}.lua", slug(&case.name)));
            std::fs::write(&script, rotating_token_script(&tokens_file))?;
            Some(script)
        }
        None => None,
    };

    let warm = wrk(
        addr,
        opts.load_cpu,
        opts.warmup,
        opts.connections,
        &case.headers,
        script.as_deref(),
    )?;
    ensure!(
        warm.non_2xx == 0,
        "{}: {} of {} warm-up requests were not 2xx (is the case's configuration right?)",
        case.name,
        warm.non_2xx,
        warm.requests
    );
    let cpu_before = process_cpu(pid)?;
    let run = wrk(
        addr,
        opts.load_cpu,
        opts.saturate,
        opts.connections,
        &case.headers,
        script.as_deref(),
    )?;
    let cpu_after = process_cpu(pid)?;
    ensure!(
        run.non_2xx == 0 && run.socket_errors == 0 && run.requests > 0,
        "{}: {} requests, {} not 2xx, {} socket errors",
        case.name,
        run.requests,
        run.non_2xx,
        run.socket_errors
    );
    let cpu = (cpu_after - cpu_before).as_secs_f64();
    let mut latencies: Vec<f64> = paced_latencies(
        addr,
        opts.paced_rate,
        opts.paced,
        &case.headers,
        case.rotating_tokens.as_deref(),
    )?
    .into_iter()
    .map(|d| d.as_secs_f64() * 1e6)
    .collect();
    let rss = process_rss_mib(pid)?;
    Ok(Sample {
        requests: run.requests,
        seconds: run.seconds,
        envoy_cpu_seconds: cpu,
        cpu_us_per_request: cpu * 1e6 / run.requests as f64,
        requests_per_second: run.requests as f64 / run.seconds,
        p50_us: quantile(&mut latencies, 0.50),
        p99_us: quantile(&mut latencies, 0.99),
        rss_mib: rss,
    })
}

/// Requests [`count_instructions`] sends before it starts counting (caches, V8 tiers, Envoy's
/// lazily built state) and while it counts.
pub const CALLGRIND_WARMUP: usize = 300;
pub const CALLGRIND_REQUESTS: usize = 1000;

/// Envoy's instructions per request in this case, counted by callgrind: Envoy runs under
/// valgrind, gets [`CALLGRIND_WARMUP`] requests, its counters are zeroed, it gets
/// [`CALLGRIND_REQUESTS`] more on one keep-alive connection (sent one at a time), and the count
/// (every thread, user space) is divided by them. Unlike CPU time this does not move with the
/// machine's other load: repeated counts of one case differ by well under 1%. It counts work,
/// not time — an instruction of V8's generated code and one of Envoy's C++ are not the same
/// price — so it complements the CPU figures rather than replacing them.
pub fn count_instructions(gateway: &Value, case: &Case, work: &Path) -> Result<f64> {
    let config_path = work.join(format!("{}.json", slug(&case.name)));
    std::fs::write(&config_path, envoy_config(gateway, case)?)?;
    let out_dir = work.join(format!("{}.callgrind", slug(&case.name)));
    std::fs::create_dir_all(&out_dir)?;
    let out_arg = format!("--callgrind-out-file={}/out.%p", out_dir.display());
    let envoy: Envoy = EnvoyBuilder::new(&config_path.display().to_string())
        .wrapper(&[
            "valgrind",
            "--tool=callgrind",
            "--smc-check=all-non-file",
            &out_arg,
        ])
        .ready_timeout(Duration::from_secs(600))
        .log_level("warning")
        .start()
        .with_context(|| format!("starting Envoy under callgrind for {}", case.name))?;
    let pid = envoy.pid().context("Envoy has no pid")?.to_string();
    let mut conn = Connection::open(envoy.listen_addr())?;
    conn.reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(60)))?;
    let fixed = request_bytes(&case.headers, None);
    let tokens = case.rotating_tokens.as_deref().filter(|t| !t.is_empty());
    let mut send = |i: usize| -> Result<()> {
        let rotated = tokens.map(|t| request_bytes(&case.headers, Some(&t[i % t.len()])));
        let status = conn.round_trip(rotated.as_deref().unwrap_or(&fixed))?;
        ensure!(
            status == 200,
            "{}: request {i} answered {status}",
            case.name
        );
        Ok(())
    };
    for i in 0..CALLGRIND_WARMUP {
        send(i)?;
    }
    callgrind_control(&["--zero", &pid])?;
    for i in CALLGRIND_WARMUP..CALLGRIND_WARMUP + CALLGRIND_REQUESTS {
        send(i)?;
    }
    callgrind_control(&["--dump=measured", &pid])?;
    // A filter that failed (a VM that did not start under valgrind, a trap) may be skipped by
    // its failure policy and still answer 200: that count would be of a different chain.
    let log = envoy.log();
    ensure!(
        !log.contains("][error][") && !log.contains("][critical]["),
        "{}: Envoy logged errors while counting; the count would not be of this case:\n{}",
        case.name,
        log.lines()
            .filter(|l| l.contains("][error][") || l.contains("][critical]["))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The first dump is `out.<pid>.1`; valgrind writes it at its next scheduling point.
    let dump = out_dir.join(format!("out.{pid}.1"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&dump)
            && let Some(total) = callgrind_total(&text)
        {
            return Ok(total as f64 / CALLGRIND_REQUESTS as f64);
        }
        ensure!(
            Instant::now() < deadline,
            "callgrind wrote no complete dump to {}",
            dump.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn callgrind_control(args: &[&str]) -> Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .output()
        .context("running callgrind_control (valgrind)")?;
    ensure!(
        out.status.success(),
        "callgrind_control {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The instruction count of a callgrind dump (its `summary:` line, events `Ir`).
pub fn callgrind_total(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The instruction-count report (`just bench --instructions`): per case, Envoy's instructions
/// per request, what the case adds to the baseline, and the ratio to its native equivalent.
pub fn instructions_report(
    cases: &[Case],
    counts: &[Result<f64, String>],
    info: &RunInfo,
) -> String {
    let baseline = cases
        .iter()
        .position(|c| c.family == Family::Baseline)
        .and_then(|i| counts.get(i).and_then(|c| c.as_ref().ok().copied()));
    let added = |i: usize| {
        let count = counts.get(i)?.as_ref().ok()?;
        baseline.map(|b| count - b)
    };
    let mut md = format!(
        "# gatewasm instruction counts — Envoy {}, {}\n\nMachine: {}. Command: `{}`. Envoy \
         (`--concurrency 1`, direct response) under valgrind's callgrind: {CALLGRIND_WARMUP} \
         requests to warm up, then {CALLGRIND_REQUESTS} counted, one at a time on one keep-alive \
         connection. **instructions/request** is every Envoy thread's user-space instruction \
         count divided by the requests; **added** subtracts the baseline. Counts, not time: \
         repeatable whatever the machine's load, but an instruction of V8's generated code and \
         one of Envoy's C++ need not cost the same.\n\n",
        info.envoy_version, info.date, info.machine, info.command
    );
    md.push_str("| case | instructions/request | added | × native equivalent (added) |\n");
    md.push_str("|---|---|---|---|\n");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let count = match counts.get(i) {
            Some(Ok(count)) => count,
            Some(Err(why)) => {
                md.push_str(&format!("| {} | not counted¹ | — | — |\n", case.name));
                // Errors of `count_instructions` mostly name the case already.
                failures.push(if why.starts_with(case.name.as_str()) {
                    why.clone()
                } else {
                    format!("{}: {why}", case.name)
                });
                continue;
            }
            None => continue,
        };
        let ratio = case
            .native_equivalent
            .as_deref()
            .and_then(|n| cases.iter().position(|c| c.name == n))
            .and_then(|n| Some((added(i)?, added(n)?)))
            .filter(|(_, native)| *native > 0.0)
            .map_or("—".to_string(), |(ours, native)| {
                format!(
                    "{:.1}× `{}`",
                    ours / native,
                    case.native_equivalent.as_deref().unwrap_or_default()
                )
            });
        let added = if case.family == Family::Baseline {
            "—".to_string()
        } else {
            added(i).map_or("—".to_string(), |a| format!("{a:.0}"))
        };
        md.push_str(&format!(
            "| {} | {count:.0} | {added} | {ratio} |\n",
            case.name
        ));
    }
    if !failures.is_empty() {
        md.push_str(
            "\n¹ Not counted (the case's Envoy did not run it as configured under valgrind):\n",
        );
        for f in failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    md
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

// ---- the run and its report ---------------------------------------------------------------

/// Every case's samples, in case order.
#[derive(Debug, Default)]
pub struct Results {
    pub cases: Vec<Case>,
    /// samples[case][rep]
    pub samples: Vec<Vec<Sample>>,
    pub elapsed: Duration,
}

/// Runs every case `opts.reps` times, interleaved. Prints progress to stderr.
pub fn run(cases: Vec<Case>, gateway: &Value, opts: &Options) -> Result<Results> {
    let work = tempfile::Builder::new()
        .prefix("gatewasm-bench-")
        .tempdir()?;
    let started = Instant::now();
    let mut samples = vec![Vec::new(); cases.len()];
    for rep in 1..=opts.reps {
        for (i, case) in cases.iter().enumerate() {
            let sample = measure(gateway, case, opts, work.path())?;
            eprintln!(
                "rep {rep}/{}  {:<28} {:>7.2} µs CPU/req  {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  RSS {:>5.1} MiB",
                opts.reps,
                case.name,
                sample.cpu_us_per_request,
                sample.requests_per_second,
                sample.p50_us,
                sample.p99_us,
                sample.rss_mib
            );
            samples[i].push(sample);
        }
    }
    Ok(Results {
        cases,
        samples,
        elapsed: started.elapsed(),
    })
}

/// Median, min and max.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        let median = quantile(&mut v, 0.5);
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

impl Results {
    fn index(&self, name: &str) -> Option<usize> {
        self.cases.iter().position(|c| c.name == name)
    }

    /// Per repetition: this case's CPU/request minus the baseline's of the same repetition.
    pub fn added_cpu(&self, case: usize) -> Vec<f64> {
        let Some(base) = self.index("baseline") else {
            return Vec::new();
        };
        self.samples[case]
            .iter()
            .zip(&self.samples[base])
            .map(|(s, b)| s.cpu_us_per_request - b.cpu_us_per_request)
            .collect()
    }

    pub fn spread(&self, case: usize, f: impl Fn(&Sample) -> f64) -> Spread {
        Spread::of(&self.samples[case].iter().map(f).collect::<Vec<_>>())
    }
}

/// Facts about the run for the report header.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub envoy_version: String,
    pub date: String,
    pub machine: String,
    pub wasm_sizes: BTreeMap<String, u64>,
    pub command: String,
    /// The same request in the harness, per filter and the chain: (name, repeated token,
    /// fresh token) — see [`crate::cost`].
    pub costs: Vec<(String, crate::cost::RequestCost, crate::cost::RequestCost)>,
}

/// The Markdown report.
pub fn report(results: &Results, info: &RunInfo, opts: &Options) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "# gatewasm benchmark — Envoy {}, {}\n\n",
        info.envoy_version, info.date
    ));
    md.push_str(&format!(
        "Machine: {}. Command: `{}`. {} interleaved repetitions; per case and repetition: {:.1} s warm-up, \
         {:.1} s saturation with wrk (1 thread, {} connections, pinned to CPU {}), then {:.1} s paced at {} req/s \
         on one connection. Envoy: `--concurrency 1`, pinned to CPU {}, direct response (no upstream). \
         Run time {:.0} s.\n\n",
        info.machine,
        info.command,
        opts.reps,
        opts.warmup.as_secs_f64(),
        opts.saturate.as_secs_f64(),
        opts.connections,
        opts.load_cpu,
        opts.paced.as_secs_f64(),
        opts.paced_rate,
        opts.envoy_cpu,
        results.elapsed.as_secs_f64(),
    ));
    md.push_str(
        "**CPU/request** is Envoy's user+system CPU time during the saturation phase divided by the \
         requests served; **added** subtracts the baseline of the same repetition. Figures are \
         medians with min–max over the repetitions.\n\n",
    );
    md.push_str(&format!(
        "**above floor** subtracts the `{WASM_FLOOR}` case of the same repetition: what a gatewasm \
         filter costs beyond what any Proxy-Wasm filter costs in this Envoy.\n\n"
    ));
    md.push_str("| case | CPU µs/request | added µs | above floor µs | × native equivalent (added) | req/s | p50 µs | p99 µs | RSS MiB |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let floor = results.index(WASM_FLOOR);
    for (i, case) in results.cases.iter().enumerate() {
        let above_floor = match floor {
            Some(f) if case.family == Family::Gatewasm && f != i => {
                let ours = results.added_cpu(i);
                let base = results.added_cpu(f);
                let diffs: Vec<f64> = ours.iter().zip(&base).map(|(a, b)| a - b).collect();
                Spread::of(&diffs).show(2)
            }
            _ => "—".to_string(),
        };
        let cpu = results.spread(i, |s| s.cpu_us_per_request);
        let added = Spread::of(&results.added_cpu(i));
        let ratio = case
            .native_equivalent
            .as_deref()
            .and_then(|n| results.index(n))
            .map(|n| {
                let native = Spread::of(&results.added_cpu(n)).median;
                if native > 0.05 {
                    format!("{:.1}× `{}`", added.median / native, results.cases[n].name)
                } else {
                    format!("`{}` adds ≈0", results.cases[n].name)
                }
            })
            .unwrap_or_else(|| "—".into());
        let added = if case.family == Family::Baseline {
            "—".to_string()
        } else {
            added.show(2)
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            case.name,
            cpu.show(2),
            added,
            above_floor,
            ratio,
            results.spread(i, |s| s.requests_per_second).show(0),
            results.spread(i, |s| s.p50_us).show(0),
            results.spread(i, |s| s.p99_us).show(0),
            results.spread(i, |s| s.rss_mib).show(1),
        ));
    }
    md.push_str("\n`.wasm` sizes (release, `just build`):\n\n| module | bytes |\n|---|---|\n");
    for (name, size) in &info.wasm_sizes {
        md.push_str(&format!("| {name} | {size} |\n"));
    }
    if !info.costs.is_empty() {
        md.push_str(
            "\nThe same request in the harness (`gatewasm_tests::cost`, deterministic): callbacks \
             into the VM, host calls and Wasm instructions per request, with a repeated / a fresh \
             token:\n\n| filter | callbacks | host calls | instructions |\n|---|---|---|---|\n",
        );
        for (name, repeated, fresh) in &info.costs {
            md.push_str(&format!(
                "| {name} | {} | {} / {} | {} / {} |\n",
                repeated.callbacks,
                repeated.host_calls,
                fresh.host_calls,
                repeated.instructions,
                fresh.instructions
            ));
        }
    }
    md.push_str(
        "\nThe chart (`chart.png`) shows the added CPU per request (median, whiskers min–max).\n",
    );
    md
}

/// A horizontal bar chart of the added CPU per request, with min–max whiskers.
pub fn chart(results: &Results, title: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    register_font()?;
    let rows: Vec<(String, Family, Spread)> = results
        .cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.family != Family::Baseline)
        .map(|(i, c)| (c.name.clone(), c.family, Spread::of(&results.added_cpu(i))))
        .collect();
    ensure!(!rows.is_empty(), "nothing to chart");
    let max = rows.iter().map(|(_, _, s)| s.max).fold(1.0f64, f64::max) * 1.15;
    let height = 120 + 42 * rows.len() as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the chart: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d(0f64..max, -0.5f64..(n - 0.5))
        .map_err(|e| err(&e))?;
    let labels: Vec<String> = rows.iter().map(|(name, _, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("CPU µs per request added to the baseline (median, min–max)")
        .y_labels(rows.len())
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            // Top row first.
            let idx = rows_len_minus(labels.len(), i as usize);
            labels.get(idx).cloned().unwrap_or_default()
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (row, (_, family, spread)) in rows.iter().enumerate() {
        let y = (rows.len() - 1 - row) as f64;
        let color = match family {
            Family::Gatewasm => RGBColor(31, 119, 180),
            Family::Platform => RGBColor(127, 127, 127),
            _ => RGBColor(255, 127, 14),
        };
        let value = spread.median.max(0.0);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.32), (value, y + 0.32)],
                color.filled(),
            )))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(spread.min.max(0.0), y), (spread.max.max(0.0), y)],
                BLACK.stroke_width(2),
            )))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{:.1}", spread.median),
                (spread.max.max(value) + max * 0.01, y + 0.15),
                ("sans-serif", 15),
            )))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn rows_len_minus(len: usize, i: usize) -> usize {
    len.saturating_sub(1).saturating_sub(i)
}

/// Where the chart's font comes from: DejaVu Sans (Debian `fonts-dejavu-core`, which `just
/// bench` installs), registered with plotters' ab_glyph text backend.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT_PATH)
        .with_context(|| format!("reading {FONT_PATH} (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT_PATH} is not a usable font"))
}

/// `<workspace>/tests/bench-results/<date>_envoy-<version>_<machine>/`.
pub fn results_dir(info: &RunInfo, quick: bool) -> PathBuf {
    let machine: String = info
        .machine
        .split_whitespace()
        .next()
        .unwrap_or("machine")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    paths::workspace_root()
        .join("tests/bench-results")
        .join(format!(
            "{}_envoy-{}_{}{}",
            info.date,
            info.envoy_version,
            machine,
            if quick { "_quick" } else { "" }
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_of_a_callgrind_dump() {
        let dump = "# callgrind format\nversion: 1\ncmd: envoy\nevents: Ir\nsummary: 87482762\n\
                    totals: 87913351\n";
        assert_eq!(callgrind_total(dump), Some(87_482_762));
        assert_eq!(callgrind_total("events: Ir\n"), None);
        assert_eq!(callgrind_total("summary: many\n"), None);
    }

    #[test]
    fn instruction_report_subtracts_the_baseline_and_compares_with_the_native_case() {
        let case = |name: &str, family, native: Option<&str>| Case {
            name: name.to_string(),
            family,
            filters: vec![],
            native_request_id: false,
            native_equivalent: native.map(str::to_string),
            headers: vec![],
            rotating_tokens: None,
        };
        let cases = [
            case("baseline", Family::Baseline, None),
            case("ours", Family::Gatewasm, Some("theirs")),
            case("theirs", Family::Native, None),
        ];
        let info = RunInfo {
            envoy_version: "1.40.0".into(),
            date: "2026-11-29".into(),
            machine: "vm".into(),
            wasm_sizes: BTreeMap::new(),
            command: "just bench --instructions".into(),
            costs: vec![],
        };
        let md = instructions_report(
            &cases,
            &[Ok(100_000.0), Ok(160_000.0), Ok(120_000.0)],
            &info,
        );
        assert!(
            md.contains("| ours | 160000 | 60000 | 3.0× `theirs` |"),
            "{md}"
        );
        assert!(md.contains("| theirs | 120000 | 20000 | — |"), "{md}");
        assert!(md.contains("| baseline | 100000 | — | — |"), "{md}");
        let md = instructions_report(
            &cases,
            &[
                Ok(100_000.0),
                Err("Envoy logged errors".into()),
                Ok(120_000.0),
            ],
            &info,
        );
        assert!(md.contains("| ours | not counted¹ | — | — |"), "{md}");
        assert!(md.contains("- ours: Envoy logged errors"), "{md}");
    }

    #[test]
    fn parses_wrk_output() -> Result<()> {
        let out = "Running 5s test @ http://127.0.0.1:1/bench\n  1 threads and 16 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   512.00us  100.00us   3.00ms   90.00%\n  \
                   123456 requests in 5.00s, 12.34MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  \
                   Non-2xx or 3xx responses: 7\nRequests/sec:  24691.20\nTransfer/sec:      2.47MB\n";
        let r = parse_wrk(out)?;
        assert_eq!(r.requests, 123_456);
        assert!((r.seconds - 5.0).abs() < 1e-9);
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.socket_errors, 3);
        assert!((parse_wrk("1 requests in 900.50ms, 1KB read")?.seconds - 0.9005).abs() < 1e-9);
        assert!(parse_wrk("no summary").is_err());
        Ok(())
    }

    #[test]
    fn quantiles_and_spreads() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 0.99), 5.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    }

    #[test]
    fn cases_come_from_gateway_yaml_with_a_direct_response() -> Result<()> {
        let gateway = gateway_config()?;
        let cases = cases(&gateway, "t.o.ken")?;
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        for want in [
            "baseline",
            "correlation-id",
            "trace-propagation",
            "tenant-routing",
            "native request-id",
            "native header_mutation",
            "native local_ratelimit",
            "native chain",
            "native jwt_authn",
            "jwt-to-header",
            "rate-limit",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let chain = cases
            .iter()
            .find(|c| c.name.starts_with("gatewasm chain"))
            .context("no chain")?;
        let config = envoy_config(&gateway, chain)?;
        assert!(config.contains("{{LISTEN_PORT}}") && config.contains("{{WASM_DIR}}"));
        let parsed: Value = serde_json::from_str(
            &config
                .replace("{{LISTEN_PORT}}", "1")
                .replace("{{ADMIN_PORT}}", "2"),
        )?;
        let filters = parsed
            .pointer(
                "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
            )
            .and_then(Value::as_array)
            .context("filters")?;
        assert_eq!(
            filters.len(),
            chain.filters.len() + 1,
            "the chain, then the router"
        );
        assert_eq!(
            filters.last().and_then(|f| f["name"].as_str()),
            Some("envoy.filters.http.router")
        );
        let routes = parsed
            .pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes")
            .and_then(Value::as_array)
            .context("routes")?;
        assert_eq!(routes.len(), 1, "gateway.yaml's routes are replaced");
        assert_eq!(routes[0]["direct_response"]["status"], 200);
        assert_eq!(parsed["static_resources"]["clusters"], json!([]));
        Ok(())
    }
}
