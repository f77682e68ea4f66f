//! Property tests (native, on the pure logic): any bytes as `traceparent`, `tracestate`, `b3`,
//! `X-B3-*` or `baggage` never panic, and what goes upstream is always valid. The output checks
//! here are written independently of the parsers they test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatewasm_common::rng::Xoshiro256pp;
use proptest::prelude::*;
use trace_propagation::b3;
use trace_propagation::config::{Settings, parse_settings};
use trace_propagation::context::Outgoing;
use trace_propagation::propagate::{OwnedWrite, Plan, plan_request};
use trace_propagation::w3c::{self, TraceState};

const NAMES: [&str; 9] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "baggage",
];

fn is_lower_hex(s: &[u8], n: usize) -> bool {
    s.len() == n && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn non_zero_hex(s: &[u8]) -> bool {
    s.iter().any(|&b| b != b'0')
}

/// `00-{32 hex}-{16 hex}-{00|01|02|03}`, ids not all zero.
fn valid_traceparent(v: &[u8]) -> bool {
    let parts: Vec<&[u8]> = v.split(|&b| b == b'-').collect();
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if *version == b"00"
            && is_lower_hex(trace, 32) && non_zero_hex(trace)
            && is_lower_hex(parent, 16) && non_zero_hex(parent)
            && matches!(*flags, b"00" | b"01" | b"02" | b"03"))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A `tracestate` as the spec's ABNF allows it: ≤ 32 members, no duplicate keys, ≤ `max` bytes,
/// at least one member. `strict`: no OWS and no empty members (what the filter renders itself);
/// otherwise both are allowed (a valid header forwarded untouched).
fn valid_tracestate(v: &[u8], max: usize, strict: bool) -> bool {
    if v.len() > max {
        return false;
    }
    let members: Vec<&[u8]> = if strict {
        v.split(|&b| b == b',').collect()
    } else {
        v.split(|&b| b == b',')
            .map(trim_ows)
            .filter(|m| !m.is_empty())
            .collect()
    };
    if members.is_empty() {
        return false;
    }
    let mut keys: Vec<&[u8]> = Vec::new();
    for m in &members {
        let Some(eq) = m.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, value) = (&m[..eq], &m[eq + 1..]);
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && matches!(key[0], b'a'..=b'z' | b'0'..=b'9')
            && key
                .iter()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'));
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && value.last() != Some(&b' ')
            && value
                .iter()
                .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
        if !key_ok || !value_ok || keys.contains(&key) {
            return false;
        }
        keys.push(key);
    }
    members.len() <= 32
}

fn valid_b3_single(v: &[u8]) -> bool {
    let parts: Vec<&[u8]> = v.split(|&b| b == b'-').collect();
    let ids_ok = |trace: &[u8], span: &[u8]| {
        (is_lower_hex(trace, 16) || is_lower_hex(trace, 32))
            && non_zero_hex(trace)
            && is_lower_hex(span, 16)
            && non_zero_hex(span)
    };
    match parts.as_slice() {
        [trace, span, state] => ids_ok(trace, span) && matches!(*state, b"0" | b"1" | b"d"),
        [trace, span, state, parent] => {
            ids_ok(trace, span) && matches!(*state, b"0" | b"1" | b"d") && is_lower_hex(parent, 16)
        }
        _ => false,
    }
}

/// Apply the writes with Envoy's semantics (set = replace all copies; remove = all copies).
fn apply(headers: &[(String, Vec<u8>)], writes: &[OwnedWrite]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    for write in writes {
        match write {
            OwnedWrite::Remove(name) => out.retain(|(k, _)| k != name),
            OwnedWrite::Set(name, value) => {
                out.retain(|(k, _)| k != name);
                out.push((name.to_string(), value.clone()));
            }
        }
    }
    out
}

fn values<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

fn check_upstream(
    settings: &Settings,
    input: &[(String, Vec<u8>)],
    plan: &Plan,
    writes: &[OwnedWrite],
) {
    assert!(writes.len() <= trace_propagation::propagate::MAX_WRITES);
    let out = apply(input, writes);
    if settings.inject.w3c {
        let tp = values(&out, "traceparent");
        assert_eq!(tp.len(), 1);
        assert!(
            valid_traceparent(tp[0]),
            "{:?}",
            String::from_utf8_lossy(tp[0])
        );
        let ts = values(&out, "tracestate");
        assert!(ts.len() <= 1, "{ts:?}");
        if let Some(ts) = ts.first() {
            assert!(
                valid_tracestate(ts, settings.tracestate_max_length, false),
                "{:?}",
                String::from_utf8_lossy(ts)
            );
        }
    }
    if settings.inject.b3 {
        let v = values(&out, "b3");
        assert_eq!(v.len(), 1);
        assert!(valid_b3_single(v[0]), "{:?}", String::from_utf8_lossy(v[0]));
    }
    if settings.inject.b3multi {
        let trace = values(&out, "x-b3-traceid");
        let span = values(&out, "x-b3-spanid");
        assert_eq!((trace.len(), span.len()), (1, 1));
        assert!(is_lower_hex(trace[0], 16) || is_lower_hex(trace[0], 32));
        assert!(non_zero_hex(trace[0]));
        assert!(is_lower_hex(span[0], 16) && non_zero_hex(span[0]));
        let parent = values(&out, "x-b3-parentspanid");
        assert!(parent.len() <= 1 && parent.iter().all(|p| is_lower_hex(p, 16)));
        let sampled = values(&out, "x-b3-sampled");
        let flags = values(&out, "x-b3-flags");
        match (sampled.as_slice(), flags.as_slice()) {
            ([s], []) => assert!(matches!(*s, b"0" | b"1")),
            ([], [f]) => assert_eq!(*f, b"1"),
            other => panic!("{other:?}"),
        }
    }
    let baggage = values(&out, "baggage");
    let total: usize =
        baggage.iter().map(|b| b.len()).sum::<usize>() + baggage.len().saturating_sub(1);
    let members = baggage
        .iter()
        .flat_map(|b| b.split(|&c| c == b','))
        .filter(|m| m.iter().any(|c| !matches!(c, b' ' | b'\t')))
        .count();
    assert!(
        members <= 64 && total <= 8192,
        "{members} members, {total} bytes"
    );
    let echo = plan.trace_id.as_bytes();
    assert!(is_lower_hex(echo, 32) || is_lower_hex(echo, 16));
    assert!(non_zero_hex(echo));
}

fn configs() -> impl Strategy<Value = Settings> {
    let formats =
        prop::sample::subsequence(vec!["\"w3c\"", "\"b3\"", "\"b3multi\""], 0..=3).prop_shuffle();
    let inject = prop::sample::subsequence(vec!["\"w3c\"", "\"b3\"", "\"b3multi\""], 1..=3);
    (
        formats,
        inject,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec!["0", "0.5", "1"]),
        any::<bool>(),
    )
        .prop_map(|(extract, inject, span, clear, respect, ratio, parent)| {
            let json = format!(
                r#"{{"extract":[{}],"inject":[{}],"role":"{}","clear_extracted":{clear},
                    "sampling":{{"ratio":{ratio},"respect_incoming":{respect}}},
                    "b3_single_parent_span_id":{parent}}}"#,
                extract.join(","),
                inject.join(","),
                if span { "span" } else { "passthrough" },
            );
            parse_settings(Some(json.as_bytes())).unwrap()
        })
}

/// Header values: arbitrary bytes, or near-valid text for each format.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        "[0-9a-fA-F]{2}-[0-9a-fA-F]{30,34}-[0-9a-f]{15,17}-[0-9a-f]{1,3}(-[ -~]{0,8})?"
            .prop_map(String::into_bytes),
        "[0-9a-f]{16,32}-[0-9a-f]{16}(-[01d]{1,2}(-[0-9a-f]{16})?)?".prop_map(String::into_bytes),
        "([a-z0-9@_*/ -]{1,6}=[ -~]{0,6},?){0,40}".prop_map(String::into_bytes),
        // Mostly valid tracestates, often longer than 512 bytes.
        prop::collection::vec(
            "[a-z][a-z0-9_*/@-]{0,8}=[a-zA-Z0-9+/.:; ]{0,150}[a-z]",
            0..40
        )
        .prop_map(|members| members.join(" , ").into_bytes()),
        "[01d]|true|false|TRUE".prop_map(String::into_bytes),
        Just(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()),
    ]
}

fn header_list() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec((prop::sample::select(NAMES.to_vec()), value()), 0..12).prop_map(
        |pairs| {
            let mut headers = vec![(":path".to_string(), b"/".to_vec())];
            headers.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
            headers
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_headers_give_valid_upstream_headers(
        settings in configs(),
        headers in header_list(),
        seed in any::<[u8; 32]>(),
    ) {
        let mut rng = Xoshiro256pp::from_seed(seed);
        let mut writes = Vec::new();
        let plan = plan_request(&settings, &gatewasm_common::headers::borrow_pairs(&headers), &mut rng, |w| writes.push(OwnedWrite::from(w)));
        check_upstream(&settings, &headers, &plan, &writes);
    }

    #[test]
    fn any_traceparent_parses_to_a_valid_context_or_is_refused(v in value()) {
        if let Ok(tp) = w3c::parse_traceparent(&v) {
            prop_assert!(tp.trace_id != 0 && tp.parent_id != 0 && tp.version != 0xff);
            let out = Outgoing {
                trace_id: tp.trace_id,
                short_trace_id: false,
                span_id: tp.parent_id,
                parent_span_id: None,
                sampled: tp.sampled(),
                debug: false,
                random: tp.random(),
            };
            let rendered = w3c::render_traceparent(&out);
            prop_assert!(valid_traceparent(rendered.as_bytes()));
            let again = w3c::parse_traceparent(rendered.as_bytes()).unwrap();
            prop_assert_eq!(
                (again.trace_id, again.parent_id, again.flags),
                (tp.trace_id, tp.parent_id, tp.flags & w3c::KNOWN_FLAGS)
            );
        }
    }

    #[test]
    fn any_tracestate_is_refused_or_valid_after_truncation(
        fields in prop::collection::vec(value(), 0..4),
        max in 0usize..1200,
    ) {
        if let Ok(mut state) = TraceState::parse(fields.iter().map(Vec::as_slice)) {
            prop_assert!(state.count() <= 32);
            // Repeating every kept key changes nothing: later duplicates are dropped and do not
            // count towards the 32 members.
            let once = state.render();
            let twice = TraceState::parse(
                fields.iter().map(Vec::as_slice).chain([once.as_slice()]),
            )
            .unwrap();
            prop_assert_eq!(twice.render(), once.clone());
            prop_assert_eq!(twice.dropped_duplicates(), state.count() > 0);
            state.truncate(max);
            prop_assert!(state.combined_len() <= max);
            let rendered = state.render();
            prop_assert_eq!(rendered.len(), state.combined_len());
            if !rendered.is_empty() {
                prop_assert!(valid_tracestate(&rendered, max, true));
                let again = TraceState::parse([rendered.as_slice()]).unwrap();
                prop_assert_eq!(again.render(), rendered);
            }
        }
    }

    #[test]
    fn any_b3_single_round_trips(v in value(), with_parent in any::<bool>()) {
        if let Ok(b3::B3Context::Context(e)) = b3::parse_single(&v) {
            let out = Outgoing {
                trace_id: e.trace_id,
                short_trace_id: e.short_trace_id,
                span_id: e.span_id,
                parent_span_id: e.parent_span_id,
                sampled: e.sampling.decided().unwrap_or(false),
                debug: e.sampling == trace_propagation::context::Sampling::Debug,
                random: false,
            };
            let rendered = b3::render_single(&out, with_parent);
            prop_assert!(valid_b3_single(rendered.as_bytes()));
            let again = b3::parse_single(rendered.as_bytes()).unwrap();
            let b3::B3Context::Context(again) = again else { panic!("ids lost") };
            prop_assert_eq!((again.trace_id, again.span_id), (e.trace_id, e.span_id));
        }
    }

    #[test]
    fn valid_traceparents_round_trip(
        trace_id in 1u128..,
        span_id in 1u64..,
        flags in 0u8..4,
    ) {
        let text = format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}");
        let tp = w3c::parse_traceparent(text.as_bytes()).unwrap();
        prop_assert_eq!((tp.trace_id, tp.parent_id, tp.flags), (trace_id, span_id, flags));
    }
}
