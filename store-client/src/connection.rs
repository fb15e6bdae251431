//! One connection to one server: dialing, the session handshake, and
//! request round trips.

use std::net::SocketAddr;

use store_protocol::{
    encode_frame, read_frame, write_frame, FrameError, Hello, Request, Response, SessionEvent,
    SessionRequest, Tid, Welcome, WireError,
};
use tokio::time::{timeout_at, Instant};

use crate::error::Error;
use crate::tls::is_tls_failure;

/// Largest session-stream frame the client accepts.
const SESSION_FRAME_LIMIT: u32 = 64 * 1024;

/// A connection with an open session.
pub(crate) struct Connection {
    pub(crate) connection: quinn::Connection,
    pub(crate) server: String,
    pub(crate) welcome: Welcome,
    /// The session stream, kept open for the session's life.
    _session: (quinn::SendStream, quinn::RecvStream),
}

/// How a round trip failed: whether the request may have reached the server.
#[derive(Debug)]
pub(crate) enum RoundTripError {
    /// The request was not sent: safe to send again.
    NotSent(String),
    /// The request may have been received: a write may have been applied.
    MaybeSent(String),
    /// The request cannot be sent at all (over the frame limit).
    Unsendable(WireError),
}

/// Splits `host:port` (or `[v6]:port`) into the TLS server name and the
/// resolved addresses.
pub(crate) async fn resolve(server: &str) -> Result<(String, Vec<SocketAddr>), Error> {
    let bad = |detail: String| Error::Config { detail };
    let (host, _port) = server
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("server address {server:?} has no port (host:port)")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| bad(format!("resolving {server}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad(format!("{server} resolves to no address")));
    }
    Ok((host, addrs))
}

impl Connection {
    /// Connects to `server`, sends `Hello` and waits for `Welcome`, all
    /// before `deadline`.
    pub(crate) async fn dial(
        endpoint: &quinn::Endpoint,
        crypto: &quinn::ClientConfig,
        server: &str,
        hello: Hello,
        deadline: Instant,
    ) -> Result<Connection, Error> {
        let (host, addrs) = resolve(server).await?;
        let unavailable = |detail: String| Error::Unavailable {
            detail: format!("{server}: {detail}"),
        };
        let connection_error = |e: quinn::ConnectionError| {
            if is_tls_failure(&e) {
                Error::Tls {
                    detail: format!("{server}: {e}"),
                }
            } else {
                unavailable(e.to_string())
            }
        };
        let connecting = endpoint
            .connect_with(crypto.clone(), addrs[0], &host)
            .map_err(|e| unavailable(e.to_string()))?;
        let timed_out = || unavailable("timed out".into());
        let connection = timeout_at(deadline, connecting)
            .await
            .map_err(|_| timed_out())?
            .map_err(connection_error)?;
        let handshake = async {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| FrameError::Io(e.into()))?;
            let _ = send.set_priority(i32::MAX);
            let hello = SessionRequest::Hello(hello);
            write_frame(&mut send, &hello, SESSION_FRAME_LIMIT).await?;
            let event = read_frame::<_, SessionEvent>(&mut recv, SESSION_FRAME_LIMIT).await?;
            Ok::<_, FrameError>((send, recv, event))
        };
        let (send, recv, event) = match timeout_at(deadline, handshake).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(done)) => done,
            // A server that refuses the client certificate does so after the
            // client's side of the handshake: it shows as a closed connection.
            Ok(Err(e)) => {
                return Err(match connection.close_reason() {
                    Some(reason) => connection_error(reason),
                    None => unavailable(format!("session handshake: {e}")),
                })
            }
        };
        match event {
            Some(SessionEvent::Welcome(welcome)) => {
                tracing::debug!(%server, last_tid = welcome.last_tid.0, role = %welcome.role, "session open");
                Ok(Connection {
                    connection,
                    server: server.to_string(),
                    welcome,
                    _session: (send, recv),
                })
            }
            Some(SessionEvent::Refused { error }) => Err(unavailable(format!("refused: {error}"))),
            other => Err(Error::Protocol {
                detail: format!("{server}: expected Welcome, got {other:?}"),
            }),
        }
    }

    /// The highest TID this server had when the session opened.
    pub(crate) fn last_tid(&self) -> Tid {
        self.welcome.last_tid
    }

    /// Sends one request on a new stream and reads its response.
    pub(crate) async fn round_trip(
        &self,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, RoundTripError> {
        let limit = self.welcome.limits.max_frame_bytes;
        let frame =
            encode_frame(request, limit).map_err(|e| RoundTripError::Unsendable(e.to_wire()))?;
        let (mut send, mut recv) = timeout_at(deadline, self.connection.open_bi())
            .await
            .map_err(|_| RoundTripError::NotSent("timed out opening a stream".into()))?
            .map_err(|e| RoundTripError::NotSent(e.to_string()))?;
        let exchange = async {
            send.write_all(&frame)
                .await
                .map_err(|e| FrameError::Io(e.into()))?;
            let _ = send.finish();
            read_frame::<_, Response>(&mut recv, limit).await
        };
        match timeout_at(deadline, exchange).await {
            Err(_) => Err(RoundTripError::MaybeSent("timed out".into())),
            Ok(Err(e)) => Err(RoundTripError::MaybeSent(e.to_string())),
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(RoundTripError::MaybeSent(
                "stream closed without a response".into(),
            )),
        }
    }
}
