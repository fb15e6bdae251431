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

use store_protocol::peer::Batch;
use store_protocol::{CommitRequest, Committed, Epoch, Limits, Tid, TxnId, WireError};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Instrument as _;

use crate::error::StorageError;
use crate::invalidation::{Invalidation, Invalidations};
use crate::outcomes::{verdict, Known, Verdict};
use crate::storage::{Op, OpResult, Stamp, Storage};
use crate::wal::RecordHeader;

/// Most operations in one batch: bounds the latency one batch adds to the next.
const MAX_BATCH: usize = 512;
/// A batch takes no more operations once its commits' size bounds add up
/// to this: bounds the memory of a batch and the size of the replication
/// frame that ships it (see `pair::link::repl_frame_limit`).
pub const MAX_BATCH_BYTES: usize = 16 << 20;
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
    /// Folds the rows in memory into the index while commits go on.
    checkpointer: JoinHandle<()>,
    storage: Arc<Storage>,
}

/// A cheap handle that submits work to the pipeline.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
    in_flight: Arc<Mutex<HashMap<TxnId, InFlight>>>,
}

/// A transaction in the pipeline: its digest, and where its outcome goes.
struct InFlight {
    /// The first copy's content digest; `None` for a `resolve`.
    digest: Option<u128>,
    outcome: broadcast::Sender<OpResult>,
}

impl CommitPipeline {
    /// Starts the committer thread over `storage`.
    ///
    /// Durable batches go to `release`: answered at once by a standalone
    /// server, or handed to the replicator of a pair, which answers them
    /// once the backup has them too.
    pub fn start(
        storage: Arc<Storage>,
        invalidations: Arc<Invalidations>,
        limits: Limits,
        release: Release,
        write_epoch: WriteEpoch,
    ) -> std::io::Result<CommitPipeline> {
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        let folding = storage.clone();
        let checkpointer = std::thread::Builder::new()
            .name("zeolite-checkpointer".into())
            .spawn(move || folding.run_checkpointer())?;
        let committer = Pipeline {
            storage: storage.clone(),
            invalidations,
            limits,
            release,
            write_epoch,
        };
        let thread = std::thread::Builder::new()
            .name("zeolite-committer".into())
            .spawn(move || committer.run(jobs))?;
        Ok(CommitPipeline {
            committer: Committer {
                queue,
                in_flight: Arc::default(),
            },
            thread,
            checkpointer,
            storage,
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
        let (thread, checkpointer, storage) = (self.thread, self.checkpointer, self.storage);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = thread.join();
            storage.stop_checkpointer();
            let _ = checkpointer.join();
        })
        .await;
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
        let Some(first) = in_flight.get(&id) else {
            let (outcome, _) = broadcast::channel(1);
            in_flight.insert(id, InFlight { digest, outcome });
            return Ok(None);
        };
        let known = Known::InFlight {
            digest: first.digest,
        };
        match verdict(&known, digest) {
            Verdict::Answer(Err(refused)) => Err(refused),
            // Not what a copy in flight yields; refused rather than run twice.
            Verdict::Answer(Ok(_)) | Verdict::Decide => Err(WireError::InProgress),
            Verdict::Wait => {
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

/// The epoch this node decides writes in, if it may decide any: a pair's
/// primary sets it when elected and clears it when deposed, so a batch is
/// only ever stamped with the epoch of a node that was its primary (the
/// rule rejoining backups rely on to find where histories part).
#[derive(Debug, Clone, Default)]
pub struct WriteEpoch(Arc<std::sync::atomic::AtomicU64>);

impl WriteEpoch {
    /// A standalone server: always writable, in epoch 1.
    pub fn standalone() -> WriteEpoch {
        let epoch = WriteEpoch::default();
        epoch.set(Some(Epoch(1)));
        epoch
    }

    /// Sets (or with `None`, clears) the epoch writes are decided in.
    pub fn set(&self, epoch: Option<Epoch>) {
        let value = epoch.map_or(0, |e| e.0);
        self.0.store(value, std::sync::atomic::Ordering::Release);
    }

    /// The epoch writes are decided in, if any.
    pub fn get(&self) -> Option<Epoch> {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            epoch => Some(Epoch(epoch)),
        }
    }
}

/// Where durable batches go.
pub enum Release {
    /// Answer at once (a standalone server).
    Now,
    /// To the replicator, which answers once the backup has them.
    Replicated(mpsc::Sender<ToReplicator>),
}

/// What the committer hands the replicator of a pair.
pub enum ToReplicator {
    /// A decided batch about to be made durable here: ship it now, so the
    /// backup's disk writes while this one does.
    Ship(Arc<Batch>),
    /// The batch is durable here.
    Durable(Durable),
}

/// A batch durable here whose callers are not answered yet.
pub struct Durable {
    /// The replicated form, if the batch changed anything.
    pub batch: Option<Arc<Batch>>,
    replies: Vec<(Decision, OpResult)>,
    invalidations: Vec<Invalidation>,
}

impl Durable {
    /// Publishes the batch's invalidations (every session hears of a commit
    /// before anyone is told it committed, so a pong never runs ahead of an
    /// acknowledgement) and answers its callers; with `refuse`, every
    /// caller gets that error instead (a deposed primary: the copy that
    /// the client resends to the new primary is answered there).
    pub fn release(self, invalidations: &Invalidations, refuse: Option<&WireError>) {
        // A refused batch was never acknowledged, and a deposed primary's
        // history past the new primary's is replaced when it rejoins: its
        // sessions must not be told of it (a client would believe its
        // cache current up to a TID the new primary never had).
        if refuse.is_none() {
            for invalidation in self.invalidations {
                invalidations.publish(invalidation);
            }
        }
        for (decision, result) in self.replies {
            let result = match refuse {
                Some(error) => Err(error.clone()),
                None => result,
            };
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
}

/// The committer thread's state.
struct Pipeline {
    storage: Arc<Storage>,
    invalidations: Arc<Invalidations>,
    limits: Limits,
    release: Release,
    write_epoch: WriteEpoch,
}

impl Pipeline {
    fn run(&self, mut jobs: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = jobs.blocking_recv() {
            let mut next = Some(first);
            let mut bytes = 0usize;
            while let Some(job) = next.take() {
                match job {
                    Job::Decide(decision) => {
                        if let Work::Commit(request) = &decision.work {
                            bytes = bytes.saturating_add(request.size_bound());
                        }
                        batch.push(decision);
                    }
                    // Expiry runs in its own batch, between batches.
                    Job::Expire { retention, reply } => {
                        let _ = reply.send(self.expire(retention));
                    }
                }
                if batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    next = jobs.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.decide(std::mem::take(&mut batch));
            }
        }
    }

    /// Applies `ops` in one durable batch, stamped with this node's epoch.
    fn apply(&self, ops: &[Op<'_>]) -> Result<(Vec<OpResult>, Option<Arc<Batch>>), WireError> {
        let epoch = self.write_epoch.get().ok_or(WireError::NotPrimary {
            epoch: self.storage.epoch(),
        })?;
        let stamp = Stamp::now(epoch);
        let mut shipped = None;
        let ship = |record: &RecordHeader, body: &bytes::Bytes| {
            let Release::Replicated(replicator) = &self.release else {
                return;
            };
            let batch = Arc::new(Batch {
                epoch: record.epoch,
                lsn: record.lsn,
                first_tid: record.first_tid,
                last_tid: record.last_tid,
                // Shared with the log's copy, not copied.
                body: body.clone(),
            });
            let _ = replicator.blocking_send(ToReplicator::Ship(batch.clone()));
            shipped = Some(batch);
        };
        match self.storage.apply_batch(ops, &self.limits, stamp, ship) {
            Ok(applied) => Ok((applied.results, shipped)),
            // Deposed between the gate and the write: refused unwritten.
            Err(StorageError::Fenced { accepted, .. }) => Err(WireError::NotPrimary {
                epoch: Epoch(accepted),
            }),
            // The disk refused the batch (and the backup may already hold
            // it): fail-stop.
            Err(e) => crate::storage::fail_stop(&e),
        }
    }

    fn send(&self, durable: Durable) {
        match &self.release {
            Release::Now => durable.release(&self.invalidations, None),
            Release::Replicated(replicator) => {
                if let Err(unsent) = replicator.blocking_send(ToReplicator::Durable(durable)) {
                    let ToReplicator::Durable(durable) = unsent.0 else {
                        return;
                    };
                    // Durable here, never confirmed: it may have been applied.
                    let unconfirmed = WireError::Unconfirmed {
                        epoch: self.storage.epoch(),
                    };
                    durable.release(&self.invalidations, Some(&unconfirmed));
                }
            }
        }
    }

    fn expire(&self, retention: Duration) -> Result<usize, WireError> {
        // Reading the outcomes may fold rows into the index: a disk that
        // refuses that stops the node, as any refused write does.
        let expiries = match self.storage.expiries_due(retention) {
            Ok(expiries) => expiries,
            Err(e) => crate::storage::fail_stop(&e),
        };
        if expiries.is_empty() {
            return Ok(0);
        }
        let ops: Vec<Op<'_>> = expiries.iter().map(|e| Op::Expire(*e)).collect();
        let (_, batch) = self.apply(&ops)?;
        tracing::info!(clients = expiries.len(), "forgot outcomes past retention");
        self.send(Durable {
            batch,
            replies: Vec::new(),
            invalidations: Vec::new(),
        });
        Ok(expiries.len())
    }

    /// Decides `batch` in as many durable batches as its log records need
    /// (see [`crate::storage::MAX_RECORD_BYTES`]), in order.
    fn decide(&self, mut batch: Vec<Decision>) {
        while !batch.is_empty() {
            let ops: Vec<Op<'_>> = batch
                .iter()
                .map(|decision| match &decision.work {
                    Work::Commit(request) => Op::Commit(request),
                    Work::Resolve(id) => Op::Resolve(*id),
                })
                .collect();
            let applied = self.apply(&ops);
            drop(ops);
            let (results, replicated) = match applied {
                Ok(applied) => applied,
                Err(e) => {
                    tracing::error!(error = %e, size = batch.len(), "commit batch failed; nothing applied");
                    for decision in batch {
                        let _ = decision.reply.send(Err(e.clone()));
                    }
                    return;
                }
            };
            // At least one operation is decided per batch.
            let rest = batch.split_off(results.len().clamp(1, batch.len()));
            tracing::debug!(size = batch.len(), "batch durable");
            metrics::histogram!(crate::metrics::BATCH_SIZE).record(batch.len() as f64);
            let invalidations = batch
                .iter()
                .zip(&results)
                .filter_map(|(decision, result)| match (&decision.work, result) {
                    (Work::Commit(request), Ok(c)) if !c.replayed => {
                        Some(invalidation(c.tid, request))
                    }
                    _ => None,
                })
                .collect();
            self.send(Durable {
                batch: replicated,
                replies: batch.into_iter().zip(results).collect(),
                invalidations,
            });
            batch = rest;
        }
    }
}

/// The invalidation of a commit applied under `tid`.
pub fn invalidation(tid: Tid, request: &CommitRequest) -> Invalidation {
    Invalidation {
        tid,
        keys: written_keys(request),
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
