//! `request-cost`: the bench request through each filter of gateway.yaml (and the chain) in
//! the harness — callbacks, host calls and Wasm instructions with a repeated and a fresh token —
//! printed as JSON (`gatewasm_xtask::bench::HarnessCosts`). `just bench` passes it to the bench
//! (`--harness-costs`), which has no harness of its own.

use std::process::ExitCode;

fn main() -> ExitCode {
    match gatewasm_tests::cost::gateway_costs_with_demo_tokens()
        .and_then(|costs| Ok(serde_json::to_string_pretty(&costs)?))
    {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("request-cost: {e:#}");
            ExitCode::FAILURE
        }
    }
}
