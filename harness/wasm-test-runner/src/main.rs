//! `wasm-test-runner`: cargo's target runner for `wasm32-wasip1`. `cargo test --target
//! wasm32-wasip1` builds each libtest binary as a WASI preview 1 command module and calls
//! `wasm-test-runner path/to/test.wasm [libtest arguments...]` (see `.cargo/config.toml` and the
//! justfile's `test-wasm32`); this runs the module under wasmtime with `wasmtime-wasi`:
//!
//! - **argv**: the module's file name, then every argument given after it (libtest's filters and
//!   flags: `--list`, `--exact`, `--nocapture`, ...).
//! - **stdio and environment**: inherited from this process (cargo's `CARGO_MANIFEST_DIR`,
//!   `RUST_TEST_*`, the tests' own switches).
//! - **files**: the current directory, where cargo starts a test (the package root), is
//!   preopened read-write as `.` and under its absolute host path, so a test that reads
//!   `concat!(env!("CARGO_MANIFEST_DIR"), "/...")` finds the file. Nothing else is visible.
//! - **exit code**: the module's `proc_exit` code (libtest: 0, or 101 when a test failed). A trap
//!   — a panic, since wasm32-wasip1 aborts on panic, after the panic message is printed — is
//!   reported with its wasm backtrace and exits with 134 (as an abort does natively).
//! - **imports other than WASI** (a filter's proxy-wasm glue links the SDK's `env.proxy_*`
//!   functions): defined as functions that trap when called, so the module instantiates; no unit
//!   test calls the host, and one that did would fail with the import's name.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wasmtime::{Config, Engine, Linker, Module, Result, Store, bail, error::Context as _};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// The exit code for a module that trapped (a panic under panic=abort) or could not run.
const TRAP_EXIT: u8 = 134;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            // The causes (the trap and its wasm backtrace), without this runner's own stack.
            eprintln!("wasm-test-runner: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(TRAP_EXIT)
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let Some(module_path) = args.next().map(PathBuf::from) else {
        bail!("usage: wasm-test-runner MODULE.wasm [ARGS...] (cargo's runner for wasm32-wasip1)");
    };
    let mut guest_args = vec![guest_arg0(&module_path)];
    for arg in args {
        match arg.into_string() {
            Ok(arg) => guest_args.push(arg),
            Err(arg) => bail!("argument {arg:?} is not UTF-8 (WASI arguments are strings)"),
        }
    }

    let engine = Engine::new(&Config::new())?;
    let module = Module::from_file(&engine, &module_path)
        .with_context(|| format!("loading {}", module_path.display()))?;

    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |ctx| ctx)?;
    linker.define_unknown_imports_as_traps(&module)?;

    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio().inherit_env().args(&guest_args);
    let cwd = std::env::current_dir().context("reading the current directory")?;
    wasi.preopened_dir(&cwd, ".", FsPerms::ReadWrite)
        .with_context(|| format!("preopening {}", cwd.display()))?;
    if let Some(absolute) = cwd.to_str() {
        wasi.preopened_dir(&cwd, absolute, FsPerms::ReadWrite)
            .with_context(|| format!("preopening {absolute}"))?;
    }

    let mut store = Store::new(&engine, wasi.build_p1());
    let instance = linker
        .instantiate(&mut store, &module)
        .with_context(|| format!("instantiating {}", module_path.display()))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .with_context(|| {
            format!(
                "{} is not a WASI command (no `_start`)",
                module_path.display()
            )
        })?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => match error.downcast_ref::<I32Exit>() {
            Some(&I32Exit(code)) => {
                Ok(u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from))
            }
            None => Err(error.context(format!(
                "{} trapped (a panic aborts a wasm32 test binary, so libtest's captured output is \
                 lost: rerun the test with --nocapture to see the panic message)",
                module_path.display()
            ))),
        },
    }
}

/// argv[0] for the module: its file name (libtest does not read it; panics print it).
fn guest_arg0(module_path: &Path) -> String {
    module_path
        .file_name()
        .map_or_else(
            || module_path.to_string_lossy(),
            |name| name.to_string_lossy(),
        )
        .into_owned()
}
