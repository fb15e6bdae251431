//! Exactly-once: the one place that decides whether a transaction was
//! already applied, and what to answer a copy of it.
//!
//! Every decided transaction leaves a row keyed by its [`TxnId`], written in
//! the same redb transaction as its data: `Committed` with the results it
//! returned, `Failed` with the error it was decided with, or `Abandoned`
//! (by `resolve`). A copy with the same digest gets the same answer,
//! marked replayed; a different digest is `TxnIdReused`. Rows are dropped
//! when the client's `acked_below` passes them, or after the retention
//! period; either way the client's watermark rises in the same
//! transaction, so a forgotten id is refused (`Expired`), never executed
//! again.

use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use store_protocol::{Committed, Tid, TxnId, WireError, WriteResult};

use crate::error::StorageError;

/// (client_id, seq) → postcard-encoded [`Recorded`].
pub(crate) const OUTCOMES: TableDefinition<'_, (u128, u64), &[u8]> =
    TableDefinition::new("outcomes");
/// client_id → watermark: every seq below it is forgotten.
pub(crate) const WATERMARKS: TableDefinition<'_, u128, u64> = TableDefinition::new("watermarks");

/// A decided transaction's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Recorded {
    /// The transaction's content digest (0 for `Abandoned`, which has none).
    pub digest: u128,
    /// Wall-clock milliseconds since the Unix epoch when it was decided.
    pub at_ms: u64,
    /// The outcome.
    pub result: RecordedResult,
}

/// What a transaction came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RecordedResult {
    /// Applied under `tid`, returning `results`.
    Committed {
        /// The commit's TID.
        tid: Tid,
        /// What each write returned.
        results: Vec<WriteResult>,
    },
    /// Decided and refused (conflict, not an integer, ...): nothing applied.
    Failed(WireError),
    /// Never applied and never will be: `resolve` found no outcome.
    Abandoned,
}

/// What is known of a transaction id before deciding it.
pub(crate) enum Prior {
    /// Below the client's watermark: forgotten, refuse it.
    Expired,
    /// Decided before.
    Recorded(Recorded),
    /// Never seen.
    Unknown,
}

/// A replicable expiry: forget every outcome of `client_id` below `below`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// The client.
    pub client_id: u128,
    /// Its new watermark.
    pub below: u64,
}

pub(crate) type Outcomes<'txn> = Table<'txn, (u128, u64), &'static [u8]>;
pub(crate) type Watermarks<'txn> = Table<'txn, u128, u64>;

fn watermark(watermarks: &Watermarks<'_>, client_id: u128) -> Result<u64, StorageError> {
    Ok(watermarks.get(client_id)?.map_or(0, |v| v.value()))
}

/// Applies one expiry: drops the rows below `below` and raises the
/// watermark, in the caller's transaction. Returns whether it changed
/// anything.
pub(crate) fn expire(
    watermarks: &mut Watermarks<'_>,
    outcomes: &mut Outcomes<'_>,
    expiry: Expiry,
) -> Result<bool, StorageError> {
    let current = watermark(watermarks, expiry.client_id)?;
    if expiry.below <= current {
        return Ok(false);
    }
    outcomes.retain_in(
        (expiry.client_id, current)..(expiry.client_id, expiry.below),
        |_, _| false,
    )?;
    watermarks.insert(expiry.client_id, expiry.below)?;
    Ok(true)
}

/// What is known of `txn_id`.
pub(crate) fn prior(
    watermarks: &Watermarks<'_>,
    outcomes: &Outcomes<'_>,
    txn_id: TxnId,
) -> Result<Prior, StorageError> {
    if txn_id.seq < watermark(watermarks, txn_id.client_id)? {
        return Ok(Prior::Expired);
    }
    let Some(row) = outcomes.get((txn_id.client_id, txn_id.seq))? else {
        return Ok(Prior::Unknown);
    };
    let recorded = postcard::from_bytes(row.value())
        .map_err(|e| StorageError::corrupt(format!("outcome of {txn_id} does not decode: {e}")))?;
    Ok(Prior::Recorded(recorded))
}

/// Records the outcome of `txn_id`; returns the row as stored.
pub(crate) fn record(
    outcomes: &mut Outcomes<'_>,
    txn_id: TxnId,
    recorded: &Recorded,
) -> Result<Vec<u8>, StorageError> {
    let bytes = postcard::to_allocvec(recorded)
        .map_err(|e| StorageError::corrupt(format!("encoding an outcome: {e}")))?;
    outcomes.insert((txn_id.client_id, txn_id.seq), &bytes[..])?;
    Ok(bytes)
}

/// The answer to a copy of a decided transaction. `digest` is the copy's
/// (`None` for `resolve`, which has no content to compare).
pub(crate) fn replay(recorded: &Recorded, digest: Option<u128>) -> Result<Committed, WireError> {
    if recorded.result == RecordedResult::Abandoned {
        return Err(WireError::Abandoned);
    }
    if digest.is_some_and(|d| d != recorded.digest) {
        return Err(WireError::TxnIdReused);
    }
    match &recorded.result {
        RecordedResult::Committed { tid, results } => Ok(Committed {
            tid: *tid,
            results: results.clone(),
            replayed: true,
        }),
        RecordedResult::Failed(error) => Err(error.clone()),
        RecordedResult::Abandoned => Err(WireError::Abandoned),
    }
}

/// The expiries that forget every outcome decided at or before `before_ms`: per
/// client, everything up to its newest such outcome.
pub(crate) fn expiries_before(
    outcomes: &impl ReadableTable<(u128, u64), &'static [u8]>,
    before_ms: u64,
) -> Result<Vec<Expiry>, StorageError> {
    let mut expiries: Vec<Expiry> = Vec::new();
    for row in outcomes.iter()? {
        let (key, value) = row?;
        let (client_id, seq) = key.value();
        let Ok(recorded) = postcard::from_bytes::<Recorded>(value.value()) else {
            continue;
        };
        if recorded.at_ms > before_ms {
            continue;
        }
        // Rows come in key order: one client's rows are adjacent.
        match expiries.last_mut() {
            Some(last) if last.client_id == client_id => last.below = seq.saturating_add(1),
            _ => expiries.push(Expiry {
                client_id,
                below: seq.saturating_add(1),
            }),
        }
    }
    Ok(expiries)
}
