//! A proxy-wasm 0.2.5 module whose only job is to call every host function, so the harness's
//! own tests can check each one against Envoy's documented behaviour. The request header
//! `x-cmd` picks what a stream does; results come back as request headers the upstream sees
//! (`x-r-*`), so every test asserts through the same channel a real filter would use.
//! It is test scaffolding: it unwraps freely, because a panic here is itself a test signal.
//!
//! One more mode, chosen by the plugin configuration instead of `x-cmd`: a configuration
//! `scenario-local-reply:{"status":401,"headers":[["k","v"]],"body":"…","path_prefix":"/x"}`
//! turns an instance into a plain "filter that sends a local reply" (used by the declarative
//! scenarios in `tests/scenarios/`, whose Envoy runner realises the same thing with Lua). Such an
//! instance answers every request whose `:path` starts with `path_prefix` (all requests without
//! one) and otherwise leaves the stream untouched: no `x-r-*`/`x-resp-seen-by` headers, no metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, config: String::new(), metrics: [0; 3], queue: 0, ticks: 0, reply: None }) });
}}

struct Root {
    id: u32,
    config: String,
    metrics: [u32; 3],
    queue: u32,
    ticks: u64,
    /// Set by a `scenario-local-reply:` configuration.
    reply: Option<Rc<ScriptedReply>>,
}

/// The local reply a `scenario-local-reply:` instance sends.
struct ScriptedReply {
    status: u32,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    path_prefix: String,
}

impl ScriptedReply {
    fn parse(json: &str) -> ScriptedReply {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let headers = v["headers"]
            .as_array()
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap().to_string(),
                            p[1].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        ScriptedReply {
            status: v["status"].as_u64().unwrap() as u32,
            headers,
            body: v["body"].as_str().unwrap_or_default().as_bytes().to_vec(),
            path_prefix: v["path_prefix"].as_str().unwrap_or_default().to_string(),
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        log::info!(
            "root got http call response token={token} headers={num_headers} body={body_size}"
        );
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, size: usize) -> bool {
        let cfg = self.get_vm_configuration().unwrap_or_default();
        log::info!(
            "on_vm_start size={size} config={}",
            String::from_utf8_lossy(&cfg)
        );
        cfg != b"reject"
    }

    fn on_configure(&mut self, size: usize) -> bool {
        self.config =
            String::from_utf8(self.get_plugin_configuration().unwrap_or_default()).unwrap();
        log::info!("on_configure size={size} config={}", self.config);
        if let Some(json) = self.config.strip_prefix("scenario-local-reply:") {
            self.reply = Some(Rc::new(ScriptedReply::parse(json)));
            return true;
        }
        if self.config == "reject" {
            log::error!("configuration rejected: field `config` says reject");
            return false;
        }
        if let Some(ms) = self.config.strip_prefix("tick:") {
            self.set_tick_period(Duration::from_millis(ms.parse().unwrap()));
        }
        if self.config == "panic-configure" {
            panic!("configure exploded");
        }
        self.metrics = [
            hostcalls::define_metric(MetricType::Counter, "test_counter").unwrap(),
            hostcalls::define_metric(MetricType::Gauge, "test_gauge").unwrap(),
            hostcalls::define_metric(MetricType::Histogram, "test_histogram").unwrap(),
        ];
        self.queue = self.register_shared_queue("test_queue");
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let id = hostcalls::define_metric(MetricType::Counter, "test_ticks").unwrap();
        hostcalls::increment_metric(id, 1).unwrap();
        log::info!(
            "tick {} at {:?}",
            self.ticks,
            self.get_current_time()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            log::info!("dequeued {}", String::from_utf8_lossy(&item));
        }
        let empty = matches!(self.dequeue_shared_queue(queue_id), Ok(None));
        log::info!("queue drained, empty={empty}");
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            root: self.id,
            metrics: self.metrics,
            queue: self.queue,
            cmd: String::new(),
            token: 0,
            reply: self.reply.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    root: u32,
    metrics: [u32; 3],
    queue: u32,
    cmd: String,
    token: u32,
    reply: Option<Rc<ScriptedReply>>,
}

fn status_name(r: Result<(), Status>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(s) => format!("{s:?}"),
    }
}

impl Stream {
    fn r(&self, name: &str, value: &str) {
        self.add_http_request_header(&format!("x-r-{name}"), value);
    }

    fn header(&self, name: &str) -> String {
        self.get_http_request_header(name).unwrap_or_default()
    }
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        assert_eq!(
            token, self.token,
            "response delivered to the context that made the call"
        );
        if num_headers == 0 {
            let (code, msg) = self.get_grpc_status();
            self.r(
                "call-failed",
                &format!("{code} {}", msg.unwrap_or_default()),
            );
        } else {
            let status = self
                .get_http_call_response_header(":status")
                .unwrap_or_default();
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            self.r("call-status", &status);
            self.r("call-body", &String::from_utf8_lossy(&body));
            self.r("call-trailers", &num_trailers.to_string());
        }
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, size: usize) {
        assert_eq!(token, self.token);
        let body = self
            .get_grpc_call_response_body(0, size)
            .unwrap_or_default();
        let (code, msg) = self.get_grpc_status();
        self.r(
            "grpc",
            &format!(
                "{status_code} {} {code} {}",
                String::from_utf8_lossy(&body),
                msg.unwrap_or_default()
            ),
        );
        self.resume_http_request();
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, n: u32) {
        let md = self.get_grpc_stream_initial_metadata();
        log::info!(
            "grpc stream initial metadata n={n} first={:?}",
            md.first().map(|(k, _)| k.clone())
        );
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let msg = self.get_grpc_stream_message(0, size).unwrap_or_default();
        log::info!("grpc stream message {}", String::from_utf8_lossy(&msg));
        self.send_grpc_stream_message(token, Some(b"pong"), false);
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, n: u32) {
        log::info!("grpc stream trailing metadata n={n}");
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status: u32) {
        let (code, msg) = self.get_grpc_status();
        self.r(
            "grpc-stream-close",
            &format!("{status} {code} {}", msg.unwrap_or_default()),
        );
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize, eos: bool) -> Action {
        if let Some(reply) = self.reply.clone() {
            let path = self.header(":path");
            if path.starts_with(&reply.path_prefix) {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
                self.send_http_response(reply.status, headers, body);
                return Action::Pause;
            }
            return Action::Continue;
        }
        let plugin =
            String::from_utf8(self.get_property(vec!["plugin_name"]).unwrap_or_default()).unwrap();
        // In a chain of several instances, `x-target` names the one that acts.
        let target = self.get_http_request_header("x-target");
        if target.is_none() || target.as_deref() == Some(plugin.as_str()) {
            self.cmd = self.header("x-cmd");
        }
        self.r("seen-by", &format!("{plugin}:{num_headers}:{eos}"));
        match self.cmd.as_str() {
            "headers" => {
                let all = self.get_http_request_headers();
                self.r("count", &all.len().to_string());
                self.r("dup-first", &self.header("x-dup"));
                self.set_http_request_header("x-replace", Some("new"));
                self.remove_http_request_header("x-remove");
                self.r(
                    "missing",
                    &format!("{:?}", self.get_http_request_header("x-absent")),
                );
            }
            "set-pairs" => self.set_http_request_headers(vec![
                (":method", "GET"),
                (":path", "/replaced"),
                (":authority", "h"),
                ("x-only", "1"),
            ]),
            "local-reply" => {
                self.send_http_response(403, vec![("x-reason", "test")], Some(b"denied"));
                return Action::Pause;
            }
            "local-reply-continue" => {
                // Envoy ignores the callback's answer after a local reply.
                self.send_http_response(401, vec![], None);
                return Action::Continue;
            }
            "pause" => return Action::Pause,
            "pause-call" | "call-timeout" => {
                let timeout = if self.cmd == "call-timeout" {
                    500
                } else {
                    5000
                };
                self.token = self
                    .dispatch_http_call(
                        "upstream",
                        vec![
                            (":method", "GET"),
                            (":path", "/auth"),
                            (":authority", "auth"),
                        ],
                        Some(b"ping"),
                        vec![("t", "1")],
                        Duration::from_millis(timeout),
                    )
                    .unwrap();
                return Action::Pause;
            }
            "bad-calls" => {
                let unknown = self.dispatch_http_call(
                    "nope",
                    vec![(":method", "GET"), (":path", "/"), (":authority", "a")],
                    None,
                    vec![],
                    Duration::from_secs(1),
                );
                let no_path = self.dispatch_http_call(
                    "upstream",
                    vec![(":method", "GET"), (":authority", "a")],
                    None,
                    vec![],
                    Duration::from_secs(1),
                );
                self.r("unknown-cluster", &format!("{unknown:?}"));
                self.r("no-path", &format!("{no_path:?}"));
            }
            "shared" => {
                let key = self.header("x-key");
                let cas = self.header("x-cas").parse::<u32>().ok();
                let value = self.header("x-value");
                let res = self.set_shared_data(&key, Some(value.as_bytes()), cas);
                self.r("set", &status_name(res));
                let (v, cas) = self.get_shared_data(&key);
                self.r("value", &String::from_utf8_lossy(&v.unwrap_or_default()));
                self.r("cas", &cas.unwrap_or(0).to_string());
                let (missing, _) = self.get_shared_data("never-set");
                self.r("missing", &format!("{missing:?}"));
            }
            "incr" => {
                let mut retries = 0;
                let n = loop {
                    let (v, cas) = self.get_shared_data("counter");
                    let n = v.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap())) + 1;
                    match self.set_shared_data(
                        "counter",
                        Some(&n.to_le_bytes()),
                        Some(cas.unwrap_or(0)),
                    ) {
                        Ok(()) => break n,
                        Err(Status::CasMismatch) => retries += 1,
                        Err(e) => panic!("set_shared_data: {e:?}"),
                    }
                };
                self.r("incr", &format!("{n} {retries}"));
            }
            "props" => {
                let get = |p: Vec<&str>| {
                    self.get_property(p)
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_else(|| "missing".into())
                };
                self.r("source", &get(vec!["source", "address"]));
                self.r("path", &get(vec!["request", "path"]));
                self.r("url-path", &get(vec!["request", "url_path"]));
                self.r("method", &get(vec!["request", "method"]));
                self.r("host", &get(vec!["request", "host"]));
                self.r("root-id", &get(vec!["plugin_root_id"]));
                self.r("vm-id", &get(vec!["plugin_vm_id"]));
                self.r("node", &get(vec!["xds", "node", "metadata", "REGION"]));
                self.r("unknown", &get(vec!["no", "such", "property"]));
                let port = self
                    .get_property(vec!["source", "port"])
                    .unwrap_or_default();
                self.r("source-port", &port.len().to_string());
                self.r(
                    "source-port-value",
                    &i64::from_le_bytes(port.try_into().unwrap_or([0; 8])).to_string(),
                );
                self.set_property(vec!["gatewasm", "mark"], Some(b"set"));
                self.r("mark", &get(vec!["gatewasm", "mark"]));
            }
            "metrics" => {
                let [c, g, h] = self.metrics;
                hostcalls::increment_metric(c, 2).unwrap();
                self.r(
                    "zero-delta",
                    &status_name(hostcalls::increment_metric(c, 0)),
                );
                self.r(
                    "negative-delta",
                    &status_name(hostcalls::increment_metric(c, -1)),
                );
                hostcalls::increment_metric(g, -5).unwrap();
                hostcalls::record_metric(h, 42).unwrap();
                hostcalls::record_metric(h, 7).unwrap();
                self.r("counter", &hostcalls::get_metric(c).unwrap().to_string());
                self.r(
                    "gauge",
                    &(hostcalls::get_metric(g).unwrap() as i64).to_string(),
                );
                self.r("histogram-get", &format!("{:?}", hostcalls::get_metric(h)));
                self.r(
                    "unknown-metric",
                    &format!("{:?}", hostcalls::get_metric(9999)),
                );
                let again = hostcalls::define_metric(MetricType::Counter, "test_counter").unwrap();
                self.r("redefined-new-id", &(again != c).to_string());
            }
            "enqueue" => {
                let q = self.resolve_shared_queue("", "test_queue");
                self.r("resolved", &(q == Some(self.queue)).to_string());
                self.r(
                    "resolve-missing",
                    &format!("{:?}", self.resolve_shared_queue("", "nope")),
                );
                self.enqueue_shared_queue(self.queue, Some(self.header("x-payload").as_bytes()))
                    .unwrap();
                self.r(
                    "enqueue-bad",
                    &status_name(self.enqueue_shared_queue(9999, Some(b"x"))),
                );
                self.r(
                    "dequeue-bad",
                    &format!("{:?}", self.dequeue_shared_queue(9999)),
                );
            }
            "foreign" => {
                self.r(
                    "clear",
                    &format!(
                        "{:?}",
                        self.call_foreign_function("clear_route_cache", None)
                    ),
                );
                self.r(
                    "unknown-fn",
                    &format!(
                        "{:?}",
                        self.call_foreign_function("no_such_function", Some(b"x"))
                    ),
                );
                let echo = self.call_foreign_function("echo_upper", Some(b"abc"));
                self.r(
                    "echo",
                    &format!(
                        "{:?}",
                        echo.map(|o| o.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    ),
                );
            }
            "time" => {
                let host = self
                    .get_current_time()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                let wasi = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                self.r("time", &host.to_string());
                self.r("wasi-time", &wasi.to_string());
                let t0 = std::time::Instant::now();
                self.r(
                    "monotonic-ok",
                    &(t0.elapsed() < Duration::from_secs(1)).to_string(),
                );
            }
            "random" => {
                // std's HashMap seeds itself through WASI random_get.
                let mut m = HashMap::new();
                m.insert(self.id, self.root);
                self.r("random", &m.len().to_string());
            }
            "env" => self.r(
                "env",
                &std::env::var("TEST_ENV").unwrap_or_else(|_| "unset".into()),
            ),
            "stdout" => {
                println!("hello on stdout");
                eprintln!("trouble on stderr");
            }
            "log-level" => self.r("log-level", &format!("{:?}", hostcalls::get_log_level())),
            "effective" => self.r(
                "effective-bad",
                &status_name(hostcalls::set_effective_context(99_999)),
            ),
            "done" => self.r("done", &status_name(hostcalls::done())),
            "panic" => panic!("boom in request headers"),
            "grpc" => {
                self.token = self
                    .dispatch_grpc_call(
                        "grpc-cluster",
                        "test.Svc",
                        "Check",
                        vec![("k", b"v".as_slice())],
                        Some(b"req"),
                        Duration::from_secs(1),
                    )
                    .unwrap();
                let unknown =
                    self.dispatch_grpc_call("nope", "s", "m", vec![], None, Duration::from_secs(1));
                self.r("grpc-unknown", &format!("{unknown:?}"));
                return Action::Pause;
            }
            "grpc-cancel" => {
                let t = self
                    .dispatch_grpc_call(
                        "grpc-cluster",
                        "test.Svc",
                        "Check",
                        vec![],
                        Some(b"req"),
                        Duration::from_secs(1),
                    )
                    .unwrap();
                self.cancel_grpc_call(t);
            }
            "grpc-stream" => {
                self.token = self
                    .open_grpc_stream("grpc-cluster", "test.Svc", "Watch", vec![])
                    .unwrap();
                self.send_grpc_stream_message(self.token, Some(b"hello"), false);
                return Action::Pause;
            }
            "grpc-stream-close" => {
                let token = self
                    .open_grpc_stream("grpc-cluster", "test.Svc", "Watch", vec![])
                    .unwrap();
                self.close_grpc_stream(token);
            }
            "exit" => std::process::exit(3),
            "reset" => {
                self.reset_http_request();
                return Action::Pause;
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if self.cmd == "body" {
            if !eos {
                return Action::Pause;
            }
            let body = self.get_http_request_body(0, size).unwrap_or_default();
            self.set_http_request_body(0, size, &body.to_ascii_uppercase());
        }
        if self.cmd == "body-reply" && eos {
            self.send_http_response(413, vec![], Some(b"too big"));
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, n: usize) -> Action {
        if self.cmd == "trailers" {
            self.add_http_request_trailer("x-trailer-seen", &n.to_string());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if self.reply.is_some() {
            return Action::Continue;
        }
        let plugin =
            String::from_utf8(self.get_property(vec!["plugin_name"]).unwrap_or_default()).unwrap();
        self.add_http_response_header("x-resp-seen-by", &plugin);
        match self.cmd.as_str() {
            "late-read" => {
                // Request headers are gone once the request phase is over: Envoy answers
                // BadArgument and the SDK panics.
                let _ = self.get_http_request_header(":path");
            }
            "response-reply" => {
                self.send_http_response(502, vec![], Some(b"replaced"));
                return Action::Pause;
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if self.cmd == "response-body" {
            if !eos {
                return Action::Pause;
            }
            self.set_http_response_body(0, size, b"rewritten");
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        Action::Continue
    }

    fn on_log(&mut self) {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let status = self.get_http_response_header(":status").unwrap_or_default();
        log::info!("on_log ctx={} path={path} status={status}", self.id);
    }
}
