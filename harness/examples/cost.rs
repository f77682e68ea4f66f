//! Per-request cost of a filter in the harness: wasm instructions (deterministic) and wall time
//! (median of batches; noisy on shared machines — compare variants side by side in one run).
//!
//! `cargo run --release -p proxy-wasm-harness --example cost -- <file.wasm>... [--config JSON] [--requests N]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm_harness::{Host, Module, PluginConfig, Worker};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    let mut config = String::new();
    let mut requests = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().unwrap_or_default(),
            "--requests" => requests = args.next().and_then(|n| n.parse().ok()).unwrap_or(requests),
            _ => files.push(a),
        }
    }
    println!(
        "{:<60} {:>10} {:>16} {:>14}",
        "module", "bytes", "instr/request", "median µs/req"
    );
    // Interleave the variants batch by batch so machine noise hits all of them alike.
    let mut rows = Vec::new();
    for f in &files {
        let module = Module::load(f)?;
        let host = Host::new();
        let worker = Worker::new(
            &host,
            &[PluginConfig::new(&module).configuration(config.clone())],
        )?;
        rows.push((
            f.clone(),
            std::fs::metadata(f)?.len(),
            worker,
            Vec::new(),
            0u64,
        ));
    }
    let request = [
        (":method", "GET"),
        (":path", "/api/v1/items?x=1"),
        (":authority", "api.example.com"),
        ("user-agent", "bench/1"),
        ("x-request-id", "bench-request-id-0001"),
    ];
    let response = [(":status", "200"), ("content-type", "application/json")];
    for batch in 0..7 {
        for row in rows.iter_mut() {
            row.2.clear_history();
            let start = Instant::now();
            for _ in 0..requests / 7 {
                row.2.exchange(&request, None, &response, None)?;
            }
            let elapsed = start.elapsed().as_secs_f64() * 1e6 / (requests / 7) as f64;
            if batch > 0 {
                row.3.push(elapsed);
            }
            let fuel: u64 = row.2.history().iter().map(|c| c.fuel).sum();
            row.4 = fuel / (requests / 7) as u64;
        }
    }
    for (f, size, _, mut times, fuel) in rows {
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
        println!("{f:<60} {size:>10} {fuel:>16} {median:>14.2}");
    }
    Ok(())
}
