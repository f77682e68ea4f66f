//! End-to-end: the correlation-id filter in a real Envoy, configured by
//! `envoy-configs/gateway.yaml` (rendered only for ports and paths). Every test runs on
//! gateway.yaml and on the same gateway over gatewasm.wasm, `gateway-bundle.yaml` and
//! `gateway-chain.yaml` (`gateway_shapes!`: tests `<name>::gateway_yaml`, `::gateway_bundle_yaml`,
//! `::gateway_chain_yaml`).
//!
//! Needs `just build` (the .wasm) and `just envoy` (the binary); `just test-e2e` does both.
//! Every test starts its own Envoy and echo upstream, so counters start at zero and tests run
//! in parallel.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gatewasm_tests::client::{self, Request, Response};
use gatewasm_tests::echo::{EchoUpstream, Echoed};
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};
use gatewasm_tests::gateway_shapes;

const GENERATED: &str = "gatewasm_correlation_id_generated";
const PRESERVED: &str = "gatewasm_correlation_id_preserved";
const REPLACED: &str = "gatewasm_correlation_id_replaced_invalid";

/// Envoy shows a Wasm filter's custom metric `name` in `/stats` as `wasmcustom.<name>`.
fn stat(envoy: &Envoy, metric: &str) -> Result<u64> {
    envoy.counter(&format!("wasmcustom.{metric}"))
}

/// `config`: gateway.yaml or one of its shapes (see the module docs).
fn gateway(config: &str, upstream: &EchoUpstream) -> Result<Envoy> {
    EnvoyBuilder::new(config).upstream(upstream.port()).start()
}

/// Parses `id` as a UUID of `version` (gateway.yaml configures `uuid4`).
fn assert_uuid(id: &str, version: usize) -> Result<()> {
    let uuid = uuid::Uuid::parse_str(id).with_context(|| format!("'{id}' is not a UUID"))?;
    ensure!(
        id.len() == 36 && id == uuid.hyphenated().to_string(),
        "'{id}' is not a lowercase hyphenated UUID"
    );
    ensure!(
        uuid.get_version_num() == version,
        "'{id}' is UUID v{}, expected v{version}",
        uuid.get_version_num()
    );
    Ok(())
}

/// The one x-request-id the upstream saw and the one the client got back; they must agree.
fn ids_through(resp: &Response) -> Result<String> {
    ensure!(
        resp.status == 200,
        "status {}: {}",
        resp.status,
        resp.text()
    );
    let echoed = Echoed::from_response(resp)?;
    let upstream = echoed.header_all("x-request-id");
    ensure!(
        upstream.len() == 1,
        "upstream saw {} x-request-id headers: {upstream:?}",
        upstream.len()
    );
    let downstream = resp.header_all("x-request-id");
    ensure!(
        downstream == upstream,
        "client got x-request-id {downstream:?}, upstream saw {upstream:?}"
    );
    Ok(upstream[0].to_string())
}

fn generates_an_id_when_none_is_sent(config: &str) -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = gateway(config, &upstream)?;

    let resp = client::send(envoy.listen_addr(), &Request::get("/hello"))?;
    let id = ids_through(&resp)?;
    assert_uuid(&id, 4)?;

    let again = ids_through(&client::send(envoy.listen_addr(), &Request::get("/hello"))?)?;
    ensure!(again != id, "two requests got the same ID {id}");

    ensure!(stat(&envoy, GENERATED)? == 2, "generated counter");
    ensure!(stat(&envoy, PRESERVED)? == 0, "preserved counter");
    ensure!(stat(&envoy, REPLACED)? == 0, "replaced_invalid counter");
    Ok(())
}
gateway_shapes!(generates_an_id_when_none_is_sent);

fn keeps_a_valid_incoming_id_end_to_end(config: &str) -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = gateway(config, &upstream)?;

    let valid = [
        "order-42.retry:1".to_string(),
        "0b4f6c2e-5b9a-4f7e-9a1d-3c2b1a0f9e8d".to_string(),
        "Z".to_string(),
        // Exactly max_length (128) bytes of the allowed charset.
        "A-b_c.d:9".repeat(14) + "xy",
    ];
    for id in &valid {
        ensure!(id.len() <= 128);
        let resp = client::send(
            envoy.listen_addr(),
            &Request::get("/hello").header("x-request-id", id),
        )?;
        let seen = ids_through(&resp)?;
        ensure!(&seen == id, "sent {id}, upstream and client saw {seen}");
    }
    ensure!(
        stat(&envoy, PRESERVED)? == valid.len() as u64,
        "preserved counter"
    );
    ensure!(stat(&envoy, GENERATED)? == 0, "generated counter");
    ensure!(stat(&envoy, REPLACED)? == 0, "replaced_invalid counter");
    Ok(())
}
gateway_shapes!(keeps_a_valid_incoming_id_end_to_end);

fn replaces_invalid_incoming_ids(config: &str) -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = gateway(config, &upstream)?;

    let long = "a".repeat(129);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("a space", vec!["bad id"]),
        ("a double quote", vec!["\"quoted\""]),
        ("129 characters", vec![long.as_str()]),
        ("non-ASCII", vec!["caf\u{e9}"]),
        ("a comma", vec!["a,b"]),
        ("a duplicated header", vec!["first-id", "second-id"]),
    ];
    for (what, values) in &cases {
        let mut req = Request::get("/hello");
        for v in values {
            req = req.header("x-request-id", v);
        }
        let resp = client::send(envoy.listen_addr(), &req)?;
        let id = ids_through(&resp).with_context(|| format!("incoming ID with {what}"))?;
        assert_uuid(&id, 4).with_context(|| format!("incoming ID with {what}"))?;
        ensure!(!values.contains(&id.as_str()), "{what}: kept {id}");
    }
    ensure!(
        stat(&envoy, REPLACED)? == cases.len() as u64,
        "replaced_invalid counter: {} for {} invalid IDs",
        stat(&envoy, REPLACED)?,
        cases.len()
    );
    ensure!(stat(&envoy, PRESERVED)? == 0, "preserved counter");
    ensure!(stat(&envoy, GENERATED)? == 0, "generated counter");
    Ok(())
}
gateway_shapes!(replaces_invalid_incoming_ids);

fn local_replies_carry_the_id(config: &str) -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = gateway(config, &upstream)?;

    // 401 sent by a filter *after* correlation-id (the Lua filter on /local-reply).
    let resp = client::send(envoy.listen_addr(), &Request::get("/local-reply"))?;
    ensure!(
        resp.status == 401,
        "status {}: {}",
        resp.status,
        resp.text()
    );
    let ids = resp.header_all("x-request-id");
    ensure!(ids.len() == 1, "401 carries x-request-id {ids:?}");
    assert_uuid(ids[0], 4)?;

    // The same with a valid incoming ID: the reply carries that one.
    let resp = client::send(
        envoy.listen_addr(),
        &Request::get("/local-reply").header("x-request-id", "client-id-1"),
    )?;
    ensure!(resp.status == 401, "status {}", resp.status);
    ensure!(
        resp.header_all("x-request-id") == ["client-id-1"],
        "{:?}",
        resp.headers
    );

    // A direct_response from the router.
    let resp = client::send(envoy.listen_addr(), &Request::get("/healthz"))?;
    ensure!(
        resp.status == 200 && resp.text() == "ok\n",
        "status {}: {}",
        resp.status,
        resp.text()
    );
    let ids = resp.header_all("x-request-id");
    ensure!(
        ids.len() == 1,
        "direct response carries x-request-id {ids:?}"
    );
    assert_uuid(ids[0], 4)?;

    ensure!(
        upstream.requests_seen() == 0,
        "local replies reached the upstream"
    );
    ensure!(stat(&envoy, GENERATED)? == 2, "generated counter");
    ensure!(stat(&envoy, PRESERVED)? == 1, "preserved counter");
    Ok(())
}
gateway_shapes!(local_replies_carry_the_id);

fn upstream_failure_reply_carries_the_id(config: &str) -> Result<()> {
    // No upstream listening: the router answers 503 itself.
    let envoy = EnvoyBuilder::new(config).start()?;
    let resp = client::send(envoy.listen_addr(), &Request::get("/hello"))?;
    ensure!(
        resp.status == 503,
        "status {}: {}",
        resp.status,
        resp.text()
    );
    let ids = resp.header_all("x-request-id");
    ensure!(ids.len() == 1, "503 carries x-request-id {ids:?}");
    assert_uuid(ids[0], 4)?;
    Ok(())
}
gateway_shapes!(upstream_failure_reply_carries_the_id);

fn ids_are_unique_across_10000_requests_on_two_workers(config: &str) -> Result<()> {
    const REQUESTS: usize = 10_000;
    const CONNECTIONS: usize = 16;
    let upstream = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new(config)
        .upstream(upstream.port())
        .concurrency(2)
        .start()?;

    let started = Instant::now();
    let responses = client::send_burst(
        envoy.listen_addr(),
        REQUESTS,
        CONNECTIONS,
        Duration::from_secs(120),
        |i| Request::get(&format!("/burst/{i}")),
    )?;
    let elapsed = started.elapsed();
    eprintln!("{REQUESTS} requests over {CONNECTIONS} connections in {elapsed:?}");

    let mut ids = HashSet::with_capacity(REQUESTS);
    for (i, resp) in responses.iter().enumerate() {
        let id = ids_through(resp).with_context(|| format!("request {i}"))?;
        assert_uuid(&id, 4).with_context(|| format!("request {i}"))?;
        ensure!(ids.insert(id.clone()), "duplicate ID {id} (request {i})");
    }
    ensure!(ids.len() == REQUESTS);
    ensure!(
        upstream.requests_seen() == REQUESTS as u64,
        "upstream saw {}",
        upstream.requests_seen()
    );
    ensure!(
        stat(&envoy, GENERATED)? == REQUESTS as u64,
        "generated counter is {}, expected {REQUESTS}",
        stat(&envoy, GENERATED)?
    );

    // Both workers (so both Wasm VMs, seeded separately) took connections.
    let per_worker = envoy.stats_matching(".downstream_cx_total")?;
    let busy: Vec<_> = per_worker
        .iter()
        .filter(|(n, v)| n.starts_with("listener.") && n.contains(".worker_") && *v > 0)
        .collect();
    ensure!(
        busy.len() == 2,
        "expected connections on 2 workers: {per_worker:?}"
    );
    Ok(())
}
gateway_shapes!(ids_are_unique_across_10000_requests_on_two_workers);
