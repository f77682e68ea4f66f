//! What several gatewasm filters share. Nothing here makes proxy-wasm host calls except
//! `host` and `glue` (Wasm only), so the rest is plain Rust, unit-tested natively.
//!
//! - [`config`]: plugin configuration bytes → a typed config. Empty or absent configuration means
//!   all defaults; errors name the offending field (`max_length: invalid type ...`);
//!   `parse_or_log` is the parse step of every `on_configure`.
//! - `glue` (Wasm only): the root-context plumbing of every filter's proxy-wasm glue — reading
//!   and parsing the plugin configuration, defining and incrementing counters, the host clock,
//!   PRNG seeds. Its host-free decisions are in [`config`], [`metrics`], [`clock`] and [`rng`].
//! - [`bytes`]: byte-slice equality a word at a time (Wasm's `memcmp` goes byte by byte).
//! - [`clock`]: the host's `SystemTime` as nanoseconds or milliseconds since the epoch.
//! - [`metrics`]: a counter's id from the host's answer to its definition (refusals logged).
//! - [`headers`]: header-name validation/normalisation and duplicate-aware lookup in a header list
//!   as returned by `get_http_request_headers_bytes()`.
//! - `host` (Wasm only): the whole request or response header map in one host call, its pairs
//!   borrowed from the host's buffer (the SDK's `get_map_bytes` copies each header twice).
//! - [`reply`]: the small JSON body `{"error":"<reason>","message":"..."}` used for local replies.
//! - [`rng`]: the per-VM xoshiro256++ PRNG and its seeding from `getrandom` (WASI `random_get`,
//!   not a proxy-wasm call), shared by every filter that generates IDs.
//! - [`stage`]: the host-agnostic shape of a filter — a [`stage::Stage`] reads a request view and
//!   returns [`stage::Effects`]; hosts (`glue::StageRoot` for a filter's own module, the
//!   bundle's chain) apply them.
//! - `schema` (feature `schema`, for tests only): keeps a filter's committed `config.schema.json`
//!   equal to what schemars generates.

pub mod bytes;
pub mod clock;
pub mod config;
#[cfg(target_arch = "wasm32")]
pub mod glue;
pub mod headers;
#[cfg(target_arch = "wasm32")]
pub mod host;
pub mod metrics;
pub mod reply;
pub mod rng;
#[cfg(feature = "schema")]
pub mod schema;
pub mod stage;
#[cfg(test)]
mod test_log;

pub use config::{ConfigError, parse_config};
