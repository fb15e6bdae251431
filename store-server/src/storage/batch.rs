//! Deciding a batch of operations with one log append and one fsync:
//! commits (exactly once), resolves and expiries, each seeing the ones
//! before it.

use bytes::Bytes;
use store_protocol::{CommitRequest, Committed, Epoch, Limits, Tid, TxnId, WireError};

use redb::ReadableTable as _;

use super::pending::{Layers, Pending};
use super::redo::{self, Change};
use super::rules::apply_commit;
use super::{HistoryEnd, Stamp, Storage};
use crate::error::StorageError;
use crate::invalidation::Invalidation;
use crate::outcomes::{self, Expiry, Known, Recorded, RecordedResult, Verdict};
use crate::wal::RecordHeader;

/// Bytes of rows after which a batch stops taking operations: a log record
/// (and the replication frame that carries it) holds at most this plus one
/// transaction's rows (`max_txn_bytes`) and its outcome.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

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
    /// Decides a batch of operations with one log append and one fsync,
    /// in order, each seeing the ones before it.
    ///
    /// A commit is checked against its client's outcomes first (expired,
    /// replay, reused id; see `outcomes::verdict`), then applied under the
    /// next TID or refused; either way its outcome is recorded with the
    /// data, in the same log record. `Err` means nothing of the batch was
    /// applied or recorded here (though after a failed fsync the record may
    /// surface at the next start: the node stops, see [`fail_stop`]).
    ///
    /// Operations are decided until the record reaches
    /// [`MAX_RECORD_BYTES`]: the results may be fewer than the operations,
    /// and the rest are for the next batch.
    ///
    /// A batch stamped with an epoch older than the accepted one is refused
    /// ([`StorageError::Fenced`]): it comes from a deposed primary.
    /// `before_commit` sees the batch's log record before the fsync, if the
    /// batch changed anything: a primary ships it to its backup then, so
    /// that both disks write at once.
    ///
    /// [`fail_stop`]: super::fail_stop
    pub fn apply_batch(
        &self,
        batch: &[Op<'_>],
        limits: &Limits,
        stamp: Stamp,
        before_commit: impl FnOnce(&RecordHeader, &Bytes),
    ) -> Result<Applied, StorageError> {
        // One writer: no other batch, snapshot install or epoch change
        // interleaves with this one.
        let _writer = self.lock_writer();
        let accepted = self.epoch();
        if stamp.epoch < accepted {
            return Err(StorageError::Fenced {
                batch: stamp.epoch.0,
                accepted: accepted.0,
            });
        }
        let start = self.history_end();
        let mut last = start.last_tid;
        let mut staged = Pending::default();
        let results = self.with_layers(Some(&mut staged), |layers| {
            let mut results = Vec::with_capacity(batch.len());
            for op in batch {
                results.push(decide(layers, op, &mut last, stamp.now_ms, limits)?);
                if layers.staged_bytes() >= MAX_RECORD_BYTES {
                    break;
                }
            }
            Ok(results)
        })?;
        if staged.changes().is_empty() {
            // Only replays and refusals: nothing to make durable.
            return Ok(Applied { results, lsn: None });
        }
        let header = RecordHeader {
            lsn: start.lsn.saturating_add(1),
            epoch: stamp.epoch,
            first_tid: if last > start.last_tid {
                start.last_tid.next()
            } else {
                Tid(0)
            },
            last_tid: last,
        };
        let body = Bytes::from(redo::encode(staged.changes())?);
        before_commit(&header, &body);
        self.lock_wal().append(&[(header, &body[..])])?;
        self.land(staged, &header)?;
        Ok(Applied {
            results,
            lsn: Some(header.lsn),
        })
    }

    /// Applies records of the primary's log as they are (a backup), sent
    /// on a stream of epoch `epoch`: each must carry the next LSN and no
    /// later epoch, and a stream older than the accepted epoch (a deposed
    /// primary's) is refused. They are appended to this node's log with one
    /// fsync, then served. Returns the commits they hold, for the change
    /// log.
    pub fn apply_records(
        &self,
        records: &[(RecordHeader, &[u8])],
        epoch: Epoch,
    ) -> Result<Vec<Invalidation>, StorageError> {
        let _writer = self.lock_writer();
        let accepted = self.epoch();
        if epoch < accepted {
            return Err(StorageError::Fenced {
                batch: epoch.0,
                accepted: accepted.0,
            });
        }
        let start = self.history_end();
        let mut staged = Pending::default();
        let commits = self.with_layers(Some(&mut staged), |layers| {
            let mut commits = Vec::new();
            let mut before = start;
            for (header, body) in records {
                let diverged = |why: String| {
                    Err(StorageError::Diverged(format!(
                        "record {}: {why}",
                        header.lsn
                    )))
                };
                if Some(header.lsn) != before.lsn.checked_add(1) {
                    return diverged(format!("{} was due", before.lsn.saturating_add(1)));
                }
                if header.epoch > epoch || header.epoch < before.batch_epoch {
                    return diverged(format!(
                        "epoch {} after {}, on a stream of epoch {}",
                        header.epoch.0, before.batch_epoch.0, epoch.0
                    ));
                }
                // TIDs only go forward, each batch's from the one after
                // the last.
                let first_ok = header.first_tid == Tid(0)
                    || Some(header.first_tid.0) == before.last_tid.0.checked_add(1);
                let gap_ok = header.first_tid != Tid(0) || header.last_tid == before.last_tid;
                if !first_ok || !gap_ok || header.last_tid < header.first_tid {
                    return diverged(format!(
                        "TIDs {}..{} after {}",
                        header.first_tid.0, header.last_tid.0, before.last_tid.0
                    ));
                }
                before = HistoryEnd {
                    lsn: header.lsn,
                    batch_epoch: header.epoch,
                    last_tid: header.last_tid,
                };
                let Ok(changes) = redo::decode(header.lsn, body) else {
                    return diverged("its body does not decode".into());
                };
                commits.extend(redo::commits(&changes));
                for change in changes {
                    layers.stage(change)?;
                }
            }
            Ok(commits)
        })?;
        let Some((last, _)) = records.last() else {
            return Ok(commits);
        };
        self.lock_wal().append(records)?;
        self.land(staged, last)?;
        Ok(commits)
    }

    /// Serves rows that are durable in the log: pending rows and the end of
    /// history change together, as readers see them; then a checkpoint if
    /// one is due.
    fn land(&self, staged: Pending, last: &RecordHeader) -> Result<(), StorageError> {
        {
            let mut memory = self.write_memory();
            memory.active.merge(staged);
            self.publish_end(HistoryEnd {
                lsn: last.lsn,
                batch_epoch: last.epoch,
                last_tid: last.last_tid,
            });
        }
        self.checkpoint_if_due()
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
        // Asked at most once a minute: also a checkpoint by time.
        self.request_fold()?;
        self.with_layers(None, |layers| {
            let mut rows: Vec<(u128, u64, Vec<u8>)> = Vec::new();
            for row in layers.index.outcomes.iter()? {
                let (key, value) = row?;
                let (client_id, seq) = key.value();
                rows.push((client_id, seq, value.value().to_vec()));
            }
            for layer in [Some(layers.pending), layers.frozen].into_iter().flatten() {
                rows.extend(
                    layer
                        .outcome_rows()
                        .map(|(client_id, seq, row)| (client_id, seq, row.to_vec())),
                );
            }
            Ok(outcomes::expiries_before(
                rows.iter().map(|(c, s, row)| (*c, *s, &row[..])),
                before_ms,
            ))
        })
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
    })
}

/// Stages an expiry if it raises the client's watermark.
fn expire(layers: &mut Layers<'_>, expiry: Expiry) -> Result<(), StorageError> {
    if expiry.below > layers.watermark(expiry.client_id)? {
        layers.stage(Change::Expire {
            client_id: expiry.client_id,
            below: expiry.below,
        })?;
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

/// What one operation came to: a commit (new or replayed) or why not.
pub type OpResult = Result<Committed, WireError>;

/// Wall-clock milliseconds since the Unix epoch (outcome retention is a
/// wall-clock rule: "forgotten after 24 h").
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
