//! Developer tasks that run beside the tests but are not tests, and need neither the harness
//! nor a WebAssembly runtime:
//!
//! - [`bench`] (binary `bench`, `just bench`): Envoy's CPU time and instructions per request
//!   with each gatewasm filter, side by side with Envoy's native filters; report and chart.
//! - [`oci`] (binary `package-oci`, `just package`): reproducible OCI images of the filters.
//! - [`deploy`]: what ships where — the filters, their Istio and Envoy Gateway manifests and the
//!   digests pinned in them; `package-oci` rewrites those digests, the tests check the rest.
//!
//! Envoy, the echo upstream, configs and tokens come from `gatewasm-devtools`, re-exported here
//! under the same names the tests use.

pub mod bench;
pub mod deploy;
pub mod oci;

pub use gatewasm_devtools::{client, demo_jwt, echo, envoy, free_port, paths, render};
