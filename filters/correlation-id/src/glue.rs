//! proxy-wasm glue (wasm32 only): the root context (configuration, metrics, PRNG seeding; a
//! `SeededRoot` from gatewasm-common) and the HTTP context (request/response headers). All
//! decisions are made by the pure modules.
//!
//! Host calls per request (each ~0.5 µs):
//! - request, `trust_incoming: true`: 1 header-map read; +1 replace when an ID is generated
//!   (+1 remove when the header was duplicated); +1 clock read for `uuid7`;
//! - request, `trust_incoming: false`: 1 replace (+1 clock read for `uuid7`);
//! - 1 counter increment; response: 1 replace when `echo_downstream`.

use std::cell::Cell;
use std::rc::Rc;

use gatewasm_common::ConfigError;
use gatewasm_common::clock::unix_millis;
use gatewasm_common::glue::{self, SeededFilter, SeededRoot};
use gatewasm_common::headers::{Occurrence, single_value};
use gatewasm_common::host::get_header_map;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, LogLevel, MapType};

use crate::config::{Settings, parse_settings};
use crate::incoming::{Outcome, Plan, plan_request};
use crate::uuid::{IdGenerator, UuidText};

/// The filter's name, at the start of its log lines.
const FILTER: &str = "correlation-id";

proxy_wasm::main! {{
    // Debug lines are only written for rejected incoming IDs. (`proxy_get_log_level` is not
    // used: Kong's host traps on it.)
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(SeededRoot::<Filter>::new(context_id))
    });
}}

thread_local! {
    /// One generator per VM (shared by all root contexts of the VM, so `uuid7` IDs are monotonic
    /// VM-wide). A `Cell` of a `Copy` value: no borrow flag, nothing that can panic.
    static GENERATOR: Cell<Option<IdGenerator>> = const { Cell::new(None) };
}

fn fresh_seed(context_id: u32) -> [u8; 32] {
    glue::fresh_seed(FILTER, "IDs", context_id)
}

/// The metric ids, defined once per root context and copied into each HTTP context.
#[derive(Debug, Clone, Copy, Default)]
struct Metrics {
    generated: Option<u32>,
    preserved: Option<u32>,
    replaced_invalid: Option<u32>,
}

impl Metrics {
    fn increment(&self, outcome: Outcome) {
        let id = match outcome {
            Outcome::Generated => self.generated,
            Outcome::Preserved => self.preserved,
            Outcome::ReplacedInvalid => self.replaced_invalid,
        };
        glue::increment(id);
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
        let define = |outcome: Outcome| glue::define_counter(FILTER, outcome.metric_name());
        Metrics {
            generated: define(Outcome::Generated),
            preserved: define(Outcome::Preserved),
            replaced_invalid: define(Outcome::ReplacedInvalid),
        }
    }

    /// (Re)seed the VM's generator, keeping its uuid7 monotonic state.
    fn reseed(root_context_id: u32) {
        let seed = fresh_seed(root_context_id);
        GENERATOR.with(|cell| {
            let generator = match cell.get() {
                Some(mut generator) => {
                    generator.reseed(seed);
                    generator
                }
                None => IdGenerator::from_seed(seed),
            };
            cell.set(Some(generator));
        });
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
            id: None,
        })
    }
}

/// The ID of this stream, kept for the response phase.
enum RequestId {
    Generated(UuidText),
    /// The validated incoming value, moved out of the header list (no copy).
    Incoming(Vec<u8>),
}

impl RequestId {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Generated(id) => id.as_bytes(),
            Self::Incoming(value) => value,
        }
    }
}

struct Stream {
    settings: Rc<Settings>,
    metrics: Metrics,
    root_context_id: u32,
    id: Option<RequestId>,
}

impl Stream {
    fn new_id(&self) -> UuidText {
        let kind = self.settings.generator;
        GENERATOR.with(|cell| {
            let mut generator = match cell.get() {
                Some(generator) => generator,
                None => IdGenerator::from_seed(fresh_seed(self.root_context_id)),
            };
            let id = generator.generate(kind, || unix_millis(self.get_current_time()));
            cell.set(Some(generator));
            id
        })
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let settings = Rc::clone(&self.settings);
        // Duplicates must be detected, and `proxy_get_header_map_value` (the single-value lookup)
        // only returns the first copy in Envoy. So read the whole map: one host call, instead of
        // a lookup (one call) that would still need the map to count copies. The common case is
        // an ID being present (Envoy generated it, or an upstream hop did), where this is the
        // fewest calls. The pairs borrow from the host's buffer; only a kept ID is copied.
        let plan = plan_request(settings.trust_incoming, settings.max_length, || {
            let Ok(map) = get_header_map(MapType::HttpRequestHeaders) else {
                return Occurrence::Absent;
            };
            match single_value(map.pairs(), &settings.header) {
                Occurrence::Once(value) => Occurrence::Once(value.to_vec()),
                Occurrence::Repeated(n) => Occurrence::Repeated(n),
                Occurrence::Absent => Occurrence::Absent,
            }
        });
        let outcome = match plan {
            Plan::Keep(value) => {
                self.id = Some(RequestId::Incoming(value));
                Outcome::Preserved
            }
            Plan::Generate {
                outcome,
                rejection,
                remove_copies,
            } => {
                if let Some(rejection) = rejection {
                    // Never the value itself (log injection): only lengths/positions.
                    log::debug!(
                        "correlation-id: replacing invalid incoming {}: {rejection}",
                        settings.header
                    );
                }
                let id = self.new_id();
                if remove_copies {
                    self.remove_http_request_header(&settings.header);
                }
                // Replace semantics: in Envoy this is HeaderMap::setCopy, which (in current
                // releases) removes every existing copy and adds one.
                self.set_http_request_header_bytes(&settings.header, Some(id.as_bytes()));
                self.id = Some(RequestId::Generated(id));
                outcome
            }
        };
        self.metrics.increment(outcome);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.settings.echo_downstream {
            return Action::Continue;
        }
        if self.id.is_none() {
            // The request phase never ran for this stream (a filter before us answered locally).
            // The response still gets an ID; request headers cannot be read any more.
            self.id = Some(RequestId::Generated(self.new_id()));
            self.metrics.increment(Outcome::Generated);
        }
        if let Some(id) = &self.id {
            // Set, not add: any value the upstream sent is replaced.
            self.set_http_response_header_bytes(
                &self.settings.response_header,
                Some(id.as_bytes()),
            );
        }
        Action::Continue
    }
}
