//! The deploy artifacts: which filters ship, where their Istio `WasmPlugin` and Envoy Gateway
//! manifests are, the digests pinned in them, and the Envoy configs their `pluginConfig`s
//! were tested with.
//!
//! **Adding a filter is one entry in [`FILTERS`]** (plus its manifests, which the tests then
//! demand: `istio-manifests/{ingress,gateway-api,sidecar}/<name>.yaml`, an entry in the
//! Envoy Gateway policy and the filter in the Envoy configs the manifests copy their
//! `pluginConfig` from). `just package` builds its image and pins its digest from then on.
//!
//! Besides one image per filter, the filters ship as one more image, [`BUNDLE`] (`gatewasm.wasm`,
//! hosts/proxy-wasm-bundle: all five in one module), in two [`Shape`]s: bundle mode (one plugin
//! per filter, each selecting its filter by root id, sharing one VM) and chain mode (one plugin,
//! root id [`CHAIN_ROOT_ID`], running the filters as stages).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::oci::Image;
use crate::paths;

/// Where a WasmPlugin is inserted in Istio's HTTP filter chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// `AUTHN`: before Istio's authentication filters (first in the chain).
    Authn,
    /// `AUTHZ`: after authentication, before Istio's authorization (RBAC) filters.
    Authz,
    /// `STATS`: before Istio's stats filter.
    Stats,
    /// `UNSPECIFIED_PHASE`: at the end of the chain, before the router.
    Unspecified,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Authn => "AUTHN",
            Phase::Authz => "AUTHZ",
            Phase::Stats => "STATS",
            Phase::Unspecified => "UNSPECIFIED_PHASE",
        }
    }

    pub fn parse(s: Option<&str>) -> Result<Phase> {
        Ok(match s {
            Some("AUTHN") => Phase::Authn,
            Some("AUTHZ") => Phase::Authz,
            Some("STATS") => Phase::Stats,
            None | Some("UNSPECIFIED_PHASE") => Phase::Unspecified,
            Some(other) => bail!("unknown phase {other:?}"),
        })
    }
}

/// A filter that ships as an image with manifests.
#[derive(Debug, Clone, Copy)]
pub struct Filter {
    /// The crate name; also the image repository (`gatewasm/<name>`) and the WasmPlugin name
    /// (`gatewasm-<name>`).
    pub name: &'static str,
    /// The Istio phase the filter belongs in.
    pub phase: Phase,
    /// Security filters must fail closed everywhere (`FAIL_CLOSE`, EG `failOpen: false`).
    pub must_fail_closed: bool,
    /// The Istio placements it ships in (`istio-manifests/<variant>/<name>.yaml`), each with
    /// the Envoy config its `pluginConfig` must equal.
    pub placements: &'static [Placement],
}

/// One Istio placement of a filter and the tested Envoy config it copies its `pluginConfig` from.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub variant: Variant,
    /// A file in `envoy-configs/` that the end-to-end suite runs.
    pub envoy_config: &'static str,
    /// The filter's name in it: an HTTP filter's `name`, or an ECDS resource's `name`.
    pub envoy_filter: &'static str,
}

const CORRELATION_ID_PLACEMENTS: &[Placement] = &[
    Placement {
        variant: Variant::Ingress,
        envoy_config: "gateway.yaml",
        envoy_filter: "gatewasm.correlation_id",
    },
    Placement {
        variant: Variant::GatewayApi,
        envoy_config: "gateway.yaml",
        envoy_filter: "gatewasm.correlation_id",
    },
    Placement {
        variant: Variant::Sidecar,
        envoy_config: "sidecar.yaml",
        envoy_filter: "gatewasm.correlation_id",
    },
];

const TRACE_PROPAGATION_PLACEMENTS: &[Placement] = &[
    Placement {
        variant: Variant::Ingress,
        envoy_config: "gateway.yaml",
        envoy_filter: "gatewasm.trace_propagation",
    },
    Placement {
        variant: Variant::GatewayApi,
        envoy_config: "gateway.yaml",
        envoy_filter: "gatewasm.trace_propagation",
    },
    Placement {
        variant: Variant::Sidecar,
        envoy_config: "sidecar.yaml",
        envoy_filter: "gatewasm.trace_propagation",
    },
];

/// The gateways copy the Istio-style ECDS resource (Istio delivers it without a vm_id), sidecars
/// `sidecar.yaml` (a token verified when present, never required).
const JWT_TO_HEADER_PLACEMENTS: &[Placement] = &[
    Placement {
        variant: Variant::Ingress,
        envoy_config: "istio-ecds-gateway-jwt-to-header.yaml",
        envoy_filter: "extensions.istio.io/wasmplugin/istio-system.jwt-to-header",
    },
    Placement {
        variant: Variant::GatewayApi,
        envoy_config: "istio-ecds-gateway-jwt-to-header.yaml",
        envoy_filter: "extensions.istio.io/wasmplugin/istio-system.jwt-to-header",
    },
    Placement {
        variant: Variant::Sidecar,
        envoy_config: "sidecar.yaml",
        envoy_filter: "gatewasm.jwt_to_header",
    },
];

/// Gateways only: routing to a tenant's backend is a gateway's job (and Istio's claim-based
/// routing works on gateways only). The Istio manifests name clusters as istiod does, so they
/// copy the Istio-style ECDS gateway config rather than the standalone `gateway.yaml`.
const TENANT_ROUTING_PLACEMENTS: &[Placement] = &[
    Placement {
        variant: Variant::Ingress,
        envoy_config: "istio-ecds-gateway-tenant-routing.yaml",
        envoy_filter: "extensions.istio.io/wasmplugin/istio-system.tenant-routing",
    },
    Placement {
        variant: Variant::GatewayApi,
        envoy_config: "istio-ecds-gateway-tenant-routing.yaml",
        envoy_filter: "extensions.istio.io/wasmplugin/istio-system.tenant-routing",
    },
];

/// Gateways only (per-pod limits in sidecars are not shipped yet); tested as Istio delivers it.
const RATE_LIMIT_PLACEMENTS: &[Placement] = &[
    Placement {
        variant: Variant::Ingress,
        envoy_config: "istio-ecds-gateway-rate-limit.yaml",
        envoy_filter: "extensions.istio.io/wasmplugin/istio-system.rate-limit",
    },
    Placement {
        variant: Variant::GatewayApi,
        envoy_config: "istio-ecds-gateway-rate-limit.yaml",
        envoy_filter: "extensions.istio.io/wasmplugin/istio-system.rate-limit",
    },
];

/// Every filter that ships, **in chain order** (the order requests pass through them).
///
/// The manifests' `phase`/`priority` must reproduce this order; the tests check it.
pub const FILTERS: &[Filter] = &[
    Filter {
        name: "correlation-id",
        phase: Phase::Authn,
        must_fail_closed: false,
        placements: CORRELATION_ID_PLACEMENTS,
    },
    Filter {
        name: "trace-propagation",
        phase: Phase::Authn,
        must_fail_closed: false,
        placements: TRACE_PROPAGATION_PLACEMENTS,
    },
    Filter {
        name: "jwt-to-header",
        phase: Phase::Authn,
        must_fail_closed: true,
        placements: JWT_TO_HEADER_PLACEMENTS,
    },
    Filter {
        name: "tenant-routing",
        phase: Phase::Authz,
        must_fail_closed: true,
        placements: TENANT_ROUTING_PLACEMENTS,
    },
    Filter {
        name: "rate-limit",
        phase: Phase::Authz,
        must_fail_closed: false,
        placements: RATE_LIMIT_PLACEMENTS,
    },
];

impl Filter {
    /// The `.wasm` base name cargo produces (`correlation_id`).
    pub fn module(&self) -> String {
        self.name.replace('-', "_")
    }

    /// The HTTP filter name in `envoy-configs/*.yaml` (`gatewasm.correlation_id`).
    pub fn envoy_filter_name(&self) -> String {
        format!("gatewasm.{}", self.module())
    }

    /// `filters/<name>/config.schema.json`.
    pub fn schema_path(&self) -> PathBuf {
        paths::workspace_root()
            .join("filters")
            .join(self.name)
            .join("config.schema.json")
    }

    /// `<registry>/gatewasm/<name>:<tag>` without a scheme (Envoy Gateway's `image.url`).
    pub fn image_ref(&self) -> String {
        image_ref(self.name)
    }

    /// `oci://<registry>/gatewasm/<name>:<tag>` (Istio's `url`).
    pub fn istio_url(&self) -> String {
        istio_url(self.name)
    }

    /// Builds this filter's image from the built module (`GATEWASM_WASM_DIR`).
    pub fn image(&self) -> Result<Image> {
        self.image_in(&paths::wasm_dir())
    }

    /// The placement of this filter in `variant`, if it ships there.
    pub fn placement(&self, variant: Variant) -> Option<&'static Placement> {
        self.placements.iter().find(|p| p.variant == variant)
    }

    /// [`Filter::image`] from the modules in `wasm_dir`.
    pub fn image_in(&self, wasm_dir: &Path) -> Result<Image> {
        image_in(self.name, wasm_dir)
    }
}

/// The bundle, `gatewasm.wasm` (hosts/proxy-wasm-bundle): every filter of [`FILTERS`] in one
/// module. Also the name of its image (`gatewasm/gatewasm`) and of its module file.
pub const BUNDLE: &str = "gatewasm";

/// The bundle's root id for chain mode (Envoy `root_id`, Istio `pluginName`, Envoy Gateway
/// `rootID`); every other root id is a filter's name (hosts/chain-plan/src/lib.rs).
pub const CHAIN_ROOT_ID: &str = "chain";

/// The Istio phase of the chain's one WasmPlugin: AUTHN, before Istio's authentication
/// filters, where the separate shape puts correlation-id, trace-propagation and
/// jwt-to-header. tenant-routing and rate-limit come with them (they trust only what
/// jwt-to-header, before them in the chain, put in the request). See istio-manifests/README.md.
pub const CHAIN_PHASE: Phase = Phase::Authn;

/// How the filters of a gateway are packaged and attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One module, image and plugin per filter (`gateway.yaml`, `istio-manifests/<variant>/`).
    Separate,
    /// The bundle's module for every filter, one plugin per filter selecting it by root id, all
    /// sharing one VM (`gateway-bundle.yaml`, `istio-manifests/<variant>-bundle/`).
    Bundle,
    /// The bundle in chain mode: one plugin, the filters its stages
    /// (`gateway-chain.yaml`, `istio-manifests/<variant>-chain/`).
    Chain,
}

pub const SHAPES: &[Shape] = &[Shape::Separate, Shape::Bundle, Shape::Chain];

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Separate => "separate",
            Shape::Bundle => "bundle",
            Shape::Chain => "chain",
        }
    }

    /// The edge gateway of `envoy-configs/` in this shape; the end-to-end suite runs all three
    /// with the same tests.
    pub fn gateway_config(self) -> &'static str {
        match self {
            Shape::Separate => "gateway.yaml",
            Shape::Bundle => "gateway-bundle.yaml",
            Shape::Chain => "gateway-chain.yaml",
        }
    }

    /// The Istio placements this shape ships in (bundle and chain: the gateways).
    pub fn variants(self) -> &'static [Variant] {
        match self {
            Shape::Separate => VARIANTS,
            Shape::Bundle | Shape::Chain => &[Variant::Ingress, Variant::GatewayApi],
        }
    }

    /// The image `filter`'s plugin loads in this shape.
    pub fn image(self, filter: &Filter) -> &'static str {
        match self {
            Shape::Separate => filter.name,
            Shape::Bundle | Shape::Chain => BUNDLE,
        }
    }

    /// `istio-manifests/<variant>/` (separate), `<variant>-bundle/`, `<variant>-chain/`.
    pub fn dir(self, variant: Variant) -> PathBuf {
        match self {
            Shape::Separate => variant.dir(),
            Shape::Bundle | Shape::Chain => {
                istio_manifests_dir().join(format!("{}-{}", variant.dir_name(), self.name()))
            }
        }
    }
}

/// Every image `just package` builds: one per filter (its own module), then the bundle's.
pub fn image_names() -> Vec<&'static str> {
    FILTERS.iter().map(|f| f.name).chain([BUNDLE]).collect()
}

/// `<registry>/gatewasm/<image>:<tag>` without a scheme (Envoy Gateway's `image.url`).
pub fn image_ref(image: &str) -> String {
    format!("{REGISTRY_PLACEHOLDER}/gatewasm/{image}:{}", image_tag())
}

/// `oci://<registry>/gatewasm/<image>:<tag>` (Istio's `url`).
pub fn istio_url(image: &str) -> String {
    format!("oci://{}", image_ref(image))
}

/// The `.wasm` base name an image holds (`correlation_id`, `gatewasm`).
pub fn image_module(image: &str) -> String {
    image.replace('-', "_")
}

/// The image `image` (a name of [`image_names`]) from the modules in `wasm_dir`.
pub fn image_in(image: &str, wasm_dir: &Path) -> Result<Image> {
    let file = paths::wasm_file_in(wasm_dir, &image_module(image))?;
    let wasm = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    Image::build(image, &image_tag(), &wasm)
}

/// The filter of that name.
pub fn filter(name: &str) -> Result<&'static Filter> {
    FILTERS
        .iter()
        .find(|f| f.name == name)
        .with_context(|| format!("{name:?} is not in deploy::FILTERS"))
}

/// The registry in every shipped manifest; replace it with yours (see istio-manifests/README.md).
pub const REGISTRY_PLACEHOLDER: &str = "registry.example.com";

/// The image tag: the workspace version.
pub fn image_tag() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The three WasmPlugin placements, one directory each under `istio-manifests/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `ingress/`: the ingress gateway, `selector: {matchLabels: {istio: ingressgateway}}`.
    Ingress,
    /// `gateway-api/`: a Gateway API `Gateway`, through `targetRefs`.
    GatewayApi,
    /// `sidecar/`: sidecars, inbound traffic only (`match: [{mode: SERVER}]`).
    Sidecar,
}

pub const VARIANTS: &[Variant] = &[Variant::Ingress, Variant::GatewayApi, Variant::Sidecar];

impl Variant {
    pub fn dir_name(self) -> &'static str {
        match self {
            Variant::Ingress => "ingress",
            Variant::GatewayApi => "gateway-api",
            Variant::Sidecar => "sidecar",
        }
    }

    pub fn dir(self) -> PathBuf {
        istio_manifests_dir().join(self.dir_name())
    }

    /// `istio-manifests/<variant>/<filter>.yaml`.
    pub fn manifest(self, filter: &Filter) -> PathBuf {
        self.dir().join(format!("{}.yaml", filter.name))
    }
}

/// `istio-manifests/`.
pub fn istio_manifests_dir() -> PathBuf {
    paths::workspace_root().join("istio-manifests")
}

/// `envoy-configs/envoy-gateway/`.
pub fn envoy_gateway_dir() -> PathBuf {
    paths::envoy_configs_dir().join("envoy-gateway")
}

/// The Envoy Gateway policy holding every filter's `wasm` entry.
pub fn envoy_gateway_policy() -> PathBuf {
    envoy_gateway_dir().join("envoy-extension-policy.yaml")
}

/// The Envoy Gateway policy of the chain shape: one `wasm` entry, the bundle in chain mode. In a
/// directory of its own, so `kubectl apply -f envoy-configs/envoy-gateway/` applies one policy.
pub fn envoy_gateway_chain_policy() -> PathBuf {
    envoy_gateway_dir()
        .join("chain")
        .join("envoy-extension-policy.yaml")
}

/// The Envoy Gateway resources of the native shape: an EnvoyProxy registering
/// libgatewasm_envoy.so and the policy running it as a dynamic module (checked by
/// hosts/envoy-dynamic-module's tests, which can build the module's configuration).
pub fn envoy_gateway_native_policy() -> PathBuf {
    envoy_gateway_dir()
        .join("native")
        .join("envoy-extension-policy.yaml")
}

/// Every `*.yaml` under `dir` (recursively, sorted), except `kustomization.yaml`.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if name != "node_modules" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".yaml") && name != "kustomization.yaml" {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every file whose `sha256:` fields `just package` keeps in step with the images.
pub fn digest_pinned_files() -> Result<Vec<PathBuf>> {
    let mut files = yaml_files(&istio_manifests_dir())?;
    files.extend(yaml_files(&envoy_gateway_dir())?);
    Ok(files)
}

/// The YAML documents of a file, as JSON values (empty documents skipped).
pub fn load_yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_yaml_docs(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The YAML documents of `text`, as JSON values (empty documents skipped).
pub fn parse_yaml_docs(text: &str) -> Result<Vec<Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The image (of [`image_names`]) an image reference names (`…/gatewasm/<image>:…` or `…@…`).
fn image_of_url(url: &str) -> Option<&'static str> {
    let rest = &url[url.find("/gatewasm/")? + "/gatewasm/".len()..];
    let name = rest.split([':', '@']).next()?;
    image_names().into_iter().find(|i| *i == name)
}

/// Rewrites every `sha256: …` line of a manifest to the digest of the image named by the
/// closest `url: …/gatewasm/<image>:…` line above it. Comments and layout are kept.
/// Returns the new text; fails on a `sha256:` with no such `url:` before it.
pub fn rewrite_digests(text: &str, digests: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut current: Option<&'static str> = None;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        let body = trimmed.trim_start_matches("- ");
        if line.starts_with("---") {
            current = None;
        } else if let Some(url) = body.strip_prefix("url:") {
            current = image_of_url(url.trim().trim_matches('"'));
        } else if let Some(old) = body.strip_prefix("sha256:") {
            let image = current.with_context(|| {
                format!(
                    "line {}: a sha256 field with no `url: …/gatewasm/<image>:…` line before it",
                    n + 1
                )
            })?;
            let digest = digests
                .get(image)
                .with_context(|| format!("no image digest for {image}"))?;
            let indent = &line[..line.len() - trimmed.len()];
            let prefix = &trimmed[..trimmed.len() - body.len()];
            // Keep whatever follows the value (a comment, with its spacing).
            let value = old.trim_start();
            let end = value.find(char::is_whitespace).unwrap_or(value.len());
            let comment = value[end..].trim_end_matches(['\n', '\r']);
            let comment = if comment.trim().is_empty() {
                ""
            } else {
                comment
            };
            out.push_str(&format!("{indent}{prefix}sha256: {digest}{comment}"));
            if line.ends_with('\n') {
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
    }
    Ok(out)
}

/// Every image of [`image_names`] (from the modules in `wasm_dir`), by name.
pub fn images(wasm_dir: &Path) -> Result<BTreeMap<String, Image>> {
    image_names()
        .into_iter()
        .map(|name| Ok((name.to_string(), image_in(name, wasm_dir)?)))
        .collect()
}

/// The manifests whose pinned digests differ from `digests`: (file, rewritten text).
pub fn stale_manifests(digests: &BTreeMap<String, String>) -> Result<Vec<(PathBuf, String)>> {
    let mut stale = Vec::new();
    for file in digest_pinned_files()? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let new = rewrite_digests(&text, digests).with_context(|| file.display().to_string())?;
        if new != text {
            stale.push((file, new));
        }
    }
    Ok(stale)
}

/// The YAML documents of `envoy-configs/<config>`, rendered with dummy ports and paths, as JSON.
pub fn rendered_envoy_config(config: &str) -> Result<Vec<Value>> {
    let template = std::fs::read_to_string(paths::envoy_configs_dir().join(config))
        .with_context(|| format!("reading envoy-configs/{config}"))?;
    let vars: crate::render::Vars = [
        ("LISTEN_PORT", "10000"),
        ("ADMIN_PORT", "10001"),
        ("UPSTREAM_PORT", "10002"),
        ("UPSTREAM2_PORT", "10003"),
        ("RLS_PORT", "10004"),
        ("WASM_DIR", "/wasm"),
        ("ECDS_DIR", "/ecds"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let rendered = crate::render::render(&template, &vars)?;
    parse_yaml_docs(&rendered).with_context(|| format!("parsing {config}"))
}

/// The JSON configuration of the HTTP filter (or ECDS resource) `filter_name` in `envoy-configs/<config>`
/// (rendered with dummy ports and paths), parsed.
pub fn envoy_filter_configuration(config: &str, filter_name: &str) -> Result<Value> {
    let docs = rendered_envoy_config(config)?;
    let mut found = Vec::new();
    for doc in &docs {
        collect_http_filters(doc, filter_name, &mut found);
    }
    ensure!(
        found.len() == 1,
        "envoy-configs/{config}: expected exactly one HTTP filter named {filter_name}, found {}",
        found.len()
    );
    wasm_filter_configuration(&found[0]).with_context(|| format!("envoy-configs/{config}"))
}

/// The JSON configuration of a Wasm HTTP filter (or ECDS resource): its
/// `typed_config.config.configuration`, a `StringValue` of JSON (as Istio and Envoy Gateway
/// pass it), parsed.
pub fn wasm_filter_configuration(filter: &Value) -> Result<Value> {
    let name = filter["name"].as_str().unwrap_or("?");
    let configuration = filter
        .pointer("/typed_config/config/configuration")
        .with_context(|| format!("{name} has no config.configuration"))?;
    ensure!(
        configuration.get("@type").and_then(Value::as_str)
            == Some("type.googleapis.com/google.protobuf.StringValue"),
        "{name}'s configuration is not a StringValue (Istio and EG pass a JSON string)"
    );
    let value = configuration
        .get("value")
        .and_then(Value::as_str)
        .with_context(|| format!("{name}'s configuration has no string value"))?;
    serde_json::from_str(value).with_context(|| format!("{name}'s configuration is not JSON"))
}

/// The stages of a chain-mode configuration (`{"stages": [{"filter": …, "config": …}, …]}`):
/// (filter name, its configuration; `{}` when absent).
pub fn chain_stages(config: &Value) -> Result<Vec<(String, Value)>> {
    let stages = config["stages"]
        .as_array()
        .context("a chain configuration without a `stages` list")?;
    stages
        .iter()
        .enumerate()
        .map(|(i, stage)| {
            let filter = stage["filter"]
                .as_str()
                .with_context(|| format!("stages[{i}] has no filter name"))?;
            let config = stage.get("config").cloned().unwrap_or(Value::Null);
            let config = if config.is_null() {
                Value::Object(Default::default())
            } else {
                config
            };
            Ok((filter.to_string(), config))
        })
        .collect()
}

fn collect_http_filters(v: &Value, name: &str, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            // HTTP filters of a listener, and ECDS resources (TypedExtensionConfig), which
            // hold the same typed_config under their name.
            for list in ["http_filters", "resources"] {
                if let Some(Value::Array(filters)) = map.get(list) {
                    for f in filters {
                        if f.get("name").and_then(Value::as_str) == Some(name) {
                            out.push(f.clone());
                        }
                    }
                }
            }
            for child in map.values() {
                collect_http_filters(child, name, out);
            }
        }
        Value::Array(items) => {
            for child in items {
                collect_http_filters(child, name, out);
            }
        }
        _ => {}
    }
}

/// JSON equality where numbers compare by value (`1` == `1.0`), as a JSON parser in the
/// filter would see them.
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_equal(a, b)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests() -> BTreeMap<String, String> {
        image_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name.to_string(), i.to_string().repeat(64)))
            .collect()
    }

    #[test]
    fn rewrite_follows_the_url_above_each_sha256() -> Result<()> {
        let text = "\
# c
spec:
  url: oci://r.example/gatewasm/correlation-id:0.1.0
  sha256: aaaa  # pinned by just package
---
wasm:
- name: b
  code:
    image:
      url: r.example/gatewasm/correlation-id@sha256:ff
      sha256: \"bbbb\"
";
        let new = rewrite_digests(text, &digests())?;
        let zeros = "0".repeat(64); // correlation-id's
        assert!(new.contains(&format!("  sha256: {zeros}  # pinned by just package\n")));
        assert!(new.contains(&format!("      sha256: {zeros}\n")));
        assert!(
            new.starts_with("# c\nspec:\n  url: oci://r.example/gatewasm/correlation-id:0.1.0\n")
        );
        assert_eq!(rewrite_digests(&new, &digests())?, new);
        // The bundle's image is pinned like a filter's.
        let bundle = "url: oci://r/gatewasm/gatewasm:0.1.0\nsha256: aa\n";
        let bundle_digest = &digests()[BUNDLE];
        assert_eq!(
            rewrite_digests(bundle, &digests())?,
            format!("url: oci://r/gatewasm/gatewasm:0.1.0\nsha256: {bundle_digest}\n")
        );
        Ok(())
    }

    #[test]
    fn rewrite_refuses_an_orphan_sha256() {
        let err = rewrite_digests("spec:\n  sha256: aa\n", &digests());
        assert!(err.is_err());
        let err = rewrite_digests(
            "url: oci://r/gatewasm/correlation-id:1\n---\nsha256: aa\n",
            &digests(),
        );
        assert!(err.is_err(), "a document separator ends the url's scope");
        let err = rewrite_digests(
            "url: oci://r/gatewasm/not-a-filter:1\nsha256: aa\n",
            &digests(),
        );
        assert!(err.is_err(), "an image nobody builds");
    }

    #[test]
    fn numbers_compare_by_value() {
        let a: Value = serde_json::json!({"r": 1.0, "l": [1, "x"]});
        let b: Value = serde_json::json!({"r": 1, "l": [1.0, "x"]});
        assert!(json_equal(&a, &b));
        assert!(!json_equal(&a, &serde_json::json!({"r": 1})));
    }
}
