//! The HA pair (DESIGN §7): a primary and a backup with synchronous
//! replication, and a witness that holds the third vote.
//!
//! Pure state machines decide; thin tasks carry out:
//!
//! * `clock`: the boot clock every lease and timer counts on (it keeps
//!   counting through a suspend);
//! * `lease`: leases from both ends, with clock-rate and safety margins;
//! * `role`: a data node's standing (primary or not, when to renew, when
//!   to stand for election) and the leases it grants;
//! * `replication`: the primary's view of its backup (`Ready` shape):
//!   when a durable batch may be answered, when to ask the witness to
//!   record the backup in or out of sync;
//! * `votes`: the witness's rules (elections, in-sync records);
//! * `node`: the tasks of a data node: lease renewal, elections, and
//!   answering peers; `replicator`: shipping batches and snapshots to a
//!   joined backup; `follower`: a backup applying them; `link`: outgoing
//!   peer connections; `witness`: the witness server. The shells sleep
//!   until their cores' `poll_timeout`, or until the standing changes;
//! * `sim` (tests): the cores driven together over a simulated network,
//!   with crashes, partitions and drifting clocks, checking one primary at
//!   a time and no acknowledged batch lost.

mod clock;
mod follower;
mod lease;
mod link;
mod membership;
mod node;
mod replication;
mod replicator;
mod role;
#[cfg(test)]
mod sim;
mod votes;
pub(crate) use votes::new_cluster_id;
pub mod witness;

use clock::Instant;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicU64, Ordering};

use store_protocol::peer::{LogPosition, NodeId, PeerRequest, PeerResponse};
use store_protocol::{Epoch, Limits, PairStatus, Role, Tid};
use tokio::sync::{mpsc, watch};

pub use lease::LeaseConfig;
pub(crate) use link::peer_client_config;
pub(crate) use node::serve as serve_peer;

use crate::commit::{ToReplicator, WriteEpoch};
use crate::invalidation::Invalidations;
use crate::storage::Storage;
use link::Link;
use replication::SyncState;
use replicator::{ReplEvent, ReplLog};
use role::Standing;

/// Messages queued for the replicator (batches from the committer, events
/// from replication streams) before their senders wait.
pub const REPLICATOR_QUEUE: usize = 1024;

/// How a data node takes part in a pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairConfig {
    /// The data nodes' addresses, as in `--cluster`.
    pub cluster: [SocketAddr; 2],
    /// This node's index in `cluster`.
    pub me: NodeId,
    /// Where this node reaches the other data node (its `cluster` address
    /// unless told otherwise, e.g. through a proxy).
    pub peer_via: SocketAddr,
    /// The witness's address.
    pub witness: SocketAddr,
    /// Lease timing.
    pub lease: LeaseConfig,
}

impl PairConfig {
    /// The configuration of the node listening on `listen` in `cluster`, or
    /// why `listen` is not one of them.
    pub fn for_node(
        cluster: [SocketAddr; 2],
        listen: SocketAddr,
        witness: SocketAddr,
    ) -> Result<PairConfig, String> {
        let me = cluster
            .iter()
            .position(|addr| *addr == listen)
            .ok_or_else(|| {
                format!(
                    "--listen {listen} is not one of --cluster {},{}",
                    cluster[0], cluster[1]
                )
            })?;
        if cluster[0] == cluster[1] {
            return Err("--cluster needs two different addresses".into());
        }
        let me = NodeId::try_from(me).map_err(|e| e.to_string())?;
        Ok(PairConfig {
            cluster,
            me,
            peer_via: cluster[usize::from(1 - me)],
            witness,
            lease: LeaseConfig::default(),
        })
    }
}

impl PairConfig {
    /// The other data node's `--cluster` address (what its certificate
    /// names; `peer_via` may differ).
    pub fn peer(&self) -> SocketAddr {
        self.cluster[usize::from(1 - self.me)]
    }
}

/// A data node's membership of the pair, shared by its tasks and by the
/// request and session paths (which ask whether it may serve).
pub struct Pair {
    config: PairConfig,
    standing: Mutex<Standing>,
    /// Bumped whenever the standing may have changed.
    changed: watch::Sender<u64>,
    peer: Arc<Link>,
    witness: Arc<Link>,
    storage: Arc<Storage>,
    invalidations: Arc<Invalidations>,
    limits: Limits,
    log: Mutex<ReplLog>,
    log_grew: tokio::sync::Notify,
    events: mpsc::Sender<ReplEvent>,
    /// The backup's standing: on a primary, as its replicator sees it; on
    /// a backup, whether it is following a primary's stream.
    replication: Mutex<SyncState>,
    peer_last_tid: Mutex<Option<Tid>>,
    note: Mutex<String>,
    /// This node's history differs from the primary's: rejoin by snapshot.
    diverged: std::sync::atomic::AtomicBool,
    /// The epoch the commit pipeline stamps batches with (set while primary).
    write_epoch: WriteEpoch,
    /// The last batch acknowledged to clients, reported to the witness.
    acked: Mutex<LogPosition>,
    /// On a primary: the last batch the backup node acknowledged on its
    /// stream (kept while the stream is lost, so the lag goes on growing).
    backup_acked: AtomicU64,
    /// The highest epoch the witness has vouched for (or this node held
    /// durably at start).
    confirmed: AtomicU64,
}

/// Who vouches for an epoch a node is asked to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Voucher {
    /// The witness, which grants every epoch.
    Witness,
    /// The other data node: taken only once the witness confirms it.
    Peer,
}

/// The receiving ends the pair's tasks run on, made with [`Pair::new`].
pub struct PairTasks {
    committer: mpsc::Receiver<ToReplicator>,
    events: mpsc::Receiver<ReplEvent>,
}

impl Pair {
    /// The pair membership of a node with `storage`, reaching its peers
    /// through `endpoint` with `crypto`. `committer` receives the commit
    /// pipeline's batches. Nothing runs until [`Pair::start`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: PairConfig,
        storage: Arc<Storage>,
        invalidations: Arc<Invalidations>,
        limits: Limits,
        endpoint: &quinn::Endpoint,
        crypto: quinn::ClientConfig,
        committer: mpsc::Receiver<ToReplicator>,
        write_epoch: WriteEpoch,
    ) -> (Arc<Pair>, PairTasks) {
        let (events_tx, events) = mpsc::channel(REPLICATOR_QUEUE);
        let now = Instant::now();
        let standing = Standing::new(config.me, storage.epoch(), config.lease, now);
        let pair = Pair {
            peer: Arc::new(Link::new(
                config.peer_via,
                config.peer(),
                endpoint.clone(),
                crypto.clone(),
            )),
            witness: Arc::new(Link::new(
                config.witness,
                config.witness,
                endpoint.clone(),
                crypto,
            )),
            standing: Mutex::new(standing),
            changed: watch::Sender::new(0),
            log: Mutex::new(ReplLog::new(storage.history_end().lsn.saturating_add(1))),
            log_grew: tokio::sync::Notify::new(),
            events: events_tx,
            replication: Mutex::new(SyncState::Alone),
            peer_last_tid: Mutex::new(None),
            note: Mutex::new(String::new()),
            diverged: std::sync::atomic::AtomicBool::new(false),
            write_epoch,
            acked: Mutex::new(LogPosition::default()),
            backup_acked: AtomicU64::new(0),
            confirmed: AtomicU64::new(storage.epoch().0),
            config,
            storage,
            invalidations,
            limits,
        };
        (Arc::new(pair), PairTasks { committer, events })
    }

    /// Starts the pair's tasks: lease renewal and elections, the
    /// replicator (as primary) and the follower (as backup).
    pub fn start(self: &Arc<Pair>, tasks: PairTasks) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(node::run(self.clone())),
            tokio::spawn(replicator::run(self.clone(), tasks.committer, tasks.events)),
            tokio::spawn(follower::run(self.clone())),
        ]
    }

    fn standing(&self) -> std::sync::MutexGuard<'_, Standing> {
        self.standing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the standing and wakes whoever waits on it.
    /// Every change of the standing goes through here.
    fn update<T>(&self, change: impl FnOnce(&mut Standing) -> T) -> T {
        let result = {
            let mut standing = self.standing();
            let result = change(&mut standing);
            let writes = standing.is_primary().then(|| standing.epoch());
            self.write_epoch.set(writes);
            result
        };
        self.changed.send_modify(|n| *n += 1);
        result
    }

    /// The other data node.
    fn peer_id(&self) -> NodeId {
        1 - self.config.me
    }

    /// Whether this node may answer as primary now.
    pub fn serving(&self) -> bool {
        self.standing().serving(Instant::now())
    }

    /// The role to report now: `Primary` only while the lease holds.
    pub fn role(&self) -> Role {
        self.standing().role(Instant::now())
    }

    /// On a primary: how many batches of the log the backup node has not
    /// acknowledged, and their bytes (of those still in the replicator's
    /// memory: a lower bound once it is far behind); `None` on a backup.
    pub fn lag_log(&self) -> Option<(u64, u64)> {
        if self.role() != Role::Primary {
            return None;
        }
        let head = self.storage.history_end().lsn;
        let acked = self.backup_acked.load(Ordering::Acquire);
        let bytes = self.lock_log().bytes_after(acked, head);
        Some((head.saturating_sub(acked), bytes))
    }

    /// How long this node may still serve as primary (zero when not).
    pub fn lease_remaining(&self) -> std::time::Duration {
        self.standing().lease_remaining(Instant::now())
    }

    /// The highest epoch this node knows.
    pub fn epoch(&self) -> Epoch {
        self.standing().epoch()
    }

    fn set_note(&self, note: impl Into<String>) {
        *self
            .note
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = note.into();
    }

    /// What this node knows of the pair, for `status`.
    pub fn status(&self) -> PairStatus {
        let recent = self.config.lease.duration;
        let sync = *self
            .replication
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let peer_last_tid = *self
            .peer_last_tid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last_tid = self.storage.last_tid();
        let lag_tids = peer_last_tid.map(|peer| last_tid.0.abs_diff(peer.0));
        PairStatus {
            peer: self.config.peer().to_string(),
            peer_reachable: self.peer.reachable(recent),
            peer_last_tid,
            backup_in_sync: sync == SyncState::InSync,
            witness_reachable: self.witness.reachable(recent),
            lag_tids,
            note: self
                .note
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    fn set_replication(&self, state: SyncState) {
        *self
            .replication
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// The last batch acknowledged to clients (by this node as primary).
    fn acked(&self) -> LogPosition {
        *self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_acked(&self, position: LogPosition) {
        let mut acked = self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *acked = (*acked).max(position);
    }

    /// Asks the witness whether it has granted `epoch` (or a later one).
    async fn witness_confirms(&self, epoch: Epoch) -> bool {
        let answer = self
            .witness
            .request(&PeerRequest::Status, self.config.lease.renew_every * 2)
            .await;
        match answer {
            Ok(PeerResponse::Status(status)) => {
                self.confirmed.fetch_max(status.epoch.0, Ordering::AcqRel);
                status.epoch >= epoch
            }
            _ => false,
        }
    }

    fn set_peer_last_tid(&self, tid: Tid) {
        *self
            .peer_last_tid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tid);
    }

    /// Records a higher epoch durably, then in the standing; refuses a
    /// lower one (fencing: a deposed primary's messages are refused). Only
    /// the witness grants epochs: one the other node vouches for is taken
    /// once the witness confirms it, so no peer can push this node to an
    /// epoch nobody granted.
    async fn accept_epoch(
        &self,
        epoch: Epoch,
        primary: Option<NodeId>,
        voucher: Voucher,
    ) -> Result<(), String> {
        let known = self.storage.epoch();
        if epoch < known {
            return Err(format!("epoch {epoch} is older than this node's {known}"));
        }
        match voucher {
            Voucher::Witness => {
                self.confirmed.fetch_max(epoch.0, Ordering::AcqRel);
            }
            Voucher::Peer if epoch.0 > self.confirmed.load(Ordering::Acquire) => {
                if !self.witness_confirms(epoch).await {
                    return Err(format!("epoch {epoch} is not confirmed by the witness"));
                }
            }
            Voucher::Peer => {}
        }
        if epoch > known {
            let storage = self.storage.clone();
            tokio::task::spawn_blocking(move || storage.raise_epoch(epoch))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        self.update(|standing| standing.learned(epoch, primary));
        Ok(())
    }
}
