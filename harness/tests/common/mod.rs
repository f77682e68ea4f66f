#![allow(dead_code, clippy::panic, clippy::unwrap_used, clippy::expect_used)]
use proxy_wasm_harness::{HeaderMap, Host, Module, PluginConfig, StreamId, StreamView, Worker};

pub fn module() -> Module {
    match Module::artifact("harness-test-module") {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

pub fn request(cmd: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".to_string()),
        (":path", "/p?q=1".to_string()),
        (":authority", "example.com".to_string()),
        ("x-cmd", cmd.to_string()),
    ]
}

pub fn worker(host: &Host, config: &str) -> Worker {
    let plugin = PluginConfig::new(&module()).name("t").configuration(config);
    Worker::new(host, &[plugin]).unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `x-cmd: cmd` plus `extra` headers (end of stream) and returns the stream and its view.
pub fn run(w: &mut Worker, cmd: &str, extra: &[(&str, &str)]) -> (StreamId, StreamView) {
    let id = w.open_stream().unwrap_or_else(|e| panic!("{e}"));
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", "GET"),
        (":path", "/p?q=1"),
        (":authority", "example.com"),
        ("x-cmd", cmd),
    ];
    headers.extend_from_slice(extra);
    w.send_request_headers(id, &headers, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let view = w.stream(id).unwrap_or_else(|e| panic!("{e}"));
    (id, view)
}

pub fn upstream(view: &StreamView) -> HeaderMap {
    view.upstream_request_headers
        .clone()
        .unwrap_or_else(|| panic!("the request did not reach the upstream: {view:?}"))
}

pub fn r(view: &StreamView, name: &str) -> String {
    upstream(view)
        .get(&format!("x-r-{name}"))
        .unwrap_or_else(|| panic!("no x-r-{name} in {view:?}"))
}
