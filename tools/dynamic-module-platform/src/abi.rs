//! The part of Envoy 1.40's dynamic-module ABI (`source/extensions/dynamic_modules/abi/abi.h`,
//! version v0.2.0) this filter uses: the buffer types and the callbacks it makes. Copied from
//! `hosts/envoy-dynamic-module/src/abi.rs` rather than shared, because linking that crate
//! would export its hooks too; `envoy_dynamic_module_callback_http_get_header` (which gatewasm
//! does not call) follows the header.

use std::ffi::{c_char, c_void};

/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40, NUL-terminated.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_envoy_buffer`: bytes Envoy lends.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes the module lends for a call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }
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

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const HEADER_TYPE_REQUEST: i32 = 0;
pub const HEADER_TYPE_RESPONSE: i32 = 2;
/// `envoy_dynamic_module_type_log_level_Error`.
pub const LOG_ERROR: i32 = 4;
/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: i32 = 0;
/// `..._headers_status_Continue` / `StopIteration`.
pub const HEADERS_CONTINUE: i32 = 0;
pub const HEADERS_STOP_ITERATION: i32 = 1;
/// `..._body_status_Continue`, `..._trailers_status_Continue`.
pub const DATA_CONTINUE: i32 = 0;
/// `envoy_dynamic_module_type_on_http_filter_local_reply_status_Continue`.
pub const LOCAL_REPLY_CONTINUE: i32 = 0;

unsafe extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: i32, message: ModuleBuffer);
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
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: *mut c_void,
        status_code: u32,
        headers_vector: *mut ModuleHttpHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
}

/// Logs an error through Envoy (a refused configuration says why).
pub fn log_error(message: &str) {
    // SAFETY: a plain value and a buffer that outlives the call.
    unsafe { envoy_dynamic_module_callback_log(LOG_ERROR, ModuleBuffer::of(message.as_bytes())) }
}
