//! The jwt-to-header stage (host-free): one request's verification and its effects, and the
//! per-VM key state ([`Worker`]) the stage shares with its root (which fetches remote keys and
//! wakes the requests that wait for them; `glue`, and the bundle's chain).
//!
//! A request: the claim headers a client sent are removed; [`crate::auth::decide`] decides;
//! an allowed token's claims become request headers (and the token may be removed), a refusal
//! is a local reply, and a token whose key is not here yet makes the request wait
//! ([`Flow::Wait`], registered in [`Worker::waiters`]) unless another worker already has newer
//! keys (they are loaded from shared data and the request decided again, once).

use std::cell::RefCell;
use std::rc::Rc;

use gatewasm_common::reply::JSON_CONTENT_TYPE;
use gatewasm_common::stage::{Counter, Effects, Flow, Stage, StageHost};
use proxy_wasm::types::Status;

use crate::auth::{Allowed, Decision, Denial, Env, Reason, Stats, decide};
use crate::cache::Cache;
use crate::config::{Settings, Source};
use crate::jwk::{KeySet, parse_jwks_bytes};
use crate::jwks::{Meta, data_key, meta_key};
use crate::reply;
use crate::token::{remove_cookie, remove_param};
use crate::verify::{Native, NativeVerifier, decode_result};

/// The filter's name, at the start of its log lines.
pub const FILTER: &str = "jwt-to-header";

/// The prefix of every counter name.
pub const PREFIX: &str = "gatewasm_jwt_to_header_";

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub allowed: Counter,
    pub denied: Vec<Counter>,
    pub fetch_ok: Counter,
    pub fetch_failed: Counter,
    pub cache_hit: Counter,
    pub cache_miss: Counter,
    pub native: Counter,
    pub fallback: Counter,
}

impl Metrics {
    /// `define` defines a counter by its full name.
    pub fn new(mut define: impl FnMut(&str) -> Counter) -> Self {
        let mut d = |name: &str| define(&format!("{PREFIX}{name}"));
        Self {
            allowed: d("allowed"),
            denied: Reason::ALL
                .iter()
                .map(|r| d(&format!("denied_{}", r.name())))
                .collect(),
            fetch_ok: d("jwks_fetch_ok"),
            fetch_failed: d("jwks_fetch_failed"),
            cache_hit: d("cache_hit"),
            cache_miss: d("cache_miss"),
            native: d("verify_native"),
            fallback: d("verify_fallback"),
        }
    }

    fn stats(&self, fx: &mut Effects<'_>, s: Stats) {
        fx.add(self.cache_hit, s.cache_hits);
        fx.add(self.cache_miss, s.cache_misses);
        fx.add(self.native, s.native);
        fx.add(self.fallback, s.fallback);
    }
}

/// A request paused until keys arrive.
#[derive(Debug)]
pub struct Waiter {
    pub context_id: u32,
    pub provider: usize,
    pub deadline_ms: u64,
    /// The provider's meta record when the request paused: it wakes when that changes.
    pub since: Meta,
}

/// Per-VM state shared by the root context and the streams.
pub struct Worker {
    pub settings: Rc<Settings>,
    pub metrics: Rc<Metrics>,
    /// Remote keys by provider, and the meta version they came from.
    pub remote: Vec<Option<Rc<KeySet>>>,
    pub versions: Vec<u64>,
    pub cache: Cache,
    /// false once the host answered NotFound for `verify_signature`.
    pub native_available: bool,
    pub waiters: Vec<Waiter>,
    /// Providers for which a request saw an unknown `kid`.
    pub refetch_wanted: Vec<bool>,
    /// Per provider, the shared version this VM last failed to load (0: none).
    pub unloadable: Vec<u64>,
    /// HTTP call token → provider.
    pub inflight: Vec<(u32, usize)>,
}

impl Worker {
    pub fn new(settings: Settings, metrics: Metrics) -> Self {
        let n = settings.providers.len();
        Self {
            cache: Cache::new(settings.cache_size),
            settings: Rc::new(settings),
            metrics: Rc::new(metrics),
            remote: vec![None; n],
            versions: vec![0; n],
            native_available: true,
            waiters: Vec::new(),
            refetch_wanted: vec![false; n],
            unloadable: vec![0; n],
            inflight: Vec::new(),
        }
    }

    /// Install keys of `version` for provider `idx`.
    pub fn install(&mut self, idx: usize, version: u64, keys: KeySet) {
        if let Some(slot) = self.remote.get_mut(idx) {
            *slot = Some(Rc::new(keys));
        }
        if let Some(v) = self.versions.get_mut(idx) {
            *v = version;
        }
        // Whoever fetched, the refetch this worker wanted has happened.
        if let Some(flag) = self.refetch_wanted.get_mut(idx) {
            *flag = false;
        }
        // Keys changed: tokens verified with keys that are gone must be verified again.
        self.cache.clear();
    }

    /// Take the waiters of provider `idx` that are due: its keys changed, its fetch failed, or
    /// their deadline passed. Returns their context ids.
    pub fn due_waiters(&mut self, idx: usize, meta: &Meta, now_ms: u64) -> Vec<u32> {
        let mut due = Vec::new();
        self.waiters.retain(|waiter| {
            let ready = waiter.provider == idx
                && (meta.version != waiter.since.version
                    || meta.failed_at != waiter.since.failed_at
                    || now_ms >= waiter.deadline_ms);
            if ready {
                due.push(waiter.context_id);
            }
            !ready
        });
        due
    }

    /// Whether stream `context_id` is waiting for keys.
    pub fn is_waiting(&self, context_id: u32) -> bool {
        self.waiters.iter().any(|w| w.context_id == context_id)
    }
}

/// The per-VM key state, shared.
pub type Shared = Rc<RefCell<Worker>>;

/// The provider's meta record from shared data, and its CAS token.
pub fn read_meta(
    host: &mut dyn StageHost,
    settings: &Settings,
    provider: &str,
) -> (Option<Meta>, Option<u32>) {
    match host.shared_get(&meta_key(&settings.config_hash, provider)) {
        (Some(bytes), cas) => (Meta::decode(&bytes), cas),
        (None, cas) => (None, cas),
    }
}

/// Load the shared JWKS of provider `idx` if the shared version is newer than ours. Returns
/// whether this worker now holds the shared version. A version this VM cannot load (missing or
/// unparsable data: another plugin or module version under the same `vm_id`) is warned about
/// once, not on every tick.
pub fn load_if_newer(shared: &Shared, host: &mut dyn StageHost, idx: usize, meta: &Meta) -> bool {
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
    let keys = match host.shared_get(&data_key(&settings.config_hash, &provider.name)) {
        (Some(bytes), _) => parse_jwks_bytes(&bytes),
        _ => Err("the shared JWKS is missing".into()),
    };
    let mut w = shared.borrow_mut();
    match keys {
        Ok(keys) => {
            w.install(idx, meta.version, keys);
            true
        }
        Err(e) => {
            if let Some(bad) = w.unloadable.get_mut(idx)
                && *bad != meta.version
            {
                *bad = meta.version;
                log::warn!(
                    "{FILTER}: providers.{}: cannot load the shared JWKS version {}: {e}",
                    provider.name,
                    meta.version
                );
            }
            false
        }
    }
}

/// Native signature checks through the host's `verify_signature` foreign function.
struct HostNative<'a> {
    host: &'a mut dyn StageHost,
    available: &'a mut bool,
}

impl NativeVerifier for HostNative<'_> {
    fn verify(&mut self, args: &[u8]) -> Native {
        if !*self.available {
            return Native::Unavailable;
        }
        match self.host.foreign_function("verify_signature", args) {
            Ok(Some(bytes)) => match decode_result(&bytes) {
                Some(true) => Native::Valid,
                _ => Native::Invalid,
            },
            // An empty message is `result: false`.
            Ok(None) => Native::Invalid,
            Err(Status::NotFound) => {
                log::info!("{FILTER}: host has no verify_signature; using jwt-simple");
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

/// The refusal as a local reply.
fn deny<'s>(
    settings: &'s Settings,
    metrics: &Metrics,
    denial: &Denial,
    fx: &mut Effects<'s>,
) -> Flow {
    fx.count(
        metrics
            .denied
            .get(denial.reason.index())
            .copied()
            .unwrap_or_default(),
    );
    if denial.reason == Reason::JwksUnavailable {
        log::warn!("{FILTER}: no keys available; answering 503");
    } else {
        log::debug!("{FILTER}: denied: {}", denial.reason.name());
    }
    let extra = reply::headers(&settings.realm, denial);
    let mut headers = Vec::with_capacity(1 + extra.len());
    headers.push((
        JSON_CONTENT_TYPE.0.to_owned(),
        JSON_CONTENT_TYPE.1.to_owned(),
    ));
    headers.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
    fx.reply(denial.reason.status(), headers, reply::body(denial));
    Flow::Reply
}

/// The claim headers of an allowed token, and the token's removal.
fn allow<'s>(
    settings: &'s Settings,
    headers: &[(&str, &[u8])],
    a: &Allowed<'_>,
    fx: &mut Effects<'s>,
) {
    for v in &a.verified {
        let Some(p) = settings.providers.get(v.provider) else {
            continue;
        };
        for (i, value) in &v.headers {
            if let Some(c) = p.claim_to_headers.get(*i) {
                let value = fx.copied(value.as_bytes());
                fx.set_request(c.header.as_str(), value);
            }
        }
        if let Some(h) = &p.payload_header {
            let payload = fx.copied(a.payload_b64());
            fx.set_request(h.as_str(), payload);
        }
    }
    if a.remove_token {
        match settings.sources.get(a.source) {
            Some(Source::Header { name, .. }) => fx.remove_request(name.as_str()),
            Some(Source::Param(name)) => {
                if let Some((_, path)) = headers.iter().find(|(k, _)| *k == ":path") {
                    fx.set_request(":path", remove_param(path, name));
                }
            }
            Some(Source::Cookie(name)) => {
                fx.remove_request("cookie");
                for (_, v) in headers.iter().filter(|(k, _)| *k == "cookie") {
                    if let Some(kept) = remove_cookie(v, name) {
                        fx.add_request("cookie", kept);
                    }
                }
            }
            None => {}
        }
    }
    // Re-route on the headers just set.
    fx.clear_route_cache = true;
}

/// The stage: the compiled configuration and the VM's key state.
pub struct JwtToHeader {
    /// The compiled configuration (also in [`Worker::settings`]).
    settings: Rc<Settings>,
    pub shared: Shared,
}

/// What a stream keeps: the context id it waits under, when it has to wait for keys.
#[derive(Debug, Default)]
pub struct Stream {
    pub context_id: u32,
}

impl JwtToHeader {
    pub fn new(settings: Settings, define: impl FnMut(&str) -> Counter) -> Self {
        let worker = Worker::new(settings, Metrics::new(define));
        Self {
            settings: Rc::clone(&worker.settings),
            shared: Rc::new(RefCell::new(worker)),
        }
    }

    /// The request: strip the claim headers a client sent, then decide. `may_wait`: false for
    /// a request woken after waiting for keys (it is decided without waiting a second time).
    fn request<'s>(
        &'s self,
        context_id: u32,
        headers: &[(&str, &[u8])],
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
        may_wait: bool,
    ) -> Flow {
        let settings = &self.settings;
        // Claim and payload headers are the filter's: a client never gets to send them ...
        for name in &settings.strip_headers {
            if headers.iter().any(|(k, _)| k == name) {
                fx.remove_request(name.as_str());
            }
        }
        // ... nor under a name a CGI-style upstream reads as the same one (`x_user_id`).
        for name in settings.strip_names.underscore_variants(headers) {
            fx.remove_request(name.to_owned());
        }
        if settings.rules.is_empty() {
            return Flow::Continue;
        }
        self.decide(context_id, headers, host, fx, may_wait, may_wait)
    }

    /// A request woken after waiting for keys (its keys arrived, their fetch failed, or its
    /// deadline passed): decided again, without waiting a second time. `headers`: the request
    /// headers as they are now.
    pub fn on_woken<'s>(
        &'s self,
        headers: &[(&str, &[u8])],
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) -> Flow {
        self.request(0, headers, host, fx, false)
    }

    /// Decide. `may_wait`: the request may pause for keys (false when it already waited).
    /// `may_reload`: it may load keys another worker fetched and decide again (false on that
    /// second round, so it runs at most twice).
    fn decide<'s>(
        &'s self,
        context_id: u32,
        headers: &[(&str, &[u8])],
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
        may_wait: bool,
        may_reload: bool,
    ) -> Flow {
        let settings = &self.settings;
        let metrics = self.shared.borrow().metrics.clone();
        let now = host.now_ns() / 1_000_000;
        let (decision, stats) = {
            let mut guard = self.shared.borrow_mut();
            let w = &mut *guard;
            let mut native = HostNative {
                host: &mut *host,
                available: &mut w.native_available,
            };
            let mut env = Env {
                now: i64::try_from(now / 1000).unwrap_or(i64::MAX),
                remote: &w.remote,
                cache: &mut w.cache,
                native: &mut native,
                stats: Stats::default(),
            };
            let d = decide(settings, headers, &mut env);
            (d, env.stats)
        };
        metrics.stats(fx, stats);
        match decision {
            Decision::Pass => Flow::Continue,
            Decision::Allow(a) => {
                allow(settings, headers, &a, fx);
                fx.count(metrics.allowed);
                Flow::Continue
            }
            Decision::Deny(d) => deny(settings, &metrics, &d, fx),
            Decision::WaitForKeys {
                provider,
                unknown_kid,
            } => {
                let Some(p) = settings.providers.get(provider) else {
                    return Flow::Continue;
                };
                let Some(remote) = &p.remote else {
                    return Flow::Continue;
                };
                let have_keys = self
                    .shared
                    .borrow()
                    .remote
                    .get(provider)
                    .is_some_and(Option::is_some);
                let give_up = |have_keys: bool, fx: &mut Effects<'s>| {
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
                    deny(settings, &metrics, &d, fx)
                };
                if !may_wait {
                    return give_up(have_keys, fx);
                }
                let (meta, _) = read_meta(host, settings, &p.name);
                let meta = meta.unwrap_or_default();
                let local = self
                    .shared
                    .borrow()
                    .versions
                    .get(provider)
                    .copied()
                    .unwrap_or_default();
                if meta.version != 0 && meta.version != local {
                    // Another worker already fetched newer keys: use them now, and decide again
                    // once. If they cannot be loaded (or a second round would be needed),
                    // refuse rather than loop: the shared record is not ours to trust.
                    if may_reload && load_if_newer(&self.shared, host, provider, &meta) {
                        return self.decide(context_id, headers, host, fx, true, false);
                    }
                    return give_up(have_keys, fx);
                }
                // The IdP is down and the process has never had keys: answer 503 at once
                // instead of holding every request until its deadline (one attempt per second
                // continues).
                if !have_keys && meta.version == 0 && meta.failed_at > 0 && !meta.leased(now) {
                    return give_up(false, fx);
                }
                let min_interval = remote.min_refetch_interval_s.saturating_mul(1000);
                if unknown_kid && have_keys && !meta.refetch_allowed(now, min_interval) {
                    return give_up(have_keys, fx);
                }
                let mut w = self.shared.borrow_mut();
                if unknown_kid && let Some(flag) = w.refetch_wanted.get_mut(provider) {
                    *flag = true;
                }
                w.waiters.push(Waiter {
                    context_id,
                    provider,
                    deadline_ms: now.saturating_add(remote.timeout_ms),
                    since: meta,
                });
                Flow::Wait
            }
        }
    }
}

impl Stage for JwtToHeader {
    type Stream = Stream;

    fn on_request_headers<'s>(
        &'s self,
        stream: &mut Stream,
        headers: &[(&str, &[u8])],
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) -> Flow {
        self.request(stream.context_id, headers, host, fx, true)
    }
}
