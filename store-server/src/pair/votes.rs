//! The witness's decisions, as pure state: whom it backs, which data
//! nodes hold every acknowledged commit, and when it may elect a new
//! primary. The shell (`witness`) makes [`Votes`] durable before it
//! answers.

use super::clock::Instant;

use serde::{Deserialize, Serialize};
use store_protocol::peer::{LogPosition, NodeId, PeerRequest, PeerResponse, PeerStatus};
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
    /// The cluster's id, made at its first election (0 before).
    pub cluster_id: u64,
    /// Per data node: has been a member (elected, or recorded in sync).
    pub members: [bool; 2],
    /// The furthest point of history any primary reported acknowledged:
    /// no node whose history ends before it is elected (unless forced).
    pub acked: LogPosition,
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
            PeerRequest::Lease { epoch, acked } => {
                if !sender_is_primary_of(epoch) {
                    return deny("not the primary of the current epoch");
                }
                let lease = self.promise.grant(&self.config, now);
                let answer = PeerResponse::Granted {
                    epoch,
                    lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                };
                // Only the primary's own reports move the record, and only on.
                if acked > self.votes.acked && acked.epoch <= epoch {
                    self.votes.acked = acked;
                    return (answer, Some(self.votes));
                }
                (answer, None)
            }
            PeerRequest::Elect {
                epoch,
                force,
                cluster_id,
                end,
            } => {
                // A node knows only epochs this witness granted, unless the
                // witness lost its votes: then only an operator's forced
                // promotion (of the node known to hold the data) goes on.
                if (epoch > votes.epoch || end.epoch > votes.epoch) && !force {
                    return deny(
                        "the candidate claims an epoch this witness never granted \
                         (were the witness's votes lost? restore its data directory, or \
                         `store-cli promote --force` the node that holds the data)",
                    );
                }
                if votes.cluster_id != 0 && cluster_id != votes.cluster_id {
                    return deny(
                        "the candidate's store is empty or belongs to another cluster \
                         (start it with --join to copy the primary's)",
                    );
                }
                if end < votes.acked && !force {
                    return deny("its history ends before what the cluster acknowledged");
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
                let Some(next) = votes.epoch.max(epoch).0.checked_add(1) else {
                    return deny("the epoch space is exhausted");
                };
                let mut in_sync = [false; 2];
                in_sync[usize::from(sender)] = true;
                let mut members = votes.members;
                members[usize::from(sender)] = true;
                // A witness without a cluster (fresh, or its votes lost)
                // takes the candidate's, or makes one for a fresh cluster.
                let cluster_id = match (votes.cluster_id, cluster_id) {
                    (0, 0) => new_cluster_id(),
                    (0, theirs) => theirs,
                    (ours, _) => ours,
                };
                self.votes = Votes {
                    epoch: Epoch(next),
                    primary: Some(sender),
                    in_sync,
                    cluster_id,
                    members,
                    // A forced election starts the record afresh from what
                    // the new primary holds (the operator accepted the loss).
                    acked: if force { end } else { votes.acked },
                };
                let lease = self.promise.grant(&self.config, now);
                (
                    PeerResponse::Elected {
                        epoch: Epoch(next),
                        lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                        cluster_id,
                    },
                    Some(self.votes),
                )
            }
            PeerRequest::SetInSync { epoch, in_sync } => {
                if !sender_is_primary_of(epoch) {
                    return deny("only the primary of the current epoch records its backup");
                }
                let backup = usize::from(1 - sender);
                self.votes.in_sync[backup] = in_sync;
                self.votes.members[backup] |= in_sync;
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
                    cluster_id: votes.cluster_id,
                    members: votes.members,
                    // The shell adds its `--cluster`.
                    cluster: Vec::new(),
                }),
                None,
            ),
            PeerRequest::StepDown { .. }
            | PeerRequest::Join { .. }
            | PeerRequest::HandOver { .. } => deny("a witness holds no data"),
        }
    }
}

/// A fresh cluster's id: random, never 0 (which means "none").
pub(crate) fn new_cluster_id() -> u64 {
    rand::random::<u64>().max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    /// The cluster of the votes these tests start from.
    const CLUSTER: u64 = 0x5eed;

    fn elect(epoch: u64) -> PeerRequest {
        elect_from(epoch, CLUSTER, LogPosition::default())
    }

    fn elect_from(epoch: u64, cluster_id: u64, end: LogPosition) -> PeerRequest {
        PeerRequest::Elect {
            epoch: Epoch(epoch),
            force: false,
            cluster_id,
            end,
        }
    }

    /// A cluster at `epoch` with node 0 primary and both nodes in sync.
    fn established(epoch: u64) -> Votes {
        Votes {
            epoch: Epoch(epoch),
            primary: Some(0),
            in_sync: [true, true],
            cluster_id: CLUSTER,
            members: [true, true],
            acked: LogPosition::default(),
        }
    }

    fn at(epoch: u64, lsn: u64) -> LogPosition {
        LogPosition {
            epoch: Epoch(epoch),
            lsn,
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
        let fresh = elect_from(0, 0, LogPosition::default());
        assert_eq!(elected(&witness.handle(t0, 1, &fresh).0), None);
        let (answer, votes) = witness.handle(t0, 0, &fresh);
        assert_eq!(elected(&answer), Some(Epoch(1)));
        let votes = votes.expect("the election is recorded");
        assert_eq!(
            (votes.epoch, votes.primary, votes.in_sync, votes.members),
            (Epoch(1), Some(0), [true, false], [true, false])
        );
        // The cluster gets its id, which the elected node is told.
        assert_ne!(votes.cluster_id, 0);
        assert!(
            matches!(answer, PeerResponse::Elected { cluster_id, .. } if cluster_id == votes.cluster_id)
        );
    }

    #[test]
    fn a_backup_is_elected_only_in_sync_and_after_the_lease() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut witness = Witness::new(
            Votes {
                cluster_id: CLUSTER,
                ..Votes::default()
            },
            config,
            t0,
        );
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
        let renew = PeerRequest::Lease {
            epoch: Epoch(1),
            acked: LogPosition::default(),
        };
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
        let votes = established(3);
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
        let votes = established(3);
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
            ..votes
        };
        let mut witness = Witness::new(top, config, t0);
        let (answer, changed) = witness.handle(after, 0, &elect(u64::MAX));
        assert!(matches!(answer, PeerResponse::Denied { .. }));
        assert_eq!(changed, None);
        assert_eq!(witness.votes(), top);
    }

    #[test]
    fn no_node_behind_the_acknowledged_history_or_from_another_cluster_is_elected() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let votes = established(2);
        let mut witness = Witness::new(votes, config, t0);
        // The primary reports what it acknowledged; only it moves the record.
        let report = |acked| PeerRequest::Lease {
            epoch: Epoch(2),
            acked,
        };
        let (_, changed) = witness.handle(t0, 1, &report(at(2, 90)));
        assert_eq!(changed, None);
        let (answer, changed) = witness.handle(t0, 0, &report(at(2, 100)));
        assert!(matches!(answer, PeerResponse::Granted { .. }));
        assert_eq!(changed.map(|v| v.acked), Some(at(2, 100)));
        // An older report never moves it back.
        let (_, changed) = witness.handle(t0, 0, &report(at(1, 500)));
        assert_eq!(changed, None);

        let after = t0 + config.bound_for(config.duration);
        // The primary itself, come back with an empty store: refused.
        let empty = elect_from(2, 0, LogPosition::default());
        assert_eq!(elected(&witness.handle(after, 0, &empty).0), None);
        // Its store from another cluster, however far along: refused, even forced.
        let foreign = PeerRequest::Elect {
            epoch: Epoch(2),
            force: true,
            cluster_id: 0xf0f0,
            end: at(9, 9_999),
        };
        assert_eq!(elected(&witness.handle(after, 0, &foreign).0), None);
        // The backup, in sync by the record but behind what was acked
        // (say, its directory restored from an old copy): refused.
        let behind = elect_from(2, CLUSTER, at(2, 99));
        assert_eq!(elected(&witness.handle(after, 1, &behind).0), None);
        // A later epoch's batch is further along whatever its LSN.
        let earlier_epoch = elect_from(2, CLUSTER, at(1, 5_000));
        assert_eq!(elected(&witness.handle(after, 1, &earlier_epoch).0), None);
        // Holding all of it: elected.
        let whole = elect_from(2, CLUSTER, at(2, 100));
        assert_eq!(elected(&witness.handle(after, 1, &whole).0), Some(Epoch(3)));
        assert_eq!(witness.votes().members, [true, true]);
    }

    #[test]
    fn a_witness_that_lost_its_votes_follows_only_a_forced_promotion() {
        let config = LeaseConfig::default();
        let t0 = Instant::now();
        let mut witness = Witness::new(Votes::default(), config, t0);
        let holder = |force| PeerRequest::Elect {
            epoch: Epoch(7),
            force,
            cluster_id: CLUSTER,
            end: at(7, 500),
        };
        assert_eq!(elected(&witness.handle(t0, 1, &holder(false)).0), None);
        let (answer, votes) = witness.handle(t0, 1, &holder(true));
        assert_eq!(elected(&answer), Some(Epoch(8)));
        let votes = votes.expect("recorded");
        assert_eq!(
            (votes.cluster_id, votes.acked, votes.primary),
            (CLUSTER, at(7, 500), Some(1))
        );
    }
}
