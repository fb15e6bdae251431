//! The primary's side of replication: keeps recent batches in memory,
//! streams them (or a snapshot first) to a joined backup, and answers the
//! callers of each durable batch when [`Replication`] says so.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::clock::Instant;

use store_protocol::peer::{Batch, LogPosition, PeerRequest, PeerResponse, ReplAck, ReplFrame};
use store_protocol::{read_frame, write_frame, Epoch, WireError};
use tokio::sync::mpsc;

use super::link::{repl_frame_limit, PEER_FRAME_LIMIT};
use super::replication::Replication;
use super::{Pair, Voucher};
use crate::commit::{Durable, ToReplicator};

/// Most batches kept in memory for a backup that falls behind; older ones
/// are read from the write-ahead log, and past that it gets a snapshot.
const LOG_MAX_BATCHES: usize = 10_000;
/// Most bytes of batches kept in memory (approximately).
const LOG_MAX_BYTES: usize = 16 << 20;
/// Largest frame a backup sends back: an ack is a few bytes.
const ACK_FRAME_LIMIT: u32 = 64;
/// Snapshot rows per frame, in bytes (approximately).
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Recent durable batches, in LSN order, for backups catching up.
pub struct ReplLog {
    first: u64,
    batches: VecDeque<(Arc<Batch>, usize)>,
    bytes: usize,
}

impl ReplLog {
    /// An empty log whose next batch is `next`.
    pub fn new(next: u64) -> ReplLog {
        ReplLog {
            first: next,
            batches: VecDeque::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, batch: Arc<Batch>) {
        if batch.lsn != self.first + self.batches.len() as u64 {
            // A gap (a new epoch after a snapshot): start over from here.
            self.batches.clear();
            self.bytes = 0;
            self.first = batch.lsn;
        }
        let size = batch_size(&batch);
        self.bytes += size;
        self.batches.push_back((batch, size));
        while self.batches.len() > LOG_MAX_BATCHES || self.bytes > LOG_MAX_BYTES {
            if let Some((_, size)) = self.batches.pop_front() {
                self.bytes -= size;
                self.first += 1;
            }
        }
    }

    /// Bytes of the batches after `after` up to `head` still in memory:
    /// all of them, unless the oldest were already dropped (then a lower
    /// bound).
    pub fn bytes_after(&self, after: u64, head: u64) -> u64 {
        self.batches
            .iter()
            .filter(|(batch, _)| batch.lsn > after && batch.lsn <= head)
            .map(|(_, size)| *size as u64)
            .sum()
    }

    fn get(&self, lsn: u64) -> Option<&Arc<Batch>> {
        let index = usize::try_from(lsn.checked_sub(self.first)?).ok()?;
        self.batches.get(index).map(|(batch, _)| batch)
    }
}

fn batch_size(batch: &Batch) -> usize {
    batch.body.len() + 64
}

/// What reaches the replicator besides durable batches.
pub enum ReplEvent {
    /// A backup joined on stream `generation`, its history ending at `lsn`
    /// (0 when it is being sent a snapshot).
    Joined { generation: u64, lsn: u64 },
    /// The backup acknowledged everything up to `lsn`.
    Acked { generation: u64, lsn: u64 },
    /// Stream `generation` ended.
    Lost { generation: u64 },
    /// The witness answered an ask of the term of `epoch` (`Some(recorded)`)
    /// or could not be asked.
    Witness {
        epoch: Epoch,
        recorded: Option<bool>,
    },
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Runs the replicator until the pipeline stops.
pub(super) async fn run(
    pair: Arc<Pair>,
    mut committer: mpsc::Receiver<ToReplicator>,
    mut events: mpsc::Receiver<ReplEvent>,
) {
    let mut machine: Term = None;
    let mut waiting: VecDeque<Durable> = VecDeque::new();
    // The current replication stream: its generation and the backup's
    // acknowledged LSN.
    let mut stream: Option<(u64, u64)> = None;
    // Woken by the committer, the stream, a change of the standing (a term
    // starts or ends), or the replication's own timeout.
    let mut changed = pair.changed.subscribe();
    loop {
        let timeout = machine.as_ref().and_then(|(_, r)| r.poll_timeout());
        let sleep = async {
            match timeout {
                Some(at) => tokio::time::sleep(at.remaining()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            from_committer = committer.recv() => match from_committer {
                Some(ToReplicator::Ship(batch)) => {
                    // The first batch of a term may come before the tick
                    // that notices the term: take office first, so the
                    // log it starts is not reset under this batch.
                    follow_standing(&pair, &mut machine, &mut waiting, stream);
                    pair.lock_log().push(batch);
                    pair.log_grew.notify_waiters();
                }
                Some(ToReplicator::Durable(batch)) => {
                    let now = Instant::now();
                    if let Some((_, replication)) = machine.as_mut() {
                        replication.durable(batch.batch.as_ref().map(|b| b.lsn), now);
                        waiting.push_back(batch);
                    } else {
                        batch.release(&pair.invalidations, Some(&unconfirmed(&pair)));
                    }
                }
                None => break,
            },
            Some(event) = events.recv() => {
                // The stream is tracked even before this node's machine
                // starts (a backup may join first).
                match event {
                    ReplEvent::Joined { generation, lsn } => {
                        tracing::debug!(generation, lsn, machine = machine.is_some(), "stream joined");
                        stream = Some((generation, lsn));
                        pair.backup_acked.store(lsn, Ordering::Release);
                    }
                    ReplEvent::Acked { generation: g, lsn } => {
                        if let Some((_, acked)) = stream.as_mut().filter(|(s, _)| *s == g) {
                            *acked = (*acked).max(lsn);
                            pair.backup_acked.fetch_max(lsn, Ordering::AcqRel);
                        }
                    }
                    ReplEvent::Lost { generation: g } if stream.is_some_and(|(s, _)| s == g) => {
                        stream = None;
                    }
                    _ => {}
                }
                if let Some((machine_epoch, replication)) = machine.as_mut() {
                    match event {
                        ReplEvent::Joined { lsn, .. } => replication.joined(lsn),
                        ReplEvent::Acked { generation: g, lsn } if stream.is_some_and(|(s, _)| s == g) => {
                            replication.acked(lsn);
                        }
                        ReplEvent::Lost { generation: g } if stream.is_none_or(|(s, _)| s == g) => {
                            replication.lost();
                        }
                        // An answer to an ask of an earlier term means nothing now.
                        ReplEvent::Witness { epoch, recorded } if epoch == *machine_epoch => {
                            match recorded {
                                Some(in_sync) => replication.recorded(in_sync),
                                None => replication.ask_failed(),
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ = changed.changed() => {}
            () = sleep => {}
        }
        follow_standing(&pair, &mut machine, &mut waiting, stream);
        let Some((epoch, replication)) = machine.as_mut() else {
            continue;
        };
        let before = replication.state();
        let ready = replication.ready(Instant::now());
        if replication.state() != before || ready.ask_witness.is_some() {
            tracing::debug!(from = ?before, to = ?replication.state(), lag = replication.lag(), ask = ?ready.ask_witness, "replication state");
        }
        pair.set_replication(replication.state());
        // Re-check the lease before answering: a primary that lost it says
        // NotPrimary, and the client's resend is answered by the new one.
        let refuse = (!pair.serving()).then(|| unconfirmed(&pair));
        for batch in waiting.drain(..ready.release) {
            if let (None, Some(shipped)) = (&refuse, &batch.batch) {
                pair.set_acked(LogPosition {
                    epoch: shipped.epoch,
                    lsn: shipped.lsn,
                });
            }
            batch.release(&pair.invalidations, refuse.as_ref());
        }
        if let Some(in_sync) = ready.ask_witness {
            tokio::spawn(record_backup(pair.clone(), *epoch, in_sync));
        }
    }
    for batch in waiting.drain(..) {
        batch.release(&pair.invalidations, Some(&unconfirmed(&pair)));
    }
}

/// A term of office, and the primary's view of its backup in it.
type Term = Option<(Epoch, Replication)>;

/// Follows the standing: a new epoch as primary starts a new term; a
/// deposed primary answers what waits with NotPrimary.
fn follow_standing(
    pair: &Pair,
    machine: &mut Term,
    waiting: &mut VecDeque<Durable>,
    stream: Option<(u64, u64)>,
) {
    let (is_primary, epoch) = {
        let standing = pair.standing();
        (standing.is_primary(), standing.epoch())
    };
    if matches!(machine, Some((e, _)) if is_primary && *e == epoch) {
        return;
    }
    for batch in waiting.drain(..) {
        batch.release(&pair.invalidations, Some(&unconfirmed(pair)));
    }
    *machine = is_primary.then(|| {
        let end = pair.storage.history_end().lsn;
        *pair.lock_log() = ReplLog::new(end.saturating_add(1));
        tracing::info!(epoch = epoch.0, lsn = end, "replicating as primary");
        let mut replication = Replication::new(end, pair.config.lease.replication_timeout);
        // A backup that joined before this node took office.
        if let Some((_, acked)) = stream {
            replication.joined(acked);
        }
        (epoch, replication)
    });
}

/// The answer to the callers of a batch that is durable here but that
/// this node, no longer primary, cannot confirm: it may have been applied,
/// and the new primary answers the resend.
fn unconfirmed(pair: &Pair) -> WireError {
    WireError::Unconfirmed {
        epoch: pair.epoch(),
    }
}

/// Asks the witness to record the backup in or out of sync.
async fn record_backup(pair: Arc<Pair>, epoch: Epoch, in_sync: bool) {
    let request = PeerRequest::SetInSync { epoch, in_sync };
    let answer = pair.witness.request(&request, Duration::from_secs(1)).await;
    tracing::debug!(?answer, in_sync, "witness answered");
    let recorded = match answer {
        Ok(PeerResponse::Recorded) => {
            if in_sync {
                tracing::info!("backup caught up: recorded in sync");
            } else {
                tracing::warn!("backup not acknowledging: recorded out of sync, going on alone");
            }
            pair.set_note("");
            Some(in_sync)
        }
        Ok(PeerResponse::Denied {
            epoch,
            primary,
            reason,
        }) => {
            tracing::warn!(%reason, "the witness refused to record the backup");
            let _ = pair.accept_epoch(epoch, primary, Voucher::Witness).await;
            None
        }
        Ok(other) => {
            tracing::warn!(?other, "unexpected witness answer");
            None
        }
        Err(e) => {
            if !in_sync {
                pair.set_note(format!(
                    "backup lost and witness unreachable ({e}): commits wait"
                ));
            }
            None
        }
    };
    if recorded.is_none() {
        // Do not hammer an unreachable witness.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = pair
        .events
        .send(ReplEvent::Witness { epoch, recorded })
        .await;
}

impl Pair {
    pub(super) fn lock_log(&self) -> std::sync::MutexGuard<'_, ReplLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a joining backup's history ends.
pub(super) struct Joiner {
    pub epoch: Epoch,
    pub batch_epoch: Epoch,
    pub lsn: u64,
    /// The cluster of the joiner's store (0: an empty store).
    pub cluster_id: u64,
}

/// Serves a backup's `Join`: a snapshot if its history is not a prefix of
/// this node's (or the log no longer reaches back to it), then every batch
/// from there on, as it becomes durable.
pub(super) async fn serve_join(
    pair: Arc<Pair>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    joiner: Joiner,
) {
    let epoch = pair.epoch();
    let refusal = if !pair.standing().is_primary() {
        Some("not the primary")
    } else if joiner.epoch > epoch {
        Some("the backup knows a later epoch")
    } else if joiner.cluster_id != 0 && joiner.cluster_id != pair.storage.cluster_id() {
        Some("the backup's store belongs to another cluster")
    } else {
        None
    };
    if let Some(reason) = refusal {
        let answer = pair.denied(reason.into());
        let _ = write_frame(&mut send, &answer, PEER_FRAME_LIMIT).await;
        let _ = send.finish();
        return;
    }
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let result = stream_history(&pair, &mut send, recv, &joiner, generation).await;
    if let Err(e) = result {
        tracing::info!(error = %e, "replication stream ended");
    }
    let _ = pair.events.send(ReplEvent::Lost { generation }).await;
}

async fn stream_history(
    pair: &Arc<Pair>,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
    joiner: &Joiner,
    generation: u64,
) -> Result<(), String> {
    let _ = send.set_priority(-1);
    let following = PeerResponse::Following {
        cluster_id: pair.storage.cluster_id(),
        limits: pair.limits,
        epoch: pair.epoch(),
    };
    write_frame(send, &following, PEER_FRAME_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    let end = pair.storage.history_end();
    let in_memory = {
        let log = pair.lock_log();
        let same_end = joiner.lsn == end.lsn && joiner.batch_epoch == end.batch_epoch;
        let in_log = log
            .get(joiner.lsn)
            .is_some_and(|batch| batch.epoch == joiner.batch_epoch);
        let reachable = joiner.lsn.saturating_add(1) >= log.first;
        (same_end || in_log) && reachable
    };
    let prefix = joiner.lsn <= end.lsn && (in_memory || in_write_ahead_log(pair, joiner).await);
    // The last batch shipped on this stream: an ack beyond it claims
    // durability of history the backup was never sent, and ends the stream.
    let shipped = Arc::new(AtomicU64::new(if prefix { joiner.lsn } else { 0 }));
    let acks = pair.events.clone();
    let shipped_so_far = shipped.clone();
    let mut ack_reader = tokio::spawn(async move {
        while let Ok(Some(ack)) = read_frame::<_, ReplAck>(&mut recv, ACK_FRAME_LIMIT).await {
            let limit = shipped_so_far.load(Ordering::Acquire);
            if ack.lsn > limit {
                tracing::warn!(
                    ack = ack.lsn,
                    shipped = limit,
                    "backup acked a batch never shipped; ending the stream"
                );
                break;
            }
            let _ = acks
                .send(ReplEvent::Acked {
                    generation,
                    lsn: ack.lsn,
                })
                .await;
        }
        let _ = acks.send(ReplEvent::Lost { generation }).await;
    });
    let repl_limit = repl_frame_limit(&pair.limits);
    let outcome = async {
        let mut next = if prefix {
            tracing::info!(from = joiner.lsn, "backup joined: shipping the log");
            let _ = pair
                .events
                .send(ReplEvent::Joined {
                    generation,
                    lsn: joiner.lsn,
                })
                .await;
            joiner.lsn.saturating_add(1)
        } else {
            let _ = pair
                .events
                .send(ReplEvent::Joined { generation, lsn: 0 })
                .await;
            send_snapshot(pair, send, &shipped).await?.saturating_add(1)
        };
        loop {
            let grew = pair.log_grew.notified();
            let batch = {
                let log = pair.lock_log();
                (next >= log.first).then(|| log.get(next).cloned())
            };
            let Some(batch) = batch else {
                // Older than the batches kept in memory: from the log on
                // disk, or the backup rejoins and gets a snapshot.
                let batches = from_write_ahead_log(pair, next).await?;
                for batch in batches {
                    shipped.fetch_max(batch.lsn, Ordering::AcqRel);
                    write_frame(send, &ReplFrame::Batch(batch), repl_limit)
                        .await
                        .map_err(|e| e.to_string())?;
                    next += 1;
                }
                continue;
            };
            match batch {
                Some(batch) => {
                    shipped.fetch_max(batch.lsn, Ordering::AcqRel);
                    write_frame(send, &ReplFrame::Batch((*batch).clone()), repl_limit)
                        .await
                        .map_err(|e| e.to_string())?;
                    next += 1;
                }
                None => {
                    if !pair.standing().is_primary() {
                        return Err("no longer primary".to_string());
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(200), grew).await;
                }
            }
        }
    };
    // The stream ends with whichever side ends first: a backup whose acks
    // stop (or go beyond what it was sent) is shipped nothing more.
    let outcome = tokio::select! {
        outcome = outcome => outcome,
        _ = &mut ack_reader => Err("the backup's acknowledgements ended".to_string()),
    };
    ack_reader.abort();
    outcome
}

/// Bytes of log records read from disk at a time for a backup catching up.
const CATCH_UP_BYTES: usize = 1 << 20;

/// Whether this node's write-ahead log still holds the joiner's last batch
/// (an empty history is a prefix of any the log holds from its start):
/// then the backup catches up from the log, not from a snapshot.
async fn in_write_ahead_log(pair: &Arc<Pair>, joiner: &Joiner) -> bool {
    let storage = pair.storage.clone();
    let (lsn, epoch) = (joiner.lsn, joiner.batch_epoch);
    let found = tokio::task::spawn_blocking(move || storage.log_from(lsn.max(1), 1)).await;
    match found {
        Ok(Ok(records)) => records.first().is_some_and(|record| {
            if lsn == 0 {
                record.header.lsn == 1
            } else {
                record.header.lsn == lsn && record.header.epoch == epoch
            }
        }),
        _ => false,
    }
}

/// The batches from `next` on read from this node's write-ahead log (about
/// [`CATCH_UP_BYTES`]), or why the backup must rejoin.
async fn from_write_ahead_log(pair: &Arc<Pair>, next: u64) -> Result<Vec<Batch>, String> {
    let storage = pair.storage.clone();
    let records = tokio::task::spawn_blocking(move || storage.log_from(next, CATCH_UP_BYTES))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if records
        .first()
        .is_none_or(|record| record.header.lsn != next)
    {
        return Err("the backup fell behind the log; it will rejoin".to_string());
    }
    Ok(records
        .into_iter()
        .map(|record| Batch {
            epoch: record.header.epoch,
            lsn: record.header.lsn,
            first_tid: record.header.first_tid,
            last_tid: record.header.last_tid,
            body: record.body.into(),
        })
        .collect())
}

/// Streams a snapshot of the whole store; returns its LSN (recorded in
/// `shipped` before the snapshot's first frame goes out).
async fn send_snapshot(
    pair: &Arc<Pair>,
    send: &mut quinn::SendStream,
    shipped: &AtomicU64,
) -> Result<u64, String> {
    let (frames_tx, mut frames) = mpsc::channel::<ReplFrame>(4);
    let storage = pair.storage.clone();
    let epoch = pair.epoch();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lsn = 0;
        let result = storage.snapshot(
            SNAPSHOT_CHUNK_BYTES,
            |end| {
                lsn = end.lsn;
                frames_tx
                    .blocking_send(ReplFrame::SnapshotBegin {
                        epoch,
                        lsn: end.lsn,
                        batch_epoch: end.batch_epoch,
                        last_tid: end.last_tid,
                    })
                    .is_ok()
            },
            |rows| {
                frames_tx
                    .blocking_send(ReplFrame::SnapshotRows(rows))
                    .is_ok()
            },
        );
        let _ = frames_tx.blocking_send(ReplFrame::SnapshotEnd);
        // A snapshot folds rows into the index first: a disk that refuses
        // that stops the node, as any refused write does.
        match result {
            Ok(()) => Ok::<u64, String>(lsn),
            Err(e) => crate::storage::fail_stop(&e),
        }
    });
    let started = Instant::now();
    let mut rows = 0usize;
    while let Some(frame) = frames.recv().await {
        match &frame {
            ReplFrame::SnapshotRows(chunk) => rows += chunk.len(),
            ReplFrame::SnapshotBegin { lsn, .. } => {
                shipped.store(*lsn, Ordering::Release);
            }
            _ => {}
        }
        write_frame(send, &frame, repl_frame_limit(&pair.limits))
            .await
            .map_err(|e| e.to_string())?;
    }
    let lsn = reader.await.map_err(|e| e.to_string())??;
    tracing::info!(
        lsn,
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot sent"
    );
    Ok(lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lsn: u64) -> Arc<Batch> {
        Arc::new(Batch {
            epoch: Epoch(1),
            lsn,
            first_tid: store_protocol::Tid(lsn),
            last_tid: store_protocol::Tid(lsn),
            body: bytes::Bytes::new(),
        })
    }

    #[test]
    fn the_log_keeps_batches_in_order_and_restarts_at_a_gap() {
        let mut log = ReplLog::new(5);
        log.push(batch(5));
        log.push(batch(6));
        assert_eq!(log.get(6).map(|b| b.lsn), Some(6));
        assert!(log.get(4).is_none());
        log.push(batch(9));
        assert_eq!(log.first, 9);
        assert!(log.get(6).is_none());
    }
}
