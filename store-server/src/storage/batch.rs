//! Deciding a batch of operations in one write transaction and one fsync:
//! commits (exactly once), resolves and expiries, each seeing the ones
//! before it.

use store_protocol::peer::BatchOp;
use store_protocol::{CommitRequest, Committed, Limits, Tid, TxnId, WireError};

use redb::Durability;

use super::redo::{self, Change, Tables};
use super::rules::apply_commit;
use super::{
    meta_number, HistoryEnd, Stamp, Storage, BATCH_EPOCH, DATA, EPOCH, LAST_TID, LSN, META,
};
use crate::error::StorageError;
use crate::outcomes::{self, Expiry, Recorded, RecordedResult, Verdict, OUTCOMES, WATERMARKS};
use crate::wal::RecordHeader;

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
        let mut txn = self.db.begin_write()?;
        // The log makes the batch durable; the index is made durable at
        // checkpoints.
        txn.set_durability(Durability::None);
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
        let mut records: Vec<(RecordHeader, Vec<u8>)> = Vec::new();
        {
            let mut tables = Tables {
                data: txn.open_table(DATA)?,
                outcomes: txn.open_table(OUTCOMES)?,
                watermarks: txn.open_table(WATERMARKS)?,
            };
            for &(batch, stamp) in batches {
                let before = last;
                let mut redo = Vec::new();
                let results = batch
                    .iter()
                    .map(|op| decide(&mut tables, op, &mut last, stamp.now_ms, limits, &mut redo))
                    .collect::<Result<Vec<_>, _>>()?;
                let batch_lsn = (!redo.is_empty()).then(|| {
                    lsn += 1;
                    lsn
                });
                if let Some(lsn) = batch_lsn {
                    let header = RecordHeader {
                        lsn,
                        epoch: stamp.epoch,
                        first_tid: if last > before { before.next() } else { Tid(0) },
                        last_tid: last,
                    };
                    records.push((header, redo::encode(&redo)?));
                }
                applied.push(Applied {
                    results,
                    lsn: batch_lsn,
                });
            }
        }
        let Some(&(end, _)) = records.last() else {
            // Only replays and refusals: nothing to make durable.
            txn.abort()?;
            return Ok(applied);
        };
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(LAST_TID, last.0)?;
            meta.insert(LSN, lsn)?;
            meta.insert(BATCH_EPOCH, end.epoch.0)?;
        }
        if let Err(refused) = before_commit(&applied, last) {
            txn.abort()?;
            return Err(refused);
        }
        self.lock_wal().append(&records)?;
        txn.commit()?;
        self.publish_end(HistoryEnd {
            lsn,
            batch_epoch: end.epoch,
            last_tid: last,
        });
        self.checkpoint_if_due()?;
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

/// Decides one operation, in order after the ones before it: a commit
/// (exactly once), a resolve or an expiry. Rows it changes go to `redo`.
fn decide(
    tables: &mut Tables<'_>,
    op: &Op<'_>,
    last: &mut Tid,
    now_ms: u64,
    limits: &Limits,
    redo: &mut Vec<Change>,
) -> Result<OpResult, StorageError> {
    let expire = |tables: &mut Tables<'_>, expiry: Expiry, redo: &mut Vec<Change>| {
        if outcomes::expire(&mut tables.watermarks, &mut tables.outcomes, expiry)? {
            redo.push(Change::Expire {
                client_id: expiry.client_id,
                below: expiry.below,
            });
        }
        Ok::<_, StorageError>(())
    };
    let record =
        |tables: &mut Tables<'_>, id: TxnId, recorded: &Recorded, redo: &mut Vec<Change>| {
            let row = outcomes::record(&mut tables.outcomes, id, recorded)?;
            redo.push(Change::Outcome {
                client_id: id.client_id,
                seq: id.seq,
                record: row.into(),
            });
            Ok::<_, StorageError>(())
        };
    Ok(match op {
        Op::Commit(request) => {
            let id = request.txn_id;
            let acked = Expiry {
                client_id: id.client_id,
                below: request.acked_below,
            };
            expire(tables, acked, redo)?;
            let known = outcomes::known(&tables.watermarks, &tables.outcomes, id)?;
            match outcomes::verdict(&known, Some(request.digest)) {
                Verdict::Answer(answer) => answer,
                Verdict::Wait => Err(WireError::InProgress),
                Verdict::Decide => {
                    let tid = last.next();
                    let decided = apply_commit(&mut tables.data, request, tid, limits, redo)?;
                    let result = match &decided {
                        Ok(results) => {
                            *last = tid;
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
                    record(tables, id, &recorded, redo)?;
                    decided.map(|results| Committed {
                        tid,
                        results,
                        replayed: false,
                    })
                }
            }
        }
        Op::Expire(expiry) => {
            expire(tables, *expiry, redo)?;
            Ok(Committed {
                tid: Tid(0),
                results: Vec::new(),
                replayed: false,
            })
        }
        Op::Resolve(id) => match outcomes::verdict(
            &outcomes::known(&tables.watermarks, &tables.outcomes, *id)?,
            None,
        ) {
            Verdict::Answer(answer) => answer,
            Verdict::Wait => Err(WireError::InProgress),
            Verdict::Decide => {
                let abandoned = Recorded {
                    digest: 0,
                    at_ms: now_ms,
                    result: RecordedResult::Abandoned,
                };
                record(tables, *id, &abandoned, redo)?;
                Err(WireError::Abandoned)
            }
        },
    })
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
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
