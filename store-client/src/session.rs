//! Session liveness as a pure state machine: the one place that decides
//! whether cached data may be served.
//!
//! [`Liveness`] is fed events (`session_opened`, `pong`, `disconnected`) and
//! the current time, and answers with [`Action`]s (send a ping, dial, the
//! state changed) and the time it next wants to be woken
//! ([`Liveness::poll_timeout`]). It never sleeps or does I/O, so its tests
//! drive it through hours of simulated time. The async driver around it
//! (`driver`) only moves bytes and timers.
//!
//! The rule: a pong for ping `s` proves the server current as of
//! `sent_at(s)`, so `fresh_until = sent_at(s) + stale_after`, counted only
//! once every invalidation up to the pong's `last_tid` has been applied. A
//! cached value is served only while `now < fresh_until`.
//!
//! A session nobody uses rests: after [`SessionConfig::idle_after`] without
//! a read, a write or a watcher, it stops pinging, lets its proof run out
//! and turns [`SessionState::Idle`] (no dialing: nothing is wrong). The
//! connection stays open (QUIC keep-alives) and invalidations go on being
//! applied; the next read asks for proof again with one ping, and waits
//! one round trip for it.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store_protocol::{Tid, MIN_PING_SPACING};

/// Default ping interval.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Default ping jitter: ±10 % of the interval, so that clients started
/// together do not ping in step.
pub const DEFAULT_PING_JITTER: f64 = 0.1;
/// Default freshness window. Not lower: QUIC's first probe timeout is about
/// 1 s before the first RTT sample, so 3 × PTO ≈ 3 s is the shortest window
/// in which a healthy connection reliably answers.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3);
/// Default time without proof after which the session is `Expired`.
pub const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(40);
/// Default time without use after which a session rests
/// ([`SessionState::Idle`]).
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(10);
/// An answer this late (a ping's pong, or a request's reply) makes the
/// server suspect while the session is Live: a healthy server answers in
/// milliseconds. Suspicion only looks around (the servers are dialed, and
/// a primary of a newer epoch is adopted if one welcomes the client); the
/// session and its proof stay until then, so a false suspicion costs one
/// handshake per server.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(300);
/// Pings remembered while unanswered; older ones are forgotten.
const MAX_OUTSTANDING_PINGS: usize = 64;

/// Timing of the session heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionConfig {
    /// Time between pings. Default 1 s; with jitter, never below 250 ms
    /// (the server drops pings closer together).
    pub ping_interval: Duration,
    /// Relative jitter of the interval, in `[0, 0.5]`. Default 0.1.
    pub ping_jitter: f64,
    /// How long a pong's proof lasts, from the ping's send time. Default
    /// 3 s; must exceed the longest ping interval.
    pub stale_after: Duration,
    /// Time without proof before the session is `Expired`. Default 40 s;
    /// must exceed `stale_after`.
    pub expire_after: Duration,
    /// Time without use (no read or write, nobody holding
    /// `watch_session`) after which the session stops pinging and rests
    /// in [`SessionState::Idle`]. Default 10 s; `None` pings for ever.
    pub idle_after: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_jitter: DEFAULT_PING_JITTER,
            stale_after: DEFAULT_STALE_AFTER,
            expire_after: DEFAULT_EXPIRE_AFTER,
            idle_after: Some(DEFAULT_IDLE_AFTER),
        }
    }
}

impl SessionConfig {
    /// Checks how the settings interact; says what to change if they clash.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=0.5).contains(&self.ping_jitter) {
            return Err(format!(
                "ping jitter {} is outside [0, 0.5]",
                self.ping_jitter
            ));
        }
        let shortest = self.ping_interval.mul_f64(1.0 - self.ping_jitter);
        let longest = self.ping_interval.mul_f64(1.0 + self.ping_jitter);
        if shortest < MIN_PING_SPACING {
            return Err(format!(
                "ping interval {:?} with jitter can fall below {:?}, and the server drops such pings",
                self.ping_interval, MIN_PING_SPACING
            ));
        }
        if self.stale_after <= longest {
            return Err(format!(
                "stale-after {:?} must exceed the ping interval with jitter ({longest:?})",
                self.stale_after
            ));
        }
        if self.expire_after <= self.stale_after {
            return Err(format!(
                "expire-after {:?} must exceed stale-after {:?}",
                self.expire_after, self.stale_after
            ));
        }
        Ok(())
    }
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Dialing for the first time.
    Connecting,
    /// Proven current: the cache may be served.
    Live,
    /// Connected, but proof has lapsed: nothing is served from cache as
    /// fresh; pinging on, and dialing the servers meanwhile.
    Stale,
    /// The connection is gone; dialing with backoff.
    Reconnecting,
    /// No proof for `expire_after`; still dialing.
    Expired,
    /// Connected, but unused for `idle_after`: not pinging, so nothing is
    /// served from cache as fresh until the next read asks for proof (one
    /// ping). Invalidations are still applied. Nothing is wrong.
    Idle,
}

impl SessionState {
    /// The lower-case name printed by `store-cli monitor`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Connecting => "connecting",
            SessionState::Live => "live",
            SessionState::Stale => "stale",
            SessionState::Reconnecting => "reconnecting",
            SessionState::Expired => "expired",
            SessionState::Idle => "idle",
        }
    }

    /// Whether the session is well (`Live`, or resting `Idle`): no reason
    /// to look for another server.
    pub fn is_well(self) -> bool {
        matches!(self, SessionState::Live | SessionState::Idle)
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `Ping{seq}` on the session stream now.
    SendPing {
        /// The ping's sequence number.
        seq: u64,
    },
    /// Start dialing the servers (if not already dialing).
    Dial,
    /// The state changed; tell the application.
    StateChanged(SessionState),
}

/// The session heartbeat and freshness rules. See the module docs.
#[derive(Debug)]
pub struct Liveness {
    config: SessionConfig,
    rng: StdRng,
    state: SessionState,
    connected: bool,
    next_seq: u64,
    /// Unanswered pings, oldest first, with their send times.
    sent: VecDeque<(u64, Instant)>,
    last_ping_at: Option<Instant>,
    next_ping_at: Option<Instant>,
    fresh_until: Option<Instant>,
    /// Leaving Stale takes a pong for a ping with at least this seq, i.e.
    /// one sent after the proof lapsed.
    recovery_seq: u64,
    expires_at: Instant,
    /// A ping went unanswered for a whole interval while Live: the other
    /// servers were dialed already (once per such episode).
    suspected: bool,
    /// When the session was last used (see [`Liveness::demand`]).
    last_demand: Instant,
    /// Someone watches the session's state: it never rests.
    watched: bool,
    /// Unused: no more pings; when the proof runs out, `Idle`.
    resting: bool,
    actions: VecDeque<Action>,
}

impl Liveness {
    /// A session that has not connected yet; its first action is `Dial`.
    /// `seed` feeds the ping jitter.
    pub fn new(config: SessionConfig, now: Instant, seed: u64) -> Liveness {
        Liveness {
            config,
            rng: StdRng::seed_from_u64(seed),
            state: SessionState::Connecting,
            connected: false,
            next_seq: 1,
            sent: VecDeque::new(),
            last_ping_at: None,
            next_ping_at: None,
            fresh_until: None,
            recovery_seq: 0,
            expires_at: now + config.expire_after,
            suspected: false,
            last_demand: now,
            watched: false,
            resting: false,
            actions: VecDeque::from([Action::Dial]),
        }
    }

    /// The current state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Until when cached values may be served; `None` unless `Live`.
    pub fn fresh_until(&self) -> Option<Instant> {
        self.fresh_until
            .filter(|_| self.state == SessionState::Live)
    }

    /// A session opened: its `Welcome` (with revalidation applied) proves
    /// the server current as of `hello_sent_at`.
    pub fn session_opened(&mut self, now: Instant, hello_sent_at: Instant) {
        self.connected = true;
        self.resting = false;
        self.sent.clear();
        self.recovery_seq = self.next_seq;
        self.fresh_until = None;
        self.prove(hello_sent_at, now);
        if self.state != SessionState::Live {
            // A handshake slower than stale_after proves nothing: ask again.
            self.set_state(SessionState::Stale);
            self.send_ping(now);
        } else {
            self.next_ping_at = Some(now + self.jittered_interval());
        }
    }

    /// A pong arrived; `applied_tid` is the last TID whose invalidations
    /// the cache has applied.
    pub fn pong(&mut self, now: Instant, seq: u64, last_tid: Tid, applied_tid: Tid) {
        if applied_tid < last_tid {
            return; // its proof covers invalidations not yet applied
        }
        let Some(index) = self.sent.iter().position(|(s, _)| *s == seq) else {
            return; // unknown, or already superseded
        };
        let sent_at = self.sent[index].1;
        self.sent.drain(..=index);
        if self.state != SessionState::Live && seq < self.recovery_seq {
            return; // sent before the proof lapsed: too old to restore it
        }
        self.prove(sent_at, now);
    }

    /// The connection is gone.
    pub fn disconnected(&mut self, now: Instant) {
        if self.state == SessionState::Idle {
            self.restart_expiry(now);
        }
        self.connected = false;
        self.resting = false;
        self.sent.clear();
        self.next_ping_at = None;
        self.fresh_until = None;
        self.recovery_seq = self.next_seq;
        if self.state != SessionState::Expired {
            self.set_state(SessionState::Reconnecting);
        }
        self.actions.push_back(Action::Dial);
    }

    /// Asks for proof as soon as the server will answer (a reader is
    /// waiting): a ping now, or as soon as [`MIN_PING_SPACING`] allows.
    pub fn ping_now(&mut self, now: Instant) {
        self.demand(now);
        if !self.connected {
            return;
        }
        if self.state == SessionState::Idle {
            self.restart_expiry(now);
        }
        self.resting = false;
        // A ping sent since the proof lapsed is on its way: its pong is
        // the proof asked for (no second ping for a second reader).
        if self.state != SessionState::Live
            && self
                .sent
                .back()
                .is_some_and(|(seq, _)| *seq >= self.recovery_seq)
        {
            return;
        }
        let earliest = self.last_ping_at.map_or(now, |at| at + MIN_PING_SPACING);
        if earliest <= now {
            self.send_ping(now);
        } else if self.next_ping_at.is_none_or(|at| at > earliest) {
            self.next_ping_at = Some(earliest);
        }
    }

    /// Whether the session rests: unused, it skips its pings (its proof
    /// running out) or is `Idle`. A read should then call
    /// [`Liveness::ping_now`] at once.
    pub fn is_resting(&self) -> bool {
        self.resting
    }

    /// The application used the session at `at` (a read or a write): it
    /// does not rest until `idle_after` later.
    pub fn demand(&mut self, at: Instant) {
        self.last_demand = self.last_demand.max(at);
    }

    /// Whether someone watches the session's state (holds a
    /// `watch_session` receiver): a watched session never rests, so a
    /// dead server is noticed within `stale_after` even while unused.
    pub fn watched(&mut self, watched: bool) {
        self.watched = watched;
    }

    /// Whether the session should keep proving itself at `now`.
    fn in_use(&self, now: Instant) -> bool {
        self.watched
            || self.config.idle_after.is_none_or(|idle| {
                self.last_demand
                    .checked_add(idle)
                    .is_none_or(|until| now < until)
            })
    }

    /// Leaving `Idle` (woken, or its connection lost): time without proof
    /// counts from `now`, not from the proof it let run out on purpose.
    fn restart_expiry(&mut self, now: Instant) {
        self.expires_at = self.expires_at.max(now + self.config.expire_after);
    }

    /// When an unanswered ping makes the server suspect:
    /// [`SUSPECT_AFTER`] (at most a ping interval) after it was sent.
    /// While `Idle`, that ping is the one that woke it (pings from before
    /// the rest are forgotten on entering it).
    fn suspect_at(&self) -> Option<Instant> {
        let watching = match self.state {
            SessionState::Live => !self.suspected,
            SessionState::Idle => true,
            _ => false,
        };
        if !watching {
            return None;
        }
        let after = SUSPECT_AFTER.min(self.config.ping_interval);
        self.sent.front().map(|(_, sent_at)| *sent_at + after)
    }

    /// A request on the current session has gone unanswered for
    /// [`SUSPECT_AFTER`]: suspect the server, as for a late pong.
    pub fn request_unanswered(&mut self) {
        if !self.suspected && self.state == SessionState::Live {
            self.suspect();
        }
    }

    /// Still Live (the proof has not lapsed), but look around: if a
    /// failover is under way, the new primary is found before the proof
    /// runs out. The current session stays until one opens.
    fn suspect(&mut self) {
        self.suspected = true;
        self.actions.push_back(Action::Dial);
    }

    /// Advances the timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.suspect_at().is_some_and(|at| at <= now) {
            if self.state == SessionState::Idle {
                // The ping that woke it went unanswered: as for a lapse.
                self.set_state(SessionState::Stale);
                self.actions.push_back(Action::Dial);
            } else {
                self.suspect();
            }
        }
        if let Some(lapsed_at) = self
            .fresh_until
            .filter(|at| self.state == SessionState::Live && *at <= now)
        {
            self.fresh_until = None;
            // A ping sent since the proof's end (a reader's, whose request
            // came before this timer) counts as sent after the lapse.
            self.recovery_seq = self
                .sent
                .iter()
                .find(|(_, at)| *at >= lapsed_at)
                .map_or(self.next_seq, |(seq, _)| *seq);
            if self.resting {
                // Unused, not unwell: no dialing, no expiry. Pings from
                // before can no longer restore the proof: forget them, so
                // only the ping that wakes it is waited for.
                self.sent.clear();
                self.next_ping_at = None;
                self.set_state(SessionState::Idle);
            } else {
                self.set_state(SessionState::Stale);
                // Make before break: dial the servers while still pinging this one.
                self.actions.push_back(Action::Dial);
            }
        }
        if !matches!(self.state, SessionState::Expired | SessionState::Idle)
            && self.expires_at <= now
        {
            self.set_state(SessionState::Expired);
        }
        if self.resting && self.in_use(now) {
            // Used or watched again: prove it again.
            self.ping_now(now);
        }
        if self.connected && self.next_ping_at.is_some_and(|at| at <= now) {
            if self.state == SessionState::Live && !self.in_use(now) {
                // Skip this ping, and look again at the next one's time:
                // use before the proof runs out resumes pinging in time.
                self.resting = true;
                self.next_ping_at = Some(now + self.jittered_interval());
            } else {
                self.resting = false;
                self.send_ping(now);
            }
        }
    }

    /// When [`Liveness::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let fresh = self.fresh_until();
        let ping = self.next_ping_at.filter(|_| self.connected);
        let expiry = Some(self.expires_at)
            .filter(|_| !matches!(self.state, SessionState::Expired | SessionState::Idle));
        [fresh, ping, expiry, self.suspect_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn prove(&mut self, sent_at: Instant, now: Instant) {
        self.suspected = false;
        let until = sent_at + self.config.stale_after;
        self.expires_at = self.expires_at.max(sent_at + self.config.expire_after);
        if until <= now {
            return;
        }
        self.fresh_until = Some(self.fresh_until.map_or(until, |f| f.max(until)));
        self.set_state(SessionState::Live);
    }

    fn send_ping(&mut self, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.push_back((seq, now));
        if self.sent.len() > MAX_OUTSTANDING_PINGS {
            self.sent.pop_front();
        }
        self.last_ping_at = Some(now);
        self.next_ping_at = Some(now + self.jittered_interval());
        self.actions.push_back(Action::SendPing { seq });
    }

    fn jittered_interval(&mut self) -> Duration {
        let jitter = self.config.ping_jitter;
        let factor = 1.0 + self.rng.gen_range(-jitter..=jitter);
        self.config.ping_interval.mul_f64(factor)
    }

    fn set_state(&mut self, state: SessionState) {
        if self.state != state {
            self.state = state;
            self.actions.push_back(Action::StateChanged(state));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A simulated clock and a machine, with the actions it emitted.
    struct Sim {
        now: Instant,
        live: Liveness,
        actions: Vec<Action>,
        /// Every ping sent, with the simulated time it was sent.
        sent: Vec<(u64, Instant)>,
    }

    impl Sim {
        /// A session in constant use (it never rests).
        fn new() -> Sim {
            Sim::with(SessionConfig {
                idle_after: None,
                ..SessionConfig::default()
            })
        }

        fn with(config: SessionConfig) -> Sim {
            let now = Instant::now();
            let mut sim = Sim {
                now,
                live: Liveness::new(config, now, 42),
                actions: Vec::new(),
                sent: Vec::new(),
            };
            sim.drain();
            sim
        }

        fn drain(&mut self) {
            while let Some(a) = self.live.poll_action() {
                if let Action::SendPing { seq } = a {
                    self.sent.push((seq, self.now));
                }
                self.actions.push(a);
            }
        }

        /// Runs the timers up to `until`, one wake-up at a time.
        fn run_until(&mut self, until: Instant) {
            while let Some(at) = self.live.poll_timeout().filter(|at| *at <= until) {
                self.now = at.max(self.now);
                self.live.handle_timeout(self.now);
                self.drain();
            }
            self.now = until;
        }

        fn advance(&mut self, by: Duration) {
            self.run_until(self.now + by);
        }

        fn open(&mut self) {
            let at = self.now;
            self.live.session_opened(self.now, at);
            self.drain();
        }

        fn pings(&self) -> Vec<u64> {
            self.sent.iter().map(|(seq, _)| *seq).collect()
        }

        fn last_ping(&self) -> u64 {
            *self.pings().last().unwrap()
        }

        fn pong(&mut self, seq: u64) {
            self.live.pong(self.now, seq, Tid(0), Tid(0));
            self.drain();
        }

        fn took(&mut self, action: Action) -> bool {
            let found = self.actions.contains(&action);
            self.actions.clear();
            found
        }
    }

    /// A session with the default `idle_after`, opened and answering
    /// every ping at once until `until`.
    fn answered_until(sim: &mut Sim, until: Instant) {
        while sim.now < until {
            sim.advance(10 * MS);
            if let Some(&(seq, _)) = sim.sent.last() {
                sim.pong(seq);
            }
        }
    }

    #[test]
    fn an_unused_session_rests_idle_without_pinging_dialing_or_expiring() {
        let mut sim = Sim::with(SessionConfig::default());
        let start = sim.now;
        sim.open();
        sim.actions.clear();
        // Pings answered while in use; then no pings, only the proof
        // running out: Idle, never Stale, never a dial, never Expired.
        answered_until(
            &mut sim,
            start + DEFAULT_IDLE_AFTER + Duration::from_secs(600),
        );
        let last_ping_at = sim.sent.last().unwrap().1;
        assert!(
            last_ping_at <= start + DEFAULT_IDLE_AFTER,
            "pinged at {:?}",
            last_ping_at - start
        );
        assert!(last_ping_at + DEFAULT_PING_INTERVAL.mul_f64(1.1) > start + DEFAULT_IDLE_AFTER);
        assert_eq!(sim.live.state(), SessionState::Idle);
        assert_eq!(sim.live.fresh_until(), None);
        let others: Vec<Action> = sim
            .actions
            .iter()
            .filter(|a| !matches!(a, Action::SendPing { .. }))
            .copied()
            .collect();
        assert_eq!(
            others,
            vec![Action::StateChanged(SessionState::Idle)],
            "resting is the only change in ten minutes"
        );
        assert_eq!(sim.live.poll_timeout(), None, "an idle session sleeps");
    }

    #[test]
    fn a_read_wakes_an_idle_session_with_one_ping() {
        let mut sim = Sim::with(SessionConfig::default());
        sim.open();
        let start = sim.now;
        answered_until(&mut sim, start + Duration::from_secs(60));
        assert_eq!(sim.live.state(), SessionState::Idle);
        let pings = sim.sent.len();
        sim.live.ping_now(sim.now);
        sim.drain();
        assert_eq!(sim.sent.len(), pings + 1, "the read asks for proof at once");
        sim.advance(MS);
        sim.pong(sim.last_ping());
        assert_eq!(sim.live.state(), SessionState::Live);
        // In use again: pinging goes on for idle_after before resting.
        let until = sim.now + DEFAULT_IDLE_AFTER / 2;
        answered_until(&mut sim, until);
        assert_eq!(sim.live.state(), SessionState::Live);
        assert!(sim.sent.len() >= pings + 4);
    }

    #[test]
    fn an_unanswered_wake_up_ping_makes_the_session_stale_and_dials() {
        let mut sim = Sim::with(SessionConfig::default());
        sim.open();
        let start = sim.now;
        answered_until(&mut sim, start + Duration::from_secs(60));
        sim.actions.clear();
        sim.live.ping_now(sim.now);
        let woke = sim.now;
        sim.drain();
        sim.advance(SUSPECT_AFTER - MS);
        assert_eq!(sim.live.state(), SessionState::Idle);
        sim.advance(2 * MS);
        assert_eq!(sim.live.state(), SessionState::Stale);
        assert!(sim.actions.contains(&Action::Dial));
        // Expiry counts from the wake-up, not from the last proof.
        sim.run_until(woke + DEFAULT_EXPIRE_AFTER - MS);
        assert_ne!(sim.live.state(), SessionState::Expired);
        sim.advance(2 * MS);
        assert_eq!(sim.live.state(), SessionState::Expired);
    }

    #[test]
    fn use_before_the_proof_runs_out_resumes_pinging_without_going_idle() {
        let mut sim = Sim::with(SessionConfig::default());
        sim.open();
        let start = sim.now;
        // Just past idle_after: the next ping is skipped, the proof runs on.
        answered_until(
            &mut sim,
            start + DEFAULT_IDLE_AFTER + DEFAULT_PING_INTERVAL * 2,
        );
        assert_eq!(sim.live.state(), SessionState::Live);
        let quiet_since = sim.sent.last().unwrap().1;
        assert!(
            sim.now - quiet_since >= DEFAULT_PING_INTERVAL,
            "a ping was skipped"
        );
        // A read before the proof lapses wakes it (the driver calls
        // ping_now when a read finds it resting): pinging resumes at once.
        assert!(sim.live.is_resting());
        sim.live.ping_now(sim.now);
        sim.drain();
        sim.actions.clear();
        let until = sim.now + Duration::from_secs(5);
        answered_until(&mut sim, until);
        assert_eq!(sim.live.state(), SessionState::Live);
        assert!(
            !sim.actions
                .contains(&Action::StateChanged(SessionState::Idle)),
            "{:?}",
            sim.actions
        );
    }

    #[test]
    fn two_readers_waking_an_idle_session_send_one_ping() {
        let mut sim = Sim::with(SessionConfig::default());
        sim.open();
        let start = sim.now;
        answered_until(&mut sim, start + Duration::from_secs(60));
        let pings = sim.sent.len();
        sim.live.ping_now(sim.now);
        sim.live.ping_now(sim.now);
        sim.drain();
        sim.advance(MIN_PING_SPACING * 2);
        assert_eq!(sim.sent.len(), pings + 1);
    }

    #[test]
    fn an_idle_session_that_loses_its_connection_has_its_whole_expiry_to_reconnect() {
        let mut sim = Sim::with(SessionConfig::default());
        sim.open();
        let start = sim.now;
        answered_until(&mut sim, start + Duration::from_secs(120));
        assert_eq!(sim.live.state(), SessionState::Idle);
        sim.live.disconnected(sim.now);
        let lost = sim.now;
        sim.drain();
        assert_eq!(sim.live.state(), SessionState::Reconnecting);
        sim.run_until(lost + DEFAULT_EXPIRE_AFTER - MS);
        assert_eq!(sim.live.state(), SessionState::Reconnecting);
        sim.advance(2 * MS);
        assert_eq!(sim.live.state(), SessionState::Expired);
    }

    #[test]
    fn a_watched_session_never_rests() {
        let mut sim = Sim::with(SessionConfig::default());
        sim.live.watched(true);
        sim.open();
        let start = sim.now;
        answered_until(&mut sim, start + Duration::from_secs(600));
        assert_eq!(sim.live.state(), SessionState::Live);
        // About one ping a second for the whole ten minutes.
        let late = sim
            .sent
            .iter()
            .filter(|(_, at)| *at > start + Duration::from_secs(590));
        assert!(late.count() >= 8);
    }

    #[test]
    fn starts_by_dialing_and_goes_live_on_welcome() {
        let mut sim = Sim::new();
        assert_eq!(sim.live.state(), SessionState::Connecting);
        assert!(sim.took(Action::Dial));
        sim.advance(200 * MS);
        let hello_sent = sim.now - 150 * MS;
        sim.live.session_opened(sim.now, hello_sent);
        sim.drain();
        assert_eq!(sim.live.state(), SessionState::Live);
        assert_eq!(
            sim.live.fresh_until(),
            Some(hello_sent + DEFAULT_STALE_AFTER)
        );
        assert!(sim.took(Action::StateChanged(SessionState::Live)));
    }

    #[test]
    fn pings_keep_within_the_jitter_bounds_for_an_hour() {
        let mut sim = Sim::new();
        sim.open();
        let end = sim.now + Duration::from_secs(3600);
        while sim.now < end {
            let before = sim.pings().len();
            sim.advance(10 * MS);
            if sim.pings().len() > before {
                let seq = sim.last_ping();
                sim.pong(seq); // answered within 10 ms
            }
        }
        let sent_at: Vec<Instant> = sim.sent.iter().map(|(_, at)| *at).collect();
        assert!(sent_at.len() > 3000);
        let gaps: Vec<Duration> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g >= 890 * MS && *g <= 1110 * MS),
            "gap out of bounds"
        );
        let spread =
            gaps.iter().max().unwrap().as_millis() - gaps.iter().min().unwrap().as_millis();
        assert!(spread >= 150, "jitter actually varies: spread {spread} ms");
        assert_eq!(sim.live.state(), SessionState::Live);
    }

    #[test]
    fn freshness_counts_from_the_send_time_not_the_arrival() {
        let mut sim = Sim::new();
        sim.open();
        sim.advance(1100 * MS);
        let (seq, sent) = *sim.sent.last().unwrap();
        sim.advance(1500 * MS); // a slow pong, still inside the first window
        sim.pong(seq);
        assert_eq!(sim.live.fresh_until(), Some(sent + DEFAULT_STALE_AFTER));
    }

    #[test]
    fn silence_makes_the_session_stale_exactly_at_fresh_until_and_dials() {
        let mut sim = Sim::new();
        sim.open();
        sim.actions.clear();
        let fresh_until = sim.live.fresh_until().unwrap();
        // The server goes silent: pings continue, nothing answers.
        sim.run_until(fresh_until - MS);
        assert_eq!(sim.live.state(), SessionState::Live);
        sim.run_until(fresh_until);
        assert_eq!(sim.live.state(), SessionState::Stale);
        assert_eq!(sim.live.fresh_until(), None);
        assert!(sim.actions.contains(&Action::Dial), "make before break");
        assert!(sim.took(Action::StateChanged(SessionState::Stale)));
    }

    #[test]
    fn a_late_pong_or_reply_raises_suspicion_after_suspect_after_only() {
        let mut sim = Sim::new();
        sim.open();
        sim.actions.clear();
        // The next ping goes unanswered: no suspicion until SUSPECT_AFTER
        // after it was sent, then one look around.
        let before = sim.pings().len();
        while sim.pings().len() == before {
            sim.advance(MS);
        }
        sim.actions.clear();
        sim.advance(SUSPECT_AFTER - MS);
        assert!(!sim.actions.contains(&Action::Dial));
        sim.advance(MS);
        assert!(sim.took(Action::Dial));
        // A slow reply in the same episode adds nothing.
        sim.live.request_unanswered();
        sim.drain();
        assert!(!sim.took(Action::Dial));
        // Proof ends the episode; a slow reply then looks around once.
        let seq = sim.last_ping();
        sim.pong(seq);
        sim.live.request_unanswered();
        sim.live.request_unanswered();
        sim.drain();
        let dials = sim.actions.iter().filter(|a| **a == Action::Dial).count();
        assert_eq!(dials, 1);
    }

    #[test]
    fn a_slow_reply_while_not_live_dials_nothing_more() {
        let mut sim = Sim::new();
        sim.actions.clear();
        sim.live.request_unanswered();
        sim.drain();
        assert!(!sim.took(Action::Dial), "connecting: already dialing");
    }

    #[test]
    fn a_silence_dials_the_others_once_per_episode_while_live() {
        let mut sim = Sim::new();
        sim.open();
        sim.actions.clear();
        // Answered pings never raise suspicion.
        for _ in 0..3 {
            sim.advance(Duration::from_millis(1100));
            if let Some(seq) = sim.pings().last().copied() {
                sim.pong(seq);
            }
        }
        assert!(!sim.actions.contains(&Action::Dial));
        let fresh_until = sim.live.fresh_until().unwrap();
        sim.actions.clear();
        sim.run_until(fresh_until - MS);
        assert_eq!(sim.live.state(), SessionState::Live);
        let dials = sim.actions.iter().filter(|a| **a == Action::Dial).count();
        assert_eq!(
            dials, 1,
            "one look around per silence, before the proof lapses"
        );
        // An answer ends the episode: the next silence looks around again.
        let seq = sim.last_ping();
        sim.pong(seq);
        sim.actions.clear();
        let fresh_until = sim.live.fresh_until().unwrap();
        sim.run_until(fresh_until - MS);
        assert!(sim.actions.contains(&Action::Dial));
    }

    #[test]
    fn detection_never_takes_longer_than_stale_after_from_the_outage() {
        // Whenever the outage starts, proof lapses within stale_after of it,
        // because every proof dates from a ping sent before the outage.
        for offset_ms in (0..2000).step_by(37) {
            let mut sim = Sim::new();
            sim.open();
            let mut outage_at = None;
            let outage_start = sim.now + Duration::from_secs(5) + offset_ms * MS;
            while sim.live.state() == SessionState::Live {
                let before = sim.pings().len();
                sim.advance(5 * MS);
                if sim.now >= outage_start {
                    outage_at.get_or_insert(sim.now);
                } else if sim.pings().len() > before {
                    let seq = sim.last_ping();
                    sim.pong(seq);
                }
            }
            let detected = sim.now - outage_at.unwrap();
            assert!(
                detected <= DEFAULT_STALE_AFTER,
                "offset {offset_ms}: {detected:?}"
            );
        }
    }

    #[test]
    fn a_late_pong_for_an_old_ping_does_not_restore_live() {
        let mut sim = Sim::new();
        sim.open();
        sim.advance(1100 * MS);
        let old = sim.pings()[0];
        sim.run_until(sim.live.poll_timeout().unwrap() + Duration::from_secs(3));
        assert_eq!(sim.live.state(), SessionState::Stale);
        sim.pong(old);
        assert_eq!(
            sim.live.state(),
            SessionState::Stale,
            "sent before the lapse"
        );
        sim.advance(1200 * MS);
        let fresh = sim.last_ping();
        assert!(fresh > old);
        sim.pong(fresh);
        assert_eq!(sim.live.state(), SessionState::Live);
    }

    #[test]
    fn a_pong_ahead_of_applied_invalidations_does_not_count() {
        let mut sim = Sim::new();
        sim.open();
        sim.run_until(sim.live.fresh_until().unwrap());
        assert_eq!(sim.live.state(), SessionState::Stale);
        sim.advance(1200 * MS);
        let seq = sim.last_ping();
        sim.live.pong(sim.now, seq, Tid(10), Tid(9));
        assert_eq!(sim.live.state(), SessionState::Stale);
        sim.live.pong(sim.now, seq, Tid(10), Tid(10));
        assert_eq!(sim.live.state(), SessionState::Live);
    }

    #[test]
    fn disconnect_reconnects_and_expiry_is_reported_without_any_server() {
        let mut sim = Sim::new();
        sim.open();
        sim.advance(500 * MS);
        sim.live.disconnected(sim.now);
        sim.drain();
        assert_eq!(sim.live.state(), SessionState::Reconnecting);
        assert!(sim.took(Action::Dial));
        let pings_before = sim.pings().len();
        sim.advance(Duration::from_secs(39));
        assert_eq!(sim.live.state(), SessionState::Reconnecting);
        assert_eq!(
            sim.pings().len(),
            pings_before,
            "no pings without a connection"
        );
        sim.advance(Duration::from_secs(1));
        assert_eq!(sim.live.state(), SessionState::Expired);
        sim.open();
        assert_eq!(sim.live.state(), SessionState::Live);
    }

    #[test]
    fn ping_now_respects_the_server_spacing() {
        let mut sim = Sim::new();
        sim.open();
        sim.advance(1100 * MS); // one regular ping
        let count = sim.pings().len();
        sim.live.ping_now(sim.now);
        sim.drain();
        assert_eq!(sim.pings().len(), count, "too soon after the last ping");
        let last_sent = sim.sent.last().unwrap().1;
        assert_eq!(sim.live.poll_timeout(), Some(last_sent + MIN_PING_SPACING));
        sim.advance(MIN_PING_SPACING);
        assert_eq!(sim.pings().len(), count + 1, "sent as soon as allowed");
    }

    #[test]
    fn configuration_interactions_are_checked() {
        assert!(SessionConfig::default().validate().is_ok());
        let too_short = SessionConfig {
            stale_after: Duration::from_secs(1),
            ..SessionConfig::default()
        };
        assert!(too_short.validate().unwrap_err().contains("stale-after"));
        let too_fast = SessionConfig {
            ping_interval: 200 * MS,
            ..SessionConfig::default()
        };
        assert!(too_fast.validate().unwrap_err().contains("drops"));
        let expiry = SessionConfig {
            expire_after: Duration::from_secs(2),
            ..SessionConfig::default()
        };
        assert!(expiry.validate().unwrap_err().contains("expire-after"));
    }
}
