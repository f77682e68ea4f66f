//! The Envoy 1.40 dynamic-module ABI as Rust declarations: the buffer and header types, the
//! enum values, and the callbacks (`envoy_dynamic_module_callback_*`) gatewasm's libraries call,
//! with [`no_op_hooks!`] for the event hooks a library exports but leaves empty.
//!
//! Declarations follow `source/extensions/dynamic_modules/abi/abi.h` of envoyproxy/envoy
//! (ABI version [`ABI_VERSION`], Envoy 1.40). Every callback declared here was checked to be
//! exported by the official Envoy 1.40.0 binary (`nm -D envoy | grep
//! envoy_dynamic_module_callback`); the symbols are resolved when Envoy loads the library, so
//! a callback Envoy does not have makes the load fail instead of a call misbehaving (only the
//! callbacks a library calls become its undefined symbols).
//!
//! A crate of its own, and one that defines no hook: both `libgatewasm_envoy.so`
//! (hosts/envoy-dynamic-module) and the bench's `libgatewasm_platform.so`
//! (tools/dynamic-module-platform) declare the ABI through it, and a hook defined here would be
//! exported by both. Each library exports its hooks itself (the empty ones with
//! [`no_op_hooks!`]).
//!
//! C enums are `int` in that header; they are `i32` here with the values the header gives.
//! Buffers are `{pointer, length}` pairs: [`ModuleBuffer`] for what a module lends Envoy for
//! the duration of a call, [`EnvoyBuffer`] for what Envoy lends a module until the end of the
//! current event hook (or until that header map changes).

use std::ffi::{c_char, c_void};

/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40 (its log: "Dynamic module ABI version
/// v0.2.0 matched."). NUL-terminated: `on_program_init` hands Envoy a C string.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_envoy_buffer`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// The `(name, value)` pairs of a header map Envoy filled in ([`EnvoyFilter::read_headers`]).
pub type Headers<'h> =
    std::iter::Map<std::slice::Iter<'h, EnvoyHttpHeader>, fn(&EnvoyHttpHeader) -> (&[u8], &[u8])>;

/// An entry Envoy filled in, as borrowed slices (valid as long as Envoy's map is unchanged:
/// see [`EnvoyFilter::read_headers`]).
pub fn pair(h: &EnvoyHttpHeader) -> (&[u8], &[u8]) {
    // SAFETY: Envoy filled the entry with buffers valid while its map is unchanged; the
    // slices do not outlive `read_headers`' callback.
    unsafe {
        (
            envoy_bytes(h.key_ptr, h.key_length),
            envoy_bytes(h.value_ptr, h.value_length),
        )
    }
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const HEADER_TYPE_REQUEST: i32 = 0;
pub const HEADER_TYPE_RESPONSE: i32 = 2;
/// `envoy_dynamic_module_type_log_level`: Trace, Debug, Info, Warn, Error, Critical.
pub const LOG_TRACE: i32 = 0;
pub const LOG_DEBUG: i32 = 1;
pub const LOG_INFO: i32 = 2;
pub const LOG_WARN: i32 = 3;
pub const LOG_ERROR: i32 = 4;
/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: i32 = 0;
/// `envoy_dynamic_module_type_attribute_id_SourceAddress` (the 25th attribute, `source.address`).
pub const ATTRIBUTE_SOURCE_ADDRESS: i32 = 24;
/// `envoy_dynamic_module_type_on_http_filter_{request,response}_headers_status`.
pub const HEADERS_CONTINUE: i32 = 0;
pub const HEADERS_STOP_ITERATION: i32 = 1;
/// `..._{request,response}_body_status_Continue`, `..._trailers_status_Continue`.
pub const DATA_CONTINUE: i32 = 0;
/// `envoy_dynamic_module_type_on_http_filter_request_body_status_StopIterationAndBuffer`.
pub const BODY_STOP_ITERATION_AND_BUFFER: i32 = 1;
/// `envoy_dynamic_module_type_on_http_filter_request_trailers_status_StopIteration`.
pub const TRAILERS_STOP_ITERATION: i32 = 1;
/// `envoy_dynamic_module_type_http_callout_init_result`: Success, MissingRequiredHeaders,
/// ClusterNotFound, DuplicateCalloutId, CannotCreateRequest.
pub const CALLOUT_INIT_SUCCESS: i32 = 0;
/// `envoy_dynamic_module_type_http_callout_result`: Success, Reset, ExceedResponseBufferLimit.
pub const CALLOUT_SUCCESS: i32 = 0;

/// What `http_callout` answered when it did not send (its init result's name, for the log).
pub fn callout_init_error(result: i32) -> &'static str {
    match result {
        1 => "missing required headers",
        2 => "cluster not found",
        3 => "duplicate callout id",
        4 => "cannot create the request (no healthy upstream?)",
        _ => "unknown error",
    }
}

/// What a failed callout's result means (for the log).
pub fn callout_result_name(result: i32) -> &'static str {
    match result {
        0 => "success",
        1 => "reset",
        2 => "response over the buffer limit",
        _ => "unknown result",
    }
}
/// `envoy_dynamic_module_type_on_http_filter_local_reply_status_Continue`.
pub const LOCAL_REPLY_CONTINUE: i32 = 0;

unsafe extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: i32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: i32) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter_envoy_ptr: *mut c_void,
        header_type: i32,
        key: ModuleBuffer,
        result_buffer: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter_envoy_ptr: *mut c_void,
        header_type: i32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: *mut c_void,
        header_type: i32,
        result_headers: *mut EnvoyHttpHeader,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: *mut c_void,
        header_type: i32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter_envoy_ptr: *mut c_void,
        header_type: i32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: *mut c_void,
        status_code: u32,
        headers_vector: *mut ModuleHttpHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter_envoy_ptr: *mut c_void);
    pub fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter_envoy_ptr: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(
        filter_envoy_ptr: *mut c_void,
    );
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter_envoy_ptr: *mut c_void,
    ) -> *mut c_void;
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler_module_ptr: *mut c_void,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_delete(
        scheduler_module_ptr: *mut c_void,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        filter_config_envoy_ptr: *mut c_void,
    ) -> *mut c_void;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler_module_ptr: *mut c_void,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler_module_ptr: *mut c_void,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        filter_config_envoy_ptr: *mut c_void,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter_envoy_ptr: *mut c_void,
        attribute_id: i32,
        result: *mut EnvoyBuffer,
    ) -> bool;
}

impl ModuleBuffer {
    /// Lend `bytes` to Envoy for one call.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// The null buffer (`set_header` with it removes the header).
    pub const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// The bytes of a buffer Envoy lent us. The caller picks a lifetime no longer than Envoy's
/// promise (the current event hook).
///
/// # Safety
/// `ptr` must point to `length` readable bytes for `'a`, or be null.
pub unsafe fn envoy_bytes<'a>(ptr: *const c_char, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), length) }
}

/// Entries Envoy lent for one hook (`ptr` null or `len` 0: none).
///
/// # Safety
/// `ptr` points to `len` valid entries for `'a` (the current hook), or is null.
pub unsafe fn lent_slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Exports the named event hooks as hooks that do nothing (the body and trailer hooks answer
/// `Continue`, a local reply `Continue`). Envoy 1.40 looks every hook up when it loads a
/// module, so a library must export them all; this keeps the empty ones' signatures in one
/// place. Names are the hook's without `envoy_dynamic_module_on_http_filter_`, e.g.
/// `no_op_hooks!(http_stream_reset, local_reply)`.
#[macro_export]
macro_rules! no_op_hooks {
    ($($hook:ident),* $(,)?) => { $( $crate::no_op_hook!($hook); )* };
}

/// One hook of [`no_op_hooks!`].
#[doc(hidden)]
#[macro_export]
macro_rules! no_op_hook {
    (per_route_config_destroy) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
            _filter_config_ptr: *const ::std::ffi::c_void,
        ) {

        }
    };
    (request_body) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _end_of_stream: bool,
        ) -> i32 {
            $crate::DATA_CONTINUE
        }
    };
    (response_body) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _end_of_stream: bool,
        ) -> i32 {
            $crate::DATA_CONTINUE
        }
    };
    (request_trailers) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
        ) -> i32 {
            $crate::DATA_CONTINUE
        }
    };
    (response_trailers) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
        ) -> i32 {
            $crate::DATA_CONTINUE
        }
    };
    (stream_complete) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
        ) {

        }
    };
    (local_reply) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _response_code: u32,
            _details: $crate::EnvoyBuffer,
            _reset_imminent: bool,
        ) -> i32 {
            $crate::LOCAL_REPLY_CONTINUE
        }
    };
    (scheduled) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _event_id: u64,
        ) {

        }
    };
    (config_scheduled) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
            _filter_config_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_config_ptr: *const ::std::ffi::c_void,
            _event_id: u64,
        ) {

        }
    };
    (downstream_above_write_buffer_high_watermark) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
        ) {

        }
    };
    (downstream_below_write_buffer_low_watermark) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
        ) {

        }
    };
    (http_stream_headers) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
            _headers: *mut $crate::EnvoyHttpHeader,
            _headers_size: usize,
            _end_stream: bool,
        ) {

        }
    };
    (http_stream_data) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
            _data: *const $crate::EnvoyBuffer,
            _data_count: usize,
            _end_stream: bool,
        ) {

        }
    };
    (http_stream_trailers) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
            _trailers: *mut $crate::EnvoyHttpHeader,
            _trailers_size: usize,
        ) {

        }
    };
    (http_stream_complete) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
        ) {

        }
    };
    (http_stream_reset) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
            _reason: i32,
        ) {

        }
    };
    (config_http_stream_headers) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
            _filter_config_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_config_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
            _headers: *mut $crate::EnvoyHttpHeader,
            _headers_size: usize,
            _end_stream: bool,
        ) {

        }
    };
    (config_http_stream_data) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
            _filter_config_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_config_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
            _data: *const $crate::EnvoyBuffer,
            _data_count: usize,
            _end_stream: bool,
        ) {

        }
    };
    (config_http_stream_trailers) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
            _filter_config_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_config_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
            _trailers: *mut $crate::EnvoyHttpHeader,
            _trailers_size: usize,
        ) {

        }
    };
    (config_http_stream_complete) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
            _filter_config_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_config_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
        ) {

        }
    };
    (config_http_stream_reset) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
            _filter_config_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_config_ptr: *const ::std::ffi::c_void,
            _stream_id: u64,
            _reason: i32,
        ) {

        }
    };
    (http_callout_done) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
            _filter_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_module_ptr: *const ::std::ffi::c_void,
            _callout_id: u64,
            _result: i32,
            _headers: *mut $crate::EnvoyHttpHeader,
            _headers_size: usize,
            _body_chunks: *mut $crate::EnvoyBuffer,
            _body_chunks_size: usize,
        ) {

        }
    };
    (config_http_callout_done) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
            _filter_config_envoy_ptr: *mut ::std::ffi::c_void,
            _filter_config_ptr: *const ::std::ffi::c_void,
            _callout_id: u64,
            _result: i32,
            _headers: *mut $crate::EnvoyHttpHeader,
            _headers_size: usize,
            _body_chunks: *mut $crate::EnvoyBuffer,
            _body_chunks_size: usize,
        ) {

        }
    };
}
