//! Loading a scenario: finding the files under `tests/scenarios/`, parsing one
//! (`format.rs`), validating it and resolving its chain into [`Plugin`]s ([`load`] →
//! [`Loaded`], what both runners take). Also the pieces of the format that need parsing: named
//! patterns and regular expressions for `matches`, durations, and header references
//! (`same_as`, `differs_from`), which `check.rs` uses again when it evaluates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use regex::Regex;

use super::{Headers, JsonCheck, LocalReply, Scenario, ShapeName};

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
    /// A filter of the Envoy dynamic module `libgatewasm_envoy.so` (hosts/envoy-dynamic-module):
    /// Envoy only, 1.40 (the native shape).
    Native {
        /// Envoy's filter name.
        name: String,
        /// The module's `filter_name`: a filter, or `chain`.
        filter_name: String,
        /// The `filter_config` (JSON text, as the Wasm plugin takes it).
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
            Plugin::Wasm { name, .. }
            | Plugin::Native { name, .. }
            | Plugin::LocalReply { name, .. } => name,
        }
    }
}

/// The filters of this workspace that `gatewasm.wasm` (hosts/proxy-wasm-bundle) holds, by the
/// names their `filter:` entries, root ids and chain stages use.
pub const BUNDLED_FILTERS: [&str; 5] = [
    "correlation-id",
    "trace-propagation",
    "jwt-to-header",
    "tenant-routing",
    "rate-limit",
];

/// The module file (stem) of the bundle, and the vm_id its plugins share.
pub const BUNDLE_MODULE: &str = "gatewasm";

/// How the chain's filters of this workspace are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shape {
    /// Each filter from its own module, as the scenario says.
    Separate,
    /// Each filter from `gatewasm.wasm`, root id = its name, vm_id `gatewasm` (one VM for all
    /// of them in Envoy), with its own plugin name and configuration.
    Bundle,
    /// Each run of consecutive filters as one plugin of `gatewasm.wasm` (root id `chain`,
    /// vm_id `gatewasm`, configuration `{"stages": [...]}`); a run is cut where a filter would
    /// come a second time (a chain runs each filter at most once).
    Chain,
    /// Each run of consecutive filters (cut as for [`Shape::Chain`]) as one `chain` filter of
    /// the Envoy dynamic module `libgatewasm_envoy.so`, with the chain shape's configuration.
    /// Envoy 1.40 only: the harness runs no dynamic module, so this shape is judged by Envoy's
    /// observations alone (against the expectations and the separate modules' Envoy run).
    Native,
}

impl Shape {
    /// Every shape, the filters' own modules first.
    pub const ALL: [Shape; 4] = [Shape::Separate, Shape::Bundle, Shape::Chain, Shape::Native];

    /// `separate`, `bundle`, `chain`, `native`.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Separate => "separate",
            Shape::Bundle => "bundle",
            Shape::Chain => "chain",
            Shape::Native => "native",
        }
    }

    /// Whether the proxy-wasm harness runs this shape (it cannot load a dynamic module).
    pub fn in_harness(self) -> bool {
        self != Shape::Native
    }

    /// Whether a stage's configuration error is reported in the chain's form
    /// (`stages[<i>].config.<field>: <filter>: <message>`): `config_rejected.chain_log`.
    pub fn reports_as_chain(self) -> bool {
        matches!(self, Shape::Chain | Shape::Native)
    }

    /// Parses a shape's name.
    pub fn parse(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|shape| shape.name() == s)
    }
}

impl From<ShapeName> for Shape {
    fn from(s: ShapeName) -> Shape {
        match s {
            ShapeName::Bundle => Shape::Bundle,
            ShapeName::Chain => Shape::Chain,
            ShapeName::Native => Shape::Native,
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
    /// The chain, resolved (in [`Loaded::shape`]).
    pub plugins: Vec<Plugin>,
    /// The shape the plugins are in ([`reshape`]).
    pub shape: Shape,
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
        serde_norway::from_str(&text).with_context(|| format!("{label}: not a valid scenario"))?;
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

    if let Some(log) = scenario
        .config_rejected
        .as_ref()
        .and_then(|c| c.chain_log.as_deref())
    {
        Regex::new(log).with_context(|| format!("config_rejected.chain_log: bad regex {log:?}"))?;
    }
    for (i, d) in scenario.shape_differences.iter().enumerate() {
        let at = format!("shape_differences[{i}]");
        if d.observables.is_empty() {
            bail!("{at}.observables: empty (name what differs)");
        }
        for o in &d.observables {
            check_observable(o).with_context(|| format!("{at}.observables"))?;
        }
        for s in &d.steps {
            if *s == 0 || *s > scenario.steps.len() {
                bail!(
                    "{at}.steps: step {s} does not exist (steps count from 1; there are {})",
                    scenario.steps.len()
                );
            }
        }
        if d.why.trim().is_empty() {
            bail!("{at}.why: say why the shape differs");
        }
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
        if c == super::envoy::BACKEND_CLUSTER {
            bail!("cluster name {c:?} is reserved for the upstream");
        }
    }
    Ok(Loaded {
        file: file.to_path_buf(),
        label: label.to_string(),
        scenario,
        plugins,
        shape: Shape::Separate,
        clusters,
        advances,
    })
}

/// Which filter of the bundle a plugin of the separate shape is (`None`: another plugin).
fn bundled_filter(loaded: &Loaded, index: usize) -> Option<&str> {
    let filter = loaded.scenario.chain.get(index)?.filter.as_deref()?;
    BUNDLED_FILTERS.contains(&filter).then_some(filter)
}

/// Whether the scenario's chain holds a filter of the bundle (otherwise every shape is the
/// separate one).
pub fn has_bundled_filters(loaded: &Loaded) -> bool {
    (0..loaded.plugins.len()).any(|i| bundled_filter(loaded, i).is_some())
}

/// The scenario with its chain in `shape` (from the separate shape `load` gives). The other
/// plugins (`local_reply`, modules by `wasm:`, the harness test module) stay as they are.
pub fn reshape(loaded: &Loaded, shape: Shape) -> Result<Loaded> {
    // The native shape loads no .wasm for the chain (its library is Envoy's to find).
    if matches!(shape, Shape::Separate | Shape::Native) || !has_bundled_filters(loaded) {
        return reshape_with(loaded, shape, PathBuf::new());
    }
    reshape_with(loaded, shape, crate::paths::wasm_file(BUNDLE_MODULE)?)
}

/// [`reshape`] with the bundle at `bundle`.
fn reshape_with(loaded: &Loaded, shape: Shape, bundle: PathBuf) -> Result<Loaded> {
    if loaded.shape != Shape::Separate {
        bail!(
            "reshape: {} is already in the {} shape",
            loaded.label,
            loaded.shape.name()
        );
    }
    let mut out = loaded.clone();
    out.shape = shape;
    if shape == Shape::Separate {
        return Ok(out);
    }
    let mut plugins = Vec::new();
    // The chain being built: (filter, configuration) in order.
    let mut run: Vec<(&str, &str)> = Vec::new();
    let mut chains = 0;
    let taken: BTreeSet<&str> = loaded.plugins.iter().map(Plugin::name).collect();
    let mut flush = |run: &mut Vec<(&str, &str)>, plugins: &mut Vec<Plugin>| -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let mut stages = Vec::new();
        for (filter, configuration) in run.drain(..) {
            let stage = if configuration.trim().is_empty() {
                format!("{{\"filter\":{}}}", serde_json::Value::from(filter))
            } else {
                // The configuration text as it is (so the stage gets the same bytes' meaning).
                serde_json::from_str::<serde_json::Value>(configuration).with_context(|| {
                    format!(
                        "chain shape: the configuration of {filter} is not JSON, so it cannot \
                         be a chain stage's `config`"
                    )
                })?;
                format!(
                    "{{\"filter\":{},\"config\":{configuration}}}",
                    serde_json::Value::from(filter)
                )
            };
            stages.push(stage);
        }
        let name = loop {
            chains += 1;
            let name = if chains == 1 {
                "chain".to_string()
            } else {
                format!("chain.{chains}")
            };
            if !taken.contains(name.as_str()) {
                break name;
            }
        };
        let configuration = format!("{{\"stages\":[{}]}}", stages.join(","));
        plugins.push(match shape {
            Shape::Native => Plugin::Native {
                name,
                filter_name: "chain".into(),
                configuration,
            },
            _ => Plugin::Wasm {
                name,
                vm_id: BUNDLE_MODULE.into(),
                root_id: "chain".into(),
                path: bundle.clone(),
                configuration,
            },
        });
        Ok(())
    };
    for (i, plugin) in loaded.plugins.iter().enumerate() {
        let (
            Some(filter),
            Plugin::Wasm {
                name,
                configuration,
                ..
            },
        ) = (bundled_filter(loaded, i), plugin)
        else {
            flush(&mut run, &mut plugins)?;
            plugins.push(plugin.clone());
            continue;
        };
        match shape {
            Shape::Separate => unreachable!("handled above"),
            Shape::Bundle => plugins.push(Plugin::Wasm {
                name: name.clone(),
                vm_id: BUNDLE_MODULE.into(),
                root_id: filter.into(),
                path: bundle.clone(),
                configuration: configuration.clone(),
            }),
            Shape::Chain | Shape::Native => {
                if run.iter().any(|(f, _)| *f == filter) {
                    flush(&mut run, &mut plugins)?;
                }
                run.push((filter, configuration));
            }
        }
    }
    flush(&mut run, &mut plugins)?;
    out.plugins = plugins;
    Ok(out)
}

/// Whether an observable (`client.header.x-request-id`) is one a shape difference names
/// (exactly, or by a pattern ending in `*`).
pub fn observable_matches(pattern: &str, observable: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => observable.starts_with(prefix),
        None => pattern == observable,
    }
}

fn check_observable(o: &str) -> Result<()> {
    let pattern = o.strip_suffix('*');
    let o = pattern.unwrap_or(o);
    let fixed = [
        "upstream",
        "upstream.body",
        "client",
        "client.status",
        "client.body",
        "log",
        "config",
    ];
    let prefixed = ["upstream.header.", "client.header.", "metric.", "callouts."];
    let ok = if pattern.is_some() {
        fixed
            .iter()
            .chain(&prefixed)
            .any(|k| k.starts_with(o) || o.starts_with(k))
    } else {
        fixed.contains(&o)
            || prefixed
                .iter()
                .any(|p| o.len() > p.len() && o.starts_with(p))
    };
    if !ok {
        bail!(
            "{o:?} is no observable (upstream, upstream.header.<name>, upstream.body, client, \
             client.status, client.header.<name>, client.body, metric.<name>, callouts.<cluster>, \
             log, config; a trailing * matches any rest)"
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A loaded scenario without a build: the chain's plugins made up from its entries.
    fn loaded(yaml: &str) -> Result<Loaded> {
        let scenario: Scenario = serde_norway::from_str(yaml)?;
        let plugins = scenario
            .chain
            .iter()
            .enumerate()
            .map(|(i, e)| match &e.local_reply {
                Some(reply) => Plugin::LocalReply {
                    name: format!("scenario.local_reply_{i}"),
                    reply: reply.clone(),
                },
                None => {
                    let stem = e.filter.clone().unwrap_or_default().replace('-', "_");
                    let name = e.name.clone().unwrap_or(format!("gatewasm.{stem}"));
                    Plugin::Wasm {
                        vm_id: name.clone(),
                        root_id: String::new(),
                        path: PathBuf::from(format!("{stem}.wasm")),
                        configuration: e
                            .config
                            .as_ref()
                            .map(|v| match v {
                                serde_json::Value::String(s) => s.clone(),
                                v => v.to_string(),
                            })
                            .unwrap_or_default(),
                        name,
                    }
                }
            })
            .collect();
        Ok(Loaded {
            file: PathBuf::from("t.yaml"),
            label: "t.yaml".into(),
            scenario,
            plugins,
            shape: Shape::Separate,
            clusters: Vec::new(),
            advances: Vec::new(),
        })
    }

    fn wasm(p: &Plugin) -> (&str, &str, &str, &str) {
        match p {
            Plugin::Wasm {
                name,
                vm_id,
                root_id,
                configuration,
                ..
            } => (name, vm_id, root_id, configuration),
            Plugin::Native {
                name,
                filter_name,
                configuration,
            } => (name, "native", filter_name, configuration),
            Plugin::LocalReply { name, .. } => (name, "", "local_reply", ""),
        }
    }

    #[test]
    fn shapes_rewrite_only_the_bundled_filters() -> Result<()> {
        let l = loaded(
            r#"
description: x
chain:
  - {filter: correlation-id}
  - {filter: trace-propagation, config: {inject: [w3c]}}
  - {filter: harness-test-module, config: "verbatim text"}
  - {filter: rate-limit, name: rl_a, config: {rules: []}}
  - {filter: rate-limit, name: rl_b}
  - {local_reply: {status: 401}}
  - {filter: tenant-routing, name: chain, config: {tenants: {}}}
steps: [{}]
"#,
        )?;
        let bundle = reshape_with(&l, Shape::Bundle, PathBuf::from("gatewasm.wasm"))?;
        let got: Vec<_> = bundle.plugins.iter().map(wasm).collect();
        assert_eq!(
            got,
            vec![
                ("gatewasm.correlation_id", "gatewasm", "correlation-id", ""),
                (
                    "gatewasm.trace_propagation",
                    "gatewasm",
                    "trace-propagation",
                    r#"{"inject":["w3c"]}"#
                ),
                (
                    "gatewasm.harness_test_module",
                    "gatewasm.harness_test_module",
                    "",
                    "verbatim text"
                ),
                ("rl_a", "gatewasm", "rate-limit", r#"{"rules":[]}"#),
                ("rl_b", "gatewasm", "rate-limit", ""),
                ("scenario.local_reply_5", "", "local_reply", ""),
                ("chain", "gatewasm", "tenant-routing", r#"{"tenants":{}}"#),
            ]
        );
        let chain = reshape_with(&l, Shape::Chain, PathBuf::from("gatewasm.wasm"))?;
        let got: Vec<_> = chain.plugins.iter().map(wasm).collect();
        // Runs end at other plugins and where a filter would come twice; `chain` is taken.
        assert_eq!(
            got,
            vec![
                (
                    "chain.2",
                    "gatewasm",
                    "chain",
                    r#"{"stages":[{"filter":"correlation-id"},{"filter":"trace-propagation","config":{"inject":["w3c"]}}]}"#
                ),
                (
                    "gatewasm.harness_test_module",
                    "gatewasm.harness_test_module",
                    "",
                    "verbatim text"
                ),
                (
                    "chain.3",
                    "gatewasm",
                    "chain",
                    r#"{"stages":[{"filter":"rate-limit","config":{"rules":[]}}]}"#
                ),
                (
                    "chain.4",
                    "gatewasm",
                    "chain",
                    r#"{"stages":[{"filter":"rate-limit"}]}"#
                ),
                ("scenario.local_reply_5", "", "local_reply", ""),
                (
                    "chain.5",
                    "gatewasm",
                    "chain",
                    r#"{"stages":[{"filter":"tenant-routing","config":{"tenants":{}}}]}"#
                ),
            ]
        );
        assert_eq!(chain.shape, Shape::Chain);
        assert!(reshape_with(&chain, Shape::Bundle, PathBuf::new()).is_err());
        // The native shape: the chain shape's runs and configurations, as dynamic-module
        // `chain` filters; the other plugins stay Wasm.
        let native = reshape_with(&l, Shape::Native, PathBuf::new())?;
        let got: Vec<_> = native.plugins.iter().map(wasm).collect();
        let want: Vec<_> = chain
            .plugins
            .iter()
            .map(wasm)
            .map(|(name, vm_id, root_id, configuration)| match root_id {
                "chain" => (name, "native", "chain", configuration),
                _ => (name, vm_id, root_id, configuration),
            })
            .collect();
        assert_eq!(got, want);
        assert_eq!(native.shape, Shape::Native);
        Ok(())
    }

    #[test]
    fn a_stage_needs_a_json_configuration() -> Result<()> {
        let l = loaded(
            "description: x\nchain: [{filter: correlation-id, config: \"{nope\"}]\nsteps: [{}]\n",
        )?;
        let err = reshape_with(&l, Shape::Chain, PathBuf::new())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("not JSON"), "{err}");
        Ok(())
    }

    #[test]
    fn observables_are_checked_and_matched() {
        for ok in [
            "client.header.x-request-id",
            "metric.gatewasm_x",
            "metric.*",
            "upstream",
            "log",
            "callouts.auth",
            "*",
        ] {
            assert!(check_observable(ok).is_ok(), "{ok}");
        }
        for bad in ["client.header.", "headers.x", "metric", "client.status.x"] {
            assert!(check_observable(bad).is_err(), "{bad}");
        }
        assert!(observable_matches(
            "metric.gatewasm_jwt_*",
            "metric.gatewasm_jwt_x"
        ));
        assert!(!observable_matches("metric.gatewasm_jwt_*", "metric.other"));
        assert!(observable_matches("client.status", "client.status"));
        assert!(!observable_matches("client", "client.status"));
    }

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
}
