//! The client handle: reads through the cache while the session is proven
//! live, and commits transactions.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use store_protocol::{
    content_digest, CommitRequest, Entry, ReadCheck, Request, Response, ScanRequest, StatusInfo,
    Tid, TxnId, Versioned, WireError, Write,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cache::{Cache, CacheStats};
use crate::config::{ClientConfig, ReadPolicy, WritePolicy};
use crate::connection::{resolve_now, Connection, RoundTripError};
use crate::driver::{self, Command, SessionShared, SessionStatus};
use crate::error::Error;
use crate::metrics::{OUTCOMES_UNKNOWN, RESOLVES, RETRIES};
use crate::retry::Backoff;
use crate::serving;
use crate::session::SUSPECT_AFTER;
use crate::tls::quic_client_config;
use crate::txn::{CommitError, CommitOutcome, PreparedTxn, Transaction, TxnIds};

/// A connection to a Zeolite store with a local read-through cache. Cheap
/// to clone; clones share one session, one cache and one transaction-id
/// space.
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
    /// When set, every call of this handle ends by then (see [`Client::until`]).
    deadline: Option<Instant>,
    /// What this handle's writes do about their answers.
    pub(crate) write_policy: WritePolicy,
}

struct Inner {
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    shared: Arc<SessionShared>,
    commands: mpsc::UnboundedSender<Command>,
    txn_ids: Arc<TxnIds>,
    unanswered: Arc<crate::writes::Unanswered>,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Entries in ascending key order.
    pub entries: Vec<Entry>,
    /// True if the range holds more entries after the last one.
    pub more: bool,
}

impl ScanPage {
    /// Where the next page starts, if the range holds more: just after
    /// this page's last key (the key with a zero byte appended).
    ///
    /// ```no_run
    /// # async fn all(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let mut scan = store_client::ScanRequest::prefix("app/", 1000);
    /// loop {
    ///     let page = client.scan(scan.clone()).await?;
    ///     // ... use page.entries ...
    ///     match page.next_start() {
    ///         Some(start) => scan.start = start,
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn next_start(&self) -> Option<Bytes> {
        let last = self.entries.last().filter(|_| self.more)?;
        let mut next = last.key.to_vec();
        next.push(0);
        Some(Bytes::from(next))
    }
}

/// Where a read's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The local cache.
    Cache,
    /// The server.
    Server,
}

/// A read's answer, with how much it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The value, `None` if the key is absent.
    pub value: Option<Bytes>,
    /// Where it came from.
    pub source: Source,
    /// True when the session was not proven live: the value may be old
    /// (only with [`ReadPolicy::AllowStale`]).
    pub stale: bool,
}

impl Client {
    /// Loads the certificates, starts the session and waits until a server
    /// proves itself live, within `config.timeout`. Fails at once on a
    /// certificate or configuration problem.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let client = Client::start(config)?;
        let wait = ReadPolicy::Wait(client.inner.config.timeout);
        client.connection(wait, client.deadline(), None).await?;
        Ok(client)
    }

    /// Starts the session in the background and returns at once; calls wait
    /// for a live session as their [`ReadPolicy`] says. Fails only on a
    /// configuration problem. Must be called inside a tokio runtime.
    pub fn start(config: ClientConfig) -> Result<Client, Error> {
        config
            .validate()
            .map_err(|detail| Error::Config { detail })?;
        let crypto = quic_client_config(&config)?;
        // Every name must resolve now: a typo is a configuration error,
        // while a name that stops resolving later is a server going away.
        let addrs = config
            .servers
            .iter()
            .map(|server| resolve_now(server))
            .collect::<Result<Vec<_>, _>>()?;
        let any: SocketAddr = if addrs.first().is_some_and(SocketAddr::is_ipv6) {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let bind = config.local_addr.unwrap_or(any);
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| Error::Config {
            detail: format!("binding a UDP socket: {e}"),
        })?;
        let cache = Cache::new(config.cache_bytes, config.never_cache.clone());
        let shared = Arc::new(SessionShared::new(cache));
        let client_id = crate::tls::client_id(&config.tls, config.instance_id)?;
        let commands = driver::spawn(
            config.clone(),
            endpoint.clone(),
            crypto,
            client_id,
            shared.clone(),
        );
        Ok(Client {
            write_policy: config.write_policy,
            inner: Arc::new(Inner {
                config,
                endpoint,
                shared,
                commands,
                txn_ids: TxnIds::new(client_id),
                unanswered: Arc::default(),
            }),
            deadline: None,
        })
    }

    /// A handle whose every call ends by `deadline` (instead of
    /// `config.timeout` after it starts), sharing this client's session:
    /// one bound for a whole sequence of calls.
    pub fn until(&self, deadline: std::time::Instant) -> Client {
        Client {
            inner: self.inner.clone(),
            deadline: Some(deadline.into()),
            write_policy: self.write_policy,
        }
    }

    /// This client instance's id (the `client_id` of its
    /// [`TxnId`](crate::TxnId)s): random, in the space of its certificate's
    /// identity.
    pub fn client_id(&self) -> u128 {
        self.inner.txn_ids.client_id()
    }

    /// The highest TID this client has seen; it never accepts a server
    /// behind it.
    pub fn last_seen_tid(&self) -> Tid {
        self.inner.shared.last_seen_tid()
    }

    /// The session's state, server and epoch now.
    pub fn session(&self) -> SessionStatus {
        self.inner.shared.status()
    }

    /// A channel that sees every change of the session's state.
    ///
    /// ```no_run
    /// # async fn demo(client: store_client::Client) {
    /// let mut states = client.watch_session();
    /// while states.changed().await.is_ok() {
    ///     let status = states.borrow_and_update().clone();
    ///     eprintln!("session {} on {:?}", status.state, status.server);
    /// }
    /// # }
    /// ```
    ///
    /// While a receiver is held the session never rests in
    /// [`SessionState::Idle`](crate::SessionState::Idle): it keeps pinging,
    /// so a dead server shows within `stale_after` even if the
    /// application reads nothing.
    pub fn watch_session(&self) -> watch::Receiver<SessionStatus> {
        let receiver = self.inner.shared.subscribe();
        // Wake a resting session: it is watched from now on.
        let _ = self.inner.commands.send(Command::PingNow);
        receiver
    }

    /// Reads `key` with the client's [`ReadPolicy`]; `None` if absent.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, Error> {
        Ok(self.read(key, self.inner.config.read_policy).await?.value)
    }

    /// Reads `key` with `policy`: from the cache while the session is
    /// proven live, else from the server, filling the cache.
    pub async fn read(&self, key: impl Into<Bytes>, policy: ReadPolicy) -> Result<Read, Error> {
        let key = key.into();
        let cache = &self.inner.shared.cache;
        if let Some(hit) = self.cached(&key, policy) {
            cache.count(true);
            return Ok(hit);
        }
        if let ReadPolicy::Wait(_) = policy {
            if !self.inner.shared.is_fresh(std::time::Instant::now()) {
                // Wait for proof, then the cache may answer after all.
                self.connection(policy, self.deadline(), None).await?;
                if let Some(hit) = self.cached(&key, policy) {
                    cache.count(true);
                    return Ok(hit);
                }
            }
        }
        cache.count(false);
        let generation = cache.generation();
        let (response, proven) = self
            .request(&Request::Get { key: key.clone() }, policy)
            .await?;
        match response {
            Response::Value { found, read_tid } => {
                self.inner.shared.saw(read_tid);
                Ok(Read {
                    value: self.fill(key, found, read_tid, generation),
                    source: Source::Server,
                    stale: !proven,
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Offers a value read from the server (at snapshot `read_tid`, by a
    /// read that began in cache `generation`) to the cache, and returns it.
    fn fill(
        &self,
        key: Bytes,
        found: Option<Versioned>,
        read_tid: Tid,
        generation: u64,
    ) -> Option<Bytes> {
        let (value, serial) = match found {
            Some(v) => (Some(v.value), v.serial),
            None => (None, Tid::ZERO),
        };
        let cache = &self.inner.shared.cache;
        cache.fill(key, value.clone(), serial, read_tid, generation);
        value
    }

    /// The cached answer for `key` that [`serving::decide`] allows now,
    /// if any (the caller counts the read once it knows where it went).
    fn cached(&self, key: &[u8], policy: ReadPolicy) -> Option<Read> {
        let cache = &self.inner.shared.cache;
        let now = std::time::Instant::now();
        let fresh = self.inner.shared.is_fresh(now);
        let hit = cache.lookup(key);
        let entry = hit.as_ref().map(|hit| serving::Entry {
            current: hit.current,
            filled_at: hit.filled_at,
        });
        let ttl = self.inner.config.cache_ttl;
        let stale = match serving::decide(entry, fresh, policy, ttl, now) {
            serving::Serve::Fresh => false,
            serving::Serve::Stale => true,
            serving::Serve::Server => return None,
        };
        hit.map(|hit| Read {
            value: hit.value,
            source: Source::Cache,
            stale,
        })
    }

    /// What the cache holds and has done: hits, misses, evictions, bytes
    /// and entries. Reads are counted on per-thread stripes, so counting
    /// costs threads reading at once no shared cache line.
    ///
    /// ```no_run
    /// # fn show(client: &store_client::Client) {
    /// let stats = client.cache_stats();
    /// println!("hit ratio {:.2}", stats.hits as f64 / (stats.hits + stats.misses).max(1) as f64);
    /// # }
    /// ```
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.shared.cache.stats()
    }

    /// Drops every cached value at once (in O(1)): the next read of each
    /// key asks the server. Reads in flight do not fill their values back.
    /// Under [`ReadPolicy::AllowStale`] a dropped value may still answer,
    /// marked stale, while no server proves itself live.
    pub fn invalidate_all(&self) {
        self.inner.shared.cache.invalidate_all();
    }

    /// Reads `key` from the server with the TID that wrote it (bypassing
    /// the cache; transactions use this for their read sets).
    pub async fn get_versioned(&self, key: impl Into<Bytes>) -> Result<Option<Versioned>, Error> {
        let request = Request::Get { key: key.into() };
        match self.request(&request, self.write_policy()).await?.0 {
            Response::Value { found, read_tid } => {
                self.inner.shared.saw(read_tid);
                Ok(found)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Reads several keys with the client's [`ReadPolicy`], answered in
    /// order; see [`Client::read_many`].
    pub async fn get_many<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<Bytes>>, Error> {
        let policy = self.inner.config.read_policy;
        let reads = self.read_many(keys, policy).await?;
        Ok(reads.into_iter().map(|read| read.value).collect())
    }

    /// Reads several keys with `policy`, answered in order: each key the
    /// cache may serve (the same decision as [`Client::read`]) from the
    /// cache, the rest in one round trip, from one server snapshot.
    pub async fn read_many<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        policy: ReadPolicy,
    ) -> Result<Vec<Read>, Error> {
        let keys: Vec<Bytes> = keys.into_iter().map(Into::into).collect();
        let cache = &self.inner.shared.cache;
        let mut answers: Vec<Option<Read>> = keys
            .iter()
            .map(|key| {
                let hit = self.cached(key, policy);
                cache.count(hit.is_some());
                hit
            })
            .collect();
        let missing: Vec<Bytes> = keys
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if !missing.is_empty() {
            let generation = cache.generation();
            let request = Request::GetMany {
                keys: missing.clone(),
            };
            let (response, proven) = self.request(&request, policy).await?;
            let (values, read_tid) = match response {
                Response::Values { values, read_tid } => (values, read_tid),
                other => return Err(unexpected(&other)),
            };
            self.inner.shared.saw(read_tid);
            let mut fetched = missing.into_iter().zip(values);
            for answer in answers.iter_mut().filter(|a| a.is_none()) {
                let Some((key, found)) = fetched.next() else {
                    return Err(Error::Protocol {
                        detail: "GetMany answered fewer values than keys".into(),
                    });
                };
                *answer = Some(Read {
                    value: self.fill(key, found, read_tid, generation),
                    source: Source::Server,
                    stale: !proven,
                });
            }
        }
        // Every key is answered now: from the cache, or filled above.
        Ok(answers.into_iter().flatten().collect())
    }

    /// Reads one page of a key range from the server; see
    /// [`ScanRequest::prefix`].
    pub async fn scan(&self, scan: ScanRequest) -> Result<ScanPage, Error> {
        let policy = self.inner.config.read_policy;
        match self.request(&Request::Scan(scan), policy).await?.0 {
            Response::Entries { entries, more } => Ok(ScanPage { entries, more }),
            other => Err(unexpected(&other)),
        }
    }

    /// The connected server's status.
    pub async fn status(&self) -> Result<StatusInfo, Error> {
        let policy = self.inner.config.read_policy;
        match self.request(&Request::Status, policy).await?.0 {
            Response::Status(status) => {
                self.inner.shared.saw(status.last_tid);
                Ok(status)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Makes the server of this client's session the primary of its pair
    /// (open the client with that one server and
    /// [`ClientConfig::any_role`](crate::ClientConfig::any_role)). Without
    /// `force`, the primary steps down first and the promotion is refused
    /// if this node would lack acknowledged writes; with `force` it goes
    /// ahead without the primary. Returns the node's new status.
    pub async fn promote(&self, force: bool) -> Result<StatusInfo, Error> {
        let deadline = self.deadline();
        let connection = self.connection(self.write_policy(), deadline, None).await?;
        // One attempt with the whole budget: a promotion waits for the
        // primary to step down and for the election.
        match connection
            .round_trip(&Request::Promote { force }, deadline)
            .await
        {
            Ok(Response::Status(status)) => Ok(status),
            Ok(Response::Error(e)) => Err(Error::from_wire(e)),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(e.unavailable()),
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
    ) -> Result<CommitOutcome, CommitError> {
        let mut txn = self.txn();
        txn.put(key, value);
        txn.commit().await
    }

    /// Commits a single `delete`.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<CommitOutcome, CommitError> {
        let mut txn = self.txn();
        txn.delete(key);
        txn.commit().await
    }

    /// Commits a single `incr`; [`CommitOutcome::counter`] is the new value.
    pub async fn incr(&self, key: impl Into<Bytes>, by: i64) -> Result<CommitOutcome, CommitError> {
        let mut txn = self.txn();
        txn.incr(key, by);
        txn.commit().await
    }

    /// Commits a single `append`.
    pub async fn append(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<CommitOutcome, CommitError> {
        let mut txn = self.txn();
        txn.append(key, value);
        txn.commit().await
    }

    /// Ends the session, closes the connection politely and waits briefly
    /// for the server to hear it (and, up to a second, for the answers of
    /// unconfirmed writes, so that they are not dropped with the
    /// connection). Every clone stops working.
    pub async fn close(&self) {
        self.inner
            .unanswered
            .drained(std::time::Duration::from_secs(1))
            .await;
        let _ = self.inner.commands.send(Command::Close);
        self.inner.endpoint.close(0u32.into(), b"client closed");
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.inner.endpoint.wait_idle(),
        )
        .await;
    }

    /// This client's configuration.
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Unconfirmed writes still awaiting their answer.
    pub(crate) fn unanswered(&self) -> &Arc<crate::writes::Unanswered> {
        &self.inner.unanswered
    }

    /// The state this client's handles share with its session driver.
    pub(crate) fn inner_shared(&self) -> &Arc<SessionShared> {
        &self.inner.shared
    }

    /// Writes never go out on a session that is not proven live.
    fn write_policy(&self) -> ReadPolicy {
        match self.inner.config.read_policy {
            ReadPolicy::AllowStale => ReadPolicy::Wait(self.inner.config.timeout),
            other => other,
        }
    }

    /// Fixes a transaction's id and bytes.
    pub(crate) async fn prepare(
        &self,
        read_set: Vec<ReadCheck>,
        writes: Vec<Write>,
    ) -> Result<PreparedTxn, Error> {
        let (ticket, acked_below) = self.inner.txn_ids.allocate(self.deadline()).await?;
        let request = CommitRequest {
            txn_id: ticket.id,
            acked_below,
            digest: content_digest(&read_set, &writes),
            read_set,
            writes,
        };
        Ok(PreparedTxn::new(request, ticket))
    }

    /// Sends a prepared transaction (again): the same id and bytes, so it
    /// is applied at most once however many copies reach the server.
    pub async fn recommit(&self, prepared: PreparedTxn) -> Result<CommitOutcome, CommitError> {
        let span = tracing::debug_span!("commit", txn = %prepared.txn_id());
        let sent = match self.write_policy {
            WritePolicy::Retry => self.send_commit(&prepared.request).instrument(span).await,
            WritePolicy::FailFast => self.send_once(&prepared.request).instrument(span).await,
            WritePolicy::Unconfirmed => {
                return self.send_unconfirmed(prepared).instrument(span).await
            }
        };
        match sent {
            Ok(outcome) => {
                // Read-your-writes: the cache never answers with what this
                // commit overwrote, even before its invalidation arrives.
                let written = prepared.request.writes.iter().map(|w| w.key().clone());
                self.inner.shared.cache.own_commit(outcome.tid, written);
                Ok(outcome)
            }
            Err(error) => Err(CommitError::new(error, prepared)),
        }
    }

    /// Asks the server for the outcome of `txn_id`. If it has none, the
    /// server records the transaction as abandoned, so that no late copy
    /// can ever commit: `Ok` means it committed (replayed), an error says
    /// how it failed ([`Error::Abandoned`], a conflict, [`Error::Expired`]).
    pub async fn resolve(&self, txn_id: TxnId) -> Result<CommitOutcome, Error> {
        self.resolve_until(txn_id, self.deadline()).await
    }

    async fn resolve_until(
        &self,
        txn_id: TxnId,
        deadline: Instant,
    ) -> Result<CommitOutcome, Error> {
        metrics::counter!(RESOLVES).increment(1);
        let request = Request::Resolve { txn_id };
        let mut backoff = Backoff::default();
        let mut failed: Option<Arc<Connection>> = None;
        loop {
            let connection = self
                .connection(self.write_policy(), deadline, failed.as_ref())
                .await?;
            let attempt = Instant::now() + self.attempt_timeout();
            let failure = match self
                .round_trip(&connection, &request, attempt.min(deadline))
                .await
            {
                Ok(Response::Committed(c)) => return Ok(self.committed(txn_id, c)),
                Ok(Response::Error(e)) if !is_retry_signal(&e) => {
                    return Err(commit_error(txn_id, e))
                }
                Ok(Response::Error(e)) => {
                    if matches!(
                        e,
                        WireError::NotPrimary { .. } | WireError::Unconfirmed { .. }
                    ) {
                        self.not_primary(&connection);
                        failed = Some(connection);
                    }
                    e.to_string()
                }
                Ok(other) => unexpected(&other).to_string(),
                Err(RoundTripError::Unsendable(e)) => return Err(Error::Rejected(e)),
                Err(RoundTripError::NotSent(d) | RoundTripError::MaybeSent(d)) => {
                    failed = (!connection.is_open()).then_some(connection);
                    d
                }
            };
            self.pause(&mut backoff, deadline, &failure).await?;
        }
    }

    /// Sends a commit until the server decides it, resending the same
    /// bytes after transport failures, `NotPrimary` and `InProgress`. If a
    /// copy may have arrived and no answer came in time, asks the server
    /// with `resolve` before reporting [`Error::OutcomeUnknown`].
    async fn send_commit(&self, request: &CommitRequest) -> Result<CommitOutcome, Error> {
        let txn_id = request.txn_id;
        let deadline = self.deadline();
        // Keep part of the budget for resolve.
        let reserve = (self.inner.config.timeout / 5).min(self.attempt_timeout());
        let send_until = deadline.checked_sub(reserve).unwrap_or(deadline);
        let request = Request::Commit(request.clone());
        let mut sent = false;
        let mut backoff = Backoff::default();
        let mut failed: Option<Arc<Connection>> = None;
        let detail = loop {
            let connection = match self
                .connection(self.write_policy(), send_until, failed.as_ref())
                .await
            {
                Ok(connection) => connection,
                // Provably never sent: nothing was applied.
                Err(e) if !sent => return Err(e),
                Err(e) => break e.to_string(),
            };
            let attempt = (Instant::now() + self.attempt_timeout()).min(send_until);
            let failure = match self.round_trip(&connection, &request, attempt).await {
                Ok(Response::Committed(c)) => return Ok(self.committed(txn_id, c)),
                Ok(Response::Error(e)) if !is_retry_signal(&e) => {
                    // A refusal of a resend says nothing of an earlier copy
                    // (the server's limits or ACL may have changed): only a
                    // decision is definite, and resolve finds it.
                    if sent && !is_decision(&e) {
                        break e.to_string();
                    }
                    return Err(commit_error(txn_id, e));
                }
                Ok(Response::Error(e)) => {
                    match e {
                        // Refused before deciding: try the next session.
                        WireError::NotPrimary { .. } | WireError::ShuttingDown => {
                            self.not_primary(&connection);
                            failed = Some(connection);
                        }
                        // Decided there, unconfirmed: it may have been
                        // applied; the primary answers the resend.
                        WireError::Unconfirmed { .. } => {
                            sent = true;
                            self.not_primary(&connection);
                            failed = Some(connection);
                        }
                        // A copy is deciding, or may have been decided.
                        WireError::InProgress | WireError::Internal { .. } => sent = true,
                        _ => {}
                    }
                    e.to_string()
                }
                // It arrived; what it came to, resolve will say.
                Ok(other) => break unexpected(&other).to_string(),
                Err(RoundTripError::Unsendable(e)) => return Err(Error::Rejected(e)),
                Err(RoundTripError::NotSent(d)) => {
                    failed = (!connection.is_open()).then_some(connection);
                    d
                }
                Err(RoundTripError::MaybeSent(d)) => {
                    sent = true;
                    failed = (!connection.is_open()).then_some(connection);
                    d
                }
            };
            tracing::debug!(%failure, sent, "commit attempt failed; sending the same bytes again");
            if let Err(e) = self.pause(&mut backoff, send_until, &failure).await {
                if !sent {
                    return Err(e);
                }
                break failure;
            }
        };
        let answer = match self.resolve_until(txn_id, deadline).await {
            Ok(outcome) => Ok(outcome),
            // Only the server's own decision makes a failure definite: a
            // copy may have landed, and anything else (no server, a name
            // that stopped resolving) does not say otherwise.
            Err(Error::Rejected(WireError::PermissionDenied { .. }))
            | Err(Error::Protocol { .. }) => Err(Error::OutcomeUnknown {
                txn_id,
                detail: format!("{detail}; resolve was refused"),
            }),
            Err(
                e @ (Error::Conflict { .. }
                | Error::Rejected(_)
                | Error::Abandoned { .. }
                | Error::Expired { .. }),
            ) => Err(e),
            Err(e) => Err(Error::OutcomeUnknown {
                txn_id,
                detail: format!("{detail}; resolve: {e}"),
            }),
        };
        if let Err(Error::OutcomeUnknown { .. }) = answer {
            metrics::counter!(OUTCOMES_UNKNOWN).increment(1);
        }
        answer
    }

    /// Waits the next backoff delay, or fails if it would pass `deadline`.
    async fn pause(
        &self,
        backoff: &mut Backoff,
        deadline: Instant,
        failure: &str,
    ) -> Result<(), Error> {
        let delay = backoff.next_delay(&mut rand::thread_rng());
        if Instant::now() + delay >= deadline {
            return Err(Error::Unavailable {
                detail: failure.to_string(),
            });
        }
        metrics::counter!(RETRIES).increment(1);
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// One attempt's bound: an answer slower than a session's proof window
    /// is given up on, and the same bytes are sent again.
    pub(crate) fn attempt_timeout(&self) -> std::time::Duration {
        self.inner.config.session.stale_after
    }

    pub(crate) fn committed(&self, txn_id: TxnId, c: store_protocol::Committed) -> CommitOutcome {
        self.inner.shared.saw(c.tid);
        CommitOutcome {
            tid: c.tid,
            txn_id,
            results: c.results,
            replayed: c.replayed,
            confirmed: true,
        }
    }

    /// Sends a request under `policy`, retrying on the next session if the
    /// connection fails under it. Returns whether the session was proven
    /// live when it was sent.
    async fn request(
        &self,
        request: &Request,
        policy: ReadPolicy,
    ) -> Result<(Response, bool), Error> {
        let deadline = self.deadline();
        let mut failed: Option<Arc<Connection>> = None;
        let mut backoff = Backoff::default();
        loop {
            let connection = self.connection(policy, deadline, failed.as_ref()).await?;
            let proven = self.inner.shared.is_fresh(std::time::Instant::now());
            let attempt = (Instant::now() + self.attempt_timeout()).min(deadline);
            match self.round_trip(&connection, request, attempt).await {
                // Deposed, or its lease ran out: read from the new primary.
                Ok(Response::Error(e @ (WireError::NotPrimary { .. } | WireError::InProgress)))
                    if !self.inner.config.any_role =>
                {
                    if matches!(e, WireError::NotPrimary { .. }) {
                        self.not_primary(&connection);
                        failed = Some(connection);
                    }
                    self.pause(&mut backoff, deadline, &e.to_string()).await?;
                }
                Ok(Response::Error(e)) => return Err(read_error(e)),
                Ok(response) => return Ok((response, proven)),
                Err(RoundTripError::Unsendable(e)) => return Err(Error::Rejected(e)),
                Err(RoundTripError::NotSent(detail) | RoundTripError::MaybeSent(detail)) => {
                    tracing::debug!(%detail, "request failed; sending it again");
                    // Reads retry freely: on the next session if this one broke.
                    failed = (!connection.is_open()).then_some(connection);
                    self.pause(&mut backoff, deadline, &detail).await?;
                }
            }
        }
    }

    /// Sends `request` on `connection` and waits for the answer until
    /// `until`. An answer later than [`SUSPECT_AFTER`] makes the driver
    /// look for a newer primary meanwhile (a failover is found by the
    /// request that meets it, not only by the next ping).
    pub(crate) async fn round_trip(
        &self,
        connection: &Arc<Connection>,
        request: &Request,
        until: Instant,
    ) -> Result<Response, RoundTripError> {
        let answer = connection.round_trip(request, until);
        tokio::pin!(answer);
        tokio::select! {
            result = &mut answer => return result,
            () = tokio::time::sleep(SUSPECT_AFTER) => {
                let id = connection.connection.stable_id();
                let _ = self.inner.commands.send(Command::Unanswered(id));
            }
        }
        answer.await
    }

    /// Tells the driver that `connection`'s server is not the primary.
    pub(crate) fn not_primary(&self, connection: &Connection) {
        let id = connection.connection.stable_id();
        let _ = self.inner.commands.send(Command::NotPrimary(id));
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
            .unwrap_or_else(|| Instant::now() + self.inner.config.timeout)
    }

    /// The connection to send on under `policy` (other than `avoid`, which
    /// just failed): at once while the session is live; otherwise as the
    /// policy says: fail, use whatever connection is open, or ping and
    /// wait for proof.
    pub(crate) async fn connection(
        &self,
        policy: ReadPolicy,
        deadline: Instant,
        avoid: Option<&Arc<Connection>>,
    ) -> Result<Arc<Connection>, Error> {
        let shared = &self.inner.shared;
        let deadline = match policy {
            ReadPolicy::Wait(wait) => deadline.min(Instant::now() + wait),
            _ => deadline,
        };
        let mut status = shared.subscribe();
        let usable = |c: &Arc<Connection>| avoid.is_none_or(|a| !Arc::ptr_eq(a, c));
        let mut pinged = false;
        loop {
            // Mark the status seen *before* looking at freshness: the driver
            // publishes freshness before it announces a state, so a change
            // after this point wakes `changed()` below, and one before it is
            // visible now. (The other order loses the wake-up.)
            let last_error = status.borrow_and_update().last_error.clone();
            let fresh = shared.is_fresh(std::time::Instant::now());
            let current = shared.connection().filter(usable);
            match (fresh, current, policy) {
                (true, Some(connection), _) => return Ok(connection),
                (false, Some(connection), ReadPolicy::AllowStale) => return Ok(connection),
                (false, _, ReadPolicy::FailFast) => {
                    return Err(Error::SessionStale {
                        state: shared.status().state,
                    });
                }
                (false, None, ReadPolicy::AllowStale) => {
                    return Err(unavailable(&shared.status(), "no open session"))
                }
                _ => {}
            }
            if let Some(e @ (Error::Tls { .. } | Error::Config { .. })) = last_error {
                return Err(e);
            }
            if !fresh && !pinged {
                let _ = self.inner.commands.send(Command::PingNow);
                pinged = true;
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(unavailable(&shared.status(), "session ended")),
                Err(_) => {
                    return Err(unavailable(
                        &shared.status(),
                        "no proof of a live server in time",
                    ))
                }
            }
        }
    }
}

fn unavailable(status: &SessionStatus, what: &str) -> Error {
    let detail = match &status.last_error {
        Some(e) => format!("{what} (session {}; last error: {e})", status.state),
        None => format!("{what} (session {})", status.state),
    };
    Error::Unavailable { detail }
}

/// Errors that mean "not decided, or not known to be: send the same bytes
/// again". A server-side failure (a failed fsync) may have left the commit
/// durable or not; the outcome table answers the resend either way.
pub(crate) fn is_retry_signal(error: &WireError) -> bool {
    matches!(
        error,
        WireError::NotPrimary { .. }
            | WireError::ShuttingDown
            | WireError::Overloaded
            | WireError::InProgress
            | WireError::Internal { .. }
            | WireError::Unconfirmed { .. }
    )
}

/// Whether `error` is what the server decided for this transaction id (a
/// recorded outcome), rather than a refusal before looking.
fn is_decision(error: &WireError) -> bool {
    matches!(
        error,
        WireError::Conflict { .. }
            | WireError::TxnIdReused
            | WireError::Abandoned
            | WireError::Expired
            | WireError::NotAnInteger { .. }
            | WireError::Overflow { .. }
    )
}

/// The client error for a server's decided refusal of `txn_id`.
pub(crate) fn commit_error(txn_id: TxnId, error: WireError) -> Error {
    match error {
        WireError::Abandoned => Error::Abandoned { txn_id },
        WireError::Expired => Error::Expired { txn_id },
        other => Error::from_wire(other),
    }
}

/// For reads, a server that cannot serve now is simply unavailable.
pub(crate) fn read_error(error: WireError) -> Error {
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
