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
/// and no foreign functions (jwt-to-header then verifies RS*/ES* signatures in Rust, as it
/// does on a host without Envoy's `verify_signature`).
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

    fn foreign_function(&mut self, _name: &str, _args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Err(Status::NotFound)
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

    fn foreign_function(&mut self, _name: &str, _args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Err(Status::NotFound)
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
            // As the Wasm module's `on_configure`: every rule's table entries exist before the
            // first request (idempotent: later builds and other workers find them), and one
            // bucket-key seed for the whole process.
            let mut host = ConfigHost { shared };
            let store = rate_limit::stage::HostStore::new(&mut host);
            rate_limit::limiter::create_tables(&settings, &mut &store);
            let seed = rate_limit::limiter::shared_key_seed(&mut &store, || {
                rng::seed_or_fallback(
                    rate_limit::stage::FILTER,
                    "the bucket-key hash",
                    rng::os_seed(),
                    || unix_nanos(std::time::SystemTime::now()),
                    0,
                )
            })
            .unwrap_or_else(|| {
                log::warn!("rate-limit: cannot share a bucket-key seed; using the fixed one");
                rate_limit::key::KeySeed::FIXED
            });
            Compiled::RateLimit(Rc::new(rate_limit::stage::RateLimit::new(
                settings, seed, define,
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

/// What every bound stage does: its request side (its request edits applied to the header
/// list, the rest of its effects returned owned) and its response side.
trait Bound {
    fn request(
        &mut self,
        headers: &mut HeaderList,
        host: &mut dyn StageHost,
    ) -> (Effects<'static>, Flow);
    fn response(&mut self, host: &mut dyn StageHost) -> Effects<'static>;
}

impl<S: Stage> Bound for Of<S> {
    fn request(
        &mut self,
        headers: &mut HeaderList,
        host: &mut dyn StageHost,
    ) -> (Effects<'static>, Flow) {
        let mut fx = Effects::default();
        let flow = {
            let pairs = headers.pairs();
            self.stage
                .on_request_headers(&mut self.stream, &pairs, host, &mut fx)
        };
        for edit in fx.request.drain(..) {
            headers.apply(&edit);
        }
        (fx.into_owned(), flow)
    }

    fn response(&mut self, host: &mut dyn StageHost) -> Effects<'static> {
        let mut fx = Effects::default();
        if S::RESPONSE_HEADERS {
            self.stage
                .on_response_headers(&mut self.stream, host, &mut fx);
        }
        fx.into_owned()
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
        let mut route_changed = false;
        let mut counters: Vec<(u32, u32)> = Vec::new();
        let mut reply = None;
        {
            let mut host = PassHost::new(envoy, shared);
            for (i, bound) in self.stages.iter_mut().enumerate() {
                self.seen = i + 1;
                let (mut fx, flow) = bound.get().request(&mut headers, &mut host);
                route_changed |= fx.clear_route_cache;
                counters.append(&mut fx.counters);
                self.response.append(&mut fx.response);
                if fx.reply.is_some() {
                    reply = fx.reply;
                    break;
                }
                if flow == Flow::Wait || !fx.grpc_calls.is_empty() {
                    log::error!(
                        "gatewasm: a stage waited (jwt-to-header keys or a rate-limit service), \
                         which the dynamic module does not support; answering 503"
                    );
                    reply = Some(cannot_wait());
                    break;
                }
            }
        }
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
        match reply {
            Some(reply) => {
                envoy.send_reply(&reply);
                Verdict::Stop
            }
            None => Verdict::Continue,
        }
    }

    /// The response headers (also of a local reply): the response side of every stage that saw
    /// the request, last first.
    pub fn response_headers(&mut self, envoy: &mut dyn StreamHost) {
        self.response_headers_in(envoy, &shared_data::PROCESS);
    }

    fn response_headers_in(&mut self, envoy: &mut dyn StreamHost, shared: &SharedData) {
        let mut edits = std::mem::take(&mut self.response);
        let mut counters = Vec::new();
        {
            let mut host = PassHost::new(envoy, shared);
            let seen = self.seen.min(self.stages.len());
            for bound in self.stages.iter_mut().take(seen).rev() {
                let mut fx = bound.get().response(&mut host);
                edits.append(&mut fx.response);
                counters.append(&mut fx.counters);
            }
        }
        for edit in &edits {
            apply(envoy, Side::Response, edit);
        }
        for (id, by) in counters {
            envoy.increment_counter(id, by);
        }
    }
}

fn apply(envoy: &mut dyn StreamHost, side: Side, edit: &HeaderEdit<'_>) {
    match edit {
        HeaderEdit::Set(name, value) => envoy.set_header(side, name, Some(value)),
        HeaderEdit::Add(name, value) => envoy.add_header(side, name, value),
        HeaderEdit::Remove(name) => envoy.set_header(side, name, None),
    }
}
