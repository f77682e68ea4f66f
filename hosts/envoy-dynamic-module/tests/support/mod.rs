//! What the end-to-end test files share: finding the built module and an Envoy 1.40, and
//! writing a one-filter configuration.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use gatewasm_devtools::envoy::{Envoy, EnvoyBuilder};

/// The rate-limit service's cluster (HTTP/2, gRPC) on `{{RLS_PORT}}`, for [`single_filter_with`].
pub const RLS_CLUSTER: &str = r#"  - name: rls
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: rls
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: {{RLS_PORT}} }
"#;

/// Where the shipped library is: `GATEWASM_DYNAMIC_MODULE_DIR`, else the `native` profile's
/// output of this target directory (this test binary is `<target>/<profile>/deps/<name>`).
pub fn module_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("GATEWASM_DYNAMIC_MODULE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::current_exe()?
            .ancestors()
            .nth(3)
            .context("this test binary is not in <target>/<profile>/deps/")?
            .join("native"),
    };
    let lib = dir.join("libgatewasm_envoy.so");
    ensure!(
        lib.is_file(),
        "{} does not exist: run `just build-native` (or set GATEWASM_DYNAMIC_MODULE_DIR)",
        lib.display()
    );
    Ok(dir)
}

/// The module speaks Envoy 1.40's ABI: another Envoy would fail to load it (or worse), so the
/// tests refuse to run against one, saying which they found.
pub fn require_envoy_1_40() -> Result<()> {
    let bin = gatewasm_devtools::paths::envoy_bin()?;
    let out = std::process::Command::new(&bin).arg("--version").output()?;
    let version = String::from_utf8_lossy(&out.stdout);
    ensure!(
        version.contains("/1.40."),
        "the dynamic module is built for Envoy 1.40; {} is {}: run `just test-native` \
         (or set ENVOY_BIN to an Envoy 1.40)",
        bin.display(),
        version.trim()
    );
    Ok(())
}

/// An Envoy for `config` (a file of envoy-configs/, or a path) that finds the module.
pub fn envoy(config: &str) -> Result<EnvoyBuilder> {
    require_envoy_1_40()?;
    Ok(EnvoyBuilder::new(config).env(
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        &module_dir()?.display().to_string(),
    ))
}

/// A listener with ONE dynamic-module filter of this module (`filter_name`, `filter_config`)
/// in front of the upstream, written to `dir`; the path, for [`envoy`].
pub fn single_filter(
    dir: &tempfile::TempDir,
    filter_name: &str,
    filter_config: &str,
) -> Result<String> {
    single_filter_with(dir, filter_name, filter_config, "")
}

/// [`single_filter`] with more clusters (`clusters`: YAML list items at the `clusters:`
/// indentation, e.g. [`RLS_CLUSTER`]).
pub fn single_filter_with(
    dir: &tempfile::TempDir,
    filter_name: &str,
    filter_config: &str,
    clusters: &str,
) -> Result<String> {
    let config: String = filter_config
        .lines()
        .map(|line| format!("                  {line}\n"))
        .collect();
    let template = format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{ADMIN_PORT}}}} }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{{{LISTEN_PORT}}}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          use_remote_address: true
          generate_request_id: false
          preserve_external_request_id: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: gatewasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: gatewasm_envoy }}
              filter_name: {filter_name}
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: |
{config}          - name: envoy.filters.http.router
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
{clusters}"#
    );
    let path = dir.path().join(format!("{filter_name}.yaml"));
    std::fs::write(&path, template)?;
    Ok(path.display().to_string())
}

/// Envoy shows a counter the module defined as `dynamicmodulescustom.<name>` in /stats.
pub fn stat(envoy: &Envoy, name: &str) -> Result<u64> {
    envoy.counter(&format!("dynamicmodulescustom.{name}"))
}
