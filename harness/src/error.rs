//! What can go wrong when the harness drives a module. Module misbehaviour is an error value,
//! never a panic of the harness.

use crate::LogEntry;
use std::fmt;

#[derive(Debug, Clone)]
pub enum HarnessError {
    /// The file could not be read, compiled or linked.
    Load(String),
    /// The module imports functions the harness does not provide (a real host would refuse it too).
    MissingImports {
        module: String,
        missing: Vec<String>,
    },
    /// `proxy_on_vm_start` returned false: Envoy would fail the VM.
    VmStartRejected { plugin: String, logs: Vec<LogEntry> },
    /// `proxy_on_configure` returned false: Envoy would reject the configuration.
    ConfigRejected { plugin: String, logs: Vec<LogEntry> },
    /// The module trapped (a Rust panic with `panic = "abort"` ends here too).
    Trap {
        plugin: String,
        callback: String,
        message: String,
        backtrace: String,
        last_logs: Vec<LogEntry>,
    },
    /// A callback of a VM that trapped before: Envoy would not call into a failed VM again.
    VmFailed { plugin: String },
    /// The test asked for something that does not exist (an unknown stream or call id …).
    Usage(String),
}

impl HarnessError {
    /// The logs that came with the error (configuration rejections and traps carry them).
    pub fn logs(&self) -> &[LogEntry] {
        match self {
            HarnessError::VmStartRejected { logs, .. }
            | HarnessError::ConfigRejected { logs, .. } => logs,
            HarnessError::Trap { last_logs, .. } => last_logs,
            _ => &[],
        }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let write_logs = |f: &mut fmt::Formatter<'_>, logs: &[LogEntry]| -> fmt::Result {
            for l in logs {
                writeln!(f, "    [{:?}] {}", l.level, l.message)?;
            }
            Ok(())
        };
        match self {
            HarnessError::Load(m) => write!(f, "cannot load module: {m}"),
            HarnessError::MissingImports { module, missing } => write!(
                f,
                "module {module} imports functions the harness does not provide: {}",
                missing.join(", ")
            ),
            HarnessError::VmStartRejected { plugin, logs } => {
                writeln!(
                    f,
                    "plugin {plugin}: proxy_on_vm_start returned false; logs:"
                )?;
                write_logs(f, logs)
            }
            HarnessError::ConfigRejected { plugin, logs } => {
                writeln!(
                    f,
                    "plugin {plugin}: proxy_on_configure returned false (configuration rejected); logs:"
                )?;
                write_logs(f, logs)
            }
            HarnessError::Trap {
                plugin,
                callback,
                message,
                backtrace,
                last_logs,
            } => {
                writeln!(f, "plugin {plugin} trapped in {callback}: {message}")?;
                writeln!(f, "  wasm backtrace:\n{backtrace}")?;
                writeln!(f, "  last log lines:")?;
                write_logs(f, last_logs)
            }
            HarnessError::VmFailed { plugin } => {
                write!(
                    f,
                    "plugin {plugin}: the VM failed earlier (trap) and is not called again"
                )
            }
            HarnessError::Usage(m) => write!(f, "harness usage error: {m}"),
        }
    }
}

impl std::error::Error for HarnessError {}
