//! `envoy-configs/gateway-bundle.yaml` and `gateway-chain.yaml` are `gateway.yaml` in the
//! bundle's two shapes (`deploy::Shape`), and stay so. No Envoy: the files themselves.
//!
//! - bundle: the same HTTP filters in the same order; each gatewasm filter loads gatewasm.wasm
//!   with `root_id` = its filter and one `vm_config` shared by all five (vm_id `gatewasm`), with
//!   gateway.yaml's name, configuration and failure policy;
//! - chain: gateway.yaml's five gatewasm filters replaced, where the first was, by one filter
//!   (`root_id: chain`, the same `vm_config`, FAIL_CLOSED) whose configuration is
//!   `{"stages": [...]}` with gateway.yaml's five configurations in its order;
//! - everything else equal: the parsed documents once the gatewasm filters are set aside, and
//!   the text (comments included) before and after the HTTP filters.
//!
//! Negative controls edit a copy and check each rule catches it. The end-to-end suite runs the
//! three files with the same tests (`gateway_shapes!`).

use anyhow::{Context, Result, bail, ensure};
use gatewasm_tests::deploy::{self, BUNDLE, CHAIN_ROOT_ID, FILTERS, Shape};
use gatewasm_tests::{paths, render};
use serde_json::{Value, json};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

fn template(shape: Shape) -> Result<String> {
    let path = paths::envoy_configs_dir().join(shape.gateway_config());
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The one document of a config template, rendered with dummy ports and paths.
fn parse(text: &str) -> Result<Value> {
    let vars: render::Vars = [
        ("LISTEN_PORT", "10000"),
        ("ADMIN_PORT", "10001"),
        ("UPSTREAM_PORT", "10002"),
        ("UPSTREAM2_PORT", "10003"),
        ("WASM_DIR", "/wasm"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut docs = deploy::parse_yaml_docs(&render::render(text, &vars)?)?;
    ensure!(docs.len() == 1, "{} YAML documents", docs.len());
    docs.pop().context("no document")
}

/// The JSON pointer of the connection manager's `http_filters` (there must be exactly one).
fn http_filters_pointer(doc: &Value) -> Result<String> {
    let listeners = doc["static_resources"]["listeners"]
        .as_array()
        .context("no listeners")?;
    let mut found = Vec::new();
    for (l, listener) in listeners.iter().enumerate() {
        for (c, chain) in listener["filter_chains"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (f, filter) in chain["filters"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if filter["typed_config"]["http_filters"].is_array() {
                    found.push(format!(
                        "/static_resources/listeners/{l}/filter_chains/{c}/filters/{f}/typed_config/http_filters"
                    ));
                }
            }
        }
    }
    ensure!(found.len() == 1, "{} HTTP connection managers", found.len());
    found.pop().context("no http_filters")
}

fn is_wasm(filter: &Value) -> bool {
    filter["typed_config"]["@type"] == WASM_TYPE
}

/// The config's HTTP filters, and the document with them taken out.
fn split(text: &str) -> Result<(Vec<Value>, Value)> {
    let mut doc = parse(text)?;
    let pointer = http_filters_pointer(&doc)?;
    let slot = doc.pointer_mut(&pointer).context("http_filters")?;
    let filters = slot.as_array().cloned().context("http_filters is a list")?;
    *slot = json!("(the HTTP filters)");
    Ok((filters, doc))
}

/// gateway.yaml's gatewasm filters are deploy::FILTERS, in order, each loading its own module.
fn check_separate(filters: &[Value]) -> Result<Vec<&Value>> {
    let wasm: Vec<&Value> = filters.iter().filter(|f| is_wasm(f)).collect();
    let names: Vec<&str> = wasm
        .iter()
        .map(|f| f["name"].as_str().unwrap_or(""))
        .collect();
    let want: Vec<String> = FILTERS.iter().map(|f| f.envoy_filter_name()).collect();
    ensure!(
        names == want,
        "gateway.yaml's Wasm filters: {names:?}, want {want:?}"
    );
    for (f, filter) in wasm.iter().zip(FILTERS) {
        let file = format!("/wasm/{}.wasm", filter.module());
        ensure!(
            f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] == file.as_str(),
            "{}: not its own module",
            filter.name
        );
    }
    Ok(wasm)
}

/// What every plugin of gatewasm.wasm in the shapes' configs has as `vm_config`.
fn bundle_vm_config() -> Value {
    json!({
        "vm_id": BUNDLE,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": format!("/wasm/{BUNDLE}.wasm")}}
    })
}

/// `filter`'s plugin config (`typed_config.config`) with its configuration parsed.
fn plugin(filter: &Value) -> Result<(Value, Value)> {
    let config = filter["typed_config"]["config"].clone();
    let json = deploy::wasm_filter_configuration(filter)?;
    Ok((config, json))
}

/// The bundle shape of `gateway` (both template texts).
fn check_bundle(gateway: &str, bundle: &str) -> Result<()> {
    let (g_filters, g_rest) = split(gateway)?;
    let (b_filters, b_rest) = split(bundle)?;
    let separate = check_separate(&g_filters)?;
    ensure!(
        g_filters.len() == b_filters.len(),
        "{} HTTP filters, gateway.yaml has {}",
        b_filters.len(),
        g_filters.len()
    );
    let mut wasm = separate.iter().zip(FILTERS);
    for (i, (g, b)) in g_filters.iter().zip(&b_filters).enumerate() {
        if !is_wasm(g) {
            ensure!(g == b, "http_filters[{i}] differs from gateway.yaml's: {b}");
            continue;
        }
        let (_, filter) = wasm.next().context("more Wasm filters than FILTERS")?;
        ensure!(
            is_wasm(b),
            "http_filters[{i}]: not the Wasm filter {}",
            filter.name
        );
        ensure!(
            g["name"] == b["name"],
            "http_filters[{i}]: name {}",
            b["name"]
        );
        let (g_config, g_json) = plugin(g)?;
        let (b_config, b_json) = plugin(b)?;
        let at = format!("{} (http_filters[{i}])", filter.name);
        ensure!(
            b_config["root_id"] == filter.name,
            "{at}: root_id {}",
            b_config["root_id"]
        );
        ensure!(
            b_config["vm_config"] == bundle_vm_config(),
            "{at}: vm_config {} (all five must share one VM)",
            b_config["vm_config"]
        );
        ensure!(
            deploy::json_equal(&g_json, &b_json),
            "{at}: configuration differs from gateway.yaml's:\n  gateway.yaml: {g_json}\n  bundle:       {b_json}"
        );
        ensure!(
            g_config["name"] == b_config["name"]
                && g_config["failure_policy"] == b_config["failure_policy"],
            "{at}: name or failure_policy differs from gateway.yaml's"
        );
        let keys: Vec<&String> = b_config
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        let mut want = vec![
            "configuration",
            "failure_policy",
            "name",
            "root_id",
            "vm_config",
        ];
        want.sort_unstable();
        ensure!(keys == want, "{at}: fields {keys:?}");
    }
    ensure!(
        g_rest == b_rest,
        "outside the HTTP filters, the bundle differs from gateway.yaml"
    );
    same_text_around_the_filters(gateway, bundle)
}

/// The chain shape of `gateway` (both template texts).
fn check_chain(gateway: &str, chain: &str) -> Result<()> {
    let (g_filters, g_rest) = split(gateway)?;
    let (c_filters, c_rest) = split(chain)?;
    let separate = check_separate(&g_filters)?;
    // gateway.yaml's list with its gatewasm filters replaced by one, where the first was.
    let first = g_filters
        .iter()
        .position(is_wasm)
        .context("no Wasm filter")?;
    let mut want: Vec<Option<&Value>> =
        g_filters.iter().filter(|f| !is_wasm(f)).map(Some).collect();
    want.insert(first, None);
    ensure!(
        c_filters.len() == want.len(),
        "{} HTTP filters, want gateway.yaml's {} without the five gatewasm filters, plus the chain",
        c_filters.len(),
        want.len() - 1
    );
    for (i, (c, w)) in c_filters.iter().zip(&want).enumerate() {
        if let Some(w) = w {
            ensure!(
                c == *w,
                "http_filters[{i}] differs from gateway.yaml's: {c}"
            );
            continue;
        }
        ensure!(
            is_wasm(c),
            "http_filters[{i}] is not the chain's Wasm filter"
        );
        ensure!(
            c["name"] == "gatewasm.chain",
            "http_filters[{i}]: name {}",
            c["name"]
        );
        let (config, json) = plugin(c)?;
        ensure!(
            config["root_id"] == CHAIN_ROOT_ID,
            "root_id {}",
            config["root_id"]
        );
        ensure!(
            config["vm_config"] == bundle_vm_config(),
            "vm_config {}",
            config["vm_config"]
        );
        // jwt-to-header and tenant-routing must fail closed: the one policy of all five does.
        ensure!(
            config["failure_policy"] == "FAIL_CLOSED",
            "failure_policy {}",
            config["failure_policy"]
        );
        let stages = deploy::chain_stages(&json)?;
        let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
        let want: Vec<&str> = FILTERS.iter().map(|f| f.name).collect();
        ensure!(
            names == want,
            "stages {names:?}, want gateway.yaml's order {want:?}"
        );
        for ((name, stage), g) in stages.iter().zip(&separate) {
            let g_json = deploy::wasm_filter_configuration(g)?;
            ensure!(
                deploy::json_equal(stage, &g_json),
                "stage {name}: configuration differs from gateway.yaml's:\n  gateway.yaml: {g_json}\n  chain:        {stage}"
            );
        }
        // Nothing but the stages, each nothing but the filter and its configuration.
        let expected = json!({"stages": stages.iter().map(|(n, c)| json!({"filter": n, "config": c})).collect::<Vec<_>>()});
        ensure!(
            json == expected,
            "the chain's configuration has more than the stages: {json}"
        );
    }
    ensure!(
        g_rest == c_rest,
        "outside the HTTP filters, the chain differs from gateway.yaml"
    );
    same_text_around_the_filters(gateway, chain)
}

/// The text from `admin:` to `http_filters:`, and from the first filter after the gatewasm
/// ones to the end, comments included, is gateway.yaml's.
fn same_text_around_the_filters(gateway: &str, shape: &str) -> Result<()> {
    const START: &str = "\nadmin:\n";
    const FILTERS_LINE: &str = "\n          http_filters:\n";
    const AFTER: &str = "\n          #\n          # DEMO/TEST ONLY";
    let cut = |text: &str| -> Result<(String, String)> {
        let start = text.find(START).context("no `admin:` line")?;
        let filters = text.find(FILTERS_LINE).context("no `http_filters:` line")?;
        let after = text
            .find(AFTER)
            .context("no DEMO/TEST ONLY filter after the gatewasm filters")?;
        Ok((text[start..filters].to_string(), text[after..].to_string()))
    };
    let (g_before, g_after) = cut(gateway)?;
    let (s_before, s_after) = cut(shape)?;
    ensure!(
        g_before == s_before,
        "the text before the HTTP filters differs from gateway.yaml's"
    );
    ensure!(
        g_after == s_after,
        "the text after the gatewasm filters differs from gateway.yaml's"
    );
    Ok(())
}

#[test]
fn gateway_bundle_yaml_is_gateway_yaml_over_gatewasm_wasm() -> Result<()> {
    check_bundle(&template(Shape::Separate)?, &template(Shape::Bundle)?)
}

#[test]
fn gateway_chain_yaml_is_gateway_yaml_as_one_chain() -> Result<()> {
    check_chain(&template(Shape::Separate)?, &template(Shape::Chain)?)
}

/// `text` with `from` replaced by `to`, exactly once.
fn edited(text: &str, from: &str, to: &str) -> Result<String> {
    let n = text.matches(from).count();
    if n != 1 {
        bail!("{from:?} appears {n} times");
    }
    Ok(text.replacen(from, to, 1))
}

#[test]
fn the_checks_catch_shapes_that_drift() -> Result<()> {
    let gateway = template(Shape::Separate)?;
    let bundle = template(Shape::Bundle)?;
    let chain = template(Shape::Chain)?;
    let edits_of_both: &[(&str, &str, &str)] = &[
        (
            "a filter configuration",
            "\"limit\": 120,",
            "\"limit\": 121,",
        ),
        (
            "a route",
            "route: { cluster_header: x-tenant-cluster }",
            "route: { cluster: upstream }",
        ),
        (
            "a comment outside the filters",
            "# Usual edge hardening",
            "# Edge hardening",
        ),
        (
            "a cluster",
            "connect_timeout: 1s\n    load_assignment:\n      cluster_name: tenant_acme",
            "connect_timeout: 2s\n    load_assignment:\n      cluster_name: tenant_acme",
        ),
    ];
    for (what, from, to) in edits_of_both {
        let b = edited(&bundle, from, to)?;
        ensure!(
            check_bundle(&gateway, &b).is_err(),
            "bundle: {what} changed unnoticed"
        );
        let c = edited(&chain, from, to)?;
        ensure!(
            check_chain(&gateway, &c).is_err(),
            "chain: {what} changed unnoticed"
        );
        // The same change in gateway.yaml alone is a drift too.
        let g = edited(&gateway, from, to)?;
        ensure!(
            check_bundle(&g, &bundle).is_err(),
            "gateway.yaml: {what} changed unnoticed"
        );
    }
    // Bundle: a plugin with its own VM, or another filter.
    let b = edited(
        &bundle,
        "                  vm_id: gatewasm\n                  runtime: envoy.wasm.runtime.v8\n                  code:\n                    local: { filename: \"{{WASM_DIR}}/gatewasm.wasm\" }\n                configuration:\n                  \"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: |\n                    {\n                      \"extract\"",
        "                  vm_id: gatewasm.trace\n                  runtime: envoy.wasm.runtime.v8\n                  code:\n                    local: { filename: \"{{WASM_DIR}}/gatewasm.wasm\" }\n                configuration:\n                  \"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: |\n                    {\n                      \"extract\"",
    )?;
    ensure!(
        check_bundle(&gateway, &b).is_err(),
        "bundle: a vm_id of its own unnoticed"
    );
    let b = edited(&bundle, "root_id: tenant-routing", "root_id: rate-limit")?;
    ensure!(
        check_bundle(&gateway, &b).is_err(),
        "bundle: the wrong root_id unnoticed"
    );
    // Chain: stages out of order, a stage missing, another failure policy.
    let swapped = chain
        .replacen("{\"filter\": \"tenant-routing\"", "{\"filter\": \"TMP\"", 1)
        .replacen(
            "{\"filter\": \"rate-limit\"",
            "{\"filter\": \"tenant-routing\"",
            1,
        )
        .replacen("{\"filter\": \"TMP\"", "{\"filter\": \"rate-limit\"", 1);
    ensure!(
        check_chain(&gateway, &swapped).is_err(),
        "chain: stages swapped unnoticed"
    );
    let c = edited(
        &chain,
        "failure_policy: FAIL_CLOSED",
        "failure_policy: FAIL_OPEN",
    )?;
    ensure!(
        check_chain(&gateway, &c).is_err(),
        "chain: FAIL_OPEN unnoticed"
    );
    let c = edited(
        &chain,
        "\"realm\": \"gatewasm-demo\"\n",
        "\"realm\": \"gatewasm-demo\", \"extra\": 1\n",
    )?;
    ensure!(
        check_chain(&gateway, &c).is_err(),
        "chain: a stage's extra field unnoticed"
    );
    Ok(())
}
