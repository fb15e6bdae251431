//! What an operator scrapes and probes: Prometheus metrics that move with
//! the work, `/health` and `/ready` with status codes a probe reads, the
//! HTTP listener's bounds, and JSON logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use store_tests::scrape::{get, sample, send};
use store_tests::ServerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_move_the_commit_counter_and_latency_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let addr = server.metrics_addr();
    let client = server.client().await;
    let (status, before) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let committed = r#"zeolite_commits_total{outcome="committed"}"#;
    for i in 0..3 {
        client.put(format!("k{i}"), "v").await.unwrap();
    }
    let (_, after) = get(addr, "/metrics").await;
    assert_eq!(
        sample(&after, committed) - sample(&before, committed),
        3.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "zeolite_commit_seconds_count")
            - sample(&before, "zeolite_commit_seconds_count"),
        3.0
    );
    assert!(
        sample(&after, "zeolite_fsync_seconds_count") >= 3.0,
        "{after}"
    );
    assert!(sample(&after, "zeolite_group_commit_batch_size_count") >= 3.0);
    assert!(sample(&after, r#"zeolite_requests_total{kind="commit"}"#) >= 3.0);
    assert!(sample(&after, "zeolite_sessions") >= 1.0);
    assert!(sample(&after, "zeolite_last_tid") >= 3.0);
    assert_eq!(sample(&after, r#"zeolite_role{role="standalone"}"#), 1.0);
    assert_eq!(sample(&after, r#"zeolite_role{role="primary"}"#), 0.0);
    assert!(
        after.contains("# TYPE zeolite_commit_seconds histogram"),
        "{after}"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_answer_with_probe_status_codes_and_refuse_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let addr = server.metrics_addr();
    assert_eq!(get(addr, "/health").await, (200, "ok\n".into()));
    assert_eq!(get(addr, "/ready").await, (200, "standalone\n".into()));
    assert_eq!(get(addr, "/ready?verbose=1").await.0, 200);
    assert_eq!(get(addr, "/nothing").await.0, 404);
    assert_eq!(send(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.0, 405);
    // A head past the bound is refused, and the listener goes on.
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(16 * 1024));
    assert_eq!(send(addr, huge.as_bytes()).await.0, 400);
    assert_eq!(send(addr, b"nonsense\r\n\r\n").await.0, 400);
    assert_eq!(get(addr, "/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--log-format", "json"]).await;
    let log = server.log_text();
    let mut listening = false;
    for line in log.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            object["level"].is_string() && object["timestamp"].is_string(),
            "{line}"
        );
        listening |= object["fields"]["message"] == "listening";
    }
    assert!(listening, "{log}");
}

/// `store-server config print` with `args`, environment `env` and, if
/// given, a `--config` file holding `file`: its exit code, stdout, stderr.
fn config_print(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    file: Option<&str>,
) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(store_tests::binary("store-server"));
    command.args(["config", "print"]).args(args);
    if let Some(text) = file {
        let path = dir.join("zeolite.toml");
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(path);
    }
    let output = command.envs(env.iter().copied()).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn settings_come_from_flags_then_the_environment_then_the_file_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = "max-sessions = 1\nmax-streams = 2\nmax-txn-ops = 3\nlog-format = \"json\"\n";
    let (code, out, err) = config_print(
        dir.path(),
        &["--max-sessions", "7"],
        &[("ZEOLITE_MAX_STREAMS", "9")],
        Some(file),
    );
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "max-sessions = 7  # flag",
        "max-streams = 9  # environment",
        "max-txn-ops = 3  # file",
        "log-format = \"json\"  # file",
        "io-threads = 1  # default",
        "listen = \"127.0.0.1:7447\"  # default",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
}

#[test]
fn a_bad_settings_file_is_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = config_print(dir.path(), &[], &[], Some("max-sesions = 1\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown key `max-sesions`"), "{err}");
    let (code, _, err) = config_print(dir.path(), &[], &[], Some("max-sessions = [1]\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("`max-sessions` must be"), "{err}");
    let (code, _, err) = config_print(dir.path(), &[], &[], Some("max-sessions = \"many\"\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("many"), "{err}");
    // A pair needs both halves, wherever they come from.
    let (code, _, err) = config_print(
        dir.path(),
        &[],
        &[],
        Some("cluster = \"127.0.0.1:1,127.0.0.1:2\"\n"),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("--cluster and --witness go together"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_with_its_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zeolite.toml");
    std::fs::write(&file, "max-txn-ops = 3\n").unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--config", file.to_str().unwrap()]).await;
    let client = server.client().await;
    let mut txn = client.txn();
    for i in 0..4 {
        txn.put(format!("k{i}"), "v");
    }
    // The file's limit of 3 operations refuses four (the default is 10,000).
    let refused = format!("{:?}", txn.commit().await.unwrap_err());
    assert!(
        refused.contains("TooLarge") && refused.contains("Ops"),
        "{refused}"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_reports_its_roles_and_a_primary_without_its_lease_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = store_tests::Cluster::start(dir.path()).await;
    let primary = cluster.wait_for_primary(Some(0)).await;
    cluster.wait_in_sync(primary).await;
    let (p, b) = (
        cluster.nodes[0].metrics_addr(),
        cluster.nodes[1].metrics_addr(),
    );
    assert_eq!(get(p, "/ready").await, (200, "primary\n".into()));
    // A backup is ready once it has applied the primary's stream.
    let client = cluster.client().await;
    client.put("k", "v").await.unwrap();
    client.close().await;
    assert_eq!(until_not(b, 503).await, (200, "backup in sync\n".into()));
    let (_, metrics) = get(p, "/metrics").await;
    assert_eq!(
        sample(&metrics, r#"zeolite_role{role="primary"}"#),
        1.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "zeolite_backup_in_sync"), 1.0);
    assert_eq!(sample(&metrics, "zeolite_epoch"), 1.0);
    let (_, metrics) = get(b, "/metrics").await;
    assert_eq!(sample(&metrics, r#"zeolite_role{role="backup"}"#), 1.0);

    // With neither the backup (frozen) nor the witness (gone) to renew
    // its lease, the primary stops serving: no longer ready, still healthy.
    cluster.nodes[1].freeze();
    cluster.witness.kill();
    let answer = until_not(p, 200).await;
    cluster.nodes[1].thaw();
    assert_eq!(answer.0, 503, "{answer:?}");
    // Its lease gone, it stands as a backup that cannot reach a primary.
    assert_eq!(answer.1, "backup without its primary\n");
    assert_eq!(get(p, "/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_backup_shows_in_the_primarys_lag_and_sync_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = store_tests::Cluster::start(dir.path()).await;
    let primary = cluster.wait_for_primary(Some(0)).await;
    cluster.wait_in_sync(primary).await;
    let (p, b) = (
        cluster.nodes[0].metrics_addr(),
        cluster.nodes[1].metrics_addr(),
    );
    let (_, metrics) = get(p, "/metrics").await;
    assert!(
        sample(&metrics, "zeolite_lease_remaining_seconds") > 0.0,
        "{metrics}"
    );
    assert!(sample(&metrics, r#"zeolite_request_bytes_total{direction="in"}"#) > 0.0);
    let (_, metrics) = get(b, "/metrics").await;
    assert_eq!(sample(&metrics, "zeolite_lease_remaining_seconds"), 0.0);

    // The primary goes on without its frozen backup (the witness agrees),
    // and the commits it makes alone show as lag.
    cluster.nodes[1].freeze();
    let client = cluster.client().await;
    for i in 0..5 {
        client.put(format!("alone/{i}"), "v").await.unwrap();
    }
    let (_, metrics) = get(p, "/metrics").await;
    cluster.nodes[1].thaw();
    assert_eq!(sample(&metrics, "zeolite_backup_in_sync"), 0.0, "{metrics}");
    assert!(
        sample(&metrics, "zeolite_replication_lag_tids") >= 5.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "zeolite_replication_lag_records") >= 5.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "zeolite_replication_lag_bytes") > 0.0,
        "{metrics}"
    );
    // Thawed, it catches up: in sync, no lag.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, metrics) = get(p, "/metrics").await;
        if sample(&metrics, "zeolite_backup_in_sync") == 1.0
            && sample(&metrics, "zeolite_replication_lag_tids") == 0.0
            && sample(&metrics, "zeolite_replication_lag_records") == 0.0
            && sample(&metrics, "zeolite_replication_lag_bytes") == 0.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never caught up: {metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    client.close().await;
}

/// `GET /ready` until its status is not `status` (or the deadline passes).
async fn until_not(addr: std::net::SocketAddr, status: u16) -> (u16, String) {
    let deadline = std::time::Instant::now() + store_tests::EVENT_DEADLINE;
    loop {
        let answer = get(addr, "/ready").await;
        if answer.0 != status || std::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_records_its_session_metrics_for_its_application() {
    // What an application does: install an exporter; the library records.
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let client = server.client().await;
    let put = client.put("k", "v").await.unwrap();
    client.resolve(put.txn_id).await.unwrap();
    let text = handle.render();
    assert!(
        sample(
            &text,
            r#"zeolite_client_session_state_changes_total{state="live"}"#
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "zeolite_client_resolves_total"),
        1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "zeolite_client_outcomes_unknown_total"), 0.0);
    // The cache's counts reach the facade with the pings (every second).
    client.get("k").await.unwrap();
    client.get("k").await.unwrap();
    let stats = client.cache_stats();
    let deadline = std::time::Instant::now() + store_tests::EVENT_DEADLINE;
    loop {
        let text = handle.render();
        let hits = sample(&text, "zeolite_client_cache_hits_total");
        if hits >= stats.hits as f64 {
            assert!(sample(&text, "zeolite_client_cache_misses_total") >= 1.0);
            assert!(sample(&text, "zeolite_client_cache_entries") >= 1.0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    client.close().await;
}
