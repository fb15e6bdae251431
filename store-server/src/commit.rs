//! Group commit: one thread owns every write, and operations that arrive
//! while a batch is being made durable share the next write transaction
//! and fsync. Nobody is answered before the batch holding their operation
//! is durable.
//!
//! A copy of a transaction that is still in the pipeline does not queue a
//! second time: it waits (up to [`IN_FLIGHT_WAIT`]) for the first copy's
//! outcome and answers it as a replay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use store_protocol::{CommitRequest, Committed, Limits, TxnId, WireError};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Instrument as _;

use crate::invalidation::{Invalidation, Invalidations};
use crate::storage::{Op, OpResult, Storage};

/// Most operations in one batch: bounds the latency one batch adds to the next.
const MAX_BATCH: usize = 512;
/// Operations waiting for the committer before senders are held back.
const QUEUE_DEPTH: usize = 4096;
/// How long a copy of an in-flight transaction waits for the first copy's
/// outcome before answering `InProgress` (DESIGN §6).
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);

enum Job {
    /// A commit or resolve, decided in the next batch.
    Decide(Decision),
    /// Forget outcomes older than the retention period; replies with the
    /// number of clients whose watermark rose.
    Expire {
        retention: Duration,
        reply: oneshot::Sender<Result<usize, WireError>>,
    },
}

enum Work {
    Commit(CommitRequest),
    Resolve(TxnId),
}

struct Decision {
    work: Work,
    reply: oneshot::Sender<OpResult>,
    span: tracing::Span,
}

/// The running pipeline; dropping every [`Committer`] and calling
/// [`CommitPipeline::shutdown`] finishes queued work and stops the thread.
pub struct CommitPipeline {
    committer: Committer,
    thread: JoinHandle<()>,
}

/// A cheap handle that submits work to the pipeline.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
    in_flight: Arc<Mutex<HashMap<TxnId, InFlight>>>,
}

/// A transaction in the pipeline: its digest, and where its outcome goes.
struct InFlight {
    digest: u128,
    outcome: broadcast::Sender<OpResult>,
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
            committer: Committer {
                queue,
                in_flight: Arc::default(),
            },
            thread,
        })
    }

    /// A handle for submitting work.
    pub fn committer(&self) -> Committer {
        self.committer.clone()
    }

    /// Waits until every queued operation is decided, then stops the thread.
    /// Handles still held elsewhere keep it running until they are dropped.
    pub async fn shutdown(self) {
        drop(self.committer);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

impl Committer {
    /// Commits `request` exactly once and waits until its outcome is
    /// durable; a copy already in flight waits for that one instead.
    pub async fn commit(&self, request: CommitRequest) -> OpResult {
        let span =
            tracing::info_span!("commit", txn = %request.txn_id, tid = tracing::field::Empty);
        let (id, digest) = (request.txn_id, request.digest);
        self.decide(id, Some(digest), Work::Commit(request))
            .instrument(span)
            .await
    }

    /// The outcome of `txn_id`, or `Abandoned` recorded now if it has none
    /// (DESIGN §6). A copy in flight is waited for, never abandoned.
    pub async fn resolve(&self, txn_id: TxnId) -> OpResult {
        let span = tracing::info_span!("resolve", txn = %txn_id);
        self.decide(txn_id, None, Work::Resolve(txn_id))
            .instrument(span)
            .await
    }

    /// Waits for a copy of `id` already in flight, or decides `work` itself.
    async fn decide(&self, id: TxnId, digest: Option<u128>, work: Work) -> OpResult {
        if let Some(first) = self.join_in_flight(id, digest)? {
            return first.await;
        }
        let result = self.submit(work).await;
        self.finish_in_flight(id, &result);
        result
    }

    /// Forgets outcomes decided more than `retention` ago; returns how many
    /// clients' watermarks rose.
    pub async fn expire(&self, retention: Duration) -> Result<usize, WireError> {
        let (reply, answer) = oneshot::channel();
        if self
            .queue
            .send(Job::Expire { retention, reply })
            .await
            .is_err()
        {
            return Err(WireError::ShuttingDown);
        }
        answer.await.unwrap_or(Err(WireError::ShuttingDown))
    }

    /// If `id` is in flight, returns a future of its outcome (as a replay);
    /// otherwise marks it in flight and returns `None`. `digest` is `None`
    /// for `resolve`, which matches any content.
    #[allow(clippy::type_complexity)]
    fn join_in_flight(
        &self,
        id: TxnId,
        digest: Option<u128>,
    ) -> Result<Option<impl std::future::Future<Output = OpResult>>, WireError> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match in_flight.get(&id) {
            Some(first) if digest.is_some_and(|d| d != first.digest) => Err(WireError::TxnIdReused),
            Some(first) => {
                let mut outcome = first.outcome.subscribe();
                Ok(Some(async move {
                    match tokio::time::timeout(IN_FLIGHT_WAIT, outcome.recv()).await {
                        Ok(Ok(result)) => result.map(|c| Committed {
                            replayed: true,
                            ..c
                        }),
                        _ => Err(WireError::InProgress),
                    }
                }))
            }
            None => {
                let (outcome, _) = broadcast::channel(1);
                in_flight.insert(
                    id,
                    InFlight {
                        digest: digest.unwrap_or_default(),
                        outcome,
                    },
                );
                Ok(None)
            }
        }
    }

    fn finish_in_flight(&self, id: TxnId, result: &OpResult) {
        let first = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some(first) = first {
            // No copies waiting is the common case.
            let _ = first.outcome.send(result.clone());
        }
    }

    async fn submit(&self, work: Work) -> OpResult {
        let (reply, answer) = oneshot::channel();
        let job = Job::Decide(Decision {
            work,
            reply,
            span: tracing::Span::current(),
        });
        if self.queue.send(job).await.is_err() {
            return Err(WireError::ShuttingDown);
        }
        answer.await.unwrap_or_else(|_| {
            Err(WireError::Internal {
                detail: "commit pipeline stopped".into(),
            })
        })
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
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Decide(decision) => batch.push(decision),
                // Expiry runs in its own transaction, between batches.
                Job::Expire { retention, reply } => {
                    let _ = reply.send(expire(storage, retention));
                }
            }
            if batch.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            decide_batch(storage, invalidations, limits, &mut batch);
        }
    }
}

fn expire(storage: &Storage, retention: Duration) -> Result<usize, WireError> {
    let expiries = storage.expire_outcomes(retention).map_err(internal)?;
    if !expiries.is_empty() {
        tracing::info!(clients = expiries.len(), "forgot outcomes past retention");
    }
    Ok(expiries.len())
}

fn decide_batch(
    storage: &Storage,
    invalidations: &Invalidations,
    limits: &Limits,
    batch: &mut Vec<Decision>,
) {
    let ops: Vec<Op<'_>> = batch
        .iter()
        .map(|decision| match &decision.work {
            Work::Commit(request) => Op::Commit(request),
            Work::Resolve(id) => Op::Resolve(*id),
        })
        .collect();
    let outcome = storage.apply_batch(&ops, limits);
    drop(ops);
    match outcome {
        Ok(results) => {
            tracing::debug!(size = batch.len(), "batch durable");
            // Every session hears of a commit before anyone is told it
            // committed, so a pong never runs ahead of an acknowledgement.
            for (decision, result) in batch.iter().zip(&results) {
                if let (Work::Commit(request), Ok(c)) = (&decision.work, result) {
                    if !c.replayed {
                        invalidations.publish(Invalidation {
                            tid: c.tid,
                            keys: written_keys(request),
                        });
                    }
                }
            }
            for (decision, result) in batch.drain(..).zip(results) {
                decision.span.in_scope(|| match &result {
                    Ok(c) => {
                        decision.span.record("tid", c.tid.0);
                        tracing::debug!(tid = c.tid.0, replayed = c.replayed, "decided");
                    }
                    Err(e) => tracing::debug!(error = %e, "refused"),
                });
                let _ = decision.reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, size = batch.len(), "commit batch failed; nothing applied");
            for decision in batch.drain(..) {
                let _ = decision.reply.send(Err(internal(&e)));
            }
        }
    }
}

fn internal(e: impl std::fmt::Display) -> WireError {
    WireError::Internal {
        detail: format!("storage: {e}"),
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
