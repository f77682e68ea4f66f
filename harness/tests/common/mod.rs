#![allow(dead_code, clippy::panic, clippy::unwrap_used, clippy::expect_used)]
use proxy_wasm_harness::testing;
pub use proxy_wasm_harness::testing::upstream;
use proxy_wasm_harness::{Host, Module, StreamId, StreamView, Worker};

pub fn module() -> Module {
    testing::module("harness-test-module")
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
    testing::worker(host, "harness-test-module", "t", config)
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

pub fn r(view: &StreamView, name: &str) -> String {
    upstream(view)
        .get(&format!("x-r-{name}"))
        .unwrap_or_else(|| panic!("no x-r-{name} in {view:?}"))
}
