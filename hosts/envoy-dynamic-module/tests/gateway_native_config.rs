//! `envoy-configs/gateway-native.yaml` is gateway-chain.yaml (the Wasm chain of gateway.yaml's
//! five filters, kept in sync with gateway.yaml by tests/tests/gateway_shapes.rs) on the
//! dynamic module: the same stages with the same configuration, and the same listener, routes
//! and clusters. No Envoy needed; the e2e tests start the file.

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
