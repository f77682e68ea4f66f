//! Deterministic per-request cost of each gatewasm filter: the bench request of `just bench`
//! sent through the real `.wasm` in the harness, counting what Envoy would pay for —
//! **callbacks** into the VM, **host calls** and **Wasm instructions** (wasmtime fuel). What
//! each costs in Envoy is measured by `just bench --instructions` (README, "Instruction
//! counts"): a callback 1.4–2.0k Envoy instructions, a host call 1k (clock, counter) to 12k
//! (calls that hand data to the module, which Envoy allocates through its `malloc`); a Wasm
//! instruction well under one.
//!
//! Unlike CPU time on a shared machine these figures do not move between runs, so the tests
//! bound them (a regression check) and the bench report prints them beside Envoy's figures.
//! The configuration of each filter is the one in `envoy-configs/gateway.yaml`.

use anyhow::{Context, Result, anyhow};
use proxy_wasm_harness::{Host, Module, PluginConfig, Worker};

use crate::bench::{BENCH_PATH, common_headers};
use crate::deploy;

/// The harness clock's start (2026-01-01T00:00:00Z, `Host::new`): tokens for [`gateway_costs`]
/// are issued then.
pub const HARNESS_EPOCH_S: u64 = 1_767_225_600;

pub use crate::bench::{HarnessCosts, RequestCost};

/// The gatewasm filters of gateway.yaml in chain order, as harness plugins: (name, plugin).
pub fn gateway_plugins() -> Result<Vec<(String, PluginConfig)>> {
    deploy::FILTERS
        .iter()
        .filter_map(|f| {
            let config =
                deploy::envoy_filter_configuration("gateway.yaml", &f.envoy_filter_name()).ok()?;
            Some((f, config))
        })
        .map(|(f, config)| {
            let module = Module::artifact(f.name).map_err(|e| anyhow!("{e}"))?;
            Ok((
                f.name.to_string(),
                PluginConfig::new(&module)
                    .name(&f.envoy_filter_name())
                    .vm_id(&f.envoy_filter_name())
                    .configuration(config.to_string()),
            ))
        })
        .collect()
}

/// The gatewasm filters of gateway.yaml from the bundle, gatewasm.wasm: each its own plugin
/// with its filter's root id and one VM id (bundle mode), and all of them as the stages of one
/// plugin (chain mode, root id `chain`).
pub fn gateway_bundle_plugins() -> Result<(Vec<PluginConfig>, PluginConfig)> {
    let module = Module::artifact("gatewasm").map_err(|e| anyhow!("{e}"))?;
    let mut bundle = Vec::new();
    let mut stages = Vec::new();
    for f in deploy::FILTERS {
        let Ok(config) = deploy::envoy_filter_configuration("gateway.yaml", &f.envoy_filter_name())
        else {
            continue;
        };
        bundle.push(
            PluginConfig::new(&module)
                .name(&f.envoy_filter_name())
                .root_id(f.name)
                .vm_id("gatewasm")
                .configuration(config.to_string()),
        );
        stages.push(serde_json::json!({"filter": f.name, "config": config}));
    }
    let chain = PluginConfig::new(&module)
        .name("gatewasm.chain")
        .root_id("chain")
        .vm_id("gatewasm")
        .configuration(serde_json::json!({ "stages": stages }).to_string());
    Ok((bundle, chain))
}

/// One worker running `chain`, ready for [`measure`].
pub fn worker(chain: &[PluginConfig]) -> Result<Worker> {
    let host = Host::new();
    for cluster in ["upstream", "tenant_acme", "jwks"] {
        host.add_cluster(cluster);
    }
    Worker::new(&host, chain).map_err(|e| anyhow!("{e}"))
}

/// The bench request (GET `BENCH_PATH`, tenant acme, a trace context, `token`) through the
/// worker's chain and a 200 "ok" answer; what the stream cost. Fails if a filter answered
/// instead of the upstream (the bench measures the pass-through path).
pub fn measure(worker: &mut Worker, token: &str) -> Result<RequestCost> {
    let mut request: Vec<(String, String)> = vec![
        (":method".into(), "GET".into()),
        (":scheme".into(), "http".into()),
        (":path".into(), BENCH_PATH.into()),
        (":authority".into(), "acme.tenants.localhost".into()),
    ];
    request.extend(
        common_headers(token)
            .into_iter()
            .filter(|(name, _)| name != "host"),
    );
    let request: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    worker.clear_history();
    let view = worker
        .exchange(
            &request,
            None,
            &[(":status", "200"), ("content-type", "text/plain")],
            Some(b"ok\n"),
        )
        .map_err(|e| anyhow!("{e}"))?;
    if let Some(reply) = &view.local_response {
        return Err(anyhow!(
            "a filter answered the bench request with {}: {:?}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    let mut cost = RequestCost::default();
    for record in worker.history() {
        cost.callbacks += 1;
        cost.host_calls += record.host_calls;
        cost.instructions += record.fuel;
        for (name, n) in &record.host_calls_by_name {
            *cost
                .host_calls_by_name
                .entry((*name).to_string())
                .or_insert(0) += n;
        }
    }
    Ok(cost)
}

/// How many repeated-token requests a profiling run ([`gateway_costs`] with
/// `GATEWASM_COST_PROFILE` set) sends after its warm-up.
pub const PROFILE_REQUESTS: usize = 100;

/// Per filter of gateway.yaml (and the whole chain): the cost of a request whose token the
/// filter has seen before (`repeated`) and of one it has not (`fresh`; the same as
/// `repeated` for filters that do not read tokens). `tokens` yields distinct valid tokens.
pub fn gateway_costs(mut tokens: impl FnMut() -> Result<String>) -> Result<HarnessCosts> {
    let plugins = gateway_plugins()?;
    let mut cases: Vec<(String, Vec<PluginConfig>)> = plugins
        .iter()
        .map(|(name, p)| (name.clone(), vec![p.clone()]))
        .collect();
    cases.push((
        format!("gatewasm chain ({})", plugins.len()),
        plugins.iter().map(|(_, p)| p.clone()).collect(),
    ));
    let (bundle, chain) = gateway_bundle_plugins()?;
    cases.push((format!("gatewasm bundle ({})", bundle.len()), bundle));
    cases.push((
        format!("gatewasm chain mode ({})", plugins.len()),
        vec![chain],
    ));
    // Profiling (`just profile-wasm`): one case, its repeated-token request many times.
    let profile = std::env::var("GATEWASM_COST_PROFILE").ok();
    let mut out = Vec::new();
    for (name, chain) in cases {
        if let Some(only) = &profile {
            if name.contains(only.as_str()) {
                let mut w = worker(&chain)?;
                let warm = tokens()?;
                measure(&mut w, &warm).with_context(|| format!("{name}: warm-up"))?;
                let mut repeated = RequestCost::default();
                for _ in 0..PROFILE_REQUESTS {
                    repeated =
                        measure(&mut w, &warm).with_context(|| format!("{name}: repeated"))?;
                }
                out.push((name, repeated.clone(), repeated));
            }
            continue;
        }
        let mut w = worker(&chain)?;
        let warm = tokens()?;
        // Twice: the first request of a worker pays one-time set-up (lazy tables).
        measure(&mut w, &warm).with_context(|| format!("{name}: warm-up"))?;
        let repeated = measure(&mut w, &warm).with_context(|| format!("{name}: repeated"))?;
        let fresh = measure(&mut w, &tokens()?).with_context(|| format!("{name}: fresh"))?;
        out.push((name, repeated, fresh));
    }
    Ok(out)
}

/// [`gateway_costs`] with demo-IdP tokens issued at the harness clock (distinct `jti`s): what
/// the bench report prints and the regression bounds check.
pub fn gateway_costs_with_demo_tokens() -> Result<HarnessCosts> {
    let mut n = 0u32;
    gateway_costs(|| {
        n += 1;
        crate::demo_jwt::mint(&crate::demo_jwt::DemoClaims {
            jti: Some(format!("cost-{n}")),
            issued_at: Some(HARNESS_EPOCH_S),
            ..Default::default()
        })
    })
}

/// The callbacks of the last [`measure`]: (callback, host calls, instructions), for profiling.
pub fn last_callbacks(worker: &Worker) -> Vec<(&'static str, u64, u64)> {
    worker
        .history()
        .iter()
        .map(|r| (r.callback, r.host_calls, r.fuel))
        .collect()
}
