//! proxy-wasm glue (wasm32 only): the root context (configuration, metrics) and the HTTP
//! context (request headers). All decisions are made by [`crate::resolve`].
//!
//! Host calls per routed request: 1 header-map read; 1 replace each for `output_header`,
//! `cluster_header` and every tenant header; +1 `:path` replace when stripping; +1 remove per
//! stale client-sent tenant header; 1 `clear_route_cache` foreign-function call; 1 counter
//! increment. A rejected request: 1 read, 1 local reply, 1–2 counter increments.

use std::rc::Rc;

use gatewasm_common::glue::{self, increment};
use gatewasm_common::host::{HeaderMapBytes, get_header_map};
use gatewasm_common::reply::{JSON_CONTENT_TYPE, json_error_body};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

use crate::config::{Settings, UNKNOWN_TENANT, parse_settings};
use crate::resolve::{
    Decision, Rejection, requests_metric_name, resolve, stale_tenant_headers, underscore_spoofs,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(Root { config: None })
    });
}}

/// The filter's name, at the start of its log lines.
const FILTER: &str = "tenant-routing";

fn define(name: &str) -> Option<u32> {
    glue::define_counter(FILTER, name)
}

/// Metric ids: one counter per configured tenant (same order as `Settings::tenants`), one for
/// unknown tenants, one per rejection reason. Bounded by the configuration, never by requests.
#[derive(Debug, Default)]
struct Metrics {
    per_tenant: Vec<Option<u32>>,
    unknown: Option<u32>,
    rejected: [Option<u32>; 4],
}

impl Metrics {
    fn define(settings: &Settings) -> Self {
        Self {
            per_tenant: settings
                .tenants
                .iter()
                .map(|t| define(&requests_metric_name(&t.id)))
                .collect(),
            unknown: define(&requests_metric_name(UNKNOWN_TENANT)),
            rejected: Rejection::ALL.map(|r| define(r.metric_name())),
        }
    }
}

/// The compiled configuration and its metrics, shared by the HTTP contexts.
struct Compiled {
    settings: Settings,
    metrics: Metrics,
}

struct Root {
    /// `None` until the first successful `on_configure` (no streams are created before that).
    config: Option<Rc<Compiled>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(settings) = glue::configure(self, FILTER, parse_settings) else {
            return false;
        };
        let metrics = Metrics::define(&settings);
        self.config = Some(Rc::new(Compiled { settings, metrics }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Option<Rc<Compiled>>,
}

impl Stream {
    fn reject(&self, compiled: &Compiled, rejection: Rejection) -> Action {
        if rejection == Rejection::Unknown {
            increment(compiled.metrics.unknown);
        }
        increment(
            compiled
                .metrics
                .rejected
                .get(rejection.index())
                .copied()
                .flatten(),
        );
        let body = json_error_body(rejection.reason(), rejection.message());
        self.send_http_response(
            rejection.status(&compiled.settings),
            vec![JSON_CONTENT_TYPE],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(compiled) = self.config.clone() else {
            // Cannot happen in Envoy (a rejected configuration creates no streams); fail closed.
            self.send_http_response(503, vec![], None);
            return Action::Pause;
        };
        let settings = &compiled.settings;
        // One host call; the pairs borrow from the host's buffer (no copy per header).
        let header_map = get_header_map(MapType::HttpRequestHeaders).ok();
        let headers = header_map
            .as_ref()
            .map(HeaderMapBytes::pairs)
            .unwrap_or_default();
        let (index, new_path) = match resolve(settings, &headers) {
            Decision::Reject(rejection) => return self.reject(&compiled, rejection),
            Decision::Route { tenant, new_path } => (tenant, new_path),
        };
        let Some(tenant) = settings.tenants.get(index) else {
            return self.reject(&compiled, Rejection::Unknown);
        };
        for name in stale_tenant_headers(settings, index, &headers) {
            self.remove_http_request_header(name);
        }
        for name in underscore_spoofs(settings, &headers) {
            self.remove_http_request_header(name);
        }
        // Replace semantics (Envoy's setCopy): any copies the client sent are gone.
        self.set_http_request_header(&settings.output_header, Some(&tenant.id));
        self.set_http_request_header(&settings.cluster_header, Some(&tenant.cluster));
        for (name, value) in &tenant.headers {
            self.set_http_request_header(name, Some(value));
        }
        if let Some(path) = new_path {
            self.set_http_request_header_bytes(":path", Some(&path));
        }
        // Re-route on the headers just set.
        glue::clear_route_cache("tenant-routing");
        increment(compiled.metrics.per_tenant.get(index).copied().flatten());
        Action::Continue
    }
}
