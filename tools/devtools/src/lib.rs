//! What `just demo` runs, and what the end-to-end tests share with it (`gatewasm-tests`
//! re-exports every module here, so tests name them `gatewasm_tests::echo` and so on):
//!
//! - [`paths`]: where the workspace, the built `.wasm` filters, the Envoy binary and
//!   `envoy-configs/` are. Environment overrides: `GATEWASM_WASM_DIR`, `ENVOY_BIN`,
//!   `ENVOY_VERSION`.
//! - [`render`]: the one and only templating of `envoy-configs/*.yaml` (placeholders such as
//!   `{{LISTEN_PORT}}`; ports and file paths only). The `render-config` binary wraps it.
//! - [`echo`] (on [`http_server`]): an upstream that answers every request with JSON describing
//!   what it received; the `echo-upstream` binary serves it.
//! - [`client`]: a small HTTP/1.1 and HTTP/2 client that can send any (duplicated, odd) headers,
//!   plus a keep-alive burst sender for volume tests.
//! - [`demo_jwt`]: the demo identity provider's key; the `demo-token` binary mints tokens.
//! - [`envoy`]: starts a real Envoy on free ports from a config of `envoy-configs/`, waits until
//!   it is ready, and stops it by PID (tests and `just bench`).
//!
//! Async work runs on one process-wide tokio runtime ([`runtime`]), so callers stay synchronous.
//! Nothing here depends on the Proxy-Wasm harness: `just demo` builds this crate alone.

pub mod client;
pub mod demo_jwt;
pub mod echo;
pub mod envoy;
pub mod http_server;
pub mod paths;
pub mod render;

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
