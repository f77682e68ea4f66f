//! The remote JWKS, shared by every worker VM of the process through shared data:
//!
//! - `gatewasm.jwt.<config-hash>.jwks.<provider>`: the last good JWKS document (raw JSON).
//! - `gatewasm.jwt.<config-hash>.meta.<provider>`: a small [`Meta`] record — version of the
//!   document, when it was fetched, the fetch lease, the last attempt and the last failure.
//!
//! Single flight: a worker's root context fetches only after winning the lease with a CAS
//! write of the meta record (`lease_until` in the future); every other worker sees the lease
//! and waits, then loads the new document when `version` moves. A lease outlives a fetch's
//! timeout by [`LEASE_SLACK_MS`], so a worker that dies mid-fetch delays the next one only
//! that long. Two key families per provider and configuration: bounded.

/// Extra lease time beyond the fetch timeout.
pub const LEASE_SLACK_MS: u64 = 1000;
/// Least time between two attempts while the process has no keys at all.
pub const NO_KEYS_RETRY_MS: u64 = 1000;
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// A JWKS fetch's answer, judged the same way by every host that fetches (the Wasm root
/// context, the dynamic module's key driver): the key set when the answer is usable — status
/// `200`, at most [`MAX_JWKS_BYTES`], a document that parses — else `None`, with a warning that
/// names the provider, why, and what the process is left with (`has_keys`: the last good keys).
/// `body`: what the host handed over (`None`: nothing, e.g. too large to read).
pub fn judge_fetch(
    provider: &str,
    status: Option<&str>,
    body_len: usize,
    body: Option<&[u8]>,
    has_keys: bool,
) -> Option<crate::jwk::KeySet> {
    let kept = if has_keys {
        "keeping the last good keys"
    } else {
        "there are no keys yet"
    };
    match (status, body) {
        (Some("200"), _) if body_len > MAX_JWKS_BYTES => {
            log::warn!(
                "jwt-to-header: providers.{provider}: the fetched JWKS is too large ({body_len} bytes, at most {MAX_JWKS_BYTES}); {kept}"
            );
            None
        }
        (Some("200"), Some(bytes)) => match crate::jwk::parse_jwks_bytes(bytes) {
            Ok(keys) => Some(keys),
            Err(e) => {
                log::warn!(
                    "jwt-to-header: providers.{provider}: the fetched JWKS is unusable: {e}"
                );
                None
            }
        },
        _ => {
            log::warn!(
                "jwt-to-header: providers.{provider}: JWKS fetch failed (status {}, {body_len} body bytes); {kept}",
                status.unwrap_or("none")
            );
            None
        }
    }
}

pub fn data_key(config_hash: &str, provider: &str) -> String {
    format!("gatewasm.jwt.{config_hash}.jwks.{provider}")
}

pub fn meta_key(config_hash: &str, provider: &str) -> String {
    format!("gatewasm.jwt.{config_hash}.meta.{provider}")
}

/// The shared fetch state of one provider. Times are Unix milliseconds; 0 = never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Bumped on every successful fetch; 0 = no document yet.
    pub version: u64,
    pub fetched_at: u64,
    pub lease_until: u64,
    pub last_attempt: u64,
    pub failed_at: u64,
}

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "v1 {} {} {} {} {}",
            self.version, self.fetched_at, self.lease_until, self.last_attempt, self.failed_at
        )
        .into_bytes()
    }

    /// `None` for anything but a record written by [`Meta::encode`].
    pub fn decode(b: &[u8]) -> Option<Meta> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.split(' ');
        if it.next()? != "v1" {
            return None;
        }
        let mut n = || it.next()?.parse::<u64>().ok();
        let m = Meta {
            version: n()?,
            fetched_at: n()?,
            lease_until: n()?,
            last_attempt: n()?,
            failed_at: n()?,
        };
        it.next().is_none().then_some(m)
    }

    pub fn leased(&self, now: u64) -> bool {
        self.lease_until > now
    }

    /// Whether a fetch should start now: nobody holds the lease, and the process has no keys
    /// (retry every [`NO_KEYS_RETRY_MS`]), or a refresh is due, or a worker wants a refetch for
    /// an unknown `kid` — the last two at most once per `min_interval_ms`.
    pub fn fetch_due(
        &self,
        now: u64,
        refresh_ms: u64,
        min_interval_ms: u64,
        refetch: bool,
    ) -> bool {
        if self.leased(now) {
            return false;
        }
        let since_attempt = now.saturating_sub(self.last_attempt);
        if self.version == 0 {
            return self.last_attempt == 0 || since_attempt >= NO_KEYS_RETRY_MS;
        }
        let refresh_due = now.saturating_sub(self.fetched_at) >= refresh_ms;
        (refresh_due || refetch) && since_attempt >= min_interval_ms.max(NO_KEYS_RETRY_MS)
    }

    /// Whether an unknown `kid` may cause a refetch now (or one is already running).
    pub fn refetch_allowed(&self, now: u64, min_interval_ms: u64) -> bool {
        self.leased(now)
            || self.version == 0
            || now.saturating_sub(self.last_attempt) >= min_interval_ms.max(NO_KEYS_RETRY_MS)
    }

    /// The record that takes the lease.
    pub fn acquire(&self, now: u64, timeout_ms: u64) -> Meta {
        Meta {
            lease_until: now + timeout_ms + LEASE_SLACK_MS,
            last_attempt: now,
            ..*self
        }
    }

    pub fn succeeded(&self, now: u64) -> Meta {
        Meta {
            version: self.version + 1,
            fetched_at: now,
            lease_until: 0,
            ..*self
        }
    }

    pub fn failed(&self, now: u64) -> Meta {
        Meta {
            lease_until: 0,
            failed_at: now,
            ..*self
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let m = Meta {
            version: 3,
            fetched_at: 10,
            lease_until: 20,
            last_attempt: 30,
            failed_at: 40,
        };
        assert_eq!(Meta::decode(&m.encode()), Some(m));
        for bad in [
            &b""[..],
            b"v1 1 2 3 4",
            b"v1 1 2 3 4 5 6",
            b"v2 1 2 3 4 5",
            b"v1 a 2 3 4 5",
        ] {
            assert_eq!(Meta::decode(bad), None);
        }
        assert_eq!(data_key("ab", "p"), "gatewasm.jwt.ab.jwks.p");
        assert_eq!(meta_key("ab", "p"), "gatewasm.jwt.ab.meta.p");
    }

    #[test]
    fn first_fetch_then_retry_backoff() {
        let m = Meta::default();
        assert!(m.fetch_due(5_000, 600_000, 30_000, false));
        let leased = m.acquire(5_000, 1_000);
        assert_eq!(leased.lease_until, 7_000);
        assert!(!leased.fetch_due(6_000, 600_000, 30_000, true), "leased");
        let failed = leased.failed(6_000);
        assert!(!failed.fetch_due(5_500, 600_000, 30_000, false));
        assert!(
            failed.fetch_due(6_000, 600_000, 30_000, false),
            "retry after 1 s without keys"
        );
        // An expired lease (a worker died mid-fetch) no longer blocks.
        assert!(leased.fetch_due(7_000, 600_000, 30_000, false));
    }

    #[test]
    fn refresh_and_rate_limited_refetch() {
        let ok = Meta::default().acquire(0, 1_000).succeeded(100);
        assert_eq!((ok.version, ok.fetched_at, ok.lease_until), (1, 100, 0));
        assert!(!ok.fetch_due(10_000, 600_000, 30_000, false));
        assert!(
            !ok.fetch_due(10_000, 600_000, 30_000, true),
            "refetch too soon"
        );
        assert!(!ok.refetch_allowed(10_000, 30_000));
        assert!(ok.fetch_due(30_000, 600_000, 30_000, true));
        assert!(ok.refetch_allowed(30_000, 30_000));
        assert!(ok.fetch_due(600_100, 600_000, 30_000, false), "refresh due");
        assert!(
            ok.acquire(40_000, 1_000).refetch_allowed(40_500, 30_000),
            "a fetch is running"
        );
    }
}
