//! The session stream: `Hello` → `Welcome` (or a refusal), then pings
//! answered with pongs, on the stream with the highest send priority.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use store_protocol::{
    read_frame, write_frame, Hello, Pong, SessionEvent, SessionRequest, Welcome, WireError,
    PROTOCOL_VERSION,
};

use crate::server::Shared;

/// Largest session-stream frame: sessions carry only small control messages.
const SESSION_FRAME_LIMIT: u32 = 64 * 1024;

/// An open session: counted in `status` until dropped.
pub struct Session {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: Arc<Shared>,
    /// The client's random id.
    pub client_id: u128,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads `Hello` and answers `Welcome`, or `Refused` with the reason.
pub async fn open(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
) -> Result<Session, WireError> {
    // Pongs and invalidations must never wait behind request data.
    let _ = send.set_priority(i32::MAX);
    let decided = match read_frame::<_, SessionRequest>(&mut recv, SESSION_FRAME_LIMIT).await {
        Ok(Some(SessionRequest::Hello(hello))) => admit(&hello, &shared).map(|w| (hello, w)),
        Ok(Some(SessionRequest::Ping { .. })) | Ok(None) => Err(WireError::NoSession),
        Err(e) => Err(e.to_wire()),
    };
    match decided {
        Ok((hello, welcome)) => {
            write_frame(
                &mut send,
                &SessionEvent::Welcome(welcome),
                SESSION_FRAME_LIMIT,
            )
            .await
            .map_err(|e| WireError::Malformed {
                detail: e.to_string(),
            })?;
            shared.sessions.fetch_add(1, Ordering::Relaxed);
            Ok(Session {
                send,
                recv,
                shared,
                client_id: hello.client_id,
            })
        }
        Err(error) => {
            let refusal = SessionEvent::Refused {
                error: error.clone(),
            };
            let _ = write_frame(&mut send, &refusal, SESSION_FRAME_LIMIT).await;
            let _ = send.finish();
            let _ = send.stopped().await;
            Err(error)
        }
    }
}

fn admit(hello: &Hello, shared: &Shared) -> Result<Welcome, WireError> {
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
    Ok(Welcome {
        server_id: shared.storage.server_id(),
        role: shared.role,
        epoch: shared.epoch,
        last_tid,
        limits: shared.limits,
    })
}

impl Session {
    /// Answers pings until the client closes the stream or breaks the protocol.
    pub async fn serve(mut self) {
        loop {
            match read_frame::<_, SessionRequest>(&mut self.recv, SESSION_FRAME_LIMIT).await {
                Ok(Some(SessionRequest::Ping { seq })) => {
                    let pong = SessionEvent::Pong(Pong {
                        seq,
                        last_tid: self.shared.storage.last_tid(),
                        epoch: self.shared.epoch,
                        role: self.shared.role,
                    });
                    if write_frame(&mut self.send, &pong, SESSION_FRAME_LIMIT)
                        .await
                        .is_err()
                    {
                        return;
                    }
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
}
