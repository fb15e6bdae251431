//! The client's one error type.

use bytes::Bytes;
use store_protocol::{TxnId, WireError};

/// Why a call failed, and what that says about whether a write was applied.
///
/// * [`Error::Unavailable`]: no server could be reached or the server refused
///   before deciding; a write was **not applied**.
/// * [`Error::Conflict`], [`Error::Rejected`], [`Error::Abandoned`]: a
///   definite failure; this write was **not applied**.
/// * [`Error::OutcomeUnknown`], [`Error::Expired`]: a write may or may not
///   have been applied ([`Error::unknown_txn_id`] names it).
/// * [`Error::Config`], [`Error::Tls`]: fix the configuration; nothing was sent.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No server answered in time, or the server could not serve now
    /// (shutting down, overloaded, not primary). Nothing was applied.
    #[error("unavailable: {detail}")]
    Unavailable {
        /// What happened, per server tried.
        detail: String,
    },
    /// The session is not `Live` and the read policy is `FailFast`: no
    /// proof that the server is current. Nothing was sent.
    #[error("session is {state}, not live (fail-fast)")]
    SessionStale {
        /// The session's state.
        state: crate::SessionState,
    },
    /// The TLS handshake failed: wrong CA, missing or unknown client
    /// certificate. Retrying will not help.
    #[error("TLS handshake failed: {detail}")]
    Tls {
        /// What the TLS layer said.
        detail: String,
    },
    /// The client configuration is unusable (missing files, bad address).
    #[error("configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// A key read by the transaction changed before it committed. Nothing
    /// was applied.
    #[error("conflict on key {}", String::from_utf8_lossy(key))]
    Conflict {
        /// The first changed key the server found.
        key: Bytes,
    },
    /// The server refused the request (too large, malformed, not an integer,
    /// ...). Nothing was applied.
    #[error("rejected: {0}")]
    Rejected(WireError),
    /// `resolve` found no outcome and recorded the transaction as
    /// abandoned: it was not applied and never will be.
    #[error("transaction txn={txn_id} abandoned: not applied")]
    Abandoned {
        /// The transaction.
        txn_id: TxnId,
    },
    /// The server has forgotten this transaction id (its outcome is older
    /// than the retention period): an earlier copy **may have been
    /// applied**; no copy will ever be applied again. Only ever the answer
    /// to a resend, so never proof that nothing happened.
    #[error(
        "transaction txn={txn_id} expired: its outcome is no longer kept, it may have been applied"
    )]
    Expired {
        /// The transaction.
        txn_id: TxnId,
    },
    /// The commit was sent, but no answer came back, and `resolve` could not
    /// reach a server: it may or may not have been applied.
    #[error("outcome unknown for txn={txn_id}: {detail}")]
    OutcomeUnknown {
        /// The transaction whose outcome is unknown.
        txn_id: TxnId,
        /// What interrupted it.
        detail: String,
    },
    /// A subscription's start is older than the history the server
    /// retains; a new one may start at `oldest` (after reading the current
    /// state, say with a scan).
    #[error("the history before tid {oldest} is no longer retained (compacted)")]
    Compacted {
        /// The oldest TID a subscription may start from now.
        oldest: store_protocol::Tid,
    },
    /// A subscription read so slowly that the server cut it off rather
    /// than hold changes for it.
    #[error("the subscription fell behind and the server cut it off")]
    FellBehind,
    /// The server answered something this client does not understand.
    #[error("protocol error: {detail}")]
    Protocol {
        /// What was unexpected.
        detail: String,
    },
}

impl Error {
    /// True when the operation is known not to have been applied.
    pub fn is_not_applied(&self) -> bool {
        !matches!(
            self,
            Error::OutcomeUnknown { .. } | Error::Expired { .. } | Error::Protocol { .. }
        )
    }

    /// The transaction id, when the outcome of a commit is unknown (never
    /// learned, or forgotten by the server).
    pub fn unknown_txn_id(&self) -> Option<TxnId> {
        match self {
            Error::OutcomeUnknown { txn_id, .. } | Error::Expired { txn_id } => Some(*txn_id),
            _ => None,
        }
    }

    /// Maps an error the server reported about a request it received.
    pub(crate) fn from_wire(error: WireError) -> Error {
        match error {
            WireError::Conflict { key } => Error::Conflict { key },
            other => Error::Rejected(other),
        }
    }
}
