//! Every `envoy_dynamic_module_on_*` hook Envoy 1.40 looks up for an HTTP filter (the list of
//! `hosts/envoy-dynamic-module/src/hooks.rs`). Only the configuration, request-headers and
//! response-headers hooks do anything; the others return at once. Panics stop at the boundary
//! ([`guard`]), as in the gatewasm module: the `native` profile unwinds.

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, ModuleBuffer};
use crate::{COUNTER, PlatformConfig, WRITTEN_HEADER, WRITTEN_VALUE};

/// A configuration as Envoy holds it: what to do, and the counter's id.
struct FilterConfig {
    config: PlatformConfig,
    counter: Option<usize>,
}

/// Runs a hook's `body`; after a panic, logs it and returns `fallback()`.
fn guard<T>(hook: &str, fallback: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            abi::log_error(&format!("gatewasm_platform: a panic in {hook} was caught"));
            fallback()
        }
    }
}

/// # Safety
/// `ptr` points to `length` bytes Envoy lends for the current hook, or is null.
unsafe fn lent<'a>(buffer: EnvoyBuffer) -> &'a [u8] {
    if buffer.ptr.is_null() || buffer.length == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(buffer.ptr.cast::<u8>(), buffer.length) }
}

/// The configuration a filter pointer stands for (this filter keeps no per-stream state: its
/// filter pointer is its configuration's).
///
/// # Safety
/// `ptr` is null or a pointer `config_new` returned, not yet destroyed.
unsafe fn config<'a>(ptr: *const c_void) -> Option<&'a FilterConfig> {
    // SAFETY: the caller's contract.
    unsafe { ptr.cast::<FilterConfig>().as_ref() }
}

fn set_header(envoy: *mut c_void, header_type: i32) {
    // SAFETY: a live filter inside one of its hooks; the buffers outlive the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_set_header(
            envoy,
            header_type,
            ModuleBuffer::of(WRITTEN_HEADER.as_bytes()),
            ModuleBuffer::of(WRITTEN_VALUE.as_bytes()),
        );
    }
}

/// One `get_header` call: whether Envoy found the header.
fn read_header(envoy: *mut c_void, name: &str) -> bool {
    let mut value = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
    // SAFETY: a live filter inside its request-headers hook; `value` is a valid out-pointer;
    // no count wanted (null).
    let found = unsafe {
        abi::envoy_dynamic_module_callback_http_get_header(
            envoy,
            abi::HEADER_TYPE_REQUEST,
            ModuleBuffer::of(name.as_bytes()),
            &mut value,
            0,
            std::ptr::null_mut(),
        )
    };
    found && !value.ptr.is_null()
}

/// One read of the whole request-header map as gatewasm reads it (`read_headers` of its
/// abi.rs): the size, then the entries into a buffer on the stack when they fit.
fn read_header_map(envoy: *mut c_void) -> usize {
    const ON_STACK: usize = 32;
    let empty = EnvoyHttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
    // SAFETY: a live filter inside its request-headers hook.
    let count = unsafe {
        abi::envoy_dynamic_module_callback_http_get_headers_size(envoy, abi::HEADER_TYPE_REQUEST)
    };
    let mut stack = [empty; ON_STACK];
    let mut heap = Vec::new();
    let entries: &mut [EnvoyHttpHeader] = if count <= ON_STACK {
        stack.get_mut(..count).unwrap_or_default()
    } else {
        heap.resize(count, empty);
        &mut heap
    };
    // SAFETY: `entries` has room for the `count` entries Envoy writes.
    let ok = count > 0
        && unsafe {
            abi::envoy_dynamic_module_callback_http_get_headers(
                envoy,
                abi::HEADER_TYPE_REQUEST,
                entries.as_mut_ptr(),
            )
        };
    // Used, so that the reads are not optimised away.
    if ok {
        std::hint::black_box(entries).len()
    } else {
        0
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    abi::ABI_VERSION.as_ptr().cast()
}

/// # Safety
/// Envoy's contract: `config` is valid for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    filter_config_envoy_ptr: *mut c_void,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy lends the buffer for this call; it is only read inside it.
    let config = unsafe { lent(config) };
    guard("on_http_filter_config_new", std::ptr::null, || {
        let config = match PlatformConfig::parse(config) {
            Ok(config) => config,
            Err(why) => {
                abi::log_error(&format!("gatewasm_platform: {why}"));
                return std::ptr::null();
            }
        };
        let mut counter = None;
        if config.counter_increments > 0 {
            let mut id: usize = 0;
            // SAFETY: the config pointer of this hook; `COUNTER` outlives the call; no labels;
            // `id` is a valid out-pointer.
            let result = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                    filter_config_envoy_ptr,
                    ModuleBuffer::of(COUNTER.as_bytes()),
                    std::ptr::null_mut(),
                    0,
                    &mut id,
                )
            };
            if result != abi::METRICS_SUCCESS {
                abi::log_error("gatewasm_platform: counter_increments: cannot define the counter");
                return std::ptr::null();
            }
            counter = Some(id);
        }
        Box::into_raw(Box::new(FilterConfig { config, counter }))
            .cast_const()
            .cast()
    })
}

/// # Safety
/// `filter_config_ptr` is a pointer `config_new` returned, destroyed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    filter_config_ptr: *const c_void,
) {
    if !filter_config_ptr.is_null() {
        // SAFETY: made by `Box::into_raw` in `config_new`; Envoy destroys it once.
        drop(unsafe { Box::from_raw(filter_config_ptr.cast_mut().cast::<FilterConfig>()) });
    }
}

/// Per-route configuration: none (refused).
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    std::ptr::null()
}

/// No per-stream state: the filter pointer is the configuration's (no allocation per request,
/// so the presence price is Envoy's, not an allocator's).
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    filter_config_ptr: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    filter_config_ptr
}

/// # Safety
/// Envoy's contract for the two pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    guard(
        "on_http_filter_request_headers",
        || abi::HEADERS_CONTINUE,
        || {
            // SAFETY: Envoy's contract: the filter pointer `filter_new` returned.
            let Some(filter) = (unsafe { config(filter_module_ptr) }) else {
                return abi::HEADERS_CONTINUE;
            };
            let config = &filter.config;
            let mut missing = false;
            for _ in 0..config.request_header_reads {
                missing |= !read_header(filter_envoy_ptr, &config.read_header);
            }
            if missing {
                // SAFETY: a live filter; the buffers outlive the call; no headers.
                unsafe {
                    abi::envoy_dynamic_module_callback_http_send_response(
                        filter_envoy_ptr,
                        500,
                        std::ptr::null_mut(),
                        0,
                        ModuleBuffer::of(b""),
                        ModuleBuffer::of(b"platform_read_missing"),
                    );
                }
                return abi::HEADERS_STOP_ITERATION;
            }
            for _ in 0..config.request_header_map_reads {
                read_header_map(filter_envoy_ptr);
            }
            for _ in 0..config.request_header_writes {
                set_header(filter_envoy_ptr, abi::HEADER_TYPE_REQUEST);
            }
            if let Some(id) = filter.counter {
                for _ in 0..config.counter_increments {
                    // SAFETY: a live filter; an id `config_new` defined; no labels.
                    unsafe {
                        abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                            filter_envoy_ptr,
                            id,
                            std::ptr::null_mut(),
                            0,
                            1,
                        );
                    }
                }
            }
            abi::HEADERS_CONTINUE
        },
    )
}

/// # Safety
/// Envoy's contract for the two pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    guard(
        "on_http_filter_response_headers",
        || abi::HEADERS_CONTINUE,
        || {
            // SAFETY: Envoy's contract: the filter pointer `filter_new` returned.
            if let Some(filter) = unsafe { config(filter_module_ptr) } {
                for _ in 0..filter.config.response_header_writes {
                    set_header(filter_envoy_ptr, abi::HEADER_TYPE_RESPONSE);
                }
            }
            abi::HEADERS_CONTINUE
        },
    )
}

/// Nothing to free: the filter pointer is the configuration's.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter_module_ptr: *const c_void) {}

// The other hooks Envoy 1.40 looks up; this filter does nothing there.

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _callout_id: u64,
    _result: i32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _filter_config_envoy_ptr: *mut c_void,
    _filter_config_ptr: *const c_void,
    _callout_id: u64,
    _result: i32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

// The hooks this library leaves empty (Envoy looks every hook up when it loads a module).
gatewasm_envoy_abi::no_op_hooks!(
    per_route_config_destroy,
    request_body,
    response_body,
    request_trailers,
    response_trailers,
    stream_complete,
    local_reply,
    scheduled,
    config_scheduled,
    downstream_above_write_buffer_high_watermark,
    downstream_below_write_buffer_low_watermark,
    http_stream_headers,
    http_stream_data,
    http_stream_trailers,
    http_stream_complete,
    http_stream_reset,
    config_http_stream_headers,
    config_http_stream_data,
    config_http_stream_trailers,
    config_http_stream_complete,
    config_http_stream_reset,
);
