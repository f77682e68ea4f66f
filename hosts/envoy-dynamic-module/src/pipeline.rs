//! The filters as one pass over a stream, host-free: a [`Pipeline`] is the configured stages
//! (one filter, or a chain), a [`Run`] is one stream through them, and [`StreamHost`] is what a
//! run needs from Envoy (the ABI adapter, `hooks`, implements it over the dynamic-module
//! callbacks; the tests with a map).
//!
//! Semantics are those of the Proxy-Wasm bundle's chain mode (hosts/proxy-wasm-bundle,
//! `chain.rs`), which are those of separate filters in that order: the request headers are
//! read once; each stage sees what the earlier ones wrote ([`HeaderList`]); what changed is
//! written back with one call per changed header name; the route cache is cleared at most once;
//! a local reply stops the later request stages (what the earlier ones wrote is written
//! first); the response pass runs the response side of every stage that saw the request, last
//! first (Envoy's encoder order), also for a local reply.
//!
//! What this slice does not do: wait. A stage that would wait — jwt-to-header for a remote
//! JWKS, rate-limit for its gRPC rate-limit service — is refused at configuration time
//! ([`crate::spec`]); should one wait anyway, the request is answered 503 (fail closed) and
//! the reason logged.

use std::rc::Rc;

use gatewasm_chain_plan::{FilterKind, StagePlan, stage_error};
use gatewasm_common::ConfigError;
use gatewasm_common::clock::unix_nanos;
use gatewasm_common::rng;
use gatewasm_common::stage::{
    Counter, Effects, Flow, HeaderEdit, HeaderList, LocalReply, SetResult, Stage, StageHost,
};
use proxy_wasm::types::Status;

use crate::shared_data::{self, SharedData};

/// Which header map an edit goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// What a stream needs from Envoy. Every method is one ABI call in the real host.
pub trait StreamHost {
    /// The request headers as `(name, value)` pairs, serialised as Proxy-Wasm serialises a
    /// header map ([`gatewasm_common::headers::serialize_header_map`]), the form
    /// [`HeaderList`] parses.
    fn request_headers(&mut self) -> Vec<u8>;
    /// The downstream peer, `ip:port` (Envoy's `source.address` attribute).
    fn source_address(&mut self) -> Option<Vec<u8>>;
    /// Replace every copy of `name` with `value`; `None` removes them.
    fn set_header(&mut self, side: Side, name: &str, value: Option<&[u8]>);
    /// Append one more copy of `name`.
    fn add_header(&mut self, side: Side, name: &str, value: &[u8]);
    fn clear_route_cache(&mut self);
    /// Add `by` to the counter Envoy gave id `id` at configuration time.
    fn increment_counter(&mut self, id: u32, by: u32);
    fn send_reply(&mut self, reply: &LocalReply);
}

/// The [`StageHost`] of one callback: one clock read for all stages (separate filters would
/// each read it, microseconds apart), `source.address` from Envoy, the process's shared data,
/// and one foreign function, `verify_signature`, answered by the module itself
/// ([`crate::signature`]: jwt-to-header's RS*/ES* checks with ring).
pub struct PassHost<'h> {
    stream: &'h mut dyn StreamHost,
    shared: &'h SharedData,
    now_ns: Option<u64>,
}

impl<'h> PassHost<'h> {
    pub fn new(stream: &'h mut dyn StreamHost, shared: &'h SharedData) -> Self {
        Self {
            stream,
            shared,
            now_ns: None,
        }
    }
}

impl StageHost for PassHost<'_> {
    fn now_ns(&mut self) -> u64 {
        *self
            .now_ns
            .get_or_insert_with(|| unix_nanos(std::time::SystemTime::now()))
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["source", "address"] => self.stream.source_address(),
            _ => None,
        }
    }

    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.get(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
        self.shared.set(key, value, cas)
    }

    fn foreign_function(&mut self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        foreign_function(name, args)
    }
}

/// The foreign functions the module implements itself (Envoy's are not reachable from a
/// dynamic module): `verify_signature`; any other is NotFound.
fn foreign_function(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    match name {
        crate::signature::VERIFY_SIGNATURE => crate::signature::verify_signature(args).map(Some),
        _ => Err(Status::NotFound),
    }
}

/// The [`StageHost`] of configuration time: no stream (no `source.address`), the shared data.
struct ConfigHost<'h> {
    shared: &'h SharedData,
}

impl StageHost for ConfigHost<'_> {
    fn now_ns(&mut self) -> u64 {
        unix_nanos(std::time::SystemTime::now())
    }

    fn property(&mut self, _path: &[&str]) -> Option<Vec<u8>> {
        None
    }

    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.get(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
        self.shared.set(key, value, cas)
    }

    fn foreign_function(&mut self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        foreign_function(name, args)
    }
}

/// A configured stage. Stages are built per worker thread (jwt-to-header's key cache is an
/// `Rc`, as it is per VM in Wasm), so they need not be `Send`.
enum Compiled {
    CorrelationId(Rc<correlation_id::stage::CorrelationId>),
    TracePropagation(Rc<trace_propagation::stage::TracePropagation>),
    JwtToHeader(Rc<jwt_to_header::stage::JwtToHeader>),
    TenantRouting(Rc<tenant_routing::stage::TenantRouting>),
    RateLimit(Rc<rate_limit::stage::RateLimit>),
}

/// The message a refused feature gets, at the field that asks for it.
pub const NOT_YET: &str = "is not yet supported by the dynamic module";

/// Build one stage from its filter's configuration bytes (the JSON its Wasm plugin takes),
/// with the same parser and the same errors. `define` gives each counter its id.
fn compile(
    kind: FilterKind,
    bytes: Option<&[u8]>,
    define: &mut dyn FnMut(&str) -> Counter,
    shared: &SharedData,
) -> Result<Compiled, ConfigError> {
    Ok(match kind {
        FilterKind::CorrelationId => {
            let settings = correlation_id::config::parse_settings(bytes)?;
            Compiled::CorrelationId(Rc::new(correlation_id::stage::CorrelationId::new(
                settings, define,
            )))
        }
        FilterKind::TracePropagation => {
            let settings = trace_propagation::config::parse_settings(bytes)?;
            Compiled::TracePropagation(Rc::new(trace_propagation::stage::TracePropagation::new(
                settings, define,
            )))
        }
        FilterKind::JwtToHeader => {
            let settings = jwt_to_header::config::parse_settings(bytes)?;
            if let Some(p) = settings.providers.iter().find(|p| p.remote.is_some()) {
                return Err(ConfigError::new(
                    format!("providers.{}.remote_jwks", p.name),
                    format!("remote JWKS {NOT_YET}; give the keys inline (\"jwks\")"),
                ));
            }
            for warning in &settings.warnings {
                log::warn!("{}: {warning}", jwt_to_header::stage::FILTER);
            }
            Compiled::JwtToHeader(Rc::new(jwt_to_header::stage::JwtToHeader::new(
                settings, define,
            )))
        }
        FilterKind::TenantRouting => {
            let settings = tenant_routing::config::parse_settings(bytes)?;
            Compiled::TenantRouting(Rc::new(tenant_routing::stage::TenantRouting::new(
                settings, define,
            )))
        }
        FilterKind::RateLimit => {
            use rate_limit::config::Mode;
            let settings = rate_limit::config::parse_settings(bytes)?;
            if let Some((i, rule)) = settings
                .rules
                .iter()
                .enumerate()
                .find(|(_, r)| r.mode != Mode::Local)
            {
                let mode = if rule.mode == Mode::Global {
                    "global"
                } else {
                    "hybrid"
                };
                return Err(ConfigError::new(
                    format!("rules[{i}].mode"),
                    format!("{mode} mode (a rate-limit service over gRPC) {NOT_YET}"),
                ));
            }
            let mut host = ConfigHost { shared };
            let fresh = || {
                rng::seed_or_fallback(
                    rate_limit::stage::FILTER,
                    "the bucket-key hash",
                    rng::os_seed(),
                    || unix_nanos(std::time::SystemTime::now()),
                    0,
                )
            };
            Compiled::RateLimit(Rc::new(rate_limit::stage::RateLimit::configure(
                settings, &mut host, fresh, define,
            )))
        }
    })
}

/// The configured stages of one filter instance, on one worker thread.
pub struct Pipeline {
    stages: Vec<Compiled>,
    reads_request_headers: bool,
}

impl Pipeline {
    /// Build the stages of `plans` (one for a single filter), their errors as the Wasm hosts
    /// report them: a single filter's as they are, a chain's under `stages[i].config` with the
    /// filter's name ([`stage_error`]).
    pub fn build(
        plans: &[StagePlan],
        chain: bool,
        define: &mut dyn FnMut(&str) -> Counter,
    ) -> Result<Pipeline, ConfigError> {
        Self::build_in(plans, chain, define, &shared_data::PROCESS)
    }

    fn build_in(
        plans: &[StagePlan],
        chain: bool,
        define: &mut dyn FnMut(&str) -> Counter,
        shared: &SharedData,
    ) -> Result<Pipeline, ConfigError> {
        let mut stages = Vec::with_capacity(plans.len());
        for (i, plan) in plans.iter().enumerate() {
            let stage = compile(plan.kind, plan.config.as_deref(), define, shared);
            stages.push(match stage {
                Ok(stage) => stage,
                Err(e) if chain => return Err(stage_error(i, plan.kind, &e)),
                Err(e) => return Err(e),
            });
        }
        // Per-thread generators of the stages that make IDs (the Wasm modules seed theirs per
        // VM, in `on_vm_start` and every `on_configure`).
        let seed = || {
            rng::seed_or_fallback(
                "gatewasm",
                "IDs",
                rng::os_seed(),
                || unix_nanos(std::time::SystemTime::now()),
                0,
            )
        };
        correlation_id::stage::reseed(seed());
        trace_propagation::stage::reseed(seed());
        let reads_request_headers = stages.iter().any(|s| match s {
            Compiled::CorrelationId(s) => s.reads_request_headers(),
            Compiled::TracePropagation(s) => s.reads_request_headers(),
            Compiled::JwtToHeader(s) => s.reads_request_headers(),
            Compiled::TenantRouting(s) => s.reads_request_headers(),
            Compiled::RateLimit(s) => s.reads_request_headers(),
        });
        Ok(Pipeline {
            stages,
            reads_request_headers,
        })
    }

    /// A stream through these stages.
    pub fn start(self: &Rc<Self>) -> Run {
        Run {
            stages: self.stages.iter().map(bind).collect(),
            pipeline: Rc::clone(self),
            seen: 0,
            response: Vec::new(),
            replied: false,
        }
    }
}

/// One stage bound to one stream: the stage and its per-stream state.
struct Of<S: Stage> {
    stage: Rc<S>,
    stream: S::Stream,
}

fn of<S: Stage>(stage: &Rc<S>) -> Of<S> {
    Of {
        stage: Rc::clone(stage),
        stream: S::Stream::default(),
    }
}

/// What the request sides of a run's stages decided, gathered as they go (each stage's
/// [`Effects`] is emptied into it: no owned copy of a stage's effects is built).
#[derive(Default)]
struct Gathered {
    route_changed: bool,
    counters: Vec<(u32, u32)>,
    reply: Option<LocalReply>,
    /// The stage asked for gRPC calls (it waits).
    calls: bool,
}

/// What every bound stage does: its request side (its request edits applied to the header
/// list, its response edits owned into `response`, the rest into `into`) and its response side
/// (its edits owned into `edits`, its counters into `counters`).
trait Bound {
    fn request(
        &mut self,
        headers: &mut HeaderList,
        host: &mut dyn StageHost,
        response: &mut Vec<HeaderEdit<'static>>,
        into: &mut Gathered,
    ) -> Flow;
    fn response(
        &mut self,
        host: &mut dyn StageHost,
        edits: &mut Vec<HeaderEdit<'static>>,
        counters: &mut Vec<(u32, u32)>,
    );
}

impl<S: Stage> Bound for Of<S> {
    fn request(
        &mut self,
        headers: &mut HeaderList,
        host: &mut dyn StageHost,
        response: &mut Vec<HeaderEdit<'static>>,
        into: &mut Gathered,
    ) -> Flow {
        let mut fx = Effects::default();
        let flow = {
            let pairs = headers.pairs();
            self.stage
                .on_request_headers(&mut self.stream, &pairs, host, &mut fx)
        };
        for edit in &fx.request {
            headers.apply(edit);
        }
        into.route_changed |= fx.clear_route_cache;
        into.counters.append(&mut fx.counters);
        response.extend(fx.response.into_iter().map(HeaderEdit::into_owned));
        into.calls = !fx.grpc_calls.is_empty();
        into.reply = fx.reply;
        flow
    }

    fn response(
        &mut self,
        host: &mut dyn StageHost,
        edits: &mut Vec<HeaderEdit<'static>>,
        counters: &mut Vec<(u32, u32)>,
    ) {
        if S::RESPONSE_HEADERS {
            let mut fx = Effects::default();
            self.stage
                .on_response_headers(&mut self.stream, host, &mut fx);
            edits.extend(fx.response.into_iter().map(HeaderEdit::into_owned));
            counters.append(&mut fx.counters);
        }
    }
}

/// A bound stage of any filter: an enum, so a stream's stages are one allocation.
enum AnyBound {
    CorrelationId(Of<correlation_id::stage::CorrelationId>),
    TracePropagation(Of<trace_propagation::stage::TracePropagation>),
    JwtToHeader(Of<jwt_to_header::stage::JwtToHeader>),
    TenantRouting(Of<tenant_routing::stage::TenantRouting>),
    RateLimit(Of<rate_limit::stage::RateLimit>),
}

fn bind(stage: &Compiled) -> AnyBound {
    match stage {
        Compiled::CorrelationId(s) => AnyBound::CorrelationId(of(s)),
        Compiled::TracePropagation(s) => AnyBound::TracePropagation(of(s)),
        Compiled::JwtToHeader(s) => AnyBound::JwtToHeader(of(s)),
        Compiled::TenantRouting(s) => AnyBound::TenantRouting(of(s)),
        Compiled::RateLimit(s) => AnyBound::RateLimit(of(s)),
    }
}

impl AnyBound {
    fn get(&mut self) -> &mut dyn Bound {
        match self {
            AnyBound::CorrelationId(b) => b,
            AnyBound::TracePropagation(b) => b,
            AnyBound::JwtToHeader(b) => b,
            AnyBound::TenantRouting(b) => b,
            AnyBound::RateLimit(b) => b,
        }
    }
}

/// What the request phase tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// On to the next filter.
    Continue,
    /// Answered locally: stop here.
    Stop,
}

/// The answer when a stage would wait (it cannot in this slice; see the module docs).
fn cannot_wait() -> LocalReply {
    LocalReply {
        status: 503,
        headers: vec![("content-type".into(), "application/json".into())],
        body: gatewasm_common::reply::json_error_body(
            "unavailable",
            "a gatewasm stage waited, which the dynamic module does not support yet",
        ),
    }
}

/// One stream through a [`Pipeline`].
pub struct Run {
    pipeline: Rc<Pipeline>,
    stages: Vec<AnyBound>,
    /// How many stages saw the request (their response side runs).
    seen: usize,
    /// Response edits decided on the request side (applied on the response pass).
    response: Vec<HeaderEdit<'static>>,
    /// This run answered locally; the response side went into the reply's headers.
    replied: bool,
}

impl Run {
    /// The request headers: every stage in order, then one write-back.
    pub fn request_headers(&mut self, envoy: &mut dyn StreamHost) -> Verdict {
        self.request_headers_in(envoy, &shared_data::PROCESS)
    }

    fn request_headers_in(&mut self, envoy: &mut dyn StreamHost, shared: &SharedData) -> Verdict {
        let mut headers = if self.pipeline.reads_request_headers {
            HeaderList::from_serialized(envoy.request_headers())
        } else {
            HeaderList::default()
        };
        let mut gathered = Gathered {
            counters: Vec::with_capacity(8),
            ..Gathered::default()
        };
        {
            let mut host = PassHost::new(envoy, shared);
            for (i, bound) in self.stages.iter_mut().enumerate() {
                self.seen = i + 1;
                let flow =
                    bound
                        .get()
                        .request(&mut headers, &mut host, &mut self.response, &mut gathered);
                if gathered.reply.is_some() {
                    break;
                }
                if flow == Flow::Wait || gathered.calls {
                    log::error!(
                        "gatewasm: a stage waited (jwt-to-header keys or a rate-limit service), \
                         which the dynamic module does not support; answering 503"
                    );
                    gathered.reply = Some(cannot_wait());
                    break;
                }
            }
        }
        let Gathered {
            route_changed,
            counters,
            reply,
            ..
        } = gathered;
        // What the stages wrote, one call per changed name (also before a reply, as separate
        // filters would have written it), the route cache once, the counters.
        for edit in headers.write_back() {
            apply(envoy, Side::Request, &edit);
        }
        if route_changed {
            envoy.clear_route_cache();
        }
        for (id, by) in counters {
            envoy.increment_counter(id, by);
        }
        let Some(mut reply) = reply else {
            return Verdict::Continue;
        };
        // The response side of the stages that saw the request goes into the reply's headers
        // (every reply carries x-request-id). Envoy 1.40 does not call a dynamic module's
        // response-headers hook for the local reply that module sent (checked: the hook runs
        // for upstream and router replies, not for its own; a Wasm filter's does run), so the
        // edits cannot wait for it; should a later Envoy call it, it does nothing more.
        let (edits, counters) = self.response_side(envoy, shared);
        for edit in &edits {
            edit_reply(&mut reply, edit);
        }
        for (id, by) in counters {
            envoy.increment_counter(id, by);
        }
        self.replied = true;
        envoy.send_reply(&reply);
        Verdict::Stop
    }

    /// The response side of every stage that saw the request, last first: the response edits
    /// (those decided on the request side first) and the counters.
    fn response_side(
        &mut self,
        envoy: &mut dyn StreamHost,
        shared: &SharedData,
    ) -> (Vec<HeaderEdit<'static>>, Vec<(u32, u32)>) {
        let mut edits = std::mem::take(&mut self.response);
        let mut counters = Vec::new();
        let mut host = PassHost::new(envoy, shared);
        let seen = self.seen.min(self.stages.len());
        for bound in self.stages.iter_mut().take(seen).rev() {
            bound.get().response(&mut host, &mut edits, &mut counters);
        }
        (edits, counters)
    }

    /// The response headers (also of a local reply): the response side of every stage that saw
    /// the request, last first.
    pub fn response_headers(&mut self, envoy: &mut dyn StreamHost) {
        self.response_headers_in(envoy, &shared_data::PROCESS);
    }

    fn response_headers_in(&mut self, envoy: &mut dyn StreamHost, shared: &SharedData) {
        if self.replied {
            return;
        }
        let (edits, counters) = self.response_side(envoy, shared);
        for edit in &edits {
            apply(envoy, Side::Response, edit);
        }
        for (id, by) in counters {
            envoy.increment_counter(id, by);
        }
    }
}

/// The pairs whose name is UTF-8, serialised as [`gatewasm_common::headers::serialize_header_map`] serialises them, into
/// one buffer sized up front: one allocation, not a `Vec` of the pairs and a buffer regrown
/// header by header (≈3.5k instructions a request under callgrind).
pub fn serialize_utf8_named<'a>(
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Vec<u8> {
    let named = |name: &[u8]| std::str::from_utf8(name).is_ok();
    let mut count = 0usize;
    let mut size = 4;
    let mut all_named = true;
    for (name, value) in pairs.clone() {
        if named(name) {
            count += 1;
            size += 8 + name.len() + value.len() + 2;
        } else {
            all_named = false;
        }
    }
    // Names are checked again only when one was not UTF-8 (Envoy's never are in practice).
    let kept = |name: &[u8]| all_named || named(name);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (name, value) in pairs.clone().filter(|(name, _)| kept(name)) {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs.filter(|(name, _)| kept(name)) {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// A response edit applied to a local reply's headers, as Envoy's header map would.
fn edit_reply(reply: &mut LocalReply, edit: &HeaderEdit<'_>) {
    let value = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    match edit {
        HeaderEdit::Set(name, v) => {
            reply.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            reply.headers.push((name.to_string(), value(v)));
        }
        HeaderEdit::Add(name, v) => reply.headers.push((name.to_string(), value(v))),
        HeaderEdit::Remove(name) => reply.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
    }
}

fn apply(envoy: &mut dyn StreamHost, side: Side, edit: &HeaderEdit<'_>) {
    match edit {
        HeaderEdit::Set(name, value) => envoy.set_header(side, name, Some(value)),
        HeaderEdit::Add(name, value) => envoy.add_header(side, name, value),
        HeaderEdit::Remove(name) => envoy.set_header(side, name, None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::spec::Spec;
    use gatewasm_common::headers::serialize_header_map;

    /// Envoy as a map and a call log.
    #[derive(Default)]
    struct FakeEnvoy {
        request: Vec<(String, Vec<u8>)>,
        source: Option<Vec<u8>>,
        calls: Vec<String>,
        counters: Vec<(u32, u32)>,
        replies: Vec<LocalReply>,
    }

    impl StreamHost for FakeEnvoy {
        fn request_headers(&mut self) -> Vec<u8> {
            self.calls.push("read".into());
            serialize_header_map(self.request.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        }
        fn source_address(&mut self) -> Option<Vec<u8>> {
            self.source.clone()
        }
        fn set_header(&mut self, side: Side, name: &str, value: Option<&[u8]>) {
            let value = value.map(|v| String::from_utf8_lossy(v).into_owned());
            self.calls.push(format!("set {side:?} {name} {value:?}"));
        }
        fn add_header(&mut self, side: Side, name: &str, value: &[u8]) {
            let value = String::from_utf8_lossy(value);
            self.calls.push(format!("add {side:?} {name} {value}"));
        }
        fn clear_route_cache(&mut self) {
            self.calls.push("clear_route_cache".into());
        }
        fn increment_counter(&mut self, id: u32, by: u32) {
            self.counters.push((id, by));
        }
        fn send_reply(&mut self, reply: &LocalReply) {
            self.calls.push(format!("reply {}", reply.status));
            self.replies.push(reply.clone());
        }
    }

    fn pipeline(name: &str, config: &str) -> Rc<Pipeline> {
        let spec = Spec::parse(name, config.as_bytes()).unwrap();
        // Counter ids by definition order, as Envoy would hand them out.
        let mut next = 0;
        Rc::new(
            Pipeline::build(&spec.plans, spec.chain, &mut |_| {
                next += 1;
                Counter(Some(next))
            })
            .unwrap(),
        )
    }

    fn envoy(headers: &[(&str, &str)]) -> FakeEnvoy {
        FakeEnvoy {
            request: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            source: Some(b"10.0.0.1:5555".to_vec()),
            ..FakeEnvoy::default()
        }
    }

    const TENANTS: &str = r#"{"filter": "tenant-routing", "config": {
        "sources": [{"header": "x-tenant"}],
        "tenants": {"acme": {"cluster": "acme", "headers": {"x-tier": "gold"}}},
        "unknown_tenant_status": 404, "output_header": "x-tenant-id", "cluster_header": "x-cluster"}}"#;

    #[test]
    fn a_chain_reads_once_and_writes_back_each_changed_header_once() {
        let chain = pipeline(
            "chain",
            &format!(
                r#"{{"stages": [{{"filter": "correlation-id", "config": {{"echo_downstream": true}}}}, {TENANTS}]}}"#
            ),
        );
        let mut envoy = envoy(&[
            (":path", "/a"),
            ("x-tenant", "acme"),
            ("x-request-id", "id-1"),
        ]);
        let mut run = chain.start();
        assert_eq!(run.request_headers(&mut envoy), Verdict::Continue);
        assert_eq!(envoy.calls.iter().filter(|c| *c == "read").count(), 1);
        let writes: Vec<&String> = envoy
            .calls
            .iter()
            .filter(|c| c.starts_with("set"))
            .collect();
        assert!(
            writes.contains(&&"set Request x-cluster Some(\"acme\")".to_string()),
            "{writes:?}"
        );
        assert!(
            writes.contains(&&"set Request x-tenant-id Some(\"acme\")".to_string()),
            "{writes:?}"
        );
        let mut names: Vec<&str> = writes
            .iter()
            .map(|w| w.split(' ').nth(2).unwrap())
            .collect();
        let all = names.len();
        names.dedup();
        assert_eq!(names.len(), all, "a header written twice: {writes:?}");
        assert_eq!(
            envoy
                .calls
                .iter()
                .filter(|c| *c == "clear_route_cache")
                .count(),
            1,
            "{:?}",
            envoy.calls
        );
        // correlation-id kept the valid ID (no write) and counted it; tenant-routing counted.
        assert!(
            !envoy.calls.iter().any(|c| c.contains("x-request-id")),
            "{:?}",
            envoy.calls
        );
        assert!(envoy.counters.len() >= 2, "{:?}", envoy.counters);
        // The response side echoes the ID.
        envoy.calls.clear();
        run.response_headers(&mut envoy);
        assert_eq!(
            envoy.calls,
            vec!["set Response x-request-id Some(\"id-1\")"]
        );
    }

    #[test]
    fn a_local_reply_stops_later_stages_after_writing_what_earlier_ones_did() {
        let chain = pipeline(
            "chain",
            &format!(
                r#"{{"stages": [{{"filter": "correlation-id", "config": {{"echo_downstream": true}}}}, {TENANTS},
                    {{"filter": "rate-limit", "config": {{"rules": [{{"name": "r", "key": ["client_ip"], "limit": 1, "window_s": 60}}]}}}}]}}"#
            ),
        );
        let mut envoy = envoy(&[(":path", "/a"), ("x-tenant", "initech")]);
        let mut run = chain.start();
        assert_eq!(run.request_headers(&mut envoy), Verdict::Stop);
        // The generated ID is written before the 404; rate-limit never ran (no table use).
        let id_write = envoy
            .calls
            .iter()
            .position(|c| c.starts_with("set Request x-request-id"))
            .expect("the generated ID is written");
        let reply = envoy.calls.iter().position(|c| c == "reply 404").unwrap();
        assert!(id_write < reply, "{:?}", envoy.calls);
        // The response side of the stages that saw the request went into the reply: the ID is
        // echoed there, and the response hook adds nothing.
        let echoed = envoy.replies[0]
            .headers
            .iter()
            .find(|(n, _)| n == "x-request-id")
            .map(|(_, v)| v.clone());
        let written = envoy.calls[id_write].split('"').nth(1).map(str::to_owned);
        assert_eq!(echoed, written, "{:?}", envoy.replies);
        envoy.calls.clear();
        run.response_headers(&mut envoy);
        assert!(envoy.calls.is_empty(), "{:?}", envoy.calls);
    }

    #[test]
    fn rate_limits_use_the_peer_address_and_the_shared_data() {
        // A key no other test uses: the buckets live in the process's shared data.
        let limiter = pipeline(
            "rate-limit",
            r#"{"rules": [{"name": "pipeline-test", "key": ["client_ip"], "limit": 2, "window_s": 3600}]}"#,
        );
        let statuses: Vec<Verdict> = (0..4)
            .map(|_| {
                let mut envoy = envoy(&[(":path", "/")]);
                envoy.source = Some(b"192.0.2.77:4000".to_vec());
                limiter.start().request_headers(&mut envoy)
            })
            .collect();
        assert_eq!(
            statuses,
            vec![
                Verdict::Continue,
                Verdict::Continue,
                Verdict::Stop,
                Verdict::Stop
            ]
        );
        // Another client has its own bucket.
        let mut other = envoy(&[(":path", "/")]);
        other.source = Some(b"192.0.2.78:4000".to_vec());
        assert_eq!(
            limiter.start().request_headers(&mut other),
            Verdict::Continue
        );
    }

    #[test]
    fn serialises_as_the_proxy_wasm_map_without_non_utf8_names() {
        let all: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a"), (b"x", b""), (b"x", b"2")];
        let expected = serialize_header_map([(":path", &b"/a"[..]), ("x", b""), ("x", b"2")]);
        assert_eq!(serialize_utf8_named(all.iter().copied()), expected);
        assert_eq!(
            serialize_utf8_named(all.iter().copied()).capacity(),
            expected.len()
        );
        let mixed: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"\xff", b"2"), (b"b", b"\xfe")];
        assert_eq!(
            serialize_utf8_named(mixed.iter().copied()),
            serialize_header_map([("a", &b"1"[..]), ("b", b"\xfe")])
        );
        assert_eq!(
            serialize_utf8_named(std::iter::empty()),
            serialize_header_map([])
        );
    }
}
