//! Transactions: the builder an application fills, the ids that name them,
//! and a prepared transaction's fixed bytes, which every retry resends.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use store_protocol::{CommitRequest, ReadCheck, Tid, TxnId, Write, WriteResult};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::Client;
use crate::error::Error;

/// Most transactions of one client whose outcome it does not know yet
/// (DESIGN §6); the next commit waits for one to resolve.
pub const MAX_UNRESOLVED: usize = 64;

/// Hands out this client's transaction ids and tracks which outcomes are
/// still unknown, so every commit can tell the server `acked_below`.
pub(crate) struct TxnIds {
    client_id: u128,
    next_seq: AtomicU64,
    unresolved: Mutex<BTreeSet<u64>>,
    slots: Arc<Semaphore>,
}

/// An allocated transaction id; unresolved until dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    ids: Arc<TxnIds>,
    pub(crate) id: TxnId,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.ids.lock().remove(&self.id.seq);
    }
}

impl std::fmt::Debug for TxnIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TxnIds({:032x})", self.client_id)
    }
}

impl TxnIds {
    pub(crate) fn new(client_id: u128) -> Arc<TxnIds> {
        Arc::new(TxnIds {
            client_id,
            next_seq: AtomicU64::new(1),
            unresolved: Mutex::new(BTreeSet::new()),
            slots: Arc::new(Semaphore::new(MAX_UNRESOLVED)),
        })
    }

    pub(crate) fn client_id(&self) -> u128 {
        self.client_id
    }

    /// A fresh id, unresolved until its ticket drops, and the current
    /// `acked_below`. Waits while [`MAX_UNRESOLVED`] are unresolved.
    pub(crate) async fn allocate(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<(Ticket, u64), Error> {
        let slot = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::Unavailable {
                detail: format!("{MAX_UNRESOLVED} transactions of this client are unresolved"),
            })?
            .map_err(|_| Error::Unavailable {
                detail: "client closed".into(),
            })?;
        let mut unresolved = self.lock();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        unresolved.insert(seq);
        let acked_below = unresolved.first().copied().unwrap_or(seq);
        drop(unresolved);
        let id = TxnId {
            client_id: self.client_id,
            seq,
        };
        let ticket = Ticket {
            ids: self.clone(),
            id,
            _slot: slot,
        };
        Ok((ticket, acked_below))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // The set stays consistent even if a holder panicked.
        self.unresolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A transaction with its id and bytes fixed: every retry, reconnect and
/// failover resends exactly these, so the server applies it at most once.
/// A [`CommitError`] hands it back when retrying may still succeed; pass it
/// to [`Client::recommit`]. Dropping it tells the server (through later
/// commits' `acked_below`) that its outcome no longer matters.
#[derive(Debug)]
pub struct PreparedTxn {
    pub(crate) request: CommitRequest,
    _ticket: Ticket,
}

impl PreparedTxn {
    pub(crate) fn new(request: CommitRequest, ticket: Ticket) -> PreparedTxn {
        PreparedTxn {
            request,
            _ticket: ticket,
        }
    }

    /// The transaction's id.
    pub fn txn_id(&self) -> TxnId {
        self.request.txn_id
    }
}

/// A failed commit, with the transaction handed back when retrying it under
/// the same id may still succeed (unavailable, stale session, outcome
/// unknown), as tokio's `SendError` hands back the value not sent.
///
/// ```no_run
/// # async fn demo(client: store_client::Client) -> Result<(), store_client::Error> {
/// let mut txn = client.txn();
/// txn.append("log", "entry;");
/// match txn.commit().await {
///     Ok(outcome) => println!("committed at {}", outcome.tid),
///     Err(failed) => match failed.into_prepared() {
///         // Same id, same bytes: applied at most once however often sent.
///         Some(prepared) => { client.recommit(prepared).await?; }
///         None => eprintln!("not applied"),
///     },
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CommitError {
    error: Error,
    prepared: Option<PreparedTxn>,
}

impl CommitError {
    pub(crate) fn new(error: Error, prepared: PreparedTxn) -> CommitError {
        let retryable = matches!(
            error,
            Error::Unavailable { .. } | Error::SessionStale { .. } | Error::OutcomeUnknown { .. }
        );
        CommitError {
            error,
            prepared: retryable.then_some(prepared),
        }
    }

    /// Why it failed.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The transaction, if retrying it under the same id may succeed.
    pub fn into_prepared(self) -> Option<PreparedTxn> {
        self.prepared
    }
}

impl From<CommitError> for Error {
    fn from(e: CommitError) -> Error {
        e.error
    }
}

/// A transaction being built: reads are recorded with the serial seen, and
/// the commit fails with [`Error::Conflict`] if any of them changed.
///
/// ```no_run
/// # async fn demo(client: store_client::Client) -> Result<(), store_client::Error> {
/// let mut txn = client.txn();
/// let balance: i64 = match txn.get("balance").await? {
///     Some(v) => String::from_utf8_lossy(&v).parse().unwrap_or(0),
///     None => 0,
/// };
/// txn.put("balance", (balance + 10).to_string()).append("audit", "+10;");
/// let outcome = txn.commit().await?;
/// println!("committed at tid {}", outcome.tid);
/// # Ok(()) }
/// ```
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction<'c> {
    client: &'c Client,
    read_set: Vec<ReadCheck>,
    writes: Vec<Write>,
}

/// A durable commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The commit's TID.
    pub tid: Tid,
    /// The transaction's id.
    pub txn_id: TxnId,
    /// One result per write, in order (e.g. each `incr`'s new value).
    pub results: Vec<WriteResult>,
    /// True when the server replayed an outcome recorded earlier.
    pub replayed: bool,
    /// False for a write sent under
    /// [`WritePolicy::Unconfirmed`](crate::WritePolicy::Unconfirmed):
    /// handed to the connection, its answer not awaited; `tid` is then
    /// zero and `results` empty.
    pub confirmed: bool,
}

impl CommitOutcome {
    /// The new value of the last `incr` of the transaction, if any.
    pub fn counter(&self) -> Option<i64> {
        self.results.iter().rev().find_map(|r| match r {
            WriteResult::Counter(n) => Some(*n),
            _ => None,
        })
    }
}

impl<'c> Transaction<'c> {
    pub(crate) fn new(client: &'c Client) -> Transaction<'c> {
        Transaction {
            client,
            read_set: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// Reads `key` from the server and adds it to the read set.
    pub async fn get(&mut self, key: impl Into<Bytes>) -> Result<Option<Bytes>, Error> {
        let key = key.into();
        let found = self.client.get_versioned(key.clone()).await?;
        let serial = found.as_ref().map_or(Tid::ZERO, |v| v.serial);
        match self.read_set.iter_mut().find(|r| r.key == key) {
            // Keep the first serial seen: the commit must fail if it changed.
            Some(_) => {}
            None => self.read_set.push(ReadCheck { key, serial }),
        }
        Ok(found.map(|v| v.value))
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> &mut Self {
        self.writes.push(Write::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Bytes>) -> &mut Self {
        self.writes.push(Write::Delete { key: key.into() });
        self
    }

    /// Adds `by` to the decimal integer at `key` (absent = 0).
    pub fn incr(&mut self, key: impl Into<Bytes>, by: i64) -> &mut Self {
        self.writes.push(Write::Incr {
            key: key.into(),
            by,
        });
        self
    }

    /// Appends `value` to the value at `key` (absent = empty).
    pub fn append(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> &mut Self {
        self.writes.push(Write::Append {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Commits exactly once: durable on success; not applied on a definite
    /// failure; retried with the same id through lost connections and
    /// server restarts, and resolved with the server before it ever
    /// reports [`Error::OutcomeUnknown`].
    pub async fn commit(self) -> Result<CommitOutcome, CommitError> {
        let prepared = self
            .client
            .prepare(self.read_set, self.writes)
            .await
            .map_err(|error| CommitError {
                error,
                prepared: None,
            })?;
        self.client.recommit(prepared).await
    }
}
