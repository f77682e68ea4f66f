//! Definitions of the Proxy-Wasm host functions, for the native library only.
//!
//! The filters' shared crate (`gatewasm-common`) depends on the `proxy-wasm` SDK for its types
//! (a `StageHost` error is a `proxy_wasm::types::Status`), and the SDK exports its
//! `proxy_on_*` entry points on every target. Those entry points reference the Proxy-Wasm
//! imports (`proxy_get_property`, …), which a Wasm host provides and Envoy's process does not:
//! left undefined, `dlopen` refuses the library ("undefined symbol: proxy_set_effective_context").
//! Nothing in this module calls them — no code path here makes a Proxy-Wasm host call, and
//! Envoy never calls the SDK's `proxy_on_*` exports of a dynamic module — so each is defined
//! as a function that answers `InternalFailure` (10). (Extra arguments in registers are ignored
//! by a function that takes none, in the C calling conventions of x86-64 and AArch64.)
//!
//! The list is the SDK's imports (proxy-wasm 0.2.5); one added in another version shows up as
//! a load failure naming it in the end-to-end tests.

/// `proxy_wasm::types::Status::InternalFailure`.
const INTERNAL_FAILURE: u32 = 10;

macro_rules! refuse {
    ($($name:ident),* $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            pub extern "C" fn $name() -> u32 {
                INTERNAL_FAILURE
            }
        )*
    };
}

refuse!(
    proxy_call_foreign_function,
    proxy_dequeue_shared_queue,
    proxy_done,
    proxy_enqueue_shared_queue,
    proxy_get_buffer_bytes,
    proxy_get_current_time_nanoseconds,
    proxy_get_header_map_pairs,
    proxy_get_header_map_value,
    proxy_get_property,
    proxy_get_shared_data,
    proxy_get_status,
    proxy_grpc_call,
    proxy_grpc_cancel,
    proxy_grpc_close,
    proxy_grpc_send,
    proxy_grpc_stream,
    proxy_http_call,
    proxy_register_shared_queue,
    proxy_resolve_shared_queue,
    proxy_set_effective_context,
    proxy_set_property,
    proxy_set_shared_data,
    proxy_set_tick_period_milliseconds,
    proxy_add_header_map_value,
    proxy_remove_header_map_value,
    proxy_replace_header_map_value,
    proxy_set_header_map_pairs,
    proxy_get_header_map_size,
    proxy_set_buffer_bytes,
    proxy_get_buffer_status,
    proxy_log,
    proxy_get_log_level,
    proxy_continue_stream,
    proxy_close_stream,
    proxy_send_local_response,
    proxy_define_metric,
    proxy_increment_metric,
    proxy_record_metric,
    proxy_get_metric,
);
