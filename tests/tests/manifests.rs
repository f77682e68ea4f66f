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
//! - the chain order that `phase` / `priority` produce, and the failure policy per filter.
//!
//! Needs `just build` (the `.wasm` files) and `just manifest-validator`; `just test` does both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use gatewasm_tests::deploy::{self, FILTERS, Filter, Phase, Placement, VARIANTS, Variant};
use gatewasm_tests::paths;
use proxy_wasm_harness::{HarnessError, Host, Module, PluginConfig, Worker};
use serde_json::{Value, json};

/// One WasmPlugin document and where it came from.
struct Plugin {
    file: PathBuf,
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

/// Every WasmPlugin of every variant, after checking each file holds exactly one.
fn plugins() -> Result<Vec<Plugin>> {
    let mut out = Vec::new();
    for &variant in VARIANTS {
        for filter in FILTERS {
            let Some(placement) = filter.placement(variant) else {
                continue;
            };
            let file = variant.manifest(filter);
            ensure!(
                file.is_file(),
                "{} is missing: deploy::FILTERS ships {} in {}",
                rel(&file),
                filter.name,
                variant.dir_name()
            );
            let docs = deploy::load_yaml_docs(&file)?;
            ensure!(
                docs.len() == 1,
                "{}: expected one document, found {}",
                rel(&file),
                docs.len()
            );
            out.push(Plugin {
                file,
                variant,
                filter,
                placement,
                doc: docs.into_iter().next().context("no document")?,
            });
        }
    }
    Ok(out)
}

/// A filter configuration as a manifest ships it, and the Envoy config it must equal.
struct ConfigSite {
    source: String,
    filter: &'static Filter,
    config: Value,
    envoy_config: &'static str,
    /// The filter's name in `envoy_config` (an HTTP filter or an ECDS resource).
    envoy_filter: String,
}

fn eg_policy() -> Result<Value> {
    let file = deploy::envoy_gateway_policy();
    let docs = deploy::load_yaml_docs(&file)?;
    ensure!(docs.len() == 1, "{}: expected one document", rel(&file));
    docs.into_iter().next().context("no document")
}

fn config_sites() -> Result<Vec<ConfigSite>> {
    let mut sites = Vec::new();
    for p in plugins()? {
        sites.push(ConfigSite {
            source: format!("{} (pluginConfig)", p.source()),
            filter: p.filter,
            config: p.spec().get("pluginConfig").cloned().unwrap_or(json!({})),
            envoy_config: p.placement.envoy_config,
            envoy_filter: p.placement.envoy_filter.to_string(),
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
    for &variant in VARIANTS {
        let shipped: Vec<&Filter> = FILTERS
            .iter()
            .filter(|f| f.placement(variant).is_some())
            .collect();
        let names: BTreeSet<String> = shipped.iter().map(|f| format!("{}.yaml", f.name)).collect();
        let found: BTreeSet<String> = deploy::yaml_files(&variant.dir())?
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
            .collect();
        assert_eq!(
            found,
            names,
            "istio-manifests/{}/ must hold exactly one manifest per filter deploy::FILTERS places there",
            variant.dir_name()
        );
        // kustomization.yaml lists them, in chain order.
        let kustomization = variant.dir().join("kustomization.yaml");
        let k = deploy::load_yaml_docs(&kustomization)?;
        assert_eq!(k.len(), 1, "{}", rel(&kustomization));
        assert_eq!(k[0]["kind"], "Kustomization");
        let want: Vec<Value> = shipped
            .iter()
            .map(|f| json!(format!("{}.yaml", f.name)))
            .collect();
        assert_eq!(
            k[0]["resources"],
            Value::Array(want),
            "{}: resources",
            rel(&kustomization)
        );
    }
    // No stray YAML elsewhere under istio-manifests/ (everything there is validated below).
    for file in deploy::yaml_files(&deploy::istio_manifests_dir())? {
        let parent = file
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str());
        assert!(
            VARIANTS.iter().any(|v| Some(v.dir_name()) == parent),
            "{} is not in a placement directory, so no test covers it",
            rel(&file)
        );
    }
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
    let docs: Vec<(String, Value)> = plugins()?
        .into_iter()
        .map(|p| (p.source(), p.doc))
        .collect();
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
    for p in plugins()? {
        let errors = cel_and_strict_violations(&p.doc);
        assert!(errors.is_empty(), "{}: {errors:#?}", p.source());
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

#[test]
fn wasmplugins_place_and_pin_each_filter() -> Result<()> {
    for p in plugins()? {
        let s = p.spec();
        let src = p.source();
        assert_eq!(p.doc["apiVersion"], "extensions.istio.io/v1alpha1", "{src}");
        assert_eq!(p.doc["kind"], "WasmPlugin", "{src}");
        assert_eq!(
            p.doc["metadata"]["name"],
            json!(format!("gatewasm-{}", p.filter.name)),
            "{src}: name"
        );
        assert_eq!(s["url"], json!(p.filter.istio_url()), "{src}: url");
        assert!(is_sha256_hex(&s["sha256"]), "{src}: sha256 must be pinned");
        assert_eq!(s["imagePullPolicy"], "IfNotPresent", "{src}");
        assert_eq!(
            Phase::parse(s["phase"].as_str())?,
            p.filter.phase,
            "{src}: phase"
        );
        assert!(s["priority"].is_i64(), "{src}: priority must be set");
        assert!(s.get("pluginConfig").is_some_and(Value::is_object), "{src}");
        match p.variant {
            Variant::Ingress => {
                assert_eq!(
                    s["selector"],
                    json!({"matchLabels": {"istio": "ingressgateway"}}),
                    "{src}"
                );
                assert_eq!(p.doc["metadata"]["namespace"], "istio-system", "{src}");
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
        if p.filter.must_fail_closed {
            assert_eq!(
                fail, "FAIL_CLOSE",
                "{src}: a security filter must fail closed"
            );
        }
        // The reasoning is written next to the choice.
        let text = std::fs::read_to_string(&p.file)?;
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with("failStrategy:"))
            .context("no failStrategy line")?;
        let comment = lines[..at]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with('#'));
        assert!(
            comment.count() >= 2,
            "{src}: explain the failStrategy in a comment right above it"
        );
    }
    Ok(())
}

#[test]
fn phase_and_priority_run_the_filters_in_chain_order() -> Result<()> {
    // Istio orders WasmPlugins by phase (AUTHN, AUTHZ, STATS, then unspecified at the end)
    // and, within a phase, by descending priority. That must give deploy::FILTERS' order.
    for &variant in VARIANTS {
        let mut in_variant: Vec<Plugin> = plugins()?
            .into_iter()
            .filter(|p| p.variant == variant)
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
        assert_eq!(order, want, "{}: chain order", variant.dir_name());
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
        assert_eq!(
            keys.len(),
            in_variant.len(),
            "{}: tied priorities",
            variant.dir_name()
        );
    }
    Ok(())
}

#[test]
fn gateway_variants_agree() -> Result<()> {
    // The selector and targetRefs variants are the same plugin attached two ways.
    let all = plugins()?;
    for filter in FILTERS {
        let get = |v: Variant| {
            all.iter()
                .find(|p| p.variant == v && p.filter.name == filter.name)
                .map(|p| p.spec().clone())
        };
        let (Some(mut a), Some(mut b)) = (get(Variant::Ingress), get(Variant::GatewayApi)) else {
            assert!(
                filter.placement(Variant::Ingress).is_none()
                    && filter.placement(Variant::GatewayApi).is_none(),
                "{}: ships on one kind of gateway but not the other",
                filter.name
            );
            continue;
        };
        a.as_object_mut().unwrap().remove("selector");
        b.as_object_mut().unwrap().remove("targetRefs");
        assert_eq!(
            a, b,
            "{}: ingress and gateway-api differ beyond the attachment",
            filter.name
        );
    }
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

#[test]
fn envoy_gateway_policy_is_well_formed() -> Result<()> {
    let policy = eg_policy()?;
    let src = rel(&deploy::envoy_gateway_policy());
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
    // CEL: exactly one of targetRef / targetRefs (or targetSelectors); group and kind.
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
        let mut errors = unknown_keys(w, EEP_WASM_FIELDS, &at);
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
            json!(filter.image_ref()),
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
        if filter.must_fail_closed {
            assert!(!fail_open, "{src} {at}: a security filter must fail closed");
        }
    }
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
    for site in config_sites()? {
        let module = Module::artifact(site.filter.name)?;
        // As Istio and Envoy Gateway deliver it: the JSON as a string, and (Istio) no vm_id.
        let config = serde_json::to_vec(&site.config)?;
        let plugin = PluginConfig::new(&module)
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
        let module = Module::artifact(filter.name)?;
        let plugin = PluginConfig::new(&module).configuration(r#"{"not_a_field":true}"#);
        assert!(
            matches!(
                Worker::new(&Host::new(), &[plugin]),
                Err(HarnessError::ConfigRejected { .. })
            ),
            "{}: an unknown field was not rejected",
            filter.name
        );
    }
    Ok(())
}
