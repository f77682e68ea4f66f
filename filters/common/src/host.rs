//! The one host call gatewasm makes itself rather than through the SDK (Wasm only): reading a
//! whole header map. `proxy_wasm::hostcalls::get_map_bytes` copies every name and value into
//! its own allocation; [`get_header_map`] keeps the host's buffer and lends out `(name, value)`
//! pairs parsed from it ([`crate::headers::parse_header_map`]), so the per-request cost no
//! longer grows by two allocations per header.

use proxy_wasm::types::{MapType, Status};

use crate::headers::{HeaderPairs, parse_header_map};

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    // The same import, with the same signature, as the SDK's (proxy-wasm 0.2.5 hostcalls.rs).
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// A header map as the host serialised it; [`HeaderMapBytes::pairs`] borrows from it.
pub struct HeaderMapBytes {
    bytes: Vec<u8>,
}

impl HeaderMapBytes {
    /// The `(name, value)` pairs, in the host's order (duplicates kept). The buffer is parsed
    /// here, once; a buffer that is not a serialised map (no host sends one; the SDK would
    /// panic on it) reads as an empty map.
    pub fn pairs(&self) -> HeaderPairs<'_> {
        parse_header_map(&self.bytes).unwrap_or_default()
    }

    /// The serialised map itself.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// One `proxy_get_header_map_pairs` call. Errors are the host's status (e.g. `BadArgument` for
/// a map outside its phase).
pub fn get_header_map(map: MapType) -> Result<HeaderMapBytes, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size; a non-null pointer is a buffer of `size`
    // bytes it allocated through the SDK's `proxy_on_memory_allocate` (a boxed slice of exactly
    // `size` bytes), which we own from here on — the SDK reclaims it the same way.
    let bytes = unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if data.is_null() => Vec::new(),
            Status::Ok => Vec::from_raw_parts(data, size, size),
            status => return Err(status),
        }
    };
    Ok(HeaderMapBytes { bytes })
}
