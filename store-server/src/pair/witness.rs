//! The witness server (`store-server witness`): the third vote of a pair.
//! It holds no data, only its `Votes`, made durable in a small redb file
//! before any answer that depends on them.

use super::clock::Instant;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, TableDefinition};
use store_protocol::peer::{NodeId, PeerRequest, PeerResponse, PEER_ALPN};
use store_protocol::{read_frame, write_frame};

use super::lease::LeaseConfig;
use super::link::PEER_FRAME_LIMIT;
use super::votes::{Votes, Witness};
use crate::config::TlsSource;
use crate::error::{ServerError, StorageError};
use crate::identity::admit_node;

/// "votes" → postcard-encoded [`Votes`].
const VOTES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("votes");

/// A witness's configuration.
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    /// Directory holding `witness.redb`.
    pub data_dir: PathBuf,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The data nodes, as in `--cluster` (logged; votes name them by index).
    pub cluster: [SocketAddr; 2],
    /// Certificates (the same CA as the data nodes).
    pub tls: TlsSource,
    /// Lease timing; must match the data nodes'.
    pub lease: LeaseConfig,
}

/// A bound witness; [`WitnessServer::run`] serves it.
pub struct WitnessServer {
    endpoint: quinn::Endpoint,
    cluster: [SocketAddr; 2],
    db: Arc<Database>,
    witness: Arc<Mutex<Witness>>,
}

impl WitnessServer {
    /// Opens the votes file and binds the socket.
    pub async fn bind(config: WitnessConfig) -> Result<WitnessServer, ServerError> {
        crate::config::create_data_dir(&config.data_dir)?;
        let files = config.tls.node_files(config.listen)?;
        crate::identity::require_own_node_cert(&files.cert, config.listen)?;
        let crypto = crate::tls::quic_server_crypto(&files, &[PEER_ALPN])?;
        let db = open_votes(&config.data_dir.join("witness.redb"))?;
        let votes = read_votes(&db)?;
        tracing::info!(
            epoch = votes.epoch.0,
            primary = ?votes.primary.and_then(|n| config.cluster.get(usize::from(n))),
            in_sync = ?votes.in_sync,
            "witness votes loaded"
        );
        let server_config = quinn::ServerConfig::with_crypto(crypto);
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .map_err(|e| ServerError::io(format!("listening on {}", config.listen), e))?;
        Ok(WitnessServer {
            endpoint,
            cluster: config.cluster,
            db: Arc::new(db),
            witness: Arc::new(Mutex::new(Witness::new(
                votes,
                config.lease,
                Instant::now(),
            ))),
        })
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(addr = ?self.endpoint.local_addr().ok(), "witness listening");
        let accept = async {
            while let Some(incoming) = self.endpoint.accept().await {
                let (db, witness) = (self.db.clone(), self.witness.clone());
                let cluster = self.cluster;
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    // Votes are taken only from the data nodes, each
                    // speaking for itself as its certificate names it.
                    let Some(sender) = admit_node(&connection, &cluster)
                        .and_then(|index| NodeId::try_from(index).ok())
                    else {
                        return;
                    };
                    while let Ok((send, recv)) = connection.accept_bi().await {
                        tokio::spawn(serve_stream(
                            db.clone(),
                            witness.clone(),
                            cluster,
                            sender,
                            send,
                            recv,
                        ));
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
        self.endpoint.close(0u32.into(), b"witness shutting down");
        tracing::info!("witness stopped");
    }
}

async fn serve_stream(
    db: Arc<Database>,
    witness: Arc<Mutex<Witness>>,
    cluster: [SocketAddr; 2],
    sender: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Ok(Some(request)) = read_frame::<_, PeerRequest>(&mut recv, PEER_FRAME_LIMIT).await else {
        return;
    };
    // Decide and persist under one lock, on a blocking thread: votes are
    // durable before anyone hears of them, and decided one at a time.
    let answer = tokio::task::spawn_blocking(move || {
        let mut witness = witness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = witness.clone();
        let (answer, changed) = witness.handle(Instant::now(), sender, &request);
        if let Some(votes) = changed {
            if let Err(e) = write_votes(&db, &votes) {
                if matches!(request, PeerRequest::Lease { .. }) {
                    // A renewal's report of the acknowledged end is kept
                    // in memory and saved with the next record; the
                    // lease itself needs no disk.
                    tracing::warn!(error = %e, "cannot persist the acknowledged end; granting");
                    return Some(answer);
                }
                tracing::error!(error = %e, "cannot persist votes; refusing");
                *witness = before;
                return None;
            }
            tracing::info!(epoch = votes.epoch.0, primary = ?votes.primary, in_sync = ?votes.in_sync, "votes recorded");
        }
        Some(answer)
    })
    .await;
    let Ok(Some(mut answer)) = answer else {
        return;
    };
    if let PeerResponse::Status(status) = &mut answer {
        status.cluster = cluster.to_vec();
    }
    if write_frame(&mut send, &answer, PEER_FRAME_LIMIT)
        .await
        .is_ok()
    {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

fn open_votes(path: &Path) -> Result<Database, StorageError> {
    let (db, _) = crate::storage::open_database(path)?;
    let txn = db.begin_write()?;
    txn.open_table(VOTES)?;
    txn.commit()?;
    Ok(db)
}

/// The votes of a witness from before clusters had ids and the witness
/// recorded the acknowledged end: read, and carried over.
#[derive(serde::Deserialize)]
struct VotesV1 {
    epoch: store_protocol::Epoch,
    primary: Option<NodeId>,
    in_sync: [bool; 2],
}

fn read_votes(db: &Database) -> Result<Votes, StorageError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(VOTES)?;
    let Some(bytes) = table.get("votes")? else {
        return Ok(Votes::default());
    };
    let bytes = bytes.value();
    if let Ok(votes) = postcard::from_bytes::<Votes>(bytes) {
        return Ok(votes);
    }
    match postcard::from_bytes::<VotesV1>(bytes) {
        Ok(old) => Ok(Votes {
            epoch: old.epoch,
            primary: old.primary,
            in_sync: old.in_sync,
            members: old.in_sync,
            ..Votes::default()
        }),
        Err(e) => Err(StorageError::corrupt(format!("votes do not decode: {e}"))),
    }
}

fn write_votes(db: &Database, votes: &Votes) -> Result<(), StorageError> {
    let bytes = postcard::to_allocvec(votes)
        .map_err(|e| StorageError::corrupt(format!("encoding votes: {e}")))?;
    let txn = db.begin_write()?;
    txn.open_table(VOTES)?.insert("votes", &bytes[..])?;
    txn.commit()?;
    Ok(())
}
