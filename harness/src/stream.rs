//! The state of one HTTP stream as the filter chain and the test see it: Envoy's header maps
//! (lowercase keys, ordered, duplicates kept, first value on lookup), what the upstream and the
//! client received, and the local reply if a filter sent one.

use std::collections::HashMap;

/// A header map with Envoy's rules: keys are lowercased on the way in; order and duplicates are
/// kept; [`HeaderMap::get`] returns the first value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeaderMap {
    pub fn new() -> HeaderMap {
        HeaderMap::default()
    }

    /// From `(name, value)` string pairs.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.add(k.as_bytes(), v.as_bytes());
        }
        m
    }

    /// From raw byte pairs (non-UTF-8 values are legal in HTTP/1 and reach filters as bytes).
    pub fn from_byte_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.add(&k, &v);
        }
        m
    }

    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.pairs.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// Replaces every value of `name` with one (Envoy's `setCopy`): the first occurrence keeps its place.
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        let name = name.to_ascii_lowercase();
        match self.pairs.iter().position(|(k, _)| *k == name) {
            Some(first) => {
                self.pairs[first].1 = value.to_vec();
                let mut i = 0;
                self.pairs.retain(|(k, _)| {
                    let keep = *k != name || i == first;
                    i += 1;
                    keep
                });
            }
            None => self.pairs.push((name, value.to_vec())),
        }
    }

    pub fn remove(&mut self, name: &[u8]) {
        let name = name.to_ascii_lowercase();
        self.pairs.retain(|(k, _)| *k != name);
    }

    /// The first value of `name` as bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.pairs
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` (lossy UTF-8).
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_bytes(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.pairs
            .iter()
            .filter(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    pub fn pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.pairs
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub(crate) fn set_all(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) {
        *self = HeaderMap::from_byte_pairs(pairs);
    }
}

/// A response a filter produced itself with `send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Index in the chain of the filter that sent it.
    pub sent_by: usize,
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    /// The headers the filter passed (the client gets them plus `:status` and content headers).
    pub headers: HeaderMap,
    /// `None` when the filter passed no gRPC status (the SDK sends -1).
    pub grpc_status: Option<i32>,
}

/// Per-stream connection facts behind the `source.*`, `destination.*` and `request.*` properties.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The downstream peer `ip:port` (Envoy's `source.address`).
    pub source_address: String,
    /// The address the connection was accepted on (`destination.address`).
    pub destination_address: String,
    /// `request.protocol`, e.g. "HTTP/1.1".
    pub protocol: String,
    /// Route name (`xds.route_name`).
    pub route_name: String,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            source_address: "127.0.0.1:50000".to_string(),
            destination_address: "127.0.0.1:10000".to_string(),
            protocol: "HTTP/1.1".to_string(),
            route_name: "default".to_string(),
        }
    }
}

/// Everything a stream has: the live maps the filters edit, and what each side received.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) request_headers: HeaderMap,
    pub(crate) request_trailers: HeaderMap,
    pub(crate) response_headers: HeaderMap,
    pub(crate) response_trailers: HeaderMap,
    pub(crate) options: Option<StreamOptions>,
    /// Properties set by filters (`proxy_set_property`), Envoy's filter state.
    pub(crate) filter_state: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) route_cache_clears: usize,
    /// The client's request was a HEAD (as Envoy's connection manager records it on arrival):
    /// local replies then carry their `content-length` but no body.
    pub(crate) head_request: bool,
    pub(crate) view: StreamView,
}

/// What a test asserts on: the request as the upstream got it, the response as the client got it.
#[derive(Debug, Clone, Default)]
pub struct StreamView {
    /// Request headers as they left the last filter (None until the whole chain let them through).
    pub upstream_request_headers: Option<HeaderMap>,
    pub upstream_request_body: Vec<u8>,
    pub upstream_request_trailers: Option<HeaderMap>,
    /// Whether the upstream saw the end of the request.
    pub upstream_request_complete: bool,
    /// Response headers as the client got them (from the upstream or a local reply).
    pub client_response_headers: Option<HeaderMap>,
    pub client_response_body: Vec<u8>,
    pub client_response_trailers: Option<HeaderMap>,
    pub client_response_complete: bool,
    /// The local reply a filter sent, if any.
    pub local_response: Option<LocalResponse>,
    /// Set when a filter reset the stream with `close_stream`.
    pub reset: bool,
    /// How often filters called the `clear_route_cache` foreign function on this stream.
    pub route_cache_clears: usize,
    /// The properties (filter state) filters set on this stream, by NUL-joined path.
    pub filter_state: Vec<(String, Vec<u8>)>,
}

impl StreamView {
    /// The `:status` the client got.
    pub fn status(&self) -> Option<u32> {
        self.client_response_headers
            .as_ref()?
            .get(":status")?
            .parse()
            .ok()
    }
}
