//! `trim-stream-exports MODULE.wasm=SRC_DIR …`: for each filter module, drops the exports of the
//! per-stream callbacks its sources (the `.rs` files under SRC_DIR) do not implement, in place
//! (written to a temporary file, then renamed). See `gatewasm_common::exports`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gatewasm_common::exports::{remove_exports, unused_callbacks};

fn rust_sources(dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path)?);
        }
    }
    Ok(())
}

fn trim(module: &Path, src: &Path) -> Result<(), String> {
    let mut sources = Vec::new();
    rust_sources(src, &mut sources).map_err(|e| format!("{}: {e}", src.display()))?;
    if sources.is_empty() {
        return Err(format!("{}: no .rs files", src.display()));
    }
    let drop = unused_callbacks(sources.iter().map(String::as_str));
    let bytes = std::fs::read(module).map_err(|e| format!("{}: {e}", module.display()))?;
    let (trimmed, removed) =
        remove_exports(&bytes, &drop).map_err(|e| format!("{}: {e}", module.display()))?;
    if !removed.is_empty() {
        let tmp = module.with_extension("wasm.trim-tmp");
        std::fs::write(&tmp, &trimmed).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, module).map_err(|e| format!("{}: {e}", module.display()))?;
    }
    println!(
        "{}: {} stream callbacks not exported ({})",
        module.display(),
        drop.len(),
        drop.iter()
            .map(|d| d.trim_start_matches("proxy_on_"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: trim-stream-exports MODULE.wasm=SRC_DIR ...");
        return ExitCode::from(2);
    }
    for arg in &args {
        let Some((module, src)) = arg.split_once('=') else {
            eprintln!("expected MODULE.wasm=SRC_DIR, got {arg:?}");
            return ExitCode::from(2);
        };
        if let Err(e) = trim(Path::new(module), Path::new(src)) {
            eprintln!("trim-stream-exports: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
