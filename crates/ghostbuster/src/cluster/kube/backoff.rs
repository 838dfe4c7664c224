//! Jittered exponential backoff between failed list/watch attempts, as client-go's reflector
//! waits (800 ms doubling up to 30 s): thousands of agents restarting their watches after an API
//! server outage must not come back in lockstep.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next wait: `min × 2^attempt`, capped at `max`, then jittered to 50–100 %.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        let base = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.5 + 0.5 * random_fraction())
    }

    /// After a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A fraction in [0, 1) from the standard library's randomly keyed hasher (no RNG dependency
/// for jitter).
fn random_fraction() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(800), Duration::from_secs(30));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(400) && d[0] <= Duration::from_millis(800));
        assert!(d[2] >= Duration::from_millis(1600) && d[2] <= Duration::from_millis(3200));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(30)));
        assert!(d[9] >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(800));
        let spread: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(spread.len() > 1, "jittered");
    }
}
