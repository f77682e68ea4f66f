//! Loading a `.wasm` once: compile with cranelift (cached on disk between test runs), check that
//! every import is one the harness provides, and pre-link it so each VM is a cheap instantiation.

use crate::error::HarnessError;
use crate::imports;
use crate::vm::VmState;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use wasmtime::{Config, Engine, InstancePre, Linker};

/// One engine for the whole test process. Fuel metering is always on: it is what makes the
/// per-callback instruction counts ([`crate::CallbackRecord::fuel`]) available.
pub(crate) fn engine() -> Result<&'static Engine, HarnessError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.consume_fuel(true);
            Engine::new(&config).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| HarnessError::Load(format!("cannot create the wasmtime engine: {e}")))
}

/// A compiled and pre-linked Proxy-Wasm module. Cloning is cheap; load each file once per process.
#[derive(Clone)]
pub struct Module {
    pub(crate) inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub(crate) name: String,
    pub(crate) pre: InstancePre<VmState>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Module {
    /// Loads (or takes from the process-wide cache) the module at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Module, HarnessError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| HarnessError::Load(format!("cannot read {}: {e}", path.display())))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "module".to_string());
        let cache_dir = path.parent().map(|p| p.join("harness-cache"));
        Module::from_bytes_cached(&name, &bytes, cache_dir.as_deref())
    }

    /// Loads the `.wasm` that `cargo build --release --target wasm32-wasip1 -p <crate>` produced
    /// (`crate_name` with dashes or underscores). Looks in `$GATEWASM_WASM_DIR`, else in
    /// `$CARGO_TARGET_DIR/wasm32-wasip1/release`, else the workspace's `target/`. A missing file is
    /// an error that says to run `just build`.
    pub fn artifact(crate_name: &str) -> Result<Module, HarnessError> {
        Module::load(artifact_path(crate_name)?)
    }

    /// Compiles a module from bytes (wasm or WAT text) without any disk cache.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Module, HarnessError> {
        Module::from_bytes_cached(name, bytes, None)
    }

    fn from_bytes_cached(
        name: &str,
        bytes: &[u8],
        cache_dir: Option<&Path>,
    ) -> Result<Module, HarnessError> {
        static LOADED: OnceLock<Mutex<HashMap<[u8; 32], Module>>> = OnceLock::new();
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let loaded = LOADED.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(m) = loaded.lock().ok().and_then(|m| m.get(&digest).cloned()) {
            return Ok(m);
        }
        let engine = engine()?;
        let module = compile_with_disk_cache(engine, bytes, &digest, cache_dir)?;
        write_symbol_map(name, &module);
        let mut linker: Linker<VmState> = Linker::new(engine);
        imports::define(&mut linker).map_err(|e| HarnessError::Load(e.to_string()))?;
        let defined: std::collections::HashSet<(String, String)> = {
            let mut store = wasmtime::Store::new(engine, VmState::placeholder());
            linker
                .iter(&mut store)
                .map(|(m, n, _)| (m.to_string(), n.to_string()))
                .collect()
        };
        let missing: Vec<String> = module
            .imports()
            .filter(|i| !defined.contains(&(i.module().to_string(), i.name().to_string())))
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        if !missing.is_empty() {
            return Err(HarnessError::MissingImports {
                module: name.to_string(),
                missing,
            });
        }
        let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
        if !exports
            .iter()
            .any(|e| e == "malloc" || e == "proxy_on_memory_allocate")
        {
            return Err(HarnessError::Load(format!(
                "{name} exports neither `malloc` nor `proxy_on_memory_allocate`: not a Proxy-Wasm module"
            )));
        };
        if !exports
            .iter()
            .any(|e| e.starts_with("proxy_abi_version_0_2_"))
        {
            return Err(HarnessError::Load(format!(
                "{name} does not export proxy_abi_version_0_2_1 (or 0_2_0): the harness speaks ABI v0.2.1"
            )));
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| HarnessError::Load(format!("cannot pre-link {name}: {e}")))?;
        let m = Module {
            inner: Arc::new(ModuleInner {
                name: name.to_string(),
                pre,
            }),
        };
        if let Ok(mut map) = loaded.lock() {
            map.insert(digest, m.clone());
        }
        Ok(m)
    }

    /// The module's name (its file stem).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

/// Where the compiled functions of every loaded module are, for profiling the harness under
/// valgrind (`just profile-wasm`): when `GATEWASM_HARNESS_SYMBOL_MAP` names a file, one line
/// per function is appended to it, `<start address hex> <length hex> <module>:<function>` (a
/// perf map's format). The names are the module's name section: the linker's output
/// (`release/deps/<crate>.wasm`) has one, the shipped module does not.
fn write_symbol_map(name: &str, module: &wasmtime::Module) {
    use std::io::Write;
    let Some(path) = std::env::var_os("GATEWASM_HARNESS_SYMBOL_MAP") else {
        return;
    };
    let text = module.text().as_ptr() as usize;
    let mut lines = String::new();
    for f in module.functions() {
        let function = f
            .name
            .unwrap_or_else(|| format!("function[{}]", f.index.as_u32()));
        lines.push_str(&format!(
            "{:x} {:x} {name}:{function}\n",
            text + f.offset,
            f.len
        ));
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(lines.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "harness: cannot write the symbol map {}: {e}",
            path.to_string_lossy()
        );
    }
}

fn compile_with_disk_cache(
    engine: &Engine,
    bytes: &[u8],
    digest: &[u8; 32],
    cache_dir: Option<&Path>,
) -> Result<wasmtime::Module, HarnessError> {
    let compat = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    };
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let cached = cache_dir.map(|d| d.join(format!("{hex}-{compat:016x}.cwasm")));
    if let Some(file) = cached.as_ref().filter(|f| f.exists()) {
        // SAFETY: the file is one this function wrote, named by the sha256 of the source bytes
        // and the engine's compatibility hash; wasmtime still checks its header and version.
        if let Ok(m) = unsafe { wasmtime::Module::deserialize_file(engine, file) } {
            return Ok(m);
        }
    }
    let module = wasmtime::Module::new(engine, bytes)
        .map_err(|e| HarnessError::Load(format!("cannot compile: {e:#}")))?;
    if let (Some(file), Ok(serialized)) = (&cached, module.serialize()) {
        // Best effort, atomic (temp file + rename) so parallel test processes never read half a file.
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
            let tmp = dir.join(format!("{hex}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, serialized).is_ok() {
                let _ = std::fs::rename(&tmp, file);
            }
        }
    }
    Ok(module)
}

/// Where `cargo build --release --target wasm32-wasip1` puts `<crate>.wasm`; see [`Module::artifact`].
pub fn artifact_path(crate_name: &str) -> Result<PathBuf, HarnessError> {
    let file = format!("{}.wasm", crate_name.replace('-', "_"));
    let dir = if let Some(dir) = std::env::var_os("GATEWASM_WASM_DIR") {
        PathBuf::from(dir)
    } else {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("target")
            });
        target.join("wasm32-wasip1").join("release")
    };
    let path = dir.join(&file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::Load(format!(
            "{} does not exist. The tests run the filters' real .wasm files: build them first with \
             `just build` (or `cargo build --release --target wasm32-wasip1 -p {crate_name}`), or run \
             everything with `just test`.",
            path.display()
        )))
    }
}
