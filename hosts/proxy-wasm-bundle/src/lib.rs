//! `gatewasm.wasm`, the bundle: the five gatewasm filters in one Proxy-Wasm module.
//!
//! - **Bundle mode**: each plugin that loads this module names a filter by its root id (Envoy
//!   `root_id`, Istio `pluginName`): `correlation-id`, `trace-propagation`, `jwt-to-header`,
//!   `tenant-routing` or `rate-limit`, with that filter's own configuration. The root context
//!   is that filter's own ([`root`] only dispatches), so behaviour is exactly its module's; what
//!   changes is that plugins loading the same module with the same VM configuration share one
//!   VM per worker in Envoy.
//! - **Chain mode**: root id `chain`, configuration `{"stages": [{"filter": ..., "config":
//!   ...}, ...]}`. One filter runs the stages in order over one read of the request headers
//!   and writes back only what changed, clears the route cache at most once, and makes one
//!   pass on the response ([`chain`]).
//!
//! Modules: [`plan`] (host-free: root ids, the chain's configuration, tested natively);
//! `root` and `chain` (wasm32 only: the root that dispatches by root id, chain mode's root and
//! HTTP contexts over the filters' stages).

pub mod plan;

#[cfg(target_arch = "wasm32")]
mod chain;
#[cfg(target_arch = "wasm32")]
mod root;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // The filters log debug lines only for refusals; the host filters by its own level.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Debug);
    proxy_wasm::set_root_context(root::root_context);
}}
