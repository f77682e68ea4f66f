//! Constants and wire formats of the Proxy-Wasm ABI v0.2.1, as the Rust SDK 0.2.5 uses them.

/// `proxy_status_t`. The Rust SDK has no variant for 6 (InvalidMemoryAccess) or 12 (Unimplemented),
/// so the harness never returns those: it traps instead, as a real module would after the SDK panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

impl Status {
    pub(crate) fn code(self) -> i32 {
        self as i32
    }
}

/// Whether a header callback lets the stream go on (`Continue`) or stops it (`Pause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub(crate) fn from_raw(raw: i32) -> Option<Action> {
        match raw {
            0 => Some(Action::Continue),
            1 => Some(Action::Pause),
            _ => None,
        }
    }
}

/// Log levels of `proxy_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_raw(raw: i32) -> Option<LogLevel> {
        Some(match raw {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

#[allow(dead_code)] // the full ABI table; L4 and call-data buffers are not emulated
pub(crate) mod buffer {
    pub const HTTP_REQUEST_BODY: i32 = 0;
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    pub const DOWNSTREAM_DATA: i32 = 2;
    pub const UPSTREAM_DATA: i32 = 3;
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub const GRPC_RECEIVE_BUFFER: i32 = 5;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
    pub const CALL_DATA: i32 = 8;
}

pub(crate) mod map {
    pub const HTTP_REQUEST_HEADERS: i32 = 0;
    pub const HTTP_REQUEST_TRAILERS: i32 = 1;
    pub const HTTP_RESPONSE_HEADERS: i32 = 2;
    pub const HTTP_RESPONSE_TRAILERS: i32 = 3;
    pub const GRPC_RECEIVE_INITIAL_METADATA: i32 = 4;
    pub const GRPC_RECEIVE_TRAILING_METADATA: i32 = 5;
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

pub(crate) mod stream {
    pub const HTTP_REQUEST: i32 = 0;
    pub const HTTP_RESPONSE: i32 = 1;
    pub const DOWNSTREAM: i32 = 2;
    pub const UPSTREAM: i32 = 3;
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub(crate) fn from_raw(raw: i32) -> Option<MetricType> {
        match raw {
            0 => Some(MetricType::Counter),
            1 => Some(MetricType::Gauge),
            2 => Some(MetricType::Histogram),
            _ => None,
        }
    }
}

/// Header pairs as bytes, in order, duplicates kept.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Serializes header pairs the way the ABI wants them: a u32 count, (key_len, value_len) u32 pairs,
/// then every key and value followed by a NUL byte, all little-endian.
pub fn serialize_map(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let data_len: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data_len);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_map`]; `None` when the bytes are not a well-formed map.
pub fn deserialize_map(bytes: &[u8]) -> Option<Pairs> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = read_u32(0)?;
    // Each pair takes at least 8 size bytes and 2 NULs: reject counts the input cannot hold.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((read_u32(4 + i * 8)?, read_u32(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for (klen, vlen) in sizes {
        let key = bytes.get(at..at.checked_add(klen)?)?.to_vec();
        at += klen + 1;
        let value = bytes.get(at..at.checked_add(vlen)?)?.to_vec();
        at += vlen + 1;
        pairs.push((key, value));
    }
    if at > bytes.len() {
        return None;
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let pairs = vec![
            (b":path".to_vec(), b"/".to_vec()),
            (b"x-empty".to_vec(), Vec::new()),
        ];
        let bytes = serialize_map(&pairs);
        assert_eq!(bytes.len(), 4 + 16 + (5 + 1 + 1 + 1) + (7 + 1 + 1));
        assert_eq!(deserialize_map(&bytes), Some(pairs));
        assert_eq!(deserialize_map(&[]), Some(vec![]));
    }

    #[test]
    fn malformed_maps_are_rejected() {
        assert_eq!(deserialize_map(&[1, 0, 0]), None);
        assert_eq!(deserialize_map(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(deserialize_map(&[255, 255, 255, 255]), None);
    }
}
