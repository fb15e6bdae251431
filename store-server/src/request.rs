//! One request stream: read one `Request`, answer one `Response`.

use std::sync::atomic::Ordering;

use store_protocol::{
    content_digest, encode_frame, read_frame_body, read_frame_len, FrameError, LimitKind, Request,
    Response, StatusInfo, WireError,
};

use crate::acl::Grant;
use crate::budget::ByteBudget;
use crate::invalidation::SessionId;
use crate::server::Shared;

/// QUIC application error code sent with `STOP_SENDING` when a request frame
/// is refused before it was read whole (oversize or malformed).
const STOP_BAD_FRAME: u32 = 1;

/// What one request stream is served with.
pub struct Stream<'a> {
    /// The server.
    pub shared: &'a Shared,
    /// The session it belongs to.
    pub session: SessionId,
    /// What the session's identity may do.
    pub grant: &'a Grant,
    /// The bytes its connection (and the server) may hold.
    pub budget: &'a ByteBudget,
}

impl Stream<'_> {
    /// Reads the request, its bytes reserved before its body is read,
    /// answers it, and finishes the stream.
    pub async fn serve(self, send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let limit = self.shared.limits.max_frame_bytes;
        let read = async {
            let Some(len) = read_frame_len(&mut recv, limit).await? else {
                return Ok(None);
            };
            metrics::counter!(crate::metrics::REQUEST_BYTES, "direction" => "in")
                .increment(u64::from(len));
            let reserved = self.budget.reserve(len).await;
            let request = read_frame_body::<_, Request>(&mut recv, len).await?;
            Ok::<_, FrameError>(Some((request, reserved)))
        }
        .await;
        let response = match read {
            Ok(Some((Request::Backup, reserved))) => {
                drop(reserved);
                metrics::counter!(crate::metrics::REQUESTS, "kind" => "backup").increment(1);
                return crate::backup::serve(self.shared, self.grant, send).await;
            }
            Ok(Some((Request::Subscribe(subscribe), reserved))) => {
                drop(reserved);
                metrics::counter!(crate::metrics::REQUESTS, "kind" => "subscribe").increment(1);
                return crate::feed::serve(self.shared, self.grant, send, subscribe).await;
            }
            Ok(Some((request, reserved))) => {
                let response = answer(request, self.shared, self.session, self.grant).await;
                drop(reserved);
                Ok(response)
            }
            Ok(None) => Ok(Response::Error(WireError::Malformed {
                detail: "request stream closed before a request".into(),
            })),
            Err(e) => Err(e),
        };
        respond(send, recv, response, limit).await;
    }
}

/// Writes the response (or the refusal of a bad frame) and finishes.
async fn respond(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    response: Result<Response, FrameError>,
    limit: u32,
) {
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = %e, "bad request frame");
            let _ = recv.stop(STOP_BAD_FRAME.into());
            Response::Error(e.to_wire())
        }
    };
    let frame = match encode_frame(&response, limit) {
        Ok(frame) => frame,
        Err(e) => match encode_frame(&Response::Error(e.to_wire()), limit) {
            Ok(frame) => frame,
            Err(_) => return,
        },
    };
    metrics::counter!(crate::metrics::REQUEST_BYTES, "direction" => "out")
        .increment(frame.len() as u64);
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
}

async fn answer(request: Request, shared: &Shared, session: SessionId, grant: &Grant) -> Response {
    let kind = kind(&request);
    metrics::counter!(crate::metrics::REQUESTS, "kind" => kind).increment(1);
    let started = std::time::Instant::now();
    let answer = decide(request, shared, session, grant).await;
    if let Err(WireError::TooLarge { what, .. }) = &answer {
        let limit = format!("{what:?}").to_lowercase();
        metrics::counter!(crate::metrics::REFUSALS, "limit" => limit).increment(1);
    }
    if kind == "commit" {
        metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed());
        metrics::counter!(crate::metrics::COMMITS, "outcome" => outcome(&answer)).increment(1);
    }
    match answer {
        Ok(response) => response,
        Err(error) => Response::Error(error),
    }
}

/// A request's kind, as `zeolite_requests_total` labels it.
fn kind(request: &Request) -> &'static str {
    match request {
        Request::Get { .. } => "get",
        Request::GetMany { .. } => "get_many",
        Request::Scan(_) => "scan",
        Request::Commit(_) => "commit",
        Request::Resolve { .. } => "resolve",
        Request::Status => "status",
        Request::Promote { .. } => "promote",
        Request::Backup => "backup",
        Request::Subscribe(_) => "subscribe",
    }
}

/// A commit's outcome, as `zeolite_commits_total` labels it.
fn outcome(answer: &Result<Response, WireError>) -> &'static str {
    match answer {
        Ok(Response::Committed(c)) if c.replayed => "replayed",
        Ok(_) => "committed",
        Err(WireError::Conflict { .. }) => "conflict",
        Err(WireError::Abandoned) => "abandoned",
        Err(WireError::Expired) => "expired",
        Err(
            WireError::NotPrimary { .. }
            | WireError::ShuttingDown
            | WireError::InProgress
            | WireError::Overloaded,
        ) => "unavailable",
        Err(WireError::Internal { .. } | WireError::Unconfirmed { .. }) => "failed",
        Err(_) => "rejected",
    }
}

async fn decide(
    request: Request,
    shared: &Shared,
    session: SessionId,
    grant: &Grant,
) -> Result<Response, WireError> {
    let limits = &shared.limits;
    match request {
        Request::Get { key } => {
            serving(shared)?;
            limits.check_key(&key)?;
            grant.read(&key)?;
            // The client may cache what it reads: route the key's future
            // invalidations to it, registered before the snapshot is taken.
            shared
                .invalidations
                .register(session, std::slice::from_ref(&key));
            let (found, read_tid) = shared.storage.get(&key).map_err(internal)?;
            settled(shared, read_tid).await?;
            Ok(Response::Value { found, read_tid })
        }
        Request::GetMany { keys } => {
            if keys.len() > limits.max_ops_per_txn as usize {
                return Err(WireError::TooLarge {
                    what: LimitKind::Ops,
                    size: keys.len() as u64,
                    limit: u64::from(limits.max_ops_per_txn),
                });
            }
            for key in &keys {
                limits.check_key(key)?;
                grant.read(key)?;
            }
            serving(shared)?;
            shared.invalidations.register(session, &keys);
            let (values, read_tid) = shared.storage.get_many(&keys).map_err(internal)?;
            settled(shared, read_tid).await?;
            Ok(Response::Values { values, read_tid })
        }
        Request::Scan(scan) => {
            serving(shared)?;
            limits.check_key(&scan.start)?;
            if let Some(end) = &scan.end {
                limits.check_key(end)?;
            }
            grant.scan(&scan)?;
            // Leave room in the frame for the envelope and per-entry lengths.
            let budget = (limits.max_frame_bytes as usize) / 2;
            let (entries, more, read_tid) = shared
                .storage
                .scan(&scan, limits.max_ops_per_txn as usize, budget)
                .map_err(internal)?;
            settled(shared, read_tid).await?;
            Ok(Response::Entries { entries, more })
        }
        Request::Commit(commit) => {
            accepting_writes(shared)?;
            limits.check_commit(&commit)?;
            for read in &commit.read_set {
                grant.read(&read.key)?;
            }
            for write in &commit.writes {
                grant.write(write.key())?;
            }
            grant.transaction(commit.txn_id.client_id)?;
            if content_digest(&commit.read_set, &commit.writes) != commit.digest {
                return Err(WireError::DigestMismatch);
            }
            if commit.txn_id.seq == u64::MAX {
                return Err(WireError::Malformed {
                    detail: "seq u64::MAX is reserved".into(),
                });
            }
            if commit.acked_below > commit.txn_id.seq {
                return Err(WireError::Malformed {
                    detail: "acked_below is past the transaction's own seq".into(),
                });
            }
            Ok(Response::Committed(shared.committer.commit(commit).await?))
        }
        Request::Resolve { txn_id } => {
            accepting_writes(shared)?;
            grant.transaction(txn_id.client_id)?;
            Ok(Response::Committed(shared.committer.resolve(txn_id).await?))
        }
        Request::Status => Ok(Response::Status(status(shared))),
        Request::Promote { force } => {
            grant.admin("promote")?;
            let Some(pair) = &shared.pair else {
                return Err(WireError::PromoteRefused {
                    reason: "a standalone server is always writable".into(),
                });
            };
            pair.promote(force).await?;
            Ok(Response::Status(status(shared)))
        }
        // Streamed by `backup::serve` and `feed::serve` before they get here.
        Request::Backup | Request::Subscribe(_) => Err(WireError::Malformed {
            detail: "answered on its own stream".into(),
        }),
    }
}

fn status(shared: &Shared) -> StatusInfo {
    StatusInfo {
        role: shared.role(),
        epoch: shared.epoch(),
        last_tid: shared.storage.last_tid(),
        server_id: shared.storage.server_id(),
        sessions: shared.sessions.load(Ordering::Relaxed),
        pair: shared.pair.as_ref().map(|pair| pair.status()),
    }
}

/// Reads, backups and feeds are served only by a primary holding its
/// lease (or a standalone server): a backup or a deposed primary may be
/// behind.
pub(crate) fn serving(shared: &Shared) -> Result<(), WireError> {
    if shared.serving() {
        Ok(())
    } else {
        Err(WireError::NotPrimary {
            epoch: shared.epoch(),
        })
    }
}

/// A read may see a batch that is durable here but not yet on the backup
/// (not acknowledged, so a failover could lose it): answer it only once
/// that batch is acknowledged, and only if this node still serves.
pub(crate) async fn settled(
    shared: &Shared,
    read_tid: store_protocol::Tid,
) -> Result<(), WireError> {
    if !shared
        .invalidations
        .wait_published(read_tid, std::time::Duration::from_secs(5))
        .await
    {
        return Err(WireError::InProgress);
    }
    serving(shared)
}

/// Commits and resolves are refused before any decision while draining or
/// when this server is not the writable one.
fn accepting_writes(shared: &Shared) -> Result<(), WireError> {
    if shared.draining.load(Ordering::Acquire) {
        return Err(WireError::ShuttingDown);
    }
    serving(shared)
}

fn internal(e: crate::error::StorageError) -> WireError {
    tracing::error!(error = %e, "storage read failed");
    WireError::Internal {
        detail: format!("storage: {e}"),
    }
}
