//! Storage against real redb files in temporary directories.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use store_protocol::{
    content_digest, CommitRequest, Entry, Epoch, LimitKind, Limits, ReadCheck, ScanRequest, Tid,
    TxnId, WireError, Write, WriteResult,
};

use super::*;
use crate::outcomes::Expiry;
use store_protocol::peer::SnapshotRow;

use crate::error::StorageError;

/// A transaction of client 1 with the next seq.
fn commit(read_set: Vec<ReadCheck>, writes: Vec<Write>) -> CommitRequest {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    CommitRequest {
        txn_id: TxnId { client_id: 1, seq },
        acked_below: 1,
        digest: content_digest(&read_set, &writes),
        read_set,
        writes,
    }
}

/// Commits `requests` in one batch; new commits as (tid, results).
fn commit_batch(
    storage: &Storage,
    requests: &[&CommitRequest],
    limits: &Limits,
) -> Vec<Result<(Tid, Vec<WriteResult>), WireError>> {
    let ops: Vec<Op<'_>> = requests.iter().map(|r| Op::Commit(r)).collect();
    storage
        .apply_batch(&ops, limits, Stamp::now(Epoch(1)), |_, _| {})
        .unwrap()
        .results
        .into_iter()
        .map(|r| {
            r.map(|c| {
                assert!(!c.replayed);
                (c.tid, c.results)
            })
        })
        .collect()
}

/// A store in its own directory `dir` (index and log), with small log
/// segments.
fn open_in(dir: &std::path::Path) -> Result<Storage, StorageError> {
    std::fs::create_dir_all(dir).unwrap();
    let config = WalConfig {
        segment_bytes: 64 << 10,
        ..WalConfig::default()
    };
    Storage::open(&dir.join("store.redb"), config)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn batch_commits_see_each_other_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
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
    let results = commit_batch(
        &storage,
        &[&first, &conflicting, &bad_incr, &second],
        &limits,
    );
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
    let reopened = open_in(&dir.path().join("db")).unwrap();
    assert_eq!(reopened.last_tid(), Tid(2));
    assert_eq!(reopened.get(b"log").unwrap().0.unwrap().value, b("a"));
}

#[test]
fn scan_respects_range_limit_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
    let writes = ["a", "b/1", "b/2", "b/3", "c"]
        .iter()
        .map(|k| Write::Put {
            key: b(k),
            value: b("vv"),
        })
        .collect();
    commit_batch(&storage, &[&commit(vec![], writes)], &Limits::default());
    let keys = |(entries, more, _): (Vec<Entry>, bool, Tid)| {
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
fn a_batch_of_an_older_epoch_or_one_refused_before_commit_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
    let limits = Limits::default();
    let put = commit(
        vec![],
        vec![Write::Put {
            key: b("k"),
            value: b("v"),
        }],
    );
    storage.raise_epoch(Epoch(3)).unwrap();
    let stale = Stamp {
        now_ms: 0,
        epoch: Epoch(2),
    };
    let fenced = storage.apply_batch(&[Op::Commit(&put)], &limits, stale, |_, _| {});
    assert!(matches!(
        fenced,
        Err(StorageError::Fenced {
            batch: 2,
            accepted: 3
        })
    ));
    let current = Stamp {
        now_ms: 0,
        epoch: Epoch(3),
    };
    assert_eq!(storage.get(b"k").unwrap().0, None);
    assert_eq!(storage.history_end().lsn, 0);
    // The same batch in the current epoch lands, under the next LSN.
    let applied = storage
        .apply_batch(&[Op::Commit(&put)], &limits, current, |_, _| {})
        .unwrap();
    assert_eq!(applied.lsn, Some(1));
    assert_eq!(storage.history_end().batch_epoch, Epoch(3));
    // Reopened, the fence and the history end are still there.
    drop(storage);
    let storage = open_in(&dir.path().join("db")).unwrap();
    assert_eq!(storage.epoch(), Epoch(3));
    assert_eq!(storage.history_end().lsn, 1);
}

#[test]
fn a_snapshot_replaces_another_store_whole() {
    let dir = tempfile::tempdir().unwrap();
    let source = open_in(&dir.path().join("source")).unwrap();
    let target = open_in(&dir.path().join("target")).unwrap();
    let limits = Limits::default();
    let stamp = Stamp::now(Epoch(1));
    let a = commit(
        vec![],
        vec![Write::Put {
            key: b("a"),
            value: b("1"),
        }],
    );
    let stray = commit(
        vec![],
        vec![Write::Put {
            key: b("stray"),
            value: b("x"),
        }],
    );
    source
        .apply_batch(&[Op::Commit(&a)], &limits, stamp, |_, _| {})
        .unwrap();
    target
        .apply_batch(&[Op::Commit(&stray)], &limits, stamp, |_, _| {})
        .unwrap();
    let mut end = None;
    let mut chunks = Vec::new();
    source
        .snapshot(
            16,
            |e| {
                end = Some(e);
                true
            },
            |rows| {
                chunks.push(rows);
                true
            },
        )
        .unwrap();
    let end = end.unwrap();
    let mut pieces = chunks
        .into_iter()
        .map(SnapshotPiece::Rows)
        .chain([SnapshotPiece::End]);
    assert!(target
        .install_snapshot(end, || pieces.next().unwrap_or(SnapshotPiece::Cut))
        .unwrap());
    assert_eq!(target.history_end(), end);
    assert_eq!(target.get(b"stray").unwrap().0, None);
    assert_eq!(target.get(b"a").unwrap().0.unwrap().value, b("1"));
    // The outcome came along: a copy of `a` replays.
    let replay = target
        .apply_batch(&[Op::Commit(&a)], &limits, stamp, |_, _| {})
        .unwrap();
    assert!(replay.results[0].as_ref().unwrap().replayed);
    // Reopened, it knows nothing of the commits before the snapshot: a
    // cache older than its end is dropped, never confirmed.
    drop(target);
    let target = open_in(&dir.path().join("target")).unwrap();
    assert_eq!(target.take_recent_changes().horizon, end.last_tid);
    // A snapshot cut short after its first chunk leaves an empty
    // history (never a mix of two), and so does a restart after it.
    let mut cut = [
        SnapshotPiece::Rows(vec![SnapshotRow::Data {
            key: b("half"),
            serial: Tid(1),
            value: b("x"),
        }]),
        SnapshotPiece::Cut,
    ]
    .into_iter();
    assert!(!target
        .install_snapshot(end, || cut.next().unwrap_or(SnapshotPiece::Cut))
        .unwrap());
    assert_eq!(target.history_end(), HistoryEnd::default());
    assert_eq!(target.get(b"a").unwrap().0, None);
    assert_eq!(target.get(b"half").unwrap().0, None);
    drop(target);
    let target = open_in(&dir.path().join("target")).unwrap();
    assert_eq!(target.history_end(), HistoryEnd::default());
    assert_eq!(target.get(b"half").unwrap().0, None);
    assert_eq!(target.get(b"a").unwrap().0, None);
}

#[test]
fn append_past_the_value_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
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
    let results = commit_batch(&storage, &[&append(), &append()], &limits);
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

#[test]
fn a_transaction_holds_one_staged_value_per_key_within_its_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
    let limits = Limits {
        max_value_bytes: 100,
        max_txn_bytes: 250,
        ..Limits::default()
    };
    let big = "x".repeat(99);
    for key in ["a", "b", "c"] {
        let setup = commit(vec![], vec![put(key, &big)]);
        assert!(commit_batch(&storage, &[&setup], &limits)[0].is_ok());
    }
    // Many appends to one key: one value, appended in place.
    let mut appends = vec![put("n", "")];
    appends.extend((0..5_000).map(|_| Write::Append {
        key: b("n"),
        value: b(""),
    }));
    appends.push(Write::Append {
        key: b("n"),
        value: b("tail"),
    });
    let many = commit(vec![], appends);
    let results = commit_batch(&storage, &[&many], &limits);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_eq!(&storage.get(b"n").unwrap().0.unwrap().value[..], b"tail");
    // One byte onto each of three 99-byte values makes 300 bytes of new
    // values: over the transaction's 250, refused, nothing written.
    let spread = commit(
        vec![],
        ["a", "b", "c"]
            .iter()
            .map(|k| Write::Append {
                key: b(k),
                value: b("y"),
            })
            .collect(),
    );
    let results = commit_batch(&storage, &[&spread], &limits);
    assert!(
        matches!(
            results[0],
            Err(WireError::TooLarge {
                what: LimitKind::TxnBytes,
                limit: 250,
                ..
            })
        ),
        "{:?}",
        results[0]
    );
    for key in ["a", "b", "c"] {
        assert_eq!(
            storage.get(key.as_bytes()).unwrap().0.unwrap().value.len(),
            99
        );
    }
}

fn put(key: &str, value: &str) -> Write {
    Write::Put {
        key: b(key),
        value: b(value),
    }
}

fn one(storage: &Storage, op: Op<'_>) -> OpResult {
    storage
        .apply_batch(&[op], &Limits::default(), Stamp::now(Epoch(1)), |_, _| {})
        .unwrap()
        .results
        .remove(0)
}

#[test]
fn a_copy_of_a_decided_transaction_replays_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
    let incr = commit(vec![], vec![Write::Incr { key: b("n"), by: 1 }]);
    let first = one(&storage, Op::Commit(&incr)).unwrap();
    let again = one(&storage, Op::Commit(&incr)).unwrap();
    assert_eq!(
        (again.tid, &again.results, again.replayed),
        (first.tid, &first.results, true)
    );
    assert_eq!(
        storage.get(b"n").unwrap().0.unwrap().value,
        b("1"),
        "applied once"
    );
    assert_eq!(storage.last_tid(), first.tid, "a replay takes no TID");

    // Same id, other content: refused, nothing applied.
    let mut reused = commit(vec![], vec![put("x", "y")]);
    reused.txn_id = incr.txn_id;
    assert_eq!(
        one(&storage, Op::Commit(&reused)),
        Err(WireError::TxnIdReused)
    );
    assert!(storage.get(b"x").unwrap().0.is_none());

    // A decided failure replays as the same failure, even if it would
    // succeed now.
    let bad = commit(
        vec![ReadCheck {
            key: b("n"),
            serial: Tid::ZERO,
        }],
        vec![put("n", "9")],
    );
    assert!(matches!(
        one(&storage, Op::Commit(&bad)),
        Err(WireError::Conflict { .. })
    ));
    assert!(matches!(
        one(&storage, Op::Commit(&bad)),
        Err(WireError::Conflict { .. })
    ));

    // Outcomes survive a restart.
    drop(storage);
    let storage = open_in(&dir.path().join("db")).unwrap();
    assert!(one(&storage, Op::Commit(&incr)).unwrap().replayed);
}

#[test]
fn resolve_records_abandoned_and_no_late_copy_commits() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
    let late = commit(vec![], vec![put("k", "late")]);
    assert_eq!(
        one(&storage, Op::Resolve(late.txn_id)),
        Err(WireError::Abandoned)
    );
    assert_eq!(one(&storage, Op::Commit(&late)), Err(WireError::Abandoned));
    assert!(storage.get(b"k").unwrap().0.is_none());
    let done = commit(vec![], vec![put("k", "v")]);
    let committed = one(&storage, Op::Commit(&done)).unwrap();
    let resolved = one(&storage, Op::Resolve(done.txn_id)).unwrap();
    assert_eq!((resolved.tid, resolved.replayed), (committed.tid, true));
}

#[test]
fn acknowledged_and_old_outcomes_expire_and_are_never_reexecuted() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
    let mut first = commit(
        vec![],
        vec![Write::Append {
            key: b("log"),
            value: b("a"),
        }],
    );
    first.txn_id = TxnId {
        client_id: 9,
        seq: 1,
    };
    one(&storage, Op::Commit(&first)).unwrap();
    // The client's next transaction acknowledges the first.
    let mut second = commit(
        vec![],
        vec![Write::Append {
            key: b("log"),
            value: b("b"),
        }],
    );
    second.txn_id = TxnId {
        client_id: 9,
        seq: 2,
    };
    second.acked_below = 2;
    one(&storage, Op::Commit(&second)).unwrap();
    assert_eq!(one(&storage, Op::Commit(&first)), Err(WireError::Expired));
    assert_eq!(
        one(&storage, Op::Resolve(first.txn_id)),
        Err(WireError::Expired)
    );
    assert_eq!(storage.get(b"log").unwrap().0.unwrap().value, b("ab"));

    // Retention: everything decided before now is forgotten.
    assert!(one(&storage, Op::Commit(&second)).unwrap().replayed);
    let expiries = storage.expiries_due(std::time::Duration::ZERO).unwrap();
    let expiry = Expiry {
        client_id: 9,
        below: 3,
    };
    assert_eq!(expiries, vec![expiry]);
    one(&storage, Op::Expire(expiry)).unwrap();
    assert_eq!(one(&storage, Op::Commit(&second)), Err(WireError::Expired));
    assert_eq!(storage.get(b"log").unwrap().0.unwrap().value, b("ab"));
    assert!(storage
        .expiries_due(std::time::Duration::ZERO)
        .unwrap()
        .is_empty());
}

#[test]
fn a_backup_applies_the_primarys_log_records_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let primary = open_in(&dir.path().join("primary")).unwrap();
    let backup = open_in(&dir.path().join("backup")).unwrap();
    let limits = Limits::default();
    let first = commit(
        vec![],
        vec![Write::Put {
            key: b("a"),
            value: b("1"),
        }],
    );
    let second = commit(
        vec![],
        vec![
            Write::Incr { key: b("n"), by: 5 },
            Write::Delete { key: b("a") },
        ],
    );
    commit_batch(&primary, &[&first], &limits);
    commit_batch(&primary, &[&second], &limits);
    let records = primary.log_from(1, usize::MAX).unwrap();
    let as_sent = |records: &[crate::wal::Record]| -> Vec<(crate::wal::RecordHeader, Vec<u8>)> {
        records.iter().map(|r| (r.header, r.body.clone())).collect()
    };
    let sent = as_sent(&records);
    let borrowed: Vec<_> = sent.iter().map(|(h, b)| (*h, &b[..])).collect();
    // Out of order: refused, nothing written.
    let skipped = backup.apply_records(&borrowed[1..], Epoch(1));
    assert!(
        matches!(skipped, Err(StorageError::Diverged(_))),
        "{skipped:?}"
    );
    assert_eq!(backup.history_end().lsn, 0);
    let commits = backup.apply_records(&borrowed, Epoch(1)).unwrap();
    assert_eq!(
        commits
            .iter()
            .map(|c| (c.tid.0, c.keys.len()))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2)]
    );
    assert_eq!(backup.history_end(), primary.history_end());
    assert_eq!(backup.get(b"a").unwrap().0, None);
    assert_eq!(backup.get(b"n").unwrap().0.unwrap().value, b("5"));
    // The outcomes came along: a resend is a replay on the backup too.
    let replay = backup
        .apply_batch(
            &[Op::Commit(&second)],
            &limits,
            Stamp::now(Epoch(1)),
            |_, _| {},
        )
        .unwrap();
    assert!(replay.results[0].as_ref().unwrap().replayed);
    // A record newer than its stream is not history the primary holds.
    let third = commit(
        vec![],
        vec![Write::Put {
            key: b("c"),
            value: b("3"),
        }],
    );
    primary
        .apply_batch(
            &[Op::Commit(&third)],
            &limits,
            Stamp::now(Epoch(2)),
            |_, _| {},
        )
        .unwrap();
    let late = as_sent(&primary.log_from(3, usize::MAX).unwrap());
    let late: Vec<_> = late.iter().map(|(h, b)| (*h, &b[..])).collect();
    assert!(matches!(
        backup.apply_records(&late, Epoch(1)),
        Err(StorageError::Diverged(_))
    ));
    // A deposed primary's stream is fenced, whatever its records' epochs.
    backup.raise_epoch(Epoch(4)).unwrap();
    assert!(matches!(
        backup.apply_records(&late, Epoch(3)),
        Err(StorageError::Fenced {
            batch: 3,
            accepted: 4
        })
    ));
    // The current primary's stream carries older epochs' history.
    backup.apply_records(&late, Epoch(4)).unwrap();
    // Reopened, the backup's own log holds what it applied.
    drop(backup);
    let backup = open_in(&dir.path().join("backup")).unwrap();
    assert_eq!(backup.history_end().lsn, 3);
    assert_eq!(backup.get(b"c").unwrap().0.unwrap().value, b("3"));
    assert_eq!(backup.get(b"n").unwrap().0.unwrap().value, b("5"));
}

#[test]
fn a_store_found_half_installed_is_emptied_at_open() {
    let disk = crate::wal::sim::SimDisk::new();
    let open = || {
        let index = disk.backend("store.redb");
        let exists = redb::StorageBackend::len(&index).is_ok_and(|len| len > 0);
        let db = redb::Builder::new().create_with_backend(index).unwrap();
        let path = std::path::Path::new("sim/store.redb");
        Storage::assemble(
            db,
            exists,
            path,
            Arc::new(disk.clone()),
            WalConfig::default(),
        )
    };
    let storage = open().unwrap();
    let limits = Limits::default();
    let old = commit(
        vec![],
        vec![Write::Put {
            key: b("old"),
            value: b("1"),
        }],
    );
    commit_batch(&storage, &[&old], &limits);
    let end = HistoryEnd {
        lsn: 9,
        batch_epoch: Epoch(2),
        last_tid: Tid(9),
    };
    let mut calls = 0;
    let installed = storage.install_snapshot(end, || {
        calls += 1;
        if calls == 1 {
            SnapshotPiece::Rows(vec![SnapshotRow::Data {
                key: b("half"),
                serial: Tid(3),
                value: b("x"),
            }])
        } else {
            // The power fails before the snapshot's end lands.
            disk.power_cut(7);
            SnapshotPiece::End
        }
    });
    assert!(installed.is_err());
    drop(storage);
    let storage = open().unwrap();
    assert_eq!(storage.history_end(), HistoryEnd::default());
    assert_eq!(storage.get(b"half").unwrap().0, None);
    assert_eq!(storage.get(b"old").unwrap().0, None);
}

#[test]
fn rows_folded_in_the_background_stay_readable_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let config = WalConfig {
        segment_bytes: 64 << 10,
        checkpoint_bytes: 16 << 10,
        ..WalConfig::default()
    };
    let storage = Arc::new(Storage::open(&path, config).unwrap());
    let folding = storage.clone();
    let checkpointer = std::thread::spawn(move || folding.run_checkpointer());
    let limits = Limits::default();
    let key = |i: u32| b(&format!("k{i:04}"));
    for i in 0..600u32 {
        // Overwrite older keys too, so layers disagree about them.
        let writes = vec![
            Write::Put {
                key: key(i),
                value: Bytes::from(vec![i as u8; 1000]),
            },
            Write::Put {
                key: key(i / 2),
                value: Bytes::from(i.to_string()),
            },
        ];
        commit_batch(&storage, &[&commit(vec![], writes)], &limits);
        assert_eq!(
            storage.get(&key(i / 2)).unwrap().0.unwrap().value,
            Bytes::from(i.to_string())
        );
        if i % 50 == 49 {
            let scan = ScanRequest {
                start: b("k"),
                end: None,
                limit: 10_000,
            };
            let (entries, more, _) = storage.scan(&scan, 10_000, usize::MAX).unwrap();
            assert!(!more);
            assert_eq!(entries.len(), i as usize + 1, "after {i}");
            assert!(entries.windows(2).all(|w| w[0].key < w[1].key));
        }
    }
    storage.stop_checkpointer();
    checkpointer.join().unwrap();
    drop(storage);
    let storage = Storage::open(&path, config).unwrap();
    assert_eq!(storage.get(&key(599)).unwrap().0.unwrap().value.len(), 1000);
    assert_eq!(storage.get(&key(299)).unwrap().0.unwrap().value, b("599"));
}

#[test]
fn a_feed_starts_at_the_first_record_past_its_tid_and_reads_what_each_commit_did() {
    use store_protocol::feed::ChangeOp;
    let dir = tempfile::tempdir().unwrap();
    let storage = open_in(&dir.path().join("db")).unwrap();
    let limits = Limits::default();
    let put = |key: &str, value: &str| {
        commit(
            vec![],
            vec![Write::Put {
                key: b(key),
                value: b(value),
            }],
        )
    };
    // Three records: TIDs 1-3 in one batch, 4 alone, 5-6 together.
    let (a, b1, c) = (put("a", "1"), put("b", "2"), put("c", "3"));
    commit_batch(&storage, &[&a, &b1, &c], &limits);
    let d = commit(
        vec![],
        vec![
            Write::Append {
                key: b("a"),
                value: b("+"),
            },
            Write::Delete { key: b("b") },
        ],
    );
    commit_batch(&storage, &[&d], &limits);
    let (e, f) = (put("e", "5"), put("f", "6"));
    commit_batch(&storage, &[&e, &f], &limits);
    assert_eq!(storage.last_tid(), Tid(6));

    let start = |from| match storage.history_start(Tid(from)).unwrap() {
        Start::At(lsn) => lsn,
        other => panic!("from {from}: {other:?}"),
    };
    let tids_from = |lsn| -> Vec<u64> {
        let records = storage.history_from(lsn, usize::MAX).unwrap().unwrap();
        records
            .iter()
            .flat_map(|r| r.changes.iter().map(|c| c.tid.0))
            .collect()
    };
    // Bisection lands on the record holding the first TID past `from`
    // (the feed drops the TIDs at or before it inside that record).
    assert_eq!(tids_from(start(0)), [1, 2, 3, 4, 4, 5, 6]);
    assert_eq!(tids_from(start(2)), [1, 2, 3, 4, 4, 5, 6]);
    assert_eq!(tids_from(start(3)), [4, 4, 5, 6]);
    assert_eq!(tids_from(start(4)), [5, 6]);
    assert_eq!(tids_from(start(5)), [5, 6]);
    // Caught up: the next record's LSN, and nothing to read there yet.
    assert_eq!(tids_from(start(6)), Vec::<u64>::new());
    // What the commit of TID 4 did, key by key.
    let records = storage.history_from(start(3), usize::MAX).unwrap().unwrap();
    let ops: Vec<(Bytes, ChangeOp)> = records[0]
        .changes
        .iter()
        .map(|c| (c.key.clone(), c.op.clone()))
        .collect();
    assert_eq!(
        ops,
        [
            (b("a"), ChangeOp::Append(b("+"))),
            (b("b"), ChangeOp::Delete)
        ]
    );
    assert_eq!(records[0].last_tid, Tid(4));
}
