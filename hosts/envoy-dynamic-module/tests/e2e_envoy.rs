//! End-to-end: libgatewasm_envoy.so in a real Envoy 1.40 (the official build; `ENVOY_BIN` or
//! `just envoy`'s), loaded from the `native` build (`just build-native`: <target>/native/, or
//! `GATEWASM_DYNAMIC_MODULE_DIR`) through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
//!
//! - `envoy-configs/gateway-native.yaml`, started verbatim: gateway.yaml's five filters as one
//!   dynamic-module chain — correlation-id, trace-propagation, jwt-to-header (inline keys),
//!   tenant-routing, rate-limit — and their counters.
//! - One filter per instance (`filter_name` = the filter): correlation-id alone; rate-limit's
//!   limit exact across two workers (`--concurrency 2`).
//! - Configurations Envoy must refuse, with the field named in its output.
//! - A long keep-alive run through gateway-native.yaml's chain that must not grow Envoy's
//!   memory (VmRSS and `server.memory_allocated`, after a warm-up).
//!
//! Each test starts its own Envoy and echo upstream on free ports, so tests run in parallel.

mod support;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatewasm_devtools::client::{self, Request, Response};
use gatewasm_devtools::demo_jwt::{self, DemoClaims};
use gatewasm_devtools::echo::{EchoUpstream, Echoed};
use gatewasm_devtools::envoy::Envoy;
use support::{envoy, single_filter, stat};

fn ok_echo(resp: &Response) -> Result<Echoed> {
    ensure!(
        resp.status == 200,
        "status {}: {}",
        resp.status,
        resp.text()
    );
    Echoed::from_response(resp)
}

/// The one x-request-id the upstream saw, which the client must have got back too.
fn one_request_id(resp: &Response) -> Result<String> {
    let echoed = ok_echo(resp)?;
    let ids = echoed.header_all("x-request-id");
    ensure!(ids.len() == 1, "the upstream saw x-request-id {ids:?}");
    let id = ids[0].to_string();
    ensure!(
        resp.header("x-request-id") == Some(id.as_str()),
        "the client got x-request-id {:?}, the upstream saw {id}",
        resp.header("x-request-id")
    );
    Ok(id)
}

fn is_uuid4(id: &str) -> bool {
    let b = id.as_bytes();
    id.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[test]
fn gateway_native_runs_the_five_filters_as_one_chain() -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = envoy("gateway-native.yaml")?
        .upstream(upstream.port())
        .upstream2(acme.port())
        .concurrency(2)
        .start()?;
    let gw = envoy.listen_addr();
    ensure!(
        envoy
            .log()
            .contains("Dynamic module ABI version v0.2.0 matched."),
        "Envoy did not confirm the ABI version:\n{}",
        envoy.log()
    );

    // correlation-id: a fresh UUID v4 when none came, the client's when valid, replaced when not.
    let generated = one_request_id(&client::send(gw, &Request::get("/hello"))?)?;
    ensure!(is_uuid4(&generated), "generated {generated:?}");
    let kept = one_request_id(&client::send(
        gw,
        &Request::get("/hello").header("x-request-id", "order-42.retry:1"),
    )?)?;
    ensure!(kept == "order-42.retry:1", "kept {kept:?}");
    let replaced = one_request_id(&client::send(
        gw,
        &Request::get("/hello").header("x-request-id", "bad id"),
    )?)?;
    ensure!(is_uuid4(&replaced), "replaced {replaced:?}");
    // A response Envoy's router made itself still passes the chain's response side.
    let health = client::send(gw, &Request::get("/healthz"))?;
    ensure!(
        health.status == 200 && health.header("x-request-id").is_some(),
        "{health:?}"
    );

    // trace-propagation (role span): the trace id is kept, the upstream gets a new parent id,
    // the client the trace id; a B3 caller is converted to W3C and its headers cleared.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client::send(
        gw,
        &Request::get("/hello").header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01")),
    )?;
    let parent = ok_echo(&resp)?
        .header("traceparent")
        .context("no traceparent upstream")?
        .to_string();
    ensure!(
        parent.starts_with(&format!("00-{trace}-")) && !parent.contains("00f067aa0ba902b7"),
        "upstream traceparent {parent}"
    );
    ensure!(
        resp.header("x-trace-id") == Some(trace),
        "{:?}",
        resp.headers
    );
    let resp = client::send(
        gw,
        &Request::get("/hello").header("b3", format!("{trace}-00f067aa0ba902b7-1")),
    )?;
    let echoed = ok_echo(&resp)?;
    ensure!(
        echoed
            .header("traceparent")
            .is_some_and(|t| t.contains(trace))
            && echoed.header("b3").is_none(),
        "B3 not converted: {:?}",
        echoed.header_all("traceparent")
    );

    // tenant-routing: by host to acme's own backend with its tier; by path, stripped; an
    // unknown tenant gets the configured 404 (with x-request-id: every stage saw it).
    let resp = client::send(
        gw,
        &Request::get("/orders").header("host", "acme.tenants.localhost"),
    )?;
    let echoed = ok_echo(&resp)?;
    ensure!(
        echoed.header("x-tenant-id") == Some("acme")
            && echoed.header("x-tenant-tier") == Some("gold"),
        "acme by host: {echoed:?}"
    );
    ensure!(
        acme.requests_seen() == 1,
        "acme's backend saw {}",
        acme.requests_seen()
    );
    let echoed = ok_echo(&client::send(gw, &Request::get("/t/globex/orders"))?)?;
    ensure!(
        echoed.header("x-tenant-id") == Some("globex") && echoed.path == "/orders",
        "globex by path: {echoed:?}"
    );
    let unknown = client::send(gw, &Request::get("/t/initech/"))?;
    ensure!(unknown.status == 404, "unknown tenant: {unknown:?}");
    ensure!(unknown.header("x-request-id").is_some(), "{unknown:?}");
    let conflict = client::send(
        gw,
        &Request::get("/t/acme/orders").header("host", "globex.tenants.localhost"),
    )?;
    ensure!(
        conflict.status == 403,
        "host and path disagree: {conflict:?}"
    );

    // jwt-to-header with the inline demo key: no token on /api/ → 401 with the challenge; a
    // valid token → its claims as headers (a spoofed x-user-id replaced, the token not
    // forwarded), and its tenant routes; a token with a broken signature → 401.
    let missing = client::send(gw, &Request::get("/api/orders"))?;
    ensure!(missing.status == 401, "no token: {missing:?}");
    ensure!(
        missing
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer") && c.contains("realm=\"gatewasm-demo\"")),
        "{:?}",
        missing.headers
    );
    ensure!(missing.header("x-request-id").is_some(), "{missing:?}");
    let token = demo_jwt::mint(&DemoClaims::default())?;
    let resp = client::send(
        gw,
        &Request::get("/api/orders")
            .header("authorization", format!("Bearer {token}"))
            .header("x-user-id", "mallory"),
    )?;
    let echoed = ok_echo(&resp)?;
    ensure!(
        echoed.header_all("x-user-id") == vec!["alice"]
            && echoed.header("x-user-role") == Some("admin")
            && echoed.header("x-tenant-id") == Some("acme")
            && echoed.header("authorization").is_none(),
        "claims upstream: {echoed:?}"
    );
    // rate-limit (its /api/ rules, per client IP and per tenant): an allowed request carries
    // the IETF headers of the rule that binds.
    ensure!(
        resp.header("ratelimit-policy").is_some() && resp.header("ratelimit").is_some(),
        "no RateLimit headers on an /api/ response: {:?}",
        resp.headers
    );
    let mut forged = token.clone();
    let last = forged.pop().context("empty token")?;
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let bad = client::send(
        gw,
        &Request::get("/api/orders").header("authorization", format!("Bearer {forged}")),
    )?;
    ensure!(bad.status == 401, "forged signature: {bad:?}");
    // The valid token's signature was checked by the module's own `verify_signature` (ring;
    // the forged one too unless its last character no longer decodes), none by the pure-Rust
    // fallback.
    ensure!(stat(&envoy, "gatewasm_jwt_to_header_verify_native")? >= 1);
    ensure!(stat(&envoy, "gatewasm_jwt_to_header_verify_fallback")? == 0);

    // The counters, defined by the stages and incremented through Envoy's stats.
    ensure!(stat(&envoy, "gatewasm_correlation_id_generated")? >= 2);
    ensure!(stat(&envoy, "gatewasm_correlation_id_preserved")? >= 1);
    ensure!(stat(&envoy, "gatewasm_correlation_id_replaced_invalid")? >= 1);
    Ok(())
}

#[test]
fn correlation_id_alone_sets_and_keeps_the_request_id() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = single_filter(
        &dir,
        "correlation-id",
        r#"{"generator": "uuid4", "echo_downstream": true}"#,
    )?;
    let upstream = EchoUpstream::start()?;
    let envoy = envoy(&config)?.upstream(upstream.port()).start()?;
    let id = one_request_id(&client::send(envoy.listen_addr(), &Request::get("/"))?)?;
    ensure!(is_uuid4(&id), "generated {id:?}");
    let kept = one_request_id(&client::send(
        envoy.listen_addr(),
        &Request::get("/").header("x-request-id", "abc-123"),
    )?)?;
    ensure!(kept == "abc-123", "kept {kept:?}");
    ensure!(stat(&envoy, "gatewasm_correlation_id_generated")? == 1);
    ensure!(stat(&envoy, "gatewasm_correlation_id_preserved")? == 1);
    Ok(())
}

#[test]
fn rate_limit_is_exact_across_two_workers() -> Result<()> {
    // 10 an hour with a burst of 5 per client IP: 15 pass now, none refills during the test.
    let dir = tempfile::tempdir()?;
    let config = single_filter(
        &dir,
        "rate-limit",
        r#"{"rules": [{"name": "per-client", "key": ["client_ip"], "limit": 10, "window_s": 3600, "burst": 5}],
 "client_ip": {"from": "peer"}, "response": {"status": 429, "headers": "both"}}"#,
    )?;
    let upstream = EchoUpstream::start()?;
    let envoy = envoy(&config)?
        .upstream(upstream.port())
        .concurrency(2)
        .start()?;
    // 60 requests over 12 connections, which Envoy spreads over its two workers.
    let responses =
        client::send_burst(envoy.listen_addr(), 60, 12, Duration::from_secs(30), |i| {
            Request::get(&format!("/item/{i}"))
        })?;
    let passed = responses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    ensure!(
        passed == 15 && limited.len() == 45,
        "{passed} passed, {} limited (statuses {:?})",
        limited.len(),
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    ensure!(
        limited.iter().all(|r| r.header("retry-after").is_some()),
        "a 429 without retry-after: {:?}",
        limited.first()
    );
    ensure!(
        upstream.requests_seen() == 15,
        "upstream saw {}",
        upstream.requests_seen()
    );
    // Both workers took connections: the limit held across them, not per worker.
    for worker in ["worker_0", "worker_1"] {
        let accepted: u64 = envoy
            .stats_matching(worker)?
            .iter()
            .filter(|(name, _)| {
                name.starts_with("listener.") && name.ends_with(".downstream_cx_total")
            })
            .map(|(_, v)| v)
            .sum();
        ensure!(accepted > 0, "{worker} took no connection");
    }
    Ok(())
}

/// Envoy refuses the configuration: it exits before it is ready, and its output names the field.
fn refused(filter_name: &str, filter_config: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let config = single_filter(&dir, filter_name, filter_config)?;
    match envoy(&config)?
        .ready_timeout(Duration::from_secs(20))
        .start()
    {
        Ok(_) => bail!("Envoy accepted {filter_name} {filter_config}"),
        Err(e) => Ok(format!("{e:#}")),
    }
}

#[test]
fn bad_configurations_are_refused_naming_the_field() -> Result<()> {
    let output = refused(
        "rate-limit",
        r#"{"rules": [{"name": "a", "key": ["client_ip"], "limit": 0, "window_s": 60}]}"#,
    )?;
    ensure!(
        output.contains("rate-limit: invalid plugin configuration: rules[0].limit: must be > 0"),
        "{output}"
    );
    let output = refused(
        "chain",
        r#"{"stages": [{"filter": "correlation-id"}, {"filter": "jwt-to-header", "config": {"providers": {"idp": {"issuer": "https://idp", "remote_jwks": {"cluster": "idp", "authority": "idp", "path": "/jwks", "refresh_s": 0}}}, "rules": [{"match": {"prefix": "/"}, "requires": "idp"}]}}]}"#,
    )?;
    ensure!(
        output.contains(
            "gatewasm chain: invalid plugin configuration: stages[1].config.providers.idp.remote_jwks.refresh_s: jwt-to-header: must be at least 1"
        ),
        "{output}"
    );
    let output = refused("auth", "{}")?;
    ensure!(
        output.contains("filter_name: \"auth\" names no gatewasm filter"),
        "{output}"
    );
    Ok(())
}

/// Envoy's resident set (`VmRSS` of /proc/<pid>/status), bytes.
fn rss_bytes(envoy: &Envoy) -> Result<u64> {
    let pid = envoy.pid().context("Envoy has no process")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .context("no VmRSS in /proc/<pid>/status")?
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// Envoy's own gauge of the bytes its allocator (tcmalloc) has handed out.
fn memory_allocated(envoy: &Envoy) -> Result<u64> {
    envoy
        .stats()?
        .into_iter()
        .find(|(name, _)| name == "server.memory_allocated")
        .map(|(_, v)| v)
        .context("no server.memory_allocated stat")
}

/// gateway-native.yaml's chain under a long keep-alive run: every stage's code path (fresh
/// tokens verified natively, repeated ones from the cache, tokenless and tenant requests, 401
/// and 429 local replies). After a warm-up that fills the caches and Envoy's pools, the rest
/// must not grow Envoy's memory: a leak of 1 KB a request would add ~30 MB over the counted
/// requests; the allowance is a quarter of that (~256 B a request), for allocator noise.
#[test]
fn a_long_run_through_the_chain_does_not_grow_memory() -> Result<()> {
    const WARM_UP: usize = 8_000;
    const COUNTED: usize = 30_000;
    const CONNECTIONS: usize = 8;
    const ALLOWED_GROWTH: u64 = (COUNTED as u64) * 256;
    let upstream = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = envoy("gateway-native.yaml")?
        .upstream(upstream.port())
        .upstream2(acme.port())
        .concurrency(2)
        .start()?;
    let gw = envoy.listen_addr();
    // A fresh token for a quarter of the requests (a `jti` each: every one a cache miss and a
    // signature check); the same few tokens for another half.
    let key = demo_jwt::demo_key()?;
    let fresh: Vec<String> = (0..(WARM_UP + COUNTED) / 4 + 1)
        .map(|i| {
            demo_jwt::mint_with(
                &key,
                &DemoClaims {
                    jti: Some(format!("long-run-{i}")),
                    sub: format!("user-{i}"),
                    ..Default::default()
                },
            )
        })
        .collect::<Result<_>>()?;
    let repeated: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|sub| {
            demo_jwt::mint_with(
                &key,
                &DemoClaims {
                    sub: sub.to_string(),
                    ..Default::default()
                },
            )
        })
        .collect::<Result<_>>()?;
    let fresh = std::sync::Arc::new(fresh);
    let repeated = std::sync::Arc::new(repeated);
    let run = |offset: usize, total: usize| {
        let fresh = fresh.clone();
        let repeated = repeated.clone();
        client::send_burst(gw, total, CONNECTIONS, Duration::from_secs(120), move |n| {
            let i = offset + n;
            let bearer = |t: &str| format!("Bearer {t}");
            match i % 8 {
                0 | 4 => Request::get(&format!("/hello/{i}"))
                    .header("authorization", bearer(&fresh[i / 4])),
                1 | 5 => Request::get("/hello")
                    .header("authorization", bearer(&repeated[i % 3]))
                    .header(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    ),
                2 => Request::get("/api/orders").header("authorization", bearer(&repeated[i % 3])),
                3 => Request::get("/t/globex/orders").header("x-request-id", format!("id-{i}")),
                6 => Request::get("/api/orders"),
                _ => Request::get("/hello").header("host", "acme.tenants.localhost"),
            }
        })
    };
    let check = |responses: &[Response]| -> Result<()> {
        for (n, resp) in responses.iter().enumerate() {
            ensure!(
                matches!(resp.status, 200 | 401 | 429),
                "request {n}: {resp:?}"
            );
        }
        Ok(())
    };
    check(&run(0, WARM_UP)?)?;
    let rss_warm = rss_bytes(&envoy)?;
    let allocated_warm = memory_allocated(&envoy)?;
    let verified_warm = stat(&envoy, "gatewasm_jwt_to_header_verify_native")?;
    let responses = run(WARM_UP, COUNTED)?;
    check(&responses)?;
    let rss_end = rss_bytes(&envoy)?;
    let allocated_end = memory_allocated(&envoy)?;
    let verified = stat(&envoy, "gatewasm_jwt_to_header_verify_native")? - verified_warm;
    // Each fresh token was checked once, natively (ring); none fell back to jwt-simple.
    ensure!(
        verified >= (COUNTED / 4) as u64,
        "{verified} native signature checks for {} fresh tokens",
        COUNTED / 4
    );
    ensure!(stat(&envoy, "gatewasm_jwt_to_header_verify_fallback")? == 0);
    let fresh_ok = responses
        .iter()
        .enumerate()
        .filter(|(n, r)| (WARM_UP + n).is_multiple_of(4) && r.status == 200)
        .count();
    ensure!(fresh_ok == COUNTED / 4, "{fresh_ok} fresh tokens passed");
    let growth = |warm: u64, end: u64| end.saturating_sub(warm);
    eprintln!(
        "after {WARM_UP} requests: VmRSS {rss_warm} B, server.memory_allocated {allocated_warm} B; \
         after {COUNTED} more: VmRSS {rss_end} B (+{}), server.memory_allocated {allocated_end} B (+{})",
        growth(rss_warm, rss_end),
        growth(allocated_warm, allocated_end),
    );
    ensure!(
        growth(rss_warm, rss_end) <= ALLOWED_GROWTH,
        "VmRSS grew {} B over {COUNTED} requests ({rss_warm} → {rss_end}); allowed {ALLOWED_GROWTH}",
        growth(rss_warm, rss_end)
    );
    ensure!(
        growth(allocated_warm, allocated_end) <= ALLOWED_GROWTH,
        "server.memory_allocated grew {} B over {COUNTED} requests ({allocated_warm} → \
         {allocated_end}); allowed {ALLOWED_GROWTH}",
        growth(allocated_warm, allocated_end)
    );
    Ok(())
}
