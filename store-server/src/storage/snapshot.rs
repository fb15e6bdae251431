//! Snapshots: a consistent copy of every table streamed out in chunks, and
//! one installed in place of a store's history chunk by chunk, the log
//! starting a new history after it.

use bytes::Bytes;
use redb::ReadableTable;
use store_protocol::peer::SnapshotRow;
use store_protocol::{Epoch, Tid, TxnId};

use super::{
    durable_txn, meta_number, new_generation, HistoryEnd, Memory, Storage, BATCH_EPOCH, DATA,
    GENERATION, INSTALLING, LAST_TID, LSN, META,
};
use crate::error::StorageError;
use crate::outcomes::{OUTCOMES, WATERMARKS};

impl Storage {
    /// Streams a consistent snapshot of every table: returns where its
    /// history ends, then hands `sink` chunks until done or `sink` returns
    /// `false`. A chunk holds at most `chunk_bytes` (about: 32 bytes are
    /// counted per row), or a single larger row. Runs on a blocking thread.
    pub fn snapshot(
        &self,
        chunk_bytes: usize,
        begin: impl FnOnce(HistoryEnd) -> bool,
        mut sink: impl FnMut(Vec<SnapshotRow>) -> bool,
    ) -> Result<(), StorageError> {
        // The pending rows into the index first: the snapshot is the index's.
        self.checkpoint()?;
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
            let bytes = bytes.saturating_add(32);
            // A row that would overflow the chunk starts the next one.
            if !chunk.is_empty() && size.saturating_add(bytes) > chunk_bytes {
                size = 0;
                if !sink(std::mem::take(&mut chunk)) {
                    return false;
                }
            }
            chunk.push(row);
            size = size.saturating_add(bytes);
            true
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

    /// Replaces every table with a snapshot's rows, in one transaction
    /// per chunk, so memory stays bounded whatever the store's size. The
    /// old history is forgotten first, durably (the store is an empty
    /// history until the last chunk lands, and one left half-installed by
    /// a crash is emptied at the next open); the snapshot's end becomes
    /// durable with its last chunk, and the log starts a new history after
    /// it. `rows` yields chunks until the snapshot ends
    /// ([`SnapshotPiece::Cut`]: it was cut short; the store stays an empty
    /// history and asks for a snapshot again). Returns whether it was
    /// installed.
    pub fn install_snapshot(
        &self,
        end: HistoryEnd,
        mut rows: impl FnMut() -> SnapshotPiece,
    ) -> Result<bool, StorageError> {
        let Some(next_lsn) = end.lsn.checked_add(1) else {
            return Err(StorageError::Diverged(format!(
                "a snapshot ending at LSN {}",
                end.lsn
            )));
        };
        let _writer = self.lock_writer();
        // No fold in progress: it would write the old history's rows.
        let _fold = self.lock_fold();
        {
            let mut memory = self.write_memory();
            let generation = new_generation();
            let txn = durable_txn(&self.db)?;
            forget_history(&txn, generation)?;
            txn.open_table(META)?.insert(INSTALLING, 1)?;
            txn.commit()?;
            *memory = Memory::default();
            self.lock_wal().reset(generation, 1)?;
            self.publish_end(HistoryEnd::default());
        }
        loop {
            let chunk = match rows() {
                SnapshotPiece::Rows(chunk) => chunk,
                SnapshotPiece::End => break,
                SnapshotPiece::Cut => {
                    // Nothing of a snapshot cut short stays.
                    let generation = new_generation();
                    self.lock_wal().reset(generation, 1)?;
                    let txn = durable_txn(&self.db)?;
                    forget_history(&txn, generation)?;
                    txn.open_table(META)?.remove(INSTALLING)?;
                    txn.commit()?;
                    return Ok(false);
                }
            };
            let mut txn = self.db.begin_write()?;
            txn.set_durability(redb::Durability::None);
            {
                let mut data = txn.open_table(DATA)?;
                let mut outcomes = txn.open_table(OUTCOMES)?;
                let mut watermarks = txn.open_table(WATERMARKS)?;
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
            txn.commit()?;
        }
        // The log's new history first: until the commit below, the store
        // is still marked installing, and a restart empties it.
        let generation = new_generation();
        self.lock_wal().reset(generation, next_lsn)?;
        let txn = durable_txn(&self.db)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(LAST_TID, end.last_tid.0)?;
            meta.insert(LSN, end.lsn)?;
            meta.insert(BATCH_EPOCH, end.batch_epoch.0)?;
            meta.insert(GENERATION, generation)?;
            meta.remove(INSTALLING)?;
        }
        // Durable (the default): every chunk with it.
        txn.commit()?;
        self.publish_end(end);
        Ok(true)
    }
}

/// Empties every table and the history's end in `txn`, under a new log
/// `generation`: the store is an empty history.
pub(super) fn forget_history(
    txn: &redb::WriteTransaction,
    generation: u64,
) -> Result<(), StorageError> {
    txn.delete_table(DATA)?;
    txn.delete_table(OUTCOMES)?;
    txn.delete_table(WATERMARKS)?;
    txn.open_table(DATA)?;
    txn.open_table(OUTCOMES)?;
    txn.open_table(WATERMARKS)?;
    let mut meta = txn.open_table(META)?;
    meta.insert(LAST_TID, 0)?;
    meta.insert(LSN, 0)?;
    meta.insert(BATCH_EPOCH, 0)?;
    meta.insert(GENERATION, generation)?;
    Ok(())
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
