//! The trace-propagation stage (host-free): the request phase validates the incoming trace
//! context and writes the upstream headers ([`crate::propagate`] decides); the response phase
//! echoes the trace id when `response_header` is set. Every host runs this one logic: the
//! filter's own module (`glue`) and the bundle's chain.

use std::cell::Cell;

use gatewasm_common::rng::{self, Xoshiro256pp};
use gatewasm_common::stage::{Counter, Effects, Flow, Stage, StageHost};

use crate::config::{Format, Settings};
use crate::ids::Text;
use crate::propagate::{
    METRIC_EXTRACTED_B3, METRIC_EXTRACTED_B3MULTI, METRIC_EXTRACTED_W3C, METRIC_RESTARTED_INVALID,
    METRIC_SAMPLED, METRIC_STARTED, Outcome, Write, plan_request,
};

/// The filter's name, at the start of its log lines.
pub const FILTER: &str = "trace-propagation";

thread_local! {
    /// One PRNG per VM (shared by all root contexts of the VM). A `Cell` of a `Copy` value: no
    /// borrow flag, nothing that can panic.
    static RNG: Cell<Option<Xoshiro256pp>> = const { Cell::new(None) };
}

/// (Re)seed the VM's PRNG: a fresh stream (unlike correlation-id, nothing to keep).
pub fn reseed(seed: [u8; 32]) {
    RNG.with(|cell| cell.set(Some(Xoshiro256pp::from_seed(seed))));
}

/// The counters: one per [`Outcome`], and `sampled`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics {
    extracted_w3c: Counter,
    extracted_b3: Counter,
    extracted_b3multi: Counter,
    restarted_invalid: Counter,
    started: Counter,
    sampled: Counter,
}

impl Metrics {
    fn counter(&self, outcome: Outcome) -> Counter {
        match outcome {
            Outcome::Extracted(Format::W3c) => self.extracted_w3c,
            Outcome::Extracted(Format::B3) => self.extracted_b3,
            Outcome::Extracted(Format::B3Multi) => self.extracted_b3multi,
            Outcome::RestartedInvalid => self.restarted_invalid,
            Outcome::Started => self.started,
        }
    }
}

/// The compiled filter: settings and counters.
#[derive(Debug, Default)]
pub struct TracePropagation {
    settings: Settings,
    metrics: Metrics,
}

impl TracePropagation {
    /// `define` defines a counter by name with the host.
    pub fn new(settings: Settings, mut define: impl FnMut(&str) -> Counter) -> Self {
        let metrics = Metrics {
            extracted_w3c: define(METRIC_EXTRACTED_W3C),
            extracted_b3: define(METRIC_EXTRACTED_B3),
            extracted_b3multi: define(METRIC_EXTRACTED_B3MULTI),
            restarted_invalid: define(METRIC_RESTARTED_INVALID),
            started: define(METRIC_STARTED),
            sampled: define(METRIC_SAMPLED),
        };
        Self { settings, metrics }
    }
}

/// What a stream keeps: the trace id sent upstream, for the response (request headers cannot
/// be read then). Only kept when `response_header` is set.
#[derive(Debug, Default)]
pub struct Stream {
    trace_id: Option<Text<32>>,
}

impl Stage for TracePropagation {
    type Stream = Stream;
    const RESPONSE_HEADERS: bool = true;

    fn on_request_headers<'s>(
        &'s self,
        stream: &mut Stream,
        headers: &[(&str, &[u8])],
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) -> Flow {
        let settings = &self.settings;
        // Duplicates must be seen (the single-value lookup returns only the first copy) and up
        // to nine headers are looked at: the adapter reads the whole map once.
        let mut rng = RNG.with(Cell::get).unwrap_or_else(|| {
            // Only when neither on_vm_start nor on_configure seeded it (no host does that).
            Xoshiro256pp::from_seed(rng::seed_or_fallback(
                FILTER,
                "ids",
                rng::os_seed(),
                || host.now_ns(),
                0,
            ))
        });
        // Each change in the order it is decided: 1 host call per changed header.
        let plan = plan_request(settings, headers, &mut rng, |write| match write {
            // The names are `'static`: borrowed, not copied.
            Write::Set(name, value) => {
                let value = fx.copied(value);
                fx.set_request(name, value);
            }
            Write::Remove(name) => fx.remove_request(name),
        });
        RNG.with(|cell| cell.set(Some(rng)));
        for rejection in plan.rejections.iter().flatten() {
            // Never the value itself (log injection): only the header name and the rule.
            log::debug!(
                "{FILTER}: ignoring invalid {}: {}",
                rejection.header,
                rejection.reason
            );
        }
        fx.count(self.metrics.counter(plan.outcome));
        if plan.sampled {
            fx.count(self.metrics.sampled);
        }
        if settings.response_header.is_some() {
            stream.trace_id = Some(plan.trace_id);
        }
        Flow::Continue
    }

    fn on_response_headers<'s>(
        &'s self,
        stream: &mut Stream,
        _host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) {
        // No trace id when the request phase never ran (a filter before us replied locally).
        if let (Some(name), Some(trace_id)) = (&self.settings.response_header, &stream.trace_id) {
            // Set, not add: any value the upstream sent is replaced.
            let value = fx.copied(trace_id.as_bytes());
            fx.set_response(name.as_str(), value);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;
    use gatewasm_common::stage::{HeaderEdit, SetResult};
    use proxy_wasm::types::Status;

    /// A host with a fixed clock and nothing else.
    struct FakeHost;

    impl StageHost for FakeHost {
        fn now_ns(&mut self) -> u64 {
            1_700_000_000_000_000_000
        }

        fn property(&mut self, _path: &[&str]) -> Option<Vec<u8>> {
            None
        }

        fn shared_get(&mut self, _key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            (None, None)
        }

        fn shared_set(&mut self, _key: &str, _value: &[u8], _cas: Option<u32>) -> SetResult {
            SetResult::Failed
        }

        fn foreign_function(
            &mut self,
            _name: &str,
            _args: &[u8],
        ) -> Result<Option<Vec<u8>>, Status> {
            Err(Status::NotFound)
        }
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    /// The stage with counter ids 0.. in definition order (extracted_w3c = 0, sampled = 5).
    fn stage(json: &str) -> TracePropagation {
        let settings = parse_settings(Some(json.as_bytes())).unwrap();
        let mut next = 0;
        TracePropagation::new(settings, |_name| {
            next += 1;
            Counter(Some(next - 1))
        })
    }

    fn request<'s>(
        stage: &'s TracePropagation,
        stream: &mut Stream,
        headers: &[(&str, &str)],
    ) -> (Flow, Effects<'s>) {
        reseed([7; 32]);
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let mut fx = Effects::default();
        let flow = stage.on_request_headers(stream, &pairs, &mut FakeHost, &mut fx);
        (flow, fx)
    }

    #[test]
    fn a_span_continues_a_valid_traceparent_with_a_new_parent_id() {
        let stage = stage("{}");
        let mut stream = Stream::default();
        let (flow, fx) = request(&stage, &mut stream, &[("traceparent", TP)]);
        assert_eq!(flow, Flow::Continue);
        let [HeaderEdit::Set(name, value)] = fx.request.as_slice() else {
            panic!("{:?}", fx.request);
        };
        assert_eq!(name, "traceparent");
        let value = String::from_utf8(value.to_vec()).unwrap();
        assert_ne!(value, TP);
        assert!(value.starts_with(&format!("00-{TRACE}-")), "{value}");
        assert!(value.ends_with("-01"), "{value}");
        // extracted_w3c and sampled.
        assert_eq!(fx.counters, vec![(0, 1), (5, 1)]);
        assert!(fx.response.is_empty() && fx.reply.is_none() && !fx.clear_route_cache);
        // No response header configured: nothing kept, nothing echoed.
        let mut fx = Effects::default();
        stage.on_response_headers(&mut stream, &mut FakeHost, &mut fx);
        assert!(fx.is_empty());
    }

    #[test]
    fn passthrough_of_a_canonical_traceparent_writes_nothing() {
        let stage = stage(r#"{"role":"passthrough"}"#);
        let (_, fx) = request(&stage, &mut Stream::default(), &[("traceparent", TP)]);
        assert!(fx.request.is_empty());
        assert_eq!(fx.counters, vec![(0, 1), (5, 1)]);
    }

    #[test]
    fn the_response_echoes_the_trace_id_when_configured() {
        let stage = stage(r#"{"response_header":"X-Trace-Id"}"#);
        let mut stream = Stream::default();
        request(&stage, &mut stream, &[("traceparent", TP)]);
        let mut fx = Effects::default();
        stage.on_response_headers(&mut stream, &mut FakeHost, &mut fx);
        assert_eq!(
            fx.response,
            vec![HeaderEdit::Set(
                "x-trace-id".into(),
                TRACE.as_bytes().into()
            )]
        );
        assert!(fx.counters.is_empty());
    }

    #[test]
    fn no_echo_when_the_request_phase_never_ran() {
        let stage = stage(r#"{"response_header":"x-trace-id"}"#);
        let mut fx = Effects::default();
        stage.on_response_headers(&mut Stream::default(), &mut FakeHost, &mut fx);
        assert!(fx.is_empty());
    }

    #[test]
    fn an_invalid_duplicated_traceparent_is_removed_then_replaced() {
        let stage = stage("{}");
        let (_, fx) = request(
            &stage,
            &mut Stream::default(),
            &[("traceparent", TP), ("traceparent", TP)],
        );
        assert!(
            matches!(fx.request.as_slice(), [HeaderEdit::Remove(r), HeaderEdit::Set(s, _)] if r == "traceparent" && s == "traceparent"),
            "{:?}",
            fx.request
        );
        // restarted_invalid (sampled only if the draw says so).
        assert_eq!(fx.counters.first(), Some(&(3, 1)));
    }
}
