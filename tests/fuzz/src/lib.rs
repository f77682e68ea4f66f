//! Fuzz targets for every parser of gatewasm that takes outside input: request headers
//! (traceparent, tracestate, b3, baggage, correlation IDs, hosts, paths, query strings,
//! x-forwarded-for, peer addresses, JWTs: header, payload and signature segments), JWKS
//! documents from identity providers, and every filter's plugin configuration JSON.
//!
//! Each target is a plain function of the input bytes that must not panic and checks the
//! parser's invariants with `assert!` (an invariant broken is a bug, which the fuzzer reports
//! like a crash). The same functions run three ways:
//! - `just fuzz TARGET [SECONDS]`: libFuzzer (`cargo fuzz`, binaries in `fuzz_targets/`);
//! - `cargo test -p gatewasm-fuzz`: each target on the checked-in corpus (`corpus/<target>/`,
//!   the seeds plus whatever fuzzing found worth keeping) and on a bounded number of random
//!   inputs (proptest, fixed seed), so CI catches regressions on the stable toolchain;
//! - by name through [`TARGETS`].
//!
//! Filter modules compile natively without their proxy-wasm glue, so this is the pure logic
//! the filters run per request.

// These are test oracles: a failed assertion is how a target reports a bug to the fuzzer.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use trace_propagation::{b3, baggage, w3c};

/// A fuzz target: the input bytes in, a panic out when it finds a bug.
pub type Target = fn(&[u8]);

/// Every target, by name (the `fuzz_targets/<name>.rs` binary and `corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("traceparent", traceparent),
    ("tracestate", tracestate),
    ("b3", b3_headers),
    ("baggage", baggage_fields),
    ("correlation_id", correlation_id),
    ("tenant_host", tenant_host),
    ("tenant_path", tenant_path),
    ("client_ip", client_ip),
    ("config_json", config_json),
    ("jwt", jwt),
    ("jwks", jwks),
];

/// The input split into header field values at `\n` (several fields of one header).
fn fields(data: &[u8]) -> Vec<&[u8]> {
    data.split(|&b| b == b'\n').collect()
}

/// `traceparent`: a valid one has non-zero ids; re-parsing what it says gives the same.
pub fn traceparent(data: &[u8]) {
    if let Ok(tp) = w3c::parse_traceparent(data) {
        assert!(tp.trace_id != 0 && tp.parent_id != 0, "zero id accepted");
        assert!(tp.version != 0xff, "version ff accepted");
        let canonical = format!(
            "00-{:032x}-{:016x}-{:02x}",
            tp.trace_id, tp.parent_id, tp.flags
        );
        let again = w3c::parse_traceparent(canonical.as_bytes())
            .unwrap_or_else(|e| panic!("canonical form {canonical} rejected: {e:?}"));
        assert_eq!(
            (again.trace_id, again.parent_id, again.flags),
            (tp.trace_id, tp.parent_id, tp.flags)
        );
    }
}

/// `tracestate`: at most 32 members; the rendered form re-parses to the same members;
/// truncation respects its bound.
pub fn tracestate(data: &[u8]) {
    let Ok(mut state) = w3c::TraceState::parse(fields(data)) else {
        return;
    };
    assert!(state.count() <= 32);
    let rendered = state.render();
    let again = w3c::TraceState::parse([rendered.as_slice()])
        .unwrap_or_else(|e| panic!("rendered tracestate rejected: {e:?}"));
    assert_eq!(again.count(), state.count());
    let max = 512;
    state.truncate(max);
    assert!(
        state.combined_len() <= max,
        "truncate left {}",
        state.combined_len()
    );
    assert!(state.render().len() <= max);
}

/// `b3` single header and the `X-B3-*` multi headers (first five fields of the input).
pub fn b3_headers(data: &[u8]) {
    let _ = b3::parse_single(data);
    let f = fields(data);
    let get = |i: usize| f.get(i).copied().filter(|v| !v.is_empty());
    let multi = b3::MultiHeaders {
        trace_id: get(0),
        span_id: get(1),
        parent_span_id: get(2),
        sampled: get(3),
        flags: get(4),
    };
    if let (Ok(Some(_)), Some(id)) = (b3::parse_multi(&multi), multi.trace_id) {
        // An accepted trace id is 16 or 32 hex digits (surrounding whitespace aside).
        let id = id.trim_ascii();
        assert!(
            matches!(id.len(), 16 | 32) && id.iter().all(u8::is_ascii_hexdigit),
            "accepted X-B3-TraceId {id:?}"
        );
    }
}

/// `baggage`: when the filter rewrites the header, the result is within the W3C limits.
pub fn baggage_fields(data: &[u8]) {
    let f = fields(data);
    if let baggage::BaggagePlan::Replace(value) = baggage::bound(f.iter().copied()) {
        assert!(value.len() <= 8192, "baggage of {} bytes", value.len());
        assert!(value.split(|&b| b == b',').count() <= 64);
        assert!(!value.is_empty());
    }
}

/// Correlation IDs: an accepted ID is at most `max_length` visible-ASCII bytes.
pub fn correlation_id(data: &[u8]) {
    let Some((&first, id)) = data.split_first() else {
        return;
    };
    let max = usize::from(first).max(1);
    if correlation_id::incoming::validate_id(id, max).is_ok() {
        assert!(!id.is_empty() && id.len() <= max);
        assert!(id.iter().all(|b| (0x21..=0x7e).contains(b)), "{id:?}");
    }
}

/// Hosts: normalisation gives a lowercase host without port or trailing dot; a host pattern
/// only ever yields one label.
pub fn tenant_host(data: &[u8]) {
    use tenant_routing::pattern::{HostPattern, HostRule, normalize_host};
    let Some(host) = normalize_host(data) else {
        return;
    };
    assert!(!host.iter().any(u8::is_ascii_uppercase), "{host:?}");
    assert!(!host.ends_with(b"."));
    let pattern = HostPattern::parse("{tenant}.api.example.com").unwrap();
    if let Some(label) = pattern.matches(&host) {
        assert!(!label.is_empty() && !label.contains(&b'.'), "{label:?}");
        assert!(host.ends_with(b".api.example.com"));
    }
    let rule = HostRule::parse("*.acme.example.com").unwrap();
    if rule.allows(&host) {
        assert!(host.ends_with(b".acme.example.com"));
    }
}

/// Paths: the `{tenant}` segment, stripping and query parameters never panic; a stripped
/// path still starts with `/`.
pub fn tenant_path(data: &[u8]) {
    use tenant_routing::pattern::{PathPattern, percent_decode, query_values, strip_prefix};
    let _ = percent_decode(data);
    let pattern = PathPattern::parse("/t/{tenant}/").unwrap();
    if let Some(m) = pattern.matches(data) {
        assert!(m.rest <= data.len());
        let stripped = strip_prefix(data, m.rest);
        assert!(stripped.starts_with(b"/"), "{stripped:?}");
    }
    for value in query_values(data, "tenant") {
        let _ = tenant_routing::pattern::is_valid_tenant_id(&value);
    }
}

/// Client IPs: the peer address and the N-th entry from the right of x-forwarded-for.
pub fn client_ip(data: &[u8]) {
    use rate_limit::key::{peer_ip, xff_ip};
    let _ = peer_ip(data);
    let Some((&hops, rest)) = data.split_first() else {
        return;
    };
    let f = fields(rest);
    let hops = u32::from(hops % 8) + 1;
    if let Some(ip) = xff_ip(f.iter().copied(), hops) {
        // The address came from the header's text.
        let text = ip.to_string();
        let haystack = String::from_utf8_lossy(rest).to_ascii_lowercase();
        assert!(
            haystack.contains(&text) || ip.is_ipv6(),
            "{ip} not in the header"
        );
    }
}

/// Plugin configurations: every filter's parser on the same bytes; nothing panics, and an
/// accepted configuration is accepted again (parsing is deterministic).
pub fn config_json(data: &[u8]) {
    let ok = [
        correlation_id::config::parse_settings(Some(data)).is_ok(),
        trace_propagation::config::parse_settings(Some(data)).is_ok(),
        tenant_routing::config::parse_settings(Some(data)).is_ok(),
        rate_limit::config::parse_settings(Some(data)).is_ok(),
        jwt_to_header::config::parse_settings(Some(data)).is_ok(),
    ];
    let again = [
        correlation_id::config::parse_settings(Some(data)).is_ok(),
        trace_propagation::config::parse_settings(Some(data)).is_ok(),
        tenant_routing::config::parse_settings(Some(data)).is_ok(),
        rate_limit::config::parse_settings(Some(data)).is_ok(),
        jwt_to_header::config::parse_settings(Some(data)).is_ok(),
    ];
    assert_eq!(ok, again);
}

/// JWTs: a token that parses has a signing input that is exactly its first two segments, and
/// its time claims never panic the checks.
pub fn jwt(data: &[u8]) {
    use jwt_to_header::{claims, token};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = token::parse(text) {
        assert!(text.starts_with(parsed.signing_input));
        assert_eq!(parsed.signing_input.matches('.').count(), 1);
        assert!(parsed.signing_input.ends_with(parsed.payload_b64));
        if let Ok(times) = claims::times(&parsed.claims) {
            let _ = claims::check_times(times, 1_767_225_600, 60);
            let _ = claims::check_times(times, i64::MAX, i64::MAX);
            let _ = claims::check_times(times, i64::MIN, 0);
        }
        let _ = claims::scopes(&parsed.claims);
    }
}

/// JWKS documents: whatever an IdP (or an attacker in its place) serves parses or is refused,
/// never panics; every key it keeps accepts only algorithms of its own kind.
pub fn jwks(data: &[u8]) {
    use jwt_to_header::jwk::{Alg, AlgSet, parse_jwks_bytes};
    let Ok(set) = parse_jwks_bytes(data) else {
        return;
    };
    for key in &set.keys {
        for alg in Alg::ALL {
            if key.binds(alg) {
                assert!(
                    AlgSet::for_kind(key.material.kind()).contains(alg),
                    "a {:?} key accepts {}",
                    key.material.kind(),
                    alg.name()
                );
            }
        }
    }
    // Whatever a provider allows keys without `alg` to serve, a candidate binds the algorithm.
    let everything = AlgSet::asymmetric().union(AlgSet::undeclared_default());
    for undeclared in [AlgSet::undeclared_default(), everything, AlgSet::EMPTY] {
        for alg in Alg::ALL {
            for key in set.candidates(alg, None, undeclared) {
                assert!(
                    key.binds(alg) && (key.alg.is_some() || undeclared.contains(alg)),
                    "candidate for {} that refuses it",
                    alg.name()
                );
            }
        }
    }
}

/// The checked-in corpus of `target` (`corpus/<target>/`).
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                out.push((entry.file_name().to_string_lossy().into_owned(), bytes));
            }
        }
    }
    out.sort();
    out
}
