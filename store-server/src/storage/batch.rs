//! Deciding a batch of operations with one log append and one fsync:
//! commits (exactly once), resolves and expiries, each seeing the ones
//! before it.

use store_protocol::peer::BatchOp;
use store_protocol::{CommitRequest, Committed, Limits, Tid, TxnId, WireError};

use super::pending::{Layers, Pending};
use super::redo::{self, Change};
use super::rules::apply_commit;
use super::{HistoryEnd, Stamp, Storage};
use crate::error::StorageError;
use crate::outcomes::{self, Expiry, Known, Recorded, RecordedResult, Verdict, OUTCOMES};
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
        // One writer: no other batch, snapshot install or epoch change
        // interleaves with this one.
        let _writer = self.lock_writer();
        let accepted = self.epoch();
        if let Some((_, stamp)) = batches.iter().find(|(_, stamp)| stamp.epoch < accepted) {
            return Err(StorageError::Fenced {
                batch: stamp.epoch.0,
                accepted: accepted.0,
            });
        }
        let start = self.history_end();
        let (mut last, mut lsn) = (start.last_tid, start.lsn);
        let mut applied = Vec::with_capacity(batches.len());
        let mut records: Vec<(RecordHeader, Vec<u8>)> = Vec::new();
        let mut staged = Pending::default();
        {
            let pending = self.read_pending();
            let index = self.index()?;
            let mut layers = Layers {
                staged: Some(&mut staged),
                pending: &pending,
                index: &index,
            };
            for &(batch, stamp) in batches {
                let before = (last, layers.staged_len());
                let results = batch
                    .iter()
                    .map(|op| decide(&mut layers, op, &mut last, stamp.now_ms, limits))
                    .collect::<Result<Vec<_>, _>>()?;
                let redo = layers.staged_since(before.1);
                let batch_lsn = (!redo.is_empty()).then(|| {
                    lsn += 1;
                    lsn
                });
                if let Some(lsn) = batch_lsn {
                    let header = RecordHeader {
                        lsn,
                        epoch: stamp.epoch,
                        first_tid: if last > before.0 {
                            before.0.next()
                        } else {
                            Tid(0)
                        },
                        last_tid: last,
                    };
                    records.push((header, redo::encode(redo)?));
                }
                applied.push(Applied {
                    results,
                    lsn: batch_lsn,
                });
            }
        }
        let Some(&(end, _)) = records.last() else {
            // Only replays and refusals: nothing to make durable.
            return Ok(applied);
        };
        before_commit(&applied, last)?;
        self.lock_wal().append(&records)?;
        {
            // Readers see the batch and its TID together.
            let mut pending = self.write_pending();
            pending.merge(staged);
            self.publish_end(HistoryEnd {
                lsn,
                batch_epoch: end.epoch,
                last_tid: last,
            });
        }
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
        // The outcomes are read from the index: fold the pending ones in
        // (at most once a minute, so also a checkpoint by time).
        self.checkpoint()?;
        let txn = self.db.begin_read()?;
        let outcomes = txn.open_table(OUTCOMES)?;
        outcomes::expiries_before(&outcomes, before_ms)
    }
}

/// Decides one operation, in order after the ones before it: a commit
/// (exactly once), a resolve or an expiry; the rows it changes are staged.
fn decide(
    layers: &mut Layers<'_>,
    op: &Op<'_>,
    last: &mut Tid,
    now_ms: u64,
    limits: &Limits,
) -> Result<OpResult, StorageError> {
    Ok(match op {
        Op::Commit(request) => {
            let id = request.txn_id;
            expire(
                layers,
                Expiry {
                    client_id: id.client_id,
                    below: request.acked_below,
                },
            )?;
            match outcomes::verdict(&known(layers, id)?, Some(request.digest)) {
                Verdict::Answer(answer) => answer,
                Verdict::Wait => Err(WireError::InProgress),
                Verdict::Decide => {
                    let tid = last.next();
                    let decided = apply_commit(layers, request, tid, limits)?;
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
                    record(layers, id, &recorded)?;
                    decided.map(|results| Committed {
                        tid,
                        results,
                        replayed: false,
                    })
                }
            }
        }
        Op::Expire(expiry) => {
            expire(layers, *expiry)?;
            Ok(Committed {
                tid: Tid(0),
                results: Vec::new(),
                replayed: false,
            })
        }
        Op::Resolve(id) => match outcomes::verdict(&known(layers, *id)?, None) {
            Verdict::Answer(answer) => answer,
            Verdict::Wait => Err(WireError::InProgress),
            Verdict::Decide => {
                let abandoned = Recorded {
                    digest: 0,
                    at_ms: now_ms,
                    result: RecordedResult::Abandoned,
                };
                record(layers, *id, &abandoned)?;
                Err(WireError::Abandoned)
            }
        },
    })
}

/// What the store knows of `txn_id` (never [`Known::InFlight`]: that is
/// the commit pipeline's knowledge).
fn known(layers: &Layers<'_>, txn_id: TxnId) -> Result<Known, StorageError> {
    if txn_id.seq < layers.watermark(txn_id.client_id)? {
        return Ok(Known::Expired);
    }
    Ok(match layers.outcome((txn_id.client_id, txn_id.seq))? {
        Some(row) => Known::Recorded(outcomes::decode(txn_id, &row)?),
        None => Known::Unknown,
    })
}

/// Stages the outcome of `txn_id`.
fn record(layers: &mut Layers<'_>, txn_id: TxnId, recorded: &Recorded) -> Result<(), StorageError> {
    let row = outcomes::encode(recorded)?;
    layers.stage(Change::Outcome {
        client_id: txn_id.client_id,
        seq: txn_id.seq,
        record: row.into(),
    });
    Ok(())
}

/// Stages an expiry if it raises the client's watermark.
fn expire(layers: &mut Layers<'_>, expiry: Expiry) -> Result<(), StorageError> {
    if expiry.below > layers.watermark(expiry.client_id)? {
        layers.stage(Change::Expire {
            client_id: expiry.client_id,
            below: expiry.below,
        });
    }
    Ok(())
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
