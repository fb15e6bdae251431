//! The crash-consistency suite (redb's habit): random schedules of commit
//! batches, resends, resolves, injected `EIO`/`ENOSPC` and power cuts, run
//! against the store on a [`SimDisk`] and against a model (`BTreeMap`).
//! After every power cut and restart: every acknowledged commit is present
//! with its outcome, a batch whose answer was lost landed whole or not at
//! all, the data equals the model's, and TIDs never go back. A backup on a
//! disk of its own applies the store's log records in groups (or a
//! snapshot, chunk by chunk, when the log no longer reaches), with faults
//! and power cuts of its own, and always holds the model's data as of the
//! LSN it reached.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use store_protocol::{
    content_digest, CommitRequest, Committed, Epoch, Limits, ReadCheck, ScanRequest, Tid, TxnId,
    WireError, Write, WriteResult,
};

use super::{Op, SnapshotPiece, Stamp, Storage};
use crate::error::StorageError;
use crate::wal::sim::SimDisk;
use crate::wal::WalConfig;

/// What one schedule did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Batches answered.
    pub acked: u64,
    /// Batches whose answer was an error (a fault): outcome unknown.
    pub unknown: u64,
    /// Power cuts survived (the store's and its backup's).
    pub power_cuts: u64,
    /// Snapshots the backup took because the store's log no longer
    /// reached.
    pub snapshots: u64,
}

impl Tally {
    /// Adds another schedule's counts.
    pub fn add(&mut self, other: Tally) {
        self.acked += other.acked;
        self.unknown += other.unknown;
        self.power_cuts += other.power_cuts;
        self.snapshots += other.snapshots;
    }
}

/// A log small enough that a schedule rolls segments, checkpoints and
/// recycles.
fn tiny_log() -> WalConfig {
    WalConfig {
        segment_bytes: 8 << 10,
        checkpoint_bytes: 16 << 10,
        retain_bytes: 16 << 10,
        retain_age: std::time::Duration::from_secs(3600),
    }
}

/// Opens the store on `disk` (index and log both on it).
fn open(disk: &SimDisk) -> Result<Storage, StorageError> {
    let index = disk.backend("store.redb");
    let exists = redb::StorageBackend::len(&index).is_ok_and(|len| len > 0);
    let db = redb::Builder::new()
        .set_cache_size(1 << 20)
        .create_with_backend(index)?;
    Storage::assemble(
        db,
        exists,
        std::path::Path::new("sim/store.redb"),
        Arc::new(disk.clone()),
        tiny_log(),
    )
}

/// The model: data, every decided outcome, the last TID.
#[derive(Default)]
struct Model {
    data: BTreeMap<Bytes, (Tid, Bytes)>,
    outcomes: BTreeMap<u64, Result<Committed, WireError>>,
    last: Tid,
}

impl Model {
    /// Decides a new commit as the store must.
    fn decide(&mut self, request: &CommitRequest) -> Result<Committed, WireError> {
        for read in &request.read_set {
            let serial = self.data.get(&read.key).map_or(Tid(0), |(s, _)| *s);
            if serial != read.serial {
                return Err(WireError::Conflict {
                    key: read.key.clone(),
                });
            }
        }
        let mut staged = self.data.clone();
        let tid = self.last.next();
        let mut results = Vec::new();
        for write in &request.writes {
            match write {
                Write::Put { key, value } => {
                    staged.insert(key.clone(), (tid, value.clone()));
                    results.push(WriteResult::Stored);
                }
                Write::Delete { key } => results.push(WriteResult::Deleted {
                    existed: staged.remove(key).is_some(),
                }),
                Write::Incr { key, by } => {
                    let now: i64 = staged
                        .get(key)
                        .map_or(0, |(_, v)| String::from_utf8_lossy(v).parse().unwrap_or(0));
                    let n = now + by;
                    staged.insert(key.clone(), (tid, Bytes::from(n.to_string())));
                    results.push(WriteResult::Counter(n));
                }
                Write::Append { key, value } => {
                    let mut joined = staged.get(key).map_or_else(Vec::new, |(_, v)| v.to_vec());
                    joined.extend_from_slice(value);
                    let len = joined.len() as u64;
                    staged.insert(key.clone(), (tid, Bytes::from(joined)));
                    results.push(WriteResult::Appended { len });
                }
            }
        }
        self.data = staged;
        self.last = tid;
        Ok(Committed {
            tid,
            results,
            replayed: false,
        })
    }
}

/// A random commit of client 1 with sequence number `seq`.
fn random_commit(rng: &mut StdRng, model: &Model, seq: u64) -> CommitRequest {
    let key = |rng: &mut StdRng| Bytes::from(format!("k{}", rng.gen_range(0..6)));
    let mut read_set = Vec::new();
    if rng.gen_bool(0.3) {
        let key = key(rng);
        let current = model.data.get(&key).map_or(Tid(0), |(s, _)| *s);
        let serial = if rng.gen_bool(0.7) {
            current
        } else {
            Tid(current.0 + 1)
        };
        read_set.push(ReadCheck { key, serial });
    }
    let writes = (0..rng.gen_range(1..4))
        .map(|_| match rng.gen_range(0..5) {
            0 => Write::Delete { key: key(rng) },
            4 => Write::Append {
                key: key(rng),
                value: Bytes::from(vec![rng.gen::<u8>(); rng.gen_range(0..20)]),
            },
            1 => Write::Incr {
                key: Bytes::from(format!("c{}", rng.gen_range(0..2))),
                by: rng.gen_range(-5..50),
            },
            _ => {
                let len = if rng.gen_bool(0.1) {
                    3000
                } else {
                    rng.gen_range(0..40)
                };
                Write::Put {
                    key: key(rng),
                    value: Bytes::from(vec![rng.gen::<u8>(); len]),
                }
            }
        })
        .collect::<Vec<_>>();
    CommitRequest {
        txn_id: TxnId { client_id: 1, seq },
        acked_below: 1,
        digest: content_digest(&read_set, &writes),
        read_set,
        writes,
    }
}

fn replayed(result: &Result<Committed, WireError>) -> Result<Committed, WireError> {
    result.clone().map(|c| Committed {
        replayed: true,
        ..c
    })
}

/// Runs one schedule of `steps` steps from `seed`; `Err` says what broke.
pub fn run_schedule(seed: u64, steps: u64) -> Result<Tally, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = SimDisk::new();
    let limits = Limits::default();
    let mut storage = Some(open(&disk).map_err(|e| format!("first open: {e}"))?);
    let mut model = Model::default();
    let mut sent: BTreeMap<u64, CommitRequest> = BTreeMap::new();
    let mut seq = 0u64;
    let mut tally = Tally::default();
    let mut backup = Backup::open()?;
    // The model's data as of each LSN the store reached after a step.
    let mut model_at: BTreeMap<u64, BTreeMap<Bytes, (Tid, Bytes)>> = BTreeMap::new();
    model_at.insert(0, BTreeMap::new());
    for step in 0..steps {
        let Some(store) = storage.as_ref() else {
            return Err("no store".into());
        };
        let mut batch: Vec<CommitRequest> = Vec::new();
        for _ in 0..rng.gen_range(1..4) {
            if !sent.is_empty() && rng.gen_bool(0.2) {
                let seqs: Vec<u64> = sent.keys().copied().collect();
                let again = seqs[rng.gen_range(0..seqs.len())];
                if let Some(request) = sent.get(&again) {
                    if model.outcomes.contains_key(&again) {
                        batch.push(request.clone());
                        continue;
                    }
                }
            }
            seq += 1;
            batch.push(random_commit(&mut rng, &model, seq));
        }
        if rng.gen_bool(0.15) {
            disk.fail_in(Some(rng.gen_range(0..6)), rng.gen_bool(0.5));
        }
        let ops: Vec<Op<'_>> = batch.iter().map(Op::Commit).collect();
        let answer = store.apply_batch(&ops, &limits, Stamp::now(Epoch(1)), |_, _| {});
        disk.fail_in(None, false);
        if let Err(e) = &answer {
            if !disk.failed() {
                return Err(format!(
                    "step {step}: a batch failed with no fault injected: {e}"
                ));
            }
        }
        match answer {
            Ok(applied) => {
                tally.acked += 1;
                for (request, result) in batch.iter().zip(&applied.results) {
                    let id = request.txn_id.seq;
                    let expected = match model.outcomes.get(&id) {
                        Some(known) => replayed(known),
                        None => {
                            let decided = model.decide(request);
                            model.outcomes.insert(id, decided.clone());
                            sent.insert(id, request.clone());
                            decided
                        }
                    };
                    if *result != expected {
                        return Err(format!(
                            "step {step}: {id} answered {result:?}, the model says {expected:?}"
                        ));
                    }
                }
            }
            Err(_) => {
                tally.unknown += 1;
                // The store stops after a failed write: a power cut, then
                // the batch is found whole or not at all.
                tally.power_cuts += 1;
                disk.power_cut(rng.gen());
                drop(storage.take());
                let store = open(&disk).map_err(|e| format!("step {step}: reopen: {e}"))?;
                settle(&store, &batch, &mut model, &mut sent, step)?;
                storage = Some(store);
            }
        }
        if rng.gen_bool(0.08) {
            tally.power_cuts += 1;
            disk.power_cut(rng.gen());
            drop(storage.take());
            storage = Some(open(&disk).map_err(|e| format!("step {step}: reopen: {e}"))?);
        }
        if let Some(store) = storage.as_ref() {
            verify(store, &model, &sent, &mut rng, step)?;
            model_at.insert(store.history_end().lsn, model.data.clone());
            if rng.gen_bool(0.05) {
                // The backup lost its disk: it starts again, empty.
                backup = Backup::open()?;
            }
            backup.step(store, &mut rng, &model_at, &mut tally, step)?;
        }
    }
    Ok(tally)
}

/// A backup of the store under test, on a disk of its own.
struct Backup {
    disk: SimDisk,
    store: Option<Storage>,
}

impl Backup {
    fn open() -> Result<Backup, String> {
        let disk = SimDisk::new();
        let store = open(&disk).map_err(|e| format!("backup: first open: {e}"))?;
        Ok(Backup {
            disk,
            store: Some(store),
        })
    }

    /// Catches up with `primary` as far as a random group reaches (or by
    /// snapshot), maybe through a fault or a power cut, then checks the
    /// data against the model as of the LSN reached.
    fn step(
        &mut self,
        primary: &Storage,
        rng: &mut StdRng,
        model_at: &BTreeMap<u64, BTreeMap<Bytes, (Tid, Bytes)>>,
        tally: &mut Tally,
        step: u64,
    ) -> Result<(), String> {
        let store = self.store.as_ref().ok_or("no backup")?;
        let from = store.history_end().lsn + 1;
        let records = primary
            .log_from(from, rng.gen_range(1..8) * 1024)
            .map_err(|e| format!("step {step}: reading the log: {e}"))?;
        if rng.gen_bool(0.15) {
            self.disk
                .fail_in(Some(rng.gen_range(0..4)), rng.gen_bool(0.5));
        }
        let applied = if records.first().is_some_and(|r| r.header.lsn == from) {
            let group: Vec<_> = records.iter().map(|r| (r.header, &r.body[..])).collect();
            store.apply_records(&group, Epoch(1)).map(|_| ())
        } else if primary.history_end().lsn >= from {
            // The store's log no longer reaches: a snapshot.
            tally.snapshots += 1;
            let mut end = None;
            let mut chunks = Vec::new();
            primary
                .snapshot(
                    256,
                    |e| {
                        end = Some(e);
                        true
                    },
                    |rows| {
                        chunks.push(rows);
                        true
                    },
                )
                .map_err(|e| format!("step {step}: snapshot: {e}"))?;
            let end = end.ok_or("a snapshot without its end")?;
            let mut pieces = chunks
                .into_iter()
                .map(SnapshotPiece::Rows)
                .chain([SnapshotPiece::End]);
            store
                .install_snapshot(end, || pieces.next().unwrap_or(SnapshotPiece::Cut))
                .map(|_| ())
        } else {
            Ok(())
        };
        self.disk.fail_in(None, false);
        if let Err(e) = &applied {
            if !self.disk.failed() {
                return Err(format!("step {step}: the backup failed with no fault: {e}"));
            }
        }
        if applied.is_err() || rng.gen_bool(0.1) {
            tally.power_cuts += 1;
            self.disk.power_cut(rng.gen());
            drop(self.store.take());
            let reopened = open(&self.disk).map_err(|e| format!("step {step}: backup: {e}"))?;
            self.store = Some(reopened);
        }
        let store = self.store.as_ref().ok_or("no backup")?;
        let lsn = store.history_end().lsn;
        let Some((_, expected)) = model_at.range(lsn..).next() else {
            return Err(format!(
                "step {step}: the backup is at LSN {lsn}, past the store"
            ));
        };
        if data(store)? != *expected {
            return Err(format!(
                "step {step}: the backup's data at LSN {lsn} differs from the model's"
            ));
        }
        Ok(())
    }
}

/// Every row of `store`, in key order.
fn data(store: &Storage) -> Result<BTreeMap<Bytes, (Tid, Bytes)>, String> {
    let scan = ScanRequest {
        start: Bytes::new(),
        end: None,
        limit: 1000,
    };
    let (entries, _, _) = store
        .scan(&scan, 1000, usize::MAX)
        .map_err(|e| e.to_string())?;
    Ok(entries
        .into_iter()
        .map(|e| (e.key, (e.serial, e.value)))
        .collect())
}

/// After a restart: the new commits of a batch whose answer was lost are
/// either all recorded (with the model's outcomes) or none.
fn settle(
    store: &Storage,
    batch: &[CommitRequest],
    model: &mut Model,
    sent: &mut BTreeMap<u64, CommitRequest>,
    step: u64,
) -> Result<(), String> {
    let new: Vec<&CommitRequest> = batch
        .iter()
        .filter(|r| !model.outcomes.contains_key(&r.txn_id.seq))
        .collect();
    let Some(first) = new.first() else {
        return Ok(());
    };
    let landed = resolve(store, first.txn_id)?.map_or_else(|e| e != WireError::Abandoned, |_| true);
    for request in new {
        let id = request.txn_id.seq;
        let expected = if landed {
            let decided = model.decide(request);
            model.outcomes.insert(id, decided.clone());
            sent.insert(id, request.clone());
            replayed(&decided)
        } else {
            model.outcomes.insert(id, Err(WireError::Abandoned));
            sent.insert(id, request.clone());
            Err(WireError::Abandoned)
        };
        let found = resolve(store, request.txn_id)?;
        if found != expected {
            return Err(format!(
                "step {step}: a lost answer's batch landed {}: {id} resolves to {found:?}, \
                 the model says {expected:?}",
                if landed { "whole" } else { "not at all" }
            ));
        }
    }
    Ok(())
}

fn resolve(store: &Storage, id: TxnId) -> Result<Result<Committed, WireError>, String> {
    let applied = store
        .apply_batch(
            &[Op::Resolve(id)],
            &Limits::default(),
            Stamp::now(Epoch(1)),
            |_, _| {},
        )
        .map_err(|e| format!("resolve {id}: {e}"))?;
    applied
        .results
        .into_iter()
        .next()
        .ok_or_else(|| "no result".to_string())
}

/// The store's data equals the model's, TIDs have not gone back, and a few
/// recorded outcomes resolve as the model says.
fn verify(
    store: &Storage,
    model: &Model,
    sent: &BTreeMap<u64, CommitRequest>,
    rng: &mut StdRng,
    step: u64,
) -> Result<(), String> {
    if store.last_tid() != model.last {
        return Err(format!(
            "step {step}: last TID {} where the model has {}",
            store.last_tid().0,
            model.last.0
        ));
    }
    if data(store)? != model.data {
        return Err(format!("step {step}: the data differs from the model's"));
    }
    let seqs: Vec<u64> = sent.keys().copied().collect();
    for _ in 0..3.min(seqs.len()) {
        let seq = seqs[rng.gen_range(0..seqs.len())];
        let Some(expected) = model.outcomes.get(&seq) else {
            continue;
        };
        let id = TxnId { client_id: 1, seq };
        let found = resolve(store, id)?;
        if found != replayed(expected) {
            return Err(format!(
                "step {step}: {id} resolves to {found:?}, the model says {expected:?}"
            ));
        }
    }
    Ok(())
}
