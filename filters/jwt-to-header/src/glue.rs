//! proxy-wasm glue (wasm32 only): the root context (configuration, the remote JWKS fetch and
//! refresh on ticks, waking paused requests) and the HTTP context, over
//! [`crate::stage::JwtToHeader`], which makes every decision. The key driver ([`on_tick`],
//! [`on_http_call_response`]) is shared with the bundle's chain root; each passes how a woken
//! request goes on.
//!
//! Host calls per request with a token (cache hit): 1 header-map read, 1 clock read, 1 replace
//! per claim header, 1 remove of the token (`forward: false`), 1 `clear_route_cache`, 2 counter
//! increments (allowed, cache hit); +1 remove per spoofed claim header the client sent. A cache
//! miss adds one `verify_signature` call (RS*/ES*) and 1 counter. A request without a matching
//! rule: 1 header-map read (+ removes of spoofed claim headers).

use std::rc::Rc;
use std::time::Duration;

use gatewasm_common::glue::{self, HostCalls, apply_request, increment};
use gatewasm_common::host::get_header_map;
use gatewasm_common::stage::{Effects, Flow, Stage, StageHost};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

use crate::config::parse_settings;
use crate::jwk::KeySet;
use crate::jwks::{MAX_JWKS_BYTES, Meta, data_key, judge_fetch, meta_key};
use crate::stage::{FILTER, JwtToHeader, Shared, Stream as StageState, load_if_newer, read_meta};

/// The root context of this filter (also the bundle's `jwt-to-header` root).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root {
        context_id,
        stage: None,
    })
}

#[cfg(feature = "module")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Debug);
    proxy_wasm::set_root_context(root_context);
}}

/// Ticks drive the remote JWKS: loading what another worker fetched, refreshing, refetching
/// for unknown `kid`s and waking paused requests. Only set when a provider has `remote_jwks`.
pub const TICK: Duration = Duration::from_millis(100);

/// Parse the plugin configuration into the stage (defining its counters), logging the
/// configuration's warnings. `Err` names the field.
pub fn configure_stage(bytes: Option<&[u8]>) -> Result<JwtToHeader, gatewasm_common::ConfigError> {
    let settings = parse_settings(bytes)?;
    for warning in &settings.warnings {
        log::warn!("{FILTER}: {warning}");
    }
    Ok(JwtToHeader::new(settings, |name| {
        glue::counter(FILTER, name)
    }))
}

/// Whether the stage needs ticks (some provider has `remote_jwks`).
pub fn needs_ticks(stage: &JwtToHeader) -> bool {
    stage
        .shared
        .borrow()
        .settings
        .providers
        .iter()
        .any(|p| p.remote.is_some())
}

/// Wake the requests waiting for provider `idx` that are due; `wake(context_id)` runs with
/// that stream as the effective context.
fn wake_due(
    shared: &Shared,
    root_context_id: u32,
    idx: usize,
    meta: &Meta,
    now: u64,
    wake: &mut dyn FnMut(u32),
) {
    let due = shared.borrow_mut().due_waiters(idx, meta, now);
    for context_id in due {
        if hostcalls::set_effective_context(context_id).is_err() {
            continue; // the stream is gone
        }
        wake(context_id);
    }
    let _ = hostcalls::set_effective_context(root_context_id);
}

/// One tick of the key driver: per provider with `remote_jwks`, load what another worker
/// fetched, wake the requests that are due, and start a fetch when one is due and this worker
/// wins the lease. `root` dispatches the fetch (its `on_http_call_response` must call
/// [`on_http_call_response`]).
pub fn on_tick(
    root: &dyn Context,
    root_context_id: u32,
    stage: &JwtToHeader,
    wake: &mut dyn FnMut(u32),
) {
    let shared = &stage.shared;
    let settings = shared.borrow().settings.clone();
    let host = &mut HostCalls;
    let now = glue::now_ms();
    for (idx, p) in settings.providers.iter().enumerate() {
        let Some(remote) = &p.remote else {
            continue;
        };
        let mkey = meta_key(&settings.config_hash, &p.name);
        let (mut meta, mut cas) = read_meta(host, &settings, &p.name);
        if meta.is_none() {
            // First worker here: create the record (a create race is harmless: every writer
            // writes the same empty record; CAS guards the lease below).
            let _ = host.shared_set(&mkey, &Meta::default().encode(), None);
            (meta, cas) = read_meta(host, &settings, &p.name);
        }
        let Some(meta) = meta else {
            continue;
        };
        load_if_newer(shared, host, idx, &meta);
        wake_due(shared, root_context_id, idx, &meta, now, wake);
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
        // Through the context, so the SDK routes the answer back to it.
        let sent = root.dispatch_http_call(
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
                    "{FILTER}: providers.{}: cannot fetch the JWKS from cluster {}: {status:?}",
                    p.name,
                    remote.cluster
                );
                finish_fetch(shared, root_context_id, idx, None, now, wake);
            }
        }
    }
}

/// Record the outcome of a fetch (`fetched`: the parsed document and its bytes on success).
fn finish_fetch(
    shared: &Shared,
    root_context_id: u32,
    idx: usize,
    fetched: Option<(KeySet, &[u8])>,
    now: u64,
    wake: &mut dyn FnMut(u32),
) {
    let settings = shared.borrow().settings.clone();
    let metrics = shared.borrow().metrics.clone();
    let Some(p) = settings.providers.get(idx) else {
        return;
    };
    let host = &mut HostCalls;
    let mkey = meta_key(&settings.config_hash, &p.name);
    let ok = fetched.is_some();
    if let Some((_, bytes)) = &fetched {
        let _ = host.shared_set(&data_key(&settings.config_hash, &p.name), bytes, None);
    }
    // Read-modify-write under CAS; a few retries cover a concurrent first-create.
    let mut written = None;
    for _ in 0..4 {
        let (meta, cas) = read_meta(host, &settings, &p.name);
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
    increment(
        if ok {
            metrics.fetch_ok
        } else {
            metrics.fetch_failed
        }
        .0,
    );
    if let (Some((keys, _)), Some(meta)) = (fetched, written) {
        shared.borrow_mut().install(idx, meta.version, keys);
    }
    if let Some(meta) = written {
        wake_due(shared, root_context_id, idx, &meta, now, wake);
    }
}

/// The answer to a JWKS fetch; not ours (another token) is ignored.
pub fn on_http_call_response(
    root_context_id: u32,
    stage: &JwtToHeader,
    token_id: u32,
    body_size: usize,
    wake: &mut dyn FnMut(u32),
) {
    let shared = &stage.shared;
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
    let now = glue::now_ms();
    let has_keys = shared.borrow().remote.get(idx).is_some_and(Option::is_some);
    let parsed = judge_fetch(
        name,
        status.as_deref(),
        body_size,
        body.as_deref(),
        has_keys,
    );
    match (parsed, body) {
        (Some(keys), Some(bytes)) => finish_fetch(
            shared,
            root_context_id,
            idx,
            Some((keys, &bytes)),
            now,
            wake,
        ),
        _ => finish_fetch(shared, root_context_id, idx, None, now, wake),
    }
}

/// How this filter's own module goes on with a woken request: decide again on the request
/// headers as they are now, apply, and resume it unless it was refused.
fn resume_woken(stage: &JwtToHeader) {
    let Ok(map) = get_header_map(MapType::HttpRequestHeaders) else {
        // As on the request phase: headers that cannot be read are let through.
        let _ = hostcalls::resume_http_request();
        return;
    };
    let mut fx = Effects::default();
    let flow = stage.on_woken(&map.pairs(), &mut HostCalls, &mut fx);
    if apply_request(FILTER, &fx) == Action::Continue && flow == Flow::Continue {
        let _ = hostcalls::resume_http_request();
    }
}

struct Root {
    context_id: u32,
    /// `None` until the first successful `on_configure`.
    stage: Option<Rc<JwtToHeader>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(stage) = self.stage.clone() {
            on_http_call_response(self.context_id, &stage, token_id, body_size, &mut |_| {
                resume_woken(&stage)
            });
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(stage) = glue::configure(self, FILTER, configure_stage) else {
            return false;
        };
        if needs_ticks(&stage) {
            self.set_tick_period(TICK);
        }
        self.stage = Some(Rc::new(stage));
        true
    }

    fn on_tick(&mut self) {
        if let Some(stage) = self.stage.clone() {
            on_tick(self, self.context_id, &stage, &mut |_| resume_woken(&stage));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            context_id,
            stage: self.stage.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    context_id: u32,
    stage: Option<Rc<JwtToHeader>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(stage) = self.stage.clone() else {
            // Cannot happen in Envoy (a rejected configuration creates no streams); fail closed.
            let _ = hostcalls::send_http_response(503, vec![], None);
            return Action::Pause;
        };
        let Ok(map) = get_header_map(MapType::HttpRequestHeaders) else {
            return Action::Continue;
        };
        let mut state = StageState {
            context_id: self.context_id,
        };
        let mut fx = Effects::default();
        let flow = stage.on_request_headers(&mut state, &map.pairs(), &mut HostCalls, &mut fx);
        let action = apply_request(FILTER, &fx);
        match flow {
            Flow::Continue => action,
            Flow::Reply | Flow::Wait => Action::Pause,
        }
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
        let waiting = self
            .stage
            .as_ref()
            .is_some_and(|s| s.shared.borrow().is_waiting(self.context_id));
        if waiting {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}
