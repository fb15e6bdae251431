//! The change feed: a subscription's stream, read from the log (the same
//! history the pair replicates), acknowledged commits only, filtered by
//! prefix, paced by the reader.
//!
//! Nothing is queued for a subscriber: each round reads at most
//! [`READ_BYTES`] of the log, on a blocking thread, and writes what
//! matched before reading on, so a slow reader holds back only itself. A
//! reader that takes nothing for `--stall-timeout` is cut off (the stream
//! reset with [`FEED_RESET_TOO_SLOW`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use store_protocol::feed::{FeedEvent, Subscribe, FEED_RESET_TOO_SLOW};
use store_protocol::{encode_frame, ScanRequest, Tid, WireError};

use crate::acl::Grant;
use crate::pacing::{write_paced, Cut};
use crate::request::serving;
use crate::server::Shared;
use crate::storage::Start;

/// Log bytes read per round.
const READ_BYTES: usize = 256 << 10;
/// Changes sent per frame, at most (about).
const FRAME_BYTES: usize = 1 << 20;
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
        if write_paced(shared, &mut send, &frame).await.is_ok() {
            let _ = send.finish();
        }
    }
}

/// How a feed ended.
enum Ended {
    /// The reader went away.
    Gone,
    /// The reader took nothing for the stall timeout.
    TooSlow,
    /// Tell the reader this, last.
    Event(FeedEvent),
}

impl From<Cut> for Ended {
    fn from(cut: Cut) -> Self {
        match cut {
            Cut::Gone => Ended::Gone,
            Cut::Stalled => Ended::TooSlow,
        }
    }
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
    let from = subscribe.from;
    let last = shared.storage.last_tid();
    if from > last {
        // Commits up to `from` that this store never had would be skipped
        // as if delivered (a store restored from an older backup, a typo).
        return WireError::Malformed {
            detail: format!("subscribing after tid {from}, past this store's last tid {last}"),
        }
        .into();
    }
    let storage = std::sync::Arc::clone(&shared.storage);
    let mut lsn = match blocking(move || storage.history_start(from)).await {
        Ok(Start::At(lsn)) => lsn,
        Ok(Start::Compacted { oldest }) => return Ended::Event(FeedEvent::Compacted { oldest }),
        Err(error) => return error.into(),
    };
    // Every commit up to `through` has been read (and what matched sent,
    // or about to be): the resume point a frame tells.
    let mut out = Outbox {
        through: from,
        told: from,
        told_at: Instant::now(),
        changes: Vec::new(),
        bytes: 0,
        budget: FRAME_BYTES.min(limit as usize / 2),
        limit,
    };
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
                let through = out.through;
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
        let mut waiting = records.is_empty();
        for record in records {
            // Only what the cluster acknowledged.
            if record.last_tid > published {
                waiting = true;
                break;
            }
            // Commit by commit (a record holds a batch of them): a frame
            // is sent before a commit that would overflow it, so a frame
            // holds whole commits and at most one commit past its budget.
            let mut changes = record.changes.into_iter().peekable();
            while let Some(first) = changes.next() {
                let tid = first.tid;
                let mut commit = vec![first];
                while let Some(next) = changes.next_if(|c| c.tid == tid) {
                    commit.push(next);
                }
                if tid <= out.through {
                    continue;
                }
                commit.retain(|c| c.key.starts_with(prefix));
                let size: usize = commit.iter().map(change_size).sum();
                if !out.changes.is_empty() && out.bytes.saturating_add(size) > out.budget {
                    if let Err(ended) = out.flush(shared, send).await {
                        return ended;
                    }
                }
                out.changes.extend(commit);
                out.bytes = out.bytes.saturating_add(size);
                out.through = tid;
            }
            out.through = out.through.max(record.last_tid);
            lsn = record.lsn.saturating_add(1);
        }
        if !out.changes.is_empty() || out.progress_due() {
            if let Err(ended) = out.flush(shared, send).await {
                return ended;
            }
        }
        if waiting {
            // Until the next commit is acknowledged, or the reader leaves.
            let next = Tid(published.0.saturating_add(1));
            tokio::select! {
                _ = shared.invalidations.wait_published(next, WAIT) => {}
                _ = send.stopped() => return Ended::Gone,
            }
        }
    }
}

/// What a feed has read and not yet sent.
struct Outbox {
    through: Tid,
    /// The `through` of the last frame sent.
    told: Tid,
    told_at: Instant,
    changes: Vec<store_protocol::feed::Change>,
    bytes: usize,
    budget: usize,
    limit: u32,
}

impl Outbox {
    /// Whether a frame with no changes is due, to tell how far the
    /// history has been read.
    fn progress_due(&self) -> bool {
        self.through > self.told && self.told_at.elapsed() >= PROGRESS_EVERY
    }

    /// Sends what is held, through `self.through`.
    async fn flush(&mut self, shared: &Shared, send: &mut quinn::SendStream) -> Result<(), Ended> {
        let event = FeedEvent::Changes {
            through: self.through,
            changes: std::mem::take(&mut self.changes),
        };
        self.bytes = 0;
        let frame = encode_frame(&event, self.limit).map_err(|e| Ended::from(e.to_wire()))?;
        write_paced(shared, send, &frame)
            .await
            .map_err(Ended::from)?;
        self.told = self.through;
        self.told_at = Instant::now();
        Ok(())
    }
}

/// About what a change costs in a frame.
fn change_size(change: &store_protocol::feed::Change) -> usize {
    use store_protocol::feed::ChangeOp;
    let value = match &change.op {
        ChangeOp::Put(value) | ChangeOp::Append(value) => value.len(),
        ChangeOp::Delete => 0,
    };
    change.key.len() + value + 16
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
