//! Leases, from both ends, as pure state (they take `now`).
//!
//! A primary serves while a majority of {primary, backup, witness} backs it:
//! itself plus one grant. A granter (the backup or the witness) promises,
//! from when it *received* a request, not to back another primary for the
//! lease duration; the primary counts its lease from when it *sent* the
//! request, shortened by the clock-rate margin and a safety margin. So
//! whatever the network delay, the primary stops before any granter's
//! promise ends, and a granter keeps its promise a clock-rate margin past
//! its end.

use std::time::Duration;

use super::clock::Instant;

/// The timing of an HA pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseConfig {
    /// How long a grant lasts (default 1.2 s): a dead primary is replaced
    /// about this long after its last renewal. Shorter leases fail over
    /// faster but make a loaded machine's hiccup look like a failure.
    pub duration: Duration,
    /// How often the primary renews (default 150 ms, a lease/8): it keeps
    /// its lease through six lost renewals in a row.
    pub renew_every: Duration,
    /// Largest relative clock-rate difference between two nodes (default
    /// 1 %, far above what quartz drifts).
    pub drift: f64,
    /// How long before its lease ends the primary stops answering as
    /// primary (default 100 ms): covers a reply still in flight.
    pub safety: Duration,
    /// How long a durable batch may wait for the backup's acknowledgement
    /// before the primary asks the witness to record the backup as out of
    /// sync and goes on alone (default 600 ms, half a lease).
    pub replication_timeout: Duration,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            duration: Duration::from_millis(1200),
            renew_every: Duration::from_millis(150),
            drift: 0.01,
            safety: Duration::from_millis(100),
            replication_timeout: Duration::from_millis(600),
        }
    }
}

impl LeaseConfig {
    /// How long a granter stays bound by a grant of `lease`.
    pub fn bound_for(&self, lease: Duration) -> Duration {
        lease.mul_f64(1.0 + self.drift)
    }

    /// How long the holder of a grant of `lease` may serve from sending.
    pub fn usable_for(&self, lease: Duration) -> Duration {
        lease.mul_f64(1.0 - self.drift).saturating_sub(self.safety)
    }

    /// The lease duration in milliseconds, as granted on the wire.
    pub fn duration_ms(&self) -> u64 {
        u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The holder's side: until when the primary may serve.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    until: Option<Instant>,
}

impl Lease {
    /// A grant of `lease` answered a request sent at `sent_at`.
    pub fn granted(&mut self, config: &LeaseConfig, sent_at: Instant, lease: Duration) {
        let until = sent_at + config.usable_for(lease);
        self.until = Some(self.until.map_or(until, |old| old.max(until)));
    }

    /// Whether the primary may serve at `now`.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// How long the primary may still serve from `now` (zero: not at all).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.until
            .map_or(Duration::ZERO, |until| until.duration_since(now))
    }

    /// Gives the lease up (deposed, or stepping down).
    pub fn revoke(&mut self) {
        self.until = None;
    }
}

/// The granter's side: whom it backs, and until when it is bound.
#[derive(Debug, Clone, Default)]
pub struct Promise {
    bound_until: Option<Instant>,
}

impl Promise {
    /// Backs the requester from `now`; returns the lease granted.
    pub fn grant(&mut self, config: &LeaseConfig, now: Instant) -> Duration {
        self.bound_until = Some(now + config.bound_for(config.duration));
        config.duration
    }

    /// Until when the granter is bound, if it is.
    pub fn until(&self) -> Option<Instant> {
        self.bound_until
    }

    /// Whether a promise made before `now` still binds the granter.
    pub fn binds(&self, now: Instant) -> bool {
        self.bound_until.is_some_and(|until| now < until)
    }

    /// Binds the granter for a whole lease from `now` without a holder: a
    /// restarted granter may have promised something it forgot.
    pub fn assume_bound(&mut self, config: &LeaseConfig, now: Instant) {
        self.bound_until = Some(now + config.bound_for(config.duration));
    }

    /// The holder released its lease (stepping down).
    pub fn release(&mut self) {
        self.bound_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_stops_before_any_granter_is_released() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        // Worst case for the holder: the request took no time at all.
        let mut lease = Lease::default();
        let mut promise = Promise::default();
        let granted = promise.grant(&config, t0);
        lease.granted(&config, t0, granted);
        let last_valid = t0 + config.usable_for(granted) - Duration::from_millis(1);
        assert!(lease.is_valid(last_valid));
        // Even with the holder's clock 1 % slow, the granter is still bound.
        let holder_end = t0 + config.usable_for(granted).mul_f64(1.0 + config.drift);
        assert!(promise.binds(holder_end));
        assert!(!lease.is_valid(t0 + config.usable_for(granted)));
        assert!(!promise.binds(t0 + config.bound_for(granted)));
    }

    #[test]
    fn what_remains_of_a_lease_runs_down_to_zero() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut lease = Lease::default();
        assert_eq!(lease.remaining(t0), Duration::ZERO);
        lease.granted(&config, t0, config.duration);
        let usable = config.usable_for(config.duration);
        assert_eq!(lease.remaining(t0), usable);
        assert_eq!(lease.remaining(t0 + usable / 2), usable - usable / 2);
        assert_eq!(lease.remaining(t0 + usable), Duration::ZERO);
        assert_eq!(lease.remaining(t0 + usable * 2), Duration::ZERO);
        lease.revoke();
        assert_eq!(lease.remaining(t0), Duration::ZERO);
    }

    #[test]
    fn a_lease_counts_from_sending_and_only_grows() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut lease = Lease::default();
        assert!(!lease.is_valid(t0));
        let later = t0 + Duration::from_secs(1);
        lease.granted(&config, later, config.duration);
        // A late answer to an older request does not shorten it.
        lease.granted(&config, t0, config.duration);
        let end = later + config.usable_for(config.duration);
        assert!(lease.is_valid(end - Duration::from_millis(1)));
        assert!(!lease.is_valid(end));
        lease.revoke();
        assert!(!lease.is_valid(later));
    }

    #[test]
    fn a_restarted_granter_is_bound_for_a_whole_lease() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut promise = Promise::default();
        promise.assume_bound(&config, t0);
        assert!(promise.binds(t0 + config.duration));
        assert!(!promise.binds(t0 + config.bound_for(config.duration)));
        promise.release();
        assert!(!promise.binds(t0));
    }
}
