//! What several gatewasm filters share. Nothing here makes proxy-wasm host calls, so all of it
//! is plain Rust, unit-tested natively.
//!
//! - [`config`]: plugin configuration bytes → a typed config. Empty or absent configuration means
//!   all defaults; errors name the offending field (`max_length: invalid type ...`).
//! - [`headers`]: header-name validation/normalisation and duplicate-aware lookup in a header list
//!   as returned by `get_http_request_headers_bytes()`.
//! - [`reply`]: the small JSON body `{"error":"<reason>","message":"..."}` used for local replies.
//! - [`rng`]: the per-VM xoshiro256++ PRNG and its seeding from `getrandom` (WASI `random_get`,
//!   not a proxy-wasm call), shared by every filter that generates IDs.
//! - `schema` (feature `schema`, for tests only): keeps a filter's committed `config.schema.json`
//!   equal to what schemars generates.

pub mod config;
pub mod headers;
pub mod reply;
pub mod rng;
#[cfg(feature = "schema")]
pub mod schema;

pub use config::{ConfigError, parse_config};
