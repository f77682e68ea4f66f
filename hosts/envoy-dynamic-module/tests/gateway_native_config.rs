//! `envoy-configs/gateway-native.yaml` is gateway-chain.yaml (the Wasm chain of gateway.yaml's
//! five filters, kept in sync with gateway.yaml by tests/tests/gateway_shapes.rs) on the
//! dynamic module: the same stages with the same configuration, and the same listener, routes
//! and clusters. No Envoy needed; the e2e tests start the file.
//!
//! `envoy-configs/envoy-gateway/native/` is the same chain on Envoy Gateway: its resources use
//! EG's field names, its config is gateway-native.yaml's, and the module accepts it.

use anyhow::{Context, Result, ensure};
use gatewasm_devtools::paths;

fn read(config: &str) -> Result<String> {
    std::fs::read_to_string(paths::envoy_configs_dir().join(config))
        .with_context(|| format!("reading envoy-configs/{config}"))
}

/// The chain's JSON: the block after the first `value: |`, up to the next comment line.
fn chain_json(config: &str) -> Result<serde_json::Value> {
    let text = read(config)?;
    let start = text.find("value: |").context("no `value: |`")? + "value: |".len();
    let block: String = text[start..]
        .lines()
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&block).with_context(|| format!("the chain JSON of {config}"))
}

/// The config without comments, from `admin:` on, with the `http_filters` list replaced by
/// the part after it that both share (the demo Lua filter and the router).
fn outside_the_chain(config: &str) -> Result<String> {
    let text = read(config)?;
    let body = &text[text.find("admin:").context("no admin:")?..];
    let filters = body.find("http_filters:").context("no http_filters")?;
    let shared_tail = body
        .find("- name: demo.local_reply")
        .context("no demo.local_reply filter")?;
    let strip = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(format!(
        "{}\n{}",
        strip(&body[..filters]),
        strip(&body[shared_tail..])
    ))
}

#[test]
fn gateway_native_runs_gateway_chains_stages_with_the_same_configuration() -> Result<()> {
    let wasm = chain_json("gateway-chain.yaml")?;
    let native = chain_json("gateway-native.yaml")?;
    ensure!(
        wasm == native,
        "the stages differ:\nchain:  {wasm}\nnative: {native}"
    );
    let stages = native["stages"].as_array().context("no stages")?;
    ensure!(stages.len() == 5, "{} stages", stages.len());
    Ok(())
}

#[test]
fn gateway_native_has_gateway_chains_listener_routes_and_clusters() -> Result<()> {
    let wasm = outside_the_chain("gateway-chain.yaml")?;
    let native = outside_the_chain("gateway-native.yaml")?;
    ensure!(
        wasm == native,
        "outside the chain filter, gateway-native.yaml differs from gateway-chain.yaml"
    );
    Ok(())
}

// ---- envoy-configs/envoy-gateway/native/: the module on Envoy Gateway --------------------------

/// The fields of Envoy Gateway's types (api/v1alpha1/dynamic_module_types.go,
/// envoyproxy_types.go, envoyextensionypolicy_types.go) that the example uses or may use.
const EEP_SPEC_FIELDS: &[&str] = &[
    "targetRefs",
    "targetSelectors",
    "wasm",
    "extProc",
    "lua",
    "dynamicModule",
];
const EEP_DYNAMIC_MODULE_FIELDS: &[&str] = &["name", "filterName", "config", "terminalFilter"];
const EP_DYNAMIC_MODULE_ENTRY_FIELDS: &[&str] = &["name", "source", "doNotClose", "loadGlobally"];
const EP_SOURCE_FIELDS: &[&str] = &["type", "local", "remote"];

fn native_policy_docs() -> Result<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let path = paths::envoy_configs_dir().join("envoy-gateway/native/envoy-extension-policy.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        docs.push(serde_json::Value::deserialize(doc)?);
    }
    Ok(docs)
}

fn unknown_fields(value: &serde_json::Value, known: &[&str], at: &str) -> Vec<String> {
    match value.as_object() {
        Some(map) => map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| format!("{at}.{k}"))
            .collect(),
        None => vec![format!("{at}: not an object")],
    }
}

/// EG's name pattern for modules (`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`, ≤ 253).
fn is_module_name(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-';
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 253
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(inner)
}

#[test]
fn envoy_gateway_native_policy_registers_and_loads_the_module() -> Result<()> {
    let docs = native_policy_docs()?;
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    ensure!(
        kinds == ["EnvoyProxy", "EnvoyExtensionPolicy"],
        "kinds {kinds:?}"
    );
    for doc in &docs {
        ensure!(doc["apiVersion"] == "gateway.envoyproxy.io/v1alpha1");
        ensure!(doc["metadata"]["namespace"] == "gatewasm-gateway");
    }
    let (proxy, policy) = (&docs[0], &docs[1]);

    // EnvoyProxy: the module registered, Local, by an absolute path to the library, and the
    // proxy pinned to Envoy 1.40.
    let entries = proxy["spec"]["dynamicModules"]
        .as_array()
        .context("spec.dynamicModules")?;
    ensure!(entries.len() == 1, "{entries:?}");
    let entry = &entries[0];
    let mut unknown = unknown_fields(entry, EP_DYNAMIC_MODULE_ENTRY_FIELDS, "dynamicModules[0]");
    unknown.extend(unknown_fields(
        &entry["source"],
        EP_SOURCE_FIELDS,
        "dynamicModules[0].source",
    ));
    ensure!(unknown.is_empty(), "not EG fields: {unknown:?}");
    let registered = entry["name"].as_str().context("name")?;
    ensure!(is_module_name(registered), "{registered:?}");
    ensure!(entry["source"]["type"] == "Local");
    ensure!(entry["source"].get("remote").is_none());
    let path = entry["source"]["local"]["path"]
        .as_str()
        .context("source.local.path")?;
    ensure!(
        path.starts_with('/') && path.ends_with("/libgatewasm_envoy.so"),
        "{path}"
    );
    let container = &proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"];
    let image = container["image"].as_str().context("the proxy image")?;
    ensure!(
        image.contains("envoyproxy/envoy:") && image.contains("v1.40."),
        "{image}"
    );
    // The library's directory is mounted from a volume of the pod.
    let mount = container["volumeMounts"][0]["mountPath"]
        .as_str()
        .context("volumeMounts[0].mountPath")?;
    ensure!(
        path.starts_with(&format!("{mount}/")),
        "{path} not under {mount}"
    );
    let volume = container["volumeMounts"][0]["name"]
        .as_str()
        .context("volume")?;
    let volumes = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["pod"]["volumes"]
        .as_array()
        .context("pod.volumes")?;
    ensure!(
        volumes.iter().any(|v| v["name"] == volume),
        "no volume {volume}"
    );

    // EnvoyExtensionPolicy: targets like the Wasm policies (it replaces them), one
    // dynamicModule entry naming the registered module, filter `chain`.
    let spec = &policy["spec"];
    let mut unknown = unknown_fields(spec, EEP_SPEC_FIELDS, "spec");
    let modules = spec["dynamicModule"]
        .as_array()
        .context("spec.dynamicModule")?;
    ensure!(modules.len() == 1, "{modules:?}");
    let module = &modules[0];
    unknown.extend(unknown_fields(
        module,
        EEP_DYNAMIC_MODULE_FIELDS,
        "spec.dynamicModule[0]",
    ));
    ensure!(unknown.is_empty(), "not EG fields: {unknown:?}");
    ensure!(spec.get("wasm").is_none(), "the native policy runs no Wasm");
    ensure!(module["name"] == registered, "{module}");
    ensure!(module["filterName"] == "chain", "{module}");
    let wasm_chain = {
        use serde::Deserialize;
        let text = read("envoy-gateway/chain/envoy-extension-policy.yaml")?;
        serde_json::Value::deserialize(serde_norway::Deserializer::from_str(&text))?
    };
    ensure!(policy["metadata"] == wasm_chain["metadata"], "metadata");
    ensure!(
        spec["targetRefs"] == wasm_chain["spec"]["targetRefs"],
        "targetRefs"
    );

    // config: gateway-native.yaml's filter_config, which the e2e tests run, and the module
    // accepts it (EG passes it as a StringValue of JSON, as Envoy's filter_config).
    let config = &module["config"];
    let tested = chain_json("gateway-native.yaml")?;
    ensure!(
        *config == tested,
        "config differs from gateway-native.yaml's:\n  policy: {config}\n  envoy:  {tested}"
    );
    let spec = gatewasm_envoy::spec::Spec::parse("chain", config.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(spec.plans.len() == 5, "{} stages", spec.plans.len());
    gatewasm_envoy::pipeline::Pipeline::build(&spec.plans, spec.chain, &mut |_| {
        gatewasm_common::stage::Counter(Some(0))
    })
    .map_err(|e| anyhow::anyhow!("the module refuses the policy's config: {e}"))?;
    Ok(())
}

#[test]
fn the_native_policy_check_catches_a_field_eg_does_not_have() {
    let entry = serde_json::json!({"name": "gatewasm", "sourec": {}});
    assert_eq!(
        unknown_fields(&entry, EP_DYNAMIC_MODULE_ENTRY_FIELDS, "e"),
        ["e.sourec"]
    );
    assert!(is_module_name("gatewasm") && is_module_name("a.b-c"));
    assert!(!is_module_name("Gatewasm") && !is_module_name("-a") && !is_module_name(""));
}
