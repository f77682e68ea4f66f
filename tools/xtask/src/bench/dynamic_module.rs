//! The native-module cases: the same filters and configurations as the Proxy-Wasm cases, run by
//! `libgatewasm_envoy.so` (hosts/envoy-dynamic-module, `just build-native`) through Envoy 1.40's
//! dynamic-module filter instead of a Wasm VM — one `chain` filter, the five filters as five
//! dynamic-module filters, and each filter alone. `cases.rs` puts them in the case list; both
//! runners start their Envoy with [`SEARCH_PATH_VAR`] pointing at [`module_dir`].
//!
//! Configurations: the Proxy-Wasm cases' (gateway.yaml's, rate limits raised), which are also
//! the stages of `envoy-configs/gateway-native.yaml` (a test checks it): inline JWKS and local
//! rate limits only — the dynamic module's `remote_jwks` and global/hybrid rate limiting are
//! not measured.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

/// The environment variable Envoy searches for `lib<name>.so`.
pub const SEARCH_PATH_VAR: &str = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH";

/// The module's name in `dynamic_module_config` (Envoy loads `lib<name>.so`).
pub const MODULE_NAME: &str = "gatewasm_envoy";

/// Overrides where the library is (as for the dynamic module's own e2e tests).
pub const MODULE_DIR_VAR: &str = "GATEWASM_DYNAMIC_MODULE_DIR";

/// The directory holding `libgatewasm_envoy.so`: [`MODULE_DIR_VAR`] if set, else the `native`
/// profile's output of the target directory this binary was built in (`<target>/debug/bench`,
/// or a test binary `<target>/debug/deps/<name>` → `<target>/native/`). Fails, naming `just
/// build-native`, when the library is not there. Used by the bench's native-module cases and
/// by the scenarios' native shape.
pub fn module_dir() -> Result<PathBuf> {
    library_dir(&[MODULE_NAME])
}

/// The directory of the `native` builds ([`module_dir`]'s), checked to hold `lib<name>.so` for
/// every name of `names` (the gatewasm library, the platform library).
pub fn library_dir(names: &[&str]) -> Result<PathBuf> {
    let dir = match std::env::var_os(MODULE_DIR_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let exe = std::env::current_exe()?;
            let mut profile = exe
                .parent()
                .context("this binary is not in <target>/<profile>/")?;
            if profile.file_name().is_some_and(|n| n == "deps") {
                profile = profile
                    .parent()
                    .context("this binary is not in <target>/<profile>/deps/")?;
            }
            profile
                .parent()
                .context("this binary is not in <target>/<profile>/")?
                .join("native")
        }
    };
    for name in names {
        let lib = dir.join(format!("lib{name}.so"));
        let build = if *name == PLATFORM_MODULE_NAME {
            "cargo build --profile native -p gatewasm-dynamic-module-platform` (`just bench` does)"
        } else {
            "just build-native` (`just bench` and `just test` do)"
        };
        ensure!(
            lib.is_file(),
            "{} does not exist: Envoy loads the dynamic module {name} from there; run `{build} \
             or set {MODULE_DIR_VAR}",
            lib.display()
        );
    }
    Ok(dir)
}

/// One dynamic-module filter of the library: `filter_name` (a filter, or `chain`) with
/// `config` (the JSON the filter's Wasm plugin takes) as its `filter_config`.
pub fn filter(name: &str, filter_name: &str, config: &Value) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": MODULE_NAME},
            "filter_name": filter_name,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config.to_string()
            }
        }
    })
}

/// The configuration of a gatewasm filter of gateway.yaml (its Wasm plugin's JSON).
pub fn wasm_config(name: &str, wasm_filter: &Value) -> Result<Value> {
    let value = wasm_filter
        .pointer("/typed_config/config/configuration/value")
        .and_then(Value::as_str)
        .with_context(|| format!("gateway.yaml: {name} has no configuration value"))?;
    serde_json::from_str(value)
        .with_context(|| format!("gateway.yaml: {name}'s configuration is not JSON"))
}

/// The chain-mode configuration of gateway.yaml's gatewasm filters, in order:
/// `{"stages": [{"filter": <name>, "config": <its configuration>}, …]}` (the Proxy-Wasm
/// bundle's `chain` root and the library's `chain` filter take the same JSON).
pub fn chain_config(wasm: &[(String, Value)]) -> Result<Value> {
    let mut stages = Vec::with_capacity(wasm.len());
    for (name, filter) in wasm {
        stages.push(json!({"filter": name, "config": wasm_config(name, filter)?}));
    }
    Ok(json!({ "stages": stages }))
}

/// A gatewasm filter of gateway.yaml as one dynamic-module filter (same name, same
/// configuration).
pub fn single(name: &str, wasm_filter: &Value) -> Result<Value> {
    let config = wasm_config(name, wasm_filter)?;
    let envoy_name = wasm_filter
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(name);
    Ok(filter(envoy_name, name, &config))
}

/// gateway.yaml's gatewasm filters as that many dynamic-module filters.
pub fn separate(wasm: &[(String, Value)]) -> Result<Vec<Value>> {
    wasm.iter().map(|(name, f)| single(name, f)).collect()
}

/// gateway.yaml's gatewasm filters as the stages of one dynamic-module `chain` filter.
pub fn chain(wasm: &[(String, Value)]) -> Result<Value> {
    Ok(filter("gatewasm.chain", "chain", &chain_config(wasm)?))
}

/// The dynamic modules (`lib<name>.so`) a filter list loads, each once.
pub fn modules_used(filters: &[Value]) -> Vec<&str> {
    let mut names: Vec<&str> = filters
        .iter()
        .filter_map(|f| {
            f.pointer("/typed_config/dynamic_module_config/name")
                .and_then(Value::as_str)
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Whether a filter list loads a dynamic module (the library or the platform library: its
/// Envoy needs [`SEARCH_PATH_VAR`]).
pub fn uses_module(filters: &[Value]) -> bool {
    !modules_used(filters).is_empty()
}

/// The platform library (tools/dynamic-module-platform, `libgatewasm_platform.so`): a
/// dynamic-module filter that does only what its configuration says per request.
pub const PLATFORM_MODULE_NAME: &str = "gatewasm_platform";

/// A case that prices the dynamic-module ABI: the platform library with `config` (its
/// `filter_config`: how many calls of which kind per request; `{}` is the presence case).
pub struct DynamicModulePlatformCase {
    pub name: &'static str,
    /// The [`PlatformCallKind`] it makes 8 of (`None`: presence).
    pub calls: Option<PlatformCallKind>,
}

/// A callback the platform library makes [`PLATFORM_CALLS`] times per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformCallKind {
    /// `get_header(":path")` on the request.
    HeaderRead,
    /// `get_headers_size` + `get_headers` on the request: how gatewasm reads a request.
    HeaderMapRead,
    /// `set_header("x-platform", "value")` on the request.
    RequestHeaderWrite,
    /// `set_header("x-platform", "value")` on the response (in the response-headers hook).
    ResponseHeaderWrite,
    /// `increment_counter` of a counter defined at configuration.
    CounterIncrement,
}

impl PlatformCallKind {
    /// The platform library's configuration field that counts these calls.
    pub fn config_field(self) -> &'static str {
        match self {
            PlatformCallKind::HeaderRead => "request_header_reads",
            PlatformCallKind::HeaderMapRead => "request_header_map_reads",
            PlatformCallKind::RequestHeaderWrite => "request_header_writes",
            PlatformCallKind::ResponseHeaderWrite => "response_header_writes",
            PlatformCallKind::CounterIncrement => "counter_increments",
        }
    }

    /// What the report calls one of them.
    pub fn label(self) -> &'static str {
        match self {
            PlatformCallKind::HeaderRead => "request-header read (`get_header`)",
            PlatformCallKind::HeaderMapRead => {
                "request-header map read (`get_headers_size` + `get_headers`)"
            }
            PlatformCallKind::RequestHeaderWrite => "request-header write (`set_header`)",
            PlatformCallKind::ResponseHeaderWrite => "response-header write (`set_header`)",
            PlatformCallKind::CounterIncrement => "counter increment (`increment_counter`)",
        }
    }
}

/// How many calls of its kind a dynamic-module platform case makes per request.
pub const PLATFORM_CALLS: u32 = 8;

/// The dynamic-module platform cases; `--only "dynamic-module filter"` selects them all.
pub const DYNAMIC_MODULE_PLATFORM_CASES: [DynamicModulePlatformCase; 6] = [
    DynamicModulePlatformCase {
        name: "dynamic-module filter, presence",
        calls: None,
    },
    DynamicModulePlatformCase {
        name: "dynamic-module filter, 8 header reads",
        calls: Some(PlatformCallKind::HeaderRead),
    },
    DynamicModulePlatformCase {
        name: "dynamic-module filter, 8 header map reads",
        calls: Some(PlatformCallKind::HeaderMapRead),
    },
    DynamicModulePlatformCase {
        name: "dynamic-module filter, 8 request header writes",
        calls: Some(PlatformCallKind::RequestHeaderWrite),
    },
    DynamicModulePlatformCase {
        name: "dynamic-module filter, 8 response header writes",
        calls: Some(PlatformCallKind::ResponseHeaderWrite),
    },
    DynamicModulePlatformCase {
        name: "dynamic-module filter, 8 counter increments",
        calls: Some(PlatformCallKind::CounterIncrement),
    },
];

impl DynamicModulePlatformCase {
    /// The platform library's `filter_config` for this case.
    pub fn config(&self) -> Value {
        match self.calls {
            Some(kind) => json!({ kind.config_field(): PLATFORM_CALLS }),
            None => json!({}),
        }
    }

    /// The case's one filter: the platform library with [`Self::config`].
    pub fn filter(&self) -> Value {
        let mut filter = filter("gatewasm.platform", "platform", &self.config());
        filter["typed_config"]["dynamic_module_config"]["name"] = json!(PLATFORM_MODULE_NAME);
        filter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{gateway_config, gateway_wasm_filters};

    /// gateway-native.yaml's chain stages, parsed.
    fn gateway_native_stages() -> Result<Vec<Value>> {
        let docs = crate::deploy::rendered_envoy_config("gateway-native.yaml")?;
        let config = docs
            .into_iter()
            .next()
            .context("gateway-native.yaml is empty")?;
        let filters = config
            .pointer(
                "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
            )
            .and_then(Value::as_array)
            .context("gateway-native.yaml: no http_filters")?;
        let chain = filters
            .iter()
            .find(|f| f["name"] == json!("gatewasm.chain"))
            .context("gateway-native.yaml: no gatewasm.chain")?;
        let value = chain
            .pointer("/typed_config/filter_config/value")
            .and_then(Value::as_str)
            .context("gateway-native.yaml: the chain has no filter_config value")?;
        let config: Value = serde_json::from_str(value)?;
        config["stages"]
            .as_array()
            .cloned()
            .context("gateway-native.yaml: no stages")
    }

    /// The native-module cases run what gateway-native.yaml ships: the same filters in the same
    /// order with the same configurations (but the rate limits the bench raises), none of them
    /// one the dynamic module refuses.
    #[test]
    fn native_module_configs_are_gateway_natives() -> Result<()> {
        let gateway = gateway_config()?;
        let wasm = gateway_wasm_filters(&gateway)?;
        let ours = chain_config(&wasm)?;
        let ours = ours["stages"].as_array().context("stages")?;
        let shipped = gateway_native_stages()?;
        assert_eq!(ours.len(), shipped.len());
        for (ours, shipped) in ours.iter().zip(&shipped) {
            assert_eq!(ours["filter"], shipped["filter"]);
            let rate_limit = ours["filter"] == json!("rate-limit");
            let mut ours = ours["config"].clone();
            let mut shipped = shipped["config"].clone();
            if rate_limit {
                // rate-limit: the bench raises every limit so nothing is denied.
                for config in [&mut ours, &mut shipped] {
                    for rule in config["rules"].as_array_mut().into_iter().flatten() {
                        rule["limit"] = json!(0);
                        for o in rule["overrides"].as_array_mut().into_iter().flatten() {
                            o["limit"] = json!(0);
                        }
                    }
                }
            }
            assert_eq!(ours, shipped);
            let text = ours.to_string();
            assert!(!text.contains("remote_jwks"), "{text}");
            assert!(
                !text.contains("\"global\"") && !text.contains("\"hybrid\""),
                "{text}"
            );
        }
        Ok(())
    }

    #[test]
    fn chain_and_separate_filters_load_the_library() -> Result<()> {
        let gateway = gateway_config()?;
        let wasm = gateway_wasm_filters(&gateway)?;
        let chain = chain(&wasm)?;
        assert_eq!(chain["typed_config"]["filter_name"], json!("chain"));
        assert_eq!(
            chain["typed_config"]["dynamic_module_config"]["name"],
            json!(MODULE_NAME)
        );
        let separate = separate(&wasm)?;
        assert_eq!(separate.len(), wasm.len());
        for ((name, own), filter) in wasm.iter().zip(&separate) {
            assert_eq!(filter["typed_config"]["filter_name"], json!(name));
            assert_eq!(filter["name"], own["name"]);
            let value = filter
                .pointer("/typed_config/filter_config/value")
                .and_then(Value::as_str)
                .context("value")?;
            assert_eq!(
                serde_json::from_str::<Value>(value)?,
                wasm_config(name, own)?
            );
        }
        assert!(uses_module(&separate) && uses_module(&[chain]));
        assert!(!uses_module(
            &wasm.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>()
        ));
        Ok(())
    }
}
