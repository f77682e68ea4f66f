//! proxy-wasm glue (wasm32 only): the root context (configuration, metrics, the remote JWKS
//! fetch and refresh on ticks, waking paused requests) and the HTTP context (request headers).
//! All decisions are made by [`crate::auth`].
//!
//! Host calls per request with a token (cache hit): 1 header-map read, 1 clock read, 1 replace
//! per claim header, 1 remove of the token (`forward: false`), 1 `clear_route_cache`, 2 counter
//! increments (allowed, cache hit); +1 remove per spoofed claim header the client sent. A cache
//! miss adds one `verify_signature` call (RS*/ES*) and 1 counter. A request without a matching
//! rule: 1 header-map read (+ removes of spoofed claim headers).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gatewasm_common::glue::{self, add, increment, now_ms};
use gatewasm_common::headers::underscore_variants;
use gatewasm_common::host::get_header_map;
use gatewasm_common::reply::JSON_CONTENT_TYPE;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, Status};

use crate::auth::{Allowed, Decision, Denial, Env, Reason, Stats, decide};
use crate::cache::Cache;
use crate::config::{Settings, Source, parse_settings};
use crate::jwk::{KeySet, parse_jwks_bytes};
use crate::jwks::{MAX_JWKS_BYTES, Meta, data_key, meta_key};
use crate::reply;
use crate::token::{remove_cookie, remove_param};
use crate::verify::{Native, NativeVerifier, decode_result};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, shared: None })
    });
}}

/// Ticks drive the remote JWKS: loading what another worker fetched, refreshing, refetching
/// for unknown `kid`s and waking paused requests. Only set when a provider has `remote_jwks`.
const TICK: Duration = Duration::from_millis(100);

/// The filter's name, at the start of its log lines.
const FILTER: &str = "jwt-to-header";

const PREFIX: &str = "gatewasm_jwt_to_header_";

fn define(name: &str) -> Option<u32> {
    glue::define_prefixed_counter(FILTER, PREFIX, name)
}

#[derive(Debug, Default)]
struct Metrics {
    allowed: Option<u32>,
    denied: Vec<Option<u32>>,
    fetch_ok: Option<u32>,
    fetch_failed: Option<u32>,
    cache_hit: Option<u32>,
    cache_miss: Option<u32>,
    native: Option<u32>,
    fallback: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        Self {
            allowed: define("allowed"),
            denied: Reason::ALL
                .iter()
                .map(|r| define(&format!("denied_{}", r.name())))
                .collect(),
            fetch_ok: define("jwks_fetch_ok"),
            fetch_failed: define("jwks_fetch_failed"),
            cache_hit: define("cache_hit"),
            cache_miss: define("cache_miss"),
            native: define("verify_native"),
            fallback: define("verify_fallback"),
        }
    }

    fn stats(&self, s: Stats) {
        add(self.cache_hit, s.cache_hits);
        add(self.cache_miss, s.cache_misses);
        add(self.native, s.native);
        add(self.fallback, s.fallback);
    }
}

/// A request paused until keys arrive.
struct Waiter {
    context_id: u32,
    provider: usize,
    deadline_ms: u64,
    /// The provider's meta record when the request paused: it wakes when that changes.
    since: Meta,
}

/// Per-VM state shared by the root context and the HTTP contexts.
struct Worker {
    settings: Rc<Settings>,
    metrics: Rc<Metrics>,
    /// Remote keys by provider, and the meta version they came from.
    remote: Vec<Option<Rc<KeySet>>>,
    versions: Vec<u64>,
    cache: Cache,
    /// false once the host answered NotFound for `verify_signature`.
    native_available: bool,
    waiters: Vec<Waiter>,
    /// Providers for which a request saw an unknown `kid`.
    refetch_wanted: Vec<bool>,
    /// Per provider, the shared version this VM last failed to load (0: none).
    unloadable: Vec<u64>,
    /// HTTP call token → provider.
    inflight: Vec<(u32, usize)>,
}

type Shared = Rc<RefCell<Worker>>;

struct HostNative<'a> {
    available: &'a mut bool,
}

impl NativeVerifier for HostNative<'_> {
    fn verify(&mut self, args: &[u8]) -> Native {
        if !*self.available {
            return Native::Unavailable;
        }
        match hostcalls::call_foreign_function("verify_signature", Some(args)) {
            Ok(Some(bytes)) => match decode_result(&bytes) {
                Some(true) => Native::Valid,
                _ => Native::Invalid,
            },
            // An empty message is `result: false`.
            Ok(None) => Native::Invalid,
            Err(Status::NotFound) => {
                log::info!("jwt-to-header: host has no verify_signature; using jwt-simple");
                *self.available = false;
                Native::Unavailable
            }
            // BadArgument: the host could not import the key; let jwt-simple decide.
            Err(_) => Native::Unavailable,
        }
    }

    fn available(&self) -> bool {
        *self.available
    }
}

fn read_meta(settings: &Settings, provider: &str) -> (Option<Meta>, Option<u32>) {
    match hostcalls::get_shared_data(&meta_key(&settings.config_hash, provider)) {
        Ok((Some(bytes), cas)) => (Meta::decode(&bytes), cas),
        Ok((None, cas)) => (None, cas),
        Err(_) => (None, None),
    }
}

/// Load the shared JWKS of provider `idx` if the shared version is newer than ours. Returns
/// whether this worker now holds the shared version. A version this VM cannot load (missing or
/// unparsable data: another plugin or module version under the same `vm_id`) is warned about
/// once, not on every tick.
fn load_if_newer(shared: &Shared, idx: usize, meta: &Meta) -> bool {
    let (settings, current) = {
        let w = shared.borrow();
        (
            w.settings.clone(),
            w.versions.get(idx).copied().unwrap_or_default(),
        )
    };
    if meta.version == 0 || meta.version == current {
        return true;
    }
    let Some(provider) = settings.providers.get(idx) else {
        return false;
    };
    let key = data_key(&settings.config_hash, &provider.name);
    let keys = match hostcalls::get_shared_data(&key) {
        Ok((Some(bytes), _)) => parse_jwks_bytes(&bytes),
        _ => Err("the shared JWKS is missing".into()),
    };
    match keys {
        Ok(keys) => {
            install(shared, idx, meta.version, keys);
            true
        }
        Err(e) => {
            let mut w = shared.borrow_mut();
            if let Some(bad) = w.unloadable.get_mut(idx)
                && *bad != meta.version
            {
                *bad = meta.version;
                log::warn!(
                    "jwt-to-header: providers.{}: cannot load the shared JWKS version {}: {e}",
                    provider.name,
                    meta.version
                );
            }
            false
        }
    }
}

fn install(shared: &Shared, idx: usize, version: u64, keys: KeySet) {
    let mut w = shared.borrow_mut();
    if let Some(slot) = w.remote.get_mut(idx) {
        *slot = Some(Rc::new(keys));
    }
    if let Some(v) = w.versions.get_mut(idx) {
        *v = version;
    }
    // Whoever fetched, the refetch this worker wanted has happened.
    if let Some(flag) = w.refetch_wanted.get_mut(idx) {
        *flag = false;
    }
    // Keys changed: tokens verified with keys that are gone must be verified again.
    w.cache.clear();
}

fn deny_action(settings: &Settings, metrics: &Metrics, denial: &Denial) -> Action {
    increment(metrics.denied.get(denial.reason.index()).copied().flatten());
    if denial.reason == Reason::JwksUnavailable {
        log::warn!("jwt-to-header: no keys available; answering 503");
    } else {
        log::debug!("jwt-to-header: denied: {}", denial.reason.name());
    }
    let body = reply::body(denial);
    let extra = reply::headers(&settings.realm, denial);
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(1 + extra.len());
    headers.push(JSON_CONTENT_TYPE);
    headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
    let _ = hostcalls::send_http_response(denial.reason.status(), headers, Some(body.as_bytes()));
    Action::Pause
}

fn apply(settings: &Settings, headers: &[(&str, &[u8])], a: &Allowed<'_>) {
    for v in &a.verified {
        let Some(p) = settings.providers.get(v.provider) else {
            continue;
        };
        for (i, value) in &v.headers {
            if let Some(c) = p.claim_to_headers.get(*i) {
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    &c.header,
                    Some(value.as_str()),
                );
            }
        }
        if let Some(h) = &p.payload_header {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, h, Some(a.payload_b64()));
        }
    }
    if a.remove_token {
        match settings.sources.get(a.source) {
            Some(Source::Header { name, .. }) => {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
            }
            Some(Source::Param(name)) => {
                if let Some((_, path)) = headers.iter().find(|(k, _)| *k == ":path") {
                    let _ = hostcalls::set_map_value_bytes(
                        MapType::HttpRequestHeaders,
                        ":path",
                        Some(&remove_param(path, name)),
                    );
                }
            }
            Some(Source::Cookie(name)) => {
                let kept: Vec<Vec<u8>> = headers
                    .iter()
                    .filter(|(k, _)| *k == "cookie")
                    .filter_map(|(_, v)| remove_cookie(v, name))
                    .collect();
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "cookie");
                for v in kept {
                    let _ =
                        hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, "cookie", &v);
                }
            }
            None => {}
        }
    }
    // Re-route on the headers just set (tolerate hosts without the function).
    gatewasm_common::glue::clear_route_cache("jwt-to-header");
}

/// Run the filter on the request headers of the effective context. `may_wait`: a request may
/// pause for keys (false when it already waited). `may_reload`: it may load keys another
/// worker fetched and decide again (false on that second round, so it runs at most twice). Returns Continue / Pause as the HTTP
/// context would; a woken request is resumed by the caller on Continue.
fn process(shared: &Shared, context_id: u32, may_wait: bool, may_reload: bool) -> Action {
    let (settings, metrics) = {
        let w = shared.borrow();
        (w.settings.clone(), w.metrics.clone())
    };
    let header_map = match get_header_map(MapType::HttpRequestHeaders) {
        Ok(h) => h,
        Err(_) => return Action::Continue,
    };
    let headers = header_map.pairs();
    // Claim and payload headers are the filter's: a client never gets to send them.
    for name in &settings.strip_headers {
        if headers.iter().any(|(k, _)| k == name) {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
        }
    }
    // ... nor under a name a CGI-style upstream reads as the same one (`x_user_id`).
    for name in underscore_variants(&headers, settings.strip_headers.iter().map(String::as_str)) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }
    if settings.rules.is_empty() {
        return Action::Continue;
    }
    let now = now_ms();
    let (decision, stats) = {
        let mut guard = shared.borrow_mut();
        let w = &mut *guard;
        let mut native = HostNative {
            available: &mut w.native_available,
        };
        let mut env = Env {
            now: i64::try_from(now / 1000).unwrap_or(i64::MAX),
            remote: &w.remote,
            cache: &mut w.cache,
            native: &mut native,
            stats: Stats::default(),
        };
        let d = decide(&settings, &headers, &mut env);
        (d, env.stats)
    };
    metrics.stats(stats);
    match decision {
        Decision::Pass => Action::Continue,
        Decision::Allow(a) => {
            apply(&settings, &headers, &a);
            increment(metrics.allowed);
            Action::Continue
        }
        Decision::Deny(d) => deny_action(&settings, &metrics, &d),
        Decision::WaitForKeys {
            provider,
            unknown_kid,
        } => {
            let Some(p) = settings.providers.get(provider) else {
                return Action::Continue;
            };
            let Some(remote) = &p.remote else {
                return Action::Continue;
            };
            let have_keys = shared
                .borrow()
                .remote
                .get(provider)
                .is_some_and(Option::is_some);
            let give_up = |have_keys: bool| {
                let d = if have_keys {
                    Denial {
                        reason: Reason::UnknownKid,
                        description: "the token key id is not known",
                    }
                } else {
                    Denial {
                        reason: Reason::JwksUnavailable,
                        description: "the signing keys are not available",
                    }
                };
                deny_action(&settings, &metrics, &d)
            };
            if !may_wait {
                return give_up(have_keys);
            }
            let (meta, _) = read_meta(&settings, &p.name);
            let meta = meta.unwrap_or_default();
            let local = shared
                .borrow()
                .versions
                .get(provider)
                .copied()
                .unwrap_or_default();
            if meta.version != 0 && meta.version != local {
                // Another worker already fetched newer keys: use them now, and decide again
                // once. If they cannot be loaded (or a second round would be needed), refuse
                // rather than loop: the shared record is not ours to trust.
                if may_reload && load_if_newer(shared, provider, &meta) {
                    return process(shared, context_id, true, false);
                }
                return give_up(have_keys);
            }
            // The IdP is down and the process has never had keys: answer 503 at once instead
            // of holding every request until its deadline (one attempt per second continues).
            if !have_keys && meta.version == 0 && meta.failed_at > 0 && !meta.leased(now) {
                return give_up(false);
            }
            let min_interval = remote.min_refetch_interval_s.saturating_mul(1000);
            if unknown_kid && have_keys && !meta.refetch_allowed(now, min_interval) {
                return give_up(have_keys);
            }
            let mut w = shared.borrow_mut();
            if unknown_kid && let Some(flag) = w.refetch_wanted.get_mut(provider) {
                *flag = true;
            }
            w.waiters.push(Waiter {
                context_id,
                provider,
                deadline_ms: now.saturating_add(remote.timeout_ms),
                since: meta,
            });
            Action::Pause
        }
    }
}

struct Root {
    context_id: u32,
    /// `None` until the first successful `on_configure`.
    shared: Option<Shared>,
}

impl Root {
    fn tick(&self, shared: &Shared) {
        let settings = shared.borrow().settings.clone();
        let now = now_ms();
        for (idx, p) in settings.providers.iter().enumerate() {
            let Some(remote) = &p.remote else {
                continue;
            };
            let mkey = meta_key(&settings.config_hash, &p.name);
            let (mut meta, mut cas) = read_meta(&settings, &p.name);
            if meta.is_none() {
                // First worker here: create the record (a create race is harmless: every
                // writer writes the same empty record; CAS guards the lease below).
                let _ = hostcalls::set_shared_data(&mkey, Some(&Meta::default().encode()), None);
                (meta, cas) = read_meta(&settings, &p.name);
            }
            let Some(meta) = meta else {
                continue;
            };
            load_if_newer(shared, idx, &meta);
            self.wake(shared, idx, &meta, now);
            let (busy, wanted) = {
                let w = shared.borrow();
                (
                    w.inflight.iter().any(|(_, i)| *i == idx),
                    w.refetch_wanted.get(idx).copied().unwrap_or_default(),
                )
            };
            if busy
                || !meta.fetch_due(
                    now,
                    remote.refresh_s.saturating_mul(1000),
                    remote.min_refetch_interval_s.saturating_mul(1000),
                    wanted,
                )
            {
                continue;
            }
            let leased = meta.acquire(now, remote.timeout_ms);
            if hostcalls::set_shared_data(&mkey, Some(&leased.encode()), cas).is_err() {
                continue; // another worker took the lease
            }
            let sent = self.dispatch_http_call(
                &remote.cluster,
                vec![
                    (":method", "GET"),
                    (":path", &remote.path),
                    (":authority", &remote.authority),
                    ("accept", "application/json"),
                ],
                None,
                vec![],
                Duration::from_millis(remote.timeout_ms),
            );
            let mut w = shared.borrow_mut();
            if let Some(flag) = w.refetch_wanted.get_mut(idx) {
                *flag = false;
            }
            match sent {
                Ok(token) => w.inflight.push((token, idx)),
                Err(status) => {
                    drop(w);
                    log::warn!(
                        "jwt-to-header: providers.{}: cannot fetch the JWKS from cluster {}: {status:?}",
                        p.name,
                        remote.cluster
                    );
                    self.finish_fetch(shared, idx, None, now);
                }
            }
        }
    }

    /// Wake the requests waiting for provider `idx` whose keys changed, whose fetch failed, or
    /// whose deadline passed.
    fn wake(&self, shared: &Shared, idx: usize, meta: &Meta, now: u64) {
        let due: Vec<u32> = {
            let mut w = shared.borrow_mut();
            let mut due = Vec::new();
            w.waiters.retain(|waiter| {
                let ready = waiter.provider == idx
                    && (meta.version != waiter.since.version
                        || meta.failed_at != waiter.since.failed_at
                        || now >= waiter.deadline_ms);
                if ready {
                    due.push(waiter.context_id);
                }
                !ready
            });
            due
        };
        for context_id in due {
            if hostcalls::set_effective_context(context_id).is_err() {
                continue; // the stream is gone
            }
            if process(shared, context_id, false, false) == Action::Continue {
                let _ = hostcalls::resume_http_request();
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    /// Record the outcome of a fetch (`keys`: the parsed document and its bytes on success).
    fn finish_fetch(
        &self,
        shared: &Shared,
        idx: usize,
        fetched: Option<(KeySet, &[u8])>,
        now: u64,
    ) {
        let settings = shared.borrow().settings.clone();
        let metrics = shared.borrow().metrics.clone();
        let Some(p) = settings.providers.get(idx) else {
            return;
        };
        let mkey = meta_key(&settings.config_hash, &p.name);
        let ok = fetched.is_some();
        if let Some((_, bytes)) = &fetched {
            let _ = hostcalls::set_shared_data(
                &data_key(&settings.config_hash, &p.name),
                Some(bytes),
                None,
            );
        }
        // Read-modify-write under CAS; a few retries cover a concurrent first-create.
        let mut written = None;
        for _ in 0..4 {
            let (meta, cas) = read_meta(&settings, &p.name);
            let meta = meta.unwrap_or_default();
            let next = if ok {
                meta.succeeded(now)
            } else {
                meta.failed(now)
            };
            if hostcalls::set_shared_data(&mkey, Some(&next.encode()), cas).is_ok() {
                written = Some(next);
                break;
            }
        }
        increment(if ok {
            metrics.fetch_ok
        } else {
            metrics.fetch_failed
        });
        if let (Some((keys, _)), Some(meta)) = (fetched, written) {
            install(shared, idx, meta.version, keys);
        }
        if let Some(meta) = written {
            self.wake(shared, idx, &meta, now);
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let idx = {
            let mut w = shared.borrow_mut();
            let Some(pos) = w.inflight.iter().position(|(t, _)| *t == token_id) else {
                return;
            };
            w.inflight.swap_remove(pos).1
        };
        let settings = shared.borrow().settings.clone();
        let name = settings.providers.get(idx).map_or("", |p| p.name.as_str());
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let body = if body_size > MAX_JWKS_BYTES {
            None
        } else {
            hostcalls::get_buffer(
                proxy_wasm::types::BufferType::HttpCallResponseBody,
                0,
                body_size,
            )
            .ok()
            .flatten()
        };
        let now = now_ms();
        // What a failed fetch leaves this worker with: the keys it has, or none yet (the first
        // fetch failed).
        let kept = if shared.borrow().remote.get(idx).is_some_and(Option::is_some) {
            "keeping the last good keys"
        } else {
            "there are no keys yet"
        };
        let parsed = match (status.as_deref(), &body) {
            (Some("200"), Some(bytes)) => match parse_jwks_bytes(bytes) {
                Ok(keys) => Some(keys),
                Err(e) => {
                    log::warn!(
                        "jwt-to-header: providers.{name}: the fetched JWKS is unusable: {e}"
                    );
                    None
                }
            },
            (Some("200"), None) if body_size > MAX_JWKS_BYTES => {
                log::warn!(
                    "jwt-to-header: providers.{name}: the fetched JWKS is too large ({body_size} bytes, at most {MAX_JWKS_BYTES}); {kept}"
                );
                None
            }
            _ => {
                log::warn!(
                    "jwt-to-header: providers.{name}: JWKS fetch failed (status {}, {} body bytes); {kept}",
                    status.as_deref().unwrap_or("none"),
                    body_size
                );
                None
            }
        };
        match (parsed, body) {
            (Some(keys), Some(bytes)) => self.finish_fetch(&shared, idx, Some((keys, &bytes)), now),
            _ => self.finish_fetch(&shared, idx, None, now),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(settings) = glue::configure(self, FILTER, parse_settings) else {
            return false;
        };
        for warning in &settings.warnings {
            log::warn!("{FILTER}: {warning}");
        }
        let n = settings.providers.len();
        let has_remote = settings.providers.iter().any(|p| p.remote.is_some());
        let worker = Worker {
            cache: Cache::new(settings.cache_size),
            settings: Rc::new(settings),
            metrics: Rc::new(Metrics::define()),
            remote: vec![None; n],
            versions: vec![0; n],
            native_available: true,
            waiters: Vec::new(),
            refetch_wanted: vec![false; n],
            unloadable: vec![0; n],
            inflight: Vec::new(),
        };
        self.shared = Some(Rc::new(RefCell::new(worker)));
        if has_remote {
            self.set_tick_period(TICK);
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = self.shared.clone() {
            self.tick(&shared);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            context_id,
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    context_id: u32,
    shared: Option<Shared>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            // Cannot happen in Envoy (a rejected configuration creates no streams); fail closed.
            let _ = hostcalls::send_http_response(503, vec![], None);
            return Action::Pause;
        };
        process(&shared, self.context_id, true, true)
    }

    // While the request waits for keys, its body and trailers must wait too: in Envoy a
    // `Continue` from a later phase would resume the paused headers, unverified.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_while_waiting()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.hold_while_waiting()
    }
}

impl Stream {
    fn hold_while_waiting(&self) -> Action {
        let waiting = self.shared.as_ref().is_some_and(|s| {
            s.borrow()
                .waiters
                .iter()
                .any(|w| w.context_id == self.context_id)
        });
        if waiting {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}
