//! Reconnect backoff: full jitter, 100 ms × 2ⁿ capped at 5 s (DESIGN §5).
//!
//! Full jitter (a uniform delay between zero and the exponential bound)
//! spreads clients that lost the same server, so they do not return in step.

use std::time::Duration;

use rand::Rng;

/// First backoff bound.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Largest backoff bound: a client notices a returning server within this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Delays between reconnect rounds.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt: uniform in `[0, min(cap, base × 2ⁿ)]`
    /// after `n` consecutive failures; zero before the first failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        if self.failures == 0 {
            self.failures = 1;
            return Duration::ZERO;
        }
        let bound = BACKOFF_BASE
            .saturating_mul(1u32 << (self.failures - 1).min(16))
            .min(BACKOFF_CAP);
        self.failures = self.failures.saturating_add(1);
        bound.mul_f64(rng.gen::<f64>())
    }

    /// Keeps the next delay at the base bound: a server answered but could
    /// not serve yet (an election is under way), so look again soon.
    pub fn retry_soon(&mut self) {
        self.failures = 1;
    }

    /// Back to an immediate first attempt (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_exponentially_under_the_cap_and_reset() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay(&mut rng), Duration::ZERO);
        let mut bounds = Vec::new();
        for n in 0..12 {
            let bound = (BACKOFF_BASE * 2u32.pow(n)).min(BACKOFF_CAP);
            let samples: Vec<Duration> = (0..1).map(|_| backoff.next_delay(&mut rng)).collect();
            assert!(
                samples.iter().all(|d| *d <= bound),
                "n={n}: {samples:?} > {bound:?}"
            );
            bounds.push(bound);
        }
        assert_eq!(bounds.last(), Some(&BACKOFF_CAP));
        backoff.reset();
        assert_eq!(backoff.next_delay(&mut rng), Duration::ZERO);
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut b = Backoff { failures: 10 };
                b.next_delay(&mut rng)
            })
            .collect();
        let low = delays.iter().filter(|d| **d < BACKOFF_CAP / 4).count();
        let high = delays.iter().filter(|d| **d > BACKOFF_CAP * 3 / 4).count();
        assert!(low > 20 && high > 20, "low={low} high={high}");
        assert!(delays.iter().all(|d| *d <= BACKOFF_CAP));
    }
}
