//! The body of a log record: what one batch did to the tables, row by row,
//! so that replaying it needs no decision (limits, clocks and rules may
//! differ at the replay; the bytes do not).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use bytes::Bytes;
use redb::ReadableTable as _;
use serde::{Deserialize, Serialize};
use store_protocol::Tid;

use crate::error::StorageError;
use crate::invalidation::Invalidation;
use crate::outcomes::{self, Expiry, Outcomes, Watermarks};

/// One row changed by a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// `key` now holds `value`, written by the commit `tid`.
    Put {
        /// The key.
        key: Bytes,
        /// Its new serial.
        tid: Tid,
        /// Its new value.
        value: Bytes,
    },
    /// `suffix` was appended to `key`'s value (empty if absent) by the
    /// commit `tid`: appends to a growing value log what they add, not the
    /// whole value.
    Append {
        /// The key.
        key: Bytes,
        /// Its new serial.
        tid: Tid,
        /// The bytes appended.
        suffix: Bytes,
    },
    /// `key` was deleted by the commit `tid`.
    Delete {
        /// The key.
        key: Bytes,
        /// The commit that deleted it.
        tid: Tid,
    },
    /// The outcome row of a decided transaction, as stored.
    Outcome {
        /// The transaction's client.
        client_id: u128,
        /// Its sequence number.
        seq: u64,
        /// The encoded outcome.
        record: Bytes,
    },
    /// A client's outcomes below `below` were forgotten.
    Expire {
        /// The client.
        client_id: u128,
        /// Its new watermark.
        below: u64,
    },
}

/// The index's data table, open for writing.
pub(super) type DataTable<'txn> = redb::Table<'txn, &'static [u8], (u64, &'static [u8])>;

/// The index's tables a record changes, open in one write transaction.
pub(super) struct Tables<'txn> {
    pub data: DataTable<'txn>,
    pub outcomes: Outcomes<'txn>,
    pub watermarks: Watermarks<'txn>,
}

/// Encodes a batch's changes as a record body.
pub(super) fn encode(changes: &[Change]) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(changes)
        .map_err(|e| StorageError::corrupt(format!("encoding a log record: {e}")))
}

/// The commits among `changes`: each TID with the keys it wrote.
pub(super) fn commits(changes: &[Change]) -> Vec<Invalidation> {
    let mut commits: Vec<Invalidation> = Vec::new();
    for change in changes {
        let (key, tid) = match change {
            Change::Put { key, tid, .. }
            | Change::Append { key, tid, .. }
            | Change::Delete { key, tid } => (key, *tid),
            Change::Outcome { .. } | Change::Expire { .. } => continue,
        };
        match commits.last_mut() {
            Some(commit) if commit.tid == tid => commit.keys.push(key.clone()),
            _ => commits.push(Invalidation {
                tid,
                keys: vec![key.clone()],
            }),
        }
    }
    commits
}

/// Decodes the body of the log record `lsn`.
pub(super) fn decode(lsn: u64, body: &[u8]) -> Result<Vec<Change>, StorageError> {
    postcard::from_bytes(body).map_err(|e| {
        StorageError::corrupt(format!(
            "the log record {lsn} passed its checksum but does not decode: {e}"
        ))
    })
}

/// Applies changes read back from the log to the index: at start-up (the
/// records past the checkpoint) and at a checkpoint (the frozen layer).
/// Each data row is written once, at [`Applier::finish`]: appends to one
/// key are joined in memory instead of rewriting the whole row per append
/// (which made replaying a growing value quadratic: a list of 200 KiB
/// appended to 100,000 times took minutes).
#[derive(Default)]
pub(super) struct Applier {
    /// The latest state of each data row touched: `None` if deleted.
    rows: BTreeMap<Bytes, Option<(Tid, Vec<u8>)>>,
}

impl Applier {
    /// Applies one record's changes, in order.
    pub(super) fn apply(
        &mut self,
        tables: &mut Tables<'_>,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<(), StorageError> {
        for change in changes {
            match change {
                Change::Put { key, tid, value } => {
                    self.rows.insert(key, Some((tid, value.to_vec())));
                }
                Change::Append { key, tid, suffix } => {
                    let row = match self.rows.entry(key) {
                        Entry::Occupied(row) => row.into_mut(),
                        Entry::Vacant(row) => {
                            let stored = tables
                                .data
                                .get(&row.key()[..])?
                                .map(|stored| (Tid(stored.value().0), stored.value().1.to_vec()));
                            row.insert(stored)
                        }
                    };
                    match row {
                        Some((serial, value)) => {
                            *serial = tid;
                            value.extend_from_slice(&suffix);
                        }
                        None => *row = Some((tid, suffix.to_vec())),
                    }
                }
                Change::Delete { key, .. } => {
                    self.rows.insert(key, None);
                }
                Change::Outcome {
                    client_id,
                    seq,
                    record,
                } => {
                    tables.outcomes.insert((client_id, seq), &record[..])?;
                }
                Change::Expire { client_id, below } => {
                    outcomes::expire(
                        &mut tables.watermarks,
                        &mut tables.outcomes,
                        Expiry { client_id, below },
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Writes every data row touched, once each.
    pub(super) fn finish(self, tables: &mut Tables<'_>) -> Result<(), StorageError> {
        for (key, row) in self.rows {
            match row {
                Some((tid, value)) => {
                    tables.data.insert(&key[..], (tid.0, &value[..]))?;
                }
                None => {
                    tables.data.remove(&key[..])?;
                }
            }
        }
        Ok(())
    }
}
