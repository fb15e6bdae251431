//! The change feed: [`Request::Subscribe`](crate::Request) is answered, on
//! its own stream and for as long as the client reads, with
//! [`FeedEvent`] frames: every change to a key under the prefix, commit
//! by commit in TID order, from the TID after `from`.
//!
//! Only acknowledged commits are sent (in a pair, held by both nodes), so
//! no change a failover could undo is ever delivered. Each `Changes`
//! frame says how far the history has been read (`through`): a client
//! that reconnects, to the same server or to a new primary, subscribes
//! again from there and misses nothing, receives nothing twice. A `from`
//! older than the retained history ends the stream with
//! [`FeedEvent::Compacted`]; a client that does not read for the server's stall timeout (30 s by default) is cut
//! off (the stream is reset with [`FEED_RESET_TOO_SLOW`]), never buffered
//! for.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::ids::Tid;

/// Stream reset code of a feed whose reader fell too far behind.
pub const FEED_RESET_TOO_SLOW: u32 = 2;

/// A subscription: changes to keys under `prefix` after TID `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Keys starting with it (empty: every key).
    pub prefix: Bytes,
    /// Changes of commits after this TID.
    pub from: Tid,
}

/// What a commit did to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// The key now holds this value.
    Put(Bytes),
    /// These bytes were appended to the key's value (the log keeps what an
    /// append adds, not the whole value).
    Append(Bytes),
    /// The key was deleted.
    Delete,
}

/// One key changed by one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The commit.
    pub tid: Tid,
    /// The key.
    pub key: Bytes,
    /// What happened to it.
    pub op: ChangeOp,
}

/// One frame of a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedEvent {
    /// Changes of whole commits, in TID order (possibly none: progress).
    Changes {
        /// Every commit up to this TID has been read: resume from here.
        through: Tid,
        /// The changes under the prefix.
        changes: Vec<Change>,
    },
    /// Last: `from` is older than the retained history, which starts after
    /// `oldest` (the oldest `from` that can be served now).
    Compacted {
        /// The oldest TID a subscription may start from.
        oldest: Tid,
    },
    /// Last: the feed stopped (not the primary any more, shutting down,
    /// not permitted, ...).
    Failed(WireError),
}
