//! `just scenario FILE…`: runs scenario files (the format of `tests/scenarios/README.md`) in the
//! proxy-wasm harness and in a real Envoy and prints a readable report for each.
//!
//! ```text
//! scenario [--verbose] [--harness-only] [--print-envoy-config] [--shape SHAPE] FILE…
//! ```
//!
//! - `--verbose`: show what each host observed in every step (failed steps always show it);
//! - `--shape separate|bundle|chain|native|all`: the shape of the chain (default `separate`,
//!   the filters' own modules): `bundle` and `chain` load the filters from `gatewasm.wasm`,
//!   `native` runs them as the Envoy dynamic module `libgatewasm_envoy.so` (Envoy 1.40 only,
//!   `just build-native`; in Envoy only); each is compared with the separate modules' run
//!   (which is made too, and not reported); `all` reports every shape (native only on Envoy
//!   1.40);
//! - `--harness-only`: do not start Envoy;
//! - `--print-envoy-config`: print the Envoy config generated from the scenario (ports as
//!   placeholders) instead of running it.
//!
//! Exit status: 0 when every scenario passed, 1 when one failed, 2 on a usage error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use gatewasm_tests::scenario::{self, Hosts, Report, Shape};

const USAGE: &str = "usage: scenario [--verbose] [--harness-only] [--print-envoy-config] [--shape separate|bundle|chain|native|all] FILE…";

/// Runs `file` in `shape` (`None`: every shape); the reports to print.
fn run(file: &std::path::Path, hosts: Hosts, shape: Option<Shape>) -> anyhow::Result<Vec<Report>> {
    match shape {
        None => scenario::run_file_shapes(file, hosts),
        Some(Shape::Separate) => Ok(vec![scenario::run_file_in(file, hosts)?]),
        Some(shape) => {
            let loaded = scenario::load(file)?;
            let separate = scenario::run(loaded.clone(), hosts);
            let mut report = scenario::run_shape(&loaded, shape, hosts)?;
            report.compare_with_separate(&separate);
            Ok(vec![report])
        }
    }
}

fn main() -> ExitCode {
    let mut verbose = false;
    let mut hosts = Hosts::default();
    let mut print_config = false;
    let mut files = Vec::new();
    let mut shape = Some(Shape::Separate);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--shape" => match args.next().as_deref() {
                Some("all") => shape = None,
                Some(name) if Shape::parse(name).is_some() => shape = Shape::parse(name),
                other => {
                    eprintln!(
                        "--shape takes separate, bundle, chain, native or all, not {other:?}"
                    );
                    return ExitCode::from(2);
                }
            },
            "--verbose" | "-v" => verbose = true,
            "--harness-only" => hosts.envoy = false,
            "--print-envoy-config" => print_config = true,
            "--help" | "-h" => {
                println!(
                    "{USAGE}\nRuns each scenario file in the harness and in Envoy; see tests/scenarios/README.md."
                );
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') => {
                eprintln!("unknown option {s} (try --help)");
                return ExitCode::from(2);
            }
            _ => files.push(PathBuf::from(arg)),
        }
    }
    if files.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for file in &files {
        if print_config {
            match scenario::load(file)
                .and_then(|l| scenario::reshape(&l, shape.unwrap_or(Shape::Separate)))
            {
                Ok(loaded) => {
                    let ports: BTreeMap<String, String> = loaded
                        .clusters
                        .iter()
                        .map(|c| {
                            let p = c.to_ascii_uppercase().replace(['-', '.'], "_");
                            (c.clone(), format!("{{{{CLUSTER_{p}_PORT}}}}"))
                        })
                        .collect();
                    print!("{}", scenario::envoy::envoy_config(&loaded, &ports));
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    failed += 1;
                }
            }
            continue;
        }
        match run(file, hosts, shape) {
            Ok(reports) => {
                let mut passed = true;
                for report in &reports {
                    print!("{}", report.render(verbose));
                    passed &= report.passed();
                }
                if !passed {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("scenario {}: ERROR\n  {e:#}", file.display());
                failed += 1;
            }
        }
        println!();
    }
    if files.len() > 1 && !print_config {
        println!(
            "{} of {} scenarios passed",
            files.len() - failed,
            files.len()
        );
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
