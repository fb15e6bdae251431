//! The session stream: `Hello` → `Welcome` (with cache revalidation) or a
//! refusal; then, on the stream with the highest send priority, pings in one
//! direction and, in TID order, invalidations and pongs in the other.
//!
//! A pong is written only after every invalidation published before the
//! ping was handled, and its `last_tid` names the last one written, so a
//! client that applies the stream in order knows exactly what a pong proves.
//! Nothing on this path touches the disk or waits for the commit pipeline.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use store_protocol::{
    read_frame, write_frame, Hello, Pong, SessionEvent, SessionRequest, Tid, Welcome, WireError,
    MIN_PING_SPACING, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::acl::Grant;
use crate::invalidation::{Invalidation, SessionId};
use crate::server::Shared;

/// Largest frame a client may send on its session stream (pings and Hello).
const CLIENT_SESSION_FRAME_LIMIT: u32 = 64 * 1024;
/// Largest revalidation list sent in `Welcome`; past it, the client is told
/// to drop its cache (a bigger list would cost more than refetching).
const MAX_REVALIDATION_BYTES: usize = 1024 * 1024;

/// An open session.
pub struct Session {
    writer: EventWriter,
    recv: quinn::RecvStream,
    /// The client's random id.
    pub client_id: u128,
    /// The session's id for invalidation routing.
    pub id: SessionId,
}

/// The server → client half of a session.
struct EventWriter {
    send: quinn::SendStream,
    shared: Arc<Shared>,
    /// What the session's identity may read: it hears of no other key.
    grant: Arc<Grant>,
    invalidations: mpsc::Receiver<Arc<Invalidation>>,
    /// The last TID whose invalidation this session has written (or covered
    /// in `Welcome`).
    written_tid: Tid,
    _registered: Registered,
}

/// Counts an open session in `status` and keeps its invalidation route
/// until dropped.
struct Registered {
    shared: Arc<Shared>,
    id: SessionId,
}

impl Registered {
    /// Counts a new session, or refuses it as `Overloaded` past
    /// `--max-sessions`.
    fn admit(shared: &Arc<Shared>) -> Result<Registered, WireError> {
        let cap = shared.max_sessions as u64;
        shared
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .map_err(|n| {
                tracing::warn!(
                    sessions = n,
                    limit = cap,
                    "session refused: --max-sessions reached"
                );
                WireError::Overloaded
            })?;
        // Its route is added, and its id set, once it is admitted.
        Ok(Registered {
            shared: shared.clone(),
            id: SessionId::default(),
        })
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.sessions.fetch_sub(1, Ordering::AcqRel);
        self.shared.invalidations.unsubscribe(self.id);
    }
}

/// The largest session-stream frame the server may write: an invalidation
/// lists the keys of one commit, which fit in one request frame.
fn event_frame_limit(shared: &Shared) -> u32 {
    shared.limits.max_frame_bytes.saturating_add(64 * 1024)
}

/// Reads `Hello` and answers `Welcome`, or `Refused` with the reason.
pub async fn open(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    grant: Arc<Grant>,
) -> Result<Session, WireError> {
    // Pongs and invalidations must never wait behind request data.
    let _ = send.set_priority(i32::MAX);
    let hello = match read_frame::<_, SessionRequest>(&mut recv, CLIENT_SESSION_FRAME_LIMIT).await {
        Ok(Some(SessionRequest::Hello(hello))) => admit(&hello, &shared)
            .and_then(|()| Registered::admit(&shared))
            .map(|registered| (hello, registered)),
        Ok(Some(SessionRequest::Ping { .. })) | Ok(None) => Err(WireError::NoSession),
        Err(e) => Err(e.to_wire()),
    };
    let (hello, mut registered) = match hello {
        Ok(admitted) => admitted,
        Err(error) => {
            let refusal = SessionEvent::Refused {
                error: error.clone(),
            };
            let _ = write_frame(&mut send, &refusal, CLIENT_SESSION_FRAME_LIMIT).await;
            let _ = send.finish();
            let _ = send.stopped().await;
            return Err(error);
        }
    };
    let subscription = shared
        .invalidations
        .subscribe(hello.cached_tid, hello.holds_cache);
    registered.id = subscription.id;
    let changed = subscription
        .changed
        .map(|keys| grant.readable(keys))
        .filter(|keys| keys.iter().map(Bytes::len).sum::<usize>() <= MAX_REVALIDATION_BYTES);
    let welcome = Welcome {
        server_id: shared.storage.server_id(),
        role: shared.role(),
        epoch: shared.epoch(),
        last_tid: subscription.covered_tid,
        limits: shared.limits,
        changed_since_cached: changed,
    };
    write_frame(
        &mut send,
        &SessionEvent::Welcome(welcome),
        event_frame_limit(&shared),
    )
    .await
    .map_err(|e| WireError::Malformed {
        detail: e.to_string(),
    })?;
    Ok(Session {
        writer: EventWriter {
            send,
            invalidations: subscription.receiver,
            written_tid: subscription.covered_tid,
            _registered: registered,
            shared,
            grant,
        },
        recv,
        client_id: hello.client_id,
        id: subscription.id,
    })
}

fn admit(hello: &Hello, shared: &Shared) -> Result<(), WireError> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion {
            client: hello.protocol_version,
            server: PROTOCOL_VERSION,
        });
    }
    let last_tid = shared.storage.last_tid();
    if hello.last_seen_tid > last_tid {
        return Err(WireError::ServerBehind {
            server_last_tid: last_tid,
            client_last_seen: hello.last_seen_tid,
        });
    }
    Ok(())
}

impl Session {
    /// Serves the session until the client closes it, breaks the protocol,
    /// or falls so far behind on invalidations that it must revalidate.
    pub async fn serve(self) {
        let Session {
            mut writer, recv, ..
        } = self;
        // Both halves run in this one task (an idle session is one task,
        // woken once per ping); the reader ending closes the queue, which
        // ends the writer.
        let (pings, mut ping_queue) = mpsc::channel(4);
        let reader = read_pings(recv, pings);
        let writer = writer.write_events(&mut ping_queue);
        tokio::pin!(reader, writer);
        let result = tokio::select! {
            result = &mut writer => result,
            () = &mut reader => writer.await,
        };
        if let Err(reason) = result {
            tracing::info!(reason, "session ended");
        }
    }
}

impl EventWriter {
    async fn write_events(&mut self, pings: &mut mpsc::Receiver<u64>) -> Result<(), &'static str> {
        loop {
            tokio::select! {
                biased;
                routed = self.invalidations.recv() => match routed {
                    Some(invalidation) => self.write_invalidation(&invalidation).await?,
                    None => return Err("too far behind on invalidations"),
                },
                ping = pings.recv() => match ping {
                    Some(seq) => self.write_pong(seq).await?,
                    None => return Ok(()),
                },
            }
        }
    }

    async fn write_invalidation(
        &mut self,
        invalidation: &Invalidation,
    ) -> Result<(), &'static str> {
        if invalidation.tid <= self.written_tid {
            return Ok(()); // already covered by Welcome
        }
        let keys = self.grant.readable(invalidation.keys.clone());
        if keys.is_empty() {
            // Nothing this identity may read changed: nothing to tell.
            self.written_tid = invalidation.tid;
            return Ok(());
        }
        let event = SessionEvent::Invalidate {
            tid: invalidation.tid,
            keys,
        };
        write_frame(&mut self.send, &event, event_frame_limit(&self.shared))
            .await
            .map_err(|_| "session stream closed")?;
        metrics::counter!(crate::metrics::INVALIDATIONS_SENT).increment(1);
        self.written_tid = invalidation.tid;
        Ok(())
    }

    /// Writes every invalidation routed here so far, then the pong: it
    /// covers every commit published up to its `last_tid`.
    async fn write_pong(&mut self, seq: u64) -> Result<(), &'static str> {
        let (pending, last_tid) = self.shared.invalidations.drain(&mut self.invalidations);
        for invalidation in &pending {
            self.write_invalidation(invalidation).await?;
        }
        let pong = SessionEvent::Pong(Pong {
            seq,
            last_tid: last_tid.max(self.written_tid),
            epoch: self.shared.epoch(),
            role: self.shared.role(),
        });
        write_frame(&mut self.send, &pong, event_frame_limit(&self.shared))
            .await
            .map_err(|_| "session stream closed")?;
        metrics::counter!(crate::metrics::PONGS).increment(1);
        Ok(())
    }
}

/// Reads pings and forwards those at least [`MIN_PING_SPACING`] apart; the
/// rest are dropped unanswered, so a misbehaving client cannot turn the
/// session stream into a load generator.
async fn read_pings(mut recv: quinn::RecvStream, pings: mpsc::Sender<u64>) {
    let mut last_answered: Option<Instant> = None;
    loop {
        match read_frame::<_, SessionRequest>(&mut recv, CLIENT_SESSION_FRAME_LIMIT).await {
            Ok(Some(SessionRequest::Ping { seq })) => {
                let now = Instant::now();
                if last_answered.is_some_and(|at| now.duration_since(at) < MIN_PING_SPACING) {
                    metrics::counter!(crate::metrics::PINGS_DROPPED).increment(1);
                    continue;
                }
                last_answered = Some(now);
                // A full queue means pongs are already pending: drop this one.
                let _ = pings.try_send(seq);
            }
            Ok(Some(SessionRequest::Hello(_))) => {
                tracing::debug!("second Hello on an open session; closing it");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "session stream failed");
                return;
            }
        }
    }
}
