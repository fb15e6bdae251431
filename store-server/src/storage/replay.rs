//! Start-up: the log read back, and the records past the index's
//! checkpoint applied to it as one durable transaction.

use std::path::Path;
use std::sync::Arc;

use redb::Database;

use std::collections::VecDeque;

use store_protocol::Tid;

use super::redo::{self, Change, Tables};
use super::{durable_txn, HistoryEnd, BATCH_EPOCH, DATA, LAST_TID, LSN, META};
use crate::error::StorageError;
use crate::invalidation::{Invalidation, RecentChanges, DEFAULT_CHANGE_LOG_KEYS};
use crate::outcomes::{OUTCOMES, WATERMARKS};
use crate::wal::{Disk, Record, RecordHeader, Wal, WalConfig};

/// Where the index stands before the log is replayed.
pub(super) struct IndexState {
    /// The history's generation.
    pub generation: u64,
    /// Whether the generation was made at this open (a new store, or one
    /// from before the log): no segment is expected then.
    pub minted: bool,
    /// Where the index's history ends: its checkpoint.
    pub end: HistoryEnd,
}

/// Opens the log and replays every record past `index.end` into `db`;
/// returns the log, where the history ends now, and the commits the log
/// still holds (the newest [`DEFAULT_CHANGE_LOG_KEYS`] keys' worth) for the
/// change log. A log that does not
/// reach the index's checkpoint, or skips past it, is damage: some
/// acknowledged history is missing and the store refuses to start.
pub(super) fn replay_log(
    db: &Database,
    path: &Path,
    disk: Arc<dyn Disk>,
    index: IndexState,
    config: WalConfig,
) -> Result<(Wal, HistoryEnd, RecentChanges), StorageError> {
    let checkpoint = index.end.lsn;
    let damaged =
        |detail: String| StorageError::damaged(&path.with_file_name(super::WAL_DIR), detail);
    let txn = durable_txn(db)?;
    let mut first: Option<u64> = None;
    let mut last: Option<RecordHeader> = None;
    let mut recent = Recent::default();
    let wal = {
        let mut tables = Tables {
            data: txn.open_table(DATA)?,
            outcomes: txn.open_table(OUTCOMES)?,
            watermarks: txn.open_table(WATERMARKS)?,
        };
        let mut applier = redo::Applier::default();
        let wal = Wal::open(
            disk,
            index.generation,
            checkpoint.saturating_add(1),
            config,
            |record: Record| {
                first.get_or_insert(record.header.lsn);
                let changes = redo::decode(record.header.lsn, &record.body)?;
                recent.add(&record.header, &changes);
                if record.header.lsn > checkpoint {
                    applier.apply(&mut tables, changes)?;
                    last = Some(record.header);
                }
                Ok(())
            },
        )?;
        applier.finish(&mut tables)?;
        wal
    };
    let reach = LogReach {
        first,
        next_lsn: wal.next_lsn(),
        holds_history: wal.holds_history(),
    };
    if let Err(detail) = reach.covers(checkpoint, index.minted) {
        return Err(damaged(detail));
    }
    let Some(last) = last else {
        txn.abort()?;
        return Ok((wal, index.end, recent.into_changes(index.end.last_tid)));
    };
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(LAST_TID, last.last_tid.0)?;
        meta.insert(LSN, last.lsn)?;
        meta.insert(BATCH_EPOCH, last.epoch.0)?;
    }
    txn.commit()?;
    tracing::info!(
        from = checkpoint.saturating_add(1),
        to = last.lsn,
        "replayed the log past the index's checkpoint"
    );
    let mut wal = wal;
    wal.checkpointed(last.lsn)?;
    Ok((
        wal,
        HistoryEnd {
            lsn: last.lsn,
            batch_epoch: last.epoch,
            last_tid: last.last_tid,
        },
        recent.into_changes(last.last_tid),
    ))
}

/// The commits read back, bounded by keys: the oldest are forgotten first.
#[derive(Default)]
struct Recent {
    horizon: Option<Tid>,
    commits: VecDeque<Invalidation>,
    keys: usize,
}

impl Recent {
    fn add(&mut self, header: &RecordHeader, changes: &[Change]) {
        self.horizon.get_or_insert(if header.first_tid > Tid(0) {
            Tid(header.first_tid.0 - 1)
        } else {
            header.last_tid
        });
        for commit in redo::commits(changes) {
            self.keys += commit.keys.len();
            self.commits.push_back(commit);
        }
        while self.keys > DEFAULT_CHANGE_LOG_KEYS {
            let Some(oldest) = self.commits.pop_front() else {
                break;
            };
            self.keys -= oldest.keys.len();
            self.horizon = Some(oldest.tid);
        }
    }

    /// The commits read back; with none (a log emptied by a restore, or
    /// recycled), the horizon is the history's end `last_tid`: nothing is
    /// known of the commits before it, so a cache older than it is dropped.
    fn into_changes(self, last_tid: Tid) -> RecentChanges {
        RecentChanges {
            horizon: self.horizon.unwrap_or(last_tid),
            commits: self.commits.into(),
        }
    }
}

/// How far a log reaches, as read at open.
pub(super) struct LogReach {
    /// Its first record's LSN, if it holds any.
    pub first: Option<u64>,
    /// The LSN its next record will carry.
    pub next_lsn: u64,
    /// Whether it holds a segment of the history.
    pub holds_history: bool,
}

impl LogReach {
    /// Whether the log carries the history on from an index checkpointed
    /// at `checkpoint` (`minted`: the history began at this open), or what
    /// is missing.
    pub fn covers(&self, checkpoint: u64, minted: bool) -> Result<(), String> {
        if let Some(first) = self
            .first
            .filter(|&first| first > checkpoint.saturating_add(1))
        {
            return Err(format!(
                "the log starts at LSN {first}, after the index's checkpoint at {checkpoint}: \
                 the records between are missing"
            ));
        }
        if self.next_lsn <= checkpoint {
            return Err(format!(
                "the log ends at LSN {}, before the index's checkpoint at {checkpoint}",
                self.next_lsn.saturating_sub(1)
            ));
        }
        if !self.holds_history && checkpoint > 0 && !minted {
            return Err(format!(
                "it holds no segment of this store's history (which reaches LSN {checkpoint}): \
                 was it deleted or moved?"
            ));
        }
        Ok(())
    }
}
