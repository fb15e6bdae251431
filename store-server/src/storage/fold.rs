//! Checkpoints: the rows in memory folded into the index in one durable
//! redb transaction. Once the rows in memory pass `checkpoint_bytes` they
//! are frozen and folded by the checkpointer thread while commits go on
//! (readers see the frozen rows over the index until the fold lands); a
//! writer that gets twice as far ahead waits for it. Without a
//! checkpointer thread (tests, tools) folds run inline.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::redo::{self, Tables};
use super::{durable_txn, Storage, BATCH_EPOCH, DATA, LAST_TID, LSN, META};
use crate::error::StorageError;
use crate::outcomes::{OUTCOMES, WATERMARKS};

/// The checkpointer's state, behind one mutex.
#[derive(Debug, Default)]
struct State {
    /// A checkpointer thread runs.
    running: bool,
    /// Frozen rows wait to be folded.
    wanted: bool,
    /// The checkpointer is to stop.
    stopping: bool,
    /// Folds done so far.
    done: u64,
}

/// Wakes the checkpointer, and tells writers when a fold is done.
#[derive(Debug, Default)]
pub(super) struct Signal {
    state: Mutex<State>,
    changed: Condvar,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage {
    /// Folds every row in memory into the index and makes it durable (one
    /// redb transaction and fsync), so that a restart replays nothing before
    /// it; then retires log segments the checkpoint and the retention
    /// window are past.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        let _fold = self.lock_fold();
        self.fold_frozen()?;
        self.freeze();
        self.fold_frozen()
    }

    /// After a batch landed: freezes the rows in memory once they pass
    /// `checkpoint_bytes` and has them folded, in the checkpointer thread if
    /// one runs; waits for a fold in progress if twice as far.
    pub(super) fn checkpoint_if_due(&self) -> Result<(), StorageError> {
        let threshold = usize::try_from(self.wal_config.checkpoint_bytes).unwrap_or(usize::MAX);
        let (bytes, folding) = {
            let memory = self.read_memory();
            (memory.active.bytes(), memory.frozen.is_some())
        };
        if bytes < threshold {
            return Ok(());
        }
        if folding && bytes >= threshold.saturating_mul(2) {
            self.wait_for_fold();
            return Ok(());
        }
        self.request_fold()
    }

    /// Has the rows in memory folded: by the checkpointer thread if one
    /// runs (returning at once), else here.
    pub(super) fn request_fold(&self) -> Result<(), StorageError> {
        if !self.folds.lock().running {
            return self.checkpoint();
        }
        self.freeze();
        self.folds.lock().wanted = true;
        self.folds.changed.notify_all();
        Ok(())
    }

    /// Runs the checkpointer until [`Storage::stop_checkpointer`]: folds
    /// frozen rows as they come. A fold the disk refuses stops the node.
    pub fn run_checkpointer(&self) {
        self.folds.lock().running = true;
        loop {
            {
                let mut state = self.folds.lock();
                while !state.wanted && !state.stopping {
                    state = self
                        .folds
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.stopping {
                    state.running = false;
                    return;
                }
                state.wanted = false;
            }
            let folded = {
                let _fold = self.lock_fold();
                self.fold_frozen()
            };
            if let Err(e) = folded {
                super::fail_stop(&e);
            }
        }
    }

    /// Stops the checkpointer thread (it finishes a fold in progress).
    pub fn stop_checkpointer(&self) {
        self.folds.lock().stopping = true;
        self.folds.changed.notify_all();
    }

    /// Moves the rows in memory aside to be folded, if none are already.
    fn freeze(&self) {
        let mut memory = self.write_memory();
        if memory.frozen.is_none() && !memory.active.is_empty() {
            let rows = std::mem::take(&mut memory.active);
            memory.frozen = Some(Arc::new(rows));
            // Published under the same lock as the rows: they match.
            memory.frozen_end = self.history_end();
        }
    }

    /// Folds the frozen rows into the index, durably; the caller holds the
    /// fold lock.
    fn fold_frozen(&self) -> Result<(), StorageError> {
        let (frozen, end) = {
            let memory = self.read_memory();
            match &memory.frozen {
                Some(frozen) => (frozen.clone(), memory.frozen_end),
                None => return Ok(()),
            }
        };
        let started = Instant::now();
        let txn = durable_txn(&self.db)?;
        {
            let mut tables = Tables {
                data: txn.open_table(DATA)?,
                outcomes: txn.open_table(OUTCOMES)?,
                watermarks: txn.open_table(WATERMARKS)?,
            };
            let mut applier = redo::Applier::default();
            applier.apply(&mut tables, frozen.changes().iter().cloned())?;
            applier.finish(&mut tables)?;
            let mut meta = txn.open_table(META)?;
            meta.insert(LAST_TID, end.last_tid.0)?;
            meta.insert(LSN, end.lsn)?;
            meta.insert(BATCH_EPOCH, end.batch_epoch.0)?;
        }
        txn.commit()?;
        self.write_memory().frozen = None;
        {
            let mut state = self.folds.lock();
            state.done += 1;
        }
        self.folds.changed.notify_all();
        tracing::debug!(
            lsn = end.lsn,
            bytes = frozen.bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint"
        );
        self.lock_wal().checkpointed(end.lsn)
    }

    /// Waits until the fold in progress is done (backpressure on a writer
    /// that got far ahead of the checkpointer).
    fn wait_for_fold(&self) {
        let mut state = self.folds.lock();
        let seen = state.done;
        while state.done == seen && state.running && self.read_memory().frozen.is_some() {
            state = self
                .folds
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub(super) fn lock_fold(&self) -> MutexGuard<'_, ()> {
        self.fold.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
