//! Chain mode (root id `chain`): the filters as stages of one Proxy-Wasm filter.
//!
//! Per request the chain reads the request header map once (when a stage reads headers) into
//! a [`HeaderList`], runs the stages in order — each sees what the earlier ones wrote, as it
//! would as a separate filter — and then writes back one call per changed header name, clears
//! the route cache once if any stage asked, and increments the counters. A local reply from a
//! stage stops the later stages (its headers written first, as separate filters would have);
//! the response pass then runs the response side of every stage that saw the request, last
//! first (Envoy's encoder order), and applies their edits. A stage that waits — rate-limit's
//! gRPC calls to its service, jwt-to-header's keys — pauses the request; its answer (or the
//! root's wake-up for keys) resumes the chain at that stage, then the rest run.
//!
//! Semantics equal those of separate filters in that order, with one stricter exception: while
//! any stage waits, the request body and trailers are held (separate rate-limit filters do not
//! hold them).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use gatewasm_common::glue::{self, HostCalls, StageFilter};
use gatewasm_common::host::get_header_map;
use gatewasm_common::stage::{
    CALL_NOT_SENT, Effects, Flow, HeaderEdit, HeaderList, LocalReply, Stage, StageHost,
    recycle_view,
};
use gatewasm_common::{ConfigError, config::parse_or_log};
use jwt_to_header::stage::JwtToHeader;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

use crate::plan::{FilterKind, StagePlan, parse_chain, stage_error};

/// The chain's log prefix.
const CHAIN: &str = "gatewasm chain";

/// The host as the stages of one callback see it: one clock read for all of them (separate
/// filters would each read it, microseconds apart); everything else goes straight to the host.
#[derive(Default)]
struct PassHost {
    now_ns: Option<u64>,
}

impl StageHost for PassHost {
    fn now_ns(&mut self) -> u64 {
        *self.now_ns.get_or_insert_with(|| HostCalls.now_ns())
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        HostCalls.property(path)
    }

    fn shared_get(&mut self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        HostCalls.shared_get(key)
    }

    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> gatewasm_common::stage::SetResult {
        HostCalls.shared_set(key, value, cas)
    }

    fn foreign_function(
        &mut self,
        name: &str,
        args: &[u8],
    ) -> Result<Option<Vec<u8>>, proxy_wasm::types::Status> {
        HostCalls.foreign_function(name, args)
    }
}

/// What a request pass of the chain hands each stage: the header list (a stage's request edits
/// are applied to it, the next stage reads them there), the host, and the counter increments
/// so far (a stage's own are appended to them: one vector for the whole pass, not one each).
struct Pass<'r> {
    headers: &'r mut HeaderList,
    host: &'r mut dyn StageHost,
    counters: &'r mut Vec<(u32, u32)>,
    spares: &'r mut Spares,
}

/// A worker's buffers, kept between stages and requests (a VM runs on one thread): each
/// emptied, its room kept, so that a request through the chain allocates none of them.
#[derive(Default)]
struct Spares {
    /// The next stage call's effects ([`Effects::recycle`]).
    fx: Effects<'static>,
    /// The next stage's header view ([`recycle_view`]).
    view: Vec<(&'static str, &'static [u8])>,
    /// The next request's header list ([`HeaderList::refill_from_serialized`]).
    headers: HeaderList,
}

/// A header list holding more than this is not kept for the next request (one request with
/// huge headers must not pin its memory in the worker).
const KEPT_HEADER_ROOM: usize = 16 * 1024;

thread_local! {
    /// This worker's [`Spares`]: a callback borrows them ([`lend_spares`]) and gives them back.
    static SPARES: Cell<Option<Box<Spares>>> = const { Cell::new(None) };
}

/// The worker's spare buffers for one callback (new ones if another callback has them: a
/// callback never runs inside another in one VM, so that does not happen).
fn lend_spares() -> Box<Spares> {
    SPARES.with(Cell::take).unwrap_or_default()
}

fn return_spares(spares: Box<Spares>) {
    SPARES.with(|cell| cell.set(Some(spares)));
}

/// One stage bound to one request: the stage and its per-request state. Each request-side
/// call applies the stage's request edits and counters to `pass` and returns the rest of its
/// effects with their own copies of what they borrowed.
trait Bound {
    fn request(&mut self, pass: Pass<'_>) -> (Effects<'static>, Flow);
    /// The response side: its edits are applied (one host call each), its counters appended;
    /// `spare`: the effects it decides into.
    fn response(
        &mut self,
        host: &mut dyn StageHost,
        counters: &mut Vec<(u32, u32)>,
        spare: &mut Effects<'static>,
    );
    fn grpc_answer(
        &mut self,
        call: usize,
        status: u32,
        body: Option<&[u8]>,
        pass: Pass<'_>,
    ) -> (Effects<'static>, Flow);
    /// jwt-to-header: the keys this request waited for arrived (or will not).
    fn woken(&mut self, _pass: Pass<'_>) -> (Effects<'static>, Flow) {
        (Effects::default(), Flow::Continue)
    }
}

/// Effects for one stage to decide into (the spare ones), its counters appended to `counters`.
fn effects<'a>(spare: &mut Effects<'static>, counters: &mut Vec<(u32, u32)>) -> Effects<'a> {
    let mut fx: Effects<'a> = std::mem::take(spare);
    fx.counters = std::mem::take(counters);
    fx
}

/// Apply `fx`'s request edits and counters to `pass`, and keep `fx`'s room for the next stage;
/// the rest of `fx` (response edits, reply, calls), owned.
fn settle(mut fx: Effects<'_>, pass: Pass<'_>) -> Effects<'static> {
    for edit in &fx.request {
        pass.headers.apply(edit);
    }
    *pass.counters = std::mem::take(&mut fx.counters);
    let rest = fx.take_rest();
    pass.spares.fx = fx.recycle();
    rest
}

struct Of<S: Stage> {
    stage: Rc<S>,
    stream: S::Stream,
}

impl<S: Stage> Bound for Of<S> {
    fn request(&mut self, pass: Pass<'_>) -> (Effects<'static>, Flow) {
        let mut fx = effects(&mut pass.spares.fx, pass.counters);
        let flow = {
            let mut view = std::mem::take(&mut pass.spares.view);
            pass.headers.view_into(&mut view);
            let flow = self
                .stage
                .on_request_headers(&mut self.stream, &view, pass.host, &mut fx);
            pass.spares.view = recycle_view(view);
            flow
        };
        (settle(fx, pass), flow)
    }

    fn response(
        &mut self,
        host: &mut dyn StageHost,
        counters: &mut Vec<(u32, u32)>,
        spare: &mut Effects<'static>,
    ) {
        if !S::RESPONSE_HEADERS {
            return;
        }
        let mut fx = effects(spare, counters);
        self.stage
            .on_response_headers(&mut self.stream, host, &mut fx);
        // Applied here, borrowed: no copies of the names and values to keep.
        glue::apply_edits(MapType::HttpResponseHeaders, &fx.response);
        *counters = std::mem::take(&mut fx.counters);
        *spare = fx.recycle();
    }

    fn grpc_answer(
        &mut self,
        call: usize,
        status: u32,
        body: Option<&[u8]>,
        pass: Pass<'_>,
    ) -> (Effects<'static>, Flow) {
        let mut fx = effects(&mut pass.spares.fx, pass.counters);
        let flow =
            self.stage
                .on_grpc_answer(&mut self.stream, call, status, body, pass.host, &mut fx);
        (settle(fx, pass), flow)
    }
}

/// jwt-to-header bound to a request: it waits under the request's context id.
struct Jwt(Of<JwtToHeader>);

impl Bound for Jwt {
    fn request(&mut self, pass: Pass<'_>) -> (Effects<'static>, Flow) {
        self.0.request(pass)
    }

    fn response(
        &mut self,
        host: &mut dyn StageHost,
        counters: &mut Vec<(u32, u32)>,
        spare: &mut Effects<'static>,
    ) {
        self.0.response(host, counters, spare);
    }

    fn grpc_answer(
        &mut self,
        call: usize,
        status: u32,
        body: Option<&[u8]>,
        pass: Pass<'_>,
    ) -> (Effects<'static>, Flow) {
        self.0.grpc_answer(call, status, body, pass)
    }

    fn woken(&mut self, pass: Pass<'_>) -> (Effects<'static>, Flow) {
        let mut fx = effects(&mut pass.spares.fx, pass.counters);
        let flow = {
            let pairs = pass.headers.pairs();
            self.0.stage.on_woken(&pairs, pass.host, &mut fx)
        };
        (settle(fx, pass), flow)
    }
}

/// A stage bound to a request, of any filter: an enum rather than a box, so a request's
/// stages cost one allocation (their vector), not one each.
enum AnyBound {
    CorrelationId(Of<correlation_id::stage::CorrelationId>),
    TracePropagation(Of<trace_propagation::stage::TracePropagation>),
    JwtToHeader(Jwt),
    TenantRouting(Of<tenant_routing::stage::TenantRouting>),
    RateLimit(Of<rate_limit::stage::RateLimit>),
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

/// A configured stage.
enum Compiled {
    CorrelationId(Rc<correlation_id::stage::CorrelationId>),
    TracePropagation(Rc<trace_propagation::stage::TracePropagation>),
    JwtToHeader(Rc<JwtToHeader>),
    TenantRouting(Rc<tenant_routing::stage::TenantRouting>),
    RateLimit(Rc<rate_limit::stage::RateLimit>),
}

fn of<S: Stage>(stage: &Rc<S>) -> Of<S> {
    Of {
        stage: Rc::clone(stage),
        stream: S::Stream::default(),
    }
}

impl Compiled {
    fn configure(plan: &StagePlan) -> Result<Compiled, ConfigError> {
        let bytes = plan.config.as_deref();
        Ok(match plan.kind {
            FilterKind::CorrelationId => {
                Compiled::CorrelationId(Rc::new(correlation_id::glue::Filter::configure(bytes)?))
            }
            FilterKind::TracePropagation => Compiled::TracePropagation(Rc::new(
                trace_propagation::glue::Filter::configure(bytes)?,
            )),
            FilterKind::JwtToHeader => {
                Compiled::JwtToHeader(Rc::new(jwt_to_header::glue::configure_stage(bytes)?))
            }
            FilterKind::TenantRouting => {
                Compiled::TenantRouting(Rc::new(tenant_routing::glue::Filter::configure(bytes)?))
            }
            FilterKind::RateLimit => {
                Compiled::RateLimit(Rc::new(rate_limit::glue::Filter::configure(bytes)?))
            }
        })
    }

    fn reads_request_headers(&self) -> bool {
        match self {
            Compiled::CorrelationId(s) => s.reads_request_headers(),
            Compiled::TracePropagation(s) => s.reads_request_headers(),
            Compiled::JwtToHeader(s) => s.reads_request_headers(),
            Compiled::TenantRouting(s) => s.reads_request_headers(),
            Compiled::RateLimit(s) => s.reads_request_headers(),
        }
    }

    fn bind(&self, context_id: u32) -> AnyBound {
        match self {
            Compiled::CorrelationId(s) => AnyBound::CorrelationId(of(s)),
            Compiled::TracePropagation(s) => AnyBound::TracePropagation(of(s)),
            Compiled::JwtToHeader(s) => AnyBound::JwtToHeader(Jwt(Of {
                stage: Rc::clone(s),
                stream: jwt_to_header::stage::Stream { context_id },
            })),
            Compiled::TenantRouting(s) => AnyBound::TenantRouting(of(s)),
            Compiled::RateLimit(s) => AnyBound::RateLimit(of(s)),
        }
    }
}

/// The configured chain.
struct Chain {
    stages: Vec<Compiled>,
    reads_request_headers: bool,
}

/// Requests paused while jwt-to-header waits for keys, by context id: the root's key driver
/// wakes them.
type Waiting = Rc<RefCell<Vec<(u32, Weak<RefCell<Run>>)>>>;

pub struct ChainRoot {
    context_id: u32,
    chain: Option<Rc<Chain>>,
    /// The jwt-to-header stage, whose keys this root drives.
    jwt: Option<Rc<JwtToHeader>>,
    waiting: Waiting,
}

impl ChainRoot {
    pub fn new(context_id: u32) -> Self {
        Self {
            context_id,
            chain: None,
            jwt: None,
            waiting: Rc::default(),
        }
    }

    fn reseed(&self) {
        // Cheap, and only the stages present use it.
        correlation_id::glue::Filter::reseed(self.context_id);
        trace_propagation::glue::Filter::reseed(self.context_id);
    }

    /// Wake request `context_id` (the effective context) after its keys wait.
    fn wake(waiting: &Waiting, context_id: u32) {
        let run = {
            let mut list = waiting.borrow_mut();
            let at = list.iter().position(|(id, _)| *id == context_id);
            at.map(|at| list.swap_remove(at).1)
        };
        if let Some(run) = run.and_then(|weak| weak.upgrade()) {
            let mut run = run.borrow_mut();
            if run.lent(Run::resume_woken) == Action::Continue {
                let _ = hostcalls::resume_http_request();
            }
        }
    }
}

fn parse(bytes: Option<&[u8]>) -> Result<Chain, ConfigError> {
    let plans = parse_chain(bytes)?;
    let mut stages = Vec::with_capacity(plans.len());
    for (i, plan) in plans.iter().enumerate() {
        stages.push(Compiled::configure(plan).map_err(|e| stage_error(i, plan.kind, &e))?);
    }
    let reads_request_headers = stages.iter().any(Compiled::reads_request_headers);
    Ok(Chain {
        stages,
        reads_request_headers,
    })
}

impl Context for ChainRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(jwt) = self.jwt.clone() {
            let waiting = Rc::clone(&self.waiting);
            jwt_to_header::glue::on_http_call_response(
                self.context_id,
                &jwt,
                token_id,
                body_size,
                &mut |id| Self::wake(&waiting, id),
            );
        }
    }
}

impl RootContext for ChainRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.reseed();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration();
        let Some(chain) = parse_or_log(CHAIN, bytes.as_deref(), parse) else {
            return false;
        };
        self.jwt = chain.stages.iter().find_map(|s| match s {
            Compiled::JwtToHeader(jwt) => Some(Rc::clone(jwt)),
            _ => None,
        });
        if let Some(jwt) = &self.jwt
            && jwt_to_header::glue::needs_ticks(jwt)
        {
            self.set_tick_period(jwt_to_header::glue::TICK);
        }
        self.chain = Some(Rc::new(chain));
        self.reseed();
        true
    }

    fn on_tick(&mut self) {
        if let Some(jwt) = self.jwt.clone() {
            let waiting = Rc::clone(&self.waiting);
            jwt_to_header::glue::on_tick(self, self.context_id, &jwt, &mut |id| {
                Self::wake(&waiting, id)
            });
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ChainStream {
            run: self.chain.as_ref().map(|chain| {
                Rc::new_cyclic(|this| {
                    RefCell::new(Run {
                        context_id,
                        this: this.clone(),
                        registry: Rc::clone(&self.waiting),
                        stages: chain.stages.iter().map(|s| s.bind(context_id)).collect(),
                        chain: Rc::clone(chain),
                        headers: HeaderList::default(),
                        next: 0,
                        seen: 0,
                        route_changed: false,
                        counters: Vec::new(),
                        response: Vec::new(),
                        pending: Vec::new(),
                        waiting_for_keys: false,
                        host: PassHost::default(),
                        spares: None,
                    })
                })
            }),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request through the chain.
struct Run {
    context_id: u32,
    /// This run, for the registry of requests waiting for keys.
    this: Weak<RefCell<Run>>,
    registry: Waiting,
    chain: Rc<Chain>,
    stages: Vec<AnyBound>,
    /// The request headers as read once, with the stages' edits applied.
    headers: HeaderList,
    /// The next request stage to run (the waiting one while paused).
    next: usize,
    /// How many stages saw the request (their response side runs).
    seen: usize,
    route_changed: bool,
    /// Counter increments not yet made.
    counters: Vec<(u32, u32)>,
    /// Response edits decided on the request side (applied on the response pass).
    response: Vec<HeaderEdit<'static>>,
    /// gRPC calls in flight: (token, stage, call index).
    pending: Vec<(u32, usize, usize)>,
    waiting_for_keys: bool,
    /// The host of the callback running now (reset at each callback).
    host: PassHost,
    /// The worker's spare buffers while a callback runs ([`Run::lent`]).
    spares: Option<Box<Spares>>,
}

/// What a stage of `run`'s request pass works on (a macro, not a method: it borrows only these
/// fields, so the stage itself, in `run.stages`, can be borrowed beside it).
macro_rules! pass {
    ($run:expr) => {
        Pass {
            headers: &mut $run.headers,
            host: &mut $run.host,
            counters: &mut $run.counters,
            spares: $run.spares.get_or_insert_with(Box::default),
        }
    };
}

/// How a stage's effects leave the chain.
enum Next {
    Stage,
    Reply(LocalReply),
    Wait,
}

impl Run {
    /// `callback` with the worker's spare buffers lent to this run, given back after it.
    fn lent<T>(&mut self, callback: impl FnOnce(&mut Run) -> T) -> T {
        self.spares = Some(lend_spares());
        let out = callback(self);
        if let Some(spares) = self.spares.take() {
            return_spares(spares);
        }
        out
    }

    fn spares(&mut self) -> &mut Spares {
        self.spares.get_or_insert_with(Box::default)
    }

    fn start(&mut self) -> Action {
        self.host = PassHost::default();
        if self.chain.reads_request_headers
            && let Ok(map) = get_header_map(MapType::HttpRequestHeaders)
        {
            let mut headers = std::mem::take(&mut self.spares().headers);
            headers.refill_from_serialized(map.into_bytes());
            self.headers = headers;
        }
        self.advance()
    }

    /// Take in one stage's effects (its request edits and counters are in the pass already):
    /// the rest waits for [`Run::flush`]; its gRPC calls are dispatched (one that
    /// cannot be sent is answered at once, [`CALL_NOT_SENT`]).
    fn absorb(&mut self, stage: usize, mut fx: Effects<'static>, flow: Flow) -> Next {
        self.route_changed |= fx.clear_route_cache;
        self.response.append(&mut fx.response);
        if let Some(reply) = fx.reply {
            return Next::Reply(reply);
        }
        let mut next = match flow {
            Flow::Wait => Next::Wait,
            Flow::Continue | Flow::Reply => Next::Stage,
        };
        let mut sent = false;
        for (index, call) in fx.grpc_calls.iter().enumerate() {
            match hostcalls::dispatch_grpc_call(
                &call.cluster,
                call.service,
                call.method,
                Vec::new(),
                Some(&call.message),
                std::time::Duration::from_millis(call.timeout_ms),
            ) {
                Ok(token) => {
                    self.pending.push((token, stage, index));
                    sent = true;
                }
                Err(status) => {
                    log::warn!(
                        "{CHAIN}: cannot call {} on cluster {}: {status:?}",
                        call.service,
                        call.cluster
                    );
                    let Some(bound) = self.stages.get_mut(stage).map(AnyBound::get) else {
                        break;
                    };
                    let (answer, flow) = bound.grpc_answer(index, CALL_NOT_SENT, None, pass!(self));
                    next = self.absorb(stage, answer, flow);
                    if matches!(next, Next::Reply(_)) {
                        return next;
                    }
                }
            }
        }
        if sent { Next::Wait } else { next }
    }

    /// Run the request stages from `self.next` until one waits or replies, or all are done.
    /// `Continue`: the request goes on (its effects are applied); `Pause`: it waits or was
    /// answered.
    fn advance(&mut self) -> Action {
        while let Some(bound) = self.stages.get_mut(self.next).map(AnyBound::get) {
            self.seen = self.seen.max(self.next + 1);
            let (fx, flow) = bound.request(pass!(self));
            match self.absorb(self.next, fx, flow) {
                Next::Stage => self.next += 1,
                Next::Reply(reply) => return self.reply(&reply),
                Next::Wait => return self.wait(),
            }
        }
        self.flush();
        Action::Continue
    }

    /// The waiting stage is jwt-to-header's (its keys) unless it has gRPC calls in flight.
    fn wait(&mut self) -> Action {
        self.waiting_for_keys = !self.pending.iter().any(|(_, stage, _)| *stage == self.next);
        if self.waiting_for_keys {
            let mut registry = self.registry.borrow_mut();
            // Requests that went away while waiting leave only a dead entry: drop those here,
            // so the registry never holds more than the requests alive.
            registry.retain(|(_, run)| run.strong_count() > 0);
            registry.push((self.context_id, self.this.clone()));
        }
        // Counters now: a request that never comes back (the client left) still counts.
        glue::apply_counters(&std::mem::take(&mut self.counters));
        Action::Pause
    }

    /// Write back what the stages changed: one call per changed header name, the route-cache
    /// clear once, the counters.
    fn flush(&mut self) {
        // The request side is over once this runs (all stages done, or a reply).
        let mut headers = std::mem::take(&mut self.headers);
        headers.write_back_each(|edit| {
            glue::apply_edits(MapType::HttpRequestHeaders, std::slice::from_ref(&edit));
        });
        headers.reset();
        if headers.room() <= KEPT_HEADER_ROOM {
            self.spares().headers = headers;
        }
        if std::mem::take(&mut self.route_changed) {
            glue::clear_route_cache(CHAIN);
        }
        glue::apply_counters(&std::mem::take(&mut self.counters));
    }

    /// A stage answers locally: what the earlier stages wrote is written first (as separate
    /// filters would have), then the reply.
    fn reply(&mut self, reply: &LocalReply) -> Action {
        self.flush();
        glue::send_reply(reply);
        Action::Pause
    }

    /// The stage that waited for keys goes on (the effective context is this request), then
    /// the rest. `Continue`: resume the request.
    fn resume_woken(&mut self) -> Action {
        self.host = PassHost::default();
        self.waiting_for_keys = false;
        let Some(bound) = self.stages.get_mut(self.next).map(AnyBound::get) else {
            return Action::Continue;
        };
        let (fx, flow) = bound.woken(pass!(self));
        match self.absorb(self.next, fx, flow) {
            Next::Stage => {
                self.next += 1;
                self.advance()
            }
            Next::Reply(reply) => self.reply(&reply),
            Next::Wait => self.wait(),
        }
    }

    /// A gRPC answer; `Continue`: resume the request.
    fn grpc_answer(&mut self, token: u32, status: u32, size: usize) -> Option<Action> {
        self.host = PassHost::default();
        let at = self.pending.iter().position(|(t, ..)| *t == token)?;
        let (_, stage, call) = self.pending.swap_remove(at);
        let body = if status == 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
                .ok()
                .flatten()
        } else {
            None
        };
        let bound = self.stages.get_mut(stage)?.get();
        let (fx, flow) = bound.grpc_answer(call, status, body.as_deref(), pass!(self));
        Some(match self.absorb(stage, fx, flow) {
            Next::Stage => {
                self.next = stage + 1;
                self.advance()
            }
            Next::Reply(reply) => self.reply(&reply),
            Next::Wait => Action::Pause,
        })
    }

    /// The response pass: the edits decided on the request side, then the response side of
    /// every stage that saw the request, last first; the counters after all edits.
    fn respond(&mut self) {
        self.host = PassHost::default();
        glue::apply_edits(
            MapType::HttpResponseHeaders,
            &std::mem::take(&mut self.response),
        );
        let mut counters = std::mem::take(&mut self.counters);
        let seen = self.seen.min(self.stages.len());
        let spare = &mut self.spares.get_or_insert_with(Box::default).fx;
        for bound in self.stages.iter_mut().take(seen).rev() {
            bound.get().response(&mut self.host, &mut counters, spare);
        }
        glue::apply_counters(&counters);
    }

    fn waiting(&self) -> bool {
        self.waiting_for_keys || !self.pending.is_empty()
    }
}

struct ChainStream {
    /// `None`: no good configuration yet (Envoy creates no streams then).
    run: Option<Rc<RefCell<Run>>>,
}

impl ChainStream {
    fn hold_while_waiting(&self) -> Action {
        let waiting = self
            .run
            .as_ref()
            .and_then(|run| run.try_borrow().ok().map(|r| r.waiting()))
            .unwrap_or(false);
        if waiting {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

impl Context for ChainStream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(run) = &self.run else {
            return;
        };
        let Ok(mut run) = run.try_borrow_mut() else {
            return;
        };
        if run.lent(|run| run.grpc_answer(token_id, status_code, response_size))
            == Some(Action::Continue)
        {
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl HttpContext for ChainStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(run) = &self.run else {
            // Cannot happen in Envoy (a rejected configuration creates no streams); fail closed.
            let _ = hostcalls::send_http_response(503, vec![], None);
            return Action::Pause;
        };
        let Ok(mut run) = run.try_borrow_mut() else {
            return Action::Continue;
        };
        run.lent(Run::start)
    }

    // While a stage waits, the body and trailers wait too: in Envoy a `Continue` from a later
    // phase would resume the paused headers before the stage has decided.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_while_waiting()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.hold_while_waiting()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(run) = &self.run
            && let Ok(mut run) = run.try_borrow_mut()
        {
            run.lent(Run::respond);
        }
        Action::Continue
    }
}
