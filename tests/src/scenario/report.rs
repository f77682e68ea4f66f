//! The report of a scenario run: each host's outcome and each step's expectations as judged in
//! each host, with the differences between the hosts ([`assemble`] → [`Report`]), the verdict
//! ([`Report::passed`]) and the readable rendering ([`Report::render`]).

use std::fmt::Write as _;

use regex::Regex;

use super::check::body_text;
use super::{HostOutcome, Loaded, Message, Observed, Plugin, compare, evaluate};

/// One expectation, evaluated in each host.
#[derive(Debug, Clone)]
pub struct CheckRow {
    /// What is checked, readable.
    pub what: String,
    /// The harness's verdict: `Err` says what was seen instead.
    pub harness: Result<(), String>,
    /// Envoy's verdict (`None`: harness-only scenario).
    pub envoy: Option<Result<(), String>>,
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
    /// The observations (harness, Envoy).
    pub observed: (Option<Observed>, Option<Observed>),
}

/// The result of running a scenario in both hosts.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario.
    pub loaded: Loaded,
    /// The harness's outcome.
    pub harness: HostOutcome,
    /// Envoy's outcome (`None`: harness-only).
    pub envoy: Option<HostOutcome>,
    /// Envoy's version, when it ran.
    pub envoy_version: Option<String>,
    /// Scenario-level problems (a runner failed, the config was or was not rejected, …).
    pub problems: Vec<String>,
    /// Per step.
    pub steps: Vec<StepReport>,
}

pub(super) fn assemble(
    loaded: Loaded,
    harness: HostOutcome,
    envoy: Option<HostOutcome>,
    envoy_version: Option<String>,
) -> Report {
    let mut problems = Vec::new();
    let mut steps = Vec::new();
    let rejected = loaded.scenario.config_rejected.clone();
    let outcomes: Vec<(&str, &HostOutcome)> = [
        Some(("harness", &harness)),
        envoy.as_ref().map(|e| ("envoy", e)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (host, outcome) in &outcomes {
        match (outcome, &rejected) {
            (HostOutcome::Failed(e), _) => problems.push(format!("{host}: {e}")),
            (HostOutcome::ConfigRejected(log), None) => problems.push(format!(
                "{host}: the configuration was rejected:\n{}",
                indent(&crate::envoy::tail(log, 30), "    ")
            )),
            (HostOutcome::Ran(_), Some(_)) => {
                problems.push(format!("{host}: the configuration was accepted"));
            }
            (HostOutcome::ConfigRejected(log), Some(want)) => {
                if let Some(pattern) = &want.log
                    && !Regex::new(pattern).is_ok_and(|re| re.is_match(log))
                {
                    problems.push(format!(
                        "{host}: the configuration was rejected, but no log line matches {pattern:?}; the log:\n{}",
                        indent(&crate::envoy::tail(log, 30), "    ")
                    ));
                }
            }
            (HostOutcome::Ran(_), None) => {}
        }
    }
    let ran = |o: &HostOutcome| match o {
        HostOutcome::Ran(v) => Some(v.clone()),
        _ => None,
    };
    let h_obs = ran(&harness);
    let e_obs = envoy.as_ref().and_then(ran);
    for (i, step) in loaded.scenario.steps.iter().enumerate() {
        let mut title = format!("step {}", i + 1);
        if let Some(n) = &step.name {
            let _ = write!(title, " ({n})");
        }
        let _ = write!(title, ": {} {}", step.request.method, step.request.path);
        let hv = h_obs.as_ref().map(|all| evaluate(step, i, all));
        let ev = e_obs.as_ref().map(|all| evaluate(step, i, all));
        let n = hv
            .as_ref()
            .map(Vec::len)
            .or(ev.as_ref().map(Vec::len))
            .unwrap_or(0);
        let mut checks = Vec::new();
        for k in 0..n {
            let what = hv
                .as_ref()
                .and_then(|v| v.get(k))
                .or(ev.as_ref().and_then(|v| v.get(k)))
                .map(|(w, _)| w.clone())
                .unwrap_or_default();
            let pick = |v: &Option<Vec<(String, Result<(), String>)>>| {
                v.as_ref().and_then(|v| v.get(k)).map(|(_, r)| r.clone())
            };
            checks.push(CheckRow {
                what,
                harness: pick(&hv).unwrap_or_else(|| Err("did not run".into())),
                envoy: envoy
                    .as_ref()
                    .map(|_| pick(&ev).unwrap_or_else(|| Err("did not run".into()))),
            });
        }
        let (ho, eo) = (
            h_obs.as_ref().and_then(|v| v.get(i)).cloned(),
            e_obs.as_ref().and_then(|v| v.get(i)).cloned(),
        );
        let differences = match (&ho, &eo) {
            (Some(h), Some(e)) => compare(step, h, e),
            _ => Vec::new(),
        };
        steps.push(StepReport {
            title,
            checks,
            differences,
            observed: (ho, eo),
        });
    }
    Report {
        loaded,
        harness,
        envoy,
        envoy_version,
        problems,
        steps,
    }
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Report {
    /// Whether the scenario passed: every expectation held in every host that ran and the hosts
    /// agree — or, for a `known_disagreement` scenario, every expectation held in Envoy and the
    /// hosts still disagree.
    pub fn passed(&self) -> bool {
        if self.loaded.scenario.known_disagreement.is_some() && self.envoy.is_some() {
            let envoy_ok = self.steps.iter().all(|s| {
                s.checks
                    .iter()
                    .all(|c| c.envoy.as_ref().is_none_or(Result::is_ok))
            });
            let envoy_ran = matches!(self.envoy, Some(HostOutcome::Ran(_)));
            return envoy_ok && envoy_ran && self.hosts_disagree();
        }
        self.all_held_and_agree()
    }

    fn all_held_and_agree(&self) -> bool {
        self.problems.is_empty()
            && self.steps.iter().all(|s| {
                s.differences.is_empty()
                    && s.checks
                        .iter()
                        .all(|c| c.harness.is_ok() && c.envoy.as_ref().is_none_or(Result::is_ok))
            })
    }

    /// Whether the hosts disagree (an expectation holds in one and not the other, or the
    /// observations differ).
    pub fn hosts_disagree(&self) -> bool {
        self.steps.iter().any(|s| {
            !s.differences.is_empty()
                || s.checks.iter().any(|c| {
                    c.envoy
                        .as_ref()
                        .is_some_and(|e| e.is_ok() != c.harness.is_ok())
                })
        })
    }

    /// A readable report. `verbose` adds every observation; a failed step always shows them.
    pub fn render(&self, verbose: bool) -> String {
        let mut s = String::new();
        let sc = &self.loaded.scenario;
        let known = sc.known_disagreement.is_some() && self.envoy.is_some();
        let verdict = if known && self.passed() {
            "PASS (a known disagreement: Envoy meets the expectations, the harness does not)"
        } else if known && self.all_held_and_agree() {
            "FAIL (the hosts agree now: remove `known_disagreement` from the scenario)"
        } else if self.passed() {
            "PASS"
        } else if self.hosts_disagree() {
            "FAIL (the hosts disagree)"
        } else {
            "FAIL"
        };
        let _ = writeln!(s, "scenario {}: {verdict}", self.loaded.label);
        let _ = writeln!(s, "  {}", sc.description);
        if let Some(why) = &sc.known_disagreement {
            let _ = writeln!(s, "  known disagreement: {why}");
        }
        match (&sc.harness_only, &self.envoy) {
            (Some(why), _) => {
                let _ = writeln!(s, "  hosts: harness only ({why})");
            }
            (None, Some(_)) => {
                let _ = writeln!(
                    s,
                    "  hosts: harness, Envoy{}",
                    self.envoy_version
                        .as_deref()
                        .map(|v| format!(" {v}"))
                        .unwrap_or_default()
                );
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
                    ..
                } => {
                    let file = path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let config = if configuration.is_empty() {
                        "(empty)"
                    } else {
                        configuration.as_str()
                    };
                    let _ = writeln!(s, "    {}. {name} ({file}) config {config}", i + 1);
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
        if let Some(want) = &sc.config_rejected {
            let _ = writeln!(
                s,
                "  expect: configuration rejected{}",
                want.log
                    .as_ref()
                    .map(|l| format!(", log matches {l:?}"))
                    .unwrap_or_default()
            );
        }
        let with_envoy = self.envoy.is_some();
        for st in &self.steps {
            let _ = writeln!(s, "  {}", st.title);
            let _ = writeln!(
                s,
                "    {:<8}{:<8}expectation",
                "harness",
                if with_envoy { "envoy" } else { "" }
            );
            let mut failed = !st.differences.is_empty();
            for c in &st.checks {
                let mark = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "FAIL" };
                let e = c.envoy.as_ref().map(mark).unwrap_or("");
                let _ = writeln!(s, "    {:<8}{:<8}{}", mark(&c.harness), e, c.what);
                if let Err(why) = &c.harness {
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
            if verbose || (failed && !(known && self.passed())) {
                for (host, obs) in [("harness", &st.observed.0), ("envoy", &st.observed.1)] {
                    if let Some(o) = obs {
                        let _ = writeln!(s, "    observed in {host}:");
                        s.push_str(&indent(&render_observed(o), "      "));
                        s.push('\n');
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
