//! The per-worker cache of verified tokens: a bounded LRU keyed by (a 64-bit hash of the
//! token's tail, provider). A hit skips parsing and signature verification; the time claims are
//! re-checked on every hit and an entry past its `exp` (plus skew) is dropped.
//!
//! The hash only picks the slot: every entry keeps its whole token and a hit requires the
//! request's token to be byte-for-byte equal, so a forged token that collides (the hash is not
//! collision-resistant) is a miss and gets verified. This is far cheaper in the VM than
//! SHA-256 of the whole token. Only verified tokens are inserted, and tokens above
//! [`MAX_CACHED_TOKEN`] are not cached, so memory stays bounded.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use crate::claims::Times;

/// What a successful verification produced, reusable for the token's lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub provider: usize,
    pub times: Times,
    /// (index into the provider's `claim_to_headers`, rendered value).
    pub headers: Vec<(usize, String)>,
    pub scopes: Vec<String>,
}

pub type TokenHash = u64;

/// Tokens longer than this are verified every time (bounds the cache's memory).
pub const MAX_CACHED_TOKEN: usize = 4096;

/// The slot of a token: a hash of its length and its last 64 bytes (the end of the signature,
/// which differs between any two genuine tokens), eight bytes at a time. Cheap whatever the
/// token's size; collisions only cost a miss, since a hit compares the whole token.
pub fn token_hash(token: &[u8]) -> TokenHash {
    let tail = token
        .get(token.len().saturating_sub(64)..)
        .unwrap_or_default();
    let mut h = 0xcbf2_9ce4_8422_2325 ^ (token.len() as u64).rotate_left(48);
    let mut words = tail.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = mix(h, u64::from_le_bytes(w));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        if let Some(head) = w.get_mut(..rest.len()) {
            head.copy_from_slice(rest);
        }
        h = mix(
            h,
            u64::from_le_bytes(w) ^ (rest.len() as u64).rotate_left(56),
        );
    }
    h
}

/// One step of [`token_hash`] and of [`SlotHasher`]: a multiply spreads `word` over the high
/// bits, a rotation brings them down to where a table's index is taken.
fn mix(h: u64, word: u64) -> u64 {
    (h ^ word)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(29)
}

/// The map's hasher: its keys are already hashes ([`token_hash`], provider), so one mix per
/// word instead of SipHash (≈ 0.2k instructions a lookup natively). No client chooses the
/// keys that are stored: only verified tokens are inserted, so a crafted token can at most
/// miss.
#[derive(Debug, Default, Clone, Copy)]
struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0, u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix(self.0, n);
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = mix(self.0, n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    verified: Rc<Verified>,
    stamp: u64,
}

#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    entries: HashMap<(TokenHash, usize), Entry, BuildHasherDefault<SlotHasher>>,
    /// Use stamp → key: the least recently used entry is the first.
    order: BTreeMap<u64, (TokenHash, usize)>,
    stamp: u64,
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::with_capacity_and_hasher(capacity.min(4096), Default::default()),
            order: BTreeMap::new(),
            stamp: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    fn next_stamp(&mut self) -> u64 {
        self.stamp = self.stamp.wrapping_add(1);
        self.stamp
    }

    /// The entry for this token and provider if it is still within its `exp` (+ `skew`) at
    /// `now`; an expired entry is removed. A hit becomes the most recently used entry — at no
    /// cost when it already is (a client's requests in a row): only then is the use order
    /// left as it is.
    pub fn get(
        &mut self,
        token: &[u8],
        hash: TokenHash,
        provider: usize,
        now: i64,
        skew: i64,
    ) -> Option<Rc<Verified>> {
        let key = (hash, provider);
        let entry = self.entries.get_mut(&key)?;
        if !gatewasm_common::bytes::eq(entry.token.as_bytes(), token) {
            return None;
        }
        let verified = entry.verified.clone();
        let old = entry.stamp;
        if crate::claims::check_times(verified.times, now, skew).is_err() {
            self.order.remove(&old);
            self.entries.remove(&key);
            return None;
        }
        if old != self.stamp {
            self.stamp = self.stamp.wrapping_add(1);
            entry.stamp = self.stamp;
            self.order.remove(&old);
            self.order.insert(self.stamp, key);
        }
        Some(verified)
    }

    pub fn insert(&mut self, token: &str, hash: TokenHash, verified: Verified) {
        if self.capacity == 0 || token.len() > MAX_CACHED_TOKEN {
            return;
        }
        let key = (hash, verified.provider);
        let stamp = self.next_stamp();
        let entry = Entry {
            token: token.into(),
            verified: Rc::new(verified),
            stamp,
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.order.remove(&old.stamp);
        }
        self.order.insert(stamp, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_sees_the_length_and_every_byte_of_the_tail() {
        // Every length up to past the 64-byte tail (whole words and remainders) hashes apart.
        let long = [b'a'; 130];
        let mut seen = std::collections::HashSet::new();
        for len in 0..=long.len() {
            assert!(seen.insert(token_hash(&long[..len])), "length {len}");
        }
        // Changing any one byte of the last 64 changes the slot; a byte before them does not
        // (the hash is only a slot: a hit still compares the whole token).
        for len in [1usize, 7, 8, 9, 63, 64, 65, 130] {
            let token = &long[..len];
            for at in 0..len {
                let mut other = token.to_vec();
                other[at] = b'b';
                let differs = token_hash(&other) != token_hash(token);
                assert_eq!(differs, at + 64 >= len, "length {len}, byte {at}");
            }
        }
    }

    fn v(provider: usize, exp: i64) -> Verified {
        Verified {
            provider,
            times: Times {
                exp: Some(exp),
                nbf: None,
                iat: None,
            },
            headers: vec![(0, "u".into())],
            scopes: vec![],
        }
    }

    #[test]
    fn hit_miss_and_expiry() {
        let mut c = Cache::new(4);
        let t = "a.b.c";
        let h = token_hash(t.as_bytes());
        assert!(c.get(t.as_bytes(), h, 0, 100, 0).is_none());
        c.insert(t, h, v(0, 200));
        assert_eq!(c.get(t.as_bytes(), h, 0, 100, 0).unwrap().headers[0].1, "u");
        assert!(
            c.get(t.as_bytes(), h, 1, 100, 0).is_none(),
            "other provider"
        );
        assert!(c.get(t.as_bytes(), h, 0, 260, 60).is_some(), "within skew");
        assert!(c.get(t.as_bytes(), h, 0, 261, 60).is_none(), "expired");
        assert!(c.is_empty(), "expired entries are dropped");
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut c = Cache::new(2);
        let (a, b, d) = (token_hash(b"a"), token_hash(b"b"), token_hash(b"d"));
        c.insert("a", a, v(0, 1000));
        c.insert("b", b, v(0, 1000));
        assert!(c.get(b"a", a, 0, 0, 0).is_some()); // a is now the most recent
        c.insert("d", d, v(0, 1000));
        assert_eq!(c.len(), 2);
        assert!(c.get(b"b", b, 0, 0, 0).is_none());
        assert!(c.get(b"a", a, 0, 0, 0).is_some());
        assert!(c.get(b"d", d, 0, 0, 0).is_some());
        c.insert("d", d, v(0, 1000)); // replacing keeps the size
        assert_eq!(c.len(), 2);
        assert_eq!(c.order.len(), 2);
    }

    #[test]
    fn a_hit_on_the_most_recent_entry_keeps_the_order_and_others_still_age() {
        let mut c = Cache::new(2);
        let (a, b, d) = (token_hash(b"a"), token_hash(b"b"), token_hash(b"d"));
        c.insert("a", a, v(0, 1000));
        c.insert("b", b, v(0, 1000));
        let order: Vec<u64> = c.order.keys().copied().collect();
        for _ in 0..3 {
            assert!(c.get(b"b", b, 0, 0, 0).is_some()); // already the most recent
        }
        assert_eq!(c.order.keys().copied().collect::<Vec<_>>(), order);
        assert!(c.get(b"a", a, 0, 0, 0).is_some()); // a moves up, b is the oldest now
        c.insert("d", d, v(0, 1000));
        assert!(c.get(b"b", b, 0, 0, 0).is_none(), "b was evicted");
        assert!(c.get(b"a", a, 0, 0, 0).is_some() && c.get(b"d", d, 0, 0, 0).is_some());
        assert_eq!((c.len(), c.order.len()), (2, 2));
        // The most recent entry expiring is dropped from both.
        assert!(c.get(b"d", d, 0, 2000, 0).is_none());
        assert_eq!((c.len(), c.order.len()), (1, 1));
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut c = Cache::new(0);
        c.insert("a", token_hash(b"a"), v(0, 1000));
        assert!(c.is_empty());
        let mut c = Cache::new(4);
        let big = "a".repeat(MAX_CACHED_TOKEN + 1);
        c.insert(&big, token_hash(big.as_bytes()), v(0, 1000));
        assert!(c.is_empty(), "oversized tokens are not cached");
    }

    #[test]
    fn a_colliding_token_is_a_miss() {
        let mut c = Cache::new(4);
        c.insert("good.token.sig", 7, v(0, 1000));
        // Same slot (forced hash), different token: never served from the cache.
        assert!(c.get(b"forged.token.sig", 7, 0, 0, 0).is_none());
        assert!(c.get(b"good.token.sig", 7, 0, 0, 0).is_some());
    }
}
