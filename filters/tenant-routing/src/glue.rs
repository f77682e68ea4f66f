//! proxy-wasm glue (wasm32 only): the filter's own module is a `StageRoot` (gatewasm-common)
//! over [`crate::stage::TenantRouting`]; this adds its configuration. Before the first good
//! configuration there is no stage, and a stream is answered 503 (Envoy creates none).
//!
//! Host calls per routed request: 1 header-map read; 1 replace each for `output_header`,
//! `cluster_header` and every tenant header; +1 `:path` replace when stripping; +1 remove per
//! stale client-sent tenant header; 1 `clear_route_cache` foreign-function call; 1 counter
//! increment. A rejected request: 1 read, 1 local reply, 1–2 counter increments.

use gatewasm_common::ConfigError;
use gatewasm_common::glue::{self, StageFilter, StageRoot};
use proxy_wasm::traits::RootContext;

use crate::config::parse_settings;
use crate::stage::{FILTER, TenantRouting};

/// The root context of this filter (also the bundle's `tenant-routing` root).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(StageRoot::<Filter>::new(context_id))
}

#[cfg(feature = "module")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Debug);
    proxy_wasm::set_root_context(root_context);
}}

/// The filter, for its [`StageRoot`].
pub struct Filter;

impl StageFilter for Filter {
    const NAME: &'static str = FILTER;
    type Stage = TenantRouting;

    fn configure(bytes: Option<&[u8]>) -> Result<TenantRouting, ConfigError> {
        let settings = parse_settings(bytes)?;
        Ok(TenantRouting::new(settings, |name| {
            glue::counter(FILTER, name)
        }))
    }
}
