//! proxy-wasm glue (wasm32 only): the filter's own module is a `StageRoot` (gatewasm-common)
//! over [`crate::stage::CorrelationId`]; this adds its configuration and the PRNG seeding.
//!
//! Host calls per request (each ~0.5 µs):
//! - request, `trust_incoming: true`: 1 header-map read; +1 replace when an ID is generated
//!   (+1 remove when the header was duplicated); +1 clock read for `uuid7`;
//! - request, `trust_incoming: false`: 1 replace (+1 clock read for `uuid7`);
//! - 1 counter increment; response: 1 replace when `echo_downstream`.

use gatewasm_common::ConfigError;
use gatewasm_common::glue::{self, StageFilter, StageRoot};
use proxy_wasm::traits::RootContext;

use crate::config::parse_settings;
use crate::stage::{CorrelationId, FILTER, reseed};

/// The root context of this filter (also the bundle's `correlation-id` root).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(StageRoot::<Filter>::new(context_id))
}

#[cfg(feature = "module")]
proxy_wasm::main! {{
    // Debug lines are only written for rejected incoming IDs. (`proxy_get_log_level` is not
    // used: Kong's host traps on it.)
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Debug);
    proxy_wasm::set_root_context(root_context);
}}

/// The filter, for its [`StageRoot`].
pub struct Filter;

impl StageFilter for Filter {
    const NAME: &'static str = FILTER;
    type Stage = CorrelationId;

    fn configure(bytes: Option<&[u8]>) -> Result<CorrelationId, ConfigError> {
        let settings = parse_settings(bytes)?;
        Ok(CorrelationId::new(settings, |name| {
            glue::counter(FILTER, name)
        }))
    }

    /// Before any configuration: the defaults, without counters.
    fn unconfigured() -> Option<CorrelationId> {
        Some(CorrelationId::default())
    }

    fn reseed(root_context_id: u32) {
        reseed(glue::fresh_seed(FILTER, "IDs", root_context_id));
    }
}
