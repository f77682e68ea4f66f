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
//! A stage that waits — rate-limit for its gRPC rate-limit service (`global`, `hybrid`) —
//! pauses the run ([`Verdict::Wait`]): its calls go out through [`StreamHost::grpc_call`], each
//! answer comes back through [`Run::grpc_answer`], and the run resumes at that stage, then the
//! rest run; what the earlier stages wrote is written back once, at the end, as without a wait.
//! jwt-to-header waits for its remote keys without calls: the run asks the host to wake it
//! ([`StreamHost::wait_for_keys`]: the key driver of [`crate::keys`]) and, woken
//! ([`Run::keys_ready`]), the stage loads the keys the driver put in shared data and decides
//! again, then the rest run. Should a stage wait where the host cannot wake it, the request is
//! answered 503 (fail closed) and the reason logged.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use gatewasm_chain_plan::{FilterKind, StagePlan, stage_error};
use gatewasm_common::ConfigError;
use gatewasm_common::clock::unix_nanos;
use gatewasm_common::rng;
use gatewasm_common::stage::{
    CALL_NOT_SENT, Counter, Effects, Flow, GrpcCall, HeaderEdit, HeaderList, LocalReply, SetResult,
    Stage, StageHost, recycle_view,
};
use jwt_to_header::jwks::meta_key;
use jwt_to_header::stage::{JwtToHeader, load_if_newer, read_meta};
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
    /// Read the request headers from Envoy into `into`. The list may borrow Envoy's memory
    /// ([`HeaderList::refill_borrowing`]): the caller must be done with it, or
    /// [`HeaderList::own`] it, before it writes a request header or the hook returns.
    fn request_headers(&mut self, into: &mut HeaderList);
    /// Read only the request headers called `names` (every value of each) into `into`.
    fn request_headers_named(&mut self, names: &[String], into: &mut HeaderList);
    /// Append the response headers' names to `into`, each followed by a 0 byte (a byte no
    /// header name has).
    fn response_header_names(&mut self, into: &mut Vec<u8>);
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
    /// Send `call` (gRPC over an HTTP/2 callout to its cluster): the callout's id, whose
    /// answer comes back through [`Run::grpc_answer`]; `None` when Envoy refused to send it
    /// (the host logs why).
    fn grpc_call(&mut self, call: &GrpcCall) -> Option<u64>;
    /// The request waits for jwt-to-header's remote keys: have it woken ([`Run::keys_ready`])
    /// when they arrive, their fetch fails, or the deadline passes. `false`: it cannot wait
    /// (no key driver: cannot happen with an accepted configuration).
    fn wait_for_keys(&mut self, wait: &KeyWait) -> bool;
}

/// What a request waits for when jwt-to-header waits for keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWait {
    /// The provider, by its shared-data meta key ([`jwt_to_header::jwks::meta_key`]).
    pub provider: String,
    /// Unix ms after which it decides without the keys.
    pub deadline_ms: u64,
    /// It saw a key id the keys do not have (a refetch is wanted).
    pub unknown_kid: bool,
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

impl<'h> PassHost<'h> {
    /// The stream's Envoy, for what the pass itself applies between stage calls.
    fn stream(&mut self) -> &mut dyn StreamHost {
        &mut *self.stream
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
    JwtToHeader(Rc<JwtToHeader>),
    TenantRouting(Rc<tenant_routing::stage::TenantRouting>),
    RateLimit(Rc<rate_limit::stage::RateLimit>),
}

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
            for warning in &settings.warnings {
                log::warn!("{}: {warning}", jwt_to_header::stage::FILTER);
            }
            Compiled::JwtToHeader(Rc::new(JwtToHeader::new(settings, define)))
        }
        FilterKind::TenantRouting => {
            let settings = tenant_routing::config::parse_settings(bytes)?;
            Compiled::TenantRouting(Rc::new(tenant_routing::stage::TenantRouting::new(
                settings, define,
            )))
        }
        FilterKind::RateLimit => {
            let settings = rate_limit::config::parse_settings(bytes)?;
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
    read: RequestRead,
    /// The buffers a hook of a stream works in, kept between streams (the pipeline is this
    /// worker's): a stream borrows them for the length of one hook ([`Run::lend_spares`]),
    /// so a request allocates none of them. Boxed so that lending and giving back move a
    /// pointer, not the buffers' bookkeeping (four moves of it cost ≈ 0.6k instructions per
    /// request). `None` while lent; a hook that finds them lent (Envoy re-entering the module
    /// inside a hook) makes its own.
    spares: Cell<Option<Box<Spares>>>,
    /// Emptied stage lists of streams that ended, for the next streams (a stream's list is its
    /// one allocation besides Envoy's; an empty list holds no stage). At most
    /// [`KEPT_STAGE_LISTS`].
    spare_stage_lists: RefCell<Vec<Vec<AnyBound>>>,
}

/// How many emptied stage lists a worker keeps (streams in flight at once on one worker
/// rarely exceed it; beyond it a list is freed).
const KEPT_STAGE_LISTS: usize = 64;

/// How a stream reads the request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RequestRead {
    /// Not at all: no stage looks at them.
    Nothing,
    /// The whole map (`get_headers`).
    All,
    /// Only these names, one `get_header` each: every stage named what it reads and writes
    /// ([`Stage::request_header_names`]) and that is at most [`MAX_NAMED_READS`] names.
    Named(Vec<String>),
}

/// Up to this many names a stream reads header by header rather than as the whole map: a
/// `get_header` costs Envoy ≈ 0.5k instructions, the map ≈ 1.0k and the module's copy of it
/// ≈ 0.1k per header (a typical request has ten or more).
const MAX_NAMED_READS: usize = 2;

/// See [`Pipeline::spares`]: each emptied, its room kept.
#[derive(Default)]
struct Spares {
    /// The list the request headers are read into.
    headers: HeaderList,
    /// The next stage call's effects ([`Effects::recycle`]).
    fx: Effects<'static>,
    /// The next stage's header view ([`recycle_view`]).
    view: Vec<(&'static str, &'static [u8])>,
    /// Room for a stream's counter increments.
    counters: Vec<(u32, u32)>,
    /// Room for the response headers' names ([`ResponseNames`]).
    response_names: Vec<u8>,
}

/// A header list bigger than this (a request with unusually large headers) is not kept for
/// the worker's next request: what a worker holds on to stays small.
const KEPT_HEADER_ROOM: usize = 16 * 1024;

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
        let read = request_read(&stages);
        Ok(Pipeline {
            stages,
            read,
            spares: Cell::default(),
            spare_stage_lists: RefCell::default(),
        })
    }

    /// A stream through these stages.
    pub fn start(self: &Rc<Self>) -> Run {
        let mut stages = self
            .spare_stage_lists
            .try_borrow_mut()
            .ok()
            .and_then(|mut lists| lists.pop())
            .unwrap_or_default();
        stages.extend(self.stages.iter().map(bind));
        Run {
            stages,
            pipeline: Rc::clone(self),
            headers: HeaderList::default(),
            next: 0,
            seen: 0,
            so_far: SoFar::default(),
            pending: Vec::new(),
            waiting_for_keys: false,
            replied: false,
        }
    }
}

/// Where the response side's edits go as they are decided: Envoy's response headers, or the
/// headers of a local reply.
type Edit<'e> = &'e mut dyn FnMut(&mut dyn StreamHost, &HeaderEdit<'_>);

/// How streams through `stages` read the request headers ([`RequestRead`]).
fn request_read(stages: &[Compiled]) -> RequestRead {
    fn reads<S: Stage>(s: &S) -> (bool, Option<Vec<String>>) {
        (s.reads_request_headers(), s.request_header_names())
    }
    let mut any_reads = false;
    let mut names: Option<Vec<String>> = Some(Vec::new());
    for stage in stages {
        let (reads, named) = match stage {
            Compiled::CorrelationId(s) => reads(&**s),
            Compiled::TracePropagation(s) => reads(&**s),
            Compiled::JwtToHeader(s) => reads(&**s),
            Compiled::TenantRouting(s) => reads(&**s),
            Compiled::RateLimit(s) => reads(&**s),
        };
        any_reads |= reads;
        // Every stage must name its headers, the ones that read none too: the list read is
        // then complete for every name any stage writes.
        names = names.zip(named).map(|(mut all, more)| {
            for name in more {
                if !all.contains(&name) {
                    all.push(name);
                }
            }
            all
        });
    }
    match names {
        _ if !any_reads => RequestRead::Nothing,
        Some(names) if names.len() <= MAX_NAMED_READS => RequestRead::Named(names),
        _ => RequestRead::All,
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

/// What the request sides of a run's stages decided so far, to be applied once they are done
/// (or one replies): each stage's [`Effects`] is emptied into it, no owned copy of a stage's
/// effects is kept. And the vectors every stage call reuses (lent by the pipeline for a hook,
/// [`Run::lend_spares`]).
#[derive(Default)]
struct SoFar {
    route_changed: bool,
    /// The stage being called is the run's last request stage (see [`settle`]).
    last_stage: bool,
    /// Counter increments not yet made.
    counters: Vec<(u32, u32)>,
    /// Response edits decided on the request side (applied on the response pass).
    response: Vec<HeaderEdit<'static>>,
    /// The worker's buffers while a hook of this stream has them ([`Spares`]).
    spares: Option<Box<Spares>>,
}

impl SoFar {
    /// The lent buffers (a set of its own, should none be lent: cannot happen inside a hook).
    fn spares(&mut self) -> &mut Spares {
        self.spares.get_or_insert_with(Box::default)
    }

    /// `decide` with the stream's reused effects, settled ([`settle`]) into `headers` and
    /// `self`.
    fn decide<'s>(
        &mut self,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        decide: impl FnOnce(&mut dyn StageHost, &mut Effects<'s>) -> Flow,
    ) -> (Flow, Outcome) {
        let mut fx: Effects<'s> = std::mem::take(&mut self.spares().fx);
        let flow = decide(host, &mut fx);
        let outcome = settle(&mut fx, flow, headers, host, self);
        self.spares().fx = fx.recycle();
        (flow, outcome)
    }

    /// `decide` with the stream's reused effects and the stage's view of `headers` (in the
    /// stream's reused vector), settled into `headers` and `self`.
    fn decide_on_headers<'s>(
        &mut self,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        decide: impl FnOnce(&[(&str, &[u8])], &mut dyn StageHost, &mut Effects<'s>) -> Flow,
    ) -> (Flow, Outcome) {
        let spares = self.spares();
        let mut view: Vec<(&str, &[u8])> = std::mem::take(&mut spares.view);
        let mut fx: Effects<'s> = std::mem::take(&mut spares.fx);
        headers.view_into(&mut view);
        let flow = decide(&view, host, &mut fx);
        self.spares().view = recycle_view(view);
        let outcome = settle(&mut fx, flow, headers, host, self);
        self.spares().fx = fx.recycle();
        (flow, outcome)
    }
}

/// What one stage's request-side call decided besides its edits and counters.
#[derive(Default)]
struct Outcome {
    reply: Option<LocalReply>,
    /// gRPC calls to send (the stage waits for their answers).
    calls: Vec<GrpcCall>,
}

/// Empty `fx` into the header list and `so_far`; what is left is the stage's outcome. The
/// request edits of the run's last request stage (`so_far.last_stage`) that goes on or
/// replies go straight to Envoy when they can ([`HeaderList::write_through`]): no later stage
/// looks at the list. A stage that waits decides again later, over the list.
fn settle(
    fx: &mut Effects<'_>,
    flow: Flow,
    headers: &mut HeaderList,
    host: &mut PassHost<'_>,
    so_far: &mut SoFar,
) -> Outcome {
    let through = so_far.last_stage
        && flow != Flow::Wait
        && fx.grpc_calls.is_empty()
        && headers.write_through(&fx.request, |edit| {
            apply(host.stream(), Side::Request, &edit);
        });
    if !through {
        for edit in &fx.request {
            headers.apply(edit);
        }
    }
    so_far.route_changed |= fx.clear_route_cache;
    so_far.counters.append(&mut fx.counters);
    so_far
        .response
        .extend(fx.response.drain(..).map(HeaderEdit::into_owned));
    Outcome {
        reply: fx.reply.take(),
        calls: std::mem::take(&mut fx.grpc_calls),
    }
}

/// What every bound stage does: its request side (first call, and the answer to each of its
/// gRPC calls), settled into the run ([`settle`]), and its response side (its edits owned into
/// `edits`, its counters into `counters`).
trait Bound {
    fn request(
        &mut self,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        so_far: &mut SoFar,
    ) -> (Flow, Outcome);
    fn grpc_answer(
        &mut self,
        call: usize,
        status: u32,
        body: Option<&[u8]>,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        so_far: &mut SoFar,
    ) -> (Flow, Outcome);
    fn response(&mut self, host: &mut PassHost<'_>, spare: &mut Effects<'static>, edit: Edit<'_>);
    /// jwt-to-header after it waited without gRPC calls: what it waits for.
    fn key_wait(&mut self) -> Option<KeyWait> {
        None
    }
    /// jwt-to-header woken after waiting for keys: load what was fetched, decide again.
    fn woken(
        &mut self,
        _headers: &mut HeaderList,
        _host: &mut PassHost<'_>,
        _so_far: &mut SoFar,
    ) -> (Flow, Outcome) {
        (Flow::Continue, Outcome::default())
    }
    /// The stream goes away (or was woken): the stage forgets it was waiting.
    fn forget(&mut self) {}
}

impl<S: Stage> Bound for Of<S> {
    fn request(
        &mut self,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        so_far: &mut SoFar,
    ) -> (Flow, Outcome) {
        let (stage, stream) = (&self.stage, &mut self.stream);
        so_far.decide_on_headers(headers, host, |view, host, fx| {
            stage.on_request_headers(stream, view, host, fx)
        })
    }

    fn grpc_answer(
        &mut self,
        call: usize,
        status: u32,
        body: Option<&[u8]>,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        so_far: &mut SoFar,
    ) -> (Flow, Outcome) {
        let (stage, stream) = (&self.stage, &mut self.stream);
        so_far.decide(headers, host, |host, fx| {
            stage.on_grpc_answer(stream, call, status, body, host, fx)
        })
    }

    fn response(&mut self, host: &mut PassHost<'_>, spare: &mut Effects<'static>, edit: Edit<'_>) {
        if S::RESPONSE_HEADERS {
            let mut fx: Effects<'_> = std::mem::take(spare);
            self.stage
                .on_response_headers(&mut self.stream, host, &mut fx);
            // Applied as decided: no owned copy of what the edits borrow from the stage.
            for e in &fx.response {
                edit(host.stream(), e);
            }
            for &(id, by) in &fx.counters {
                host.stream().increment_counter(id, by);
            }
            *spare = fx.recycle();
        }
    }
}

/// jwt-to-header bound to a stream: it waits for keys under its stream's id (unique on its
/// worker, which is where the stage's waiters live).
struct Jwt(Of<JwtToHeader>);

thread_local! {
    /// The last stream id given out on this worker (ids start at 1: 0 is the stage's "not
    /// waiting" id).
    static STREAM_IDS: Cell<u32> = const { Cell::new(0) };
}

fn next_stream_id() -> u32 {
    STREAM_IDS.with(|ids| {
        let id = ids.get().wrapping_add(1).max(1);
        ids.set(id);
        id
    })
}

impl Bound for Jwt {
    fn request(
        &mut self,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        so_far: &mut SoFar,
    ) -> (Flow, Outcome) {
        self.0.request(headers, host, so_far)
    }

    fn grpc_answer(
        &mut self,
        call: usize,
        status: u32,
        body: Option<&[u8]>,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        so_far: &mut SoFar,
    ) -> (Flow, Outcome) {
        self.0
            .grpc_answer(call, status, body, headers, host, so_far)
    }

    fn response(&mut self, host: &mut PassHost<'_>, spare: &mut Effects<'static>, edit: Edit<'_>) {
        self.0.response(host, spare, edit);
    }

    fn key_wait(&mut self) -> Option<KeyWait> {
        let id = self.0.stream.context_id;
        let mut worker = self.0.stage.shared.try_borrow_mut().ok()?;
        let waiter = worker.waiters.iter().rev().find(|w| w.context_id == id)?;
        let (index, deadline_ms) = (waiter.provider, waiter.deadline_ms);
        let provider = worker.settings.providers.get(index)?;
        let provider = meta_key(&worker.settings.config_hash, &provider.name);
        // The worker's flag is how the Wasm key driver learns of it; here the driver is told.
        let unknown_kid = worker
            .refetch_wanted
            .get_mut(index)
            .is_some_and(std::mem::take);
        Some(KeyWait {
            provider,
            deadline_ms,
            unknown_kid,
        })
    }

    fn woken(
        &mut self,
        headers: &mut HeaderList,
        host: &mut PassHost<'_>,
        so_far: &mut SoFar,
    ) -> (Flow, Outcome) {
        self.forget();
        let stage = &self.0.stage;
        let settings = match stage.shared.try_borrow() {
            Ok(worker) => Rc::clone(&worker.settings),
            Err(_) => return (Flow::Continue, Outcome::default()),
        };
        // What the driver fetched is in the process's shared data: load it into this worker.
        for (index, provider) in settings.providers.iter().enumerate() {
            if provider.remote.is_some()
                && let (Some(meta), _) = read_meta(host, &settings, &provider.name)
            {
                load_if_newer(&stage.shared, host, index, &meta);
            }
        }
        so_far.decide_on_headers(headers, host, |view, host, fx| {
            stage.on_woken(view, host, fx)
        })
    }

    fn forget(&mut self) {
        let id = self.0.stream.context_id;
        if let Ok(mut worker) = self.0.stage.shared.try_borrow_mut() {
            worker.waiters.retain(|w| w.context_id != id);
        }
    }
}

/// A bound stage of any filter: an enum, so a stream's stages are one allocation.
enum AnyBound {
    CorrelationId(Of<correlation_id::stage::CorrelationId>),
    TracePropagation(Of<trace_propagation::stage::TracePropagation>),
    JwtToHeader(Jwt),
    TenantRouting(Of<tenant_routing::stage::TenantRouting>),
    RateLimit(Of<rate_limit::stage::RateLimit>),
}

fn bind(stage: &Compiled) -> AnyBound {
    match stage {
        Compiled::CorrelationId(s) => AnyBound::CorrelationId(of(s)),
        Compiled::TracePropagation(s) => AnyBound::TracePropagation(of(s)),
        Compiled::JwtToHeader(s) => AnyBound::JwtToHeader(Jwt(Of {
            stage: Rc::clone(s),
            stream: jwt_to_header::stage::Stream {
                context_id: next_stream_id(),
            },
        })),
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
    /// A stage waits (its gRPC calls are out): stop until [`Run::grpc_answer`] says go on.
    Wait,
}

/// The answer when a stage would wait for something this module cannot wait for (see the
/// module docs).
fn cannot_wait() -> LocalReply {
    LocalReply {
        status: 503,
        headers: vec![("content-type".into(), "application/json".into())],
        body: gatewasm_common::reply::json_error_body(
            "unavailable",
            "a gatewasm stage waited where the dynamic module cannot wake it",
        ),
    }
}

/// How a stage's outcome leaves the run.
enum Next {
    Stage,
    Reply(LocalReply),
    Wait,
}

/// One stream through a [`Pipeline`].
pub struct Run {
    pipeline: Rc<Pipeline>,
    stages: Vec<AnyBound>,
    /// The request headers as read once, with the stages' edits applied (written back when the
    /// request side is over).
    headers: HeaderList,
    /// The next request stage to run (the waiting one while paused).
    next: usize,
    /// How many stages saw the request (their response side runs).
    seen: usize,
    so_far: SoFar,
    /// gRPC calls in flight: (callout id, stage, the call's index in the stage's effects).
    pending: Vec<(u64, usize, usize)>,
    /// The stage at `next` (jwt-to-header) waits for keys.
    waiting_for_keys: bool,
    /// This run answered locally; the response side went into the reply's headers.
    replied: bool,
}

impl Run {
    /// The request headers: every stage in order until one waits or replies, then one
    /// write-back.
    pub fn request_headers(&mut self, envoy: &mut dyn StreamHost) -> Verdict {
        self.lend_spares();
        let verdict = self.request_headers_in(envoy, &shared_data::PROCESS);
        // A request that waits keeps its list past this hook: no longer on Envoy's memory
        // (see `StreamHost::request_headers`; a list written back is already reset).
        self.headers.own();
        self.return_spares();
        verdict
    }

    /// Take the worker's spare buffers for this hook ([`Pipeline::spares`]).
    fn lend_spares(&mut self) {
        let mut spares = self.pipeline.spares.take().unwrap_or_default();
        let so_far = &mut self.so_far;
        if so_far.counters.is_empty() {
            std::mem::swap(&mut so_far.counters, &mut spares.counters);
        }
        so_far.spares = Some(spares);
    }

    /// Give the spare buffers back at the end of a hook, emptied (a header list whose room
    /// grew past [`KEPT_HEADER_ROOM`] is dropped instead; counters not yet made stay with the
    /// stream).
    fn return_spares(&mut self) {
        let so_far = &mut self.so_far;
        let Some(mut spares) = so_far.spares.take() else {
            return;
        };
        if so_far.counters.is_empty() {
            std::mem::swap(&mut so_far.counters, &mut spares.counters);
        }
        if spares.headers.room() > KEPT_HEADER_ROOM {
            spares.headers = HeaderList::default();
        }
        self.pipeline.spares.set(Some(spares));
    }

    fn request_headers_in(&mut self, envoy: &mut dyn StreamHost, shared: &SharedData) -> Verdict {
        let mut headers = std::mem::take(&mut self.so_far.spares().headers);
        match &self.pipeline.read {
            RequestRead::Nothing => {}
            RequestRead::All => envoy.request_headers(&mut headers),
            RequestRead::Named(names) => envoy.request_headers_named(names, &mut headers),
        }
        self.headers = headers;
        self.advance(envoy, shared)
    }

    /// Whether the request waits for a stage (Envoy must hold its body and trailers too: a
    /// `Continue` from a later phase would resume the paused headers before the stage decided).
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty() || self.waiting_for_keys
    }

    /// Run the request stages from `self.next` until one waits or replies, or all are done.
    fn advance(&mut self, envoy: &mut dyn StreamHost, shared: &SharedData) -> Verdict {
        let stages = self.stages.len();
        while let Some(bound) = self.stages.get_mut(self.next).map(AnyBound::get) {
            self.seen = self.seen.max(self.next + 1);
            self.so_far.last_stage = self.next + 1 == stages;
            let (flow, outcome) = {
                let mut host = PassHost::new(envoy, shared);
                bound.request(&mut self.headers, &mut host, &mut self.so_far)
            };
            match self.absorb(envoy, shared, self.next, flow, outcome) {
                Next::Stage => self.next += 1,
                Next::Reply(reply) => return self.reply(envoy, shared, reply),
                Next::Wait => return self.wait(envoy, shared),
            }
        }
        self.flush(envoy);
        Verdict::Continue
    }

    /// Take in stage `stage`'s outcome: its reply, or its gRPC calls sent (one Envoy cannot
    /// send is answered at once with [`CALL_NOT_SENT`]).
    fn absorb(
        &mut self,
        envoy: &mut dyn StreamHost,
        shared: &SharedData,
        stage: usize,
        flow: Flow,
        outcome: Outcome,
    ) -> Next {
        if let Some(reply) = outcome.reply {
            return Next::Reply(reply);
        }
        let mut next = match flow {
            Flow::Wait => Next::Wait,
            Flow::Continue | Flow::Reply => Next::Stage,
        };
        let mut sent = false;
        for (index, call) in outcome.calls.iter().enumerate() {
            if let Some(id) = envoy.grpc_call(call) {
                self.pending.push((id, stage, index));
                sent = true;
                continue;
            }
            self.so_far.last_stage = stage + 1 == self.stages.len();
            let Some(bound) = self.stages.get_mut(stage).map(AnyBound::get) else {
                break;
            };
            let (flow, outcome) = {
                let mut host = PassHost::new(envoy, shared);
                bound.grpc_answer(
                    index,
                    CALL_NOT_SENT,
                    None,
                    &mut self.headers,
                    &mut host,
                    &mut self.so_far,
                )
            };
            next = self.absorb(envoy, shared, stage, flow, outcome);
            if matches!(next, Next::Reply(_)) {
                return next;
            }
        }
        if sent { Next::Wait } else { next }
    }

    /// The request pauses for the stage at `self.next`.
    fn wait(&mut self, envoy: &mut dyn StreamHost, shared: &SharedData) -> Verdict {
        if self.pending.is_empty() {
            // No calls out: jwt-to-header waits for its keys.
            let bound = self.stages.get_mut(self.next).map(AnyBound::get);
            let wait = bound.and_then(|b| b.key_wait());
            if !wait.as_ref().is_some_and(|w| envoy.wait_for_keys(w)) {
                log::error!(
                    "gatewasm: a stage waited for something the dynamic module cannot wait \
                     for here; answering 503"
                );
                if let Some(bound) = self.stages.get_mut(self.next) {
                    bound.get().forget();
                }
                return self.reply(envoy, shared, cannot_wait());
            }
            self.waiting_for_keys = true;
        }
        // Counters now: a request that never comes back (the client left) still counts.
        for (id, by) in self.so_far.counters.drain(..) {
            envoy.increment_counter(id, by);
        }
        Verdict::Wait
    }

    /// The answer to callout `id` (one of this run's gRPC calls): `status` 0 with the message,
    /// or a gRPC status. `None`: not a call of this run. `Continue` means the request goes on
    /// (the caller resumes it in Envoy).
    pub fn grpc_answer(
        &mut self,
        envoy: &mut dyn StreamHost,
        id: u64,
        status: u32,
        body: Option<&[u8]>,
    ) -> Option<Verdict> {
        self.lend_spares();
        let verdict = self.grpc_answer_in(envoy, &shared_data::PROCESS, id, status, body);
        self.return_spares();
        verdict
    }

    fn grpc_answer_in(
        &mut self,
        envoy: &mut dyn StreamHost,
        shared: &SharedData,
        id: u64,
        status: u32,
        body: Option<&[u8]>,
    ) -> Option<Verdict> {
        let at = self.pending.iter().position(|(p, ..)| *p == id)?;
        let (_, stage, call) = self.pending.swap_remove(at);
        self.so_far.last_stage = stage + 1 == self.stages.len();
        let bound = self.stages.get_mut(stage)?.get();
        let (flow, outcome) = {
            let mut host = PassHost::new(envoy, shared);
            bound.grpc_answer(
                call,
                status,
                body,
                &mut self.headers,
                &mut host,
                &mut self.so_far,
            )
        };
        Some(match self.absorb(envoy, shared, stage, flow, outcome) {
            Next::Stage => {
                self.next = stage + 1;
                self.advance(envoy, shared)
            }
            Next::Reply(reply) => self.reply(envoy, shared, reply),
            Next::Wait => self.wait(envoy, shared),
        })
    }

    /// The keys the request waited for arrived, their fetch failed, or its deadline passed:
    /// the waiting stage decides again (without waiting), then the rest run. `None`: it was
    /// not waiting for keys. `Continue` means the request goes on (the caller resumes it).
    pub fn keys_ready(&mut self, envoy: &mut dyn StreamHost) -> Option<Verdict> {
        self.lend_spares();
        let verdict = self.keys_ready_in(envoy, &shared_data::PROCESS);
        self.return_spares();
        verdict
    }

    fn keys_ready_in(
        &mut self,
        envoy: &mut dyn StreamHost,
        shared: &SharedData,
    ) -> Option<Verdict> {
        if !std::mem::take(&mut self.waiting_for_keys) {
            return None;
        }
        let stage = self.next;
        self.so_far.last_stage = stage + 1 == self.stages.len();
        let bound = self.stages.get_mut(stage)?.get();
        let (flow, outcome) = {
            let mut host = PassHost::new(envoy, shared);
            bound.woken(&mut self.headers, &mut host, &mut self.so_far)
        };
        Some(match self.absorb(envoy, shared, stage, flow, outcome) {
            Next::Stage => {
                self.next = stage + 1;
                self.advance(envoy, shared)
            }
            Next::Reply(reply) => self.reply(envoy, shared, reply),
            Next::Wait => self.wait(envoy, shared),
        })
    }

    /// Write back what the stages changed: one call per changed header name (also before a
    /// reply, as separate filters would have written it), the route cache once, the counters.
    fn flush(&mut self, envoy: &mut dyn StreamHost) {
        let mut headers = std::mem::take(&mut self.headers);
        headers.write_back_each(|edit| apply(envoy, Side::Request, &edit));
        headers.reset();
        self.so_far.spares().headers = headers;
        if std::mem::take(&mut self.so_far.route_changed) {
            envoy.clear_route_cache();
        }
        for (id, by) in self.so_far.counters.drain(..) {
            envoy.increment_counter(id, by);
        }
    }

    /// A stage answers locally: what the earlier stages wrote is written first, then the reply.
    fn reply(
        &mut self,
        envoy: &mut dyn StreamHost,
        shared: &SharedData,
        mut reply: LocalReply,
    ) -> Verdict {
        self.flush(envoy);
        // The response side of the stages that saw the request goes into the reply's headers
        // (every reply carries x-request-id). Envoy 1.40 does not call a dynamic module's
        // response-headers hook for the local reply that module sent (checked: the hook runs
        // for upstream and router replies, not for its own; a Wasm filter's does run), so the
        // edits cannot wait for it; should a later Envoy call it, it does nothing more.
        self.response_side(envoy, shared, &mut |_, edit| edit_reply(&mut reply, edit));
        self.replied = true;
        self.pending.clear();
        self.waiting_for_keys = false;
        envoy.send_reply(&reply);
        Verdict::Stop
    }

    /// The response side of every stage that saw the request, last first: each response edit
    /// handed to `edit` as it is decided (those decided on the request side first), the
    /// counters incremented.
    fn response_side(&mut self, envoy: &mut dyn StreamHost, shared: &SharedData, edit: Edit<'_>) {
        for e in std::mem::take(&mut self.so_far.response) {
            edit(envoy, &e);
        }
        for (id, by) in self.so_far.counters.drain(..) {
            envoy.increment_counter(id, by);
        }
        let mut host = PassHost::new(envoy, shared);
        let seen = self.seen.min(self.stages.len());
        let spare = &mut self.so_far.spares().fx;
        for bound in self.stages.iter_mut().take(seen).rev() {
            bound.get().response(&mut host, spare, edit);
        }
    }

    /// The response headers (also of a local reply): the response side of every stage that saw
    /// the request, last first.
    pub fn response_headers(&mut self, envoy: &mut dyn StreamHost) {
        self.lend_spares();
        self.response_headers_in(envoy, &shared_data::PROCESS);
        self.return_spares();
    }

    fn response_headers_in(&mut self, envoy: &mut dyn StreamHost, shared: &SharedData) {
        if self.replied {
            return;
        }
        let mut names =
            ResponseNames::new(std::mem::take(&mut self.so_far.spares().response_names));
        self.response_side(envoy, shared, &mut |envoy, edit| {
            names.apply(envoy, edit);
        });
        self.so_far.spares().response_names = names.into_room();
    }
}

impl Drop for Run {
    /// A stream that goes away while waiting for keys leaves no waiter behind in its stage.
    /// Its stage list goes back to the worker, emptied.
    fn drop(&mut self) {
        for bound in &mut self.stages {
            bound.get().forget();
        }
        let mut stages = std::mem::take(&mut self.stages);
        stages.clear();
        if let Ok(mut lists) = self.pipeline.spare_stage_lists.try_borrow_mut()
            && lists.len() < KEPT_STAGE_LISTS
        {
            lists.push(stages);
        }
    }
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

/// What a pass knows of the response's header names, to write each response edit with the
/// cheapest call. Envoy's `set_header` must first find the copies of a name to replace: for one
/// of the headers Envoy keeps in fixed slots ([`ENVOY_O1_RESPONSE_HEADERS`]) that is a lookup
/// (`x-request-id`: ≈ 1.2k instructions in Envoy 1.40), for any other a scan of a list that
/// grows with every header written (≈ 2.7k for a name the response does not have, ≈ 1.7k
/// each over five); `add_header` needs neither (≈ 1.0k). So O(1) names are set, and for the
/// others the response's names are read once, at the first edit that needs them (≈ 0.4k in
/// Envoy): a name the response does not have is added rather than set, and removing it costs
/// no call — what the request side does with its header list.
struct ResponseNames {
    /// Each name followed by a 0 byte: the response's, then those this pass added.
    names: Vec<u8>,
    read: bool,
}

/// The headers an Envoy response header map keeps in fixed slots, found without a scan
/// (`INLINE_REQ_RESP_HEADERS` and `INLINE_RESP_HEADERS` of Envoy's `header_map.h`; the names
/// a gatewasm stage may write among them). Only the cost of a write depends on this list.
const ENVOY_O1_RESPONSE_HEADERS: [&str; 11] = [
    "x-request-id",
    "content-type",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-status",
    "transfer-encoding",
    "upgrade",
    "date",
    "server",
];

impl ResponseNames {
    fn new(mut room: Vec<u8>) -> Self {
        room.clear();
        Self {
            names: room,
            read: false,
        }
    }

    /// Whether the response is known not to have `name` (Envoy's names are lower case;
    /// compared without case all the same). An O(1) name is never read for.
    fn absent(&mut self, envoy: &mut dyn StreamHost, name: &str) -> bool {
        if ENVOY_O1_RESPONSE_HEADERS
            .iter()
            .any(|o1| o1.eq_ignore_ascii_case(name))
        {
            return false;
        }
        if !self.read {
            envoy.response_header_names(&mut self.names);
            self.read = true;
        }
        !self
            .names
            .split(|&b| b == 0)
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// `name` is in the response now (what a read made before this does not show).
    fn note(&mut self, name: &str) {
        if self.read {
            self.names.extend_from_slice(name.as_bytes());
            self.names.push(0);
        }
    }

    fn apply(&mut self, envoy: &mut dyn StreamHost, edit: &HeaderEdit<'_>) {
        match edit {
            HeaderEdit::Set(name, value) => {
                if self.absent(envoy, name) {
                    envoy.add_header(Side::Response, name, value);
                    self.note(name);
                } else {
                    envoy.set_header(Side::Response, name, Some(value));
                }
            }
            HeaderEdit::Add(name, value) => {
                envoy.add_header(Side::Response, name, value);
                self.note(name);
            }
            HeaderEdit::Remove(name) => {
                if !self.absent(envoy, name) {
                    envoy.set_header(Side::Response, name, None);
                }
            }
        }
    }

    /// The buffer, for the next stream.
    fn into_room(self) -> Vec<u8> {
        self.names
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

    /// A logged header write (`set_header`, or `add_header` for a name the request lacked).
    fn is_write(call: &str) -> bool {
        call.starts_with("set ") || call.starts_with("add ")
    }

    /// Envoy as a map and a call log.
    #[derive(Default)]
    struct FakeEnvoy {
        request: Vec<(String, Vec<u8>)>,
        /// The response headers (only their names are read).
        response: Vec<(String, Vec<u8>)>,
        source: Option<Vec<u8>>,
        calls: Vec<String>,
        counters: Vec<(u32, u32)>,
        replies: Vec<LocalReply>,
        /// gRPC calls sent, by callout id (its index); `refuse_calls`: Envoy refuses to send.
        sent: Vec<GrpcCall>,
        refuse_calls: bool,
        key_waits: Vec<KeyWait>,
    }

    impl FakeEnvoy {
        /// Whether a logged call is exactly `call`.
        fn made(&self, call: &str) -> bool {
            self.calls.iter().any(|c| c == call)
        }

        /// Whether a logged call starts with `prefix`.
        fn made_one_like(&self, prefix: &str) -> bool {
            self.calls.iter().any(|c| c.starts_with(prefix))
        }
    }

    impl StreamHost for FakeEnvoy {
        fn request_headers(&mut self, into: &mut HeaderList) {
            self.calls.push("read".into());
            // SAFETY: as Envoy's: the fake's request is not changed during a hook (a test that
            // changes it between hooks checks that the pipeline owned the list).
            unsafe {
                into.refill_borrowing(
                    self.request
                        .iter()
                        .map(|(k, v)| (k.as_bytes(), v.as_slice())),
                );
            }
        }
        fn request_headers_named(&mut self, names: &[String], into: &mut HeaderList) {
            self.calls.push(format!("read {}", names.join(",")));
            into.refill_from_pairs(
                self.request
                    .iter()
                    .filter(|(k, _)| names.contains(k))
                    .map(|(k, v)| (k.as_bytes(), v.as_slice())),
            );
        }
        fn response_header_names(&mut self, into: &mut Vec<u8>) {
            self.calls.push("read response".into());
            for (name, _) in &self.response {
                into.extend_from_slice(name.as_bytes());
                into.push(0);
            }
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
        fn grpc_call(&mut self, call: &GrpcCall) -> Option<u64> {
            self.calls.push(format!("grpc {}", call.cluster));
            if self.refuse_calls {
                return None;
            }
            self.sent.push(call.clone());
            Some(self.sent.len() as u64 - 1)
        }
        fn wait_for_keys(&mut self, wait: &KeyWait) -> bool {
            self.key_waits.push(wait.clone());
            true
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
    fn a_filter_that_names_its_headers_reads_only_those() {
        let filter = pipeline("correlation-id", "{}");
        assert_eq!(filter.read, RequestRead::Named(vec!["x-request-id".into()]));
        // Two copies of the ID: both are read, so the stage still sees the duplicate and
        // replaces them with one fresh ID (a set: the host has the name).
        let mut twice = envoy(&[
            (":path", "/a"),
            ("x-request-id", "first"),
            ("x-request-id", "second"),
        ]);
        let mut run = filter.start();
        assert_eq!(run.request_headers(&mut twice), Verdict::Continue);
        assert_eq!(twice.calls[0], "read x-request-id");
        let writes: Vec<&String> = twice.calls.iter().filter(|c| is_write(c)).collect();
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert!(
            writes[0].starts_with("set Request x-request-id Some("),
            "{writes:?}"
        );
        // A valid single ID is kept: nothing is written.
        let mut envoy = super::tests::envoy(&[(":path", "/a"), ("x-request-id", "kept")]);
        let mut run = filter.start();
        assert_eq!(run.request_headers(&mut envoy), Verdict::Continue);
        assert!(
            !envoy.calls.iter().any(|c| is_write(c)),
            "{:?}",
            envoy.calls
        );
        // A chain with a stage that may look at any header reads the map; one whose stages
        // read nothing reads nothing.
        let chain = pipeline(
            "chain",
            &format!(r#"{{"stages": [{{"filter": "correlation-id"}}, {TENANTS}]}}"#),
        );
        assert_eq!(chain.read, RequestRead::All);
        let blind = pipeline("correlation-id", r#"{"trust_incoming": false}"#);
        assert_eq!(blind.read, RequestRead::Nothing);
    }

    #[test]
    fn a_stage_that_reads_no_headers_replaces_the_hosts_copies() {
        // trust_incoming false: correlation-id never looks at the request, the module does not
        // read it, and the new ID must replace the client's (a set), not join it (an add).
        let filter = pipeline("correlation-id", r#"{"trust_incoming": false}"#);
        let mut envoy = envoy(&[(":path", "/a"), ("x-request-id", "client-chosen")]);
        let mut run = filter.start();
        assert_eq!(run.request_headers(&mut envoy), Verdict::Continue);
        assert!(!envoy.made("read"), "{:?}", envoy.calls);
        assert!(
            envoy.made_one_like("set Request x-request-id Some("),
            "{:?}",
            envoy.calls
        );
        assert!(!envoy.made_one_like("add "), "{:?}", envoy.calls);
    }

    /// A chain of correlation-id (echoing the ID) and tenant-routing ([`TENANTS`]).
    fn echo_and_tenants() -> Rc<Pipeline> {
        pipeline(
            "chain",
            &format!(
                r#"{{"stages": [{{"filter": "correlation-id", "config": {{"echo_downstream": true}}}}, {TENANTS}]}}"#
            ),
        )
    }

    #[test]
    fn a_workers_next_stream_reuses_the_buffers_and_sees_only_its_own_headers() {
        let chain = echo_and_tenants();
        // No request ID: correlation-id writes one into the list (the last stage, tenants,
        // writes straight to Envoy), so the list's room for writes is made here.
        let mut first = envoy(&[(":path", "/a"), ("x-tenant", "acme")]);
        let mut run = chain.start();
        assert_eq!(run.request_headers(&mut first), Verdict::Continue);
        run.response_headers(&mut first);
        drop(run);
        let first_id = first
            .calls
            .iter()
            .find_map(|c| c.strip_prefix("add Request x-request-id "))
            .expect("an ID is generated")
            .to_string();
        // Its emptied stage list too, which the next stream takes.
        assert_eq!(chain.spare_stage_lists.borrow().len(), 1);
        assert!(chain.spare_stage_lists.borrow()[0].is_empty());
        // The worker kept the list, emptied, and the effects' vectors.
        let spares = chain
            .spares
            .take()
            .expect("the buffers are back with the worker");
        assert!(spares.headers.pairs().is_empty());
        assert!(spares.fx.is_empty() && spares.fx.request.capacity() > 0);
        let room = spares.headers.room();
        chain.spares.set(Some(spares));
        assert!(room > 0);
        // The next stream has no request ID: it gets a new one, not the last stream's, and
        // its tenant's headers are written again.
        let mut second = envoy(&[(":path", "/b"), ("x-tenant", "acme")]);
        let mut run = chain.start();
        assert!(chain.spare_stage_lists.borrow().is_empty());
        assert_eq!(run.request_headers(&mut second), Verdict::Continue);
        let id = second
            .calls
            .iter()
            .find_map(|c| c.strip_prefix("add Request x-request-id "))
            .expect("an ID is generated");
        assert_ne!(id, first_id);
        assert!(
            second.made("add Request x-tenant-id acme"),
            "{:?}",
            second.calls
        );
        let spares = chain
            .spares
            .take()
            .expect("the buffers are back with the worker");
        assert_eq!(spares.headers.room(), room, "no new room");
    }

    #[test]
    fn a_chain_reads_once_and_writes_back_each_changed_header_once() {
        let chain = echo_and_tenants();
        let mut envoy = envoy(&[
            (":path", "/a"),
            ("x-tenant", "acme"),
            ("x-request-id", "id-1"),
        ]);
        let mut run = chain.start();
        assert_eq!(run.request_headers(&mut envoy), Verdict::Continue);
        assert_eq!(envoy.calls.iter().filter(|c| *c == "read").count(), 1);
        let writes: Vec<&String> = envoy.calls.iter().filter(|c| is_write(c)).collect();
        assert!(
            writes.contains(&&"add Request x-cluster acme".to_string()),
            "{writes:?}"
        );
        assert!(
            writes.contains(&&"add Request x-tenant-id acme".to_string()),
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
        // The response side echoes the ID (one edit: set, not worth reading the names).
        envoy.calls.clear();
        run.response_headers(&mut envoy);
        assert_eq!(
            envoy.calls,
            vec!["set Response x-request-id Some(\"id-1\")"]
        );
    }

    #[test]
    fn a_response_name_is_set_when_the_response_has_it_added_when_not_removed_only_if_there() {
        let mut envoy = FakeEnvoy {
            response: vec![
                (":status".into(), b"200".to_vec()),
                ("ratelimit".into(), b"upstream".to_vec()),
            ],
            ..FakeEnvoy::default()
        };
        let mut names = ResponseNames::new(b"left over\0".to_vec());
        let set = |n: &'static str, v: &'static str| HeaderEdit::Set(n.into(), v.as_bytes().into());
        for edit in [
            // An O(1) name is set, whether the response has it or not: no read.
            set("x-request-id", "id-1"),
            HeaderEdit::Add("x-added".into(), b"a".as_slice().into()),
            // Another name: the response's names are read, once.
            set("x-new", "n1"),
            set("x-new", "n2"),
            HeaderEdit::Remove("x-absent".into()),
            HeaderEdit::Remove("RateLimit".into()),
            HeaderEdit::Add("x-later".into(), b"a".as_slice().into()),
            set("x-later", "b"),
            // The buffer's old content is gone.
            set("left over", "x"),
        ] {
            names.apply(&mut envoy, &edit);
        }
        assert_eq!(
            envoy.calls,
            [
                "set Response x-request-id Some(\"id-1\")",
                "add Response x-added a",
                "read response",
                "add Response x-new n1",
                "set Response x-new Some(\"n2\")",
                "set Response RateLimit None",
                "add Response x-later a",
                "set Response x-later Some(\"b\")",
                "add Response left over x",
            ]
        );
        // The buffer is kept for the next pass (which clears it).
        assert!(names.into_room().capacity() > 0);
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
            .position(|c| c.starts_with("add Request x-request-id"))
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
        // "add Request x-request-id <id>"
        let written = envoy.calls[id_write].split(' ').nth(3).map(str::to_owned);
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

    /// A `RateLimitResponse` with `overall_code` (1 OK, 2 OVER_LIMIT), protobuf-encoded.
    fn rls_answer(overall_code: u8) -> Vec<u8> {
        vec![0x08, overall_code]
    }

    fn global(name: &str, failure_mode: &str) -> String {
        format!(
            r#"{{"name": "{name}", "key": ["client_ip"], "mode": "global",
                "service": {{"cluster": "rls", "domain": "gw", "timeout_ms": 5000, "failure_mode": "{failure_mode}"}}}}"#
        )
    }

    #[test]
    fn a_global_rule_waits_for_its_service_then_the_later_stages_run() {
        let chain = pipeline(
            "chain",
            &format!(
                r#"{{"stages": [{{"filter": "correlation-id", "config": {{"echo_downstream": true}}}},
                    {{"filter": "rate-limit", "config": {{"rules": [{}]}}}}, {TENANTS}]}}"#,
                global("g", "deny")
            ),
        );
        let mut envoy = envoy(&[(":path", "/a"), ("x-tenant", "acme")]);
        let mut run = chain.start();
        assert_eq!(run.request_headers(&mut envoy), Verdict::Wait);
        assert!(run.waiting());
        assert_eq!(envoy.sent.len(), 1, "{:?}", envoy.calls);
        assert_eq!(envoy.sent[0].method, "ShouldRateLimit");
        // Nothing is written while the request waits; tenant-routing has not run.
        assert!(
            !envoy.calls.iter().any(|c| is_write(c)),
            "{:?}",
            envoy.calls
        );
        // Between hooks Envoy's memory is not the list's to read: the waiting run owns a copy.
        // (Were it still borrowed, tenant-routing would now see `XXXX` and answer 404.)
        for (_, value) in &mut envoy.request {
            value.fill(b'X');
        }
        // Another callout's answer is not this run's.
        assert_eq!(
            run.grpc_answer(&mut envoy, 7, 0, Some(&rls_answer(1))),
            None
        );
        let verdict = run.grpc_answer(&mut envoy, 0, 0, Some(&rls_answer(1)));
        assert_eq!(verdict, Some(Verdict::Continue));
        assert!(!run.waiting());
        // Then the rest ran, and everything was written back once.
        assert!(
            envoy.made("add Request x-cluster acme"),
            "{:?}",
            envoy.calls
        );
        assert!(
            envoy.made_one_like("add Request x-request-id"),
            "{:?}",
            envoy.calls
        );
    }

    #[test]
    fn over_the_limit_the_service_answer_replies_429() {
        let limiter = pipeline(
            "rate-limit",
            &format!(r#"{{"rules": [{}]}}"#, global("g", "allow")),
        );
        let mut envoy = envoy(&[(":path", "/")]);
        let mut run = limiter.start();
        assert_eq!(run.request_headers(&mut envoy), Verdict::Wait);
        assert_eq!(
            run.grpc_answer(&mut envoy, 0, 0, Some(&rls_answer(2))),
            Some(Verdict::Stop)
        );
        assert_eq!(envoy.replies.len(), 1);
        assert_eq!(envoy.replies[0].status, 429);
    }

    #[test]
    fn a_failed_or_unsent_call_follows_the_failure_mode() {
        for (mode, status, expected) in [
            ("allow", 14, Verdict::Continue),
            ("deny", 14, Verdict::Stop),
            ("deny", 4, Verdict::Stop),
        ] {
            let limiter = pipeline(
                "rate-limit",
                &format!(r#"{{"rules": [{}]}}"#, global("g", mode)),
            );
            let mut envoy = envoy(&[(":path", "/")]);
            let mut run = limiter.start();
            assert_eq!(run.request_headers(&mut envoy), Verdict::Wait);
            assert_eq!(
                run.grpc_answer(&mut envoy, 0, status, None),
                Some(expected),
                "{mode} {status}"
            );
        }
        // A call Envoy refuses to send is answered at once: no wait.
        for (mode, expected) in [("allow", Verdict::Continue), ("deny", Verdict::Stop)] {
            let limiter = pipeline(
                "rate-limit",
                &format!(r#"{{"rules": [{}]}}"#, global("g", mode)),
            );
            let mut envoy = envoy(&[(":path", "/")]);
            envoy.refuse_calls = true;
            assert_eq!(
                limiter.start().request_headers(&mut envoy),
                expected,
                "{mode}"
            );
        }
    }

    #[test]
    fn a_hybrid_rule_asks_the_service_only_for_what_its_local_bucket_allows() {
        let limiter = pipeline(
            "rate-limit",
            r#"{"rules": [{"name": "pipeline-hybrid", "key": ["client_ip"], "mode": "hybrid", "limit": 1, "window_s": 3600,
                "service": {"cluster": "rls", "domain": "gw", "timeout_ms": 5000}}]}"#,
        );
        let mut first = envoy(&[(":path", "/")]);
        first.source = Some(b"192.0.2.90:1".to_vec());
        let mut run = limiter.start();
        assert_eq!(run.request_headers(&mut first), Verdict::Wait);
        assert_eq!(
            run.grpc_answer(&mut first, 0, 0, Some(&rls_answer(1))),
            Some(Verdict::Continue)
        );
        // The local bucket is spent: refused here, no call.
        let mut second = envoy(&[(":path", "/")]);
        second.source = Some(b"192.0.2.90:1".to_vec());
        assert_eq!(limiter.start().request_headers(&mut second), Verdict::Stop);
        assert!(second.sent.is_empty());
        assert_eq!(second.replies[0].status, 429);
    }

    #[test]
    fn jwt_to_header_waits_for_remote_keys_then_the_chain_goes_on() {
        use gatewasm_devtools::demo_jwt::{self, DEMO_ISSUER, DEMO_JWKS, DemoClaims};
        use jwt_to_header::jwks::{Meta, data_key};
        // A provider name no other test uses: its keys live in the process's shared data.
        let jwt = format!(
            r#"{{"filter": "jwt-to-header", "config": {{"providers": {{"pipeline-remote": {{"issuer": "{DEMO_ISSUER}",
                "remote_jwks": {{"cluster": "idp", "authority": "idp", "path": "/jwks", "timeout_ms": 5000}},
                "claim_to_headers": [{{"claim": "sub", "header": "x-user"}}]}}}},
                "rules": [{{"match": {{"prefix": "/"}}, "requires": "pipeline-remote"}}]}}}}"#
        );
        let chain = pipeline(
            "chain",
            &format!(r#"{{"stages": [{{"filter": "correlation-id"}}, {jwt}, {TENANTS}]}}"#),
        );
        let token = demo_jwt::mint(&DemoClaims::default()).unwrap();
        let mut envoy = envoy(&[
            (":path", "/a"),
            ("x-tenant", "acme"),
            ("authorization", &format!("Bearer {token}")),
        ]);
        let mut run = chain.start();
        assert_eq!(run.request_headers(&mut envoy), Verdict::Wait);
        assert!(run.waiting());
        assert_eq!(envoy.key_waits.len(), 1);
        let hash = {
            let Compiled::JwtToHeader(stage) = &chain.stages[1] else {
                panic!("stage 1 is jwt-to-header");
            };
            stage.shared.borrow().settings.config_hash.clone()
        };
        assert_eq!(
            envoy.key_waits[0].provider,
            meta_key(&hash, "pipeline-remote")
        );
        assert!(
            !envoy.calls.iter().any(|c| is_write(c)),
            "{:?}",
            envoy.calls
        );
        // The driver fetched the keys into shared data; the run is woken.
        let shared = &shared_data::PROCESS;
        shared.set(
            &data_key(&hash, "pipeline-remote"),
            DEMO_JWKS.as_bytes(),
            None,
        );
        let meta = Meta::default().acquire(1, 1).succeeded(2);
        shared.set(&meta_key(&hash, "pipeline-remote"), &meta.encode(), None);
        assert_eq!(run.keys_ready(&mut envoy), Some(Verdict::Continue));
        assert_eq!(run.keys_ready(&mut envoy), None, "woken once");
        assert!(!run.waiting());
        let sets: Vec<&String> = envoy.calls.iter().filter(|c| is_write(c)).collect();
        assert!(
            sets.iter().any(|c| c.starts_with("add Request x-user")),
            "{sets:?}"
        );
        assert!(
            sets.iter().any(|c| c.starts_with("add Request x-cluster")),
            "the stage after the wait ran: {sets:?}"
        );
        // Woken without keys (their fetch failed, or the deadline passed): 503, no wait again.
        let mut other = envoy_with_token(&token);
        let lone = pipeline(
            "jwt-to-header",
            &format!(
                r#"{{"providers": {{"pipeline-nokeys": {{"issuer": "{DEMO_ISSUER}",
                "remote_jwks": {{"cluster": "idp", "authority": "idp", "path": "/jwks"}}}}}},
                "rules": [{{"match": {{"prefix": "/"}}, "requires": "pipeline-nokeys"}}]}}"#
            ),
        );
        let mut run = lone.start();
        assert_eq!(run.request_headers(&mut other), Verdict::Wait);
        assert_eq!(run.keys_ready(&mut other), Some(Verdict::Stop));
        assert_eq!(other.replies[0].status, 503);
    }

    fn envoy_with_token(token: &str) -> FakeEnvoy {
        envoy(&[
            (":path", "/"),
            ("authorization", &format!("Bearer {token}")),
        ])
    }
}
