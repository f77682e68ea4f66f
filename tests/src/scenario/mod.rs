//! Declarative filter scenarios: one YAML file, run against a filter chain's real `.wasm` files in
//! **the harness** ([`harness`]) and in **a real Envoy**
//! ([`envoy`]), checked against the file's expectations in both hosts, and the two
//! hosts' observations compared with each other.
//!
//! Every scenario also runs in two more **shapes** ([`Shape`], [`reshape`]): the filters of this
//! workspace loaded from the bundle `gatewasm.wasm` (bundle mode: root id = the filter's name,
//! one shared VM; chain mode: each run of consecutive filters as one `chain` plugin). A shape
//! must meet the same expectations in both hosts and observe what the separate modules observe
//! ([`Report::compare_with_separate`]), but for the differences the scenario's
//! `shape_differences` name.
//!
//! The format is documented in `tests/scenarios/README.md`; its JSON Schema is
//! `tests/scenarios/scenario.schema.json`, generated from the types in `format.rs` (a test keeps it
//! current; `UPDATE_SCHEMA=1 cargo test -p gatewasm-tests --test scenarios` rewrites it).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let report = gatewasm_tests::scenario::run_file("tests/scenarios/correlation-id/generates-an-id.yaml".as_ref())?;
//! print!("{}", report.render(false));
//! assert!(report.passed());
//! # Ok(()) }
//! ```
//!
//! The module's files:
//!
//! - `format.rs`: the file format, as the serde types the YAML is read into (and the JSON Schema
//!   is generated from).
//! - `load.rs`: finding scenario files, and reading, validating and resolving one ([`load()`],
//!   [`Loaded`]), with the named patterns, durations and header references the format uses.
//! - `observed.rs`: what a host observed in a step ([`Observed`]), what both runners return.
//! - [`harness`] and [`envoy`]: the two runners.
//! - `check.rs`: a step's expectations against one host's observations ([`evaluate`]), and the
//!   two hosts' observations against each other ([`compare`]).
//! - `report.rs`: the verdicts put together ([`Report`]) and rendered.
//!
//! This file holds the entry points ([`run_file`], [`run_file_in`], [`run`], [`run_shape`],
//! [`run_file_shapes`]).

mod check;
pub mod envoy;
mod format;
pub mod harness;
mod load;
mod observed;
mod report;

pub use check::{Difference, Verdict, compare, differences, evaluate, verdicts};
pub use format::{
    Answer, BodyCheck, BodyCheckFields, CalloutAnswer, ChainEntry, ClientExpect, ConfigRejected,
    Expect, HeaderCheck, HeaderCheckFields, Headers, JsonCheck, LocalReply, RequestSpec, Scenario,
    ShapeDifference, ShapeName, Step, UpstreamExpect, schema_json,
};
pub use load::{
    BUNDLE_MODULE, BUNDLED_FILTERS, HeaderRef, Loaded, Plugin, Shape, Side, compile_pattern,
    has_bundled_filters, load, named_pattern, observable_matches, parse_duration, reshape,
    scenario_files, scenarios_dir,
};
pub use observed::{ClientResponse, HostOutcome, Message, Observed};
pub use report::{CheckRow, Excused, Report, StepReport};

use std::path::Path;

use anyhow::Result;

/// Which hosts to run: the harness always, Envoy unless told not to (or `harness_only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hosts {
    /// Run in Envoy too (ignored for `harness_only` scenarios).
    pub envoy: bool,
}

impl Default for Hosts {
    fn default() -> Self {
        Hosts { envoy: true }
    }
}

/// Loads `file` and runs it in both hosts (Envoy skipped for `harness_only`).
pub fn run_file(file: &Path) -> Result<Report> {
    run_file_in(file, Hosts::default())
}

/// Loads `file` and runs it in the chosen hosts.
pub fn run_file_in(file: &Path, hosts: Hosts) -> Result<Report> {
    let loaded = load(file)?;
    Ok(run(loaded, hosts))
}

/// Runs `loaded` in `shape` (its own report, not yet compared with the separate modules':
/// [`Report::compare_with_separate`]).
pub fn run_shape(loaded: &Loaded, shape: Shape, hosts: Hosts) -> Result<Report> {
    Ok(run(reshape(loaded, shape)?, hosts))
}

/// Set to `1`, every shape of every scenario starts an Envoy of its own (to rule out the shared
/// Envoy when a shape differs).
pub const ENVOY_PER_SHAPE: &str = "GATEWASM_SCENARIO_ENVOY_PER_SHAPE";

/// Runs `loaded` in each of `shapes` (their own reports, not yet compared with the separate
/// modules'): [`run_shapes_of`] for one scenario.
pub fn run_shapes(loaded: &Loaded, shapes: &[Shape], hosts: Hosts) -> Result<Vec<Report>> {
    run_shapes_of(std::slice::from_ref(loaded), shapes, hosts)
        .pop()
        .unwrap_or_else(|| Ok(Vec::new()))
}

/// What Envoy observed in one run, and the Envoy version that observed it.
type EnvoyOutcome = (HostOutcome, Option<String>);

/// Runs each of `scenarios` in each of `shapes` (their own reports, not yet compared with the
/// separate modules'), per scenario in the order of `shapes`. In Envoy the shapes of every
/// scenario that allows it — its configuration is accepted and its filters make no callouts —
/// share one Envoy process, a listener each ([`envoy::run_together`]: one V8 compilation of
/// `gatewasm.wasm` for all of them); the others (and all, with [`ENVOY_PER_SHAPE`] `1`) start
/// an Envoy per shape.
pub fn run_shapes_of(
    scenarios: &[Loaded],
    shapes: &[Shape],
    hosts: Hosts,
) -> Vec<Result<Vec<Report>>> {
    let per_shape = std::env::var_os(ENVOY_PER_SHAPE).is_some_and(|v| v == "1");
    let shaped: Vec<Result<Vec<Loaded>>> = scenarios
        .iter()
        .map(|loaded| shapes.iter().map(|s| reshape(loaded, *s)).collect())
        .collect();
    let in_envoy = |l: &Loaded| hosts.envoy && l.scenario.harness_only.is_none();
    let together = |l: &Loaded| {
        !per_shape
            && l.scenario.config_rejected.is_none()
            && l.clusters.is_empty()
            && !(l.shape == Shape::Native && native_refusal_declared(l))
    };
    // The dynamic module's shared data is the whole process's, not a listener's VM's: one
    // listener with rate-limit's buckets per Envoy (the others run in Envoys of their own).
    let mut native_rate_limit = false;
    let mut clashes = |l: &Loaded| {
        let rate_limit = l.shape == Shape::Native && has_rate_limit(l);
        let clash = rate_limit && native_rate_limit;
        native_rate_limit |= rate_limit;
        clash
    };
    // Envoy's outcome per scenario and shape (`None`: not run in Envoy).
    let mut outcomes: Vec<Vec<Option<EnvoyOutcome>>> = shaped
        .iter()
        .map(|s| {
            s.as_ref()
                .map(|v| v.iter().map(|_| None).collect())
                .unwrap_or_default()
        })
        .collect();
    let shared: Vec<(usize, usize, &Loaded)> = shaped
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().ok().map(|v| (i, v)))
        .flat_map(|(i, v)| v.iter().enumerate().map(move |(k, l)| (i, k, l)))
        .filter(|(_, _, l)| in_envoy(l) && together(l) && !clashes(l))
        .collect();
    let refs: Vec<&Loaded> = shared.iter().map(|(_, _, l)| *l).collect();
    for ((i, k, _), outcome) in shared.iter().zip(envoy::run_together(&refs)) {
        outcomes[*i][*k] = Some(outcome);
    }
    shaped
        .into_iter()
        .zip(outcomes)
        .map(|(shaped, outcomes)| {
            Ok(shaped?
                .into_iter()
                .zip(outcomes)
                .map(|(loaded, envoy)| {
                    let envoy = match envoy {
                        Some(o) => Some(o),
                        None if in_envoy(&loaded) => Some(envoy::run(&loaded)),
                        None => None,
                    };
                    let harness = in_harness(&loaded);
                    let (envoy, version) = match envoy {
                        Some((o, v)) => (Some(o), v),
                        None => (None, None),
                    };
                    report::assemble(loaded, harness, envoy, version)
                })
                .collect())
        })
        .collect()
}

/// Whether the scenario's chain holds rate-limit, which keeps its buckets in shared data: in
/// the dynamic module that is the whole Envoy process's (a Wasm listener's is its VM's), so two
/// such listeners in one Envoy would spend each other's buckets.
fn has_rate_limit(loaded: &Loaded) -> bool {
    loaded
        .scenario
        .chain
        .iter()
        .any(|e| e.filter.as_deref() == Some("rate-limit"))
}

/// Whether the scenario declares that the native shape refuses its configuration (a `config`
/// shape difference): it runs in an Envoy of its own, as its refusal would keep a shared one
/// from starting.
fn native_refusal_declared(loaded: &Loaded) -> bool {
    loaded.scenario.shape_differences.iter().any(|d| {
        Shape::from(d.shape) == Shape::Native
            && d.observables
                .iter()
                .any(|o| observable_matches(o, "config"))
    })
}

/// The Envoy releases whose dynamic-module ABI `libgatewasm_envoy.so` is built against: the
/// native shape runs only on these (version prefix).
pub const NATIVE_ENVOY_VERSION: &str = "1.40.";

/// Whether the Envoy the scenarios run in (`ENVOY_BIN`) can run the native shape: `Ok(None)`
/// when it can, `Ok(Some(version))` when it is another release (the shape is not run, and
/// whoever leaves it out says so), `Err` when its version cannot be told (Envoy missing: the
/// shape runs and fails as every Envoy run does).
pub fn native_shape_unsupported_by_envoy() -> Result<Option<String>> {
    let version = crate::envoy::binary_version()?;
    Ok((!version.starts_with(NATIVE_ENVOY_VERSION)).then_some(version))
}

/// The shapes besides the separate modules that a scenario runs in with this Envoy: bundle and
/// chain (when its chain holds a filter of the bundle), and native too (not for a
/// `harness_only` scenario, which no Envoy runs; not on an Envoy other than 1.40).
pub fn other_shapes(loaded: &Loaded, native: bool) -> Vec<Shape> {
    if !has_bundled_filters(loaded) {
        return Vec::new();
    }
    let mut shapes = vec![Shape::Bundle, Shape::Chain];
    if native && loaded.scenario.harness_only.is_none() {
        shapes.push(Shape::Native);
    }
    shapes
}

/// Loads `file` and runs it in every shape it has ([`other_shapes`]; the native shape only on
/// Envoy 1.40, and with `hosts.envoy`): the separate modules, then the others ([`run_shapes`]),
/// each compared with the first.
pub fn run_file_shapes(file: &Path, hosts: Hosts) -> Result<Vec<Report>> {
    let loaded = load(file)?;
    let separate = run(loaded.clone(), hosts);
    let native = hosts.envoy && !matches!(native_shape_unsupported_by_envoy(), Ok(Some(_)));
    let shapes = other_shapes(&loaded, native);
    let mut reports = Vec::new();
    if !shapes.is_empty() {
        reports = run_shapes(&loaded, &shapes, hosts)?;
        for report in &mut reports {
            report.compare_with_separate(&separate);
        }
    }
    reports.insert(0, separate);
    Ok(reports)
}

/// The harness's outcome, for a shape it runs ([`Shape::in_harness`]).
fn in_harness(loaded: &Loaded) -> Option<HostOutcome> {
    loaded.shape.in_harness().then(|| harness::run(loaded))
}

/// Runs a loaded scenario (in the shape it is in).
pub fn run(loaded: Loaded, hosts: Hosts) -> Report {
    let harness = in_harness(&loaded);
    let (envoy, envoy_version) = if hosts.envoy && loaded.scenario.harness_only.is_none() {
        let (outcome, version) = envoy::run(&loaded);
        (Some(outcome), version)
    } else {
        (None, None)
    };
    report::assemble(loaded, harness, envoy, envoy_version)
}
