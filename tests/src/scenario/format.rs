//! The scenario file format: the types a scenario's YAML is read into (serde), with the
//! hand-written (de)serialisation of header lists and checks. The JSON Schema of the format,
//! `tests/scenarios/scenario.schema.json`, is generated from these types ([`schema_json`]);
//! `load.rs` validates and resolves what they hold.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Result;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

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
    /// Where a shape of the chain legitimately differs from the filters' own modules. Every
    /// scenario also runs in the **bundle** shape (each filter of this workspace loaded from
    /// `gatewasm.wasm` with its name as root id, one shared VM) and the **chain** shape (each
    /// run of consecutive filters as one `chain` plugin of `gatewasm.wasm`), and on Envoy 1.40
    /// the **native** shape (each such run as one `chain` filter of the Envoy dynamic module
    /// `libgatewasm_envoy.so`, Envoy only); each shape must meet the expectations in every
    /// host it runs in and observe exactly what the separate modules observe. An entry here skips the observables it names, in that shape only (its
    /// expectations, the hosts' comparison and the comparison with the separate modules), and
    /// the report shows them as known differences. An entry that no longer differs fails the
    /// scenario (remove it).
    #[serde(default)]
    pub shape_differences: Vec<ShapeDifference>,
}

/// A shape of the chain other than the filters' own modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ShapeName {
    /// Each filter from `gatewasm.wasm`, root id = the filter's name, vm_id `gatewasm`.
    Bundle,
    /// Each run of consecutive filters as one plugin of `gatewasm.wasm`, root id `chain`.
    Chain,
    /// Each run of consecutive filters as one `chain` filter of the Envoy dynamic module
    /// `libgatewasm_envoy.so` (Envoy 1.40 only; not in the harness).
    Native,
}

/// A known difference of one shape from the filters' own modules.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShapeDifference {
    /// The shape that differs.
    pub shape: ShapeName,
    /// What differs, by observable: `upstream` (whether the request reached it),
    /// `upstream.header.<name>`, `upstream.body`, `client` (whether it got a response),
    /// `client.status`, `client.header.<name>`, `client.body`, `metric.<name>`,
    /// `callouts.<cluster>`, `log` (the `config_rejected` log check), `config` (whether the
    /// chain's configuration is accepted: the shape refuses what the separate modules accept,
    /// so no step runs in it). A trailing `*` matches any rest
    /// (`metric.gatewasm_jwt_to_header_*`).
    pub observables: Vec<String>,
    /// Only in these steps (counted from 1). Default: every step.
    #[serde(default)]
    pub steps: Vec<usize>,
    /// Why the shape differs (and where it is tracked): shown in the report.
    pub why: String,
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
    /// The regular expression for the **chain** shape, whose plugin reports a stage's error
    /// as `gatewasm chain: invalid plugin configuration: stages[<i>].config.<field>: <filter>:
    /// <message>`. Default: `log` (enough when `log` matches only the message).
    #[serde(default)]
    pub chain_log: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_duplicates() -> Result<()> {
        let h: Headers = serde_norway::from_str("X-B: 1\nx-a: [one, two]\n")?;
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
