//! Process-wide state of one emulated Envoy: the clock, shared data and queues (keyed by vm_id),
//! metrics, known clusters, node properties and foreign functions. Several [`crate::Worker`]s
//! (one per emulated worker thread, each with its own VMs) share one [`Host`].

use crate::abi::{MetricType, Status};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A foreign function (`proxy_call_foreign_function`): arguments in, result bytes or a status out.
pub type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;

/// The emulated proxy process. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Host {
    pub(crate) shared: Arc<HostShared>,
}

pub(crate) struct HostShared {
    /// Virtual wall-clock time in nanoseconds since the Unix epoch.
    pub(crate) now_ns: AtomicU64,
    pub(crate) start_ns: u64,
    pub(crate) shared_data: Mutex<SharedData>,
    pub(crate) queues: Mutex<Queues>,
    pub(crate) metrics: Mutex<Metrics>,
    pub(crate) clusters: Mutex<HashSet<String>>,
    pub(crate) properties: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    pub(crate) foreign: Mutex<HashMap<String, ForeignFunction>>,
    /// Built-in foreign functions this host pretends not to have (NotFound), e.g. a host
    /// without `clear_route_cache`.
    pub(crate) missing_builtins: Mutex<HashSet<String>>,
    /// Calls of each foreign function by name, whatever they answered (NotFound included).
    pub(crate) foreign_calls: Mutex<HashMap<String, usize>>,
    pub(crate) rng: Mutex<u64>,
    pub(crate) next_vm_key: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a test thread panicked while holding it; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One vm_id's shared data: key → (value, cas).
pub(crate) type VmSharedData = HashMap<Vec<u8>, (Vec<u8>, u32)>;

/// Shared data as Envoy keeps it (`proxy-wasm-cpp-host` `shared_data.cc`): per vm_id a map of
/// key → (value, cas); one global CAS counter that starts at 1 and skips 0.
#[derive(Default)]
pub(crate) struct SharedData {
    pub(crate) by_vm: HashMap<String, VmSharedData>,
    pub(crate) next_cas: u32,
}

impl SharedData {
    pub(crate) fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.by_vm.get(vm_id)?.get(key).cloned()
    }

    pub(crate) fn set(&mut self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Status {
        let next = self.next_cas_value();
        let map = self.by_vm.entry(vm_id.to_string()).or_default();
        match map.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Status::CasMismatch;
                }
                *entry = (value.to_vec(), next);
            }
            // Writing a missing key ignores cas: create-if-absent races are last-writer-wins in Envoy.
            None => {
                map.insert(key.to_vec(), (value.to_vec(), next));
            }
        }
        Status::Ok
    }

    fn next_cas_value(&mut self) -> u32 {
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        self.next_cas
    }
}

pub(crate) struct Queue {
    pub(crate) vm_id: String,
    pub(crate) name: String,
    /// The VM (by key) and root context that registered the queue: it gets `on_queue_ready`.
    pub(crate) owner: (u64, u32),
    pub(crate) items: VecDeque<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct Queues {
    pub(crate) by_id: HashMap<u32, Queue>,
    pub(crate) next_id: u32,
    /// Notifications not yet delivered: VM key → (root context id, queue id).
    pub(crate) ready: HashMap<u64, Vec<(u32, u32)>>,
}

/// Metrics are process-wide by name, as Envoy's stats are.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) values: HashMap<String, MetricValue>,
}

/// The value of a metric a module defined.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Counter(u64),
    Gauge(i64),
    /// Every recorded value, in order.
    Histogram(Vec<u64>),
}

impl Metrics {
    pub(crate) fn define(&mut self, kind: MetricType, name: &str) {
        self.values.entry(name.to_string()).or_insert(match kind {
            MetricType::Counter => MetricValue::Counter(0),
            MetricType::Gauge => MetricValue::Gauge(0),
            MetricType::Histogram => MetricValue::Histogram(Vec::new()),
        });
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Host {
    /// A new process whose clock starts at a fixed instant (2026-01-01T00:00:00Z), so runs repeat.
    pub fn new() -> Host {
        let start_ns = 1_767_225_600u64 * 1_000_000_000;
        Host {
            shared: Arc::new(HostShared {
                now_ns: AtomicU64::new(start_ns),
                start_ns,
                shared_data: Mutex::new(SharedData::default()),
                queues: Mutex::new(Queues::default()),
                metrics: Mutex::new(Metrics::default()),
                clusters: Mutex::new(HashSet::new()),
                properties: Mutex::new(HashMap::new()),
                foreign: Mutex::new(HashMap::new()),
                missing_builtins: Mutex::new(HashSet::new()),
                foreign_calls: Mutex::new(HashMap::new()),
                rng: Mutex::new(0x9E37_79B9_7F4A_7C15),
                next_vm_key: AtomicU64::new(1),
            }),
        }
    }

    /// The virtual wall-clock time (`proxy_get_current_time_nanoseconds`, WASI realtime clock).
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.shared.now_ns.load(Ordering::SeqCst))
    }

    /// Moves the virtual clock forward. Ticks and callout timeouts fire when a worker next runs
    /// ([`crate::Worker::advance`] does both at once for its own VMs).
    pub fn advance_clock(&self, by: Duration) {
        self.shared
            .now_ns
            .fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Sets the virtual clock (it may go backwards, as a wall clock can).
    pub fn set_time(&self, at: SystemTime) {
        let ns = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.shared.now_ns.store(ns, Ordering::SeqCst);
    }

    /// Declares an upstream cluster, so `dispatch_http_call` / gRPC calls to it are accepted.
    pub fn add_cluster(&self, name: &str) {
        lock(&self.shared.clusters).insert(name.to_string());
    }

    /// Sets a property readable by every VM; `path` segments as the module passes them, e.g.
    /// `["xds", "node", "metadata", "REGION"]`. Strings are raw bytes; ints 8-byte little-endian.
    pub fn set_property(&self, path: &[&str], value: impl Into<Vec<u8>>) {
        lock(&self.shared.properties).insert(path.join("\0").into_bytes(), value.into());
    }

    /// Registers a foreign function, replacing one of the same name. Built in, as in Envoy:
    /// `clear_route_cache` (see [`crate::StreamView::route_cache_clears`]) and
    /// `verify_signature` (RSA PKCS#1 v1.5 and ECDSA P-256/P-384 with Envoy's hashes, its
    /// errors and its answers); others answer NotFound unless registered. To see how often a
    /// module called one, built-in or not, use [`Host::foreign_calls`].
    pub fn register_foreign_function(
        &self,
        name: &str,
        f: impl Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync + 'static,
    ) {
        lock(&self.shared.missing_builtins).remove(name);
        lock(&self.shared.foreign).insert(name.to_string(), Arc::new(f));
    }

    /// Removes a foreign function, built-in ones included: calls answer NotFound from then on,
    /// as on a host that does not offer it (e.g. `clear_route_cache` outside Envoy).
    pub fn remove_foreign_function(&self, name: &str) {
        lock(&self.shared.foreign).remove(name);
        lock(&self.shared.missing_builtins).insert(name.to_string());
    }

    /// How many times modules of this host called the foreign function `name`
    /// (`proxy_call_foreign_function`), whatever the answer: built-in, registered, or NotFound
    /// (missing or removed). E.g. `host.foreign_calls("verify_signature")` counts the
    /// signatures a JWT filter left to the host's native crypto.
    pub fn foreign_calls(&self, name: &str) -> usize {
        lock(&self.shared.foreign_calls)
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Seeds the random source behind WASI `random_get` (deterministic per seed).
    pub fn seed_random(&self, seed: u64) {
        *lock(&self.shared.rng) = seed | 1;
    }

    /// A metric by the name the module defined it with.
    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        lock(&self.shared.metrics).values.get(name).cloned()
    }

    /// A counter's value; 0 when the counter is not defined (use [`Host::metric`] to tell them apart).
    pub fn counter(&self, name: &str) -> u64 {
        match self.metric(name) {
            Some(MetricValue::Counter(v)) => v,
            _ => 0,
        }
    }

    /// Every metric, sorted by name.
    pub fn metrics(&self) -> Vec<(String, MetricValue)> {
        let mut all: Vec<_> = lock(&self.shared.metrics)
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// A shared-data entry: (value, cas).
    pub fn shared_data(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        lock(&self.shared.shared_data).get(vm_id, key)
    }

    /// Writes shared data as a module would (`cas` 0 = unconditional).
    pub fn set_shared_data(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Status {
        lock(&self.shared.shared_data).set(vm_id, key, value, cas)
    }

    /// How many keys and bytes (keys + values) shared data holds for `vm_id`: for memory-bound tests.
    pub fn shared_data_size(&self, vm_id: &str) -> (usize, usize) {
        let data = lock(&self.shared.shared_data);
        data.by_vm.get(vm_id).map_or((0, 0), |m| {
            (m.len(), m.iter().map(|(k, (v, _))| k.len() + v.len()).sum())
        })
    }

    /// Items waiting in the queue `name` of `vm_id`.
    pub fn queue_len(&self, vm_id: &str, name: &str) -> Option<usize> {
        lock(&self.shared.queues)
            .by_id
            .values()
            .find(|q| q.vm_id == vm_id && q.name == name)
            .map(|q| q.items.len())
    }

    pub(crate) fn next_random(&self, out: &mut [u8]) {
        let mut state = lock(&self.shared.rng);
        for chunk in out.chunks_mut(8) {
            // splitmix64: fast, deterministic for a seed, good enough for test randomness.
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.shared.now_ns.load(Ordering::SeqCst)
    }
}
