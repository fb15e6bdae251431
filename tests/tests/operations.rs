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
