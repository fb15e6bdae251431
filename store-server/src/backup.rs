//! Backups while serving, and restores into a new data directory.
//!
//! A backup is the store's snapshot (the one a joining backup node is sent)
//! streamed to a client as [`BackupPiece`] frames: consistent at one TID,
//! every commit up to it and none after, read from one index transaction
//! while commits go on. A restore installs such a stream, read from the
//! file, into a data directory that holds no store yet.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use store_protocol::backup::{read_magic, read_piece, BackupHeader, BackupPiece, BackupTally};
use store_protocol::{encode_frame, BackupError, Tid, WireError};
use tokio::sync::mpsc;

use crate::acl::Grant;
use crate::error::ServerError;
use crate::pacing::write_paced;
use crate::server::Shared;
use crate::storage::{HistoryEnd, SnapshotPiece, Storage};
use crate::wal::WalConfig;

/// Most bytes of rows in one frame (less when frames are smaller).
const CHUNK_BYTES: usize = 1 << 20;
/// Frames read ahead of the client: the memory a backup holds is about
/// this many chunks, however slow the client.
const READ_AHEAD: usize = 2;
/// After the first minute, a backup slower than this on average is cut
/// off, however steadily it trickles.
const MIN_BYTES_PER_SEC: u64 = 256 << 10;

/// Answers a `Backup` request on `send`: checks the grant and that no other
/// backup runs, then streams the snapshot and its end (or why it failed).
pub(crate) async fn serve(shared: &Shared, grant: &Grant, mut send: quinn::SendStream) {
    let limit = shared.limits.max_frame_bytes;
    let outcome = match admit(shared, grant) {
        Ok(_slot) => stream(shared, &mut send, limit).await,
        Err(error) => Err(error),
    };
    let last = match outcome {
        Ok(end) => end,
        Err(StreamEnd::Gone) => return,
        Err(StreamEnd::Failed(error)) => {
            tracing::warn!(%error, "backup failed");
            BackupPiece::Failed(error)
        }
    };
    if let Ok(frame) = encode_frame(&last, limit) {
        if write_paced(shared, &mut send, &frame).await.is_ok() {
            let _ = send.finish();
        }
    }
}

/// Why a backup stream ended early.
enum StreamEnd {
    /// The client went away or stalled: nothing more to send.
    Gone,
    /// Tell the client why.
    Failed(WireError),
}

impl From<WireError> for StreamEnd {
    fn from(error: WireError) -> Self {
        StreamEnd::Failed(error)
    }
}

/// May this backup start? Returns the slot it holds while it runs.
fn admit<'a>(
    shared: &'a Shared,
    grant: &Grant,
) -> Result<tokio::sync::SemaphorePermit<'a>, StreamEnd> {
    grant.admin("backup")?;
    crate::request::serving(shared)?;
    shared
        .backup_slot
        .try_acquire()
        .map_err(|_| StreamEnd::Failed(WireError::Overloaded))
}

/// Streams the header and every row, then returns the sealed end.
async fn stream(
    shared: &Shared,
    send: &mut quinn::SendStream,
    limit: u32,
) -> Result<BackupPiece, StreamEnd> {
    let chunk_bytes = CHUNK_BYTES.min(limit as usize / 4);
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let storage = Arc::clone(&shared.storage);
    let snapshot = tokio::task::spawn_blocking(move || {
        let header_tx = tx.clone();
        let begin = |end: HistoryEnd| {
            let header = header_of(&storage, end);
            header_tx.blocking_send(BackupPiece::Header(header)).is_ok()
        };
        storage.snapshot(chunk_bytes, begin, |rows| {
            tx.blocking_send(BackupPiece::Rows(rows)).is_ok()
        })
    });
    let mut tally = BackupTally::default();
    let started = std::time::Instant::now();
    while let Some(piece) = rx.recv().await {
        if shared.draining.load(std::sync::atomic::Ordering::Acquire) {
            return Err(WireError::ShuttingDown.into());
        }
        let elapsed = started.elapsed();
        if elapsed > Duration::from_secs(60)
            && tally.bytes() < MIN_BYTES_PER_SEC.saturating_mul(elapsed.as_secs())
        {
            return Err(WireError::Overloaded.into());
        }
        let frame = encode_frame(&piece, limit).map_err(|e| e.to_wire())?;
        tally
            .add(&frame, &piece)
            .map_err(|e| internal(e.to_string()))?;
        write_paced(shared, send, &frame)
            .await
            .map_err(|_| StreamEnd::Gone)?;
    }
    match snapshot.await {
        Ok(Ok(())) if tally.header().is_some() => {
            // Only what the cluster acknowledged: in a pair, a commit
            // durable here but not yet on the backup node could be lost
            // to a failover, and must not be in a backup either.
            let last = tally.header().map_or(Tid::ZERO, |h| h.last_tid);
            crate::request::settled(shared, last).await?;
            let end = tally.seal();
            tracing::info!(rows = end.rows, bytes = tally.bytes(), "backup streamed");
            Ok(BackupPiece::End(end))
        }
        Ok(Ok(())) => Err(internal("the snapshot ended before it began".into()).into()),
        Ok(Err(e)) => Err(internal(format!("storage: {e}")).into()),
        Err(e) => Err(internal(format!("the snapshot task: {e}")).into()),
    }
}

fn header_of(storage: &Storage, end: HistoryEnd) -> BackupHeader {
    BackupHeader {
        cluster_id: storage.cluster_id(),
        server_id: storage.server_id(),
        last_tid: end.last_tid,
        lsn: end.lsn,
        batch_epoch: end.batch_epoch,
        taken_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn internal(detail: String) -> WireError {
    WireError::Internal { detail }
}

/// What a restore made.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's header.
    pub header: BackupHeader,
    /// Rows installed.
    pub rows: u64,
    /// Bytes of the backup read.
    pub bytes: u64,
    /// The cluster id the new store carries.
    pub cluster_id: u64,
}

/// Name of the directory a restore builds the store in, inside the data
/// directory, before moving it into place.
pub const STAGING_DIR: &str = ".restoring";

/// Makes a store in `data_dir` from the backup file `from`: a new cluster
/// id unless `keep_cluster_id`. Refuses a directory that already holds a
/// store (a running server's, or any other: restore never overwrites).
/// The store is built in `data_dir/.restoring` (made exclusively, so two
/// restores never share it) and moved into place only once the whole file
/// proved sound; a damaged file leaves nothing behind.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    keep_cluster_id: bool,
) -> Result<Restored, ServerError> {
    let store = data_dir.join(crate::storage::STORE_FILE);
    let wal = data_dir.join(crate::storage::WAL_DIR);
    let occupied = || {
        ServerError::Config(format!(
            "{} already holds a store: restore only makes a new one. Stop its server \
             and move the directory's store.redb and wal/ away, or restore into \
             another --data-dir",
            data_dir.display()
        ))
    };
    if store.exists() || wal.exists() {
        return Err(occupied());
    }
    let opened = std::fs::File::open(from)
        .map_err(|e| ServerError::io(format!("opening {}", from.display()), e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, opened);
    let damaged = |e: BackupError| ServerError::Backup {
        file: from.display().to_string(),
        source: e,
    };
    read_magic(&mut reader).map_err(damaged)?;
    let mut tally = BackupTally::default();
    let header = match read_piece(&mut reader).map_err(damaged)? {
        Some((frame, piece)) => {
            tally.add(&frame, &piece).map_err(damaged)?;
            match tally.header() {
                Some(header) => *header,
                None => return Err(damaged(BackupError::Damaged("no header".into()))),
            }
        }
        None => return Err(damaged(BackupError::Damaged("no header".into()))),
    };
    let made_dir = !data_dir.exists();
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ServerError::io(format!("making {}", data_dir.display()), e))?;
    let staging = data_dir.join(STAGING_DIR);
    std::fs::create_dir(&staging).map_err(|e| {
        ServerError::io(
            format!(
                "making {} (a restore into this directory runs, or was interrupted: \
                 remove it once none runs)",
                staging.display()
            ),
            e,
        )
    })?;
    let mut made = Made {
        paths: vec![staging.clone()],
        kept: false,
    };
    if made_dir {
        made.paths.push(data_dir.to_path_buf());
    }
    let storage = Storage::open(
        &staging.join(crate::storage::STORE_FILE),
        WalConfig::default(),
    )?;
    let end = HistoryEnd {
        lsn: header.lsn,
        batch_epoch: header.batch_epoch,
        last_tid: header.last_tid,
    };
    let mut failure = None;
    let installed = storage.install_snapshot(end, || match next_rows(&mut reader, &mut tally) {
        Ok(piece) => piece,
        Err(e) => {
            failure = Some(e);
            SnapshotPiece::Cut
        }
    })?;
    if let Some(e) = failure {
        return Err(damaged(e));
    }
    if !installed {
        return Err(damaged(BackupError::Damaged("cut short".into())));
    }
    let cluster_id = if keep_cluster_id {
        header.cluster_id
    } else {
        crate::pair::new_cluster_id()
    };
    storage.adopt_cluster(cluster_id)?;
    // The history's batches carry this epoch: no election may go below it.
    storage.raise_epoch(header.batch_epoch)?;
    drop(storage);
    if store.exists() || wal.exists() {
        return Err(occupied());
    }
    let moved =
        |what: &str, e| ServerError::io(format!("moving the restored {what} into place"), e);
    std::fs::rename(staging.join(crate::storage::WAL_DIR), &wal).map_err(|e| moved("log", e))?;
    made.paths.push(wal);
    std::fs::rename(staging.join(crate::storage::STORE_FILE), &store)
        .map_err(|e| moved("index", e))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| ServerError::io(format!("syncing {}", data_dir.display()), e))?;
    made.keep();
    let _ = std::fs::remove_dir(&staging);
    Ok(Restored {
        header,
        rows: tally.rows(),
        bytes: tally.bytes() + store_protocol::backup::BACKUP_MAGIC.len() as u64,
        cluster_id,
    })
}

/// The next rows of the file for the install, or its end once the end
/// matched and nothing follows it.
fn next_rows(
    reader: &mut impl std::io::Read,
    tally: &mut BackupTally,
) -> Result<SnapshotPiece, BackupError> {
    let Some((frame, piece)) = read_piece(reader)? else {
        return Err(BackupError::Damaged("the file ends before its end".into()));
    };
    tally.add(&frame, &piece)?;
    match piece {
        BackupPiece::Rows(rows) => Ok(SnapshotPiece::Rows(rows)),
        BackupPiece::End(_) => match read_piece(reader)? {
            None => Ok(SnapshotPiece::End),
            Some(_) => Err(BackupError::Damaged("bytes after its end".into())),
        },
        // The tally refuses a second header and a failure.
        BackupPiece::Header(_) | BackupPiece::Failed(_) => {
            Err(BackupError::Damaged("an unexpected frame".into()))
        }
    }
}

/// The files a restore made, removed unless it completed.
struct Made {
    paths: Vec<PathBuf>,
    kept: bool,
}

impl Made {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for path in &self.paths {
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
}
