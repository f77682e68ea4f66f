//! gatewasm tenant-routing filter: finds the tenant of each request (trusted header, host
//! pattern, path prefix or query parameter, in a configured order), checks it against an
//! allow-list of tenants, and routes the request to the tenant's Envoy cluster by setting
//! `x-tenant-cluster` (for `cluster_header` routes) and `x-tenant-id`, then clearing Envoy's
//! route cache. Requests that identify no tenant, an unknown tenant, or two different tenants
//! are answered locally with a JSON error. See README.md for configuration and behaviour.
//!
//! Modules — all pure and unit-tested natively, except `glue`:
//! - [`config`]: JSON configuration → validated [`config::Settings`] (once, in `on_configure`):
//!   a sorted tenant table and compiled source patterns.
//! - [`pattern`]: host normalisation and `{tenant}` host patterns, path prefixes
//!   (percent-decode-then-validate), query parameters, `allowed_hosts` rules, tenant-id syntax.
//! - [`resolve`]: one request's headers → [`resolve::Decision`] (route or reject, consistency
//!   rules, path stripping), and the client-sent tenant headers to remove.
//! - [`stage`]: the filter as a host-agnostic stage (gatewasm-common `Stage`): request view in,
//!   effects out; every host (this module, the bundle's chain) runs it.
//! - `glue` (wasm32 only): the filter's own module, a `StageRoot` over the stage; `root_context`
//!   is also the bundle's `tenant-routing` root.

pub mod config;
pub mod pattern;
pub mod resolve;
pub mod stage;

#[cfg(target_arch = "wasm32")]
pub mod glue;
