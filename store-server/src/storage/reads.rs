//! Reads: one key, many keys, a range; each with the TID of the snapshot
//! it was read from.

use std::ops::Bound;

use bytes::Bytes;
use store_protocol::{Entry, ScanRequest, Tid, Versioned};

use super::{read_tid, Storage, DATA};
use crate::error::StorageError;

impl Storage {
    /// Reads one key, with the last TID of the snapshot it was read from.
    pub fn get(&self, key: &[u8]) -> Result<(Option<Versioned>, Tid), StorageError> {
        let (mut values, read_tid) = self.get_many(&[key])?;
        Ok((values.pop().flatten(), read_tid))
    }

    /// Reads several keys from one snapshot, with that snapshot's last TID.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<(Vec<Option<Versioned>>, Tid), StorageError> {
        let txn = self.db.begin_read()?;
        let read_tid = read_tid(&txn)?;
        let table = txn.open_table(DATA)?;
        let values = keys
            .iter()
            .map(|key| {
                Ok(table.get(key.as_ref())?.map(|guard| {
                    let (serial, value) = guard.value();
                    Versioned {
                        value: Bytes::copy_from_slice(value),
                        serial: Tid(serial),
                    }
                }))
            })
            .collect::<Result<_, StorageError>>()?;
        Ok((values, read_tid))
    }

    /// Reads a range in key order: at most `max_entries` entries and about
    /// `max_bytes` of keys and values; `more` tells whether entries were
    /// left; with the last TID of the snapshot read.
    pub fn scan(
        &self,
        scan: &ScanRequest,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Entry>, bool, Tid), StorageError> {
        let mut entries = Vec::new();
        let txn = self.db.begin_read()?;
        let read_tid = read_tid(&txn)?;
        if scan.end.as_ref().is_some_and(|end| *end <= scan.start) {
            return Ok((entries, false, read_tid));
        }
        let table = txn.open_table(DATA)?;
        let upper = match &scan.end {
            Some(end) => Bound::Excluded(&end[..]),
            None => Bound::Unbounded,
        };
        let limit = max_entries.min(scan.limit as usize);
        let mut bytes = 0usize;
        for item in table.range::<&[u8]>((Bound::Included(&scan.start[..]), upper))? {
            let (key, value) = item?;
            let (serial, value) = value.value();
            let size = key.value().len() + value.len();
            if entries.len() >= limit || (!entries.is_empty() && bytes + size > max_bytes) {
                return Ok((entries, true, read_tid));
            }
            bytes += size;
            entries.push(Entry {
                key: Bytes::copy_from_slice(key.value()),
                value: Bytes::copy_from_slice(value),
                serial: Tid(serial),
            });
        }
        Ok((entries, false, read_tid))
    }
}
