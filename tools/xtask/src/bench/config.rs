//! The Envoy configuration of a case: `envoy-configs/gateway.yaml` rendered and taken apart
//! (its connection manager, its gatewasm filters with rate limits no benchmark reaches), then put
//! back together around a case's filters with a direct-response route ([`envoy_config`]). Both
//! runners, `cpu.rs` and `instructions.rs`, start Envoy with it.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::Case;
use crate::{paths, render};

/// Ports rendered into gateway.yaml while we take it apart; replaced by placeholders again.
const SENTINEL_LISTEN: u16 = 61_001;
const SENTINEL_ADMIN: u16 = 61_002;

/// gateway.yaml, rendered with sentinel ports and `{{WASM_DIR}}` kept, as JSON.
pub fn gateway_config() -> Result<Value> {
    let template = std::fs::read_to_string(paths::envoy_configs_dir().join("gateway.yaml"))
        .context("reading envoy-configs/gateway.yaml")?;
    let vars: render::Vars = [
        ("LISTEN_PORT", SENTINEL_LISTEN.to_string()),
        ("ADMIN_PORT", SENTINEL_ADMIN.to_string()),
        ("UPSTREAM_PORT", "61003".to_string()),
        ("UPSTREAM2_PORT", "61004".to_string()),
        ("WASM_DIR", "{{WASM_DIR}}".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let rendered = render::render(&template, &vars)?;
    let docs = crate::deploy::parse_yaml_docs(&rendered)?;
    docs.into_iter().next().context("gateway.yaml is empty")
}

fn hcm(config: &mut Value) -> Result<&mut Value> {
    config
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .context("gateway.yaml: no HTTP connection manager on the first listener")
}

/// The gatewasm filters of gateway.yaml in chain order: (filter name, Envoy JSON).
pub fn gateway_wasm_filters(gateway: &Value) -> Result<Vec<(String, Value)>> {
    let mut gateway = gateway.clone();
    let filters = hcm(&mut gateway)?
        .get("http_filters")
        .and_then(Value::as_array)
        .context("gateway.yaml: no http_filters")?
        .clone();
    Ok(filters
        .into_iter()
        .filter_map(|mut f| {
            let name = f.get("name")?.as_str()?.to_string();
            let short = name.strip_prefix("gatewasm.")?.replace('_', "-");
            if short == "rate-limit" {
                never_deny(&mut f);
            }
            Some((short, f))
        })
        .collect())
}

/// The rate-limit filter's rules as configured, with limits no benchmark reaches: the cost of
/// evaluating and charging them, never a 429.
fn never_deny(filter: &mut Value) {
    let Some(value) = filter.pointer_mut("/typed_config/config/configuration/value") else {
        return;
    };
    let Some(mut config) = value
        .as_str()
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
    else {
        return;
    };
    if let Some(rules) = config.get_mut("rules").and_then(Value::as_array_mut) {
        for rule in rules {
            if rule.get("limit").is_some() {
                rule["limit"] = json!(1_000_000_000u64);
            }
            if let Some(overrides) = rule.get_mut("overrides").and_then(Value::as_array_mut) {
                for o in overrides {
                    if o.get("limit").is_some() {
                        o["limit"] = json!(1_000_000_000u64);
                    }
                }
            }
        }
    }
    *value = Value::String(config.to_string());
}

/// The Envoy config of `case`: gateway.yaml's listener and connection manager, a
/// direct-response route, the case's filters and the router. JSON text with `{{…}}`
/// placeholders for ports and the wasm directory, for [`EnvoyBuilder`](crate::envoy::EnvoyBuilder).
pub fn envoy_config(gateway: &Value, case: &Case) -> Result<String> {
    let mut config = gateway.clone();
    if let Some(clusters) = config.pointer_mut("/static_resources/clusters") {
        *clusters = json!([]);
    }
    let manager = hcm(&mut config)?;
    manager["route_config"] = json!({
        "name": "bench",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [{
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}
            }]
        }]
    });
    let mut filters = case.filters.clone();
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    manager["http_filters"] = Value::Array(filters);
    if case.native_request_id {
        manager["generate_request_id"] = json!(true);
        manager["always_set_request_id_in_response"] = json!(true);
    }
    let text = serde_json::to_string_pretty(&config)?;
    let text = text
        .replace(
            &format!("\"port_value\": {SENTINEL_LISTEN}"),
            "\"port_value\": {{LISTEN_PORT}}",
        )
        .replace(
            &format!("\"port_value\": {SENTINEL_ADMIN}"),
            "\"port_value\": {{ADMIN_PORT}}",
        );
    ensure!(
        text.contains("{{LISTEN_PORT}}") && text.contains("{{ADMIN_PORT}}"),
        "could not find the listener and admin ports in gateway.yaml"
    );
    Ok(text)
}
