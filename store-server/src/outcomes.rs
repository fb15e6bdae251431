//! Exactly-once: the one place that decides whether a transaction was
//! already applied, and what to answer a copy of it.
//!
//! Every decided transaction leaves a row keyed by its [`TxnId`], written in
//! the same redb transaction as its data: `Committed` with the results it
//! returned, `Failed` with the error it was decided with, or `Abandoned`
//! (by `resolve`). [`verdict`] is the one function that says what a copy
//! gets: the same answer, marked replayed, for the same digest;
//! `TxnIdReused` for a different one; a wait for a copy in flight. Rows are dropped
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

/// What is known of a transaction id when a copy of it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Known {
    /// Below the client's watermark: forgotten.
    Expired,
    /// A copy is being decided right now; `digest` is its content's
    /// (`None`: it is a `resolve`, which has no content).
    InFlight {
        /// The first copy's digest.
        digest: Option<u128>,
    },
    /// Decided before.
    Recorded(Recorded),
    /// Never seen.
    Unknown,
}

/// What to do with an arriving copy of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Decide it now: apply the commit, or record `Abandoned` for a
    /// `resolve`.
    Decide,
    /// Wait for the copy in flight and answer its outcome as a replay.
    Wait,
    /// Answer this, deciding nothing.
    Answer(Result<Committed, WireError>),
}

/// Exactly-once, in one place: *was this transaction already applied, is
/// it in flight, is it expired, is it a reuse?* `digest` is the arriving
/// copy's content digest, `None` for a `resolve` (which matches any
/// content). Only two commits of different content under one id are a
/// reused id; an abandoned id stays abandoned whatever arrives.
pub(crate) fn verdict(known: &Known, digest: Option<u128>) -> Verdict {
    match known {
        Known::Unknown => Verdict::Decide,
        Known::Expired => Verdict::Answer(Err(WireError::Expired)),
        Known::InFlight { digest: first } => match (first, digest) {
            (Some(first), Some(copy)) if *first != copy => {
                Verdict::Answer(Err(WireError::TxnIdReused))
            }
            _ => Verdict::Wait,
        },
        Known::Recorded(recorded) => Verdict::Answer(match &recorded.result {
            RecordedResult::Abandoned => Err(WireError::Abandoned),
            _ if digest.is_some_and(|d| d != recorded.digest) => Err(WireError::TxnIdReused),
            RecordedResult::Committed { tid, results } => Ok(Committed {
                tid: *tid,
                results: results.clone(),
                replayed: true,
            }),
            RecordedResult::Failed(error) => Err(error.clone()),
        }),
    }
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

/// Applies one expiry to the index: drops the rows below `below` and
/// raises the watermark, in the caller's transaction.
pub(crate) fn expire(
    watermarks: &mut Watermarks<'_>,
    outcomes: &mut Outcomes<'_>,
    expiry: Expiry,
) -> Result<(), StorageError> {
    let current = watermark(watermarks, expiry.client_id)?;
    if expiry.below <= current {
        return Ok(());
    }
    outcomes.retain_in(
        (expiry.client_id, current)..(expiry.client_id, expiry.below),
        |_, _| false,
    )?;
    watermarks.insert(expiry.client_id, expiry.below)?;
    Ok(())
}

/// What a stored outcome row says of `txn_id`.
pub(crate) fn decode(txn_id: TxnId, row: &[u8]) -> Result<Recorded, StorageError> {
    postcard::from_bytes(row)
        .map_err(|e| StorageError::corrupt(format!("outcome of {txn_id} does not decode: {e}")))
}

/// An outcome as its row is stored.
pub(crate) fn encode(recorded: &Recorded) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(recorded)
        .map_err(|e| StorageError::corrupt(format!("encoding an outcome: {e}")))
}

/// The expiries that forget every outcome decided at or before
/// `before_ms`: per client, everything up to its newest such outcome.
/// `rows` are outcome rows as stored, `(client_id, seq, row)`, in any
/// order.
pub(crate) fn expiries_before<'a>(
    rows: impl IntoIterator<Item = (u128, u64, &'a [u8])>,
    before_ms: u64,
) -> Vec<Expiry> {
    let mut below: std::collections::BTreeMap<u128, u64> = std::collections::BTreeMap::new();
    for (client_id, seq, row) in rows {
        let Ok(recorded) = postcard::from_bytes::<Recorded>(row) else {
            continue;
        };
        if recorded.at_ms <= before_ms {
            let watermark = below.entry(client_id).or_default();
            *watermark = (*watermark).max(seq.saturating_add(1));
        }
    }
    below
        .into_iter()
        .map(|(client_id, below)| Expiry { client_id, below })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(digest: u128, result: RecordedResult) -> Known {
        Known::Recorded(Recorded {
            digest,
            at_ms: 0,
            result,
        })
    }

    #[test]
    fn the_exactly_once_table() {
        let committed = RecordedResult::Committed {
            tid: Tid(9),
            results: vec![WriteResult::Stored],
        };
        let replayed = Ok(Committed {
            tid: Tid(9),
            results: vec![WriteResult::Stored],
            replayed: true,
        });
        let conflict = WireError::Conflict {
            key: bytes::Bytes::from_static(b"k"),
        };
        let answer = Verdict::Answer;
        // (what is known, the arriving copy's digest (None: resolve), verdict)
        let table = [
            (Known::Unknown, Some(1), Verdict::Decide),
            (Known::Unknown, None, Verdict::Decide),
            (Known::Expired, Some(1), answer(Err(WireError::Expired))),
            (Known::Expired, None, answer(Err(WireError::Expired))),
            // In flight: a copy waits for the first's outcome...
            (Known::InFlight { digest: Some(1) }, Some(1), Verdict::Wait),
            // ...unless both are commits of different content.
            (
                Known::InFlight { digest: Some(1) },
                Some(2),
                answer(Err(WireError::TxnIdReused)),
            ),
            // A resolve in flight: a real copy waits for what it decides.
            (Known::InFlight { digest: None }, Some(2), Verdict::Wait),
            (Known::InFlight { digest: None }, Some(0), Verdict::Wait),
            (Known::InFlight { digest: Some(1) }, None, Verdict::Wait),
            (Known::InFlight { digest: None }, None, Verdict::Wait),
            // Decided: the same answer, marked replayed.
            (
                recorded(1, committed.clone()),
                Some(1),
                answer(replayed.clone()),
            ),
            (recorded(1, committed.clone()), None, answer(replayed)),
            (
                recorded(1, committed),
                Some(2),
                answer(Err(WireError::TxnIdReused)),
            ),
            (
                recorded(1, RecordedResult::Failed(conflict.clone())),
                Some(1),
                answer(Err(conflict.clone())),
            ),
            (
                recorded(1, RecordedResult::Failed(conflict.clone())),
                None,
                answer(Err(conflict)),
            ),
            // Abandoned stays abandoned, whatever content arrives.
            (
                recorded(0, RecordedResult::Abandoned),
                Some(5),
                answer(Err(WireError::Abandoned)),
            ),
            (
                recorded(0, RecordedResult::Abandoned),
                None,
                answer(Err(WireError::Abandoned)),
            ),
        ];
        for (known, digest, expected) in table {
            assert_eq!(verdict(&known, digest), expected, "{known:?} {digest:?}");
        }
    }
}
