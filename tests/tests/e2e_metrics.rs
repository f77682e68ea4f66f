//! End-to-end: the filters' metrics as operators see them — Envoy's admin `/stats/prometheus`
//! (what a Prometheus scrapes) — checked against the filters' READMEs and the Grafana dashboard
//! `dashboards/gatewasm.json`.
//!
//! What Envoy 1.40 does with a Wasm counter defined as `gatewasm_…` (found by running it): `/stats`
//! (text and JSON) shows `wasmcustom.gatewasm_…`; `/stats/prometheus` shows the name itself —
//! no `wasmcustom.`, no `envoy_` prefix, no labels, no `_total` — with every character Prometheus
//! does not allow written `_` (a rule `per-client` gives `gatewasm_rate_limit_allowed_per_client`):
//!
//! ```text
//! # TYPE gatewasm_rate_limit_allowed_per_client counter
//! gatewasm_rate_limit_allowed_per_client{} 1
//! ```
//!
//! The filters define their counters when the configuration loads, so every one is exported, at
//! 0, from the start; `?usedonly` leaves those out.
//!
//! - The names come from the "Prometheus name" table of each filter's README (`## Metrics`),
//!   parsed here, so the documentation and this test cannot drift apart. `<tenant>` and `<rule>`
//!   are filled in from the configuration Envoy runs (its tenants and rules, `-` written `_`).
//! - The configurations are the shipped ones, verbatim: `gateway.yaml` (all five filters) and,
//!   for the `global_*` counters of rate-limit (gateway.yaml has no global rule),
//!   `ratelimit-global.yaml` with no rate-limit service listening (its calls fail, which
//!   `failure_mode` answers). Rows that neither can produce must be listed in
//!   [`NOT_PRODUCED`] with the reason; it is empty.
//! - Each request of the traffic names the counters it must move by exactly one, so a name is
//!   tied to what it counts, not only present.
//! - Every metric the dashboard's queries name (or match, for `{__name__=~"…"}`) must be in the
//!   scrape.
//! - The same gateway over gatewasm.wasm, `gateway-bundle.yaml` and `gateway-chain.yaml`, passes
//!   the same checks with the same traffic, and admin `/stats` shows the same `wasmcustom.*`
//!   counters with the same values as gateway.yaml after it.
//!
//! Needs `just build` and `just envoy`; `just test-e2e` does both.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gatewasm_tests::client::{self, Request};
use gatewasm_tests::demo_jwt::{DemoClaims, mint};
use gatewasm_tests::deploy::{self, Shape};
use gatewasm_tests::echo::EchoUpstream;
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};
use gatewasm_tests::paths;
use regex::Regex;

/// The filters whose README has a `## Metrics` section with a "Prometheus name" table.
const FILTERS: [&str; 5] = [
    "correlation-id",
    "trace-propagation",
    "jwt-to-header",
    "tenant-routing",
    "rate-limit",
];

/// README rows (as written there) that no configuration of this test produces, with the reason.
/// Every other row must be produced by `gateway.yaml` or `ratelimit-global.yaml`.
const NOT_PRODUCED: &[(&str, &str)] = &[];

/// README rows `gateway.yaml` cannot produce (checked: exactly these expand to nothing there).
const NOT_IN_GATEWAY: &[(&str, &str)] = &[
    (
        "gatewasm_rate_limit_global_ok_<rule>",
        "gateway.yaml limits locally only; ratelimit-global.yaml has a global and a hybrid rule",
    ),
    ("gatewasm_rate_limit_global_over_limit_<rule>", "as above"),
    ("gatewasm_rate_limit_global_error_<rule>", "as above"),
    ("gatewasm_rate_limit_global_timeout_<rule>", "as above"),
];

// ---- the READMEs ----

/// One row of a filter's "Prometheus name" table.
#[derive(Clone, Debug)]
struct Documented {
    filter: &'static str,
    /// As written, e.g. `gatewasm_rate_limit_allowed_<rule>`.
    pattern: String,
}

/// The `## Metrics` section of `filters/<filter>/README.md`.
fn metrics_section(filter: &str) -> Result<String> {
    let path = paths::workspace_root().join(format!("filters/{filter}/README.md"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let start = text
        .find("\n## Metrics\n")
        .with_context(|| format!("{} has no '## Metrics' section", path.display()))?;
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    Ok(rest[..end].to_string())
}

/// Every row of every README's "Prometheus name" table.
fn documented() -> Result<Vec<Documented>> {
    let name = Regex::new(r"^gatewasm_[a-z0-9_]+(<[a-z]+>)?$")?;
    let mut rows = Vec::new();
    for filter in FILTERS {
        let section = metrics_section(filter)?;
        let mut lines = section
            .lines()
            .skip_while(|l| !l.starts_with("| Prometheus name |"));
        ensure!(
            lines.next().is_some(),
            "filters/{filter}/README.md: no '| Prometheus name |' table under '## Metrics'"
        );
        ensure!(
            lines.next().is_some_and(|l| l.starts_with("|---")),
            "filters/{filter}/README.md: the Prometheus table has no separator row"
        );
        let before = rows.len();
        for line in lines.take_while(|l| l.starts_with('|')) {
            let cell = line.split('|').nth(1).unwrap_or("").trim();
            let pattern = cell
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .with_context(|| {
                    format!("filters/{filter}/README.md: '{cell}' is not one `name` in backticks")
                })?;
            ensure!(
                name.is_match(pattern),
                "filters/{filter}/README.md: '{pattern}' is not a gatewasm_ Prometheus name \
                 (lowercase, digits, _; at most one <placeholder>, at the end)"
            );
            let prefix = format!("gatewasm_{}_", filter.replace('-', "_"));
            ensure!(
                pattern.starts_with(&prefix),
                "filters/{filter}/README.md: '{pattern}' does not start with {prefix}"
            );
            rows.push(Documented {
                filter,
                pattern: pattern.to_string(),
            });
        }
        ensure!(
            rows.len() >= before + 3,
            "filters/{filter}/README.md: the Prometheus table has only {} rows",
            rows.len() - before
        );
    }
    Ok(rows)
}

// ---- the configurations ----

/// What a shipped config sets up that metric names depend on.
#[derive(Debug, Default)]
struct ConfigFacts {
    /// Filters present (README directory names).
    filters: BTreeSet<String>,
    /// tenant-routing's tenant ids.
    tenants: Vec<String>,
    /// rate-limit's rules: (name, has a service, i.e. `global` or `hybrid`).
    rules: Vec<(String, bool)>,
}

/// Reads every Wasm HTTP filter of `envoy-configs/<config>` and its JSON configuration.
fn config_facts(config: &str) -> Result<ConfigFacts> {
    let path = paths::envoy_configs_dir().join(config);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // Placeholders ({{ADMIN_PORT}} …) are ports and paths only; any value parses.
    let text = Regex::new(r"\{\{[A-Z0-9_]+\}\}")?.replace_all(&text, "0");
    let yaml: serde_norway::Value = serde_norway::from_str(&text)?;
    let mut facts = ConfigFacts::default();
    let mut stack = vec![&yaml];
    while let Some(v) = stack.pop() {
        match v {
            serde_norway::Value::Mapping(m) => {
                if m.get("@type").and_then(|t| t.as_str())
                    == Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")
                {
                    wasm_filter_facts(config, &m["config"], &mut facts)?;
                }
                stack.extend(m.values());
            }
            serde_norway::Value::Sequence(s) => stack.extend(s.iter()),
            _ => {}
        }
    }
    ensure!(!facts.filters.is_empty(), "{config}: no Wasm filter found");
    Ok(facts)
}

fn wasm_filter_facts(
    config: &str,
    plugin: &serde_norway::Value,
    facts: &mut ConfigFacts,
) -> Result<()> {
    let file = plugin["vm_config"]["code"]["local"]["filename"]
        .as_str()
        .with_context(|| format!("{config}: a Wasm filter without a local file"))?;
    let module = file.rsplit('/').next().unwrap_or(file);
    let module = module.strip_suffix(".wasm").unwrap_or(module);
    // gatewasm.wasm (the bundle): the root id names the filter, or the chain of them.
    let filter = if module == deploy::BUNDLE {
        plugin["root_id"]
            .as_str()
            .with_context(|| format!("{config}: a plugin of gatewasm.wasm without a root_id"))?
            .to_string()
    } else {
        module.replace('_', "-")
    };
    let json: serde_json::Value = serde_json::from_str(
        plugin["configuration"]["value"]
            .as_str()
            .with_context(|| format!("{config}: {filter} has no StringValue configuration"))?,
    )
    .with_context(|| format!("{config}: {filter}'s configuration"))?;
    if filter == deploy::CHAIN_ROOT_ID {
        for (stage, json) in deploy::chain_stages(&json)? {
            filter_facts(config, stage, &json, facts)?;
        }
        return Ok(());
    }
    filter_facts(config, filter, &json, facts)
}

/// What one filter's configuration (`json`) contributes to `facts`.
fn filter_facts(
    config: &str,
    filter: String,
    json: &serde_json::Value,
    facts: &mut ConfigFacts,
) -> Result<()> {
    match filter.as_str() {
        "tenant-routing" => {
            let tenants = json["tenants"]
                .as_object()
                .with_context(|| format!("{config}: tenant-routing without tenants"))?;
            facts.tenants.extend(tenants.keys().cloned());
        }
        "rate-limit" => {
            for rule in json["rules"].as_array().into_iter().flatten() {
                let name = rule["name"]
                    .as_str()
                    .with_context(|| format!("{config}: a rate-limit rule without a name"))?;
                facts
                    .rules
                    .push((name.to_string(), rule.get("service").is_some()));
            }
        }
        _ => {}
    }
    facts.filters.insert(filter);
    Ok(())
}

/// A name as `/stats/prometheus` writes it: characters other than `[a-zA-Z0-9_:]` become `_`.
fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The Prometheus names a README row stands for under `facts` (empty: the config cannot
/// produce it, e.g. a `global_*` row without a global rule, or the filter is absent).
fn expand(row: &Documented, facts: &ConfigFacts) -> Result<Vec<String>> {
    if !facts.filters.contains(row.filter) {
        return Ok(Vec::new());
    }
    let Some((head, placeholder)) = row.pattern.split_once('<') else {
        return Ok(vec![row.pattern.clone()]);
    };
    let values: Vec<&str> = match placeholder {
        "tenant>" => facts.tenants.iter().map(String::as_str).collect(),
        "rule>" if head.starts_with("gatewasm_rate_limit_global_") => facts
            .rules
            .iter()
            .filter(|(_, global)| *global)
            .map(|(name, _)| name.as_str())
            .collect(),
        "rule>" => facts.rules.iter().map(|(name, _)| name.as_str()).collect(),
        other => bail!("{}: unknown placeholder <{other}", row.pattern),
    };
    Ok(values
        .into_iter()
        .map(|v| prometheus_name(&format!("{head}{v}")))
        .collect())
}

// ---- the scrape ----

/// One `/stats/prometheus` answer: sample name → value (summed over label sets), and the
/// `# TYPE` of each name.
#[derive(Clone, Debug, Default)]
struct Scrape {
    values: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Result<Self> {
        let mut scrape = Scrape::default();
        let mut gatewasm_lines = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    scrape.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let end = line
                .find(['{', ' '])
                .with_context(|| format!("unexpected scrape line '{line}'"))?;
            let name = &line[..end];
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no value in scrape line '{line}'"))?;
            // Two counters that the sanitizing maps to one name would print one name twice.
            if name.starts_with("gatewasm_") {
                ensure!(
                    gatewasm_lines.insert(name.to_string()),
                    "{name} appears twice in the scrape"
                );
            }
            *scrape.values.entry(name.to_string()).or_default() += value;
        }
        Ok(scrape)
    }

    fn get(envoy: &Envoy, query: &str) -> Result<Self> {
        let resp = envoy.admin_get(&format!("/stats/prometheus{query}"))?;
        ensure!(
            resp.status == 200,
            "/stats/prometheus{query}: {}",
            resp.status
        );
        Self::parse(&resp.text())
    }

    fn gatewasm(&self) -> BTreeSet<String> {
        self.values
            .keys()
            .filter(|n| n.starts_with("gatewasm_"))
            .cloned()
            .collect()
    }

    fn value(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(f64::NAN)
    }
}

/// A request and the counters it must move by exactly one.
struct Step {
    what: &'static str,
    req: Request,
    status: u16,
    counts: &'static [&'static str],
}

/// Sends each step's request, checks its status and that each of its counters grew by exactly
/// one in `/stats/prometheus` (polled briefly: some counters move after the response).
fn drive(envoy: &Envoy, steps: Vec<Step>) -> Result<()> {
    for step in steps {
        let before = Scrape::get(envoy, "")?;
        let resp = client::send(envoy.listen_addr(), &step.req)?;
        ensure!(
            resp.status == step.status,
            "{}: status {} (want {}): {}",
            step.what,
            resp.status,
            step.status,
            resp.text()
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let after = Scrape::get(envoy, "")?;
            let wrong: Vec<String> = step
                .counts
                .iter()
                .filter(|n| after.value(n) != before.value(n) + 1.0)
                .map(|n| format!("{n}: {} → {}", before.value(n), after.value(n)))
                .collect();
            if wrong.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{}: counters did not grow by one: {wrong:?}", step.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn api(path: &str, token: &str) -> Request {
    Request::get(path).header("authorization", format!("Bearer {token}"))
}

/// admin `/stats`' `wasmcustom.*` counters (the filters' own), by name.
fn wasmcustom(envoy: &Envoy) -> Result<BTreeMap<String, u64>> {
    Ok(envoy.stats_matching("wasmcustom.")?.into_iter().collect())
}

/// What [`gateway_scrape`] saw.
struct GatewayRun {
    /// `/stats/prometheus` after all the traffic.
    scrape: Scrape,
    /// admin `/stats`' `wasmcustom.*` after the deterministic steps (before the burst, whose
    /// split into passes and denials depends on timing).
    counters: BTreeMap<String, u64>,
}

/// `config` (gateway.yaml, or one of its shapes) with its two upstreams: checks the fresh
/// scrape (every expected name at 0, none in `?usedonly`), drives traffic, returns the scrape
/// after it.
fn gateway_scrape(config: &str, expected: &BTreeSet<String>) -> Result<GatewayRun> {
    let shared = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new(config)
        .upstream(shared.port())
        .upstream2(acme.port())
        .start()?;

    let fresh = Scrape::get(&envoy, "")?;
    let fresh_names = fresh.gatewasm();
    let missing: Vec<_> = expected.difference(&fresh_names).collect();
    ensure!(
        missing.is_empty(),
        "{config}, before any request: documented names missing from /stats/prometheus: \
         {missing:?}"
    );
    for name in expected {
        ensure!(fresh.value(name) == 0.0, "{name} = {}", fresh.value(name));
        ensure!(
            fresh.types.get(name).map(String::as_str) == Some("counter"),
            "{name}: # TYPE {:?}",
            fresh.types.get(name)
        );
    }
    let used = Scrape::get(&envoy, "?usedonly")?.gatewasm();
    ensure!(used.is_empty(), "?usedonly before any request: {used:?}");

    let token = mint(&DemoClaims::default())?;
    // Another token's signature under this token's header and payload: a bad signature.
    let other = mint(&DemoClaims {
        sub: "bob".into(),
        ..DemoClaims::default()
    })?;
    let (signed, _) = token.rsplit_once('.').context("a JWT has three parts")?;
    let (_, other_signature) = other.rsplit_once('.').context("a JWT has three parts")?;
    let forged = format!("{signed}.{other_signature}");

    drive(
        &envoy,
        vec![
            Step {
                what: "a public path, no headers",
                req: Request::get("/hello"),
                status: 200,
                counts: &[
                    "gatewasm_correlation_id_generated",
                    "gatewasm_trace_propagation_started",
                    "gatewasm_tenant_routing_requests_public",
                ],
            },
            Step {
                what: "/api/ with the demo token, an ID and a W3C context",
                req: api("/api/orders", &token)
                    .header("x-request-id", "req-0001")
                    .header(
                        "traceparent",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    ),
                status: 200,
                counts: &[
                    "gatewasm_correlation_id_preserved",
                    "gatewasm_trace_propagation_extracted_w3c",
                    "gatewasm_jwt_to_header_allowed",
                    "gatewasm_jwt_to_header_cache_miss",
                    "gatewasm_jwt_to_header_verify_native",
                    "gatewasm_tenant_routing_requests_acme",
                    "gatewasm_rate_limit_allowed_per_client",
                    "gatewasm_rate_limit_allowed_per_tenant",
                ],
            },
            Step {
                what: "/api/ with the same token again",
                req: api("/api/orders", &token),
                status: 200,
                counts: &[
                    "gatewasm_jwt_to_header_allowed",
                    "gatewasm_jwt_to_header_cache_hit",
                ],
            },
            Step {
                what: "/api/ without a token",
                req: Request::get("/api/orders"),
                status: 401,
                counts: &["gatewasm_jwt_to_header_denied_missing"],
            },
            Step {
                what: "a token with another token's signature",
                req: api("/hello", &forged),
                status: 401,
                counts: &["gatewasm_jwt_to_header_denied_bad_signature"],
            },
            Step {
                what: "a token that is not a JWT",
                req: api("/hello", "not-a-jwt"),
                status: 401,
                counts: &["gatewasm_jwt_to_header_denied_malformed"],
            },
            Step {
                what: "an unknown tenant's host",
                req: Request::get("/hello").header("host", "initech.tenants.localhost"),
                status: 404,
                counts: &[
                    "gatewasm_tenant_routing_requests_unknown",
                    "gatewasm_tenant_routing_rejected_unknown",
                ],
            },
            Step {
                what: "the token's tenant (acme) and the path's (globex) disagree",
                req: api("/t/globex/hello", &token),
                status: 403,
                counts: &["gatewasm_tenant_routing_rejected_conflict"],
            },
            Step {
                what: "globex by its host, an invalid ID, single-header B3",
                req: Request::get("/hello")
                    .header("host", "globex.tenants.localhost")
                    .header("x-request-id", "bad id with spaces")
                    .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
                status: 200,
                counts: &[
                    "gatewasm_tenant_routing_requests_globex",
                    "gatewasm_correlation_id_replaced_invalid",
                    "gatewasm_trace_propagation_extracted_b3",
                ],
            },
            Step {
                what: "multi-header B3",
                req: Request::get("/hello")
                    .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
                    .header("x-b3-spanid", "e457b5a2e4d86bd1"),
                status: 200,
                counts: &["gatewasm_trace_propagation_extracted_b3multi"],
            },
            Step {
                what: "an invalid traceparent",
                req: Request::get("/hello").header("traceparent", "00-not-a-trace-context"),
                status: 200,
                counts: &["gatewasm_trace_propagation_restarted_invalid"],
            },
        ],
    )?;

    let counters = wasmcustom(&envoy)?;

    // per-client's bucket holds 120 + 20 (one more each 0.5 s): 200 requests at once overflow
    // it; every 429 counts one denial, every 200 one pass, of per-client.
    let (allowed, denied) = (
        "gatewasm_rate_limit_allowed_per_client",
        "gatewasm_rate_limit_denied_per_client",
    );
    let before = Scrape::get(&envoy, "")?;
    let burst_token = token.clone();
    let responses = client::send_burst(envoy.listen_addr(), 200, 2, Duration::from_secs(60), {
        move |_| api("/api/orders", &burst_token)
    })?;
    let count = |status: u16| responses.iter().filter(|r| r.status == status).count() as f64;
    let (passed, limited) = (count(200), count(429));
    ensure!(
        limited > 0.0 && passed + limited == 200.0,
        "{passed} × 200, {limited} × 429 of 200"
    );
    let after = Scrape::get(&envoy, "")?;
    for (name, want) in [(allowed, passed), (denied, limited)] {
        ensure!(
            after.value(name) == before.value(name) + want,
            "{name}: {} → {} after {want}",
            before.value(name),
            after.value(name)
        );
    }
    Ok(GatewayRun {
        scrape: after,
        counters,
    })
}

/// `ratelimit-global.yaml` with no rate-limit service listening: `/api/` (global,
/// `failure_mode: allow`) passes, `/admin/` (hybrid, `failure_mode: deny`) gets 429.
fn ratelimit_global_scrape(expected: &BTreeSet<String>) -> Result<Scrape> {
    let backend = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new("ratelimit-global.yaml")
        .upstream(backend.port())
        .start()?;
    let fresh = Scrape::get(&envoy, "")?;
    let fresh_names = fresh.gatewasm();
    let missing: Vec<_> = expected.difference(&fresh_names).collect();
    ensure!(
        missing.is_empty(),
        "ratelimit-global.yaml: documented names missing from /stats/prometheus: {missing:?}"
    );
    drive(
        &envoy,
        vec![
            Step {
                what: "a global rule whose service is down (failure_mode allow)",
                req: Request::get("/api/things"),
                status: 200,
                counts: &[
                    "gatewasm_rate_limit_global_error_api_global",
                    "gatewasm_rate_limit_allowed_api_global",
                ],
            },
            Step {
                what: "a hybrid rule whose service is down (failure_mode deny)",
                req: Request::get("/admin/things"),
                status: 429,
                counts: &[
                    "gatewasm_rate_limit_global_error_admin_hybrid",
                    "gatewasm_rate_limit_denied_admin_hybrid",
                ],
            },
        ],
    )?;
    Scrape::get(&envoy, "")
}

/// The shipped configs this test runs, verbatim.
const CONFIGS: [&str; 2] = ["gateway.yaml", "ratelimit-global.yaml"];

/// The Prometheus names the READMEs promise for `config`.
fn expected_names(config: &str) -> Result<BTreeSet<String>> {
    let facts = config_facts(config)?;
    let mut expected = BTreeSet::new();
    for row in &documented()? {
        expected.extend(expand(row, &facts)?);
    }
    Ok(expected)
}

/// Both ways: nothing documented is missing from `scrape`, nothing exported is undocumented.
fn check_documented(config: &str, expected: &BTreeSet<String>, scrape: &Scrape) -> Result<()> {
    let exported = scrape.gatewasm();
    let missing: Vec<_> = expected.difference(&exported).collect();
    let undocumented: Vec<_> = exported.difference(expected).collect();
    ensure!(
        missing.is_empty() && undocumented.is_empty(),
        "{config}: documented but not in /stats/prometheus: {missing:?}; \
         exported but in no README's Prometheus table: {undocumented:?}"
    );
    Ok(())
}

/// What the runs of both configs saw (each Envoy is started, driven and stopped once, on the
/// thread of the first test that asks).
struct Runs {
    /// The scrape of each of [`CONFIGS`] after its traffic.
    scrapes: BTreeMap<&'static str, Scrape>,
    /// gateway.yaml's `wasmcustom.*` counters after the deterministic steps.
    gateway_counters: BTreeMap<String, u64>,
}

fn runs() -> Result<&'static Runs> {
    static RUNS: OnceLock<Result<Runs, String>> = OnceLock::new();
    RUNS.get_or_init(|| {
        let run = || -> Result<Runs> {
            let mut scrapes = BTreeMap::new();
            let mut gateway_counters = BTreeMap::new();
            for config in CONFIGS {
                let expected = expected_names(config)?;
                let scrape = match config {
                    "gateway.yaml" => {
                        let run = gateway_scrape(config, &expected)?;
                        gateway_counters = run.counters;
                        run.scrape
                    }
                    _ => ratelimit_global_scrape(&expected)?,
                };
                check_documented(config, &expected, &scrape)?;
                scrapes.insert(config, scrape);
            }
            Ok(Runs {
                scrapes,
                gateway_counters,
            })
        };
        run().map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The scrapes of both configs after their traffic.
fn scrapes() -> Result<&'static BTreeMap<&'static str, Scrape>> {
    Ok(&runs()?.scrapes)
}

/// `config`, a shape of gateway.yaml over gatewasm.wasm, with gateway.yaml's traffic: the same
/// checks (documented names at 0 before, each step moving exactly its counters, the burst),
/// the same documented names exported, and admin `/stats` showing the same `wasmcustom.*`
/// counters with the same values as gateway.yaml after the same steps.
fn exports_the_counters_of_gateway_yaml(config: &str) -> Result<()> {
    ensure!(
        expected_names(config)? == expected_names("gateway.yaml")?,
        "{config} and gateway.yaml promise different metrics"
    );
    let expected = expected_names(config)?;
    let run = gateway_scrape(config, &expected)?;
    check_documented(config, &expected, &run.scrape)?;
    let gateway = &runs()?.gateway_counters;
    ensure!(
        gateway.len() >= expected.len()
            && gateway.get("wasmcustom.gatewasm_jwt_to_header_allowed") == Some(&3),
        "gateway.yaml's wasmcustom counters: {gateway:?}"
    );
    let differ: Vec<String> = gateway
        .keys()
        .chain(run.counters.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|name| gateway.get(*name) != run.counters.get(*name))
        .map(|name| {
            format!(
                "{name}: gateway.yaml {:?}, {config} {:?}",
                gateway.get(name),
                run.counters.get(name)
            )
        })
        .collect();
    ensure!(
        differ.is_empty(),
        "admin /stats wasmcustom.* after the same requests: {differ:#?}"
    );
    Ok(())
}

#[test]
fn gateway_bundle_yaml_exports_the_counters_of_gateway_yaml() -> Result<()> {
    exports_the_counters_of_gateway_yaml(Shape::Bundle.gateway_config())
}

#[test]
fn gateway_chain_yaml_exports_the_counters_of_gateway_yaml() -> Result<()> {
    exports_the_counters_of_gateway_yaml(Shape::Chain.gateway_config())
}

#[test]
fn every_documented_metric_is_in_a_real_envoys_prometheus_scrape() -> Result<()> {
    let rows = documented()?;
    let scrapes = scrapes()?;

    // Every README row is produced by one of the configs, or said here why not.
    let gateway = config_facts("gateway.yaml")?;
    let mut not_in_gateway = BTreeSet::new();
    for row in &rows {
        let mut produced = false;
        for config in CONFIGS {
            let names = expand(row, &config_facts(config)?)?;
            produced |= !names.is_empty();
            for name in &names {
                ensure!(
                    scrapes[config].values.contains_key(name),
                    "{config}: {name} ({}) not in the scrape",
                    row.pattern
                );
            }
        }
        let listed = NOT_PRODUCED.iter().any(|(p, _)| *p == row.pattern);
        ensure!(
            produced != listed,
            "{}: {}",
            row.pattern,
            if produced {
                "produced, but listed in NOT_PRODUCED"
            } else {
                "no config here produces it: produce it or list it in NOT_PRODUCED with the reason"
            }
        );
        if expand(row, &gateway)?.is_empty() {
            not_in_gateway.insert(row.pattern.as_str());
        }
    }
    let listed: BTreeSet<&str> = NOT_IN_GATEWAY.iter().map(|(p, _)| *p).collect();
    ensure!(
        not_in_gateway == listed,
        "rows gateway.yaml cannot produce: {not_in_gateway:?}; NOT_IN_GATEWAY says {listed:?}"
    );
    Ok(())
}

// ---- the dashboard ----

/// A metric a PromQL expression selects.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MetricRef {
    /// `name` or `name{…}` or `{__name__="name"}`.
    Name(String),
    /// `{__name__=~"regex"}` (anchored, as Prometheus anchors it).
    NameRegex(String),
}

/// The metrics `expr` selects: identifiers that are neither functions, aggregations, keywords,
/// grouping labels nor label names, and `__name__` matchers. Strings and `[…]` ranges are
/// skipped.
fn metric_refs(expr: &str) -> Result<Vec<MetricRef>> {
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "bool", "offset", "and", "or", "unless", "atan2", "inf", "nan",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = Vec::new();
    let mut i = 0;
    let mut in_braces = false;
    let mut matcher: Option<(String, String)> = None; // (label, operator) before a string
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_spaces = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                let mut j = i + 1;
                let mut s = String::new();
                while j < chars.len() && chars[j] != c {
                    if chars[j] == '\\' && c != '`' && j + 1 < chars.len() {
                        j += 1;
                    }
                    s.push(chars[j]);
                    j += 1;
                }
                ensure!(j < chars.len(), "unterminated string in {expr}");
                if let Some((label, op)) = matcher.take()
                    && in_braces
                    && label == "__name__"
                {
                    refs.push(match op.as_str() {
                        "=" => MetricRef::Name(s),
                        "=~" => MetricRef::NameRegex(s),
                        other => bail!("__name__{other} (a negative name matcher) in {expr}"),
                    });
                }
                i = j + 1;
            }
            '{' => {
                in_braces = true;
                i += 1;
            }
            '}' => {
                in_braces = false;
                i += 1;
            }
            '[' => {
                let end = chars[i..]
                    .iter()
                    .position(|&ch| ch == ']')
                    .with_context(|| format!("unclosed [ in {expr}"))?;
                i += end + 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < chars.len() && ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = skip_spaces(i);
                if in_braces {
                    let mut j = next;
                    let mut op = String::new();
                    while j < chars.len() && "=!~".contains(chars[j]) {
                        op.push(chars[j]);
                        j += 1;
                    }
                    matcher = Some((word, op));
                    i = j;
                } else if GROUPING.contains(&word.as_str()) {
                    // by (a, b): skip the label list.
                    if chars.get(next) == Some(&'(') {
                        let end = chars[next..]
                            .iter()
                            .position(|&ch| ch == ')')
                            .with_context(|| format!("unclosed ( in {expr}"))?;
                        i = next + end + 1;
                    }
                } else if chars.get(next) == Some(&'(')
                    || AGGREGATIONS.contains(&word.as_str())
                    || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                {
                    // A function, an aggregation or a keyword.
                } else {
                    refs.push(MetricRef::Name(word));
                }
            }
            _ => i += 1,
        }
    }
    Ok(refs)
}

#[test]
fn metric_refs_finds_names_and_name_regexes_only() -> Result<()> {
    use MetricRef::{Name, NameRegex};
    let cases: &[(&str, &[MetricRef])] = &[
        (
            r#"sum(rate(gatewasm_a{instance=~"$instance"}[5m]))"#,
            &[Name("gatewasm_a".into())],
        ),
        (
            r#"sum by (rule) (rate(label_replace({__name__=~"gatewasm_b_.+", instance=~"x"}, "rule", "$1", "__name__", "gatewasm_b_(.+)")[5m:]))"#,
            &[NameRegex("gatewasm_b_.+".into())],
        ),
        (
            r#"sum without (le) (rate(x_total[1m] offset 5m)) / on (job) group_left max(y) > bool 0.5e3"#,
            &[Name("x_total".into()), Name("y".into())],
        ),
        (
            r#"{__name__="gatewasm_c", job!="a{b}"} or z"#,
            &[Name("gatewasm_c".into()), Name("z".into())],
        ),
    ];
    for (expr, want) in cases {
        let got = metric_refs(expr)?;
        ensure!(got == *want, "{expr}: {got:?}, want {want:?}");
    }
    ensure!(metric_refs(r#"{__name__!~"gatewasm_.*"}"#).is_err());
    Ok(())
}

#[test]
fn every_dashboard_query_names_metrics_envoy_exports() -> Result<()> {
    let path = paths::workspace_root().join("dashboards/gatewasm.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;

    // A standard dashboard model with a Prometheus data source variable used by every panel.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("no templating.list")?;
    ensure!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "no Prometheus data source variable named 'datasource'"
    );
    let panels = dashboard["panels"].as_array().context("no panels")?;
    ensure!(panels.len() >= 7, "{} panels", panels.len());

    let scrapes = scrapes()?;
    let exported: BTreeSet<&str> = scrapes
        .values()
        .flat_map(|s| s.values.keys().map(String::as_str))
        .collect();

    // The Envoy variable's query names a metric Envoy exports too.
    let label_values = Regex::new(r"^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*),")?;
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["definition"].as_str().unwrap_or_default();
        let metric = label_values
            .captures(query)
            .with_context(|| format!("variable {}: query '{query}'", v["name"]))?;
        ensure!(
            exported.contains(&metric[1]),
            "variable {}: {} is not in the scrape",
            v["name"],
            &metric[1]
        );
    }

    let mut covered = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "{title}: datasource {}",
            panel["datasource"]
        );
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .with_context(|| format!("{title}: no targets"))?;
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("{title}: a target without expr"))?;
            ensure!(
                expr.contains("rate(") && expr.contains("[5m"),
                "{title}: '{expr}' is not a rate over 5m"
            );
            let refs = metric_refs(expr)?;
            ensure!(!refs.is_empty(), "{title}: '{expr}' names no metric");
            for r in refs {
                match r {
                    MetricRef::Name(name) => {
                        ensure!(
                            exported.contains(name.as_str()),
                            "{title}: {name} is not in the scrape of {CONFIGS:?}"
                        );
                        covered.insert(name);
                    }
                    MetricRef::NameRegex(re) => {
                        ensure!(
                            re.starts_with("gatewasm_") && re.len() > "gatewasm_".len() + 3,
                            "{title}: the name regex '{re}' is too wide"
                        );
                        let anchored = Regex::new(&format!("^(?:{re})$"))?;
                        let matched: Vec<&str> = exported
                            .iter()
                            .copied()
                            .filter(|n| anchored.is_match(n))
                            .collect();
                        ensure!(
                            !matched.is_empty(),
                            "{title}: '{re}' matches nothing in the scrape of {CONFIGS:?}"
                        );
                        covered.extend(matched.into_iter().map(String::from));
                    }
                }
            }
        }
    }

    // The panels the dashboard promises (issue #22): one metric of each is graphed.
    for name in [
        "gatewasm_jwt_to_header_allowed",
        "gatewasm_jwt_to_header_denied_missing",
        "gatewasm_jwt_to_header_denied_bad_signature",
        "gatewasm_jwt_to_header_jwks_fetch_ok",
        "gatewasm_jwt_to_header_jwks_fetch_failed",
        "gatewasm_tenant_routing_requests_acme",
        "gatewasm_tenant_routing_requests_public",
        "gatewasm_tenant_routing_rejected_conflict",
        "gatewasm_rate_limit_allowed_per_client",
        "gatewasm_rate_limit_denied_per_client",
        "gatewasm_rate_limit_denied_admin_hybrid",
        "gatewasm_trace_propagation_extracted_w3c",
        "gatewasm_trace_propagation_restarted_invalid",
        "gatewasm_trace_propagation_started",
        "gatewasm_correlation_id_generated",
        "gatewasm_correlation_id_preserved",
        "gatewasm_correlation_id_replaced_invalid",
    ] {
        ensure!(covered.contains(name), "no dashboard panel graphs {name}");
    }
    Ok(())
}
