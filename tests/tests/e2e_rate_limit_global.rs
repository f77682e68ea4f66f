//! End-to-end: global rate limiting across TWO Envoy processes (two gateway replicas) running
//! `envoy-configs/ratelimit-global.yaml`, sharing one rate-limit service whose counters live in
//! a real Redis (`redis-server`, started here on a free loopback port).
//!
//! The limits run on a real engine: **Limitador** (`tools/limitador-rls`: Kuadrant's library,
//! Redis storage, over Envoy's RLS gRPC protocol) with the limits file of the rate-limit
//! README's Limitador example, read from the README itself:
//!
//! - 120 /api/ requests one at a time, alternating replicas, global limit 100 per hour →
//!   exactly the first 100 allowed, Limitador's `X-RateLimit-Remaining` counting down 99…0,
//!   the 429s with `Retry-After: 1` (Limitador sends no `duration_until_reset`);
//! - the counters reset (Redis FLUSHALL), 300 /api/ requests, 4 connections per replica, both
//!   at once → 100 to 107 allowed: Limitador's Redis storage reads, then increments, so calls
//!   in flight together (8 here) can overshoot by up to 7 (see the README's "Accuracy");
//! - /admin/ (hybrid): each replica's local bucket (20 per hour per client) first, then
//!   Limitador (10 per hour per client) → exactly 10 of 24;
//! - per-tenant counters and the `acme` plan, by direct RLS calls (the gateway config has no
//!   per-tenant rule): 1000 per minute per tenant, 10000 for acme.
//!
//! The failure modes run on the hand-written service (`gatewasm_tests::rls_server`), which
//! can be made to hang and fail on cue:
//!
//! - Redis frozen (SIGSTOP: the service hangs) → every request is answered within the filter's
//!   timeout (100 ms) plus a margin, per `failure_mode` (/api/ allow, /admin/ deny);
//! - Redis killed (the service answers UNAVAILABLE) → the same, immediately;
//! - hybrid rules still charge their local bucket first, and the metrics of both replicas add
//!   up.
//!
//! Needs `just build`, `just envoy`, `just redis` and `just limitador-rls`; `just test` does
//! all four.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use gatewasm_tests::client::{self, Request};
use gatewasm_tests::echo::EchoUpstream;
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};
use gatewasm_tests::limitador_rls::{LimitadorRls, readme_limitador_limits, should_rate_limit};
use gatewasm_tests::rls_server::{RedisServer, RlsLimit, RlsServer};
use rate_limit::rls::{Code, Entry, RateLimitDescriptor, RateLimitRequest};

/// The README's Limitador limits: api-global 100 per hour, admin-hybrid 10 per hour per client.
const API_LIMIT: usize = 100;
const ADMIN_LIMIT: usize = 10;

fn statuses(responses: &[client::Response]) -> BTreeMap<u16, usize> {
    let mut by_status = BTreeMap::new();
    for r in responses {
        *by_status.entry(r.status).or_default() += 1;
    }
    by_status
}

fn sum(envoys: &[&Envoy], name: &str) -> Result<u64> {
    let mut total = 0;
    for e in envoys {
        total += e.counter(&format!("wasmcustom.gatewasm_rate_limit_{name}"))?;
    }
    Ok(total)
}

/// Sends `n` requests for `path` to each replica in turn (one at a time), timing each.
fn timed(envoys: &[&Envoy], path: &str, n: usize) -> Result<Vec<(client::Response, Duration)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let envoy = envoys[i % envoys.len()];
        let started = Instant::now();
        let r = client::send_with_timeout(
            envoy.listen_addr(),
            &Request::get(&format!("{path}{i}")),
            Duration::from_secs(5),
        )?;
        out.push((r, started.elapsed()));
    }
    Ok(out)
}

fn untimed(envoys: &[&Envoy], path: &str, n: usize) -> Result<Vec<client::Response>> {
    Ok(timed(envoys, path, n)?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

/// Two replicas of `ratelimit-global.yaml` against the RLS on `rls_port`.
fn replicas(upstream: &EchoUpstream, rls_port: u16) -> Result<(Envoy, Envoy)> {
    let start = || {
        EnvoyBuilder::new("ratelimit-global.yaml")
            .upstream(upstream.port())
            .rls(rls_port)
            .concurrency(2)
            .start()
    };
    Ok((start()?, start()?))
}

/// A direct `ShouldRateLimit` for `api-per-tenant` with `hits` hits: the overall code.
fn tenant_call(rls_port: u16, tenant: &str, hits: u32) -> Result<(i32, Option<String>)> {
    let entry = |k: &str, v: &str| Entry {
        key: k.into(),
        value: v.into(),
    };
    let (status, answer) = should_rate_limit(
        rls_port,
        &RateLimitRequest {
            domain: "gatewasm".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![
                    entry("rule", "api-per-tenant"),
                    entry("x-tenant-id", tenant),
                ],
            }],
            hits_addend: hits,
        },
    )?;
    ensure!(status == 0, "gRPC status {status}");
    let answer = answer.ok_or_else(|| anyhow::anyhow!("no answer"))?;
    let limit = answer
        .response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("x-ratelimit-limit"))
        .map(|h| h.value.clone());
    Ok((answer.overall_code, limit))
}

#[test]
fn limitador_with_the_readme_limits_holds_them_across_two_replicas() -> Result<()> {
    let redis = RedisServer::start()?;
    let limits = readme_limitador_limits()?;
    let rls = LimitadorRls::start(redis.port(), &limits)?;
    let upstream = EchoUpstream::start()?;
    let (a, b) = replicas(&upstream, rls.port())?;
    let envoys = [&a, &b];
    let no_failures = |rule: &str| -> Result<()> {
        let (errors, timeouts) = (
            sum(&envoys, &format!("global_error_{rule}"))?,
            sum(&envoys, &format!("global_timeout_{rule}"))?,
        );
        // A failed call would blur the count (failure_mode allow lets it through).
        ensure!(
            errors == 0 && timeouts == 0,
            "{rule}: {errors} failed and {timeouts} timed-out calls; limitador-rls stderr:\n{}",
            rls.stderr()
        );
        Ok(())
    };

    // 1. One at a time, alternating replicas: exactly the first 100 pass.
    let seq = untimed(&envoys, "/api/seq/", 120)?;
    no_failures("api-global")?;
    let codes: Vec<u16> = seq.iter().map(|r| r.status).collect();
    ensure!(
        codes[..API_LIMIT].iter().all(|&c| c == 200)
            && codes[API_LIMIT..].iter().all(|&c| c == 429),
        "{codes:?}"
    );
    for (i, r) in seq.iter().enumerate() {
        // Limitador's own headers (--rate-limit-headers DRAFT_VERSION_03), passed on.
        ensure!(
            r.header("x-ratelimit-limit") == Some("100, 100;w=3600"),
            "request {i}: {:?}",
            r.headers
        );
        let remaining = API_LIMIT.saturating_sub(i + 1).to_string();
        ensure!(
            r.header("x-ratelimit-remaining") == Some(remaining.as_str()),
            "request {i}: remaining {:?}, want {remaining}",
            r.header("x-ratelimit-remaining")
        );
        let reset: u64 = r.header("x-ratelimit-reset").unwrap_or("").parse()?;
        ensure!((3500..=3600).contains(&reset), "request {i}: reset {reset}");
        if r.status == 429 {
            // No duration_until_reset from Limitador: the filter's floor of 1 s.
            ensure!(r.header("retry-after") == Some("1"), "{:?}", r.headers);
            ensure!(r.text().contains("rate_limited"), "{}", r.text());
        }
    }
    ensure!(sum(&envoys, "global_ok_api-global")? == API_LIMIT as u64);
    ensure!(sum(&envoys, "global_over_limit_api-global")? == 20);

    // 2. Counters reset; 300 at once, 150 per replica over 4 connections each.
    redis.flush_all()?;
    let burst = |envoy: &Envoy, tag: &'static str| {
        let addr = envoy.listen_addr();
        std::thread::spawn(move || {
            client::send_burst(addr, 150, 4, Duration::from_secs(60), move |i| {
                Request::get(&format!("/api/items/{tag}{i}"))
            })
        })
    };
    let (ta, tb) = (burst(&a, "a"), burst(&b, "b"));
    let ra = ta
        .join()
        .map_err(|_| anyhow::anyhow!("burst thread panicked"))??;
    let rb = tb
        .join()
        .map_err(|_| anyhow::anyhow!("burst thread panicked"))??;
    let (sa, sb) = (statuses(&ra), statuses(&rb));
    no_failures("api-global")?;
    let all: Vec<&client::Response> = ra.iter().chain(rb.iter()).collect();
    let ok = all.iter().filter(|r| r.status == 200).count();
    let limited = all.iter().filter(|r| r.status == 429).count();
    eprintln!(
        "300 concurrent /api/ requests (8 in flight), limit {API_LIMIT}: {ok} allowed \
         (a {sa:?}, b {sb:?})"
    );
    // 8 calls in flight at most (4 connections per replica): over by at most 7.
    ensure!(
        (API_LIMIT..=API_LIMIT + 7).contains(&ok) && ok + limited == 300,
        "{ok} allowed, {limited} limited (a {sa:?}, b {sb:?})"
    );
    ensure!(
        sa.get(&200).copied().unwrap_or(0) > 0 && sb.get(&200).copied().unwrap_or(0) > 0,
        "both replicas let some through: a {sa:?}, b {sb:?}"
    );
    for r in all.iter().filter(|r| r.status == 429) {
        ensure!(r.header("retry-after") == Some("1"), "{:?}", r.headers);
        ensure!(
            r.header("x-ratelimit-remaining") == Some("0"),
            "{:?}",
            r.headers
        );
    }
    ensure!(sum(&envoys, "global_ok_api-global")? == (API_LIMIT + ok) as u64);
    ensure!(sum(&envoys, "global_over_limit_api-global")? == 20 + limited as u64);
    ensure!(sum(&envoys, "denied_api-global")? == 20 + limited as u64);

    // 3. Hybrid /admin/ (local: 20 per hour per client on each replica; Limitador: 10 per hour
    //    per client): 12 per replica from one client. The local buckets allow all 24, so all
    //    24 ask Limitador, which allows exactly the first 10.
    let admin = untimed(&envoys, "/admin/x", 24)?;
    no_failures("admin-hybrid")?;
    let codes: Vec<u16> = admin.iter().map(|r| r.status).collect();
    ensure!(
        codes[..ADMIN_LIMIT].iter().all(|&c| c == 200)
            && codes[ADMIN_LIMIT..].iter().all(|&c| c == 429),
        "{codes:?}"
    );
    ensure!(sum(&envoys, "global_ok_admin-hybrid")? == ADMIN_LIMIT as u64);
    ensure!(sum(&envoys, "global_over_limit_admin-hybrid")? == 14);
    ensure!(
        admin[0].header("x-ratelimit-limit") == Some("10, 10;w=3600"),
        "{:?}",
        admin[0].headers
    );

    // 4. The per-tenant limits (no gateway rule of this config uses them): one counter per
    //    tenant, 1000 a minute, and acme's own 10000.
    let over = Code::OverLimit as i32;
    let ok_code = Code::Ok as i32;
    let t1 = tenant_call(rls.port(), "t1", 1000)?;
    ensure!(t1 == (ok_code, Some("1000, 1000;w=60".into())), "{t1:?}");
    ensure!(tenant_call(rls.port(), "t1", 1)?.0 == over);
    ensure!(tenant_call(rls.port(), "t2", 1)?.0 == ok_code);
    let acme = tenant_call(rls.port(), "acme", 10_000)?;
    ensure!(
        acme == (ok_code, Some("10000, 10000;w=60".into())),
        "{acme:?}"
    );
    ensure!(tenant_call(rls.port(), "acme", 1)?.0 == over);
    Ok(())
}

#[test]
fn failures_follow_failure_mode() -> Result<()> {
    let mut redis = RedisServer::start()?;
    let rls = RlsServer::start(
        redis.port(),
        vec![
            RlsLimit {
                rule: "api-global".into(),
                limit: 100,
                window_s: 3600,
            },
            RlsLimit {
                rule: "admin-hybrid".into(),
                limit: 10,
                window_s: 3600,
            },
        ],
    )?;
    let upstream = EchoUpstream::start()?;
    let (a, b) = replicas(&upstream, rls.port())?;
    let envoys = [&a, &b];

    // 1. The service answers: 2 /api/ and 4 /admin/ requests pass, with its header.
    for r in untimed(&envoys, "/api/ok", 2)?
        .iter()
        .chain(untimed(&envoys, "/admin/ok", 4)?.iter())
    {
        ensure!(r.status == 200, "{} {}", r.status, r.text());
        ensure!(r.header("x-rls") == Some("test-redis"), "{:?}", r.headers);
    }
    ensure!(sum(&envoys, "global_ok_admin-hybrid")? == 4);

    // 2. Redis frozen (SIGSTOP): the service hangs; the filter's 100 ms timeout answers for it.
    redis.pause()?;
    let frozen_api = timed(&envoys, "/api/frozen", 6)?;
    let frozen_admin = timed(&envoys, "/admin/frozen", 4)?;
    redis.resume()?;
    // 3. Redis gone: the service answers UNAVAILABLE at once.
    redis.stop();
    let down_api = timed(&envoys, "/api/down", 6)?;
    let down_admin = timed(&envoys, "/admin/down", 4)?;
    let bound = Duration::from_millis(100 + 400);
    for (what, list, want) in [
        ("frozen /api/", &frozen_api, 200),
        ("frozen /admin/", &frozen_admin, 429),
        ("down /api/", &down_api, 200),
        ("down /admin/", &down_admin, 429),
    ] {
        for (r, took) in list.iter() {
            ensure!(
                r.status == want,
                "{what}: status {} ({})",
                r.status,
                r.text()
            );
            ensure!(*took < bound, "{what}: took {took:?}, past the timeout");
            if want == 429 {
                ensure!(r.text().contains("rate_limit_unavailable"), "{}", r.text());
            }
        }
    }
    eprintln!(
        "frozen /api/ took {:?}",
        frozen_api.iter().map(|(_, t)| *t).collect::<Vec<_>>()
    );
    let failures = [
        sum(&envoys, "global_timeout_api-global")?,
        sum(&envoys, "global_error_api-global")?,
        sum(&envoys, "global_timeout_admin-hybrid")?,
        sum(&envoys, "global_error_admin-hybrid")?,
    ];
    ensure!(
        failures == [6, 6, 4, 4],
        "timeouts and errors (api, admin): {failures:?}"
    );

    // 5. Hybrid = local first: each replica's bucket (20) has 20 - 2 - 2 - 2 = 14 tokens left.
    //    Of 16 more per replica, 14 ask the (failing) service and get rate_limit_unavailable, 2
    //    are limited locally without a call.
    let last = untimed(&envoys, "/admin/last", 32)?;
    let unavailable = last
        .iter()
        .filter(|r| r.text().contains("rate_limit_unavailable"))
        .count();
    let local = last
        .iter()
        .filter(|r| r.status == 429 && r.text().contains("rate_limited"))
        .count();
    ensure!(
        (unavailable, local) == (28, 4),
        "{unavailable} unavailable, {local} local"
    );
    ensure!(sum(&envoys, "global_error_admin-hybrid")? == 4 + 28);
    Ok(())
}
