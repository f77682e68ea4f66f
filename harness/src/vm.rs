//! One VM: a wasmtime store + instance of a plugin's module, as Envoy keeps one per worker thread.
//! [`VmState`] is what the host functions see; [`Vm`] calls the module's exports, meters fuel and
//! turns traps into [`HarnessError::Trap`].

use crate::abi::{Action, LogLevel};
use crate::error::HarnessError;
use crate::host::{Host, HostShared};
use crate::module::Module;
use crate::stream::{HeaderMap, LocalResponse, StreamState};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::{Instance, Store, TypedFunc, Val};

/// A log line a module wrote (`proxy_log`, or WASI stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub plugin: String,
    pub level: LogLevel,
    pub message: String,
}

/// How a plugin is configured, as in Envoy's `envoy.extensions.wasm.v3.PluginConfig`.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub module: Module,
    /// `name` (the `plugin_name` property).
    pub name: String,
    /// `root_id` (the `plugin_root_id` property).
    pub root_id: String,
    /// `vm_config.vm_id`: the shared-data and queue namespace. Istio sets none ("").
    pub vm_id: String,
    /// `configuration`: the bytes `on_configure` reads (JSON for our filters).
    pub configuration: Vec<u8>,
    /// `vm_config.configuration`: the bytes `on_vm_start` reads.
    pub vm_configuration: Vec<u8>,
    /// `vm_config.environment_variables` (WASI environ).
    pub env: Vec<(String, String)>,
    /// What `proxy_get_log_level` answers.
    pub log_level: LogLevel,
}

impl PluginConfig {
    pub fn new(module: &Module) -> PluginConfig {
        PluginConfig {
            module: module.clone(),
            name: module.name().to_string(),
            root_id: String::new(),
            vm_id: String::new(),
            configuration: Vec::new(),
            vm_configuration: Vec::new(),
            env: Vec::new(),
            log_level: LogLevel::Trace,
        }
    }
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
    pub fn root_id(mut self, root_id: &str) -> Self {
        self.root_id = root_id.to_string();
        self
    }
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.to_string();
        self
    }
    pub fn configuration(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.configuration = bytes.into();
        self
    }
    pub fn vm_configuration(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.vm_configuration = bytes.into();
        self
    }
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }
}

/// Which of a context's maps and buffers Envoy would hand out right now.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Access {
    pub(crate) request_headers: bool,
    pub(crate) request_body: bool,
    pub(crate) request_trailers: bool,
    pub(crate) response_headers: bool,
    pub(crate) response_body: bool,
    pub(crate) response_trailers: bool,
    /// In `on_log` every map is readable (not writable).
    pub(crate) log: bool,
}

/// An HTTP context of this VM, bound to a stream and a place in the filter chain.
pub(crate) struct ContextSlot {
    pub(crate) stream: Arc<Mutex<StreamState>>,
    pub(crate) access: Access,
    /// The body bytes this filter holds (buffered while it pauses), per direction.
    pub(crate) request_body: Vec<u8>,
    pub(crate) response_body: Vec<u8>,
}

/// Something a callback asked for that the worker carries out after the callback returns
/// (Envoy defers these too: a module is never re-entered from its own host call).
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    LocalResponse(u32, LocalResponse),
    ContinueRequest(u32),
    ContinueResponse(u32),
    ResetStream(u32),
}

/// An HTTP callout the module made and the test has not answered yet.
#[derive(Debug, Clone)]
pub struct PendingHttpCall {
    pub id: CallId,
    pub upstream: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    pub timeout: Duration,
    /// Virtual time (ns) at which Envoy would time the call out; `None` for timeout 0.
    pub(crate) deadline_ns: Option<u64>,
}

/// A gRPC call or stream the module opened.
#[derive(Debug, Clone)]
pub struct PendingGrpcCall {
    pub id: CallId,
    pub upstream: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: HeaderMap,
    /// The request message (unary), or every message sent so far (stream).
    pub messages: Vec<Vec<u8>>,
    pub timeout: Duration,
    pub streaming: bool,
    /// The module called `grpc_send` with end_of_stream, or `grpc_close`.
    pub half_closed: bool,
    pub cancelled: bool,
}

/// Names a callout: the VM (index in the worker's chain) and the token the host gave the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId {
    pub vm: usize,
    pub token: u32,
}

/// The response buffers a callout callback may read.
#[derive(Debug, Default)]
pub(crate) struct CalloutResponse {
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The state host functions see through `Caller<VmState>`.
pub struct VmState {
    pub(crate) host: Option<Host>,
    pub(crate) vm_key: u64,
    pub(crate) vm_index: usize,
    pub(crate) plugin: Option<PluginConfig>,
    pub(crate) root_context_id: u32,
    pub(crate) effective_context: u32,
    pub(crate) contexts: HashMap<u32, ContextSlot>,
    pub(crate) logs: Vec<LogEntry>,
    pub(crate) tick_period_ms: u32,
    pub(crate) next_tick_ns: u64,
    pub(crate) next_token: u32,
    pub(crate) http_calls: BTreeMap<u32, PendingHttpCall>,
    pub(crate) grpc_calls: BTreeMap<u32, PendingGrpcCall>,
    pub(crate) callout_response: Option<CalloutResponse>,
    pub(crate) grpc_message: Option<Vec<u8>>,
    pub(crate) status: (u32, Vec<u8>),
    pub(crate) metric_ids: HashMap<u32, (crate::abi::MetricType, String)>,
    pub(crate) next_metric_id: u32,
    pub(crate) effects: Vec<Effect>,
    pub(crate) done_calls: usize,
    pub(crate) exit_code: Option<i32>,
    /// A fault the host found (bad memory, malformed map …) to report with the trap it causes.
    pub(crate) host_fault: Option<String>,
    /// Properties set from a root context (no stream to hold them).
    pub(crate) vm_properties: HashMap<Vec<u8>, Vec<u8>>,
    /// Calls from the module into the host (ABI and WASI imports) so far, counted by a call hook.
    pub(crate) host_calls: u64,
    /// The same calls by import name, counted by each import (their sum is `host_calls`).
    pub(crate) host_calls_by_name: BTreeMap<&'static str, u64>,
}

impl VmState {
    /// A state for link-time checks only: no host, no plugin.
    pub(crate) fn placeholder() -> VmState {
        VmState {
            host: None,
            vm_key: 0,
            vm_index: 0,
            plugin: None,
            root_context_id: 0,
            effective_context: 0,
            contexts: HashMap::new(),
            logs: Vec::new(),
            tick_period_ms: 0,
            next_tick_ns: 0,
            next_token: 1,
            http_calls: BTreeMap::new(),
            grpc_calls: BTreeMap::new(),
            callout_response: None,
            grpc_message: None,
            status: (0, Vec::new()),
            metric_ids: HashMap::new(),
            next_metric_id: 1,
            effects: Vec::new(),
            done_calls: 0,
            exit_code: None,
            host_fault: None,
            vm_properties: HashMap::new(),
            host_calls: 0,
            host_calls_by_name: BTreeMap::new(),
        }
    }

    pub(crate) fn shared(&self) -> Option<&HostShared> {
        self.host.as_ref().map(|h| h.shared.as_ref())
    }

    pub(crate) fn plugin_name(&self) -> &str {
        self.plugin.as_ref().map_or("", |p| p.name.as_str())
    }

    pub(crate) fn vm_id(&self) -> &str {
        self.plugin.as_ref().map_or("", |p| p.vm_id.as_str())
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        let plugin = self.plugin_name().to_string();
        self.logs.push(LogEntry {
            plugin,
            level,
            message,
        });
    }
}

/// What a callback returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackResult {
    Unit,
    Bool(bool),
    Action(Action),
}

/// One call into a module, for assertions and cost figures.
#[derive(Debug, Clone)]
pub struct CallbackRecord {
    pub plugin: String,
    pub callback: &'static str,
    pub context_id: u32,
    pub result: CallbackResult,
    /// Wasm instructions (wasmtime fuel) the callback consumed, host calls excluded.
    pub fuel: u64,
    /// Calls the module made into the host during the callback (each one costs ~0.5 µs in Envoy).
    pub host_calls: u64,
    /// Those calls by import name (`proxy_get_header_map_pairs`, …), in name order.
    pub host_calls_by_name: Vec<(&'static str, u64)>,
}

/// A plugin's VM on one worker.
pub struct Vm {
    pub(crate) store: Store<VmState>,
    pub(crate) instance: Instance,
    pub(crate) failed: bool,
    pub(crate) name: String,
    pub(crate) next_context_id: u32,
    funcs: HashMap<&'static str, wasmtime::Func>,
}

const FUEL_BUDGET: u64 = u64::MAX / 2;

impl Vm {
    /// Instantiates `plugin`, runs `_initialize`, creates the root context and runs
    /// `on_vm_start` and `on_configure`; a false answer is an error, as Envoy would treat it.
    pub(crate) fn start(
        host: &Host,
        plugin: &PluginConfig,
        vm_index: usize,
        history: &mut Vec<CallbackRecord>,
    ) -> Result<Vm, HarnessError> {
        let engine = crate::module::engine()?;
        let mut state = VmState::placeholder();
        state.host = Some(host.clone());
        state.vm_key = host
            .shared
            .next_vm_key
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        state.vm_index = vm_index;
        state.plugin = Some(plugin.clone());
        let mut store = Store::new(engine, state);
        store.call_hook(|mut store, hook| {
            if matches!(hook, wasmtime::CallHook::CallingHost) {
                store.data_mut().host_calls += 1;
            }
            Ok(())
        });
        store
            .set_fuel(FUEL_BUDGET)
            .map_err(|e| HarnessError::Load(e.to_string()))?;
        let instance = plugin
            .module
            .inner
            .pre
            .instantiate(&mut store)
            .map_err(|e| {
                HarnessError::Load(format!(
                    "cannot instantiate {}: {e:#}",
                    plugin.module.name()
                ))
            })?;
        let mut vm = Vm {
            store,
            instance,
            failed: false,
            name: plugin.name.clone(),
            next_context_id: 1,
            funcs: HashMap::new(),
        };
        if vm.instance.get_func(&mut vm.store, "_initialize").is_some() {
            vm.call("_initialize", &[], history)?;
        } else if vm.instance.get_func(&mut vm.store, "_start").is_some() {
            vm.call("_start", &[], history)?;
        }
        let root = vm.new_context_id();
        vm.store.data_mut().root_context_id = root;
        vm.store.data_mut().effective_context = root;
        vm.call("proxy_on_context_create", &[root as i32, 0], history)?;
        let vm_config_len = plugin.vm_configuration.len() as i32;
        if vm.call("proxy_on_vm_start", &[root as i32, vm_config_len], history)?
            == CallbackResult::Bool(false)
        {
            return Err(HarnessError::VmStartRejected {
                plugin: plugin.name.clone(),
                logs: vm.store.data().logs.clone(),
            });
        }
        let config_len = plugin.configuration.len() as i32;
        if vm.call("proxy_on_configure", &[root as i32, config_len], history)?
            == CallbackResult::Bool(false)
        {
            return Err(HarnessError::ConfigRejected {
                plugin: plugin.name.clone(),
                logs: vm.store.data().logs.clone(),
            });
        }
        Ok(vm)
    }

    pub(crate) fn new_context_id(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id += 1;
        id
    }

    pub(crate) fn state(&self) -> &VmState {
        self.store.data()
    }

    pub(crate) fn state_mut(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    /// Calls an export by name with i32 arguments and records it. Callbacks the module does not
    /// export are skipped (as Envoy skips them) and answer `Unit`.
    pub(crate) fn call(
        &mut self,
        export: &'static str,
        args: &[i32],
        history: &mut Vec<CallbackRecord>,
    ) -> Result<CallbackResult, HarnessError> {
        if self.failed {
            return Err(HarnessError::VmFailed {
                plugin: self.name.clone(),
            });
        }
        let func = match self.funcs.get(export) {
            Some(f) => *f,
            None => match self.instance.get_func(&mut self.store, export) {
                Some(f) => {
                    self.funcs.insert(export, f);
                    f
                }
                None => return Ok(CallbackResult::Unit),
            },
        };
        let ty = func.ty(&self.store);
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        if ty.params().len() != params.len() {
            return Err(self.trap_error(
                export,
                format!(
                    "export {export} takes {} parameters, the ABI passes {}",
                    ty.params().len(),
                    params.len()
                ),
                String::new(),
            ));
        }
        let mut results = vec![Val::I32(0); ty.results().len()];
        let context_id = args.first().copied().unwrap_or(0) as u32;
        self.store.data_mut().effective_context = context_id;
        let before = self.store.get_fuel().unwrap_or(FUEL_BUDGET);
        let host_calls_before = self.store.data().host_calls;
        let by_name_before = self.store.data().host_calls_by_name.clone();
        let outcome = func.call(&mut self.store, &params, &mut results);
        let after = self.store.get_fuel().unwrap_or(FUEL_BUDGET);
        let _ = self.store.set_fuel(FUEL_BUDGET);
        if let Err(e) = outcome {
            let backtrace = e
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|b| b.to_string())
                .unwrap_or_default();
            let mut message = match e.downcast_ref::<wasmtime::Trap>() {
                Some(t) => format!("{t}"),
                None => format!("{e:#}"),
            };
            if let Some(code) = self.store.data().exit_code {
                message = format!("proc_exit({code})");
            }
            if let Some(fault) = self.store.data_mut().host_fault.take() {
                message = format!("{message} ({fault})");
            }
            return Err(self.trap_error(export, message, backtrace));
        }
        let result = match results.first() {
            None => CallbackResult::Unit,
            Some(Val::I32(v))
                if export == "proxy_on_vm_start"
                    || export == "proxy_on_configure"
                    || export == "proxy_on_done" =>
            {
                CallbackResult::Bool(*v != 0)
            }
            Some(Val::I32(v)) => {
                match Action::from_raw(*v) {
                    Some(a) => CallbackResult::Action(a),
                    None => {
                        return Err(self.trap_error(
                        export,
                        format!("{export} returned {v}, which is not an action (0 Continue, 1 Pause)"),
                        String::new(),
                    ));
                    }
                }
            }
            Some(other) => {
                return Err(self.trap_error(
                    export,
                    format!("{export} returned {other:?}"),
                    String::new(),
                ));
            }
        };
        history.push(CallbackRecord {
            plugin: self.name.clone(),
            callback: export,
            context_id,
            result,
            fuel: before.saturating_sub(after),
            host_calls: self.store.data().host_calls - host_calls_before,
            host_calls_by_name: self
                .store
                .data()
                .host_calls_by_name
                .iter()
                .filter_map(|(name, n)| {
                    let before = by_name_before.get(name).copied().unwrap_or(0);
                    (*n > before).then_some((*name, n - before))
                })
                .collect(),
        });
        Ok(result)
    }

    fn trap_error(&mut self, callback: &str, message: String, backtrace: String) -> HarnessError {
        self.failed = true;
        let logs = &self.store.data().logs;
        let last_logs = logs[logs.len().saturating_sub(20)..].to_vec();
        HarnessError::Trap {
            plugin: self.name.clone(),
            callback: callback.to_string(),
            message,
            backtrace,
            last_logs,
        }
    }

    /// Typed access to the module's allocator, for host functions.
    pub(crate) fn allocator(
        caller: &mut wasmtime::Caller<'_, VmState>,
        name: &str,
    ) -> Option<TypedFunc<i32, i32>> {
        caller
            .get_export(name)
            .and_then(|e| e.into_func())
            .and_then(|f| f.typed::<i32, i32>(&*caller).ok())
    }
}
