//! A safe layer over the Envoy 1.40 dynamic-module ABI, whose declarations (types, enum values,
//! callbacks) are [`gatewasm_envoy_abi`]'s, re-exported here: configuration and filter handles,
//! header reads and writes, responses, callouts, schedulers, counters and logging.

pub use gatewasm_envoy_abi::*;

use std::ffi::c_void;

/// Log through Envoy (its `[dynamic_modules]` logger), if that level is enabled.
pub fn log(level: i32, message: &str) {
    // SAFETY: plain values; the message buffer outlives the call.
    unsafe {
        if envoy_dynamic_module_callback_log_enabled(level) {
            envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes()));
        }
    }
}

/// Whether Envoy logs `level` at all.
pub fn log_enabled(level: i32) -> bool {
    // SAFETY: a plain value in, a bool out.
    unsafe { envoy_dynamic_module_callback_log_enabled(level) }
}

/// An Envoy `DynamicModuleHttpFilterConfig`, valid during `on_http_filter_config_new`.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyConfig(pub *mut c_void);

impl EnvoyConfig {
    /// A scheduler whose events come to `on_http_filter_config_scheduled` on the main thread
    /// (`None`: Envoy gave none).
    pub fn scheduler(self) -> Option<ConfigScheduler> {
        // SAFETY: `self.0` is a live configuration pointer (in `config_new` or a later hook).
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(ConfigScheduler(ptr))
    }

    /// As [`EnvoyFilter::http_callout`], from the configuration (main thread); the answer comes
    /// to `on_http_filter_config_http_callout_done`.
    pub fn http_callout(
        self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, i32> {
        let mut vector = module_headers(headers);
        let mut id: u64 = 0;
        // SAFETY: a live configuration pointer on the main thread; every buffer outlives the
        // call (Envoy copies them); `id` is a valid out-pointer.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                vector.as_mut_ptr(),
                vector.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        if result == CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(result)
        }
    }

    /// Define the counter `name` (no labels); its id for [`EnvoyFilter::increment_counter`],
    /// `None` when Envoy refuses.
    pub fn define_counter(self, name: &str) -> Option<usize> {
        let mut id: usize = 0;
        // SAFETY: `self.0` is the config pointer of the running `config_new` hook; `name`
        // outlives the call; no labels (null, 0); `id` is a valid out-pointer.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }
}

/// An Envoy `DynamicModuleHttpFilter`: valid from `on_http_filter_new` until
/// `on_http_filter_destroy`, used only on the stream's worker thread inside its hooks.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyFilter(pub *mut c_void);

impl EnvoyFilter {
    /// All headers of `header_type`, handed to `read` as borrowed `(name, value)` pairs: one
    /// `get_headers_size` and one `get_headers` call, the entries in a buffer on the stack when
    /// they fit (no allocation for a typical request).
    ///
    /// # Safety
    /// The slices point into Envoy's header map (not the entry buffer) and are valid until this
    /// hook returns or the map is changed (a `set_header` or `add_header` on it): whatever
    /// `read` keeps of them must not be used beyond that.
    pub unsafe fn read_headers<R>(
        self,
        header_type: i32,
        read: impl FnOnce(Headers<'_>) -> R,
    ) -> R {
        const ON_STACK: usize = 32;
        let empty = EnvoyHttpHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        };
        // SAFETY: `self.0` is live (see the type docs).
        let count =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, header_type) };
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
                envoy_dynamic_module_callback_http_get_headers(
                    self.0,
                    header_type,
                    entries.as_mut_ptr(),
                )
            };
        let entries: &[EnvoyHttpHeader] = if ok { entries } else { &[] };
        let pair: fn(&EnvoyHttpHeader) -> (&[u8], &[u8]) = pair;
        read(entries.iter().map(pair))
    }

    /// The value at `index` among the values of header `name` (one `get_header` call) and how
    /// many values it has; `None` when it has none at `index`.
    ///
    /// # Safety
    /// As [`EnvoyFilter::read_headers`]: the slice is valid until this hook returns or the map
    /// is changed; the caller picks a lifetime no longer than that.
    pub unsafe fn get_header<'a>(
        self,
        header_type: i32,
        name: &str,
        index: usize,
    ) -> Option<(&'a [u8], usize)> {
        let mut value = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        let mut count = 0usize;
        // SAFETY: `self.0` is live; `value` and `count` are valid out-pointers; the name buffer
        // outlives the call.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                &mut value,
                index,
                &mut count,
            )
        };
        // SAFETY: Envoy lends the value for the caller's lifetime (the contract above). An
        // empty value may come as a null buffer: it is still a value.
        found.then(|| (unsafe { envoy_bytes(value.ptr, value.length) }, count))
    }

    /// Replace every copy of `name` with `value`; `None` (or, in Envoy, an empty value) removes
    /// them.
    pub fn set_header(self, header_type: i32, name: &str, value: Option<&[u8]>) -> bool {
        let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
        // SAFETY: live filter; buffers outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    /// Append a copy of `name` (Envoy refuses an empty value).
    pub fn add_header(self, header_type: i32, name: &str, value: &[u8]) -> bool {
        // SAFETY: live filter; buffers outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Answer locally: `status`, `headers`, `body`, with `details` as the response code
    /// details (access logs' `%RESPONSE_CODE_DETAILS%`).
    pub fn send_response(self, status: u32, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut vector: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: live filter; `vector`, `body` and `details` outlive the call (Envoy copies).
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                vector.as_mut_ptr(),
                vector.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    pub fn clear_route_cache(self) {
        // SAFETY: live filter.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// A string attribute, copied (Envoy's buffer is only valid during the hook).
    pub fn attribute_string(self, id: i32) -> Option<Vec<u8>> {
        let mut result = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: live filter; `result` is a valid out-pointer.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, id, &mut result)
        };
        // SAFETY: on success Envoy lent `result` for the current hook; copied at once.
        ok.then(|| unsafe { envoy_bytes(result.ptr, result.length) }.to_vec())
            .filter(|v| !v.is_empty())
    }

    /// Send an HTTP request to `cluster` (Envoy's async client, `timeout_ms`): the callout's
    /// id, its answer coming to `on_http_filter_http_callout_done`; or Envoy's init result
    /// when it did not send.
    pub fn http_callout(
        self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, i32> {
        let mut vector = module_headers(headers);
        let mut id: u64 = 0;
        // SAFETY: live filter; every buffer outlives the call (Envoy copies them); `id` is a
        // valid out-pointer.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                vector.as_mut_ptr(),
                vector.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        if result == CALLOUT_INIT_SUCCESS {
            Ok(id)
        } else {
            Err(result)
        }
    }

    /// A scheduler whose events come to this stream's `on_http_filter_scheduled`, on its
    /// worker (`None`: Envoy gave none).
    pub fn scheduler(self) -> Option<FilterScheduler> {
        // SAFETY: live filter, on its worker thread.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(FilterScheduler(ptr))
    }

    /// Resume the request a `StopIteration` paused.
    pub fn continue_decoding(self) {
        // SAFETY: live filter.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    pub fn increment_counter(self, id: usize, by: u64) {
        // SAFETY: live filter; no labels (null, 0), as defined.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                by,
            );
        }
    }
}

/// A stream's scheduler: `commit` posts an event to the stream's worker from any thread (Envoy
/// keeps only a weak reference to the stream: an event for a stream that is gone is dropped).
/// Deleted when dropped.
#[derive(Debug)]
pub struct FilterScheduler(*mut c_void);

// SAFETY: Envoy's scheduler posts to its dispatcher, which is thread-safe; the object is
// deleted once (by `Drop`), and its owner (the key driver's waiter list) commits it under a
// lock that the drop also takes.
unsafe impl Send for FilterScheduler {}

impl FilterScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: not yet deleted (deleted only in `drop`).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for FilterScheduler {
    fn drop(&mut self) {
        // SAFETY: made by `scheduler_new`, deleted once. Envoy's posted events do not refer to
        // the scheduler, so deleting it after a commit is fine.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// A configuration's scheduler: `commit` posts an event to the main thread from any thread.
/// Deleted when dropped (before the configuration is).
#[derive(Debug)]
pub struct ConfigScheduler(*mut c_void);

// SAFETY: as `FilterScheduler`: Envoy's commit posts to the main dispatcher (thread-safe), and
// the owner keeps it behind a lock taken to commit and to drop.
unsafe impl Send for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: not yet deleted (deleted only in `drop`).
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id)
        }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: made by `config_scheduler_new`, deleted once.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// `(name, value)` pairs as the ABI's header vector (borrowing them: keep `headers` alive for
/// as long as the vector is used).
fn module_headers(headers: &[(&str, &[u8])]) -> Vec<ModuleHttpHeader> {
    headers
        .iter()
        .map(|(k, v)| ModuleHttpHeader {
            key_ptr: k.as_ptr().cast(),
            key_length: k.len(),
            value_ptr: v.as_ptr().cast(),
            value_length: v.len(),
        })
        .collect()
}

/// A response Envoy handed to a callout hook: its headers (`name → value`, the first of a name)
/// and its body, the chunks joined.
pub struct CalloutResponse<'a> {
    headers: &'a [EnvoyHttpHeader],
    pub body: Vec<u8>,
}

impl<'a> CalloutResponse<'a> {
    /// # Safety
    /// The four arguments are the hook's, valid for `'a` (the hook).
    pub unsafe fn new(
        headers: *const EnvoyHttpHeader,
        headers_size: usize,
        chunks: *const EnvoyBuffer,
        chunks_size: usize,
    ) -> Self {
        // SAFETY: the caller's contract.
        let (headers, chunks) = unsafe {
            (
                lent_slice(headers, headers_size),
                lent_slice(chunks, chunks_size),
            )
        };
        let mut body = Vec::with_capacity(chunks.iter().map(|c| c.length).sum());
        for chunk in chunks {
            // SAFETY: Envoy's chunks are valid for the hook.
            body.extend_from_slice(unsafe { envoy_bytes(chunk.ptr, chunk.length) });
        }
        CalloutResponse { headers, body }
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .map(pair)
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// `log` records to Envoy's log ([`log`]): the filters' own warnings and errors (a refused
/// configuration names its field there) appear in Envoy's output as they do for the Wasm
/// modules.
pub struct EnvoyLogger;

fn level(level: log::Level) -> i32 {
    match level {
        log::Level::Error => LOG_ERROR,
        log::Level::Warn => LOG_WARN,
        log::Level::Info => LOG_INFO,
        log::Level::Debug => LOG_DEBUG,
        log::Level::Trace => LOG_TRACE,
    }
}

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        log_enabled(level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        let lvl = level(record.level());
        if log_enabled(lvl) {
            log(lvl, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}
