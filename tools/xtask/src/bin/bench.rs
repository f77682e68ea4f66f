//! `just bench [--quick] [--reps N] [--only NAME]…`: what each filter costs in a real Envoy,
//! side by side with Envoy's native filters (see `gatewasm_xtask::bench`). Writes
//! `tests/bench-results/<date>_envoy-<version>_<machine>/{report.md,chart.png,samples.json}`.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, bail};
use gatewasm_xtask::bench::{self, HarnessCosts, Options, RunInfo};
use gatewasm_xtask::paths;

fn usage() -> &'static str {
    "usage: bench [--quick] [--reps N] [--concurrency N] [--instructions] [--only NAME]... [--harness-costs FILE]\n\
     NAME: part of a case name, e.g. tenant; =NAME: exactly that case, e.g. =jwt-to-header\n\
     --concurrency N: Envoy's worker threads (default 1; each has its own Wasm VMs)\n\
     --instructions: count Envoy's instructions per request under callgrind instead of timing\n\
       (GATEWASM_BENCH_KEEP_CALLGRIND=1 keeps the dumps, for callgrind_annotate)\n\
     --harness-costs: the JSON of the tests crate's `request-cost`, printed in the report"
}

fn main() -> Result<()> {
    let mut quick = false;
    let mut instructions = false;
    let mut reps: Option<usize> = None;
    let mut concurrency = 1;
    let mut only = Vec::new();
    let mut harness_costs = HarnessCosts::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--instructions" => instructions = true,
            "--reps" => {
                reps = Some(
                    args.next()
                        .context("--reps needs a number")?
                        .parse()
                        .context("--reps needs a number")?,
                )
            }
            "--concurrency" => {
                concurrency = args
                    .next()
                    .context("--concurrency needs a number")?
                    .parse()
                    .context("--concurrency needs a number")?;
                if concurrency == 0 {
                    bail!("--concurrency needs at least one worker");
                }
            }
            "--only" => only.push(args.next().context("--only needs a name")?),
            "--harness-costs" => {
                let file = args.next().context("--harness-costs needs a file")?;
                let json =
                    std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
                harness_costs = serde_json::from_str(&json)
                    .with_context(|| format!("{file}: not `request-cost` output"))?;
            }
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    let mut opts = if quick {
        Options::quick()
    } else {
        Options::full()
    };
    if let Some(reps) = reps {
        opts.reps = reps.max(1);
    }
    opts.only = only;
    opts.concurrency = concurrency;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        bail!(
            "the benchmark pins Envoy and the load generator to different CPUs: needs 2, have {cpus}"
        );
    }

    let gateway = bench::gateway_config()?;
    // One long-lived demo-IdP token for tenant acme: every case sends it (a repeated token).
    let token = gatewasm_xtask::demo_jwt::mint(&gatewasm_xtask::demo_jwt::DemoClaims {
        ttl: std::time::Duration::from_secs(6 * 3600),
        ..Default::default()
    })?;
    let mut cases = bench::cases(&gateway, &token)?;
    // Distinct tokens (a `jti` each) for the fresh-token cases, minted only if they run.
    let fresh_wanted = opts.only.is_empty()
        || bench::FRESH_TOKEN_CASES
            .iter()
            .any(|name| opts.only.iter().any(|o| selects(o, name)));
    if fresh_wanted {
        let tokens = (0..bench::FRESH_TOKENS)
            .map(|i| {
                gatewasm_xtask::demo_jwt::mint(&gatewasm_xtask::demo_jwt::DemoClaims {
                    ttl: std::time::Duration::from_secs(6 * 3600),
                    jti: Some(format!("bench-{i}")),
                    ..Default::default()
                })
            })
            .collect::<Result<Vec<String>>>()?;
        cases.extend(bench::fresh_token_cases(&gateway, &token, tokens.into())?);
    }
    // The forged-token cases need RSA keys: made only if they run.
    let forged_wanted = opts.only.is_empty()
        || bench::FORGED_TOKEN_CASES
            .iter()
            .any(|name| opts.only.iter().any(|o| selects(o, name)));
    if forged_wanted {
        cases.extend(bench::forged_token_cases(&gateway)?);
    }
    if !opts.only.is_empty() {
        cases.retain(|c| c.name == "baseline" || opts.only.iter().any(|o| selects(o, &c.name)));
    }
    let envoy_version = gatewasm_xtask::envoy::binary_version()?;
    // The native-module cases load libgatewasm_envoy.so and the dynamic-module platform cases
    // libgatewasm_platform.so, both built against Envoy 1.40's ABI: on another Envoy they are
    // left out; on 1.40 a missing library fails now, naming how to build it, rather than case
    // by case.
    if !envoy_version.starts_with("1.40.") {
        let before = cases.len();
        cases.retain(|c| !bench::dynamic_module::uses_module(&c.filters));
        if cases.len() < before {
            eprintln!(
                "Envoy {envoy_version}: the native-module and dynamic-module platform cases are \
                 left out (the dynamic modules are built for Envoy 1.40)"
            );
        }
    }
    let mut modules: Vec<&str> = cases
        .iter()
        .flat_map(|c| bench::dynamic_module::modules_used(&c.filters))
        .collect();
    modules.sort_unstable();
    modules.dedup();
    if !modules.is_empty() {
        bench::dynamic_module::library_dir(&modules)?;
    }
    bench::prepare_idle_filter()?;
    bench::prepare_platform_modules()?;
    let info = RunInfo {
        envoy_version,
        date: today()?,
        machine: machine(cpus),
        wasm_sizes: wasm_sizes()?,
        command: std::iter::once("just bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        costs: harness_costs,
    };
    if instructions {
        if concurrency != 1 {
            bail!("--instructions counts one worker (`--concurrency 1`)");
        }
        return count_instructions(&gateway, &cases, &info);
    }
    eprintln!(
        "benchmarking {} cases × {} repetitions on Envoy {} ({})",
        cases.len(),
        opts.reps,
        info.envoy_version,
        info.machine
    );
    let results = bench::run(cases, &gateway, &opts)?;
    // A partial run (`--only`) must not overwrite the full run of the same day.
    let mut dir = bench::results_dir(&info, quick);
    if concurrency != 1 {
        dir = with_suffix(dir, &format!("_concurrency{concurrency}"));
    }
    if !opts.only.is_empty() {
        dir = with_suffix(dir, "_partial");
        // Nor another partial run of the day: this one gets the next free directory.
        if dir.join("report.md").exists() {
            dir = (2..)
                .map(|n| with_suffix(dir.clone(), &format!("_{n}")))
                .find(|d| !d.join("report.md").exists())
                .context("no free results directory")?;
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let report = bench::report(&results, &info, &opts);
    std::fs::write(dir.join("report.md"), &report)?;
    let samples: BTreeMap<&str, &Vec<bench::Sample>> = results
        .cases
        .iter()
        .map(|c| c.name.as_str())
        .zip(&results.samples)
        .collect();
    std::fs::write(
        dir.join("samples.json"),
        serde_json::to_string_pretty(&samples)?,
    )?;
    bench::chart(
        &results,
        &format!(
            "gatewasm vs native — Envoy {}, {}",
            info.envoy_version, info.date
        ),
        &dir.join("chart.png"),
    )?;
    println!("{report}");
    println!("written to {}", dir.display());
    Ok(())
}

/// Whether `--only only` selects the case `name`: `only` is part of the name, or `=` and the
/// whole name (`=jwt-to-header` is that case without the fresh- and forged-token ones).
fn selects(only: &str, name: &str) -> bool {
    match only.strip_prefix('=') {
        Some(exact) => name == exact,
        None => name.contains(only),
    }
}

/// `--instructions`: each case once under callgrind; writes `instructions.md`.
fn count_instructions(
    gateway: &serde_json::Value,
    cases: &[bench::Case],
    info: &RunInfo,
) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("gatewasm-bench-callgrind-")
        .tempdir()?;
    // The dumps go with the run unless kept: a `native` build with debug symbols
    // (CARGO_PROFILE_NATIVE_DEBUG=true) then shows the module's own functions.
    let (_work, work_path) = if std::env::var_os("GATEWASM_BENCH_KEEP_CALLGRIND").is_some() {
        let kept = work.keep();
        eprintln!("callgrind dumps kept in {}", kept.display());
        (None, kept)
    } else {
        let path = work.path().to_path_buf();
        (Some(work), path)
    };
    let mut counts = Vec::with_capacity(cases.len());
    for case in cases {
        // A case that cannot be counted (e.g. V8 cannot create every VM of the five-filter
        // chain under valgrind) is reported as such; the others still are.
        let count = bench::count_instructions(gateway, case, &work_path).map_err(|e| {
            let why = format!("{e:#}");
            // The reason and the first line of evidence (e.g. Envoy's first error).
            why.lines().take(2).collect::<Vec<_>>().join(" ")
        });
        match &count {
            Ok(n) => eprintln!("{:<45} {n:>10.0} instructions/request", case.name),
            Err(why) => eprintln!("{:<45} not counted: {why}", case.name),
        }
        counts.push(count);
    }
    if counts.iter().all(|c| c.is_err()) {
        anyhow::bail!("no case could be counted");
    }
    let dir = with_suffix(bench::results_dir(info, false), "_instructions");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let report = bench::instructions_report(cases, &counts, info);
    let stem = if info.command.contains("--only") {
        "instructions_partial"
    } else {
        "instructions"
    };
    // Another run of the day keeps its report: this one gets the next free name.
    let path = (1..)
        .map(|n| match n {
            1 => dir.join(format!("{stem}.md")),
            n => dir.join(format!("{stem}_{n}.md")),
        })
        .find(|p| !p.exists())
        .context("no free report name")?;
    std::fs::write(&path, &report)?;
    println!("{report}");
    println!("written to {}", path.display());
    Ok(())
}

/// `dir` with `suffix` appended to its last component (`…_vm` → `…_vm_partial`).
fn with_suffix(mut dir: std::path::PathBuf, suffix: &str) -> std::path::PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    dir.set_file_name(name);
    dir
}

fn today() -> Result<String> {
    let out = Command::new("date").arg("-u").arg("+%Y-%m-%d").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine(cpus: usize) -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{host} ({cpus} CPUs, {model})")
}

fn wasm_sizes() -> Result<BTreeMap<String, u64>> {
    let dir = paths::wasm_dir();
    let mut sizes = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".wasm") && !name.starts_with("harness_test") {
            sizes.insert(name.to_string(), std::fs::metadata(&path)?.len());
        }
    }
    Ok(sizes)
}
