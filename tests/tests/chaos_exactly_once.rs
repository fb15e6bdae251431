//! Chaos: four clients append unique tokens and increment counters through
//! a fault-injecting proxy while the network black-holes (1–5 s), loses 5 %
//! of datagrams, and the server is killed once and restarted. A checker over
//! the history fails the test on any duplicate token, any acknowledged
//! token missing, any definitely-failed token present, and any replay whose
//! result differs from the original. The history is kept as Jepsen-shaped
//! JSON (invoke/ok/fail/info per operation) in the test's temp dir.
//! The fault schedule comes from a printed seed; `ZEOLITE_SEED=N` replays
//! it (the machine's timing is not replayed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use store_client::ClientConfig;
use store_tests::history::Workload;
use store_tests::{Direction, FaultProxy, LinkFault, ServerProcess};

const CLIENTS: usize = 4;
const FAULT_CYCLES: usize = 20;

fn config(proxy: &FaultProxy, server: &ServerProcess) -> ClientConfig {
    let mut config = store_tests::session::fast(server.client_config());
    config.servers = vec![proxy.addr().to_string()];
    // Long enough to ride out most black holes, short enough that some
    // operations end with an unknown outcome.
    config.timeout = Duration::from_secs(4);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_never_loses_duplicates_or_invents_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let workload = Workload::start(CLIENTS, config(&proxy, &server)).await;

    let mut rng = StdRng::seed_from_u64(store_tests::test_seed("chaos"));
    let kill_at = rng.gen_range(5..FAULT_CYCLES - 5);
    for cycle in 0..FAULT_CYCLES {
        let (fault, length) = (
            rng.gen_range(0..3),
            Duration::from_millis(rng.gen_range(1000..=5000)),
        );
        match fault {
            0 => proxy.cut(),
            1 => {
                let lossy = LinkFault {
                    drop: 0.05,
                    delay: Duration::ZERO,
                };
                proxy.set(Direction::ToServer, lossy);
                proxy.set(Direction::ToClient, lossy);
            }
            _ => proxy.black_hole(if cycle % 2 == 0 {
                Direction::ToClient
            } else {
                Direction::ToServer
            }),
        }
        // The fault's length is the experiment, not a wait for an event.
        tokio::time::sleep(length).await;
        proxy.heal();
        if cycle == kill_at {
            server.kill();
            server.restart().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let checker = server.client().await;
    let report = workload
        .finish(&checker, &dir.path().join("history.json"))
        .await;
    eprintln!("chaos: {report:?}");
    checker.close().await;
}
