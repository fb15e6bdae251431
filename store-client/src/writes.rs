//! Write policies other than [`WritePolicy::Retry`] (which is
//! `Client::send_commit`): one send and a report, or one send and no wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use store_protocol::{read_frame, CommitRequest, Request, Response, Tid, WireError};
use tokio::time::Instant;

use crate::client::{commit_error, is_retry_signal, Client};
use crate::config::{ReadPolicy, WritePolicy};
use crate::connection::RoundTripError;
use crate::error::Error;
use crate::metrics::UNCONFIRMED_FAILURES;
use crate::txn::{CommitError, CommitOutcome, PreparedTxn};

impl Client {
    /// A handle whose writes follow `policy`, sharing this client's
    /// session: the policy is chosen per call.
    ///
    /// ```no_run
    /// # async fn run(client: store_client::Client) -> Result<(), store_client::CommitError> {
    /// use store_client::WritePolicy;
    /// // A metric nobody must wait for: sent once, never twice.
    /// client.with_write_policy(WritePolicy::Unconfirmed).incr("hits", 1).await?;
    /// // A write the caller wants a quick verdict on, or none at all.
    /// client.with_write_policy(WritePolicy::FailFast).put("k", "v").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_write_policy(&self, policy: WritePolicy) -> Client {
        let mut handle = self.clone();
        handle.write_policy = policy;
        handle
    }

    /// [`WritePolicy::FailFast`]: refused unless the session is live, then
    /// one send and one attempt; no resend, no `resolve`.
    pub(crate) async fn send_once(&self, request: &CommitRequest) -> Result<CommitOutcome, Error> {
        let txn_id = request.txn_id;
        let deadline = self.deadline();
        let connection = self
            .connection(ReadPolicy::FailFast, deadline, None)
            .await?;
        let attempt = (Instant::now() + self.attempt_timeout()).min(deadline);
        let unknown = |detail: String| {
            metrics::counter!(crate::metrics::OUTCOMES_UNKNOWN).increment(1);
            Error::OutcomeUnknown { txn_id, detail }
        };
        let request = Request::Commit(request.clone());
        match self.round_trip(&connection, &request, attempt).await {
            Ok(Response::Committed(c)) => Ok(self.committed(txn_id, c)),
            Ok(Response::Error(e)) if !is_retry_signal(&e) => Err(commit_error(txn_id, e)),
            // Refused before any decision: not applied.
            Ok(Response::Error(
                e
                @ (WireError::NotPrimary { .. } | WireError::ShuttingDown | WireError::Overloaded),
            )) => {
                if matches!(e, WireError::NotPrimary { .. }) {
                    self.not_primary(&connection);
                }
                Err(Error::Unavailable {
                    detail: e.to_string(),
                })
            }
            Ok(Response::Error(e)) => Err(unknown(e.to_string())),
            Ok(other) => Err(unknown(format!("unexpected response {other:?}"))),
            Err(RoundTripError::Unsendable(e)) => Err(Error::Rejected(e)),
            Err(RoundTripError::NotSent(detail)) => Err(Error::Unavailable { detail }),
            Err(RoundTripError::MaybeSent(detail)) => Err(unknown(detail)),
        }
    }

    /// [`WritePolicy::Unconfirmed`]: refused unless the session is live,
    /// then handed to the connection; its answer is awaited by a task of
    /// its own, which holds the transaction's id unresolved until then (a
    /// later commit's `acked_below` must not pass it before it arrives).
    pub(crate) async fn send_unconfirmed(
        &self,
        prepared: PreparedTxn,
    ) -> Result<CommitOutcome, CommitError> {
        let txn_id = prepared.txn_id();
        let deadline = self.deadline();
        let connection = match self.connection(ReadPolicy::FailFast, deadline, None).await {
            Ok(connection) => connection,
            Err(e) => return Err(CommitError::new(e, prepared)),
        };
        let request = Request::Commit(prepared.request.clone());
        // Not handed over whole: not applied.
        let mut recv = match connection.hand_over(&request, deadline).await {
            Ok(recv) => recv,
            Err(e) => return Err(CommitError::new(e, prepared)),
        };
        let shared = Arc::clone(self.inner_shared());
        let unanswered = self.unanswered().start();
        let limit = connection.frame_limit();
        let wait = self.config().timeout;
        tokio::spawn(async move {
            let answer =
                tokio::time::timeout(wait, read_frame::<_, Response>(&mut recv, limit)).await;
            match answer {
                Ok(Ok(Some(Response::Committed(c)))) => {
                    shared.saw(c.tid);
                    let written = prepared.request.writes.iter().map(|w| w.key().clone());
                    shared.cache.own_commit(c.tid, written);
                }
                other => {
                    tracing::debug!(txn = %txn_id, answer = ?other, "unconfirmed write failed");
                    metrics::counter!(UNCONFIRMED_FAILURES).increment(1);
                }
            }
            drop(prepared);
            drop(unanswered);
        });
        Ok(CommitOutcome {
            tid: Tid::ZERO,
            txn_id,
            results: Vec::new(),
            replayed: false,
            confirmed: false,
        })
    }
}

/// Unconfirmed writes whose answer has not come yet: [`Client::close`]
/// gives them a moment, so that a write handed over just before closing
/// is not dropped with the connection.
#[derive(Debug, Default)]
pub(crate) struct Unanswered {
    count: AtomicUsize,
    done: tokio::sync::Notify,
}

/// One unconfirmed write in flight, until dropped.
pub(crate) struct InFlight(Arc<Unanswered>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Unanswered {
    fn start(self: &Arc<Self>) -> InFlight {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Waits until none is in flight, or `within` passes.
    pub(crate) async fn drained(&self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                let done = self.done.notified();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
    }
}
