//! gatewasm jwt-to-header filter: verifies JSON Web Tokens at the edge and forwards only
//! trusted claims, as request headers, to the upstream. Every header the filter can set is
//! removed from every incoming request first, so a client can never inject one. Keys come
//! inline or from a remote JWKS that ONE worker VM fetches for the whole process (shared data,
//! CAS lease); an unknown `kid` triggers a rate-limited refetch while the request waits.
//! Signatures are verified with the host's native crypto (`verify_signature`) where it can
//! express the algorithm (RS*, ES*), with jwt-simple otherwise; verified tokens are cached per
//! worker. See README.md for configuration and behaviour.
//!
//! Modules — all pure and unit-tested natively, except `glue`:
//! - [`config`]: JSON configuration → validated [`config::Settings`] (once, in `on_configure`).
//! - [`jwk`]: JWKS parsing, algorithms and their binding to key types.
//! - [`token`]: finding the token (headers, query, cookies) and splitting/decoding it.
//! - [`claims`]: `iss`/`aud`/`sub`/time checks, scopes, claims rendered as header values.
//! - [`verify`]: signatures — native `verify_signature` (hand-encoded protobuf) or jwt-simple.
//! - [`cache`]: the per-worker LRU of verified tokens.
//! - [`auth`]: one request → [`auth::Decision`].
//! - [`jwks`]: the shared-data protocol of the remote JWKS (lease, refresh, refetch).
//! - [`reply`]: RFC 6750 `WWW-Authenticate` and the JSON body of refusals.
//! - [`stage`]: the filter as a host-agnostic stage (gatewasm-common `Stage`) and the per-VM key
//!   state it shares with its root; every host (this module, the bundle's chain) runs it.
//! - `glue` (wasm32 only): the filter's own module (root and HTTP contexts) and the remote-JWKS
//!   driver (ticks, fetches, waking), which the bundle's chain root uses too.

pub mod auth;
pub mod cache;
pub mod claims;
pub mod config;
pub mod jwk;
pub mod jwks;
pub mod reply;
pub mod stage;
pub mod token;
pub mod verify;

#[cfg(target_arch = "wasm32")]
pub mod glue;
