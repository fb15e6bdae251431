//! Group commit: one thread owns every write, and commits that arrive while
//! a batch is being made durable share the next write transaction and fsync.
//!
//! Nobody is answered before the batch holding their commit is durable.

use std::sync::Arc;
use std::thread::JoinHandle;

use store_protocol::{CommitRequest, Committed, Limits, WireError};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::invalidation::{Invalidation, Invalidations};
use crate::storage::Storage;

/// Most commits in one batch: bounds the latency one batch adds to the next.
const MAX_BATCH: usize = 512;
/// Commits waiting for the committer before senders are held back.
const QUEUE_DEPTH: usize = 4096;

struct Job {
    request: CommitRequest,
    reply: oneshot::Sender<Result<Committed, WireError>>,
    span: tracing::Span,
}

/// The running pipeline; dropping every [`Committer`] and calling
/// [`CommitPipeline::shutdown`] finishes queued commits and stops the thread.
pub struct CommitPipeline {
    committer: Committer,
    thread: JoinHandle<()>,
}

/// A cheap handle that submits commits to the pipeline.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
}

impl CommitPipeline {
    /// Starts the committer thread over `storage`.
    pub fn start(
        storage: Arc<Storage>,
        invalidations: Arc<Invalidations>,
        limits: Limits,
    ) -> std::io::Result<CommitPipeline> {
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("zeolite-committer".into())
            .spawn(move || run_committer(&storage, &invalidations, &limits, jobs))?;
        Ok(CommitPipeline {
            committer: Committer { queue },
            thread,
        })
    }

    /// A handle for submitting commits.
    pub fn committer(&self) -> Committer {
        self.committer.clone()
    }

    /// Waits until every queued commit is decided, then stops the thread.
    /// Handles still held elsewhere keep it running until they are dropped.
    pub async fn shutdown(self) {
        drop(self.committer);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

impl Committer {
    /// Commits `request` and waits until it is durable (or refused).
    pub async fn commit(&self, request: CommitRequest) -> Result<Committed, WireError> {
        let span =
            tracing::info_span!("commit", txn = %request.txn_id, tid = tracing::field::Empty);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            reply,
            span: span.clone(),
        };
        async {
            if self.queue.send(job).await.is_err() {
                return Err(WireError::ShuttingDown);
            }
            answer.await.unwrap_or_else(|_| {
                Err(WireError::Internal {
                    detail: "commit pipeline stopped".into(),
                })
            })
        }
        .instrument(span)
        .await
    }
}

fn run_committer(
    storage: &Storage,
    invalidations: &Invalidations,
    limits: &Limits,
    mut jobs: mpsc::Receiver<Job>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = storage.commit_batch(batch.iter().map(|job| &job.request), limits);
        match outcome {
            Ok(results) => {
                tracing::debug!(size = batch.len(), "batch durable");
                // Every session hears of a commit before anyone is told it
                // committed, so a pong never runs ahead of an acknowledgement.
                for (job, result) in batch.iter().zip(&results) {
                    if let Ok((tid, _)) = result {
                        invalidations.publish(Invalidation {
                            tid: *tid,
                            keys: written_keys(&job.request),
                        });
                    }
                }
                for (job, result) in batch.drain(..).zip(results) {
                    let answer = result.map(|(tid, results)| {
                        job.span.record("tid", tid.0);
                        Committed {
                            tid,
                            results,
                            replayed: false,
                        }
                    });
                    job.span.in_scope(|| match &answer {
                        Ok(c) => tracing::debug!(tid = c.tid.0, "committed"),
                        Err(e) => tracing::debug!(error = %e, "refused"),
                    });
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, size = batch.len(), "commit batch failed; nothing applied");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(WireError::Internal {
                        detail: format!("storage: {e}"),
                    }));
                }
            }
        }
    }
}

/// The keys a commit wrote, each once, in first-written order.
fn written_keys(request: &CommitRequest) -> Vec<bytes::Bytes> {
    let mut seen = std::collections::HashSet::with_capacity(request.writes.len());
    request
        .writes
        .iter()
        .map(|write| write.key())
        .filter(|key| seen.insert(*key))
        .cloned()
        .collect()
}
