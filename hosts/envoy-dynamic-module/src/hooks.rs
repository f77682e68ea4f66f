//! The event hooks Envoy 1.40 looks up in a dynamic module (`envoy_dynamic_module_on_*`), over
//! [`crate::spec`] and [`crate::pipeline`].
//!
//! Threads: `on_http_filter_config_new` runs on Envoy's main thread; it parses and validates
//! the configuration (building the stages once), defines the counters and keeps the result in
//! a `FilterConfig` that every worker reads. Each worker thread builds its own [`Pipeline`] from
//! it on its first stream (kept in a thread-local list, dropped once the configuration is
//! gone): the stages are not `Send` (jwt-to-header's key cache is per worker, as it is per VM in
//! Wasm); what must be shared across workers — rate-limit's buckets, jwt-to-header's fetched
//! key sets — is in the process's shared data. jwt-to-header's remote keys are fetched by one
//! key driver per configuration ([`crate::keys`]) on the main thread
//! (`on_http_filter_config_scheduled`, `on_http_filter_config_http_callout_done`); a request
//! waiting for them is woken on its worker (`on_http_filter_scheduled`). A stage's gRPC calls
//! are the stream's own HTTP callouts (`on_http_filter_http_callout_done`).
//!
//! Panics: the shipped library is built with panic = "unwind" (the workspace's `native`
//! profile; `release` aborts, which is right for Wasm and wrong inside Envoy). Every hook runs
//! its body under `catch_unwind`, so a panic never unwinds into Envoy nor aborts it: a
//! panicking configuration is refused, a panicking request phase answers 500 (fail closed: an
//! unauthenticated request must not pass because a stage failed), any other hook carries on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use gatewasm_common::config::parse_or_log;
use gatewasm_common::stage::{Counter, GrpcCall, HeaderList, LocalReply};

use gatewasm_chain_plan::FilterKind;
use jwt_to_header::config::Remote;

use crate::abi::{
    self, CalloutResponse, ConfigScheduler, EnvoyBuffer, EnvoyConfig, EnvoyFilter, EnvoyHttpHeader,
    FilterScheduler,
};
use crate::box_pool::{BoxPool, fill, vacate};
use crate::grpc;
use crate::guard::guard;
use crate::keys::{DriverHost, KeyDriver, TICK};
use crate::pipeline::{KeyWait, Pipeline, Run, Side, StreamHost, Verdict};
use crate::shared_data;
use crate::spec::Spec;

/// What `config_new` decided, read by every worker.
struct FilterConfig {
    spec: Spec,
    /// Envoy's id of each counter the stages defined, by name.
    counters: HashMap<String, usize>,
    /// jwt-to-header's remote JWKS, when a provider has `remote_jwks`.
    keys: Option<Keys>,
}

// Every worker reads the configuration (and the main thread's key driver writes its parts that
// change): it must be safe to share.
const _: fn() = || {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<FilterConfig>();
};

/// The key driver of a configuration and what runs it: the configuration's scheduler, committed
/// every [`TICK`] by a thread of ours (the ABI's scheduler has no timer) and when a request
/// starts to wait; `None` once the configuration is destroyed (the thread then ends).
struct Keys {
    driver: KeyDriver<FilterScheduler>,
    ticker: Arc<Mutex<Option<ConfigScheduler>>>,
    /// jwt-to-header's `jwks_fetch_ok` and `jwks_fetch_failed` counters.
    fetch_ok: Counter,
    fetch_failed: Counter,
}

impl Keys {
    /// Have the driver look now (on the main thread).
    fn poke(&self) {
        if let Ok(ticker) = self.ticker.lock()
            && let Some(scheduler) = ticker.as_ref()
        {
            scheduler.commit(0);
        }
    }

    /// The fetch outcomes since the last call, counted through `envoy` (a stream's hook: the
    /// configuration-level counter increment is not one the module binds).
    fn count_fetches(&self, envoy: EnvoyFilter) {
        let (ok, failed) = self.driver.take_counts();
        for (counter, by) in [(self.fetch_ok, ok), (self.fetch_failed, failed)] {
            if let (Some(id), true) = (counter.0, by > 0) {
                envoy.increment_counter(id as usize, by);
            }
        }
    }
}

/// The key driver of `spec`'s jwt-to-header stages, ticking; `None` without `remote_jwks`.
fn start_keys(spec: &Spec, envoy: EnvoyConfig, counter: impl Fn(&str) -> Counter) -> Option<Keys> {
    let settings: Vec<jwt_to_header::config::Settings> = spec
        .plans
        .iter()
        .filter(|plan| plan.kind == FilterKind::JwtToHeader)
        .filter_map(|plan| jwt_to_header::config::parse_settings(plan.config.as_deref()).ok())
        .collect();
    let driver = KeyDriver::new(settings.iter())?;
    let scheduler = envoy.scheduler();
    if scheduler.is_none() {
        log::error!("jwt-to-header: Envoy gave no scheduler: remote keys will not be fetched");
    }
    let ticker = Arc::new(Mutex::new(scheduler));
    let thread_ticker = Arc::clone(&ticker);
    let spawned = std::thread::Builder::new()
        .name("gatewasm-jwks".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                let Ok(ticker) = thread_ticker.lock() else {
                    return;
                };
                match ticker.as_ref() {
                    Some(scheduler) => scheduler.commit(0),
                    None => return,
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("jwt-to-header: cannot start the key driver's ticker: {e}");
    }
    let keys = Keys {
        driver,
        ticker,
        fetch_ok: counter(&format!("{}jwks_fetch_ok", jwt_to_header::stage::PREFIX)),
        fetch_failed: counter(&format!(
            "{}jwks_fetch_failed",
            jwt_to_header::stage::PREFIX
        )),
    };
    // The first fetch at once, not a tick later (events run once Envoy's main loop does).
    keys.poke();
    Some(keys)
}

/// Unix milliseconds.
fn now_ms() -> u64 {
    gatewasm_common::clock::unix_nanos(std::time::SystemTime::now()) / 1_000_000
}

/// [`DriverHost`] over a configuration's HTTP callout.
struct ConfigFetcher(EnvoyConfig);

impl DriverHost for ConfigFetcher {
    fn fetch(&mut self, remote: &Remote) -> Option<u64> {
        let headers: [(&str, &[u8]); 4] = [
            (":method", b"GET"),
            (":path", remote.path.as_bytes()),
            (":authority", remote.authority.as_bytes()),
            ("accept", b"application/json"),
        ];
        match self
            .0
            .http_callout(&remote.cluster, &headers, b"", remote.timeout_ms)
        {
            Ok(id) => Some(id),
            Err(result) => {
                log::warn!(
                    "jwt-to-header: cannot fetch the JWKS from cluster {}: {}",
                    remote.cluster,
                    abi::callout_init_error(result)
                );
                None
            }
        }
    }
}

/// The event a waiting stream is woken with.
const KEYS_READY: u64 = 1;

fn wake(scheduler: &FilterScheduler) {
    scheduler.commit(KEYS_READY);
}

impl FilterConfig {
    fn counter(&self, name: &str) -> Counter {
        Counter(
            self.counters
                .get(name)
                .and_then(|&id| u32::try_from(id).ok()),
        )
    }
}

/// The in-module configuration pointer Envoy keeps: a `Box` of this.
struct ConfigHandle {
    config: Arc<FilterConfig>,
}

thread_local! {
    /// This worker's pipelines, by configuration (a dead `Weak`: the configuration is gone).
    static PIPELINES: RefCell<Vec<(Weak<FilterConfig>, Rc<Pipeline>)>> = const { RefCell::new(Vec::new()) };
}

/// This worker's pipeline for `config`, built on first use.
fn pipeline_for(config: &Arc<FilterConfig>) -> Option<Rc<Pipeline>> {
    PIPELINES.with(|cell| {
        let mut list = cell.try_borrow_mut().ok()?;
        list.retain(|(weak, _)| weak.strong_count() > 0);
        if let Some((_, pipeline)) = list
            .iter()
            .find(|(weak, _)| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(config)))
        {
            return Some(Rc::clone(pipeline));
        }
        // Accepted on the main thread, so this cannot fail short of memory; logged if it does.
        let built = parse_or_log(config.spec.label(), None, |_| {
            Pipeline::build(&config.spec.plans, config.spec.chain, &mut |name| {
                config.counter(name)
            })
        })?;
        let pipeline = Rc::new(built);
        list.push((Arc::downgrade(config), Rc::clone(&pipeline)));
        Some(pipeline)
    })
}

/// One stream: its run through the pipeline. In a `RefCell`, and hooks hold only `&StreamFilter`:
/// Envoy could call a hook while another of the same stream runs (an async client that fails
/// inline, inside `http_callout`); the inner one then finds the run borrowed and leaves it.
struct StreamFilter {
    run: RefCell<Run>,
    /// Its configuration (the key driver a waiting request registers with).
    config: Arc<FilterConfig>,
    /// Its key in the key driver's waiters (unique in the process).
    id: u64,
}

/// The last stream key given out.
static STREAM_KEYS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The allocations of this worker's ended streams, their contents dropped, for the next
    /// streams: a stream costs no `malloc`/`free` pair for its `StreamFilter` (with the
    /// pipeline's kept stage lists, none at all).
    static SPARE_STREAM_BOXES: RefCell<BoxPool<StreamFilter>> =
        const { RefCell::new(BoxPool::new(KEPT_STREAM_BOXES)) };
}

/// How many ended streams' allocations a worker keeps.
const KEPT_STREAM_BOXES: usize = 64;

/// `stream` in a box of this worker's, or a new one.
fn boxed(stream: StreamFilter) -> Box<StreamFilter> {
    let spare = SPARE_STREAM_BOXES
        .try_with(|pool| pool.try_borrow_mut().ok()?.take())
        .ok()
        .flatten();
    fill(spare, stream)
}

/// Drop `stream`, keeping its allocation for the worker's next stream.
fn unboxed(stream: Box<StreamFilter>) {
    // Dropped first, the pool not borrowed meanwhile.
    let slot = vacate(stream);
    // A worker that keeps enough (or is exiting) frees it.
    let _ = SPARE_STREAM_BOXES.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            pool.keep(slot);
        }
    });
}

/// [`StreamHost`] over the ABI for one hook of one stream.
struct EnvoyStream<'s>(EnvoyFilter, &'s StreamFilter);

fn header_type(side: Side) -> i32 {
    match side {
        Side::Request => abi::HEADER_TYPE_REQUEST,
        Side::Response => abi::HEADER_TYPE_RESPONSE,
    }
}

impl StreamHost for EnvoyStream<'_> {
    fn request_headers(&mut self, into: &mut HeaderList) {
        // SAFETY: the list borrows Envoy's header memory, which stays valid and unchanged for
        // the rest of this hook until the module writes to the map: `StreamHost::
        // request_headers`' contract (the pipeline writes back only after the list is done
        // with, and owns the list before the hook returns).
        unsafe {
            self.0.read_headers(abi::HEADER_TYPE_REQUEST, |headers| {
                into.refill_borrowing(headers);
            });
        }
    }

    fn response_header_names(&mut self, into: &mut Vec<u8>) {
        // SAFETY: the borrowed names are copied here, before any change.
        unsafe {
            self.0.read_headers(abi::HEADER_TYPE_RESPONSE, |headers| {
                for (name, _) in headers {
                    into.extend_from_slice(name);
                    into.push(0);
                }
            });
        }
    }

    fn request_headers_named(&mut self, names: &[String], into: &mut HeaderList) {
        // Room for every value of a few names; a request with more copies than this (a
        // client repeating a header) is read as the whole map instead.
        const ON_STACK: usize = 8;
        let mut pairs: [(&[u8], &[u8]); ON_STACK] = [(&[], &[]); ON_STACK];
        let mut read = 0;
        for name in names {
            // SAFETY: the values are copied into `into` below, before anything changes the map.
            let Some((first, count)) =
                (unsafe { self.0.get_header(abi::HEADER_TYPE_REQUEST, name, 0) })
            else {
                continue;
            };
            for index in 0..count.max(1) {
                let value = if index == 0 {
                    Some(first)
                } else {
                    // SAFETY: as above.
                    unsafe { self.0.get_header(abi::HEADER_TYPE_REQUEST, name, index) }
                        .map(|(value, _)| value)
                };
                let Some(value) = value else { continue };
                let Some(slot) = pairs.get_mut(read) else {
                    self.request_headers(into);
                    return;
                };
                *slot = (name.as_bytes(), value);
                read += 1;
            }
        }
        into.refill_from_pairs(pairs.iter().take(read).copied());
    }

    fn source_address(&mut self) -> Option<Vec<u8>> {
        self.0.attribute_string(abi::ATTRIBUTE_SOURCE_ADDRESS)
    }

    fn set_header(&mut self, side: Side, name: &str, value: Option<&[u8]>) {
        self.0.set_header(header_type(side), name, value);
    }

    fn add_header(&mut self, side: Side, name: &str, value: &[u8]) {
        self.0.add_header(header_type(side), name, value);
    }

    fn grpc_call(&mut self, call: &GrpcCall) -> Option<u64> {
        let headers = grpc::request_headers(call, &call.cluster);
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let body = grpc::frame(&call.message);
        match self
            .0
            .http_callout(&call.cluster, &pairs, &body, call.timeout_ms)
        {
            Ok(id) => Some(id),
            Err(result) => {
                log::warn!(
                    "gatewasm: cannot call {}/{} on cluster {}: {}",
                    call.service,
                    call.method,
                    call.cluster,
                    abi::callout_init_error(result)
                );
                None
            }
        }
    }

    fn wait_for_keys(&mut self, wait: &KeyWait) -> bool {
        let Some(keys) = &self.1.config.keys else {
            return false;
        };
        let Some(scheduler) = self.0.scheduler() else {
            log::error!("jwt-to-header: Envoy gave no scheduler to wake the request with");
            return false;
        };
        keys.driver.register(
            self.1.id,
            &wait.provider,
            wait.deadline_ms,
            wait.unknown_kid,
            scheduler,
        );
        keys.poke();
        true
    }

    fn clear_route_cache(&mut self) {
        self.0.clear_route_cache();
    }

    fn increment_counter(&mut self, id: u32, by: u32) {
        self.0.increment_counter(id as usize, u64::from(by));
    }

    fn send_reply(&mut self, reply: &LocalReply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.0
            .send_response(reply.status, &headers, reply.body.as_bytes(), "gatewasm");
    }
}

/// Envoy's words for the bytes it lends during a hook.
///
/// # Safety
/// As [`abi::envoy_bytes`].
unsafe fn lent<'a>(buffer: EnvoyBuffer) -> &'a [u8] {
    // SAFETY: the caller's contract.
    unsafe { abi::envoy_bytes(buffer.ptr, buffer.length) }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard("on_program_init", std::ptr::null, || {
        // The filters' log lines (refused configurations name their field) go to Envoy's log;
        // Envoy's level decides what is written (`log_enabled`).
        if log::set_logger(&abi::EnvoyLogger).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
        abi::ABI_VERSION.as_ptr().cast()
    })
}

/// # Safety
/// Envoy's contract: `name` and `config` are valid for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    filter_config_envoy_ptr: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy lends both buffers for this call; they are only read inside it.
    let (name, config) = unsafe { (lent(name), lent(config)) };
    guard("on_http_filter_config_new", std::ptr::null, || {
        let envoy = EnvoyConfig(filter_config_envoy_ptr);
        let filter_name = String::from_utf8_lossy(name);
        let Some(spec) = parse_or_log("gatewasm", Some(config), |config| {
            Spec::parse(&filter_name, config.unwrap_or_default())
        }) else {
            return std::ptr::null();
        };
        // Build once here: it parses every stage's configuration (refusals name the field)
        // and defines the counters, whose ids the workers' pipelines share. Envoy 1.40 shows
        // a counter defined here as `dynamicmodulescustom.<name>` in /stats (a Wasm module's
        // as `wasmcustom.<name>`), e.g. dynamicmodulescustom.gatewasm_correlation_id_generated.
        let mut counters = HashMap::new();
        let built = parse_or_log(spec.label(), None, |_| {
            Pipeline::build(&spec.plans, spec.chain, &mut |counter| {
                let id = envoy.define_counter(counter);
                if id.is_none() {
                    log::warn!("{}: cannot define metric {counter}", spec.label());
                }
                if let Some(id) = id {
                    counters.insert(counter.to_owned(), id);
                }
                Counter(id.and_then(|id| u32::try_from(id).ok()))
            })
        });
        if built.is_none() {
            return std::ptr::null();
        }
        let counter =
            |name: &str| Counter(counters.get(name).and_then(|&id| u32::try_from(id).ok()));
        let keys = start_keys(&spec, envoy, counter);
        let handle = ConfigHandle {
            config: Arc::new(FilterConfig {
                spec,
                counters,
                keys,
            }),
        };
        Box::into_raw(Box::new(handle)).cast_const().cast()
    })
}

/// # Safety
/// `filter_config_ptr` is a pointer `config_new` returned, destroyed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    filter_config_ptr: *const c_void,
) {
    guard(
        "on_http_filter_config_destroy",
        || (),
        || {
            if !filter_config_ptr.is_null() {
                // SAFETY: made by `Box::into_raw` in `config_new`; Envoy destroys it once.
                let handle =
                    unsafe { Box::from_raw(filter_config_ptr.cast_mut().cast::<ConfigHandle>()) };
                // The scheduler goes with the configuration (streams may keep the rest a
                // little longer); the ticker thread ends at its next tick.
                if let Some(keys) = &handle.config.keys
                    && let Ok(mut ticker) = keys.ticker.lock()
                {
                    *ticker = None;
                }
                drop(handle);
            }
        },
    );
}

/// Per-route configuration: not supported (refused, so a route cannot silently run without it).
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    log::error!("gatewasm: per-route configuration is not supported by the dynamic module");
    std::ptr::null()
}

/// # Safety
/// `filter_config_ptr` is a live pointer `config_new` returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    filter_config_ptr: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    guard("on_http_filter_new", std::ptr::null, || {
        if filter_config_ptr.is_null() {
            return std::ptr::null();
        }
        // SAFETY: Envoy keeps the configuration alive while it creates filters from it.
        let handle = unsafe { &*filter_config_ptr.cast::<ConfigHandle>() };
        // No pipeline (cannot happen, logged): null makes Envoy close the stream.
        let Some(pipeline) = pipeline_for(&handle.config) else {
            return std::ptr::null();
        };
        let stream = StreamFilter {
            run: RefCell::new(pipeline.start()),
            config: Arc::clone(&handle.config),
            id: STREAM_KEYS.fetch_add(1, Ordering::Relaxed),
        };
        Box::into_raw(boxed(stream)).cast_const().cast()
    })
}

/// The stream of a filter pointer `filter_new` returned.
///
/// # Safety
/// `ptr` is live (not yet destroyed); it is used on the stream's worker thread only (Envoy
/// calls a stream's hooks there).
unsafe fn stream<'a>(ptr: *const c_void) -> Option<&'a StreamFilter> {
    // SAFETY: the caller's contract.
    unsafe { ptr.cast::<StreamFilter>().as_ref() }
}

/// # Safety
/// Envoy's contract for the two pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    let envoy = EnvoyFilter(filter_envoy_ptr);
    guard(
        "on_http_filter_request_headers",
        || {
            envoy.send_response(500, &[], b"", "gatewasm_panic");
            abi::HEADERS_STOP_ITERATION
        },
        || {
            // SAFETY: Envoy's contract.
            let Some(stream) = (unsafe { stream(filter_module_ptr) }) else {
                return abi::HEADERS_CONTINUE;
            };
            if let Some(keys) = &stream.config.keys {
                keys.count_fetches(envoy);
            }
            let Ok(mut run) = stream.run.try_borrow_mut() else {
                return abi::HEADERS_CONTINUE;
            };
            match run.request_headers(&mut EnvoyStream(envoy, stream)) {
                Verdict::Continue => abi::HEADERS_CONTINUE,
                Verdict::Stop | Verdict::Wait => abi::HEADERS_STOP_ITERATION,
            }
        },
    )
}

/// # Safety
/// Envoy's contract for the two pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    guard(
        "on_http_filter_response_headers",
        || abi::HEADERS_CONTINUE,
        || {
            // SAFETY: Envoy's contract.
            if let Some(stream) = unsafe { stream(filter_module_ptr) }
                && let Ok(mut run) = stream.run.try_borrow_mut()
            {
                run.response_headers(&mut EnvoyStream(EnvoyFilter(filter_envoy_ptr), stream));
            }
            abi::HEADERS_CONTINUE
        },
    )
}

/// # Safety
/// `filter_module_ptr` is a pointer `filter_new` returned, destroyed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
    filter_module_ptr: *const c_void,
) {
    guard(
        "on_http_filter_destroy",
        || (),
        || {
            if !filter_module_ptr.is_null() {
                // SAFETY: made by `Box::into_raw` in `filter_new`; Envoy destroys it once.
                let stream =
                    unsafe { Box::from_raw(filter_module_ptr.cast_mut().cast::<StreamFilter>()) };
                // A request that goes away while waiting for keys takes its wake-up back.
                if let Some(keys) = &stream.config.keys {
                    drop(keys.driver.unregister(stream.id));
                }
                unboxed(stream);
            }
        },
    );
}

/// Whether the stream's request waits for a stage.
///
/// # Safety
/// As [`stream`].
unsafe fn waiting(filter_module_ptr: *const c_void) -> bool {
    // SAFETY: the caller's contract.
    unsafe { stream(filter_module_ptr) }
        .and_then(|s| s.run.try_borrow().ok().map(|run| run.waiting()))
        .unwrap_or(false)
}

/// While a stage waits, the request body waits too: a `Continue` here would resume the paused
/// headers before the stage has decided.
///
/// # Safety
/// Envoy's contract for the pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    // SAFETY: Envoy's contract.
    guard(
        "on_http_filter_request_body",
        || abi::DATA_CONTINUE,
        || {
            if unsafe { waiting(filter_module_ptr) } {
                abi::BODY_STOP_ITERATION_AND_BUFFER
            } else {
                abi::DATA_CONTINUE
            }
        },
    )
}

/// As the body: the trailers wait while a stage does.
///
/// # Safety
/// Envoy's contract for the pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
) -> i32 {
    guard(
        "on_http_filter_request_trailers",
        || abi::DATA_CONTINUE,
        || {
            // SAFETY: Envoy's contract.
            if unsafe { waiting(filter_module_ptr) } {
                abi::TRAILERS_STOP_ITERATION
            } else {
                abi::DATA_CONTINUE
            }
        },
    )
}

/// The answer to one of a stream's gRPC calls ([`EnvoyStream::grpc_call`]): read as gRPC
/// ([`grpc::answer`]; a callout that failed — reset, or an answer over the buffer limit — is
/// UNAVAILABLE), handed to the run; the request resumes when the run goes on.
///
/// # Safety
/// Envoy's contract: the pointers are live for this call, the headers and chunks lent for it.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    callout_id: u64,
    result: i32,
    headers: *mut EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    let envoy = EnvoyFilter(filter_envoy_ptr);
    guard(
        "on_http_filter_http_callout_done",
        || envoy.send_response(500, &[], b"", "gatewasm_panic"),
        || {
            // SAFETY: Envoy's contract.
            let Some(stream) = (unsafe { stream(filter_module_ptr) }) else {
                return;
            };
            let Ok(mut run) = stream.run.try_borrow_mut() else {
                // Inside `http_callout` (an inline failure): that call reports it did not send.
                log::debug!("gatewasm: callout {callout_id} answered inline; ignored");
                return;
            };
            // SAFETY: Envoy lends them for this call; read inside it.
            let response = unsafe {
                CalloutResponse::new(headers, headers_size, body_chunks, body_chunks_size)
            };
            let (status, message) = if result == abi::CALLOUT_SUCCESS {
                grpc::answer(|name| response.header(name), &response.body)
            } else {
                log::warn!(
                    "gatewasm: callout {callout_id} failed: {}",
                    abi::callout_result_name(result)
                );
                (grpc::UNAVAILABLE, None)
            };
            let verdict =
                run.grpc_answer(&mut EnvoyStream(envoy, stream), callout_id, status, message);
            drop(run);
            if verdict == Some(Verdict::Continue) {
                envoy.continue_decoding();
            }
        },
    );
}

/// A waiting request's wake-up ([`KEYS_READY`]): jwt-to-header decides again with what the
/// key driver fetched, then the rest of the run; the request resumes if it goes on.
///
/// # Safety
/// Envoy's contract for the two pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    event_id: u64,
) {
    let envoy = EnvoyFilter(filter_envoy_ptr);
    guard(
        "on_http_filter_scheduled",
        || envoy.send_response(500, &[], b"", "gatewasm_panic"),
        || {
            // SAFETY: Envoy's contract.
            let Some(stream) = (unsafe { stream(filter_module_ptr) }) else {
                return;
            };
            if event_id != KEYS_READY {
                return;
            }
            if let Some(keys) = &stream.config.keys {
                keys.count_fetches(envoy);
            }
            let Ok(mut run) = stream.run.try_borrow_mut() else {
                return;
            };
            let verdict = run.keys_ready(&mut EnvoyStream(envoy, stream));
            drop(run);
            if verdict == Some(Verdict::Continue) {
                envoy.continue_decoding();
            }
        },
    );
}

/// The configuration's key driver looks at its providers (a tick, or a request started to
/// wait): fetches that are due start, waiters with nothing left to wait for are woken.
///
/// # Safety
/// Envoy's contract: `filter_config_ptr` is a live pointer `config_new` returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    filter_config_envoy_ptr: *mut c_void,
    filter_config_ptr: *const c_void,
    _event_id: u64,
) {
    guard(
        "on_http_filter_config_scheduled",
        || (),
        || {
            // SAFETY: Envoy's contract.
            let Some(handle) = (unsafe { filter_config_ptr.cast::<ConfigHandle>().as_ref() })
            else {
                return;
            };
            if let Some(keys) = &handle.config.keys {
                keys.driver.tick(
                    now_ms(),
                    &shared_data::PROCESS,
                    &mut ConfigFetcher(EnvoyConfig(filter_config_envoy_ptr)),
                    &mut wake,
                );
            }
        },
    );
}

/// A JWKS fetch's answer, for the configuration's key driver.
///
/// # Safety
/// Envoy's contract: `filter_config_ptr` is a live pointer `config_new` returned; the headers
/// and chunks are lent for this call.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _filter_config_envoy_ptr: *mut c_void,
    filter_config_ptr: *const c_void,
    callout_id: u64,
    result: i32,
    headers: *mut EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard(
        "on_http_filter_config_http_callout_done",
        || (),
        || {
            // SAFETY: Envoy's contract.
            let Some(handle) = (unsafe { filter_config_ptr.cast::<ConfigHandle>().as_ref() })
            else {
                return;
            };
            let Some(keys) = &handle.config.keys else {
                return;
            };
            // SAFETY: Envoy lends them for this call; read inside it.
            let response = unsafe {
                CalloutResponse::new(headers, headers_size, body_chunks, body_chunks_size)
            };
            let status = if result == abi::CALLOUT_SUCCESS {
                response.header(":status")
            } else {
                log::warn!(
                    "jwt-to-header: JWKS fetch failed: {}",
                    abi::callout_result_name(result)
                );
                None
            };
            keys.driver.on_response(
                callout_id,
                status,
                &response.body,
                now_ms(),
                &shared_data::PROCESS,
                &mut wake,
            );
        },
    );
}

// The hooks this library leaves empty (Envoy looks every hook up when it loads a module).
gatewasm_envoy_abi::no_op_hooks!(
    per_route_config_destroy,
    response_body,
    response_trailers,
    stream_complete,
    local_reply,
    downstream_above_write_buffer_high_watermark,
    downstream_below_write_buffer_low_watermark,
    http_stream_headers,
    http_stream_data,
    http_stream_trailers,
    http_stream_complete,
    http_stream_reset,
    config_http_stream_headers,
    config_http_stream_data,
    config_http_stream_trailers,
    config_http_stream_complete,
    config_http_stream_reset,
);
