//! Outgoing node-to-node connections: one cached QUIC connection per peer,
//! over the server's own endpoint, with mutual TLS and ALPN
//! `zeolite-peer/1`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::clock::Instant;

use store_protocol::peer::{PeerRequest, PeerResponse};
use store_protocol::{read_frame, write_frame, Limits};

use crate::storage::MAX_RECORD_BYTES;

/// Largest request or answer between nodes (leases, votes, status): a
/// few dozen bytes, with room for a refusal's reason.
pub const PEER_FRAME_LIMIT: u32 = 64 << 10;

/// Largest replication frame: one log record (at most
/// [`MAX_RECORD_BYTES`] of rows, plus the one transaction that crossed it
/// and its outcome), or one chunk of snapshot rows. Bodies are read as they
/// arrive, never allocated up front from the length a peer announces.
pub fn repl_frame_limit(limits: &Limits) -> u32 {
    let envelope = 1 << 20;
    let bound = MAX_RECORD_BYTES
        .saturating_add(limits.max_txn_bytes as usize)
        .saturating_add(limits.max_frame_bytes as usize)
        .saturating_add(envelope);
    u32::try_from(bound).unwrap_or(u32::MAX)
}

/// A link whose peer has not answered anything for this long is redialed
/// after its next unanswered request.
const SILENT_RESET: Duration = Duration::from_secs(1);

/// How long one handshake with a peer may take before it is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one peer, made on first use and remade after a failure.
/// The handshake runs in its own task: a request that gives up waiting
/// does not abandon it (on a loaded machine a handshake can take longer
/// than one lease renewal waits).
pub struct Link {
    /// Where the peer is reached.
    pub addr: SocketAddr,
    /// The node its certificate must name (its `--cluster` or witness
    /// address, which `addr` differs from behind a proxy).
    expected: SocketAddr,
    endpoint: quinn::Endpoint,
    crypto: quinn::ClientConfig,
    slot: Mutex<Slot>,
    dialed: tokio::sync::Notify,
    last_answer: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Slot {
    connection: Option<quinn::Connection>,
    dialing: bool,
    last_error: Option<String>,
}

impl Link {
    /// A link to node `expected`, reached at `addr` through `endpoint`.
    pub fn new(
        addr: SocketAddr,
        expected: SocketAddr,
        endpoint: quinn::Endpoint,
        crypto: quinn::ClientConfig,
    ) -> Link {
        Link {
            addr,
            expected,
            endpoint,
            crypto,
            slot: Mutex::default(),
            dialed: tokio::sync::Notify::new(),
            last_answer: Mutex::new(None),
        }
    }

    fn lock_slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the peer last answered.
    pub fn last_answer(&self) -> Option<Instant> {
        *self
            .last_answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the peer answered within `within`.
    pub fn reachable(&self, within: Duration) -> bool {
        self.last_answer().is_some_and(|at| at.elapsed() < within)
    }

    fn answered(&self) {
        *self
            .last_answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// The open connection, starting a handshake if there is none and
    /// waiting for it (the caller bounds the wait).
    async fn connection(self: &Arc<Self>) -> Result<quinn::Connection, String> {
        loop {
            let dialed = self.dialed.notified();
            {
                let mut slot = self.lock_slot();
                if let Some(connection) = slot.connection.as_ref() {
                    if connection.close_reason().is_none() {
                        return Ok(connection.clone());
                    }
                    slot.connection = None;
                }
                if let Some(error) = slot.last_error.take() {
                    return Err(error);
                }
                if !slot.dialing {
                    slot.dialing = true;
                    tokio::spawn(self.clone().dial());
                }
            }
            dialed.await;
        }
    }

    async fn dial(self: Arc<Self>) {
        let name = self.addr.ip().to_string();
        let result = match self
            .endpoint
            .connect_with(self.crypto.clone(), self.addr, &name)
        {
            Ok(connecting) => match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(connection)) => {
                    crate::identity::require_node(&connection, self.expected).map(|()| connection)
                }
                Ok(Err(e)) => Err(format!("{}: {e}", self.addr)),
                Err(_) => Err(format!("{}: handshake timed out", self.addr)),
            },
            Err(e) => Err(format!("{}: {e}", self.addr)),
        };
        {
            let mut slot = self.lock_slot();
            slot.dialing = false;
            match result {
                Ok(connection) => slot.connection = Some(connection),
                Err(error) => slot.last_error = Some(error),
            }
        }
        self.dialed.notify_waiters();
    }

    /// Forgets a connection that failed, so the next use dials again.
    fn reset(&self, failed: &quinn::Connection) {
        let mut slot = self.lock_slot();
        if slot
            .connection
            .as_ref()
            .is_some_and(|c| c.stable_id() == failed.stable_id())
        {
            failed.close(0u32.into(), b"peer link reset");
            slot.connection = None;
        }
    }

    /// Opens a stream and sends `request` on it (the stream stays open for
    /// a replication stream's frames).
    pub async fn open(
        self: &Arc<Self>,
        request: &PeerRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let connection = self.connection().await?;
        let opened = async {
            let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, request, PEER_FRAME_LIMIT)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((send, recv))
        }
        .await;
        if opened.is_err() {
            self.reset(&connection);
        }
        opened
    }

    /// Sends `request` and waits up to `timeout` for the answer.
    pub async fn request(
        self: &Arc<Self>,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, String> {
        let exchange = async {
            let (mut send, mut recv) = self.open(request).await?;
            let _ = send.finish();
            let answer = read_frame::<_, PeerResponse>(&mut recv, PEER_FRAME_LIMIT)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the peer closed the stream without answering".to_string())?;
            self.answered();
            Ok(answer)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => {
                // A peer that restarted leaves a connection that accepts
                // requests and never answers until QUIC's idle timeout:
                // once nothing has come back for a while, dial afresh.
                if !self.reachable(SILENT_RESET) {
                    let stale = self.lock_slot().connection.clone();
                    if let Some(stale) = stale {
                        self.reset(&stale);
                    }
                }
                Err(format!("{}: no answer within {timeout:?}", self.addr))
            }
        }
    }
}

/// The TLS client configuration for node-to-node connections: this node's
/// certificate as the client certificate, the cluster CA as the only root.
pub fn peer_client_config(
    files: &crate::tls::TlsFiles,
) -> Result<quinn::ClientConfig, crate::ServerError> {
    use store_protocol::pem;
    let roots = pem::load_roots(&files.ca)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(pem::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            pem::load_certs(&files.cert)?,
            pem::load_private_key(&files.key)?,
        )?;
    tls.alpn_protocols = vec![store_protocol::peer::PEER_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| crate::ServerError::Tls(format!("QUIC needs TLS 1.3: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            10_000,
        ))))
        .keep_alive_interval(Some(Duration::from_secs(1)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
