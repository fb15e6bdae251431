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
