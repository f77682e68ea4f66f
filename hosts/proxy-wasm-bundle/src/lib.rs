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

/// The host-free part (root ids, the chain's configuration) lives in its own crate, so the
/// Envoy dynamic module (hosts/envoy-dynamic-module) parses chains with the same code.
pub use gatewasm_chain_plan as plan;

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

/// `chain.schema.json` is this crate's file; the chain it describes is parsed by [`plan`].
#[cfg(all(test, not(target_arch = "wasm32")))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod schema_tests {
    use super::plan::FilterKind;
    use serde_json::Value;
    use std::path::Path;

    /// `chain.schema.json` offers exactly the filters a chain accepts, each by a reference to
    /// that filter's own committed schema (one schema per filter, whichever host runs it).
    #[test]
    fn the_chain_schema_refers_to_each_filters_own_schema() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("chain.schema.json")).unwrap())
                .unwrap();
        let stages = schema["properties"]["stages"]["items"]["oneOf"]
            .as_array()
            .unwrap();
        let offered: Vec<&str> = stages
            .iter()
            .map(|s| s["properties"]["filter"]["const"].as_str().unwrap())
            .collect();
        let names: Vec<&str> = FilterKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(offered, names);
        for stage in stages {
            let target = stage["properties"]["config"]["$ref"].as_str().unwrap();
            let file = dir.join(target);
            let filter_schema: Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            assert_eq!(filter_schema["type"], "object", "{}", file.display());
        }
    }
}
