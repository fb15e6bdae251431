//! One connection to one server: dialing, the session handshake, and
//! request round trips.

use std::net::SocketAddr;

use store_protocol::{
    encode_frame, read_frame, write_frame, FrameError, Hello, Request, Response, SessionEvent,
    SessionRequest, Welcome, WireError,
};
use tokio::time::{timeout_at, Instant};

use crate::error::Error;
use crate::tls::is_tls_failure;

/// Largest session-stream frame the client writes (pings and Hello).
pub(crate) const SESSION_REQUEST_LIMIT: u32 = 64 * 1024;
/// Largest session-stream frame the client accepts: an invalidation lists
/// the keys of one commit, which fit in one request frame.
pub(crate) const SESSION_EVENT_LIMIT: u32 = store_protocol::DEFAULT_MAX_FRAME_BYTES + 64 * 1024;

/// A connection with an open session.
pub(crate) struct Connection {
    pub(crate) connection: quinn::Connection,
    pub(crate) server: String,
    pub(crate) welcome: Welcome,
}

/// A freshly opened session: the connection, its session stream, and when
/// the `Hello` that `Welcome` answered was sent.
pub(crate) struct Opened {
    pub(crate) connection: Connection,
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    pub(crate) hello_sent_at: std::time::Instant,
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

impl RoundTripError {
    /// The error of a request that changes nothing (a read, a backup, a
    /// subscription, a promotion's answer) when it failed here: refused
    /// as unsendable, or unavailable.
    pub(crate) fn unavailable(self) -> Error {
        match self {
            RoundTripError::Unsendable(e) => Error::Rejected(e),
            RoundTripError::NotSent(detail) | RoundTripError::MaybeSent(detail) => {
                Error::Unavailable { detail }
            }
        }
    }
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
    // Every name resolved when the client started (`resolve_now`); failing
    // now is the server's host going away, which may pass.
    let gone = |detail: String| Error::Unavailable { detail };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| gone(format!("resolving {server}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(gone(format!("{server} resolves to no address")));
    }
    Ok((host, addrs))
}

/// The first address of `host:port`, resolved without blocking on DNS
/// longer than the system resolver does (used once, at start).
pub(crate) fn resolve_now(server: &str) -> Result<SocketAddr, Error> {
    use std::net::ToSocketAddrs as _;
    server
        .to_socket_addrs()
        .map_err(|e| Error::Config {
            detail: format!("resolving {server}: {e}"),
        })?
        .next()
        .ok_or_else(|| Error::Config {
            detail: format!("{server} resolves to no address"),
        })
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
    ) -> Result<Opened, Error> {
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
            let hello_sent_at = std::time::Instant::now();
            write_frame(&mut send, &hello, SESSION_REQUEST_LIMIT).await?;
            let event = read_frame::<_, SessionEvent>(&mut recv, SESSION_EVENT_LIMIT).await?;
            Ok::<_, FrameError>((send, recv, event, hello_sent_at))
        };
        let (send, recv, event, hello_sent_at) = match timeout_at(deadline, handshake).await {
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
                Ok(Opened {
                    connection: Connection {
                        connection,
                        server: server.to_string(),
                        welcome,
                    },
                    send,
                    recv,
                    hello_sent_at,
                })
            }
            Some(SessionEvent::Refused { error }) => Err(unavailable(format!("refused: {error}"))),
            other => Err(Error::Protocol {
                detail: format!("{server}: expected Welcome, got {other:?}"),
            }),
        }
    }

    /// True until the connection is closed or lost.
    pub(crate) fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    /// The largest frame the server sends or takes.
    pub(crate) fn frame_limit(&self) -> u32 {
        self.welcome.limits.max_frame_bytes
    }

    /// Sends one request on a new stream and reads its response.
    pub(crate) async fn round_trip(
        &self,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, RoundTripError> {
        let limit = self.frame_limit();
        let (send, mut recv) = self.open(request, deadline).await?;
        let exchange = async {
            send.await?;
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

    /// Opens a stream and hands `request` over by `deadline`, for an answer
    /// read at the caller's pace (a backup, a feed, an unconfirmed write).
    /// Until every byte is handed over the server cannot hold the whole
    /// frame, so any failure here means it was not acted on.
    pub(crate) async fn hand_over(
        &self,
        request: &Request,
        deadline: Instant,
    ) -> Result<quinn::RecvStream, Error> {
        let (write, recv) = self
            .open(request, deadline)
            .await
            .map_err(RoundTripError::unavailable)?;
        match timeout_at(deadline, write).await {
            Ok(Ok(())) => Ok(recv),
            Ok(Err(e)) => Err(Error::Unavailable {
                detail: e.to_string(),
            }),
            Err(_) => Err(Error::Unavailable {
                detail: "timed out handing the request over".into(),
            }),
        }
    }

    /// Opens a stream for `request`: returns the write of the request (to
    /// be awaited; it finishes the client's side) and the stream to read
    /// the answer from.
    async fn open(
        &self,
        request: &Request,
        deadline: Instant,
    ) -> Result<
        (
            impl std::future::Future<Output = Result<(), FrameError>>,
            quinn::RecvStream,
        ),
        RoundTripError,
    > {
        let frame = encode_frame(request, self.frame_limit())
            .map_err(|e| RoundTripError::Unsendable(e.to_wire()))?;
        let (mut send, recv) = timeout_at(deadline, self.connection.open_bi())
            .await
            .map_err(|_| RoundTripError::NotSent("timed out opening a stream".into()))?
            .map_err(|e| RoundTripError::NotSent(e.to_string()))?;
        let write = async move {
            send.write_all(&frame)
                .await
                .map_err(|e| FrameError::Io(e.into()))?;
            let _ = send.finish();
            Ok(())
        };
        Ok((write, recv))
    }
}
