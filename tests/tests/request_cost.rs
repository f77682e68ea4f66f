//! The deterministic per-request cost of each filter of gateway.yaml (see
//! `gatewasm_tests::cost`): callbacks into the VM, host calls and Wasm instructions for the
//! bench request, with a token the filter has seen and with a fresh one. The bounds are a
//! regression check — a change that adds a host call to the per-request path must say so here.
//!
//! Needs `just build`.

use std::time::Duration;

use anyhow::Result;
use gatewasm_tests::cost::{RequestCost, gateway_costs};
use gatewasm_tests::demo_jwt::{DemoClaims, mint};

/// The harness clock's start (2026-01-01T00:00:00Z): tokens are issued then.
const HARNESS_EPOCH_S: u64 = 1_767_225_600;

/// (filter, most host calls with a repeated token, with a fresh one).
const HOST_CALL_BOUNDS: &[(&str, u64, u64)] = &[
    ("correlation-id", 99, 99),
    ("trace-propagation", 99, 99),
    ("jwt-to-header", 99, 99),
    ("tenant-routing", 99, 99),
    ("rate-limit", 99, 99),
];

#[test]
fn per_request_costs_stay_within_their_bounds() -> Result<()> {
    let mut n = 0u32;
    let costs = gateway_costs(|| {
        n += 1;
        mint(&DemoClaims {
            jti: Some(format!("cost-{n}")),
            issued_at: Some(HARNESS_EPOCH_S),
            ttl: Duration::from_secs(3600),
            ..DemoClaims::default()
        })
    })?;
    eprintln!(
        "filter | callbacks | host calls (repeated / fresh) | instructions (repeated / fresh)"
    );
    for (name, repeated, fresh) in &costs {
        eprintln!(
            "{name} | {} | {} / {} | {} / {}",
            repeated.callbacks,
            repeated.host_calls,
            fresh.host_calls,
            repeated.instructions,
            fresh.instructions
        );
    }
    for (name, max_repeated, max_fresh) in HOST_CALL_BOUNDS {
        let (_, repeated, fresh): &(String, RequestCost, RequestCost) = costs
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| anyhow::anyhow!("{name} is not in gateway.yaml"))?;
        assert!(
            repeated.host_calls <= *max_repeated && fresh.host_calls <= *max_fresh,
            "{name}: {} / {} host calls, bound {max_repeated} / {max_fresh}",
            repeated.host_calls,
            fresh.host_calls
        );
    }
    Ok(())
}
