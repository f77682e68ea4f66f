//! jwt-to-header's remote JWKS on the dynamic module, host-free: one [`KeyDriver`] per filter
//! configuration, run on Envoy's main thread, fetches each provider's key set once per process
//! and refreshes it; the workers' stages load it from the process's shared data, and requests
//! that arrived before the keys wait and are woken.
//!
//! The state machine is jwt-to-header's own, as the Wasm modules run it: the shared-data
//! records ([`jwt_to_header::jwks`]: the document, and the [`Meta`] record with its version,
//! fetch lease and times), when a fetch is due ([`Meta::fetch_due`]: first fetch, retry every
//! second without keys, refresh, a refetch for an unknown `kid` at most once per
//! `min_refetch_interval_s`), the lease taken by CAS, the answer judged
//! ([`jwt_to_header::jwks::judge_fetch`]: `200`, capped size, a parsable document); on the worker side the stage decides
//! when to wait, loads a newer version ([`jwt_to_header::stage::load_if_newer`]) and decides
//! again once woken (`on_woken`). What differs is who drives it: in Wasm every worker VM's root
//! context ticks and the one that wins the lease fetches; here one driver per configuration,
//! on the main thread (the ABI's config-level scheduler and HTTP callout), so a process fetches
//! once however many workers it has. The lease still makes two configurations with the same
//! providers (or a configuration update) fetch once.
//!
//! Waking: a waiting request registers a wake-up (its worker's scheduler, in the host) with
//! its provider and deadline; the driver wakes a provider's waiters when a fetch of it ends
//! (keys or failure), when no fetch of it is running or due (nothing to wait for), and any
//! waiter whose deadline passed. A woken request decides without waiting again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gatewasm_common::stage::SetResult;
use jwt_to_header::config::{Remote, Settings};
use jwt_to_header::jwks::{Meta, data_key, judge_fetch, meta_key};

use crate::shared_data::SharedData;

/// How often the driver looks at its providers (a fetch due, a deadline passed): the Wasm
/// modules' key-driver tick.
pub const TICK: Duration = Duration::from_millis(100);

/// One provider with `remote_jwks`, of one jwt-to-header stage.
struct Provider {
    /// Its shared-data meta key (the stage's configuration hash and the provider's name): what
    /// names it to waiters too.
    meta_key: String,
    data_key: String,
    name: String,
    remote: Remote,
    /// A request saw a `kid` the keys do not have (set by a waiter; the next tick may refetch).
    refetch_wanted: AtomicBool,
}

/// A request waiting for a provider's keys.
struct Waiter<W> {
    stream: u64,
    /// The provider's meta key.
    provider: String,
    deadline_ms: u64,
    wake: W,
}

/// What the driver asks of Envoy, on the main thread.
pub trait DriverHost {
    /// GET the provider's JWKS (`remote`: cluster, path, authority, timeout): the callout's id,
    /// its answer coming to [`KeyDriver::on_response`]; `None` when Envoy did not send it
    /// (logged by the host).
    fn fetch(&mut self, remote: &Remote) -> Option<u64>;
}

/// The key driver of one filter configuration. `W`: how the host wakes a waiting request
/// (committed under the waiters' lock, so a request that goes away can take its wake-up out
/// first).
pub struct KeyDriver<W> {
    providers: Vec<Provider>,
    /// Callouts in flight: (id, provider index).
    inflight: Mutex<Vec<(u64, usize)>>,
    waiters: Mutex<Vec<Waiter<W>>>,
    /// Fetches that ended, not yet counted (`jwks_fetch_ok`, `jwks_fetch_failed`): the
    /// counters are incremented from a request's hook ([`KeyDriver::take_counts`]).
    fetched_ok: AtomicU64,
    fetched_failed: AtomicU64,
}

impl<W> KeyDriver<W> {
    /// The driver of every provider with `remote_jwks` of these stages' settings; `None` when
    /// there is none.
    pub fn new<'s>(settings: impl IntoIterator<Item = &'s Settings>) -> Option<Self> {
        let providers: Vec<Provider> = settings
            .into_iter()
            .flat_map(|s| {
                s.providers.iter().filter_map(|p| {
                    p.remote.as_ref().map(|remote| Provider {
                        meta_key: meta_key(&s.config_hash, &p.name),
                        data_key: data_key(&s.config_hash, &p.name),
                        name: p.name.clone(),
                        remote: remote.clone(),
                        refetch_wanted: AtomicBool::new(false),
                    })
                })
            })
            .collect();
        (!providers.is_empty()).then(|| KeyDriver {
            providers,
            inflight: Mutex::new(Vec::new()),
            waiters: Mutex::new(Vec::new()),
            fetched_ok: AtomicU64::new(0),
            fetched_failed: AtomicU64::new(0),
        })
    }

    /// A request waits for `provider`'s keys (its meta key) until `deadline_ms` at the latest;
    /// `unknown_kid`: it saw a key id the keys do not have (a refetch is wanted).
    pub fn register(
        &self,
        stream: u64,
        provider: &str,
        deadline_ms: u64,
        unknown_kid: bool,
        wake: W,
    ) {
        if unknown_kid && let Some(p) = self.providers.iter().find(|p| p.meta_key == provider) {
            p.refetch_wanted.store(true, Ordering::Relaxed);
        }
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.push(Waiter {
                stream,
                provider: provider.to_owned(),
                deadline_ms,
                wake,
            });
        }
    }

    /// Request `stream` goes away: its wake-up, if still registered (it must not be woken after
    /// this returns).
    pub fn unregister(&self, stream: u64) -> Option<W> {
        let mut waiters = self.waiters.lock().ok()?;
        let at = waiters.iter().position(|w| w.stream == stream)?;
        Some(waiters.swap_remove(at).wake)
    }

    /// Wake (and forget) the waiters `due` picks, each with `wake`, under the waiters' lock.
    fn wake_where(&self, due: impl Fn(&Waiter<W>) -> bool, wake: &mut dyn FnMut(&W)) {
        let Ok(mut waiters) = self.waiters.lock() else {
            return;
        };
        waiters.retain(|w| {
            if due(w) {
                wake(&w.wake);
                false
            } else {
                true
            }
        });
    }

    /// One look at every provider: start the fetches that are due (this process's lease taken),
    /// then wake the waiters with nothing left to wait for — their deadline passed, or no fetch
    /// of their provider is running.
    pub fn tick(
        &self,
        now_ms: u64,
        shared: &SharedData,
        host: &mut dyn DriverHost,
        wake: &mut dyn FnMut(&W),
    ) {
        for (index, p) in self.providers.iter().enumerate() {
            let busy = self
                .inflight
                .lock()
                .map(|f| f.iter().any(|(_, i)| *i == index))
                .unwrap_or(true);
            if busy {
                continue;
            }
            let (mut meta, mut cas) = read_meta(shared, &p.meta_key);
            if meta.is_none() {
                // First here: create the record (every creator writes the same empty record;
                // the lease below is taken by CAS).
                let _ = shared.set(&p.meta_key, &Meta::default().encode(), None);
                (meta, cas) = read_meta(shared, &p.meta_key);
            }
            let Some(meta) = meta else {
                continue;
            };
            let wanted = p.refetch_wanted.load(Ordering::Relaxed);
            let due = meta.fetch_due(
                now_ms,
                p.remote.refresh_s.saturating_mul(1000),
                p.remote.min_refetch_interval_s.saturating_mul(1000),
                wanted,
            );
            if !due {
                continue;
            }
            let leased = meta.acquire(now_ms, p.remote.timeout_ms);
            if shared.set(&p.meta_key, &leased.encode(), cas) != SetResult::Ok {
                continue; // another configuration took the lease
            }
            p.refetch_wanted.store(false, Ordering::Relaxed);
            match host.fetch(&p.remote) {
                Some(id) => {
                    if let Ok(mut inflight) = self.inflight.lock() {
                        inflight.push((id, index));
                    }
                }
                None => self.finish(index, None, now_ms, shared, wake),
            }
        }
        let running: Vec<&str> = self
            .inflight
            .lock()
            .map(|f| {
                f.iter()
                    .filter_map(|(_, i)| self.providers.get(*i))
                    .map(|p| p.meta_key.as_str())
                    .collect()
            })
            .unwrap_or_default();
        // A lease held elsewhere (another configuration's fetch) is something to wait for too.
        let leased_elsewhere = |key: &str| {
            read_meta(shared, key)
                .0
                .is_some_and(|meta| meta.leased(now_ms))
        };
        self.wake_where(
            |w| {
                now_ms >= w.deadline_ms
                    || (!running.contains(&w.provider.as_str()) && !leased_elsewhere(&w.provider))
            },
            wake,
        );
    }

    /// The answer to callout `id` (`None`: not this driver's): `status`, the `:status` header;
    /// `result_ok`: the callout completed (not reset).
    pub fn on_response(
        &self,
        id: u64,
        status: Option<&[u8]>,
        body: &[u8],
        now_ms: u64,
        shared: &SharedData,
        wake: &mut dyn FnMut(&W),
    ) -> Option<()> {
        let index = {
            let mut inflight = self.inflight.lock().ok()?;
            let at = inflight.iter().position(|(i, _)| *i == id)?;
            inflight.swap_remove(at).1
        };
        let p = self.providers.get(index)?;
        let status = status.map(String::from_utf8_lossy);
        let has_keys = shared.get(&p.data_key).0.is_some();
        let fetched =
            judge_fetch(&p.name, status.as_deref(), body.len(), Some(body), has_keys).map(|_| body);
        self.finish(index, fetched, now_ms, shared, wake);
        Some(())
    }

    /// Record a fetch's outcome (`fetched`: the document, parsed fine) in shared data, count it
    /// and wake the provider's waiters.
    fn finish(
        &self,
        index: usize,
        fetched: Option<&[u8]>,
        now_ms: u64,
        shared: &SharedData,
        wake: &mut dyn FnMut(&W),
    ) {
        let Some(p) = self.providers.get(index) else {
            return;
        };
        if let Some(bytes) = fetched {
            let _ = shared.set(&p.data_key, bytes, None);
        }
        // Read-modify-write under CAS; a few retries cover a concurrent first create.
        for _ in 0..4 {
            let (meta, cas) = read_meta(shared, &p.meta_key);
            let meta = meta.unwrap_or_default();
            let next = if fetched.is_some() {
                meta.succeeded(now_ms)
            } else {
                meta.failed(now_ms)
            };
            if shared.set(&p.meta_key, &next.encode(), cas) == SetResult::Ok {
                break;
            }
        }
        let counter = if fetched.is_some() {
            &self.fetched_ok
        } else {
            &self.fetched_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.wake_where(|w| w.provider == p.meta_key, wake);
    }

    /// The fetches that ended since the last call: (succeeded, failed).
    pub fn take_counts(&self) -> (u64, u64) {
        (
            self.fetched_ok.swap(0, Ordering::Relaxed),
            self.fetched_failed.swap(0, Ordering::Relaxed),
        )
    }
}

fn read_meta(shared: &SharedData, key: &str) -> (Option<Meta>, Option<u32>) {
    match shared.get(key) {
        (Some(bytes), cas) => (Meta::decode(&bytes), cas),
        (None, cas) => (None, cas),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn settings(name: &str) -> Settings {
        let config = format!(
            r#"{{"providers": {{"{name}": {{"issuer": "https://idp", "remote_jwks": {{"cluster": "idp", "authority": "idp", "path": "/jwks", "timeout_ms": 1000}}}}}},
                "rules": [{{"match": {{"prefix": "/"}}, "requires": "{name}"}}]}}"#
        );
        jwt_to_header::config::parse_settings(Some(config.as_bytes())).unwrap()
    }

    /// Envoy as a list of fetches.
    #[derive(Default)]
    struct Fetches {
        sent: Vec<String>,
        refuse: bool,
    }

    impl DriverHost for Fetches {
        fn fetch(&mut self, remote: &Remote) -> Option<u64> {
            if self.refuse {
                return None;
            }
            self.sent.push(remote.path.clone());
            Some(self.sent.len() as u64)
        }
    }

    #[test]
    fn no_driver_without_remote_jwks() {
        let inline = jwt_to_header::config::parse_settings(Some(
            format!(
                r#"{{"providers": {{"p": {{"issuer": "https://idp", "jwks": {JWKS}}}}},
                    "rules": [{{"match": {{"prefix": "/"}}, "requires": "p"}}]}}"#
            )
            .as_bytes(),
        ))
        .unwrap();
        assert!(KeyDriver::<u32>::new([&inline]).is_none());
        assert!(KeyDriver::<u32>::new([&inline, &settings("mixed")]).is_some());
    }

    #[test]
    fn fetches_once_then_wakes_its_waiters_with_the_keys_in_shared_data() {
        let shared = SharedData::new();
        let s = settings("once");
        let driver: KeyDriver<u32> = KeyDriver::new([&s]).unwrap();
        let key = meta_key(&s.config_hash, "once");
        let mut host = Fetches::default();
        let mut woken = Vec::new();
        driver.register(1, &key, 10_000, false, 7);
        driver.tick(1_000, &shared, &mut host, &mut |w| woken.push(*w));
        assert_eq!(host.sent, ["/jwks"]);
        assert!(woken.is_empty(), "a fetch is running");
        // A second tick (or another configuration) does not fetch again.
        driver.tick(1_050, &shared, &mut host, &mut |w| woken.push(*w));
        assert_eq!(host.sent.len(), 1);
        driver.on_response(1, Some(b"200"), JWKS.as_bytes(), 1_100, &shared, &mut |w| {
            woken.push(*w)
        });
        assert_eq!(woken, [7]);
        let (meta, _) = read_meta(&shared, &key);
        assert_eq!(meta.unwrap().version, 1);
        assert_eq!(
            shared.get(&data_key(&s.config_hash, "once")).0.as_deref(),
            Some(JWKS.as_bytes())
        );
        assert_eq!(driver.take_counts(), (1, 0));
        assert_eq!(driver.take_counts(), (0, 0));
        // Not due again before the refresh.
        driver.tick(2_000, &shared, &mut host, &mut |w| woken.push(*w));
        assert_eq!(host.sent.len(), 1);
    }

    #[test]
    fn a_failed_fetch_wakes_the_waiters_and_is_retried_a_second_later() {
        let shared = SharedData::new();
        let s = settings("failing");
        let driver: KeyDriver<u32> = KeyDriver::new([&s]).unwrap();
        let key = meta_key(&s.config_hash, "failing");
        let mut host = Fetches::default();
        let mut woken = Vec::new();
        driver.tick(1_000, &shared, &mut host, &mut |w| woken.push(*w));
        driver.register(1, &key, 10_000, false, 7);
        driver.on_response(1, Some(b"503"), b"", 1_100, &shared, &mut |w| {
            woken.push(*w)
        });
        assert_eq!(woken, [7]);
        assert_eq!(driver.take_counts(), (0, 1));
        driver.tick(1_500, &shared, &mut host, &mut |w| woken.push(*w));
        assert_eq!(host.sent.len(), 1, "retried too soon");
        driver.tick(2_100, &shared, &mut host, &mut |w| woken.push(*w));
        assert_eq!(host.sent.len(), 2);
        // A document that is not a JWKS is a failure too.
        driver.on_response(2, Some(b"200"), b"{}", 2_200, &shared, &mut |_| {});
        assert_eq!(driver.take_counts(), (0, 1));
        // A fetch Envoy refuses to send fails at once.
        let refused = KeyDriver::<u32>::new([&settings("refused")]).unwrap();
        let mut host = Fetches {
            refuse: true,
            ..Fetches::default()
        };
        refused.tick(1_000, &shared, &mut host, &mut |_| {});
        assert_eq!(refused.take_counts(), (0, 1));
    }

    #[test]
    fn waiters_wake_at_their_deadline_or_with_nothing_to_wait_for_and_can_leave() {
        let shared = SharedData::new();
        let s = settings("deadline");
        let driver: KeyDriver<u32> = KeyDriver::new([&s]).unwrap();
        let key = meta_key(&s.config_hash, "deadline");
        let mut host = Fetches::default();
        let mut woken = Vec::new();
        driver.tick(1_000, &shared, &mut host, &mut |w| woken.push(*w));
        driver.register(1, &key, 1_500, false, 1);
        driver.register(2, &key, 9_000, false, 2);
        driver.register(3, &key, 9_000, false, 3);
        assert_eq!(driver.unregister(3), Some(3));
        assert_eq!(driver.unregister(3), None);
        driver.tick(1_600, &shared, &mut host, &mut |w| woken.push(*w));
        assert_eq!(woken, [1], "only the one past its deadline");
        driver.on_response(1, Some(b"200"), JWKS.as_bytes(), 1_700, &shared, &mut |w| {
            woken.push(*w)
        });
        assert_eq!(woken, [1, 2]);
        // Keys present, nothing due: a new waiter (an unknown kid too soon) is woken at once.
        driver.register(4, &key, 9_000, true, 4);
        driver.tick(1_800, &shared, &mut host, &mut |w| woken.push(*w));
        assert_eq!(woken, [1, 2, 4]);
        assert_eq!(host.sent.len(), 1);
        // An unknown kid once min_refetch_interval_s (default) has passed refetches.
        driver.register(5, &key, 400_000, true, 5);
        driver.tick(1_700 + 300_000, &shared, &mut host, &mut |w| woken.push(*w));
        assert_eq!(host.sent.len(), 2);
    }
}
