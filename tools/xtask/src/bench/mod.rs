//! `just bench`: what each filter costs in a real Envoy, side by side with Envoy's native
//! filters, in one run.
//!
//! Every case is one Envoy (`--concurrency 1` unless `--concurrency N`, pinned to one CPU)
//! whose listener answers with a `direct_response` — no upstream, so what is measured is Envoy
//! plus the filters. The cases:
//!
//! - `baseline`: the edge gateway's connection manager with only the router;
//! - every gatewasm filter of `envoy-configs/gateway.yaml`, alone, with the configuration it has
//!   there (so the figures are for the configuration users copy), and the whole chain;
//! - Envoy's native equivalents: request-id generation, `header_mutation`, `local_ratelimit`,
//!   `jwt_authn` (when a JWT case exists), and their chain;
//! - the same gatewasm filters and configurations as an Envoy dynamic module
//!   (`libgatewasm_envoy.so`, `just build-native`): each alone, the five as five filters, and
//!   chain mode.
//!
//! For each case and repetition: start Envoy, warm up, then drive it to saturation with `wrk`
//! (pinned to the other CPU) and read Envoy's CPU time from `/proc/<pid>/stat` before and
//! after: **CPU time per request** is the primary figure (robust on a shared machine, unlike
//! throughput). Then a paced single-connection client measures p50/p99 latency at a fixed,
//! moderate rate, and `/proc/<pid>/status` gives the RSS after load. Repetitions are
//! interleaved (all cases, then all cases again, …), and the report gives medians with min–max;
//! "added" figures subtract the baseline of the same repetition.
//!
//! The module's files:
//!
//! - `cases.rs`: the [`Case`] type and the cases — baseline, the gatewasm filters as
//!   `envoy-configs/gateway.yaml` configures them, their native equivalents, the fresh- and
//!   forged-token JWT cases ([`cases()`], [`fresh_token_cases`], [`forged_token_cases`]).
//! - `dynamic_module.rs`: the native-module cases' filters and where Envoy finds the library
//!   ([`dynamic_module::module_dir`]); the dynamic-module platform cases
//!   ([`dynamic_module::DYNAMIC_MODULE_PLATFORM_CASES`]: `libgatewasm_platform.so`,
//!   tools/dynamic-module-platform, doing N calls of one ABI callback per request), which price
//!   the dynamic-module ABI as `platform.rs`'s cases price Proxy-Wasm's.
//! - `platform.rs`: the cases that price the Proxy-Wasm platform itself: the idle filter (the
//!   floor under every gatewasm filter) and the hand-written platform modules
//!   ([`PLATFORM_CASES`]).
//! - `config.rs`: gateway.yaml taken apart, and the Envoy config of a case ([`envoy_config`]).
//! - `cpu.rs`: the CPU-time runner — wrk to saturation, the paced latency probe, `/proc` —
//!   ([`measure`], [`run()`] → [`Results`]).
//! - `instructions.rs`: the instruction counter, Envoy under callgrind
//!   ([`count_instructions`]).
//! - `report.rs`: the Markdown reports ([`report()`], [`instructions_report`]) and the chart.
//!
//! The report also prints each filter's cost in the harness ([`RequestCost`]); the harness
//! lives in the tests crate, whose `request-cost` binary writes those figures as JSON for
//! `bench --harness-costs FILE` (`just bench` does both), so this crate needs no wasmtime.

mod cases;
mod config;
mod cpu;
pub mod dynamic_module;
mod instructions;
mod platform;
mod report;

pub use cases::{
    BENCH_PATH, Case, FORGED_TOKEN_CASES, FRESH_TOKEN_CASES, FRESH_TOKENS, Family, cases,
    common_headers, forged_token_cases, fresh_token_cases, native_header_mutation,
    native_jwt_authn, native_local_ratelimit, native_module_name,
};
pub use config::{envoy_config, gateway_config, gateway_wasm_filters};
pub use cpu::{
    Options, Results, Sample, Spread, WrkResult, measure, parse_wrk, process_cpu, process_rss_mib,
    quantile, run,
};
pub use instructions::{CALLGRIND_REQUESTS, CALLGRIND_WARMUP, callgrind_total, count_instructions};
pub use platform::{
    HostCall, IDLE_FILTER_FILE, PLATFORM_CASES, PlatformCase, WASM_FLOOR, idle_wasm_filter,
    platform_module_wat, prepare_idle_filter, prepare_platform_modules,
};
pub use report::{FONT_PATH, RunInfo, chart, instructions_report, report, results_dir};

/// What one request cost one filter (or the chain) in the harness: the tests crate's
/// `gatewasm_tests::cost` measures it, the report prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestCost {
    /// Callbacks into the VM for the stream: context create, headers, body, log, done, delete.
    pub callbacks: u64,
    /// Calls from the module into the host during those callbacks.
    pub host_calls: u64,
    /// Wasm instructions executed (host calls excluded).
    pub instructions: u64,
    /// `host_calls` by import name (`proxy_get_header_map_pairs`, …): what the instruction
    /// report prices with the platform cases.
    #[serde(default)]
    pub host_calls_by_name: std::collections::BTreeMap<String, u64>,
}

/// Per filter of gateway.yaml and the chain: (name, a repeated token, a fresh token) — the
/// JSON `request-cost` writes and `bench --harness-costs` reads.
pub type HarnessCosts = Vec<(String, RequestCost, RequestCost)>;
