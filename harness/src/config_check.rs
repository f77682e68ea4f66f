//! Checking that a filter refuses a broken configuration the way Envoy sees it: `on_configure`
//! returns false, and the error line the filter logs names the field and the problem.
//!
//! ```no_run
//! use proxy_wasm_harness::{Module, assert_configs_rejected};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let module = Module::artifact("correlation-id")?;
//! assert_configs_rejected(
//!     &module,
//!     "correlation-id: invalid plugin configuration: ",
//!     &[
//!         (r#"{"max_length": 0}"#, &["max_length: must be between 1 and 1024"]),
//!         (r#"{"headr": "x"}"#, &["headr: unknown field `headr`"]),
//!     ],
//! );
//! # Ok(()) }
//! ```

use crate::{HarnessError, Host, LogLevel, Module, PluginConfig, Worker};

/// Loads `module` with `config` on a fresh [`Host`] and checks that the configuration is
/// refused: [`HarnessError::ConfigRejected`] (`proxy_on_configure` returned false, no trap), and
/// one log line at error level or above contains every string of `expected`. Returns that line;
/// `Err` says what happened instead (accepted, another error, or the lines that were logged).
pub fn config_rejection(
    module: &Module,
    config: &str,
    expected: &[&str],
) -> Result<String, String> {
    let host = Host::new();
    let plugin = PluginConfig::new(module).configuration(config);
    match Worker::new(&host, &[plugin]) {
        Ok(_) => Err("accepted (on_configure returned true)".to_string()),
        Err(HarnessError::ConfigRejected { logs, .. }) => {
            let errors: Vec<&str> = logs
                .iter()
                .filter(|l| l.level >= LogLevel::Error)
                .map(|l| l.message.as_str())
                .collect();
            errors
                .iter()
                .find(|line| expected.iter().all(|want| line.contains(want)))
                .map(|line| (*line).to_string())
                .ok_or_else(|| {
                    format!("rejected, but no error line contains all of {expected:?}; error lines: {errors:?}")
                })
        }
        Err(other) => Err(format!("not a configuration rejection: {other}")),
    }
}

/// [`config_rejection`] that panics with the reason when the configuration is not refused as
/// expected. Returns the error line.
#[allow(clippy::panic)]
pub fn assert_config_rejected(module: &Module, config: &str, expected: &[&str]) -> String {
    config_rejection(module, config, expected)
        .unwrap_or_else(|why| panic!("config {config}: {why}"))
}

/// A table of broken configurations: each `(config, expected)` must be refused with an error
/// line that contains `prefix` (the filter's `<name>: invalid plugin configuration: `) and every
/// string of `expected` (the field path and the problem, e.g. `"max_length: must be between"`).
/// Every case runs; the panic lists all the cases that failed. Configurations may be `&str` or
/// `String` (built from a valid base configuration, say).
#[allow(clippy::panic)]
pub fn assert_configs_rejected<C: AsRef<str>>(
    module: &Module,
    prefix: &str,
    cases: &[(C, &[&str])],
) {
    let mut failures = Vec::new();
    for (config, expected) in cases {
        let config = config.as_ref();
        let mut want = Vec::with_capacity(expected.len() + 1);
        want.push(prefix);
        want.extend_from_slice(expected);
        if let Err(why) = config_rejection(module, config, &want) {
            failures.push(format!("  config {config}\n    {why}"));
        }
    }
    if !failures.is_empty() {
        panic!(
            "{} of {} broken configurations were not rejected as expected:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}
