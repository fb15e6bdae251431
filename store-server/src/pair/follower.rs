//! The backup's side of replication: joins the primary, installs a
//! snapshot if it is sent one, applies each batch through the same apply
//! path the primary used (same state, same operations, the primary's
//! clock), and acknowledges once it is durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use store_protocol::peer::{Batch, PeerRequest, PeerResponse, ReplAck, ReplFrame};
use store_protocol::{read_frame, write_frame, Epoch};
use tokio::sync::mpsc;

use super::link::{repl_frame_limit, PEER_FRAME_LIMIT};
use super::replication::SyncState;
use super::{Pair, Voucher};
use crate::error::StorageError;
use crate::storage::{HistoryEnd, SnapshotPiece};
use crate::wal::RecordHeader;

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
        pair.set_replication(SyncState::Alone);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Pair {
    fn still_following(&self) -> bool {
        let standing = self.standing();
        !standing.is_primary() && standing.primary() == Some(1 - standing.me())
    }
}

async fn follow(pair: &Arc<Pair>) -> Result<(), String> {
    let end = pair.storage.history_end();
    let diverged = pair.diverged.load(Ordering::Acquire);
    let join = PeerRequest::Join {
        cluster_id: pair.storage.cluster_id(),
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
    let (limits, stream_epoch) = match answer {
        Some(PeerResponse::Following {
            cluster_id,
            limits,
            epoch,
        }) => {
            // An empty store joining (`--join`) becomes the cluster's.
            let storage = pair.storage.clone();
            tokio::task::spawn_blocking(move || storage.adopt_cluster(cluster_id))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            (limits, epoch)
        }
        Some(PeerResponse::Denied {
            epoch,
            primary,
            reason,
        }) => {
            pair.accept_epoch(epoch, primary, Voucher::Peer).await?;
            return Err(format!("join refused: {reason}"));
        }
        other => return Err(format!("unexpected answer to Join: {other:?}")),
    };
    tracing::info!(lsn = end.lsn, "following the primary");
    // A reader task keeps frames coming while batches are applied, so
    // that whatever arrived meanwhile is applied together: one fsync for
    // many batches when the backup is the slower side.
    let (frames_tx, mut frames) = mpsc::channel::<Result<ReplFrame, String>>(READ_AHEAD);
    let limit = repl_frame_limit(&limits);
    let reader = tokio::spawn(async move {
        loop {
            let frame = match read_frame::<_, ReplFrame>(&mut recv, limit).await {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => Err("the primary closed the stream".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let failed = frame.is_err();
            if frames_tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    let result = apply_stream(pair, &mut send, &mut frames, stream_epoch).await;
    reader.abort();
    result
}

/// Frames read ahead of the one being applied.
const READ_AHEAD: usize = 1024;
/// Most batches applied in one transaction.
const MAX_GROUP: usize = 256;

async fn apply_stream(
    pair: &Arc<Pair>,
    send: &mut quinn::SendStream,
    frames: &mut mpsc::Receiver<Result<ReplFrame, String>>,
    mut stream_epoch: Epoch,
) -> Result<(), String> {
    let mut next: Option<ReplFrame> = None;
    loop {
        if !pair.still_following() {
            return Ok(());
        }
        let frame = match next.take() {
            Some(frame) => frame,
            None => frames
                .recv()
                .await
                .ok_or_else(|| "the stream reader stopped".to_string())??,
        };
        let mut failure = None;
        let lsn = match frame {
            ReplFrame::SnapshotBegin {
                epoch,
                lsn,
                batch_epoch,
                last_tid,
            } => {
                pair.accept_epoch(epoch, Some(pair.peer_id()), Voucher::Peer)
                    .await?;
                let end = HistoryEnd {
                    lsn,
                    batch_epoch,
                    last_tid,
                };
                install_snapshot(pair, frames, end).await?;
                pair.diverged.store(false, Ordering::Release);
                lsn
            }
            ReplFrame::Batch(batch) => {
                let mut group = vec![batch];
                while group.len() < MAX_GROUP {
                    match frames.try_recv() {
                        Ok(Ok(ReplFrame::Batch(batch))) => group.push(batch),
                        Ok(Ok(other)) => {
                            next = Some(other);
                            break;
                        }
                        Ok(Err(e)) => {
                            failure = Some(e);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // The stream's epoch, or a later one its batches carry:
                // older batches are history the primary's log holds.
                let newest = group.iter().map(|b| b.epoch).max().unwrap_or_default();
                stream_epoch = stream_epoch.max(newest);
                pair.accept_epoch(stream_epoch, Some(pair.peer_id()), Voucher::Peer)
                    .await?;
                apply(pair, group, stream_epoch).await?
            }
            other => return Err(format!("unexpected frame {other:?}")),
        };
        pair.set_replication(SyncState::InSync);
        write_frame(send, &ReplAck { lsn }, PEER_FRAME_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(e) = failure {
            return Err(e);
        }
    }
}

/// Receives the snapshot's rows and installs them in one transaction.
async fn install_snapshot(
    pair: &Arc<Pair>,
    frames: &mut mpsc::Receiver<Result<ReplFrame, String>>,
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
        let frame = frames
            .recv()
            .await
            .unwrap_or_else(|| Err("the stream reader stopped".to_string()));
        let piece = match frame {
            Ok(ReplFrame::SnapshotRows(chunk)) => {
                count += chunk.len();
                SnapshotPiece::Rows(chunk)
            }
            Ok(ReplFrame::SnapshotEnd) => SnapshotPiece::End,
            Ok(other) => break Err(format!("unexpected frame in a snapshot: {other:?}")),
            Err(e) => break Err(e),
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
    let installed = match installer.await.map_err(|e| e.to_string())? {
        Ok(installed) => installed,
        Err(e) => crate::storage::fail_stop(&e),
    };
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

/// Applies batches that arrived together: the primary's log records,
/// appended to this node's log with one fsync and applied as they are. They
/// must continue this node's history exactly, or nothing is written and
/// the node asks for a snapshot. Returns the last LSN.
async fn apply(pair: &Arc<Pair>, group: Vec<Batch>, epoch: Epoch) -> Result<u64, String> {
    let Some(last_lsn) = group.last().map(|batch| batch.lsn) else {
        return Ok(pair.storage.history_end().lsn);
    };
    let storage = pair.storage.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let records: Vec<(RecordHeader, &[u8])> = group
            .iter()
            .map(|batch| {
                let header = RecordHeader {
                    lsn: batch.lsn,
                    epoch: batch.epoch,
                    first_tid: batch.first_tid,
                    last_tid: batch.last_tid,
                };
                (header, &batch.body[..])
            })
            .collect();
        storage.apply_records(&records, epoch)
    })
    .await
    .map_err(|e| e.to_string())?;
    let commits = match applied {
        Ok(commits) => commits,
        Err(e @ StorageError::Diverged(_)) => {
            pair.diverged.store(true, Ordering::Release);
            return Err(e.to_string());
        }
        Err(e @ StorageError::Fenced { .. }) => return Err(e.to_string()),
        Err(e) => crate::storage::fail_stop(&e),
    };
    // Keep the change log warm: after a failover, clients revalidate here.
    for commit in commits {
        pair.invalidations.publish(commit);
    }
    Ok(last_lsn)
}
