//! The report of a scenario run: each host's outcome and each step's expectations as judged in
//! each host, with the differences between the hosts ([`assemble`] → [`Report`]), for a shape
//! of the chain other than the separate modules also the differences from the separate modules'
//! run ([`Report::compare_with_separate`]) and the known shape differences that excuse some of
//! them, the verdict ([`Report::passed`]) and the readable rendering ([`Report::render`]).

use std::fmt::Write as _;

use regex::Regex;

use super::check::{Difference, body_text, differences, verdicts};
use super::load::observable_matches;
use super::{HostOutcome, Loaded, Message, Observed, Plugin, Shape};

/// One expectation, evaluated in each host.
#[derive(Debug, Clone)]
pub struct CheckRow {
    /// What is checked, readable.
    pub what: String,
    /// The observable it judges (`client.header.x-request-id`, `metric.<name>`, …).
    pub observable: String,
    /// The harness's verdict: `Err` says what was seen instead (`None`: a shape the harness
    /// does not run, [`Shape::in_harness`]).
    pub harness: Option<Result<(), String>>,
    /// Envoy's verdict (`None`: harness-only scenario).
    pub envoy: Option<Result<(), String>>,
    /// A known difference of this shape names the observable here: the index of the entry in
    /// `shape_differences`. The row is shown, not judged.
    pub excused: Option<usize>,
}

impl CheckRow {
    fn held(&self) -> bool {
        self.harness.as_ref().is_none_or(Result::is_ok)
            && self.envoy.as_ref().is_none_or(Result::is_ok)
    }
}

/// A difference a known shape difference excuses: the index of its entry, and the difference.
#[derive(Debug, Clone)]
pub struct Excused {
    /// The entry of `shape_differences`.
    pub entry: usize,
    /// The difference, readable.
    pub text: String,
}

/// A step's results.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// "step 2 (name): GET /path".
    pub title: String,
    /// The expectations.
    pub checks: Vec<CheckRow>,
    /// Where the two hosts' observations differ (empty: they agree).
    pub differences: Vec<String>,
    /// Where this shape's observations differ from the separate modules' in the same host
    /// (`harness: …`, `envoy: …`; empty: the same, or not compared).
    pub versus_separate: Vec<String>,
    /// Differences (between the hosts, or from the separate modules) that a known shape
    /// difference excuses.
    pub excused: Vec<Excused>,
    /// The observations (harness, Envoy).
    pub observed: (Option<Observed>, Option<Observed>),
    /// The separate modules' observations (harness, Envoy), when compared.
    pub separate_observed: (Option<Observed>, Option<Observed>),
}

/// The result of running a scenario in both hosts.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario, in the shape that ran.
    pub loaded: Loaded,
    /// The harness's outcome (`None`: a shape the harness does not run, [`Shape::in_harness`]).
    pub harness: Option<HostOutcome>,
    /// Envoy's outcome (`None`: harness-only).
    pub envoy: Option<HostOutcome>,
    /// Envoy's version, when it ran.
    pub envoy_version: Option<String>,
    /// Scenario-level problems (a runner failed, the config was or was not rejected, …).
    pub problems: Vec<String>,
    /// Scenario-level differences a known shape difference excuses (the rejection's log line).
    pub excused: Vec<Excused>,
    /// Per step.
    pub steps: Vec<StepReport>,
    /// Whether this shape was compared with the separate modules' run.
    pub compared: bool,
    /// Problems of that comparison (a host ran one shape and not the other, …).
    pub versus_problems: Vec<String>,
}

/// The entry of `shape_differences` that names `observable` for the report's shape in step
/// `step` (0-based; `None`: not a step's, e.g. the log), if any.
fn excuse(loaded: &Loaded, step: Option<usize>, observable: &str) -> Option<usize> {
    if loaded.shape == Shape::Separate {
        return None;
    }
    loaded.scenario.shape_differences.iter().position(|d| {
        Shape::from(d.shape) == loaded.shape
            && match step {
                Some(i) => d.steps.is_empty() || d.steps.contains(&(i + 1)),
                None => d.steps.is_empty(),
            }
            && d.observables
                .iter()
                .any(|pattern| observable_matches(pattern, observable))
    })
}

fn kind(o: &HostOutcome) -> &'static str {
    match o {
        HostOutcome::Ran(_) => "ran",
        HostOutcome::ConfigRejected(_) => "had its configuration rejected",
        HostOutcome::Failed(_) => "failed",
    }
}

pub(super) fn assemble(
    loaded: Loaded,
    harness: Option<HostOutcome>,
    envoy: Option<HostOutcome>,
    envoy_version: Option<String>,
) -> Report {
    let mut problems = Vec::new();
    let mut excused = Vec::new();
    let mut steps = Vec::new();
    let rejected = loaded.scenario.config_rejected.clone();
    // A known difference of the shape that excuses its refusing the configuration the
    // separate modules accept (observable `config`): every step's expectations go unjudged.
    let mut refusal_excused = None;
    let outcomes: Vec<(&str, &HostOutcome)> = [
        harness.as_ref().map(|h| ("harness", h)),
        envoy.as_ref().map(|e| ("envoy", e)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (host, outcome) in &outcomes {
        match (outcome, &rejected) {
            (HostOutcome::Failed(e), _) => problems.push(format!("{host}: {e}")),
            (HostOutcome::ConfigRejected(log), None) => {
                let text = format!(
                    "{host}: the configuration was rejected:\n{}",
                    indent(&crate::envoy::tail(log, 30), "    ")
                );
                match excuse(&loaded, None, "config") {
                    Some(entry) => {
                        refusal_excused = Some(entry);
                        excused.push(Excused { entry, text });
                    }
                    None => problems.push(text),
                }
            }
            (HostOutcome::Ran(_), Some(_)) => {
                problems.push(format!("{host}: the configuration was accepted"));
            }
            (HostOutcome::ConfigRejected(log), Some(want)) => {
                // The chain shape reports a stage's error in its own form.
                let pattern = if loaded.shape.reports_as_chain() {
                    want.chain_log.as_ref().or(want.log.as_ref())
                } else {
                    want.log.as_ref()
                };
                if let Some(pattern) = pattern
                    && !Regex::new(pattern).is_ok_and(|re| re.is_match(log))
                {
                    let text = format!(
                        "{host}: the configuration was rejected, but no log line matches {pattern:?}; the log:\n{}",
                        indent(&crate::envoy::tail(log, 30), "    ")
                    );
                    match excuse(&loaded, None, "log") {
                        Some(entry) => excused.push(Excused { entry, text }),
                        None => problems.push(text),
                    }
                }
            }
            (HostOutcome::Ran(_), None) => {}
        }
    }
    let ran = |o: &HostOutcome| match o {
        HostOutcome::Ran(v) => Some(v.clone()),
        _ => None,
    };
    let h_obs = harness.as_ref().and_then(ran);
    let e_obs = envoy.as_ref().and_then(ran);
    for (i, step) in loaded.scenario.steps.iter().enumerate() {
        let mut title = format!("step {}", i + 1);
        if let Some(n) = &step.name {
            let _ = write!(title, " ({n})");
        }
        let _ = write!(title, ": {} {}", step.request.method, step.request.path);
        let hv = h_obs.as_ref().map(|all| verdicts(step, i, all));
        let ev = e_obs.as_ref().map(|all| verdicts(step, i, all));
        let n = hv
            .as_ref()
            .map(Vec::len)
            .or(ev.as_ref().map(Vec::len))
            .unwrap_or(0);
        let mut checks = Vec::new();
        for k in 0..n {
            let (what, observable) = hv
                .as_ref()
                .and_then(|v| v.get(k))
                .or(ev.as_ref().and_then(|v| v.get(k)))
                .map(|v| (v.what.clone(), v.observable.clone()))
                .unwrap_or_default();
            let pick = |v: &Option<Vec<super::check::Verdict>>| {
                v.as_ref().and_then(|v| v.get(k)).map(|v| v.result.clone())
            };
            checks.push(CheckRow {
                excused: excuse(&loaded, Some(i), &observable).or(refusal_excused),
                what,
                observable,
                harness: harness
                    .as_ref()
                    .map(|_| pick(&hv).unwrap_or_else(|| Err("did not run".into()))),
                envoy: envoy
                    .as_ref()
                    .map(|_| pick(&ev).unwrap_or_else(|| Err("did not run".into()))),
            });
        }
        let (ho, eo) = (
            h_obs.as_ref().and_then(|v| v.get(i)).cloned(),
            e_obs.as_ref().and_then(|v| v.get(i)).cloned(),
        );
        let mut host_differences = Vec::new();
        let mut step_excused = Vec::new();
        if let (Some(h), Some(e)) = (&ho, &eo) {
            for Difference { observable, text } in differences(step, h, e, ("harness", "envoy")) {
                match excuse(&loaded, Some(i), &observable) {
                    Some(entry) => step_excused.push(Excused {
                        entry,
                        text: format!("hosts: {text}"),
                    }),
                    None => host_differences.push(text),
                }
            }
        }
        steps.push(StepReport {
            title,
            checks,
            differences: host_differences,
            versus_separate: Vec::new(),
            excused: step_excused,
            observed: (ho, eo),
            separate_observed: (None, None),
        });
    }
    Report {
        loaded,
        harness,
        envoy,
        envoy_version,
        problems,
        excused,
        steps,
        compared: false,
        versus_problems: Vec::new(),
    }
}

/// The line of a refusal's log that says why (the module's or the plugin's error), else its
/// last line.
fn refusal_line(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("invalid plugin configuration") || l.contains("not yet supported"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Report {
    /// The shape's observations against the separate modules' (`separate`: the same scenario's
    /// report in [`Shape::Separate`]), host by host and step by step, with the differences the
    /// scenario's `shape_differences` name for this shape excused. Nothing for the separate
    /// shape itself.
    pub fn compare_with_separate(&mut self, separate: &Report) {
        if self.loaded.shape == Shape::Separate {
            return;
        }
        self.compared = true;
        let shape = self.loaded.shape.name();
        let config_excuse = excuse(&self.loaded, None, "config");
        let hosts = [
            ("harness", separate.harness.as_ref(), self.harness.as_ref()),
            ("envoy", separate.envoy.as_ref(), self.envoy.as_ref()),
        ];
        for (host, theirs, ours) in hosts {
            if host == "harness" && !self.loaded.shape.in_harness() {
                continue;
            }
            let (theirs, ours) = match (theirs, ours) {
                (Some(t), Some(o)) => (t, o),
                (None, None) => continue,
                (t, o) => {
                    self.versus_problems.push(format!(
                        "{host} ran with the separate modules: {}, in the {shape} shape: {}",
                        t.is_some(),
                        o.is_some()
                    ));
                    continue;
                }
            };
            match (theirs, ours, config_excuse) {
                (HostOutcome::Ran(a), HostOutcome::Ran(b), _) => {
                    for (i, step) in self.loaded.scenario.steps.iter().enumerate() {
                        let (Some(sa), Some(sb)) = (a.get(i), b.get(i)) else {
                            continue;
                        };
                        let mut versus = Vec::new();
                        let mut excused = Vec::new();
                        for Difference { observable, text } in
                            differences(step, sa, sb, ("separate", shape))
                        {
                            let text = format!("{host}: {text}");
                            match excuse(&self.loaded, Some(i), &observable) {
                                Some(entry) => excused.push(Excused { entry, text }),
                                None => versus.push(text),
                            }
                        }
                        if let Some(report) = self.steps.get_mut(i) {
                            report.versus_separate.extend(versus);
                            report.excused.extend(excused);
                            match host {
                                "harness" => report.separate_observed.0 = Some(sa.clone()),
                                _ => report.separate_observed.1 = Some(sa.clone()),
                            }
                        }
                    }
                }
                (HostOutcome::ConfigRejected(_), HostOutcome::ConfigRejected(_), _) => {}
                (HostOutcome::Ran(_), HostOutcome::ConfigRejected(log), Some(entry)) => {
                    self.excused.push(Excused {
                        entry,
                        text: format!(
                            "{host}: the separate modules ran, the {shape} shape refused the \
                             configuration: {}",
                            refusal_line(log)
                        ),
                    });
                }
                (t, o, _) => self.versus_problems.push(format!(
                    "{host}: the separate modules' run {}, the {shape} shape's {}{}",
                    kind(t),
                    kind(o),
                    match t {
                        HostOutcome::Failed(e) => format!(" (the separate modules: {e})"),
                        _ => String::new(),
                    }
                )),
            }
        }
    }

    /// Whether the scenario passed: every expectation held in every host that ran and the hosts
    /// agree — or, for a `known_disagreement` scenario, every expectation held in Envoy and the
    /// hosts still disagree; and a shape other than the separate modules observed what they
    /// observed, but for its known differences (each of which still differs).
    pub fn passed(&self) -> bool {
        self.own_verdict() && self.same_as_separate()
    }

    fn own_verdict(&self) -> bool {
        if self.known_disagreement_applies() {
            let envoy_ok = self.steps.iter().all(|s| {
                s.checks
                    .iter()
                    .all(|c| c.excused.is_some() || c.envoy.as_ref().is_none_or(Result::is_ok))
            });
            let envoy_ran = matches!(self.envoy, Some(HostOutcome::Ran(_)));
            return envoy_ok && envoy_ran && self.hosts_disagree();
        }
        self.all_held_and_agree()
    }

    /// Whether this shape observed what the separate modules did (true for the separate shape,
    /// and when not compared), and every known difference of the shape still differs.
    fn same_as_separate(&self) -> bool {
        self.versus_problems.is_empty()
            && self.steps.iter().all(|s| s.versus_separate.is_empty())
            && self.stale_differences().is_empty()
    }

    /// Whether the scenario's `known_disagreement` (between the harness and Envoy) is judged:
    /// both hosts ran it. A shape that runs in Envoy alone must meet the expectations there.
    fn known_disagreement_applies(&self) -> bool {
        self.loaded.scenario.known_disagreement.is_some()
            && self.envoy.is_some()
            && self.harness.is_some()
    }

    fn all_held_and_agree(&self) -> bool {
        self.problems.is_empty()
            && self.steps.iter().all(|s| {
                s.differences.is_empty() && s.checks.iter().all(|c| c.excused.is_some() || c.held())
            })
    }

    /// Whether the hosts disagree (an expectation holds in one and not the other, or the
    /// observations differ).
    pub fn hosts_disagree(&self) -> bool {
        self.steps.iter().any(|s| {
            !s.differences.is_empty()
                || s.checks.iter().any(|c| {
                    c.excused.is_none()
                        && c.envoy
                            .as_ref()
                            .zip(c.harness.as_ref())
                            .is_some_and(|(e, h)| e.is_ok() != h.is_ok())
                })
        })
    }

    /// The entries of `shape_differences` for this shape that excused nothing in a run compared
    /// with the separate modules: the shape no longer differs there (remove them).
    pub fn stale_differences(&self) -> Vec<usize> {
        if !self.compared {
            return Vec::new();
        }
        let shape = self.loaded.shape;
        let used = |entry: usize| {
            self.excused.iter().any(|x| x.entry == entry)
                || self.steps.iter().any(|s| {
                    s.excused.iter().any(|x| x.entry == entry)
                        || s.checks
                            .iter()
                            .any(|c| c.excused == Some(entry) && !c.held())
                })
        };
        self.loaded
            .scenario
            .shape_differences
            .iter()
            .enumerate()
            .filter(|(i, d)| Shape::from(d.shape) == shape && !used(*i))
            .map(|(i, _)| i)
            .collect()
    }

    /// A readable report. `verbose` adds every observation; a failed step always shows them.
    pub fn render(&self, verbose: bool) -> String {
        let mut s = String::new();
        let sc = &self.loaded.scenario;
        let shape = self.loaded.shape;
        let known = self.known_disagreement_applies();
        let stale = self.stale_differences();
        let own = self.own_verdict();
        let verdict = if !own && known && self.all_held_and_agree() {
            "FAIL (the hosts agree now: remove `known_disagreement` from the scenario)"
        } else if own && !self.same_as_separate() {
            if self.versus_problems.is_empty()
                && self.steps.iter().all(|s| s.versus_separate.is_empty())
            {
                "FAIL (a known shape difference no longer differs: remove it from `shape_differences`)"
            } else {
                "FAIL (differs from the separate modules)"
            }
        } else if known && self.passed() {
            "PASS (a known disagreement: Envoy meets the expectations, the harness does not)"
        } else if self.passed() {
            "PASS"
        } else if self.hosts_disagree() {
            "FAIL (the hosts disagree)"
        } else {
            "FAIL"
        };
        let label = match shape {
            Shape::Separate => String::new(),
            other => format!(" [{}]", other.name()),
        };
        let _ = writeln!(s, "scenario {}{label}: {verdict}", self.loaded.label);
        let _ = writeln!(s, "  {}", sc.description);
        if let Some(why) = &sc.known_disagreement {
            let _ = writeln!(s, "  known disagreement: {why}");
        }
        match shape {
            Shape::Separate => {}
            Shape::Bundle => {
                let _ = writeln!(
                    s,
                    "  shape: bundle (each filter from gatewasm.wasm, root_id = its name, vm_id gatewasm){}",
                    if self.compared {
                        ", compared with the separate modules"
                    } else {
                        ""
                    }
                );
            }
            Shape::Chain => {
                let _ = writeln!(
                    s,
                    "  shape: chain (each run of consecutive filters as one gatewasm.wasm plugin, root_id chain){}",
                    if self.compared {
                        ", compared with the separate modules"
                    } else {
                        ""
                    }
                );
            }
            Shape::Native => {
                let _ = writeln!(
                    s,
                    "  shape: native (each run of consecutive filters as one `chain` filter of the Envoy dynamic module libgatewasm_envoy.so; Envoy only){}",
                    if self.compared {
                        ", compared with the separate modules' Envoy run"
                    } else {
                        ""
                    }
                );
            }
        }
        for (i, d) in sc.shape_differences.iter().enumerate() {
            if Shape::from(d.shape) != shape {
                continue;
            }
            let steps = if d.steps.is_empty() {
                String::new()
            } else {
                format!(
                    " in step(s) {}",
                    d.steps
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let _ = writeln!(
                s,
                "  known {} difference{}: {}{steps}: {}",
                shape.name(),
                if stale.contains(&i) {
                    " (NO LONGER DIFFERS: remove it)"
                } else {
                    ""
                },
                d.observables.join(", "),
                d.why
            );
        }
        let envoy_version = self
            .envoy_version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        match (&sc.harness_only, &self.envoy) {
            (Some(why), _) => {
                let _ = writeln!(s, "  hosts: harness only ({why})");
            }
            (None, Some(_)) if self.harness.is_none() => {
                let _ = writeln!(
                    s,
                    "  hosts: Envoy{envoy_version} (the harness runs no dynamic module)"
                );
            }
            (None, Some(_)) => {
                let _ = writeln!(s, "  hosts: harness, Envoy{envoy_version}");
            }
            (None, None) => {
                let _ = writeln!(s, "  hosts: harness (Envoy not run)");
            }
        }
        let _ = writeln!(s, "  chain:");
        for (i, p) in self.loaded.plugins.iter().enumerate() {
            match p {
                Plugin::Wasm {
                    name,
                    path,
                    configuration,
                    root_id,
                    ..
                } => {
                    let file = path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let root = if root_id.is_empty() {
                        String::new()
                    } else {
                        format!(", root_id {root_id}")
                    };
                    let config = if configuration.is_empty() {
                        "(empty)"
                    } else {
                        configuration.as_str()
                    };
                    let _ = writeln!(s, "    {}. {name} ({file}{root}) config {config}", i + 1);
                }
                Plugin::Native {
                    name,
                    filter_name,
                    configuration,
                } => {
                    let _ = writeln!(
                        s,
                        "    {}. {name} (dynamic module libgatewasm_envoy.so, filter_name {filter_name}) config {configuration}",
                        i + 1
                    );
                }
                Plugin::LocalReply { reply, .. } => {
                    let _ = writeln!(
                        s,
                        "    {}. local_reply {}{}",
                        i + 1,
                        reply.status,
                        reply
                            .path_prefix
                            .as_ref()
                            .map(|p| format!(" for paths starting with {p}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        for p in &self.problems {
            let _ = writeln!(s, "  PROBLEM {p}");
        }
        for p in &self.versus_problems {
            let _ = writeln!(s, "  PROBLEM (against the separate modules) {p}");
        }
        for x in &self.excused {
            let _ = writeln!(
                s,
                "  known {} difference: {}",
                shape.name(),
                indent(&x.text, "    ").trim_start()
            );
        }
        if let Some(want) = &sc.config_rejected {
            let log = if shape.reports_as_chain() {
                want.chain_log.as_ref().or(want.log.as_ref())
            } else {
                want.log.as_ref()
            };
            let _ = writeln!(
                s,
                "  expect: configuration rejected{}",
                log.map(|l| format!(", log matches {l:?}"))
                    .unwrap_or_default()
            );
        }
        let with_envoy = self.envoy.is_some();
        for st in &self.steps {
            let _ = writeln!(s, "  {}", st.title);
            let _ = writeln!(
                s,
                "    {:<8}{:<8}expectation",
                if self.harness.is_some() {
                    "harness"
                } else {
                    ""
                },
                if with_envoy { "envoy" } else { "" }
            );
            let mut failed = !st.differences.is_empty() || !st.versus_separate.is_empty();
            for c in &st.checks {
                let mark = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "FAIL" };
                let h = c.harness.as_ref().map(mark).unwrap_or("");
                let e = c.envoy.as_ref().map(mark).unwrap_or("");
                let _ = writeln!(s, "    {h:<8}{e:<8}{}", c.what);
                if let Some(entry) = c.excused {
                    if !c.held() {
                        let why = sc
                            .shape_differences
                            .get(entry)
                            .map(|d| d.why.as_str())
                            .unwrap_or_default();
                        let _ = writeln!(
                            s,
                            "{:>20}not judged: a known {} difference ({why})",
                            "",
                            shape.name()
                        );
                    }
                    for (host, r) in [("harness", c.harness.as_ref()), ("envoy", c.envoy.as_ref())]
                    {
                        if let Some(Err(why)) = r {
                            let _ = writeln!(s, "{:>20}{host}: {why}", "");
                        }
                    }
                    continue;
                }
                if let Some(Err(why)) = &c.harness {
                    failed = true;
                    let _ = writeln!(s, "{:>20}harness: {why}", "");
                }
                if let Some(Err(why)) = &c.envoy {
                    failed = true;
                    let _ = writeln!(s, "{:>20}envoy: {why}", "");
                }
            }
            if with_envoy && st.observed.0.is_some() && st.observed.1.is_some() {
                if st.differences.is_empty() {
                    let _ = writeln!(s, "    hosts agree");
                } else {
                    let _ = writeln!(s, "    HOSTS DISAGREE:");
                    for d in &st.differences {
                        let _ = writeln!(s, "      - {d}");
                    }
                }
            }
            if self.compared {
                if st.versus_separate.is_empty() {
                    let _ = writeln!(s, "    same as the separate modules");
                } else {
                    let _ = writeln!(s, "    DIFFERS FROM THE SEPARATE MODULES:");
                    for d in &st.versus_separate {
                        let _ = writeln!(s, "      - {d}");
                    }
                }
            }
            for x in &st.excused {
                let why = sc
                    .shape_differences
                    .get(x.entry)
                    .map(|d| d.why.as_str())
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "    known {} difference ({why}): {}",
                    shape.name(),
                    x.text
                );
            }
            if verbose || (failed && !(known && self.passed())) {
                for (host, obs) in [("harness", &st.observed.0), ("envoy", &st.observed.1)] {
                    if let Some(o) = obs {
                        let _ = writeln!(s, "    observed in {host}:");
                        s.push_str(&indent(&render_observed(o), "      "));
                        s.push('\n');
                    }
                }
                if verbose || !st.versus_separate.is_empty() {
                    for (host, obs) in [
                        ("harness", &st.separate_observed.0),
                        ("envoy", &st.separate_observed.1),
                    ] {
                        if let Some(o) = obs {
                            let _ =
                                writeln!(s, "    observed in {host} with the separate modules:");
                            s.push_str(&indent(&render_observed(o), "      "));
                            s.push('\n');
                        }
                    }
                }
            }
        }
        s
    }
}

fn render_message(m: &Message) -> String {
    let mut s = String::new();
    for (k, v) in &m.headers {
        let _ = writeln!(s, "  {k}: {v}");
    }
    if !m.body.is_empty() {
        let _ = writeln!(s, "  body: {}", body_text(&m.body));
    }
    s
}

fn render_observed(o: &Observed) -> String {
    let mut s = String::new();
    match &o.upstream {
        Some(m) => {
            let _ = write!(s, "upstream received:\n{}", render_message(m));
        }
        None => s.push_str("upstream received nothing\n"),
    }
    match &o.client {
        Some(c) => {
            let _ = write!(
                s,
                "client received: {}\n{}",
                c.status,
                render_message(&c.message)
            );
        }
        None => s.push_str("client received no response\n"),
    }
    for (cluster, m) in &o.callouts {
        let _ = write!(s, "callout to {cluster}:\n{}", render_message(m));
    }
    if !o.metrics.is_empty() {
        let m: Vec<String> = o
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:+}"))
            .collect();
        let _ = writeln!(s, "metrics: {}", m.join(", "));
    }
    for n in &o.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{ClientResponse, load};

    fn observed(headers: &[(&str, &str)]) -> Observed {
        Observed {
            upstream: Some(Message::default()),
            client: Some(ClientResponse {
                status: 200,
                message: Message {
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    body: Vec::new(),
                },
            }),
            ..Default::default()
        }
    }

    /// The separate shape's report and the bundle shape's, compared (harness only).
    fn compared(loaded: &Loaded, bundle: &[(&str, &str)]) -> Report {
        let separate = assemble(
            loaded.clone(),
            Some(HostOutcome::Ran(vec![observed(&[
                ("x-a", "1"),
                ("x-b", "1"),
            ])])),
            None,
            None,
        );
        let mut shaped = loaded.clone();
        shaped.shape = Shape::Bundle;
        let mut report = assemble(
            shaped,
            Some(HostOutcome::Ran(vec![observed(bundle)])),
            None,
            None,
        );
        report.compare_with_separate(&separate);
        report
    }

    #[test]
    fn a_shape_must_observe_what_the_separate_modules_do() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("s.yaml");
        std::fs::write(
            &file,
            "description: x\nchain: [{local_reply: {status: 401}}]\nsteps: [{}]\n\
             shape_differences:\n  - {shape: bundle, observables: [client.header.x-b], why: known}\n",
        )?;
        let loaded = load(&file)?;

        // x-a differs: not excused; x-b differs: excused.
        let r = compared(&loaded, &[("x-a", "2"), ("x-b", "2")]);
        assert_eq!(r.steps[0].versus_separate.len(), 1, "{:?}", r.steps[0]);
        assert!(r.steps[0].versus_separate[0].contains("x-a"));
        assert_eq!(r.steps[0].excused.len(), 1);
        assert!(!r.passed());
        assert!(
            r.render(false)
                .contains("differs from the separate modules")
        );

        // Only the known difference: passes, and says so.
        let r = compared(&loaded, &[("x-a", "1"), ("x-b", "2")]);
        assert!(r.passed(), "{}", r.render(true));
        assert!(r.render(false).contains("known bundle difference (known)"));

        // No difference left: the entry is stale.
        let r = compared(&loaded, &[("x-a", "1"), ("x-b", "1")]);
        assert_eq!(r.stale_differences(), vec![0]);
        assert!(!r.passed());
        assert!(r.render(false).contains("no longer differs"));

        // The separate shape itself is never compared, and the entry does not apply to it.
        let separate = assemble(
            loaded.clone(),
            Some(HostOutcome::Ran(vec![observed(&[])])),
            None,
            None,
        );
        assert!(separate.passed() && separate.stale_differences().is_empty());
        Ok(())
    }

    /// A scenario file, loaded (`chain: local_reply`, so no build is needed).
    fn scenario(yaml_tail: &str) -> anyhow::Result<Loaded> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("s.yaml");
        std::fs::write(
            &file,
            format!(
                "description: x\nchain: [{{local_reply: {{status: 401}}}}]\n\
                 steps: [{{expect: {{client: {{status: 200}}}}}}]\n{yaml_tail}"
            ),
        )?;
        load(&file)
    }

    /// The separate shape's report (harness and Envoy alike, status 200) and the native
    /// shape's with Envoy's `envoy` outcome, compared.
    fn native(loaded: &Loaded, envoy: HostOutcome) -> Report {
        let ran = || HostOutcome::Ran(vec![observed(&[("x-a", "1")])]);
        let separate = assemble(loaded.clone(), Some(ran()), Some(ran()), None);
        let mut shaped = loaded.clone();
        shaped.shape = Shape::Native;
        let mut report = assemble(shaped, None, Some(envoy), None);
        report.compare_with_separate(&separate);
        report
    }

    #[test]
    fn the_native_shape_is_judged_by_envoy_alone() -> anyhow::Result<()> {
        let loaded = scenario("")?;
        let same = native(&loaded, HostOutcome::Ran(vec![observed(&[("x-a", "1")])]));
        assert!(same.passed(), "{}", same.render(true));
        assert!(same.versus_problems.is_empty());
        let text = same.render(false);
        assert!(text.contains("[native]: PASS"), "{text}");
        assert!(
            text.contains("the harness runs no dynamic module"),
            "{text}"
        );

        // What Envoy observed differs from the separate modules' Envoy run: fails.
        let other = native(&loaded, HostOutcome::Ran(vec![observed(&[("x-a", "2")])]));
        assert!(!other.passed());
        assert!(other.steps[0].versus_separate[0].contains("x-a"));

        // A known disagreement between the hosts does not apply without the harness: Envoy
        // must meet the expectations.
        let known = scenario("known_disagreement: the harness differs\n")?;
        let mut failing = observed(&[("x-a", "1")]);
        if let Some(client) = &mut failing.client {
            client.status = 500;
        }
        assert!(native(&known, HostOutcome::Ran(vec![observed(&[("x-a", "1")])])).passed());
        assert!(!native(&known, HostOutcome::Ran(vec![failing])).passed());
        Ok(())
    }

    #[test]
    fn a_refused_configuration_passes_only_when_declared_and_still_refused() -> anyhow::Result<()> {
        let refusal = || {
            HostOutcome::ConfigRejected(
                "[error] gatewasm chain: invalid plugin configuration: stages[0].config.x: \
                 not yet supported by the dynamic module\nFailed to initialize dynamic module"
                    .into(),
            )
        };
        // Not declared: the refusal fails the shape.
        let r = native(&scenario("")?, refusal());
        assert!(!r.passed());

        let declared = scenario(
            "shape_differences:\n  - {shape: native, observables: [config], why: not yet}\n",
        )?;
        let r = native(&declared, refusal());
        assert!(r.passed(), "{}", r.render(true));
        let text = r.render(false);
        assert!(
            text.contains("known native difference: envoy: the separate modules ran"),
            "{text}"
        );
        assert!(
            text.contains("not yet supported by the dynamic module"),
            "{text}"
        );

        // Accepted now: the declaration is stale and fails the shape.
        let r = native(&declared, HostOutcome::Ran(vec![observed(&[("x-a", "1")])]));
        assert_eq!(r.stale_differences(), vec![0]);
        assert!(!r.passed());
        assert!(r.render(false).contains("no longer differs"));
        Ok(())
    }
}
