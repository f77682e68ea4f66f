//! Randomness for the IDs the filters generate (correlation IDs, trace and span IDs).
//!
//! **Choice:** one xoshiro256++ generator per VM, seeded with 256 bits from the OS/host
//! (`getrandom`; on wasm32-wasip1 that is WASI `random_get`, one host call) when the VM starts.
//! Drawing from `random_get` for every request would cost a host call per ID; xoshiro256++ costs
//! a few nanoseconds, has a 2^256 − 1 period and passes BigCrush. Distinct 256-bit seeds make the
//! streams of different worker VMs independent, so IDs are unique across VMs too.
//!
//! xoshiro is *not* cryptographically secure: someone who sees enough IDs could predict the next
//! ones from the same VM. Correlation, trace and span IDs are identifiers, not secrets (a client
//! that is trusted can send any ID it likes anyway), so this is acceptable; if IDs ever have to be
//! unguessable, swap this for a ChaCha-based generator behind the same two functions.
//!
//! Envoy may clone a running VM (memory included) for each worker thread, so each filter's glue
//! reseeds in every `on_vm_start`/`on_configure` rather than once per process.
//!
//! `getrandom` is not a proxy-wasm host call: on wasm32-wasip1 it is the WASI `random_get`
//! import, which Envoy's Wasm runtimes provide (and so does the harness).

/// xoshiro256++ (Blackman & Vigna, 2019).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xoshiro256pp {
    s0: u64,
    s1: u64,
    s2: u64,
    s3: u64,
}

/// SplitMix64's output function: a bijection on u64 with good avalanche.
const fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Xoshiro256pp {
    /// Seed from 32 bytes. Each word is passed through SplitMix64 (so weak, low-entropy seeds
    /// such as the fallback seed still give a well-mixed state); distinct seeds give distinct
    /// states.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let mut words = [0u64; 4];
        for (i, (word, chunk)) in words.iter_mut().zip(seed.chunks_exact(8)).enumerate() {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            let salt = GOLDEN_GAMMA.wrapping_mul(i as u64 + 1);
            *word = splitmix64(u64::from_le_bytes(bytes).wrapping_add(salt));
        }
        let [s0, s1, s2, s3] = words;
        Self::from_state(s0, s1, s2, s3)
    }

    /// Raw state (must not be all zero; an all-zero state is replaced).
    pub const fn from_state(s0: u64, s1: u64, s2: u64, s3: u64) -> Self {
        if s0 | s1 | s2 | s3 == 0 {
            Self {
                s0: GOLDEN_GAMMA,
                s1: 1,
                s2: 2,
                s3: 3,
            }
        } else {
            Self { s0, s1, s2, s3 }
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self
            .s0
            .wrapping_add(self.s3)
            .rotate_left(23)
            .wrapping_add(self.s0);
        let t = self.s1 << 17;
        self.s2 ^= self.s0;
        self.s3 ^= self.s1;
        self.s1 ^= self.s2;
        self.s0 ^= self.s3;
        self.s2 ^= t;
        self.s3 = self.s3.rotate_left(45);
        result
    }

    pub fn next_u128(&mut self) -> u128 {
        (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())
    }
}

/// 32 bytes from the OS / host (`getrandom`; WASI `random_get` on wasm32-wasip1).
pub fn os_seed() -> Result<[u8; 32], getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(seed)
}

/// A last-resort seed when the host offers no randomness: the host clock in nanoseconds, the
/// root context id, and the address of a fresh heap allocation. Weak, but different per VM and
/// per start in practice; the glue logs a warning when it has to use it.
pub fn fallback_seed(now_nanos: u64, context_id: u32) -> [u8; 32] {
    let heap_addr = Box::new(0u8).as_ref() as *const u8 as usize as u64;
    let mut seed = [0u8; 32];
    let parts = [
        now_nanos,
        u64::from(context_id),
        heap_addr,
        now_nanos.rotate_left(32) ^ GOLDEN_GAMMA,
    ];
    for (chunk, part) in seed.chunks_exact_mut(8).zip(parts) {
        chunk.copy_from_slice(&part.to_le_bytes());
    }
    seed
}

/// The seed a filter's glue (re)seeds with: `os` (from [`os_seed`]) when the host gave
/// randomness, else [`fallback_seed`] from `now_nanos()` (read only then) and the root context
/// id, with the warning `<filter>: no host randomness (<error>); seeding <what> from the clock
/// instead`. `glue::fresh_seed` (Wasm only) passes the host's clock.
pub fn seed_or_fallback(
    filter: &str,
    what: &str,
    os: Result<[u8; 32], getrandom::Error>,
    now_nanos: impl FnOnce() -> u64,
    context_id: u32,
) -> [u8; 32] {
    match os {
        Ok(seed) => seed,
        Err(err) => {
            log::warn!(
                "{filter}: no host randomness ({err}); seeding {what} from the clock instead"
            );
            fallback_seed(now_nanos(), context_id)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Reference outputs of xoshiro256++ for the state [1, 2, 3, 4] (the same vector the
    /// rand_xoshiro crate tests against).
    #[test]
    fn reference_vector() {
        let mut rng = Xoshiro256pp::from_state(1, 2, 3, 4);
        let want: [u64; 10] = [
            41943041,
            58720359,
            3588806011781223,
            3591011842654386,
            9228616714210784205,
            9973669472204895162,
            14011001112246962877,
            12406186145184390807,
            15849039046786891736,
            10450023813501588000,
        ];
        for w in want {
            assert_eq!(rng.next_u64(), w);
        }
    }

    #[test]
    fn zero_state_is_fixed_up() {
        let mut rng = Xoshiro256pp::from_state(0, 0, 0, 0);
        assert_ne!(rng.next_u64() | rng.next_u64(), 0);
        let mut rng = Xoshiro256pp::from_seed([0; 32]);
        assert_ne!(rng.next_u64(), rng.next_u64());
    }

    #[test]
    fn distinct_seeds_distinct_streams() {
        let mut a = Xoshiro256pp::from_seed([0; 32]);
        let mut seed = [0; 32];
        seed[31] = 1;
        let mut b = Xoshiro256pp::from_seed(seed);
        assert_ne!(a, b);
        assert_ne!(a.next_u128(), b.next_u128());
    }

    #[test]
    fn os_seed_works_natively() {
        let a = os_seed().unwrap();
        let b = os_seed().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn fallback_seed_depends_on_inputs() {
        assert_ne!(fallback_seed(1, 1)[..8], fallback_seed(2, 1)[..8]);
        assert_ne!(fallback_seed(1, 1)[8..16], fallback_seed(1, 2)[8..16]);
    }

    #[test]
    fn seed_or_fallback_takes_the_host_seed_without_reading_the_clock() {
        let logs = crate::test_log::capture(|| {
            let seed = seed_or_fallback("f", "ids", Ok([7; 32]), || panic!("clock read"), 1);
            assert_eq!(seed, [7; 32]);
        });
        assert!(logs.is_empty(), "{logs:?}");
    }

    #[test]
    fn seed_or_fallback_warns_and_seeds_from_the_clock() {
        let err = getrandom::Error::UNSUPPORTED;
        let logs = crate::test_log::capture(|| {
            let seed = seed_or_fallback("my-filter", "IDs", Err(err), || 42, 9);
            // The clock and the context id, as fallback_seed lays them out.
            assert_eq!(seed[..8], 42u64.to_le_bytes());
            assert_eq!(seed[8..16], 9u64.to_le_bytes());
        });
        assert_eq!(
            logs,
            vec![(
                log::Level::Warn,
                format!(
                    "my-filter: no host randomness ({err}); seeding IDs from the clock instead"
                )
            )]
        );
    }
}
