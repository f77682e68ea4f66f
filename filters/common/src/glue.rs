//! The root-context plumbing every filter's proxy-wasm glue shares (Wasm only): reading and
//! parsing the plugin configuration, defining and incrementing counters, reading the host's
//! clock, seeding the per-VM PRNG. What they decide without the host is in [`crate::config`],
//! [`crate::metrics`], [`crate::clock`] and [`crate::rng`], tested natively.
//!
//! Per-request cost: [`increment`] and [`add`] are one `increment_metric` call each (none for
//! a counter the host refused), [`now_ns`] / [`now_ms`] one clock read; nothing here
//! allocates except at configuration time.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::MetricType;

use crate::clock::{unix_millis, unix_nanos};
use crate::config::{ConfigError, parse_or_log};
use crate::metrics::counter_id;
use crate::rng;

/// The body of every filter's `on_configure`: read the plugin configuration from the host and
/// `parse` it. `None` (the root context then returns `false`) after logging
/// `<filter>: invalid plugin configuration: <error naming the field>`.
pub fn configure<T>(
    root: &(impl RootContext + ?Sized),
    filter: &str,
    parse: impl FnOnce(Option<&[u8]>) -> Result<T, ConfigError>,
) -> Option<T> {
    let bytes = root.get_plugin_configuration();
    parse_or_log(filter, bytes.as_deref(), parse)
}

/// Define the counter `name`; `None` (logged as `<filter>: cannot define metric <name>: ...`)
/// when the host refuses.
pub fn define_counter(filter: &str, name: &str) -> Option<u32> {
    counter_id(
        filter,
        name,
        hostcalls::define_metric(MetricType::Counter, name),
    )
}

/// Define the counter `<prefix><name>`; a refusal is logged with `name` alone.
pub fn define_prefixed_counter(filter: &str, prefix: &str, name: &str) -> Option<u32> {
    counter_id(
        filter,
        name,
        hostcalls::define_metric(MetricType::Counter, &format!("{prefix}{name}")),
    )
}

/// Add 1 to a counter: one host call, none for a counter the host refused.
#[inline]
pub fn increment(id: Option<u32>) {
    if let Some(id) = id {
        // NotFound/BadArgument are returned as errors; there is nothing useful to do with them.
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Add `by` to a counter: one host call, none when `by` is 0 or the host refused the counter.
#[inline]
pub fn add(id: Option<u32>, by: u32) {
    if let (Some(id), true) = (id, by > 0) {
        let _ = hostcalls::increment_metric(id, i64::from(by));
    }
}

/// The host's clock in nanoseconds since the Unix epoch (0 if unreadable): one host call.
#[inline]
pub fn now_ns() -> u64 {
    hostcalls::get_current_time().map_or(0, unix_nanos)
}

/// The host's clock in milliseconds since the Unix epoch (0 if unreadable): one host call.
#[inline]
pub fn now_ms() -> u64 {
    hostcalls::get_current_time().map_or(0, unix_millis)
}

/// A seed for the VM's PRNG: 32 bytes of host randomness (WASI `random_get`), or, when the
/// host has none, the clock and `context_id`, with a warning that says `what` is seeded so.
pub fn fresh_seed(filter: &str, what: &str, context_id: u32) -> [u8; 32] {
    rng::seed_or_fallback(filter, what, rng::os_seed(), now_ns, context_id)
}
