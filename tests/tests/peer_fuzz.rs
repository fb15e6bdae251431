//! A property test of the peer protocol (issue "Trust boundaries"): while
//! clients write to a pair, a party holding a node's certificate sends
//! well-formed peer messages with arbitrary fields (epochs, LSNs, history
//! positions, cluster ids) to the witness and to both data nodes, each
//! under the identity of the node it is not speaking to. Whatever it sends:
//! no acknowledged write is lost or applied twice, no epoch jumps or wraps,
//! and no epoch ever has two primaries.
//!
//! The messages stay within what a node that is not the witness's recorded
//! primary may say: a forced election, and the primary's own reports (the
//! acknowledged end in a renewal, `SetInSync`, `Release`) are the authority
//! of the primary and its operator, which a stolen certificate of that node
//! does carry. (The fuzzer may get its node elected, as a backup in sync
//! may ask; the real node then finds itself elected and takes office.)
//!
//! Prints its seed; `ZEOLITE_SEED=N` replays one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use store_client::Role;
use store_protocol::peer::{LogPosition, PeerRequest, PEER_ALPN};
use store_protocol::Epoch;
use store_tests::history::Workload;
use store_tests::session::fast;
use store_tests::{raw, Cluster};

/// How long the fuzzer sends (a bound in time), and at most how many
/// messages (a bound in count).
const FUZZ_FOR: Duration = Duration::from_secs(8);
const MAX_MESSAGES: usize = 4_000;
/// An epoch past this means one jumped: the test makes a handful of
/// elections at most.
const EPOCH_CEILING: u64 = 1_000;

fn epoch(rng: &mut StdRng, near: u64) -> Epoch {
    Epoch(match rng.gen_range(0..6) {
        0 => u64::MAX,
        1 => u64::MAX - 1,
        2 => rng.gen(),
        _ => near.saturating_add(rng.gen_range(0..4)).saturating_sub(1),
    })
}

fn position(rng: &mut StdRng, near: u64) -> LogPosition {
    LogPosition {
        epoch: epoch(rng, near),
        lsn: match rng.gen_range(0..3) {
            0 => u64::MAX,
            1 => rng.gen(),
            _ => rng.gen_range(0..10_000),
        },
    }
}

fn message(rng: &mut StdRng, near: u64, cluster_id: u64) -> PeerRequest {
    match rng.gen_range(0..5) {
        0 => PeerRequest::Lease {
            epoch: epoch(rng, near),
            acked: position(rng, near),
        },
        1 => PeerRequest::Elect {
            epoch: epoch(rng, near),
            force: false,
            cluster_id: if rng.gen_bool(0.7) {
                cluster_id
            } else {
                rng.gen()
            },
            end: position(rng, near),
        },
        2 => PeerRequest::StepDown {
            epoch: epoch(rng, near),
        },
        3 => PeerRequest::Status,
        _ => PeerRequest::Lease {
            epoch: Epoch(near),
            acked: position(rng, near),
        },
    }
}

/// Checks one status sample: no epoch jumped, and one primary per epoch.
fn observe(
    primaries: &mut HashMap<u64, usize>,
    i: usize,
    status: &store_client::StatusInfo,
    seed: u64,
) {
    assert!(
        status.epoch.0 < EPOCH_CEILING,
        "node {i} reached epoch {} (seed {seed})",
        status.epoch
    );
    if status.role == Role::Primary {
        let first = *primaries.entry(status.epoch.0).or_insert(i);
        assert_eq!(
            first, i,
            "two primaries at epoch {} (seed {seed})",
            status.epoch
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_peer_messages_lose_nothing_and_never_make_two_primaries() {
    let seed = store_tests::test_seed("peer fuzz");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    let mut config = fast(cluster.client_config());
    config.timeout = Duration::from_secs(4);
    let workload = Workload::start(3, config).await;

    // The fuzzer speaks to each member as a node it is not.
    let nodes = [cluster.nodes[0].addr(), cluster.nodes[1].addr()];
    let targets: [(SocketAddr, SocketAddr); 3] = [
        (cluster.witness.addr(), nodes[1]),
        (nodes[0], nodes[1]),
        (nodes[1], nodes[0]),
    ];
    let mut connections = Vec::new();
    for (target, as_node) in targets {
        let connection = raw::connect_as(
            target,
            cluster.tls_dir(),
            Some(cluster.node_cert(as_node)),
            PEER_ALPN,
        )
        .await
        .unwrap();
        connections.push(connection);
    }
    let cluster_id = match raw::peer_request(&connections[0], &PeerRequest::Status).await {
        Ok(store_protocol::peer::PeerResponse::Status(status)) => status.cluster_id,
        other => panic!("the witness's status: {other:?}"),
    };

    // Who reported itself primary at which epoch.
    let mut primaries: HashMap<u64, usize> = HashMap::new();
    let started = Instant::now();
    let mut sent = 0;
    let mut near = 1;
    while started.elapsed() < FUZZ_FOR && sent < MAX_MESSAGES {
        for _ in 0..20 {
            let target = rng.gen_range(0..connections.len());
            let mut request = message(&mut rng, near, cluster_id);
            // The acknowledged end a renewal reports is the primary's own
            // word, which node 1's certificate carries whenever node 1 is
            // the recorded primary: the fuzzer forges renewals' epochs, not
            // that report.
            if let (0, PeerRequest::Lease { acked, .. }) = (target, &mut request) {
                *acked = LogPosition::default();
            }
            // Refusals and closed streams are expected answers.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                raw::peer_request(&connections[target], &request),
            )
            .await;
            sent += 1;
        }
        for i in 0..2 {
            if let Some(status) = cluster.status(i).await {
                near = near.max(status.epoch.0);
                observe(&mut primaries, i, &status, seed);
            }
        }
    }
    eprintln!("peer fuzz: {sent} messages, epochs seen {primaries:?}");

    // Whatever happened, a primary serves again, and the clients go on.
    let primary = cluster.wait_for_primary(None).await;
    workload.wait_for_oks(150).await;
    let checker = cluster.client().await;
    let report = workload
        .finish(&checker, &dir.path().join("history.json"))
        .await;
    eprintln!("peer fuzz (seed {seed}): primary {primary}, {report:?}");
    for i in 0..2 {
        if let Some(status) = cluster.status(i).await {
            observe(&mut primaries, i, &status, seed);
        }
    }
    checker.close().await;
}
