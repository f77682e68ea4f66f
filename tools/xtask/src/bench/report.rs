//! The reports of a run: the Markdown report of the CPU-time run ([`report`], with the facts of
//! the run, [`RunInfo`]) and its chart (added CPU per request, a PNG drawn with plotters), the
//! Markdown report of the instruction counts ([`instructions_report`]), and where they are
//! written ([`results_dir`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::dynamic_module::{DYNAMIC_MODULE_PLATFORM_CASES, PLATFORM_CALLS, PlatformCallKind};
use super::{
    CALLGRIND_REQUESTS, CALLGRIND_WARMUP, Case, Family, HostCall, Options, PLATFORM_CASES, Results,
    Spread, WASM_FLOOR,
};
use crate::paths;

/// Facts about the run for the report header.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub envoy_version: String,
    pub date: String,
    pub machine: String,
    pub wasm_sizes: BTreeMap<String, u64>,
    pub command: String,
    /// The same request in the harness, per filter and the chain: (name, repeated token,
    /// fresh token), from the tests crate's `request-cost` (empty: not printed).
    pub costs: super::HarnessCosts,
}

/// The Markdown report.
pub fn report(results: &Results, info: &RunInfo, opts: &Options) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "# gatewasm benchmark — Envoy {}, {}\n\n",
        info.envoy_version, info.date
    ));
    md.push_str(&format!(
        "Machine: {}. Command: `{}`. {} interleaved repetitions; per case and repetition: {:.1} s warm-up, \
         {:.1} s saturation with wrk (1 thread, {} connections, pinned to CPU {}), then {:.1} s paced at {} req/s \
         on one connection. Envoy: `--concurrency {}`, pinned to CPU {}, direct response (no upstream). \
         Run time {:.0} s.\n\n",
        info.machine,
        info.command,
        opts.reps,
        opts.warmup.as_secs_f64(),
        opts.saturate.as_secs_f64(),
        opts.connections,
        opts.load_cpu,
        opts.paced.as_secs_f64(),
        opts.paced_rate,
        opts.concurrency,
        opts.envoy_cpu,
        results.elapsed.as_secs_f64(),
    ));
    md.push_str(
        "**CPU/request** is Envoy's user+system CPU time during the saturation phase divided by the \
         requests served; **added** subtracts the baseline of the same repetition. Figures are \
         medians with min–max over the repetitions.\n\n",
    );
    md.push_str(&format!(
        "**above floor** subtracts the `{WASM_FLOOR}` case of the same repetition: what a gatewasm \
         filter costs beyond what any Proxy-Wasm filter costs in this Envoy.\n\n"
    ));
    md.push_str("| case | CPU µs/request | added µs | above floor µs | × native equivalent (added) | req/s | p50 µs | p99 µs | RSS MiB |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let floor = results.index(WASM_FLOOR);
    for (i, case) in results.cases.iter().enumerate() {
        let above_floor = match floor {
            Some(f) if case.family == Family::Gatewasm && f != i => {
                let ours = results.added_cpu(i);
                let base = results.added_cpu(f);
                let diffs: Vec<f64> = ours.iter().zip(&base).map(|(a, b)| a - b).collect();
                Spread::of(&diffs).show(2)
            }
            _ => "—".to_string(),
        };
        let cpu = results.spread(i, |s| s.cpu_us_per_request);
        let added = Spread::of(&results.added_cpu(i));
        let ratio = case
            .native_equivalent
            .as_deref()
            .and_then(|n| results.index(n))
            .map(|n| {
                let native = Spread::of(&results.added_cpu(n)).median;
                if native > 0.05 {
                    format!("{:.1}× `{}`", added.median / native, results.cases[n].name)
                } else {
                    format!("`{}` adds ≈0", results.cases[n].name)
                }
            })
            .unwrap_or_else(|| "—".into());
        let added = if case.family == Family::Baseline {
            "—".to_string()
        } else {
            added.show(2)
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            case.name,
            cpu.show(2),
            added,
            above_floor,
            ratio,
            results.spread(i, |s| s.requests_per_second).show(0),
            results.spread(i, |s| s.p50_us).show(0),
            results.spread(i, |s| s.p99_us).show(0),
            results.spread(i, |s| s.rss_mib).show(1),
        ));
    }
    let added_median = |i: usize| Spread::of(&results.added_cpu(i)).median;
    md.push_str(&native_module_section(
        &results.cases,
        |i| Some(added_median(i)),
        "added CPU µs/request (median)",
        2,
    ));
    md.push_str("\n`.wasm` sizes (release, `just build`):\n\n| module | bytes |\n|---|---|\n");
    for (name, size) in &info.wasm_sizes {
        md.push_str(&format!("| {name} | {size} |\n"));
    }
    if !info.costs.is_empty() {
        md.push_str(
            "\nThe same request in the harness (`gatewasm_tests::cost`, deterministic; `request-cost`): callbacks \
             into the VM, host calls and Wasm instructions per request, with a repeated / a fresh \
             token:\n\n| filter | callbacks | host calls | instructions |\n|---|---|---|---|\n",
        );
        for (name, repeated, fresh) in &info.costs {
            md.push_str(&format!(
                "| {name} | {} | {} / {} | {} / {} |\n",
                repeated.callbacks,
                repeated.host_calls,
                fresh.host_calls,
                repeated.instructions,
                fresh.instructions
            ));
        }
    }
    md.push_str(
        "\nThe chart (`chart.png`) shows the added CPU per request (median, whiskers min–max).\n",
    );
    md
}

/// The instruction-count report (`just bench --instructions`): per case, Envoy's instructions
/// per request, what the case adds to the baseline, and the ratio to its native equivalent.
pub fn instructions_report(
    cases: &[Case],
    counts: &[Result<f64, String>],
    info: &RunInfo,
) -> String {
    let baseline = cases
        .iter()
        .position(|c| c.family == Family::Baseline)
        .and_then(|i| counts.get(i).and_then(|c| c.as_ref().ok().copied()));
    let added = |i: usize| {
        let count = counts.get(i)?.as_ref().ok()?;
        baseline.map(|b| count - b)
    };
    let mut md = format!(
        "# gatewasm instruction counts — Envoy {}, {}\n\nMachine: {}. Command: `{}`. Envoy \
         (`--concurrency 1`, direct response) under valgrind's callgrind: {CALLGRIND_WARMUP} \
         requests to warm up, then {CALLGRIND_REQUESTS} counted, one at a time on one keep-alive \
         connection. **instructions/request** is every Envoy thread's user-space instruction \
         count divided by the requests; **added** subtracts the baseline. Counts, not time: \
         repeatable whatever the machine's load, but an instruction of V8's generated code and \
         one of Envoy's C++ need not cost the same.\n\n",
        info.envoy_version, info.date, info.machine, info.command
    );
    md.push_str("| case | instructions/request | added | × native equivalent (added) |\n");
    md.push_str("|---|---|---|---|\n");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let count = match counts.get(i) {
            Some(Ok(count)) => count,
            Some(Err(why)) => {
                md.push_str(&format!("| {} | not counted¹ | — | — |\n", case.name));
                // Errors of `count_instructions` mostly name the case already.
                failures.push(if why.starts_with(case.name.as_str()) {
                    why.clone()
                } else {
                    format!("{}: {why}", case.name)
                });
                continue;
            }
            None => continue,
        };
        let ratio = case
            .native_equivalent
            .as_deref()
            .and_then(|n| cases.iter().position(|c| c.name == n))
            .and_then(|n| Some((added(i)?, added(n)?)))
            .filter(|(_, native)| *native > 0.0)
            .map_or("—".to_string(), |(ours, native)| {
                format!(
                    "{:.1}× `{}`",
                    ours / native,
                    case.native_equivalent.as_deref().unwrap_or_default()
                )
            });
        let added = if case.family == Family::Baseline {
            "—".to_string()
        } else {
            added(i).map_or("—".to_string(), |a| format!("{a:.0}"))
        };
        md.push_str(&format!(
            "| {} | {count:.0} | {added} | {ratio} |\n",
            case.name
        ));
    }
    md.push_str(&native_module_section(
        cases,
        added,
        "added instructions/request",
        0,
    ));
    md.push_str(&dynamic_module_prices_section(cases, added));
    md.push_str(&breakdown_section(cases, added, &info.costs));
    if !failures.is_empty() {
        md.push_str(
            "\n¹ Not counted (the case's Envoy did not run it as configured under valgrind):\n",
        );
        for f in failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    md
}

/// What the platform cases of one run say a Proxy-Wasm filter's parts cost in this Envoy
/// (instructions per request): being present, each VM entry, each host call by import name.
#[derive(Debug, PartialEq)]
struct PlatformPrices {
    presence: f64,
    vm_entry: f64,
    calls: BTreeMap<&'static str, f64>,
}

/// The prices from the platform cases' added counts (`None` without the 0- and 3-entry cases):
/// presence is the filter Envoy never enters, a VM entry a third of what three entries add to
/// it, and a host call an eighth of what its eight calls add to the three entries.
fn platform_prices(cases: &[Case], added: impl Fn(usize) -> Option<f64>) -> Option<PlatformPrices> {
    let added_by_name = |name: &str| cases.iter().position(|c| c.name == name).and_then(&added);
    let presence = added_by_name(PLATFORM_CASES.first()?.name)?;
    let three_entries = PLATFORM_CASES
        .iter()
        .find(|c| c.stream_exports.len() == 3 && c.calls.is_empty())?;
    let three = added_by_name(three_entries.name)?;
    let mut calls = BTreeMap::new();
    for case in PLATFORM_CASES
        .iter()
        .filter(|c| c.stream_exports.len() == 3)
    {
        if let ([(call, times)], Some(count)) = (case.calls, added_by_name(case.name)) {
            calls.insert(call.import(), (count - three) / f64::from(*times));
        }
    }
    // The write-back case is a map read and a write: the write is what it adds to the read.
    let read = HostCall::HeaderPairs.import();
    let write = HostCall::HeaderPairsWriteBack.import();
    if let (Some(both), Some(read)) = (calls.get(write).copied(), calls.get(read).copied()) {
        calls.insert(write, both - read);
    }
    Some(PlatformPrices {
        presence,
        vm_entry: (three - presence) / 3.0,
        calls,
    })
}

/// What the dynamic-module platform cases of one run say a dynamic-module filter's parts cost
/// (instructions per request): being present, and each callback by kind.
#[derive(Debug, PartialEq)]
struct DynamicModulePrices {
    presence: f64,
    calls: Vec<(PlatformCallKind, f64)>,
}

/// The prices from the dynamic-module platform cases' added counts (`None` without the presence
/// case): presence is what the filter that does nothing adds, a callback an eighth of what its
/// case's eight calls add to presence.
fn dynamic_module_prices(
    cases: &[Case],
    added: impl Fn(usize) -> Option<f64>,
) -> Option<DynamicModulePrices> {
    let added_by_name = |name: &str| cases.iter().position(|c| c.name == name).and_then(&added);
    let presence_case = DYNAMIC_MODULE_PLATFORM_CASES
        .iter()
        .find(|c| c.calls.is_none())?;
    let presence = added_by_name(presence_case.name)?;
    let calls = DYNAMIC_MODULE_PLATFORM_CASES
        .iter()
        .filter_map(|c| {
            let kind = c.calls?;
            let count = added_by_name(c.name)?;
            Some((kind, (count - presence) / f64::from(PLATFORM_CALLS)))
        })
        .collect();
    Some(DynamicModulePrices { presence, calls })
}

/// The dynamic-module prices table (empty without the presence case in the run).
fn dynamic_module_prices_section(cases: &[Case], added: impl Fn(usize) -> Option<f64>) -> String {
    let Some(prices) = dynamic_module_prices(cases, added) else {
        return String::new();
    };
    let mut md = format!(
        "\n## Dynamic-module prices\n\nWhat Envoy's dynamic-module ABI costs, from the \
         `dynamic-module filter, …` cases: `libgatewasm_platform.so` \
         (tools/dynamic-module-platform), a filter exporting every hook Envoy 1.40 looks up that \
         does per request only what its configuration says. **Presence** is what the filter \
         that does nothing adds to the baseline (Envoy creating it and entering its hooks); a \
         callback's price is (its case − presence) ÷ {PLATFORM_CALLS}, its case making \
         {PLATFORM_CALLS} of them per request.\n\n| part | instructions/request |\n|---|---|\n\
         | filter present (every hook exported) | {:.0} |\n",
        prices.presence
    );
    for (kind, price) in &prices.calls {
        md.push_str(&format!("| one {} | {price:.0} |\n", kind.label()));
    }
    md
}

/// Where each gatewasm case's added instructions go: the platform's prices (this run's platform
/// cases) times what the harness counted for the same request — filters present, VM entries,
/// host calls by name — and the remainder, which is the modules' own work plus whatever has no
/// price. Empty unless the run has the platform cases and harness costs for a case.
fn breakdown_section(
    cases: &[Case],
    added: impl Fn(usize) -> Option<f64> + Copy,
    costs: &super::HarnessCosts,
) -> String {
    let Some(prices) = platform_prices(cases, added) else {
        return String::new();
    };
    let mut md = String::from(
        "\n## Where the instructions go\n\nEach gatewasm case's added instructions, priced \
         part by part: the platform cases of this run price a filter's presence (the \
         0-entry module), a VM entry and each kind of host call; the harness counts, for the \
         same request (repeated token), the callbacks and the host calls by name \
         (`request-cost`). Host calls of a kind no platform case prices (and the foreign \
         functions other than `clear_route_cache`, priced as it) fall into the remainder, \
         with the module's own work (its Wasm instructions, counted by the harness).\n",
    );
    let mut any = false;
    for (i, case) in cases.iter().enumerate() {
        let Some(total) = added(i) else { continue };
        let Some((_, cost, _)) = costs.iter().find(|(name, _, _)| *name == case.name) else {
            continue;
        };
        any = true;
        let filters = case.filters.len() as f64;
        let mut rows = vec![
            ("filters present".to_string(), filters, prices.presence),
            (
                "VM entries (callbacks)".to_string(),
                cost.callbacks as f64,
                prices.vm_entry,
            ),
        ];
        let mut unpriced = Vec::new();
        for (name, &n) in &cost.host_calls_by_name {
            match prices.calls.get(name.as_str()) {
                Some(&price) => rows.push((format!("`{name}`"), n as f64, price)),
                None => unpriced.push(format!("`{name}` × {n}")),
            }
        }
        md.push_str(&format!(
            "\n### {}: {total:.0} added\n\n| part | per request | price | instructions | share |\n\
             |---|---|---|---|---|\n",
            case.name
        ));
        let mut priced = 0.0;
        for (part, n, price) in &rows {
            let sum = n * price;
            priced += sum;
            md.push_str(&format!(
                "| {part} | {n} | {price:.0} | {sum:.0} | {:.0}% |\n",
                100.0 * sum / total
            ));
        }
        let rest = total - priced;
        let unpriced = if unpriced.is_empty() {
            String::new()
        } else {
            format!("; unpriced calls: {}", unpriced.join(", "))
        };
        md.push_str(&format!(
            "| remainder: the module's work ({} Wasm instructions){unpriced} | — | — | {rest:.0} | \
             {:.0}% |\n",
            cost.instructions,
            100.0 * rest / total
        ));
    }
    if any { md } else { String::new() }
}

/// What the native-module cases are, and each one's figure next to its Proxy-Wasm self's
/// (`added(i)`: case `i`'s figure above the baseline, `None` if it has none). Empty when the run
/// has no native-module case.
fn native_module_section(
    cases: &[Case],
    added: impl Fn(usize) -> Option<f64>,
    what: &str,
    decimals: usize,
) -> String {
    if !cases.iter().any(|c| c.family == Family::NativeModule) {
        return String::new();
    }
    let mut md = String::from(
        "\n**Native module** cases run the same filters with the same configurations as the \
         Proxy-Wasm cases, compiled to native code in `libgatewasm_envoy.so` \
         (hosts/envoy-dynamic-module, `just build-native`) and loaded by Envoy's dynamic-module \
         filter (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`): no Wasm VM. The configurations are \
         gateway.yaml's (rate limits raised so nothing is denied), which are also the stages of \
         `envoy-configs/gateway-native.yaml`: inline JWKS and local rate limits (the module's \
         remote JWKS and rate-limit service calls are not measured). \
         On the module jwt-to-header verifies ES256 with ring (the module answers the stage's \
         `verify_signature` itself: a dynamic module cannot call Envoy's), not with Envoy's \
         BoringSSL. `native module (N separate)` is the N filters as N \
         dynamic-module filters; `native module chain mode (N)` is one `chain` filter.\n\n",
    );
    md.push_str(&format!(
        "| native-module case | {what} | Proxy-Wasm case | {what} | Proxy-Wasm ÷ native module |\n\
         |---|---|---|---|---|\n"
    ));
    let show = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.decimals$}"));
    for (i, case) in cases.iter().enumerate() {
        if case.family != Family::NativeModule {
            continue;
        }
        let ours = added(i);
        let (wasm_name, theirs) = match &case.proxy_wasm_self {
            Some(name) => match cases.iter().position(|c| &c.name == name) {
                Some(w) => (name.clone(), added(w)),
                None => (format!("{name} (not in this run)"), None),
            },
            None => ("—".to_string(), None),
        };
        let ratio = match (ours, theirs) {
            (Some(ours), Some(theirs)) if ours > 0.0 => format!("{:.1}×", theirs / ours),
            _ => "—".to_string(),
        };
        md.push_str(&format!(
            "| {} | {} | {wasm_name} | {} | {ratio} |\n",
            case.name,
            show(ours),
            show(theirs)
        ));
    }
    md
}

/// A horizontal bar chart of the added CPU per request, with min–max whiskers.
pub fn chart(results: &Results, title: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    register_font()?;
    let rows: Vec<(String, Family, Spread)> = results
        .cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.family != Family::Baseline)
        .map(|(i, c)| (c.name.clone(), c.family, Spread::of(&results.added_cpu(i))))
        .collect();
    ensure!(!rows.is_empty(), "nothing to chart");
    let max = rows.iter().map(|(_, _, s)| s.max).fold(1.0f64, f64::max) * 1.15;
    let height = 120 + 42 * rows.len() as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the chart: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d(0f64..max, -0.5f64..(n - 0.5))
        .map_err(|e| err(&e))?;
    let labels: Vec<String> = rows.iter().map(|(name, _, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("CPU µs per request added to the baseline (median, min–max)")
        .y_labels(rows.len())
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            // Top row first.
            let idx = rows_len_minus(labels.len(), i as usize);
            labels.get(idx).cloned().unwrap_or_default()
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (row, (_, family, spread)) in rows.iter().enumerate() {
        let y = (rows.len() - 1 - row) as f64;
        let color = match family {
            Family::Gatewasm => RGBColor(31, 119, 180),
            Family::Platform => RGBColor(127, 127, 127),
            Family::NativeModule => RGBColor(44, 160, 44),
            _ => RGBColor(255, 127, 14),
        };
        let value = spread.median.max(0.0);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.32), (value, y + 0.32)],
                color.filled(),
            )))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(spread.min.max(0.0), y), (spread.max.max(0.0), y)],
                BLACK.stroke_width(2),
            )))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{:.1}", spread.median),
                (spread.max.max(value) + max * 0.01, y + 0.15),
                ("sans-serif", 15),
            )))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn rows_len_minus(len: usize, i: usize) -> usize {
    len.saturating_sub(1).saturating_sub(i)
}

/// Where the chart's font comes from: DejaVu Sans (Debian `fonts-dejavu-core`, which `just
/// bench` installs), registered with plotters' ab_glyph text backend.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT_PATH)
        .with_context(|| format!("reading {FONT_PATH} (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT_PATH} is not a usable font"))
}

/// `<workspace>/tests/bench-results/<date>_envoy-<version>_<machine>/`.
pub fn results_dir(info: &RunInfo, quick: bool) -> PathBuf {
    let machine: String = info
        .machine
        .split_whitespace()
        .next()
        .unwrap_or("machine")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    paths::workspace_root()
        .join("tests/bench-results")
        .join(format!(
            "{}_envoy-{}_{}{}",
            info.date,
            info.envoy_version,
            machine,
            if quick { "_quick" } else { "" }
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_report_subtracts_the_baseline_and_compares_with_the_native_case() {
        let case = |name: &str, family, native: Option<&str>| Case {
            name: name.to_string(),
            family,
            filters: vec![],
            native_request_id: false,
            native_equivalent: native.map(str::to_string),
            proxy_wasm_self: None,
            headers: vec![],
            rotating_tokens: None,
            expected_status: 200,
        };
        let cases = [
            case("baseline", Family::Baseline, None),
            case("ours", Family::Gatewasm, Some("theirs")),
            case("theirs", Family::Native, None),
        ];
        let info = RunInfo {
            envoy_version: "1.40.0".into(),
            date: "2026-11-29".into(),
            machine: "vm".into(),
            wasm_sizes: BTreeMap::new(),
            command: "just bench --instructions".into(),
            costs: vec![],
        };
        let md = instructions_report(
            &cases,
            &[Ok(100_000.0), Ok(160_000.0), Ok(120_000.0)],
            &info,
        );
        assert!(
            md.contains("| ours | 160000 | 60000 | 3.0× `theirs` |"),
            "{md}"
        );
        assert!(md.contains("| theirs | 120000 | 20000 | — |"), "{md}");
        assert!(md.contains("| baseline | 100000 | — | — |"), "{md}");
        let md = instructions_report(
            &cases,
            &[
                Ok(100_000.0),
                Err("Envoy logged errors".into()),
                Ok(120_000.0),
            ],
            &info,
        );
        assert!(md.contains("| ours | not counted¹ | — | — |"), "{md}");
        assert!(md.contains("- ours: Envoy logged errors"), "{md}");
        assert!(!md.contains("Native module"), "no native-module case: {md}");
    }

    #[test]
    fn instruction_report_prices_a_case_part_by_part_with_the_platform_cases() {
        let case = |name: &str, family, filters: usize| Case {
            name: name.to_string(),
            family,
            filters: vec![serde_json::Value::Null; filters],
            native_request_id: false,
            native_equivalent: None,
            proxy_wasm_self: None,
            headers: vec![],
            rotating_tokens: None,
            expected_status: 200,
        };
        // Presence 4,800, an entry 1,500, each call kind its own price (8 calls per case).
        let price = |call: HostCall| match call {
            HostCall::HeaderPairs => 11_800.0,
            HostCall::HeaderPairsWriteBack => 11_800.0 + 6_000.0,
            HostCall::ReplaceHeader => 4_000.0,
            _ => 1_000.0,
        };
        let mut cases = vec![case("baseline", Family::Baseline, 0)];
        let mut counts = vec![Ok(100_000.0)];
        for p in &PLATFORM_CASES {
            cases.push(case(p.name, Family::Platform, 1));
            let entries = p.stream_exports.len() as f64 * 1_500.0;
            let calls: f64 = p.calls.iter().map(|(c, n)| price(*c) * f64::from(*n)).sum();
            counts.push(Ok(100_000.0 + 4_800.0 + entries + calls));
        }
        cases.push(case("chain", Family::Gatewasm, 1));
        // 1 map read, 2 header writes, 1 map write, and a call no case prices; 7,000 left.
        counts.push(Ok(100_000.0
            + 4_800.0
            + 4.0 * 1_500.0
            + 11_800.0
            + 8_000.0
            + 6_000.0
            + 7_000.0));
        let cost = super::super::RequestCost {
            callbacks: 4,
            host_calls: 5,
            instructions: 90_000,
            host_calls_by_name: [
                ("proxy_get_header_map_pairs", 1),
                ("proxy_replace_header_map_value", 2),
                ("proxy_set_header_map_pairs", 1),
                ("proxy_unpriced_call", 1),
            ]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        };
        let info = RunInfo {
            envoy_version: "1.40.0".into(),
            date: "2026-12-06".into(),
            machine: "vm".into(),
            wasm_sizes: BTreeMap::new(),
            command: "just bench --instructions".into(),
            costs: vec![("chain".into(), cost.clone(), cost)],
        };
        let md = instructions_report(&cases, &counts, &info);
        assert!(md.contains("### chain: 43600 added"), "{md}");
        assert!(
            md.contains("| filters present | 1 | 4800 | 4800 | 11% |"),
            "{md}"
        );
        assert!(
            md.contains("| VM entries (callbacks) | 4 | 1500 | 6000 | 14% |"),
            "{md}"
        );
        assert!(
            md.contains("| `proxy_get_header_map_pairs` | 1 | 11800 | 11800 |"),
            "{md}"
        );
        assert!(
            md.contains("| `proxy_replace_header_map_value` | 2 | 4000 | 8000 |"),
            "{md}"
        );
        assert!(
            md.contains("| `proxy_set_header_map_pairs` | 1 | 6000 | 6000 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| remainder: the module's work (90000 Wasm instructions); unpriced calls: \
                 `proxy_unpriced_call` × 1 | — | — | 7000 | 16% |"
            ),
            "{md}"
        );
        // Without the platform cases there is nothing to price with: no section.
        let md = instructions_report(&cases[..1], &counts[..1], &info);
        assert!(!md.contains("Where the instructions go"), "{md}");
    }

    #[test]
    fn instruction_report_prices_the_dynamic_module_abi_with_its_platform_cases() {
        let case = |name: &str, family| Case {
            name: name.to_string(),
            family,
            filters: vec![serde_json::Value::Null],
            native_request_id: false,
            native_equivalent: None,
            proxy_wasm_self: None,
            headers: vec![],
            rotating_tokens: None,
            expected_status: 200,
        };
        // Presence 4,400; each callback kind its own price, 8 calls per case.
        let price = |kind: PlatformCallKind| match kind {
            PlatformCallKind::HeaderRead => 460.0,
            PlatformCallKind::HeaderMapRead => 1_250.0,
            PlatformCallKind::RequestHeaderWrite => 1_800.0,
            PlatformCallKind::ResponseHeaderWrite => 2_200.0,
            PlatformCallKind::CounterIncrement => 90.0,
        };
        let mut cases = vec![case("baseline", Family::Baseline)];
        let mut counts = vec![Ok(100_000.0)];
        for p in &DYNAMIC_MODULE_PLATFORM_CASES {
            cases.push(case(p.name, Family::Platform));
            let calls = p
                .calls
                .map_or(0.0, |k| price(k) * f64::from(PLATFORM_CALLS));
            counts.push(Ok(100_000.0 + 4_400.0 + calls));
        }
        let info = RunInfo {
            envoy_version: "1.40.0".into(),
            date: "2026-12-06".into(),
            machine: "vm".into(),
            wasm_sizes: BTreeMap::new(),
            command: "just bench --instructions".into(),
            costs: vec![],
        };
        let md = instructions_report(&cases, &counts, &info);
        assert!(md.contains("## Dynamic-module prices"), "{md}");
        for row in [
            "| filter present (every hook exported) | 4400 |",
            "| one request-header read (`get_header`) | 460 |",
            "| one request-header map read (`get_headers_size` + `get_headers`) | 1250 |",
            "| one request-header write (`set_header`) | 1800 |",
            "| one response-header write (`set_header`) | 2200 |",
            "| one counter increment (`increment_counter`) | 90 |",
        ] {
            assert!(md.contains(row), "{row} missing: {md}");
        }
        // A callback case without its count is left out; without presence, no section.
        counts[2] = Err("valgrind failed".into());
        let md = instructions_report(&cases, &counts, &info);
        assert!(!md.contains("| one request-header read"), "{md}");
        assert!(
            md.contains("| one request-header write (`set_header`) | 1800 |"),
            "{md}"
        );
        counts[1] = Err("valgrind failed".into());
        let md = instructions_report(&cases, &counts, &info);
        assert!(!md.contains("Dynamic-module prices"), "{md}");
    }

    #[test]
    fn instruction_report_compares_a_native_module_case_with_its_proxy_wasm_self() {
        let case = |name: &str, family, own: Option<&str>| Case {
            name: name.to_string(),
            family,
            filters: vec![],
            native_request_id: false,
            native_equivalent: None,
            proxy_wasm_self: own.map(str::to_string),
            headers: vec![],
            rotating_tokens: None,
            expected_status: 200,
        };
        let cases = [
            case("baseline", Family::Baseline, None),
            case("f", Family::Gatewasm, None),
            case("f (native module)", Family::NativeModule, Some("f")),
            case("g (native module)", Family::NativeModule, Some("g")),
        ];
        let info = RunInfo {
            envoy_version: "1.40.0".into(),
            date: "2026-12-06".into(),
            machine: "vm".into(),
            wasm_sizes: BTreeMap::new(),
            command: "just bench --instructions".into(),
            costs: vec![],
        };
        let md = instructions_report(
            &cases,
            &[Ok(100_000.0), Ok(140_000.0), Ok(110_000.0), Ok(105_000.0)],
            &info,
        );
        assert!(md.contains("ENVOY_DYNAMIC_MODULES_SEARCH_PATH"), "{md}");
        assert!(
            md.contains("| f (native module) | 10000 | f | 40000 | 4.0× |"),
            "{md}"
        );
        assert!(
            md.contains("| g (native module) | 5000 | g (not in this run) | — | — |"),
            "{md}"
        );
    }
}
