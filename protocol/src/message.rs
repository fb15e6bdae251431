//! Every message of the protocol. See the crate docs for which stream carries
//! which message.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::ids::{Epoch, Role, Tid, TxnId};
use crate::limits::Limits;

/// Client → server on the session stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionRequest {
    /// Opens the session; must be the first frame on the first stream.
    Hello(Hello),
    /// Asks for proof that the server is alive and current.
    Ping {
        /// Strictly increasing per session.
        seq: u64,
    },
}

/// The opening of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal the server's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub protocol_version: u32,
    /// Random per client instance; the `client_id` of its [`TxnId`]s.
    pub client_id: u128,
    /// The highest TID the client has seen; a server behind it refuses.
    pub last_seen_tid: Tid,
    /// The TID up to which the client's cache has applied invalidations:
    /// `Welcome` lists the keys changed after it.
    pub cached_tid: Tid,
    /// Whether the client's cache holds entries from an earlier session.
    /// The server then sends this session every invalidation; otherwise
    /// only those of keys the session reads.
    pub holds_cache: bool,
}

/// Server → client on the session stream, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEvent {
    /// The session is open.
    Welcome(Welcome),
    /// The session is refused; the server closes the stream.
    Refused {
        /// Why.
        error: WireError,
    },
    /// The answer to a `Ping`.
    Pong(Pong),
    /// Keys changed by the commit `tid`; sent before any later `Pong`.
    Invalidate {
        /// The commit.
        tid: Tid,
        /// The keys it wrote.
        keys: Vec<Bytes>,
    },
}

/// What a client learns when its session opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Random per data directory, stable across restarts.
    pub server_id: u64,
    /// The server's role now.
    pub role: Role,
    /// The server's epoch now.
    pub epoch: Epoch,
    /// The last TID whose invalidations this session has been given: every
    /// later commit arrives as an `Invalidate` on the session stream.
    pub last_tid: Tid,
    /// The limits the server enforces.
    pub limits: Limits,
    /// Revalidation of the client's cache: `Some(keys)` lists every key
    /// changed after the client's `cached_tid` up to `last_tid` (empty if
    /// none), so the client drops just those; `None` means the server's change
    /// log does not reach back that far and the client must drop its cache.
    pub changed_since_cached: Option<Vec<Bytes>>,
}

/// Proof of liveness for one `Ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping answered.
    pub seq: u64,
    /// The last TID whose invalidations precede this pong on the stream.
    pub last_tid: Tid,
    /// The server's epoch.
    pub epoch: Epoch,
    /// The server's role.
    pub role: Role,
}

/// Client → server: the one request frame of a request stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Reads one key. Answered with [`Response::Value`].
    Get {
        /// The key.
        key: Bytes,
    },
    /// Reads several keys at one snapshot. Answered with [`Response::Values`].
    GetMany {
        /// The keys, answered in the same order.
        keys: Vec<Bytes>,
    },
    /// Reads a key range in ascending order. Answered with [`Response::Entries`].
    Scan(ScanRequest),
    /// Commits a transaction. Answered with [`Response::Committed`] or an error.
    Commit(CommitRequest),
    /// Asks for the server's status. Answered with [`Response::Status`].
    Status,
    /// Asks for the recorded outcome of a transaction; if none is recorded
    /// (and it is not in flight), records `Abandoned` durably so that no
    /// late copy can ever commit. Answered with [`Response::Committed`]
    /// (`replayed: true`) or [`Response::Error`] with the recorded failure,
    /// [`WireError::Abandoned`] or [`WireError::Expired`].
    Resolve {
        /// The transaction.
        txn_id: TxnId,
    },
    /// Makes this node (a backup) the primary: the current primary steps
    /// down once this node holds everything it acknowledged, and the
    /// witness grants the next epoch. Refused when it would lose
    /// acknowledged writes, unless `force`. Answered with
    /// [`Response::Status`].
    Promote {
        /// Promote even if this node may lack acknowledged writes.
        force: bool,
    },
    /// Streams a consistent copy of the whole store at one TID (`admin`
    /// only, one at a time per server). Answered, unlike every other
    /// request, with a sequence of [`BackupPiece`](crate::backup::BackupPiece)
    /// frames: the stream a backup file holds.
    Backup,
    /// Subscribes to the changes of keys under a prefix, from a TID on.
    /// Answered with [`FeedEvent`](crate::feed::FeedEvent) frames until the
    /// client stops reading.
    Subscribe(crate::feed::Subscribe),
}

/// A range read: keys `k` with `start <= k < end` (no `end`: to the last key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequest {
    /// First key, inclusive.
    pub start: Bytes,
    /// Last key, exclusive; `None` for no upper bound.
    pub end: Option<Bytes>,
    /// Most entries to return; the server may return fewer (see `more`).
    pub limit: u32,
}

impl ScanRequest {
    /// A scan of every key that starts with `prefix`.
    ///
    /// ```
    /// use store_protocol::ScanRequest;
    /// let scan = ScanRequest::prefix(&b"user/"[..], 10);
    /// assert_eq!(&scan.start[..], b"user/");
    /// assert_eq!(scan.end.as_deref(), Some(&b"user0"[..]));
    /// assert_eq!(ScanRequest::prefix(&b"\xff"[..], 1).end, None);
    /// ```
    pub fn prefix(prefix: impl Into<Bytes>, limit: u32) -> ScanRequest {
        let start: Bytes = prefix.into();
        let mut end = start.to_vec();
        // The first key after every key with this prefix: bump the last byte
        // that is not 0xff, dropping the 0xff bytes after it.
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                break;
            }
        }
        let end = if end.is_empty() {
            None
        } else {
            Some(Bytes::from(end))
        };
        ScanRequest { start, end, limit }
    }
}

/// An optimistic transaction: applied only if no key of the read set changed
/// since the serial the client saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// Fixed before the first send, identical on every retry.
    pub txn_id: TxnId,
    /// The lowest `seq` of this client whose outcome it has not received yet.
    pub acked_below: u64,
    /// [`content_digest`] of `read_set` and `writes`.
    pub digest: u128,
    /// Keys read, each with the serial seen (`Tid::ZERO` = absent).
    pub read_set: Vec<ReadCheck>,
    /// Writes, applied in order.
    pub writes: Vec<Write>,
}

/// One key of a read set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadCheck {
    /// The key read.
    pub key: Bytes,
    /// Its serial when read; `Tid::ZERO` if it was absent.
    pub serial: Tid,
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    /// Sets the value.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Removes the key (no error if absent).
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Adds `by` to the value read as a decimal i64 (absent = 0).
    Incr {
        /// The key.
        key: Bytes,
        /// The amount, may be negative.
        by: i64,
    },
    /// Appends bytes to the value (absent = empty).
    Append {
        /// The key.
        key: Bytes,
        /// The bytes to append.
        value: Bytes,
    },
}

/// Most bytes one read or write adds to an encoding besides its key and
/// value: a tag, two length varints, and a serial or counter varint.
pub const OP_ENVELOPE_BYTES: usize = 24;
/// Most bytes a commit adds besides its operations: the id, watermark,
/// digest and two list lengths, as varints.
pub const COMMIT_ENVELOPE_BYTES: usize = 96;

impl CommitRequest {
    /// An upper bound on its encoded size: its keys and values, plus
    /// [`OP_ENVELOPE_BYTES`] per read or write (lengths, tags, serials,
    /// counters) and [`COMMIT_ENVELOPE_BYTES`] for the rest. What it costs
    /// to hold, ship and apply.
    pub fn size_bound(&self) -> usize {
        let reads: usize = self
            .read_set
            .iter()
            .map(|read| read.key.len() + OP_ENVELOPE_BYTES)
            .sum();
        let writes: usize = self
            .writes
            .iter()
            .map(|write| {
                OP_ENVELOPE_BYTES
                    + match write {
                        Write::Put { key, value } | Write::Append { key, value } => {
                            key.len() + value.len()
                        }
                        other => other.key().len(),
                    }
            })
            .sum();
        COMMIT_ENVELOPE_BYTES + reads + writes
    }
}

impl Write {
    /// The key this write touches.
    pub fn key(&self) -> &Bytes {
        match self {
            Write::Put { key, .. }
            | Write::Delete { key }
            | Write::Incr { key, .. }
            | Write::Append { key, .. } => key,
        }
    }
}

/// The 128-bit digest of a transaction's content: XXH3-128 of the postcard
/// encoding of `(read_set, writes)`. A retry with the same [`TxnId`] must
/// carry the same digest.
pub fn content_digest(read_set: &[ReadCheck], writes: &[Write]) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    // Serializing into a hasher cannot fail: every type here is plain data.
    let _ = postcard::to_io(&(read_set, writes), HashWriter(&mut hasher));
    hasher.digest128()
}

struct HashWriter<'a>(&'a mut xxhash_rust::xxh3::Xxh3);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Server → client: the one response frame of a request stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The value of a `Get`.
    Value {
        /// The value, `None` if absent.
        found: Option<Versioned>,
        /// The last TID of the snapshot it was read from: the value is
        /// current as of this TID.
        read_tid: Tid,
    },
    /// The values of a `GetMany`, in request order, from one snapshot.
    Values {
        /// The values, `None` where absent.
        values: Vec<Option<Versioned>>,
        /// The last TID of the snapshot.
        read_tid: Tid,
    },
    /// The entries of a `Scan`, ascending.
    Entries {
        /// The entries.
        entries: Vec<Entry>,
        /// True if the range holds more entries than returned.
        more: bool,
    },
    /// A commit that is durable.
    Committed(Committed),
    /// The server's status.
    Status(StatusInfo),
    /// The request failed; see the error for whether anything was applied.
    Error(WireError),
}

/// A value with the TID that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The TID of the commit that wrote it.
    pub serial: Tid,
}

/// One entry of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// The TID of the commit that wrote it.
    pub serial: Tid,
}

/// The outcome of a durable commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The commit's TID.
    pub tid: Tid,
    /// One result per write, in order.
    pub results: Vec<WriteResult>,
    /// True when this answer replays an outcome recorded earlier.
    pub replayed: bool,
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    /// A `Put` stored its value.
    Stored,
    /// A `Delete` ran; `existed` tells whether the key was there.
    Deleted {
        /// Whether the key existed.
        existed: bool,
    },
    /// An `Incr`'s new value.
    Counter(i64),
    /// An `Append`'s new value length.
    Appended {
        /// Length in bytes after appending.
        len: u64,
    },
}

/// A server's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// The server's role.
    pub role: Role,
    /// The server's epoch.
    pub epoch: Epoch,
    /// The last committed TID.
    pub last_tid: Tid,
    /// Random per data directory, stable across restarts.
    pub server_id: u64,
    /// Open client sessions.
    pub sessions: u64,
    /// The pair, when the server is a member of one.
    pub pair: Option<PairStatus>,
}

/// What a member of an HA pair knows of the pair, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStatus {
    /// The other data node's address, as configured.
    pub peer: String,
    /// Whether the other data node answered recently.
    pub peer_reachable: bool,
    /// The other data node's last TID, when known.
    pub peer_last_tid: Option<Tid>,
    /// The backup (the other node on a primary, this node on a backup) is
    /// recorded as holding every acknowledged commit.
    pub backup_in_sync: bool,
    /// Whether the witness answered recently.
    pub witness_reachable: bool,
    /// Replication lag in TIDs between primary and backup, when known.
    pub lag_tids: Option<u64>,
    /// What the node is waiting for, if anything (e.g. "no majority").
    pub note: String,
}
