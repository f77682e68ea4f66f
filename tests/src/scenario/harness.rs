//! Runs a scenario ([`crate::scenario`]) in the proxy-wasm harness: one [`Host`], one [`Worker`]
//! with the chain's real `.wasm` files, a stream per step.
//!
//! The harness emulates the filters' host; this runner adds what Envoy's HTTP connection manager
//! and router (configured as [`crate::scenario::envoy`] configures them) put around the chain, so
//! that the filters see the same request and response in both hosts:
//!
//! - request headers as the HTTP/1.1 codec and the connection manager hand them to the first
//!   filter: `:authority`, `:path`, `:method`, `:scheme: http`, the client's headers in order
//!   (values without surrounding whitespace, as the codec strips it; without the `x-envoy-*`
//!   control headers Envoy removes from external requests, [`ENVOY_STRIPPED`]),
//!   `content-length` when there is a body, then `x-forwarded-for` (Envoy appends an address of
//!   its own for a loopback client; here `127.0.0.1`), `x-forwarded-proto: http` and
//!   `x-envoy-external-address: 127.0.0.1` (`use_remote_address: true`);
//! - the upstream's response as the router hands it to the last filter: `:status`, the
//!   scenario's headers, `content-length` (not for 1xx/204/304), `x-envoy-upstream-service-time`;
//!   no body for 1xx/204/304 or an answer to `HEAD`;
//! - the request as the upstream receives it: what left the chain, with the `content-length: 0`
//!   Envoy's HTTP/1 codec adds to a body-less request whose method may carry a body (`POST`,
//!   `PUT`, `PATCH`, `OPTIONS`, …);
//! - callouts answered from the step's `callouts` (a cluster without a scripted answer gets a
//!   500, as the Envoy runner's test server answers);
//! - `failure_policy: FAIL_CLOSED`: a module that traps (or was failed by an earlier trap) makes
//!   the client get a 503;
//! - HTTP/1.1 framing: a message whose body no longer matches its `content-length` (a filter
//!   changed the body but not the header) counts as not received, as an HTTP/1.1 peer would wait
//!   for the missing bytes;
//! - `proxy_get_log_level` answers Envoy's level (`GATEWASM_ENVOY_LOG_LEVEL`, default info);
//! - the upstream "received" a request only when the whole request reached it;
//! - the `local_reply` pseudo-filter is the harness test module (`harness_test_module.wasm`) in
//!   its `scenario-local-reply:` mode.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use anyhow::{Result, anyhow};
use proxy_wasm_harness::{
    HarnessError, HeaderMap, Host, HttpCallResponse, LogLevel, MetricValue, Module, PluginConfig,
    StreamId, StreamView, Worker,
};

use crate::scenario::{
    Answer, ClientResponse, HostOutcome, Loaded, Message, Observed, Plugin, RequestSpec, Step,
};

/// The address the runner puts in `x-forwarded-for` (Envoy appends one of its own addresses).
pub const FORWARDED_FOR: &str = "127.0.0.1";

/// The `x-envoy-*` request headers Envoy's connection manager removes from an external client's
/// request before the filters run (`ConnectionManagerUtility::cleanInternalHeaders`; checked
/// against Envoy 1.36 and 1.40). Other `x-envoy-*` headers pass.
pub const ENVOY_STRIPPED: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
];

/// Methods whose body-less requests Envoy's HTTP/1 codec sends without `content-length: 0`.
const BODILESS_METHODS: &[&str] = &["GET", "HEAD", "DELETE", "TRACE", "CONNECT"];

/// Whether a response with this status carries no body (and no `content-length`).
fn no_body_status(status: u16) -> bool {
    status < 200 || status == 204 || status == 304
}

/// A header value as the HTTP/1.1 codec hands it on: without leading and trailing SP/HTAB.
fn trim_ows(v: &str) -> String {
    v.trim_matches(|c| c == ' ' || c == '\t').to_string()
}

/// The body a callout without a scripted answer gets (with status 500), in both hosts.
pub const UNSCRIPTED_CALLOUT_BODY: &str = "no answer scripted for this callout";

fn harness_err(e: HarnessError) -> anyhow::Error {
    anyhow!("{e}")
}

/// Runs the scenario in the harness.
pub fn run(loaded: &Loaded) -> HostOutcome {
    match run_inner(loaded) {
        Ok(o) => o,
        Err(e) => HostOutcome::Failed(format!("{e:#}")),
    }
}

/// The configuration the harness test module gets to act as `local_reply`.
pub fn local_reply_configuration(reply: &crate::scenario::LocalReply) -> String {
    let json = serde_json::json!({
        "status": reply.status,
        "headers": reply.headers.0.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
        "body": reply.body,
        "path_prefix": reply.path_prefix.clone().unwrap_or_default(),
    });
    format!("scenario-local-reply:{json}")
}

/// What `proxy_get_log_level` answers: Envoy's (the runner's `--log-level`, from
/// `GATEWASM_ENVOY_LOG_LEVEL`, default `info`).
pub fn envoy_log_level() -> LogLevel {
    match std::env::var("GATEWASM_ENVOY_LOG_LEVEL")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "warn" | "warning" => LogLevel::Warn,
        "error" => LogLevel::Error,
        "critical" | "off" => LogLevel::Critical,
        _ => LogLevel::Info,
    }
}

fn run_inner(loaded: &Loaded) -> Result<HostOutcome> {
    let host = Host::new();
    for c in &loaded.clusters {
        host.add_cluster(c);
    }
    let mut chain = Vec::new();
    for p in &loaded.plugins {
        match p {
            Plugin::Wasm {
                name,
                vm_id,
                root_id,
                path,
                configuration,
            } => {
                let module = Module::load(path).map_err(harness_err)?;
                chain.push(
                    PluginConfig::new(&module)
                        .name(name)
                        .vm_id(vm_id)
                        .root_id(root_id)
                        .log_level(envoy_log_level())
                        .configuration(configuration.as_bytes()),
                );
            }
            Plugin::Native { name, .. } => {
                anyhow::bail!(
                    "{name} is a filter of the Envoy dynamic module: the harness runs Proxy-Wasm \
                     modules only (the native shape runs in Envoy alone)"
                );
            }
            Plugin::LocalReply { name, reply } => {
                let module = Module::load(crate::paths::wasm_file("harness_test_module")?)
                    .map_err(harness_err)?;
                chain.push(
                    PluginConfig::new(&module)
                        .name(name)
                        .vm_id(name)
                        .log_level(envoy_log_level())
                        .configuration(local_reply_configuration(reply)),
                );
            }
        }
    }
    let mut worker = match Worker::new(&host, &chain) {
        Ok(w) => w,
        Err(e @ (HarnessError::ConfigRejected { .. } | HarnessError::VmStartRejected { .. })) => {
            let mut log = format!("{e}\n");
            for l in e.logs() {
                log.push_str(&format!("[{:?}] {}: {}\n", l.level, l.plugin, l.message));
            }
            return Ok(HostOutcome::ConfigRejected(log));
        }
        Err(e) => return Err(harness_err(e)),
    };
    let mut all = Vec::new();
    for (i, step) in loaded.scenario.steps.iter().enumerate() {
        let advance = loaded.advances.get(i).copied().flatten();
        let observed = run_step(&mut worker, &host, step, advance)
            .map_err(|e| e.context(format!("step {}", i + 1)))?;
        all.push(observed);
    }
    Ok(HostOutcome::Ran(all))
}

/// Counters and gauges by name.
pub fn metric_values(host: &Host) -> BTreeMap<String, i64> {
    host.metrics()
        .into_iter()
        .filter_map(|(name, v)| match v {
            MetricValue::Counter(c) => Some((name, c as i64)),
            MetricValue::Gauge(g) => Some((name, g)),
            MetricValue::Histogram(_) => None,
        })
        .collect()
}

/// `after - before`, non-zero entries only.
pub fn metric_deltas(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d != 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// The request headers as the client sends them (the scenario's view, for `request.` references).
pub fn client_request(req: &RequestSpec) -> Message {
    let mut headers = vec![
        (":method".to_string(), req.method.clone()),
        (":path".to_string(), req.path.clone()),
        (":authority".to_string(), req.authority.clone()),
    ];
    headers.extend(req.headers.0.iter().cloned());
    Message {
        headers,
        body: req.body.clone().unwrap_or_default().into_bytes(),
    }
}

/// The request headers as Envoy's connection manager hands them to the first filter.
fn filter_request_headers(req: &RequestSpec) -> Vec<(String, String)> {
    let mut h = vec![
        (":authority".to_string(), req.authority.clone()),
        (":path".to_string(), req.path.clone()),
        (":method".to_string(), req.method.clone()),
        (":scheme".to_string(), "http".to_string()),
    ];
    h.extend(
        req.headers
            .0
            .iter()
            .filter(|(k, _)| !ENVOY_STRIPPED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), trim_ows(v))),
    );
    let body_len = req.body.as_ref().map_or(0, String::len);
    if body_len > 0 {
        h.push(("content-length".into(), body_len.to_string()));
    }
    // Envoy appends to an incoming x-forwarded-for (one header, comma-joined).
    match h.iter_mut().find(|(k, _)| k == "x-forwarded-for") {
        Some((_, v)) => *v = format!("{v}, {FORWARDED_FOR}"),
        None => h.push(("x-forwarded-for".into(), FORWARDED_FOR.into())),
    }
    h.retain(|(k, _)| k != "x-forwarded-proto" && k != "x-envoy-external-address");
    h.push(("x-forwarded-proto".into(), "http".into()));
    h.push(("x-envoy-external-address".into(), FORWARDED_FOR.into()));
    h
}

/// The upstream's response as Envoy's router hands it to the last filter, and its body.
fn filter_response(answer: &Answer, method: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let mut h = vec![(":status".to_string(), answer.status.to_string())];
    h.extend(
        answer
            .headers
            .0
            .iter()
            .filter(|(k, _)| k != "content-length")
            .map(|(k, v)| (k.clone(), trim_ows(v))),
    );
    let no_body = no_body_status(answer.status);
    if !no_body {
        h.push(("content-length".into(), answer.body.len().to_string()));
    }
    h.push(("x-envoy-upstream-service-time".into(), "1".into()));
    let body = if no_body || method.eq_ignore_ascii_case("HEAD") {
        Vec::new()
    } else {
        answer.body.clone().into_bytes()
    };
    (h, body)
}

fn pairs(m: &HeaderMap) -> Vec<(String, String)> {
    m.pairs()
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn as_refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Sends the step's request, answers its callouts and gives the upstream's answer.
fn drive(
    worker: &mut Worker,
    step: &Step,
    id: StreamId,
    callouts: &mut Vec<(String, Message)>,
    notes: &mut Vec<String>,
) -> Result<(), HarnessError> {
    let req = &step.request;
    let headers = filter_request_headers(req);
    let body = req.body.as_deref().filter(|b| !b.is_empty());
    worker.send_request_headers(id, &as_refs(&headers), body.is_none())?;
    if let Some(b) = body {
        worker.send_request_body(id, b.as_bytes(), true)?;
    }

    // Callouts, answered in the order they are made.
    let mut answers: HashMap<&str, VecDeque<&crate::scenario::CalloutAnswer>> = HashMap::new();
    for a in &step.callouts {
        answers.entry(a.cluster.as_str()).or_default().push_back(a);
    }
    for _ in 0..1000 {
        let Some(call) = worker.pending_http_calls().into_iter().next() else {
            break;
        };
        callouts.push((
            call.upstream.clone(),
            Message {
                headers: pairs(&call.headers),
                body: call.body.clone(),
            },
        ));
        let response = match answers
            .get_mut(call.upstream.as_str())
            .and_then(VecDeque::pop_front)
        {
            Some(a) => {
                let mut r = HttpCallResponse::new(a.status, a.body.as_bytes());
                for (k, v) in &a.headers.0 {
                    r = r.header(k, v);
                }
                r.header("content-length", &a.body.len().to_string())
            }
            None => {
                notes.push(format!(
                    "callout to {} had no scripted answer: answered 500",
                    call.upstream
                ));
                HttpCallResponse::new(500, UNSCRIPTED_CALLOUT_BODY)
                    .header("content-length", &UNSCRIPTED_CALLOUT_BODY.len().to_string())
            }
        };
        worker.respond_http_call(call.id, response)?;
    }

    let view = worker.stream(id)?;
    if view.local_response.is_none() && !view.reset && view.upstream_request_complete {
        let answer = step.upstream.clone().unwrap_or_default();
        let (rh, body) = filter_response(&answer, &req.method);
        worker.send_response_headers(id, &as_refs(&rh), body.is_empty())?;
        if !body.is_empty() {
            worker.send_response_body(id, &body, true)?;
        }
    } else if view.upstream_request_headers.is_some() && !view.upstream_request_complete {
        notes.push("the request never completed towards the upstream".into());
    }
    if view.reset {
        notes.push("a filter reset the stream".into());
    }
    Ok(())
}

/// Whether a message's body disagrees with its `content-length` (an HTTP/1.1 peer would wait
/// for the missing bytes, or take the extra ones for the next message).
fn framing_broken(m: &Message) -> Option<String> {
    let declared = m
        .headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())?;
    (declared != m.body.len()).then(|| {
        format!(
            "content-length {declared} but the body has {} bytes: an HTTP/1.1 peer would not \
             get this message as sent (Envoy forwards headers before the body is final)",
            m.body.len()
        )
    })
}

fn run_step(
    worker: &mut Worker,
    host: &Host,
    step: &Step,
    advance: Option<Duration>,
) -> Result<Observed> {
    let before = metric_values(host);
    if let Some(d) = advance {
        worker.advance(d).map_err(harness_err)?;
    }
    let mut notes = Vec::new();
    let mut callouts = Vec::new();
    let req = &step.request;
    // A module that traps fails closed, as the Envoy config says (`failure_policy:
    // FAIL_CLOSED`): this stream and every later one get a 503.
    let mut failed = None;
    let id = match worker.open_stream() {
        Ok(id) => Some(id),
        Err(e @ (HarnessError::Trap { .. } | HarnessError::VmFailed { .. })) => {
            failed = Some(e.to_string());
            None
        }
        Err(e) => return Err(harness_err(e)),
    };
    if let Some(id) = id {
        match drive(worker, step, id, &mut callouts, &mut notes) {
            Ok(()) => {}
            Err(e @ (HarnessError::Trap { .. } | HarnessError::VmFailed { .. })) => {
                failed = Some(e.to_string())
            }
            Err(e) => return Err(harness_err(e)),
        }
        match worker.complete(id) {
            Ok(_) => {}
            Err(e @ (HarnessError::Trap { .. } | HarnessError::VmFailed { .. })) => {
                failed.get_or_insert(e.to_string());
            }
            Err(e) => return Err(harness_err(e)),
        }
    }
    let view = match id {
        Some(id) => worker.stream(id).map_err(harness_err)?,
        None => StreamView::default(),
    };

    let mut upstream = view
        .upstream_request_headers
        .as_ref()
        .filter(|_| view.upstream_request_complete)
        .map(|h| {
            let mut headers: Vec<(String, String)> = pairs(h)
                .into_iter()
                .filter(|(k, _)| k != ":scheme")
                .collect();
            let method = headers
                .iter()
                .find(|(k, _)| k == ":method")
                .map(|(_, v)| v.to_ascii_uppercase())
                .unwrap_or_default();
            if view.upstream_request_body.is_empty()
                && !BODILESS_METHODS.contains(&method.as_str())
                && !headers.iter().any(|(k, _)| k == "content-length")
            {
                headers.push(("content-length".into(), "0".into()));
            }
            Message {
                headers,
                body: view.upstream_request_body.clone(),
            }
        });
    let mut client = match &view.client_response_headers {
        Some(h) => {
            let all = pairs(h);
            let status = all
                .iter()
                .find(|(k, _)| k == ":status")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            Some(ClientResponse {
                status,
                message: Message {
                    headers: all.into_iter().filter(|(k, _)| k != ":status").collect(),
                    body: view.client_response_body.clone(),
                },
            })
        }
        None => None,
    };
    if let Some(why) = upstream.as_ref().and_then(framing_broken) {
        notes.push(format!("request to the upstream: {why}"));
        upstream = None;
        client = None;
    }
    // A response to HEAD declares the length a GET would get and has no body (RFC 9110 9.3.2).
    let head = req.method.eq_ignore_ascii_case("HEAD");
    if let Some(why) = client
        .as_ref()
        .filter(|_| !head)
        .and_then(|c| framing_broken(&c.message))
    {
        notes.push(format!("response to the client: {why}"));
        client = None;
    }
    if let Some(trap) = failed {
        notes.push(format!(
            "a module failed; as with Envoy's failure_policy FAIL_CLOSED the client gets a 503: {trap}"
        ));
        client = Some(ClientResponse {
            status: 503,
            message: Message {
                headers: vec![("content-length".into(), "0".into())],
                body: Vec::new(),
            },
        });
    } else if client.is_none() {
        notes.push("the client received no (complete) response".into());
    }
    let after = metric_values(host);
    Ok(Observed {
        request: client_request(req),
        upstream,
        client,
        metrics: metric_deltas(&before, &after),
        callouts,
        notes,
    })
}
