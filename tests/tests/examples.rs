//! The client library's examples run against a real server and do what
//! they say (cargo builds them with the tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use store_tests::{binary, ServerProcess};

/// Runs the example `name` with `args` against `server`, as its docs say:
/// servers and certificates from the environment.
async fn run(server: &ServerProcess, name: &str, args: &[&str]) -> Output {
    let mut command = Command::new(binary(&format!("examples/{name}")));
    command
        .args(args)
        .env("ZEOLITE_SERVERS", server.addr().to_string())
        .env("ZEOLITE_TLS_DIR", server.tls_dir());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{name}: {output:?}");
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_against_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;

    let out = run(&server, "exactly_once_counter", &["20"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" = 20 after 20 increments"), "{text}");

    let out = run(&server, "read_through", &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("round 3: \"computed for"), "{text}");
    assert!(text.contains("cache: 1 hits"), "{text}");

    let client = server.client().await;
    client.put("view/a", "1").await.unwrap();
    client.append("view/a", "2").await.unwrap();
    client.put("view/b", "x").await.unwrap();
    client.delete("view/b").await.unwrap();
    client.close().await;
    let out = run(&server, "view_from_feed", &["view/", "4"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("after 4 changes"), "{text}");
    assert!(text.contains("view/a\t12"), "{text}");
    assert!(!text.contains("view/b"), "{text}");

    let out = run(&server, "failover_demo", &["2"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("write: tid"), "{text}");
}
