//! Node-to-node messages of an HA pair (DESIGN §7): leases, elections and
//! the replication stream. They travel on connections with ALPN
//! [`PEER_ALPN`], framed like every other message.
//!
//! * Request streams: one [`PeerRequest`], one [`PeerResponse`], except
//!   [`PeerRequest::Join`], which turns its stream into a replication
//!   stream: the primary sends [`ReplFrame`]s, the backup answers each
//!   durable batch with a [`ReplAck`].
//! * Every message carries the sender's epoch; a receiver that knows a
//!   higher one refuses it with [`PeerResponse::Denied`], naming it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Role, Tid, TxnId};

/// The TLS application protocol name of node-to-node connections.
pub const PEER_ALPN: &[u8] = b"zeolite-peer/1";

/// A data node's index in `--cluster` (0 or 1).
pub type NodeId = u8;

/// A request from one node to another.
///
/// No request names its sender: the sender is the node its verified
/// certificate names (DESIGN §7), so no node can speak for another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Primary → backup or witness: renew my lease for `epoch`.
    Lease {
        /// The primary's epoch.
        epoch: Epoch,
        /// The last batch the primary has acknowledged to clients (the
        /// witness never elects a node whose history ends before it).
        acked: LogPosition,
    },
    /// Data node → witness: make me primary of the next epoch. Granted only
    /// once every lease of the current primary has run out, and only to a
    /// node recorded as holding every acknowledged commit (unless `force`).
    Elect {
        /// The highest epoch the candidate knows; one the witness never
        /// granted is refused.
        epoch: Epoch,
        /// Operator override of the in-sync and history rules (`store-cli
        /// promote --force`); never of the cluster rule.
        force: bool,
        /// The cluster the candidate's store belongs to (0: none yet).
        cluster_id: u64,
        /// Where the candidate's history ends.
        end: LogPosition,
    },
    /// Primary → witness: durably record whether the other data node holds
    /// every acknowledged commit.
    SetInSync {
        /// The primary's epoch.
        epoch: Epoch,
        /// In sync or not.
        in_sync: bool,
    },
    /// Primary → witness: end my lease now (a manual failover).
    Release {
        /// The primary's epoch.
        epoch: Epoch,
    },
    /// Backup → primary: stop serving so that I can take over, once I hold
    /// everything you acknowledged (`store-cli promote`).
    StepDown {
        /// The backup's epoch.
        epoch: Epoch,
    },
    /// Anyone → anyone: what you know of the pair.
    Status,
    /// Backup → primary: send me your history from where mine ends. The
    /// stream becomes a replication stream.
    Join {
        /// The backup's epoch.
        epoch: Epoch,
        /// The epoch of the last batch the backup applied.
        batch_epoch: Epoch,
        /// The last batch the backup applied; `u64::MAX` asks for a
        /// snapshot (the backup found its history differs).
        lsn: u64,
        /// The cluster the backup's store belongs to (0: none yet, an
        /// empty store joining with `--join`).
        cluster_id: u64,
    },
    /// Primary → backup, as the primary stops (SIGTERM): I have stepped
    /// down and released my lease at the witness; stand for election now,
    /// once you hold my history up to `lsn` (a leadership transfer).
    HandOver {
        /// The epoch the sender was primary of.
        epoch: Epoch,
        /// The end of the sender's history.
        lsn: u64,
    },
}

/// A point in the replicated history: a batch's epoch and LSN, ordered as
/// Raft orders logs (a later epoch is further along whatever the LSN).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    /// The epoch of the batch.
    pub epoch: Epoch,
    /// Its log sequence number.
    pub lsn: u64,
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// A lease, counted by the granter from when it received the request.
    Granted {
        /// The epoch the lease is for.
        epoch: Epoch,
        /// How long the granter promises not to back another primary.
        lease_ms: u64,
    },
    /// The candidate is primary of `epoch`, with a first lease.
    Elected {
        /// The new epoch.
        epoch: Epoch,
        /// The first lease.
        lease_ms: u64,
        /// The cluster's id (made at its first election).
        cluster_id: u64,
    },
    /// A `Join` was accepted: frames of the replication stream follow.
    Following {
        /// The cluster's id, which a joining empty store takes.
        cluster_id: u64,
        /// The primary's limits (they bound its replication frames).
        limits: crate::Limits,
        /// The primary's epoch: the stream's. Its batches may be of older
        /// epochs (history the primary holds in its log), never newer
        /// than the stream's latest.
        epoch: Epoch,
    },
    /// Refused; `epoch` and `primary` are what the refuser knows.
    Denied {
        /// The refuser's epoch.
        epoch: Epoch,
        /// The primary the refuser knows of.
        primary: Option<NodeId>,
        /// Why, for logs and `status`.
        reason: String,
    },
    /// Durably recorded.
    Recorded,
    /// The primary stepped down; it acknowledged nothing after `lsn`.
    SteppedDown {
        /// The last batch the old primary made durable.
        lsn: u64,
    },
    /// What the node knows of the pair.
    Status(PeerStatus),
}

/// What a node knows of the pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The node's role (`Backup` for a witness or a node that is neither).
    pub role: Role,
    /// The node's epoch.
    pub epoch: Epoch,
    /// The primary of that epoch, if known.
    pub primary: Option<NodeId>,
    /// Per data node: recorded as holding every acknowledged commit
    /// (the witness's record; a data node reports its own view).
    pub in_sync: [bool; 2],
    /// The last batch applied (0 for a witness).
    pub lsn: u64,
    /// The last TID applied (0 for a witness).
    pub last_tid: Tid,
    /// The cluster's id (0 before its first election, or for a data node
    /// whose store has none yet).
    pub cluster_id: u64,
    /// Per data node: has been a member (elected, or recorded in sync). The
    /// witness's record: a member that comes back with an empty store has
    /// lost its data, and must be told `--join`.
    pub members: [bool; 2],
    /// The `--cluster` addresses it was started with, in order: node
    /// indices in these messages count in this order, so every member
    /// must agree on it.
    pub cluster: Vec<std::net::SocketAddr>,
}

/// A durable batch, as shipped to the backup: one record of the primary's
/// write-ahead log, which the backup appends to its own and applies as it
/// is (it decides nothing again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The primary's epoch when it decided the batch.
    pub epoch: Epoch,
    /// Its log sequence number: one per durable batch, from 1.
    pub lsn: u64,
    /// The first TID it assigned (`Tid(0)`: none).
    pub first_tid: Tid,
    /// The last TID after the batch.
    pub last_tid: Tid,
    /// The rows it changed, in the store's redo encoding (the log record's
    /// body, documented with the server's write-ahead log).
    pub body: Bytes,
}

/// One row of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotRow {
    /// A key, its serial and value.
    Data {
        /// The key.
        key: Bytes,
        /// The TID that last wrote it.
        serial: Tid,
        /// The value.
        value: Bytes,
    },
    /// A recorded transaction outcome, as stored.
    Outcome {
        /// The transaction.
        txn_id: TxnId,
        /// The stored record.
        record: Bytes,
    },
    /// A client's watermark.
    Watermark {
        /// The client.
        client_id: u128,
        /// Every seq below it is forgotten.
        below: u64,
    },
}

/// Primary → backup on a replication stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplFrame {
    /// The backup's history is not a prefix of the primary's (or is too
    /// far behind): replace it with this snapshot, rows to follow.
    SnapshotBegin {
        /// The primary's epoch.
        epoch: Epoch,
        /// The snapshot's last batch.
        lsn: u64,
        /// The epoch of that batch.
        batch_epoch: Epoch,
        /// The snapshot's last TID.
        last_tid: Tid,
    },
    /// Rows of the snapshot.
    SnapshotRows(Vec<SnapshotRow>),
    /// The snapshot is complete: apply it atomically and acknowledge.
    SnapshotEnd,
    /// The next batch.
    Batch(Batch),
}

/// Backup → primary: everything up to `lsn` is durable here. An ack
/// beyond the last batch the primary shipped ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplAck {
    /// The last durable batch.
    pub lsn: u64,
}
