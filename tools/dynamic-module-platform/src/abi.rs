//! Envoy 1.40's dynamic-module ABI as this filter uses it: the declarations are
//! [`gatewasm_envoy_abi`]'s (shared with libgatewasm_envoy.so, which this library must not link:
//! its hooks would be exported here too), plus a logging helper.

pub use gatewasm_envoy_abi::*;

/// Logs an error through Envoy (a refused configuration says why).
pub fn log_error(message: &str) {
    // SAFETY: a plain value and a buffer that outlives the call.
    unsafe { envoy_dynamic_module_callback_log(LOG_ERROR, ModuleBuffer::of(message.as_bytes())) }
}
