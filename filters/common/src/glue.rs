//! The root-context plumbing every filter's proxy-wasm glue shares (Wasm only): reading and
//! parsing the plugin configuration, defining and incrementing counters, reading the host's
//! clock, seeding the per-VM PRNG, and [`SeededRoot`], the whole root context of a filter that
//! generates IDs. What they decide without the host is in [`crate::config`],
//! [`crate::metrics`], [`crate::clock`] and [`crate::rng`], tested natively.
//!
//! Per-request cost: [`increment`] and [`add`] are one `increment_metric` call each (none for
//! a counter the host refused), [`now_ns`] / [`now_ms`] one clock read; nothing here
//! allocates except at configuration time.

use std::marker::PhantomData;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, MetricType};

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

/// Ask the host to re-pick the route after the filter changed request headers: Envoy's
/// `clear_route_cache` foreign function, one host call. ABI 0.2.1 modules get this implicitly
/// today, but that is going away (envoy PR #36671); a host without the function answers
/// NotFound, which is fine; other failures are logged at debug as `<filter>: …`.
pub fn clear_route_cache(filter: &str) {
    match hostcalls::call_foreign_function("clear_route_cache", Some(&[])) {
        Ok(_) | Err(proxy_wasm::types::Status::NotFound) => {}
        Err(status) => log::debug!("{filter}: clear_route_cache failed: {status:?}"),
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

/// A filter whose root context is a [`SeededRoot`] (correlation-id, trace-propagation): it keeps
/// the last good settings, defines its counters once, and reseeds its per-VM PRNG.
pub trait SeededFilter: 'static {
    /// The filter's name, at the start of its log lines.
    const NAME: &'static str;
    /// The settings; streams created before the first good configuration get the default.
    type Settings: Default + 'static;
    /// The counter ids, copied into each stream.
    type Metrics: Copy + Default + 'static;

    fn parse_settings(bytes: Option<&[u8]>) -> Result<Self::Settings, ConfigError>;
    fn define_metrics() -> Self::Metrics;
    /// (Re)seed the VM's PRNG (see [`fresh_seed`]).
    fn reseed(root_context_id: u32);
    /// The HTTP context of a new stream.
    fn http_context(
        settings: Rc<Self::Settings>,
        metrics: Self::Metrics,
        root_context_id: u32,
    ) -> Box<dyn HttpContext>;
}

/// The root context of a [`SeededFilter`]. A rejected configuration leaves the last good
/// settings in place (the host refuses the new one); the counters are defined by the first
/// good configuration; the PRNG is reseeded in `on_vm_start` and in every good `on_configure`.
pub struct SeededRoot<F: SeededFilter> {
    context_id: u32,
    /// Last good configuration (defaults until the first successful `on_configure`).
    settings: Rc<F::Settings>,
    metrics: Option<F::Metrics>,
    filter: PhantomData<F>,
}

impl<F: SeededFilter> SeededRoot<F> {
    pub fn new(context_id: u32) -> Self {
        Self {
            context_id,
            settings: Rc::new(F::Settings::default()),
            metrics: None,
            filter: PhantomData,
        }
    }
}

impl<F: SeededFilter> Context for SeededRoot<F> {}

impl<F: SeededFilter> RootContext for SeededRoot<F> {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Envoy may clone an already-started VM (memory included) per worker: reseed here, in
        // every VM, so clones never share a random stream.
        F::reseed(self.context_id);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(settings) = configure(self, F::NAME, F::parse_settings) else {
            return false;
        };
        self.settings = Rc::new(settings);
        if self.metrics.is_none() {
            self.metrics = Some(F::define_metrics());
        }
        // Also reseed here: some hosts (APISIX) never call on_vm_start.
        F::reseed(self.context_id);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(F::http_context(
            Rc::clone(&self.settings),
            self.metrics.unwrap_or_default(),
            self.context_id,
        ))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
