//! `proxy-wasm-harness`: a wasmtime host for the Proxy-Wasm ABI v0.2.1 that runs a filter's real
//! `.wasm` the way Envoy does, so tests exercise the artifact that ships.
//!
//! - [`Module`] loads and compiles a module once (cached on disk between runs) and refuses one
//!   that imports anything the harness does not provide.
//! - [`Host`] is the proxy process: virtual clock, shared data and queues keyed by vm_id with
//!   Envoy's CAS rules, metrics by name, clusters, properties, foreign functions.
//! - [`Worker`] is one worker thread: a VM per plugin of a filter chain and the HTTP streams
//!   running through it, with Envoy's phase rules, pause/continue, local replies and callouts.
//!   Several workers of one host may run on threads at once.
//! - [`assert_configs_rejected`] checks a table of broken configurations: each one refused by
//!   `on_configure`, with an error line that names the field and the problem.
//! - [`testing`] has the helpers tests share: a module or a one-plugin worker that panics with
//!   the harness's error, and the headers that reached the upstream.
//!
//! ```no_run
//! use proxy_wasm_harness::{Host, Module, PluginConfig, Worker};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let module = Module::artifact("correlation-id")?;           // target/wasm32-wasip1/release/correlation_id.wasm
//! let host = Host::new();
//! let plugin = PluginConfig::new(&module).configuration(r#"{"trust_incoming": false}"#);
//! let mut worker = Worker::new(&host, &[plugin])?;            // on_vm_start + on_configure
//! let view = worker.exchange(
//!     &[(":method", "GET"), (":path", "/"), (":authority", "example.com")], None,
//!     &[(":status", "200")], None,
//! )?;
//! assert!(view.upstream_request_headers.unwrap().contains("x-request-id"));
//! assert_eq!(host.counter("gatewasm_correlation_id_generated"), 1);
//! # Ok(()) }
//! ```

mod abi;
mod config_check;
mod error;
mod foreign;
mod host;
mod imports;
mod module;
mod stream;
pub mod testing;
mod vm;
mod worker;

pub use abi::{Action, LogLevel, MetricType, Status, deserialize_map, serialize_map};
pub use config_check::{assert_config_rejected, assert_configs_rejected, config_rejection};
pub use error::HarnessError;
pub use host::{ForeignFunction, Host, MetricValue};
pub use module::{Module, artifact_path};
pub use stream::{HeaderMap, LocalResponse, StreamOptions, StreamView};
pub use vm::{
    CallId, CallbackRecord, CallbackResult, LogEntry, PendingGrpcCall, PendingHttpCall,
    PluginConfig,
};
pub use worker::{BROKEN_CONNECTION, GrpcResponse, HttpCallResponse, StreamId, Worker};
