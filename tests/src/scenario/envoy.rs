//! Runs a scenario ([`crate::scenario`]) in a real Envoy.
//!
//! Several scenarios (the bundle and chain shapes of several files) can share one Envoy, a
//! listener each ([`run_together`]): they all load the same `gatewasm.wasm`, whose V8
//! compilation is most of an Envoy start, and V8 compiles identical bytes once per process.
//!
//! The scenario's chain becomes an Envoy config ([`envoy_config`]): one listener, an HTTP
//! connection manager set up as `envoy-configs/gateway.yaml` sets it up for request IDs
//! (`use_remote_address: true`, `generate_request_id: false`,
//! `preserve_external_request_id: true`), the chain's Wasm filters (configuration as a
//! `google.protobuf.StringValue`, `failure_policy: FAIL_CLOSED`), a Lua filter for each
//! `local_reply` pseudo-filter, and the router. The upstream and every callout cluster are
//! [`ScriptedServer`]s: small in-process HTTP servers that record each request exactly as it
//! arrived and answer what the step says. Steps are told to them directly (in process), so
//! nothing test-specific travels in the requests the filters and the upstream see.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::harness::{UNSCRIPTED_CALLOUT_BODY, client_request, metric_deltas};
use crate::bench::dynamic_module;
use crate::client;
use crate::envoy::{Envoy, EnvoyBuilder};
use crate::http_server::HttpServer;
use crate::scenario::{
    Answer, ClientResponse, HostOutcome, Loaded, Message, Observed, Plugin, Step,
};

/// The cluster name of the upstream in the generated config (reserved).
pub const BACKEND_CLUSTER: &str = "scenario_upstream";

/// What Envoy 1.40 says when the dynamic module refuses a filter configuration (the module's
/// own error line, naming the field, comes before it in the log).
const DYNAMIC_MODULE_REFUSAL: &str = "Failed to initialize dynamic module";

/// How long a step's request may take in Envoy.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A YAML double-quoted scalar (JSON string syntax is a subset of it).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A Lua string literal: printable ASCII as is, `"`, `\\` and every other byte as `\ddd`.
fn lua_str(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        if (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\{b:03}");
        }
    }
    out.push('"');
    out
}

/// The Lua code that realises a `local_reply` pseudo-filter.
pub fn local_reply_lua(reply: &crate::scenario::LocalReply) -> String {
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in &reply.headers.0 {
        by_name.entry(k).or_default().push(v);
    }
    let mut table = format!("[\":status\"] = {}", lua_str(&reply.status.to_string()));
    for (k, vs) in by_name {
        let value = match vs.as_slice() {
            [one] => lua_str(one),
            many => format!(
                "{{{}}}",
                many.iter()
                    .map(|v| lua_str(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let _ = write!(table, ", [{}] = {value}", lua_str(k));
    }
    let respond = format!("handle:respond({{{table}}}, {})", lua_str(&reply.body));
    match &reply.path_prefix {
        None => format!("function envoy_on_request(handle)\n  {respond}\nend\n"),
        Some(prefix) => format!(
            "function envoy_on_request(handle)\n  local path = handle:headers():get(\":path\") or \"\"\n  \
             local prefix = {}\n  if string.sub(path, 1, #prefix) == prefix then\n    {respond}\n  end\nend\n",
            lua_str(prefix)
        ),
    }
}

fn indent_block(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

/// The Envoy config for a scenario. `{{LISTEN_PORT}}`, `{{ADMIN_PORT}}` and `{{UPSTREAM_PORT}}`
/// are left as placeholders ([`crate::render`]); `cluster_ports` gives each callout cluster's
/// port (any text, e.g. a placeholder when printing the config for a reader).
pub fn envoy_config(loaded: &Loaded, cluster_ports: &BTreeMap<String, String>) -> String {
    shared_config(
        &[Listener {
            loaded,
            port: "{{LISTEN_PORT}}".into(),
            vm_suffix: String::new(),
        }],
        cluster_ports,
    )
}

/// One listener of a config: a scenario's chain (in some shape), on `port` (a number or a
/// placeholder), its Wasm plugins' vm_ids with `vm_suffix` appended (so that two listeners of
/// one Envoy share no VM, and no shared data).
struct Listener<'a> {
    loaded: &'a Loaded,
    port: String,
    vm_suffix: String,
}

/// The `http_filters` of a scenario's chain (without the router).
fn http_filters(loaded: &Loaded, vm_suffix: &str) -> String {
    let mut filters = String::new();
    for p in &loaded.plugins {
        match p {
            Plugin::Wasm {
                name,
                vm_id,
                root_id,
                path,
                configuration,
            } => {
                let root = if root_id.is_empty() {
                    String::new()
                } else {
                    format!("\n      root_id: {}", q(root_id))
                };
                let entry = format!(
                    r#"- name: {name}
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: {name}{root}
      vm_config:
        vm_id: {vm_id}
        runtime: envoy.wasm.runtime.v8
        code: {{ local: {{ filename: {file} }} }}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {value}
      failure_policy: FAIL_CLOSED
"#,
                    name = q(name),
                    vm_id = q(&format!("{vm_id}{vm_suffix}")),
                    file = q(&path.display().to_string()),
                    value = q(configuration),
                );
                filters.push_str(&entry);
            }
            Plugin::Native {
                name,
                filter_name,
                configuration,
            } => {
                // The configuration text as the Wasm chain plugin gets it, byte for byte.
                let entry = format!(
                    r#"# The Envoy dynamic module libgatewasm_envoy.so (ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
- name: {name}
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
    dynamic_module_config: {{ name: {module} }}
    filter_name: {filter_name}
    filter_config:
      "@type": type.googleapis.com/google.protobuf.StringValue
      value: {value}
"#,
                    name = q(name),
                    module = q(dynamic_module::MODULE_NAME),
                    filter_name = q(filter_name),
                    value = q(configuration),
                );
                filters.push_str(&entry);
            }
            Plugin::LocalReply { name, reply } => {
                let entry = format!(
                    r#"# The scenario's `local_reply` pseudo-filter.
- name: {name}
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
    default_source_code:
      inline_string: |
{code}"#,
                    name = q(name),
                    code = indent_block(&local_reply_lua(reply), 8),
                );
                filters.push_str(&entry);
            }
        }
    }
    filters.push_str(
        r#"- name: envoy.filters.http.router
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
    );
    filters
}

/// A config with one listener per entry (the first named `scenario`, the others
/// `scenario_<n>`), the upstream and the callout clusters.
fn shared_config(listeners: &[Listener<'_>], cluster_ports: &BTreeMap<String, String>) -> String {
    let mut clusters = cluster_yaml(BACKEND_CLUSTER, "{{UPSTREAM_PORT}}");
    for (name, port) in cluster_ports {
        clusters.push_str(&cluster_yaml(name, port));
    }
    let Some(first) = listeners.first() else {
        return String::new();
    };
    let mut out = format!(
        r#"# Generated from the scenario {label} — {description}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {{{{ADMIN_PORT}}}} }}
static_resources:
  listeners:
"#,
        label = first.loaded.label,
        description = first.loaded.scenario.description.replace('\n', " "),
    );
    for (i, l) in listeners.iter().enumerate() {
        let name = if i == 0 {
            "scenario".to_string()
        } else {
            format!("scenario_{i}")
        };
        if listeners.len() > 1 {
            let _ = writeln!(
                out,
                "  # {}, the chain in the {} shape{}.",
                l.loaded.label,
                l.loaded.shape.name(),
                if l.vm_suffix.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (vm_ids end in {:?}: no VM shared with another listener)",
                        l.vm_suffix
                    )
                }
            );
        }
        out.push_str(&listener_yaml(
            &name,
            &l.port,
            &http_filters(l.loaded, &l.vm_suffix),
        ));
    }
    out.push_str("  clusters:\n");
    out.push_str(&indent_block(&clusters, 2));
    out
}

fn listener_yaml(name: &str, port: &str, filters: &str) -> String {
    format!(
        r#"  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          # As in envoy-configs/gateway.yaml: the filters own x-request-id.
          use_remote_address: true
          generate_request_id: false
          preserve_external_request_id: true
          route_config:
            name: scenario
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: {backend} }}
          http_filters:
{filters}"#,
        backend = BACKEND_CLUSTER,
        filters = indent_block(filters, 10),
    )
}

fn cluster_yaml(name: &str, port: &str) -> String {
    format!(
        r#"- name: {name}
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: {name}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"#,
        name = q(name),
    )
}

// ---------------------------------------------------------------------------------------------
// Scripted servers
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Script {
    /// Answers for the next requests, in order.
    queue: VecDeque<Answer>,
    /// The answer when the queue is empty (`None`: 500 "no answer scripted").
    default: Option<Answer>,
    received: Vec<Message>,
    unscripted: usize,
}

/// An HTTP/1.1 server that records every request (as [`Message`]: `:method`, `:path`,
/// `:authority` from `host`, then the other headers) and answers from a script. Stops on drop.
pub struct ScriptedServer {
    server: HttpServer,
    script: Arc<Mutex<Script>>,
}

impl ScriptedServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> Result<ScriptedServer> {
        let script = Arc::new(Mutex::new(Script::default()));
        let shared = Arc::clone(&script);
        let server = HttpServer::serve(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            "scripted server",
            move |req| answer(req, Arc::clone(&shared)),
        )?;
        Ok(ScriptedServer { server, script })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// Answer every request with `answer` until told otherwise; forget queued answers.
    pub fn answer_always(&self, answer: Answer) {
        let mut s = lock(&self.script);
        s.queue.clear();
        s.default = Some(answer);
    }

    /// Answer the next requests with these, in order (then 500).
    pub fn answer_next(&self, answers: Vec<Answer>) {
        let mut s = lock(&self.script);
        s.default = None;
        s.queue = answers.into();
    }

    /// The requests received since the last call, and how many got no scripted answer.
    pub fn take_received(&self) -> (Vec<Message>, usize) {
        let mut s = lock(&self.script);
        (
            std::mem::take(&mut s.received),
            std::mem::take(&mut s.unscripted),
        )
    }
}

async fn answer(
    req: hyper::Request<Incoming>,
    script: Arc<Mutex<Script>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Only a complete request counts as received (a request reset before its end is not).
    let body = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => {
            return Ok(hyper::Response::new(Full::new(Bytes::new())));
        }
    };
    let text = |v: &hyper::header::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let mut headers = vec![
        (":method".to_string(), parts.method.as_str().to_string()),
        (
            ":path".to_string(),
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| parts.uri.path().to_string()),
        ),
    ];
    if let Some(host) = parts.headers.get(hyper::header::HOST) {
        headers.push((":authority".to_string(), text(host)));
    }
    headers.extend(
        parts
            .headers
            .iter()
            .filter(|(n, _)| *n != hyper::header::HOST)
            .map(|(n, v)| (n.as_str().to_string(), text(v))),
    );
    let chosen = {
        let mut s = lock(&script);
        s.received.push(Message { headers, body });
        let next = s.queue.pop_front().or_else(|| s.default.clone());
        if next.is_none() {
            s.unscripted += 1;
        }
        next
    };
    let answer = chosen.unwrap_or_else(|| Answer {
        status: 500,
        body: UNSCRIPTED_CALLOUT_BODY.to_string(),
        ..Answer::default()
    });
    let mut resp = hyper::Response::new(Full::new(Bytes::from(answer.body.clone())));
    *resp.status_mut() = hyper::StatusCode::from_u16(answer.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in &answer.headers.0 {
        if k == "content-length" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

/// The prefixes Envoy gives the filters' own counters and gauges in `/stats`: a Wasm
/// plugin's, and the dynamic module's (the native shape).
const CUSTOM_METRIC_PREFIXES: [&str; 2] = ["wasmcustom.", "dynamicmodulescustom."];

/// Envoy's custom (filter-defined) counters and gauges, by the name the filter defined.
fn wasm_metrics(envoy: &Envoy) -> Result<BTreeMap<String, i64>> {
    Ok(envoy
        .stats()?
        .into_iter()
        .filter_map(|(n, v)| {
            CUSTOM_METRIC_PREFIXES
                .iter()
                .find_map(|prefix| n.strip_prefix(prefix))
                .map(|name| (name.to_string(), v as i64))
        })
        .collect())
}

/// Reads the metrics until two reads 10 ms apart agree (a filter may count in `on_log`, which
/// Envoy runs after the response has left), at most 10 times.
fn settled_metrics(envoy: &Envoy) -> Result<BTreeMap<String, i64>> {
    let mut last = wasm_metrics(envoy)?;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(10));
        let now = wasm_metrics(envoy)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Whether Envoy's start failure is a Wasm plugin rejecting its configuration (Envoy 1.36–1.40
/// log "Wasm VM failed Failed to configure base Wasm plugin" and exit with "Unable to create Wasm
/// plugin <name>"), or the dynamic module refusing its own (Envoy 1.40 exits with "Failed to
/// initialize dynamic module filter config").
fn is_config_rejection(message: &str) -> bool {
    [
        "Unable to create Wasm HTTP filter",
        "Failed to configure",
        "Wasm VM failed",
        "Unable to create Wasm plugin",
        DYNAMIC_MODULE_REFUSAL,
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// The value of [`dynamic_module::SEARCH_PATH_VAR`] for an Envoy running `scenarios`: the
/// directory of `libgatewasm_envoy.so` ([`dynamic_module::module_dir`]) when any of them has a
/// filter of the dynamic module; its absence is an error naming `just build-native`.
fn dynamic_module_search_path<'a>(
    scenarios: impl IntoIterator<Item = &'a Loaded>,
) -> Result<Option<String>> {
    let uses_module = scenarios
        .into_iter()
        .flat_map(|l| &l.plugins)
        .any(|p| matches!(p, Plugin::Native { .. }));
    if !uses_module {
        return Ok(None);
    }
    Ok(Some(dynamic_module::module_dir()?.display().to_string()))
}

/// Starts Envoy on the config `template(extra)` makes, `extra` being free ports for the
/// listeners after the first (which listens on `{{LISTEN_PORT}}`); up to three attempts when a
/// port was taken meanwhile. With `search_path` ([`dynamic_module_search_path`]), Envoy finds
/// `libgatewasm_envoy.so` there. Also returns the config and the extra ports it was started
/// with.
fn start_envoy(
    template: impl Fn(&[u16]) -> String,
    extra_listeners: usize,
    dir: &Path,
    upstream_port: u16,
    search_path: Option<&str>,
) -> (Result<(Envoy, Vec<u16>)>, String) {
    let file = dir.join("scenario-envoy.yaml");
    let name = file.display().to_string();
    let mut last = None;
    let mut text = String::new();
    for _ in 0..3 {
        let ports = match (0..extra_listeners)
            .map(|_| crate::free_port())
            .collect::<Result<Vec<u16>>>()
        {
            Ok(p) => p,
            Err(e) => return (Err(e), text),
        };
        text = template(&ports);
        // EnvoyBuilder renders the template in place (the path is absolute), so write it anew
        // for every attempt.
        if let Err(e) = std::fs::write(&file, &text).with_context(|| format!("writing {name}")) {
            return (Err(e), text);
        }
        let mut builder = EnvoyBuilder::new(&name).upstream(upstream_port);
        if let Some(search_path) = search_path {
            builder = builder.env(dynamic_module::SEARCH_PATH_VAR, search_path);
        }
        match builder.start() {
            Ok(envoy) => return (Ok((envoy, ports)), text),
            Err(e) => {
                let msg = format!("{e:#}");
                if !(msg.contains("Address already in use") || msg.contains("cannot bind")) {
                    return (Err(e), text);
                }
                last = Some(e);
            }
        }
    }
    (
        Err(last.unwrap_or_else(|| anyhow::anyhow!("Envoy did not start"))),
        text,
    )
}

/// Runs the scenario in Envoy; also returns Envoy's version.
pub fn run(loaded: &Loaded) -> (HostOutcome, Option<String>) {
    match run_inner(loaded) {
        Ok(r) => r,
        Err(e) => (HostOutcome::Failed(format!("{e:#}")), None),
    }
}

/// Runs several scenarios (or shapes of scenarios, [`crate::scenario::Shape`]) in **one**
/// Envoy, a listener each, one's steps after the other's — what starting an Envoy for each
/// would observe, for the price of one start, and of one V8 compilation of a module that
/// several listeners load (V8 shares the compiled code of identical bytes within a process:
/// `gatewasm.wasm`'s is most of an Envoy start). The listeners share no VM: the Wasm plugins of
/// the `n`th listener (from 0) but the first get vm_ids ending in `.<n>`, and so no shared data
/// either. Only for scenarios whose configuration is accepted and whose filters make no
/// callouts (a root's background callouts would land in another listener's step). When Envoy
/// does not start, each runs in an Envoy of its own, as [`run`] runs it; so does one whose run
/// failed (a step the runner could not make).
pub fn run_together(scenarios: &[&Loaded]) -> Vec<(HostOutcome, Option<String>)> {
    match scenarios {
        [] => return Vec::new(),
        [one] => return vec![run(one)],
        _ => {}
    }
    match run_together_inner(scenarios) {
        Ok(outcomes) => outcomes
            .into_iter()
            .zip(scenarios)
            .map(|(outcome, loaded)| match outcome {
                (HostOutcome::Failed(_), _) => run(loaded),
                ran => ran,
            })
            .collect(),
        Err(e) => scenarios
            .iter()
            .map(|l| {
                let (mut outcome, version) = run(l);
                if let HostOutcome::Ran(steps) = &mut outcome
                    && let Some(first) = steps.first_mut()
                {
                    first.notes.push(format!(
                        "one Envoy for several scenarios did not start, so this one ran in an \
                         Envoy of its own: {}",
                        crate::envoy::tail(&format!("{e:#}"), 5)
                    ));
                }
                (outcome, version)
            })
            .collect(),
    }
}

fn run_together_inner(scenarios: &[&Loaded]) -> Result<Vec<(HostOutcome, Option<String>)>> {
    if scenarios.iter().any(|l| !l.clusters.is_empty()) {
        anyhow::bail!("run_together: a scenario with callout clusters runs in an Envoy of its own");
    }
    let search_path = dynamic_module_search_path(scenarios.iter().copied())?;
    let backend = ScriptedServer::start()?;
    let servers: BTreeMap<String, ScriptedServer> = BTreeMap::new();
    let dir = tempfile::Builder::new()
        .prefix("gatewasm-scenario-")
        .tempdir()
        .context("creating a temporary directory")?;
    let template = |extra: &[u16]| {
        let listeners: Vec<Listener<'_>> = scenarios
            .iter()
            .enumerate()
            .map(|(i, loaded)| Listener {
                loaded,
                port: match i {
                    0 => "{{LISTEN_PORT}}".to_string(),
                    _ => extra.get(i - 1).map(u16::to_string).unwrap_or_default(),
                },
                vm_suffix: match i {
                    0 => String::new(),
                    _ => format!(".{i}"),
                },
            })
            .collect();
        shared_config(&listeners, &BTreeMap::new())
    };
    let (started, _) = start_envoy(
        template,
        scenarios.len() - 1,
        dir.path(),
        backend.port(),
        search_path.as_deref(),
    );
    let (envoy, extra) = started?;
    let version = envoy.server_version().ok();
    let mut outcomes = Vec::new();
    for (k, loaded) in scenarios.iter().enumerate() {
        let addr = match k {
            0 => envoy.listen_addr(),
            _ => SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                extra.get(k - 1).copied().unwrap_or_default(),
            )),
        };
        let mut all = Vec::new();
        let mut failed = None;
        for (i, step) in loaded.scenario.steps.iter().enumerate() {
            match run_step(&envoy, addr, &backend, &servers, step) {
                Ok(o) => all.push(o),
                Err(e) => {
                    failed = Some(format!("step {}: {e:#}", i + 1));
                    break;
                }
            }
        }
        outcomes.push((
            match failed {
                Some(e) => HostOutcome::Failed(e),
                None => HostOutcome::Ran(all),
            },
            version.clone(),
        ));
    }
    Ok(outcomes)
}

fn run_inner(loaded: &Loaded) -> Result<(HostOutcome, Option<String>)> {
    let search_path = dynamic_module_search_path([loaded])?;
    let backend = ScriptedServer::start()?;
    let mut servers = BTreeMap::new();
    for c in &loaded.clusters {
        servers.insert(c.clone(), ScriptedServer::start()?);
    }
    let ports = servers
        .iter()
        .map(|(c, s)| (c.clone(), s.port().to_string()))
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("gatewasm-scenario-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (started, template) = start_envoy(
        |_| envoy_config(loaded, &ports),
        0,
        dir.path(),
        backend.port(),
        search_path.as_deref(),
    );
    let envoy = match started {
        Ok((e, _)) => e,
        Err(e) => {
            let msg = format!("{e:#}");
            if is_config_rejection(&msg) {
                return Ok((HostOutcome::ConfigRejected(msg), None));
            }
            return Err(e.context(format!("the generated config:\n{template}")));
        }
    };
    let version = envoy.server_version().ok();
    let mut all = Vec::new();
    for (i, step) in loaded.scenario.steps.iter().enumerate() {
        let o = run_step(&envoy, envoy.listen_addr(), &backend, &servers, step)
            .with_context(|| format!("step {}", i + 1))?;
        all.push(o);
    }
    Ok((HostOutcome::Ran(all), version))
}

fn run_step(
    envoy: &Envoy,
    listener: SocketAddr,
    backend: &ScriptedServer,
    servers: &BTreeMap<String, ScriptedServer>,
    step: &Step,
) -> Result<Observed> {
    let before = wasm_metrics(envoy)?;
    let mut notes = Vec::new();
    backend.answer_always(step.upstream.clone().unwrap_or_default());
    let _ = backend.take_received();
    for (cluster, server) in servers {
        let _ = server.take_received();
        server.answer_next(
            step.callouts
                .iter()
                .filter(|a| &a.cluster == cluster)
                .map(|a| Answer {
                    status: a.status,
                    headers: a.headers.clone(),
                    body: a.body.clone(),
                })
                .collect(),
        );
    }

    let r = &step.request;
    let mut req = client::Request {
        method: r.method.clone(),
        path: r.path.clone(),
        headers: vec![("host".to_string(), r.authority.clone().into_bytes())],
        body: r.body.clone().unwrap_or_default().into_bytes(),
    };
    for (k, v) in &r.headers.0 {
        req.headers.push((k.clone(), v.clone().into_bytes()));
    }
    let client = match client::send_with_timeout(listener, &req, REQUEST_TIMEOUT) {
        Ok(resp) => Some(ClientResponse {
            status: resp.status,
            message: Message {
                headers: resp.headers,
                body: resp.body,
            },
        }),
        Err(e) => {
            notes.push(format!("the client got no response: {e:#}"));
            None
        }
    };

    let (mut received, _) = backend.take_received();
    if received.len() > 1 {
        notes.push(format!(
            "the upstream received {} requests (Envoy retried?)",
            received.len()
        ));
    }
    let upstream = if received.is_empty() {
        None
    } else {
        Some(received.swap_remove(0))
    };
    let mut callouts = Vec::new();
    for (cluster, server) in servers {
        let (got, unscripted) = server.take_received();
        if unscripted > 0 {
            notes.push(format!(
                "{unscripted} callout(s) to {cluster} had no scripted answer: answered 500"
            ));
        }
        callouts.extend(got.into_iter().map(|m| (cluster.clone(), m)));
    }
    let after = settled_metrics(envoy)?;
    Ok(Observed {
        request: client_request(r),
        upstream,
        client,
        metrics: metric_deltas(&before, &after),
        callouts,
        notes,
    })
}
