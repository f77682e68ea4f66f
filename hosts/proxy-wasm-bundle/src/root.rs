//! The bundle's root context: it learns its root id from the host (`plugin_root_id`) and from
//! then on is the root context of the filter it names (only the root callbacks the filters'
//! roots implement are passed on: overriding `on_log` or `on_done` here would make the post-link
//! step keep those exports, and Envoy would enter the VM for them on every stream) (that filter's own, from its crate's
//! `glue::root_context`) or chain mode's ([`crate::chain::ChainRoot`]). A root id that names
//! nothing fails `on_configure` with a log line saying what it may be.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::chain::ChainRoot;
use crate::plan::{FilterKind, Role, role};

/// The module's log prefix for what concerns the bundle itself.
const BUNDLE: &str = "gatewasm";

pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(BundleRoot {
        context_id,
        inner: None,
        started: false,
    })
}

fn inner_root(role: Role, context_id: u32) -> Box<dyn RootContext> {
    match role {
        Role::Chain => Box::new(ChainRoot::new(context_id)),
        Role::Filter(FilterKind::CorrelationId) => correlation_id::glue::root_context(context_id),
        Role::Filter(FilterKind::TracePropagation) => {
            trace_propagation::glue::root_context(context_id)
        }
        Role::Filter(FilterKind::JwtToHeader) => jwt_to_header::glue::root_context(context_id),
        Role::Filter(FilterKind::TenantRouting) => tenant_routing::glue::root_context(context_id),
        Role::Filter(FilterKind::RateLimit) => rate_limit::glue::root_context(context_id),
    }
}

struct BundleRoot {
    context_id: u32,
    /// The named filter's (or the chain's) root context, once the root id is known.
    inner: Option<Box<dyn RootContext>>,
    /// Whether `on_vm_start` came (it is handed on when the inner root is made later).
    started: bool,
}

impl BundleRoot {
    /// The inner root, made on first use from the root id. `Err`: the reason, logged by the
    /// caller.
    fn resolve(&mut self) -> Result<&mut Box<dyn RootContext>, String> {
        if self.inner.is_none() {
            let root_id = hostcalls::get_property(vec!["plugin_root_id"])
                .ok()
                .flatten()
                .unwrap_or_default();
            let root_id = String::from_utf8_lossy(&root_id);
            let mut inner = inner_root(role(&root_id)?, self.context_id);
            if self.started {
                inner.on_vm_start(0);
            }
            self.inner = Some(inner);
        }
        self.inner.as_mut().ok_or_else(String::new)
    }
}

impl Context for BundleRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        if let Some(inner) = self.inner.as_mut() {
            inner.on_http_call_response(token_id, num_headers, body_size, num_trailers);
        }
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(inner) = self.inner.as_mut() {
            inner.on_grpc_call_response(token_id, status_code, response_size);
        }
    }
}

impl RootContext for BundleRoot {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        self.started = true;
        match self.inner.as_mut() {
            Some(inner) => inner.on_vm_start(vm_configuration_size),
            // The root id is read in on_configure (some hosts have no plugin yet here).
            None => true,
        }
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        match self.resolve() {
            Ok(inner) => inner.on_configure(plugin_configuration_size),
            Err(reason) => {
                log::error!("{BUNDLE}: invalid plugin: {reason}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a configured root (no host creates streams for a rejected plugin) the SDK
        // would trap on `None`: answer 503 instead.
        self.inner
            .as_ref()
            .and_then(|inner| inner.create_http_context(context_id))
            .or_else(|| Some(Box::new(Unconfigured)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A stream of a plugin whose root id or configuration was refused: fail closed.
struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::send_http_response(503, vec![], None);
        Action::Pause
    }
}
