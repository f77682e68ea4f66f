//! gatewasm trace-propagation filter: validates the incoming trace context (W3C Trace Context
//! Level 2, B3 single and multi header), continues it or starts a new trace, and sends the
//! upstream the configured formats — so one gateway converts B3 callers to W3C services and back,
//! and never forwards an invalid parent.
//!
//! See README.md for configuration and behaviour.
//!
//! Modules — all pure and unit-tested natively, except `glue`:
//! - [`config`]: JSON configuration → validated [`config::Settings`] (once, in `on_configure`).
//! - [`context`]: the format-independent trace context ([`context::Extracted`],
//!   [`context::Outgoing`]) and [`context::Invalid`] (why a header was refused).
//! - [`ids`]: strict lowercase-hex parsing, hex rendering into stack buffers, fresh random ids.
//! - [`w3c`]: `traceparent` parse/render, `tracestate` validation/truncation/render.
//! - [`b3`]: the single `b3` header and the `X-B3-*` headers, parse and render.
//! - [`baggage`]: W3C Baggage limits (64 members, 8192 bytes; whole members dropped).
//! - [`propagate`]: the per-request decision — headers in, header writes out to a sink, and a
//!   [`propagate::Plan`] (counter, sampled, trace id to echo). It ties the modules above together.
//! - [`stage`]: the filter as a host-agnostic stage (gatewasm-common `Stage`): request view in,
//!   effects out; every host (this module, the bundle's chain) runs it.
//! - `glue` (wasm32 only): the filter's own module, a `StageRoot` over the stage; `root_context`
//!   is also the bundle's `trace-propagation` root.
//!
//! The PRNG (xoshiro256++ seeded from `getrandom`) is `gatewasm_common::rng`, shared with the
//! other filters.

pub mod b3;
pub mod baggage;
pub mod config;
pub mod context;
pub mod ids;
pub mod propagate;
pub mod stage;
pub mod w3c;

#[cfg(target_arch = "wasm32")]
pub mod glue;
