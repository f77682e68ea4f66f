//! proxy-wasm glue (wasm32 only): the filter's own module is a `StageRoot` (gatewasm-common)
//! over [`crate::stage::RateLimit`]; this adds its configuration: the shared-data tables, the
//! counters and the process's bucket-key seed. All decisions are made by the stage.
//!
//! Host calls per request, with R rules that apply:
//! - request phase: 1 header-map read; 1 `source.address` property read (only when a rule
//!   needs the client IP and it comes from the peer, or `x-forwarded-for` is too short); 1 clock
//!   read; per rule 1 shared-data get + 1 set
//!   (a denial: no set; each lost CAS race: +1 get +1 set); 1 counter increment per rule;
//! - allowed response: 1 header replacement per rate-limit header (2 `draft`, 3 `draft03`, 5
//!   `both`);
//! - denial: 1 local reply (headers included) instead.
//!
//! So the common case — one rule, client IP from the peer, `both` headers — costs
//! 1 + 1 + 1 + 2 + 1 + 5 = 11 host calls (≈ 5 µs in Envoy).
//!
//! A `global`/`hybrid` rule that applies (and whose local bucket allowed) adds 1
//! `dispatch_grpc_call`; the request pauses until every call has answered (or timed out:
//! Envoy ends the call after `timeout_ms`, with status UNAVAILABLE), then per answer 1 buffer
//! read (1 clock read instead for a failure, also for a call that could not be sent) and 1
//! counter increment, 1 header write per request header to add, and 1 `continue_stream` (or
//! the local reply); the response adds 1 header add per response header the services sent.

use gatewasm_common::ConfigError;
use gatewasm_common::glue::{self, HostCalls, StageFilter, StageRoot};
use proxy_wasm::traits::RootContext;

use crate::config::parse_settings;
use crate::stage::{FILTER, RateLimit};

/// The root context of this filter (also the bundle's `rate-limit` root).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(StageRoot::<Filter>::new(context_id))
}

#[cfg(feature = "module")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(root_context);
}}

/// The filter, for its [`StageRoot`].
pub struct Filter;

impl StageFilter for Filter {
    const NAME: &'static str = FILTER;
    type Stage = RateLimit;

    fn configure(bytes: Option<&[u8]>) -> Result<RateLimit, ConfigError> {
        let settings = parse_settings(bytes)?;
        // `StageFilter::configure` has no root context id: 0 in the fallback seed (the clock is
        // in it too), used only when the host has no randomness.
        let fresh = || glue::fresh_seed(FILTER, "the bucket-key hash", 0);
        Ok(RateLimit::configure(
            settings,
            &mut HostCalls,
            fresh,
            |name| glue::counter(FILTER, name),
        ))
    }

    /// Before any configuration (no streams in Envoy): no rules, every request passes (fail
    /// open, as before).
    fn unconfigured() -> Option<RateLimit> {
        Some(RateLimit::unconfigured())
    }
}
