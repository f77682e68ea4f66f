//! The rate-limit stage (host-free): the request phase charges the local buckets
//! ([`crate::limiter::decide`] over shared data through the [`StageHost`]) and either answers a
//! denial locally or asks the global services ([`GrpcCall`]s, answered in
//! [`Stage::on_grpc_answer`]); the response phase adds the services' response headers and the
//! rate-limit headers of the tightest quota. Every host runs this one logic: the filter's own
//! module (`glue`) and the bundle's chain.

use std::cell::RefCell;

use gatewasm_common::reply::{JSON_CONTENT_TYPE, json_error_body};
use gatewasm_common::stage::{CALL_NOT_SENT, Counter, Effects, Flow, GrpcCall, Stage, StageHost};

use crate::config::{ClientIpConfig, HeaderFormat, Mode, Policy, Settings};
use crate::key::{IpPrefix, KeySeed};
use crate::limiter::{
    Decision, DenyReason, Event, Quota, Request, SetResult, Store, create_tables, decide,
    quota_limit, shared_key_seed,
};
use crate::response::{global_rate_limit_headers, rate_limit_headers, retry_after};
use crate::rls::{
    Answer, GRPC_DEADLINE_EXCEEDED, GlobalQuota, HeaderOp, METHOD, SERVICE, interpret,
    request_header_ops,
};

/// The filter's name, at the start of its log lines.
pub const FILTER: &str = "rate-limit";

/// The prefix of every counter name.
const PREFIX: &str = "gatewasm_rate_limit_";

/// Shared data (and the `source.address` property) through a [`StageHost`]: `&HostStore` is the
/// limiter's [`Store`] while the limiter's lazy `source.address` read uses the same host. Each
/// method is one host call; the cell is only ever borrowed for one call (a refused borrow,
/// which cannot happen, reads as absent / a refused write).
pub struct HostStore<'h> {
    host: RefCell<&'h mut dyn StageHost>,
}

impl<'h> HostStore<'h> {
    pub fn new(host: &'h mut dyn StageHost) -> Self {
        Self {
            host: RefCell::new(host),
        }
    }

    /// Envoy's `source.address` (`ip:port`), `None` when absent.
    fn source_address(&self) -> Option<Vec<u8>> {
        self.host
            .try_borrow_mut()
            .ok()?
            .property(&["source", "address"])
    }
}

impl Store for &HostStore<'_> {
    fn get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.host.try_borrow_mut() {
            Ok(mut host) => host.shared_get(key),
            Err(_) => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
        match self.host.try_borrow_mut() {
            Ok(mut host) => host.shared_set(key, value, cas),
            Err(_) => SetResult::Failed,
        }
    }
}

/// Counters. Bounded by the configuration, never by requests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Per rule: allowed, denied, shadow_denied, key_missing.
    per_rule: Vec<[Counter; 4]>,
    /// Per rule with a service: global_ok, global_over_limit, global_error, global_timeout.
    per_rule_global: Vec<[Counter; 4]>,
    contention_retries: Counter,
    contention_exhausted: Counter,
    slots_reclaimed: Counter,
    overflow: Counter,
}

impl Counters {
    fn define(settings: &Settings, mut define: impl FnMut(&str) -> Counter) -> Self {
        let per_rule = settings
            .rules
            .iter()
            .map(|r| {
                ["allowed", "denied", "shadow_denied", "key_missing"]
                    .map(|what| define(&format!("{PREFIX}{what}_{}", r.name)))
            })
            .collect();
        let per_rule_global = settings
            .rules
            .iter()
            .map(|r| {
                if r.service.is_none() {
                    return [Counter::default(); 4];
                }
                [
                    "global_ok",
                    "global_over_limit",
                    "global_error",
                    "global_timeout",
                ]
                .map(|what| define(&format!("{PREFIX}{what}_{}", r.name)))
            })
            .collect();
        Self {
            per_rule,
            per_rule_global,
            contention_retries: define(&format!("{PREFIX}contention_retries")),
            contention_exhausted: define(&format!("{PREFIX}contention_exhausted")),
            slots_reclaimed: define(&format!("{PREFIX}slots_reclaimed")),
            overflow: define(&format!("{PREFIX}overflow")),
        }
    }

    fn global(&self, rule: usize, answer: &Answer) -> Counter {
        let k = match answer {
            Answer::Ok { .. } => 0,
            Answer::OverLimit { .. } => 1,
            Answer::Error => 2,
            Answer::Timeout => 3,
        };
        self.per_rule_global
            .get(rule)
            .map_or(Counter::default(), |m| m[k])
    }

    fn event(&self, event: Event) -> Counter {
        let rule = |i: usize, k: usize| self.per_rule.get(i).map_or(Counter::default(), |m| m[k]);
        match event {
            Event::Allowed(i) => rule(i, 0),
            Event::Denied(i) => rule(i, 1),
            Event::ShadowDenied(i) => rule(i, 2),
            Event::KeyMissing(i) => rule(i, 3),
            Event::ContentionRetry => self.contention_retries,
            Event::ContentionExhausted => self.contention_exhausted,
            Event::Reclaimed => self.slots_reclaimed,
            Event::Overflow => self.overflow,
        }
    }
}

/// The compiled filter: settings, counters and the process's bucket-key seed (the same in
/// every VM of the process).
#[derive(Debug)]
pub struct RateLimit {
    settings: Settings,
    metrics: Counters,
    seed: KeySeed,
}

impl RateLimit {
    /// `define` defines a counter by name with the host.
    pub fn new(settings: Settings, seed: KeySeed, define: impl FnMut(&str) -> Counter) -> Self {
        let metrics = Counters::define(&settings, define);
        Self {
            settings,
            metrics,
            seed,
        }
    }

    /// What every host does with an accepted configuration: create every rule's shared-data
    /// entries before the first request (idempotent: later configurations and other workers
    /// find them), take the process's bucket-key seed from shared data (`fresh` makes one
    /// when this is the first), and define the counters.
    pub fn configure(
        settings: Settings,
        host: &mut dyn StageHost,
        fresh: impl FnOnce() -> [u8; KeySeed::LEN],
        define: impl FnMut(&str) -> Counter,
    ) -> Self {
        let store = HostStore::new(host);
        let created = create_tables(&settings, &mut &store);
        if created > 0 {
            log::info!(
                "{FILTER}: created {created} shared-data entries for {} rule(s)",
                settings.rules.len()
            );
        }
        let seed = shared_key_seed(&mut &store, fresh).unwrap_or_else(|| {
            // Without shared data the buckets cannot be shared either; the fixed keys at least
            // keep every VM's keys alike, as before seeding.
            log::warn!(
                "{FILTER}: cannot share a bucket-key seed through shared data; using the fixed one"
            );
            KeySeed::FIXED
        });
        Self::new(settings, seed, define)
    }

    /// The stage before any configuration: no rules, so every request passes untouched (and
    /// without a host call).
    pub fn unconfigured() -> Self {
        Self {
            settings: Settings {
                rules: Vec::new(),
                client_ip: ClientIpConfig::default(),
                client_ip_prefix: IpPrefix::default(),
                status: 429,
                headers: HeaderFormat::default(),
                on_contention: Policy::default(),
                on_overflow: Policy::default(),
            },
            metrics: Counters::default(),
            seed: KeySeed::FIXED,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Record one service answer for `rule_index`.
    fn record<'s>(
        &'s self,
        stream: &mut Stream,
        rule_index: usize,
        answer: Answer,
        fx: &mut Effects<'s>,
    ) {
        let Some(rule) = self.settings.rules.get(rule_index) else {
            return;
        };
        fx.count(self.metrics.global(rule_index, &answer));
        let failure_mode = rule
            .service
            .as_ref()
            .map_or(Policy::Allow, |s| s.failure_mode);
        let global = stream.global.get_or_insert_with(Box::default);
        let denial = match answer {
            Answer::Ok { quota, headers } => {
                if rule.mode == Mode::Global {
                    fx.count(self.metrics.event(Event::Allowed(rule_index)));
                }
                if let Some(quota) = quota
                    && !rule.shadow
                {
                    let candidate = Shown::Global {
                        rule: rule_index,
                        quota,
                    };
                    if stream.shown.is_none_or(|s| candidate.order() < s.order()) {
                        stream.shown = Some(candidate);
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
                    fx.count(self.metrics.event(Event::ShadowDenied(rule_index)));
                    log::info!(
                        "rate-limit: shadow rule {} would have denied a request (global)",
                        rule.name
                    );
                    None
                } else {
                    fx.count(self.metrics.event(Event::Denied(rule_index)));
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
                    fx.count(self.metrics.event(Event::Denied(rule_index)));
                    Some(GlobalDenial {
                        rule: rule_index,
                        reason: DenyReason::Unavailable,
                        retry_after_s: 1,
                        quota: None,
                    })
                } else {
                    if rule.mode == Mode::Global {
                        fx.count(self.metrics.event(Event::Allowed(rule_index)));
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

    /// Every call has answered: deny, or add the request headers the services asked for and go
    /// on.
    fn finish<'s>(&'s self, stream: &mut Stream, fx: &mut Effects<'s>) -> Flow {
        let settings = &self.settings;
        let Some(mut global) = stream.global.take() else {
            return Flow::Continue;
        };
        if let Some(d) = global.denial.take() {
            // The local reply passes through the response phase too: it must find nothing left
            // to add there (its headers are all in the reply).
            stream.shown = None;
            let retry_after = retry_after(d.retry_after_s);
            let name = settings.rules.get(d.rule).map_or("", |r| r.name.as_str());
            let extra = d
                .quota
                .as_ref()
                .map(|q| global_rate_limit_headers(settings.headers, name, q));
            let mut reply: Vec<(String, String)> =
                Vec::with_capacity(7 + global.response_headers.len());
            reply.push(owned(JSON_CONTENT_TYPE));
            reply.push(owned(("retry-after", retry_after.as_ref())));
            if let Some(extra) = &extra {
                reply.extend(extra.iter().map(owned));
            }
            reply.append(&mut global.response_headers);
            let body = json_error_body(d.reason.reason(), d.reason.message());
            fx.reply(settings.status, reply, body);
            return Flow::Reply;
        }
        // The first value of a name replaces what the client sent (see `request_header_ops`).
        for (op, name, value) in request_header_ops(&global.request_headers) {
            match op {
                HeaderOp::Replace => fx.set_request(name.to_owned(), value.as_bytes().to_vec()),
                HeaderOp::Append => fx.add_request(name.to_owned(), value.as_bytes().to_vec()),
            }
        }
        global.request_headers.clear();
        stream.global = Some(global);
        Flow::Continue
    }

    /// The local reply of a local denial.
    fn deny<'s>(&'s self, denial: &crate::limiter::Denial, fx: &mut Effects<'s>) -> Flow {
        let settings = &self.settings;
        let retry_after = retry_after(denial.retry_after_s);
        let extra = denial
            .quota
            .as_ref()
            .and_then(|q| Some((q, quota_limit(settings, q)?)))
            .map(|(q, limit)| rate_limit_headers(settings.headers, q, limit));
        let mut reply: Vec<(String, String)> = Vec::with_capacity(7);
        reply.push(owned(JSON_CONTENT_TYPE));
        reply.push(owned(("retry-after", retry_after.as_ref())));
        if let Some(extra) = &extra {
            reply.extend(extra.iter().map(owned));
        }
        let body = json_error_body(denial.reason.reason(), denial.reason.message());
        fx.reply(settings.status, reply, body);
        Flow::Reply
    }
}

fn owned((name, value): (&str, &str)) -> (String, String) {
    (name.to_owned(), value.to_owned())
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
#[derive(Debug)]
struct GlobalDenial {
    rule: usize,
    reason: DenyReason,
    retry_after_s: u64,
    quota: Option<GlobalQuota>,
}

/// A global call not answered yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Its index in the request phase's [`Effects::grpc_calls`].
    call: usize,
    rule: usize,
    /// When it was handed to the host for dispatch, in ns since the epoch.
    dispatched_ns: u64,
}

/// The global calls of one request.
#[derive(Debug, Default)]
struct Global {
    pending: Vec<Pending>,
    /// The first (by rule order) denial.
    denial: Option<GlobalDenial>,
    /// Headers the services asked to add.
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
}

/// What a stream keeps between its phases.
#[derive(Debug, Default)]
pub struct Stream {
    shown: Option<Shown>,
    /// `Some` while global calls are in flight or their headers are still to be added.
    global: Option<Box<Global>>,
}

impl Stage for RateLimit {
    type Stream = Stream;
    const RESPONSE_HEADERS: bool = true;

    /// Only the unconfigured stage (no rules) does not.
    fn reads_request_headers(&self) -> bool {
        !self.settings.rules.is_empty()
    }

    fn on_request_headers<'s>(
        &'s self,
        stream: &mut Stream,
        headers: &[(&str, &[u8])],
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) -> Flow {
        let settings = &self.settings;
        if settings.rules.is_empty() {
            // Not configured yet (cannot happen in Envoy, which creates no streams before a
            // good configuration): fail open.
            return Flow::Continue;
        }
        let now = host.now_ns();
        let shared = HostStore::new(host);
        let request = Request {
            headers,
            source_address: &|| shared.source_address(),
            now,
        };
        let decision = decide(settings, &self.seed, &mut &shared, &request, |e| {
            if let Event::ShadowDenied(i) = e
                && let Some(rule) = settings.rules.get(i)
            {
                log::info!(
                    "rate-limit: shadow rule {} would have denied a request",
                    rule.name
                );
            }
            fx.count(self.metrics.event(e));
        });
        match decision {
            Decision::Allow { quota, checks } => {
                stream.shown = quota.map(Shown::Local);
                if checks.is_empty() {
                    return Flow::Continue;
                }
                for check in checks {
                    let Some(service) = settings
                        .rules
                        .get(check.rule)
                        .and_then(|r| r.service.as_ref())
                    else {
                        continue;
                    };
                    stream
                        .global
                        .get_or_insert_with(Box::default)
                        .pending
                        .push(Pending {
                            call: fx.grpc_calls.len(),
                            rule: check.rule,
                            dispatched_ns: now,
                        });
                    fx.grpc_calls.push(GrpcCall {
                        cluster: service.cluster.clone(),
                        service: SERVICE,
                        method: METHOD,
                        message: check.message,
                        timeout_ms: u64::from(service.timeout_ms),
                    });
                }
                if stream
                    .global
                    .as_ref()
                    .is_some_and(|g| !g.pending.is_empty())
                {
                    Flow::Wait
                } else {
                    self.finish(stream, fx)
                }
            }
            Decision::Deny(denial) => self.deny(&denial, fx),
        }
    }

    /// One service's answer. A call the host could not send arrives here at once, as status 14
    /// without a body, and is an error (the adapter logged why).
    fn on_grpc_answer<'s>(
        &'s self,
        stream: &mut Stream,
        call: usize,
        status: u32,
        body: Option<&[u8]>,
        host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) -> Flow {
        let Some(global) = stream.global.as_mut() else {
            return Flow::Wait;
        };
        let Some(at) = global.pending.iter().position(|p| p.call == call) else {
            return Flow::Wait;
        };
        let Pending {
            rule,
            dispatched_ns,
            ..
        } = global.pending.swap_remove(at);
        // A call the host refused to send: an error (the adapter logged why).
        if status == CALL_NOT_SENT {
            self.record(stream, rule, Answer::Error, fx);
            return if stream.global.as_ref().is_some_and(|g| g.pending.is_empty()) {
                self.finish(stream, fx)
            } else {
                Flow::Wait
            };
        }
        // Envoy reports a call that hit its timeout as UNAVAILABLE (14: the 504 of its async
        // client), not DEADLINE_EXCEEDED: a failure at (about) the deadline is a timeout.
        let status = if status != 0
            && status != GRPC_DEADLINE_EXCEEDED
            && let Some(service) = self
                .settings
                .rules
                .get(rule)
                .and_then(|r| r.service.as_ref())
            // Envoy's timer and its wall clock disagree by a little: 90 % of the timeout counts.
            && host.now_ns().saturating_sub(dispatched_ns).saturating_mul(10)
                >= u64::from(service.timeout_ms) * 9_000_000
        {
            GRPC_DEADLINE_EXCEEDED
        } else {
            status
        };
        let answer = interpret(status, if status == 0 { body } else { None });
        if matches!(answer, Answer::Error | Answer::Timeout)
            && let Some(r) = self.settings.rules.get(rule)
        {
            log::warn!(
                "rate-limit: rule {}: the rate-limit service failed (gRPC status {status})",
                r.name
            );
        }
        self.record(stream, rule, answer, fx);
        if stream.global.as_ref().is_some_and(|g| g.pending.is_empty()) {
            self.finish(stream, fx)
        } else {
            Flow::Wait
        }
    }

    fn on_response_headers<'s>(
        &'s self,
        stream: &mut Stream,
        _host: &mut dyn StageHost,
        fx: &mut Effects<'s>,
    ) {
        let settings = &self.settings;
        if let Some(global) = stream.global.take() {
            for (name, value) in global.response_headers {
                fx.add_response(name, value.into_bytes());
            }
        }
        let Some(shown) = stream.shown.take() else {
            return;
        };
        if settings.headers == HeaderFormat::None {
            return;
        }
        // Set: the gateway's figures win over anything the upstream sent.
        match shown {
            Shown::Local(quota) => {
                if let Some(limit) = quota_limit(settings, &quota) {
                    for (name, value) in
                        rate_limit_headers(settings.headers, &quota, limit).into_values()
                    {
                        fx.set_response(name, value);
                    }
                }
            }
            Shown::Global { rule, quota } => {
                let name = settings.rules.get(rule).map_or("", |r| r.name.as_str());
                for (n, v) in
                    global_rate_limit_headers(settings.headers, name, &quota).into_values()
                {
                    fx.set_response(n, v);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::parse_settings;
    use crate::rls::{
        Code, DescriptorStatus, Duration, HeaderValue, RateLimit as RlsLimit, RateLimitRequest,
        RateLimitResponse, Unit,
    };
    use gatewasm_common::stage::{HeaderEdit, LocalReply};
    use prost::Message;
    use proxy_wasm::types::Status;
    use std::collections::HashMap;

    const START: u64 = 1_767_225_600_000_000_000;

    /// gRPC UNAVAILABLE: how Envoy reports a call that failed, or hit its timeout.
    const GRPC_UNAVAILABLE: u32 = 14;

    /// Shared data with Envoy's CAS rules, a fixed clock and an optional peer address.
    #[derive(Default)]
    struct FakeHost {
        shared: HashMap<String, (Vec<u8>, u32)>,
        last_cas: u32,
        now: u64,
        source: Option<&'static str>,
        /// Every call, by method name.
        calls: Vec<&'static str>,
    }

    impl FakeHost {
        fn new(source: Option<&'static str>) -> Self {
            Self {
                now: START,
                source,
                ..Self::default()
            }
        }
    }

    impl StageHost for FakeHost {
        fn now_ns(&mut self) -> u64 {
            self.calls.push("now_ns");
            self.now
        }

        fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
            self.calls.push("property");
            assert_eq!(path, ["source", "address"]);
            self.source.map(|s| s.as_bytes().to_vec())
        }

        fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.calls.push("shared_get");
            match self.shared.get(key) {
                Some((v, c)) => (Some(v.clone()), Some(*c)),
                None => (None, None),
            }
        }

        fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
            self.calls.push("shared_set");
            self.last_cas += 1;
            let next = self.last_cas;
            match self.shared.get_mut(key) {
                Some(e) => {
                    if let Some(c) = cas
                        && c != e.1
                    {
                        return SetResult::CasMismatch;
                    }
                    *e = (value.to_vec(), next);
                }
                None => {
                    self.shared.insert(key.to_owned(), (value.to_vec(), next));
                }
            }
            SetResult::Ok
        }

        fn foreign_function(
            &mut self,
            name: &str,
            _args: &[u8],
        ) -> Result<Option<Vec<u8>>, Status> {
            panic!("unexpected foreign function {name}")
        }
    }

    /// The stage and its counters by name.
    fn stage(json: &str) -> (RateLimit, HashMap<String, u32>) {
        let settings = parse_settings(Some(json.as_bytes())).unwrap();
        let mut names = HashMap::new();
        let stage = RateLimit::new(settings, KeySeed::FIXED, |name| {
            let id = u32::try_from(names.len()).unwrap();
            names.insert(name.to_owned(), id);
            Counter(Some(id))
        });
        (stage, names)
    }

    fn counted(fx: &Effects, names: &HashMap<String, u32>, name: &str) -> u32 {
        let id = names[name];
        fx.counters
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, by)| by)
            .sum()
    }

    fn request<'s>(
        stage: &'s RateLimit,
        stream: &mut Stream,
        host: &mut FakeHost,
        fx: &mut Effects<'s>,
    ) -> Flow {
        let headers: [(&str, &[u8]); 4] = [
            (":method", b"GET"),
            (":path", b"/api/orders"),
            (":authority", b"gw.example.com"),
            ("x-tenant", b"acme"),
        ];
        stage.on_request_headers(stream, &headers, host, fx)
    }

    fn set<'a>(name: &'a str, value: &'a str) -> HeaderEdit<'a> {
        HeaderEdit::Set(name.into(), value.as_bytes().into())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|&(n, v)| owned((n, v))).collect()
    }

    #[test]
    fn allows_then_denies_with_the_rate_limit_headers() {
        let (stage, names) =
            stage(r#"{"rules":[{"name":"ip","key":["client_ip"],"limit":1,"window_s":60}]}"#);
        let mut host = FakeHost::new(Some("10.0.0.1:5000"));

        let mut stream = Stream::default();
        let mut fx = Effects::default();
        assert_eq!(
            request(&stage, &mut stream, &mut host, &mut fx),
            Flow::Continue
        );
        assert_eq!(
            host.calls,
            ["now_ns", "property", "shared_get", "shared_set"],
            "1 clock read, the peer address, 1 get + 1 set"
        );
        assert_eq!(counted(&fx, &names, "gatewasm_rate_limit_allowed_ip"), 1);
        assert!(fx.reply.is_none() && fx.grpc_calls.is_empty() && fx.request.is_empty());
        let mut fx = Effects::default();
        stage.on_response_headers(&mut stream, &mut host, &mut fx);
        assert_eq!(
            fx.response,
            vec![
                set("ratelimit-policy", "\"ip\";q=1;w=60"),
                set("ratelimit", "\"ip\";r=0;t=60"),
                set("ratelimit-limit", "1"),
                set("ratelimit-remaining", "0"),
                set("ratelimit-reset", "60"),
            ]
        );

        host.now += 1_000_000_000;
        let mut stream = Stream::default();
        let mut fx = Effects::default();
        assert_eq!(
            request(&stage, &mut stream, &mut host, &mut fx),
            Flow::Reply
        );
        assert_eq!(counted(&fx, &names, "gatewasm_rate_limit_denied_ip"), 1);
        let reply = fx.reply.as_ref().unwrap();
        assert_eq!(
            reply,
            &LocalReply {
                status: 429,
                headers: pairs(&[
                    ("content-type", "application/json"),
                    ("retry-after", "59"),
                    ("ratelimit-policy", "\"ip\";q=1;w=60"),
                    ("ratelimit", "\"ip\";r=0;t=59"),
                    ("ratelimit-limit", "1"),
                    ("ratelimit-remaining", "0"),
                    ("ratelimit-reset", "59"),
                ]),
                body: json_error_body("rate_limited", "too many requests"),
            }
        );
        // The reply's response phase adds nothing (its headers are all in the reply).
        let mut fx = Effects::default();
        stage.on_response_headers(&mut stream, &mut host, &mut fx);
        assert!(fx.is_empty());
    }

    const GLOBAL: &str = r#"{"rules":[{"name":"api","key":["client_ip",{"header":"x-tenant"}],
        "mode":"global","service":{"cluster":"rls","domain":"gatewasm","timeout_ms":25}}]}"#;

    fn ok_answer() -> Vec<u8> {
        RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: Some(RlsLimit {
                    name: "server-side".into(),
                    requests_per_unit: 100,
                    unit: Unit::Minute as i32,
                }),
                limit_remaining: 41,
                duration_until_reset: Some(Duration {
                    seconds: 30,
                    nanos: 0,
                }),
            }],
            response_headers_to_add: vec![HeaderValue {
                key: "x-ratelimit-by".into(),
                value: "rls".into(),
                raw_value: Vec::new(),
            }],
            request_headers_to_add: vec![HeaderValue {
                key: "x-ratelimit-checked".into(),
                value: "global".into(),
                raw_value: Vec::new(),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn a_global_rule_waits_for_the_service_then_continues() {
        let (stage, names) = stage(GLOBAL);
        let mut host = FakeHost::new(Some("10.0.0.7:4000"));
        let mut stream = Stream::default();
        let mut fx = Effects::default();
        assert_eq!(request(&stage, &mut stream, &mut host, &mut fx), Flow::Wait);
        assert_eq!(fx.grpc_calls.len(), 1);
        let call = &fx.grpc_calls[0];
        assert_eq!(
            (
                call.cluster.as_str(),
                call.service,
                call.method,
                call.timeout_ms
            ),
            ("rls", SERVICE, METHOD, 25)
        );
        let req = RateLimitRequest::decode(call.message.as_slice()).unwrap();
        assert_eq!(req.domain, "gatewasm");
        let entries: Vec<(&str, &str)> = req.descriptors[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            entries,
            [
                ("rule", "api"),
                ("remote_address", "10.0.0.7"),
                ("x-tenant", "acme")
            ]
        );
        assert!(fx.reply.is_none() && fx.counters.is_empty());

        // The answer, in a later callback (fresh effects).
        host.now += 3_000_000;
        let mut fx = Effects::default();
        let body = ok_answer();
        assert_eq!(
            stage.on_grpc_answer(&mut stream, 0, 0, Some(&body), &mut host, &mut fx),
            Flow::Continue
        );
        assert_eq!(fx.request, vec![set("x-ratelimit-checked", "global")]);
        assert_eq!(counted(&fx, &names, "gatewasm_rate_limit_global_ok_api"), 1);
        assert_eq!(counted(&fx, &names, "gatewasm_rate_limit_allowed_api"), 1);
        assert!(fx.reply.is_none());

        let mut fx = Effects::default();
        stage.on_response_headers(&mut stream, &mut host, &mut fx);
        assert_eq!(
            fx.response,
            vec![
                HeaderEdit::Add("x-ratelimit-by".into(), b"rls".to_vec().into()),
                set("ratelimit-policy", "\"api\";q=100;w=60"),
                set("ratelimit", "\"api\";r=41;t=30"),
                set("ratelimit-limit", "100"),
                set("ratelimit-remaining", "41"),
                set("ratelimit-reset", "30"),
            ]
        );
    }

    #[test]
    fn a_call_that_could_not_be_sent_is_an_error_and_failure_mode_deny_replies() {
        // The shortest timeout: the answer still comes long before 90 % of it.
        let (stage, names) = stage(
            r#"{"rules":[{"name":"api","key":["client_ip",{"header":"x-tenant"}],
            "mode":"global","service":{"cluster":"rls","domain":"gatewasm","timeout_ms":1,
            "failure_mode":"deny"}}],"response":{"status":503}}"#,
        );
        let mut host = FakeHost::new(Some("10.0.0.7:4000"));
        let mut stream = Stream::default();
        let mut fx = Effects::default();
        assert_eq!(request(&stage, &mut stream, &mut host, &mut fx), Flow::Wait);
        // What the adapter does when `dispatch_grpc_call` fails: the calls are taken, the
        // answer (CALL_NOT_SENT, no body) goes into the same effects. Even past 90 % of the
        // timeout it is an error, not a timeout: the call never went out.
        let calls = std::mem::take(&mut fx.grpc_calls);
        assert_eq!(calls.len(), 1);
        host.now += 5_000_000;
        assert_eq!(
            stage.on_grpc_answer(&mut stream, 0, CALL_NOT_SENT, None, &mut host, &mut fx),
            Flow::Reply
        );
        assert_eq!(
            counted(&fx, &names, "gatewasm_rate_limit_global_error_api"),
            1
        );
        assert_eq!(
            counted(&fx, &names, "gatewasm_rate_limit_global_timeout_api"),
            0
        );
        assert_eq!(counted(&fx, &names, "gatewasm_rate_limit_denied_api"), 1);
        assert_eq!(
            fx.reply,
            Some(LocalReply {
                status: 503,
                headers: pairs(&[("content-type", "application/json"), ("retry-after", "1"),]),
                body: json_error_body(
                    "rate_limit_unavailable",
                    "the rate-limit service is unavailable"
                ),
            })
        );
        let mut fx = Effects::default();
        stage.on_response_headers(&mut stream, &mut host, &mut fx);
        assert!(fx.is_empty());
    }

    #[test]
    fn unavailable_at_the_deadline_is_a_timeout() {
        let (stage, names) = stage(GLOBAL);
        let mut host = FakeHost::new(Some("10.0.0.7:4000"));
        for (after_ms, counter) in [(22, "global_error_api"), (23, "global_timeout_api")] {
            let mut stream = Stream::default();
            let mut fx = Effects::default();
            assert_eq!(request(&stage, &mut stream, &mut host, &mut fx), Flow::Wait);
            host.now += after_ms * 1_000_000;
            let mut fx = Effects::default();
            assert_eq!(
                stage.on_grpc_answer(&mut stream, 0, GRPC_UNAVAILABLE, None, &mut host, &mut fx),
                Flow::Continue,
                "failure_mode allow"
            );
            assert_eq!(
                counted(&fx, &names, &format!("gatewasm_rate_limit_{counter}")),
                1
            );
            assert_eq!(counted(&fx, &names, "gatewasm_rate_limit_allowed_api"), 1);
            assert!(fx.request.is_empty());
        }
    }

    #[test]
    fn before_configuration_every_request_passes_without_a_host_call() {
        let stage = RateLimit::unconfigured();
        assert!(!stage.reads_request_headers());
        let mut host = FakeHost::new(None);
        let mut stream = Stream::default();
        let mut fx = Effects::default();
        assert_eq!(
            request(&stage, &mut stream, &mut host, &mut fx),
            Flow::Continue
        );
        stage.on_response_headers(&mut stream, &mut host, &mut fx);
        assert!(fx.is_empty() && host.calls.is_empty());
    }
}
