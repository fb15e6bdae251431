//! `store-bench` runs its workloads against a real server and reports
//! them in the documented line format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use store_tests::ServerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_bench_measures_the_feed_latency() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_store-bench"));
    bench
        .arg("--server")
        .arg(server.addr().to_string())
        .arg("--tls-dir")
        .arg(server.tls_dir())
        .args(["--workload", "feed-latency", "--ops", "50"]);
    let out = tokio::task::spawn_blocking(move || bench.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with("workload=FeedLatency clients=1 ops=50 "),
        "{text}"
    );
}
