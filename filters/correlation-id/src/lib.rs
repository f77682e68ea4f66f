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
//! - [`stage`]: the filter as a host-agnostic stage (gatewasm-common `Stage`): request view in,
//!   effects out; every host (this module, the bundle's chain) runs it.
//! - `glue` (wasm32 only): the filter's own module, a `StageRoot` over the stage; `root_context`
//!   is also the bundle's `correlation-id` root.
//!
//! The PRNG (xoshiro256++ seeded from `getrandom`) is `gatewasm_common::rng`, shared with the
//! other filters.

pub mod config;
pub mod incoming;
pub mod stage;
pub mod uuid;

#[cfg(target_arch = "wasm32")]
pub mod glue;
