//! Support code for gatewasm's end-to-end tests against a **real Envoy** (the official build,
//! V8 runtime) and for `just demo`.
//!
//! The pieces:
//!
//! - [`paths`]: where the workspace, the built `.wasm` filters, the Envoy binary and
//!   `envoy-configs/` are. Environment overrides: `GATEWASM_WASM_DIR`, `ENVOY_BIN`,
//!   `ENVOY_VERSION`.
//! - [`render`]: the one and only templating of `envoy-configs/*.yaml` (placeholders such as
//!   `{{LISTEN_PORT}}`; ports and file paths only). The `render-config` binary wraps it for
//!   `just demo`.
//! - [`envoy`]: starts Envoy from a config in `envoy-configs/` on free loopback ports, waits for
//!   the admin `/ready`, captures its log, reads `/stats`, and stops the process on drop.
//! - [`echo`]: an upstream that answers every request with JSON describing what it received.
//! - [`oci`] and [`deploy`]: reproducible OCI images of the filters (`just package`), the
//!   list of filters that ship, and the Istio / Envoy Gateway manifests that pin them.
//! - [`rls_server`]: a test rate-limit service (Envoy's RLS gRPC protocol) counting in a real
//!   Redis, and the `redis-server` process it uses.
//! - [`client`]: a small HTTP/1.1 client that can send any (duplicated, odd) headers, plus a
//!   fast keep-alive burst sender for volume tests.
//!
//! Everything here is synchronous from the caller's point of view: async work runs on one
//! process-wide tokio runtime ([`runtime`]), so plain `#[test] fn`s can use it.
//!
//! - [`demo_jwt`]: the demo identity provider's key (tokens for `just demo`, tests, bench).
//! - [`bench`]: `just bench`, Envoy's CPU per request with each filter vs native filters.
//! - [`cost`]: the same request in the harness: callbacks, host calls and Wasm instructions
//!   per filter — deterministic figures for regression checks and the bench report.
//!
//! Missing prerequisites fail loudly and name the fix (`just build`, `just envoy`); nothing is
//! ever skipped.

pub mod bench;
pub mod client;
pub mod cost;
pub mod demo_jwt;
pub mod deploy;
pub mod echo;
pub mod envoy;
pub mod http_server;
pub mod oci;
pub mod paths;
pub mod render;
pub mod rls_server;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};

/// The process-wide tokio runtime used by the echo upstream and the HTTP client.
///
/// Two worker threads: enough to serve an echo upstream and drive a burst of client
/// connections at the same time, without competing with Envoy for every core.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gatewasm-tests-rt")
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    // Another thread may have won the race; either runtime is fine, the loser is dropped.
    let _ = RT.set(rt);
    RT.get().context("tokio runtime vanished")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Binds `127.0.0.1:0`, reads the port the kernel chose and releases it. Ports handed out
/// by this process are remembered and never handed out twice, so parallel tests in one
/// binary do not collide with each other; another process could still grab the port in the
/// window before Envoy binds it, which [`envoy::EnvoyBuilder::start`] handles by retrying.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..50 {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let mut handed_out = HANDED_OUT
            .lock()
            .map_err(|_| anyhow::anyhow!("free-port registry poisoned"))?;
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("could not find a free port on 127.0.0.1 after 50 attempts")
}

// Declarative scenarios (tests/scenarios/): one file, run in the harness and in a real Envoy.
pub mod scenario;
pub mod scenario_envoy;
pub mod scenario_harness;
