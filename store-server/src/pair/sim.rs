//! Deterministic simulation of the pair's core (FoundationDB's and
//! TigerBeetle's habit, raft-rs's test `Network`): the pure state machines
//! of two data nodes ([`Standing`], [`Replication`]), the witness
//! ([`Witness`]) and a client's session ([`Liveness`]) driven together by
//! a seeded schedule over a simulated network, with what the shells do
//! (`node`, `replicator`, `follower`, `witness`, the client's driver)
//! reduced to its rules: renew, campaign, ship batches, join, record the
//! backup in or out of sync, answer clients, push invalidations, answer
//! pings, dial and adopt a primary.
//!
//! Every link drops, delays (0.1–50 ms), duplicates and reorders; links
//! are cut for 0.2–4 s, one way or both; nodes and the witness crash and
//! lose all but what they made durable (epoch, cluster, log, votes); each
//! node's clock runs within ±0.5 % of real time (1 % apart at most, the
//! documented margin). Each node wakes at its cores' `poll_timeout`.
//!
//! After every event the simulation asserts that no two nodes serve at
//! once (no lease overlap), that no epoch has two primaries, that a node
//! elected primary holds every batch acknowledged to a client, and that
//! while the client may serve from its cache it has applied the
//! invalidations of every batch acknowledged `stale_after` before (plus
//! the clock margin).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store_protocol::peer::{LogPosition, NodeId, PeerRequest, PeerResponse};
use store_protocol::Epoch;

use super::clock::Instant;
use super::lease::LeaseConfig;
use super::replication::Replication;
use super::role::{Action, Standing};
use super::votes::{Votes, Witness};
use store_client::{Liveness, SessionAction, SessionConfig, SessionState};
use store_protocol::Tid;

/// The witness's index among the members.
const WITNESS: usize = 2;
/// The client's index among the members.
const CLIENT: usize = 3;
/// Members: two data nodes, the witness, the client.
const MEMBERS: usize = 4;
/// How long a shell waits for an answer before giving up on a request.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// How often a backup without a stream asks its primary to join.
const JOIN_RETRY: Duration = Duration::from_millis(100);

/// One log entry: the epoch it was written in and a unique id.
type Entry = (Epoch, u64);

/// What travels between members.
#[derive(Debug, Clone)]
enum Msg {
    Request {
        id: u64,
        request: PeerRequest,
    },
    Response {
        id: u64,
        response: PeerResponse,
    },
    /// Primary → backup: entry `index` (0-based) of the primary's log.
    Batch {
        epoch: Epoch,
        index: usize,
        entry: Entry,
    },
    /// Backup → primary: the log up to `len` is durable here.
    Ack {
        epoch: Epoch,
        len: usize,
        joined: bool,
    },
    /// Backup → primary: send me your whole log (a join, or a gap).
    NeedJoin {
        epoch: Epoch,
    },
    /// Primary → backup: my whole log.
    Join {
        epoch: Epoch,
        log: Vec<Entry>,
    },
    /// Client → node: open a session.
    Hello,
    /// Node → client: session open; the client's cache is current as of
    /// `last` (revalidated).
    Welcome {
        epoch: Epoch,
        last: u64,
    },
    /// Node → client: not the primary (session refused or ended).
    Refused,
    /// Client → node, on the session stream.
    Ping {
        seq: u64,
    },
    /// Node → client: every invalidation up to `last` was sent before.
    Pong {
        seq: u64,
        last: u64,
    },
    /// Node → client: the batches up to `len` changed keys.
    Invalidate {
        len: usize,
    },
}

/// The client: its session's state machine and what its driver knows.
struct ClientSide {
    live: Liveness,
    origin: std::time::Instant,
    /// The node of the current session, and its epoch.
    server: Option<(usize, Epoch)>,
    /// When the current dial round sent its Hellos.
    hello_sent_at: Option<std::time::Instant>,
    /// Invalidations applied up to this log length.
    applied: u64,
    wake: Option<(Duration, u64)>,
}

/// What a node waits for an answer to.
#[derive(Debug, Clone, Copy)]
enum Asked {
    Renew,
    Campaign,
    InSync(Epoch, bool),
    /// Sent as a node stops; nobody waits for the answer.
    Parting,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    /// A node's timers; only the latest one scheduled counts.
    Wake {
        member: usize,
        token: u64,
    },
    Timeout {
        node: usize,
        id: u64,
    },
    Write,
    Crash {
        member: usize,
    },
    /// SIGTERM of a data node: a primary with its backup in sync hands
    /// its lease over (as `Pair::hand_over` does), then the node stops.
    Stop {
        member: usize,
    },
    Restart {
        member: usize,
    },
    Cut {
        from: usize,
        to: usize,
        until: Duration,
    },
}

/// A data node: what survives a crash, and what does not.
struct Node {
    up: bool,
    // Durable.
    epoch: Epoch,
    log: Vec<Entry>,
    // Volatile.
    standing: Standing,
    replication: Option<(Epoch, Replication)>,
    /// Log lengths waiting for the backup, in order (the shell's queue).
    waiting: std::collections::VecDeque<usize>,
    joined_epoch: Option<Epoch>,
    last_join_ask: Option<Duration>,
    asked: BTreeMap<u64, (Asked, Instant)>,
    acked_position: LogPosition,
    /// The pending wake-up: when, and its token.
    wake: Option<(Duration, u64)>,
}

/// The simulated world of one schedule.
struct World {
    rng: StdRng,
    config: LeaseConfig,
    origin: Instant,
    now: Duration,
    rates: [f64; MEMBERS],
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: BTreeMap<u64, Event>,
    next_seq: u64,
    next_id: u64,
    nodes: [Node; 2],
    witness: Option<Witness>,
    votes: Votes,
    /// Link faults: drop probability and cut-until per (from, to).
    drop: [[f64; MEMBERS]; MEMBERS],
    cut_until: [[Duration; MEMBERS]; MEMBERS],
    /// The last delivery time of each link's replication stream, which
    /// is ordered (a QUIC stream): loss there breaks it, reordering does
    /// not happen.
    stream_at: [[Duration; MEMBERS]; MEMBERS],
    /// Every batch acknowledged to a client.
    acknowledged: BTreeSet<u64>,
    /// When each acknowledgement happened, and the log length it covered.
    acks: Vec<(Duration, u64)>,
    /// How many of `acks` are older than the staleness bound, and the
    /// longest log among them.
    acks_due: (usize, u64),
    client: ClientSide,
    /// Per node: whether the client has a session there, and the log
    /// length up to which invalidations were sent on it.
    sessions: [Option<u64>; 2],
    cache_checks: u64,
    /// Which node was primary of each epoch.
    primaries: BTreeMap<Epoch, usize>,
    elections: u64,
    hand_overs: u64,
    /// What happened, for a failure's message.
    trace: Vec<String>,
}

/// What a schedule did, for the report.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    acknowledged: usize,
    elections: u64,
    hand_overs: u64,
    cache_checks: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = LeaseConfig::default();
        let origin = Instant::now();
        let rates = [0, 1, 2, 3].map(|_| 1.0 + rng.gen_range(-0.005..=0.005));
        let client_origin = std::time::Instant::now();
        let mut drop = [[0.0; MEMBERS]; MEMBERS];
        for row in &mut drop {
            for p in row.iter_mut() {
                *p = if rng.gen_bool(0.5) {
                    0.0
                } else {
                    rng.gen_range(0.0..0.2)
                };
            }
        }
        let node = |me: NodeId| Node {
            up: true,
            epoch: Epoch(0),
            log: Vec::new(),
            standing: Standing::new(me, Epoch(0), config, origin),
            replication: None,
            waiting: Default::default(),
            joined_epoch: None,
            last_join_ask: None,
            asked: BTreeMap::new(),
            acked_position: LogPosition::default(),
            wake: None,
        };
        let mut world = World {
            rng,
            config,
            origin,
            now: Duration::ZERO,
            rates,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_seq: 0,
            next_id: 0,
            nodes: [node(0), node(1)],
            witness: Some(Witness::new(Votes::default(), config, origin)),
            votes: Votes::default(),
            drop,
            cut_until: [[Duration::ZERO; MEMBERS]; MEMBERS],
            stream_at: [[Duration::ZERO; MEMBERS]; MEMBERS],
            acknowledged: BTreeSet::new(),
            acks: Vec::new(),
            acks_due: (0, 0),
            client: ClientSide {
                live: Liveness::new(
                    SessionConfig {
                        // The modelled client is always in use.
                        idle_after: None,
                        ..SessionConfig::default()
                    },
                    client_origin,
                    seed,
                ),
                origin: client_origin,
                server: None,
                hello_sent_at: None,
                applied: 0,
                wake: None,
            },
            sessions: [None; 2],
            cache_checks: 0,
            primaries: BTreeMap::new(),
            elections: 0,
            hand_overs: 0,
            trace: Vec::new(),
        };
        for member in 0..2 {
            world.schedule_wake(member);
        }
        world.client_actions();
        world.schedule_client_wake();
        world.at(Duration::from_millis(5), Event::Write);
        world
    }

    /// Member `m`'s clock at the current moment.
    fn clock(&self, m: usize) -> Instant {
        self.origin + self.now.mul_f64(self.rates[m])
    }

    /// The real moment member `m`'s clock reads `at`.
    fn real(&self, m: usize, at: Instant) -> Duration {
        at.duration_since(self.origin).div_f64(self.rates[m])
    }

    fn note(&mut self, line: String) {
        let at = self.now.as_micros();
        self.trace.push(format!("{at:>10} µs {line}"));
    }

    fn at(&mut self, when: Duration, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.insert(seq, event);
        self.queue.push(Reverse((when, seq)));
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.now < self.cut_until[from][to] || self.rng.gen_bool(self.drop[from][to]) {
            return;
        }
        let delay = Duration::from_micros(self.rng.gen_range(100..50_000));
        if matches!(msg, Msg::Request { .. } | Msg::Response { .. }) {
            // Requests and answers are datagrams' worth: duplicated and
            // reordered at will.
            let copies = if self.rng.gen_bool(0.02) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = Duration::from_micros(self.rng.gen_range(100..50_000));
                self.at(
                    self.now + delay,
                    Event::Deliver {
                        from,
                        to,
                        msg: msg.clone(),
                    },
                );
            }
            return;
        }
        let when = (self.now + delay).max(self.stream_at[from][to]);
        self.stream_at[from][to] = when;
        self.at(when, Event::Deliver { from, to, msg });
    }

    fn request(&mut self, node: usize, to: usize, request: PeerRequest, asked: Asked) {
        let id = self.next_id;
        self.next_id += 1;
        let sent_at = self.clock(node);
        self.nodes[node].asked.insert(id, (asked, sent_at));
        self.send(node, to, Msg::Request { id, request });
        self.at(self.now + REQUEST_TIMEOUT, Event::Timeout { node, id });
    }

    /// Runs the schedule for `length` of simulated time.
    fn run(&mut self, length: Duration) -> Result<Tally, String> {
        let faults = self.rng.gen_range(0..12);
        for _ in 0..faults {
            let when = Duration::from_millis(self.rng.gen_range(0..length.as_millis() as u64));
            let event = match self.rng.gen_range(0..4) {
                0 => Event::Crash {
                    member: self.rng.gen_range(0..3),
                },
                1 => Event::Stop {
                    member: self.rng.gen_range(0..2),
                },
                _ => {
                    let from = self.rng.gen_range(0..MEMBERS);
                    let to = (from + self.rng.gen_range(1..MEMBERS)) % MEMBERS;
                    let until = when + Duration::from_millis(self.rng.gen_range(200..4000));
                    Event::Cut { from, to, until }
                }
            };
            self.at(when, event);
        }
        while let Some(Reverse((when, seq))) = self.queue.pop() {
            if when > length {
                break;
            }
            self.now = when;
            let event = self.events.remove(&seq).ok_or("lost event")?;
            let routine = matches!(
                &event,
                Event::Wake { .. }
                    | Event::Write
                    | Event::Timeout { .. }
                    | Event::Deliver {
                        msg: Msg::Batch { .. } | Msg::Ack { .. },
                        ..
                    }
            );
            if !routine {
                self.note(format!("{event:?}"));
            }
            let checked = self.handle(event).and_then(|()| self.check());
            if let Err(e) = checked {
                let from = self.trace.len().saturating_sub(80);
                return Err(format!("{e}\n{}", self.trace[from..].join("\n")));
            }
        }
        Ok(Tally {
            acknowledged: self.acknowledged.len(),
            elections: self.elections,
            hand_overs: self.hand_overs,
            cache_checks: self.cache_checks,
        })
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Wake { member, token } if member == CLIENT => {
                if self.client.wake.is_some_and(|(_, t)| t == token) {
                    self.client.wake = None;
                    let now = self.client_now();
                    self.client.live.handle_timeout(now);
                    // The driver dials again while no round found a primary.
                    let waited = self
                        .client
                        .hello_sent_at
                        .is_some_and(|at| now.duration_since(at) >= Duration::from_millis(300));
                    if self.client.server.is_none() && waited {
                        self.dial();
                    }
                    self.client_actions();
                    self.schedule_client_wake();
                }
            }
            Event::Wake { member, token } => {
                let node = &self.nodes[member];
                if node.up && node.wake.is_some_and(|(_, t)| t == token) {
                    self.nodes[member].wake = None;
                    self.wake(member);
                }
            }
            Event::Timeout { node, id } => {
                if let Some((asked, sent_at)) = self.nodes[node].asked.remove(&id) {
                    self.answered(node, asked, sent_at, None)?;
                }
            }
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg)?,
            Event::Write => {
                self.write();
                let next = self.now + Duration::from_millis(self.rng.gen_range(1..40));
                self.at(next, Event::Write);
            }
            Event::Crash { member } => {
                if member == WITNESS {
                    self.witness = None;
                } else {
                    let node = &mut self.nodes[member];
                    node.up = false;
                    node.asked.clear();
                    node.wake = None;
                    self.sessions[member] = None;
                }
                let back = self.now + Duration::from_millis(self.rng.gen_range(50..3000));
                self.at(back, Event::Restart { member });
            }
            Event::Stop { member } => {
                self.hand_over(member);
                self.handle(Event::Crash { member })?;
            }
            Event::Restart { member } => self.restart(member),
            Event::Cut { from, to, until } => {
                self.cut_until[from][to] = self.cut_until[from][to].max(until);
                if self.rng.gen_bool(0.5) {
                    self.cut_until[to][from] = self.cut_until[to][from].max(until);
                }
            }
        }
        Ok(())
    }

    /// A stopping primary with its backup in sync steps down, releases its
    /// lease at the witness and tells the backup to stand at once.
    fn hand_over(&mut self, n: usize) {
        let now = self.clock(n);
        let node = &mut self.nodes[n];
        let in_sync = node
            .replication
            .as_ref()
            .is_some_and(|(_, r)| r.state() == super::replication::SyncState::InSync);
        if !node.up || !node.standing.serving(now) || !in_sync {
            return;
        }
        node.standing.step_down(now);
        self.hand_overs += 1;
        let epoch = node.standing.epoch();
        let lsn = node.log.len() as u64;
        self.note(format!("node {n} hands over epoch {} at {lsn}", epoch.0));
        self.request(n, WITNESS, PeerRequest::Release { epoch }, Asked::Parting);
        self.request(
            n,
            1 - n,
            PeerRequest::HandOver { epoch, lsn },
            Asked::Parting,
        );
    }

    fn restart(&mut self, member: usize) {
        let now = self.clock(member);
        if member == WITNESS {
            self.witness = Some(Witness::new(self.votes, self.config, now));
            return;
        }
        let node = &mut self.nodes[member];
        node.up = true;
        node.standing = Standing::new(member as NodeId, node.epoch, self.config, now);
        node.replication = None;
        node.waiting.clear();
        node.joined_epoch = None;
        node.asked.clear();
        node.wake = None;
        self.schedule_wake(member);
    }

    /// A node's timers fired: carry out what its cores ask, then sleep
    /// until their next `poll_timeout`.
    fn wake(&mut self, n: usize) {
        let now = self.clock(n);
        let peer = 1 - n;
        match self.nodes[n].standing.tick(now) {
            Some(Action::RenewLease) => {
                let epoch = self.nodes[n].standing.epoch();
                let acked = self.nodes[n].acked_position;
                for to in [peer, WITNESS] {
                    self.request(n, to, PeerRequest::Lease { epoch, acked }, Asked::Renew);
                }
            }
            Some(Action::Campaign { force }) => {
                let node = &self.nodes[n];
                let request = PeerRequest::Elect {
                    epoch: node.standing.epoch(),
                    force,
                    cluster_id: 1,
                    end: position(&node.log),
                };
                self.request(n, WITNESS, request, Asked::Campaign);
            }
            None => {}
        }
        self.replicate(n);
        // A backup without a stream from its primary asks to join.
        let node = &self.nodes[n];
        let epoch = node.standing.epoch();
        let wants_join = !node.standing.is_primary()
            && node.standing.primary() == Some(peer as NodeId)
            && node.joined_epoch != Some(epoch)
            && node
                .last_join_ask
                .is_none_or(|at| self.now >= at + JOIN_RETRY);
        if wants_join {
            self.nodes[n].last_join_ask = Some(self.now);
            self.send(n, peer, Msg::NeedJoin { epoch });
        }
        self.schedule_wake(n);
    }

    fn schedule_wake(&mut self, n: usize) {
        let node = &self.nodes[n];
        let timers = [
            node.standing.poll_timeout(),
            node.replication
                .as_ref()
                .and_then(|(_, r)| r.poll_timeout()),
        ];
        let mut next = timers
            .into_iter()
            .flatten()
            .map(|at| self.real(n, at))
            .min()
            .unwrap_or(self.now + JOIN_RETRY);
        // The shell also looks again for a stream to join.
        if !node.standing.is_primary() {
            next = next.min(self.now + JOIN_RETRY);
        }
        let next = next.max(self.now + Duration::from_micros(1));
        if node.wake.is_some_and(|(at, _)| at <= next) {
            return;
        }
        let token = self.next_id;
        self.next_id += 1;
        self.nodes[n].wake = Some((next, token));
        self.at(next, Event::Wake { member: n, token });
    }

    /// The primary's replication: answer clients whose batches the backup
    /// holds (if the lease still holds), ask the witness to record.
    fn replicate(&mut self, n: usize) {
        let now = self.clock(n);
        let serving = self.nodes[n].standing.serving(now);
        let Some((epoch, replication)) = self.nodes[n].replication.as_mut() else {
            return;
        };
        let epoch = *epoch;
        let ready = replication.ready(now);
        for _ in 0..ready.release {
            let Some(len) = self.nodes[n].waiting.pop_front() else {
                break;
            };
            if serving {
                let entry = self.nodes[n].log[len - 1];
                self.acknowledged.insert(entry.1);
                let state = self.nodes[n].replication.as_ref().map(|(_, r)| r.state());
                self.note(format!(
                    "node {n} acknowledges {entry:?} at len {len} ({state:?})"
                ));
                self.nodes[n].acked_position = LogPosition {
                    epoch: entry.0,
                    lsn: len as u64,
                };
                self.acks.push((self.now, len as u64));
                if self.sessions[n].is_some() {
                    self.sessions[n] = Some(len as u64);
                    self.send(n, CLIENT, Msg::Invalidate { len });
                }
            }
        }
        if let Some(in_sync) = ready.ask_witness {
            let request = PeerRequest::SetInSync { epoch, in_sync };
            self.request(n, WITNESS, request, Asked::InSync(epoch, in_sync));
        }
    }

    /// A client writes to whichever node serves.
    fn write(&mut self) {
        for n in 0..2 {
            let now = self.clock(n);
            let node = &mut self.nodes[n];
            if !node.up || !node.standing.serving(now) {
                continue;
            }
            let Some((epoch, replication)) = node.replication.as_mut() else {
                continue;
            };
            let entry = (*epoch, self.next_id);
            self.next_id += 1;
            node.log.push(entry);
            let index = node.log.len() - 1;
            replication.durable(Some(node.log.len() as u64), now);
            node.waiting.push_back(node.log.len());
            let epoch = *epoch;
            self.send(
                n,
                1 - n,
                Msg::Batch {
                    epoch,
                    index,
                    entry,
                },
            );
            self.replicate(n);
            self.schedule_wake(n);
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) -> Result<(), String> {
        if to == WITNESS {
            let (Some(witness), Msg::Request { id, request }) = (self.witness.as_mut(), msg) else {
                return Ok(());
            };
            let now = self.origin + self.now.mul_f64(self.rates[WITNESS]);
            let (response, votes) = witness.handle(now, from as NodeId, &request);
            if let Some(votes) = votes {
                // Durable before the answer leaves.
                self.votes = votes;
                self.note(format!("witness votes {votes:?}"));
            }
            self.send(WITNESS, from, Msg::Response { id, response });
            return Ok(());
        }
        if to == CLIENT {
            self.client_receives(from, msg);
            return Ok(());
        }
        if !self.nodes[to].up {
            return Ok(());
        }
        let now = self.clock(to);
        match msg {
            Msg::Hello => {
                let node = &self.nodes[to];
                let reply = if node.standing.serving(now) {
                    let last = node.log.len() as u64;
                    self.sessions[to] = Some(last);
                    Msg::Welcome {
                        epoch: node.standing.epoch(),
                        last,
                    }
                } else {
                    Msg::Refused
                };
                self.send(to, CLIENT, reply);
            }
            Msg::Ping { seq } => {
                let serving = self.nodes[to].standing.serving(now);
                let reply = match self.sessions[to].filter(|_| serving) {
                    Some(last) => Msg::Pong { seq, last },
                    None => {
                        self.sessions[to] = None;
                        Msg::Refused
                    }
                };
                self.send(to, CLIENT, reply);
            }
            Msg::Welcome { .. } | Msg::Refused | Msg::Pong { .. } | Msg::Invalidate { .. } => {}
            Msg::Request { id, request } => {
                let response = match request {
                    PeerRequest::Lease { epoch, .. } => {
                        self.learn(to, epoch, Some(from as NodeId));
                        let node = &mut self.nodes[to];
                        node.standing.lease_requested(now, epoch, from as NodeId)
                    }
                    // As `Pair::take_over` (which also waits a while for
                    // the history to arrive).
                    PeerRequest::HandOver { epoch, lsn } => {
                        let node = &mut self.nodes[to];
                        let s = &node.standing;
                        let ours = !s.is_primary()
                            && s.epoch() == epoch
                            && s.primary() == Some(from as NodeId);
                        if ours && node.log.len() as u64 >= lsn {
                            node.standing.promote(now, true);
                            PeerResponse::Recorded
                        } else {
                            PeerResponse::Denied {
                                epoch: s.epoch(),
                                primary: s.primary(),
                                reason: "not taking over".into(),
                            }
                        }
                    }
                    _ => return Ok(()),
                };
                self.send(to, from, Msg::Response { id, response });
            }
            Msg::Response { id, response } => {
                if let Some((asked, sent_at)) = self.nodes[to].asked.remove(&id) {
                    self.answered(to, asked, sent_at, Some(response))?;
                }
            }
            Msg::Batch {
                epoch,
                index,
                entry,
            } => {
                let node = &mut self.nodes[to];
                if node.standing.is_primary() || node.joined_epoch != Some(epoch) {
                    return Ok(());
                }
                if index > node.log.len() {
                    self.send(to, from, Msg::NeedJoin { epoch });
                    return Ok(());
                }
                if node.log.get(index) != Some(&entry) {
                    node.log.truncate(index);
                    node.log.push(entry);
                }
                let len = index + 1;
                self.send(
                    to,
                    from,
                    Msg::Ack {
                        epoch,
                        len,
                        joined: false,
                    },
                );
            }
            Msg::Join { epoch, log } => {
                if epoch < self.nodes[to].epoch || self.nodes[to].standing.is_primary() {
                    return Ok(());
                }
                self.learn(to, epoch, Some(from as NodeId));
                let node = &mut self.nodes[to];
                // The primary's history wins: what this node holds beyond
                // it (an old primary's unacknowledged tail) is truncated.
                // (The stream is ordered, so a Join is never older than a
                // batch that came before it.)
                node.log = log;
                node.joined_epoch = Some(epoch);
                let len = node.log.len();
                self.send(
                    to,
                    from,
                    Msg::Ack {
                        epoch,
                        len,
                        joined: true,
                    },
                );
            }
            Msg::NeedJoin { epoch } => {
                let node = &mut self.nodes[to];
                let primary_of = node.replication.as_ref().map(|(e, _)| *e);
                if primary_of == Some(epoch) {
                    if let Some((_, replication)) = node.replication.as_mut() {
                        replication.lost();
                    }
                    let log = node.log.clone();
                    self.send(to, from, Msg::Join { epoch, log });
                }
            }
            Msg::Ack { epoch, len, joined } => {
                let node = &mut self.nodes[to];
                if let Some((ours, replication)) = node.replication.as_mut() {
                    if *ours == epoch {
                        if joined {
                            replication.joined(len as u64);
                        }
                        replication.acked(len as u64);
                    }
                }
                self.replicate(to);
            }
        }
        self.schedule_wake(to);
        Ok(())
    }

    /// The client's clock at the current moment.
    fn client_now(&self) -> std::time::Instant {
        self.client.origin + self.now.mul_f64(self.rates[CLIENT])
    }

    /// A dial round: Hello to both nodes; the first primary to welcome
    /// the client wins.
    fn dial(&mut self) {
        self.client.hello_sent_at = Some(self.client_now());
        for n in 0..2 {
            self.send(CLIENT, n, Msg::Hello);
        }
    }

    /// Carries out what the client's session machine asks.
    fn client_actions(&mut self) {
        while let Some(action) = self.client.live.poll_action() {
            match action {
                SessionAction::SendPing { seq } => {
                    if let Some((n, _)) = self.client.server {
                        self.send(CLIENT, n, Msg::Ping { seq });
                    }
                }
                SessionAction::Dial => self.dial(),
                SessionAction::StateChanged(_) => {}
            }
        }
    }

    fn schedule_client_wake(&mut self) {
        let client = &self.client;
        let real = |at: std::time::Instant| {
            at.saturating_duration_since(client.origin)
                .div_f64(self.rates[CLIENT])
        };
        let mut next = client.live.poll_timeout().map(real);
        if client.server.is_none() {
            let redial = self.now + Duration::from_millis(300);
            next = Some(next.map_or(redial, |at| at.min(redial)));
        }
        let Some(next) = next else { return };
        let next = next.max(self.now + Duration::from_micros(1));
        if client.wake.is_some_and(|(at, _)| at <= next) {
            return;
        }
        let token = self.next_id;
        self.next_id += 1;
        self.client.wake = Some((next, token));
        self.at(
            next,
            Event::Wake {
                member: CLIENT,
                token,
            },
        );
    }

    /// What reaches the client from node `from`, as its driver handles it.
    fn client_receives(&mut self, from: usize, msg: Msg) {
        let now = self.client_now();
        let current = self.client.server.map(|(n, _)| n) == Some(from);
        match msg {
            Msg::Welcome { epoch, last } => {
                // A later epoch is a failover: move at once; otherwise keep
                // a live session.
                let adopt = match self.client.server {
                    None => true,
                    Some((n, known)) => n != from && epoch > known,
                };
                if adopt {
                    self.client.server = Some((from, epoch));
                    self.client.applied = self.client.applied.max(last);
                    let sent = self.client.hello_sent_at.unwrap_or(now);
                    self.client.live.session_opened(now, sent);
                }
            }
            Msg::Invalidate { len } if current => {
                self.client.applied = self.client.applied.max(len as u64);
            }
            Msg::Pong { seq, last } if current => {
                let applied = self.client.applied;
                self.client.live.pong(now, seq, Tid(last), Tid(applied));
            }
            Msg::Refused if current => {
                self.client.server = None;
                self.client.live.disconnected(now);
            }
            _ => {}
        }
        self.client_actions();
        self.schedule_client_wake();
    }

    /// A node learns of `epoch` (made durable first, as the shell does).
    fn learn(&mut self, n: usize, epoch: Epoch, primary: Option<NodeId>) {
        let node = &mut self.nodes[n];
        if epoch > node.epoch {
            node.epoch = epoch;
        }
        node.standing.learned(epoch, primary);
        if !node.standing.is_primary() {
            node.replication = None;
            node.waiting.clear();
        }
    }

    fn answered(
        &mut self,
        n: usize,
        asked: Asked,
        sent_at: Instant,
        response: Option<PeerResponse>,
    ) -> Result<(), String> {
        let now = self.clock(n);
        match (asked, response) {
            (Asked::Renew, Some(PeerResponse::Denied { epoch, primary, .. })) => {
                if epoch > self.nodes[n].standing.epoch() {
                    self.learn(n, epoch, primary);
                }
            }
            (Asked::Renew, Some(answer)) => {
                self.nodes[n].standing.renewal_answered(sent_at, &answer)
            }
            (Asked::Renew, None) => {}
            (Asked::Campaign, answer) => {
                match &answer {
                    Some(PeerResponse::Elected { epoch, .. }) => self.nodes[n].epoch = *epoch,
                    Some(PeerResponse::Denied { epoch, .. }) if *epoch > self.nodes[n].epoch => {
                        self.nodes[n].epoch = *epoch;
                    }
                    _ => {}
                }
                let node = &mut self.nodes[n];
                node.standing
                    .campaign_answered(now, sent_at, answer.as_ref());
                let epoch = node.standing.epoch();
                let in_office = node.replication.as_ref().is_some_and(|(e, _)| *e == epoch);
                if node.standing.is_primary() && !in_office {
                    self.elected(n, epoch)?;
                }
            }
            (Asked::Parting, _) => {}
            (Asked::InSync(epoch, in_sync), answer) => {
                if let Some((ours, replication)) = self.nodes[n].replication.as_mut() {
                    if *ours == epoch {
                        match answer {
                            Some(PeerResponse::Recorded) => replication.recorded(in_sync),
                            _ => replication.ask_failed(),
                        }
                    }
                }
                self.replicate(n);
            }
        }
        self.schedule_wake(n);
        Ok(())
    }

    /// Node `n` took office in `epoch`: it must hold every acknowledged
    /// batch, and be the only primary that epoch ever had.
    fn elected(&mut self, n: usize, epoch: Epoch) -> Result<(), String> {
        self.elections += 1;
        let len = self.nodes[n].log.len();
        self.note(format!(
            "node {n} elected for epoch {} with log len {len}",
            epoch.0
        ));
        if let Some(other) = self.primaries.insert(epoch, n).filter(|o| *o != n) {
            return Err(format!(
                "epoch {} had two primaries: {other} and {n}",
                epoch.0
            ));
        }
        let node = &mut self.nodes[n];
        let held: BTreeSet<u64> = node.log.iter().map(|e| e.1).collect();
        if let Some(lost) = self.acknowledged.difference(&held).next() {
            return Err(format!(
                "node {n} was elected for epoch {} without acknowledged batch {lost}",
                epoch.0
            ));
        }
        node.replication = Some((
            epoch,
            Replication::new(node.log.len() as u64, self.config.replication_timeout),
        ));
        node.waiting.clear();
        Ok(())
    }

    /// No two nodes serve at once, and the client's cache keeps its bound.
    fn check(&mut self) -> Result<(), String> {
        let serving: Vec<usize> = (0..2)
            .filter(|n| self.nodes[*n].up && self.nodes[*n].standing.serving(self.clock(*n)))
            .collect();
        if serving.len() > 1 {
            return Err(format!("both nodes serve at {:?}", self.now));
        }
        self.check_cache()
    }

    /// While the client may answer from its cache, it has applied the
    /// invalidations of every batch acknowledged `stale_after` ago (plus
    /// the 1 % clock-rate margin).
    fn check_cache(&mut self) -> Result<(), String> {
        let config = SessionConfig::default();
        let bound = config.stale_after.mul_f64(1.01) + Duration::from_millis(1);
        while let Some((at, len)) = self.acks.get(self.acks_due.0).copied() {
            if at + bound > self.now {
                break;
            }
            self.acks_due = (self.acks_due.0 + 1, self.acks_due.1.max(len));
        }
        let now = self.client_now();
        let live = &self.client.live;
        let serves =
            live.state() == SessionState::Live && live.fresh_until().is_some_and(|f| now < f);
        if !serves {
            return Ok(());
        }
        self.cache_checks += 1;
        if self.client.applied < self.acks_due.1 {
            return Err(format!(
                "the client serves its cache with invalidations applied up to {} although batch {} was acknowledged over {bound:?} ago",
                self.client.applied, self.acks_due.1
            ));
        }
        Ok(())
    }
}

/// The end of a log, as a node reports it.
fn position(log: &[Entry]) -> LogPosition {
    LogPosition {
        epoch: log.last().map_or(Epoch(0), |e| e.0),
        lsn: log.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schedules per run: `ZEOLITE_SIM_SCHEDULES` for a long run.
    fn schedules() -> u64 {
        std::env::var("ZEOLITE_SIM_SCHEDULES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300)
    }

    #[test]
    fn seeded_schedules_keep_one_primary_and_every_acknowledged_batch() {
        let base = std::env::var("ZEOLITE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        let count = schedules();
        eprintln!("pair simulation: seed {base} (replay with ZEOLITE_SEED={base} ZEOLITE_SIM_SCHEDULES=1 for the first)");
        let started = std::time::Instant::now();
        let mut total = Tally::default();
        for i in 0..count {
            let seed = base.wrapping_add(i);
            let tally = World::new(seed)
                .run(Duration::from_secs(20))
                .unwrap_or_else(|e| {
                    panic!("schedule {seed} (ZEOLITE_SEED={seed} ZEOLITE_SIM_SCHEDULES=1): {e}")
                });
            total.acknowledged += tally.acknowledged;
            total.elections += tally.elections;
            total.hand_overs += tally.hand_overs;
            total.cache_checks += tally.cache_checks;
        }
        eprintln!(
            "{count} schedules of 20 s in {:.2} s: {} batches acknowledged, {} elections, {} hand-overs, {} moments the client's cache could answer, checked",
            started.elapsed().as_secs_f64(),
            total.acknowledged,
            total.elections,
            total.hand_overs,
            total.cache_checks
        );
        assert!(
            total.cache_checks > 0,
            "the client's cache was live at times"
        );
        assert!(total.elections >= count, "every schedule elects");
        assert!(total.acknowledged > 0);
    }
}
