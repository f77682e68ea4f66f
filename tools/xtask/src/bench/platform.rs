//! The cases that price the Proxy-Wasm platform itself rather than a filter: the idle filter (a
//! Rust-SDK module that does nothing per request: the floor under every gatewasm filter,
//! [`WASM_FLOOR`]) and the platform cases (hand-written modules, [`PLATFORM_CASES`], whose
//! differences price a VM entry and each kind of host call). Also the Envoy Wasm filter that runs
//! such a module. `cases.rs` puts them in the case list.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::paths;

/// The case that measures what any Proxy-Wasm filter costs before it does any work.
pub const WASM_FLOOR: &str = "idle wasm filter";

/// Where [`prepare_idle_filter`] writes the idle module, relative to the wasm directory.
pub const IDLE_FILTER_FILE: &str = "bench/idle_filter.wasm";

/// Writes the idle filter's module: the harness's test module with every optional stream
/// callback export removed (the post-link step of `just build`, applied to all of them), so it
/// makes the minimum three callbacks per request — context create, request headers, delete —
/// like the trimmed gatewasm filters, not the SDK's default seven.
pub fn prepare_idle_filter() -> Result<PathBuf> {
    use gatewasm_postlink::{OPTIONAL_STREAM_CALLBACKS, remove_exports};
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
    /// `proxy_get_property("source.address")`, as rate-limit reads the client address.
    Property,
    /// `proxy_get_shared_data` of a 16-byte value (set at configure), as rate-limit reads a bucket.
    SharedDataGet,
    /// `proxy_set_shared_data` of a 16-byte value without CAS.
    SharedDataSet,
    /// `proxy_remove_header_map_value("x-platform")` (a header the request does not have).
    RemoveHeader,
}

impl HostCall {
    /// How many host calls one use of this makes (the write-back is a read and a write).
    pub fn host_calls(self) -> u64 {
        match self {
            HostCall::HeaderPairsWriteBack => 2,
            _ => 1,
        }
    }

    /// The import whose calls this prices (the harness counts calls by these names). The
    /// write-back prices `proxy_set_header_map_pairs`: what it adds to [`HostCall::HeaderPairs`].
    pub fn import(self) -> &'static str {
        match self {
            HostCall::HeaderValue => "proxy_get_header_map_value",
            HostCall::HeaderPairs => "proxy_get_header_map_pairs",
            HostCall::HeaderPairsWriteBack => "proxy_set_header_map_pairs",
            HostCall::Clock => "proxy_get_current_time_nanoseconds",
            HostCall::ReplaceHeader => "proxy_replace_header_map_value",
            HostCall::IncrementMetric => "proxy_increment_metric",
            HostCall::ClearRouteCache => "proxy_call_foreign_function",
            HostCall::Property => "proxy_get_property",
            HostCall::SharedDataGet => "proxy_get_shared_data",
            HostCall::SharedDataSet => "proxy_set_shared_data",
            HostCall::RemoveHeader => "proxy_remove_header_map_value",
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
            HostCall::Property => {
                "(drop (call $get_property (i32.const 128) (i32.const 14) (i32.const 112) (i32.const 116)))"
            }
            HostCall::SharedDataGet => {
                "(drop (call $get_shared (i32.const 144) (i32.const 12) (i32.const 112) (i32.const 116) (i32.const 120)))"
            }
            HostCall::SharedDataSet => {
                "(drop (call $set_shared (i32.const 144) (i32.const 12) (i32.const 160) (i32.const 16) (i32.const 0)))"
            }
            HostCall::RemoveHeader => {
                "(drop (call $remove_header (i32.const 0) (i32.const 24) (i32.const 10)))"
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

pub const PLATFORM_CASES: [PlatformCase; 14] = [
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
    three_entries(
        "wasm filter, 3 VM entries, 8 property reads",
        &[(HostCall::Property, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 shared data reads",
        &[(HostCall::SharedDataGet, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 shared data writes",
        &[(HostCall::SharedDataSet, 8)],
    ),
    three_entries(
        "wasm filter, 3 VM entries, 8 header removals",
        &[(HostCall::RemoveHeader, 8)],
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
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data"
    (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data"
    (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) ":path")
  (data (i32.const 24) "x-platform")
  (data (i32.const 40) "value")
  (data (i32.const 56) "platform_counter")
  (data (i32.const 80) "clear_route_cache")
  (data (i32.const 128) "source\00address")
  (data (i32.const 144) "platform_key")
  (data (i32.const 160) "0123456789abcdef")
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
    (drop (call $set_shared (i32.const 144) (i32.const 12) (i32.const 160) (i32.const 16) (i32.const 0)))
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

pub(super) fn platform_filter(index: usize) -> Value {
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
