//! The partition suite: an HA pair in a private network namespace (see
//! [`crate::netns`]), a workload of clients writing and reading under
//! cycles of real partitions, each possibly combined with a SIGKILL or a
//! SIGSTOP, and the checkers of the whole history at the end.
//!
//! Each cycle picks a [`Fault`] and a [`Also`] from the seed, cuts links
//! with nftables for 2.5–4.5 s while every client still reaches every node
//! it is not cut from, heals, and waits until a primary has its backup in
//! sync again. Throughout, a monitor samples both nodes' roles; at the
//! end the history is checked (exactly-once appends and increments,
//! linearizable server reads, cached reads within `stale_after`,
//! monotonic reads per client), no two nodes may have answered as primary
//! at overlapping times, and every client must have been back to Live
//! within [`BACK_TO_LIVE`] of each heal.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use store_client::{Client, ClientConfig, SessionState};
use store_protocol::Role;

use crate::history::{Report, Workload};
use crate::netns::Firewall;
use crate::session::fast;
use crate::{free_udp_port, Cluster, EVENT_DEADLINE};

/// Every client must be Live again this soon after a heal.
pub const BACK_TO_LIVE: Duration = Duration::from_secs(10);

/// Clients in the workload.
const CLIENTS: usize = 4;

/// How often the monitor asks each node for its role.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The link faults of a cycle (P the primary, B the backup, W the witness;
/// clients reach every node unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// P cut from B and W both ways: B must take over, and P must stop
    /// answering as primary before it does.
    PrimaryIsolated,
    /// B cut from P and W: P goes on alone once W records B out of sync.
    BackupIsolated,
    /// W cut from P and B: P keeps its lease from B's grants.
    WitnessIsolated,
    /// P's packets to B dropped, B's to P delivered.
    PrimaryToBackup,
    /// B's packets to P dropped, P's to B delivered.
    BackupToPrimary,
    /// The P–B link cut and restored every 1–500 ms.
    Flapping,
    /// 10–40 % of every packet between members lost, at random.
    Lossy,
    /// Clients cut from P; the members still reach it.
    ClientsOfPrimary,
    /// P's packets to one client dropped (its pongs and invalidations),
    /// that client's to P delivered, while the others write: its cached
    /// reads may lag by less than `stale_after`, then its cache stops
    /// answering.
    PrimaryToOneClient,
}

impl Fault {
    /// Every fault, in a fixed order.
    pub const ALL: [Fault; 9] = [
        Fault::PrimaryIsolated,
        Fault::BackupIsolated,
        Fault::WitnessIsolated,
        Fault::PrimaryToBackup,
        Fault::BackupToPrimary,
        Fault::Flapping,
        Fault::Lossy,
        Fault::ClientsOfPrimary,
        Fault::PrimaryToOneClient,
    ];
}

/// A process fault during a cycle's partition, on a data node the seed
/// picks; undone at the heal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Also {
    /// No process fault.
    Nothing,
    /// SIGKILL, restarted at the heal.
    Kill,
    /// SIGSTOP, SIGCONT at the heal.
    Freeze,
}

/// What one cycle measured.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The link fault.
    pub fault: Fault,
    /// The process fault, and on which node (`"primary"` or `"backup"`).
    pub also: (Also, &'static str),
    /// From the fault to the other node answering as primary, if it took
    /// over during the partition.
    pub takeover: Option<Duration>,
    /// From the heal to the last client back to Live.
    pub back_to_live: Duration,
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.fault)?;
        if self.also.0 != Also::Nothing {
            write!(f, " + {:?} {}", self.also.0, self.also.1)?;
        }
        if let Some(takeover) = self.takeover {
            write!(f, ": takeover {} ms", takeover.as_millis())?;
        } else {
            write!(f, ": no takeover")?;
        }
        write!(
            f,
            ", clients Live {} ms after the heal",
            self.back_to_live.as_millis()
        )
    }
}

/// One answer of the monitor: node `node` said it was `role` in `epoch`
/// at some moment between `invoked` and `completed`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    node: usize,
    role: Role,
    epoch: u64,
    invoked: Instant,
    completed: Instant,
}

/// The suite's state: the pair, its firewall, the workload and what was
/// measured.
pub struct Chaos {
    /// The pair.
    pub cluster: Cluster,
    firewall: Firewall,
    workload: Workload,
    rng: StdRng,
    dir: PathBuf,
    samples: Arc<Mutex<Vec<Sample>>>,
    monitor: tokio::task::JoinHandle<()>,
    /// Every cycle's figures, in order.
    pub figures: Vec<Figure>,
    /// Clients that were not Live within [`BACK_TO_LIVE`] of a heal.
    late: Vec<String>,
    /// Where client 0 sends from ([`Fault::PrimaryToOneClient`] cuts it).
    watched_client: SocketAddr,
}

/// What the suite found; it has already asserted that nothing is wrong.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The history checker's report.
    pub report: Report,
    /// Every cycle's figures.
    pub figures: Vec<Figure>,
    /// Role samples taken by the monitor.
    pub samples: usize,
}

impl Chaos {
    /// Starts a pair in `dir` (the caller is in its own namespace: see
    /// [`crate::netns::isolated`]), its monitor, and the workload, with
    /// faults drawn from `seed`.
    pub async fn start(dir: &Path, seed: u64) -> Chaos {
        let cluster = Cluster::start(dir).await;
        cluster.wait_in_sync(0).await;
        let mut config = fast(cluster.client_config());
        // Long enough to ride out a failover, short enough that some
        // operations end with an unknown outcome.
        config.timeout = Duration::from_secs(4);
        let watched_client = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let mut configs = vec![config; CLIENTS];
        configs[0].local_addr = Some(watched_client);
        let workload = Workload::start_each(configs).await;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let monitor = tokio::spawn(monitor(
            (0..2).map(|i| cluster.nodes[i].client_config()).collect(),
            samples.clone(),
        ));
        Chaos {
            cluster,
            firewall: Firewall::new(),
            workload,
            rng: StdRng::seed_from_u64(seed),
            dir: dir.to_path_buf(),
            samples,
            monitor,
            figures: Vec::new(),
            late: Vec::new(),
            watched_client,
        }
    }

    /// Restarts one member (picked by the seed) with its clock running
    /// 1 % fast or slow, through the servers' test-only clock hook.
    pub async fn skew_a_clock(&mut self) -> String {
        let member = self.rng.gen_range(0..3);
        let rate = if self.rng.gen_bool(0.5) {
            "1.01"
        } else {
            "0.99"
        };
        let process = match member {
            0 | 1 => &mut self.cluster.nodes[member],
            _ => &mut self.cluster.witness,
        };
        process.set_env("ZEOLITE_TEST_CLOCK_RATE", rate);
        process.respawn();
        process.wait_ready().await;
        let primary = self.cluster.wait_for_primary(None).await;
        self.recover(primary).await;
        let name = ["node 0", "node 1", "the witness"][member];
        format!("{name}'s clock runs at {rate}")
    }

    /// Plays every fault once, in an order drawn from the seed, each
    /// with a process fault drawn from the seed.
    pub async fn every_fault_once(&mut self) {
        let mut faults = Fault::ALL.to_vec();
        for i in (1..faults.len()).rev() {
            faults.swap(i, self.rng.gen_range(0..=i));
        }
        for fault in faults {
            self.cycle(fault).await;
        }
    }

    /// Plays one fault drawn from the seed.
    pub async fn random_cycle(&mut self) {
        let fault = Fault::ALL[self.rng.gen_range(0..Fault::ALL.len())];
        self.cycle(fault).await;
    }

    /// One cycle: cut, hold (watching for a takeover), heal, recover.
    pub async fn cycle(&mut self, fault: Fault) -> &Figure {
        let primary = self.cluster.wait_for_primary(None).await;
        let backup = 1 - primary;
        let (p, b, w) = (
            self.cluster.nodes[primary].addr(),
            self.cluster.nodes[backup].addr(),
            self.cluster.witness.addr(),
        );
        let also = match self.rng.gen_range(0..4) {
            0 => Also::Kill,
            1 => Also::Freeze,
            _ => Also::Nothing,
        };
        let victim = self.rng.gen_range(0..2);
        let hold = Duration::from_millis(self.rng.gen_range(2500..4500));
        eprintln!(
            "cycle {}: {fault:?}, {also:?} on the {}, for {} ms",
            self.figures.len() + 1,
            ["primary", "backup"][victim],
            hold.as_millis()
        );
        let start = Instant::now();
        match fault {
            Fault::PrimaryIsolated => {
                self.firewall.cut(p, b);
                self.firewall.cut(p, w);
            }
            Fault::BackupIsolated => {
                self.firewall.cut(b, p);
                self.firewall.cut(b, w);
            }
            Fault::WitnessIsolated => {
                self.firewall.cut(w, p);
                self.firewall.cut(w, b);
            }
            Fault::PrimaryToBackup => self.firewall.cut_one_way(p, b),
            Fault::BackupToPrimary => self.firewall.cut_one_way(b, p),
            Fault::Flapping => {}
            Fault::Lossy => {
                let percent = self.rng.gen_range(10..=40);
                for (from, to) in [(p, b), (b, p), (p, w), (w, p), (b, w), (w, b)] {
                    self.firewall.lose(from, to, percent);
                }
            }
            Fault::ClientsOfPrimary => self.firewall.cut_clients(p, [b, w]),
            Fault::PrimaryToOneClient => self.firewall.cut_one_way(p, self.watched_client),
        }
        let target = [primary, backup][victim];
        match also {
            Also::Kill => self.cluster.nodes[target].kill(),
            Also::Freeze => self.cluster.nodes[target].freeze(),
            Also::Nothing => {}
        }
        let takeover = self
            .hold(
                start + hold,
                backup,
                (fault == Fault::Flapping).then_some((p, b)),
            )
            .await;
        self.firewall.heal();
        let healed = Instant::now();
        match also {
            Also::Kill => self.cluster.nodes[target].respawn(),
            Also::Freeze => self.cluster.nodes[target].thaw(),
            Also::Nothing => {}
        }
        let back_to_live = self.back_to_live(healed, fault).await;
        let primary = self.cluster.wait_for_primary(None).await;
        self.recover(primary).await;
        self.figures.push(Figure {
            fault,
            also: (also, ["primary", "backup"][victim]),
            takeover,
            back_to_live,
        });
        let figure = self.figures.last().expect("just pushed");
        eprintln!("cycle {} done: {figure}", self.figures.len());
        figure
    }

    /// Holds the partition until `end`, flapping the `flap` link if
    /// given; returns when `backup` first answered as primary, measured
    /// from the start of the hold.
    async fn hold(
        &self,
        end: Instant,
        backup: usize,
        flap: Option<(SocketAddr, SocketAddr)>,
    ) -> Option<Duration> {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(self.figures.len() as u64);
        let mut cut = false;
        let mut takeover = None;
        let mut next_flip = start;
        while Instant::now() < end {
            if let Some((p, b)) = flap {
                if Instant::now() >= next_flip {
                    if cut {
                        self.firewall.heal();
                    } else {
                        self.firewall.cut(p, b);
                    }
                    cut = !cut;
                    next_flip = Instant::now() + Duration::from_millis(rng.gen_range(1..=500));
                }
            }
            if takeover.is_none() {
                let answer = self.cluster.status(backup).await;
                if answer.is_some_and(|s| s.role == Role::Primary) {
                    takeover = Some(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        takeover
    }

    /// Waits until every client is Live; records any that took longer
    /// than [`BACK_TO_LIVE`] after `healed`.
    async fn back_to_live(&mut self, healed: Instant, fault: Fault) -> Duration {
        let deadline = healed + EVENT_DEADLINE;
        let mut last = Duration::ZERO;
        for (i, client) in self.workload.clients().iter().enumerate() {
            let at = live_by(client, deadline).await;
            let took = at.map_or(EVENT_DEADLINE, |at| at.saturating_duration_since(healed));
            if took > BACK_TO_LIVE {
                self.late.push(format!(
                    "client {i} was Live {} ms after the heal of {fault:?}",
                    took.as_millis()
                ));
            }
            last = last.max(took);
        }
        last
    }

    /// Waits until the pair has a primary with its backup in sync.
    async fn recover(&self, primary: usize) -> usize {
        let primary = if self
            .cluster
            .status(primary)
            .await
            .is_some_and(|s| s.role == Role::Primary)
        {
            primary
        } else {
            self.cluster.wait_for_primary(None).await
        };
        self.cluster.wait_in_sync(primary).await;
        primary
    }

    /// Stops the workload and the monitor and checks everything (panics
    /// on any violation); the history is kept in `history.json`.
    pub async fn finish(self) -> Summary {
        self.monitor.abort();
        let samples = self.samples.lock().unwrap().clone();
        let checker = self.cluster.client().await;
        let report = self
            .workload
            .finish(&checker, &self.dir.join("history.json"))
            .await;
        checker.close().await;
        let overlaps = overlaps(&samples);
        assert!(
            overlaps.is_empty(),
            "two primaries at once:\n{}\nlogs:\n{}",
            overlaps.join("\n"),
            self.cluster.logs()
        );
        assert!(self.late.is_empty(), "{}", self.late.join("\n"));
        assert_eq!(
            report.exhausted, 0,
            "clients ran out of operations before the end: run fewer cycles per run"
        );
        Summary {
            report,
            figures: self.figures,
            samples: samples.len(),
        }
    }
}

/// When `client`'s session is Live (now, if it is), or `None` by
/// `deadline`.
async fn live_by(client: &Client, deadline: Instant) -> Option<Instant> {
    let mut states = client.watch_session();
    let wait = async {
        loop {
            if states.borrow_and_update().state == SessionState::Live {
                return Instant::now();
            }
            if states.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, wait).await.ok()
}

/// Samples both nodes' roles until aborted.
async fn monitor(configs: Vec<ClientConfig>, samples: Arc<Mutex<Vec<Sample>>>) {
    loop {
        for (node, config) in configs.iter().enumerate() {
            let invoked = Instant::now();
            if let Some(status) = role_of(config.clone()).await {
                samples.lock().unwrap().push(Sample {
                    node,
                    role: status.0,
                    epoch: status.1,
                    invoked,
                    completed: Instant::now(),
                });
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// A node's role and epoch, whatever its role, or `None` if it does not
/// answer within a second.
async fn role_of(mut config: ClientConfig) -> Option<(Role, u64)> {
    config.any_role = true;
    config.connect_timeout = Duration::from_secs(1);
    config.timeout = Duration::from_secs(1);
    let client = Client::connect(config).await.ok()?;
    let status = client.status().await.ok();
    client.close().await;
    status.map(|s| (s.role, s.epoch.0))
}

/// Pairs of samples in which both nodes answered as primary of one epoch,
/// or a node answered as primary of an older epoch after (in real time)
/// the other had answered as primary of a newer one.
fn overlaps(samples: &[Sample]) -> Vec<String> {
    let primaries: Vec<&Sample> = samples.iter().filter(|s| s.role == Role::Primary).collect();
    let mut found = Vec::new();
    for old in &primaries {
        for new in &primaries {
            let same_epoch = new.epoch == old.epoch;
            let later = new.epoch > old.epoch && new.completed < old.invoked;
            if new.node != old.node && (same_epoch || later) {
                found.push(format!(
                    "node {} answered as primary of epoch {} after node {} had answered as primary of epoch {}",
                    old.node, old.epoch, new.node, new.epoch
                ));
            }
        }
    }
    found
}
