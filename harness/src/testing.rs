//! Test support: the helpers every filter's harness tests wrote for themselves. For tests only —
//! each one panics with the harness's error message (the test fails there, with the cause)
//! instead of returning it.
//!
//! ```no_run
//! use proxy_wasm_harness::Host;
//! use proxy_wasm_harness::testing::{upstream, worker};
//!
//! let host = Host::new();
//! let mut w = worker(&host, "correlation-id", "cid", r#"{"trust_incoming": false}"#);
//! let request = [(":method", "GET"), (":path", "/"), (":authority", "a")];
//! let view = w.exchange(&request, None, &[(":status", "200")], None).unwrap_or_else(|e| panic!("{e}"));
//! assert!(upstream(&view).contains("x-request-id"));
//! ```
#![allow(clippy::panic)]

use crate::{HeaderMap, Host, Module, PluginConfig, StreamView, Worker};

/// [`Module::artifact`], or a panic with the reason (e.g. the `.wasm` is not built).
pub fn module(name: &str) -> Module {
    Module::artifact(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A worker running one plugin: the artifact `module` (see [`module`]) as plugin `plugin_name`
/// with `configuration`; panics if the module does not load or refuses to start.
pub fn worker(host: &Host, module: &str, plugin_name: &str, configuration: &str) -> Worker {
    let plugin = PluginConfig::new(&self::module(module))
        .name(plugin_name)
        .configuration(configuration);
    Worker::new(host, &[plugin]).unwrap_or_else(|e| panic!("{e}"))
}

/// The request headers that reached the upstream; panics with the stream's view when the
/// request did not get there (a local reply, a reset, still paused).
pub fn upstream(view: &StreamView) -> HeaderMap {
    view.upstream_request_headers
        .clone()
        .unwrap_or_else(|| panic!("the request did not reach the upstream: {view:?}"))
}
