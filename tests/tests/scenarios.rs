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
//! On Envoy 1.40 (and unless it is `harness_only`) it is a third one, `… [native]`: the chain's
//! filters as `chain` filters of the Envoy dynamic module `libgatewasm_envoy.so` (`just
//! build-native`; missing, the test fails naming it), in Envoy only, held to the expectations
//! and to the separate modules' Envoy run. On another Envoy the native tests are not made, and
//! the run says so first (the 1.40 run covers them); on 1.40 it first lists (on stderr) the
//! files the native shape leaves out (`harness_only`) and the native differences files declare.
//! The shapes of eight files at a time run together (one Envoy, a listener each, when the
//! scenarios allow it: `scenario::run_shapes_of`); the native shapes in Envoys of their own.
//! `-- '[chain]'` runs the chain shape of every file.
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

/// The shapes of `gatewasm.wasm`, which run together in one Envoy per batch.
const WASM_SHAPES: [Shape; 2] = [Shape::Bundle, Shape::Chain];

/// How many files' shapes share one Envoy (`scenario::run_shapes_of`): one V8 compilation of
/// gatewasm.wasm (~1 s of both cores) per batch instead of per file.
const BATCH: usize = 8;

/// A batch of files whose shapes (`shapes`: the Wasm ones, or the native one) run together:
/// the files, and their shape reports once run (per file, in the order of `shapes`, compared
/// with the separate modules').
struct Batch {
    shapes: Vec<Shape>,
    files: Vec<(PathBuf, Loaded)>,
    reports: OnceLock<Vec<Result<Vec<Report>, String>>>,
}

impl Batch {
    fn reports(&self) -> &[Result<Vec<Report>, String>] {
        self.reports.get_or_init(|| {
            let loaded: Vec<Loaded> = self.files.iter().map(|(_, l)| l.clone()).collect();
            let runs = scenario::run_shapes_of(&loaded, &self.shapes, Hosts::default());
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

/// Whether the native shape runs with this Envoy; when it does not, says so (on stderr: the
/// standard output is libtest's, e.g. `--list`'s).
fn native_shape_runs() -> bool {
    match scenario::native_shape_unsupported_by_envoy() {
        Ok(None) | Err(_) => true,
        Ok(Some(version)) => {
            eprintln!(
                "scenarios: the [native] shape is not run: ENVOY_BIN is Envoy {version}, and the \
                 dynamic module libgatewasm_envoy.so is built against Envoy {}x's ABI (the run \
                 on Envoy 1.40 covers it)",
                scenario::NATIVE_ENVOY_VERSION
            );
            false
        }
    }
}

/// What the native shape leaves out and declares, before the run (on stderr): the files with
/// gatewasm filters it does not run (`harness_only`: no Envoy runs them), and each file's
/// known native differences.
fn print_native_summary(
    with_shapes: &[(String, PathBuf, Loaded)],
    with_native: &[(String, PathBuf, Loaded)],
) {
    let harness_only: Vec<&str> = with_shapes
        .iter()
        .filter(|(_, _, l)| l.scenario.harness_only.is_some())
        .map(|(name, ..)| name.as_str())
        .collect();
    eprintln!(
        "scenarios: the [native] shape runs {} files in Envoy (not the harness_only ones: {})",
        with_native.len(),
        if harness_only.is_empty() {
            "none".to_string()
        } else {
            harness_only.join(", ")
        }
    );
    // Entries alike (observables, steps, why) in several files: one line, the files listed.
    let mut declared: Vec<(String, Vec<&str>)> = Vec::new();
    let mut entries = 0;
    for (name, _, l) in with_native {
        for d in &l.scenario.shape_differences {
            if Shape::from(d.shape) != Shape::Native {
                continue;
            }
            entries += 1;
            let steps = if d.steps.is_empty() {
                String::new()
            } else {
                format!(" (steps {:?})", d.steps)
            };
            let what = format!("{}{steps}: {}", d.observables.join(", "), d.why);
            match declared.iter_mut().find(|(w, _)| *w == what) {
                Some((_, files)) => files.push(name),
                None => declared.push((what, vec![name])),
            }
        }
    }
    eprintln!(
        "scenarios: known [native] differences, {entries} (tests/scenarios/README.md, \"Four \
         shapes\"):"
    );
    for (what, files) in declared {
        eprintln!("  in {} file(s), {}: {what}", files.len(), files.join(", "));
    }
}

/// The trials of one group of shapes: `files` (name, file, loaded) in batches of [`BATCH`],
/// each batch running `shapes` together; a trial per file and shape, grouped by shape, and in
/// each group the first file of every batch first, so that the worker threads run different
/// batches at once (the other trials find their batch run).
fn shape_trials(files: &[(String, PathBuf, Loaded)], shapes: &[Shape]) -> Vec<Trial> {
    let batches: Vec<(Vec<String>, Arc<Batch>)> = files
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
                    shapes: shapes.to_vec(),
                    files,
                    reports: OnceLock::new(),
                }),
            )
        })
        .collect();
    let mut trials = Vec::new();
    for &shape in shapes {
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
    trials
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let native = native_shape_runs();
    let dir = scenario::scenarios_dir();
    let mut trials = vec![Trial::test("scenario.schema.json", schema_file_is_current)];
    let mut with_shapes = Vec::new();
    let mut with_native = Vec::new();
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
                if let Ok(loaded) = scenario::load(&file) {
                    let shapes = scenario::other_shapes(&loaded, native);
                    if shapes.contains(&Shape::Native) {
                        with_native.push((name.clone(), file.clone(), loaded.clone()));
                    }
                    if shapes.contains(&Shape::Bundle) {
                        with_shapes.push((name.clone(), file.clone(), loaded));
                    }
                }
                trials.push(Trial::test(name, move || run_scenario(file)));
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            trials.push(Trial::test("scenario files", move || Err(msg.into())));
        }
    }
    if native && !args.list {
        print_native_summary(&with_shapes, &with_native);
    }
    // The shapes' trials after every file's own (whose runs they reuse).
    trials.extend(shape_trials(&with_shapes, &WASM_SHAPES));
    trials.extend(shape_trials(&with_native, &[Shape::Native]));
    libtest_mimic::run(&args, trials).exit_code()
}
