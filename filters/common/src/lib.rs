//! What several gatewasm filters share. Nothing here makes proxy-wasm host calls except
//! [`host`] (Wasm only), so the rest is plain Rust, unit-tested natively.
//!
//! - [`config`]: plugin configuration bytes → a typed config. Empty or absent configuration means
//!   all defaults; errors name the offending field (`max_length: invalid type ...`).
//! - [`headers`]: header-name validation/normalisation and duplicate-aware lookup in a header list
//!   as returned by `get_http_request_headers_bytes()`.
//! - `host` (Wasm only): the whole request or response header map in one host call, its pairs
//!   borrowed from the host's buffer (the SDK's `get_map_bytes` copies each header twice).
//! - [`reply`]: the small JSON body `{"error":"<reason>","message":"..."}` used for local replies.
//! - [`rng`]: the per-VM xoshiro256++ PRNG and its seeding from `getrandom` (WASI `random_get`,
//!   not a proxy-wasm call), shared by every filter that generates IDs.
//! - [`exports`]: the post-link step of `just build` (binary `trim-stream-exports`) that drops
//!   the exports of per-stream callbacks a filter leaves at the SDK default, so Envoy skips them.
//! - `schema` (feature `schema`, for tests only): keeps a filter's committed `config.schema.json`
//!   equal to what schemars generates.

pub mod config;
pub mod exports;
pub mod headers;
#[cfg(target_arch = "wasm32")]
pub mod host;
pub mod reply;
pub mod rng;
#[cfg(feature = "schema")]
pub mod schema;

pub use config::{ConfigError, parse_config};
