//! The change feed: a subscription's stream, read from the log (the same
//! history the pair replicates), acknowledged commits only, filtered by
//! prefix, paced by the reader.
//!
//! Nothing is queued for a subscriber: each round reads at most
//! [`READ_BYTES`] of the log, on a blocking thread, and writes what
//! matched before reading on, so a slow reader holds back only itself. A
//! reader that takes nothing for [`STALL_TIMEOUT`] is cut off (the stream
//! reset with [`FEED_RESET_TOO_SLOW`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use store_protocol::feed::{FeedEvent, Subscribe, FEED_RESET_TOO_SLOW};
use store_protocol::{encode_frame, ScanRequest, Tid, WireError};

use crate::acl::Grant;
use crate::server::Shared;
use crate::storage::Start;

/// Log bytes read per round.
const READ_BYTES: usize = 256 << 10;
/// Changes sent per frame, at most (about).
const FRAME_BYTES: usize = 1 << 20;
/// A reader that takes no frame for this long is cut off.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a subscriber whose prefix matched nothing hears how far the
/// history has been read (so that a resume starts there).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long one wait for new commits lasts before the feed checks that it
/// still may serve.
const WAIT: Duration = Duration::from_millis(500);

/// Serves a subscription on `send` until the reader goes, then ends it
/// with why, if there is a why to tell.
pub(crate) async fn serve(
    shared: &Shared,
    grant: &Grant,
    mut send: quinn::SendStream,
    subscribe: Subscribe,
) {
    let limit = shared.limits.max_frame_bytes;
    let last = match stream(shared, grant, &mut send, &subscribe, limit).await {
        Ended::Gone => return,
        Ended::TooSlow => {
            tracing::info!("a subscriber fell behind and was cut off");
            let _ = send.reset(FEED_RESET_TOO_SLOW.into());
            return;
        }
        Ended::Event(event) => event,
    };
    if let Ok(frame) = encode_frame(&last, limit) {
        if send.write_all(&frame).await.is_ok() {
            let _ = send.finish();
        }
    }
}

/// How a feed ended.
enum Ended {
    /// The reader went away.
    Gone,
    /// The reader took nothing for [`STALL_TIMEOUT`].
    TooSlow,
    /// Tell the reader this, last.
    Event(FeedEvent),
}

impl From<WireError> for Ended {
    fn from(error: WireError) -> Self {
        Ended::Event(FeedEvent::Failed(error))
    }
}

async fn stream(
    shared: &Shared,
    grant: &Grant,
    send: &mut quinn::SendStream,
    subscribe: &Subscribe,
    limit: u32,
) -> Ended {
    let prefix = &subscribe.prefix;
    let admitted = shared
        .limits
        .check_key(prefix)
        .and_then(|()| grant.scan(&ScanRequest::prefix(prefix.clone(), 1)))
        .and_then(|()| serving(shared));
    if let Err(error) = admitted {
        return error.into();
    }
    let storage = std::sync::Arc::clone(&shared.storage);
    let from = subscribe.from;
    let mut lsn = match blocking(move || storage.history_start(from)).await {
        Ok(Start::At(lsn)) => lsn,
        Ok(Start::Compacted { oldest }) => return Ended::Event(FeedEvent::Compacted { oldest }),
        Err(error) => return error.into(),
    };
    let mut through = from;
    let mut told = from;
    let mut told_at = Instant::now();
    loop {
        if shared.draining.load(Ordering::Acquire) {
            return WireError::ShuttingDown.into();
        }
        if let Err(error) = serving(shared) {
            return error.into();
        }
        let published = shared.invalidations.published();
        let storage = std::sync::Arc::clone(&shared.storage);
        let records = match blocking(move || storage.history_from(lsn, READ_BYTES)).await {
            Ok(Some(records)) => records,
            // Recycled under this reader: it must start again from a
            // retained TID.
            Ok(None) => {
                let storage = std::sync::Arc::clone(&shared.storage);
                return match blocking(move || storage.history_start(through)).await {
                    Ok(Start::Compacted { oldest }) => {
                        Ended::Event(FeedEvent::Compacted { oldest })
                    }
                    Ok(Start::At(_)) => WireError::InProgress.into(),
                    Err(error) => error.into(),
                };
            }
            Err(error) => return error.into(),
        };
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        let mut waiting = records.is_empty();
        for record in records {
            // Only what the cluster acknowledged.
            if record.last_tid > published {
                waiting = true;
                break;
            }
            lsn = record.lsn.saturating_add(1);
            through = through.max(record.last_tid);
            for change in record.changes {
                if change.tid > from && change.key.starts_with(prefix) {
                    bytes = bytes.saturating_add(change.key.len() + change_len(&change) + 16);
                    changes.push(change);
                }
            }
            if bytes >= FRAME_BYTES.min(limit as usize / 2) {
                break;
            }
        }
        let progress = through > told && told_at.elapsed() >= PROGRESS_EVERY;
        if !changes.is_empty() || progress {
            let event = FeedEvent::Changes { through, changes };
            let frame = match encode_frame(&event, limit) {
                Ok(frame) => frame,
                Err(e) => return e.to_wire().into(),
            };
            match tokio::time::timeout(STALL_TIMEOUT, send.write_all(&frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ended::Gone,
                Err(_) => return Ended::TooSlow,
            }
            told = through;
            told_at = Instant::now();
        }
        if waiting {
            let next = Tid(published.0.saturating_add(1));
            shared.invalidations.wait_published(next, WAIT).await;
        }
    }
}

fn change_len(change: &store_protocol::feed::Change) -> usize {
    use store_protocol::feed::ChangeOp;
    match &change.op {
        ChangeOp::Put(value) | ChangeOp::Append(value) => value.len(),
        ChangeOp::Delete => 0,
    }
}

/// A feed is served by a primary holding its lease (or a standalone
/// server): a backup's history may be behind.
fn serving(shared: &Shared) -> Result<(), WireError> {
    if shared.serving() {
        Ok(())
    } else {
        Err(WireError::NotPrimary {
            epoch: shared.epoch(),
        })
    }
}

/// Runs a storage call on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::error::StorageError> + Send + 'static,
) -> Result<T, WireError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(WireError::Internal {
            detail: format!("storage: {e}"),
        }),
        Err(e) => Err(WireError::Internal {
            detail: format!("the feed's reader: {e}"),
        }),
    }
}
