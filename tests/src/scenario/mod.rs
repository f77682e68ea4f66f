//! Declarative filter scenarios: one YAML file, run against a filter chain's real `.wasm` files in
//! **the harness** ([`harness`]) and in **a real Envoy**
//! ([`envoy`]), checked against the file's expectations in both hosts, and the two
//! hosts' observations compared with each other.
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
//! This file holds the entry points ([`run_file`], [`run_file_in`], [`run`]).

mod check;
pub mod envoy;
mod format;
pub mod harness;
mod load;
mod observed;
mod report;

pub use check::{compare, evaluate};
pub use format::{
    Answer, BodyCheck, BodyCheckFields, CalloutAnswer, ChainEntry, ClientExpect, ConfigRejected,
    Expect, HeaderCheck, HeaderCheckFields, Headers, JsonCheck, LocalReply, RequestSpec, Scenario,
    Step, UpstreamExpect, schema_json,
};
pub use load::{
    HeaderRef, Loaded, Plugin, Side, compile_pattern, load, named_pattern, parse_duration,
    scenario_files, scenarios_dir,
};
pub use observed::{ClientResponse, HostOutcome, Message, Observed};
pub use report::{CheckRow, Report, StepReport};

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

/// Runs a loaded scenario.
pub fn run(loaded: Loaded, hosts: Hosts) -> Report {
    let harness = harness::run(&loaded);
    let (envoy, envoy_version) = if hosts.envoy && loaded.scenario.harness_only.is_none() {
        let (outcome, version) = envoy::run(&loaded);
        (Some(outcome), version)
    } else {
        (None, None)
    };
    report::assemble(loaded, harness, envoy, envoy_version)
}
