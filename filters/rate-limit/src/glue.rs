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

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use gatewasm_common::reply::{JSON_CONTENT_TYPE, json_error_body};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

use crate::config::{HeaderFormat, Settings, parse_settings};
use crate::limiter::{
    Event, Quota, Request, SetResult, Store, Verdict, create_tables, evaluate, quota_limit,
};
use crate::response::{rate_limit_headers, retry_after};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(Root { config: None })
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

fn define(name: &str) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("rate-limit: cannot define metric {name}: {status:?}");
            None
        }
    }
}

fn increment(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Metric ids. Bounded by the configuration, never by requests.
#[derive(Debug, Default)]
struct Metrics {
    /// Per rule: allowed, denied, shadow_denied, key_missing.
    per_rule: Vec<[Option<u32>; 4]>,
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
            contention_retries: define(&format!("{PREFIX}contention_retries")),
            contention_exhausted: define(&format!("{PREFIX}contention_exhausted")),
            slots_reclaimed: define(&format!("{PREFIX}slots_reclaimed")),
            overflow: define(&format!("{PREFIX}overflow")),
        }
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
}

struct Root {
    config: Option<Rc<Compiled>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration();
        match parse_settings(bytes.as_deref()) {
            Ok(settings) => {
                let created = create_tables(&settings, &mut HostStore);
                if created > 0 {
                    log::info!(
                        "rate-limit: created {created} shared-data entries for {} rule(s)",
                        settings.rules.len()
                    );
                }
                let metrics = Metrics::define(&settings);
                self.config = Some(Rc::new(Compiled { settings, metrics }));
                true
            }
            Err(err) => {
                log::error!("rate-limit: invalid plugin configuration: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            config: self.config.clone(),
            quota: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Option<Rc<Compiled>>,
    /// The figures for the response headers of an allowed request.
    quota: Option<Quota>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(compiled) = self.config.clone() else {
            // Cannot happen in Envoy (a rejected configuration creates no streams); fail open.
            return Action::Continue;
        };
        let settings = &compiled.settings;
        let headers = hostcalls::get_map_bytes(proxy_wasm::types::MapType::HttpRequestHeaders)
            .unwrap_or_default();
        let now = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let request = Request {
            headers: &headers,
            source_address: &|| {
                hostcalls::get_property(vec!["source", "address"])
                    .ok()
                    .flatten()
            },
            now,
        };
        let verdict = evaluate(settings, &mut HostStore, &request, |e| {
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
        match verdict {
            Verdict::Allow(quota) => {
                self.quota = quota;
                Action::Continue
            }
            Verdict::Deny(denial) => {
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
        let (Some(compiled), Some(quota)) = (self.config.as_ref(), self.quota.take()) else {
            return Action::Continue;
        };
        let settings = &compiled.settings;
        if settings.headers == HeaderFormat::None {
            return Action::Continue;
        }
        if let Some(limit) = quota_limit(settings, &quota) {
            for (name, value) in rate_limit_headers(settings.headers, &quota, limit).iter() {
                // Replace: the gateway's figures win over anything the upstream sent.
                let _ = hostcalls::set_map_value(
                    proxy_wasm::types::MapType::HttpResponseHeaders,
                    name,
                    Some(value),
                );
            }
        }
        Action::Continue
    }
}
