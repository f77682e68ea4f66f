//! End-to-end: the stages that wait, in a real Envoy 1.40 — rate-limit's `global` and `hybrid`
//! rules calling a real rate-limit service (Limitador over Envoy's RLS gRPC protocol,
//! `tools/limitador-rls`, with a real Redis) through the module's HTTP/2 callouts, and what a
//! failed or slow service means (`failure_mode`).
//!
//! Needs `redis-server` (`just redis`) and the `limitador-rls` binary (`just limitador-rls`:
//! `<target>/limitador-rls/debug/limitador-rls`, or `LIMITADOR_RLS_BIN`).

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gatewasm_devtools::client::{self, Request, Response};
use gatewasm_devtools::echo::{EchoUpstream, Echoed};
use support::{RLS_CLUSTER, envoy, single_filter_with, stat};

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `redis-server` on a free loopback port, nothing saved; its port.
fn redis(dir: &tempfile::TempDir) -> Result<(Killed, u16)> {
    let port = gatewasm_devtools::free_port()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (not installed? run `just redis`)")?;
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "redis-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, port))
}

/// The `limitador-rls` binary: `LIMITADOR_RLS_BIN`, else `<target>/limitador-rls/debug/`, where
/// `just limitador-rls` builds it (this test binary is `<target>/<profile>/deps/<name>`).
fn limitador_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("LIMITADOR_RLS_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => std::env::current_exe()?
            .ancestors()
            .nth(3)
            .context("this test binary is not in <target>/<profile>/deps/")?
            .join("limitador-rls/debug/limitador-rls"),
    };
    ensure!(
        bin.is_file(),
        "{} not found: run `just limitador-rls` (or set LIMITADOR_RLS_BIN)",
        bin.display()
    );
    Ok(bin)
}

/// Limitador serving `limits` over RLS gRPC on a free port, counting in the Redis on
/// `redis_port`; its port.
fn limitador(dir: &tempfile::TempDir, redis_port: u16, limits: &str) -> Result<(Killed, u16)> {
    let limits_file = dir.path().join("limits.yaml");
    std::fs::write(&limits_file, limits)?;
    let mut child = Command::new(limitador_bin()?)
        .args(["--rls-ip", "127.0.0.1", "--rls-port", "0"])
        .arg(&limits_file)
        .args(["redis", &format!("redis://127.0.0.1:{redis_port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting limitador-rls")?;
    let stdout = child.stdout.take().context("limitador-rls stdout")?;
    let child = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let Some(port) = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
        .map(|addr| addr.port())
    else {
        bail!("limitador-rls did not start: {line:?}");
    };
    Ok((child, port))
}

/// Per client address: 3 an hour (rule `global-ip`); 2 an hour in all (rule `hybrid-all`).
const LIMITS: &str = r#"- namespace: native
  max_value: 3
  seconds: 3600
  conditions: ["descriptors[0].rule == 'global-ip'"]
  variables: ["descriptors[0].remote_address"]
- namespace: native
  max_value: 2
  seconds: 3600
  conditions: ["descriptors[0].rule == 'hybrid-all'"]
  variables: []
"#;

fn statuses(responses: &[Response]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

#[test]
fn global_rules_ask_limitador_and_the_chain_goes_on_after_the_answer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_redis, redis_port) = redis(&dir)?;
    let (_rls, rls_port) = limitador(&dir, redis_port, LIMITS)?;
    // correlation-id before the wait, tenant-routing after it: both must show.
    let config = single_filter_with(
        &dir,
        "chain",
        r#"{"stages": [
  {"filter": "correlation-id", "config": {"echo_downstream": true}},
  {"filter": "rate-limit", "config": {"rules": [{"name": "global-ip", "key": ["client_ip"], "mode": "global",
     "service": {"cluster": "rls", "domain": "native", "timeout_ms": 2000, "failure_mode": "deny"}}],
     "client_ip": {"from": "peer"}}},
  {"filter": "tenant-routing", "config": {"sources": [{"header": "x-tenant"}], "tenants": {"acme": {"cluster": "upstream"}},
     "default_tenant": "acme", "output_header": "x-tenant-id"}}]}"#,
        RLS_CLUSTER,
    )?;
    let upstream = EchoUpstream::start()?;
    let envoy = envoy(&config)?
        .upstream(upstream.port())
        .rls(rls_port)
        .concurrency(2)
        .start()?;
    // One at a time: Limitador's Redis counter is not exact under concurrent calls (a burst of
    // 6 over 3 connections saw 4 answered OK against a limit of 3), which is not what this tests.
    let mut responses = Vec::new();
    for i in 0..6 {
        responses.push(client::send(
            envoy.listen_addr(),
            &Request::post(&format!("/item/{i}"), "a body that waits with the headers"),
        )?);
    }
    let passed: Vec<&Response> = responses.iter().filter(|r| r.status == 200).collect();
    let limited = responses.iter().filter(|r| r.status == 429).count();
    ensure!(
        passed.len() == 3 && limited == 3,
        "statuses {:?}; counters {:?}",
        statuses(&responses),
        envoy.stats_matching("gatewasm_rate_limit")?
    );
    for resp in &passed {
        let echoed = Echoed::from_response(resp)?;
        ensure!(
            echoed.header("x-tenant-id") == Some("acme"),
            "the stage after the wait did not run: {:?}",
            echoed
        );
        ensure!(
            echoed.header("x-request-id").is_some()
                && echoed.header("x-request-id") == resp.header("x-request-id"),
            "the stage before the wait: upstream {:?}, client {:?}",
            echoed.header("x-request-id"),
            resp.header("x-request-id")
        );
        ensure!(
            echoed.body == "a body that waits with the headers",
            "the body did not reach the upstream whole: {:?}",
            echoed.body
        );
    }
    ensure!(upstream.requests_seen() == 3);
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_ok_global-ip")? == 3);
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_over_limit_global-ip")? == 3);
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_error_global-ip")? == 0);
    Ok(())
}

#[test]
fn a_hybrid_rule_asks_limitador_only_for_what_its_local_bucket_allows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_redis, redis_port) = redis(&dir)?;
    let (_rls, rls_port) = limitador(&dir, redis_port, LIMITS)?;
    // Local bucket: 3 an hour; Limitador: 2 an hour. Requests 1–2 pass, 3 is refused by the
    // service, 4–5 by the local bucket without a call.
    let config = single_filter_with(
        &dir,
        "rate-limit",
        r#"{"rules": [{"name": "hybrid-all", "key": ["route"], "mode": "hybrid", "limit": 3, "window_s": 3600,
   "service": {"cluster": "rls", "domain": "native", "timeout_ms": 2000}}]}"#,
        RLS_CLUSTER,
    )?;
    let upstream = EchoUpstream::start()?;
    let envoy = envoy(&config)?
        .upstream(upstream.port())
        .rls(rls_port)
        .start()?;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(client::send(envoy.listen_addr(), &Request::get("/"))?.status);
    }
    ensure!(seen == [200, 200, 429, 429, 429], "{seen:?}");
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_ok_hybrid-all")? == 2);
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_over_limit_hybrid-all")? == 1);
    ensure!(stat(&envoy, "gatewasm_rate_limit_denied_hybrid-all")? == 3);
    Ok(())
}

/// One request through a `global` rule whose service is on `rls_port` (`failure_mode`,
/// `timeout_ms`); the response and the Envoy (for its counters).
fn through_failing_service(
    rls_port: u16,
    failure_mode: &str,
    timeout_ms: u32,
) -> Result<(Response, gatewasm_devtools::envoy::Envoy, EchoUpstream)> {
    let dir = tempfile::tempdir()?;
    let config = single_filter_with(
        &dir,
        "rate-limit",
        &format!(
            r#"{{"rules": [{{"name": "g", "key": ["client_ip"], "mode": "global",
   "service": {{"cluster": "rls", "domain": "native", "timeout_ms": {timeout_ms}, "failure_mode": "{failure_mode}"}}}}]}}"#
        ),
        RLS_CLUSTER,
    )?;
    let upstream = EchoUpstream::start()?;
    let envoy = envoy(&config)?
        .upstream(upstream.port())
        .rls(rls_port)
        .start()?;
    let resp = client::send_with_timeout(
        envoy.listen_addr(),
        &Request::get("/"),
        Duration::from_secs(20),
    )?;
    Ok((resp, envoy, upstream))
}

#[test]
fn a_service_that_is_down_or_slow_follows_the_failure_mode() -> Result<()> {
    // Down: nobody listens on the port.
    let down = gatewasm_devtools::free_port()?;
    let (resp, envoy, upstream) = through_failing_service(down, "allow", 1000)?;
    ensure!(
        resp.status == 200,
        "allow, down: {} {}",
        resp.status,
        resp.text()
    );
    ensure!(upstream.requests_seen() == 1);
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_error_g")? == 1);
    let (resp, envoy, upstream) = through_failing_service(down, "deny", 1000)?;
    ensure!(resp.status != 200, "deny, down: {}", resp.status);
    ensure!(upstream.requests_seen() == 0);
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_error_g")? == 1);
    // Slow: a listener that accepts and never answers; the call times out.
    let hanging = TcpListener::bind("127.0.0.1:0")?;
    let port = hanging.local_addr()?.port();
    let (resp, envoy, upstream) = through_failing_service(port, "deny", 300)?;
    ensure!(resp.status != 200, "deny, slow: {}", resp.status);
    ensure!(upstream.requests_seen() == 0);
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_timeout_g")? == 1);
    let (resp, envoy, upstream) = through_failing_service(port, "allow", 300)?;
    ensure!(resp.status == 200, "allow, slow: {}", resp.status);
    ensure!(upstream.requests_seen() == 1);
    ensure!(stat(&envoy, "gatewasm_rate_limit_global_timeout_g")? == 1);
    drop(hanging);
    Ok(())
}
