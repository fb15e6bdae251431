//! Exactly-once commits against real servers: lost responses, a server
//! killed after the outcome is durable, copies in flight, reused ids,
//! abandoned and expired ids, and the CLI's unknown-outcome contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use store_client::{Client, Error, SessionState, Tid, TxnId};
use store_protocol::{content_digest, CommitRequest, Request, Response, WireError, Write};
use store_tests::session::{client_via, wait_for_state};
use store_tests::{raw, Direction, FaultProxy, ServerProcess, EVENT_DEADLINE};

/// Waits until the server's last TID passes `after` (a commit landed).
async fn wait_for_commit(observer: &Client, after: Tid) -> Tid {
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        let last = observer.status().await.unwrap().last_tid;
        if last > after {
            return last;
        }
        assert!(Instant::now() < deadline, "the commit never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cuts the server's answers to `a`, starts `commit` on it, and waits
/// until the commit has landed on the server; returns its TID and the
/// still-running commit.
async fn commit_with_answers_cut<F, Fut>(
    proxy: &FaultProxy,
    observer: &Client,
    commit: F,
) -> (Tid, tokio::task::JoinHandle<Fut::Output>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let before = observer.status().await.unwrap().last_tid;
    proxy.black_hole(Direction::ToClient);
    let running = tokio::spawn(commit());
    (wait_for_commit(observer, before).await, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_is_answered_by_a_replay_of_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let a = client_via(&proxy, &server).await;
    let observer = server.client().await;
    let writer = a.clone();
    let (applied, commit) = commit_with_answers_cut(&proxy, &observer, || async move {
        writer.append("list", "token-1;").await
    })
    .await;
    // Until the connection that carried the first copy is gone, so the
    // answer can only come from a new copy.
    wait_for_state(&a, SessionState::Reconnecting).await;
    proxy.heal();
    let outcome = commit.await.unwrap().unwrap();
    assert_eq!(outcome.tid, applied, "the original TID");
    assert!(outcome.replayed, "answered by a replay");
    assert_eq!(
        observer.get("list").await.unwrap().as_deref(),
        Some(&b"token-1;"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_after_the_outcome_is_durable_replays_it_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let a = client_via(&proxy, &server).await;
    let observer = server.client().await;
    let (applied, commit) =
        commit_with_answers_cut(
            &proxy,
            &observer,
            || async move { a.incr("counter", 1).await },
        )
        .await;
    server.kill();
    server.restart().await;
    proxy.heal();
    let outcome = commit.await.unwrap().unwrap();
    assert_eq!(
        (outcome.tid, outcome.replayed, outcome.counter()),
        (applied, true, Some(1))
    );
    let observer = server.client().await;
    assert_eq!(
        observer.get("counter").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

/// A resend refused before the server looked at its outcome (here: the
/// server came back with an ACL that no longer lets this identity write)
/// says nothing of the first copy, which did commit: the answer is an
/// unknown outcome, never "not applied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resend_of_a_commit_that_landed_is_an_unknown_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let a = client_via(&proxy, &server).await;
    let observer = server.client().await;
    let (_, commit) =
        commit_with_answers_cut(&proxy, &observer, || async move { a.incr("n", 1).await }).await;
    server.kill();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, "[identities.zeolite-client]\nrole = \"read\"\n").unwrap();
    server.add_args(&["--acl", acl.to_str().unwrap()]);
    server.restart().await;
    proxy.heal();
    let failed = commit.await.unwrap().unwrap_err();
    let error = failed.error();
    assert!(
        error.unknown_txn_id().is_some() && !error.is_not_applied(),
        "{error}"
    );
    let observer = server.client().await;
    assert_eq!(observer.get("n").await.unwrap().as_deref(), Some(&b"1"[..]));
}

fn append_request(client_id: u128, seq: u64, key: &str, value: Vec<u8>) -> CommitRequest {
    let writes = vec![Write::Append {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from(value),
    }];
    CommitRequest {
        txn_id: TxnId { client_id, seq },
        acked_below: 1,
        digest: content_digest(&[], &writes),
        read_set: vec![],
        writes,
    }
}

#[tokio::test]
async fn copies_in_flight_wait_for_the_first_and_get_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let connection = raw::connect(&server, true).await.unwrap();
    let _session = raw::open_session(&connection).await;
    // A large value keeps the first copy busy while the others arrive.
    let token = vec![b'x'; 1024 * 1024];
    let request = Request::Commit(append_request(
        raw::dev_client_id(42),
        1,
        "dup",
        token.clone(),
    ));
    let copies: Vec<_> = (0..5)
        .map(|_| {
            let (connection, request) = (connection.clone(), request.clone());
            tokio::spawn(async move { raw::request(&connection, &request).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for copy in copies {
        match copy.await.unwrap() {
            Response::Committed(c) => outcomes.push(c),
            other => panic!("expected the commit's outcome, got {other:?}"),
        }
    }
    assert!(
        outcomes.iter().all(|c| c.tid == outcomes[0].tid),
        "one TID for all copies"
    );
    assert_eq!(
        outcomes.iter().filter(|c| !c.replayed).count(),
        1,
        "applied by exactly one"
    );
    let value = server.client().await.get("dup").await.unwrap().unwrap();
    assert_eq!(value.len(), token.len(), "appended once");
}

#[tokio::test]
async fn a_reused_id_abandoned_id_and_expired_id_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--outcome-retention", "1s"]).await;
    let connection = raw::connect(&server, true).await.unwrap();
    let _session = raw::open_session(&connection).await;
    let reader = server.client().await;

    // Same id, different content: refused, nothing of it applied.
    let original = Request::Commit(append_request(raw::dev_client_id(7), 1, "k", b"A".to_vec()));
    assert!(matches!(
        raw::request(&connection, &original).await,
        Response::Committed(_)
    ));
    let reused = Request::Commit(append_request(raw::dev_client_id(7), 1, "k", b"B".to_vec()));
    assert_eq!(
        raw::request(&connection, &reused).await,
        Response::Error(WireError::TxnIdReused)
    );
    assert_eq!(reader.get("k").await.unwrap().as_deref(), Some(&b"A"[..]));

    // Resolve of an id never seen abandons it; a late copy is refused.
    let never_seen = TxnId {
        client_id: raw::dev_client_id(7),
        seq: 2,
    };
    let resolved = reader.resolve(never_seen).await.unwrap_err();
    assert!(
        matches!(resolved, Error::Abandoned { txn_id } if txn_id == never_seen),
        "{resolved}"
    );
    let late = Request::Commit(append_request(
        raw::dev_client_id(7),
        2,
        "k",
        b"late".to_vec(),
    ));
    assert_eq!(
        raw::request(&connection, &late).await,
        Response::Error(WireError::Abandoned)
    );

    // After the retention period the outcome is forgotten: a retry is
    // refused as expired, never executed again.
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        match raw::request(&connection, &original).await {
            Response::Error(WireError::Expired) => break,
            Response::Committed(c) => assert!(c.replayed, "a retry is only ever replayed"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "the outcome never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reader.get("k").await.unwrap().as_deref(), Some(&b"A"[..]));
    // The transaction did commit: a forgotten outcome is reported as
    // unknown (exit 4), never as "nothing applied".
    let committed = TxnId {
        client_id: raw::dev_client_id(7),
        seq: 1,
    };
    let forgotten = store_tests::cli(&server, &["resolve", &committed.to_string()], None);
    assert_eq!(forgotten.code, 4, "{forgotten:?}");
    assert!(
        forgotten.stderr.contains(&format!("txn={committed}"))
            && forgotten.stderr.contains("may have been applied"),
        "{forgotten:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_an_unknown_outcome_with_its_id_and_resolve_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let observer = server.client().await;
    let before = observer.status().await.unwrap().last_tid;

    // `put k -` connects first, then reads its value from stdin: cut the
    // answers off in between, once its session is up.
    let mut put = tokio::process::Command::new(store_tests::binary("store-cli"))
        .args(["--server", &proxy.addr().to_string(), "--timeout", "6s"])
        .arg("--tls-dir")
        .arg(server.tls_dir())
        .args(["put", "k", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + EVENT_DEADLINE;
    while observer.status().await.unwrap().sessions < 2 {
        assert!(Instant::now() < deadline, "store-cli never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.black_hole(Direction::ToClient);
    let mut stdin = put.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"v")
        .await
        .unwrap();
    drop(stdin);
    wait_for_commit(&observer, before).await;
    // The server dies with the outcome durable but unsent: nobody can tell
    // the CLI what happened before its --timeout.
    server.kill();
    let out = tokio::time::timeout(EVENT_DEADLINE, put.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    let txn = stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("txn="))
        .expect("stderr names txn=ID")
        .trim_end_matches(':');

    server.restart().await;
    let resolved = store_tests::cli(&server, &["resolve", txn], None);
    assert_eq!(resolved.code, 0, "{}", resolved.stderr);
    assert!(
        resolved.stdout.starts_with("committed tid="),
        "{}",
        resolved.stdout
    );
    // An id of this identity's space nobody used is abandoned; one of
    // another identity's space is not this certificate's to touch.
    let unused = format!("{:032x}:1", raw::dev_client_id(1));
    let never = store_tests::cli(&server, &["resolve", &unused], None);
    assert_eq!((never.code, never.stdout.as_str()), (0, "abandoned\n"));
    let foreign = store_tests::cli(
        &server,
        &["resolve", "00000000000000000000000000000001:1"],
        None,
    );
    assert_eq!(foreign.code, 3, "{foreign:?}");
    assert!(foreign.stderr.contains("permission denied"), "{foreign:?}");
}
