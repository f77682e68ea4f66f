//! `libgatewasm_platform.so`: the dynamic-module counterpart of the bench's Proxy-Wasm platform
//! modules (tools/xtask/src/bench/platform.rs). An Envoy 1.40 dynamic-module HTTP filter that
//! exports every hook Envoy looks up and does, per request, only what its `filter_config` says
//! ([`PlatformConfig`]): N request-header reads, N header-map reads, N request-header writes,
//! N response-header writes, N counter increments — or nothing. `just bench --instructions`
//! runs one Envoy per configuration under callgrind; the differences price the filter's
//! presence and each ABI callback (the report's "dynamic-module prices").
//!
//! Not part of `libgatewasm_envoy.so`: both export the same `envoy_dynamic_module_on_*` hooks,
//! and a price must not include gatewasm's own work. The few callbacks it calls are declared
//! here ([`abi`]), as `hosts/envoy-dynamic-module/src/abi.rs` declares them.

pub mod abi;
mod hooks;

use serde::Deserialize;

/// The most calls of one kind per request a configuration may ask for.
pub const MAX_CALLS: u32 = 64;

/// The request header [`abi::HEADER_TYPE_REQUEST`] writes set, and the response header the
/// response-header writes set (always the same value: a write replaces it).
pub const WRITTEN_HEADER: &str = "x-platform";
pub const WRITTEN_VALUE: &str = "value";

/// The counter the increments add to (Envoy's /stats: `dynamicmodulescustom.platform_counter`).
pub const COUNTER: &str = "platform_counter";

/// What the filter does per request (`filter_config`, JSON; empty: nothing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// `get_header(read_header)` calls in the request-headers hook. A read that finds nothing
    /// answers 500 (`platform_read_missing`), so a test can see the reads happen.
    #[serde(default)]
    pub request_header_reads: u32,
    /// The header those reads look up.
    #[serde(default = "default_read_header")]
    pub read_header: String,
    /// Whole request-header-map reads (`get_headers_size` + `get_headers`: how gatewasm reads
    /// a request) in the request-headers hook.
    #[serde(default)]
    pub request_header_map_reads: u32,
    /// `set_header(x-platform: value)` calls on the request in the request-headers hook.
    #[serde(default)]
    pub request_header_writes: u32,
    /// `set_header(x-platform: value)` calls on the response in the response-headers hook.
    #[serde(default)]
    pub response_header_writes: u32,
    /// `increment_counter(platform_counter, 1)` calls in the request-headers hook.
    #[serde(default)]
    pub counter_increments: u32,
}

fn default_read_header() -> String {
    ":path".to_string()
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            request_header_reads: 0,
            read_header: default_read_header(),
            request_header_map_reads: 0,
            request_header_writes: 0,
            response_header_writes: 0,
            counter_increments: 0,
        }
    }
}

impl PlatformConfig {
    /// Parses and checks a `filter_config`; the error names the field.
    pub fn parse(config: &[u8]) -> Result<PlatformConfig, String> {
        let config = if config.iter().all(u8::is_ascii_whitespace) {
            PlatformConfig::default()
        } else {
            serde_json::from_slice(config).map_err(|e| format!("invalid filter_config: {e}"))?
        };
        for (field, n) in [
            ("request_header_reads", config.request_header_reads),
            ("request_header_map_reads", config.request_header_map_reads),
            ("request_header_writes", config.request_header_writes),
            ("response_header_writes", config.response_header_writes),
            ("counter_increments", config.counter_increments),
        ] {
            if n > MAX_CALLS {
                return Err(format!("{field}: must be at most {MAX_CALLS}, got {n}"));
            }
        }
        if config.read_header.is_empty() {
            return Err("read_header: must not be empty".to_string());
        }
        Ok(config)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_does_nothing() {
        assert_eq!(PlatformConfig::parse(b""), Ok(PlatformConfig::default()));
        assert_eq!(PlatformConfig::parse(b"{}"), Ok(PlatformConfig::default()));
    }

    #[test]
    fn counts_are_read_and_bad_configs_name_the_field() {
        let config = PlatformConfig::parse(br#"{"request_header_writes": 8}"#).unwrap();
        assert_eq!(config.request_header_writes, 8);
        assert_eq!(config.read_header, ":path");
        let err = PlatformConfig::parse(br#"{"counter_increments": 65}"#).unwrap_err();
        assert!(
            err.starts_with("counter_increments: must be at most 64"),
            "{err}"
        );
        let err = PlatformConfig::parse(br#"{"reads": 1}"#).unwrap_err();
        assert!(err.contains("unknown field `reads`"), "{err}");
        let err = PlatformConfig::parse(br#"{"read_header": ""}"#).unwrap_err();
        assert!(err.starts_with("read_header:"), "{err}");
        let err = PlatformConfig::parse(b"[").unwrap_err();
        assert!(err.starts_with("invalid filter_config"), "{err}");
    }
}
