//! The correlation-id stage (host-free): the request phase keeps a valid incoming ID or sets a
//! fresh one ([`crate::incoming`] decides, [`crate::uuid`] generates); the response phase echoes
//! it when `echo_downstream` is on. Every host runs this one logic: the filter's own module
//! (`glue`) and the bundle's chain.

use std::cell::Cell;

use gatewasm_common::headers::{Occurrence, single_value};
use gatewasm_common::rng;
use gatewasm_common::stage::{Counter, Effects, Flow, Stage, StageHost};

use crate::config::Settings;
use crate::incoming::{Outcome, Plan, plan_request};
use crate::uuid::{IdGenerator, UuidText};

/// The filter's name, at the start of its log lines.
pub const FILTER: &str = "correlation-id";

thread_local! {
    /// One generator per VM (shared by all root contexts of the VM, so `uuid7` IDs are monotonic
    /// VM-wide). A `Cell` of a `Copy` value: no borrow flag, nothing that can panic.
    static GENERATOR: Cell<Option<IdGenerator>> = const { Cell::new(None) };
}

/// (Re)seed the VM's generator, keeping its uuid7 monotonic state.
pub fn reseed(seed: [u8; 32]) {
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

/// The counters, one per [`Outcome`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics {
    generated: Counter,
    preserved: Counter,
    replaced_invalid: Counter,
}

impl Metrics {
    fn counter(&self, outcome: Outcome) -> Counter {
        match outcome {
            Outcome::Generated => self.generated,
            Outcome::Preserved => self.preserved,
            Outcome::ReplacedInvalid => self.replaced_invalid,
        }
    }
}

/// The compiled filter: settings and counters.
#[derive(Debug, Default)]
pub struct CorrelationId {
    settings: Settings,
    metrics: Metrics,
}

impl CorrelationId {
    /// `define` defines a counter by name with the host.
    pub fn new(settings: Settings, mut define: impl FnMut(&str) -> Counter) -> Self {
        let metrics = Metrics {
            generated: define(Outcome::Generated.metric_name()),
            preserved: define(Outcome::Preserved.metric_name()),
            replaced_invalid: define(Outcome::ReplacedInvalid.metric_name()),
        };
        Self { settings, metrics }
    }

    fn new_id(&self, host: &mut dyn StageHost) -> UuidText {
        let kind = self.settings.generator;
        GENERATOR.with(|cell| {
            let mut generator = match cell.get() {
                Some(generator) => generator,
                // Only when neither on_vm_start nor on_configure seeded it (no host does that).
                None => IdGenerator::from_seed(rng::seed_or_fallback(
                    FILTER,
                    "IDs",
                    rng::os_seed(),
                    || host.now_ns(),
                    0,
                )),
            };
            let id = generator.generate(kind, || host.now_ns() / 1_000_000);
            cell.set(Some(generator));
            id
        })
    }
}

/// The ID of this stream, kept for the response phase.
pub enum RequestId {
    Generated(UuidText),
    /// The validated incoming value.
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

/// What a stream keeps: its ID.
#[derive(Default)]
pub struct Stream {
    id: Option<RequestId>,
}

impl Stage for CorrelationId {
    type Stream = Stream;
    const RESPONSE_HEADERS: bool = true;

    /// Without `trust_incoming` the incoming value is never looked at.
    fn reads_request_headers(&self) -> bool {
        self.settings.trust_incoming
    }

    /// The correlation header is all it reads and all it writes on the request.
    fn request_header_names(&self) -> Option<Vec<String>> {
        Some(vec![self.settings.header.clone()])
    }

    fn on_request_headers<'s>(
        &'s self,
        stream: &mut Stream,
        headers: &[(&str, &[u8])],
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) -> Flow {
        let settings = &self.settings;
        // Duplicates must be detected (Envoy's single-value lookup returns the first copy
        // only), so the whole list is looked at; only a kept ID is copied.
        let plan = plan_request(
            settings.trust_incoming,
            settings.max_length,
            || match single_value(headers.iter().copied(), &settings.header) {
                Occurrence::Once(value) => Occurrence::Once(value.to_vec()),
                Occurrence::Repeated(n) => Occurrence::Repeated(n),
                Occurrence::Absent => Occurrence::Absent,
            },
        );
        let outcome = match plan {
            Plan::Keep(value) => {
                stream.id = Some(RequestId::Incoming(value));
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
                        "{FILTER}: replacing invalid incoming {}: {rejection}",
                        settings.header
                    );
                }
                let id = self.new_id(host);
                if remove_copies {
                    fx.remove_request(settings.header.as_str());
                }
                // Replace semantics (Envoy's setCopy removes every copy and adds one).
                let value = fx.copied(id.as_bytes());
                fx.set_request(settings.header.as_str(), value);
                stream.id = Some(RequestId::Generated(id));
                outcome
            }
        };
        fx.count(self.metrics.counter(outcome));
        Flow::Continue
    }

    fn on_response_headers<'s>(
        &'s self,
        stream: &mut Stream,
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) {
        if !self.settings.echo_downstream {
            return;
        }
        if stream.id.is_none() {
            // The request phase never ran (a filter before us answered locally). The response
            // still gets an ID; request headers cannot be read any more.
            stream.id = Some(RequestId::Generated(self.new_id(host)));
            fx.count(self.metrics.generated);
        }
        if let Some(id) = &stream.id {
            // Set, not add: any value the upstream sent is replaced.
            let value = fx.copied(id.as_bytes());
            fx.set_response(self.settings.response_header.as_str(), value);
        }
    }
}
