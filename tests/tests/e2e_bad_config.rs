//! End-to-end: what a broken plugin configuration does in a real Envoy.
//!
//! - Static config (`gateway.yaml` with one filter's JSON broken): Envoy refuses to start, and
//!   its log carries the filter's own line naming the field.
//! - ECDS (`istio-ecds-gateway.yaml`, as Istio delivers WasmPlugins): a broken update is
//!   rejected (`update_reject`) while the previous good configuration keeps serving; the next
//!   good update is taken.
//!
//! Needs `just build` and `just envoy`; `just test-e2e` does both.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gatewasm_tests::client::{self, Request};
use gatewasm_tests::echo::EchoUpstream;
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};
use gatewasm_tests::paths;

/// gateway.yaml with `from` replaced by `to` (exactly once), as a template file in `dir`.
fn broken_gateway(dir: &Path, from: &str, to: &str) -> Result<String> {
    paths::edited_envoy_config(dir, "gateway.yaml", &[(from, to)])
}

#[test]
fn a_broken_static_config_stops_envoy_and_names_the_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (from, to, logged) in [
        (
            r#""limit": 120,"#,
            r#""limit": 0,"#,
            "rate-limit: invalid plugin configuration: rules[0].limit",
        ),
        (
            r#""default_tenant": "public","#,
            r#""default_tenant": "nobody","#,
            "tenant-routing: invalid plugin configuration: default_tenant",
        ),
        (
            r#""max_length": 128,"#,
            r#""max_length": 128, "trust_incomming": true,"#,
            "trust_incomming",
        ),
    ] {
        let config = broken_gateway(dir.path(), from, to)?;
        let err = match EnvoyBuilder::new(&config)
            .ready_timeout(Duration::from_secs(20))
            .start()
        {
            Ok(_) => anyhow::bail!("Envoy started with {to}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains("Envoy exited during startup"),
            "Envoy should refuse the config, not hang: {err}"
        );
        ensure!(
            err.contains(logged),
            "the log names the problem ({logged:?}):\n{err}"
        );
    }
    Ok(())
}

/// Replaces the rendered ECDS resource file atomically (write beside it, rename), as Envoy's
/// file watcher expects, with `config` as the filter's JSON configuration and `version`.
fn push_ecds(envoy: &Envoy, file: &str, version: u32, config: &str) -> Result<()> {
    let dir = envoy.log_path().parent().context("Envoy's directory")?;
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)?;
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("version_info:") {
            out.push_str(&format!("{indent}version_info: \"{version}\"\n"));
        } else if trimmed.starts_with("value: '") {
            out.push_str(&format!("{indent}value: '{config}'\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn wait_for(envoy: &Envoy, stat: &str, value: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = envoy.counter(stat).unwrap_or(0);
        if now >= value {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{stat} stayed at {now}, wanted {value}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_broken_ecds_update_is_rejected_and_the_previous_config_keeps_serving() -> Result<()> {
    let public = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("istio-ecds-gateway.yaml")
        .upstream(public.port())
        .upstream2(acme.port())
        .start()?;
    let name = "extensions.istio.io/wasmplugin/istio-system.tenant-routing";
    let success = format!("extension_config_discovery.http_filter.{name}.update_success");
    let reject = format!("extension_config_discovery.http_filter.{name}.update_reject");
    ensure!(envoy.counter(&success)? == 1);
    let unknown = |envoy: &Envoy| -> Result<u16> {
        Ok(client::send(envoy.listen_addr(), &Request::get("/t/initech/"))?.status)
    };
    ensure!(unknown(&envoy)? == 404);

    // A tenant id that is not one: the filter's on_configure refuses it, Envoy rejects the update.
    push_ecds(
        &envoy,
        "istio-ecds-gateway-tenant-routing.yaml",
        2,
        r#"{"sources":[{"path_prefix":"/t/{tenant}/","strip":true}],"tenants":{"Not A Tenant":{"cluster":"x"}},"unknown_tenant_status":410}"#,
    )?;
    wait_for(&envoy, &reject, 1)?;
    ensure!(envoy.counter(&success)? == 1);
    // The previous configuration still serves: acme routes, unknown tenants still get 404.
    let resp = client::send(envoy.listen_addr(), &Request::get("/t/acme/x"))?;
    ensure!(
        resp.status == 200 && acme.requests_seen() == 1,
        "status {}",
        resp.status
    );
    ensure!(unknown(&envoy)? == 404);
    ensure!(
        envoy
            .log()
            .contains("tenant-routing: invalid plugin configuration: tenants.Not A Tenant"),
        "the filter's reason is in Envoy's log"
    );

    // A good update is taken.
    push_ecds(
        &envoy,
        "istio-ecds-gateway-tenant-routing.yaml",
        3,
        r#"{"sources":[{"path_prefix":"/t/{tenant}/","strip":true}],"tenants":{"acme":{"cluster":"outbound|80||acme-api.acme.svc.cluster.local"}},"unknown_tenant_status":410}"#,
    )?;
    wait_for(&envoy, &success, 2)?;
    ensure!(unknown(&envoy)? == 410);
    Ok(())
}

/// A minimal listener with the harness test module (which panics on `x-cmd: panic`) under the
/// given failure policy, in front of the upstream.
fn panicking_filter_config(dir: &Path, policy: &str) -> Result<String> {
    let template = format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{ADMIN_PORT}}}} }} }}
static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{LISTEN_PORT}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: policy
          route_config:
            virtual_hosts:
            - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: upstream }} }}] }}
          http_filters:
          - name: test_module
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                vm_config:
                  vm_id: policy
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{{{{WASM_DIR}}}}/harness_test_module.wasm" }} }}
                failure_policy: {policy}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{UPSTREAM_PORT}}}} }} }} }} }}] }}]
"#
    );
    let path = dir.join(format!("policy-{policy}.yaml"));
    std::fs::write(&path, template)?;
    Ok(path.display().to_string())
}

/// What a client sees when a filter's VM fails at runtime (a panic is a trap): FAIL_CLOSED
/// answers 503 from then on; FAIL_OPEN lets later requests through without the filter. This
/// is why the security filters (jwt-to-header, tenant-routing) ship FAIL_CLOSED and the others
/// may fail open (istio-manifests/README.md).
#[test]
fn a_failed_vm_fails_closed_or_open_as_configured() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (policy, after) in [("FAIL_CLOSED", 503), ("FAIL_OPEN", 200)] {
        let upstream = EchoUpstream::start()?;
        let envoy = EnvoyBuilder::new(&panicking_filter_config(dir.path(), policy)?)
            .upstream(upstream.port())
            .start()?;
        let send = |req: Request| client::send(envoy.listen_addr(), &req);
        ensure!(send(Request::get("/"))?.status == 200, "{policy}: before");
        let failing = send(Request::get("/").header("x-cmd", "panic"))?;
        eprintln!("{policy}: the request that panicked got {}", failing.status);
        ensure!(
            failing.status == 503,
            "{policy}: the failing request itself: {}",
            failing.status
        );
        let seen = upstream.requests_seen();
        for _ in 0..3 {
            let resp = send(Request::get("/"))?;
            ensure!(
                resp.status == after,
                "{policy}: after the failure: {}",
                resp.status
            );
        }
        let passed = upstream.requests_seen() - seen;
        ensure!(
            passed == if after == 200 { 3 } else { 0 },
            "{policy}: {passed} requests reached the upstream after the failure"
        );
    }
    Ok(())
}
