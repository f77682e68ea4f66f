//! Keep a filter's committed JSON Schema (`config.schema.json`) equal to what schemars generates
//! from its config struct. Used from a unit test in each filter:
//!
//! ```text
//! gatewasm_common::schema::check_schema_file::<MyConfig>(path)?; // fails if stale
//! ```
//!
//! With `UPDATE_SCHEMA=1` in the environment the file is (re)written instead.

use std::path::Path;

/// The environment variable that switches [`check_schema_file`] from "compare" to "write".
pub const UPDATE_ENV: &str = "UPDATE_SCHEMA";

/// The pretty-printed schema for `T`, with a trailing newline.
pub fn schema_json<T: schemars::JsonSchema>() -> Result<String, String> {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
    let mut json = serde_json::to_string_pretty(&schema).map_err(|e| e.to_string())?;
    json.push('\n');
    Ok(json)
}

/// Compare `path` with the schema generated for `T`; `Err` explains how to regenerate. With
/// `UPDATE_SCHEMA=1`, write the file instead and return `Ok`.
pub fn check_schema_file<T: schemars::JsonSchema>(path: &Path) -> Result<(), String> {
    let generated = schema_json::<T>()?;
    if std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1") {
        return std::fs::write(path, generated)
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
    }
    let hint = format!("regenerate it with `{UPDATE_ENV}=1 cargo test`");
    match std::fs::read_to_string(path) {
        Ok(committed) if committed == generated => Ok(()),
        Ok(_) => Err(format!(
            "{} differs from the schema generated from the config struct; {hint}",
            path.display()
        )),
        Err(e) => Err(format!("cannot read {}: {e}; {hint}", path.display())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[derive(schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Tiny {
        /// A number.
        n: u32,
    }

    #[test]
    fn generates() {
        let json = schema_json::<Tiny>().unwrap();
        assert!(json.contains("\"title\": \"Tiny\""), "{json}");
        assert!(json.ends_with("}\n"));
    }

    // Not in wasm32: WASI preview 1 has no temporary directory (`std::env::temp_dir` panics) and
    // no process id. Reading a schema file in wasm32 is covered by each filter's
    // `schema_file_is_current` (the test runner preopens the package directory).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn compares_with_the_file() {
        let json = schema_json::<Tiny>().unwrap();
        let dir = std::env::temp_dir().join(format!("gatewasm-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.schema.json");
        std::fs::write(&path, &json).unwrap();
        if std::env::var_os(UPDATE_ENV).is_none() {
            assert_eq!(check_schema_file::<Tiny>(&path), Ok(()));
            std::fs::write(&path, "{}\n").unwrap();
            let err = check_schema_file::<Tiny>(&path).unwrap_err();
            assert!(err.contains("UPDATE_SCHEMA=1"), "{err}");
            let err = check_schema_file::<Tiny>(&dir.join("missing.json")).unwrap_err();
            assert!(err.contains("cannot read"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
