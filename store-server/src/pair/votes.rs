//! The witness's decisions, as pure state: whom it backs, which data
//! nodes hold every acknowledged commit, and when it may elect a new
//! primary. The shell (`witness`) makes [`Votes`] durable before it
//! answers.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use store_protocol::peer::{NodeId, PeerRequest, PeerResponse, PeerStatus};
use store_protocol::{Epoch, Role, Tid};

use super::lease::{LeaseConfig, Promise};

/// What the witness must never forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Votes {
    /// The current epoch (0 on a fresh cluster).
    pub epoch: Epoch,
    /// Its primary.
    pub primary: Option<NodeId>,
    /// Per data node: holds every acknowledged commit.
    pub in_sync: [bool; 2],
}

/// The witness's state machine.
#[derive(Debug, Clone)]
pub struct Witness {
    votes: Votes,
    promise: Promise,
    config: LeaseConfig,
}

impl Witness {
    /// A witness that starts at `now` with `votes` from disk. If it ever
    /// voted, it may have granted a lease it no longer remembers, so it
    /// elects nobody new for a whole lease.
    pub fn new(votes: Votes, config: LeaseConfig, now: Instant) -> Witness {
        let mut promise = Promise::default();
        if votes.epoch > Epoch(0) {
            promise.assume_bound(&config, now);
        }
        Witness {
            votes,
            promise,
            config,
        }
    }

    /// The votes as they stand.
    #[cfg(test)]
    pub fn votes(&self) -> Votes {
        self.votes
    }

    /// Answers `request` from data node `sender` (the node its
    /// certificate names) at `now`. When the answer changes the votes, the
    /// new votes come with it: persist them before answering.
    pub fn handle(
        &mut self,
        now: Instant,
        sender: NodeId,
        request: &PeerRequest,
    ) -> (PeerResponse, Option<Votes>) {
        let votes = self.votes;
        let deny = |reason: &str| {
            (
                PeerResponse::Denied {
                    epoch: votes.epoch,
                    primary: votes.primary,
                    reason: reason.to_string(),
                },
                None,
            )
        };
        if usize::from(sender) >= votes.in_sync.len() {
            return deny("no such data node");
        }
        let sender_is_primary_of = |epoch: Epoch| {
            epoch == votes.epoch && votes.primary == Some(sender) && epoch > Epoch(0)
        };
        match *request {
            PeerRequest::Lease { epoch } => {
                if !sender_is_primary_of(epoch) {
                    return deny("not the primary of the current epoch");
                }
                let lease = self.promise.grant(&self.config, now);
                (
                    PeerResponse::Granted {
                        epoch,
                        lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                    },
                    None,
                )
            }
            PeerRequest::Elect { epoch, force } => {
                if epoch > votes.epoch {
                    return deny(
                        "the candidate claims an epoch this witness never granted \
                         (were the witness's votes lost? restore its data directory)",
                    );
                }
                if votes.epoch == Epoch(0) {
                    if sender != 0 && !force {
                        return deny("a fresh cluster starts with the first --cluster address");
                    }
                } else if votes.primary != Some(sender) {
                    if self.promise.binds(now) {
                        return deny("the primary's lease has not run out");
                    }
                    if !votes.in_sync[usize::from(sender)] && !force {
                        return deny("not recorded as holding every acknowledged commit");
                    }
                }
                let Some(next) = votes.epoch.0.checked_add(1) else {
                    return deny("the epoch space is exhausted");
                };
                let mut in_sync = [false; 2];
                in_sync[usize::from(sender)] = true;
                self.votes = Votes {
                    epoch: Epoch(next),
                    primary: Some(sender),
                    in_sync,
                };
                let lease = self.promise.grant(&self.config, now);
                (
                    PeerResponse::Elected {
                        epoch: Epoch(next),
                        lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                    },
                    Some(self.votes),
                )
            }
            PeerRequest::SetInSync { epoch, in_sync } => {
                if !sender_is_primary_of(epoch) {
                    return deny("only the primary of the current epoch records its backup");
                }
                self.votes.in_sync[usize::from(1 - sender)] = in_sync;
                (PeerResponse::Recorded, Some(self.votes))
            }
            PeerRequest::Release { epoch } => {
                if !sender_is_primary_of(epoch) {
                    return deny("not the primary of the current epoch");
                }
                self.promise.release();
                (PeerResponse::Recorded, None)
            }
            PeerRequest::Status => (
                PeerResponse::Status(PeerStatus {
                    role: Role::Witness,
                    epoch: votes.epoch,
                    primary: votes.primary,
                    in_sync: votes.in_sync,
                    lsn: 0,
                    last_tid: Tid(0),
                }),
                None,
            ),
            PeerRequest::StepDown { .. } | PeerRequest::Join { .. } => {
                deny("a witness holds no data")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn elect(epoch: u64) -> PeerRequest {
        PeerRequest::Elect {
            epoch: Epoch(epoch),
            force: false,
        }
    }

    fn elected(response: &PeerResponse) -> Option<Epoch> {
        match response {
            PeerResponse::Elected { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    #[test]
    fn a_fresh_cluster_starts_with_the_first_node() {
        let t0 = Instant::now();
        let mut witness = Witness::new(Votes::default(), LeaseConfig::default(), t0);
        assert_eq!(elected(&witness.handle(t0, 1, &elect(0)).0), None);
        let (answer, votes) = witness.handle(t0, 0, &elect(0));
        assert_eq!(elected(&answer), Some(Epoch(1)));
        assert_eq!(
            votes,
            Some(Votes {
                epoch: Epoch(1),
                primary: Some(0),
                in_sync: [true, false],
            })
        );
    }

    #[test]
    fn a_backup_is_elected_only_in_sync_and_after_the_lease() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut witness = Witness::new(Votes::default(), config, t0);
        witness.handle(t0, 0, &elect(0));
        // Not in sync yet.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(elected(&witness.handle(later, 1, &elect(1)).0), None);
        let record = PeerRequest::SetInSync {
            epoch: Epoch(1),
            in_sync: true,
        };
        // Only the primary records its backup: the backup cannot.
        assert!(matches!(
            witness.handle(later, 1, &record).0,
            PeerResponse::Denied { .. }
        ));
        assert_eq!(witness.handle(later, 0, &record).0, PeerResponse::Recorded);
        // The primary renews: no election while its lease binds.
        let renew = PeerRequest::Lease { epoch: Epoch(1) };
        // The backup cannot renew the primary's lease for it.
        assert!(matches!(
            witness.handle(later, 1, &renew).0,
            PeerResponse::Denied { .. }
        ));
        assert!(matches!(
            witness.handle(later, 0, &renew).0,
            PeerResponse::Granted { .. }
        ));
        let during = later + config.duration;
        assert_eq!(elected(&witness.handle(during, 1, &elect(1)).0), None);
        let after = later + config.bound_for(config.duration);
        assert_eq!(
            elected(&witness.handle(after, 1, &elect(1)).0),
            Some(Epoch(2))
        );
        // The old primary is fenced: no renewal, no record.
        assert!(matches!(
            witness.handle(after, 0, &renew).0,
            PeerResponse::Denied {
                epoch: Epoch(2),
                primary: Some(1),
                ..
            }
        ));
        assert_eq!(witness.votes().in_sync, [false, true]);
    }

    #[test]
    fn a_restarted_witness_waits_a_lease_before_electing_anyone_new() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let votes = Votes {
            epoch: Epoch(3),
            primary: Some(0),
            in_sync: [true, true],
        };
        let mut witness = Witness::new(votes, config, t0);
        assert_eq!(elected(&witness.handle(t0, 1, &elect(3)).0), None);
        // The recorded primary itself may be re-elected at once.
        assert_eq!(elected(&witness.handle(t0, 0, &elect(3)).0), Some(Epoch(4)));
        let mut witness = Witness::new(votes, config, t0);
        let after = t0 + config.bound_for(config.duration);
        assert_eq!(
            elected(&witness.handle(after, 1, &elect(3)).0),
            Some(Epoch(4))
        );
    }

    #[test]
    fn an_epoch_the_witness_never_granted_is_refused_and_nothing_wraps() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let votes = Votes {
            epoch: Epoch(3),
            primary: Some(0),
            in_sync: [true, true],
        };
        let mut witness = Witness::new(votes, config, t0);
        let after = t0 + config.bound_for(config.duration);
        for claimed in [4, u64::MAX - 1, u64::MAX] {
            let (answer, changed) = witness.handle(after, 1, &elect(claimed));
            assert!(
                matches!(
                    answer,
                    PeerResponse::Denied {
                        epoch: Epoch(3),
                        ..
                    }
                ),
                "{claimed}"
            );
            assert_eq!(changed, None);
        }
        // A node index outside the pair is refused whatever it asks.
        let (answer, _) = witness.handle(after, 2, &elect(3));
        assert!(matches!(answer, PeerResponse::Denied { .. }));
        // At the very top of the epoch space the witness refuses, never wraps.
        let top = Votes {
            epoch: Epoch(u64::MAX),
            primary: Some(0),
            in_sync: [true, true],
        };
        let mut witness = Witness::new(top, config, t0);
        let (answer, changed) = witness.handle(after, 0, &elect(u64::MAX));
        assert!(matches!(answer, PeerResponse::Denied { .. }));
        assert_eq!(changed, None);
        assert_eq!(witness.votes(), top);
    }
}
