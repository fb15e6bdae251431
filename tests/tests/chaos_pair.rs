//! Chaos on an HA pair: four clients append unique tokens and increment
//! counters while, cycle after cycle, the primary is SIGKILLed (and brought
//! back as the backup), frozen past its lease (and thawed), or cut from its
//! backup (the replication link black-holed both ways for 1–4 s). The
//! checker of `chaos_exactly_once` then resolves every unknown outcome and
//! fails the test on any duplicate, lost acknowledged write, applied
//! definite failure or replay that answered differently. The history is
//! kept as Jepsen-shaped JSON in the test's temp dir. The pauses come
//! from a printed seed; `ZEOLITE_SEED=N` replays them (the machine's
//! timing is not replayed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use store_tests::history::Workload;
use store_tests::session::fast;
use store_tests::{Cluster, Direction};

const CLIENTS: usize = 4;
const FAULT_CYCLES: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_pair_never_loses_duplicates_or_invents_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with_link_proxies(dir.path()).await;
    cluster.wait_in_sync(0).await;
    let mut config = fast(cluster.client_config());
    // Long enough to ride out most failovers, short enough that some
    // operations end with an unknown outcome.
    config.timeout = Duration::from_secs(4);
    let workload = Workload::start(CLIENTS, config).await;

    let mut rng = StdRng::seed_from_u64(store_tests::test_seed("pair chaos"));
    for cycle in 0..FAULT_CYCLES {
        let primary = cluster.wait_for_primary(None).await;
        let backup = 1 - primary;
        let pause = Duration::from_millis(rng.gen_range(0..1000));
        match cycle % 3 {
            0 => {
                cluster.nodes[primary].kill();
                cluster.wait_for_primary(Some(backup)).await;
                tokio::time::sleep(pause).await;
                cluster.nodes[primary].respawn();
                cluster.wait_in_sync(backup).await;
            }
            1 => {
                cluster.nodes[primary].freeze();
                cluster.wait_for_primary(Some(backup)).await;
                tokio::time::sleep(pause).await;
                cluster.nodes[primary].thaw();
                cluster.wait_in_sync(backup).await;
            }
            _ => {
                for proxy in &cluster.link {
                    proxy.black_hole(Direction::ToServer);
                    proxy.black_hole(Direction::ToClient);
                }
                // The fault's length is the experiment, not a wait.
                tokio::time::sleep(Duration::from_millis(1000) + pause * 3).await;
                for proxy in &cluster.link {
                    proxy.heal();
                }
                let primary = cluster.wait_for_primary(None).await;
                cluster.wait_in_sync(primary).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let checker = cluster.client().await;
    let report = workload
        .finish(&checker, &dir.path().join("history.json"))
        .await;
    eprintln!("chaos on a pair: {report:?}");
    assert!(report.oks > 100, "the clients made progress: {report:?}");
    checker.close().await;
}
