//! End-to-end: the stages that wait, in a real Envoy 1.40 — rate-limit's `global` and `hybrid`
//! rules calling a real rate-limit service (Limitador over Envoy's RLS gRPC protocol,
//! `tools/limitador-rls`, with a real Redis) through the module's HTTP/2 callouts, and what a
//! failed or slow service means (`failure_mode`); jwt-to-header's remote JWKS from an identity
//! provider of the test's own (fetched once per process, requests before the keys wait, key
//! rotation, an unreachable IdP).
//!
//! Needs `redis-server` (`just redis`) and the `limitador-rls` binary (`just limitador-rls`:
//! `<target>/limitador-rls/debug/limitador-rls`, or `LIMITADOR_RLS_BIN`).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gatewasm_devtools::client::{self, Request, Response};
use gatewasm_devtools::demo_jwt::{self, DEMO_ISSUER, DemoClaims};
use gatewasm_devtools::echo::{EchoUpstream, Echoed};
use jwt_simple::prelude::ES256KeyPair;
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

/// An identity provider's JWKS endpoint (HTTP/1.1 on a free loopback port): serves `jwks`,
/// counts the fetches, and holds every answer while `gate` is closed.
struct JwksServer {
    port: u16,
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl JwksServer {
    fn start(jwks: &str, open: bool) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let server = JwksServer {
            port: listener.local_addr()?.port(),
            jwks: Arc::new(Mutex::new(jwks.to_owned())),
            fetches: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new((Mutex::new(open), Condvar::new())),
        };
        let (jwks, fetches, gate) = (
            Arc::clone(&server.jwks),
            Arc::clone(&server.fetches),
            Arc::clone(&server.gate),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (jwks, fetches, gate) =
                    (Arc::clone(&jwks), Arc::clone(&fetches), Arc::clone(&gate));
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let (lock, opened) = &*gate;
                    let Ok(mut open) = lock.lock() else { return };
                    while !*open {
                        let Ok(next) = opened.wait(open) else { return };
                        open = next;
                    }
                    drop(open);
                    let body = jwks.lock().map(|j| j.clone()).unwrap_or_default();
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Ok(server)
    }

    fn open(&self) {
        let (lock, opened) = &*self.gate;
        if let Ok(mut open) = lock.lock() {
            *open = true;
            opened.notify_all();
        }
    }

    fn serve(&self, jwks: &str) {
        if let Ok(mut current) = self.jwks.lock() {
            *current = jwks.to_owned();
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The identity provider's cluster (HTTP/1.1) on `{{UPSTREAM2_PORT}}`.
const IDP_CLUSTER: &str = r#"  - name: idp
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: idp
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{UPSTREAM2_PORT}} }
"#;

/// A key pair of the test's own (`kid`) and its JWKS.
fn key(kid: &str) -> Result<(ES256KeyPair, String)> {
    let key = ES256KeyPair::generate().with_key_id(kid);
    let jwks = format!(r#"{{"keys": [{}]}}"#, key.public_key().to_jwk());
    Ok((key, jwks))
}

fn with_token(token: &str) -> Request {
    Request::get("/").header("authorization", format!("Bearer {token}"))
}

/// Send `req` until the answer has `status` (the keys change behind it), up to 15 s.
fn until_status(addr: std::net::SocketAddr, req: &Request, status: u16) -> Result<Response> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = client::send(addr, req)?;
        if resp.status == status || Instant::now() > deadline {
            return Ok(resp);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn remote_jwks_is_fetched_once_per_process_waits_are_woken_and_keys_rotate() -> Result<()> {
    let (old, old_jwks) = key("old")?;
    let (new, new_jwks) = key("new")?;
    // The first fetch is held at the IdP until the gate opens.
    let idp = JwksServer::start(&old_jwks, false)?;
    let dir = tempfile::tempdir()?;
    let config = single_filter_with(
        &dir,
        "jwt-to-header",
        &format!(
            r#"{{"providers": {{"idp": {{"issuer": "{DEMO_ISSUER}",
   "remote_jwks": {{"cluster": "idp", "authority": "idp.example", "path": "/jwks", "timeout_ms": 5000, "refresh_s": 1, "min_refetch_interval_s": 1}},
   "claim_to_headers": [{{"claim": "sub", "header": "x-user"}}]}}}},
 "rules": [{{"match": {{"prefix": "/"}}, "requires": "idp"}}]}}"#
        ),
        IDP_CLUSTER,
    )?;
    let upstream = EchoUpstream::start()?;
    let envoy = envoy(&config)?
        .upstream(upstream.port())
        .upstream2(idp.port)
        .concurrency(2)
        .start()?;
    let gw = envoy.listen_addr();
    let token = demo_jwt::mint_with(&old, &DemoClaims::default())?;

    // Requests before the keys exist, over separate connections (both workers): they wait.
    let early: Vec<_> = (0..4)
        .map(|_| {
            let req = with_token(&token);
            std::thread::spawn(move || client::send_with_timeout(gw, &req, Duration::from_secs(20)))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while idp.fetches() == 0 {
        ensure!(
            Instant::now() < deadline,
            "no JWKS fetch; log:\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Several driver ticks later, still one fetch: one per process, not one per worker.
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        idp.fetches() == 1,
        "{} fetches while the first was held",
        idp.fetches()
    );
    idp.open();
    for handle in early {
        let resp = handle
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        ensure!(
            resp.status == 200,
            "early request: {} {}",
            resp.status,
            resp.text()
        );
        let echoed = Echoed::from_response(&resp)?;
        ensure!(echoed.header("x-user") == Some("alice"), "{echoed:?}");
    }

    // Rotation: the IdP now serves only the new key. Once a refresh has fetched it, a token
    // signed by the new key passes and one signed by the old key is refused.
    idp.serve(&new_jwks);
    let new_token = demo_jwt::mint_with(&new, &DemoClaims::default())?;
    let resp = until_status(gw, &with_token(&new_token), 200)?;
    ensure!(
        resp.status == 200,
        "new key: {} {}",
        resp.status,
        resp.text()
    );
    let resp = until_status(gw, &with_token(&token), 401)?;
    ensure!(
        resp.status == 401,
        "old key: {} {}",
        resp.status,
        resp.text()
    );

    // The counters: fetches (counted from the next requests' hooks), and what was decided.
    client::send(gw, &Request::get("/"))?;
    ensure!(stat(&envoy, "gatewasm_jwt_to_header_jwks_fetch_ok")? >= 2);
    ensure!(stat(&envoy, "gatewasm_jwt_to_header_jwks_fetch_failed")? == 0);
    ensure!(stat(&envoy, "gatewasm_jwt_to_header_allowed")? >= 5);
    Ok(())
}

#[test]
fn an_unreachable_jwks_answers_503_after_the_wait_in_a_chain() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = single_filter_with(
        &dir,
        "chain",
        &format!(
            r#"{{"stages": [{{"filter": "correlation-id", "config": {{"echo_downstream": true}}}},
  {{"filter": "jwt-to-header", "config": {{"providers": {{"idp": {{"issuer": "{DEMO_ISSUER}",
   "remote_jwks": {{"cluster": "idp", "authority": "idp.example", "path": "/jwks", "timeout_ms": 1000}}}}}},
   "rules": [{{"match": {{"prefix": "/"}}, "requires": "idp"}}]}}}}]}}"#
        ),
        IDP_CLUSTER,
    )?;
    let upstream = EchoUpstream::start()?;
    // Nobody listens on the IdP's port.
    let envoy = envoy(&config)?.upstream(upstream.port()).start()?;
    let token = demo_jwt::mint(&DemoClaims::default())?;
    let resp = client::send_with_timeout(
        envoy.listen_addr(),
        &with_token(&token),
        Duration::from_secs(20),
    )?;
    ensure!(resp.status == 503, "{} {}", resp.status, resp.text());
    // The stage before the wait still answers on the reply.
    ensure!(resp.header("x-request-id").is_some(), "{:?}", resp.headers);
    ensure!(upstream.requests_seen() == 0);
    client::send(envoy.listen_addr(), &Request::get("/"))?;
    ensure!(stat(&envoy, "gatewasm_jwt_to_header_jwks_fetch_failed")? >= 1);
    Ok(())
}
