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

use super::{Headers, JsonCheck, LocalReply, Scenario};

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
            Plugin::Wasm { name, .. } | Plugin::LocalReply { name, .. } => name,
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
    /// The chain, resolved.
    pub plugins: Vec<Plugin>,
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
        clusters,
        advances,
    })
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
