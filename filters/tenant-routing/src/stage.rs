//! The tenant-routing stage (host-free): the request phase resolves the tenant
//! ([`crate::resolve`] decides) and either routes the request (tenant headers set, stale and
//! spoofed ones removed, `:path` stripped, route cache cleared) or answers it locally with a
//! JSON error. No response phase. Every host runs this one logic: the filter's own module
//! (`glue`) and the bundle's chain.

use gatewasm_common::reply::{JSON_CONTENT_TYPE, json_error_body};
use gatewasm_common::stage::{Counter, Effects, Flow, Stage, StageHost};

use crate::config::{Settings, UNKNOWN_TENANT};
use crate::resolve::{
    Decision, Rejection, requests_metric_name, resolve, stale_tenant_headers, underscore_spoofs,
};

/// The filter's name, at the start of its log lines.
pub const FILTER: &str = "tenant-routing";

/// The counters: one per configured tenant (same order as `Settings::tenants`), one for unknown
/// tenants, one per rejection reason. Bounded by the configuration, never by requests.
#[derive(Debug, Default)]
pub struct Metrics {
    per_tenant: Vec<Counter>,
    unknown: Counter,
    rejected: [Counter; 4],
}

/// The compiled filter: settings and counters.
#[derive(Debug)]
pub struct TenantRouting {
    settings: Settings,
    metrics: Metrics,
}

impl TenantRouting {
    /// `define` defines a counter by name with the host.
    pub fn new(settings: Settings, mut define: impl FnMut(&str) -> Counter) -> Self {
        let metrics = Metrics {
            per_tenant: settings
                .tenants
                .iter()
                .map(|t| define(&requests_metric_name(&t.id)))
                .collect(),
            unknown: define(&requests_metric_name(UNKNOWN_TENANT)),
            rejected: Rejection::ALL.map(|r| define(r.metric_name())),
        };
        Self { settings, metrics }
    }

    /// Answer locally with the rejection's status and JSON error.
    fn reject<'s>(&'s self, rejection: Rejection, fx: &mut Effects<'s>) -> Flow {
        if rejection == Rejection::Unknown {
            fx.count(self.metrics.unknown);
        }
        fx.count(
            self.metrics
                .rejected
                .get(rejection.index())
                .copied()
                .unwrap_or_default(),
        );
        let body = json_error_body(rejection.reason(), rejection.message());
        let (name, value) = JSON_CONTENT_TYPE;
        fx.reply(
            rejection.status(&self.settings),
            vec![(name.to_owned(), value.to_owned())],
            body,
        );
        Flow::Reply
    }
}

/// Nothing is kept between phases (there is no response phase).
#[derive(Debug, Default)]
pub struct Stream;

impl Stage for TenantRouting {
    type Stream = Stream;

    fn on_request_headers<'s>(
        &'s self,
        _stream: &mut Stream,
        headers: &[(&str, &[u8])],
        _host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) -> Flow {
        let settings = &self.settings;
        let (index, new_path) = match resolve(settings, headers) {
            Decision::Reject(rejection) => return self.reject(rejection, fx),
            Decision::Route { tenant, new_path } => (tenant, new_path),
        };
        let Some(tenant) = settings.tenants.get(index) else {
            return self.reject(Rejection::Unknown, fx);
        };
        for name in stale_tenant_headers(settings, index, headers) {
            fx.remove_request(name);
        }
        for name in underscore_spoofs(settings, headers) {
            fx.remove_request(name.to_owned());
        }
        // Replace semantics (Envoy's setCopy): any copies the client sent are gone.
        fx.set_request(&settings.output_header, tenant.id.as_bytes());
        fx.set_request(&settings.cluster_header, tenant.cluster.as_bytes());
        for (name, value) in &tenant.headers {
            fx.set_request(name, value.as_bytes());
        }
        if let Some(path) = new_path {
            fx.set_request(":path", path);
        }
        // Re-route on the headers just set.
        fx.clear_route_cache = true;
        fx.count(
            self.metrics
                .per_tenant
                .get(index)
                .copied()
                .unwrap_or_default(),
        );
        Flow::Continue
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;
    use gatewasm_common::stage::{HeaderEdit, LocalReply, SetResult};
    use proxy_wasm::types::Status;

    /// A host with a fixed clock and nothing else.
    struct FakeHost;

    impl StageHost for FakeHost {
        fn now_ns(&mut self) -> u64 {
            1_700_000_000_000_000_000
        }

        fn property(&mut self, _path: &[&str]) -> Option<Vec<u8>> {
            None
        }

        fn shared_get(&mut self, _key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            (None, None)
        }

        fn shared_set(&mut self, _key: &str, _value: &[u8], _cas: Option<u32>) -> SetResult {
            SetResult::Failed
        }

        fn foreign_function(
            &mut self,
            _name: &str,
            _args: &[u8],
        ) -> Result<Option<Vec<u8>>, Status> {
            Err(Status::NotFound)
        }
    }

    /// Counter ids in definition order: acme 0, globex 1, unknown 2, rejected 3..=6 (missing,
    /// unknown, conflict, host not allowed).
    fn stage() -> TenantRouting {
        let json = r#"{
            "sources": [{"header": "x-tenant-id"}, {"path_prefix": "/t/{tenant}/", "strip": true}],
            "tenants": {
                "acme": {"cluster": "acme_backend", "headers": {"x-tier": "gold"}},
                "globex": {"cluster": "globex_backend"}
            }
        }"#;
        let settings = parse_settings(Some(json.as_bytes())).unwrap_or_else(|e| panic!("{e}"));
        let mut next = 0;
        TenantRouting::new(settings, |_name| {
            next += 1;
            Counter(Some(next - 1))
        })
    }

    fn request<'s>(stage: &'s TenantRouting, headers: &[(&str, &str)]) -> (Flow, Effects<'s>) {
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let mut fx = Effects::default();
        let flow = stage.on_request_headers(&mut Stream, &pairs, &mut FakeHost, &mut fx);
        (flow, fx)
    }

    fn set<'a>(name: &'a str, value: &'a str) -> HeaderEdit<'a> {
        HeaderEdit::Set(name.into(), value.as_bytes().into())
    }

    #[test]
    fn a_routed_request_gets_its_tenant_headers_and_a_new_route() {
        let routing = stage();
        let (flow, fx) = request(
            &routing,
            &[
                (":path", "/t/acme/orders"),
                ("x-tenant-id", "acme"),
                ("x_tenant_cluster", "evil"),
            ],
        );
        assert_eq!(flow, Flow::Continue);
        assert_eq!(
            fx.request,
            vec![
                HeaderEdit::Remove("x_tenant_cluster".into()),
                set("x-tenant-id", "acme"),
                set("x-tenant-cluster", "acme_backend"),
                set("x-tier", "gold"),
                set(":path", "/orders"),
            ]
        );
        assert!(fx.clear_route_cache);
        assert_eq!(fx.counters, vec![(0, 1)]);
        assert!(fx.reply.is_none() && fx.response.is_empty());
    }

    #[test]
    fn another_tenant_loses_the_client_sent_tenant_headers() {
        let routing = stage();
        let (flow, fx) = request(
            &routing,
            &[
                (":path", "/"),
                ("x-tenant-id", "globex"),
                ("x-tier", "gold"),
            ],
        );
        assert_eq!(flow, Flow::Continue);
        assert_eq!(
            fx.request,
            vec![
                HeaderEdit::Remove("x-tier".into()),
                set("x-tenant-id", "globex"),
                set("x-tenant-cluster", "globex_backend"),
            ]
        );
        assert_eq!(fx.counters, vec![(1, 1)]);
    }

    #[test]
    fn an_unknown_tenant_is_answered_locally() {
        let routing = stage();
        let (flow, fx) = request(&routing, &[(":path", "/"), ("x-tenant-id", "hooli")]);
        assert_eq!(flow, Flow::Reply);
        assert_eq!(
            fx.reply,
            Some(LocalReply {
                status: 404,
                headers: vec![("content-type".into(), "application/json".into())],
                body: json_error_body("tenant_unknown", "the tenant is not known"),
            })
        );
        // requests_unknown and rejected_unknown; nothing written, no re-route.
        assert_eq!(fx.counters, vec![(2, 1), (4, 1)]);
        assert!(fx.request.is_empty() && !fx.clear_route_cache);
    }

    #[test]
    fn a_request_without_a_tenant_is_answered_locally() {
        let routing = stage();
        let (flow, fx) = request(&routing, &[(":path", "/")]);
        assert_eq!(flow, Flow::Reply);
        let reply = fx.reply.unwrap();
        assert_eq!(reply.status, 400);
        assert!(reply.body.contains("tenant_missing"), "{}", reply.body);
        assert_eq!(fx.counters, vec![(3, 1)]);
    }

    #[test]
    fn there_is_no_response_phase() {
        const { assert!(!TenantRouting::RESPONSE_HEADERS) };
    }
}
