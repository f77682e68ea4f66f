//! libgatewasm_platform.so in a real Envoy 1.40 (no callgrind): it loads, and each kind of work
//! its configuration asks for happens — the written headers reach the upstream and the client,
//! the counter counts, the reads read (a read of a header the request lacks answers 500) — and
//! a bad configuration is refused naming the field. Needs `just build-native` (the `native`
//! build of this crate) and an Envoy 1.40 (`just test-native` provides both).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatewasm_devtools::client::{self, Request};
use gatewasm_devtools::echo::{EchoUpstream, Echoed};
use gatewasm_devtools::envoy::{Envoy, EnvoyBuilder};

/// `<target>/native/`, where `just build-native` writes the library (this test binary is
/// `<target>/<profile>/deps/<name>`), or `GATEWASM_DYNAMIC_MODULE_DIR`.
fn library_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("GATEWASM_DYNAMIC_MODULE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::current_exe()?
            .ancestors()
            .nth(3)
            .context("this test binary is not in <target>/<profile>/deps/")?
            .join("native"),
    };
    let lib = dir.join("libgatewasm_platform.so");
    ensure!(
        lib.is_file(),
        "{} does not exist: run `just build-native` (or set GATEWASM_DYNAMIC_MODULE_DIR)",
        lib.display()
    );
    Ok(dir)
}

/// An Envoy 1.40 whose one HTTP filter is the platform library with `filter_config`, in front
/// of an echo upstream.
fn envoy(dir: &tempfile::TempDir, filter_config: &str) -> Result<EnvoyBuilder> {
    let version = gatewasm_devtools::envoy::binary_version()?;
    ensure!(
        version.starts_with("1.40."),
        "the platform library is built for Envoy 1.40, ENVOY_BIN is {version}: run `just \
         test-native`"
    );
    let config = format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{ADMIN_PORT}}}} }} }}
static_resources:
  listeners:
  - name: listener
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{LISTEN_PORT}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: platform
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: gatewasm.platform
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: gatewasm_platform }}
              filter_name: platform
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{filter_config}'
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {{{{UPSTREAM_PORT}}}} }}
"#
    );
    let path = dir.path().join("platform.yaml");
    std::fs::write(&path, config)?;
    Ok(EnvoyBuilder::new(&path.display().to_string()).env(
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        &library_dir()?.display().to_string(),
    ))
}

fn start(filter_config: &str, upstream: &EchoUpstream) -> Result<(tempfile::TempDir, Envoy)> {
    let dir = tempfile::tempdir()?;
    let envoy = envoy(&dir, filter_config)?
        .upstream(upstream.port())
        .start()?;
    Ok((dir, envoy))
}

#[test]
fn the_presence_configuration_does_nothing() -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let (_dir, envoy) = start("{}", &upstream)?;
    let resp = client::send(envoy.listen_addr(), &Request::get("/presence"))?;
    ensure!(resp.status == 200, "status {}", resp.status);
    let echoed = Echoed::from_response(&resp)?;
    ensure!(echoed.path == "/presence");
    ensure!(
        echoed.header("x-platform").is_none(),
        "{:?}",
        echoed.headers
    );
    ensure!(resp.header("x-platform").is_none(), "{:?}", resp.headers);
    Ok(())
}

/// Each bench case's configuration (`{"<kind>": 8}`, tools/xtask's
/// `DYNAMIC_MODULE_PLATFORM_CASES`) does its kind of call and no other: the written headers
/// reach the upstream or the client only when asked for, the counter counts 8 a request only
/// when asked for, and the reads and map reads let the request through.
#[test]
fn each_case_configuration_does_its_calls_and_no_others() -> Result<()> {
    for field in [
        "request_header_reads",
        "request_header_map_reads",
        "request_header_writes",
        "response_header_writes",
        "counter_increments",
    ] {
        let upstream = EchoUpstream::start()?;
        let (_dir, envoy) = start(&format!(r#"{{"{field}": 8}}"#), &upstream)?;
        for _ in 0..2 {
            let resp = client::send(envoy.listen_addr(), &Request::get("/work"))?;
            ensure!(resp.status == 200, "{field}: status {}", resp.status);
            let echoed = Echoed::from_response(&resp)?;
            // Eight writes of one header replace it: one copy.
            let upstream_saw = echoed.header_all("x-platform");
            let client_saw = resp.header_all("x-platform");
            if field == "request_header_writes" {
                ensure!(upstream_saw == ["value"], "{field}: {:?}", echoed.headers);
            } else {
                ensure!(upstream_saw.is_empty(), "{field}: {:?}", echoed.headers);
            }
            if field == "response_header_writes" {
                ensure!(client_saw == ["value"], "{field}: {:?}", resp.headers);
            } else {
                ensure!(client_saw.is_empty(), "{field}: {:?}", resp.headers);
            }
        }
        let counters = envoy.stats_matching("platform_counter")?;
        if field == "counter_increments" {
            let counted = envoy.counter("dynamicmodulescustom.platform_counter")?;
            ensure!(
                counted == 16,
                "8 increments × 2 requests, counted {counted}"
            );
        } else {
            ensure!(counters.is_empty(), "{field}: {counters:?}");
        }
        ensure!(upstream.requests_seen() == 2, "{field}");
    }
    Ok(())
}

#[test]
fn a_read_that_finds_nothing_answers_500() -> Result<()> {
    let upstream = EchoUpstream::start()?;
    let (_dir, envoy) = start(
        r#"{"request_header_reads": 8, "read_header": "x-absent"}"#,
        &upstream,
    )?;
    let resp = client::send(envoy.listen_addr(), &Request::get("/"))?;
    ensure!(resp.status == 500, "status {}", resp.status);
    let resp = client::send(
        envoy.listen_addr(),
        &Request::get("/").header("x-absent", "here"),
    )?;
    ensure!(resp.status == 200, "status {}", resp.status);
    ensure!(upstream.requests_seen() == 1);
    Ok(())
}

#[test]
fn a_bad_configuration_is_refused_naming_the_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    match envoy(&dir, r#"{"counter_increments": 65}"#)?
        .ready_timeout(Duration::from_secs(20))
        .start()
    {
        Ok(_) => bail!("Envoy accepted counter_increments 65"),
        Err(e) => {
            let output = format!("{e:#}");
            ensure!(
                output.contains("counter_increments: must be at most 64"),
                "{output}"
            );
        }
    }
    Ok(())
}
