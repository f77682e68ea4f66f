//! `trim-stream-exports LINKED.wasm=SHIPPED.wasm …`: for each filter, reads the module as the
//! linker wrote it (with its name section, e.g. `target/wasm32-wasip1/release/deps/x.wasm`) and
//! writes the shipped module (`…/release/x.wasm`): without the exports of the stream callbacks
//! the filter does not implement, and without custom sections (names, producers). The output is written to a
//! temporary file and renamed over SHIPPED, so the linker's file (cargo hard-links the two)
//! keeps its names and the step can run again with the same result. See `gatewasm_postlink`.

use std::path::Path;
use std::process::ExitCode;

use gatewasm_postlink::trim_stream_exports;

fn trim(linked: &Path, shipped: &Path) -> Result<(), String> {
    let bytes = std::fs::read(linked).map_err(|e| format!("{}: {e}", linked.display()))?;
    let trimmed = trim_stream_exports(&bytes).map_err(|e| format!("{}: {e}", linked.display()))?;
    let tmp = shipped.with_extension("wasm.trim-tmp");
    std::fs::write(&tmp, &trimmed.module).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, shipped).map_err(|e| format!("{}: {e}", shipped.display()))?;
    let short = |names: &[&str]| {
        names
            .iter()
            .map(|n| n.trim_start_matches("proxy_on_"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let removed: Vec<&str> = trimmed.removed.iter().map(String::as_str).collect();
    println!(
        "{}: implements {}; not exported: {}",
        shipped.display(),
        if trimmed.kept.is_empty() {
            "no optional stream callback".to_string()
        } else {
            short(&trimmed.kept)
        },
        short(&removed)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: trim-stream-exports LINKED.wasm=SHIPPED.wasm ...");
        return ExitCode::from(2);
    }
    for arg in &args {
        let Some((linked, shipped)) = arg.split_once('=') else {
            eprintln!("expected LINKED.wasm=SHIPPED.wasm, got {arg:?}");
            return ExitCode::from(2);
        };
        if let Err(e) = trim(Path::new(linked), Path::new(shipped)) {
            eprintln!("trim-stream-exports: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
