//! Deciding a batch of operations in one write transaction and one fsync:
//! commits (exactly once), resolves and expiries, each seeing the ones
//! before it.

use store_protocol::peer::BatchOp;
use store_protocol::{CommitRequest, Committed, Limits, Tid, TxnId, WireError};

use super::rules::apply_commit;
use super::{
    meta_number, HistoryEnd, Stamp, Storage, BATCH_EPOCH, DATA, EPOCH, LAST_TID, LSN, META,
};
use crate::error::StorageError;
use crate::outcomes::{self, Expiry, Prior, Recorded, RecordedResult, OUTCOMES, WATERMARKS};

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
