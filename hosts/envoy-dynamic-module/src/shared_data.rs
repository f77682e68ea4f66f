//! Shared data for the whole Envoy process: what Proxy-Wasm's `proxy_get_shared_data` /
//! `proxy_set_shared_data` give a Wasm VM, here one `Mutex<HashMap>` that every worker thread
//! uses. rate-limit keeps its GCRA buckets in it, so a limit is exact across workers as it is
//! with the Wasm module.
//!
//! Envoy's compare-and-swap semantics, which the stages rely on (rate-limit's table creation
//! and key seed depend on the third rule): a process-wide CAS counter starting at 1 stamps
//! every write; a write with CAS `None` or `0` is unconditional; a write to a key that does not
//! exist succeeds whatever the CAS; a write to an existing key whose stamp differs from the
//! given CAS fails with `CasMismatch`.
//!
//! Bounds: as in Envoy, the store itself is not bounded — the stages bound what they put in
//! it (rate-limit: a fixed number of entries per rule, created at configuration time, each of
//! at most `MAX_VALUE_BYTES`; `max_keys` caps the keys per rule inside them).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use gatewasm_common::stage::SetResult;

#[derive(Debug)]
struct Entries {
    /// The stamp the next write gets (Envoy starts at 1).
    next_cas: u32,
    map: HashMap<String, (Vec<u8>, u32)>,
}

/// A shared-data space ([`PROCESS`] is the one the module uses; tests make their own).
#[derive(Debug)]
pub struct SharedData {
    entries: Mutex<Entries>,
}

/// The process's shared data: every filter configuration and worker of this Envoy.
pub static PROCESS: LazyLock<SharedData> = LazyLock::new(SharedData::new);

impl Default for SharedData {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedData {
    pub fn new() -> Self {
        Self {
            entries: Mutex::new(Entries {
                next_cas: 1,
                map: HashMap::new(),
            }),
        }
    }

    /// The value and its CAS stamp; `(None, None)` when absent (or when the lock is poisoned,
    /// which needs a panic while holding it: nothing below panics).
    pub fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let Ok(entries) = self.entries.lock() else {
            return (None, None);
        };
        match entries.map.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    /// Write `value` under `key`, if `cas` still matches (see the module docs).
    pub fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
        let Ok(mut entries) = self.entries.lock() else {
            return SetResult::Failed;
        };
        let stamp = entries.next_cas;
        // Wraps like Envoy's uint32 counter, skipping 0 (0 means "no CAS").
        entries.next_cas = match stamp.wrapping_add(1) {
            0 => 1,
            next => next,
        };
        match entries.map.get_mut(key) {
            Some((_, current)) if matches!(cas, Some(c) if c != 0 && c != *current) => {
                SetResult::CasMismatch
            }
            Some(entry) => {
                entry.0.clear();
                entry.0.extend_from_slice(value);
                entry.1 = stamp;
                SetResult::Ok
            }
            None => {
                entries.map.insert(key.to_owned(), (value.to_vec(), stamp));
                SetResult::Ok
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn envoys_cas_rules() {
        let data = SharedData::new();
        assert_eq!(data.get("k"), (None, None));
        // A missing key is written whatever the CAS (rate-limit's create-only trick needs it).
        assert_eq!(data.set("k", b"a", Some(u32::MAX)), SetResult::Ok);
        let (value, cas) = data.get("k");
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        let cas = cas.unwrap();
        assert_eq!(cas, 1, "the first stamp is 1, as in Envoy");
        // A stale CAS loses; the current one wins and moves the stamp on.
        assert_eq!(data.set("k", b"b", Some(cas + 7)), SetResult::CasMismatch);
        assert_eq!(data.get("k").0.as_deref(), Some(&b"a"[..]));
        assert_eq!(data.set("k", b"b", Some(cas)), SetResult::Ok);
        assert_eq!(data.set("k", b"c", Some(cas)), SetResult::CasMismatch);
        // None and 0 are unconditional.
        assert_eq!(data.set("k", b"d", None), SetResult::Ok);
        assert_eq!(data.set("k", b"e", Some(0)), SetResult::Ok);
        assert_eq!(data.get("k").0.as_deref(), Some(&b"e"[..]));
    }

    #[test]
    fn racing_threads_each_win_one_cas_exactly() {
        // Many threads increment one counter by CAS; no increment is lost.
        let data = std::sync::Arc::new(SharedData::new());
        data.set("n", &0u64.to_le_bytes(), None);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let data = data.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (value, cas) = data.get("n");
                            let n = u64::from_le_bytes(value.unwrap().try_into().unwrap());
                            if data.set("n", &(n + 1).to_le_bytes(), cas) == SetResult::Ok {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = u64::from_le_bytes(data.get("n").0.unwrap().try_into().unwrap());
        assert_eq!(n, 2000);
    }
}
