//! Admission control (issue "Trust boundaries", item 5): past
//! `--max-sessions` a session is refused as `Overloaded`, the server keeps
//! serving the sessions it has, and the refused client gets in once room
//! frees up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use store_tests::{cli, ServerProcess, EVENT_DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_refuses_the_next_session_as_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--max-sessions", "2"]).await;
    let first = server.client().await;
    let second = server.client().await;
    first.put("k", "v").await.unwrap();

    let refused = cli(&server, &["--timeout", "2s", "get", "k"], None);
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(refused.stderr.contains("overloaded"), "{refused:?}");
    assert!(server.log_text().contains("--max-sessions reached"));
    // The admitted sessions go on being served.
    assert_eq!(second.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));

    // Room frees up: the next client gets in.
    first.close().await;
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        let admitted = cli(&server, &["--timeout", "5s", "get", "k"], None);
        if admitted.code == 0 {
            assert_eq!(admitted.stdout, "v\n");
            break;
        }
        assert!(Instant::now() < deadline, "never admitted: {admitted:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.close().await;
}

/// With budgets of one frame per connection and for the whole server,
/// concurrent large requests wait for each other's bytes and all complete;
/// a budget smaller than a frame is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_are_budgeted_and_large_requests_queue_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let budgets = [
        "--max-value-bytes",
        "100000",
        "--max-frame-bytes",
        "200000",
        "--max-connection-bytes",
        "200000",
        "--max-request-bytes",
        "200000",
    ];
    let server = ServerProcess::start_with(dir.path(), &budgets).await;
    let client = server.client().await;
    let value = vec![b'v'; 90_000];
    let puts: Vec<_> = (0..16)
        .map(|i| {
            let (client, value) = (client.clone(), value.clone());
            tokio::spawn(async move { client.put(format!("k{i}"), value).await })
        })
        .collect();
    for put in puts {
        put.await.unwrap().unwrap();
    }
    for i in 0..16 {
        let got = client.get(format!("k{i}")).await.unwrap();
        assert_eq!(got.map(|v| v.len()), Some(value.len()));
    }
    client.close().await;

    let too_small = std::process::Command::new(store_tests::binary("store-server"))
        .args(["--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--max-connection-bytes", "1000"])
        .output()
        .unwrap();
    assert_eq!(too_small.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&too_small.stderr).contains("--max-connection-bytes"));
}
