//! gatewasm correlation-id filter: every request leaves with exactly one trustworthy correlation
//! ID (`x-request-id` by default) and every response carries it back.
//!
//! A valid incoming ID (`[A-Za-z0-9._:-]`, 1..=`max_length` bytes, sent once) is kept when
//! `trust_incoming` is on; otherwise a fresh UUID (v4, or time-sortable v7) replaces it.
//! See README.md for configuration and behaviour.
//!
//! Modules — all pure and unit-tested natively, except `glue`:
//! - [`config`]: JSON configuration → validated [`config::Settings`] (once, in `on_configure`).
//! - [`incoming`]: validation of an incoming ID and the per-request [`incoming::Plan`].
//! - [`uuid`]: RFC 9562 v4/v7 generation into a fixed 36-byte buffer (monotonic v7).
//! - `glue` (wasm32 only): the proxy-wasm root and HTTP contexts, metrics and host calls.
//!
//! The PRNG (xoshiro256++ seeded from `getrandom`) is `gatewasm_common::rng`, shared with the
//! other filters.

pub mod config;
pub mod incoming;
pub mod uuid;

#[cfg(target_arch = "wasm32")]
mod glue;
