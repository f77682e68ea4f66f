//! The Proxy-Wasm plumbing every filter's glue shares (Wasm only): reading and parsing the
//! plugin configuration, defining and incrementing counters, reading the host's clock, seeding
//! the per-VM PRNG, [`HostCalls`] (a [`StageHost`] over the host's calls), applying a stage's
//! [`Effects`] one host call per effect ([`apply_request`], [`apply_response`]), and
//! [`StageRoot`] / [`StageStream`], the whole root and HTTP context of a filter that is a
//! [`Stage`]. What they decide without the host is in [`crate::config`], [`crate::metrics`],
//! [`crate::clock`], [`crate::rng`] and [`crate::stage`], tested natively.
//!
//! Per-request cost: [`increment`] and [`add`] are one `increment_metric` call each (none for
//! a counter the host refused), [`now_ns`] / [`now_ms`] one clock read; applying effects is one
//! call per header edit, counter and reply, and one `clear_route_cache` when asked for.

use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType, Status};

use crate::clock::{unix_millis, unix_nanos};
use crate::config::{ConfigError, parse_or_log};
use crate::host::get_header_map;
use crate::metrics::counter_id;
use crate::rng;
use crate::stage::{
    CALL_NOT_SENT, Counter, Effects, Flow, HeaderEdit, SetResult, Stage, StageHost,
};

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

/// Define the counter `name` as a [`Counter`].
pub fn counter(filter: &str, name: &str) -> Counter {
    Counter(define_counter(filter, name))
}

/// [`StageHost`] over the Proxy-Wasm host calls: each method is one call.
pub struct HostCalls;

impl StageHost for HostCalls {
    fn now_ns(&mut self) -> u64 {
        now_ns()
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => SetResult::Ok,
            Err(Status::CasMismatch) => SetResult::CasMismatch,
            Err(_) => SetResult::Failed,
        }
    }

    fn foreign_function(&mut self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        hostcalls::call_foreign_function(name, Some(args))
    }
}

/// Apply header edits to `map`: one host call each (failures are the host's to report).
pub fn apply_edits(map: MapType, edits: &[HeaderEdit<'_>]) {
    for edit in edits {
        let _ = match edit {
            HeaderEdit::Set(name, value) => hostcalls::set_map_value_bytes(map, name, Some(value)),
            HeaderEdit::Add(name, value) => hostcalls::add_map_value_bytes(map, name, value),
            HeaderEdit::Remove(name) => hostcalls::remove_map_value(map, name),
        };
    }
}

/// Add up counter increments: one host call each.
pub fn apply_counters(counters: &[(u32, u32)]) {
    for &(id, by) in counters {
        let _ = hostcalls::increment_metric(id, i64::from(by));
    }
}

/// Send a stage's local reply (one host call).
pub fn send_reply(reply: &crate::stage::LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
}

/// Apply the request-phase effects of one stage, in the order a filter would make the calls:
/// header edits, the route-cache clear, counters, then the reply. Returns the action for the
/// host (`Pause` after a reply). gRPC calls are the caller's ([`StageStream`]).
pub fn apply_request(filter: &str, fx: &Effects<'_>) -> Action {
    apply_edits(MapType::HttpRequestHeaders, &fx.request);
    if fx.clear_route_cache {
        clear_route_cache(filter);
    }
    apply_counters(&fx.counters);
    match &fx.reply {
        Some(reply) => {
            send_reply(reply);
            Action::Pause
        }
        None => Action::Continue,
    }
}

/// Apply the response-phase effects of one stage.
pub fn apply_response(fx: &Effects<'_>) {
    apply_edits(MapType::HttpResponseHeaders, &fx.response);
    apply_counters(&fx.counters);
}

/// Dispatch a stage's gRPC calls; the stage's answer to each call that could not be sent
/// ([`CALL_NOT_SENT`]) is merged into `fx`. Returns `(token, call index)` of the calls in
/// flight.
pub fn dispatch_grpc_calls<'s, S: Stage>(
    filter: &str,
    stage: &'s S,
    stream: &mut S::Stream,
    fx: &mut Effects<'s>,
) -> (Vec<(u32, usize)>, Flow) {
    let calls = std::mem::take(&mut fx.grpc_calls);
    let mut pending = Vec::with_capacity(calls.len());
    let mut flow = Flow::Wait;
    for (index, call) in calls.iter().enumerate() {
        match hostcalls::dispatch_grpc_call(
            &call.cluster,
            call.service,
            call.method,
            Vec::new(),
            Some(&call.message),
            Duration::from_millis(call.timeout_ms),
        ) {
            Ok(token) => pending.push((token, index)),
            Err(status) => {
                log::warn!(
                    "{filter}: cannot call {} on cluster {}: {status:?}",
                    call.service,
                    call.cluster
                );
                flow = stage.on_grpc_answer(stream, index, CALL_NOT_SENT, None, &mut HostCalls, fx);
            }
        }
    }
    if !pending.is_empty() {
        flow = Flow::Wait;
    }
    (pending, flow)
}

/// A filter served by [`StageRoot`]: its name and how its stage is built.
pub trait StageFilter: 'static {
    /// The filter's name, at the start of its log lines.
    const NAME: &'static str;
    type Stage: Stage;

    /// Parse the plugin configuration and compile the stage (defining its counters).
    fn configure(bytes: Option<&[u8]>) -> Result<Self::Stage, ConfigError>;

    /// The stage streams get before the first good configuration (none in Envoy, which creates
    /// no streams for a rejected plugin): `None` answers them 503.
    fn unconfigured() -> Option<Self::Stage> {
        None
    }

    /// (Re)seed per-VM randomness, in `on_vm_start` and every good `on_configure`: Envoy may
    /// clone a started VM (memory included) per worker, and some hosts (APISIX) never call
    /// `on_vm_start`.
    fn reseed(_root_context_id: u32) {}
}

/// The root context of a [`StageFilter`]. A rejected configuration leaves the last good stage
/// in place (the host refuses the new one).
pub struct StageRoot<F: StageFilter> {
    context_id: u32,
    stage: Option<Rc<F::Stage>>,
    filter: PhantomData<F>,
}

impl<F: StageFilter> StageRoot<F> {
    pub fn new(context_id: u32) -> Self {
        Self {
            context_id,
            stage: F::unconfigured().map(Rc::new),
            filter: PhantomData,
        }
    }
}

impl<F: StageFilter> Context for StageRoot<F> {}

impl<F: StageFilter> RootContext for StageRoot<F> {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        F::reseed(self.context_id);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(stage) = configure(self, F::NAME, F::configure) else {
            return false;
        };
        self.stage = Some(Rc::new(stage));
        F::reseed(self.context_id);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let stream = StageStream::<F> {
            stage: self.stage.clone(),
            state: Default::default(),
            pending: Vec::new(),
        };
        // A constant branch: the module of a filter without a response phase keeps no
        // `on_http_response_headers`, so the post-link step drops the export and Envoy never
        // enters the VM for it.
        if <F::Stage as Stage>::RESPONSE_HEADERS {
            Some(Box::new(WithResponse(stream)))
        } else {
            Some(Box::new(stream))
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The HTTP context of a [`StageFilter`]: reads the request header map once (when the stage
/// reads headers), runs the stage, applies its effects.
pub struct StageStream<F: StageFilter> {
    stage: Option<Rc<F::Stage>>,
    state: <F::Stage as Stage>::Stream,
    /// `(token, call index)` of gRPC calls in flight.
    pending: Vec<(u32, usize)>,
}

impl<F: StageFilter> Context for StageStream<F> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(stage) = self.stage.clone() else {
            return;
        };
        let Some(at) = self.pending.iter().position(|(t, _)| *t == token_id) else {
            return;
        };
        let (_, index) = self.pending.swap_remove(at);
        let body = if status_code == 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                .ok()
                .flatten()
        } else {
            None
        };
        let mut fx = Effects::default();
        let flow = stage.on_grpc_answer(
            &mut self.state,
            index,
            status_code,
            body.as_deref(),
            &mut HostCalls,
            &mut fx,
        );
        if apply_request(F::NAME, &fx) == Action::Continue && flow == Flow::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl<F: StageFilter> StageStream<F> {
    fn request_headers(&mut self) -> Action {
        let Some(stage) = self.stage.clone() else {
            // Cannot happen in Envoy (a rejected configuration creates no streams); fail closed.
            let _ = hostcalls::send_http_response(503, vec![], None);
            return Action::Pause;
        };
        // One host call for the whole map; the pairs borrow from the host's buffer.
        let map = if stage.reads_request_headers() {
            get_header_map(MapType::HttpRequestHeaders).ok()
        } else {
            None
        };
        let headers = map.as_ref().map(|m| m.pairs()).unwrap_or_default();
        let mut fx = Effects::default();
        let mut flow = stage.on_request_headers(&mut self.state, &headers, &mut HostCalls, &mut fx);
        if !fx.grpc_calls.is_empty() {
            let (pending, after) =
                dispatch_grpc_calls(F::NAME, stage.as_ref(), &mut self.state, &mut fx);
            self.pending = pending;
            flow = after;
        }
        let action = apply_request(F::NAME, &fx);
        match flow {
            Flow::Continue => action,
            Flow::Reply | Flow::Wait => Action::Pause,
        }
    }

    fn response_headers(&mut self) -> Action {
        if let Some(stage) = self.stage.clone() {
            let mut fx = Effects::default();
            stage.on_response_headers(&mut self.state, &mut HostCalls, &mut fx);
            apply_response(&fx);
        }
        Action::Continue
    }
}

impl<F: StageFilter> HttpContext for StageStream<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.request_headers()
    }
}

/// A [`StageStream`] whose stage has a response phase ([`Stage::RESPONSE_HEADERS`]).
pub struct WithResponse<F: StageFilter>(StageStream<F>);

impl<F: StageFilter> Context for WithResponse<F> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.0
            .on_grpc_call_response(token_id, status_code, response_size);
    }
}

impl<F: StageFilter> HttpContext for WithResponse<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.0.request_headers()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.0.response_headers()
    }
}
