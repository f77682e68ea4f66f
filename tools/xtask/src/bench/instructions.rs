//! The instruction counter (`just bench --instructions`): Envoy run under valgrind's callgrind,
//! its instructions per request in a case counted over requests sent one at a time
//! ([`count_instructions`]) — a figure that does not move with the machine's other load. The
//! report of the counts is in `report.rs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::cpu::{Connection, request_bytes, slug, with_dynamic_module};
use super::{Case, envoy_config};
use crate::envoy::{Envoy, EnvoyBuilder};

/// Requests [`count_instructions`] sends before it starts counting (caches, V8 tiers, Envoy's
/// lazily built state) and while it counts.
pub const CALLGRIND_WARMUP: usize = 300;
pub const CALLGRIND_REQUESTS: usize = 1000;

/// Envoy's instructions per request in this case, counted by callgrind: Envoy runs under
/// valgrind, gets [`CALLGRIND_WARMUP`] requests, its counters are zeroed, it gets
/// [`CALLGRIND_REQUESTS`] more on one keep-alive connection (sent one at a time), and the count
/// (every thread, user space) is divided by them. Unlike CPU time this does not move with the
/// machine's other load: repeated counts of one case differ by well under 1%. It counts work,
/// not time — an instruction of V8's generated code and one of Envoy's C++ are not the same
/// price — so it complements the CPU figures rather than replacing them.
pub fn count_instructions(gateway: &Value, case: &Case, work: &Path) -> Result<f64> {
    let config_path = work.join(format!("{}.json", slug(&case.name)));
    std::fs::write(&config_path, envoy_config(gateway, case)?)?;
    let out_dir = work.join(format!("{}.callgrind", slug(&case.name)));
    std::fs::create_dir_all(&out_dir)?;
    let out_arg = format!("--callgrind-out-file={}/out.%p", out_dir.display());
    let envoy: Envoy =
        with_dynamic_module(EnvoyBuilder::new(&config_path.display().to_string()), case)?
            .wrapper(&[
                "valgrind",
                "--tool=callgrind",
                "--smc-check=all-non-file",
                &out_arg,
            ])
            .ready_timeout(Duration::from_secs(600))
            .log_level("warning")
            .start()
            .with_context(|| format!("starting Envoy under callgrind for {}", case.name))?;
    let pid = envoy.pid().context("Envoy has no pid")?.to_string();
    let mut conn = Connection::open(envoy.listen_addr())?;
    conn.reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(60)))?;
    let fixed = request_bytes(&case.headers, None);
    let tokens = case.rotating_tokens.as_deref().filter(|t| !t.is_empty());
    let mut send = |i: usize| -> Result<()> {
        let rotated = tokens.map(|t| request_bytes(&case.headers, Some(&t[i % t.len()])));
        let status = conn.round_trip(rotated.as_deref().unwrap_or(&fixed))?;
        ensure!(
            status == case.expected_status,
            "{}: request {i} answered {status}, not {}",
            case.name,
            case.expected_status
        );
        Ok(())
    };
    for i in 0..CALLGRIND_WARMUP {
        send(i)?;
    }
    callgrind_control(&["--zero", &pid])?;
    for i in CALLGRIND_WARMUP..CALLGRIND_WARMUP + CALLGRIND_REQUESTS {
        send(i)?;
    }
    callgrind_control(&["--dump=measured", &pid])?;
    // A filter that failed (a VM that did not start under valgrind, a trap) may be skipped by
    // its failure policy and still answer 200: that count would be of a different chain.
    let log = envoy.log();
    ensure!(
        !log.contains("][error][") && !log.contains("][critical]["),
        "{}: Envoy logged errors while counting; the count would not be of this case:\n{}",
        case.name,
        log.lines()
            .filter(|l| l.contains("][error][") || l.contains("][critical]["))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The first dump is `out.<pid>.1`; valgrind writes it at its next scheduling point.
    let dump = out_dir.join(format!("out.{pid}.1"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&dump)
            && let Some(total) = callgrind_total(&text)
        {
            return Ok(total as f64 / CALLGRIND_REQUESTS as f64);
        }
        ensure!(
            Instant::now() < deadline,
            "callgrind wrote no complete dump to {}",
            dump.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn callgrind_control(args: &[&str]) -> Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .output()
        .context("running callgrind_control (valgrind)")?;
    ensure!(
        out.status.success(),
        "callgrind_control {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The instruction count of a callgrind dump (its `summary:` line, events `Ir`).
pub fn callgrind_total(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_of_a_callgrind_dump() {
        let dump = "# callgrind format\nversion: 1\ncmd: envoy\nevents: Ir\nsummary: 87482762\n\
                    totals: 87913351\n";
        assert_eq!(callgrind_total(dump), Some(87_482_762));
        assert_eq!(callgrind_total("events: Ir\n"), None);
        assert_eq!(callgrind_total("summary: many\n"), None);
    }
}
