//! `libgatewasm_envoy.so`: the five gatewasm filters — and chain mode, all of them as one
//! filter — as an Envoy dynamic module (`envoy.filters.http.dynamic_modules`, Envoy 1.40).
//! The filters are the same stages the Wasm modules run (`filters/*/src/stage.rs`),
//! configured from the same JSON with the same errors; this crate is only another host.
//!
//! How the modules fit:
//! - [`spec`] (host-free): `filter_name` + `filter_config` → the stages to run, parsed by the
//!   chain plan the Proxy-Wasm bundle uses (`gatewasm-chain-plan`).
//! - [`pipeline`] (host-free): builds the stages (each filter's own config parser; what this
//!   slice cannot do is refused at its field) and runs one stream through them — one read of
//!   the request headers, the fewest writes back — against a `StreamHost` trait.
//! - [`grpc`] (host-free): a stage's gRPC call as an HTTP/2 callout, and reading its answer
//!   from what the ABI hands back (headers and body; no trailers).
//! - [`keys`] (host-free): jwt-to-header's remote JWKS, fetched once per process by one driver
//!   per configuration on the main thread; waiting requests woken.
//! - [`guard`] (host-free): the `catch_unwind` every hook runs under.
//! - [`box_pool`] (host-free): ended streams' allocations kept for a worker's next streams.
//! - [`shared_data`] (host-free): the process-wide shared data (Envoy's CAS rules) that makes
//!   rate limits exact across workers.
//! - [`signature`] (host-free): Envoy's `verify_signature` foreign function with ring, so
//!   jwt-to-header verifies RS*/ES* natively here too.
//! - `abi` (native, not in unit tests): the `extern "C"` declarations of the Envoy 1.40 ABI we
//!   call, and a safe layer over them; `hooks` (same): the `envoy_dynamic_module_on_*` exports,
//!   each under `catch_unwind`, implementing `StreamHost` over `abi`; `proxy_wasm_stubs`
//!   (same): the Proxy-Wasm imports the SDK's exports reference, defined so `dlopen` succeeds.
//!
//! `abi` and `hooks` are left out of unit-test builds: their callbacks are symbols of the
//! Envoy binary, resolved when Envoy loads the library, and a test executable has none. The
//! end-to-end tests (tests/) run the built library in a real Envoy.

pub mod box_pool;
pub mod grpc;
pub mod guard;
pub mod keys;
pub mod pipeline;
pub mod shared_data;
pub mod signature;
pub mod spec;

#[cfg(all(not(test), not(target_arch = "wasm32")))]
mod abi;
#[cfg(all(not(test), not(target_arch = "wasm32")))]
mod hooks;
#[cfg(all(not(test), not(target_arch = "wasm32")))]
mod proxy_wasm_stubs;
