//! Typed errors that travel on the wire, and framing errors.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Tid};

/// Which limit a [`WireError::TooLarge`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitKind {
    /// A key (`max_key_bytes`).
    Key,
    /// A value (`max_value_bytes`).
    Value,
    /// A whole frame (`max_frame_bytes`).
    Frame,
    /// Reads plus writes in one transaction (`max_ops_per_txn`).
    Ops,
    /// The bytes of the values one transaction creates (`max_txn_bytes`).
    TxnBytes,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitKind::Key => "key",
            LimitKind::Value => "value",
            LimitKind::Frame => "frame",
            LimitKind::Ops => "operation count",
            LimitKind::TxnBytes => "bytes of new values in one transaction",
        })
    }
}

/// An error the server reports in a response (or a refused session).
///
/// Each variant says whether anything was applied: only the commit pipeline
/// decides that, so every error produced before it (`TooLarge`, `Malformed`,
/// `NotPrimary`, `Overloaded`, `ShuttingDown`) means "not applied".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The client speaks a protocol version this server does not.
    #[error("unsupported protocol version {client} (server speaks {server})")]
    UnsupportedVersion {
        /// The version the client sent.
        client: u32,
        /// The version the server speaks.
        server: u32,
    },
    /// A frame that does not decode, or a request that makes no sense here.
    #[error("malformed request: {detail}")]
    Malformed {
        /// What was wrong.
        detail: String,
    },
    /// A key, value, frame or transaction over its limit. Nothing applied.
    #[error("{what} too large: {size} bytes > limit {limit}")]
    TooLarge {
        /// Which limit.
        what: LimitKind,
        /// The offending size (bytes, or operations for `Ops`).
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A key in the read set changed since the serial the client saw.
    /// Nothing of the transaction was applied.
    #[error("conflict on key {}", String::from_utf8_lossy(key))]
    Conflict {
        /// The first key found changed.
        key: Bytes,
    },
    /// `Incr` on a value that is not a decimal i64. Nothing applied.
    #[error(
        "value of key {} is not a decimal integer",
        String::from_utf8_lossy(key)
    )]
    NotAnInteger {
        /// The key.
        key: Bytes,
    },
    /// `Incr` would overflow i64. Nothing applied.
    #[error("increment of key {} overflows i64", String::from_utf8_lossy(key))]
    Overflow {
        /// The key.
        key: Bytes,
    },
    /// The commit's digest does not match its content. Nothing applied.
    #[error("transaction digest does not match its content")]
    DigestMismatch,
    /// This server does not accept writes now; try the other one.
    #[error("not primary (epoch {epoch})")]
    NotPrimary {
        /// The epoch this server knows.
        epoch: Epoch,
    },
    /// The client has seen a later TID than this server holds: serving it
    /// would take the client back in time.
    #[error("server is behind the client (server last_tid {server_last_tid}, client saw {client_last_seen})")]
    ServerBehind {
        /// The server's last TID.
        server_last_tid: Tid,
        /// The client's `last_seen_tid`.
        client_last_seen: Tid,
    },
    /// The first message on a connection must be `Hello` on the session stream.
    #[error("no session: send Hello first")]
    NoSession,
    /// The server is saturated; retry later. Nothing applied.
    #[error("server overloaded")]
    Overloaded,
    /// The server is draining for shutdown. Nothing applied.
    #[error("server shutting down")]
    ShuttingDown,
    /// A server-side failure, such as a failed disk write. Nothing applied.
    #[error("internal server error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },
    /// The transaction id was already used for a different transaction
    /// (the digest differs). Nothing of this one was applied.
    #[error("transaction id reused for different content")]
    TxnIdReused,
    /// The transaction was abandoned by `resolve`: it never committed and
    /// never will.
    #[error("transaction abandoned")]
    Abandoned,
    /// The transaction id is below the client's watermark: its outcome was
    /// forgotten (acknowledged, or older than the retention period). It is
    /// never executed again.
    #[error("transaction id expired")]
    Expired,
    /// The same transaction is still being committed; retry the same bytes.
    #[error("transaction still in progress")]
    InProgress,
    /// A manual failover (`promote`) was refused; nothing changed.
    #[error("promote refused: {reason}")]
    PromoteRefused {
        /// Why, and what would make it possible.
        reason: String,
    },
    /// The commit was decided and made durable here, but this server lost
    /// its primaryship (or is shutting down) before it could confirm it:
    /// it **may have been applied**. Resend the same bytes to the primary,
    /// whose outcome table answers exactly once.
    #[error("unconfirmed: decided, but this server stopped being primary at epoch {epoch} before confirming it; it may have been applied")]
    Unconfirmed {
        /// The epoch this server knows.
        epoch: Epoch,
    },
    /// The certificate's identity may not do this (`--acl`), or named a
    /// transaction id outside its own space. Nothing was read or applied.
    #[error("permission denied: {identity} may not {what}")]
    PermissionDenied {
        /// The identity the client's certificate names.
        identity: String,
        /// What it was refused, naming the key where there is one.
        what: String,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than the limit; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The announced (or encoded) length.
        len: u64,
        /// The limit in force.
        limit: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes the frame needed.
        expected: u64,
        /// Bytes that arrived.
        got: u64,
    },
    /// The body is not a valid postcard encoding of the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl FrameError {
    /// The wire error to answer a peer whose frame failed to read.
    pub fn to_wire(&self) -> WireError {
        match self {
            FrameError::TooLarge { len, limit } => WireError::TooLarge {
                what: LimitKind::Frame,
                size: *len,
                limit: u64::from(*limit),
            },
            other => WireError::Malformed {
                detail: other.to_string(),
            },
        }
    }
}

/// Why a backup stream or file was refused (see [`crate::backup`]).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A frame could not be read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream or file is not a whole, undamaged backup.
    #[error("not a sound backup: {0}")]
    Damaged(String),
    /// The server stopped the backup and said why.
    #[error("the server stopped the backup: {0}")]
    Server(WireError),
}
