//! Durable storage in redb: values with their serials, the last TID and the
//! server's identity.
//!
//! One redb write transaction holds a whole commit batch (see `commit`), and
//! redb's default durability fsyncs it before `commit()` returns. The seam
//! for crash tests is redb's own `StorageBackend`, which `Builder` accepts.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use redb::{Database, ReadableTable, Table, TableDefinition};
use store_protocol::{
    CommitRequest, Entry, Limits, ScanRequest, Tid, Versioned, WireError, Write, WriteResult,
};

use crate::error::StorageError;

/// key → (serial, value).
const DATA: TableDefinition<'_, &[u8], (u64, &[u8])> = TableDefinition::new("data");
/// name → number: `last_tid`, `server_id`.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const LAST_TID: &str = "last_tid";
const SERVER_ID: &str = "server_id";

/// The store's data on disk.
pub struct Storage {
    db: Database,
    server_id: u64,
    /// The last durable TID, readable without a transaction (pongs, status).
    last_tid: AtomicU64,
}

/// What one commit of a batch came to.
pub type CommitResult = Result<(Tid, Vec<WriteResult>), WireError>;

impl Storage {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let (server_id, last_tid) = {
            txn.open_table(DATA)?;
            let mut meta = txn.open_table(META)?;
            let existing = meta.get(SERVER_ID)?.map(|v| v.value());
            let server_id = match existing {
                Some(id) => id,
                None => {
                    let id = rand::random::<u64>();
                    meta.insert(SERVER_ID, id)?;
                    id
                }
            };
            let last_tid = meta.get(LAST_TID)?.map(|v| v.value()).unwrap_or(0);
            (server_id, last_tid)
        };
        txn.commit()?;
        Ok(Storage {
            db,
            server_id,
            last_tid: AtomicU64::new(last_tid),
        })
    }

    /// Random per data directory, made on first open.
    pub fn server_id(&self) -> u64 {
        self.server_id
    }

    /// The last durable TID.
    pub fn last_tid(&self) -> Tid {
        Tid(self.last_tid.load(Ordering::Acquire))
    }

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
        let read_tid = Tid(txn
            .open_table(META)?
            .get(LAST_TID)?
            .map(|v| v.value())
            .unwrap_or(0));
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
    /// `max_bytes` of keys and values; `more` tells whether entries were left.
    pub fn scan(
        &self,
        scan: &ScanRequest,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Entry>, bool), StorageError> {
        let mut entries = Vec::new();
        if scan.end.as_ref().is_some_and(|end| *end <= scan.start) {
            return Ok((entries, false));
        }
        let txn = self.db.begin_read()?;
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
                return Ok((entries, true));
            }
            bytes += size;
            entries.push(Entry {
                key: Bytes::copy_from_slice(key.value()),
                value: Bytes::copy_from_slice(value),
                serial: Tid(serial),
            });
        }
        Ok((entries, false))
    }

    /// Applies a batch of commits in one write transaction and one fsync.
    ///
    /// Commits are decided in order, each seeing the ones before it; each
    /// successful one gets the next TID. A commit that fails (conflict, bad
    /// increment) leaves no trace. `Err` means the transaction did not
    /// become durable, so none of the batch was applied.
    pub fn commit_batch<'a>(
        &self,
        batch: impl IntoIterator<Item = &'a CommitRequest>,
        limits: &Limits,
    ) -> Result<Vec<CommitResult>, StorageError> {
        let txn = self.db.begin_write()?;
        let mut results = Vec::new();
        let mut last = self.last_tid();
        {
            let mut data = txn.open_table(DATA)?;
            for request in batch {
                let result = apply_commit(&mut data, request, last.next(), limits)?;
                if result.is_ok() {
                    last = last.next();
                }
                results.push(result.map(|writes| (last, writes)));
            }
            if last != self.last_tid() {
                txn.open_table(META)?.insert(LAST_TID, last.0)?;
            }
        }
        if last == self.last_tid() {
            // Nothing succeeded: nothing to make durable.
            txn.abort()?;
        } else {
            txn.commit()?;
            self.last_tid.store(last.0, Ordering::Release);
        }
        Ok(results)
    }
}

type DataTable<'txn> = Table<'txn, &'static [u8], (u64, &'static [u8])>;

/// Decides one commit against the current data, then writes it under `tid`.
/// Everything is checked before anything is written.
fn apply_commit(
    data: &mut DataTable<'_>,
    request: &CommitRequest,
    tid: Tid,
    limits: &Limits,
) -> Result<Result<Vec<WriteResult>, WireError>, StorageError> {
    for read in &request.read_set {
        let serial = data.get(&read.key[..])?.map(|g| g.value().0).unwrap_or(0);
        if serial != read.serial.0 {
            return Ok(Err(WireError::Conflict {
                key: read.key.clone(),
            }));
        }
    }
    // The new state of every written key, built before touching the table.
    let mut staged: Vec<(Bytes, Option<Vec<u8>>)> = Vec::new();
    let mut results = Vec::with_capacity(request.writes.len());
    for write in &request.writes {
        let key = write.key();
        let current = match staged.iter().rev().find(|(k, _)| k == key) {
            Some((_, value)) => value.clone(),
            None => data.get(&key[..])?.map(|g| g.value().1.to_vec()),
        };
        let (new, result) = match write {
            Write::Put { value, .. } => (Some(value.to_vec()), WriteResult::Stored),
            Write::Delete { .. } => (
                None,
                WriteResult::Deleted {
                    existed: current.is_some(),
                },
            ),
            Write::Incr { by, .. } => match increment(key, current.as_deref(), *by) {
                Ok(n) => (Some(n.to_string().into_bytes()), WriteResult::Counter(n)),
                Err(e) => return Ok(Err(e)),
            },
            Write::Append { value, .. } => {
                let mut joined = current.unwrap_or_default();
                joined.extend_from_slice(value);
                if let Err(e) = limits.check_value(&joined) {
                    return Ok(Err(e));
                }
                let len = joined.len() as u64;
                (Some(joined), WriteResult::Appended { len })
            }
        };
        staged.push((key.clone(), new));
        results.push(result);
    }
    for (key, value) in &staged {
        match value {
            Some(value) => {
                data.insert(&key[..], (tid.0, &value[..]))?;
            }
            None => {
                data.remove(&key[..])?;
            }
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use store_protocol::{content_digest, LimitKind, ReadCheck, TxnId};

    fn commit(read_set: Vec<ReadCheck>, writes: Vec<Write>) -> CommitRequest {
        CommitRequest {
            txn_id: TxnId {
                client_id: 1,
                seq: 1,
            },
            acked_below: 1,
            digest: content_digest(&read_set, &writes),
            read_set,
            writes,
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn batch_commits_see_each_other_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("db")).unwrap();
        let limits = Limits::default();
        let first = commit(vec![], vec![Write::Incr { key: b("n"), by: 5 }]);
        let conflicting = commit(
            vec![ReadCheck {
                key: b("n"),
                serial: Tid::ZERO,
            }],
            vec![Write::Put {
                key: b("x"),
                value: b("lost"),
            }],
        );
        let bad_incr = commit(
            vec![],
            vec![
                Write::Put {
                    key: b("y"),
                    value: b("not applied"),
                },
                Write::Put {
                    key: b("s"),
                    value: b("text"),
                },
                Write::Incr { key: b("s"), by: 1 },
            ],
        );
        let second = commit(
            vec![ReadCheck {
                key: b("n"),
                serial: Tid(1),
            }],
            vec![
                Write::Incr { key: b("n"), by: 2 },
                Write::Incr { key: b("n"), by: 3 },
                Write::Append {
                    key: b("log"),
                    value: b("a"),
                },
            ],
        );
        let results = storage
            .commit_batch([&first, &conflicting, &bad_incr, &second], &limits)
            .unwrap();
        assert_eq!(results[0], Ok((Tid(1), vec![WriteResult::Counter(5)])));
        assert_eq!(results[1], Err(WireError::Conflict { key: b("n") }));
        assert_eq!(results[2], Err(WireError::NotAnInteger { key: b("s") }));
        assert_eq!(
            results[3],
            Ok((
                Tid(2),
                vec![
                    WriteResult::Counter(7),
                    WriteResult::Counter(10),
                    WriteResult::Appended { len: 1 }
                ]
            ))
        );
        assert_eq!(storage.get(b"n").unwrap().0.unwrap().value, b("10"));
        assert_eq!(storage.get(b"n").unwrap().0.unwrap().serial, Tid(2));
        assert!(storage.get(b"x").unwrap().0.is_none());
        assert!(storage.get(b"y").unwrap().0.is_none());
        assert_eq!(
            storage.get(b"y").unwrap().1,
            Tid(2),
            "reads carry their snapshot TID"
        );
        assert_eq!(storage.last_tid(), Tid(2));

        drop(storage);
        let reopened = Storage::open(&dir.path().join("db")).unwrap();
        assert_eq!(reopened.last_tid(), Tid(2));
        assert_eq!(reopened.get(b"log").unwrap().0.unwrap().value, b("a"));
    }

    #[test]
    fn scan_respects_range_limit_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("db")).unwrap();
        let writes = ["a", "b/1", "b/2", "b/3", "c"]
            .iter()
            .map(|k| Write::Put {
                key: b(k),
                value: b("vv"),
            })
            .collect();
        storage
            .commit_batch([&commit(vec![], writes)], &Limits::default())
            .unwrap();
        let keys = |(entries, more): (Vec<Entry>, bool)| {
            (
                entries
                    .iter()
                    .map(|e| String::from_utf8(e.key.to_vec()).unwrap())
                    .collect::<Vec<_>>(),
                more,
            )
        };
        let prefix = ScanRequest::prefix(b("b/"), 10);
        assert_eq!(
            keys(storage.scan(&prefix, 100, 1 << 20).unwrap()),
            (vec!["b/1".into(), "b/2".into(), "b/3".into()], false)
        );
        let limited = ScanRequest::prefix(b("b/"), 2);
        assert_eq!(
            keys(storage.scan(&limited, 100, 1 << 20).unwrap()),
            (vec!["b/1".into(), "b/2".into()], true)
        );
        assert_eq!(
            keys(
                storage
                    .scan(&ScanRequest::prefix(b(""), 100), 100, 8)
                    .unwrap()
            ),
            (vec!["a".into(), "b/1".into()], true)
        );
        let empty = ScanRequest {
            start: b("z"),
            end: Some(b("a")),
            limit: 10,
        };
        assert_eq!(keys(storage.scan(&empty, 100, 1 << 20).unwrap()).0.len(), 0);
    }

    #[test]
    fn append_past_the_value_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("db")).unwrap();
        let limits = Limits {
            max_value_bytes: 4,
            ..Limits::default()
        };
        let append = || {
            commit(
                vec![],
                vec![Write::Append {
                    key: b("k"),
                    value: b("abc"),
                }],
            )
        };
        let results = storage
            .commit_batch([&append(), &append()], &limits)
            .unwrap();
        assert!(results[0].is_ok());
        assert!(matches!(
            results[1],
            Err(WireError::TooLarge {
                what: LimitKind::Value,
                size: 6,
                limit: 4
            })
        ));
    }
}
