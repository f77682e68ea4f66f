//! Every scenario file under `tests/scenarios/` is a test, named after the file
//! (`correlation-id/keeps-a-valid-id` for `tests/scenarios/correlation-id/keeps-a-valid-id.yaml`).
//! Each runs in the proxy-wasm harness and in a real Envoy (unless it is `harness_only`); it
//! fails if an expectation does not hold in a host, or if the two hosts disagree — the failure
//! prints the report with both hosts' observations.
//!
//! A file whose chain holds a filter of this workspace is also two more tests, one per shape of
//! the chain loaded from the bundle `gatewasm.wasm` (`correlation-id/keeps-a-valid-id [bundle]`,
//! `… [chain]`): the same expectations in both hosts, and the same observations as the separate
//! modules' run (which the file's first test makes), but for the file's `shape_differences`.
//! The shapes of eight files at a time run together (one Envoy, a listener each, when the
//! scenarios allow it: `scenario::run_shapes_of`). `-- '[chain]'` runs the chain shape of every file.
//!
//! This target uses its own test runner (libtest-mimic, `harness = false`), so files are found
//! when the tests run: adding a scenario needs no rebuild. The usual arguments work:
//! `cargo test -p gatewasm-tests --test scenarios -- correlation-id/` runs a directory,
//! `-- --list` lists them. `UPDATE_SCHEMA=1` rewrites `tests/scenarios/scenario.schema.json`.
//!
//! Needs `just build` (the .wasm files) and `just envoy`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use gatewasm_tests::scenario::{self, Hosts, Loaded, Report, Shape};
use libtest_mimic::{Arguments, Failed, Trial};

fn schema_file_is_current() -> Result<(), Failed> {
    let path = scenario::scenarios_dir().join("scenario.schema.json");
    let generated = scenario::schema_json().map_err(|e| Failed::from(format!("{e:#}")))?;
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, generated)
            .map_err(|e| Failed::from(format!("writing {}: {e}", path.display())))?;
        return Ok(());
    }
    match std::fs::read_to_string(&path) {
        Ok(committed) if committed == generated => Ok(()),
        _ => Err(format!(
            "{} differs from the schema generated from src/scenario/format.rs; regenerate it with \
             `UPDATE_SCHEMA=1 cargo test -p gatewasm-tests --test scenarios`",
            path.display()
        )
        .into()),
    }
}

/// A report (or several), shared by the trials that need it: the first to need it runs it, the
/// others wait for it.
type Shared<T> = Arc<OnceLock<Result<T, String>>>;

/// The separate modules' report of `file` (its first trial's, which the shape trials compare
/// with).
fn separate(file: &Path) -> Result<Report, String> {
    static REPORTS: OnceLock<Mutex<HashMap<PathBuf, Shared<Report>>>> = OnceLock::new();
    let cell = {
        let mut map = REPORTS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(file.to_path_buf()).or_default())
    };
    cell.get_or_init(|| scenario::run_file(file).map_err(|e| format!("{e:#}")))
        .clone()
}

/// The shapes besides the separate modules.
const SHAPES: [Shape; 2] = [Shape::Bundle, Shape::Chain];

/// How many files' shapes share one Envoy (`scenario::run_shapes_of`): one V8 compilation of
/// gatewasm.wasm (~1 s of both cores) per batch instead of per file.
const BATCH: usize = 8;

/// A batch of files whose bundle and chain shapes run together: the files, and their shape
/// reports once run (per file, in the order of `SHAPES`, compared with the separate modules').
struct Batch {
    files: Vec<(PathBuf, Loaded)>,
    reports: OnceLock<Vec<Result<Vec<Report>, String>>>,
}

impl Batch {
    fn reports(&self) -> &[Result<Vec<Report>, String>] {
        self.reports.get_or_init(|| {
            let loaded: Vec<Loaded> = self.files.iter().map(|(_, l)| l.clone()).collect();
            let runs = scenario::run_shapes_of(&loaded, &SHAPES, Hosts::default());
            runs.into_iter()
                .zip(&self.files)
                .map(|(run, (file, loaded))| {
                    let mut reports = run.map_err(|e| format!("{e:#}"))?;
                    let separate = separate(file).map_err(|e| {
                        format!(
                            "{}: the separate modules' run, which the shapes are compared with, \
                             failed: {e}",
                            loaded.label
                        )
                    })?;
                    for report in &mut reports {
                        report.compare_with_separate(&separate);
                    }
                    Ok(reports)
                })
                .collect()
        })
    }
}

fn verdict(report: &Report) -> Result<(), Failed> {
    if report.passed() {
        Ok(())
    } else {
        Err(report.render(false).into())
    }
}

fn run_scenario(file: PathBuf) -> Result<(), Failed> {
    verdict(&separate(&file)?)
}

fn run_shape(batch: &Batch, index: usize, shape: Shape) -> Result<(), Failed> {
    let reports = match batch.reports().get(index) {
        Some(Ok(reports)) => reports,
        Some(Err(e)) => return Err(e.clone().into()),
        None => return Err("the batch did not run this file".into()),
    };
    match reports.iter().find(|r| r.loaded.shape == shape) {
        Some(report) => verdict(report),
        None => Err(format!("the {} shape did not run", shape.name()).into()),
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let dir = scenario::scenarios_dir();
    let mut trials = vec![Trial::test("scenario.schema.json", schema_file_is_current)];
    let mut with_shapes = Vec::new();
    match scenario::scenario_files(&dir) {
        Ok(files) => {
            for file in files {
                let name = file
                    .strip_prefix(&dir)
                    .unwrap_or(&file)
                    .with_extension("")
                    .display()
                    .to_string();
                // The shapes of a file whose chain holds a filter of the bundle (a file that
                // does not load fails in its first trial).
                if let Some(loaded) = scenario::load(&file)
                    .ok()
                    .filter(scenario::has_bundled_filters)
                {
                    with_shapes.push((name.clone(), file.clone(), loaded));
                }
                trials.push(Trial::test(name, move || run_scenario(file)));
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            trials.push(Trial::test("scenario files", move || Err(msg.into())));
        }
    }
    // The shapes' trials after every file's own (whose runs they reuse), grouped by shape. In
    // each group the first file of every batch comes first, so that the worker threads run
    // different batches at once; the other trials find their batch run.
    let batches: Vec<(Vec<String>, Arc<Batch>)> = with_shapes
        .chunks(BATCH)
        .map(|chunk| {
            let names = chunk.iter().map(|(n, ..)| n.clone()).collect();
            let files = chunk
                .iter()
                .map(|(_, f, l)| (f.clone(), l.clone()))
                .collect();
            (
                names,
                Arc::new(Batch {
                    files,
                    reports: OnceLock::new(),
                }),
            )
        })
        .collect();
    for shape in SHAPES {
        for index in 0..BATCH {
            for (names, batch) in &batches {
                let Some(name) = names.get(index) else {
                    continue;
                };
                let batch = Arc::clone(batch);
                trials.push(Trial::test(
                    format!("{name} [{}]", shape.name()),
                    move || run_shape(&batch, index, shape),
                ));
            }
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}
