//! The client handle: connects, reads, and commits transactions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use store_protocol::{
    CommitRequest, Entry, Hello, Request, Response, ScanRequest, StatusInfo, Tid, Versioned,
    WireError, PROTOCOL_VERSION,
};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::config::ClientConfig;
use crate::connection::{resolve, Connection, RoundTripError};
use crate::error::Error;
use crate::tls::quic_client_config;
use crate::txn::{CommitOutcome, Transaction, TxnIds};

/// A connection to a Zeolite store. Cheap to clone; clones share one
/// connection and one transaction-id space.
///
/// ```no_run
/// use store_client::{Client, ClientConfig};
/// # async fn demo() -> Result<(), store_client::Error> {
/// let client = Client::connect(ClientConfig::default()).await?;
/// client.put("greeting", "hello").await?;
/// assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
/// let outcome = client.incr("visits", 1).await?;
/// println!("visits = {:?} (tid {})", outcome.counter(), outcome.tid);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    crypto: quinn::ClientConfig,
    txn_ids: TxnIds,
    current: Mutex<Option<Arc<Connection>>>,
    dialing: tokio::sync::Mutex<()>,
    last_seen_tid: AtomicU64,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Entries in ascending key order.
    pub entries: Vec<Entry>,
    /// True if the range holds more entries after the last one.
    pub more: bool,
}

impl Client {
    /// Loads the certificates, then connects to the first configured server
    /// that answers, within `config.timeout`.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let first = config.servers.first().ok_or_else(|| Error::Config {
            detail: "no server configured".into(),
        })?;
        let crypto = quic_client_config(&config)?;
        let (_, addrs) = resolve(first).await?;
        let bind: SocketAddr = if addrs[0].is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| Error::Config {
            detail: format!("binding a UDP socket: {e}"),
        })?;
        let client = Client {
            inner: Arc::new(Inner {
                txn_ids: TxnIds::new(rand::random()),
                config,
                endpoint,
                crypto,
                current: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(()),
                last_seen_tid: AtomicU64::new(0),
            }),
        };
        client.connection(client.deadline()).await?;
        Ok(client)
    }

    /// This client instance's random id (the `client_id` of its [`TxnId`](crate::TxnId)s).
    pub fn client_id(&self) -> u128 {
        self.inner.txn_ids.client_id()
    }

    /// The highest TID this client has seen; it never accepts a server
    /// behind it.
    pub fn last_seen_tid(&self) -> Tid {
        Tid(self.inner.last_seen_tid.load(Ordering::Acquire))
    }

    /// The server currently connected, as configured (`host:port`).
    pub fn server(&self) -> Option<String> {
        self.current().map(|c| c.server.clone())
    }

    /// Reads `key`; `None` if absent.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, Error> {
        Ok(self.get_versioned(key).await?.map(|v| v.value))
    }

    /// Reads `key` with the TID that wrote it.
    pub async fn get_versioned(&self, key: impl Into<Bytes>) -> Result<Option<Versioned>, Error> {
        match self.read(Request::Get { key: key.into() }).await? {
            Response::Value(found) => {
                if let Some(v) = &found {
                    self.saw(v.serial);
                }
                Ok(found)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Reads several keys at one snapshot, answered in order.
    pub async fn get_many<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<Bytes>>, Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        match self.read(Request::GetMany { keys }).await? {
            Response::Values(values) => Ok(values
                .into_iter()
                .map(|v| {
                    v.map(|v| {
                        self.saw(v.serial);
                        v.value
                    })
                })
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads one page of a key range; see [`ScanRequest::prefix`].
    pub async fn scan(&self, scan: ScanRequest) -> Result<ScanPage, Error> {
        match self.read(Request::Scan(scan)).await? {
            Response::Entries { entries, more } => Ok(ScanPage { entries, more }),
            other => Err(unexpected(&other)),
        }
    }

    /// The connected server's status.
    pub async fn status(&self) -> Result<StatusInfo, Error> {
        match self.read(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts a transaction.
    pub fn txn(&self) -> Transaction<'_> {
        Transaction::new(self)
    }

    /// Commits a single `put`.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<CommitOutcome, Error> {
        let mut txn = self.txn();
        txn.put(key, value);
        txn.commit().await
    }

    /// Commits a single `delete`.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<CommitOutcome, Error> {
        let mut txn = self.txn();
        txn.delete(key);
        txn.commit().await
    }

    /// Commits a single `incr`; [`CommitOutcome::counter`] is the new value.
    pub async fn incr(&self, key: impl Into<Bytes>, by: i64) -> Result<CommitOutcome, Error> {
        let mut txn = self.txn();
        txn.incr(key, by);
        txn.commit().await
    }

    /// Commits a single `append`.
    pub async fn append(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<CommitOutcome, Error> {
        let mut txn = self.txn();
        txn.append(key, value);
        txn.commit().await
    }

    /// Closes the connection politely and waits briefly for the server to
    /// hear it. Other clones stop working.
    pub async fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"client closed");
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.inner.endpoint.wait_idle(),
        )
        .await;
    }

    pub(crate) fn txn_ids(&self) -> &TxnIds {
        &self.inner.txn_ids
    }

    /// Sends a commit once. A commit that may have reached the server and
    /// got no answer is reported as [`Error::OutcomeUnknown`].
    pub(crate) async fn commit_request(
        &self,
        request: CommitRequest,
    ) -> Result<CommitOutcome, Error> {
        let span = tracing::debug_span!("commit", txn = %request.txn_id);
        self.send_commit(request).instrument(span).await
    }

    async fn send_commit(&self, request: CommitRequest) -> Result<CommitOutcome, Error> {
        let txn_id = request.txn_id;
        let deadline = self.deadline();
        let request = Request::Commit(request);
        let mut last_failure = String::new();
        // A request that provably never left can be sent again.
        for _attempt in 0..2 {
            let connection = match self.connection(deadline).await {
                Ok(connection) => connection,
                Err(e) => {
                    self.inner.txn_ids.resolved(txn_id);
                    return Err(e);
                }
            };
            let outcome = match connection.round_trip(&request, deadline).await {
                Ok(Response::Committed(c)) => {
                    self.saw(c.tid);
                    Ok(CommitOutcome {
                        tid: c.tid,
                        txn_id,
                        results: c.results,
                        replayed: c.replayed,
                    })
                }
                Ok(Response::Error(e)) => Err(Error::from_wire(e)),
                Ok(other) => {
                    return Err(Error::OutcomeUnknown {
                        txn_id,
                        detail: unexpected(&other).to_string(),
                    })
                }
                Err(RoundTripError::Unsendable(e)) => Err(Error::Rejected(e)),
                Err(RoundTripError::NotSent(detail)) => {
                    self.forget(&connection);
                    last_failure = detail;
                    continue;
                }
                Err(RoundTripError::MaybeSent(detail)) => {
                    self.forget(&connection);
                    return Err(Error::OutcomeUnknown { txn_id, detail });
                }
            };
            if outcome
                .as_ref()
                .map_or_else(Error::is_not_applied, |_| true)
            {
                self.inner.txn_ids.resolved(txn_id);
            }
            return outcome;
        }
        self.inner.txn_ids.resolved(txn_id);
        Err(Error::Unavailable {
            detail: last_failure,
        })
    }

    /// Sends a read, reconnecting once if the connection failed under it.
    async fn read(&self, request: Request) -> Result<Response, Error> {
        let deadline = self.deadline();
        let mut last_failure = String::new();
        for _attempt in 0..2 {
            let connection = self.connection(deadline).await?;
            match connection.round_trip(&request, deadline).await {
                Ok(Response::Error(e)) => return Err(read_error(e)),
                Ok(response) => return Ok(response),
                Err(RoundTripError::Unsendable(e)) => return Err(Error::Rejected(e)),
                Err(RoundTripError::NotSent(detail) | RoundTripError::MaybeSent(detail)) => {
                    self.forget(&connection);
                    last_failure = detail;
                }
            }
        }
        Err(Error::Unavailable {
            detail: last_failure,
        })
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.config.timeout
    }

    fn saw(&self, tid: Tid) {
        self.inner.last_seen_tid.fetch_max(tid.0, Ordering::AcqRel);
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn forget(&self, failed: &Arc<Connection>) {
        let mut current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, failed)) {
            *current = None;
        }
    }

    /// The open connection, or a new one to the first server that welcomes
    /// this client.
    async fn connection(&self, deadline: Instant) -> Result<Arc<Connection>, Error> {
        let usable = |c: &Arc<Connection>| c.connection.close_reason().is_none();
        if let Some(c) = self.current().filter(usable) {
            return Ok(c);
        }
        let _dialing = self.inner.dialing.lock().await;
        if let Some(c) = self.current().filter(usable) {
            return Ok(c);
        }
        let mut failures = Vec::new();
        for server in &self.inner.config.servers {
            let hello = Hello {
                protocol_version: PROTOCOL_VERSION,
                client_id: self.client_id(),
                last_seen_tid: self.last_seen_tid(),
            };
            match Connection::dial(
                &self.inner.endpoint,
                &self.inner.crypto,
                server,
                hello,
                deadline,
            )
            .await
            {
                Ok(connection) => {
                    self.saw(connection.last_tid());
                    let connection = Arc::new(connection);
                    *self
                        .inner
                        .current
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(connection.clone());
                    return Ok(connection);
                }
                Err(e) => {
                    tracing::debug!(%server, error = %e, "dial failed");
                    failures.push(e);
                }
            }
        }
        // A certificate or configuration problem outranks "unreachable":
        // it will not go away by waiting.
        let worst = failures
            .iter()
            .position(|e| matches!(e, Error::Tls { .. } | Error::Config { .. }));
        match worst {
            Some(i) => Err(failures.swap_remove(i)),
            None => Err(Error::Unavailable {
                detail: failures
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }
}

/// For reads, a server that cannot serve now is simply unavailable.
fn read_error(error: WireError) -> Error {
    match error {
        WireError::NotPrimary { .. } | WireError::ShuttingDown | WireError::Overloaded => {
            Error::Unavailable {
                detail: error.to_string(),
            }
        }
        other => Error::from_wire(other),
    }
}

fn unexpected(response: &Response) -> Error {
    Error::Protocol {
        detail: format!("unexpected response {response:?}"),
    }
}
