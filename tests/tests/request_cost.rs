//! The deterministic per-request cost of each filter of gateway.yaml (see
//! `gatewasm_tests::cost`): callbacks into the VM, host calls and Wasm instructions for the
//! bench request, with a token the filter has seen and with a fresh one. The bounds are a
//! regression check — a change that adds a host call to the per-request path must say so here.
//!
//! Needs `just build`.

use anyhow::Result;
use gatewasm_tests::cost::{RequestCost, gateway_costs_with_demo_tokens};

/// Per filter (and per shape of the whole chain): callbacks per request (exact: the exports
/// `just build` keeps), and the most host calls and Wasm instructions allowed with a repeated /
/// a fresh token. Instruction bounds leave ~15% headroom over the figures of 2026-12-05, when
/// the filters became stages whose effects are collected, then applied (a standalone filter's
/// Wasm instructions rose 10–30%, Envoy's instructions for it 2–4%: README, Performance),
/// tightened on 2026-12-06 to ~15% over that day's figures where they fell (chain mode
/// 118k → 85k: the chain's bookkeeping; jwt-to-header's cached-token compare; rate-limit's
/// response headers); host calls and callbacks are exact design figures.
struct Bound {
    filter: &'static str,
    callbacks: u64,
    host_calls: (u64, u64),
    instructions: (u64, u64),
}

const BOUNDS: &[Bound] = &[
    // context create, request headers, response headers (echoes the ID), delete.
    Bound {
        filter: "correlation-id",
        callbacks: 4,
        host_calls: (4, 4),
        instructions: (9_800, 9_800),
    },
    Bound {
        filter: "trace-propagation",
        callbacks: 4,
        host_calls: (5, 5),
        instructions: (13_400, 13_400),
    },
    // create, request headers, delete. Fresh: + verify_signature, + the cache-miss counter.
    Bound {
        filter: "jwt-to-header",
        callbacks: 3,
        host_calls: (9, 11),
        instructions: (19_200, 78_800),
    },
    Bound {
        filter: "tenant-routing",
        callbacks: 3,
        host_calls: (6, 6),
        instructions: (11_000, 11_000),
    },
    // Two rules: a shared-data read and a CAS write each; five rate-limit response headers.
    Bound {
        filter: "rate-limit",
        callbacks: 4,
        host_calls: (12, 12),
        instructions: (23_100, 23_100),
    },
    // The five as plugins of gatewasm.wasm: the same work, and every plugin is entered for
    // response headers (the module exports the callback for the filters that need it).
    Bound {
        filter: "gatewasm bundle (5)",
        callbacks: 20,
        host_calls: (38, 40),
        instructions: (87_000, 146_800),
    },
    // Chain mode: create, request headers, response headers, delete; one header-map read, one
    // write per changed header, one route-cache clear, one clock read.
    Bound {
        filter: "gatewasm chain mode (5)",
        callbacks: 4,
        host_calls: (32, 34),
        instructions: (97_800, 156_900),
    },
];

#[test]
fn per_request_costs_stay_within_their_bounds() -> Result<()> {
    let costs = gateway_costs_with_demo_tokens()?;
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
    // Every import counts its own calls by name; together they are every call the call hook
    // saw (an import defined without its count would break the instruction report's breakdown).
    for (name, repeated, fresh) in &costs {
        for cost in [repeated, fresh] {
            let by_name: u64 = cost.host_calls_by_name.values().sum();
            assert_eq!(
                by_name, cost.host_calls,
                "{name}: host calls by name {:?}",
                cost.host_calls_by_name
            );
        }
    }
    for b in BOUNDS {
        let (_, repeated, fresh): &(String, RequestCost, RequestCost) = costs
            .iter()
            .find(|(n, _, _)| n == b.filter)
            .ok_or_else(|| anyhow::anyhow!("{} is not among the measured cases", b.filter))?;
        assert_eq!(repeated.callbacks, b.callbacks, "{}: callbacks", b.filter);
        assert_eq!(fresh.callbacks, b.callbacks, "{}: callbacks", b.filter);
        assert!(
            repeated.host_calls <= b.host_calls.0 && fresh.host_calls <= b.host_calls.1,
            "{}: {} / {} host calls, bound {:?}",
            b.filter,
            repeated.host_calls,
            fresh.host_calls,
            b.host_calls
        );
        assert!(
            repeated.instructions <= b.instructions.0 && fresh.instructions <= b.instructions.1,
            "{}: {} / {} instructions, bound {:?}",
            b.filter,
            repeated.instructions,
            fresh.instructions,
            b.instructions
        );
    }
    Ok(())
}
