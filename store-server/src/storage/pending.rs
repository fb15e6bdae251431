//! Rows durable in the log but not yet in the index: the newest layer of
//! every read, folded into redb in one transaction at a checkpoint. A
//! batch being decided stages its own rows in a [`Pending`] of its own on
//! top ([`Layers`]), so each operation sees the ones before it and nothing
//! is visible to readers before the log has it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use redb::ReadOnlyTable;
use store_protocol::Tid;

use super::redo::Change;
use crate::error::StorageError;

/// Rows changed since the index's last checkpoint, and the changes that
/// made them, in order.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// key → `(serial, value)`, or `None`: deleted.
    data: BTreeMap<Bytes, Option<(Tid, Bytes)>>,
    /// Outcome rows written (expired rows are never read: the watermark is
    /// checked first).
    outcomes: HashMap<(u128, u64), Bytes>,
    /// Watermarks raised.
    watermarks: HashMap<u128, u64>,
    /// Every change, in order: what a checkpoint folds into the index.
    changes: Vec<Change>,
    /// About the bytes of `changes` as encoded.
    bytes: usize,
}

impl Pending {
    /// Takes in one change; an append's value after it is `appended`.
    fn apply(&mut self, change: Change, appended: Option<Bytes>) {
        self.bytes += 48;
        match &change {
            Change::Append { key, tid, suffix } => {
                self.bytes += key.len() + suffix.len();
                let value = appended.unwrap_or_else(|| suffix.clone());
                self.data.insert(key.clone(), Some((*tid, value)));
            }
            Change::Put { key, tid, value } => {
                self.bytes += key.len() + value.len();
                self.data.insert(key.clone(), Some((*tid, value.clone())));
            }
            Change::Delete { key, .. } => {
                self.bytes += key.len();
                self.data.insert(key.clone(), None);
            }
            Change::Outcome {
                client_id,
                seq,
                record,
            } => {
                self.bytes += record.len();
                self.outcomes.insert((*client_id, *seq), record.clone());
            }
            Change::Expire { client_id, below } => {
                self.watermarks.insert(*client_id, *below);
            }
        }
        self.changes.push(change);
    }

    /// The outcome rows it holds, `(client_id, seq, row)`.
    pub fn outcome_rows(&self) -> impl Iterator<Item = (u128, u64, &Bytes)> {
        self.outcomes
            .iter()
            .map(|(&(client_id, seq), row)| (client_id, seq, row))
    }

    /// Whether it holds no change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Takes in a decided batch's rows (newer than these).
    pub fn merge(&mut self, staged: Pending) {
        self.data.extend(staged.data);
        self.outcomes.extend(staged.outcomes);
        self.watermarks.extend(staged.watermarks);
        self.changes.extend(staged.changes);
        self.bytes += staged.bytes;
    }

    /// About the bytes of the changes as encoded.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The changes, in order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// `Some(row)` if this layer knows `key` (`Some(None)`: deleted here).
    fn value(&self, key: &[u8]) -> Option<Option<(Tid, Bytes)>> {
        self.data.get(key).cloned()
    }
}

type DataTable = ReadOnlyTable<&'static [u8], (u64, &'static [u8])>;
type OutcomeTable = ReadOnlyTable<(u128, u64), &'static [u8]>;
type WatermarkTable = ReadOnlyTable<u128, u64>;

/// The index's tables, read from one snapshot.
pub(super) struct Index {
    pub data: DataTable,
    pub outcomes: OutcomeTable,
    pub watermarks: WatermarkTable,
}

/// The rows in memory: the newest, and an older set being folded into the
/// index (a checkpoint in progress) with where its history ends.
#[derive(Debug, Default)]
pub(super) struct Memory {
    pub active: Pending,
    pub frozen: Option<std::sync::Arc<Pending>>,
    pub frozen_end: super::HistoryEnd,
}

/// A view of the store, newest layer first: a batch's own rows (if
/// deciding), the rows in memory, the index.
pub(super) struct Layers<'a> {
    pub staged: Option<&'a mut Pending>,
    pub pending: &'a Pending,
    pub frozen: Option<&'a Pending>,
    pub index: &'a Index,
}

impl Layers<'_> {
    fn layers(&self) -> impl Iterator<Item = &Pending> {
        self.staged
            .as_deref()
            .into_iter()
            .chain([self.pending])
            .chain(self.frozen)
    }

    /// `key`'s serial and value, if it exists.
    pub fn value(&self, key: &[u8]) -> Result<Option<(Tid, Bytes)>, StorageError> {
        if let Some(row) = self.layers().find_map(|layer| layer.value(key)) {
            return Ok(row);
        }
        Ok(self.index.data.get(key)?.map(|guard| {
            let (serial, value) = guard.value();
            (Tid(serial), Bytes::copy_from_slice(value))
        }))
    }

    /// The watermark of `client_id`: its outcomes below it are forgotten.
    pub fn watermark(&self, client_id: u128) -> Result<u64, StorageError> {
        if let Some(&below) = self.layers().find_map(|l| l.watermarks.get(&client_id)) {
            return Ok(below);
        }
        Ok(self
            .index
            .watermarks
            .get(client_id)?
            .map_or(0, |v| v.value()))
    }

    /// The stored outcome row of `(client_id, seq)`.
    pub fn outcome(&self, id: (u128, u64)) -> Result<Option<Bytes>, StorageError> {
        if let Some(row) = self.layers().find_map(|l| l.outcomes.get(&id)) {
            return Ok(Some(row.clone()));
        }
        Ok(self
            .index
            .outcomes
            .get(id)?
            .map(|row| Bytes::copy_from_slice(row.value())))
    }

    /// About the bytes the batch has staged.
    pub fn staged_bytes(&self) -> usize {
        self.staged.as_deref().map_or(0, Pending::bytes)
    }

    /// Stages a change in the batch's own layer (an append is applied to
    /// the value the layers hold now).
    pub fn stage(&mut self, change: Change) -> Result<(), StorageError> {
        let appended = match &change {
            Change::Append { key, suffix, .. } => {
                let mut value = self
                    .value(key)?
                    .map(|(_, value)| value.to_vec())
                    .unwrap_or_default();
                value.extend_from_slice(suffix);
                Some(Bytes::from(value))
            }
            _ => None,
        };
        if let Some(staged) = self.staged.as_deref_mut() {
            staged.apply(change, appended);
        }
        Ok(())
    }

    /// The rows of `[start, end)` in key order, newer layers' rows over
    /// older ones', deleted ones left out; `each` returns `false` to stop.
    pub fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        mut each: impl FnMut(Bytes, Tid, Bytes) -> bool,
    ) -> Result<(), StorageError> {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut newer: Vec<_> = [Some(self.pending), self.frozen]
            .into_iter()
            .flatten()
            .map(|layer| {
                layer
                    .data
                    .range::<[u8], _>((Bound::Included(start), upper))
                    .peekable()
            })
            .collect();
        let mut older = self
            .index
            .data
            .range::<&[u8]>((Bound::Included(start), upper))?;
        let mut next_older = older.next().transpose()?;
        loop {
            let in_memory = newer
                .iter_mut()
                .filter_map(|layer| layer.peek().map(|(key, _)| (*key).clone()))
                .min();
            let older_key = next_older.as_ref().map(|(k, _)| k.value());
            let row = match (in_memory, older_key) {
                (None, None) => return Ok(()),
                (Some(key), head) if head.is_none_or(|head| key.as_ref() <= head) => {
                    // The newest layer holding the key has its row.
                    let mut row = None;
                    for layer in &mut newer {
                        if layer.peek().is_some_and(|(k, _)| **k == key) {
                            if let Some((_, r)) = layer.next() {
                                row.get_or_insert_with(|| r.clone());
                            }
                        }
                    }
                    if older_key.is_some_and(|head| head == key.as_ref()) {
                        next_older = older.next().transpose()?;
                    }
                    row.flatten().map(|(serial, value)| (key, serial, value))
                }
                _ => match next_older.take() {
                    Some((key, value)) => {
                        let (serial, value) = value.value();
                        let row = (
                            Bytes::copy_from_slice(key.value()),
                            Tid(serial),
                            Bytes::copy_from_slice(value),
                        );
                        next_older = older.next().transpose()?;
                        Some(row)
                    }
                    None => return Ok(()),
                },
            };
            if let Some((key, serial, value)) = row {
                if !each(key, serial, value) {
                    return Ok(());
                }
            }
        }
    }
}
