//! `just package`: builds a reproducible OCI image of every shipped filter and of the bundle
//! (`gatewasm`: gatewasm.wasm, all the filters in one module) and pins their digests in the
//! Istio and Envoy Gateway manifests.
//!
//! ```text
//! package-oci [--out DIR] [--check]
//! ```
//!
//! - Reads `<module>.wasm` from `GATEWASM_WASM_DIR` (default `target/wasm32-wasip1/release`).
//! - Writes, per image (each filter's, and `gatewasm`), the OCI image layout `DIR/<image>/` and
//!   the same layout as one tar, `DIR/<image>.oci.tar` (default DIR: `target/oci`).
//! - Prints each image's manifest digest (the value of a WasmPlugin's `sha256`) and the
//!   sha256 of the `.wasm` itself.
//! - Rewrites the `sha256:` fields of `istio-manifests/**/*.yaml` and
//!   `envoy-configs/envoy-gateway/*.yaml` to those digests. With `--check` it writes nothing
//!   and exits 1 if any manifest is stale.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gatewasm_xtask::{deploy, paths};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("package-oci: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut out = paths::workspace_root().join("target").join("oci");
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(args.next().context("--out needs a directory")?),
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: package-oci [--out DIR] [--check]");
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?} (usage: package-oci [--out DIR] [--check])"),
        }
    }

    let wasm_dir = paths::wasm_dir();
    let images = deploy::images(&wasm_dir)?;
    let mut digests = std::collections::BTreeMap::new();
    println!(
        "{:<20} {:<73} wasm sha256 (of {})",
        "image",
        "image digest (WasmPlugin / Envoy Gateway sha256)",
        wasm_dir.display()
    );
    for (name, image) in &images {
        if !check {
            let dir = out.join(name);
            image.write_layout(&dir)?;
            let archive = out.join(format!("{name}.oci.tar"));
            std::fs::write(&archive, image.archive()?)
                .with_context(|| format!("writing {}", archive.display()))?;
        }
        println!("{name:<20} {:<73} {}", image.digest(), image.wasm_sha256);
        digests.insert(name.clone(), image.digest_hex());
    }
    if !check {
        println!(
            "images: {}/<image>/ (OCI layout) and {}/<image>.oci.tar",
            out.display(),
            out.display()
        );
    }

    let stale = deploy::stale_manifests(&digests)?;
    let root = paths::workspace_root();
    let rel = |p: &std::path::Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    if stale.is_empty() {
        println!("manifests: every sha256 already matches");
        return Ok(ExitCode::SUCCESS);
    }
    if check {
        for (file, _) in &stale {
            eprintln!("stale sha256 in {} (run `just package`)", rel(file));
        }
        return Ok(ExitCode::FAILURE);
    }
    for (file, text) in &stale {
        std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
        println!("manifests: updated sha256 in {}", rel(file));
    }
    Ok(ExitCode::SUCCESS)
}
