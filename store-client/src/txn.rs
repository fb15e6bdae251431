//! Transactions: the builder an application fills, and the ids that name them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use store_protocol::{content_digest, CommitRequest, ReadCheck, Tid, TxnId, Write, WriteResult};

use crate::client::Client;
use crate::error::Error;

/// Hands out this client's transaction ids and tracks which outcomes are
/// still unknown, so every commit can tell the server `acked_below`.
pub(crate) struct TxnIds {
    client_id: u128,
    next_seq: AtomicU64,
    unresolved: Mutex<BTreeSet<u64>>,
}

impl TxnIds {
    pub(crate) fn new(client_id: u128) -> TxnIds {
        TxnIds {
            client_id,
            next_seq: AtomicU64::new(1),
            unresolved: Mutex::new(BTreeSet::new()),
        }
    }

    pub(crate) fn client_id(&self) -> u128 {
        self.client_id
    }

    /// A fresh id, recorded as unresolved, and the current `acked_below`.
    pub(crate) fn allocate(&self) -> (TxnId, u64) {
        let mut unresolved = self.lock();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        unresolved.insert(seq);
        let acked_below = unresolved.first().copied().unwrap_or(seq);
        (
            TxnId {
                client_id: self.client_id,
                seq,
            },
            acked_below,
        )
    }

    /// Records that the outcome of `id` is known (committed or refused).
    pub(crate) fn resolved(&self, id: TxnId) {
        self.lock().remove(&id.seq);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // The set stays consistent even if a holder panicked.
        self.unresolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// Commits: durable on success, not applied on a definite failure.
    pub async fn commit(self) -> Result<CommitOutcome, Error> {
        let (txn_id, acked_below) = self.client.txn_ids().allocate();
        let request = CommitRequest {
            txn_id,
            acked_below,
            digest: content_digest(&self.read_set, &self.writes),
            read_set: self.read_set,
            writes: self.writes,
        };
        self.client.commit_request(request).await
    }
}
