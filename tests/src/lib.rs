//! # store-tests: end-to-end harness
//!
//! Real `store-server` processes in temporary directories, driven through
//! the real client library and the real `store-cli` binary. Every process a
//! test starts is stopped when its handle drops; all traffic stays on
//! 127.0.0.1.
//!
//! * [`ServerProcess`]: start, SIGKILL, SIGSTOP/SIGCONT, SIGTERM, restart.
//! * [`Cluster`]: an HA pair (witness and two data nodes), optionally with
//!   fault proxies on the link between the data nodes.
//! * [`FaultProxy`]: a UDP proxy that drops, delays or black-holes traffic.
//! * [`raw`]: a hand-driven QUIC peer for protocol tests.
//! * [`session`]: short session timers and waiting for session states.
//! * [`cli`]: run `store-cli` against a server and capture what it printed.
//! * [`history`]: clients appending unique tokens, writing and reading
//!   registers under faults, and the checker of their history.
//! * [`registers`]: the checkers of reads: linearizable on the server,
//!   bounded staleness from the cache, monotonic per client.
//! * [`chaos`]: the partition suite: cycles of link faults (with SIGKILL
//!   or SIGSTOP) on a pair in its own namespace, and its checkers.
//! * [`netns`]: a private network namespace per test and nftables drops
//!   between chosen members.
//! * [`binary`]: where the workspace's binaries were built.
//! * [`restore`]: copying data directories, restoring backups.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod chaos;
mod cluster;
pub mod history;
pub mod netns;
mod process;
mod proxy;
pub mod raw;
pub mod registers;
pub mod restore;
pub mod scrape;
pub mod session;

pub use cluster::Cluster;
pub use process::{binary, cli, cli_with, free_udp_port, signal, CliOutput, ServerProcess};
pub use proxy::{Direction, FaultProxy, LinkFault};

/// A generous deadline for events in tests: the machine may be slow and shared.
pub const EVENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The seed of a randomised test: `ZEOLITE_SEED` if set (a replay), else
/// a random one; printed either way, with how to replay it. A seed
/// replays a test's random choices (faults, schedules), not the machine's
/// timing.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("ZEOLITE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with ZEOLITE_SEED={seed})");
    seed
}
