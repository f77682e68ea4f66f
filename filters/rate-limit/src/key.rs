//! Bucket keys and client addresses.
//!
//! A bucket key is never built as a string: its parts are fed, length-framed, into two keyed
//! SipHash-2-4 instances, giving a [`KeyHash`] — 64 bits that choose the table group and a
//! second, independent 64 bits stored as the slot's fingerprint. Two different keys share a
//! bucket only if both 64-bit values collide (≈ 2⁻⁶⁴ per pair for keys nobody chose to collide).
//! The SipHash keys are fixed in the code, so anyone can compute where a key lands: finding *some*
//! colliding pair costs ≈ 2³² evaluations but is useless (both keys are the attacker's); landing
//! on a given victim's bucket needs a second preimage, ≈ 2⁶⁴. Landing in a victim's *group* is
//! easy — see `on_overflow` in the README for why that only matters with `deny`.
//! The algorithm and its keys are fixed (`core::hash::SipHasher` is specified as SipHash-2-4),
//! so every VM, and every build, maps a key to the same slot.
//!
//! Client addresses: [`peer_ip`] parses Envoy's `source.address` (`1.2.3.4:5678`,
//! `[::1]:5678`); [`xff_ip`] takes the Nth address from the right of `x-forwarded-for`. Both are
//! parsed into [`IpAddr`], so `::ffff:1.2.3.4`-style spellings and leading zeros cannot be used
//! to mint new keys for one client, and garbage is "no address".

#![allow(deprecated)] // core::hash::SipHasher: deprecated for HashMap use, but stable and specified.

use std::hash::{Hasher, SipHasher};
use std::net::{IpAddr, SocketAddr};

/// Where a key lands: `group` picks the table entry, `fp` (never 0) identifies it in there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash {
    pub group: u64,
    pub fp: u64,
}

/// Incremental, allocation-free key hashing.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    a: SipHasher,
    b: SipHasher,
}

impl KeyBuilder {
    /// Keys of different tables (rules) never collide: the table id is hashed first.
    pub fn new(table_id: u64) -> KeyBuilder {
        let mut kb = KeyBuilder {
            a: SipHasher::new_with_keys(0x6761_7465_7761_736d, 0x726c_2d67_726f_7570),
            b: SipHasher::new_with_keys(0x6761_7465_7761_736d, 0x726c_2d66_7072_6e74),
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

    /// A client address part (canonical: 4 or 16 bytes).
    pub fn ip(&mut self, tag: u8, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.part(tag, &v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.part(tag, &v4.octets()),
                None => self.part(tag, &v6.octets()),
            },
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
        let mut kb = KeyBuilder::new(table_id);
        for p in parts {
            kb.part(0, p);
        }
        kb.finish()
    }
}

/// A stable 64-bit id of a configuration fragment (the table id of a rule).
pub fn stable_id(parts: &[&[u8]]) -> u64 {
    KeyHash::of_parts(0x7461_626c_6569_6400, parts).group
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
            let mut kb = KeyBuilder::new(3);
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
}
