//! proxy-wasm glue (wasm32 only): the root context (configuration, metrics, PRNG seeding; a
//! `SeededRoot` from gatewasm-common) and the HTTP context (request/response headers). All
//! decisions are made by `propagate`.
//!
//! Host calls per request (each ~0.5 µs):
//! - request: 1 header-map read; 1 replace per header whose value changes (`role: span` with
//!   W3C in and out: just `traceparent`; `passthrough` with a canonical W3C context: none);
//!   +1 remove for a duplicated or cleared header; 1 or 2 counter increments (outcome, sampled);
//! - response: 1 replace when `response_header` is set and the request phase ran.

use std::cell::Cell;
use std::rc::Rc;

use gatewasm_common::ConfigError;
use gatewasm_common::glue::{self, SeededFilter, SeededRoot};
use gatewasm_common::host::{HeaderMapBytes, get_header_map};
use gatewasm_common::rng::Xoshiro256pp;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, LogLevel, MapType};

use crate::config::{Format, Settings, parse_settings};
use crate::ids::Text;
use crate::propagate::{
    METRIC_EXTRACTED_B3, METRIC_EXTRACTED_B3MULTI, METRIC_EXTRACTED_W3C, METRIC_RESTARTED_INVALID,
    METRIC_SAMPLED, METRIC_STARTED, Outcome, Write, plan_request,
};

/// The filter's name, at the start of its log lines.
const FILTER: &str = "trace-propagation";

proxy_wasm::main! {{
    // Debug lines are only written for refused incoming headers. (`proxy_get_log_level` is not
    // used: Kong's host traps on it.)
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(SeededRoot::<Filter>::new(context_id))
    });
}}

thread_local! {
    /// One PRNG per VM (shared by all root contexts of the VM). A `Cell` of a `Copy` value: no
    /// borrow flag, nothing that can panic.
    static RNG: Cell<Option<Xoshiro256pp>> = const { Cell::new(None) };
}

fn fresh_seed(context_id: u32) -> [u8; 32] {
    glue::fresh_seed(FILTER, "ids", context_id)
}

/// The metric ids, defined once per root context and copied into each HTTP context.
#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    extracted_w3c: Option<u32>,
    extracted_b3: Option<u32>,
    extracted_b3multi: Option<u32>,
    restarted_invalid: Option<u32>,
    started: Option<u32>,
    sampled: Option<u32>,
}

impl Metrics {
    fn record(&self, outcome: Outcome, sampled: bool) {
        glue::increment(match outcome {
            Outcome::Extracted(Format::W3c) => self.extracted_w3c,
            Outcome::Extracted(Format::B3) => self.extracted_b3,
            Outcome::Extracted(Format::B3Multi) => self.extracted_b3multi,
            Outcome::RestartedInvalid => self.restarted_invalid,
            Outcome::Started => self.started,
        });
        if sampled {
            glue::increment(self.sampled);
        }
    }
}

/// The filter, for its [`SeededRoot`].
struct Filter;

impl SeededFilter for Filter {
    const NAME: &'static str = FILTER;
    type Settings = Settings;
    type Metrics = Metrics;

    fn parse_settings(bytes: Option<&[u8]>) -> Result<Settings, ConfigError> {
        parse_settings(bytes)
    }

    fn define_metrics() -> Metrics {
        let define = |name: &str| glue::define_counter(FILTER, name);
        Metrics {
            extracted_w3c: define(METRIC_EXTRACTED_W3C),
            extracted_b3: define(METRIC_EXTRACTED_B3),
            extracted_b3multi: define(METRIC_EXTRACTED_B3MULTI),
            restarted_invalid: define(METRIC_RESTARTED_INVALID),
            started: define(METRIC_STARTED),
            sampled: define(METRIC_SAMPLED),
        }
    }

    /// (Re)seed the VM's PRNG: a fresh stream (unlike correlation-id, nothing to keep).
    fn reseed(root_context_id: u32) {
        let seed = fresh_seed(root_context_id);
        RNG.with(|cell| cell.set(Some(Xoshiro256pp::from_seed(seed))));
    }

    fn http_context(
        settings: Rc<Settings>,
        metrics: Metrics,
        root_context_id: u32,
    ) -> Box<dyn HttpContext> {
        Box::new(Stream {
            settings,
            metrics,
            root_context_id,
            trace_id: None,
        })
    }
}

struct Stream {
    settings: Rc<Settings>,
    metrics: Metrics,
    root_context_id: u32,
    /// The trace id sent upstream, kept for the response (request headers cannot be read then).
    trace_id: Option<Text<32>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let settings = Rc::clone(&self.settings);
        // One host call for the whole map: duplicates must be seen (the single-value lookup
        // returns only the first copy) and up to nine headers are looked at.
        let header_map = get_header_map(MapType::HttpRequestHeaders).ok();
        let headers = header_map
            .as_ref()
            .map(HeaderMapBytes::pairs)
            .unwrap_or_default();
        let mut rng = RNG
            .with(Cell::get)
            .unwrap_or_else(|| Xoshiro256pp::from_seed(fresh_seed(self.root_context_id)));
        // Each change is applied as soon as it is decided: 1 host call per changed header.
        let plan = plan_request(&settings, &headers, &mut rng, |write| match write {
            Write::Set(name, value) => self.set_http_request_header_bytes(name, Some(value)),
            Write::Remove(name) => self.remove_http_request_header(name),
        });
        RNG.with(|cell| cell.set(Some(rng)));
        for rejection in plan.rejections.iter().flatten() {
            // Never the value itself (log injection): only the header name and the rule.
            log::debug!(
                "trace-propagation: ignoring invalid {}: {}",
                rejection.header,
                rejection.reason
            );
        }
        self.metrics.record(plan.outcome, plan.sampled);
        if settings.response_header.is_some() {
            self.trace_id = Some(plan.trace_id);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // No trace id when the request phase never ran (a filter before us replied locally).
        if let (Some(name), Some(trace_id)) = (&self.settings.response_header, &self.trace_id) {
            // Set, not add: any value the upstream sent is replaced.
            self.set_http_response_header_bytes(name, Some(trace_id.as_bytes()));
        }
        Action::Continue
    }
}
