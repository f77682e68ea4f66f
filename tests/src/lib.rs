//! Support code for gatewasm's end-to-end tests against a **real Envoy** (the official build,
//! V8 runtime) and for `just demo`.
//!
//! The pieces:
//!
//! - Re-exported from `gatewasm-devtools` (tools/devtools, what `just demo` runs, built without
//!   the harness): [`paths`] (where the workspace, the `.wasm` filters, Envoy and
//!   `envoy-configs/` are), [`render`] (the templating of `envoy-configs/*.yaml`), [`echo`] (an
//!   upstream that answers with what it received), [`client`] (an HTTP client that sends any
//!   headers), [`demo_jwt`] (the demo identity provider), [`runtime`] and [`free_port`];
//!   [`envoy`]: starts Envoy from a config in `envoy-configs/` on free loopback ports, waits
//!   for the admin `/ready`, captures its log, reads `/stats`, and stops the process on drop.
//! - Re-exported from `gatewasm-xtask` (tools/xtask, no harness either): [`oci`] and [`deploy`]
//!   (reproducible OCI images of the filters, `just package`; the list of filters that ship,
//!   and the Istio / Envoy Gateway manifests that pin them) and [`bench`] (`just bench`).
//! - [`limitador_rls`]: the real rate-limit engine of the global e2e tests — Kuadrant's
//!   Limitador (Redis storage) over Envoy's RLS gRPC protocol, the `tools/limitador-rls` binary
//!   that `just limitador-rls` builds — and the README's Limitador limits file it is run with.
//! - [`rls_server`]: a hand-written rate-limit service (Envoy's RLS gRPC protocol) counting in a
//!   real Redis, kept for the failure-mode tests (a service that hangs or fails), and the
//!   `redis-server` process both services use.
//!
//! Everything here is synchronous from the caller's point of view: async work runs on one
//! process-wide tokio runtime ([`runtime`]), so plain `#[test] fn`s can use it.
//!
//! - [`cost`]: the bench request in the harness: callbacks, host calls and Wasm instructions
//!   per filter — deterministic figures for regression checks and, through the `request-cost`
//!   binary, the bench report.
//!
//! Missing prerequisites fail loudly and name the fix (`just build`, `just envoy`,
//! `just limitador-rls`); nothing is
//! ever skipped.

pub mod cost;
pub mod limitador_rls;
pub mod rls_server;

// What `just demo` needs lives in tools/devtools, the bench, OCI images and deploy manifests in
// tools/xtask — neither depends on the harness, so the demo, `just bench` and `just package`
// do not compile wasmtime for themselves; the tests name them through here.
pub use gatewasm_devtools::{
    client, demo_jwt, echo, envoy, free_port, http_server, paths, render, runtime,
};
pub use gatewasm_xtask::{bench, deploy, oci};

// Declarative scenarios (tests/scenarios/): one file, run in the harness and in a real Envoy.
pub mod scenario;

/// Runs an end-to-end test of the edge gateway on `envoy-configs/gateway.yaml` and on the same
/// gateway over gatewasm.wasm in its two shapes, `gateway-bundle.yaml` and `gateway-chain.yaml`
/// ([`deploy::Shape`]), so the three promise the same and are held to it.
///
/// After `fn name(config: &str) -> anyhow::Result<()>`, `gateway_shapes!(name);` makes the
/// tests `name::gateway_yaml`, `name::gateway_bundle_yaml` and `name::gateway_chain_yaml`
/// (`cargo test … -- ::gateway_chain_yaml` runs one shape).
#[macro_export]
macro_rules! gateway_shapes {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[test]
            fn gateway_yaml() -> ::anyhow::Result<()> {
                super::$test($crate::deploy::Shape::Separate.gateway_config())
            }
            #[test]
            fn gateway_bundle_yaml() -> ::anyhow::Result<()> {
                super::$test($crate::deploy::Shape::Bundle.gateway_config())
            }
            #[test]
            fn gateway_chain_yaml() -> ::anyhow::Result<()> {
                super::$test($crate::deploy::Shape::Chain.gateway_config())
            }
        }
    )+};
}
