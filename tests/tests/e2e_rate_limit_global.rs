//! End-to-end: global rate limiting across TWO Envoy processes (two gateway replicas) running
//! `envoy-configs/ratelimit-global.yaml`, sharing one test rate-limit service
//! (`gatewasm_tests::rls_server`, Envoy's RLS gRPC protocol) whose counters live in a real
//! Redis (`redis-server`, started here on a free loopback port).
//!
//! - 300 /api/ requests spread over both replicas, global limit 100 per hour → exactly 100
//!   allowed (the service's fixed window is exact within a window; the test keeps clear of a
//!   window boundary), the 429s carry the service's figures;
//! - /admin/ (hybrid): each replica's local bucket (20 per hour per client) first, then the
//!   service (10 per hour per client) — and, once the local bucket is empty, no call at all;
//! - Redis frozen (SIGSTOP: the service hangs) → every request is answered within the filter's
//!   timeout (100 ms) plus a margin, per `failure_mode` (/api/ allow, /admin/ deny);
//! - Redis killed (the service answers UNAVAILABLE) → the same, immediately;
//! - the metrics of both replicas add up.
//!
//! Needs `just build`, `just envoy` and `just redis`; `just test` does all three.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use gatewasm_tests::client::{self, Request};
use gatewasm_tests::echo::EchoUpstream;
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};
use gatewasm_tests::rls_server::{RedisServer, RlsLimit, RlsServer};

const API_LIMIT: u32 = 100;
const WINDOW_S: u64 = 3600;

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

#[test]
fn two_replicas_share_one_limit_and_failures_follow_failure_mode() -> Result<()> {
    // A fixed window aligned to the hour: do not start within 30 s of its end.
    let into_window = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() % WINDOW_S;
    if into_window > WINDOW_S - 30 {
        std::thread::sleep(Duration::from_secs(WINDOW_S - into_window + 1));
    }

    let mut redis = RedisServer::start()?;
    let rls = RlsServer::start(
        redis.port(),
        vec![
            RlsLimit {
                rule: "api-global".into(),
                limit: API_LIMIT,
                window_s: WINDOW_S,
            },
            RlsLimit {
                rule: "admin-hybrid".into(),
                limit: 10,
                window_s: WINDOW_S,
            },
        ],
    )?;
    let upstream = EchoUpstream::start()?;
    let start = || {
        EnvoyBuilder::new("ratelimit-global.yaml")
            .upstream(upstream.port())
            .rls(rls.port())
            .concurrency(2)
            .start()
    };
    let (a, b) = (start()?, start()?);
    let envoys = [&a, &b];

    // 1. 300 /api/ requests, 150 per replica, 4 connections each, both replicas at once.
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
    eprintln!("replica a: {sa:?}, replica b: {sb:?}");
    let all: Vec<&client::Response> = ra.iter().chain(rb.iter()).collect();
    let ok = all.iter().filter(|r| r.status == 200).count();
    let limited = all.iter().filter(|r| r.status == 429).count();
    // No call may have failed or timed out: then failure_mode allow would blur the count.
    ensure!(
        sum(&envoys, "global_error_api-global")? == 0
            && sum(&envoys, "global_timeout_api-global")? == 0,
        "global calls failed during the burst: errors {}, timeouts {}",
        sum(&envoys, "global_error_api-global")?,
        sum(&envoys, "global_timeout_api-global")?
    );
    ensure!(
        ok == API_LIMIT as usize && limited == 300 - API_LIMIT as usize,
        "{ok} allowed, {limited} limited (a {sa:?}, b {sb:?})"
    );
    ensure!(
        sa.get(&200).copied().unwrap_or(0) > 0 && sb.get(&200).copied().unwrap_or(0) > 0,
        "both replicas let some through: a {sa:?}, b {sb:?}"
    );
    for r in all.iter().filter(|r| r.status == 429) {
        let retry: u64 = r.header("retry-after").unwrap_or("").parse()?;
        ensure!((1..=WINDOW_S).contains(&retry), "Retry-After {retry}");
        ensure!(
            r.header("ratelimit-remaining") == Some("0"),
            "{:?}",
            r.headers
        );
        ensure!(
            r.header("ratelimit-limit") == Some("100"),
            "{:?}",
            r.headers
        );
        ensure!(
            r.header("ratelimit-policy") == Some("\"api-global\";q=100;w=3600"),
            "{:?}",
            r.headers
        );
        ensure!(r.header("x-rls") == Some("test-redis"), "{:?}", r.headers);
        ensure!(r.text().contains("rate_limited"), "{}", r.text());
    }
    let remaining: Vec<u64> = all
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.header("ratelimit-remaining")?.parse().ok())
        .collect();
    ensure!(remaining.len() == API_LIMIT as usize, "{remaining:?}");
    let mut sorted = remaining.clone();
    sorted.sort_unstable();
    ensure!(
        sorted == (0..u64::from(API_LIMIT)).collect::<Vec<_>>(),
        "each allowed request saw a distinct remaining count: {sorted:?}"
    );
    ensure!(sum(&envoys, "global_ok_api-global")? == u64::from(API_LIMIT));
    ensure!(sum(&envoys, "global_over_limit_api-global")? == 300 - u64::from(API_LIMIT));
    ensure!(sum(&envoys, "denied_api-global")? == 300 - u64::from(API_LIMIT));
    ensure!(rls.counts().ok.load(std::sync::atomic::Ordering::Relaxed) == 100);

    // 2. Hybrid /admin/ (local: 20 per hour per client on each replica; service: 10 per
    //    hour per client): 12 per replica from one client. The local buckets allow all 24, so
    //    all 24 ask the service, which allows 10.
    let admin: Vec<client::Response> = timed(&envoys, "/admin/x", 24)?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let s = statuses(&admin);
    ensure!(
        s.get(&200) == Some(&10) && s.get(&429) == Some(&14),
        "{s:?}"
    );
    ensure!(sum(&envoys, "global_ok_admin-hybrid")? == 10);
    ensure!(sum(&envoys, "global_over_limit_admin-hybrid")? == 14);

    // 3. Redis frozen (SIGSTOP): the service hangs; the filter's 100 ms timeout answers for it.
    redis.pause()?;
    let frozen_api = timed(&envoys, "/api/frozen", 6)?;
    let frozen_admin = timed(&envoys, "/admin/frozen", 4)?;
    redis.resume()?;
    // 4. Redis gone: the service answers UNAVAILABLE at once.
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

    // 5. Hybrid = local first: each replica's bucket has 20 - 12 - 4 = 4 tokens left. Of 6
    //    more per replica, 4 ask the (failing) service and get rate_limit_unavailable, 2 are
    //    limited locally without a call.
    let last: Vec<client::Response> = timed(&envoys, "/admin/last", 12)?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let unavailable = last
        .iter()
        .filter(|r| r.text().contains("rate_limit_unavailable"))
        .count();
    let local = last
        .iter()
        .filter(|r| r.status == 429 && r.text().contains("rate_limited"))
        .count();
    ensure!(
        (unavailable, local) == (8, 4),
        "{unavailable} unavailable, {local} local"
    );
    ensure!(sum(&envoys, "global_error_admin-hybrid")? == 12);
    Ok(())
}
