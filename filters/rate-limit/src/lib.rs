//! gatewasm rate-limit filter: per-key request limits (GCRA, i.e. an exact token bucket) that
//! hold across all worker threads of one proxy, kept in proxy-wasm shared data in a fixed-size
//! table so that memory stays bounded under a flood of distinct keys. Denied requests get a
//! 429 with `Retry-After` and a small JSON body; allowed and denied responses carry the IETF
//! `RateLimit`/`RateLimit-Policy` headers and/or the draft-03 `RateLimit-Limit/-Remaining/-Reset`
//! headers. See README.md for configuration, behaviour and the accuracy guarantee.
//!
//! Modules — all pure and unit-tested natively, except `glue`:
//! - [`gcra`]: the algorithm on one bucket (TAT arithmetic, remaining/reset/retry-after).
//! - [`table`]: the bounded slot table: fixed groups of 16 slots (fingerprint + TAT) per rule,
//!   one shared-data entry per group, idle-slot reuse, overflow.
//! - [`key`]: allocation-free bucket-key hashing with the per-process seed; client IP from the
//!   peer or `x-forwarded-for`, cut to its network prefix.
//! - [`config`]: JSON configuration → validated [`config::Settings`] (once, in `on_configure`).
//! - [`limiter`]: one request against all rules: matching, keys, the bounded CAS loop on a
//!   [`limiter::Store`], the verdict and the metric events.
//! - [`response`]: the rate-limit and `Retry-After` header values.
//! - [`rls`]: Envoy's rate-limit service protocol (prost messages), for `global`/`hybrid` rules.
//! - [`stage`]: the filter as a host-agnostic stage (gatewasm-common `Stage`): request view in,
//!   effects out (counters, the local reply, the `ShouldRateLimit` calls to wait for, header
//!   edits); shared data, the clock and `source.address` through its `StageHost`. Every host
//!   (this module, the bundle's chain) runs it.
//! - `glue` (wasm32 only): the filter's own module, a `StageRoot` over the stage (configuration:
//!   tables, counters, the key seed); `root_context` is also the bundle's `rate-limit` root.

pub mod config;
pub mod gcra;
pub mod key;
pub mod limiter;
pub mod response;
pub mod rls;
pub mod stage;
pub mod table;

#[cfg(target_arch = "wasm32")]
pub mod glue;
