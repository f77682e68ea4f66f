//! Declarative filter scenarios: one YAML file, run against a filter chain's real `.wasm` files in
//! **the harness** ([`crate::scenario_harness`]) and in **a real Envoy**
//! ([`crate::scenario_envoy`]), checked against the file's expectations in both hosts, and the two
//! hosts' observations compared with each other.
//!
//! The format is documented in `tests/scenarios/README.md`; its JSON Schema is
//! `tests/scenarios/scenario.schema.json`, generated from the types below (a test keeps it
//! current; `UPDATE_SCHEMA=1 cargo test -p gatewasm-tests --test scenarios` rewrites it).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let report = gatewasm_tests::scenario::run_file("tests/scenarios/correlation-id/generates-an-id.yaml".as_ref())?;
//! print!("{}", report.render(false));
//! assert!(report.passed());
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use regex::Regex;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

// ---------------------------------------------------------------------------------------------
// The format
// ---------------------------------------------------------------------------------------------

/// A filter scenario: a filter chain with its plugin configurations, and requests sent through
/// it one after another (steps), each with what the upstream and the client must have received.
/// It runs in the proxy-wasm harness and in a real Envoy, and the two must agree.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows, in one sentence.
    pub description: String,
    /// Run only in the harness, never in Envoy; the value says why (e.g. "advances the clock").
    /// Only for what a real Envoy cannot be made to do on demand. Keep this rare.
    #[serde(default)]
    pub harness_only: Option<String>,
    /// The harness is known to behave differently from Envoy here; the value says how (and
    /// where it is tracked). The expectations describe Envoy's behaviour. The scenario passes
    /// while Envoy meets every expectation *and* the hosts still disagree, so it fails — asking
    /// for this line to be removed — once the harness is fixed.
    #[serde(default)]
    pub known_disagreement: Option<String>,
    /// The HTTP filter chain in Envoy's `http_filters` order (Envoy's router always follows).
    pub chain: Vec<ChainEntry>,
    /// Upstream clusters the filters may call out to (`dispatch_http_call`). Clusters named in a
    /// step's `callouts` are declared automatically.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Expect the chain's configuration to be rejected (a plugin's `on_configure` returns false):
    /// in the harness the worker does not start, in Envoy the config does not load. `steps`
    /// must then be empty.
    #[serde(default)]
    pub config_rejected: Option<ConfigRejected>,
    /// The requests, in order. Metrics and filter state carry over from step to step (one proxy,
    /// one worker).
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// One entry of the filter chain: a Proxy-Wasm filter (`filter` or `wasm`), or the built-in
/// pseudo-filter `local_reply`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainEntry {
    /// A filter of this workspace by crate name, e.g. `correlation-id`: its `.wasm` from
    /// `just build` (`target/wasm32-wasip1/release/correlation_id.wasm`, or `GATEWASM_WASM_DIR`).
    #[serde(default)]
    pub filter: Option<String>,
    /// Any Proxy-Wasm module by path (relative to the scenario file), e.g. your own build.
    #[serde(default)]
    pub wasm: Option<PathBuf>,
    /// The plugin name (Envoy's `config.name`, the filter name). Default `gatewasm.<module>`.
    #[serde(default)]
    pub name: Option<String>,
    /// `vm_config.vm_id`. Default: the plugin name.
    #[serde(default)]
    pub vm_id: Option<String>,
    /// `config.root_id`. Default: empty.
    #[serde(default)]
    pub root_id: Option<String>,
    /// The plugin configuration. An object (or any non-string value) is passed as its JSON text;
    /// a string is passed verbatim. Absent: an empty configuration.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// A filter that answers requests itself (a local reply), standing in for e.g. an auth filter
    /// rejecting a request. In the harness it is the harness test module, in Envoy a Lua filter.
    #[serde(default)]
    pub local_reply: Option<LocalReply>,
}

/// The built-in pseudo-filter that sends a local reply.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalReply {
    /// The status of the reply.
    pub status: u16,
    /// Headers of the reply.
    #[serde(default)]
    pub headers: Headers,
    /// The body of the reply (Envoy and the harness add `content-type: text/plain` when it is not
    /// empty).
    #[serde(default)]
    pub body: String,
    /// Reply only to requests whose path starts with this; others pass. Default: reply to all.
    #[serde(default)]
    pub path_prefix: Option<String>,
}

/// The chain's configuration must be rejected.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigRejected {
    /// A regular expression that the proxy's log (the filter's own error line) must match.
    #[serde(default)]
    pub log: Option<String>,
}

/// One request through the chain, the answers to give, and what must have happened.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A label for reports.
    #[serde(default)]
    pub name: Option<String>,
    /// Move the proxy's clock forward by this much before the request (`"250ms"`, `"2s"`, `"1m"`,
    /// `"1h"`).
    /// A real Envoy's clock cannot be moved: a scenario that uses this must be `harness_only`.
    #[serde(default)]
    pub advance: Option<String>,
    /// The request the client sends.
    #[serde(default)]
    pub request: RequestSpec,
    /// What the upstream answers. Default: 200, no headers, empty body.
    #[serde(default)]
    pub upstream: Option<Answer>,
    /// Answers to the HTTP callouts the filters make during this step, per cluster in order.
    #[serde(default)]
    pub callouts: Vec<CalloutAnswer>,
    /// What must have happened.
    #[serde(default)]
    pub expect: Expect,
}

/// The request a client sends to the proxy.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Path and query. Default `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// The host (`:authority`; `host` on HTTP/1.1). Default `example.com`.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Request headers, in order. A list value sends the header once per element.
    #[serde(default)]
    pub headers: Headers,
    /// The body. Sent with `content-length`.
    #[serde(default)]
    pub body: Option<String>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            method: default_method(),
            path: default_path(),
            authority: default_authority(),
            headers: Headers::default(),
            body: None,
        }
    }
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_authority() -> String {
    "example.com".into()
}
fn default_status() -> u16 {
    200
}

/// A response the upstream (or a callout's cluster) gives.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// Default 200.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response headers, in order.
    #[serde(default)]
    pub headers: Headers,
    /// The body.
    #[serde(default)]
    pub body: String,
}

impl Default for Answer {
    fn default() -> Self {
        Answer {
            status: 200,
            headers: Headers::default(),
            body: String::new(),
        }
    }
}

/// The answer to one HTTP callout.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalloutAnswer {
    /// The cluster the callout goes to.
    pub cluster: String,
    /// Default 200.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: Headers,
    /// The body.
    #[serde(default)]
    pub body: String,
}

/// What must have happened in a step. Everything is optional; what is not said is not checked
/// (but the two hosts must still agree, see the README).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `true`: the proxy answered itself (the upstream got nothing). `false`: the request reached
    /// the upstream.
    #[serde(default)]
    pub local_reply: Option<bool>,
    /// The request as the upstream received it.
    #[serde(default)]
    pub upstream: Option<UpstreamExpect>,
    /// The response as the client received it.
    #[serde(default)]
    pub client: Option<ClientExpect>,
    /// Metric changes during this step, by the name the filter defines (e.g.
    /// `gatewasm_correlation_id_generated: 1`). Metrics not named must not change differently
    /// in the two hosts.
    #[serde(default)]
    pub metrics: BTreeMap<String, i64>,
    /// How many callouts went to each cluster during this step.
    #[serde(default)]
    pub callouts: BTreeMap<String, usize>,
}

/// Checks on the request the upstream received. Header names are case-insensitive;
/// `:method`, `:path` and `:authority` can be checked like headers.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamExpect {
    /// Header name → check.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderCheck>,
    /// The request body.
    #[serde(default)]
    pub body: Option<BodyCheck>,
}

/// Checks on the response the client received.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientExpect {
    /// `false`: the client got no (complete) response — the proxy reset the stream, or the
    /// response never completed. `true`: it got one.
    #[serde(default)]
    pub responded: Option<bool>,
    /// The status code.
    #[serde(default)]
    pub status: Option<u16>,
    /// Header name → check.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderCheck>,
    /// The response body.
    #[serde(default)]
    pub body: Option<BodyCheck>,
}

/// Headers in order: a map of name to a value or a list of values (the header repeated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The names, lowercase, each once.
    pub fn names(&self) -> BTreeSet<String> {
        self.0.iter().map(|(k, _)| k.clone()).collect()
    }
}

fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of header name to a value or a list of values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Headers, E> {
                Ok(Headers::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Headers, A::Error> {
                let mut out = Vec::new();
                while let Some((name, value)) = m.next_entry::<String, serde_json::Value>()? {
                    let name = name.to_ascii_lowercase();
                    let values = match &value {
                        serde_json::Value::Array(items) => {
                            items.iter().map(scalar_text).collect::<Option<Vec<_>>>()
                        }
                        other => scalar_text(other).map(|s| vec![s]),
                    }
                    .ok_or_else(|| {
                        de::Error::custom(format!(
                            "header {name}: expected a string or a list of strings, got {value}"
                        ))
                    })?;
                    out.extend(values.into_iter().map(|v| (name.clone(), v)));
                }
                Ok(Headers(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Headers {
    fn schema_name() -> Cow<'static, str> {
        "Headers".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Headers in order: name → value, or name → list of values (the header is repeated).",
            "type": "object",
            "additionalProperties": {
                "anyOf": [
                    {"type": ["string", "number", "boolean"]},
                    {"type": "array", "items": {"type": ["string", "number", "boolean"]}}
                ]
            }
        })
    }
}

/// A check on one header: `null` = absent, a string = every value equals it, or an object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderCheck(pub HeaderCheckFields);

/// The checks on a header's values (all of them must hold; value checks apply to every value).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderCheckFields {
    /// `true`: at least one value. `false`: absent.
    #[serde(default)]
    pub present: Option<bool>,
    /// Exactly this many values.
    #[serde(default)]
    pub count: Option<usize>,
    /// Every value equals this.
    #[serde(default)]
    pub equals: Option<String>,
    /// No value equals this.
    #[serde(default)]
    pub not_equals: Option<String>,
    /// Every value matches this regular expression (whole value), or a named pattern:
    /// `@uuid`, `@uuid4`, `@uuid7`, `@integer`, `@hex16`, `@hex32`, `@traceparent`.
    #[serde(default)]
    pub matches: Option<String>,
    /// The values equal those of another header: `request.<name>`, `upstream.<name>`,
    /// `client.<name>`, optionally of an earlier step: `step1.client.<name>`.
    #[serde(default)]
    pub same_as: Option<String>,
    /// No value equals a value of the referenced header (same syntax as `same_as`).
    #[serde(default)]
    pub differs_from: Option<String>,
}

impl<'de> Deserialize<'de> for HeaderCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let fields = match &v {
            serde_json::Value::Null => HeaderCheckFields {
                present: Some(false),
                ..Default::default()
            },
            serde_json::Value::Object(_) => {
                serde_json::from_value::<HeaderCheckFields>(v).map_err(de::Error::custom)?
            }
            other => match scalar_text(other) {
                Some(s) => HeaderCheckFields {
                    equals: Some(s),
                    ..Default::default()
                },
                None => {
                    return Err(de::Error::custom(format!(
                        "a header check is null (absent), a string (equals) or an object, got {other}"
                    )));
                }
            },
        };
        Ok(HeaderCheck(fields))
    }
}

impl JsonSchema for HeaderCheck {
    fn schema_name() -> Cow<'static, str> {
        "HeaderCheck".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let fields = generator.subschema_for::<HeaderCheckFields>();
        json_schema!({
            "description": "null: the header is absent. A string: every value equals it. An object: detailed checks.",
            "anyOf": [
                {"type": "null"},
                {"type": ["string", "number", "boolean"]},
                fields
            ]
        })
    }
}

/// A check on a body: a string = equals, or an object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BodyCheck(pub BodyCheckFields);

/// The checks on a body (all must hold).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyCheckFields {
    /// The body equals this.
    #[serde(default)]
    pub equals: Option<String>,
    /// The body contains this.
    #[serde(default)]
    pub contains: Option<String>,
    /// The whole body matches this regular expression (or a named pattern, see headers).
    #[serde(default)]
    pub matches: Option<String>,
    /// `true`: the body is empty; `false`: it is not.
    #[serde(default)]
    pub empty: Option<bool>,
    /// The body is JSON, and these fields (dotted paths like `error.code`, or JSON pointers
    /// like `/headers/0/1`) hold these values: a JSON value = equals, or
    /// `{equals: …}` / `{matches: …}` / `{present: bool}`.
    #[serde(default)]
    pub json: BTreeMap<String, JsonCheck>,
}

impl<'de> Deserialize<'de> for BodyCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => Ok(BodyCheck(BodyCheckFields {
                equals: Some(s),
                ..Default::default()
            })),
            serde_json::Value::Object(_) => serde_json::from_value::<BodyCheckFields>(v)
                .map(BodyCheck)
                .map_err(de::Error::custom),
            other => Err(de::Error::custom(format!(
                "a body check is a string (equals) or an object, got {other}"
            ))),
        }
    }
}

impl JsonSchema for BodyCheck {
    fn schema_name() -> Cow<'static, str> {
        "BodyCheck".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let fields = generator.subschema_for::<BodyCheckFields>();
        json_schema!({
            "description": "A string: the body equals it. An object: detailed checks.",
            "anyOf": [{"type": "string"}, fields]
        })
    }
}

/// A check on a JSON field of a body.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonCheck {
    /// The field equals this JSON value.
    Equals(serde_json::Value),
    /// The field (a string) matches this pattern.
    Matches(String),
    /// The field exists (or not).
    Present(bool),
}

impl<'de> Deserialize<'de> for JsonCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let serde_json::Value::Object(map) = &v else {
            return Ok(JsonCheck::Equals(v));
        };
        let mut keys = map.keys();
        match (
            keys.next().map(String::as_str),
            keys.next(),
            map.values().next(),
        ) {
            (Some("equals"), None, Some(x)) => Ok(JsonCheck::Equals(x.clone())),
            (Some("matches"), None, Some(serde_json::Value::String(p))) => {
                Ok(JsonCheck::Matches(p.clone()))
            }
            (Some("present"), None, Some(serde_json::Value::Bool(b))) => Ok(JsonCheck::Present(*b)),
            _ => Err(de::Error::custom(format!(
                "a JSON field check is a JSON value (equals) or one of {{equals: value}}, \
                 {{matches: pattern}}, {{present: bool}}; got {v}"
            ))),
        }
    }
}

impl JsonSchema for JsonCheck {
    fn schema_name() -> Cow<'static, str> {
        "JsonCheck".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A JSON value (the field equals it), or exactly one of {equals: value}, {matches: pattern}, {present: bool}.",
            "anyOf": [
                {"type": ["null", "string", "number", "boolean", "array"]},
                {"type": "object", "properties": {"equals": {}}, "required": ["equals"], "additionalProperties": false},
                {"type": "object", "properties": {"matches": {"type": "string"}}, "required": ["matches"], "additionalProperties": false},
                {"type": "object", "properties": {"present": {"type": "boolean"}}, "required": ["present"], "additionalProperties": false}
            ]
        })
    }
}

/// The JSON Schema of the scenario format, pretty-printed with a trailing newline.
pub fn schema_json() -> Result<String> {
    let schema = SchemaGenerator::default().into_root_schema_for::<Scenario>();
    let mut json = serde_json::to_string_pretty(&schema)?;
    json.push('\n');
    Ok(json)
}

/// `tests/scenarios/` in the workspace.
pub fn scenarios_dir() -> PathBuf {
    crate::paths::workspace_root().join("tests/scenarios")
}

/// Every `*.yaml` / `*.yml` under `dir`, sorted.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------------------------

/// A filter of the chain, resolved.
#[derive(Debug, Clone)]
pub enum Plugin {
    /// A Proxy-Wasm module.
    Wasm {
        /// Plugin name (Envoy's filter and `config.name`).
        name: String,
        /// `vm_config.vm_id`.
        vm_id: String,
        /// `config.root_id`.
        root_id: String,
        /// The `.wasm` file (the same file in both hosts).
        path: PathBuf,
        /// The configuration bytes (JSON text).
        configuration: String,
    },
    /// The `local_reply` pseudo-filter.
    LocalReply {
        /// Name used for the realising filter.
        name: String,
        /// What it answers.
        reply: LocalReply,
    },
}

impl Plugin {
    /// The plugin name.
    pub fn name(&self) -> &str {
        match self {
            Plugin::Wasm { name, .. } | Plugin::LocalReply { name, .. } => name,
        }
    }
}

/// A scenario file, parsed, validated and resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file.
    pub file: PathBuf,
    /// The file name relative to `tests/scenarios/` when it is in there, else the path given.
    pub label: String,
    /// What the file says.
    pub scenario: Scenario,
    /// The chain, resolved.
    pub plugins: Vec<Plugin>,
    /// Every callout cluster (declared and answered).
    pub clusters: Vec<String>,
    /// Clock advance per step.
    pub advances: Vec<Option<Duration>>,
}

/// Named patterns for `matches`.
pub fn named_pattern(name: &str) -> Option<&'static str> {
    Some(match name {
        "@uuid" => "[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        "@uuid4" => "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        "@uuid7" => "[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        "@integer" => "[0-9]+",
        "@hex16" => "[0-9a-f]{16}",
        "@hex32" => "[0-9a-f]{32}",
        "@traceparent" => "00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}",
        _ => return None,
    })
}

/// Compiles `matches` text: a named pattern or a regular expression, matched against the whole
/// value.
pub fn compile_pattern(p: &str) -> Result<Regex> {
    let body = match named_pattern(p) {
        Some(named) => named,
        None if p.starts_with('@') => bail!(
            "unknown named pattern {p} (known: @uuid, @uuid4, @uuid7, @integer, @hex16, @hex32, @traceparent)"
        ),
        None => p,
    };
    Regex::new(&format!("^(?:{body})$")).with_context(|| format!("bad regular expression {p:?}"))
}

/// Parses `"250ms"`, `"2s"`, `"1m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .with_context(|| format!("duration {s:?} has no unit (ms, s, m, h)"))?;
    let n: u64 = num
        .parse()
        .with_context(|| format!("duration {s:?}: bad number"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("duration {s:?}: unit must be ms, s, m or h"),
    })
}

/// A reference to another header's values: `[stepN.](request|upstream|client).<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRef {
    /// 0-based step index; `None` = the current step.
    pub step: Option<usize>,
    /// `request`, `upstream` or `client`.
    pub side: Side,
    /// Lowercase header name.
    pub name: String,
}

/// Where a header was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// As the client sent it (the scenario's request).
    Request,
    /// As the upstream received it.
    Upstream,
    /// As the client received it.
    Client,
}

impl HeaderRef {
    /// Parses a reference.
    pub fn parse(s: &str) -> Result<HeaderRef> {
        let (step, rest) = match s.strip_prefix("step") {
            Some(r) => {
                let (n, rest) = r
                    .split_once('.')
                    .with_context(|| format!("reference {s:?}: expected stepN.side.header"))?;
                let n: usize = n
                    .parse()
                    .with_context(|| format!("reference {s:?}: bad step number"))?;
                if n == 0 {
                    bail!("reference {s:?}: steps count from 1");
                }
                (Some(n - 1), rest)
            }
            None => (None, s),
        };
        let (side, name) = rest.split_once('.').with_context(|| {
            format!("reference {s:?}: expected request|upstream|client.<header>")
        })?;
        let side = match side {
            "request" => Side::Request,
            "upstream" => Side::Upstream,
            "client" => Side::Client,
            _ => bail!("reference {s:?}: side must be request, upstream or client"),
        };
        if name.is_empty() {
            bail!("reference {s:?}: no header name");
        }
        Ok(HeaderRef {
            step,
            side,
            name: name.to_ascii_lowercase(),
        })
    }
}

/// Reads, parses and validates a scenario file.
pub fn load(file: &Path) -> Result<Loaded> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let label = file
        .canonicalize()
        .ok()
        .and_then(|abs| {
            let root = scenarios_dir().canonicalize().ok()?;
            abs.strip_prefix(root).ok().map(|p| p.display().to_string())
        })
        .unwrap_or_else(|| file.display().to_string());
    let scenario: Scenario =
        serde_yaml::from_str(&text).with_context(|| format!("{label}: not a valid scenario"))?;
    let base = file.parent().unwrap_or(Path::new("."));
    resolve(scenario, file, &label, base).with_context(|| format!("{label}: invalid scenario"))
}

fn resolve(scenario: Scenario, file: &Path, label: &str, base: &Path) -> Result<Loaded> {
    if scenario.chain.is_empty() {
        bail!("chain: empty (name at least one filter)");
    }
    let mut plugins = Vec::new();
    for (i, entry) in scenario.chain.iter().enumerate() {
        let at = format!("chain[{i}]");
        let kinds = [
            entry.filter.is_some(),
            entry.wasm.is_some(),
            entry.local_reply.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            bail!("{at}: give exactly one of `filter`, `wasm`, `local_reply`");
        }
        if let Some(reply) = &entry.local_reply {
            if entry.config.is_some() || entry.vm_id.is_some() || entry.root_id.is_some() {
                bail!("{at}: `local_reply` takes no config, vm_id or root_id");
            }
            if !(200..=599).contains(&reply.status) {
                bail!("{at}: local_reply status {} is not 200..=599", reply.status);
            }
            check_header_names(&reply.headers, &format!("{at}.local_reply.headers"))?;
            plugins.push(Plugin::LocalReply {
                name: entry
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("scenario.local_reply_{i}")),
                reply: reply.clone(),
            });
            continue;
        }
        let (path, stem) = if let Some(krate) = &entry.filter {
            let stem = krate.replace('-', "_");
            (crate::paths::wasm_file(&stem)?, stem)
        } else {
            let wasm = entry.wasm.clone().unwrap_or_default();
            let path = if wasm.is_absolute() {
                wasm
            } else {
                base.join(wasm)
            };
            if !path.is_file() {
                bail!("{at}: wasm file {} does not exist", path.display());
            }
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "module".into());
            (path, stem)
        };
        let name = entry
            .name
            .clone()
            .unwrap_or_else(|| format!("gatewasm.{stem}"));
        let configuration = match &entry.config {
            None => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => serde_json::to_string(v)?,
        };
        plugins.push(Plugin::Wasm {
            vm_id: entry.vm_id.clone().unwrap_or_else(|| name.clone()),
            root_id: entry.root_id.clone().unwrap_or_default(),
            name,
            path,
            configuration,
        });
    }
    let mut names = BTreeSet::new();
    for p in &plugins {
        if !names.insert(p.name().to_string()) {
            bail!("chain: two filters are named {}", p.name());
        }
    }

    if scenario.known_disagreement.is_some() && scenario.harness_only.is_some() {
        bail!("known_disagreement: a harness_only scenario has nothing to disagree with");
    }
    if scenario.config_rejected.is_some() && !scenario.steps.is_empty() {
        bail!("config_rejected: a scenario whose configuration is rejected has no steps");
    }
    if scenario.config_rejected.is_none() && scenario.steps.is_empty() {
        bail!("steps: empty (send at least one request)");
    }
    if let Some(log) = scenario
        .config_rejected
        .as_ref()
        .and_then(|c| c.log.as_deref())
    {
        Regex::new(log).with_context(|| format!("config_rejected.log: bad regex {log:?}"))?;
    }

    let mut clusters: Vec<String> = scenario.clusters.clone();
    let mut advances = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        let advance = step
            .advance
            .as_deref()
            .map(parse_duration)
            .transpose()
            .with_context(|| format!("{at}.advance"))?;
        if advance.is_some() && scenario.harness_only.is_none() {
            bail!(
                "{at}.advance: a real Envoy's clock cannot be moved; mark the scenario \
                 `harness_only: <reason>`"
            );
        }
        advances.push(advance);
        check_header_names(&step.request.headers, &format!("{at}.request.headers"))?;
        for (name, _) in &step.request.headers.0 {
            if name.starts_with(':') || name == "host" {
                bail!("{at}.request.headers: {name} is set with `method`, `path` or `authority`");
            }
        }
        if !step.request.path.starts_with('/') {
            bail!("{at}.request.path must start with /");
        }
        if let Some(up) = &step.upstream {
            check_header_names(&up.headers, &format!("{at}.upstream.headers"))?;
        }
        for c in &step.callouts {
            if !clusters.contains(&c.cluster) {
                clusters.push(c.cluster.clone());
            }
        }
        for (side, checks) in [
            (
                "upstream",
                step.expect.upstream.as_ref().map(|u| &u.headers),
            ),
            ("client", step.expect.client.as_ref().map(|c| &c.headers)),
        ] {
            for (name, check) in checks.into_iter().flatten() {
                let f = &check.0;
                let where_ = format!("{at}.expect.{side}.headers.{name}");
                if let Some(p) = &f.matches {
                    compile_pattern(p).with_context(|| where_.clone())?;
                }
                for r in [&f.same_as, &f.differs_from].into_iter().flatten() {
                    let r = HeaderRef::parse(r).with_context(|| where_.clone())?;
                    if r.step.is_some_and(|s| s > i) {
                        bail!("{where_}: refers to a later step");
                    }
                }
            }
        }
        for body in [
            step.expect.upstream.as_ref().and_then(|u| u.body.as_ref()),
            step.expect.client.as_ref().and_then(|c| c.body.as_ref()),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(p) = &body.0.matches {
                compile_pattern(p).with_context(|| format!("{at}.expect: body.matches"))?;
            }
            for check in body.0.json.values() {
                if let JsonCheck::Matches(p) = check {
                    compile_pattern(p).with_context(|| format!("{at}.expect: body.json"))?;
                }
            }
        }
    }
    for c in &clusters {
        if c.is_empty()
            || !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
        {
            bail!("cluster name {c:?}: use letters, digits, _ - .");
        }
        if c == crate::scenario_envoy::BACKEND_CLUSTER {
            bail!("cluster name {c:?} is reserved for the upstream");
        }
    }
    Ok(Loaded {
        file: file.to_path_buf(),
        label: label.to_string(),
        scenario,
        plugins,
        clusters,
        advances,
    })
}

fn check_header_names(h: &Headers, at: &str) -> Result<()> {
    for (name, _) in &h.0 {
        let token = name.strip_prefix(':').unwrap_or(name);
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b))
        {
            bail!("{at}: {name:?} is not a valid header name");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What a host observed
// ---------------------------------------------------------------------------------------------

/// A request or response as seen at one point: headers (lowercase names, in order, duplicates
/// kept) and body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Headers. For a request: `:method`, `:path`, `:authority` first.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Message {
    /// Every value of `name`.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The response the client got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientResponse {
    /// Status code.
    pub status: u16,
    /// Headers and body.
    pub message: Message,
}

/// What one host observed in one step.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The request as sent (for `request.` references).
    pub request: Message,
    /// The request as the upstream received it (`None`: it did not reach the upstream).
    pub upstream: Option<Message>,
    /// The response as the client received it (`None`: no response; see `notes`).
    pub client: Option<ClientResponse>,
    /// Metric changes during the step (counters and gauges), by filter-defined name.
    pub metrics: BTreeMap<String, i64>,
    /// Callouts made: cluster and request.
    pub callouts: Vec<(String, Message)>,
    /// Anything else worth showing (e.g. "the client timed out").
    pub notes: Vec<String>,
}

/// How a host fared with a scenario.
#[derive(Debug, Clone)]
pub enum HostOutcome {
    /// Every step ran.
    Ran(Vec<Observed>),
    /// The chain's configuration was rejected; the proxy's log.
    ConfigRejected(String),
    /// The runner could not run the scenario (a module trapped, Envoy did not start, …).
    Failed(String),
}

// ---------------------------------------------------------------------------------------------
// Checking and comparing
// ---------------------------------------------------------------------------------------------

/// One expectation, evaluated in each host.
#[derive(Debug, Clone)]
pub struct CheckRow {
    /// What is checked, readable.
    pub what: String,
    /// The harness's verdict: `Err` says what was seen instead.
    pub harness: Result<(), String>,
    /// Envoy's verdict (`None`: harness-only scenario).
    pub envoy: Option<Result<(), String>>,
}

/// A step's results.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// "step 2 (name): GET /path".
    pub title: String,
    /// The expectations.
    pub checks: Vec<CheckRow>,
    /// Where the two hosts' observations differ (empty: they agree).
    pub differences: Vec<String>,
    /// The observations (harness, Envoy).
    pub observed: (Option<Observed>, Option<Observed>),
}

/// The result of running a scenario in both hosts.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario.
    pub loaded: Loaded,
    /// The harness's outcome.
    pub harness: HostOutcome,
    /// Envoy's outcome (`None`: harness-only).
    pub envoy: Option<HostOutcome>,
    /// Envoy's version, when it ran.
    pub envoy_version: Option<String>,
    /// Scenario-level problems (a runner failed, the config was or was not rejected, …).
    pub problems: Vec<String>,
    /// Per step.
    pub steps: Vec<StepReport>,
}

/// Header names whose values depend on the machine or the moment in Envoy: compared by count only.
const VALUE_VARIES: &[&str] = &["x-forwarded-for", "x-envoy-upstream-service-time", "date"];

/// Headers Envoy itself adds or rewrites *after* the filters: `x-envoy-expected-rq-timeout-ms`
/// (the router, towards the upstream), `date`, `server` and the connection-level headers (the
/// HTTP connection manager and codec, towards the client). Not compared.
const UPSTREAM_ENVOY_ONLY: &[&str] = &["x-envoy-expected-rq-timeout-ms", "transfer-encoding"];
const CLIENT_ENVOY_ONLY: &[&str] = &["date", "server", "connection", "transfer-encoding"];

fn describe_header_check(side: &str, name: &str, f: &HeaderCheckFields) -> String {
    let mut parts = Vec::new();
    match f.present {
        Some(false) => parts.push("absent".to_string()),
        Some(true) => parts.push("present".to_string()),
        None => {}
    }
    if let Some(n) = f.count {
        parts.push(format!("{n} value(s)"));
    }
    if let Some(v) = &f.equals {
        parts.push(format!("= {v:?}"));
    }
    if let Some(v) = &f.not_equals {
        parts.push(format!("≠ {v:?}"));
    }
    if let Some(v) = &f.matches {
        parts.push(format!("matches {v}"));
    }
    if let Some(v) = &f.same_as {
        parts.push(format!("same as {v}"));
    }
    if let Some(v) = &f.differs_from {
        parts.push(format!("differs from {v}"));
    }
    if parts.is_empty() {
        parts.push("(no check)".into());
    }
    format!("{side} {name} {}", parts.join(", "))
}

fn resolve_ref(r: &HeaderRef, step: usize, all: &[Observed]) -> Result<Vec<String>, String> {
    let idx = r.step.unwrap_or(step);
    let obs = all
        .get(idx)
        .ok_or_else(|| format!("step {} did not run", idx + 1))?;
    Ok(match r.side {
        Side::Request => obs.request.values(&r.name),
        Side::Upstream => obs
            .upstream
            .as_ref()
            .map(|m| m.values(&r.name))
            .unwrap_or_default(),
        Side::Client => obs
            .client
            .as_ref()
            .map(|c| c.message.values(&r.name))
            .unwrap_or_default(),
    })
}

fn check_header(
    f: &HeaderCheckFields,
    values: &[String],
    step: usize,
    all: &[Observed],
) -> Result<(), String> {
    let seen = || format!("got {values:?}");
    if f.present == Some(false) {
        return if values.is_empty() {
            Ok(())
        } else {
            Err(seen())
        };
    }
    if let Some(n) = f.count
        && values.len() != n
    {
        return Err(seen());
    }
    let has_value_check = f.present == Some(true)
        || f.equals.is_some()
        || f.not_equals.is_some()
        || f.matches.is_some()
        || f.same_as.is_some()
        || f.differs_from.is_some();
    if has_value_check && values.is_empty() {
        return Err("absent".into());
    }
    if let Some(e) = &f.equals
        && values.iter().any(|v| v != e)
    {
        return Err(seen());
    }
    if let Some(e) = &f.not_equals
        && values.iter().any(|v| v == e)
    {
        return Err(seen());
    }
    if let Some(p) = &f.matches {
        let re = compile_pattern(p).map_err(|e| format!("{e:#}"))?;
        if let Some(bad) = values.iter().find(|v| !re.is_match(v)) {
            return Err(format!("{bad:?} does not match ({})", seen()));
        }
    }
    if let Some(r) = &f.same_as {
        let r = HeaderRef::parse(r).map_err(|e| format!("{e:#}"))?;
        let other = resolve_ref(&r, step, all)?;
        if other.is_empty() {
            return Err(format!(
                "{} is absent ({})",
                f.same_as.as_deref().unwrap_or(""),
                seen()
            ));
        }
        if other != values {
            return Err(format!("{}, the reference has {other:?}", seen()));
        }
    }
    if let Some(r) = &f.differs_from {
        let r = HeaderRef::parse(r).map_err(|e| format!("{e:#}"))?;
        let other = resolve_ref(&r, step, all)?;
        if let Some(same) = values.iter().find(|v| other.contains(v)) {
            return Err(format!("{same:?} is also in the reference ({other:?})"));
        }
    }
    Ok(())
}

fn json_field<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if path.starts_with('/') {
        return v.pointer(path);
    }
    path.split('.').try_fold(v, |cur, key| match cur {
        serde_json::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => cur.get(key),
    })
}

fn check_body(f: &BodyCheckFields, body: &[u8]) -> Vec<(String, Result<(), String>)> {
    let text = String::from_utf8_lossy(body);
    let short = || {
        let t: String = text.chars().take(200).collect();
        format!("got {t:?}")
    };
    let mut out = Vec::new();
    if let Some(e) = &f.equals {
        out.push((
            format!("body = {e:?}"),
            if text == *e { Ok(()) } else { Err(short()) },
        ));
    }
    if let Some(e) = &f.contains {
        out.push((
            format!("body contains {e:?}"),
            if text.contains(e.as_str()) {
                Ok(())
            } else {
                Err(short())
            },
        ));
    }
    if let Some(p) = &f.matches {
        let r = match compile_pattern(p) {
            Ok(re) if re.is_match(&text) => Ok(()),
            Ok(_) => Err(short()),
            Err(e) => Err(format!("{e:#}")),
        };
        out.push((format!("body matches {p}"), r));
    }
    if let Some(e) = f.empty {
        out.push((
            if e { "body empty" } else { "body not empty" }.to_string(),
            if body.is_empty() == e {
                Ok(())
            } else {
                Err(short())
            },
        ));
    }
    if !f.json.is_empty() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(body);
        for (path, check) in &f.json {
            let what = match check {
                JsonCheck::Equals(v) => format!("body json {path} = {v}"),
                JsonCheck::Matches(p) => format!("body json {path} matches {p}"),
                JsonCheck::Present(b) => format!("body json {path} present: {b}"),
            };
            let r = match &parsed {
                Err(_) => Err(format!("not JSON: {}", short())),
                Ok(v) => {
                    let field = json_field(v, path);
                    match (check, field) {
                        (JsonCheck::Present(b), f) => {
                            if f.is_some() == *b {
                                Ok(())
                            } else {
                                Err(format!("got {f:?}"))
                            }
                        }
                        (_, None) => Err("absent".into()),
                        (JsonCheck::Equals(e), Some(x)) => {
                            if x == e {
                                Ok(())
                            } else {
                                Err(format!("got {x}"))
                            }
                        }
                        (JsonCheck::Matches(p), Some(x)) => {
                            let s = x.as_str().map(str::to_string).unwrap_or(x.to_string());
                            match compile_pattern(p) {
                                Ok(re) if re.is_match(&s) => Ok(()),
                                Ok(_) => Err(format!("got {x}")),
                                Err(e) => Err(format!("{e:#}")),
                            }
                        }
                    }
                }
            };
            out.push((what, r));
        }
    }
    out
}

/// Evaluates a step's expectations against one host's observations (`all`: every step so far).
pub fn evaluate(step: &Step, idx: usize, all: &[Observed]) -> Vec<(String, Result<(), String>)> {
    let mut out = Vec::new();
    let Some(obs) = all.get(idx) else {
        return out;
    };
    let e = &step.expect;
    if let Some(want) = e.local_reply {
        let local = obs.upstream.is_none();
        out.push((
            format!("local reply: {want}"),
            if local == want {
                Ok(())
            } else if local {
                Err("the upstream received nothing".into())
            } else {
                Err("the request reached the upstream".into())
            },
        ));
    }
    if let Some(up) = &e.upstream {
        let empty = Message::default();
        let msg = obs.upstream.as_ref().unwrap_or(&empty);
        let note = if obs.upstream.is_none() {
            " (the upstream received nothing)"
        } else {
            ""
        };
        for (name, check) in &up.headers {
            let name = name.to_ascii_lowercase();
            let r = check_header(&check.0, &msg.values(&name), idx, all)
                .map_err(|e| format!("{e}{note}"));
            out.push((describe_header_check("upstream", &name, &check.0), r));
        }
        if let Some(b) = &up.body {
            for (what, r) in check_body(&b.0, &msg.body) {
                out.push((
                    format!("upstream {what}"),
                    r.map_err(|e| format!("{e}{note}")),
                ));
            }
        }
    }
    if let Some(c) = &e.client {
        let (status, msg) = match &obs.client {
            Some(r) => (Some(r.status), r.message.clone()),
            None => (None, Message::default()),
        };
        if let Some(want) = c.responded {
            out.push((
                format!("client got a response: {want}"),
                match (&obs.client, want) {
                    (Some(_), true) | (None, false) => Ok(()),
                    (Some(r), false) => Err(format!("got {}", r.status)),
                    (None, true) => Err("no response".into()),
                },
            ));
        }
        if let Some(want) = c.status {
            out.push((
                format!("client status {want}"),
                match status {
                    Some(s) if s == want => Ok(()),
                    Some(s) => Err(format!("got {s}")),
                    None => Err("no response".into()),
                },
            ));
        }
        for (name, check) in &c.headers {
            let name = name.to_ascii_lowercase();
            out.push((
                describe_header_check("client", &name, &check.0),
                check_header(&check.0, &msg.values(&name), idx, all),
            ));
        }
        if let Some(b) = &c.body {
            for (what, r) in check_body(&b.0, &msg.body) {
                out.push((format!("client {what}"), r));
            }
        }
    }
    for (name, want) in &e.metrics {
        let got = obs.metrics.get(name).copied().unwrap_or(0);
        out.push((
            format!("metric {name} {want:+}"),
            if got == *want {
                Ok(())
            } else {
                Err(format!("changed by {got:+}"))
            },
        ));
    }
    for (cluster, want) in &e.callouts {
        let got = obs.callouts.iter().filter(|(c, _)| c == cluster).count();
        out.push((
            format!("callouts to {cluster}: {want}"),
            if got == *want {
                Ok(())
            } else {
                Err(format!("got {got}"))
            },
        ));
    }
    out
}

/// Header names the step's expectations judge (plus the machine- and time-dependent ones): the
/// two hosts must see the same number of values there, and the expectations say whether the
/// values are right (so two different random IDs are not a disagreement). Every other header
/// must be identical in both hosts.
fn judged_headers(step: &Step) -> BTreeSet<String> {
    let mut judged: BTreeSet<String> = VALUE_VARIES.iter().map(|s| s.to_string()).collect();
    let e = &step.expect;
    for checks in [
        e.upstream.as_ref().map(|u| &u.headers),
        e.client.as_ref().map(|c| &c.headers),
    ]
    .into_iter()
    .flatten()
    {
        judged.extend(checks.keys().map(|k| k.to_ascii_lowercase()));
    }
    judged
}

fn compare_headers(
    side: &str,
    h: &Message,
    e: &Message,
    skip: &[&str],
    open: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let names: BTreeSet<&String> = h
        .headers
        .iter()
        .chain(e.headers.iter())
        .map(|(n, _)| n)
        .filter(|n| !skip.contains(&n.as_str()))
        .collect();
    for name in names {
        let (hv, ev) = (h.values(name), e.values(name));
        let differ = if open.contains(name.as_str()) {
            hv.len() != ev.len()
        } else {
            hv != ev
        };
        if differ {
            out.push(format!(
                "{side} header {name}: harness {hv:?}, envoy {ev:?}"
            ));
        }
    }
}

fn body_text(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    let short: String = t.chars().take(300).collect();
    format!("{short:?}")
}

/// Where the two hosts' observations of a step differ.
pub fn compare(step: &Step, h: &Observed, e: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let open = judged_headers(step);
    match (&h.upstream, &e.upstream) {
        (Some(hu), Some(eu)) => {
            compare_headers("upstream", hu, eu, UPSTREAM_ENVOY_ONLY, &open, &mut out);
            let judged = step
                .expect
                .upstream
                .as_ref()
                .is_some_and(|u| u.body.is_some());
            if hu.body != eu.body && !judged {
                out.push(format!(
                    "upstream body: harness {}, envoy {}",
                    body_text(&hu.body),
                    body_text(&eu.body)
                ));
            }
        }
        (None, None) => {}
        (hu, eu) => out.push(format!(
            "request reached the upstream: harness {}, envoy {}",
            hu.is_some(),
            eu.is_some()
        )),
    }
    match (&h.client, &e.client) {
        (Some(hc), Some(ec)) => {
            if hc.status != ec.status {
                out.push(format!(
                    "client status: harness {}, envoy {}",
                    hc.status, ec.status
                ));
            }
            compare_headers(
                "client",
                &hc.message,
                &ec.message,
                CLIENT_ENVOY_ONLY,
                &open,
                &mut out,
            );
            let judged = step
                .expect
                .client
                .as_ref()
                .is_some_and(|c| c.body.is_some());
            if hc.message.body != ec.message.body && !judged {
                out.push(format!(
                    "client body: harness {}, envoy {}",
                    body_text(&hc.message.body),
                    body_text(&ec.message.body)
                ));
            }
        }
        (None, None) => {}
        (hc, ec) => out.push(format!(
            "client got a response: harness {}, envoy {}",
            hc.is_some(),
            ec.is_some()
        )),
    }
    let metric_names: BTreeSet<&String> = h.metrics.keys().chain(e.metrics.keys()).collect();
    for name in metric_names {
        let (hv, ev) = (
            h.metrics.get(name).copied().unwrap_or(0),
            e.metrics.get(name).copied().unwrap_or(0),
        );
        if hv != ev {
            out.push(format!("metric {name}: harness {hv:+}, envoy {ev:+}"));
        }
    }
    let count = |o: &Observed| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (c, _) in &o.callouts {
            *m.entry(c.clone()).or_insert(0) += 1;
        }
        m
    };
    let (hc, ec) = (count(h), count(e));
    if hc != ec {
        out.push(format!("callouts: harness {hc:?}, envoy {ec:?}"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// Which hosts to run: the harness always, Envoy unless told not to (or `harness_only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hosts {
    /// Run in Envoy too (ignored for `harness_only` scenarios).
    pub envoy: bool,
}

impl Default for Hosts {
    fn default() -> Self {
        Hosts { envoy: true }
    }
}

/// Loads `file` and runs it in both hosts (Envoy skipped for `harness_only`).
pub fn run_file(file: &Path) -> Result<Report> {
    run_file_in(file, Hosts::default())
}

/// Loads `file` and runs it in the chosen hosts.
pub fn run_file_in(file: &Path, hosts: Hosts) -> Result<Report> {
    let loaded = load(file)?;
    Ok(run(loaded, hosts))
}

/// Runs a loaded scenario.
pub fn run(loaded: Loaded, hosts: Hosts) -> Report {
    let harness = crate::scenario_harness::run(&loaded);
    let (envoy, envoy_version) = if hosts.envoy && loaded.scenario.harness_only.is_none() {
        let (outcome, version) = crate::scenario_envoy::run(&loaded);
        (Some(outcome), version)
    } else {
        (None, None)
    };
    assemble(loaded, harness, envoy, envoy_version)
}

fn assemble(
    loaded: Loaded,
    harness: HostOutcome,
    envoy: Option<HostOutcome>,
    envoy_version: Option<String>,
) -> Report {
    let mut problems = Vec::new();
    let mut steps = Vec::new();
    let rejected = loaded.scenario.config_rejected.clone();
    let outcomes: Vec<(&str, &HostOutcome)> = [
        Some(("harness", &harness)),
        envoy.as_ref().map(|e| ("envoy", e)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (host, outcome) in &outcomes {
        match (outcome, &rejected) {
            (HostOutcome::Failed(e), _) => problems.push(format!("{host}: {e}")),
            (HostOutcome::ConfigRejected(log), None) => problems.push(format!(
                "{host}: the configuration was rejected:\n{}",
                indent(&crate::envoy::tail(log, 30), "    ")
            )),
            (HostOutcome::Ran(_), Some(_)) => {
                problems.push(format!("{host}: the configuration was accepted"));
            }
            (HostOutcome::ConfigRejected(log), Some(want)) => {
                if let Some(pattern) = &want.log
                    && !Regex::new(pattern).is_ok_and(|re| re.is_match(log))
                {
                    problems.push(format!(
                        "{host}: the configuration was rejected, but no log line matches {pattern:?}; the log:\n{}",
                        indent(&crate::envoy::tail(log, 30), "    ")
                    ));
                }
            }
            (HostOutcome::Ran(_), None) => {}
        }
    }
    let ran = |o: &HostOutcome| match o {
        HostOutcome::Ran(v) => Some(v.clone()),
        _ => None,
    };
    let h_obs = ran(&harness);
    let e_obs = envoy.as_ref().and_then(ran);
    for (i, step) in loaded.scenario.steps.iter().enumerate() {
        let mut title = format!("step {}", i + 1);
        if let Some(n) = &step.name {
            let _ = write!(title, " ({n})");
        }
        let _ = write!(title, ": {} {}", step.request.method, step.request.path);
        let hv = h_obs.as_ref().map(|all| evaluate(step, i, all));
        let ev = e_obs.as_ref().map(|all| evaluate(step, i, all));
        let n = hv
            .as_ref()
            .map(Vec::len)
            .or(ev.as_ref().map(Vec::len))
            .unwrap_or(0);
        let mut checks = Vec::new();
        for k in 0..n {
            let what = hv
                .as_ref()
                .and_then(|v| v.get(k))
                .or(ev.as_ref().and_then(|v| v.get(k)))
                .map(|(w, _)| w.clone())
                .unwrap_or_default();
            let pick = |v: &Option<Vec<(String, Result<(), String>)>>| {
                v.as_ref().and_then(|v| v.get(k)).map(|(_, r)| r.clone())
            };
            checks.push(CheckRow {
                what,
                harness: pick(&hv).unwrap_or_else(|| Err("did not run".into())),
                envoy: envoy
                    .as_ref()
                    .map(|_| pick(&ev).unwrap_or_else(|| Err("did not run".into()))),
            });
        }
        let (ho, eo) = (
            h_obs.as_ref().and_then(|v| v.get(i)).cloned(),
            e_obs.as_ref().and_then(|v| v.get(i)).cloned(),
        );
        let differences = match (&ho, &eo) {
            (Some(h), Some(e)) => compare(step, h, e),
            _ => Vec::new(),
        };
        steps.push(StepReport {
            title,
            checks,
            differences,
            observed: (ho, eo),
        });
    }
    Report {
        loaded,
        harness,
        envoy,
        envoy_version,
        problems,
        steps,
    }
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Report {
    /// Whether the scenario passed: every expectation held in every host that ran and the hosts
    /// agree — or, for a `known_disagreement` scenario, every expectation held in Envoy and the
    /// hosts still disagree.
    pub fn passed(&self) -> bool {
        if self.loaded.scenario.known_disagreement.is_some() && self.envoy.is_some() {
            let envoy_ok = self.steps.iter().all(|s| {
                s.checks
                    .iter()
                    .all(|c| c.envoy.as_ref().is_none_or(Result::is_ok))
            });
            let envoy_ran = matches!(self.envoy, Some(HostOutcome::Ran(_)));
            return envoy_ok && envoy_ran && self.hosts_disagree();
        }
        self.all_held_and_agree()
    }

    fn all_held_and_agree(&self) -> bool {
        self.problems.is_empty()
            && self.steps.iter().all(|s| {
                s.differences.is_empty()
                    && s.checks
                        .iter()
                        .all(|c| c.harness.is_ok() && c.envoy.as_ref().is_none_or(Result::is_ok))
            })
    }

    /// Whether the hosts disagree (an expectation holds in one and not the other, or the
    /// observations differ).
    pub fn hosts_disagree(&self) -> bool {
        self.steps.iter().any(|s| {
            !s.differences.is_empty()
                || s.checks.iter().any(|c| {
                    c.envoy
                        .as_ref()
                        .is_some_and(|e| e.is_ok() != c.harness.is_ok())
                })
        })
    }

    /// A readable report. `verbose` adds every observation; a failed step always shows them.
    pub fn render(&self, verbose: bool) -> String {
        let mut s = String::new();
        let sc = &self.loaded.scenario;
        let known = sc.known_disagreement.is_some() && self.envoy.is_some();
        let verdict = if known && self.passed() {
            "PASS (a known disagreement: Envoy meets the expectations, the harness does not)"
        } else if known && self.all_held_and_agree() {
            "FAIL (the hosts agree now: remove `known_disagreement` from the scenario)"
        } else if self.passed() {
            "PASS"
        } else if self.hosts_disagree() {
            "FAIL (the hosts disagree)"
        } else {
            "FAIL"
        };
        let _ = writeln!(s, "scenario {}: {verdict}", self.loaded.label);
        let _ = writeln!(s, "  {}", sc.description);
        if let Some(why) = &sc.known_disagreement {
            let _ = writeln!(s, "  known disagreement: {why}");
        }
        match (&sc.harness_only, &self.envoy) {
            (Some(why), _) => {
                let _ = writeln!(s, "  hosts: harness only ({why})");
            }
            (None, Some(_)) => {
                let _ = writeln!(
                    s,
                    "  hosts: harness, Envoy{}",
                    self.envoy_version
                        .as_deref()
                        .map(|v| format!(" {v}"))
                        .unwrap_or_default()
                );
            }
            (None, None) => {
                let _ = writeln!(s, "  hosts: harness (Envoy not run)");
            }
        }
        let _ = writeln!(s, "  chain:");
        for (i, p) in self.loaded.plugins.iter().enumerate() {
            match p {
                Plugin::Wasm {
                    name,
                    path,
                    configuration,
                    ..
                } => {
                    let file = path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let config = if configuration.is_empty() {
                        "(empty)"
                    } else {
                        configuration.as_str()
                    };
                    let _ = writeln!(s, "    {}. {name} ({file}) config {config}", i + 1);
                }
                Plugin::LocalReply { reply, .. } => {
                    let _ = writeln!(
                        s,
                        "    {}. local_reply {}{}",
                        i + 1,
                        reply.status,
                        reply
                            .path_prefix
                            .as_ref()
                            .map(|p| format!(" for paths starting with {p}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        for p in &self.problems {
            let _ = writeln!(s, "  PROBLEM {p}");
        }
        if let Some(want) = &sc.config_rejected {
            let _ = writeln!(
                s,
                "  expect: configuration rejected{}",
                want.log
                    .as_ref()
                    .map(|l| format!(", log matches {l:?}"))
                    .unwrap_or_default()
            );
        }
        let with_envoy = self.envoy.is_some();
        for st in &self.steps {
            let _ = writeln!(s, "  {}", st.title);
            let _ = writeln!(
                s,
                "    {:<8}{:<8}expectation",
                "harness",
                if with_envoy { "envoy" } else { "" }
            );
            let mut failed = !st.differences.is_empty();
            for c in &st.checks {
                let mark = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "FAIL" };
                let e = c.envoy.as_ref().map(mark).unwrap_or("");
                let _ = writeln!(s, "    {:<8}{:<8}{}", mark(&c.harness), e, c.what);
                if let Err(why) = &c.harness {
                    failed = true;
                    let _ = writeln!(s, "{:>20}harness: {why}", "");
                }
                if let Some(Err(why)) = &c.envoy {
                    failed = true;
                    let _ = writeln!(s, "{:>20}envoy: {why}", "");
                }
            }
            if with_envoy && st.observed.0.is_some() && st.observed.1.is_some() {
                if st.differences.is_empty() {
                    let _ = writeln!(s, "    hosts agree");
                } else {
                    let _ = writeln!(s, "    HOSTS DISAGREE:");
                    for d in &st.differences {
                        let _ = writeln!(s, "      - {d}");
                    }
                }
            }
            if verbose || (failed && !(known && self.passed())) {
                for (host, obs) in [("harness", &st.observed.0), ("envoy", &st.observed.1)] {
                    if let Some(o) = obs {
                        let _ = writeln!(s, "    observed in {host}:");
                        s.push_str(&indent(&render_observed(o), "      "));
                        s.push('\n');
                    }
                }
            }
        }
        s
    }
}

fn render_message(m: &Message) -> String {
    let mut s = String::new();
    for (k, v) in &m.headers {
        let _ = writeln!(s, "  {k}: {v}");
    }
    if !m.body.is_empty() {
        let _ = writeln!(s, "  body: {}", body_text(&m.body));
    }
    s
}

fn render_observed(o: &Observed) -> String {
    let mut s = String::new();
    match &o.upstream {
        Some(m) => {
            let _ = write!(s, "upstream received:\n{}", render_message(m));
        }
        None => s.push_str("upstream received nothing\n"),
    }
    match &o.client {
        Some(c) => {
            let _ = write!(
                s,
                "client received: {}\n{}",
                c.status,
                render_message(&c.message)
            );
        }
        None => s.push_str("client received no response\n"),
    }
    for (cluster, m) in &o.callouts {
        let _ = write!(s, "callout to {cluster}:\n{}", render_message(m));
    }
    if !o.metrics.is_empty() {
        let m: Vec<String> = o
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:+}"))
            .collect();
        let _ = writeln!(s, "metrics: {}", m.join(", "));
    }
    for n in &o.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_and_durations() -> Result<()> {
        assert_eq!(
            HeaderRef::parse("step2.client.X-Request-ID")?,
            HeaderRef {
                step: Some(1),
                side: Side::Client,
                name: "x-request-id".into()
            }
        );
        assert!(HeaderRef::parse("step0.client.x").is_err());
        assert!(HeaderRef::parse("server.x").is_err());
        assert_eq!(parse_duration("250ms")?, Duration::from_millis(250));
        assert_eq!(parse_duration("2s")?, Duration::from_secs(2));
        assert!(parse_duration("2").is_err());
        Ok(())
    }

    #[test]
    fn header_checks() -> Result<()> {
        let yaml = r#"
a: null
b: exact
c: {matches: "@uuid4", count: 1}
d: {same_as: request.x}
"#;
        let checks: BTreeMap<String, HeaderCheck> = serde_yaml::from_str(yaml)?;
        let obs = vec![Observed {
            request: Message {
                headers: vec![("x".into(), "v".into())],
                body: Vec::new(),
            },
            ..Default::default()
        }];
        let ok = |k: &str, v: &[&str]| {
            let values: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            checks
                .get(k)
                .map(|c| check_header(&c.0, &values, 0, &obs).is_ok())
                .unwrap_or(false)
        };
        assert!(ok("a", &[]) && !ok("a", &["x"]));
        assert!(ok("b", &["exact"]) && !ok("b", &["exact", "other"]) && !ok("b", &[]));
        assert!(ok("c", &["0b4f6c2e-5b9a-4f7e-9a1d-3c2b1a0f9e8d"]));
        assert!(!ok("c", &["0b4f6c2e-5b9a-7f7e-9a1d-3c2b1a0f9e8d"]));
        assert!(ok("d", &["v"]) && !ok("d", &["w"]));
        let bad: Result<BTreeMap<String, HeaderCheck>, _> = serde_yaml::from_str("a: {nope: 1}");
        assert!(bad.is_err());
        Ok(())
    }

    fn observed(upstream: &[(&str, &str)], metric: i64) -> Observed {
        let msg = |h: &[(&str, &str)]| Message {
            headers: h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        };
        Observed {
            upstream: Some(msg(upstream)),
            client: Some(ClientResponse {
                status: 200,
                message: msg(&[]),
            }),
            metrics: [("m".to_string(), metric)].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn compare_judges_expected_headers_by_count_and_others_exactly() -> Result<()> {
        let step: Step =
            serde_yaml::from_str("expect: {upstream: {headers: {x-id: {matches: '@uuid4'}}}}")?;
        let h = observed(
            &[("x-id", "a"), ("x-other", "same"), ("x-forwarded-for", "1")],
            1,
        );
        let e = observed(
            &[("x-id", "b"), ("x-other", "same"), ("x-forwarded-for", "2")],
            1,
        );
        assert!(compare(&step, &h, &e).is_empty());
        let e2 = observed(&[("x-id", "b"), ("x-id", "c"), ("x-other", "same")], 1);
        let diff = compare(&step, &h, &e2);
        assert!(diff.iter().any(|d| d.contains("x-id")), "{diff:?}");
        assert!(
            diff.iter().any(|d| d.contains("x-forwarded-for")),
            "{diff:?}"
        );
        let e3 = observed(
            &[
                ("x-id", "b"),
                ("x-other", "changed"),
                ("x-forwarded-for", "2"),
            ],
            2,
        );
        let diff = compare(&step, &h, &e3);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(
            diff[0].contains("x-other") && diff[1].contains("metric m"),
            "{diff:?}"
        );
        // Envoy-only headers added after the filters are not compared.
        let e4 = observed(
            &[
                ("x-id", "b"),
                ("x-other", "same"),
                ("x-forwarded-for", "2"),
                ("x-envoy-expected-rq-timeout-ms", "15000"),
            ],
            1,
        );
        assert!(compare(&step, &h, &e4).is_empty());
        Ok(())
    }

    #[test]
    fn validation_names_the_problem() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let cases = [
            ("chain: []\nsteps: [{}]\ndescription: x", "chain: empty"),
            (
                "description: x\nchain: [{local_reply: {status: 401}}]\nsteps: [{advance: 1s}]",
                "harness_only",
            ),
            (
                "description: x\nchain: [{local_reply: {status: 401}}]\nsteps: [{expect: {client: {headers: {a: {same_as: step2.client.a}}}}}]",
                "later step",
            ),
            (
                "description: x\nchain: [{local_reply: {status: 401}}]\nsteps: [{requets: {}}]",
                "unknown field",
            ),
            (
                "description: x\nchain: [{local_reply: {status: 401}}]\nsteps: [{expect: {client: {headers: {a: {matches: '@nope'}}}}}]",
                "unknown named pattern",
            ),
        ];
        for (i, (yaml, want)) in cases.iter().enumerate() {
            let file = dir.path().join(format!("case{i}.yaml"));
            std::fs::write(&file, yaml)?;
            let err = load(&file)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains(want), "case {i}: {err}");
        }
        Ok(())
    }

    #[test]
    fn headers_keep_order_and_duplicates() -> Result<()> {
        let h: Headers = serde_yaml::from_str("X-B: 1\nx-a: [one, two]\n")?;
        assert_eq!(
            h.0,
            vec![
                ("x-b".to_string(), "1".to_string()),
                ("x-a".to_string(), "one".to_string()),
                ("x-a".to_string(), "two".to_string())
            ]
        );
        Ok(())
    }
}
