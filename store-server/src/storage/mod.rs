//! Durable storage in redb: values with their serials, the last TID and the
//! server's identity.
//!
//! One redb write transaction holds a whole commit batch (see `commit`), and
//! redb's default durability fsyncs it before `commit()` returns. The seam
//! for crash tests is redb's own `StorageBackend`, which `Builder` accepts.
//!
//! * this module: the schema, the store's identity (server, cluster, node,
//!   epoch) and where its history ends;
//! * `file`: opening the file (damaged files refused) and fail-stop;
//! * `reads`: `get`, `get_many`, `scan`;
//! * `batch`: deciding a batch of operations in one write transaction;
//! * `rules`: what one commit does to the data (conflicts, `Incr`,
//!   `Append`, the transaction's byte budget);
//! * `snapshot`: streaming a snapshot out and installing one;
//! * `pending`: rows durable in the log, in memory until folded into the
//!   index; `fold`: checkpoints, in a thread of their own;
//! * `check`: `store-server check`, a store's soundness without serving it;
//! * `crash`: the crash-consistency suite, run on a simulated disk.

mod batch;
mod check;
#[cfg(feature = "crash-seam")]
pub mod crash;
mod file;
mod fold;
mod history;
mod pending;
mod reads;
mod redo;
mod replay;
mod rules;
mod snapshot;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};
use store_protocol::peer::{LogPosition, NodeId};
use store_protocol::{Epoch, Tid};

use crate::error::StorageError;
use crate::invalidation::RecentChanges;
use crate::outcomes::{OUTCOMES, WATERMARKS};
use crate::wal::{Disk, OsDisk, Record, Wal, WalConfig};
use pending::{Index, Layers, Memory, Pending};

use batch::now_ms;
pub use batch::{Op, OpResult, MAX_RECORD_BYTES};
pub use check::{check, CheckReport};
pub use file::{fail_stop, open_database};
pub use history::Start;
pub use snapshot::SnapshotPiece;

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
/// The history's generation: the log's records carry it, and a snapshot
/// install starts a new one (records of another are not this history's).
const GENERATION: &str = "wal_generation";
/// Set while a snapshot is being installed: a store found with it was cut
/// short mid-install and is emptied at open.
const INSTALLING: &str = "installing";
/// The log's directory, beside the index file.
pub const WAL_DIR: &str = "wal";
/// The index file's name in a data directory.
pub const STORE_FILE: &str = "store.redb";

/// A write transaction that is durable when committed, with redb's
/// quick-repair: these are rare (checkpoints, epoch changes, snapshot
/// installs), and with it a store reopened after a crash is not walked
/// page by page before it serves.
fn durable_txn(db: &Database) -> Result<redb::WriteTransaction, StorageError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// A random non-zero generation.
fn new_generation() -> u64 {
    rand::random::<u64>().max(1)
}

/// A number in the meta table (0 when absent).
fn meta_number(
    meta: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, StorageError> {
    Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0))
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
    /// The history: every batch is durable here before it is answered.
    wal: std::sync::Mutex<Wal>,
    wal_config: WalConfig,
    /// The commits the log held at open, until the change log takes them.
    recent: std::sync::Mutex<RecentChanges>,
    /// Rows durable in the log, not yet in the index.
    memory: std::sync::RwLock<Memory>,
    /// Held while rows are folded into the index.
    fold: std::sync::Mutex<()>,
    /// Wakes the checkpointer thread, and tells when a fold is done.
    folds: fold::Signal,
    /// Held by the one writer.
    writer: std::sync::Mutex<()>,
}

impl Drop for Storage {
    /// A clean stop checkpoints, so the next start replays nothing.
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::debug!(error = %e, "no checkpoint at close");
        }
    }
}

/// Where a storage's history ends: what a joining backup tells its primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl Storage {
    /// Opens the store whose index is the redb file at `path` and whose log
    /// is the directory `wal` beside it, creating both if they do not exist
    /// (see [`open_database`]), and replays the log past the index's
    /// checkpoint.
    pub fn open(path: &Path, wal_config: WalConfig) -> Result<Storage, StorageError> {
        let (db, exists) = open_database(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let disk = OsDisk::new(dir.join(WAL_DIR)).map_err(|source| StorageError::Log {
            context: format!("making {}", dir.join(WAL_DIR).display()),
            source,
        })?;
        Storage::assemble(db, exists, path, Arc::new(disk), wal_config)
    }

    /// Opens a store from its parts: the index, whether it existed before,
    /// the file it is named by in errors, and the log's disk (the crash
    /// seam: tests pass a simulated one).
    pub fn assemble(
        db: Database,
        exists: bool,
        path: &Path,
        log_disk: Arc<dyn Disk>,
        wal_config: WalConfig,
    ) -> Result<Storage, StorageError> {
        let txn = durable_txn(&db)?;
        let (server_id, minted, numbers) = {
            txn.open_table(DATA)?;
            txn.open_table(OUTCOMES)?;
            txn.open_table(WATERMARKS)?;
            let mut meta = txn.open_table(META)?;
            let existing = meta.get(SERVER_ID)?.map(|v| v.value());
            let server_id = match existing {
                Some(id) => id,
                None if exists => {
                    return Err(StorageError::damaged(
                        path,
                        "the file holds no server id: it is not a Zeolite store",
                    ))
                }
                None => {
                    let id = rand::random::<u64>();
                    meta.insert(SERVER_ID, id)?;
                    id
                }
            };
            if meta_number(&meta, INSTALLING)? != 0 {
                drop(meta);
                tracing::warn!(
                    "a snapshot install was cut short: the store is an empty history \
                     until the primary sends it again"
                );
                snapshot::forget_history(&txn, new_generation())?;
                meta = txn.open_table(META)?;
                meta.remove(INSTALLING)?;
            }
            // A new store, or one from before the log: its history starts
            // here, under a generation recorded once its first segment is
            // made (a crash between makes another at the next open).
            let minted = meta_number(&meta, GENERATION)? == 0;
            let read = |name| meta_number(&meta, name);
            (
                server_id,
                minted,
                [
                    read(LAST_TID)?,
                    read(LSN)?,
                    read(BATCH_EPOCH)?,
                    read(EPOCH)?,
                    read(CLUSTER_ID)?,
                    read(GENERATION)?,
                ],
            )
        };
        txn.commit()?;
        let [last_tid, lsn, batch_epoch, epoch, cluster_id, stored] = numbers;
        let generation = if minted { new_generation() } else { stored };
        let index = replay::IndexState {
            generation,
            minted,
            end: HistoryEnd {
                lsn,
                batch_epoch: Epoch(batch_epoch),
                last_tid: Tid(last_tid),
            },
        };
        let (mut wal, end, recent) = replay::replay_log(&db, path, log_disk, index, wal_config)?;
        // A disk too small for one segment refuses here, not at the first
        // commit.
        wal.start()?;
        if minted {
            let txn = durable_txn(&db)?;
            txn.open_table(META)?.insert(GENERATION, generation)?;
            txn.commit()?;
        }
        Ok(Storage {
            db,
            server_id,
            last_tid: AtomicU64::new(end.last_tid.0),
            end: std::sync::Mutex::new(end),
            epoch: AtomicU64::new(epoch),
            cluster_id: AtomicU64::new(cluster_id),
            wal: std::sync::Mutex::new(wal),
            wal_config,
            recent: std::sync::Mutex::new(recent),
            memory: std::sync::RwLock::default(),
            fold: std::sync::Mutex::default(),
            folds: fold::Signal::default(),
            writer: std::sync::Mutex::default(),
        })
    }

    /// The commits the log held at open (once; empty after): the change
    /// log starts from them, so clients revalidate across a restart.
    pub fn take_recent_changes(&self) -> RecentChanges {
        std::mem::take(
            &mut *self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// This node's log records from `lsn` on, about `max_bytes` of them
    /// (at least one, if any): what a backup catching up is sent. Empty if
    /// the log no longer holds `lsn`.
    pub fn log_from(&self, lsn: u64, max_bytes: usize) -> Result<Vec<Record>, StorageError> {
        self.lock_wal().read_from(lsn, max_bytes)
    }

    fn lock_wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The index's tables, read from one snapshot: taken while the pending
    /// rows are held, the two are one consistent view.
    fn index(&self) -> Result<Index, StorageError> {
        let txn = self.db.begin_read()?;
        Ok(Index {
            data: txn.open_table(DATA)?,
            outcomes: txn.open_table(OUTCOMES)?,
            watermarks: txn.open_table(WATERMARKS)?,
        })
    }

    /// Runs `f` on one consistent view of the store: the rows in memory
    /// over the index, with `staged` (a batch being decided) on top.
    fn with_layers<T>(
        &self,
        staged: Option<&mut Pending>,
        f: impl FnOnce(&mut Layers<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let memory = self.read_memory();
        let index = self.index()?;
        f(&mut Layers {
            staged,
            pending: &memory.active,
            frozen: memory.frozen.as_deref(),
            index: &index,
        })
    }

    /// Why the store takes no more writes, if an append to its log failed
    /// (what reached the disk is unknown until a restart reads it back).
    pub fn failure(&self) -> Option<&'static str> {
        let wal = self
            .wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        wal.is_broken()
            .then_some("an append to the write-ahead log failed; restart to recover")
    }

    fn read_memory(&self) -> std::sync::RwLockReadGuard<'_, Memory> {
        self.memory
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_memory(&self) -> std::sync::RwLockWriteGuard<'_, Memory> {
        self.memory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The one writer's lock: batches, snapshot installs and epoch changes
    /// never interleave.
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let txn = durable_txn(&self.db)?;
        txn.open_table(META)?.insert(CLUSTER_ID, cluster_id)?;
        txn.commit()?;
        self.cluster_id.store(cluster_id, Ordering::Release);
        Ok(())
    }

    /// Durably records that this store is `--cluster` member `node`, or
    /// refuses if it is another member's.
    pub fn claim_node(&self, node: NodeId) -> Result<(), StorageError> {
        let wanted = u64::from(node) + 1;
        let txn = durable_txn(&self.db)?;
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
        let _writer = self.lock_writer();
        if epoch <= self.epoch() {
            return Ok(());
        }
        // Compared inside the write transaction: two raises at once never
        // leave the lower one on disk.
        let txn = durable_txn(&self.db)?;
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
}
