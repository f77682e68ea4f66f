//! End-to-end: the rate-limit filter in a real Envoy with two worker threads, as
//! `envoy-configs/ratelimit-gateway.yaml` sets it up (100 requests per minute per client IP,
//! burst 0, client IP = the TCP peer).
//!
//! - 300 fast requests from several concurrent keep-alive connections (spread over both
//!   workers): exactly 100 succeed, the other 200 get 429 with `Retry-After` — the buckets are
//!   shared by the workers' VMs, not one per worker;
//! - a spoofed `x-forwarded-for` does not give a client a new bucket;
//! - the RateLimit headers and the metrics.
//!
//! Needs `just build` and `just envoy`; `just test-e2e` does both.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use gatewasm_tests::client::{self, Request};
use gatewasm_tests::demo_jwt::{DemoClaims, mint};
use gatewasm_tests::echo::{EchoUpstream, Echoed};
use gatewasm_tests::envoy::EnvoyBuilder;
use gatewasm_tests::gateway_shapes;

#[test]
fn exactly_the_limit_across_two_workers_and_spoofed_xff_is_ignored() -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("ratelimit-gateway.yaml")
        .upstream(upstream.port())
        .concurrency(2)
        .start()?;
    let addr = envoy.listen_addr();

    // What Envoy tells the upstream about a loopback client with use_remote_address: true.
    let first = client::send(addr, &Request::get("/hello"))?;
    ensure!(
        first.status == 200,
        "status {}: {}",
        first.status,
        first.text()
    );
    let echoed = Echoed::from_response(&first)?;
    let xff = echoed.header_all("x-forwarded-for");
    eprintln!("upstream saw x-forwarded-for: {xff:?}");
    // One entry, appended by Envoy (use_remote_address: true). For a loopback peer Envoy appends
    // its own non-loopback address, not 127.0.0.1 (conn_manager_utility.cc) — 192.0.2.2 on the
    // machine these tests were written on — while `source.address` stays 127.0.0.1:<port>.
    ensure!(
        xff.len() == 1 && xff[0].parse::<std::net::IpAddr>().is_ok(),
        "x-forwarded-for {xff:?}"
    );
    ensure!(
        first.header("ratelimit-remaining") == Some("99"),
        "{:?}",
        first.headers
    );
    ensure!(
        first.header("ratelimit-policy") == Some("\"per-client\";q=100;w=60"),
        "{:?}",
        first.headers
    );

    // 299 more, as fast as 6 keep-alive connections go (Envoy spreads connections over its
    // two workers). 100 per minute = one token per 0.6 s: if the burst takes longer than that,
    // each elapsed 0.6 s legitimately allows one more.
    let started = Instant::now();
    let responses = client::send_burst(addr, 299, 6, Duration::from_secs(60), |i| {
        // Every request also claims to be someone else: with client_ip from the peer, that
        // changes nothing.
        Request::get(&format!("/burst/{i}"))
            .header("x-forwarded-for", format!("198.51.100.{}", i % 250))
    })?;
    let elapsed = started.elapsed();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for r in &responses {
        *by_status.entry(r.status).or_default() += 1;
        if r.status == 429 {
            let retry: u64 = r.header("retry-after").unwrap_or("").parse()?;
            ensure!((1..=60).contains(&retry), "Retry-After {retry}");
            ensure!(r.header("ratelimit-remaining") == Some("0"));
            ensure!(
                r.header("content-type") == Some("application/json"),
                "{:?}",
                r.headers
            );
            ensure!(r.json()?["error"] == "rate_limited");
        } else {
            ensure!(r.status == 200, "status {}: {}", r.status, r.text());
        }
    }
    let ok = by_status.get(&200).copied().unwrap_or(0) + 1; // + the first request
    let refills = (elapsed.as_millis() / 600) as usize;
    eprintln!("300 requests in {elapsed:?}: {by_status:?} (+1 earlier 200)");
    ensure!(
        ok >= 100 && ok <= 100 + refills,
        "{ok} allowed of 300 in {elapsed:?}; want exactly 100 (+{refills} refills)"
    );
    if refills == 0 {
        ensure!(ok == 100, "{ok} allowed");
    }
    ensure!(upstream.requests_seen() == ok as u64);

    // The bucket is empty: another connection, spoofing XFF, is still the same client.
    let spoofed = client::send(
        addr,
        &Request::get("/again").header("x-forwarded-for", "203.0.113.99"),
    )?;
    ensure!(spoofed.status == 429, "spoofed XFF got {}", spoofed.status);
    ensure!(spoofed.header("retry-after").is_some());

    let allowed = envoy.counter("gatewasm_rate_limit_allowed_per-client")?;
    let denied = envoy.counter("gatewasm_rate_limit_denied_per-client")?;
    ensure!(allowed == ok as u64, "allowed metric {allowed}, saw {ok}");
    ensure!(denied == 301 - ok as u64, "denied metric {denied}");
    let retries = envoy.counter("gatewasm_rate_limit_contention_retries")?;
    let exhausted = envoy.counter("gatewasm_rate_limit_contention_exhausted")?;
    eprintln!("CAS retries {retries}, exhausted {exhausted}");
    ensure!(exhausted == 0);

    // The tables (2 rules × 625 entries) were created once, by the first VM to configure;
    // the other VMs (Envoy runs one per worker, plus one on the main thread) found them.
    let log = envoy.log();
    let created: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rate-limit: created"))
        .collect();
    eprintln!("table creation log lines: {created:?}");
    ensure!(
        created.len() == 1 && created[0].contains("created 1250 shared-data entries"),
        "{created:?}"
    );
    Ok(())
}

/// `envoy-configs/gateway.yaml` (and its bundle and chain shapes, `gateway_shapes!`): rate-limit
/// as the last filter of the edge chain. Only `/api/` is limited (120 a minute per client,
/// burst 20) — and needs a token (jwt-to-header); the token's tenant and the path agree;
/// tenant-routing's stripped path is what rate-limit sees; every answer on `/api/` carries the
/// RateLimit headers; the 429 is a local reply that still carries the chain's request ID;
/// other paths are not limited.
fn the_edge_gateway_limits_api_requests_per_client(config: &str) -> Result<()> {
    let shared = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new(config)
        .upstream(shared.port())
        .upstream2(acme.port())
        .concurrency(2)
        .start()?;
    let addr = envoy.listen_addr();

    // /api/ needs a token (jwt-to-header); the demo IdP's, for tenant acme.
    let token = format!("Bearer {}", mint(&DemoClaims::default())?);
    let unauthenticated = client::send(addr, &Request::get("/t/acme/api/orders"))?;
    ensure!(
        unauthenticated.status == 401,
        "status {}",
        unauthenticated.status
    );
    let started = Instant::now();
    // Through tenant acme's path prefix: rate-limit sees /api/orders after the strip.
    let responses = client::send_burst(addr, 200, 4, Duration::from_secs(60), move |i| {
        Request::get(&format!("/t/acme/api/orders?i={i}")).header("authorization", &token)
    })?;
    let elapsed = started.elapsed();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = responses.iter().filter(|r| r.status == 429).collect();
    ensure!(
        ok + limited.len() == 200,
        "other statuses in {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // Bucket 120 + 20 = 140; one more token each 0.5 s the burst lasted.
    let refills = (elapsed.as_secs_f64() / 0.5).floor() as usize;
    ensure!(
        (140..=140 + refills).contains(&ok),
        "{ok} allowed in {elapsed:?} (want 140 + at most {refills})"
    );
    ensure!(acme.requests_seen() == ok as u64 && shared.requests_seen() == 0);
    // `"headers": "both"`: the IETF draft's and draft 03's, on passes and denials alike.
    for r in &responses {
        for name in [
            "ratelimit-policy",
            "ratelimit",
            "ratelimit-limit",
            "ratelimit-remaining",
        ] {
            ensure!(
                r.header(name).is_some(),
                "{} without {name}: {:?}",
                r.status,
                r.headers
            );
        }
    }
    for r in &limited {
        ensure!(r.header("retry-after").is_some(), "{:?}", r.headers);
        ensure!(
            r.header("x-request-id").is_some(),
            "the chain's ID: {:?}",
            r.headers
        );
    }
    // Outside /api/: not limited, even for the client that just ran dry.
    let resp = client::send(addr, &Request::get("/t/acme/home"))?;
    ensure!(resp.status == 200, "status {}", resp.status);
    ensure!(
        resp.header("ratelimit-policy").is_none(),
        "{:?}",
        resp.headers
    );

    let c = |name: &str| envoy.counter(&format!("wasmcustom.gatewasm_rate_limit_{name}"));
    ensure!(c("allowed_per-client")? == ok as u64);
    ensure!(c("denied_per-client")? == limited.len() as u64);
    // The per-tenant rule allowed what per-client allowed (acme is gold: 10000 a minute).
    ensure!(c("allowed_per-tenant")? == ok as u64);
    Ok(())
}
gateway_shapes!(the_edge_gateway_limits_api_requests_per_client);

/// `envoy-configs/istio-ecds-gateway.yaml`: rate-limit delivered over ECDS as istiod delivers
/// the ingress WasmPlugin — no vm_id, so it shares the proxy's one shared-data space with the
/// other plugins — behind tenant-routing, on two workers.
#[test]
fn istio_ecds_delivers_rate_limit_without_a_vm_id() -> Result<()> {
    let public = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("istio-ecds-gateway.yaml")
        .upstream(public.port())
        .upstream2(acme.port())
        .concurrency(2)
        .start()?;
    let name = "extensions.istio.io/wasmplugin/istio-system.rate-limit";
    ensure!(
        envoy.counter(&format!(
            "extension_config_discovery.http_filter.{name}.update_success"
        ))? == 1,
        "ECDS update_success"
    );
    // /api/ needs a token (jwt-to-header, also delivered over ECDS); one without a tenant claim,
    // so the default tenant's backend answers.
    let token = format!(
        "Bearer {}",
        mint(&DemoClaims {
            tenant: String::new(),
            ..DemoClaims::default()
        })?
    );
    let started = Instant::now();
    let responses = client::send_burst(
        envoy.listen_addr(),
        160,
        4,
        Duration::from_secs(60),
        move |i| Request::get(&format!("/api/items/{i}")).header("authorization", &token),
    )?;
    let elapsed = started.elapsed();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let limited = responses.iter().filter(|r| r.status == 429).count();
    let refills = (elapsed.as_secs_f64() / 0.5).floor() as usize;
    ensure!(ok + limited == 160, "other statuses");
    ensure!(
        (140..=140 + refills).contains(&ok),
        "{ok} allowed in {elapsed:?} (want 140 + at most {refills})"
    );
    ensure!(
        public.requests_seen() == ok as u64,
        "default tenant's backend"
    );
    Ok(())
}
