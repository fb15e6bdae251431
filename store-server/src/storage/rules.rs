//! What one commit does to the data: its read set checked, its writes
//! staged (one value per key, within the transaction's byte budget), then
//! written under its TID.

use std::collections::HashMap;

use bytes::Bytes;
use store_protocol::{CommitRequest, Limits, Tid, WireError, Write, WriteResult};

use super::pending::Layers;
use super::redo::Change;
use crate::error::StorageError;

/// Decides one commit against the current data, then stages its rows
/// under `tid`. Everything is checked before anything is staged.
pub(super) fn apply_commit(
    layers: &mut Layers<'_>,
    request: &CommitRequest,
    tid: Tid,
    limits: &Limits,
) -> Result<Result<Vec<WriteResult>, WireError>, StorageError> {
    for read in &request.read_set {
        let serial = layers
            .value(&read.key)?
            .map_or(Tid(0), |(serial, _)| serial);
        if serial != read.serial {
            return Ok(Err(WireError::Conflict {
                key: read.key.clone(),
            }));
        }
    }
    // The new state of every written key, built before touching the
    // table: one staged value per key, changed in place, so a transaction
    // holds at most its keys' final values (bounded by `max_txn_bytes`)
    // and takes time linear in its bytes.
    let mut staged: HashMap<&Bytes, Option<Vec<u8>>> = HashMap::new();
    // Per key, what was appended to its stored value, while only appends
    // were: the log then records the suffix, not the whole value.
    let mut suffixes: HashMap<&Bytes, Option<Vec<u8>>> = HashMap::new();
    let mut order: Vec<&Bytes> = Vec::new();
    let mut staged_bytes = 0usize;
    let mut results = Vec::with_capacity(request.writes.len());
    for write in &request.writes {
        let key = write.key();
        let slot = match staged.entry(key) {
            std::collections::hash_map::Entry::Occupied(slot) => slot.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                order.push(key);
                suffixes.insert(key, Some(Vec::new()));
                let stored = layers.value(key)?.map(|(_, value)| value.to_vec());
                staged_bytes += stored.as_ref().map_or(0, Vec::len);
                slot.insert(stored)
            }
        };
        let before = slot.as_ref().map_or(0, Vec::len);
        let suffix = suffixes.get_mut(key);
        match (write, suffix) {
            (Write::Append { value, .. }, Some(Some(suffix))) => suffix.extend_from_slice(value),
            (_, Some(suffix)) => *suffix = None,
            (_, None) => {}
        }
        let result = match write {
            Write::Put { value, .. } => {
                *slot = Some(value.to_vec());
                WriteResult::Stored
            }
            Write::Delete { .. } => WriteResult::Deleted {
                existed: slot.take().is_some(),
            },
            Write::Incr { by, .. } => match increment(key, slot.as_deref(), *by) {
                Ok(n) => {
                    *slot = Some(n.to_string().into_bytes());
                    WriteResult::Counter(n)
                }
                Err(e) => return Ok(Err(e)),
            },
            Write::Append { value, .. } => {
                // Checked before a byte is copied.
                if let Err(e) = limits.check_value_len(before.saturating_add(value.len())) {
                    return Ok(Err(e));
                }
                let joined = slot.get_or_insert_with(Vec::new);
                joined.extend_from_slice(value);
                WriteResult::Appended {
                    len: joined.len() as u64,
                }
            }
        };
        let after = slot.as_ref().map_or(0, Vec::len);
        staged_bytes = staged_bytes.saturating_sub(before).saturating_add(after);
        if let Err(e) = limits.check_txn_bytes(staged_bytes) {
            return Ok(Err(e));
        }
        results.push(result);
    }
    for key in order {
        let key_clone = key.clone();
        let change = match (staged.remove(key).flatten(), suffixes.remove(key).flatten()) {
            (Some(_), Some(suffix)) => Change::Append {
                key: key_clone,
                tid,
                suffix: Bytes::from(suffix),
            },
            (Some(value), None) => Change::Put {
                key: key_clone,
                tid,
                value: Bytes::from(value),
            },
            (None, _) => Change::Delete {
                key: key_clone,
                tid,
            },
        };
        layers.stage(change)?;
    }
    Ok(Ok(results))
}

/// `Incr` semantics: the value is a decimal i64, absent counts as 0.
fn increment(key: &Bytes, current: Option<&[u8]>, by: i64) -> Result<i64, WireError> {
    let base = match current {
        None => 0,
        Some(raw) => std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| WireError::NotAnInteger { key: key.clone() })?,
    };
    base.checked_add(by)
        .ok_or_else(|| WireError::Overflow { key: key.clone() })
}
