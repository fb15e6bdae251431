//! Outgoing node-to-node connections: one cached QUIC connection per peer,
//! over the server's own endpoint, with mutual TLS and ALPN
//! `zeolite-peer/1`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use store_protocol::peer::{PeerRequest, PeerResponse};
use store_protocol::{read_frame, write_frame};

/// Largest frame on a node-to-node stream: a batch of commits can hold
/// up to the commit pipeline's batch size of full frames, so the limit is
/// generous; it only guards against a peer that sends garbage.
pub const PEER_FRAME_LIMIT: u32 = 1 << 30;

/// A connection to one peer, made on first use and remade after a failure.
pub struct Link {
    /// The peer's address.
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    crypto: quinn::ClientConfig,
    connection: tokio::sync::Mutex<Option<quinn::Connection>>,
    last_answer: Mutex<Option<Instant>>,
}

impl Link {
    /// A link to `addr` through `endpoint`.
    pub fn new(addr: SocketAddr, endpoint: quinn::Endpoint, crypto: quinn::ClientConfig) -> Link {
        Link {
            addr,
            endpoint,
            crypto,
            connection: tokio::sync::Mutex::new(None),
            last_answer: Mutex::new(None),
        }
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

    /// The open connection, dialing if there is none.
    async fn connection(&self) -> Result<quinn::Connection, String> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(connection.clone());
        }
        let name = self.addr.ip().to_string();
        let connection = self
            .endpoint
            .connect_with(self.crypto.clone(), self.addr, &name)
            .map_err(|e| format!("{}: {e}", self.addr))?
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets a connection that failed, so the next use dials again.
    async fn reset(&self, failed: &quinn::Connection) {
        let mut slot = self.connection.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.stable_id() == failed.stable_id())
        {
            failed.close(0u32.into(), b"peer link reset");
            *slot = None;
        }
    }

    /// Opens a stream and sends `request` on it (the stream stays open for
    /// a replication stream's frames).
    pub async fn open(
        &self,
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
            self.reset(&connection).await;
        }
        opened
    }

    /// Sends `request` and waits up to `timeout` for the answer.
    pub async fn request(
        &self,
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
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("{}: no answer within {timeout:?}", self.addr)))
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
