//! The deploy manifests: Istio `WasmPlugin`s (`istio-manifests/`) and the Envoy Gateway
//! `EnvoyExtensionPolicy` (`envoy-configs/envoy-gateway/`).
//!
//! - every WasmPlugin against the WasmPlugin CRD schema (npm `@kubernetes-models/istio`,
//!   compiled from Istio's CRDs; `just manifest-validator` installs it), plus the CRD's CEL
//!   rules and field names, which those validators do not check, by hand;
//! - the Envoy Gateway policy structurally (no CRD validator for it is available here);
//! - every `pluginConfig` / `config`: against the filter's `config.schema.json`, accepted by
//!   the real filter's `on_configure` (harness), and equal to the configuration of the Envoy
//!   config it was tested with (`envoy-configs/*.yaml`, run by the end-to-end suite);
//! - the chain order that `phase` / `priority` produce, and the failure policy per filter;
//! - the bundle's two shapes (`deploy::Shape`): bundle mode (`istio-manifests/<variant>-bundle/`,
//!   the separate plugins loading gatewasm.wasm, each naming its filter as `pluginName`) and
//!   chain mode (`istio-manifests/<variant>-chain/chain.yaml`, one plugin whose stages are the
//!   filters, and the Envoy Gateway policy `envoy-gateway/chain/`): every stage's config is
//!   checked as a filter's `pluginConfig` is, and the whole configuration matches
//!   `hosts/proxy-wasm-bundle/chain.schema.json` and is accepted by gatewasm.wasm in chain mode.
//!
//! Needs `just build` (the `.wasm` files) and `just manifest-validator`; `just test` does both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use gatewasm_tests::deploy::{
    self, BUNDLE, CHAIN_PHASE, CHAIN_ROOT_ID, FILTERS, Filter, Phase, Placement, SHAPES, Shape,
    Variant,
};
use gatewasm_tests::paths;
use proxy_wasm_harness::{HarnessError, Host, Module, PluginConfig, Worker};
use serde_json::{Value, json};

/// One WasmPlugin document of one filter (separate or bundle shape) and where it came from.
struct Plugin {
    file: PathBuf,
    shape: Shape,
    variant: Variant,
    filter: &'static Filter,
    placement: &'static Placement,
    doc: Value,
}

impl Plugin {
    fn source(&self) -> String {
        rel(&self.file)
    }
    fn spec(&self) -> &Value {
        &self.doc["spec"]
    }
}

fn rel(path: &Path) -> String {
    let root = paths::workspace_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The one document of a manifest.
fn load_one(file: &Path) -> Result<Value> {
    ensure!(file.is_file(), "{} is missing", rel(file));
    let docs = deploy::load_yaml_docs(file)?;
    ensure!(
        docs.len() == 1,
        "{}: expected one document, found {}",
        rel(file),
        docs.len()
    );
    docs.into_iter().next().context("no document")
}

/// The manifest files of `shape` in `variant`, by file name: one per filter placed there, or
/// (chain) `chain.yaml`.
fn manifest_names(shape: Shape, variant: Variant) -> Vec<String> {
    match shape {
        Shape::Chain => vec!["chain.yaml".to_string()],
        Shape::Separate | Shape::Bundle => FILTERS
            .iter()
            .filter(|f| f.placement(variant).is_some())
            .map(|f| format!("{}.yaml", f.name))
            .collect(),
    }
}

/// Every WasmPlugin of one filter (separate and bundle shapes, every variant), after checking
/// each file holds exactly one.
fn plugins() -> Result<Vec<Plugin>> {
    let mut out = Vec::new();
    for shape in [Shape::Separate, Shape::Bundle] {
        for &variant in shape.variants() {
            for filter in FILTERS {
                let Some(placement) = filter.placement(variant) else {
                    continue;
                };
                let file = shape.dir(variant).join(format!("{}.yaml", filter.name));
                let doc = load_one(&file).with_context(|| {
                    format!(
                        "deploy::FILTERS ships {} in {} ({} shape)",
                        filter.name,
                        variant.dir_name(),
                        shape.name()
                    )
                })?;
                out.push(Plugin {
                    file,
                    shape,
                    variant,
                    filter,
                    placement,
                    doc,
                });
            }
        }
    }
    Ok(out)
}

/// The chain shape's WasmPlugin (`<variant>-chain/chain.yaml`) of one variant.
struct ChainPlugin {
    file: PathBuf,
    variant: Variant,
    doc: Value,
}

impl ChainPlugin {
    fn source(&self) -> String {
        rel(&self.file)
    }
    fn spec(&self) -> &Value {
        &self.doc["spec"]
    }
    /// The filters its stages must be: those placed in its variant, in chain order.
    fn filters(&self) -> Vec<&'static Filter> {
        FILTERS
            .iter()
            .filter(|f| f.placement(self.variant).is_some())
            .collect()
    }
}

fn chain_plugins() -> Result<Vec<ChainPlugin>> {
    Shape::Chain
        .variants()
        .iter()
        .map(|&variant| {
            let file = Shape::Chain.dir(variant).join("chain.yaml");
            let doc = load_one(&file)?;
            Ok(ChainPlugin { file, variant, doc })
        })
        .collect()
}

/// Every WasmPlugin document of every shape: (source, document).
fn all_wasmplugins() -> Result<Vec<(String, Value)>> {
    let mut docs: Vec<(String, Value)> = plugins()?
        .into_iter()
        .map(|p| (p.source(), p.doc))
        .collect();
    docs.extend(chain_plugins()?.into_iter().map(|p| (p.source(), p.doc)));
    Ok(docs)
}

/// A filter configuration as a manifest ships it (a plugin's, or a stage's of a chain), and the
/// Envoy config it must equal.
struct ConfigSite {
    source: String,
    filter: &'static Filter,
    /// The module that runs it: the filter's own (separate shape) or gatewasm.wasm (bundle and
    /// chain shapes; a chain hands each stage its config as the filter's own parser takes it).
    shape: Shape,
    config: Value,
    envoy_config: &'static str,
    /// The filter's name in `envoy_config` (an HTTP filter or an ECDS resource).
    envoy_filter: String,
}

fn eg_policy() -> Result<Value> {
    load_one(&deploy::envoy_gateway_policy())
}

fn eg_chain_policy() -> Result<Value> {
    load_one(&deploy::envoy_gateway_chain_policy())
}

/// The stages of a chain configuration, each with its filter; fails unless they are `filters`,
/// in that order.
fn stages_of(
    source: &str,
    config: &Value,
    filters: &[&'static Filter],
) -> Result<Vec<(&'static Filter, Value)>> {
    let stages = deploy::chain_stages(config).with_context(|| source.to_string())?;
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = filters.iter().map(|f| f.name).collect();
    ensure!(
        names == want,
        "{source}: stages {names:?}, want the filters in chain order {want:?}"
    );
    Ok(filters
        .iter()
        .copied()
        .zip(stages.into_iter().map(|(_, c)| c))
        .collect())
}

fn config_sites() -> Result<Vec<ConfigSite>> {
    let mut sites = Vec::new();
    for p in plugins()? {
        sites.push(ConfigSite {
            source: format!("{} (pluginConfig)", p.source()),
            filter: p.filter,
            shape: p.shape,
            config: p.spec().get("pluginConfig").cloned().unwrap_or(json!({})),
            envoy_config: p.placement.envoy_config,
            envoy_filter: p.placement.envoy_filter.to_string(),
        });
    }
    // Each stage of a chain is its filter's configuration for that placement.
    for p in chain_plugins()? {
        let config = p.spec().get("pluginConfig").cloned().unwrap_or(json!({}));
        for (i, (filter, stage)) in stages_of(&p.source(), &config, &p.filters())?
            .into_iter()
            .enumerate()
        {
            let placement = filter.placement(p.variant).context("placed")?;
            sites.push(ConfigSite {
                source: format!("{} (pluginConfig.stages[{i}].config)", p.source()),
                filter,
                shape: Shape::Chain,
                config: stage,
                envoy_config: placement.envoy_config,
                envoy_filter: placement.envoy_filter.to_string(),
            });
        }
    }
    let chain = eg_chain_policy()?;
    let config = chain["spec"]["wasm"][0]
        .get("config")
        .cloned()
        .unwrap_or(json!({}));
    let source = rel(&deploy::envoy_gateway_chain_policy());
    let filters: Vec<&'static Filter> = FILTERS.iter().collect();
    for (i, (filter, stage)) in stages_of(&source, &config, &filters)?
        .into_iter()
        .enumerate()
    {
        sites.push(ConfigSite {
            source: format!("{source} (spec.wasm[0].config.stages[{i}].config)"),
            filter,
            shape: Shape::Chain,
            config: stage,
            envoy_config: "gateway.yaml",
            envoy_filter: filter.envoy_filter_name(),
        });
    }
    let policy = eg_policy()?;
    for (i, entry) in policy["spec"]["wasm"]
        .as_array()
        .context("spec.wasm")?
        .iter()
        .enumerate()
    {
        let name = entry["name"].as_str().unwrap_or("");
        let filter = deploy::filter(name.trim_start_matches("gatewasm-"))?;
        sites.push(ConfigSite {
            source: format!(
                "{} (spec.wasm[{i}].config)",
                rel(&deploy::envoy_gateway_policy())
            ),
            filter,
            shape: Shape::Separate,
            config: entry.get("config").cloned().unwrap_or(json!({})),
            envoy_config: "gateway.yaml",
            envoy_filter: filter.envoy_filter_name(),
        });
    }
    Ok(sites)
}

// ---------------------------------------------------------------------------------------------
// Completeness

#[test]
fn every_shipped_filter_has_its_manifests_and_nothing_untested_ships() -> Result<()> {
    let mut dirs = Vec::new();
    for &shape in SHAPES {
        for &variant in shape.variants() {
            let dir = shape.dir(variant);
            let names: BTreeSet<String> = manifest_names(shape, variant).into_iter().collect();
            let found: BTreeSet<String> = deploy::yaml_files(&dir)?
                .iter()
                .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
                .collect();
            assert_eq!(
                found,
                names,
                "{}/ must hold exactly the manifests deploy::FILTERS places there ({} shape)",
                rel(&dir),
                shape.name()
            );
            // kustomization.yaml lists them, in chain order.
            let kustomization = dir.join("kustomization.yaml");
            let k = load_one(&kustomization)?;
            assert_eq!(k["kind"], "Kustomization");
            let want: Vec<Value> = manifest_names(shape, variant)
                .into_iter()
                .map(Value::from)
                .collect();
            assert_eq!(
                k["resources"],
                Value::Array(want),
                "{}: resources",
                rel(&kustomization)
            );
            dirs.push(dir);
        }
    }
    // No stray YAML elsewhere under istio-manifests/ (everything there is validated below).
    for file in deploy::yaml_files(&deploy::istio_manifests_dir())? {
        assert!(
            file.parent().is_some_and(|p| dirs.iter().any(|d| d == p)),
            "{} is not in a placement directory, so no test covers it",
            rel(&file)
        );
    }
    // Nor under envoy-configs/envoy-gateway/: the three policies (the native one is checked
    // by hosts/envoy-dynamic-module/tests/gateway_native_config.rs).
    let policies = deploy::yaml_files(&deploy::envoy_gateway_dir())?;
    assert_eq!(
        policies,
        [
            deploy::envoy_gateway_chain_policy(),
            deploy::envoy_gateway_policy(),
            deploy::envoy_gateway_native_policy(),
        ],
        "envoy-configs/envoy-gateway/: only the tested policies"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The WasmPlugin CRD schema (npm @kubernetes-models/istio)

fn validator_dir() -> PathBuf {
    paths::workspace_root().join("tests/manifest-validator")
}

/// Runs the node validator on `docs`; returns (exit code, output).
fn run_validator(docs: &[(String, Value)]) -> Result<(i32, String)> {
    let dir = validator_dir();
    if !dir
        .join("node_modules/@kubernetes-models/istio/package.json")
        .is_file()
    {
        bail!(
            "the WasmPlugin schema validator is not installed ({} missing). Run `just manifest-validator` \
             (npm ci of tests/manifest-validator/package-lock.json; `just test` does it)",
            rel(&dir.join("node_modules"))
        );
    }
    let input = tempfile::NamedTempFile::new()?;
    let payload: Vec<Value> = docs
        .iter()
        .map(|(source, doc)| json!({"source": source, "document": doc}))
        .collect();
    std::fs::write(input.path(), serde_json::to_vec(&payload)?)?;
    let out = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .arg(input.path())
        .current_dir(&dir)
        .output()
        .context(
            "running `node` (Node.js >= 20 is needed for the manifest validator; `just manifest-validator` checks)",
        )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    ensure!(code != 2, "the validator could not run: {text}");
    Ok((code, text))
}

#[test]
fn wasmplugins_pass_the_crd_schema() -> Result<()> {
    let docs = all_wasmplugins()?;
    let (code, out) = run_validator(&docs)?;
    assert_eq!(code, 0, "WasmPlugin schema validation failed:\n{out}");
    assert!(
        out.contains(&format!("{} valid, 0 invalid", docs.len())),
        "{out}"
    );
    Ok(())
}

#[test]
fn the_crd_validator_rejects_a_broken_wasmplugin() -> Result<()> {
    // A negative control, so a validator that accepts everything cannot pass the test above.
    let mut bad = plugins()?.remove(0).doc;
    bad["spec"]["phase"] = json!("FIRST");
    bad["spec"]["failStrategy"] = json!("FAIL_SOMETIMES");
    bad["spec"]["sha256"] = json!("not-a-digest");
    bad["spec"]["priority"] = json!("high");
    bad["spec"].as_object_mut().unwrap().remove("url");
    let (code, out) = run_validator(&[("broken".into(), bad)])?;
    assert_eq!(code, 1, "{out}");
    for field in [
        "/spec/phase",
        "/spec/failStrategy",
        "/spec/sha256",
        "/spec/priority",
        "url",
    ] {
        assert!(out.contains(field), "no error for {field}:\n{out}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the compiled validators leave out: CEL rules, unknown fields, object names

/// The WasmPlugin spec fields of the CRD (istio/api extensions/v1alpha1/wasm.proto).
const WASMPLUGIN_SPEC_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "url",
    "sha256",
    "imagePullPolicy",
    "imagePullSecret",
    "verificationKey",
    "pluginConfig",
    "pluginName",
    "phase",
    "priority",
    "failStrategy",
    "vmConfig",
    "match",
    "type",
];

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_sha256_hex(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The WasmPlugin CRD's CEL rules (`x-kubernetes-validations`) and the apiserver's checks
/// that the compiled schema validators do not run. Returns the violations.
fn cel_and_strict_violations(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let mut err = |m: String| errors.push(m);
    let name = doc["metadata"]["name"].as_str().unwrap_or("");
    if !is_dns1123_subdomain(name) {
        err(format!(
            "metadata.name {name:?} is not a DNS-1123 subdomain"
        ));
    }
    let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("");
    if !is_dns1123_subdomain(namespace) || namespace.contains('.') || namespace.len() > 63 {
        err(format!(
            "metadata.namespace {namespace:?} must be set to a DNS-1123 label"
        ));
    }
    let spec = &doc["spec"];
    for key in spec.as_object().map(|m| m.keys()).into_iter().flatten() {
        if !WASMPLUGIN_SPEC_FIELDS.contains(&key.as_str()) {
            err(format!(
                "spec.{key}: unknown field (kubectl's strict field validation rejects it)"
            ));
        }
    }
    // rule: url must have schema one of [http, https, file, oci] (no scheme means oci).
    let url = spec["url"].as_str().unwrap_or("");
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !["", "http", "https", "oci", "file"].contains(&scheme) {
        err(format!(
            "spec.url {url:?}: scheme must be one of http, https, file, oci"
        ));
    }
    // rule: at most one of selector, targetRef, targetRefs.
    let set = ["selector", "targetRef", "targetRefs"]
        .iter()
        .filter(|k| spec.get(**k).is_some())
        .count();
    if set > 1 {
        err("at most one of selector, targetRef, targetRefs may be set".into());
    }
    // rules on policy target references.
    let mut refs: Vec<&Value> = spec["targetRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if let Some(r) = spec.get("targetRef") {
        refs.push(r);
    }
    for r in refs {
        let group = r["group"].as_str().unwrap_or("");
        let kind = r["kind"].as_str().unwrap_or("");
        let supported = matches!(
            (group, kind),
            ("gateway.networking.k8s.io", "Gateway")
                | ("gateway.networking.k8s.io", "GatewayClass")
                | ("" | "core", "Service")
                | ("networking.istio.io", "ServiceEntry")
        );
        if !supported {
            err(format!("targetRef {group}/{kind}: unsupported kind"));
        }
        if r["namespace"].as_str().is_some_and(|n| !n.is_empty()) {
            err("targetRef.namespace: cross namespace referencing is not supported".into());
        }
    }
    // rules on selector.matchLabels.
    if let Some(labels) = spec["selector"]["matchLabels"].as_object() {
        for (k, v) in labels {
            if k.is_empty() || k.contains('*') || v.as_str().is_none_or(|v| v.contains('*')) {
                err(format!(
                    "selector.matchLabels {k:?}: wildcards and empty keys are not allowed"
                ));
            }
        }
    }
    // rule: vmConfig.env value only when valueFrom is INLINE.
    for env in spec["vmConfig"]["env"].as_array().into_iter().flatten() {
        if env["valueFrom"] == "HOST" && env.get("value").is_some() {
            err("vmConfig.env: value may only be set when valueFrom is INLINE".into());
        }
    }
    errors
}

#[test]
fn wasmplugins_follow_the_crd_cel_rules_and_field_names() -> Result<()> {
    for (source, doc) in all_wasmplugins()? {
        let errors = cel_and_strict_violations(&doc);
        assert!(errors.is_empty(), "{source}: {errors:#?}");
    }
    // Negative control for the hand-written rules.
    let mut bad = plugins()?.remove(0).doc;
    bad["metadata"]["name"] = json!("Gatewasm_CID");
    bad["spec"]["url"] = json!("ftp://registry.example.com/x:1");
    bad["spec"]["targetRefs"] =
        json!([{"group": "apps", "kind": "Deployment", "name": "x", "namespace": "other"}]);
    bad["spec"]["pluginconfig"] = json!({});
    let errors = cel_and_strict_violations(&bad);
    assert_eq!(errors.len(), 6, "{errors:#?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Placement, image, order, failure policy

/// What every WasmPlugin shares, whatever its shape: kind, image pinned, pull policy, phase and
/// priority set, a config object, the attachment of its variant, an explicit failStrategy
/// (FAIL_CLOSE when `must_fail_closed`) with its reasoning in a comment right above it.
fn check_wasmplugin(
    src: &str,
    file: &Path,
    variant: Variant,
    doc: &Value,
    image: &str,
    must_fail_closed: bool,
) -> Result<()> {
    let s = &doc["spec"];
    assert_eq!(doc["apiVersion"], "extensions.istio.io/v1alpha1", "{src}");
    assert_eq!(doc["kind"], "WasmPlugin", "{src}");
    assert_eq!(s["url"], json!(deploy::istio_url(image)), "{src}: url");
    assert!(is_sha256_hex(&s["sha256"]), "{src}: sha256 must be pinned");
    assert_eq!(s["imagePullPolicy"], "IfNotPresent", "{src}");
    assert!(s["priority"].is_i64(), "{src}: priority must be set");
    assert!(s.get("pluginConfig").is_some_and(Value::is_object), "{src}");
    match variant {
        Variant::Ingress => {
            assert_eq!(
                s["selector"],
                json!({"matchLabels": {"istio": "ingressgateway"}}),
                "{src}"
            );
            assert_eq!(doc["metadata"]["namespace"], "istio-system", "{src}");
            assert!(s.get("match").is_none(), "{src}");
        }
        Variant::GatewayApi => {
            let refs = s["targetRefs"].as_array().context("targetRefs")?;
            assert_eq!(refs.len(), 1, "{src}");
            assert_eq!(refs[0]["group"], "gateway.networking.k8s.io", "{src}");
            assert_eq!(refs[0]["kind"], "Gateway", "{src}");
            assert!(s.get("selector").is_none(), "{src}");
        }
        Variant::Sidecar => {
            assert_eq!(s["match"], json!([{"mode": "SERVER"}]), "{src}");
            assert!(
                s.get("selector").is_none() && s.get("targetRefs").is_none(),
                "{src}"
            );
        }
    }
    let fail = s["failStrategy"]
        .as_str()
        .context("failStrategy must be explicit")?;
    assert!(
        ["FAIL_CLOSE", "FAIL_OPEN"].contains(&fail),
        "{src}: {fail} (FAIL_RELOAD needs Istio >= 1.27; keep the manifests for older ones)"
    );
    if must_fail_closed {
        assert_eq!(
            fail, "FAIL_CLOSE",
            "{src}: a security filter must fail closed"
        );
    }
    // The reasoning is written next to the choice.
    assert!(
        comment_lines_above(file, "failStrategy:")? >= 2,
        "{src}: explain the failStrategy in a comment right above it"
    );
    Ok(())
}

/// How many comment lines are right above the first line starting with `field` in `file`.
fn comment_lines_above(file: &Path, field: &str) -> Result<usize> {
    let text = std::fs::read_to_string(file)?;
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(field))
        .with_context(|| format!("{}: no {field} line", rel(file)))?;
    Ok(lines[..at]
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with('#'))
        .count())
}

#[test]
fn wasmplugins_place_and_pin_each_filter() -> Result<()> {
    for p in plugins()? {
        let s = p.spec();
        let src = p.source();
        check_wasmplugin(
            &src,
            &p.file,
            p.variant,
            &p.doc,
            p.shape.image(p.filter),
            p.filter.must_fail_closed,
        )?;
        assert_eq!(
            p.doc["metadata"]["name"],
            json!(format!("gatewasm-{}", p.filter.name)),
            "{src}: name"
        );
        assert_eq!(
            Phase::parse(s["phase"].as_str())?,
            p.filter.phase,
            "{src}: phase"
        );
        // The bundle selects the filter by root id; a filter's own module has one root.
        match p.shape {
            Shape::Bundle => assert_eq!(s["pluginName"], p.filter.name, "{src}: pluginName"),
            _ => assert!(s.get("pluginName").is_none(), "{src}: pluginName"),
        }
    }
    Ok(())
}

#[test]
fn the_chain_wasmplugins_run_every_filter_from_the_bundle_in_one_plugin() -> Result<()> {
    for p in chain_plugins()? {
        let s = p.spec();
        let src = p.source();
        let filters = p.filters();
        check_wasmplugin(
            &src,
            &p.file,
            p.variant,
            &p.doc,
            BUNDLE,
            filters.iter().any(|f| f.must_fail_closed),
        )?;
        assert_eq!(p.doc["metadata"]["name"], "gatewasm-chain", "{src}: name");
        assert_eq!(s["pluginName"], CHAIN_ROOT_ID, "{src}: pluginName");
        assert_eq!(
            Phase::parse(s["phase"].as_str())?,
            CHAIN_PHASE,
            "{src}: phase (deploy::CHAIN_PHASE)"
        );
        assert!(
            comment_lines_above(&p.file, "phase:")? >= 4,
            "{src}: say what the chain's phase means for Istio's authn in a comment above it"
        );
        // The stages: every filter placed in the variant, in chain order, nothing else.
        let config = &s["pluginConfig"];
        let stages = stages_of(&src, config, &filters)?;
        let expected = json!({"stages": stages
            .iter()
            .map(|(f, c)| json!({"filter": f.name, "config": c}))
            .collect::<Vec<_>>()});
        assert_eq!(
            *config, expected,
            "{src}: pluginConfig holds the stages only"
        );
        // Its stages are the separate shape's pluginConfigs of the same variant.
        for (filter, stage) in stages {
            let separate = load_one(
                &Shape::Separate
                    .dir(p.variant)
                    .join(format!("{}.yaml", filter.name)),
            )?;
            assert_eq!(
                stage, separate["spec"]["pluginConfig"],
                "{src}: the stage of {} is not the pluginConfig of its separate plugin",
                filter.name
            );
        }
    }
    Ok(())
}

#[test]
fn phase_and_priority_run_the_filters_in_chain_order() -> Result<()> {
    // Istio orders WasmPlugins by phase (AUTHN, AUTHZ, STATS, then unspecified at the end)
    // and, within a phase, by descending priority. That must give deploy::FILTERS' order.
    for shape in [Shape::Separate, Shape::Bundle] {
        for &variant in shape.variants() {
            let mut in_variant: Vec<Plugin> = plugins()?
                .into_iter()
                .filter(|p| p.variant == variant && p.shape == shape)
                .collect();
            in_variant.sort_by_key(|p| {
                (
                    Phase::parse(p.spec()["phase"].as_str()).unwrap_or(Phase::Unspecified),
                    -p.spec()["priority"].as_i64().unwrap_or(0),
                )
            });
            let order: Vec<&str> = in_variant.iter().map(|p| p.filter.name).collect();
            let want: Vec<&str> = FILTERS
                .iter()
                .filter(|f| f.placement(variant).is_some())
                .map(|f| f.name)
                .collect();
            let at = rel(&shape.dir(variant));
            assert_eq!(order, want, "{at}: chain order");
            // Equal (phase, priority) pairs would leave the order to Istio's tie-breaking.
            let keys: BTreeSet<(String, i64)> = in_variant
                .iter()
                .map(|p| {
                    (
                        p.spec()["phase"].as_str().unwrap_or("").to_string(),
                        p.spec()["priority"].as_i64().unwrap_or(0),
                    )
                })
                .collect();
            assert_eq!(keys.len(), in_variant.len(), "{at}: tied priorities");
        }
    }
    Ok(())
}

#[test]
fn the_bundle_plugins_are_the_separate_ones_loading_the_bundle() -> Result<()> {
    // Everything but the image and pluginName is the separate plugin's (metadata too, so
    // applying one shape replaces the other in place).
    let all = plugins()?;
    let mut compared = 0;
    for b in all.iter().filter(|p| p.shape == Shape::Bundle) {
        let s = all
            .iter()
            .find(|p| {
                p.shape == Shape::Separate
                    && p.variant == b.variant
                    && p.filter.name == b.filter.name
            })
            .with_context(|| format!("{}: no separate plugin of {}", b.source(), b.filter.name))?;
        let mut bundle = b.doc.clone();
        let mut separate = s.doc.clone();
        for doc in [&mut bundle, &mut separate] {
            let spec = doc["spec"].as_object_mut().unwrap();
            for field in ["url", "sha256", "pluginName"] {
                spec.remove(field);
            }
        }
        assert_eq!(
            bundle,
            separate,
            "{} differs from {} beyond url, sha256 and pluginName",
            b.source(),
            s.source()
        );
        compared += 1;
    }
    assert_eq!(
        compared,
        Shape::Bundle
            .variants()
            .iter()
            .map(|&v| manifest_names(Shape::Bundle, v).len())
            .sum::<usize>()
    );
    Ok(())
}

#[test]
fn gateway_variants_agree() -> Result<()> {
    // The selector and targetRefs variants are the same plugin attached two ways.
    let attachment_removed = |spec: &Value| {
        let mut spec = spec.clone();
        let map = spec.as_object_mut().unwrap();
        map.remove("selector");
        map.remove("targetRefs");
        spec
    };
    let all = plugins()?;
    for shape in [Shape::Separate, Shape::Bundle] {
        for filter in FILTERS {
            let get = |v: Variant| {
                all.iter()
                    .find(|p| p.shape == shape && p.variant == v && p.filter.name == filter.name)
                    .map(|p| attachment_removed(p.spec()))
            };
            let (Some(a), Some(b)) = (get(Variant::Ingress), get(Variant::GatewayApi)) else {
                assert!(
                    filter.placement(Variant::Ingress).is_none()
                        && filter.placement(Variant::GatewayApi).is_none(),
                    "{}: ships on one kind of gateway but not the other",
                    filter.name
                );
                continue;
            };
            assert_eq!(
                a,
                b,
                "{} ({} shape): ingress and gateway-api differ beyond the attachment",
                filter.name,
                shape.name()
            );
        }
    }
    let chains = chain_plugins()?;
    let specs: Vec<Value> = chains
        .iter()
        .map(|p| attachment_removed(p.spec()))
        .collect();
    assert_eq!(specs.len(), 2);
    assert_eq!(
        specs[0], specs[1],
        "the chain: ingress and gateway-api differ beyond the attachment"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Envoy Gateway (structural: no CRD validator is available offline)

const EEP_WASM_FIELDS: &[&str] = &["name", "rootID", "code", "config", "failOpen", "env"];
const EEP_CODE_FIELDS: &[&str] = &["type", "http", "image", "pullPolicy"];
const EEP_IMAGE_FIELDS: &[&str] = &["url", "sha256", "pullSecretRef", "tls"];

fn unknown_keys(v: &Value, known: &[&str], at: &str) -> Vec<String> {
    v.as_object()
        .map(|m| {
            m.keys()
                .filter(|k| !known.contains(&k.as_str()))
                .map(|k| format!("{at}.{k}: not a field of the EnvoyExtensionPolicy CRD"))
                .collect()
        })
        .unwrap_or_else(|| vec![format!("{at}: must be an object")])
}

/// The policy's metadata and targets (CEL: exactly one of targetRef / targetRefs; group, kind).
fn check_eg_policy(policy: &Value, src: &str) -> Result<()> {
    assert_eq!(
        policy["apiVersion"], "gateway.envoyproxy.io/v1alpha1",
        "{src}"
    );
    assert_eq!(policy["kind"], "EnvoyExtensionPolicy", "{src}");
    assert!(is_dns1123_subdomain(
        policy["metadata"]["name"].as_str().unwrap_or("")
    ));
    assert!(
        policy["metadata"]["namespace"].is_string(),
        "{src}: namespace"
    );
    let spec = &policy["spec"];
    assert!(spec.get("targetRef").is_none(), "{src}: use targetRefs");
    let refs = spec["targetRefs"].as_array().context("spec.targetRefs")?;
    assert!(!refs.is_empty());
    for r in refs {
        assert_eq!(r["group"], "gateway.networking.k8s.io", "{src}");
        assert!(
            ["Gateway", "HTTPRoute", "GRPCRoute"].contains(&r["kind"].as_str().unwrap_or("")),
            "{src}: {r}"
        );
        assert!(r["name"].as_str().is_some_and(|n| !n.is_empty()), "{src}");
        assert!(
            r.get("namespace").is_none(),
            "{src}: policy targets are namespace-local"
        );
    }
    let wasm = spec["wasm"].as_array().context("spec.wasm")?;
    assert!(
        wasm.len() <= 16,
        "{src}: the CRD allows at most 16 wasm entries"
    );
    Ok(())
}

/// One `wasm` entry: known fields only; an image (`image`) with its digest; a config object; an
/// explicit failOpen, false when `must_fail_closed`.
fn check_eg_entry(
    w: &Value,
    at: &str,
    src: &str,
    image: &str,
    must_fail_closed: bool,
) -> Result<()> {
    let mut errors = unknown_keys(w, EEP_WASM_FIELDS, at);
    errors.extend(unknown_keys(
        &w["code"],
        EEP_CODE_FIELDS,
        &format!("{at}.code"),
    ));
    errors.extend(unknown_keys(
        &w["code"]["image"],
        EEP_IMAGE_FIELDS,
        &format!("{at}.code.image"),
    ));
    assert!(errors.is_empty(), "{src}: {errors:#?}");
    // required: code, code.type; CEL: type Image <=> image set, no http.
    assert_eq!(w["code"]["type"], "Image", "{src} {at}");
    assert!(w["code"].get("http").is_none(), "{src} {at}");
    assert_eq!(
        w["code"]["image"]["url"],
        json!(deploy::image_ref(image)),
        "{src} {at}: url"
    );
    assert!(
        is_sha256_hex(&w["code"]["image"]["sha256"]),
        "{src} {at}: sha256"
    );
    assert!(w["config"].is_object(), "{src} {at}: config");
    let fail_open = w["failOpen"]
        .as_bool()
        .context("failOpen must be explicit")?;
    if must_fail_closed {
        assert!(!fail_open, "{src} {at}: a security filter must fail closed");
    }
    Ok(())
}

#[test]
fn envoy_gateway_policy_is_well_formed() -> Result<()> {
    let policy = eg_policy()?;
    let src = rel(&deploy::envoy_gateway_policy());
    check_eg_policy(&policy, &src)?;
    let wasm = policy["spec"]["wasm"].as_array().context("spec.wasm")?;
    // The list order is the chain order, and every shipped filter is there once.
    let names: Vec<&str> = wasm
        .iter()
        .map(|w| w["name"].as_str().unwrap_or(""))
        .collect();
    let want: Vec<String> = FILTERS
        .iter()
        .map(|f| format!("gatewasm-{}", f.name))
        .collect();
    assert_eq!(
        names, want,
        "{src}: wasm entries (names are EG's vm_id: keep them unique)"
    );
    for (i, (w, filter)) in wasm.iter().zip(FILTERS).enumerate() {
        let at = format!("spec.wasm[{i}]");
        check_eg_entry(w, &at, &src, filter.name, filter.must_fail_closed)?;
        assert!(
            w.get("rootID").is_none(),
            "{src} {at}: a filter's own module has one root"
        );
    }
    Ok(())
}

#[test]
fn envoy_gateway_chain_policy_is_well_formed_and_replaces_the_separate_one() -> Result<()> {
    let policy = eg_chain_policy()?;
    let src = rel(&deploy::envoy_gateway_chain_policy());
    check_eg_policy(&policy, &src)?;
    let wasm = policy["spec"]["wasm"].as_array().context("spec.wasm")?;
    assert_eq!(wasm.len(), 1, "{src}: one entry, the chain");
    let w = &wasm[0];
    check_eg_entry(
        w,
        "spec.wasm[0]",
        &src,
        BUNDLE,
        FILTERS.iter().any(|f| f.must_fail_closed),
    )?;
    assert_eq!(w["name"], "gatewasm-chain", "{src}");
    assert_eq!(w["rootID"], CHAIN_ROOT_ID, "{src}: rootID");
    // == the chain gateway-chain.yaml runs in the end-to-end suite, as a whole.
    let tested =
        deploy::envoy_filter_configuration(Shape::Chain.gateway_config(), "gatewasm.chain")?;
    assert!(
        deploy::json_equal(&w["config"], &tested),
        "{src}: config differs from gatewasm.chain's in envoy-configs/gateway-chain.yaml:\n  policy: {}\n  envoy:  {tested}",
        w["config"]
    );
    // The same object as the separate policy (name, namespace, targets): applying one
    // replaces the other, as only one policy applies per target.
    let separate = eg_policy()?;
    assert_eq!(policy["metadata"], separate["metadata"], "{src}: metadata");
    assert_eq!(
        policy["spec"]["targetRefs"], separate["spec"]["targetRefs"],
        "{src}: targetRefs"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pluginConfig / config: equal to the tested Envoy configs, valid, accepted by the filter

#[test]
fn plugin_configs_equal_the_configs_tested_in_envoy() -> Result<()> {
    let sites = config_sites()?;
    assert!(!sites.is_empty());
    for site in sites {
        let tested = deploy::envoy_filter_configuration(site.envoy_config, &site.envoy_filter)
            .with_context(|| format!("{}: finding the tested configuration", site.source))?;
        assert!(
            deploy::json_equal(&site.config, &tested),
            "{}: {} differs from the configuration of {} in envoy-configs/{} (the one the \
             end-to-end suite runs):\n  manifest: {}\n  envoy:    {}",
            site.source,
            site.filter.name,
            site.envoy_filter,
            site.envoy_config,
            site.config,
            tested
        );
    }
    Ok(())
}

#[test]
fn plugin_configs_match_the_filter_schemas() -> Result<()> {
    for site in config_sites()? {
        let path = site.filter.schema_path();
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| rel(&path))?;
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| anyhow::anyhow!("{}: {e}", rel(&path)))?;
        let errors: Vec<String> = validator
            .iter_errors(&site.config)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} against {}: {errors:#?}",
            site.source,
            rel(&path)
        );
        // Negative control: the schema rejects an unknown field.
        let mut bad = site.config.clone();
        bad["not_a_field"] = json!(true);
        assert!(
            !validator.is_valid(&bad),
            "{}: schema accepts anything?",
            rel(&path)
        );
    }
    Ok(())
}

#[test]
fn plugin_configs_are_accepted_by_the_filters() -> Result<()> {
    let bundle = Module::artifact(BUNDLE)?;
    for site in config_sites()? {
        // As Istio and Envoy Gateway deliver it: the JSON as a string, and (Istio) no vm_id.
        // Bundle and chain: gatewasm.wasm with the filter's root id (a chain hands each stage
        // its config as the filter's own parser takes it; the whole chain is loaded below).
        let config = serde_json::to_vec(&site.config)?;
        let plugin = match site.shape {
            Shape::Separate => PluginConfig::new(&Module::artifact(site.filter.name)?),
            Shape::Bundle | Shape::Chain => PluginConfig::new(&bundle).root_id(site.filter.name),
        }
        .name(&format!("gatewasm.{}", site.filter.name))
        .vm_id("")
        .configuration(config);
        match Worker::new(&Host::new(), &[plugin]) {
            Ok(_) => {}
            Err(e) => panic!("{}: the filter rejected it: {e:?}", site.source),
        }
    }
    // Negative control: on_configure does reject a bad configuration.
    for filter in FILTERS {
        for plugin in [
            PluginConfig::new(&Module::artifact(filter.name)?),
            PluginConfig::new(&bundle).root_id(filter.name),
        ] {
            let plugin = plugin.configuration(r#"{"not_a_field":true}"#);
            assert!(
                matches!(
                    Worker::new(&Host::new(), &[plugin]),
                    Err(HarnessError::ConfigRejected { .. })
                ),
                "{}: an unknown field was not rejected",
                filter.name
            );
        }
    }
    Ok(())
}

/// Every chain configuration that ships: (source, config).
fn chain_configs() -> Result<Vec<(String, Value)>> {
    let mut out: Vec<(String, Value)> = chain_plugins()?
        .into_iter()
        .map(|p| {
            (
                format!("{} (pluginConfig)", p.source()),
                p.spec()["pluginConfig"].clone(),
            )
        })
        .collect();
    out.push((
        format!(
            "{} (spec.wasm[0].config)",
            rel(&deploy::envoy_gateway_chain_policy())
        ),
        eg_chain_policy()?["spec"]["wasm"][0]["config"].clone(),
    ));
    Ok(out)
}

#[test]
fn chain_configs_are_accepted_by_the_bundle_in_chain_mode() -> Result<()> {
    let bundle = Module::artifact(BUNDLE)?;
    let chain = |config: &Value| -> Result<PluginConfig> {
        Ok(PluginConfig::new(&bundle)
            .name("gatewasm-chain")
            .root_id(CHAIN_ROOT_ID)
            .vm_id("")
            .configuration(serde_json::to_vec(config)?))
    };
    let configs = chain_configs()?;
    assert_eq!(configs.len(), Shape::Chain.variants().len() + 1);
    for (source, config) in &configs {
        if let Err(e) = Worker::new(&Host::new(), &[chain(config)?]) {
            panic!("{source}: gatewasm.wasm's chain mode rejected it: {e:?}");
        }
        // Negative control: a bad stage is refused, naming the stage and the field.
        let mut bad = config.clone();
        bad["stages"][3]["config"]["not_a_field"] = json!(true);
        match Worker::new(&Host::new(), &[chain(&bad)?]) {
            Err(HarnessError::ConfigRejected { logs, .. }) => assert!(
                logs.iter().any(|l| l.message.contains("stages[3].config")),
                "{source}: the refusal does not name the stage: {logs:?}"
            ),
            other => panic!("{source}: a bad stage was not refused: {:?}", other.err()),
        }
    }
    Ok(())
}

/// Reads `file://` references (the chain schema refers to each filter's schema by path).
struct FileRetriever;

impl jsonschema::Retrieve for FileRetriever {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri
            .as_str()
            .strip_prefix("file://")
            .ok_or_else(|| format!("{uri}: only file:// references"))?;
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

#[test]
fn chain_configs_match_the_chain_schema() -> Result<()> {
    // hosts/proxy-wasm-bundle/chain.schema.json: the stages, each filter's config by its own
    // schema (the per-stage checks above apply those directly, too).
    let path = paths::workspace_root().join("hosts/proxy-wasm-bundle/chain.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| rel(&path))?;
    let validator = jsonschema::options()
        .with_base_uri(format!("file://{}", path.display()))
        .with_retriever(FileRetriever)
        .build(&schema)
        .map_err(|e| anyhow::anyhow!("{}: {e}", rel(&path)))?;
    for (source, config) in chain_configs()? {
        let errors: Vec<String> = validator
            .iter_errors(&config)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{source} against {}: {errors:#?}",
            rel(&path)
        );
        // Negative controls: a field the stage's filter does not have; an unknown filter.
        let mut bad = config.clone();
        bad["stages"][2]["config"]["not_a_field"] = json!(true);
        assert!(
            !validator.is_valid(&bad),
            "{source}: a bad stage config passes the schema"
        );
        let mut bad = config.clone();
        bad["stages"][0]["filter"] = json!("auth");
        assert!(
            !validator.is_valid(&bad),
            "{source}: an unknown filter passes the schema"
        );
    }
    Ok(())
}
