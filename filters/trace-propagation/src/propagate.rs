//! The per-request decision: from the request headers (read once) to the header writes, the
//! counter to increment and the trace id to echo. Pure: the stage ([`crate::stage`]) passes
//! the headers, the PRNG and a sink for the [`Write`]s in, collects each write as it comes into
//! its effects, and keeps the [`Plan`]. Nothing is stored per write here and ids are rendered on
//! the stack, so the only heap allocations of the decision are a re-joined `tracestate` or
//! `baggage` when one has to be rewritten.
//!
//! 1. **Extract.** Every format in `extract` is parsed; the first one (in `extract` order) that
//!    yields a full context wins. A header that is present but invalid (or a single-valued header
//!    sent more than once — `traceparent`, `b3`) is recorded as a [`Rejection`]. A B3
//!    sampling-only header (`b3: 0`) gives no context but its decision is used when no context
//!    is found.
//! 2. **Sample.** With `respect_incoming`, an incoming accept/deny/debug is kept; a missing
//!    decision (new trace, B3 defer) is drawn with `sampling.ratio`. Without it every request is
//!    drawn and B3 debug is dropped.
//! 3. **Ids.** A found context keeps its trace id. `role: span` (or a changed sampled flag, which
//!    W3C only allows together with a new parent-id) gives the upstream a fresh span id whose
//!    parent is the caller's span id; `passthrough` keeps the ids. No context: a fresh random
//!    128-bit trace id and 64-bit span id, with the W3C random flag set.
//! 4. **Inject** the configured formats, **clear** extracted-but-not-injected formats when
//!    `clear_extracted`, and **bound** `baggage`. A header is only written when its value
//!    changes; a duplicated one is removed before it is set.
//!
//! `tracestate` travels with `traceparent`: it is kept only when a valid incoming `traceparent`
//! has the trace id that goes upstream (so it belongs to this trace); otherwise it is removed
//! ("vendors SHOULD clean up tracestate on restart"). When kept, an invalid one is removed
//! whole; a valid one is forwarded untouched if it is a single field within
//! `tracestate_max_length` without a repeated key, and otherwise re-joined (later repeats of a
//! key dropped) and truncated.

use gatewasm_common::rng::Xoshiro256pp;

use crate::b3::{self, B3Context, MultiHeaders};
use crate::baggage::{self, BaggagePlan};
use crate::config::{Format, Role, Settings};
use crate::context::{Extracted, Invalid, Outgoing, Sampling};
use crate::ids::{Text, new_span_id, new_trace_id};
use crate::w3c::{self, TraceParent, TraceState};

/// The headers the filter reads, in a fixed order (index into [`Incoming`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    TraceParent,
    TraceState,
    B3,
    B3TraceId,
    B3SpanId,
    B3ParentSpanId,
    B3Sampled,
    B3Flags,
    Baggage,
}

const KNOWN: [(&str, Known); 9] = [
    (w3c::TRACEPARENT, Known::TraceParent),
    (w3c::TRACESTATE, Known::TraceState),
    (b3::B3, Known::B3),
    (b3::X_B3_TRACE_ID, Known::B3TraceId),
    (b3::X_B3_SPAN_ID, Known::B3SpanId),
    (b3::X_B3_PARENT_SPAN_ID, Known::B3ParentSpanId),
    (b3::X_B3_SAMPLED, Known::B3Sampled),
    (b3::X_B3_FLAGS, Known::B3Flags),
    (baggage::BAGGAGE, Known::Baggage),
];

impl Known {
    const fn name(self) -> &'static str {
        match self {
            Self::TraceParent => w3c::TRACEPARENT,
            Self::TraceState => w3c::TRACESTATE,
            Self::B3 => b3::B3,
            Self::B3TraceId => b3::X_B3_TRACE_ID,
            Self::B3SpanId => b3::X_B3_SPAN_ID,
            Self::B3ParentSpanId => b3::X_B3_PARENT_SPAN_ID,
            Self::B3Sampled => b3::X_B3_SAMPLED,
            Self::B3Flags => b3::X_B3_FLAGS,
            Self::Baggage => baggage::BAGGAGE,
        }
    }

    /// The headers of a format (what `clear_extracted` removes).
    const fn of_format(format: Format) -> &'static [Known] {
        match format {
            Format::W3c => &[Self::TraceParent, Self::TraceState],
            Format::B3 => &[Self::B3],
            Format::B3Multi => &[
                Self::B3TraceId,
                Self::B3SpanId,
                Self::B3ParentSpanId,
                Self::B3Sampled,
                Self::B3Flags,
            ],
        }
    }
}

/// How often a known header occurs, and its first value.
#[derive(Debug, Clone, Copy, Default)]
struct Seen<'a> {
    first: Option<&'a [u8]>,
    count: usize,
}

/// The request headers, scanned once for the known names (ASCII case-insensitively).
struct Incoming<'a> {
    headers: &'a [(&'a str, &'a [u8])],
    seen: [Seen<'a>; KNOWN.len()],
}

impl<'a> Incoming<'a> {
    fn scan(headers: &'a [(&'a str, &'a [u8])]) -> Self {
        let mut seen = [Seen::default(); KNOWN.len()];
        for (key, value) in headers {
            let slot = KNOWN
                .iter()
                .zip(seen.iter_mut())
                .find(|((name, _), _)| key.eq_ignore_ascii_case(name));
            if let Some((_, slot)) = slot {
                if slot.first.is_none() {
                    slot.first = Some(*value);
                }
                slot.count = slot.count.saturating_add(1);
            }
        }
        Self { headers, seen }
    }

    fn seen(&self, known: Known) -> Seen<'a> {
        KNOWN
            .iter()
            .zip(self.seen.iter())
            .find(|((_, k), _)| *k == known)
            .map(|(_, seen)| *seen)
            .unwrap_or_default()
    }

    /// Every value of a header, in order.
    fn all(&self, known: Known) -> impl Iterator<Item = &'a [u8]> + Clone + use<'a> {
        let name = known.name();
        self.headers
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| *value)
    }
}

/// Which counter a request increments (exactly one per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A valid context was continued from this format.
    Extracted(Format),
    /// No valid context, and a header of an `extract` format was present but invalid: the trace
    /// was restarted.
    RestartedInvalid,
    /// No trace-context header of an `extract` format at all (or only a B3 sampling decision):
    /// a new trace was started.
    Started,
}

pub const METRIC_EXTRACTED_W3C: &str = "gatewasm_trace_propagation_extracted_w3c";
pub const METRIC_EXTRACTED_B3: &str = "gatewasm_trace_propagation_extracted_b3";
pub const METRIC_EXTRACTED_B3MULTI: &str = "gatewasm_trace_propagation_extracted_b3multi";
pub const METRIC_RESTARTED_INVALID: &str = "gatewasm_trace_propagation_restarted_invalid";
pub const METRIC_STARTED: &str = "gatewasm_trace_propagation_started";
/// Incremented in addition when the upstream request goes out sampled.
pub const METRIC_SAMPLED: &str = "gatewasm_trace_propagation_sampled";

impl Outcome {
    pub const fn metric_name(self) -> &'static str {
        match self {
            Self::Extracted(Format::W3c) => METRIC_EXTRACTED_W3C,
            Self::Extracted(Format::B3) => METRIC_EXTRACTED_B3,
            Self::Extracted(Format::B3Multi) => METRIC_EXTRACTED_B3MULTI,
            Self::RestartedInvalid => METRIC_RESTARTED_INVALID,
            Self::Started => METRIC_STARTED,
        }
    }
}

/// One change to the request headers, handed to the caller's sink as soon as it is decided
/// (nothing is stored: values are rendered on the stack and borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    /// Replace every value of the header with this one (Envoy: `setCopy`).
    Set(&'static str, &'a [u8]),
    /// Remove every value of the header.
    Remove(&'static str),
}

/// An owned [`Write`], for tests and tools that collect the writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedWrite {
    Set(&'static str, Vec<u8>),
    Remove(&'static str),
}

impl From<Write<'_>> for OwnedWrite {
    fn from(write: Write<'_>) -> Self {
        match write {
            Write::Set(name, value) => Self::Set(name, value.to_vec()),
            Write::Remove(name) => Self::Remove(name),
        }
    }
}

/// The most writes one request can produce (`worst_case_writes` checks it).
pub const MAX_WRITES: usize = 16;

/// Emits writes, skipping the ones that change nothing.
struct Writer<'s, F: FnMut(Write<'_>)> {
    sink: &'s mut F,
}

impl<F: FnMut(Write<'_>)> Writer<'_, F> {
    fn remove(&mut self, known: Known) {
        (self.sink)(Write::Remove(known.name()));
    }

    fn remove_if_present(&mut self, incoming: &Incoming<'_>, known: Known) {
        if incoming.seen(known).count > 0 {
            self.remove(known);
        }
    }

    /// Set `known` to `value` unless it already is exactly that (one copy, same bytes). A
    /// duplicated header is removed first, so exactly one value leaves even on a host whose
    /// replace only overwrites the first copy.
    fn set_if_changed(&mut self, incoming: &Incoming<'_>, known: Known, value: &[u8]) {
        let seen = incoming.seen(known);
        if seen.count == 1
            && seen
                .first
                .is_some_and(|first| gatewasm_common::bytes::eq(first, value))
        {
            return;
        }
        if seen.count > 1 {
            self.remove(known);
        }
        (self.sink)(Write::Set(known.name(), value));
    }
}

/// A header that was refused, and why (for a debug log line; never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub header: &'static str,
    pub reason: Invalid,
}

/// At most one rejection per format plus one for `tracestate`.
pub const MAX_REJECTIONS: usize = 4;

/// Everything the stage needs to carry out one request.
#[derive(Debug)]
pub struct Plan {
    pub outcome: Outcome,
    /// The upstream request goes out sampled (counts `sampled`).
    pub sampled: bool,
    /// The context sent upstream.
    pub outgoing: Outgoing,
    /// The trace id to echo: 32 hex digits, or 16 for a 64-bit B3 trace when W3C is not
    /// injected (the width the upstream sees).
    pub trace_id: Text<32>,
    pub rejections: [Option<Rejection>; MAX_REJECTIONS],
}

fn push_rejection(
    rejections: &mut [Option<Rejection>; MAX_REJECTIONS],
    header: &'static str,
    reason: Invalid,
) {
    if let Some(slot) = rejections.iter_mut().find(|slot| slot.is_none()) {
        *slot = Some(Rejection { header, reason });
    }
}

/// Name used in logs for a format's header(s).
const fn format_header(format: Format) -> &'static str {
    match format {
        Format::W3c => w3c::TRACEPARENT,
        Format::B3 => b3::B3,
        Format::B3Multi => "x-b3-* headers",
    }
}

/// A single-valued header: `Ok(None)` absent, `Ok(Some(v))` once, `Err` when repeated.
fn single<'a>(seen: Seen<'a>) -> Result<Option<&'a [u8]>, Invalid> {
    match (seen.count, seen.first) {
        (0, _) | (_, None) => Ok(None),
        (1, Some(value)) => Ok(Some(value)),
        _ => Err(Invalid("the header is sent more than once")),
    }
}

/// A 53-bit uniform draw against the configured ratio.
fn draw(settings: &Settings, rng: &mut Xoshiro256pp) -> bool {
    (rng.next_u64() >> 11) < settings.sample_threshold
}

/// Decide one request. `headers` is the request header list as the host returned it; every
/// header change is passed to `sink` in order (the stage turns it into a request edit).
pub fn plan_request<F: FnMut(Write<'_>)>(
    settings: &Settings,
    headers: &[(&str, &[u8])],
    rng: &mut Xoshiro256pp,
    mut sink: F,
) -> Plan {
    let incoming = Incoming::scan(headers);
    let mut rejections = [None; MAX_REJECTIONS];

    // 1. Extract.
    let mut traceparent: Option<TraceParent> = None;
    let mut context: Option<(Format, Extracted)> = None;
    let mut sampling_only: Option<Sampling> = None;
    let mut any_invalid = false;
    for &format in &settings.extract {
        let parsed = match format {
            Format::W3c => single(incoming.seen(Known::TraceParent)).and_then(|value| {
                value
                    .map(|v| {
                        w3c::parse_traceparent(v).map(|tp| {
                            traceparent = Some(tp);
                            B3Context::Context(tp.to_extracted())
                        })
                    })
                    .transpose()
            }),
            Format::B3 => single(incoming.seen(Known::B3))
                .and_then(|value| value.map(b3::parse_single).transpose()),
            Format::B3Multi => b3::parse_multi(&MultiHeaders {
                trace_id: incoming.seen(Known::B3TraceId).first,
                span_id: incoming.seen(Known::B3SpanId).first,
                parent_span_id: incoming.seen(Known::B3ParentSpanId).first,
                sampled: incoming.seen(Known::B3Sampled).first,
                flags: incoming.seen(Known::B3Flags).first,
            }),
        };
        match parsed {
            Ok(Some(B3Context::Context(found))) => {
                if context.is_none() {
                    context = Some((format, found));
                }
            }
            Ok(Some(B3Context::SamplingOnly(decision))) => {
                if sampling_only.is_none() {
                    sampling_only = Some(decision);
                }
            }
            Ok(None) => {}
            Err(reason) => {
                any_invalid = true;
                push_rejection(&mut rejections, format_header(format), reason);
            }
        }
    }

    // 2. Sample.
    let incoming_sampling = context
        .map(|(_, found)| found.sampling)
        .or(sampling_only)
        .unwrap_or(Sampling::Defer);
    let (sampled, debug) = if settings.respect_incoming {
        match incoming_sampling {
            Sampling::Defer => (draw(settings, rng), false),
            Sampling::Deny => (false, false),
            Sampling::Accept => (true, false),
            Sampling::Debug => (true, true),
        }
    } else {
        (draw(settings, rng), false)
    };

    // 3. Ids.
    let (outcome, outgoing) = match context {
        Some((format, found)) => {
            let flag_changed = found.sampling.decided().is_some_and(|d| d != sampled);
            let new_span = settings.role == Role::Span || flag_changed;
            let outgoing = Outgoing {
                trace_id: found.trace_id,
                short_trace_id: found.short_trace_id,
                span_id: if new_span {
                    new_span_id(rng, found.span_id)
                } else {
                    found.span_id
                },
                parent_span_id: if new_span {
                    Some(found.span_id)
                } else {
                    found.parent_span_id
                },
                sampled,
                debug,
                random: found.random,
            };
            (Outcome::Extracted(format), outgoing)
        }
        None => {
            let outgoing = Outgoing {
                trace_id: new_trace_id(rng),
                short_trace_id: false,
                span_id: new_span_id(rng, 0),
                parent_span_id: None,
                sampled,
                debug,
                random: true,
            };
            let outcome = if any_invalid {
                Outcome::RestartedInvalid
            } else {
                Outcome::Started
            };
            (outcome, outgoing)
        }
    };

    // 4. Inject, clear, bound.
    let mut writes = Writer { sink: &mut sink };
    if settings.inject.w3c {
        let value = w3c::render_traceparent(&outgoing);
        writes.set_if_changed(&incoming, Known::TraceParent, value.as_bytes());
        plan_tracestate(
            settings,
            &incoming,
            traceparent.is_some_and(|tp| tp.trace_id == outgoing.trace_id),
            &mut writes,
            &mut rejections,
        );
    }
    if settings.inject.b3 {
        let value = b3::render_single(&outgoing, settings.b3_single_parent_span_id);
        writes.set_if_changed(&incoming, Known::B3, value.as_bytes());
    }
    if settings.inject.b3multi {
        let trace_id = b3::render_trace_id(&outgoing);
        writes.set_if_changed(&incoming, Known::B3TraceId, trace_id.as_bytes());
        let span_id = b3::render_span_id(outgoing.span_id);
        writes.set_if_changed(&incoming, Known::B3SpanId, span_id.as_bytes());
        match outgoing.parent_span_id {
            Some(parent) => {
                let parent = b3::render_span_id(parent);
                writes.set_if_changed(&incoming, Known::B3ParentSpanId, parent.as_bytes());
            }
            None => writes.remove_if_present(&incoming, Known::B3ParentSpanId),
        }
        if outgoing.debug {
            writes.set_if_changed(&incoming, Known::B3Flags, b"1");
            writes.remove_if_present(&incoming, Known::B3Sampled);
        } else {
            let sampled = b3::sampled_value(&outgoing);
            writes.set_if_changed(&incoming, Known::B3Sampled, sampled);
            writes.remove_if_present(&incoming, Known::B3Flags);
        }
    }
    if settings.clear_extracted {
        for &format in &settings.extract {
            if !settings.inject.contains(format) {
                for &known in Known::of_format(format) {
                    writes.remove_if_present(&incoming, known);
                }
            }
        }
    }
    match baggage::bound(incoming.all(Known::Baggage)) {
        BaggagePlan::Untouched => {}
        BaggagePlan::Remove => writes.remove_if_present(&incoming, Known::Baggage),
        BaggagePlan::Replace(value) => {
            writes.set_if_changed(&incoming, Known::Baggage, &value);
        }
    }

    let mut trace_id = Text::new();
    if outgoing.short_trace_id && !settings.inject.w3c {
        trace_id.push_hex(outgoing.trace_id, 16);
    } else {
        trace_id.push_hex(outgoing.trace_id, 32);
    }
    Plan {
        outcome,
        sampled,
        outgoing,
        trace_id,
        rejections,
    }
}

/// `tracestate` when W3C is injected; `same_trace`: a valid incoming `traceparent` carried the
/// outgoing trace id.
fn plan_tracestate<F: FnMut(Write<'_>)>(
    settings: &Settings,
    incoming: &Incoming<'_>,
    same_trace: bool,
    writes: &mut Writer<'_, F>,
    rejections: &mut [Option<Rejection>; MAX_REJECTIONS],
) {
    let seen = incoming.seen(Known::TraceState);
    if seen.count == 0 {
        return;
    }
    if !same_trace {
        // A restart (or a trace from another format): the state belongs to another trace.
        writes.remove(Known::TraceState);
        return;
    }
    let mut state = match TraceState::parse(incoming.all(Known::TraceState)) {
        Ok(state) => state,
        Err(reason) => {
            push_rejection(rejections, w3c::TRACESTATE, reason);
            writes.remove(Known::TraceState);
            return;
        }
    };
    let max = settings.tracestate_max_length;
    // Dropped duplicates are not in the fields as received, so those must be re-rendered; the
    // limit then applies to the deduplicated list (dropping repeats can only shorten it).
    let fits_as_is =
        seen.count == 1 && !state.dropped_duplicates() && seen.first.map_or(0, <[u8]>::len) <= max;
    if state.count() == 0 {
        // Only empty members: vendors SHOULD avoid sending an empty tracestate.
        writes.remove(Known::TraceState);
    } else if !fits_as_is {
        state.truncate(max);
        if state.count() == 0 {
            writes.remove(Known::TraceState);
        } else {
            writes.set_if_changed(incoming, Known::TraceState, &state.render());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT: &str = "b7ad6b7169203331";

    fn settings(json: &str) -> Settings {
        parse_settings(Some(json.as_bytes())).unwrap()
    }

    fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect()
    }

    fn rng() -> Xoshiro256pp {
        Xoshiro256pp::from_seed([42; 32])
    }

    /// A plan and the writes it produced.
    struct Planned {
        plan: Plan,
        writes: Vec<OwnedWrite>,
    }

    impl std::ops::Deref for Planned {
        type Target = Plan;
        fn deref(&self) -> &Plan {
            &self.plan
        }
    }

    fn plan_with(settings: &Settings, pairs: &[(&str, &[u8])], rng: &mut Xoshiro256pp) -> Planned {
        let mut writes = Vec::new();
        let plan = plan_request(settings, pairs, rng, |w| writes.push(OwnedWrite::from(w)));
        Planned { plan, writes }
    }

    fn plan(json: &str, pairs: &[(&str, &str)]) -> Planned {
        plan_with(&settings(json), &headers(pairs), &mut rng())
    }

    /// Apply the writes the way Envoy does and return the upstream headers.
    fn apply(pairs: &[(&str, &str)], plan: &Planned) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        for write in &plan.writes {
            match write {
                OwnedWrite::Remove(name) => out.retain(|(k, _)| k != name),
                OwnedWrite::Set(name, value) => {
                    let value = String::from_utf8(value.clone()).unwrap();
                    match out.iter().position(|(k, _)| k == name) {
                        Some(i) => {
                            out[i].1 = value;
                            let mut seen = false;
                            out.retain(|(k, _)| {
                                if k != name {
                                    return true;
                                }
                                let keep = !seen;
                                seen = true;
                                keep
                            });
                        }
                        None => out.push((name.to_string(), value)),
                    }
                }
            }
        }
        out
    }

    fn get<'a>(out: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        out.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one<'a>(out: &'a [(String, String)], name: &str) -> &'a str {
        match get(out, name).as_slice() {
            [v] => v,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn tp_fields(tp: &str) -> (String, String, String, String) {
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        (
            parts[0].into(),
            parts[1].into(),
            parts[2].into(),
            parts[3].into(),
        )
    }

    #[test]
    fn span_role_keeps_the_trace_and_replaces_the_parent() {
        let pairs = [("traceparent", TP)];
        let p = plan("{}", &pairs);
        assert_eq!(p.outcome, Outcome::Extracted(Format::W3c));
        assert!(p.sampled);
        let out = apply(&pairs, &p);
        let (v, t, s, f) = tp_fields(one(&out, "traceparent"));
        assert_eq!((v.as_str(), t.as_str(), f.as_str()), ("00", TRACE, "01"));
        assert_ne!(s, PARENT);
        assert_eq!(p.outgoing.parent_span_id, Some(0xb7ad6b7169203331));
        assert_eq!(p.trace_id.as_bytes(), TRACE.as_bytes());
        assert_eq!(p.writes.len(), 1);
    }

    #[test]
    fn span_role_gives_a_different_parent_every_request() {
        let s = settings("{}");
        let h = headers(&[("traceparent", TP)]);
        let mut r = rng();
        let ids: std::collections::HashSet<u64> = (0..100)
            .map(|_| plan_request(&s, &h, &mut r, |_| {}).outgoing.span_id)
            .collect();
        assert_eq!(ids.len(), 100);
        assert!(!ids.contains(&0xb7ad6b7169203331));
    }

    #[test]
    fn passthrough_keeps_a_canonical_traceparent_without_writing() {
        let pairs = [("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")];
        let p = plan(r#"{"role":"passthrough"}"#, &pairs);
        assert_eq!(p.outcome, Outcome::Extracted(Format::W3c));
        assert!(p.writes.is_empty(), "{:?}", p.writes);
    }

    #[test]
    fn passthrough_downgrades_and_clears_unknown_flags() {
        let pairs = [(
            "traceparent",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff-future",
        )];
        let out = apply(&pairs, &plan(r#"{"role":"passthrough"}"#, &pairs));
        assert_eq!(
            one(&out, "traceparent"),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"
        );
        let pairs = [(
            "traceparent",
            " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-09",
        )];
        let out = apply(&pairs, &plan(r#"{"role":"passthrough"}"#, &pairs));
        assert_eq!(one(&out, "traceparent"), TP);
    }

    #[test]
    fn random_flag_is_propagated_and_set_on_new_traces() {
        for (flags, want) in [("02", "02"), ("03", "03"), ("00", "00"), ("01", "01")] {
            let tp = format!("00-{TRACE}-{PARENT}-{flags}");
            let pairs = [("traceparent", tp.as_str())];
            let out = apply(&pairs, &plan("{}", &pairs));
            assert_eq!(tp_fields(one(&out, "traceparent")).3, want, "{flags}");
        }
        let out = apply(&[], &plan(r#"{"sampling":{"ratio":1}}"#, &[]));
        assert_eq!(tp_fields(one(&out, "traceparent")).3, "03");
        let out = apply(&[], &plan(r#"{"sampling":{"ratio":0}}"#, &[]));
        assert_eq!(tp_fields(one(&out, "traceparent")).3, "02");
        // From B3 the flag is unknown, so it stays unset.
        let pairs = [("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")];
        let out = apply(&pairs, &plan("{}", &pairs));
        assert_eq!(tp_fields(one(&out, "traceparent")).3, "01");
    }

    #[test]
    fn invalid_or_duplicated_traceparent_restarts() {
        for pairs in [
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            )],
            vec![(
                "traceparent",
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
            vec![("traceparent", TP), ("traceparent", TP)],
            vec![
                ("traceparent", TP),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203331-01",
                ),
            ],
        ] {
            let p = plan("{}", &pairs);
            assert_eq!(p.outcome, Outcome::RestartedInvalid, "{pairs:?}");
            assert_eq!(p.rejections[0].unwrap().header, "traceparent");
            let out = apply(&pairs, &p);
            let (_, t, _, f) = tp_fields(one(&out, "traceparent"));
            assert_ne!(t, TRACE);
            assert_eq!(f, "03", "new traces are random and sampled at ratio 1");
        }
        let p = plan("{}", &[("traceparent", TP), ("TraceParent", TP)]);
        assert_eq!(
            p.rejections[0].unwrap().reason,
            Invalid("the header is sent more than once")
        );
        assert!(p.writes.contains(&OwnedWrite::Remove("traceparent")));
    }

    #[test]
    fn no_headers_starts_a_trace() {
        let p = plan("{}", &[(":path", "/")]);
        assert_eq!(p.outcome, Outcome::Started);
        assert!(p.rejections.iter().all(Option::is_none));
        assert_eq!(p.outgoing.parent_span_id, None);
        assert!(p.outgoing.random);
        let out = apply(&[(":path", "/")], &p);
        let tp = one(&out, "traceparent");
        assert_eq!(
            w3c::parse_traceparent(tp.as_bytes()).unwrap().trace_id,
            p.outgoing.trace_id
        );
        assert_eq!(p.trace_id.len(), 32);
    }

    #[test]
    fn extract_order_first_valid_wins() {
        let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
        let pairs = [("traceparent", TP), ("b3", b3)];
        assert_eq!(plan("{}", &pairs).outcome, Outcome::Extracted(Format::W3c));
        let p = plan(r#"{"extract":["b3","w3c"]}"#, &pairs);
        assert_eq!(p.outcome, Outcome::Extracted(Format::B3));
        assert_eq!(p.outgoing.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        // An invalid first format falls through to the next valid one.
        let pairs = [("traceparent", "garbage"), ("b3", b3)];
        let p = plan("{}", &pairs);
        assert_eq!(p.outcome, Outcome::Extracted(Format::B3));
        assert_eq!(p.rejections[0].unwrap().header, "traceparent");
        // A format not in `extract` is ignored.
        let p = plan(r#"{"extract":["w3c"]}"#, &[("b3", b3)]);
        assert_eq!(p.outcome, Outcome::Started);
        // Empty extract: never continue.
        let p = plan(r#"{"extract":[]}"#, &[("traceparent", TP)]);
        assert_eq!(p.outcome, Outcome::Started);
        assert_ne!(p.outgoing.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        // Multi when single is absent.
        let pairs = [
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ];
        let p = plan("{}", &pairs);
        assert_eq!(p.outcome, Outcome::Extracted(Format::B3Multi));
        assert!(!p.sampled);
    }

    #[test]
    fn b3_to_w3c_conversion_pads_64_bit_ids() {
        let pairs = [("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1")];
        let p = plan(r#"{"role":"passthrough","inject":["w3c","b3"]}"#, &pairs);
        let out = apply(&pairs, &p);
        assert_eq!(
            one(&out, "traceparent"),
            "00-000000000000000064fe8b2a57d3eff7-e457b5a2e4d86bd1-01"
        );
        // B3 keeps the 64-bit width; nothing changes, so no write.
        assert_eq!(one(&out, "b3"), "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.trace_id.as_bytes(), b"000000000000000064fe8b2a57d3eff7");
        let p = plan(r#"{"role":"passthrough","inject":["b3"]}"#, &pairs);
        assert_eq!(p.trace_id.as_bytes(), b"64fe8b2a57d3eff7");
    }

    #[test]
    fn w3c_to_b3_single_and_multi() {
        let pairs = [("traceparent", TP)];
        let p = plan(r#"{"inject":["b3","b3multi"]}"#, &pairs);
        let out = apply(&pairs, &p);
        let span = format!("{:016x}", p.outgoing.span_id);
        assert_eq!(one(&out, "b3"), format!("{TRACE}-{span}-1"));
        assert_eq!(one(&out, "x-b3-traceid"), TRACE);
        assert_eq!(one(&out, "x-b3-spanid"), span);
        assert_eq!(one(&out, "x-b3-parentspanid"), PARENT);
        assert_eq!(one(&out, "x-b3-sampled"), "1");
        assert!(get(&out, "x-b3-flags").is_empty());
        // traceparent is not injected and not cleared: it stays as it came.
        assert_eq!(one(&out, "traceparent"), TP);
        // With the parent in the single header.
        let p = plan(
            r#"{"inject":["b3"],"b3_single_parent_span_id":true}"#,
            &pairs,
        );
        let out = apply(&pairs, &p);
        let span = format!("{:016x}", p.outgoing.span_id);
        assert_eq!(one(&out, "b3"), format!("{TRACE}-{span}-1-{PARENT}"));
        // Passthrough: no parent to send, a stale one is removed.
        let pairs = [
            ("traceparent", TP),
            ("x-b3-parentspanid", "1111111111111111"),
        ];
        let out = apply(
            &pairs,
            &plan(r#"{"role":"passthrough","inject":["b3multi"]}"#, &pairs),
        );
        assert_eq!(one(&out, "x-b3-spanid"), PARENT);
        assert!(get(&out, "x-b3-parentspanid").is_empty());
    }

    #[test]
    fn b3_debug_is_kept_and_implies_sampled() {
        let pairs = [("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d")];
        let p = plan(
            r#"{"inject":["w3c","b3","b3multi"],"sampling":{"ratio":0}}"#,
            &pairs,
        );
        assert!(p.sampled && p.outgoing.debug);
        let out = apply(&pairs, &p);
        assert!(one(&out, "b3").ends_with("-d"));
        assert_eq!(one(&out, "x-b3-flags"), "1");
        assert!(get(&out, "x-b3-sampled").is_empty());
        assert!(one(&out, "traceparent").ends_with("-01"));
        // Multi: flags win over sampled; the stale sampled header is removed.
        let pairs = [
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ];
        let out = apply(&pairs, &plan(r#"{"inject":["b3multi"]}"#, &pairs));
        assert_eq!(one(&out, "x-b3-flags"), "1");
        assert!(get(&out, "x-b3-sampled").is_empty());
        // respect_incoming: false drops debug.
        let p = plan(
            r#"{"inject":["b3multi"],"sampling":{"ratio":0,"respect_incoming":false}}"#,
            &pairs,
        );
        let out = apply(&pairs, &p);
        assert_eq!(one(&out, "x-b3-sampled"), "0");
        assert!(get(&out, "x-b3-flags").is_empty());
    }

    #[test]
    fn sampling_decisions() {
        let sampled = |json: &str, pairs: &[(&str, &str)]| plan(json, pairs).sampled;
        let tp0 = format!("00-{TRACE}-{PARENT}-00");
        let tp1 = TP;
        // New traces follow the ratio.
        assert!(sampled(r#"{"sampling":{"ratio":1}}"#, &[]));
        assert!(!sampled(r#"{"sampling":{"ratio":0}}"#, &[]));
        // Incoming decisions are respected by default ...
        assert!(!sampled(
            r#"{"sampling":{"ratio":1}}"#,
            &[("traceparent", &tp0)]
        ));
        assert!(sampled(
            r#"{"sampling":{"ratio":0}}"#,
            &[("traceparent", tp1)]
        ));
        // ... and re-decided without respect_incoming.
        assert!(sampled(
            r#"{"sampling":{"ratio":1,"respect_incoming":false}}"#,
            &[("traceparent", &tp0)]
        ));
        assert!(!sampled(
            r#"{"sampling":{"ratio":0,"respect_incoming":false}}"#,
            &[("traceparent", tp1)]
        ));
        // B3 defer is decided by the ratio.
        let defer = [("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")];
        assert!(sampled(r#"{"sampling":{"ratio":1}}"#, &defer));
        assert!(!sampled(r#"{"sampling":{"ratio":0}}"#, &defer));
        // Sampling-only B3 starts a trace with that decision.
        let p = plan(r#"{"sampling":{"ratio":1}}"#, &[("b3", "0")]);
        assert_eq!((p.outcome, p.sampled), (Outcome::Started, false));
        let p = plan(r#"{"sampling":{"ratio":0}}"#, &[("x-b3-sampled", "1")]);
        assert_eq!((p.outcome, p.sampled), (Outcome::Started, true));
        let p = plan(
            r#"{"sampling":{"ratio":0,"respect_incoming":false}}"#,
            &[("b3", "d")],
        );
        assert!(!p.sampled && !p.outgoing.debug);
    }

    #[test]
    fn ratio_is_roughly_honoured() {
        let s = settings(r#"{"sampling":{"ratio":0.25}}"#);
        let mut r = rng();
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| plan_request(&s, &[], &mut r, |_| {}).sampled)
            .count();
        let share = hits as f64 / n as f64;
        assert!((0.23..0.27).contains(&share), "{share}");
    }

    #[test]
    fn passthrough_changing_the_sampled_flag_needs_a_new_parent() {
        let pairs = [("traceparent", TP)];
        let p = plan(
            r#"{"role":"passthrough","sampling":{"ratio":0,"respect_incoming":false}}"#,
            &pairs,
        );
        let out = apply(&pairs, &p);
        let (_, t, s, f) = tp_fields(one(&out, "traceparent"));
        assert_eq!((t.as_str(), f.as_str()), (TRACE, "00"));
        assert_ne!(s, PARENT);
        // Same decision: ids unchanged.
        let p = plan(
            r#"{"role":"passthrough","sampling":{"ratio":1,"respect_incoming":false}}"#,
            &pairs,
        );
        assert!(p.writes.is_empty());
    }

    #[test]
    fn tracestate_follows_its_traceparent() {
        // Kept untouched in span role (traceparent changes, tracestate is not ours to edit).
        let pairs = [
            ("traceparent", TP),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ];
        let out = apply(&pairs, &plan("{}", &pairs));
        assert_eq!(
            one(&out, "tracestate"),
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        );
        // Multiple fields are combined into one.
        let pairs = [
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("tracestate", "bar=2"),
        ];
        let out = apply(&pairs, &plan("{}", &pairs));
        assert_eq!(one(&out, "tracestate"), "foo=1,bar=2");
        // Without a valid traceparent it is removed (and never parsed).
        for pairs in [
            vec![("tracestate", "foo=1")],
            vec![("traceparent", "garbage"), ("tracestate", "foo=1")],
            vec![
                ("traceparent", TP),
                ("traceparent", TP),
                ("tracestate", "foo=1"),
            ],
        ] {
            let p = plan("{}", &pairs);
            let out = apply(&pairs, &p);
            assert!(get(&out, "tracestate").is_empty(), "{pairs:?}");
            assert!(
                p.rejections
                    .iter()
                    .flatten()
                    .all(|r| r.header != "tracestate")
            );
        }
        // Invalid: discarded whole, with a rejection.
        let pairs = [("traceparent", TP), ("tracestate", "foo=1,FOO=2")];
        let p = plan("{}", &pairs);
        assert!(get(&apply(&pairs, &p), "tracestate").is_empty());
        assert_eq!(p.rejections[0].unwrap().header, "tracestate");
        // A repeated key: the first occurrence is kept, with the rest of the list (one field
        // or several), and no rejection.
        for (pairs, want) in [
            (
                vec![("traceparent", TP), ("tracestate", "foo=1,foo=1")],
                "foo=1",
            ),
            (
                vec![("traceparent", TP), ("tracestate", "foo=1,bar=2,foo=3")],
                "foo=1,bar=2",
            ),
            (
                vec![
                    ("traceparent", TP),
                    ("tracestate", "foo=1"),
                    ("tracestate", "bar=2,foo=3"),
                ],
                "foo=1,bar=2",
            ),
        ] {
            let p = plan("{}", &pairs);
            assert_eq!(one(&apply(&pairs, &p), "tracestate"), want, "{pairs:?}");
            assert!(p.rejections.iter().all(Option::is_none), "{pairs:?}");
        }
        // Empty: removed.
        let pairs = [("traceparent", TP), ("tracestate", " , ")];
        assert!(get(&apply(&pairs, &plan("{}", &pairs)), "tracestate").is_empty());
        // From B3 with the same trace id (a client sending both): kept.
        let b3 = format!("{TRACE}-e457b5a2e4d86bd1-1");
        let pairs = [
            ("b3", b3.as_str()),
            ("traceparent", TP),
            ("tracestate", "foo=1"),
        ];
        let out = apply(&pairs, &plan(r#"{"extract":["b3","w3c"]}"#, &pairs));
        assert_eq!(one(&out, "tracestate"), "foo=1");
        // From B3 with another trace id: removed.
        let pairs = [
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("traceparent", TP),
            ("tracestate", "foo=1"),
        ];
        let out = apply(&pairs, &plan(r#"{"extract":["b3","w3c"]}"#, &pairs));
        assert!(get(&out, "tracestate").is_empty());
    }

    #[test]
    fn tracestate_is_truncated_to_the_limit() {
        let members: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "v".repeat(30)))
            .collect();
        let value = members.join(",");
        assert_eq!(value.len(), 30 * 34 + 29);
        let pairs = [("traceparent", TP), ("tracestate", value.as_str())];
        let out = apply(&pairs, &plan("{}", &pairs));
        let ts = one(&out, "tracestate");
        assert!(ts.len() <= 512);
        assert_eq!(
            ts,
            members[..14].join(","),
            "14 × 34 + 13 = 489; 15 would be 524"
        );
        let out = apply(&pairs, &plan(r#"{"tracestate_max_length":2048}"#, &pairs));
        assert_eq!(one(&out, "tracestate"), value);
        // Repeats are dropped before the limit is applied: 14 distinct members and 16 repeats
        // (1,049 bytes as sent) keep all 14 (489 bytes), nothing truncated.
        let repeated: Vec<&str> = members[..14]
            .iter()
            .chain(&members[..14])
            .chain(&members[..2])
            .map(String::as_str)
            .collect();
        assert_eq!(repeated.len(), 30);
        let value = repeated.join(",");
        assert_eq!(value.len(), 30 * 34 + 29);
        let pairs = [("traceparent", TP), ("tracestate", value.as_str())];
        let out = apply(&pairs, &plan("{}", &pairs));
        assert_eq!(one(&out, "tracestate"), members[..14].join(","));
    }

    #[test]
    fn clear_extracted_removes_other_formats() {
        let pairs = [
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
            ("x-b3-flags", "0"),
        ];
        let out = apply(&pairs, &plan(r#"{"clear_extracted":true}"#, &pairs));
        let names: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["traceparent", "tracestate"]);
        // Without it, the other formats stay as they came.
        let out = apply(&pairs, &plan("{}", &pairs));
        assert_eq!(out.len(), pairs.len());
        assert_eq!(one(&out, "b3"), pairs[2].1);
        // Formats not in `extract` are not cleared.
        let out = apply(
            &pairs,
            &plan(r#"{"extract":["w3c"],"clear_extracted":true}"#, &pairs),
        );
        assert_eq!(out.len(), pairs.len());
        // B3 only: W3C headers go.
        let out = apply(
            &pairs,
            &plan(r#"{"inject":["b3"],"clear_extracted":true}"#, &pairs),
        );
        let names: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["b3"]);
    }

    #[test]
    fn baggage_is_bounded() {
        let big: Vec<String> = (0..70).map(|i| format!("k{i}=v")).collect();
        let joined = big.join(",");
        let pairs = [("traceparent", TP), ("baggage", joined.as_str())];
        let out = apply(&pairs, &plan("{}", &pairs));
        assert_eq!(one(&out, "baggage"), big[..64].join(","));
        let pairs = [("baggage", "a=1"), ("baggage", "b=2")];
        let p = plan("{}", &pairs);
        assert!(p.writes.iter().all(|w| !matches!(
            w,
            OwnedWrite::Set("baggage", _) | OwnedWrite::Remove("baggage")
        )));
    }

    #[test]
    fn metric_names() {
        let names = [
            Outcome::Extracted(Format::W3c),
            Outcome::Extracted(Format::B3),
            Outcome::Extracted(Format::B3Multi),
            Outcome::RestartedInvalid,
            Outcome::Started,
        ]
        .map(Outcome::metric_name);
        assert_eq!(
            names,
            [
                "gatewasm_trace_propagation_extracted_w3c",
                "gatewasm_trace_propagation_extracted_b3",
                "gatewasm_trace_propagation_extracted_b3multi",
                "gatewasm_trace_propagation_restarted_invalid",
                "gatewasm_trace_propagation_started",
            ]
        );
        assert_eq!(METRIC_SAMPLED, "gatewasm_trace_propagation_sampled");
    }

    #[test]
    fn worst_case_writes() {
        // The most writes one request can need: a valid traceparent (W3C wins, span role so
        // there is a parent), everything else duplicated, every format injected, baggage over
        // the limits. 1 traceparent + 2 tracestate + 2 b3 + 9 x-b3-* + 2 baggage = 16.
        let big = "k=v,".repeat(100);
        let mut pairs: Vec<(&str, &str)> = vec![
            ("traceparent", TP),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ];
        for _ in 0..2 {
            pairs.extend([
                ("b3", "x"),
                ("x-b3-traceid", "x"),
                ("x-b3-spanid", "x"),
                ("x-b3-parentspanid", "x"),
                ("x-b3-sampled", "x"),
                ("x-b3-flags", "x"),
                ("baggage", big.as_str()),
            ]);
        }
        let p = plan(
            r#"{"inject":["w3c","b3","b3multi"],"clear_extracted":true}"#,
            &pairs,
        );
        assert_eq!(p.writes.len(), MAX_WRITES);
        let out = apply(&pairs, &p);
        for name in [
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "baggage",
        ] {
            one(&out, name);
        }
        assert!(get(&out, "x-b3-flags").is_empty());
    }
}
