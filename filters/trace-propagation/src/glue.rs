//! proxy-wasm glue (wasm32 only): the filter's own module is a `StageRoot` (gatewasm-common)
//! over [`crate::stage::TracePropagation`]; this adds its configuration and the PRNG seeding.
//!
//! Host calls per request (each ~0.5 µs):
//! - request: 1 header-map read; 1 replace per header whose value changes (`role: span` with
//!   W3C in and out: just `traceparent`; `passthrough` with a canonical W3C context: none);
//!   +1 remove for a duplicated or cleared header; 1 or 2 counter increments (outcome, sampled);
//! - response: 1 replace when `response_header` is set and the request phase ran.

use gatewasm_common::ConfigError;
use gatewasm_common::glue::{self, StageFilter, StageRoot};
use proxy_wasm::traits::RootContext;

use crate::config::parse_settings;
use crate::stage::{FILTER, TracePropagation, reseed};

/// The root context of this filter (also the bundle's `trace-propagation` root).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(StageRoot::<Filter>::new(context_id))
}

#[cfg(feature = "module")]
proxy_wasm::main! {{
    // Debug lines are only written for refused incoming headers. (`proxy_get_log_level` is not
    // used: Kong's host traps on it.)
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Debug);
    proxy_wasm::set_root_context(root_context);
}}

/// The filter, for its [`StageRoot`].
pub struct Filter;

impl StageFilter for Filter {
    const NAME: &'static str = FILTER;
    type Stage = TracePropagation;

    fn configure(bytes: Option<&[u8]>) -> Result<TracePropagation, ConfigError> {
        let settings = parse_settings(bytes)?;
        Ok(TracePropagation::new(settings, |name| {
            glue::counter(FILTER, name)
        }))
    }

    /// Before any configuration: the defaults, without counters.
    fn unconfigured() -> Option<TracePropagation> {
        Some(TracePropagation::default())
    }

    fn reseed(root_context_id: u32) {
        reseed(glue::fresh_seed(FILTER, "ids", root_context_id));
    }
}
