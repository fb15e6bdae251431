//! A rolling upgrade fails no request (the bzr seed's goal; DESIGN §7):
//! under a workload of writers and readers, and a `store-cli` running
//! `put` after `put`, the primary is stopped with SIGTERM (it drains, steps
//! down and hands its lease to the in-sync backup), started again (it
//! rejoins as backup and catches up), and then the same is done to the
//! other node. No operation may fail or end with an unknown outcome, no
//! `store-cli` run may exit non-zero, and the history's checkers hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store_tests::history::Workload;
use store_tests::session::fast;
use store_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_both_nodes_one_after_the_other_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    let mut config = fast(cluster.client_config());
    config.timeout = Duration::from_secs(10);
    let workload = Workload::start(4, config).await;
    workload.wait_for_oks(100).await;

    // A script's view: store-cli put after put, every exit code kept.
    let stop = Arc::new(AtomicBool::new(false));
    let script = {
        let (stop, servers, tls) = (
            stop.clone(),
            cluster.servers().join(","),
            cluster.tls_dir().to_path_buf(),
        );
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) && runs < 10_000 {
                let key = format!("script/{runs}");
                let out = store_tests::cli_with(&servers, &tls, &["put", &key, "v"], None);
                if out.code != 0 {
                    failures.push(format!("exit {}: {}", out.code, out.stderr.trim()));
                }
                runs += 1;
            }
            (runs, failures)
        })
    };

    for step in 0..2 {
        let primary = cluster.wait_for_primary(None).await;
        let backup = 1 - primary;
        let stopped = Instant::now();
        let status = cluster.nodes[primary].terminate().expect("it exits");
        assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
        cluster.wait_for_primary(Some(backup)).await;
        eprintln!(
            "step {step}: node {primary} stopped, node {backup} primary {} ms after the SIGTERM",
            stopped.elapsed().as_millis()
        );
        assert!(
            cluster.nodes[primary]
                .log_text()
                .contains("handing the lease to the backup"),
            "the primary handed its lease over"
        );
        cluster.nodes[primary].respawn();
        cluster.wait_in_sync(backup).await;
        workload.wait_for_oks(100 * (step + 2)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let (runs, script_failures) = script.join().unwrap();
    let checker = cluster.client().await;
    let report = workload
        .finish(&checker, &dir.path().join("history.json"))
        .await;
    checker.close().await;
    eprintln!("rolling upgrade: {report:?}; store-cli runs {runs}");
    assert_eq!(
        (report.fails, report.unknown),
        (0, 0),
        "no client saw a failure: {report:?}"
    );
    assert!(script_failures.is_empty(), "{script_failures:?}");
    assert!(runs > 0);
}
