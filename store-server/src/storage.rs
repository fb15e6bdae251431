//! Durable storage in redb: values with their serials, the last TID and the
//! server's identity.
//!
//! One redb write transaction holds a whole commit batch (see `commit`), and
//! redb's default durability fsyncs it before `commit()` returns. The seam
//! for crash tests is redb's own `StorageBackend`, which `Builder` accepts.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use redb::{Database, ReadableTable, Table, TableDefinition};
use store_protocol::peer::{BatchOp, LogPosition, NodeId, SnapshotRow};
use store_protocol::{
    CommitRequest, Committed, Entry, Epoch, Limits, ScanRequest, Tid, TxnId, Versioned, WireError,
    Write, WriteResult,
};

use crate::error::StorageError;
use crate::outcomes::{self, Expiry, Prior, Recorded, RecordedResult, OUTCOMES, WATERMARKS};

/// key → (serial, value).
const DATA: TableDefinition<'_, &[u8], (u64, &[u8])> = TableDefinition::new("data");
/// name → number: `last_tid`, `server_id`.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const LAST_TID: &str = "last_tid";
const SERVER_ID: &str = "server_id";
/// The last durable batch's log sequence number (replication order).
const LSN: &str = "lsn";
/// The epoch of the last durable batch.
const BATCH_EPOCH: &str = "batch_epoch";
/// The highest epoch this node has accepted (fencing survives restarts).
const EPOCH: &str = "epoch";
/// The cluster this store belongs to (absent until it first takes part).
const CLUSTER_ID: &str = "cluster_id";
/// Which `--cluster` member this store belongs to, plus one (absent for a
/// standalone store).
const NODE: &str = "node";

/// A number in the meta table (0 when absent).
fn meta_number(
    meta: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, StorageError> {
    Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0))
}

/// The last TID of a read snapshot.
fn read_tid(txn: &redb::ReadTransaction) -> Result<Tid, StorageError> {
    Ok(Tid(meta_number(&txn.open_table(META)?, LAST_TID)?))
}

/// The store's data on disk.
pub struct Storage {
    db: Database,
    server_id: u64,
    /// The last durable TID, readable without a lock (pongs, status).
    last_tid: AtomicU64,
    /// Where the durable history ends, published as one.
    end: std::sync::Mutex<HistoryEnd>,
    /// The highest epoch accepted.
    epoch: AtomicU64,
    /// The cluster this store belongs to (0: none yet).
    cluster_id: AtomicU64,
}

/// Opens the redb file at `path`, creating it if it does not exist, and
/// says whether it existed. A file that exists but is empty, truncated or
/// otherwise damaged is refused with [`StorageError::Damaged`], never
/// taken as new. The file is made readable by its owner only.
pub fn open_database(path: &Path) -> Result<(Database, bool), StorageError> {
    let damaged = |detail: String| StorageError::Damaged {
        path: path.display().to_string(),
        detail,
    };
    let exists = match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => {
            return Err(damaged(
                "the file is empty (0 bytes), and a new store is never made over one".into(),
            ))
        }
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(damaged(e.to_string())),
    };
    // redb panics on some damaged files: a panic here is a damaged
    // store, reported as one (and not also as a crash by the hook).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| {
        if exists {
            Database::open(path)
        } else {
            Database::create(path)
        }
    });
    std::panic::set_hook(hook);
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(damaged(e.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the storage engine panicked".into());
            return Err(damaged(what));
        }
    };
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| damaged(format!("restricting its permissions: {e}")))?;
    }
    Ok((db, exists))
}

/// Exit status of a node that stopped because its disk refused a write
/// (`EX_IOERR`).
pub const EXIT_DISK_FAILED: i32 = 74;

/// A write the disk refused (no space, an I/O error, a failed fsync):
/// stop at once. After a failed write the engine's state and the disk's
/// may differ, so no answer may rest on this store any more; a standalone
/// server is restarted once the disk is fixed (clients resend, and the
/// outcome table answers every resend exactly once), and in a pair the
/// backup, which holds everything acknowledged, takes over.
pub fn fail_stop(error: &StorageError) -> ! {
    tracing::error!(
        %error,
        exit = EXIT_DISK_FAILED,
        "the disk refused a write; stopping. Free space or fix the disk, then restart"
    );
    std::process::exit(EXIT_DISK_FAILED)
}

/// Where a storage's history ends: what a joining backup tells its primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEnd {
    /// The last durable batch.
    pub lsn: u64,
    /// Its epoch.
    pub batch_epoch: Epoch,
    /// The last TID.
    pub last_tid: Tid,
}

impl HistoryEnd {
    /// The last batch as a point in the replicated history.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            epoch: self.batch_epoch,
            lsn: self.lsn,
        }
    }
}

/// What stamps a batch: the decider's clock (outcome timestamps) and epoch.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Wall-clock milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// The epoch the batch is decided in.
    pub epoch: Epoch,
}

impl Stamp {
    /// Now, in `epoch`.
    pub fn now(epoch: Epoch) -> Stamp {
        Stamp {
            now_ms: now_ms(),
            epoch,
        }
    }
}

/// A batch's results, and its LSN if it changed anything (only those are
/// replicated).
#[derive(Debug)]
pub struct Applied {
    /// One result per operation.
    pub results: Vec<OpResult>,
    /// The batch's LSN, if it was durable.
    pub lsn: Option<u64>,
}

impl Storage {
    /// Opens the database file at `path`, creating it if it does not
    /// exist; see [`open_database`].
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        let (db, exists) = open_database(path)?;
        let damaged = |detail: String| StorageError::Damaged {
            path: path.display().to_string(),
            detail,
        };
        let txn = db.begin_write()?;
        let (server_id, numbers) = {
            txn.open_table(DATA)?;
            txn.open_table(OUTCOMES)?;
            txn.open_table(WATERMARKS)?;
            let mut meta = txn.open_table(META)?;
            let existing = meta.get(SERVER_ID)?.map(|v| v.value());
            let server_id = match existing {
                Some(id) => id,
                None if exists => {
                    return Err(damaged(
                        "the file holds no server id: it is not a Zeolite store".into(),
                    ))
                }
                None => {
                    let id = rand::random::<u64>();
                    meta.insert(SERVER_ID, id)?;
                    id
                }
            };
            let read = |name| meta_number(&meta, name);
            (
                server_id,
                [
                    read(LAST_TID)?,
                    read(LSN)?,
                    read(BATCH_EPOCH)?,
                    read(EPOCH)?,
                    read(CLUSTER_ID)?,
                ],
            )
        };
        txn.commit()?;
        let [last_tid, lsn, batch_epoch, epoch, cluster_id] = numbers;
        Ok(Storage {
            db,
            server_id,
            last_tid: AtomicU64::new(last_tid),
            end: std::sync::Mutex::new(HistoryEnd {
                lsn,
                batch_epoch: Epoch(batch_epoch),
                last_tid: Tid(last_tid),
            }),
            epoch: AtomicU64::new(epoch),
            cluster_id: AtomicU64::new(cluster_id),
        })
    }

    /// The cluster this store belongs to; 0 if it has not taken part in
    /// one yet (a new store, or a standalone one).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Acquire)
    }

    /// Durably makes this store a member of `cluster_id`; refuses if it
    /// already belongs to another.
    pub fn adopt_cluster(&self, cluster_id: u64) -> Result<(), StorageError> {
        let current = self.cluster_id();
        if current == cluster_id || cluster_id == 0 {
            return Ok(());
        }
        if current != 0 {
            return Err(StorageError::OtherCluster {
                ours: current,
                theirs: cluster_id,
            });
        }
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(CLUSTER_ID, cluster_id)?;
        txn.commit()?;
        self.cluster_id.store(cluster_id, Ordering::Release);
        Ok(())
    }

    /// Durably records that this store is `--cluster` member `node`, or
    /// refuses if it is another member's.
    pub fn claim_node(&self, node: NodeId) -> Result<(), StorageError> {
        let wanted = u64::from(node) + 1;
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            match meta_number(&meta, NODE)? {
                0 => {
                    meta.insert(NODE, wanted)?;
                }
                stored if stored == wanted => {}
                stored => {
                    return Err(StorageError::OtherNode {
                        ours: stored - 1,
                        theirs: u64::from(node),
                    })
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Where this storage's history ends.
    pub fn history_end(&self) -> HistoryEnd {
        *self.lock_end()
    }

    fn lock_end(&self) -> std::sync::MutexGuard<'_, HistoryEnd> {
        self.end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes a new end of history (after its transaction committed).
    fn publish_end(&self, end: HistoryEnd) {
        let mut current = self.lock_end();
        *current = end;
        self.last_tid.store(end.last_tid.0, Ordering::Release);
    }

    /// The highest epoch this node has accepted.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// Durably raises the accepted epoch to `epoch` (no-op if not higher):
    /// done before acting on a new epoch, so fencing survives a restart.
    pub fn raise_epoch(&self, epoch: Epoch) -> Result<(), StorageError> {
        if epoch <= self.epoch() {
            return Ok(());
        }
        // Compared inside the write transaction: two raises at once never
        // leave the lower one on disk.
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let stored = meta_number(&meta, EPOCH)?;
            meta.insert(EPOCH, stored.max(epoch.0))?;
        }
        txn.commit()?;
        self.epoch.fetch_max(epoch.0, Ordering::AcqRel);
        Ok(())
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

    /// Decides a batch of operations in one write transaction and one
    /// fsync, in order, each seeing the ones before it.
    ///
    /// A commit is checked against its client's outcomes first (expired,
    /// replay, reused id; see `outcomes`), then applied under the next TID
    /// or refused; either way its outcome is recorded with the data. `Err`
    /// means the transaction did not become durable: nothing of the batch
    /// was applied or recorded.
    ///
    /// `before_commit` sees the decided batch and the last TID it reaches
    /// before the fsync, if the batch changed anything: a primary ships it
    /// to its backup then, so that both disks write at once.
    pub fn apply_batch(
        &self,
        batch: &[Op<'_>],
        limits: &Limits,
        stamp: Stamp,
        before_commit: impl FnOnce(&Applied, Tid),
    ) -> Result<Applied, StorageError> {
        let hook = |applied: &[Applied], last: Tid| {
            if let Some(applied) = applied.first() {
                before_commit(applied, last);
            }
            Ok(())
        };
        let mut applied = self.apply_batches(&[(batch, stamp)], limits, hook)?;
        Ok(applied.pop().unwrap_or(Applied {
            results: Vec::new(),
            lsn: None,
        }))
    }

    /// Applies several batches in order in one write transaction and one
    /// fsync (a backup catching up applies what arrived together), each
    /// batch under its own LSN as if applied alone.
    ///
    /// A batch stamped with an epoch older than the accepted one is refused
    /// ([`StorageError::Fenced`]): it comes from a deposed primary.
    /// `before_commit` may refuse the decided batches (a backup whose
    /// result differs from the primary's): nothing is written then.
    pub fn apply_batches(
        &self,
        batches: &[(&[Op<'_>], Stamp)],
        limits: &Limits,
        before_commit: impl FnOnce(&[Applied], Tid) -> Result<(), StorageError>,
    ) -> Result<Vec<Applied>, StorageError> {
        let txn = self.db.begin_write()?;
        // Read inside the write transaction: it excludes every other
        // writer, so no other batch, snapshot or epoch change interleaves.
        let (mut last, mut lsn, accepted) = {
            let meta = txn.open_table(META)?;
            let read = |name| meta_number(&meta, name);
            (Tid(read(LAST_TID)?), read(LSN)?, read(EPOCH)?)
        };
        if let Some((_, stamp)) = batches.iter().find(|(_, stamp)| stamp.epoch.0 < accepted) {
            let batch = stamp.epoch.0;
            txn.abort()?;
            return Err(StorageError::Fenced { batch, accepted });
        }
        let mut applied = Vec::with_capacity(batches.len());
        let mut last_epoch = None;
        {
            let mut data = txn.open_table(DATA)?;
            let mut outcomes = txn.open_table(OUTCOMES)?;
            let mut watermarks = txn.open_table(WATERMARKS)?;
            for &(batch, stamp) in batches {
                let now_ms = stamp.now_ms;
                let mut results = Vec::with_capacity(batch.len());
                let mut dirty = false;
                for op in batch.iter() {
                    let result = match op {
                        Op::Commit(request) => {
                            let id = request.txn_id;
                            let acked = Expiry {
                                client_id: id.client_id,
                                below: request.acked_below,
                            };
                            dirty |= outcomes::expire(&mut watermarks, &mut outcomes, acked)?;
                            match outcomes::prior(&watermarks, &outcomes, id)? {
                                Prior::Expired => Err(WireError::Expired),
                                Prior::Recorded(recorded) => {
                                    outcomes::replay(&recorded, Some(request.digest))
                                }
                                Prior::Unknown => {
                                    let tid = last.next();
                                    let decided = apply_commit(&mut data, request, tid, limits)?;
                                    let result = match &decided {
                                        Ok(results) => {
                                            last = tid;
                                            RecordedResult::Committed {
                                                tid,
                                                results: results.clone(),
                                            }
                                        }
                                        Err(e) => RecordedResult::Failed(e.clone()),
                                    };
                                    let recorded = Recorded {
                                        digest: request.digest,
                                        at_ms: now_ms,
                                        result,
                                    };
                                    outcomes::record(&mut outcomes, id, &recorded)?;
                                    dirty = true;
                                    decided.map(|results| Committed {
                                        tid,
                                        results,
                                        replayed: false,
                                    })
                                }
                            }
                        }
                        Op::Expire(expiry) => {
                            dirty |= outcomes::expire(&mut watermarks, &mut outcomes, *expiry)?;
                            Ok(Committed {
                                tid: Tid(0),
                                results: Vec::new(),
                                replayed: false,
                            })
                        }
                        Op::Resolve(id) => match outcomes::prior(&watermarks, &outcomes, *id)? {
                            Prior::Expired => Err(WireError::Expired),
                            Prior::Recorded(recorded) => outcomes::replay(&recorded, None),
                            Prior::Unknown => {
                                let abandoned = Recorded {
                                    digest: 0,
                                    at_ms: now_ms,
                                    result: RecordedResult::Abandoned,
                                };
                                outcomes::record(&mut outcomes, *id, &abandoned)?;
                                dirty = true;
                                Err(WireError::Abandoned)
                            }
                        },
                    };
                    results.push(result);
                }
                let batch_lsn = dirty.then(|| {
                    lsn += 1;
                    last_epoch = Some(stamp.epoch);
                    lsn
                });
                applied.push(Applied {
                    results,
                    lsn: batch_lsn,
                });
            }
            if let Some(epoch) = last_epoch {
                let mut meta = txn.open_table(META)?;
                meta.insert(LAST_TID, last.0)?;
                meta.insert(LSN, lsn)?;
                meta.insert(BATCH_EPOCH, epoch.0)?;
            }
        }
        let Some(epoch) = last_epoch else {
            // Only replays and refusals: nothing to make durable.
            txn.abort()?;
            return Ok(applied);
        };
        if let Err(refused) = before_commit(&applied, last) {
            txn.abort()?;
            return Err(refused);
        }
        txn.commit()?;
        self.publish_end(HistoryEnd {
            lsn,
            batch_epoch: epoch,
            last_tid: last,
        });
        Ok(applied)
    }

    /// The expiries that forget every outcome decided more than
    /// `retention` ago; applied as [`Op::Expire`] through
    /// [`Storage::apply_batch`], so a backup applies them too.
    pub fn expiries_due(
        &self,
        retention: std::time::Duration,
    ) -> Result<Vec<Expiry>, StorageError> {
        let before_ms =
            now_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        let txn = self.db.begin_read()?;
        let outcomes = txn.open_table(OUTCOMES)?;
        outcomes::expiries_before(&outcomes, before_ms)
    }
}

impl Storage {
    /// Streams a consistent snapshot of every table: returns where its
    /// history ends, then hands `sink` chunks of about `chunk_bytes` until
    /// done or `sink` returns `false`. Runs on a blocking thread.
    pub fn snapshot(
        &self,
        chunk_bytes: usize,
        begin: impl FnOnce(HistoryEnd) -> bool,
        mut sink: impl FnMut(Vec<SnapshotRow>) -> bool,
    ) -> Result<(), StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let read = |name| meta_number(&meta, name);
        let end = HistoryEnd {
            lsn: read(LSN)?,
            batch_epoch: Epoch(read(BATCH_EPOCH)?),
            last_tid: Tid(read(LAST_TID)?),
        };
        if !begin(end) {
            return Ok(());
        }
        let mut chunk = Vec::new();
        let mut size = 0usize;
        let mut push = |row: SnapshotRow, bytes: usize| -> bool {
            chunk.push(row);
            size += bytes + 32;
            if size < chunk_bytes {
                return true;
            }
            size = 0;
            sink(std::mem::take(&mut chunk))
        };
        for item in txn.open_table(DATA)?.iter()? {
            let (key, value) = item?;
            let (serial, value) = value.value();
            let row = SnapshotRow::Data {
                key: Bytes::copy_from_slice(key.value()),
                serial: Tid(serial),
                value: Bytes::copy_from_slice(value),
            };
            if !push(row, key.value().len() + value.len()) {
                return Ok(());
            }
        }
        for item in txn.open_table(OUTCOMES)?.iter()? {
            let (key, value) = item?;
            let (client_id, seq) = key.value();
            let row = SnapshotRow::Outcome {
                txn_id: TxnId { client_id, seq },
                record: Bytes::copy_from_slice(value.value()),
            };
            if !push(row, value.value().len()) {
                return Ok(());
            }
        }
        for item in txn.open_table(WATERMARKS)?.iter()? {
            let (client_id, below) = item?;
            let row = SnapshotRow::Watermark {
                client_id: client_id.value(),
                below: below.value(),
            };
            if !push(row, 0) {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            sink(chunk);
        }
        Ok(())
    }

    /// Replaces every table with a snapshot's rows, atomically (one write
    /// transaction, one fsync): either the old history or the new one
    /// survives a crash. `rows` yields chunks until the snapshot ends
    /// ([`SnapshotPiece::Cut`]: it was cut short, and nothing changes).
    /// Returns whether it was installed.
    pub fn install_snapshot(
        &self,
        end: HistoryEnd,
        mut rows: impl FnMut() -> SnapshotPiece,
    ) -> Result<bool, StorageError> {
        let txn = self.db.begin_write()?;
        {
            txn.delete_table(DATA)?;
            txn.delete_table(OUTCOMES)?;
            txn.delete_table(WATERMARKS)?;
            let mut data = txn.open_table(DATA)?;
            let mut outcomes = txn.open_table(OUTCOMES)?;
            let mut watermarks = txn.open_table(WATERMARKS)?;
            loop {
                let chunk = match rows() {
                    SnapshotPiece::Rows(chunk) => chunk,
                    SnapshotPiece::End => break,
                    SnapshotPiece::Cut => {
                        drop((data, outcomes, watermarks));
                        txn.abort()?;
                        return Ok(false);
                    }
                };
                for row in chunk {
                    match row {
                        SnapshotRow::Data { key, serial, value } => {
                            data.insert(&key[..], (serial.0, &value[..]))?;
                        }
                        SnapshotRow::Outcome { txn_id, record } => {
                            outcomes.insert((txn_id.client_id, txn_id.seq), &record[..])?;
                        }
                        SnapshotRow::Watermark { client_id, below } => {
                            watermarks.insert(client_id, below)?;
                        }
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(LAST_TID, end.last_tid.0)?;
            meta.insert(LSN, end.lsn)?;
            meta.insert(BATCH_EPOCH, end.batch_epoch.0)?;
        }
        txn.commit()?;
        self.publish_end(end);
        Ok(true)
    }
}

/// The next piece of a snapshot being installed.
pub enum SnapshotPiece {
    /// More rows.
    Rows(Vec<SnapshotRow>),
    /// The snapshot is complete.
    End,
    /// The snapshot was cut short: keep the old history.
    Cut,
}

/// One operation of a write batch.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Commit a transaction (exactly once).
    Commit(&'a CommitRequest),
    /// Resolve a transaction id: its outcome, or `Abandoned` recorded now.
    Resolve(TxnId),
    /// Forget a client's outcomes below a watermark.
    Expire(Expiry),
}

impl<'a> From<&'a BatchOp> for Op<'a> {
    fn from(op: &'a BatchOp) -> Op<'a> {
        match op {
            BatchOp::Commit(request) => Op::Commit(request),
            BatchOp::Resolve(id) => Op::Resolve(*id),
            BatchOp::Expire { client_id, below } => Op::Expire(Expiry {
                client_id: *client_id,
                below: *below,
            }),
        }
    }
}

impl Op<'_> {
    /// The owned form, as replicated.
    pub fn to_batch_op(self) -> BatchOp {
        match self {
            Op::Commit(request) => BatchOp::Commit(request.clone()),
            Op::Resolve(id) => BatchOp::Resolve(id),
            Op::Expire(expiry) => BatchOp::Expire {
                client_id: expiry.client_id,
                below: expiry.below,
            },
        }
    }
}

/// What one operation came to: a commit (new or replayed) or why not.
pub type OpResult = Result<Committed, WireError>;

/// Wall-clock milliseconds since the Unix epoch (outcome retention is a
/// wall-clock rule: "forgotten after 24 h").
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    // The new state of every written key, built before touching the
    // table: one staged value per key, changed in place, so a transaction
    // holds at most its keys' final values (bounded by `max_txn_bytes`)
    // and takes time linear in its bytes.
    let mut staged: HashMap<&Bytes, Option<Vec<u8>>> = HashMap::new();
    let mut order: Vec<&Bytes> = Vec::new();
    let mut staged_bytes = 0usize;
    let mut results = Vec::with_capacity(request.writes.len());
    for write in &request.writes {
        let key = write.key();
        let slot = match staged.entry(key) {
            std::collections::hash_map::Entry::Occupied(slot) => slot.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                order.push(key);
                let stored = data.get(&key[..])?.map(|g| g.value().1.to_vec());
                staged_bytes += stored.as_ref().map_or(0, Vec::len);
                slot.insert(stored)
            }
        };
        let before = slot.as_ref().map_or(0, Vec::len);
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
        match staged.get(key).and_then(Option::as_ref) {
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
        let storage = Storage::open(&dir.path().join("db")).unwrap();
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
        let refused =
            storage.apply_batches(&[(&[Op::Commit(&put)][..], current)], &limits, |_, _| {
                Err(StorageError::Diverged("test".into()))
            });
        assert!(matches!(refused, Err(StorageError::Diverged(_))));
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
        let storage = Storage::open(&dir.path().join("db")).unwrap();
        assert_eq!(storage.epoch(), Epoch(3));
        assert_eq!(storage.history_end().lsn, 1);
    }

    #[test]
    fn a_snapshot_replaces_another_store_whole() {
        let dir = tempfile::tempdir().unwrap();
        let source = Storage::open(&dir.path().join("source")).unwrap();
        let target = Storage::open(&dir.path().join("target")).unwrap();
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
        // A snapshot cut short changes nothing.
        let mut cut = [SnapshotPiece::Cut].into_iter();
        let before = target.history_end();
        assert!(!target
            .install_snapshot(end, || cut.next().unwrap_or(SnapshotPiece::Cut))
            .unwrap());
        assert_eq!(target.history_end(), before);
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
        let storage = Storage::open(&dir.path().join("db")).unwrap();
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
        let storage = Storage::open(&dir.path().join("db")).unwrap();
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
        let storage = Storage::open(&dir.path().join("db")).unwrap();
        assert!(one(&storage, Op::Commit(&incr)).unwrap().replayed);
    }

    #[test]
    fn resolve_records_abandoned_and_no_late_copy_commits() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("db")).unwrap();
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
        let storage = Storage::open(&dir.path().join("db")).unwrap();
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
}
