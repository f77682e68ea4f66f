//! GCRA (the Generic Cell Rate Algorithm, "virtual scheduling" form): an exact token bucket in a
//! single number per key, the theoretical arrival time (TAT).
//!
//! A [`Limit`] of `limit` requests per `window` with `burst` extra has
//! - emission interval `T = ceil(window / limit)` nanoseconds (one token refills every `T`);
//! - bucket size `B = limit + burst` (tokens available after a long idle period);
//! - tolerance `τ = (B − 1)·T`.
//!
//! A request at time `t` is allowed iff `max(TAT, t) − t ≤ τ`; if allowed, the new TAT is
//! `max(TAT, t) + T`. A denied request changes nothing. `TAT ≤ t` means "bucket full", which is
//! the same as having no state at all — so a slot whose TAT has passed can be reused for another
//! key without losing anything (see [`crate::table`]).
//!
//! Guarantee (tested against an independent token-bucket model in `tests`): for any sequence of
//! requests, in any interval of length `L` at most `B + floor(L / T)` are allowed; after `B`
//! back-to-back requests the next is allowed exactly `T` later. `T` is rounded *up* to a whole
//! nanosecond, so the rate is never above `limit / window` (it is below it by less than one
//! nanosecond per request).
//!
//! All arithmetic saturates (no panics, no overflow) and uses whole nanoseconds.

/// One second in nanoseconds.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A compiled limit: emission interval and tolerance in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Configured requests per window (the quota advertised in headers).
    pub limit: u64,
    /// Configured window in seconds.
    pub window_s: u64,
    /// Extra capacity on top of `limit`.
    pub burst: u64,
    /// `T`: nanoseconds per token, ≥ 1.
    pub emission_ns: u64,
    /// `τ = (limit + burst − 1)·T`.
    pub tolerance_ns: u64,
}

impl Limit {
    /// `limit ≥ 1` requests per `window_s ≥ 1` seconds plus `burst`. `None` when a figure is 0
    /// or the bucket would not fit in nanoseconds (config validation reports it).
    pub fn new(limit: u64, window_s: u64, burst: u64) -> Option<Limit> {
        if limit == 0 || window_s == 0 {
            return None;
        }
        let window_ns = window_s.checked_mul(NANOS_PER_SEC)?;
        let emission_ns = window_ns.div_ceil(limit).max(1);
        let bucket = limit.checked_add(burst)?;
        let tolerance_ns = (bucket - 1).checked_mul(emission_ns)?;
        // Keep TAT arithmetic far from u64::MAX (year 2554): bucket time below ~ 100 years.
        if tolerance_ns.checked_add(emission_ns)? > 100 * 365 * 86_400 * NANOS_PER_SEC {
            return None;
        }
        Some(Limit {
            limit,
            window_s,
            burst,
            emission_ns,
            tolerance_ns,
        })
    }

    /// `B = limit + burst`.
    pub const fn bucket(&self) -> u64 {
        self.limit.saturating_add(self.burst)
    }
}

/// The result of one request against one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// The TAT to store (equal to the old one when denied).
    pub new_tat: u64,
    /// Whole tokens left after this request (0 when denied).
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again (`RateLimit-Reset`, `t=`).
    pub reset_ns: u64,
    /// Nanoseconds until a request would be allowed (0 when allowed; `Retry-After`).
    pub retry_after_ns: u64,
}

/// One request at `now` against a bucket whose TAT is `tat` (0 = never used).
pub fn decide(limit: &Limit, tat: u64, now: u64) -> Outcome {
    let start = tat.max(now);
    let debt = start - now; // how far the bucket is below full, in ns
    if debt > limit.tolerance_ns {
        return Outcome {
            allowed: false,
            new_tat: tat,
            remaining: 0,
            reset_ns: debt,
            retry_after_ns: debt - limit.tolerance_ns,
        };
    }
    let new_tat = start.saturating_add(limit.emission_ns);
    let new_debt = debt.saturating_add(limit.emission_ns);
    // bucket·T − new_debt ≥ 0 because debt ≤ τ = (bucket − 1)·T.
    let capacity_ns = limit.tolerance_ns.saturating_add(limit.emission_ns);
    let remaining = capacity_ns.saturating_sub(new_debt) / limit.emission_ns;
    Outcome {
        allowed: true,
        new_tat,
        remaining,
        reset_ns: new_debt,
        retry_after_ns: 0,
    }
}

/// Whether a bucket with this TAT is full at `now` (its state equals "no state").
pub const fn is_idle(tat: u64, now: u64) -> bool {
    tat <= now
}

/// Nanoseconds → whole seconds, rounded up (headers never promise too early).
pub const fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NANOS_PER_SEC)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An independent reference: a token bucket holding `credit` nanoseconds of tokens
    /// (`tokens·T`), refilled by elapsed time and capped at `B·T`; a request costs `T`.
    #[derive(Debug, Clone)]
    struct TokenBucket {
        credit: u128,
        last: u64,
        cap: u128,
        cost: u128,
    }

    impl TokenBucket {
        fn new(l: &Limit, start: u64) -> Self {
            let cap = u128::from(l.bucket()) * u128::from(l.emission_ns);
            TokenBucket {
                credit: cap,
                last: start,
                cap,
                cost: u128::from(l.emission_ns),
            }
        }
        fn request(&mut self, now: u64) -> (bool, u64) {
            if now > self.last {
                self.credit = (self.credit + u128::from(now - self.last)).min(self.cap);
                self.last = now;
            }
            if self.credit >= self.cost {
                self.credit -= self.cost;
                (true, (self.credit / self.cost) as u64)
            } else {
                (false, 0)
            }
        }
    }

    const START: u64 = 1_767_225_600 * NANOS_PER_SEC; // 2026-01-01

    #[test]
    fn compiles_limits() {
        let l = Limit::new(100, 60, 0).unwrap();
        assert_eq!(l.emission_ns, 600_000_000);
        assert_eq!(l.tolerance_ns, 99 * 600_000_000);
        let l = Limit::new(7, 60, 3).unwrap();
        assert_eq!(l.emission_ns, 8_571_428_572); // rounded up
        assert_eq!(l.bucket(), 10);
        assert!(Limit::new(0, 60, 0).is_none());
        assert!(Limit::new(1, 0, 0).is_none());
        assert!(Limit::new(1, u64::MAX, 0).is_none());
        assert!(Limit::new(1, 86_400, u64::MAX).is_none());
        // 10^9 per second: T = 1 ns.
        assert_eq!(Limit::new(NANOS_PER_SEC, 1, 0).unwrap().emission_ns, 1);
        assert!(Limit::new(u64::MAX, 1, 0).is_none());
    }

    #[test]
    fn burst_then_one_per_interval() {
        let l = Limit::new(100, 60, 0).unwrap();
        let mut tat = 0;
        for i in 0..100 {
            let o = decide(&l, tat, START);
            assert!(o.allowed, "{i}");
            assert_eq!(o.remaining, 99 - i);
            tat = o.new_tat;
        }
        let o = decide(&l, tat, START);
        assert!(!o.allowed);
        assert_eq!(o.retry_after_ns, 600_000_000);
        assert_eq!(o.reset_ns, 60 * NANOS_PER_SEC);
        assert_eq!(ceil_secs(o.retry_after_ns), 1);
        assert!(!decide(&l, tat, START + 599_999_999).allowed);
        let o = decide(&l, tat, START + 600_000_000);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        assert!(is_idle(tat, START + 60 * NANOS_PER_SEC));
        assert!(!is_idle(tat, START + 60 * NANOS_PER_SEC - 1));
    }

    #[test]
    fn clock_going_backwards_is_safe() {
        let l = Limit::new(2, 1, 0).unwrap();
        let a = decide(&l, 0, START);
        let b = decide(&l, a.new_tat, START - NANOS_PER_SEC);
        // The clock went back 1 s: the bucket looks 1.5 s below full (τ = 0.5 s), so denied,
        // and the stored TAT is kept (never decreases).
        assert!(!b.allowed);
        assert_eq!(b.new_tat, a.new_tat);
        let c = decide(&l, u64::MAX, 0);
        assert!(!c.allowed);
        let d = decide(&l, 0, u64::MAX);
        assert!(d.allowed && d.new_tat == u64::MAX);
    }

    /// `n` requests `step` ns apart from a full bucket: how many are allowed.
    fn saturate(l: &Limit, step: u64, n: u64) -> u64 {
        let (mut tat, mut allowed, mut now) = (0u64, 0u64, START);
        for _ in 0..n {
            let o = decide(l, tat, now);
            allowed += u64::from(o.allowed);
            tat = o.new_tat;
            now += step;
        }
        allowed
    }

    fn limits() -> impl Strategy<Value = Limit> {
        (1u64..=50, 1u64..=120, 0u64..=10).prop_map(|(l, w, b)| Limit::new(l, w, b).unwrap())
    }

    /// Gaps between requests: mostly tiny (bursts), sometimes around T, sometimes long.
    fn gaps() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(
            prop_oneof![
                4 => 0u64..1_000,
                3 => 0u64..5 * NANOS_PER_SEC,
                1 => 0u64..300 * NANOS_PER_SEC,
            ],
            1..400,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Decision for decision, GCRA equals the token-bucket model (and reports the same
        /// remaining tokens).
        #[test]
        fn gcra_equals_token_bucket(l in limits(), gaps in gaps()) {
            let mut model = TokenBucket::new(&l, START);
            let mut tat = 0u64;
            let mut now = START;
            for g in gaps {
                now += g;
                let o = decide(&l, tat, now);
                let (allowed, remaining) = model.request(now);
                prop_assert_eq!(o.allowed, allowed);
                if allowed {
                    prop_assert_eq!(o.remaining, remaining);
                    prop_assert_eq!(o.retry_after_ns, 0);
                } else {
                    prop_assert!(o.retry_after_ns > 0);
                    // Exactly at retry-after the request is allowed, 1 ns earlier it is not.
                    prop_assert!(decide(&l, tat, now + o.retry_after_ns).allowed);
                    prop_assert!(!decide(&l, tat, now + o.retry_after_ns - 1).allowed);
                }
                tat = o.new_tat;
            }
        }

        /// In any interval of length L, at most B + floor(L / T) requests are allowed; in
        /// particular never more than B = limit + burst at one instant (see README for what
        /// this means over a whole window).
        #[test]
        fn never_more_than_the_bound(l in limits(), gaps in gaps()) {
            let mut tat = 0u64;
            let mut now = START;
            let mut allowed_at = Vec::new();
            for g in gaps {
                now += g;
                let o = decide(&l, tat, now);
                if o.allowed { allowed_at.push(now); }
                tat = o.new_tat;
            }
            for i in 0..allowed_at.len() {
                for j in i..allowed_at.len() {
                    let span = allowed_at[j] - allowed_at[i];
                    let n = (j - i + 1) as u64;
                    prop_assert!(n <= l.bucket() + span / l.emission_ns,
                        "{} allowed within {} ns", n, span);
                }
            }
        }

        /// Refill rate: requests arriving exactly on every k-th fraction of T keep the bucket
        /// saturated, and then exactly B + floor(elapsed / T) are allowed — the configured rate,
        /// never above it.
        #[test]
        fn refills_at_the_configured_rate(l in limits(), k in 1u64..8, n in 1u64..2000) {
            let step = if l.emission_ns % k == 0 { l.emission_ns / k } else { l.emission_ns };
            let allowed = saturate(&l, step, n);
            let elapsed = (n - 1) * step;
            prop_assert_eq!(allowed, (l.bucket() + elapsed / l.emission_ns).min(n));
            // The rate is never above limit/window: T·limit ≥ window.
            prop_assert!(u128::from(l.emission_ns) * u128::from(l.limit)
                >= u128::from(l.window_s) * u128::from(NANOS_PER_SEC));
        }

        /// With arbitrary request spacing, a client that keeps asking loses at most one
        /// spacing per token: allowed ≥ elapsed / (T + step).
        #[test]
        fn keeps_up_with_any_spacing(l in limits(), step in 1u64..2 * NANOS_PER_SEC, n in 1u64..2000) {
            let allowed = saturate(&l, step, n);
            let elapsed = (n - 1) * step;
            prop_assert!(allowed >= (elapsed / (l.emission_ns + step)).min(n));
            prop_assert!(allowed <= l.bucket() + elapsed / l.emission_ns);
        }
    }
}
