//! Checking and comparing: a step's expectations evaluated against one host's observations
//! ([`evaluate`]), and the two hosts' observations of a step compared with each other
//! ([`compare`]: headers the expectations judge by count, every other header exactly, bodies,
//! metrics and callouts). `report.rs` puts the results together.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::{
    BodyCheckFields, HeaderCheckFields, HeaderRef, JsonCheck, Message, Observed, Side, Step,
    compile_pattern,
};

/// Header names whose values depend on the machine or the moment in Envoy: compared by count only.
const VALUE_VARIES: &[&str] = &["x-forwarded-for", "x-envoy-upstream-service-time", "date"];

/// Headers Envoy itself adds or rewrites *after* the filters: `x-envoy-expected-rq-timeout-ms`
/// (the router, towards the upstream), `date`, `server` and the connection-level headers (the
/// HTTP connection manager and codec, towards the client). Not compared.
const UPSTREAM_ENVOY_ONLY: &[&str] = &["x-envoy-expected-rq-timeout-ms", "transfer-encoding"];
const CLIENT_ENVOY_ONLY: &[&str] = &["date", "server", "connection", "transfer-encoding"];

/// Counters that count chance, not behaviour: which slot of rate-limit's table a key takes
/// depends on the process's random hash seed, so whether a new key reclaims another key's
/// idle slot (two keys of a scenario in one group of 16) differs from one Envoy process to
/// the next. Not compared between runs (a scenario may still expect a value).
const METRICS_BY_CHANCE: &[&str] = &["gatewasm_rate_limit_slots_reclaimed"];

fn describe_header_check(side: &str, name: &str, f: &HeaderCheckFields) -> String {
    let mut parts = Vec::new();
    match f.present {
        Some(false) => parts.push("absent".to_string()),
        Some(true) => parts.push("present".to_string()),
        None => {}
    }
    if let Some(n) = f.count {
        parts.push(format!("{n} value(s)"));
    }
    if let Some(v) = &f.equals {
        parts.push(format!("= {v:?}"));
    }
    if let Some(v) = &f.not_equals {
        parts.push(format!("≠ {v:?}"));
    }
    if let Some(v) = &f.matches {
        parts.push(format!("matches {v}"));
    }
    if let Some(v) = &f.same_as {
        parts.push(format!("same as {v}"));
    }
    if let Some(v) = &f.differs_from {
        parts.push(format!("differs from {v}"));
    }
    if parts.is_empty() {
        parts.push("(no check)".into());
    }
    format!("{side} {name} {}", parts.join(", "))
}

fn resolve_ref(r: &HeaderRef, step: usize, all: &[Observed]) -> Result<Vec<String>, String> {
    let idx = r.step.unwrap_or(step);
    let obs = all
        .get(idx)
        .ok_or_else(|| format!("step {} did not run", idx + 1))?;
    Ok(match r.side {
        Side::Request => obs.request.values(&r.name),
        Side::Upstream => obs
            .upstream
            .as_ref()
            .map(|m| m.values(&r.name))
            .unwrap_or_default(),
        Side::Client => obs
            .client
            .as_ref()
            .map(|c| c.message.values(&r.name))
            .unwrap_or_default(),
    })
}

fn check_header(
    f: &HeaderCheckFields,
    values: &[String],
    step: usize,
    all: &[Observed],
) -> Result<(), String> {
    let seen = || format!("got {values:?}");
    if f.present == Some(false) {
        return if values.is_empty() {
            Ok(())
        } else {
            Err(seen())
        };
    }
    if let Some(n) = f.count
        && values.len() != n
    {
        return Err(seen());
    }
    let has_value_check = f.present == Some(true)
        || f.equals.is_some()
        || f.not_equals.is_some()
        || f.matches.is_some()
        || f.same_as.is_some()
        || f.differs_from.is_some();
    if has_value_check && values.is_empty() {
        return Err("absent".into());
    }
    if let Some(e) = &f.equals
        && values.iter().any(|v| v != e)
    {
        return Err(seen());
    }
    if let Some(e) = &f.not_equals
        && values.iter().any(|v| v == e)
    {
        return Err(seen());
    }
    if let Some(p) = &f.matches {
        let re = compile_pattern(p).map_err(|e| format!("{e:#}"))?;
        if let Some(bad) = values.iter().find(|v| !re.is_match(v)) {
            return Err(format!("{bad:?} does not match ({})", seen()));
        }
    }
    if let Some(r) = &f.same_as {
        let r = HeaderRef::parse(r).map_err(|e| format!("{e:#}"))?;
        let other = resolve_ref(&r, step, all)?;
        if other.is_empty() {
            return Err(format!(
                "{} is absent ({})",
                f.same_as.as_deref().unwrap_or(""),
                seen()
            ));
        }
        if other != values {
            return Err(format!("{}, the reference has {other:?}", seen()));
        }
    }
    if let Some(r) = &f.differs_from {
        let r = HeaderRef::parse(r).map_err(|e| format!("{e:#}"))?;
        let other = resolve_ref(&r, step, all)?;
        if let Some(same) = values.iter().find(|v| other.contains(v)) {
            return Err(format!("{same:?} is also in the reference ({other:?})"));
        }
    }
    Ok(())
}

fn json_field<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if path.starts_with('/') {
        return v.pointer(path);
    }
    path.split('.').try_fold(v, |cur, key| match cur {
        serde_json::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => cur.get(key),
    })
}

fn check_body(f: &BodyCheckFields, body: &[u8]) -> Vec<(String, Result<(), String>)> {
    let text = String::from_utf8_lossy(body);
    let short = || {
        let t: String = text.chars().take(200).collect();
        format!("got {t:?}")
    };
    let mut out = Vec::new();
    if let Some(e) = &f.equals {
        out.push((
            format!("body = {e:?}"),
            if text == *e { Ok(()) } else { Err(short()) },
        ));
    }
    if let Some(e) = &f.contains {
        out.push((
            format!("body contains {e:?}"),
            if text.contains(e.as_str()) {
                Ok(())
            } else {
                Err(short())
            },
        ));
    }
    if let Some(p) = &f.matches {
        let r = match compile_pattern(p) {
            Ok(re) if re.is_match(&text) => Ok(()),
            Ok(_) => Err(short()),
            Err(e) => Err(format!("{e:#}")),
        };
        out.push((format!("body matches {p}"), r));
    }
    if let Some(e) = f.empty {
        out.push((
            if e { "body empty" } else { "body not empty" }.to_string(),
            if body.is_empty() == e {
                Ok(())
            } else {
                Err(short())
            },
        ));
    }
    if !f.json.is_empty() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(body);
        for (path, check) in &f.json {
            let what = match check {
                JsonCheck::Equals(v) => format!("body json {path} = {v}"),
                JsonCheck::Matches(p) => format!("body json {path} matches {p}"),
                JsonCheck::Present(b) => format!("body json {path} present: {b}"),
            };
            let r = match &parsed {
                Err(_) => Err(format!("not JSON: {}", short())),
                Ok(v) => {
                    let field = json_field(v, path);
                    match (check, field) {
                        (JsonCheck::Present(b), f) => {
                            if f.is_some() == *b {
                                Ok(())
                            } else {
                                Err(format!("got {f:?}"))
                            }
                        }
                        (_, None) => Err("absent".into()),
                        (JsonCheck::Equals(e), Some(x)) => {
                            if x == e {
                                Ok(())
                            } else {
                                Err(format!("got {x}"))
                            }
                        }
                        (JsonCheck::Matches(p), Some(x)) => {
                            let s = x.as_str().map(str::to_string).unwrap_or(x.to_string());
                            match compile_pattern(p) {
                                Ok(re) if re.is_match(&s) => Ok(()),
                                Ok(_) => Err(format!("got {x}")),
                                Err(e) => Err(format!("{e:#}")),
                            }
                        }
                    }
                }
            };
            out.push((what, r));
        }
    }
    out
}

/// One evaluated expectation: the observable it judges (the names `shape_differences` use,
/// e.g. `client.header.x-request-id`), what it checks (readable), and the verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `upstream`, `upstream.header.<name>`, `upstream.body`, `client`, `client.status`,
    /// `client.header.<name>`, `client.body`, `metric.<name>`, `callouts.<cluster>`.
    pub observable: String,
    /// What is checked.
    pub what: String,
    /// `Err` says what was seen instead.
    pub result: Result<(), String>,
}

/// Evaluates a step's expectations against one host's observations (`all`: every step so far).
pub fn evaluate(step: &Step, idx: usize, all: &[Observed]) -> Vec<(String, Result<(), String>)> {
    verdicts(step, idx, all)
        .into_iter()
        .map(|v| (v.what, v.result))
        .collect()
}

/// [`evaluate`], with the observable each expectation judges.
pub fn verdicts(step: &Step, idx: usize, all: &[Observed]) -> Vec<Verdict> {
    let mut out = Vec::new();
    let Some(obs) = all.get(idx) else {
        return out;
    };
    let mut push = |observable: String, what: String, result: Result<(), String>| {
        out.push(Verdict {
            observable,
            what,
            result,
        })
    };
    let e = &step.expect;
    if let Some(want) = e.local_reply {
        let local = obs.upstream.is_none();
        push(
            "upstream".into(),
            format!("local reply: {want}"),
            if local == want {
                Ok(())
            } else if local {
                Err("the upstream received nothing".into())
            } else {
                Err("the request reached the upstream".into())
            },
        );
    }
    if let Some(up) = &e.upstream {
        let empty = Message::default();
        let msg = obs.upstream.as_ref().unwrap_or(&empty);
        let note = if obs.upstream.is_none() {
            " (the upstream received nothing)"
        } else {
            ""
        };
        for (name, check) in &up.headers {
            let name = name.to_ascii_lowercase();
            let r = check_header(&check.0, &msg.values(&name), idx, all)
                .map_err(|e| format!("{e}{note}"));
            push(
                format!("upstream.header.{name}"),
                describe_header_check("upstream", &name, &check.0),
                r,
            );
        }
        if let Some(b) = &up.body {
            for (what, r) in check_body(&b.0, &msg.body) {
                push(
                    "upstream.body".into(),
                    format!("upstream {what}"),
                    r.map_err(|e| format!("{e}{note}")),
                );
            }
        }
    }
    if let Some(c) = &e.client {
        let (status, msg) = match &obs.client {
            Some(r) => (Some(r.status), r.message.clone()),
            None => (None, Message::default()),
        };
        if let Some(want) = c.responded {
            push(
                "client".into(),
                format!("client got a response: {want}"),
                match (&obs.client, want) {
                    (Some(_), true) | (None, false) => Ok(()),
                    (Some(r), false) => Err(format!("got {}", r.status)),
                    (None, true) => Err("no response".into()),
                },
            );
        }
        if let Some(want) = c.status {
            push(
                "client.status".into(),
                format!("client status {want}"),
                match status {
                    Some(s) if s == want => Ok(()),
                    Some(s) => Err(format!("got {s}")),
                    None => Err("no response".into()),
                },
            );
        }
        for (name, check) in &c.headers {
            let name = name.to_ascii_lowercase();
            push(
                format!("client.header.{name}"),
                describe_header_check("client", &name, &check.0),
                check_header(&check.0, &msg.values(&name), idx, all),
            );
        }
        if let Some(b) = &c.body {
            for (what, r) in check_body(&b.0, &msg.body) {
                push("client.body".into(), format!("client {what}"), r);
            }
        }
    }
    for (name, want) in &e.metrics {
        let got = obs.metrics.get(name).copied().unwrap_or(0);
        push(
            format!("metric.{name}"),
            format!("metric {name} {want:+}"),
            if got == *want {
                Ok(())
            } else {
                Err(format!("changed by {got:+}"))
            },
        );
    }
    for (cluster, want) in &e.callouts {
        let got = obs.callouts.iter().filter(|(c, _)| c == cluster).count();
        push(
            format!("callouts.{cluster}"),
            format!("callouts to {cluster}: {want}"),
            if got == *want {
                Ok(())
            } else {
                Err(format!("got {got}"))
            },
        );
    }
    out
}

/// Header names the step's expectations judge (plus the machine- and time-dependent ones): the
/// two hosts must see the same number of values there, and the expectations say whether the
/// values are right (so two different random IDs are not a disagreement). Every other header
/// must be identical in both hosts.
fn judged_headers(step: &Step) -> BTreeSet<String> {
    let mut judged: BTreeSet<String> = VALUE_VARIES.iter().map(|s| s.to_string()).collect();
    let e = &step.expect;
    for checks in [
        e.upstream.as_ref().map(|u| &u.headers),
        e.client.as_ref().map(|c| &c.headers),
    ]
    .into_iter()
    .flatten()
    {
        judged.extend(checks.keys().map(|k| k.to_ascii_lowercase()));
    }
    judged
}

/// Where two observations of a step differ, on one observable (see [`Verdict::observable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The observable.
    pub observable: String,
    /// The difference, readable, with both sides.
    pub text: String,
}

fn compare_headers(
    side: &str,
    (a, b): (&Message, &Message),
    (la, lb): (&str, &str),
    skip: &[&str],
    open: &BTreeSet<String>,
    out: &mut Vec<Difference>,
) {
    let names: BTreeSet<&String> = a
        .headers
        .iter()
        .chain(b.headers.iter())
        .map(|(n, _)| n)
        .filter(|n| !skip.contains(&n.as_str()))
        .collect();
    for name in names {
        let (av, bv) = (a.values(name), b.values(name));
        let differ = if open.contains(name.as_str()) {
            av.len() != bv.len()
        } else {
            av != bv
        };
        if differ {
            out.push(Difference {
                observable: format!("{side}.header.{name}"),
                text: format!("{side} header {name}: {la} {av:?}, {lb} {bv:?}"),
            });
        }
    }
}

pub(super) fn body_text(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    let short: String = t.chars().take(300).collect();
    format!("{short:?}")
}

/// Where the two hosts' observations of a step differ.
pub fn compare(step: &Step, h: &Observed, e: &Observed) -> Vec<String> {
    differences(step, h, e, ("harness", "envoy"))
        .into_iter()
        .map(|d| d.text)
        .collect()
}

/// Where two observations of a step differ (two hosts, or two shapes of the chain in one host),
/// `labels` naming the two sides in the text: headers the expectations judge by count, every
/// other header exactly, bodies (unless judged), status, metrics and callouts per cluster.
pub fn differences(
    step: &Step,
    a: &Observed,
    b: &Observed,
    labels: (&str, &str),
) -> Vec<Difference> {
    let (la, lb) = labels;
    let mut out = Vec::new();
    let push = |out: &mut Vec<Difference>, observable: &str, text: String| {
        out.push(Difference {
            observable: observable.to_string(),
            text,
        })
    };
    let open = judged_headers(step);
    match (&a.upstream, &b.upstream) {
        (Some(au), Some(bu)) => {
            compare_headers(
                "upstream",
                (au, bu),
                labels,
                UPSTREAM_ENVOY_ONLY,
                &open,
                &mut out,
            );
            let judged = step
                .expect
                .upstream
                .as_ref()
                .is_some_and(|u| u.body.is_some());
            if au.body != bu.body && !judged {
                push(
                    &mut out,
                    "upstream.body",
                    format!(
                        "upstream body: {la} {}, {lb} {}",
                        body_text(&au.body),
                        body_text(&bu.body)
                    ),
                );
            }
        }
        (None, None) => {}
        (au, bu) => push(
            &mut out,
            "upstream",
            format!(
                "request reached the upstream: {la} {}, {lb} {}",
                au.is_some(),
                bu.is_some()
            ),
        ),
    }
    match (&a.client, &b.client) {
        (Some(ac), Some(bc)) => {
            if ac.status != bc.status {
                push(
                    &mut out,
                    "client.status",
                    format!("client status: {la} {}, {lb} {}", ac.status, bc.status),
                );
            }
            compare_headers(
                "client",
                (&ac.message, &bc.message),
                labels,
                CLIENT_ENVOY_ONLY,
                &open,
                &mut out,
            );
            let judged = step
                .expect
                .client
                .as_ref()
                .is_some_and(|c| c.body.is_some());
            if ac.message.body != bc.message.body && !judged {
                push(
                    &mut out,
                    "client.body",
                    format!(
                        "client body: {la} {}, {lb} {}",
                        body_text(&ac.message.body),
                        body_text(&bc.message.body)
                    ),
                );
            }
        }
        (None, None) => {}
        (ac, bc) => push(
            &mut out,
            "client",
            format!(
                "client got a response: {la} {}, {lb} {}",
                ac.is_some(),
                bc.is_some()
            ),
        ),
    }
    let metric_names: BTreeSet<&String> = a
        .metrics
        .keys()
        .chain(b.metrics.keys())
        .filter(|name| !METRICS_BY_CHANCE.contains(&name.as_str()))
        .collect();
    for name in metric_names {
        let (av, bv) = (
            a.metrics.get(name).copied().unwrap_or(0),
            b.metrics.get(name).copied().unwrap_or(0),
        );
        if av != bv {
            push(
                &mut out,
                &format!("metric.{name}"),
                format!("metric {name}: {la} {av:+}, {lb} {bv:+}"),
            );
        }
    }
    let count = |o: &Observed| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (c, _) in &o.callouts {
            *m.entry(c.clone()).or_insert(0) += 1;
        }
        m
    };
    let (ac, bc) = (count(a), count(b));
    let clusters: BTreeSet<&String> = ac.keys().chain(bc.keys()).collect();
    for cluster in clusters {
        let (an, bn) = (
            ac.get(cluster).copied().unwrap_or(0),
            bc.get(cluster).copied().unwrap_or(0),
        );
        if an != bn {
            push(
                &mut out,
                &format!("callouts.{cluster}"),
                format!("callouts to {cluster}: {la} {an}, {lb} {bn}"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{ClientResponse, HeaderCheck};

    #[test]
    fn header_checks() -> Result<()> {
        let yaml = r#"
a: null
b: exact
c: {matches: "@uuid4", count: 1}
d: {same_as: request.x}
"#;
        let checks: BTreeMap<String, HeaderCheck> = serde_norway::from_str(yaml)?;
        let obs = vec![Observed {
            request: Message {
                headers: vec![("x".into(), "v".into())],
                body: Vec::new(),
            },
            ..Default::default()
        }];
        let ok = |k: &str, v: &[&str]| {
            let values: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            checks
                .get(k)
                .map(|c| check_header(&c.0, &values, 0, &obs).is_ok())
                .unwrap_or(false)
        };
        assert!(ok("a", &[]) && !ok("a", &["x"]));
        assert!(ok("b", &["exact"]) && !ok("b", &["exact", "other"]) && !ok("b", &[]));
        assert!(ok("c", &["0b4f6c2e-5b9a-4f7e-9a1d-3c2b1a0f9e8d"]));
        assert!(!ok("c", &["0b4f6c2e-5b9a-7f7e-9a1d-3c2b1a0f9e8d"]));
        assert!(ok("d", &["v"]) && !ok("d", &["w"]));
        let bad: Result<BTreeMap<String, HeaderCheck>, _> = serde_norway::from_str("a: {nope: 1}");
        assert!(bad.is_err());
        Ok(())
    }

    fn observed(upstream: &[(&str, &str)], metric: i64) -> Observed {
        let msg = |h: &[(&str, &str)]| Message {
            headers: h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        };
        Observed {
            upstream: Some(msg(upstream)),
            client: Some(ClientResponse {
                status: 200,
                message: msg(&[]),
            }),
            metrics: [("m".to_string(), metric)].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn compare_judges_expected_headers_by_count_and_others_exactly() -> Result<()> {
        let step: Step =
            serde_norway::from_str("expect: {upstream: {headers: {x-id: {matches: '@uuid4'}}}}")?;
        let h = observed(
            &[("x-id", "a"), ("x-other", "same"), ("x-forwarded-for", "1")],
            1,
        );
        let e = observed(
            &[("x-id", "b"), ("x-other", "same"), ("x-forwarded-for", "2")],
            1,
        );
        assert!(compare(&step, &h, &e).is_empty());
        let e2 = observed(&[("x-id", "b"), ("x-id", "c"), ("x-other", "same")], 1);
        let diff = compare(&step, &h, &e2);
        assert!(diff.iter().any(|d| d.contains("x-id")), "{diff:?}");
        assert!(
            diff.iter().any(|d| d.contains("x-forwarded-for")),
            "{diff:?}"
        );
        let e3 = observed(
            &[
                ("x-id", "b"),
                ("x-other", "changed"),
                ("x-forwarded-for", "2"),
            ],
            2,
        );
        let diff = compare(&step, &h, &e3);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(
            diff[0].contains("x-other") && diff[1].contains("metric m"),
            "{diff:?}"
        );
        // Envoy-only headers added after the filters are not compared.
        let e4 = observed(
            &[
                ("x-id", "b"),
                ("x-other", "same"),
                ("x-forwarded-for", "2"),
                ("x-envoy-expected-rq-timeout-ms", "15000"),
            ],
            1,
        );
        assert!(compare(&step, &h, &e4).is_empty());
        // A counter of chance (the process's hash seed) is not compared; the others are.
        let mut chance = observed(
            &[("x-id", "b"), ("x-other", "same"), ("x-forwarded-for", "2")],
            1,
        );
        chance
            .metrics
            .insert("gatewasm_rate_limit_slots_reclaimed".into(), 1);
        assert!(compare(&step, &h, &chance).is_empty());
        chance
            .metrics
            .insert("gatewasm_rate_limit_allowed".into(), 1);
        assert_eq!(compare(&step, &h, &chance).len(), 1);
        Ok(())
    }
}
