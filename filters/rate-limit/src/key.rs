//! Bucket keys and client addresses.
//!
//! A bucket key is never built as a string: its parts are fed, length-framed, into two keyed
//! SipHash-2-4 instances, giving a [`KeyHash`] — 64 bits that choose the table group and a
//! second, independent 64 bits stored as the slot's fingerprint. Two different keys share a
//! bucket only if both 64-bit values collide (≈ 2⁻⁶⁴ per pair for keys nobody chose to collide).
//!
//! The SipHash keys are a [`KeySeed`]: 256 random bits drawn **once per Envoy process** by the
//! first VM that configures the filter and shared with every other VM of the process through
//! shared data ([`crate::limiter::shared_key_seed`]). Why per process and not fixed: with fixed
//! keys anyone could compute offline which group a key (a header value, an address) lands in,
//! and aim a set of keys at a victim's group to fill it (then, with `on_overflow: deny`, the
//! victim's new requests are refused) or to keep it overflowing. With a secret seed, where a key
//! lands cannot be computed from outside. Why not per VM: every worker VM must map a key to the
//! same slot, or one client would get one bucket per worker (the accuracy guarantee). Shared
//! data lives as long as the process, and so do the tables, so the seed never changes under a
//! live table. Table ids ([`stable_id`]) hash only configuration, which no client controls, so
//! they keep the fixed [`KeySeed::FIXED`].
//!
//! Client addresses: [`peer_ip`] parses Envoy's `source.address` (`1.2.3.4:5678`,
//! `[::1]:5678`); [`xff_ip`] takes the Nth address from the right of `x-forwarded-for`. Both are
//! parsed into [`IpAddr`], so `::ffff:1.2.3.4`-style spellings and leading zeros cannot be used
//! to mint new keys for one client, and garbage is "no address". [`IpPrefix::apply`] then
//! aggregates the address to its network (by default IPv6 /64): one IPv6 subscriber usually
//! holds a whole /64, so keying on the /128 would let one client mint 2⁶⁴ buckets.

#![allow(deprecated)] // core::hash::SipHasher: deprecated for HashMap use, but stable and specified.

use std::hash::{Hasher, SipHasher};
use std::net::{IpAddr, SocketAddr};

/// Where a key lands: `group` picks the table entry, `fp` (never 0) identifies it in there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash {
    pub group: u64,
    pub fp: u64,
}

/// The keys of the two SipHash instances: `[k0, k1]` of the group hash, then `[k0, k1]` of the
/// fingerprint hash. Secret: `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeySeed([u64; 4]);

impl std::fmt::Debug for KeySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySeed(..)")
    }
}

impl KeySeed {
    /// Bytes of a seed in shared data.
    pub const LEN: usize = 32;

    /// The fixed keys: for table ids (configuration, not client input), and the last resort
    /// when the host keeps no shared data (then the filter could not share buckets either).
    pub const FIXED: KeySeed = KeySeed([
        0x6761_7465_7761_736d,
        0x726c_2d67_726f_7570,
        0x6761_7465_7761_736d,
        0x726c_2d66_7072_6e74,
    ]);

    pub fn from_bytes(bytes: [u8; Self::LEN]) -> KeySeed {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *word = u64::from_le_bytes(b);
        }
        KeySeed(words)
    }

    /// A seed as stored in shared data: exactly [`Self::LEN`] bytes; anything else is `None`.
    pub fn parse(value: &[u8]) -> Option<KeySeed> {
        let bytes: [u8; Self::LEN] = value.try_into().ok()?;
        Some(KeySeed::from_bytes(bytes))
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        for (chunk, word) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

/// Incremental, allocation-free key hashing.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    a: SipHasher,
    b: SipHasher,
}

impl KeyBuilder {
    /// Keys of different tables (rules) never collide: the table id is hashed first.
    pub fn new(seed: &KeySeed, table_id: u64) -> KeyBuilder {
        let [a0, a1, b0, b1] = seed.0;
        let mut kb = KeyBuilder {
            a: SipHasher::new_with_keys(a0, a1),
            b: SipHasher::new_with_keys(b0, b1),
        };
        kb.write(&table_id.to_le_bytes());
        kb
    }

    fn write(&mut self, bytes: &[u8]) {
        self.a.write(bytes);
        self.b.write(bytes);
    }

    /// One key part: a tag (which kind of part) and its bytes, length-framed so that
    /// `("ab","c")` and `("a","bc")` differ.
    pub fn part(&mut self, tag: u8, bytes: &[u8]) {
        self.write(&[tag]);
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    /// [`Self::part`] of `bytes` upper-cased (ASCII), without allocating: the method key part,
    /// so that `post` and `POST` are one bucket. SipHash is a stream over the bytes, so writing
    /// them in chunks gives the hash of writing them at once.
    pub fn part_ascii_upper(&mut self, tag: u8, bytes: &[u8]) {
        self.write(&[tag]);
        self.write(&(bytes.len() as u64).to_le_bytes());
        let mut buf = [0u8; 32];
        for chunk in bytes.chunks(buf.len()) {
            let upper = &mut buf[..chunk.len()];
            upper.copy_from_slice(chunk);
            upper.make_ascii_uppercase();
            self.write(upper);
        }
    }

    /// A client address part (canonical: 4 or 16 bytes).
    pub fn ip(&mut self, tag: u8, ip: IpAddr) {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.part(tag, &v4.octets()),
            IpAddr::V6(v6) => self.part(tag, &v6.octets()),
        }
    }

    pub fn finish(&self) -> KeyHash {
        KeyHash {
            group: self.a.finish(),
            fp: self.b.finish().max(1),
        }
    }
}

impl KeyHash {
    /// Hash of plain parts (tag 0 each): for tests and table ids.
    pub fn of_parts(table_id: u64, parts: &[&[u8]]) -> KeyHash {
        Self::of_parts_seeded(&KeySeed::FIXED, table_id, parts)
    }

    /// [`Self::of_parts`] with a given seed.
    pub fn of_parts_seeded(seed: &KeySeed, table_id: u64, parts: &[&[u8]]) -> KeyHash {
        let mut kb = KeyBuilder::new(seed, table_id);
        for p in parts {
            kb.part(0, p);
        }
        kb.finish()
    }
}

/// A stable 64-bit id of a configuration fragment (the table id of a rule): fixed keys, so every
/// VM (and every process) names a rule's entries alike.
pub fn stable_id(parts: &[&[u8]]) -> u64 {
    KeyHash::of_parts(0x7461_626c_6569_6400, parts).group
}

/// How many leading bits of a client address identify the client (`client_ip_prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    /// 1..=32.
    pub ipv4: u8,
    /// 1..=128.
    pub ipv6: u8,
}

impl Default for IpPrefix {
    fn default() -> Self {
        Self { ipv4: 32, ipv6: 64 }
    }
}

impl IpPrefix {
    /// The network of `ip`: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is IPv4 first (it is
    /// the same client, and must not escape the IPv4 prefix as a /128), then the host bits
    /// beyond the prefix are zeroed. Lengths beyond the address size keep every bit.
    pub fn apply(self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let keep = u32::from(self.ipv4.min(32));
                let mask = u32::MAX.checked_shl(32 - keep).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let keep = u32::from(self.ipv6.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }
}

/// The IP of Envoy's `source.address` (`ip:port`, `[v6]:port`, or a bare IP). `None` for
/// anything else (e.g. a Unix socket path).
pub fn peer_ip(address: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(address).ok()?.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().ok()
}

/// The `hops`-th address (1 = right-most) of the comma-separated `x-forwarded-for` values, in
/// header order (several header lines are one list). `None` when the list is shorter or that
/// entry is not an IP address (entries may carry a port, as some proxies append one).
pub fn xff_ip<'a>(values: impl DoubleEndedIterator<Item = &'a [u8]>, hops: u32) -> Option<IpAddr> {
    let mut seen = 0u32;
    for value in values.rev() {
        for entry in value.rsplit(|b| *b == b',') {
            seen += 1;
            if seen == hops {
                return peer_ip(entry);
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_addresses() {
        assert_eq!(peer_ip(b"127.0.0.1:50000"), Some(ip("127.0.0.1")));
        assert_eq!(peer_ip(b"[::1]:443"), Some(ip("::1")));
        assert_eq!(peer_ip(b"[2001:db8::7]"), Some(ip("2001:db8::7")));
        assert_eq!(peer_ip(b"2001:db8::7"), Some(ip("2001:db8::7")));
        assert_eq!(peer_ip(b"10.0.0.1"), Some(ip("10.0.0.1")));
        for bad in [
            &b""[..],
            b"/tmp/sock",
            b"@abstract",
            b"1.2.3.4:x",
            b"01.2.3.4",
            b"\xff",
        ] {
            assert_eq!(peer_ip(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn xff_from_the_right() {
        let one: &[&[u8]] = &[b"203.0.113.9, 10.0.0.2 ,192.0.2.2"];
        assert_eq!(xff_ip(one.iter().copied(), 1), Some(ip("192.0.2.2")));
        assert_eq!(xff_ip(one.iter().copied(), 2), Some(ip("10.0.0.2")));
        assert_eq!(xff_ip(one.iter().copied(), 3), Some(ip("203.0.113.9")));
        assert_eq!(xff_ip(one.iter().copied(), 4), None);
        assert_eq!(xff_ip(one.iter().copied(), 0), None);
        let two: &[&[u8]] = &[b"1.1.1.1, 2.2.2.2", b"3.3.3.3"];
        assert_eq!(xff_ip(two.iter().copied(), 1), Some(ip("3.3.3.3")));
        assert_eq!(xff_ip(two.iter().copied(), 2), Some(ip("2.2.2.2")));
        let junk: &[&[u8]] = &[b"evil, unknown"];
        assert_eq!(xff_ip(junk.iter().copied(), 1), None);
        let none: &[&[u8]] = &[];
        assert_eq!(xff_ip(none.iter().copied(), 1), None);
    }

    #[test]
    fn keys_are_framed_and_canonical() {
        assert_ne!(
            KeyHash::of_parts(1, &[b"ab", b"c"]),
            KeyHash::of_parts(1, &[b"a", b"bc"])
        );
        assert_ne!(KeyHash::of_parts(1, &[b"a"]), KeyHash::of_parts(2, &[b"a"]));
        assert_eq!(KeyHash::of_parts(1, &[b"a"]), KeyHash::of_parts(1, &[b"a"]));
        let h = |s: &str| {
            let mut kb = KeyBuilder::new(&KeySeed::FIXED, 3);
            kb.ip(1, ip(s));
            kb.finish()
        };
        assert_eq!(h("::ffff:1.2.3.4"), h("1.2.3.4"));
        assert_eq!(h("2001:db8::1"), h("2001:0db8:0:0::1"));
        assert_ne!(h("1.2.3.4"), h("1.2.3.5"));
        // Stable across builds: a fixed value.
        assert_eq!(stable_id(&[b"x"]), stable_id(&[b"x"]));
        assert_ne!(stable_id(&[b"x"]), stable_id(&[b"y"]));
    }

    #[test]
    fn method_parts_ignore_case() {
        let h = |upper: bool, m: &[u8]| {
            let mut kb = KeyBuilder::new(&KeySeed::FIXED, 3);
            if upper {
                kb.part_ascii_upper(3, m);
            } else {
                kb.part(3, m);
            }
            kb.finish()
        };
        assert_eq!(h(true, b"post"), h(false, b"POST"));
        assert_eq!(h(true, b"PoSt"), h(false, b"POST"));
        assert_ne!(h(true, b"put"), h(false, b"POST"));
        // Longer than the stack buffer: chunked writes hash like one write.
        let long = b"x-custom-method-with-a-rather-long-name-beyond-32";
        assert_eq!(h(true, long), h(false, &long.to_ascii_uppercase()));
    }

    #[test]
    fn seeds_move_keys_and_round_trip() {
        let a = KeySeed::from_bytes([1; 32]);
        let b = KeySeed::from_bytes([2; 32]);
        assert_eq!(KeySeed::parse(&a.to_bytes()), Some(a));
        assert_eq!(KeySeed::parse(&[1; 31]), None);
        assert_eq!(KeySeed::parse(&[1; 33]), None);
        assert_eq!(format!("{a:?}"), "KeySeed(..)", "the seed is never logged");
        let key = |seed: &KeySeed| KeyHash::of_parts_seeded(seed, 7, &[b"10.0.0.1"]);
        assert_eq!(
            key(&a),
            key(&a),
            "one seed: one slot for a key, in every VM"
        );
        assert_ne!(key(&a), key(&b));
        assert_ne!(key(&a).group, key(&b).group);
        assert_ne!(key(&a).fp, key(&b).fp);
        assert_eq!(key(&KeySeed::FIXED), KeyHash::of_parts(7, &[b"10.0.0.1"]));
    }

    #[test]
    fn prefixes_aggregate_clients() {
        let p = IpPrefix::default();
        assert_eq!(p.apply(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            p.apply(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(p.apply(ip("2001:db8:1:3::1")), ip("2001:db8:1:3::"));
        assert_eq!(p.apply(ip("192.0.2.77")), ip("192.0.2.77"));
        // IPv4-mapped IPv6 is IPv4, whatever the IPv6 prefix.
        assert_eq!(p.apply(ip("::ffff:192.0.2.77")), ip("192.0.2.77"));
        let q = IpPrefix {
            ipv4: 24,
            ipv6: 128,
        };
        assert_eq!(q.apply(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(q.apply(ip("2001:db8::1")), ip("2001:db8::1"));
        let r = IpPrefix { ipv4: 1, ipv6: 1 };
        assert_eq!(r.apply(ip("203.0.113.9")), ip("128.0.0.0"));
        assert_eq!(r.apply(ip("2001:db8::1")), ip("::"));
        // Out-of-range lengths (validation rejects them) neither panic nor drop bits.
        let s = IpPrefix { ipv4: 0, ipv6: 200 };
        assert_eq!(s.apply(ip("203.0.113.9")), ip("0.0.0.0"));
        assert_eq!(s.apply(ip("2001:db8::1")), ip("2001:db8::1"));
    }
}
