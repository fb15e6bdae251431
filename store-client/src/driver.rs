//! The async shell around [`Liveness`]: dials the servers, runs the session
//! stream, applies invalidations to the cache in stream order, and publishes
//! the session's state and freshness. All timing decisions are the state
//! machine's; this task only moves bytes and sleeps until it is asked to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use store_protocol::{
    read_frame, write_frame, Epoch, Hello, SessionEvent, SessionRequest, Tid, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::cache::Cache;
use crate::config::ClientConfig;
use crate::connection::{Connection, Opened, SESSION_EVENT_LIMIT, SESSION_REQUEST_LIMIT};
use crate::error::Error;
use crate::retry::Backoff;
use crate::session::{Action, Liveness, SessionState};

/// The session as the application sees it, published on every change.
#[derive(Debug, Clone)]
pub struct SessionStatus {
    /// The state.
    pub state: SessionState,
    /// The server of the current session, as configured (`host:port`).
    pub server: Option<String>,
    /// The epoch the server last reported.
    pub epoch: Epoch,
    /// Why the last dial round failed, while no session is open.
    pub last_error: Option<Error>,
}

/// State shared between the driver and the client's calls.
pub(crate) struct SessionShared {
    /// Origin of `fresh_until_ns`.
    base: Instant,
    /// `fresh_until` as nanoseconds since `base`; 0 when not `Live`.
    fresh_until_ns: AtomicU64,
    /// When the application last used the session, as nanoseconds since
    /// `base` (to the millisecond: see [`SessionShared::is_fresh`]).
    last_use_ns: AtomicU64,
    /// The session rests (skips its pings, or is `Idle`) and no read has
    /// woken it yet.
    resting: AtomicBool,
    /// A read found a resting session: the driver pings.
    wake: Notify,
    current: Mutex<Option<Arc<Connection>>>,
    status: watch::Sender<SessionStatus>,
    pub(crate) cache: Cache,
    last_seen_tid: AtomicU64,
}

impl SessionShared {
    pub(crate) fn new(cache: Cache) -> SessionShared {
        SessionShared {
            base: Instant::now(),
            fresh_until_ns: AtomicU64::new(0),
            last_use_ns: AtomicU64::new(0),
            resting: AtomicBool::new(false),
            wake: Notify::new(),
            current: Mutex::new(None),
            status: watch::Sender::new(SessionStatus {
                state: SessionState::Connecting,
                server: None,
                epoch: Epoch(0),
                last_error: None,
            }),
            cache,
            last_seen_tid: AtomicU64::new(0),
        }
    }

    /// Whether cached values may be served at `now`: the session is `Live`
    /// and `now < fresh_until`. Checked on every cached read, against the
    /// monotonic clock, so a process that was paused past `fresh_until`
    /// serves nothing from cache when it wakes, whatever the driver did.
    ///
    /// Every call is a use of the session (it keeps it from resting); the
    /// time is stored at most once a millisecond, so threads reading the
    /// cache at once seldom write the same cache line. Every read path
    /// asks this first, so a read that finds the session resting wakes it
    /// here, whatever its policy.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        let until = self.fresh_until_ns.load(Ordering::Acquire);
        let now = self.nanos(now);
        if now.saturating_sub(self.last_use_ns.load(Ordering::Relaxed)) > 1_000_000 {
            self.last_use_ns.fetch_max(now, Ordering::Relaxed);
        }
        if self.resting.load(Ordering::Relaxed) && self.resting.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        now < until
    }

    /// When the application last used the session.
    fn last_use(&self) -> Instant {
        self.base + std::time::Duration::from_nanos(self.last_use_ns.load(Ordering::Relaxed))
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn publish_fresh_until(&self, fresh_until: Option<Instant>) {
        let nanos = fresh_until.map_or(0, |at| self.nanos(at));
        self.fresh_until_ns.store(nanos, Ordering::Release);
    }

    /// The connection of the current session, if it is still open.
    pub(crate) fn connection(&self) -> Option<Arc<Connection>> {
        self.lock_current().clone().filter(|c| c.is_open())
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Arc<Connection>>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<SessionStatus> {
        self.status.subscribe()
    }

    pub(crate) fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    pub(crate) fn last_seen_tid(&self) -> Tid {
        Tid(self.last_seen_tid.load(Ordering::Acquire))
    }

    /// Records a TID this client has seen (it never accepts a server behind it).
    pub(crate) fn saw(&self, tid: Tid) {
        self.last_seen_tid.fetch_max(tid.0, Ordering::AcqRel);
    }
}

/// A dial round older than this does not stop a new one from starting.
const NEW_ROUND_AFTER: std::time::Duration = std::time::Duration::from_millis(500);
/// Most dial rounds in flight at once.
const MAX_ROUNDS: usize = 3;

/// What the client asks of the driver.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Command {
    /// A reader is waiting for proof: ping as soon as allowed.
    PingNow,
    /// The client is closing: end the session.
    Close,
    /// The server of the connection with this `stable_id` answered
    /// `NotPrimary`: leave it and find the primary.
    NotPrimary(usize),
    /// A request on the connection with this `stable_id` has gone
    /// unanswered for [`crate::session::SUSPECT_AFTER`].
    Unanswered(usize),
}

/// What reaches the driver from its helper tasks.
enum Event {
    Opened(Box<Opened>),
    /// A dial round failed; `alive` if some server answered but was not
    /// the primary (an election is under way: look again soon).
    DialFailed {
        error: Error,
        alive: bool,
    },
    /// A server answered but is not the primary (the round goes on).
    NotPrimary(Error),
    Session {
        id: u64,
        event: SessionEvent,
    },
    SessionClosed {
        id: u64,
        reason: String,
    },
}

/// The current session's connection and its stream tasks.
struct Link {
    id: u64,
    connection: Arc<Connection>,
    pings: mpsc::Sender<u64>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.connection
            .connection
            .close(0u32.into(), b"session replaced");
    }
}

/// Starts the driver; it runs until `commands` is dropped.
pub(crate) fn spawn(
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    crypto: quinn::ClientConfig,
    client_id: u128,
    shared: Arc<SessionShared>,
) -> mpsc::UnboundedSender<Command> {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let seed = rand::random();
    let driver = Driver {
        liveness: Liveness::new(config.session, Instant::now(), seed),
        config,
        endpoint,
        crypto,
        client_id,
        shared,
        backoff: Backoff::default(),
        rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        link: None,
        rounds: 0,
        last_round: None,
        next_id: 0,
        events_tx,
        events,
        commands,
    };
    let span = tracing::info_span!("session", client = %format!("{client_id:032x}"));
    tokio::spawn(driver.run().instrument(span));
    commands_tx
}

struct Driver {
    liveness: Liveness,
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    crypto: quinn::ClientConfig,
    client_id: u128,
    shared: Arc<SessionShared>,
    backoff: Backoff,
    rng: StdRng,
    link: Option<Link>,
    /// Dial rounds in flight, and when the last one started.
    rounds: usize,
    last_round: Option<Instant>,
    next_id: u64,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.carry_out_actions();
            let wake = self.liveness.poll_timeout();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shared.wake.notified() => self.liveness.ping_now(Instant::now()),
                () = sleep => {
                    self.liveness.demand(self.shared.last_use());
                    self.liveness.watched(self.shared.status.receiver_count() > 0);
                    self.liveness.handle_timeout(Instant::now());
                }
                Some(event) = self.events.recv() => self.on_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::PingNow) => self.liveness.ping_now(Instant::now()),
                    Some(Command::NotPrimary(id)) => {
                        if self.is_current_connection(id) && !self.config.any_role {
                            self.leave("the server is not the primary");
                        }
                    }
                    Some(Command::Unanswered(id)) => {
                        if self.is_current_connection(id) {
                            self.liveness.request_unanswered();
                        }
                    }
                    // Closed, or every client handle is gone.
                    Some(Command::Close) | None => break,
                },
            }
        }
        self.link = None;
        self.shared.publish_fresh_until(None);
    }

    /// Whether `stable_id` names the current session's connection.
    fn is_current_connection(&self, stable_id: usize) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.connection.connection.stable_id() == stable_id)
    }

    fn carry_out_actions(&mut self) {
        // Freshness first, so that whoever a state change wakes sees it.
        self.shared.publish_fresh_until(self.liveness.fresh_until());
        self.shared
            .resting
            .store(self.liveness.is_resting(), Ordering::Release);
        while let Some(action) = self.liveness.poll_action() {
            match action {
                Action::SendPing { seq } => {
                    crate::metrics::record_cache(self.shared.cache.stats());
                    if let Some(link) = &self.link {
                        // A full queue means the stream is stuck; the ping's
                        // absence is itself the signal Liveness acts on.
                        let _ = link.pings.try_send(seq);
                    }
                }
                Action::Dial => self.start_dialing(),
                // From here on nothing cached is served as fresh: the
                // freshness check fails for every read. The entries are
                // kept, not dropped: the same session's stream still
                // delivers every invalidation in order, and a new session
                // revalidates them (or drops them all, O(1), when the
                // server's change log does not reach back).
                Action::StateChanged(state) => {
                    metrics::counter!(crate::metrics::SESSION_STATES, "state" => state.as_str())
                        .increment(1);
                    tracing::info!(%state, server = ?self.link.as_ref().map(|l| &l.connection.server), "session state");
                    self.shared
                        .status
                        .send_modify(|status| status.state = state);
                }
            }
        }
    }

    fn start_dialing(&mut self) {
        // One round at a time, except that a round started a while ago (a
        // probe while still live, say) does not hold up a fresh one: QUIC
        // backs off its handshake retries, so a new round reaches a
        // server that came back sooner.
        let recent = self
            .last_round
            .is_some_and(|at| at.elapsed() < NEW_ROUND_AFTER);
        if self.rounds > 0 && (recent || self.rounds >= MAX_ROUNDS) {
            return;
        }
        self.rounds += 1;
        self.last_round = Some(Instant::now());
        let delay = self.backoff.next_delay(&mut self.rng);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: self.client_id,
            last_seen_tid: self.shared.last_seen_tid(),
            cached_tid: self.shared.cache.applied_tid(),
            holds_cache: self.shared.cache.holds_current(),
        };
        let round = dial_round(
            self.config.servers.clone(),
            self.endpoint.clone(),
            self.crypto.clone(),
            hello,
            self.config.connect_timeout,
            Accept {
                any_role: self.config.any_role,
                min_epoch: self.shared.status().epoch,
            },
            self.events_tx.clone(),
        );
        let events = self.events_tx.clone();
        tokio::spawn(
            async move {
                tokio::time::sleep(delay).await;
                let event = match round.await {
                    Ok(opened) => Event::Opened(Box::new(opened)),
                    Err((error, alive)) => Event::DialFailed { error, alive },
                };
                let _ = events.send(event);
            }
            .in_current_span(),
        );
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Opened(opened) => {
                self.rounds = self.rounds.saturating_sub(1);
                let welcome = &opened.connection.welcome;
                let known = self.shared.status().epoch;
                // Rounds overlap: one started before a failover may end
                // after it. Never go back to an older epoch or TID.
                let behind =
                    welcome.epoch < known || welcome.last_tid < self.shared.last_seen_tid();
                // A later epoch means a failover: move at once.
                let newer = welcome.epoch > known;
                let keep_current = self.link.is_some() && self.liveness.state().is_well() && !newer;
                if keep_current || (behind && !self.config.any_role) {
                    // A server answered: no reason to back off further.
                    self.backoff.reset();
                    opened
                        .connection
                        .connection
                        .close(0u32.into(), b"not needed");
                    if !self.liveness.state().is_well() && self.rounds == 0 {
                        self.start_dialing();
                    }
                    return;
                }
                self.adopt(*opened, now);
            }
            // A look around while Live (suspicion) is no error of the
            // session's.
            Event::NotPrimary(error) if !self.liveness.state().is_well() => {
                self.shared
                    .status
                    .send_modify(|status| status.last_error = Some(error));
            }
            Event::NotPrimary(_) => {}
            Event::DialFailed { error, alive } => {
                self.rounds = self.rounds.saturating_sub(1);
                tracing::debug!(%error, alive, "dial round failed");
                if alive {
                    self.backoff.retry_soon();
                }
                self.shared
                    .status
                    .send_modify(|status| status.last_error = Some(error));
                if !self.liveness.state().is_well() && self.rounds == 0 {
                    self.start_dialing();
                }
            }
            Event::Session { id, event } if self.is_current(id) => match event {
                SessionEvent::Invalidate { tid, keys } => self.shared.cache.invalidate(tid, &keys),
                SessionEvent::Pong(pong) if !pong.role.is_writable() && !self.config.any_role => {
                    // Deposed, or its lease ran out: find the primary.
                    tracing::info!(role = %pong.role, epoch = pong.epoch.0, "the server is no longer primary");
                    self.leave("the server is no longer the primary");
                }
                SessionEvent::Pong(pong) => {
                    self.shared.status.send_if_modified(|status| {
                        let changed = status.epoch != pong.epoch;
                        status.epoch = pong.epoch;
                        changed
                    });
                    // The stream is ordered: every invalidation for this
                    // client up to last_tid came (and was applied) before.
                    self.shared.cache.advance_applied(pong.last_tid);
                    self.liveness.pong(
                        now,
                        pong.seq,
                        pong.last_tid,
                        self.shared.cache.applied_tid(),
                    );
                }
                other => tracing::debug!(?other, "unexpected session event"),
            },
            Event::SessionClosed { id, reason } if self.is_current(id) => {
                tracing::info!(%reason, "session stream closed");
                self.leave(&reason);
            }
            Event::Session { .. } | Event::SessionClosed { .. } => {} // an old session
        }
    }

    /// Ends the current session (closing its connection fails whatever
    /// waits on it at once, so a resend goes to the next session).
    fn leave(&mut self, reason: &str) {
        tracing::debug!(%reason, "leaving the session");
        // The server answered; look for the primary at once.
        self.backoff.reset();
        self.link = None;
        *self.shared.lock_current() = None;
        self.liveness.disconnected(Instant::now());
    }

    fn is_current(&self, id: u64) -> bool {
        self.link.as_ref().is_some_and(|link| link.id == id)
    }

    /// Makes a newly opened session the current one.
    fn adopt(&mut self, opened: Opened, now: Instant) {
        let Opened {
            connection,
            send,
            recv,
            hello_sent_at,
        } = opened;
        let welcome = &connection.welcome;
        self.shared
            .cache
            .revalidate(welcome.last_tid, welcome.changed_since_cached.as_deref());
        self.shared.saw(welcome.last_tid);
        tracing::info!(server = %connection.server, last_tid = welcome.last_tid.0, revalidated = welcome.changed_since_cached.is_some(), "session open");
        self.next_id += 1;
        let id = self.next_id;
        let (pings, ping_queue) = mpsc::channel(16);
        let connection = Arc::new(connection);
        let tasks = [
            tokio::spawn(read_events(id, recv, self.events_tx.clone()).in_current_span()),
            tokio::spawn(write_pings(send, ping_queue).in_current_span()),
        ];
        self.shared.status.send_modify(|status| {
            status.server = Some(connection.server.clone());
            status.epoch = connection.welcome.epoch;
            status.last_error = None;
        });
        *self.shared.lock_current() = Some(connection.clone());
        // Dropping the old link closes its connection: break after make.
        self.link = Some(Link {
            id,
            connection,
            pings,
            tasks,
        });
        self.backoff.reset();
        self.liveness.session_opened(now, hello_sent_at);
    }
}

/// Which welcomes a dial round accepts.
#[derive(Debug, Clone, Copy)]
struct Accept {
    /// Any server's (status and promote of a chosen node).
    any_role: bool,
    /// Otherwise a primary's (or standalone server's) of at least this
    /// epoch: lower epochs are refused everywhere.
    min_epoch: store_protocol::Epoch,
}

/// How soon a server that answered "not the primary" is dialed again
/// within a round (an election is under way there), at most.
const NOT_PRIMARY_RETRY: std::time::Duration = std::time::Duration::from_millis(150);

/// Dials every server at once; the first primary (or standalone server) of
/// an epoch no older than the client has seen to welcome it wins (with
/// `any_role`, any server that welcomes it).
/// A server that answers but is not the primary is dialed again every
/// ~100 ms until the round's deadline, so a new primary is found as soon as
/// it is elected, without waiting for a dead one to time out. Fails with
/// the worst error, and whether some server was alive.
async fn dial_round(
    servers: Vec<String>,
    endpoint: quinn::Endpoint,
    crypto: quinn::ClientConfig,
    hello: Hello,
    connect_timeout: std::time::Duration,
    accept: Accept,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Opened, (Error, bool)> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let mut attempts = tokio::task::JoinSet::new();
    for server in servers {
        let (endpoint, crypto, hello) = (endpoint.clone(), crypto.clone(), hello.clone());
        let events = events.clone();
        attempts.spawn(
            async move {
                let mut alive = false;
                loop {
                    let opened =
                        Connection::dial(&endpoint, &crypto, &server, hello.clone(), deadline)
                            .await
                            .map_err(|e| (e, alive))?;
                    let welcome = &opened.connection.welcome;
                    let current = welcome.epoch >= accept.min_epoch;
                    if accept.any_role || (welcome.role.is_writable() && current) {
                        return Ok(opened);
                    }
                    alive = true;
                    let detail = if current {
                        format!(
                            "{server}: not the primary (role {}, epoch {})",
                            welcome.role, welcome.epoch
                        )
                    } else {
                        // A primary of an older epoch than this client has
                        // seen was deposed, whatever it believes.
                        format!(
                            "{server}: epoch {} is older than {} seen before",
                            welcome.epoch, accept.min_epoch
                        )
                    };
                    opened
                        .connection
                        .connection
                        .close(0u32.into(), b"not the primary");
                    let error = Error::Unavailable { detail };
                    let pause = NOT_PRIMARY_RETRY.mul_f64(rand::random::<f64>() / 2.0 + 0.5);
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err((error, true));
                    }
                    let _ = events.send(Event::NotPrimary(error));
                    tokio::time::sleep(pause).await;
                }
            }
            .in_current_span(),
        );
    }
    let mut failures = Vec::new();
    let mut alive = false;
    while let Some(attempt) = attempts.join_next().await {
        match attempt {
            Ok(Ok(opened)) => return Ok(opened),
            Ok(Err((e, answered))) => {
                alive |= answered;
                failures.push(e);
            }
            Err(e) => failures.push(Error::Protocol {
                detail: format!("dial task failed: {e}"),
            }),
        }
    }
    Err((worst_of(failures, alive), alive))
}

/// A certificate or configuration problem outranks "unreachable": it will
/// not go away by waiting. Unless another server answered (`alive`): then
/// an election is under way, and waiting is right.
fn worst_of(mut failures: Vec<Error>, alive: bool) -> Error {
    let permanent = failures
        .iter()
        .position(|e| matches!(e, Error::Tls { .. } | Error::Config { .. }))
        .filter(|_| !alive);
    match permanent {
        Some(i) => failures.swap_remove(i),
        None => Error::Unavailable {
            detail: failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}

async fn read_events(id: u64, mut recv: quinn::RecvStream, events: mpsc::UnboundedSender<Event>) {
    let reason = loop {
        match read_frame::<_, SessionEvent>(&mut recv, SESSION_EVENT_LIMIT).await {
            Ok(Some(event)) => {
                if events.send(Event::Session { id, event }).is_err() {
                    return;
                }
            }
            Ok(None) => break "server closed the session stream".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    let _ = events.send(Event::SessionClosed { id, reason });
}

async fn write_pings(mut send: quinn::SendStream, mut pings: mpsc::Receiver<u64>) {
    while let Some(seq) = pings.recv().await {
        let ping = SessionRequest::Ping { seq };
        if write_frame(&mut send, &ping, SESSION_REQUEST_LIMIT)
            .await
            .is_err()
        {
            return;
        }
    }
}
