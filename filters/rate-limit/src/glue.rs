//! proxy-wasm glue (wasm32 only): the root context (configuration, table creation, metrics)
//! and the HTTP context. All decisions are made by [`crate::limiter`].
//!
//! Host calls per request, with R rules that apply:
//! - request phase: 1 header-map read; 1 `source.address` property read (only when a rule
//!   needs the client IP and it comes from the peer, or `x-forwarded-for` is too short); 1 clock
//!   read; per rule 1 shared-data get + 1 set
//!   (a denial: no set; each lost CAS race: +1 get +1 set); 1 counter increment per rule;
//! - allowed response: 1 header add per rate-limit header (2 `draft`, 3 `draft03`, 5 `both`);
//! - denial: 1 local reply (headers included) instead.
//!
//! So the common case — one rule, client IP from the peer, `both` headers — costs
//! 1 + 1 + 1 + 2 + 1 + 5 = 11 host calls (≈ 5 µs in Envoy).
//!
//! A `global`/`hybrid` rule that applies (and whose local bucket allowed) adds 1
//! `dispatch_grpc_call`; the request pauses until every call has answered (or timed out:
//! Envoy ends the call after `timeout_ms`, with status UNAVAILABLE), then 1 buffer read (1
//! clock read instead for a failure) and 1 counter increment per answer, the request headers to add, and 1 `continue_stream` (or the
//! local reply).

use std::rc::Rc;

use gatewasm_common::glue::{self, increment, now_ns};
use gatewasm_common::host::{HeaderMapBytes, get_header_map};
use gatewasm_common::reply::{JSON_CONTENT_TYPE, json_error_body};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

use crate::config::{HeaderFormat, Mode, Policy, Settings, parse_settings};
use crate::key::KeySeed;
use crate::limiter::{
    Decision, DenyReason, Event, Quota, Request, SetResult, Store, create_tables, decide,
    quota_limit, shared_key_seed,
};
use crate::response::{global_rate_limit_headers, rate_limit_headers, retry_after};
use crate::rls::{
    Answer, GRPC_DEADLINE_EXCEEDED, GlobalQuota, HeaderOp, METHOD, SERVICE, interpret,
    request_header_ops,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, config: None })
    });
}}

/// Shared data through the host.
struct HostStore;

impl Store for HostStore {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => SetResult::Ok,
            Err(Status::CasMismatch) => SetResult::CasMismatch,
            Err(_) => SetResult::Failed,
        }
    }
}

/// The filter's name, at the start of its log lines.
const FILTER: &str = "rate-limit";

fn define(name: &str) -> Option<u32> {
    glue::define_counter(FILTER, name)
}

/// Metric ids. Bounded by the configuration, never by requests.
#[derive(Debug, Default)]
struct Metrics {
    /// Per rule: allowed, denied, shadow_denied, key_missing.
    per_rule: Vec<[Option<u32>; 4]>,
    /// Per rule with a service: global_ok, global_over_limit, global_error, global_timeout.
    per_rule_global: Vec<[Option<u32>; 4]>,
    contention_retries: Option<u32>,
    contention_exhausted: Option<u32>,
    slots_reclaimed: Option<u32>,
    overflow: Option<u32>,
}

const PREFIX: &str = "gatewasm_rate_limit_";

impl Metrics {
    fn define(settings: &Settings) -> Self {
        Self {
            per_rule: settings
                .rules
                .iter()
                .map(|r| {
                    ["allowed", "denied", "shadow_denied", "key_missing"]
                        .map(|what| define(&format!("{PREFIX}{what}_{}", r.name)))
                })
                .collect(),
            per_rule_global: settings
                .rules
                .iter()
                .map(|r| {
                    if r.service.is_none() {
                        return [None; 4];
                    }
                    [
                        "global_ok",
                        "global_over_limit",
                        "global_error",
                        "global_timeout",
                    ]
                    .map(|what| define(&format!("{PREFIX}{what}_{}", r.name)))
                })
                .collect(),
            contention_retries: define(&format!("{PREFIX}contention_retries")),
            contention_exhausted: define(&format!("{PREFIX}contention_exhausted")),
            slots_reclaimed: define(&format!("{PREFIX}slots_reclaimed")),
            overflow: define(&format!("{PREFIX}overflow")),
        }
    }

    fn count_global(&self, rule: usize, answer: &Answer) {
        let k = match answer {
            Answer::Ok { .. } => 0,
            Answer::OverLimit { .. } => 1,
            Answer::Error => 2,
            Answer::Timeout => 3,
        };
        increment(self.per_rule_global.get(rule).and_then(|m| m[k]));
    }

    fn count(&self, event: Event) {
        let rule = |i: usize, k: usize| self.per_rule.get(i).and_then(|m| m[k]);
        increment(match event {
            Event::Allowed(i) => rule(i, 0),
            Event::Denied(i) => rule(i, 1),
            Event::ShadowDenied(i) => rule(i, 2),
            Event::KeyMissing(i) => rule(i, 3),
            Event::ContentionRetry => self.contention_retries,
            Event::ContentionExhausted => self.contention_exhausted,
            Event::Reclaimed => self.slots_reclaimed,
            Event::Overflow => self.overflow,
        });
    }
}

struct Compiled {
    settings: Settings,
    metrics: Metrics,
    /// The process's bucket-key seed (the same in every VM of the process).
    seed: KeySeed,
}

struct Root {
    context_id: u32,
    config: Option<Rc<Compiled>>,
}

/// The process's key seed from shared data (created by the first VM; 1 get, +1 set and 1 get
/// for that VM): read on every configuration, so a VM never keeps a seed the others do not use.
fn process_seed(context_id: u32) -> KeySeed {
    let fresh = || glue::fresh_seed(FILTER, "the bucket-key hash", context_id);
    shared_key_seed(&mut HostStore, fresh).unwrap_or_else(|| {
        // Without shared data the buckets cannot be shared either; the fixed keys at least keep
        // every VM's keys alike, as before seeding.
        log::warn!(
            "rate-limit: cannot share a bucket-key seed through shared data; using the fixed one"
        );
        KeySeed::FIXED
    })
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(settings) = glue::configure(self, FILTER, parse_settings) else {
            return false;
        };
        let created = create_tables(&settings, &mut HostStore);
        if created > 0 {
            log::info!(
                "rate-limit: created {created} shared-data entries for {} rule(s)",
                settings.rules.len()
            );
        }
        let metrics = Metrics::define(&settings);
        let seed = process_seed(self.context_id);
        self.config = Some(Rc::new(Compiled {
            settings,
            metrics,
            seed,
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            config: self.config.clone(),
            shown: None,
            global: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The figures for the rate-limit headers of an allowed request.
#[derive(Debug, Clone, Copy)]
enum Shown {
    Local(Quota),
    Global { rule: usize, quota: GlobalQuota },
}

impl Shown {
    /// Fewer remaining, then the longer reset, is tighter.
    fn order(&self) -> (u64, u64) {
        match self {
            Shown::Local(q) => (q.remaining, u64::MAX - q.reset_s),
            Shown::Global { quota, .. } => (quota.remaining, u64::MAX - quota.reset_s),
        }
    }
}

/// A denial decided from the global services' answers.
struct GlobalDenial {
    rule: usize,
    reason: DenyReason,
    retry_after_s: u64,
    quota: Option<GlobalQuota>,
}

/// The global calls of one request.
#[derive(Default)]
struct Global {
    /// (token, rule, dispatch time in ns since the epoch) of the calls not answered yet.
    pending: Vec<(u32, usize, u64)>,
    /// The first (by rule order) denial.
    denial: Option<GlobalDenial>,
    /// Headers the services asked to add.
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
}

struct Stream {
    config: Option<Rc<Compiled>>,
    shown: Option<Shown>,
    /// `Some` while global calls are in flight or their headers are still to be added.
    global: Option<Box<Global>>,
}

impl Stream {
    /// Record one service answer for `rule`.
    fn record(&mut self, compiled: &Compiled, rule_index: usize, answer: Answer) {
        let Some(rule) = compiled.settings.rules.get(rule_index) else {
            return;
        };
        compiled.metrics.count_global(rule_index, &answer);
        let failure_mode = rule
            .service
            .as_ref()
            .map_or(Policy::Allow, |s| s.failure_mode);
        let global = self.global.get_or_insert_with(Box::default);
        let denial = match answer {
            Answer::Ok { quota, headers } => {
                if rule.mode == Mode::Global {
                    compiled.metrics.count(Event::Allowed(rule_index));
                }
                if let Some(quota) = quota
                    && !rule.shadow
                {
                    let candidate = Shown::Global {
                        rule: rule_index,
                        quota,
                    };
                    if self.shown.is_none_or(|s| candidate.order() < s.order()) {
                        self.shown = Some(candidate);
                    }
                }
                global.request_headers.extend(headers.request);
                global.response_headers.extend(headers.response);
                None
            }
            Answer::OverLimit {
                quota,
                reset_s,
                headers,
            } => {
                if rule.shadow {
                    compiled.metrics.count(Event::ShadowDenied(rule_index));
                    log::info!(
                        "rate-limit: shadow rule {} would have denied a request (global)",
                        rule.name
                    );
                    None
                } else {
                    compiled.metrics.count(Event::Denied(rule_index));
                    global.response_headers.extend(headers.response);
                    Some(GlobalDenial {
                        rule: rule_index,
                        reason: DenyReason::Limited,
                        retry_after_s: reset_s.unwrap_or(1).max(1),
                        quota: quota.map(|q| GlobalQuota { remaining: 0, ..q }),
                    })
                }
            }
            Answer::Error | Answer::Timeout => {
                if failure_mode == Policy::Deny && !rule.shadow {
                    compiled.metrics.count(Event::Denied(rule_index));
                    Some(GlobalDenial {
                        rule: rule_index,
                        reason: DenyReason::Unavailable,
                        retry_after_s: 1,
                        quota: None,
                    })
                } else {
                    if rule.mode == Mode::Global {
                        compiled.metrics.count(Event::Allowed(rule_index));
                    }
                    None
                }
            }
        };
        if let Some(d) = denial
            && global.denial.as_ref().is_none_or(|o| d.rule < o.rule)
        {
            global.denial = Some(d);
        }
    }

    /// Every call has answered: deny, or add the request headers and go on.
    fn finish(&mut self, compiled: &Compiled, paused: bool) -> Action {
        let settings = &compiled.settings;
        let Some(global) = self.global.as_mut() else {
            if paused {
                let _ = hostcalls::resume_http_request();
            }
            return Action::Continue;
        };
        if let Some(d) = global.denial.take() {
            // The local reply passes through on_http_response_headers too: it must find
            // nothing left to add there (its headers are all in the reply).
            self.shown = None;
            let Some(global) = self.global.take() else {
                return Action::Pause;
            };
            let retry_after = retry_after(d.retry_after_s);
            let name = settings.rules.get(d.rule).map_or("", |r| r.name.as_str());
            let extra = d
                .quota
                .as_ref()
                .map(|q| global_rate_limit_headers(settings.headers, name, q));
            let mut reply: Vec<(&str, &str)> =
                Vec::with_capacity(7 + global.response_headers.len());
            reply.push(JSON_CONTENT_TYPE);
            reply.push(("retry-after", retry_after.as_ref()));
            if let Some(extra) = &extra {
                for (n, v) in extra.iter() {
                    reply.push((n, v));
                }
            }
            for (n, v) in &global.response_headers {
                reply.push((n.as_str(), v.as_str()));
            }
            let body = json_error_body(d.reason.reason(), d.reason.message());
            let _ = hostcalls::send_http_response(settings.status, reply, Some(body.as_bytes()));
            return Action::Pause;
        }
        // The first value of a name replaces what the client sent (see `request_header_ops`).
        for (op, name, value) in request_header_ops(&global.request_headers) {
            let map = proxy_wasm::types::MapType::HttpRequestHeaders;
            let _ = match op {
                HeaderOp::Replace => hostcalls::set_map_value(map, name, Some(value)),
                HeaderOp::Append => hostcalls::add_map_value(map, name, value),
            };
        }
        global.request_headers.clear();
        if paused {
            let _ = hostcalls::resume_http_request();
        }
        Action::Continue
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(compiled) = self.config.clone() else {
            return;
        };
        let Some(global) = self.global.as_mut() else {
            return;
        };
        let Some(at) = global.pending.iter().position(|(t, ..)| *t == token_id) else {
            return;
        };
        let (_, rule, dispatched) = global.pending.swap_remove(at);
        // Envoy reports a call that hit its timeout as UNAVAILABLE (14: the 504 of its async
        // client), not DEADLINE_EXCEEDED: a failure at (about) the deadline is a timeout.
        let status_code = if status_code != 0
            && status_code != GRPC_DEADLINE_EXCEEDED
            && let Some(service) = compiled
                .settings
                .rules
                .get(rule)
                .and_then(|r| r.service.as_ref())
            // Envoy's timer and its wall clock disagree by a little: 90 % of the timeout counts.
            && now_ns().saturating_sub(dispatched).saturating_mul(10)
                >= u64::from(service.timeout_ms) * 9_000_000
        {
            GRPC_DEADLINE_EXCEEDED
        } else {
            status_code
        };
        let body = if status_code == 0 {
            hostcalls::get_buffer(
                proxy_wasm::types::BufferType::GrpcReceiveBuffer,
                0,
                response_size,
            )
            .ok()
            .flatten()
        } else {
            None
        };
        let answer = interpret(status_code, body.as_deref());
        if matches!(answer, Answer::Error | Answer::Timeout)
            && let Some(r) = compiled.settings.rules.get(rule)
        {
            log::warn!(
                "rate-limit: rule {}: the rate-limit service failed (gRPC status {status_code})",
                r.name
            );
        }
        self.record(&compiled, rule, answer);
        if self.global.as_ref().is_some_and(|g| g.pending.is_empty()) {
            self.finish(&compiled, true);
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(compiled) = self.config.clone() else {
            // Cannot happen in Envoy (a rejected configuration creates no streams); fail open.
            return Action::Continue;
        };
        let settings = &compiled.settings;
        let header_map = get_header_map(proxy_wasm::types::MapType::HttpRequestHeaders).ok();
        let headers = header_map
            .as_ref()
            .map(HeaderMapBytes::pairs)
            .unwrap_or_default();
        let now = now_ns();
        let request = Request {
            headers: &headers,
            source_address: &|| {
                hostcalls::get_property(vec!["source", "address"])
                    .ok()
                    .flatten()
            },
            now,
        };
        let decision = decide(settings, &compiled.seed, &mut HostStore, &request, |e| {
            if let Event::ShadowDenied(i) = e
                && let Some(rule) = settings.rules.get(i)
            {
                log::info!(
                    "rate-limit: shadow rule {} would have denied a request",
                    rule.name
                );
            }
            compiled.metrics.count(e)
        });
        match decision {
            Decision::Allow { quota, checks } => {
                self.shown = quota.map(Shown::Local);
                if checks.is_empty() {
                    return Action::Continue;
                }
                for check in checks {
                    let Some(service) = settings
                        .rules
                        .get(check.rule)
                        .and_then(|r| r.service.as_ref())
                    else {
                        continue;
                    };
                    match hostcalls::dispatch_grpc_call(
                        &service.cluster,
                        SERVICE,
                        METHOD,
                        Vec::new(),
                        Some(&check.message),
                        std::time::Duration::from_millis(u64::from(service.timeout_ms)),
                    ) {
                        Ok(token) => self
                            .global
                            .get_or_insert_with(Box::default)
                            .pending
                            .push((token, check.rule, now)),
                        Err(status) => {
                            log::warn!(
                                "rate-limit: cannot call the rate-limit service on cluster {}: {status:?}",
                                service.cluster
                            );
                            self.record(&compiled, check.rule, Answer::Error);
                        }
                    }
                }
                if self.global.as_ref().is_some_and(|g| !g.pending.is_empty()) {
                    Action::Pause
                } else {
                    self.finish(&compiled, false)
                }
            }
            Decision::Deny(denial) => {
                let retry_after = retry_after(denial.retry_after_s);
                let extra = denial
                    .quota
                    .as_ref()
                    .and_then(|q| Some((q, quota_limit(settings, q)?)))
                    .map(|(q, limit)| rate_limit_headers(settings.headers, q, limit));
                let mut reply: Vec<(&str, &str)> = Vec::with_capacity(7);
                reply.push(JSON_CONTENT_TYPE);
                reply.push(("retry-after", retry_after.as_ref()));
                if let Some(extra) = &extra {
                    reply.extend(extra.iter());
                }
                let body = json_error_body(denial.reason.reason(), denial.reason.message());
                self.send_http_response(settings.status, reply, Some(body.as_bytes()));
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(compiled) = self.config.as_ref() else {
            return Action::Continue;
        };
        let settings = &compiled.settings;
        if let Some(global) = self.global.take() {
            for (name, value) in &global.response_headers {
                let _ = hostcalls::add_map_value(
                    proxy_wasm::types::MapType::HttpResponseHeaders,
                    name,
                    value,
                );
            }
        }
        let Some(shown) = self.shown.take() else {
            return Action::Continue;
        };
        if settings.headers == HeaderFormat::None {
            return Action::Continue;
        }
        let set = |name: &str, value: &str| {
            // Replace: the gateway's figures win over anything the upstream sent.
            let _ = hostcalls::set_map_value(
                proxy_wasm::types::MapType::HttpResponseHeaders,
                name,
                Some(value),
            );
        };
        match shown {
            Shown::Local(quota) => {
                if let Some(limit) = quota_limit(settings, &quota) {
                    for (name, value) in rate_limit_headers(settings.headers, &quota, limit).iter()
                    {
                        set(name, value);
                    }
                }
            }
            Shown::Global { rule, quota } => {
                let name = settings.rules.get(rule).map_or("", |r| r.name.as_str());
                for (n, v) in global_rate_limit_headers(settings.headers, name, &quota).iter() {
                    set(n, v);
                }
            }
        }
        Action::Continue
    }
}
