//! Host clock readings as plain numbers. `proxy_get_current_time_nanoseconds` gives a
//! `SystemTime`; the filters want nanoseconds (PRNG fallback seeds, gRPC timeouts) or
//! milliseconds (token expiry, JWKS schedules, uuid7) since the Unix epoch. Pure, so tested
//! natively; the host reads are `glue::now_ns` / `glue::now_ms` (Wasm only).

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch; 0 before it, `u64::MAX` past year 2554.
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch; 0 before it.
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn since_the_epoch() {
        let t = UNIX_EPOCH + Duration::new(1_767_225_600, 123_456_789);
        assert_eq!(unix_nanos(t), 1_767_225_600_123_456_789);
        assert_eq!(unix_millis(t), 1_767_225_600_123);
        assert_eq!(unix_nanos(UNIX_EPOCH), 0);
        assert_eq!(unix_millis(UNIX_EPOCH), 0);
    }

    #[test]
    fn before_the_epoch_is_zero() {
        let t = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(unix_nanos(t), 0);
        assert_eq!(unix_millis(t), 0);
    }

    #[test]
    fn nanoseconds_saturate() {
        // u64 nanoseconds end in 2554; SystemTime goes further on 64-bit hosts.
        if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(u64::MAX / 1_000_000_000 + 1)) {
            assert_eq!(unix_nanos(t), u64::MAX);
            assert!(unix_millis(t) < u64::MAX);
        }
    }
}
