//! A data node's standing in the pair, as pure state: whether it is
//! primary, whom it backs, when to renew its lease and when to stand for
//! election. The shell (`node`) carries out the [`Action`]s and reports the
//! answers; every rule about time is here, tested with simulated time.

use std::time::Duration;

use super::clock::Instant;

use store_protocol::peer::{NodeId, PeerResponse};
use store_protocol::{Epoch, Role};

use super::lease::{Lease, LeaseConfig, Promise};

/// How long a failed election waits before the next attempt.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(50);

/// What the shell should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the backup and the witness to renew the lease.
    RenewLease,
    /// Ask the witness to make this node primary of the next epoch.
    Campaign {
        /// Override the in-sync rule (`promote --force`).
        force: bool,
    },
}

/// A data node's standing.
#[derive(Debug)]
pub struct Standing {
    me: NodeId,
    config: LeaseConfig,
    primary_role: bool,
    epoch: Epoch,
    primary: Option<NodeId>,
    lease: Lease,
    promise: Promise,
    last_renewal: Option<Instant>,
    campaigning: bool,
    next_campaign: Instant,
    force_next: bool,
    /// The process is stopping (it handed its lease over): it never
    /// stands for election again.
    stopping: bool,
}

impl Standing {
    /// A node starting at `now` that knows `epoch`. On a fresh cluster
    /// (epoch 0) the first node stands for election at once and the other
    /// waits a lease; a node that has been part of the pair may have made
    /// promises it no longer remembers, so it waits a whole lease first.
    pub fn new(me: NodeId, epoch: Epoch, config: LeaseConfig, now: Instant) -> Standing {
        let mut promise = Promise::default();
        let fresh_first = epoch == Epoch(0) && me == 0;
        if !fresh_first {
            promise.assume_bound(&config, now);
        }
        Standing {
            me,
            config,
            primary_role: false,
            epoch,
            primary: None,
            lease: Lease::default(),
            promise,
            last_renewal: None,
            campaigning: false,
            next_campaign: now,
            force_next: false,
            stopping: false,
        }
    }

    /// This node's index.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The highest epoch known.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The primary this node knows of (itself included).
    pub fn primary(&self) -> Option<NodeId> {
        self.primary
    }

    /// Whether this node is the primary of its epoch (lease or not).
    pub fn is_primary(&self) -> bool {
        self.primary_role
    }

    /// Whether this node may answer as primary at `now`: primary, with a
    /// lease that has not run out.
    pub fn serving(&self, now: Instant) -> bool {
        self.primary_role && self.lease.is_valid(now)
    }

    /// How long this node may still serve as primary from `now` (zero
    /// when it is not the primary, or its lease ran out).
    pub fn lease_remaining(&self, now: Instant) -> Duration {
        if self.primary_role {
            self.lease.remaining(now)
        } else {
            Duration::ZERO
        }
    }

    /// The role to report at `now`: `Primary` only while serving.
    pub fn role(&self, now: Instant) -> Role {
        if self.serving(now) {
            Role::Primary
        } else {
            Role::Backup
        }
    }

    /// What to do at `now`.
    pub fn tick(&mut self, now: Instant) -> Option<Action> {
        if self.primary_role {
            let due = self
                .last_renewal
                .is_none_or(|at| now.duration_since(at) >= self.config.renew_every);
            if due {
                self.last_renewal = Some(now);
                return Some(Action::RenewLease);
            }
            return None;
        }
        if self.stopping || self.campaigning || now < self.next_campaign || self.promise.binds(now)
        {
            return None;
        }
        self.campaigning = true;
        Some(Action::Campaign {
            force: std::mem::take(&mut self.force_next),
        })
    }

    /// When [`Standing::tick`] next has something to do (quinn's
    /// `poll_timeout`): the next renewal while primary; otherwise the next
    /// election attempt, once this node's promise has run out; `None` while
    /// a campaign waits for its answer. The shell sleeps until then, or
    /// until the standing changes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.primary_role {
            return Some(
                self.last_renewal
                    .map_or_else(Instant::default, |at| at + self.config.renew_every),
            );
        }
        if self.campaigning || self.stopping {
            return None;
        }
        Some(
            self.promise
                .until()
                .map_or(self.next_campaign, |until| until.max(self.next_campaign)),
        )
    }

    /// An operator asked for this node to be primary. After the primary
    /// stepped down (`stepped_down`), its lease from this node is void:
    /// stand for election now. Forced (the primary is presumed gone), keep
    /// the promise: stand as soon as it has run out, like any election.
    pub fn promote(&mut self, now: Instant, stepped_down: bool) {
        if stepped_down {
            self.promise.release();
        }
        self.next_campaign = now;
        self.force_next = !stepped_down;
    }

    /// The primary stepped down at an operator's request: it stops serving
    /// at once, backs the other node, and does not stand for election for
    /// two leases (the witness would re-elect its recorded primary).
    pub fn step_down(&mut self, now: Instant) {
        self.primary_role = false;
        self.lease.revoke();
        self.primary = Some(1 - self.me);
        self.next_campaign = now + self.config.duration * 2;
    }

    /// The answer to a lease renewal sent at `sent_at`: a grant for this
    /// node's epoch extends its lease. (A refusal naming a later epoch is
    /// [`Standing::learned`], once that epoch is recorded.)
    pub fn renewal_answered(&mut self, sent_at: Instant, answer: &PeerResponse) {
        if let PeerResponse::Granted { epoch, lease_ms } = *answer {
            if self.primary_role && epoch == self.epoch {
                self.lease
                    .granted(&self.config, sent_at, Duration::from_millis(lease_ms));
            }
        }
    }

    /// The answer to an election request sent at `sent_at`, or `None` if
    /// the witness could not be reached. Returns the epoch to record
    /// durably *before* acting on it.
    pub fn campaign_answered(
        &mut self,
        now: Instant,
        sent_at: Instant,
        answer: Option<&PeerResponse>,
    ) -> Option<Epoch> {
        self.campaigning = false;
        self.next_campaign = now + CAMPAIGN_RETRY;
        match answer {
            Some(&PeerResponse::Elected {
                epoch, lease_ms, ..
            }) => {
                self.primary_role = true;
                self.epoch = epoch;
                self.primary = Some(self.me);
                self.lease.revoke();
                self.lease
                    .granted(&self.config, sent_at, Duration::from_millis(lease_ms));
                self.last_renewal = None;
                Some(epoch)
            }
            Some(&PeerResponse::Denied { epoch, primary, .. }) => {
                if epoch >= self.epoch && primary != Some(self.me) {
                    self.epoch = epoch;
                    self.primary = primary;
                }
                Some(self.epoch)
            }
            _ => None,
        }
    }

    /// The process is stopping and hands its lease over: it steps down
    /// (as [`Standing::step_down`]) and never stands for election again,
    /// however long the hand-over takes.
    pub fn stop(&mut self, now: Instant) {
        self.step_down(now);
        self.stopping = true;
    }

    /// A lease request from `node` for `epoch` at `now`: grant it if it
    /// comes from the primary of an epoch no lower than this node's, and
    /// this node is neither primary of that epoch nor standing for
    /// election. The caller first records a higher epoch durably.
    pub fn lease_requested(&mut self, now: Instant, epoch: Epoch, node: NodeId) -> PeerResponse {
        let deny = |this: &Standing, reason: &str| PeerResponse::Denied {
            epoch: this.epoch,
            primary: this.primary,
            reason: reason.to_string(),
        };
        if node == self.me || epoch < self.epoch {
            return deny(self, "stale epoch");
        }
        if self.primary_role && epoch == self.epoch {
            return deny(self, "this node is the primary of that epoch");
        }
        if self.campaigning {
            return deny(self, "standing for election");
        }
        if epoch > self.epoch || self.primary_role {
            self.deposed(epoch, Some(node));
        }
        self.primary = Some(node);
        let lease = self.promise.grant(&self.config, now);
        PeerResponse::Granted {
            epoch,
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// A higher epoch was seen on the replication stream or elsewhere.
    pub fn learned(&mut self, epoch: Epoch, primary: Option<NodeId>) {
        if epoch > self.epoch {
            self.deposed(epoch, primary);
        } else if epoch == self.epoch && !self.primary_role && primary.is_some() {
            self.primary = primary;
        }
    }

    fn deposed(&mut self, epoch: Epoch, primary: Option<NodeId>) {
        self.epoch = epoch;
        self.primary = primary;
        self.primary_role = false;
        self.lease.revoke();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(epoch: u64) -> PeerResponse {
        PeerResponse::Granted {
            epoch: Epoch(epoch),
            lease_ms: LeaseConfig::default().duration_ms(),
        }
    }

    /// Node 0 of a fresh pair, elected primary of epoch 1 at `t0`.
    fn primary_at(config: LeaseConfig, t0: Instant) -> Standing {
        let mut node = Standing::new(0, Epoch(0), config, t0);
        node.tick(t0);
        node.campaign_answered(t0, t0, Some(&elected(1)));
        node
    }

    fn elected(epoch: u64) -> PeerResponse {
        PeerResponse::Elected {
            epoch: Epoch(epoch),
            lease_ms: LeaseConfig::default().duration_ms(),
            cluster_id: 1,
        }
    }

    #[test]
    fn the_first_node_of_a_fresh_cluster_stands_at_once_the_other_waits() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut first = Standing::new(0, Epoch(0), config, t0);
        let mut second = Standing::new(1, Epoch(0), config, t0);
        assert_eq!(first.tick(t0), Some(Action::Campaign { force: false }));
        assert_eq!(second.tick(t0), None);
        assert_eq!(second.tick(t0 + config.duration), None);
        let later = t0 + config.bound_for(config.duration);
        assert_eq!(second.tick(later), Some(Action::Campaign { force: false }));
    }

    #[test]
    fn a_primary_serves_only_while_renewed() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut node = Standing::new(0, Epoch(0), config, t0);
        node.tick(t0);
        assert_eq!(
            node.campaign_answered(t0, t0, Some(&elected(1))),
            Some(Epoch(1))
        );
        assert!(node.serving(t0));
        assert_eq!(node.role(t0), Role::Primary);
        assert_eq!(node.tick(t0), Some(Action::RenewLease));
        assert_eq!(node.tick(t0 + config.renew_every / 2), None);
        let t1 = t0 + config.renew_every;
        assert_eq!(node.tick(t1), Some(Action::RenewLease));
        node.renewal_answered(t1, &granted(1));
        let end = t1 + config.usable_for(config.duration);
        assert!(node.serving(end - Duration::from_millis(1)));
        // No renewal came back: it stops before the granters are released,
        // and reports itself as not primary, pongs included.
        assert!(!node.serving(end));
        assert_eq!(node.role(end), Role::Backup);
        assert!(node.is_primary());
    }

    #[test]
    fn a_stopping_primary_never_stands_again() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut node = primary_at(config, t0);
        assert!(node.serving(t0));
        node.stop(t0);
        assert!(!node.serving(t0));
        assert_eq!(node.primary(), Some(1));
        // A plain step-down stands again after two leases; a stop never.
        let much_later = t0 + config.duration * 100;
        assert_eq!(node.tick(much_later), None);
        assert_eq!(node.poll_timeout(), None);
    }

    #[test]
    fn a_higher_epoch_deposes_the_primary() {
        let t0 = Instant::now();
        let mut node = primary_at(LeaseConfig::default(), t0);
        assert!(node.serving(t0));
        node.learned(Epoch(2), Some(1));
        assert!(!node.serving(t0));
        assert!(!node.is_primary());
        assert_eq!(node.primary(), Some(1));
    }

    #[test]
    fn a_backup_grants_and_then_waits_out_its_promise_before_standing() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut backup = Standing::new(1, Epoch(1), config, t0);
        // Old epochs are refused; the primary's are granted.
        assert!(matches!(
            backup.lease_requested(t0, Epoch(0), 0),
            PeerResponse::Denied { .. }
        ));
        let t1 = t0 + config.duration * 2;
        assert_eq!(backup.lease_requested(t1, Epoch(1), 0), granted(1));
        assert_eq!(backup.primary(), Some(0));
        assert_eq!(backup.tick(t1 + config.duration), None);
        let lapsed = t1 + config.bound_for(config.duration);
        assert_eq!(backup.tick(lapsed), Some(Action::Campaign { force: false }));
        // While standing it grants nothing.
        assert!(matches!(
            backup.lease_requested(lapsed, Epoch(1), 0),
            PeerResponse::Denied { .. }
        ));
        let no = PeerResponse::Denied {
            epoch: Epoch(1),
            primary: Some(0),
            reason: String::new(),
        };
        backup.campaign_answered(lapsed, lapsed, Some(&no));
        assert!(!backup.is_primary());
        assert_eq!(backup.tick(lapsed), None);
        assert_eq!(
            backup.tick(lapsed + CAMPAIGN_RETRY),
            Some(Action::Campaign { force: false })
        );
    }
}
