//! The clock leases and the pair's timers count on: `CLOCK_BOOTTIME`,
//! which keeps counting while the host or VM is suspended. `std`'s
//! `Instant` (`CLOCK_MONOTONIC`) stops during a suspend, so a primary that
//! wakes would believe most of its lease still ran while the witness,
//! counting real time elsewhere, has already let it run out and elected
//! another: two primaries. On this clock the woken primary finds its lease
//! long gone.

use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

use rustix::time::{clock_gettime, ClockId};

/// A moment on the boot clock, shaped like `std::time::Instant`. The
/// default is the boot itself, earlier than any moment `now` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// Now, on `CLOCK_BOOTTIME`.
    pub fn now() -> Instant {
        let now = clock_gettime(ClockId::Boottime);
        let secs = u64::try_from(now.tv_sec).unwrap_or(0);
        let nanos = u32::try_from(now.tv_nsec).unwrap_or(0);
        Instant(skewed(Duration::new(secs, nanos)))
    }

    /// Time from `earlier` to this moment (zero if `earlier` is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// Time since this moment.
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(*self)
    }

    /// How long from now until this moment (zero if it has passed): what
    /// a shell sleeps for a core's `poll_timeout`.
    pub fn remaining(&self) -> Duration {
        self.duration_since(Instant::now())
    }
}

/// The test-only clock-rate hook: in debug builds, `ZEOLITE_TEST_CLOCK_RATE`
/// (0.9 to 1.1, e.g. `1.01` for a clock running 1 % fast) scales this
/// process's pair clock, so that partition tests can run a node whose
/// clock drifts. Release builds have no hook.
#[cfg(debug_assertions)]
fn skewed(now: Duration) -> Duration {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let rate = *RATE.get_or_init(|| {
        std::env::var("ZEOLITE_TEST_CLOCK_RATE")
            .ok()
            .and_then(|r| r.parse::<f64>().ok())
            .filter(|r| (0.9..=1.1).contains(r))
            .unwrap_or(1.0)
    });
    now.mul_f64(rate)
}

#[cfg(not(debug_assertions))]
fn skewed(now: Duration) -> Duration {
    now
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, later: Duration) -> Instant {
        Instant(self.0.saturating_add(later))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, later: Duration) {
        *self = *self + later;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;

    fn sub(self, earlier: Duration) -> Instant {
        Instant(self.0.saturating_sub(earlier))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    fn sub(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_moves_forward_with_real_time() {
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let t1 = Instant::now();
        assert!(t1 >= t0 + Duration::from_millis(20));
        assert!(t1.duration_since(t0) >= Duration::from_millis(20));
        assert_eq!(t0.duration_since(t1), Duration::ZERO);
        assert_eq!((t0 + Duration::from_secs(1)) - t0, Duration::from_secs(1));
    }
}
