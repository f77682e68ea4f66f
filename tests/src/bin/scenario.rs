//! `just scenario FILE…`: runs scenario files (the format of `tests/scenarios/README.md`) in the
//! proxy-wasm harness and in a real Envoy and prints a readable report for each.
//!
//! ```text
//! scenario [--verbose] [--harness-only] [--print-envoy-config] FILE…
//! ```
//!
//! - `--verbose`: show what each host observed in every step (failed steps always show it);
//! - `--harness-only`: do not start Envoy;
//! - `--print-envoy-config`: print the Envoy config generated from the scenario (ports as
//!   placeholders) instead of running it.
//!
//! Exit status: 0 when every scenario passed, 1 when one failed, 2 on a usage error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use gatewasm_tests::scenario::{self, Hosts};

fn main() -> ExitCode {
    let mut verbose = false;
    let mut hosts = Hosts::default();
    let mut print_config = false;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--verbose" | "-v" => verbose = true,
            "--harness-only" => hosts.envoy = false,
            "--print-envoy-config" => print_config = true,
            "--help" | "-h" => {
                println!(
                    "usage: scenario [--verbose] [--harness-only] [--print-envoy-config] FILE…\n\
                     Runs each scenario file in the harness and in Envoy; see tests/scenarios/README.md."
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
        eprintln!("usage: scenario [--verbose] [--harness-only] [--print-envoy-config] FILE…");
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for file in &files {
        if print_config {
            match scenario::load(file) {
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
        match scenario::run_file_in(file, hosts) {
            Ok(report) => {
                print!("{}", report.render(verbose));
                if !report.passed() {
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
