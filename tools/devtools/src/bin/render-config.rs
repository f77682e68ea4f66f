//! `render-config CONFIG OUT_DIR NAME=VALUE...`: renders `envoy-configs/CONFIG` (and any
//! `{{ECDS_DIR}}/` companion file it references) into OUT_DIR and prints the rendered
//! config's path. The same code the tests use (`gatewasm_devtools::render::render_config`);
//! `just demo` calls it so the templating lives in one place.
//!
//! Example: `render-config gateway.yaml /tmp/demo LISTEN_PORT=8080 ADMIN_PORT=9901
//! UPSTREAM_PORT=8081 WASM_DIR=$PWD/target/wasm32-wasip1/release`

use std::path::PathBuf;

use anyhow::{Context, Result};
use gatewasm_devtools::render;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: render-config CONFIG OUT_DIR NAME=VALUE...";
    let config = args.next().context(usage)?;
    let out_dir = PathBuf::from(args.next().context(usage)?);
    let vars = render::parse_assignments(args)?;
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = render::render_config(&config, &out_dir, &vars)?;
    println!("{}", out.display());
    Ok(())
}
