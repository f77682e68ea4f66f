//! One emulated Envoy worker thread: a VM for each plugin of a filter chain, and the HTTP streams
//! running through that chain with Envoy's iteration rules.
//!
//! Request data flows through the filters in chain order, response data in reverse order. A
//! filter that answers `Pause` on headers or trailers holds them (and everything after them)
//! until it calls `continue_stream`; `Pause` on body data buffers it (each later chunk is added
//! and the callback sees the whole buffer). `send_local_response` ends the request side: the
//! reply travels the response path through every filter, as Envoy sends local replies through
//! the encoder chain. Effects a callback asks for are applied after it returns, never re-entering
//! the module from its own host call.
//!
//! As in Envoy (`Context::decodeHeaders` → `onCreate`), a filter's HTTP context is created in its
//! VM (`proxy_on_context_create`) only when the request headers reach that filter. A filter
//! whose context was never created gets no stream callbacks at all — a local reply from an
//! earlier filter passes it by — and at the end of the stream only what Envoy's access-log hook
//! does for it: create the context, `on_log`, `on_delete` (no `on_done`).

use crate::abi::{Action, LogLevel};
use crate::error::HarnessError;
use crate::host::{Host, lock};
use crate::stream::{HeaderMap, LocalResponse, StreamOptions, StreamState, StreamView};
use crate::vm::{
    Access, CallId, CallbackRecord, CallbackResult, ContextSlot, Effect, LogEntry, PendingGrpcCall,
    PendingHttpCall, PluginConfig, Vm,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Names a stream of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

#[derive(Debug)]
enum Frame {
    Headers { eos: bool },
    Data { bytes: Vec<u8>, eos: bool },
    Trailers,
}

#[derive(Debug, Clone, Copy)]
enum Held {
    Headers { eos: bool },
    BodyEnd,
    Trailers,
}

#[derive(Default)]
struct Flow {
    /// Input queue per VM index.
    queues: Vec<VecDeque<Frame>>,
    held: Vec<Option<Held>>,
    halted: bool,
}

impl Flow {
    fn new(n: usize) -> Flow {
        Flow {
            queues: (0..n).map(|_| VecDeque::new()).collect(),
            held: vec![None; n],
            halted: false,
        }
    }
}

struct StreamRun {
    state: Arc<Mutex<StreamState>>,
    /// Context id of this stream in each VM (allocated when the stream opens, as Envoy does).
    contexts: Vec<u32>,
    /// Whether each VM has created its context (`proxy_on_context_create`) yet.
    created: Vec<bool>,
    request: Flow,
    response: Flow,
}

/// An HTTP callout's answer.
#[derive(Debug, Clone, Default)]
pub struct HttpCallResponse {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl HttpCallResponse {
    /// A response with `:status` and a body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> HttpCallResponse {
        HttpCallResponse {
            headers: vec![(":status".to_string(), status.to_string())],
            body: body.into(),
            trailers: Vec::new(),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// What the test answers to a gRPC call or stream. Each part present is delivered in order
/// (initial metadata, messages, trailing metadata); with `close`, `on_grpc_close` follows.
#[derive(Debug, Clone)]
pub struct GrpcResponse {
    pub initial_metadata: Option<Vec<(String, String)>>,
    pub messages: Vec<Vec<u8>>,
    pub trailing_metadata: Option<Vec<(String, String)>>,
    /// gRPC status code and message for `on_grpc_close` (and `get_status`).
    pub status: (u32, String),
    pub close: bool,
}

impl GrpcResponse {
    /// A unary success: one message, status OK, closed.
    pub fn ok(message: impl Into<Vec<u8>>) -> GrpcResponse {
        GrpcResponse {
            initial_metadata: None,
            messages: vec![message.into()],
            trailing_metadata: None,
            status: (0, String::new()),
            close: true,
        }
    }
    /// A failure with a gRPC status code (e.g. 14 UNAVAILABLE), closed.
    pub fn error(code: u32, message: &str) -> GrpcResponse {
        GrpcResponse {
            initial_metadata: None,
            messages: Vec::new(),
            trailing_metadata: None,
            status: (code, message.to_string()),
            close: true,
        }
    }
}

/// Status code proxy-wasm-cpp-host reports through `get_status` for a failed HTTP callout.
pub const BROKEN_CONNECTION: u32 = 11;

/// A worker thread: the chain's VMs and its streams. `Send`, so tests can run several workers
/// of one [`Host`] on threads at once.
pub struct Worker {
    host: Host,
    vms: Vec<Vm>,
    streams: HashMap<StreamId, StreamRun>,
    finished: HashMap<StreamId, StreamView>,
    history: Vec<CallbackRecord>,
    effects: VecDeque<(usize, Effect)>,
    next_stream: u32,
}

fn to_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap::from_pairs(pairs)
}

fn owned_pairs(pairs: &[(String, String)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

impl Worker {
    /// Starts one VM per plugin (chain order = slice order), running `on_vm_start` and
    /// `on_configure` for each.
    pub fn new(host: &Host, chain: &[PluginConfig]) -> Result<Worker, HarnessError> {
        let mut history = Vec::new();
        let mut vms = Vec::with_capacity(chain.len());
        for (i, plugin) in chain.iter().enumerate() {
            vms.push(Vm::start(host, plugin, i, &mut history)?);
        }
        let mut w = Worker {
            host: host.clone(),
            vms,
            streams: HashMap::new(),
            finished: HashMap::new(),
            history,
            effects: VecDeque::new(),
            next_stream: 0,
        };
        w.settle()?;
        Ok(w)
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Every callback made so far, in order, with its result and fuel.
    pub fn history(&self) -> &[CallbackRecord] {
        &self.history
    }

    /// Forgets the callback history (e.g. after warm-up, before measuring fuel).
    pub fn clear_history(&mut self) {
        self.history.clear();
    }

    /// Log lines of every VM of this worker, in the order each VM wrote them (VM by VM).
    pub fn logs(&self) -> Vec<LogEntry> {
        self.vms
            .iter()
            .flat_map(|vm| vm.state().logs.iter().cloned())
            .collect()
    }

    /// Whether any log line at `level` or above contains `needle`.
    pub fn logged(&self, level: LogLevel, needle: &str) -> bool {
        self.vms
            .iter()
            .flat_map(|vm| vm.state().logs.iter())
            .any(|l| l.level >= level && l.message.contains(needle))
    }

    /// How often the VM at `vm` called `proxy_done`.
    pub fn done_calls(&self, vm: usize) -> usize {
        self.vms.get(vm).map_or(0, |v| v.state().done_calls)
    }

    /// The tick period the VM at `vm` set (0 = none).
    pub fn tick_period(&self, vm: usize) -> Duration {
        Duration::from_millis(self.vms.get(vm).map_or(0, |v| v.state().tick_period_ms) as u64)
    }

    /// Opens a stream with default connection facts.
    pub fn open_stream(&mut self) -> Result<StreamId, HarnessError> {
        self.open_stream_with(StreamOptions::default())
    }

    /// Opens a stream. Each VM creates its HTTP context when the request headers reach its
    /// filter (see the [module docs](self)).
    pub fn open_stream_with(&mut self, options: StreamOptions) -> Result<StreamId, HarnessError> {
        // A VM that trapped takes no more streams (Envoy's failure_policy decides what the
        // client gets; the harness reports it here, before any callback).
        if let Some(vm) = self.vms.iter().find(|vm| vm.failed) {
            return Err(HarnessError::VmFailed {
                plugin: vm.name.clone(),
            });
        }
        let state = Arc::new(Mutex::new(StreamState {
            options: Some(options),
            ..Default::default()
        }));
        let mut contexts = Vec::with_capacity(self.vms.len());
        for i in 0..self.vms.len() {
            let vm = &mut self.vms[i];
            let ctx = vm.new_context_id();
            vm.state_mut().contexts.insert(
                ctx,
                ContextSlot {
                    stream: state.clone(),
                    access: Access::default(),
                    request_body: Vec::new(),
                    response_body: Vec::new(),
                },
            );
            contexts.push(ctx);
        }
        self.next_stream += 1;
        let id = StreamId(self.next_stream);
        let n = self.vms.len();
        self.streams.insert(
            id,
            StreamRun {
                state,
                contexts,
                created: vec![false; n],
                request: Flow::new(n),
                response: Flow::new(n),
            },
        );
        Ok(id)
    }

    fn run_mut(&mut self, id: StreamId) -> Result<&mut StreamRun, HarnessError> {
        self.streams
            .get_mut(&id)
            .ok_or_else(|| HarnessError::Usage(format!("no open stream {id:?}")))
    }

    /// Request headers from the client. Lowercased as Envoy does.
    pub fn send_request_headers(
        &mut self,
        id: StreamId,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<(), HarnessError> {
        self.send_request_headers_map(id, to_map(headers), end_of_stream)
    }

    /// Request headers as a [`HeaderMap`] (for non-UTF-8 values).
    pub fn send_request_headers_map(
        &mut self,
        id: StreamId,
        headers: HeaderMap,
        end_of_stream: bool,
    ) -> Result<(), HarnessError> {
        let run = self.run_mut(id)?;
        {
            let mut st = lock(&run.state);
            st.head_request = headers
                .get(":method")
                .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"));
            st.request_headers = headers;
        }
        run.request.queues[0].push_back(Frame::Headers { eos: end_of_stream });
        self.settle()
    }

    pub fn send_request_body(
        &mut self,
        id: StreamId,
        body: &[u8],
        end_of_stream: bool,
    ) -> Result<(), HarnessError> {
        let run = self.run_mut(id)?;
        run.request.queues[0].push_back(Frame::Data {
            bytes: body.to_vec(),
            eos: end_of_stream,
        });
        self.settle()
    }

    pub fn send_request_trailers(
        &mut self,
        id: StreamId,
        trailers: &[(&str, &str)],
    ) -> Result<(), HarnessError> {
        let run = self.run_mut(id)?;
        lock(&run.state).request_trailers = to_map(trailers);
        run.request.queues[0].push_back(Frame::Trailers);
        self.settle()
    }

    /// Response headers from the upstream (they enter at the last filter of the chain).
    pub fn send_response_headers(
        &mut self,
        id: StreamId,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<(), HarnessError> {
        let last = self.vms.len().saturating_sub(1);
        let run = self.run_mut(id)?;
        if run.response.halted {
            return Err(HarnessError::Usage(
                "the response of this stream has ended (local reply or reset)".into(),
            ));
        }
        lock(&run.state).response_headers = to_map(headers);
        run.response.queues[last].push_back(Frame::Headers { eos: end_of_stream });
        self.settle()
    }

    pub fn send_response_body(
        &mut self,
        id: StreamId,
        body: &[u8],
        end_of_stream: bool,
    ) -> Result<(), HarnessError> {
        let last = self.vms.len().saturating_sub(1);
        let run = self.run_mut(id)?;
        run.response.queues[last].push_back(Frame::Data {
            bytes: body.to_vec(),
            eos: end_of_stream,
        });
        self.settle()
    }

    pub fn send_response_trailers(
        &mut self,
        id: StreamId,
        trailers: &[(&str, &str)],
    ) -> Result<(), HarnessError> {
        let last = self.vms.len().saturating_sub(1);
        let run = self.run_mut(id)?;
        lock(&run.state).response_trailers = to_map(trailers);
        run.response.queues[last].push_back(Frame::Trailers);
        self.settle()
    }

    /// Ends the stream as Envoy does when it is destroyed: `on_done`, `on_log` (every map
    /// readable), `on_delete` in each VM. The stream's view stays readable.
    pub fn complete(&mut self, id: StreamId) -> Result<StreamView, HarnessError> {
        let run = self
            .streams
            .remove(&id)
            .ok_or_else(|| HarnessError::Usage(format!("no open stream {id:?}")))?;
        let mut first_err = None;
        for (i, ctx) in run.contexts.iter().enumerate() {
            let vm = &mut self.vms[i];
            if let Some(slot) = vm.state_mut().contexts.get_mut(ctx) {
                slot.access = Access {
                    log: true,
                    ..Access::default()
                };
            }
            // Envoy: `onDestroy` → on_done only for a created context; the access-log hook
            // creates a missing one (`Context::log` → `onCreate`) before on_log; on_delete.
            let created = run.created.get(i).copied().unwrap_or(false);
            let result = if created {
                ["proxy_on_done", "proxy_on_log", "proxy_on_delete"]
                    .iter()
                    .try_for_each(|cb| vm.call(cb, &[*ctx as i32], &mut self.history).map(drop))
            } else {
                let root = vm.state().root_context_id;
                vm.call(
                    "proxy_on_context_create",
                    &[*ctx as i32, root as i32],
                    &mut self.history,
                )
                .and_then(|_| {
                    ["proxy_on_log", "proxy_on_delete"]
                        .iter()
                        .try_for_each(|cb| vm.call(cb, &[*ctx as i32], &mut self.history).map(drop))
                })
            };
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
            vm.state_mut().contexts.remove(ctx);
        }
        let view = Self::snapshot(&run.state);
        self.finished.insert(id, view.clone());
        match first_err {
            Some(e) => Err(e),
            None => Ok(view),
        }
    }

    fn snapshot(state: &Arc<Mutex<StreamState>>) -> StreamView {
        let st = lock(state);
        let mut view = st.view.clone();
        view.route_cache_clears = st.route_cache_clears;
        let mut fs: Vec<(String, Vec<u8>)> = st
            .filter_state
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
            .collect();
        fs.sort();
        view.filter_state = fs;
        view
    }

    /// What the upstream and the client have seen of a stream so far (open or completed).
    pub fn stream(&self, id: StreamId) -> Result<StreamView, HarnessError> {
        if let Some(run) = self.streams.get(&id) {
            return Ok(Self::snapshot(&run.state));
        }
        self.finished
            .get(&id)
            .cloned()
            .ok_or_else(|| HarnessError::Usage(format!("no stream {id:?}")))
    }

    /// Whether the request is held by a filter (paused and not continued).
    pub fn request_paused(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|r| r.request.held.iter().any(Option::is_some))
    }

    /// Whether the response is held by a filter.
    pub fn response_paused(&self, id: StreamId) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|r| r.response.held.iter().any(Option::is_some))
    }

    /// One whole exchange: request headers (and body), then — if the request reached the
    /// upstream — the upstream's response, then completion. Returns the stream's view.
    pub fn exchange(
        &mut self,
        request: &[(&str, &str)],
        request_body: Option<&[u8]>,
        response: &[(&str, &str)],
        response_body: Option<&[u8]>,
    ) -> Result<StreamView, HarnessError> {
        let id = self.open_stream()?;
        self.send_request_headers(id, request, request_body.is_none())?;
        if let Some(b) = request_body {
            self.send_request_body(id, b, true)?;
        }
        let view = self.stream(id)?;
        if view.local_response.is_none() && !view.reset && view.upstream_request_complete {
            self.send_response_headers(id, response, response_body.is_none())?;
            if let Some(b) = response_body {
                self.send_response_body(id, b, true)?;
            }
        }
        self.complete(id)
    }

    // ---- callouts --------------------------------------------------------------------------

    /// HTTP callouts made by this worker's VMs and not answered yet.
    pub fn pending_http_calls(&self) -> Vec<PendingHttpCall> {
        self.vms
            .iter()
            .flat_map(|vm| vm.state().http_calls.values().cloned())
            .collect()
    }

    /// gRPC calls and streams not closed yet.
    pub fn pending_grpc_calls(&self) -> Vec<PendingGrpcCall> {
        self.vms
            .iter()
            .flat_map(|vm| vm.state().grpc_calls.values().cloned())
            .collect()
    }

    fn take_http_call(&mut self, id: CallId) -> Result<(), HarnessError> {
        let vm = self
            .vms
            .get_mut(id.vm)
            .ok_or_else(|| HarnessError::Usage(format!("no VM {}", id.vm)))?;
        vm.state_mut()
            .http_calls
            .remove(&id.token)
            .map(|_| ())
            .ok_or_else(|| HarnessError::Usage(format!("no pending HTTP call {id:?}")))
    }

    /// Answers an HTTP callout: `on_http_call_response` runs on the root context (the SDK
    /// routes it to the context that made the call).
    pub fn respond_http_call(
        &mut self,
        id: CallId,
        response: HttpCallResponse,
    ) -> Result<(), HarnessError> {
        self.take_http_call(id)?;
        let headers = owned_pairs(&response.headers);
        let trailers = owned_pairs(&response.trailers);
        let (nh, nb, nt) = (headers.len(), response.body.len(), trailers.len());
        self.deliver_http_call(
            id,
            crate::vm::CalloutResponse {
                headers,
                body: response.body,
                trailers,
            },
            (0, Vec::new()),
            nh,
            nb,
            nt,
        )
    }

    /// Fails an HTTP callout as Envoy does on a connection failure: 0 headers, and `get_status`
    /// answers BrokenConnection with "reset".
    pub fn fail_http_call(&mut self, id: CallId) -> Result<(), HarnessError> {
        self.take_http_call(id)?;
        self.deliver_http_call(
            id,
            Default::default(),
            (BROKEN_CONNECTION, b"reset".to_vec()),
            0,
            0,
            0,
        )
    }

    fn deliver_http_call(
        &mut self,
        id: CallId,
        response: crate::vm::CalloutResponse,
        status: (u32, Vec<u8>),
        nh: usize,
        nb: usize,
        nt: usize,
    ) -> Result<(), HarnessError> {
        let vm = &mut self.vms[id.vm];
        let root = vm.state().root_context_id;
        vm.state_mut().callout_response = Some(response);
        vm.state_mut().status = status;
        let r = vm.call(
            "proxy_on_http_call_response",
            &[
                root as i32,
                id.token as i32,
                nh as i32,
                nb as i32,
                nt as i32,
            ],
            &mut self.history,
        );
        vm.state_mut().callout_response = None;
        vm.state_mut().status = (0, Vec::new());
        self.collect_effects(id.vm);
        r?;
        self.settle()
    }

    /// Answers a gRPC call or stream.
    pub fn respond_grpc_call(
        &mut self,
        id: CallId,
        response: GrpcResponse,
    ) -> Result<(), HarnessError> {
        let vm = self
            .vms
            .get_mut(id.vm)
            .ok_or_else(|| HarnessError::Usage(format!("no VM {}", id.vm)))?;
        if !vm.state().grpc_calls.contains_key(&id.token) {
            return Err(HarnessError::Usage(format!("no pending gRPC call {id:?}")));
        }
        if response.close {
            vm.state_mut().grpc_calls.remove(&id.token);
        }
        let root = vm.state().root_context_id as i32;
        let token = id.token as i32;
        let mut result = Ok(());
        if let Some(md) = &response.initial_metadata {
            let pairs = owned_pairs(md);
            let n = pairs.len() as i32;
            vm.state_mut().callout_response = Some(crate::vm::CalloutResponse {
                headers: pairs,
                ..Default::default()
            });
            result = vm
                .call(
                    "proxy_on_grpc_receive_initial_metadata",
                    &[root, token, n],
                    &mut self.history,
                )
                .map(|_| ());
            vm.state_mut().callout_response = None;
        }
        for m in &response.messages {
            if result.is_err() {
                break;
            }
            vm.state_mut().grpc_message = Some(m.clone());
            result = vm
                .call(
                    "proxy_on_grpc_receive",
                    &[root, token, m.len() as i32],
                    &mut self.history,
                )
                .map(|_| ());
            vm.state_mut().grpc_message = None;
        }
        if let (Some(md), true) = (&response.trailing_metadata, result.is_ok()) {
            let pairs = owned_pairs(md);
            let n = pairs.len() as i32;
            vm.state_mut().callout_response = Some(crate::vm::CalloutResponse {
                trailers: pairs,
                ..Default::default()
            });
            result = vm
                .call(
                    "proxy_on_grpc_receive_trailing_metadata",
                    &[root, token, n],
                    &mut self.history,
                )
                .map(|_| ());
            vm.state_mut().callout_response = None;
        }
        if response.close && result.is_ok() {
            vm.state_mut().status = (response.status.0, response.status.1.clone().into_bytes());
            result = vm
                .call(
                    "proxy_on_grpc_close",
                    &[root, token, response.status.0 as i32],
                    &mut self.history,
                )
                .map(|_| ());
            vm.state_mut().status = (0, Vec::new());
        }
        self.collect_effects(id.vm);
        result?;
        self.settle()
    }

    // ---- time ------------------------------------------------------------------------------

    /// Advances the shared clock and runs what became due on this worker: ticks (`on_tick`,
    /// once per elapsed period check) and callout timeouts (Envoy's router answers a timed-out
    /// callout with a 504).
    pub fn advance(&mut self, by: Duration) -> Result<(), HarnessError> {
        self.host.advance_clock(by);
        self.run_due()
    }

    /// Runs ticks and timeouts that are due at the current time (another worker may have moved
    /// the clock), and delivers queue notifications.
    pub fn run_due(&mut self) -> Result<(), HarnessError> {
        let now = self.host.now_ns();
        for i in 0..self.vms.len() {
            let (period, next, root) = {
                let s = self.vms[i].state();
                (s.tick_period_ms, s.next_tick_ns, s.root_context_id)
            };
            if period > 0 && now >= next {
                self.vms[i].state_mut().next_tick_ns = now + period as u64 * 1_000_000;
                let r = self.vms[i].call("proxy_on_tick", &[root as i32], &mut self.history);
                self.collect_effects(i);
                r?;
            }
            let due: Vec<CallId> = self.vms[i]
                .state()
                .http_calls
                .values()
                .filter(|c| c.deadline_ns.is_some_and(|d| now >= d))
                .map(|c| c.id)
                .collect();
            for id in due {
                let resp = HttpCallResponse::new(504, "upstream request timeout")
                    .header("content-type", "text/plain");
                self.respond_http_call(id, resp)?;
            }
        }
        self.settle()
    }

    // ---- the engine ------------------------------------------------------------------------

    fn collect_effects(&mut self, vm: usize) {
        let effects = std::mem::take(&mut self.vms[vm].state_mut().effects);
        self.effects.extend(effects.into_iter().map(|e| (vm, e)));
    }

    /// Runs until nothing is left to do: effects applied, queued frames delivered, queue
    /// notifications handed to their VMs.
    fn settle(&mut self) -> Result<(), HarnessError> {
        loop {
            self.apply_effects()?;
            let ids: Vec<StreamId> = self.streams.keys().copied().collect();
            let mut progressed = false;
            for id in ids {
                progressed |= self.pump(id, Dir::Request)?;
                progressed |= self.pump(id, Dir::Response)?;
            }
            progressed |= self.deliver_queue_ready()?;
            if !progressed && self.effects.is_empty() {
                return Ok(());
            }
        }
    }

    fn deliver_queue_ready(&mut self) -> Result<bool, HarnessError> {
        let mut delivered = false;
        for i in 0..self.vms.len() {
            let key = self.vms[i].state().vm_key;
            let ready = lock(&self.host.shared.queues)
                .ready
                .remove(&key)
                .unwrap_or_default();
            for (root, queue) in ready {
                delivered = true;
                let r = self.vms[i].call(
                    "proxy_on_queue_ready",
                    &[root as i32, queue as i32],
                    &mut self.history,
                );
                self.collect_effects(i);
                r?;
            }
        }
        Ok(delivered)
    }

    fn order(&self, dir: Dir) -> Vec<usize> {
        let n = self.vms.len();
        match dir {
            Dir::Request => (0..n).collect(),
            Dir::Response => (0..n).rev().collect(),
        }
    }

    fn flow(run: &mut StreamRun, dir: Dir) -> &mut Flow {
        match dir {
            Dir::Request => &mut run.request,
            Dir::Response => &mut run.response,
        }
    }

    /// Delivers queued frames in chain order. Returns whether anything moved.
    fn pump(&mut self, id: StreamId, dir: Dir) -> Result<bool, HarnessError> {
        let mut moved = false;
        for (pos, vm) in self.order(dir).into_iter().enumerate() {
            loop {
                let Some(run) = self.streams.get_mut(&id) else {
                    return Ok(moved);
                };
                let flow = Self::flow(run, dir);
                if flow.halted || flow.held[vm].is_some() {
                    break;
                }
                let Some(frame) = flow.queues[vm].pop_front() else {
                    break;
                };
                moved = true;
                self.deliver(id, dir, pos, vm, frame)?;
                self.apply_effects()?;
            }
        }
        Ok(moved)
    }

    /// Hands a frame that left filter `vm` to the next filter, or to the upstream / client.
    fn forward(&mut self, id: StreamId, dir: Dir, pos: usize, frame: Frame) {
        let order = self.order(dir);
        let Some(run) = self.streams.get_mut(&id) else {
            return;
        };
        if let Some(&next) = order.get(pos + 1) {
            Self::flow(run, dir).queues[next].push_back(frame);
            return;
        }
        let mut st = lock(&run.state);
        let st = &mut *st;
        match (dir, frame) {
            (Dir::Request, Frame::Headers { eos }) => {
                st.view.upstream_request_headers = Some(st.request_headers.clone());
                st.view.upstream_request_complete |= eos;
            }
            (Dir::Request, Frame::Data { bytes, eos }) => {
                st.view.upstream_request_body.extend(bytes);
                st.view.upstream_request_complete |= eos;
            }
            (Dir::Request, Frame::Trailers) => {
                st.view.upstream_request_trailers = Some(st.request_trailers.clone());
                st.view.upstream_request_complete = true;
            }
            (Dir::Response, Frame::Headers { eos }) => {
                st.view.client_response_headers = Some(st.response_headers.clone());
                st.view.client_response_complete |= eos;
            }
            (Dir::Response, Frame::Data { bytes, eos }) => {
                st.view.client_response_body.extend(bytes);
                st.view.client_response_complete |= eos;
            }
            (Dir::Response, Frame::Trailers) => {
                st.view.client_response_trailers = Some(st.response_trailers.clone());
                st.view.client_response_complete = true;
            }
        }
    }

    fn slot_mut(&mut self, id: StreamId, vm: usize) -> Option<&mut ContextSlot> {
        let ctx = *self.streams.get(&id)?.contexts.get(vm)?;
        self.vms[vm].state_mut().contexts.get_mut(&ctx)
    }

    fn set_access(&mut self, id: StreamId, vm: usize, f: impl FnOnce(&mut Access)) {
        if let Some(slot) = self.slot_mut(id, vm) {
            f(&mut slot.access);
        }
    }

    fn take_body(&mut self, id: StreamId, vm: usize, dir: Dir) -> Vec<u8> {
        self.slot_mut(id, vm).map_or_else(Vec::new, |s| match dir {
            Dir::Request => std::mem::take(&mut s.request_body),
            Dir::Response => std::mem::take(&mut s.response_body),
        })
    }

    fn deliver(
        &mut self,
        id: StreamId,
        dir: Dir,
        pos: usize,
        vm: usize,
        frame: Frame,
    ) -> Result<(), HarnessError> {
        let Some(run) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let ctx = run.contexts[vm] as i32;
        let state = run.state.clone();
        let req = dir == Dir::Request;
        if !run.created[vm] {
            if req && matches!(frame, Frame::Headers { .. }) {
                run.created[vm] = true;
                let root = self.vms[vm].state().root_context_id;
                self.vms[vm].call(
                    "proxy_on_context_create",
                    &[ctx, root as i32],
                    &mut self.history,
                )?;
            } else {
                // No context in the VM: Envoy skips the filter (every callback returns Continue).
                if let Frame::Trailers = frame {
                    self.flush_buffered_body(id, dir, pos, vm);
                }
                self.forward(id, dir, pos, frame);
                return Ok(());
            }
        }
        let result = match &frame {
            Frame::Headers { eos } => {
                self.set_access(id, vm, |a| {
                    if req {
                        a.request_headers = true
                    } else {
                        a.response_headers = true
                    }
                });
                let n = {
                    let st = lock(&state);
                    if req {
                        st.request_headers.len()
                    } else {
                        st.response_headers.len()
                    }
                };
                let cb = if req {
                    "proxy_on_request_headers"
                } else {
                    "proxy_on_response_headers"
                };
                self.vms[vm].call(cb, &[ctx, n as i32, *eos as i32], &mut self.history)
            }
            Frame::Data { bytes, eos } => {
                let size = match self.slot_mut(id, vm) {
                    Some(slot) => {
                        let buf = if req {
                            &mut slot.request_body
                        } else {
                            &mut slot.response_body
                        };
                        buf.extend_from_slice(bytes);
                        if req {
                            slot.access.request_body = true
                        } else {
                            slot.access.response_body = true
                        }
                        buf.len()
                    }
                    None => 0,
                };
                let cb = if req {
                    "proxy_on_request_body"
                } else {
                    "proxy_on_response_body"
                };
                self.vms[vm].call(cb, &[ctx, size as i32, *eos as i32], &mut self.history)
            }
            Frame::Trailers => {
                self.set_access(id, vm, |a| {
                    if req {
                        a.request_trailers = true
                    } else {
                        a.response_trailers = true
                    }
                });
                let n = {
                    let st = lock(&state);
                    if req {
                        st.request_trailers.len()
                    } else {
                        st.response_trailers.len()
                    }
                };
                let cb = if req {
                    "proxy_on_request_trailers"
                } else {
                    "proxy_on_response_trailers"
                };
                self.vms[vm].call(cb, &[ctx, n as i32], &mut self.history)
            }
        };
        self.collect_effects(vm);
        let result = result?;
        // A local reply or reset sent from this callback overrides its answer.
        if self.streams.get(&id).is_some_and(|r| Self::flow_ref(r, dir).halted)
            || self.effects.iter().any(|(v, e)| *v == vm && matches!(e, Effect::LocalResponse(c, _) | Effect::ResetStream(c) if *c as i32 == ctx))
        {
            return Ok(());
        }
        let action = match result {
            CallbackResult::Action(a) => a,
            _ => Action::Continue, // not exported: Envoy continues
        };
        match (frame, action) {
            (Frame::Headers { eos }, Action::Continue) => {
                self.set_access(id, vm, |a| {
                    if req {
                        a.request_headers = false
                    } else {
                        a.response_headers = false
                    }
                });
                self.forward(id, dir, pos, Frame::Headers { eos });
            }
            (Frame::Headers { eos }, Action::Pause) => {
                self.hold(id, dir, vm, Held::Headers { eos })
            }
            (Frame::Data { eos, .. }, Action::Continue) => {
                let bytes = self.take_body(id, vm, dir);
                self.set_access(id, vm, |a| {
                    if req {
                        a.request_body = false
                    } else {
                        a.response_body = false
                    }
                });
                self.forward(id, dir, pos, Frame::Data { bytes, eos });
            }
            (Frame::Data { eos, .. }, Action::Pause) => {
                if eos {
                    self.hold(id, dir, vm, Held::BodyEnd);
                } else {
                    // StopIterationAndBuffer: keep the bytes; the next chunk is appended.
                    self.set_access(id, vm, |a| {
                        if req {
                            a.request_body = false
                        } else {
                            a.response_body = false
                        }
                    });
                }
            }
            (Frame::Trailers, Action::Continue) => {
                self.set_access(id, vm, |a| {
                    if req {
                        a.request_trailers = false
                    } else {
                        a.response_trailers = false
                    }
                });
                self.flush_buffered_body(id, dir, pos, vm);
                self.forward(id, dir, pos, Frame::Trailers);
            }
            (Frame::Trailers, Action::Pause) => self.hold(id, dir, vm, Held::Trailers),
        }
        Ok(())
    }

    fn flow_ref(run: &StreamRun, dir: Dir) -> &Flow {
        match dir {
            Dir::Request => &run.request,
            Dir::Response => &run.response,
        }
    }

    fn hold(&mut self, id: StreamId, dir: Dir, vm: usize, held: Held) {
        if let Some(run) = self.streams.get_mut(&id) {
            Self::flow(run, dir).held[vm] = Some(held);
        }
    }

    fn flush_buffered_body(&mut self, id: StreamId, dir: Dir, pos: usize, vm: usize) {
        let bytes = self.take_body(id, vm, dir);
        if !bytes.is_empty() {
            self.forward(id, dir, pos, Frame::Data { bytes, eos: false });
        }
    }

    fn find_stream(&self, vm: usize, ctx: u32) -> Option<StreamId> {
        self.streams
            .iter()
            .find(|(_, r)| r.contexts.get(vm) == Some(&ctx))
            .map(|(id, _)| *id)
    }

    fn apply_effects(&mut self) -> Result<(), HarnessError> {
        while let Some((vm, effect)) = self.effects.pop_front() {
            match effect {
                Effect::LocalResponse(ctx, reply) => {
                    if let Some(id) = self.find_stream(vm, ctx) {
                        self.local_reply(id, vm, reply)?;
                    }
                }
                Effect::ContinueRequest(ctx) => self.resume(vm, ctx, Dir::Request),
                Effect::ContinueResponse(ctx) => self.resume(vm, ctx, Dir::Response),
                Effect::ResetStream(ctx) => {
                    if let Some(run) = self
                        .find_stream(vm, ctx)
                        .and_then(|id| self.streams.get_mut(&id))
                    {
                        run.request = Flow {
                            halted: true,
                            ..Flow::new(0)
                        };
                        run.response = Flow {
                            halted: true,
                            ..Flow::new(0)
                        };
                        lock(&run.state).view.reset = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn resume(&mut self, vm: usize, ctx: u32, dir: Dir) {
        let Some(id) = self.find_stream(vm, ctx) else {
            return;
        };
        let pos = self.order(dir).iter().position(|v| *v == vm).unwrap_or(0);
        let req = dir == Dir::Request;
        let held = self.streams.get_mut(&id).and_then(|r| {
            let f = Self::flow(r, dir);
            if f.halted {
                None
            } else {
                f.held.get_mut(vm).and_then(Option::take)
            }
        });
        match held {
            Some(Held::Headers { eos }) => {
                self.set_access(id, vm, |a| {
                    if req {
                        a.request_headers = false
                    } else {
                        a.response_headers = false
                    }
                });
                self.forward(id, dir, pos, Frame::Headers { eos });
            }
            Some(Held::BodyEnd) => {
                let bytes = self.take_body(id, vm, dir);
                self.set_access(id, vm, |a| {
                    if req {
                        a.request_body = false
                    } else {
                        a.response_body = false
                    }
                });
                self.forward(id, dir, pos, Frame::Data { bytes, eos: true });
            }
            Some(Held::Trailers) => {
                self.set_access(id, vm, |a| {
                    if req {
                        a.request_trailers = false
                    } else {
                        a.response_trailers = false
                    }
                });
                self.flush_buffered_body(id, dir, pos, vm);
                self.forward(id, dir, pos, Frame::Trailers);
            }
            None => self.flush_buffered_body(id, dir, pos, vm),
        }
    }

    /// A local reply: the request side stops; the reply's headers and body travel the response
    /// path through every filter (Envoy's encoder chain). Sent during the response, it goes to
    /// the client directly.
    fn local_reply(
        &mut self,
        id: StreamId,
        vm: usize,
        mut reply: LocalResponse,
    ) -> Result<(), HarnessError> {
        reply.sent_by = vm;
        let n = self.vms.len();
        let Some(run) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let in_response = run.response.queues.iter().any(|q| !q.is_empty())
            || run.response.held.iter().any(Option::is_some)
            || lock(&run.state).view.client_response_headers.is_some()
            || self.vms[vm]
                .state()
                .contexts
                .get(&run.contexts[vm])
                .is_some_and(|s| {
                    s.access.response_headers
                        || s.access.response_body
                        || s.access.response_trailers
                });
        let mut headers = HeaderMap::new();
        headers.add(b":status", reply.status.to_string().as_bytes());
        for (k, v) in reply.headers.pairs() {
            headers.add(k, v);
        }
        if !reply.body.is_empty() && !headers.contains("content-type") {
            headers.add(b"content-type", b"text/plain");
        }
        headers.replace(b"content-length", reply.body.len().to_string().as_bytes());
        // Envoy answers HEAD with the reply's headers (content-length included) and no body.
        let body = if lock(&run.state).head_request {
            Vec::new()
        } else {
            reply.body.clone()
        };
        run.request = Flow {
            halted: true,
            ..Flow::new(n)
        };
        {
            let mut st = lock(&run.state);
            st.view.local_response = Some(reply);
            st.response_headers = headers.clone();
            if in_response {
                st.view.client_response_headers = Some(headers);
                st.view.client_response_body = body.clone();
                st.view.client_response_complete = true;
            }
        }
        if in_response {
            run.response = Flow {
                halted: true,
                ..Flow::new(n)
            };
        } else {
            run.response = Flow::new(n);
            let last = n.saturating_sub(1);
            run.response.queues[last].push_back(Frame::Headers {
                eos: body.is_empty(),
            });
            if !body.is_empty() {
                run.response.queues[last].push_back(Frame::Data {
                    bytes: body,
                    eos: true,
                });
            }
        }
        Ok(())
    }
}
