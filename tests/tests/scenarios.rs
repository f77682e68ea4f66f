//! Every scenario file under `tests/scenarios/` is a test, named after the file
//! (`correlation-id/keeps-a-valid-id` for `tests/scenarios/correlation-id/keeps-a-valid-id.yaml`).
//! Each runs in the proxy-wasm harness and in a real Envoy (unless it is `harness_only`); it
//! fails if an expectation does not hold in a host, or if the two hosts disagree — the failure
//! prints the report with both hosts' observations.
//!
//! This target uses its own test runner (libtest-mimic, `harness = false`), so files are found
//! when the tests run: adding a scenario needs no rebuild. The usual arguments work:
//! `cargo test -p gatewasm-tests --test scenarios -- correlation-id/` runs a directory,
//! `-- --list` lists them. `UPDATE_SCHEMA=1` rewrites `tests/scenarios/scenario.schema.json`.
//!
//! Needs `just build` (the .wasm files) and `just envoy`.

use std::path::PathBuf;
use std::process::ExitCode;

use gatewasm_tests::scenario;
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

fn run_scenario(file: PathBuf) -> Result<(), Failed> {
    let report = scenario::run_file(&file).map_err(|e| Failed::from(format!("{e:#}")))?;
    if report.passed() {
        Ok(())
    } else {
        Err(report.render(false).into())
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let dir = scenario::scenarios_dir();
    let mut trials = vec![Trial::test("scenario.schema.json", schema_file_is_current)];
    match scenario::scenario_files(&dir) {
        Ok(files) => {
            for file in files {
                let name = file
                    .strip_prefix(&dir)
                    .unwrap_or(&file)
                    .with_extension("")
                    .display()
                    .to_string();
                trials.push(Trial::test(name, move || run_scenario(file)));
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            trials.push(Trial::test("scenario files", move || Err(msg.into())));
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}
