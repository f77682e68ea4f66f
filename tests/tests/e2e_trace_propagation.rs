//! End-to-end: trace-propagation in a real Envoy, as configured in `envoy-configs/gateway.yaml`
//! (extract W3C, B3 single and multi; inject W3C; role span; clear_extracted; echo x-trace-id)
//! and in `istio-ecds.yaml` (delivered by ECDS; passthrough; inject W3C and B3 multi).
//! The gateway tests also run on the same gateway over gatewasm.wasm, `gateway-bundle.yaml` and
//! `gateway-chain.yaml` (`gateway_shapes!`).
//!
//! Needs `just build` and `just envoy`; `just test-e2e` does both.

use anyhow::{Result, ensure};
use gatewasm_tests::client::{self, Request, Response};
use gatewasm_tests::echo::{EchoUpstream, Echoed};
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};
use gatewasm_tests::gateway_shapes;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// `config`: gateway.yaml or one of its shapes (gateway-bundle.yaml, gateway-chain.yaml).
fn gateway(config: &str, upstream: &EchoUpstream) -> Result<Envoy> {
    EnvoyBuilder::new(config).upstream(upstream.port()).start()
}

fn stat(envoy: &Envoy, name: &str) -> Result<u64> {
    envoy.counter(&format!("wasmcustom.gatewasm_trace_propagation_{name}"))
}

/// The one traceparent the upstream saw, split into (version, trace id, parent id, flags).
fn traceparent(resp: &Response) -> Result<(String, String, String, String)> {
    ensure!(
        resp.status == 200,
        "status {}: {}",
        resp.status,
        resp.text()
    );
    let echoed = Echoed::from_response(resp)?;
    let all = echoed.header_all("traceparent");
    ensure!(all.len() == 1, "upstream saw traceparent {all:?}");
    let parts: Vec<&str> = all[0].split('-').collect();
    ensure!(parts.len() == 4, "malformed traceparent {:?}", all[0]);
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    ensure!(
        parts[0] == "00"
            && lower_hex(parts[1], 32)
            && lower_hex(parts[2], 16)
            && lower_hex(parts[3], 2),
        "invalid traceparent sent upstream: {:?}",
        all[0]
    );
    ensure!(
        parts[1] != "0".repeat(32) && parts[2] != "0".repeat(16),
        "all-zero id upstream: {:?}",
        all[0]
    );
    Ok((
        parts[0].into(),
        parts[1].into(),
        parts[2].into(),
        parts[3].into(),
    ))
}

fn a_w3c_caller_keeps_its_trace_and_every_request_gets_a_new_parent(config: &str) -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = gateway(config, &upstream)?;
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let mut parents = Vec::new();
    for _ in 0..3 {
        let resp = client::send(
            envoy.listen_addr(),
            &Request::get("/")
                .header("traceparent", &incoming)
                .header("tracestate", "vendor=abc"),
        )?;
        let (_, trace, parent, flags) = traceparent(&resp)?;
        ensure!(trace == TRACE, "trace id changed to {trace}");
        ensure!(parent != PARENT, "role span must send a new parent id");
        ensure!(flags == "01", "sampled flag lost: {flags}");
        ensure!(
            resp.header("x-trace-id") == Some(TRACE),
            "client got {:?}",
            resp.headers
        );
        ensure!(Echoed::from_response(&resp)?.header("tracestate") == Some("vendor=abc"));
        parents.push(parent);
    }
    parents.sort();
    parents.dedup();
    ensure!(parents.len() == 3, "parent ids repeat: {parents:?}");
    ensure!(stat(&envoy, "extracted_w3c")? == 3);
    Ok(())
}
gateway_shapes!(a_w3c_caller_keeps_its_trace_and_every_request_gets_a_new_parent);

fn a_b3_caller_is_converted_to_w3c_and_its_b3_headers_are_cleared(config: &str) -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = gateway(config, &upstream)?;
    // 64-bit B3 trace id: left-padded to 128 bits for W3C.
    let resp = client::send(
        envoy.listen_addr(),
        &Request::get("/")
            .header("x-b3-traceid", "a3ce929d0e0e4736")
            .header("x-b3-spanid", PARENT)
            .header("x-b3-sampled", "1"),
    )?;
    let (_, trace, _, flags) = traceparent(&resp)?;
    ensure!(
        trace == format!("{}a3ce929d0e0e4736", "0".repeat(16)),
        "trace {trace}"
    );
    ensure!(flags == "01");
    let echoed = Echoed::from_response(&resp)?;
    for h in ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "b3"] {
        ensure!(echoed.header(h).is_none(), "{h} reached the upstream");
    }
    // Single-header B3.
    let resp = client::send(
        envoy.listen_addr(),
        &Request::get("/").header("b3", format!("{TRACE}-{PARENT}-0")),
    )?;
    let (_, trace, _, flags) = traceparent(&resp)?;
    ensure!(
        trace == TRACE && flags == "00",
        "b3 single: {trace} {flags}"
    );
    ensure!(stat(&envoy, "extracted_b3multi")? == 1 && stat(&envoy, "extracted_b3")? == 1);
    Ok(())
}
gateway_shapes!(a_b3_caller_is_converted_to_w3c_and_its_b3_headers_are_cleared);

fn invalid_or_missing_contexts_start_a_new_trace(config: &str) -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = gateway(config, &upstream)?;
    let uppercase = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    for bad in [
        uppercase.as_str(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-xyz",
    ] {
        let resp = client::send(
            envoy.listen_addr(),
            &Request::get("/")
                .header("traceparent", bad)
                .header("tracestate", "a=b"),
        )?;
        let (_, trace, _, _) = traceparent(&resp)?;
        ensure!(trace != TRACE, "invalid {bad} was continued");
        ensure!(
            Echoed::from_response(&resp)?.header("tracestate").is_none(),
            "tracestate of an invalid parent forwarded"
        );
    }
    // Duplicated traceparent headers: restart too.
    let resp = client::send(
        envoy.listen_addr(),
        &Request::get("/")
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01")),
    )?;
    let (_, trace, _, _) = traceparent(&resp)?;
    ensure!(trace != TRACE, "duplicated traceparent was continued");
    let resp = client::send(envoy.listen_addr(), &Request::get("/"))?;
    traceparent(&resp)?;
    ensure!(
        stat(&envoy, "restarted_invalid")? == 5,
        "restarted_invalid {}",
        stat(&envoy, "restarted_invalid")?
    );
    ensure!(stat(&envoy, "started")? == 1);
    Ok(())
}
gateway_shapes!(invalid_or_missing_contexts_start_a_new_trace);

#[test]
fn istio_ecds_delivers_trace_propagation_in_passthrough() -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("istio-ecds.yaml")
        .upstream(upstream.port())
        .start()?;
    let name = "extensions.istio.io/wasmplugin/gatewasm.trace-propagation";
    ensure!(
        envoy.counter(&format!(
            "extension_config_discovery.http_filter.{name}.update_success"
        ))? == 1
    );
    let resp = client::send(
        envoy.listen_addr(),
        &Request::get("/").header("traceparent", format!("00-{TRACE}-{PARENT}-01")),
    )?;
    let (_, trace, parent, _) = traceparent(&resp)?;
    ensure!(
        trace == TRACE && parent == PARENT,
        "passthrough changed the ids: {trace} {parent}"
    );
    let echoed = Echoed::from_response(&resp)?;
    ensure!(
        echoed.header("x-b3-traceid") == Some(TRACE)
            && echoed.header("x-b3-spanid") == Some(PARENT),
        "b3multi not injected: {:?}",
        resp.text()
    );
    Ok(())
}

/// `envoy-configs/sidecar.yaml`: the sidecar passes a B3 caller's context through unchanged,
/// as W3C and as B3 multi-header, after correlation-id.
#[test]
fn the_sidecar_passes_a_b3_callers_context_through() -> Result<()> {
    let app = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("sidecar.yaml")
        .upstream(app.port())
        .start()?;
    let resp = client::send(
        envoy.listen_addr(),
        &Request::get("/")
            .header("x-b3-traceid", TRACE)
            .header("x-b3-spanid", PARENT)
            .header("x-b3-sampled", "1"),
    )?;
    let (_, trace, parent, flags) = traceparent(&resp)?;
    ensure!(
        trace == TRACE && parent == PARENT && flags == "01",
        "passthrough changed the context: {trace} {parent} {flags}"
    );
    let echoed = Echoed::from_response(&resp)?;
    ensure!(
        echoed.header("x-b3-traceid") == Some(TRACE)
            && echoed.header("x-b3-spanid") == Some(PARENT),
        "{:?}",
        echoed.headers
    );
    ensure!(
        echoed.header("x-request-id").is_some(),
        "{:?}",
        echoed.headers
    );
    ensure!(envoy.counter("wasmcustom.gatewasm_trace_propagation_extracted_b3multi")? == 1);
    Ok(())
}
