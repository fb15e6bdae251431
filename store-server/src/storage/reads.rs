//! Reads: one key, many keys, a range; each with the TID of the snapshot
//! it was read from.

use store_protocol::{Entry, ScanRequest, Tid, Versioned};

use super::Storage;
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
        self.with_layers(None, |layers| {
            // Read under the same view: the TID the values are current at.
            let read_tid = self.last_tid();
            let values = keys
                .iter()
                .map(|key| {
                    Ok(layers
                        .value(key.as_ref())?
                        .map(|(serial, value)| Versioned { value, serial }))
                })
                .collect::<Result<_, StorageError>>()?;
            Ok((values, read_tid))
        })
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
        self.with_layers(None, |layers| {
            let mut entries = Vec::new();
            let read_tid = self.last_tid();
            if scan.end.as_ref().is_some_and(|end| *end <= scan.start) {
                return Ok((entries, false, read_tid));
            }
            let limit = max_entries.min(scan.limit as usize);
            let mut bytes = 0usize;
            let mut more = false;
            layers.range(&scan.start, scan.end.as_deref(), |key, serial, value| {
                let size = key.len() + value.len();
                if entries.len() >= limit || (!entries.is_empty() && bytes + size > max_bytes) {
                    more = true;
                    return false;
                }
                bytes += size;
                entries.push(Entry { key, value, serial });
                true
            })?;
            Ok((entries, more, read_tid))
        })
    }
}
