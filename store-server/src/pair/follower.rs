//! The backup's side of replication: joins the primary, installs a
//! snapshot if it is sent one, applies each batch through the same apply
//! path the primary used (same state, same operations, the primary's
//! clock), and acknowledges once it is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use store_protocol::peer::{Batch, BatchOp, PeerRequest, PeerResponse, ReplAck, ReplFrame};
use store_protocol::{read_frame, write_frame, Tid};

use super::link::PEER_FRAME_LIMIT;
use super::replication::SyncState;
use super::Pair;
use crate::commit::invalidation;
use crate::storage::{HistoryEnd, Op, SnapshotPiece, Stamp};

/// Runs forever: follows the primary whenever this node is a backup that
/// knows one.
pub(super) async fn run(pair: Arc<Pair>) {
    let mut changes = pair.changed.subscribe();
    loop {
        let following = {
            let standing = pair.standing();
            !standing.is_primary() && standing.primary() == Some(1 - standing.me())
        };
        if !following {
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
            continue;
        }
        match follow(&pair).await {
            Ok(()) => {}
            Err(e) => tracing::info!(error = %e, "replication stream from the primary ended"),
        }
        pair.set_replication(SyncState::Alone, 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Pair {
    fn set_replication(&self, state: SyncState, lag: u64) {
        *self
            .replication
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (state, lag);
    }

    fn still_following(&self) -> bool {
        let standing = self.standing();
        !standing.is_primary() && standing.primary() == Some(1 - standing.me())
    }
}

async fn follow(pair: &Arc<Pair>) -> Result<(), String> {
    let end = pair.storage.history_end();
    let diverged = pair.diverged.load(Ordering::Acquire);
    let join = PeerRequest::Join {
        node: pair.config.me,
        epoch: pair.epoch(),
        batch_epoch: end.batch_epoch,
        // A history known to differ asks for a snapshot.
        lsn: if diverged { u64::MAX } else { end.lsn },
    };
    let (mut send, mut recv) = pair.peer.open(&join).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        read_frame::<_, PeerResponse>(&mut recv, PEER_FRAME_LIMIT),
    )
    .await
    .map_err(|_| "no answer to Join".to_string())?
    .map_err(|e| e.to_string())?;
    match answer {
        Some(PeerResponse::Recorded) => {}
        Some(PeerResponse::Denied {
            epoch,
            primary,
            reason,
        }) => {
            pair.accept_epoch(epoch, primary).await?;
            return Err(format!("join refused: {reason}"));
        }
        other => return Err(format!("unexpected answer to Join: {other:?}")),
    }
    tracing::info!(lsn = end.lsn, "following the primary");
    loop {
        if !pair.still_following() {
            return Ok(());
        }
        let frame = read_frame::<_, ReplFrame>(&mut recv, PEER_FRAME_LIMIT)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the primary closed the stream".to_string())?;
        let lsn = match frame {
            ReplFrame::SnapshotBegin {
                epoch,
                lsn,
                batch_epoch,
                last_tid,
            } => {
                pair.accept_epoch(epoch, Some(1 - pair.config.me)).await?;
                let end = HistoryEnd {
                    lsn,
                    batch_epoch,
                    last_tid,
                };
                install_snapshot(pair, &mut recv, end).await?;
                pair.diverged.store(false, Ordering::Release);
                lsn
            }
            ReplFrame::Batch(batch) => {
                pair.accept_epoch(batch.epoch, Some(1 - pair.config.me))
                    .await?;
                apply(pair, batch).await?
            }
            other => return Err(format!("unexpected frame {other:?}")),
        };
        pair.set_replication(SyncState::InSync, 0);
        write_frame(&mut send, &ReplAck { lsn }, PEER_FRAME_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
    }
}

/// Receives the snapshot's rows and installs them in one transaction.
async fn install_snapshot(
    pair: &Arc<Pair>,
    recv: &mut quinn::RecvStream,
    end: HistoryEnd,
) -> Result<(), String> {
    tracing::info!(
        lsn = end.lsn,
        last_tid = end.last_tid.0,
        "receiving a snapshot"
    );
    let started = std::time::Instant::now();
    let (rows_tx, rows) = std::sync::mpsc::sync_channel::<SnapshotPiece>(4);
    let storage = pair.storage.clone();
    let installer = tokio::task::spawn_blocking(move || {
        storage.install_snapshot(end, || rows.recv().unwrap_or(SnapshotPiece::Cut))
    });
    let mut count = 0usize;
    let received = loop {
        let frame = read_frame::<_, ReplFrame>(&mut *recv, PEER_FRAME_LIMIT).await;
        let piece = match frame {
            Ok(Some(ReplFrame::SnapshotRows(chunk))) => {
                count += chunk.len();
                SnapshotPiece::Rows(chunk)
            }
            Ok(Some(ReplFrame::SnapshotEnd)) => SnapshotPiece::End,
            Ok(other) => break Err(format!("unexpected frame in a snapshot: {other:?}")),
            Err(e) => break Err(e.to_string()),
        };
        let done = matches!(piece, SnapshotPiece::End);
        let rows_tx = rows_tx.clone();
        let sent = tokio::task::spawn_blocking(move || rows_tx.send(piece).is_ok())
            .await
            .unwrap_or(false);
        if !sent {
            break Err("the snapshot installer stopped".to_string());
        }
        if done {
            break Ok(());
        }
    };
    drop(rows_tx);
    let installed = installer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    received?;
    if !installed {
        return Err("snapshot cut short".into());
    }
    pair.invalidations.reset(end.last_tid);
    tracing::info!(
        rows = count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot installed"
    );
    Ok(())
}

/// Applies one batch through the primary's apply path and checks it lands
/// where it did on the primary; returns its LSN.
async fn apply(pair: &Arc<Pair>, batch: Batch) -> Result<u64, String> {
    let end = pair.storage.history_end();
    if batch.lsn <= end.lsn {
        // Already applied (a resent batch after a rejoin).
        return Ok(end.lsn);
    }
    if batch.lsn != end.lsn + 1 {
        return Err(format!(
            "batch {} does not follow this node's {}",
            batch.lsn, end.lsn
        ));
    }
    let storage = pair.storage.clone();
    let limits = pair.limits;
    let batch = Arc::new(batch);
    let applying = batch.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let ops: Vec<Op<'_>> = applying.ops.iter().map(Op::from).collect();
        let stamp = Stamp {
            now_ms: applying.now_ms,
            epoch: applying.epoch,
        };
        storage.apply_batch(&ops, &limits, stamp)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let last_tid = pair.storage.last_tid();
    if applied.lsn != Some(batch.lsn) || last_tid != batch.last_tid {
        pair.diverged.store(true, Ordering::Release);
        return Err(format!(
            "batch {} diverged: here lsn {:?} last_tid {}, primary last_tid {}",
            batch.lsn, applied.lsn, last_tid, batch.last_tid
        ));
    }
    // Keep the change log warm: after a failover, clients revalidate here.
    for (op, result) in batch.ops.iter().zip(&applied.results) {
        if let (BatchOp::Commit(request), Ok(c)) = (op, result) {
            if !c.replayed && c.tid > Tid(0) {
                pair.invalidations.publish(invalidation(c.tid, request));
            }
        }
    }
    Ok(batch.lsn)
}
