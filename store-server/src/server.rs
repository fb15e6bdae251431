//! The QUIC endpoint: accepts connections, opens their sessions, serves their
//! request streams, and drains on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use store_protocol::peer::PEER_ALPN;
use store_protocol::{Epoch, Limits, Role, ALPN};
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::acl::Acl;
use crate::budget::ByteBudget;
use crate::commit::{CommitPipeline, Committer, Release, WriteEpoch};
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::identity::identity_of;
use crate::invalidation::{Invalidations, DEFAULT_CHANGE_LOG_KEYS, DEFAULT_INTEREST_BUDGET};
use crate::pair::{Pair, PairTasks};
use crate::storage::Storage;
use crate::streams::StreamWindow;
use crate::{session, tls};

/// QUIC close code for a refused session (bad Hello, wrong version, behind).
const CLOSE_REFUSED: u32 = 1;
/// QUIC close code sent to every connection on shutdown.
const CLOSE_SHUTDOWN: u32 = 2;
/// Client connections beyond `--max-sessions` still accepted: room for
/// clients between sessions. (The pair's own links are never counted, so
/// no client can crowd them out.)
const CONNECTION_SLACK: usize = 64;
/// QUIC close code for a client connection past the connection cap.
const CLOSE_OVERLOADED: u32 = 4;

/// State every connection task reads.
pub struct Shared {
    pub(crate) storage: Arc<Storage>,
    pub(crate) invalidations: Arc<Invalidations>,
    pub(crate) committer: Committer,
    pub(crate) limits: Limits,
    /// Membership of an HA pair, if any.
    pub(crate) pair: Option<Arc<Pair>>,
    /// Who may do what.
    pub(crate) acl: Acl,
    pub(crate) sessions: AtomicU64,
    /// See [`ServerConfig::max_sessions`].
    pub(crate) max_sessions: usize,
    /// See [`ServerConfig::max_streams`].
    max_streams: u32,
    /// Bytes of requests held over all connections.
    request_bytes: Arc<tokio::sync::Semaphore>,
    /// Each connection's share of them.
    connection_bytes: u64,
    connections: AtomicUsize,
    pub(crate) draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    /// One backup at a time: each pins the index's old pages while it runs.
    pub(crate) backup_slot: tokio::sync::Semaphore,
    /// See [`ServerConfig::stall_timeout`].
    pub(crate) stall_timeout: std::time::Duration,
}

impl Shared {
    /// The role to report now: `Primary` only while the lease holds.
    pub(crate) fn role(&self) -> Role {
        self.pair
            .as_ref()
            .map_or(Role::Standalone, |pair| pair.role())
    }

    /// The epoch this server knows (always 1 for a standalone server).
    pub(crate) fn epoch(&self) -> Epoch {
        self.pair.as_ref().map_or(Epoch(1), |pair| pair.epoch())
    }

    /// Whether this server may serve reads and writes now.
    pub(crate) fn serving(&self) -> bool {
        self.pair.as_ref().is_none_or(|pair| pair.serving())
    }
}

/// Counts one request as in flight until dropped, so a drain can wait for it.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn start(shared: Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A bound, ready server. Call [`Server::run`] to serve.
pub struct Server {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    pipeline: CommitPipeline,
    pair_tasks: Option<PairTasks>,
    drain_timeout: Duration,
    outcome_retention: Duration,
    /// The metrics and health listener, with the recorder's handle.
    metrics: Option<(
        tokio::net::TcpListener,
        metrics_exporter_prometheus::PrometheusHandle,
    )>,
}

impl Server {
    /// Creates the data directory (and development certificates) if needed,
    /// opens storage and binds the UDP socket.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        crate::config::create_data_dir(&config.data_dir)?;
        let tls_files = match &config.pair {
            Some(pair) => {
                let me = pair.cluster[usize::from(pair.me)];
                let files = config.tls.node_files(me)?;
                crate::identity::require_own_node_cert(&files.cert, me)?;
                files
            }
            None => config.tls.server_files()?,
        };
        let alpn: &[&[u8]] = if config.pair.is_some() {
            &[ALPN, PEER_ALPN]
        } else {
            &[ALPN]
        };
        let crypto = tls::quic_server_crypto(&tls_files, alpn)?;
        let acl = match &config.acl {
            Some(path) => Acl::load(path)?,
            None => Acl::open(),
        };
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    ServerError::io(
                        format!("listening for metrics on {addr} (--metrics-listen ADDR|off)"),
                        e,
                    )
                })?;
                let handle = crate::metrics::install().map_err(ServerError::Config)?;
                Some((listener, handle))
            }
            None => None,
        };
        let db_path = config.data_dir.join(crate::storage::STORE_FILE);
        let storage = Arc::new(Storage::open(&db_path, config.wal)?);
        let invalidations = Arc::new(Invalidations::new(
            storage.last_tid(),
            DEFAULT_CHANGE_LOG_KEYS,
            DEFAULT_INTEREST_BUDGET,
        ));
        invalidations.resume(storage.take_recent_changes());
        let (release, durable, write_epoch) = match config.pair {
            Some(_) => {
                let (to_replicator, durable) =
                    tokio::sync::mpsc::channel(crate::pair::REPLICATOR_QUEUE);
                let write_epoch = WriteEpoch::default();
                (
                    Release::Replicated(to_replicator),
                    Some(durable),
                    write_epoch,
                )
            }
            None => (Release::Now, None, WriteEpoch::standalone()),
        };
        let pipeline = CommitPipeline::start(
            storage.clone(),
            invalidations.clone(),
            config.limits,
            release,
            write_epoch.clone(),
        )
        .map_err(|e| ServerError::io("starting the committer thread", e))?;

        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                config
                    .idle_timeout
                    .try_into()
                    .map_err(|_| ServerError::Config("idle timeout out of range".into()))?,
            ))
            .max_concurrent_bidi_streams(crate::streams::initial(config.max_streams).into())
            .max_concurrent_uni_streams(0u32.into())
            .receive_window(
                quinn::VarInt::from_u64(config.max_connection_bytes).map_err(|_| {
                    ServerError::Config("--max-connection-bytes out of range".into())
                })?,
            );
        let mut server_config = quinn::ServerConfig::with_crypto(crypto);
        server_config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(server_config, config.listen)
            .map_err(|e| ServerError::io(format!("listening on {}", config.listen), e))?;

        tracing::info!(
            data_dir = %config.data_dir.display(),
            last_tid = storage.last_tid().0,
            server_id = %format!("{:016x}", storage.server_id()),
            "storage open"
        );
        let (pair, pair_tasks) = match (config.pair, durable) {
            (Some(pair_config), Some(durable)) => {
                tracing::info!(
                    node = pair_config.me,
                    peer = %pair_config.peer_via,
                    witness = %pair_config.witness,
                    epoch = storage.epoch().0,
                    "member of an HA pair"
                );
                let peer_crypto = crate::pair::peer_client_config(&tls_files)?;
                let (pair, tasks) = Pair::new(
                    pair_config,
                    storage.clone(),
                    invalidations.clone(),
                    config.limits,
                    &endpoint,
                    peer_crypto,
                    durable,
                    write_epoch,
                );
                pair.check_membership(config.join, &config.data_dir).await?;
                (Some(pair), Some(tasks))
            }
            _ => (None, None),
        };
        let shared = Arc::new(Shared {
            committer: pipeline.committer(),
            storage,
            invalidations,
            limits: config.limits,
            pair,
            acl,
            sessions: AtomicU64::new(0),
            max_sessions: config.max_sessions,
            max_streams: config.max_streams,
            request_bytes: crate::budget::server_budget(config.max_request_bytes),
            connection_bytes: config.max_connection_bytes,
            connections: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            backup_slot: tokio::sync::Semaphore::new(1),
            stall_timeout: config.stall_timeout,
        });
        Ok(Server {
            endpoint,
            shared,
            pipeline,
            pair_tasks,
            drain_timeout: config.drain_timeout,
            outcome_retention: config.outcome_retention,
            metrics,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.endpoint
            .local_addr()
            .map_err(|e| ServerError::io("reading the listen address", e))
    }

    /// Serves until `shutdown` completes, then drains: stops accepting,
    /// refuses new commits, waits for in-flight requests (up to the drain
    /// timeout), closes every connection and stops the committer.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let addr = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, "listening");
        let expiry = tokio::spawn(expire_outcomes(self.shared.clone(), self.outcome_retention));
        let http = self.metrics.take().map(|(listener, handle)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics and health listening (HTTP)");
            }
            tokio::spawn(crate::http::serve(listener, self.shared.clone(), handle))
        });
        let pair_tasks = match (&self.shared.pair, self.pair_tasks.take()) {
            (Some(pair), Some(tasks)) => pair.start(tasks),
            _ => Vec::new(),
        };
        tokio::select! {
            () = accept_loop(&self.endpoint, &self.shared) => {}
            () = shutdown => {}
        }
        expiry.abort();
        tracing::info!("draining");
        self.shared.draining.store(true, Ordering::Release);
        self.endpoint.set_server_config(None);
        // The pair's tasks go on while in-flight commits drain: they need
        // the lease and the replication stream.
        let drained = tokio::time::timeout(self.drain_timeout, wait_idle(&self.shared)).await;
        if drained.is_err() {
            tracing::warn!("drain timeout passed with requests still in flight");
        }
        if let Some(pair) = &self.shared.pair {
            pair.hand_over().await;
        }
        for task in pair_tasks.into_iter().chain(http) {
            task.abort();
        }
        self.endpoint
            .close(CLOSE_SHUTDOWN.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        let Server {
            shared, pipeline, ..
        } = self;
        drop(shared);
        pipeline.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Forgets unacknowledged outcomes past `retention`, checking a few times
/// per retention period (at most every minute, at least every 100 ms).
/// Only a serving server decides expiries; a backup applies the primary's.
async fn expire_outcomes(shared: Arc<Shared>, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !shared.serving() {
            continue;
        }
        if let Err(e) = shared.committer.expire(retention).await {
            tracing::warn!(error = %e, "outcome expiry failed");
        }
    }
}

async fn wait_idle(shared: &Shared) {
    loop {
        let notified = shared.idle.notified();
        if shared.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

async fn accept_loop(endpoint: &quinn::Endpoint, shared: &Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(serve_connection(incoming, shared));
    }
}

/// One client connection, counted against the cap until dropped.
struct Counted(Arc<Shared>);

impl Counted {
    fn connection(shared: &Arc<Shared>) -> Option<Counted> {
        let cap = shared.max_sessions.saturating_add(CONNECTION_SLACK);
        shared
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Counted(shared.clone()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::info!(%remote, error = %e, "connection refused during handshake");
            return;
        }
    };
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    if alpn.as_deref() == Some(PEER_ALPN) {
        match &shared.pair {
            Some(pair) => {
                // The pair's own link gets the whole window at once.
                connection.set_max_concurrent_bi_streams(shared.max_streams.into());
                crate::pair::serve_peer(pair.clone(), connection).await
            }
            None => connection.close(CLOSE_REFUSED.into(), b"not a member of a pair"),
        }
        return;
    }
    let Some(_counted) = Counted::connection(&shared) else {
        tracing::warn!(
            %remote,
            limit = shared.max_sessions + CONNECTION_SLACK,
            "connection refused: too many client connections"
        );
        connection.close(CLOSE_OVERLOADED.into(), b"server overloaded");
        return;
    };
    let grant = match identity_of(&connection) {
        Ok(identity) => Arc::new(shared.acl.grant(&identity.name())),
        Err(error) => {
            tracing::info!(%remote, %error, "connection refused: no identity");
            connection.close(CLOSE_REFUSED.into(), error.as_bytes());
            return;
        }
    };
    let span = tracing::info_span!(
        "session",
        %remote,
        identity = %grant.identity,
        client = tracing::field::Empty
    );
    async move {
        let Ok((send, recv)) = connection.accept_bi().await else {
            return;
        };
        let session = match session::open(send, recv, shared.clone(), grant.clone()).await {
            Ok(session) => session,
            Err(error) => {
                tracing::info!(%error, "session refused");
                connection.close(CLOSE_REFUSED.into(), error.to_string().as_bytes());
                return;
            }
        };
        tracing::Span::current().record("client", format!("{:032x}", session.client_id));
        let session_id = session.id;
        tracing::debug!("session open");
        let budget = Arc::new(ByteBudget::for_connection(
            &shared.request_bytes,
            shared.connection_bytes,
        ));
        // The session and the request streams share this task: a session
        // that ends leaves requests served until the connection closes; a
        // connection that closes ends the session.
        let pings = session.serve();
        let requests = serve_requests(&connection, &shared, session_id, &grant, &budget);
        tokio::pin!(pings, requests);
        tokio::select! {
            () = &mut requests => {}
            () = &mut pings => requests.await,
        }
        tracing::debug!("session closed");
    }
    .instrument(span)
    .await;
}

/// Accepts the connection's request streams until it closes, each served
/// by a task of its own.
async fn serve_requests(
    connection: &quinn::Connection,
    shared: &Arc<Shared>,
    session_id: crate::invalidation::SessionId,
    grant: &Arc<crate::acl::Grant>,
    budget: &Arc<ByteBudget>,
) {
    let mut window = StreamWindow::new(connection.clone(), shared.max_streams);
    while let Ok((send, recv)) = connection.accept_bi().await {
        let in_flight = InFlight::start(shared.clone());
        let open = window.opened();
        let (grant, budget) = (grant.clone(), budget.clone());
        tokio::spawn(
            async move {
                let _open = open;
                let request = crate::request::Stream {
                    shared: &in_flight.0,
                    session: session_id,
                    grant: &grant,
                    budget: &budget,
                };
                request.serve(send, recv).await;
            }
            .in_current_span(),
        );
    }
}
