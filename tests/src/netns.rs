//! Real partitions: a test runs in a private network namespace of its own
//! and cuts links with nftables rules inside it.
//!
//! [`isolated`] moves the calling thread into a new network namespace
//! (`unshare(CLONE_NEWNET)`, root on the test machines), brings its
//! loopback up, and runs the test on a Tokio runtime whose threads, and so
//! every process they start, live in that namespace. Nothing outside it is
//! touched: its rules, its loopback and the namespace itself vanish when
//! the test's last thread and process end.
//!
//! Every member of a cluster sends to its peers from its own listening
//! port, so a link between two members is the pair of their ports, and a
//! [`Firewall`] drops a link's packets on arrival (the `input` hook: the
//! sender sees its datagram leave, as on a real network). Clients send from
//! ephemeral ports, so "everyone but the members" is the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Mutex;

/// The nftables table the rules live in (one per namespace).
const TABLE: &str = "zeolite_test";
/// Its chain on the input hook.
const CHAIN: &str = "links";

/// Runs `test` in a network namespace of its own, on a two-worker Tokio
/// runtime; panics (naming what is missing) where namespaces cannot be
/// made or nftables is not installed.
pub fn isolated<F: Future>(test: impl FnOnce() -> F) -> F::Output {
    // SAFETY: unshare(CLONE_NEWNET) has no memory effects; it changes only
    // the calling thread's network namespace, which the runtime's threads
    // then inherit.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) failed ({}): partition tests run as root",
        std::io::Error::last_os_error()
    );
    run(&["ip", "link", "set", "lo", "up"]);
    run(&["nft", "add", "table", "inet", TABLE]);
    let chain = "{ type filter hook input priority 0; policy accept; }";
    run(&["nft", "add", "chain", "inet", TABLE, CHAIN, chain]);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
        .block_on(test())
}

/// Runs a command of the namespace's set-up, panicking with its output if
/// it fails.
fn run(args: &[&str]) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (install iproute2 and nftables; .ci/run does)",
                args[0]
            )
        });
    assert!(
        output.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One direction of traffic that a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// From one member to another.
    Link { from: u16, to: u16 },
    /// From anyone but `members` to `to`, and from `to` to them.
    Clients { node: u16, members: [u16; 2] },
    /// `percent` of what one member sends another, at random.
    Loss { from: u16, to: u16, percent: u8 },
}

/// The drop rules of the calling test's namespace (made by [`isolated`]).
#[derive(Debug, Default)]
pub struct Firewall {
    rules: Mutex<Vec<Match>>,
}

impl Firewall {
    /// A firewall with no rules.
    pub fn new() -> Firewall {
        Firewall::default()
    }

    /// Drops everything `from` sends to `to` (one way).
    pub fn cut_one_way(&self, from: SocketAddr, to: SocketAddr) {
        self.add(Match::Link {
            from: from.port(),
            to: to.port(),
        });
    }

    /// Drops everything between `a` and `b`, both ways.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Drops everything between `node` and anyone but `members` (its
    /// clients), both ways; the members still reach it.
    pub fn cut_clients(&self, node: SocketAddr, members: [SocketAddr; 2]) {
        self.add(Match::Clients {
            node: node.port(),
            members: members.map(|m| m.port()),
        });
    }

    /// Drops `percent` of what `from` sends to `to`, at random (nftables'
    /// `numgen random`; this kernel has no `tc netem`).
    pub fn lose(&self, from: SocketAddr, to: SocketAddr, percent: u8) {
        self.add(Match::Loss {
            from: from.port(),
            to: to.port(),
            percent: percent.min(100),
        });
    }

    /// Removes every rule.
    pub fn heal(&self) {
        run(&["nft", "flush", "chain", "inet", TABLE, CHAIN]);
        self.rules.lock().unwrap().clear();
    }

    /// The rules in force, for failure messages.
    pub fn rules(&self) -> String {
        format!("{:?}", self.rules.lock().unwrap())
    }

    fn add(&self, rule: Match) {
        let mut rules = self.rules.lock().unwrap();
        if rules.contains(&rule) {
            return;
        }
        match rule {
            Match::Link { from, to } => {
                let rule = format!("udp sport {from} udp dport {to} drop");
                nft_rule(&rule);
            }
            Match::Loss { from, to, percent } => {
                let rule = format!(
                    "udp sport {from} udp dport {to} numgen random mod 100 < {percent} drop"
                );
                nft_rule(&rule);
            }
            Match::Clients { node, members } => {
                let others = format!("{{ {}, {} }}", members[0], members[1]);
                nft_rule(&format!("udp dport {node} udp sport != {others} drop"));
                nft_rule(&format!("udp sport {node} udp dport != {others} drop"));
            }
        }
        rules.push(rule);
    }
}

fn nft_rule(rule: &str) {
    let mut args = vec!["nft", "add", "rule", "inet", TABLE, CHAIN];
    args.extend(rule.split(' '));
    run(&args);
}
