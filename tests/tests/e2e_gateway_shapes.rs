//! End-to-end: what the shapes of the edge gateway change in Envoy itself. `gateway.yaml` loads
//! one module per filter, with a vm_id each; `gateway-bundle.yaml` loads gatewasm.wasm for all
//! five filters with one vm_id; `gateway-chain.yaml` loads it once, in chain mode
//! (`deploy::Shape`).
//!
//! What the gateway promises is checked on all three by the other end-to-end tests
//! (`gateway_shapes!` in e2e_correlation_id, e2e_trace_propagation, e2e_jwt_to_header,
//! e2e_tenant_routing, e2e_rate_limit, e2e_request_spellings; the counters in e2e_metrics).
//! Here: the bundle and the chain run one Wasm VM per thread where gateway.yaml runs five, on
//! one and on two workers. Envoy's resident memory after a warm-up is printed next to it (not
//! asserted: it depends on the machine and the allocator). And why the bundle shares no VM in
//! Istio: Envoy keys VMs on their environment variables too, and istiod gives each WasmPlugin's
//! VM its own (`ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION`, the plugin's resourceVersion).
//!
//! Needs `just build` and `just envoy`; `just test-e2e` does both.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatewasm_tests::client::{self, Request};
use gatewasm_tests::demo_jwt::{DemoClaims, mint};
use gatewasm_tests::deploy::{FILTERS, SHAPES, Shape};
use gatewasm_tests::echo::EchoUpstream;
use gatewasm_tests::envoy::{Envoy, EnvoyBuilder};

/// `VmRSS` of `/proc/<pid>/status`, in KiB.
fn rss_kib(envoy: &Envoy) -> Result<u64> {
    let pid = envoy.pid().context("Envoy has no pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// The number of Wasm VMs Envoy runs (admin `/stats`): `wasm.wasm_vm_count` where Envoy has it
/// (1.40), else the V8 runtime's gauge of live VMs, which counts the same VMs (Envoy 1.36 has
/// only that one).
fn vm_count(envoy: &Envoy) -> Result<u64> {
    envoy
        .counter("wasm.wasm_vm_count")
        .or_else(|_| envoy.counter("wasm.envoy.wasm.runtime.v8.active"))
}

/// One shape on `workers` workers, after a warm-up that reaches every filter on every worker:
/// (Wasm VMs, VmRSS in KiB).
fn run(shape: Shape, workers: usize) -> Result<(u64, u64)> {
    let shared = EchoUpstream::start()?;
    let acme = EchoUpstream::start()?;
    let envoy = EnvoyBuilder::new(shape.gateway_config())
        .upstream(shared.port())
        .upstream2(acme.port())
        .concurrency(workers)
        .start()?;
    let token = format!("Bearer {}", mint(&DemoClaims::default())?);
    // Every worker must take connections, so each has created its VMs. Which worker accepts a
    // connection is the kernel's choice (SO_REUSEPORT): a burst of 4 per worker can, rarely,
    // all land on one, so another burst is sent until each worker has had some (5 at most).
    let mut busy = 0;
    for _ in 0..5 {
        let token = token.clone();
        let responses = client::send_burst(
            envoy.listen_addr(),
            300,
            4 * workers,
            Duration::from_secs(60),
            move |i| match i % 3 {
                0 => Request::get("/hello"),
                1 => Request::get("/api/orders").header("authorization", &token),
                _ => Request::get("/t/globex/items"),
            },
        )?;
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        ensure!(
            statuses.iter().all(|s| [200, 429].contains(s)),
            "{}: {statuses:?}",
            shape.gateway_config()
        );
        busy = envoy
            .stats_matching(".downstream_cx_total")?
            .into_iter()
            .filter(|(n, v)| n.starts_with("listener.") && n.contains(".worker_") && *v > 0)
            .count();
        if busy == workers {
            break;
        }
    }
    ensure!(
        busy == workers,
        "{busy} of {workers} workers took connections (5 bursts)"
    );
    std::thread::sleep(Duration::from_millis(300));
    Ok((vm_count(&envoy)?, rss_kib(&envoy)?))
}

#[test]
fn the_bundle_and_the_chain_run_one_vm_per_thread_where_gateway_yaml_runs_five() -> Result<()> {
    let mut report =
        String::from("config                 workers  Wasm VMs  VmRSS after warm-up\n");
    for workers in [1, 2] {
        let mut vms = Vec::new();
        for &shape in SHAPES {
            let (count, rss) = run(shape, workers)?;
            report.push_str(&format!(
                "{:<22} {workers:>7}  {count:>8}  {:>7.1} MiB\n",
                shape.gateway_config(),
                rss as f64 / 1024.0
            ));
            vms.push((shape, count));
        }
        let count = |s: Shape| vms.iter().find(|(v, _)| *v == s).map(|(_, c)| *c);
        let (separate, bundle, chain) = (
            count(Shape::Separate).context("separate")?,
            count(Shape::Bundle).context("bundle")?,
            count(Shape::Chain).context("chain")?,
        );
        // One VM per thread that runs Wasm (Envoy's main thread, each worker, and the base VM
        // they are cloned from): gateway.yaml has that for each of its five vm_ids.
        ensure!(
            bundle == chain && separate == FILTERS.len() as u64 * bundle,
            "{workers} workers: VMs gateway.yaml {separate}, bundle {bundle}, chain {chain}"
        );
        ensure!(
            bundle == workers as u64 + 2,
            "{workers} workers: {bundle} VMs for one vm_id"
        );
    }
    eprintln!("{report}");
    Ok(())
}

/// gateway-bundle.yaml's plugins as istiod would generate them (no vm_id; a VM environment
/// variable carrying each WasmPlugin's resourceVersion), `versions[i]` for the i-th filter.
fn istio_style_bundle(dir: &std::path::Path, versions: &[&str]) -> Result<String> {
    let path = gatewasm_tests::paths::envoy_configs_dir().join(Shape::Bundle.gateway_config());
    let mut text = std::fs::read_to_string(&path)?;
    const VM_ID: &str = "                  vm_id: gatewasm\n";
    ensure!(
        text.matches(VM_ID).count() == versions.len(),
        "one vm_id per plugin"
    );
    for version in versions {
        text = text.replacen(
            VM_ID,
            &format!(
                "                  vm_id: \"\"\n                  environment_variables:\n                    \
                 key_values: {{ ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION: \"{version}\" }}\n"
            ),
            1,
        );
    }
    let out = dir.join(format!("istio-style-{}", Shape::Bundle.gateway_config()));
    std::fs::write(&out, text)?;
    Ok(out.display().to_string())
}

#[test]
fn vms_are_shared_only_when_the_environment_is_the_same() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let versions = |same: bool| -> Vec<String> {
        (0..FILTERS.len())
            .map(|i| {
                if same {
                    "7".to_string()
                } else {
                    format!("{}", 100 + i)
                }
            })
            .collect()
    };
    for same in [true, false] {
        let versions = versions(same);
        let refs: Vec<&str> = versions.iter().map(String::as_str).collect();
        let config = istio_style_bundle(dir.path(), &refs)?;
        let envoy = EnvoyBuilder::new(&config).start()?;
        // Envoy keys a VM by vm_id, configuration and code; the VM's environment variables
        // joined the key with envoyproxy/envoy#44563 (April 2026). Before, plugins that differ
        // only in them share a VM. Checked on the two versions we test; others must be checked
        // before they are claimed.
        let envoy_version = envoy.server_version()?;
        let minor: u32 = envoy_version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("Envoy version '{envoy_version}'"))?;
        let environment_in_vm_key = match minor {
            ..=36 => false,
            40.. => true,
            _ => bail!(
                "Envoy {envoy_version}: whether its VM key holds the environment is unchecked"
            ),
        };
        let want = if same || !environment_in_vm_key {
            1
        } else {
            FILTERS.len() as u64
        };
        // --concurrency 1: the base VM, the main thread's and the worker's, per VM key.
        let vms = vm_count(&envoy)?;
        ensure!(
            vms == 3 * want,
            "resource versions {versions:?}: {vms} VMs, want {}",
            3 * want
        );
    }
    Ok(())
}
