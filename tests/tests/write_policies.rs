//! Write policies per call: `FailFast` refuses at once on a session that
//! is not live and otherwise reports after one attempt, never resending;
//! `Unconfirmed` returns once handed over and never applies a write twice,
//! even through a lossy link; `store-cli --write-policy`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use store_client::{Client, Error, SessionState, WritePolicy};
use store_tests::scrape::{get, sample};
use store_tests::session::{client_via, fast};
use store_tests::{cli, Direction, FaultProxy, LinkFault, ServerProcess, EVENT_DEADLINE};

/// Commit requests the server has received.
async fn commit_requests(server: &ServerProcess) -> f64 {
    let (_, text) = get(server.metrics_addr(), "/metrics").await;
    sample(&text, r#"zeolite_requests_total{kind="commit"}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_refuses_on_a_stale_session_and_reports_after_one_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    // Proof lasts 5 s: the write below goes out while the session is
    // still live, however slow this machine. Calls wait up to
    // EVENT_DEADLINE; one attempt is `stale_after`.
    let mut config = fast(server.client_config());
    config.servers = vec![proxy.addr().to_string()];
    config.session.ping_interval = Duration::from_millis(500);
    config.session.stale_after = Duration::from_secs(5);
    let client = Client::connect(config).await.unwrap();
    let timeout = EVENT_DEADLINE;
    let fail_fast = client.with_write_policy(WritePolicy::FailFast);
    fail_fast.put("live", "1").await.unwrap();

    // Answers cut: the next write is sent once, and its missing answer is
    // reported within one attempt, long before the call's deadline.
    let before = commit_requests(&server).await;
    proxy.black_hole(Direction::ToClient);
    let started = Instant::now();
    let error = fail_fast.put("sent-once", "1").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(commit_requests(&server).await - before, 1.0, "sent once");
    let txn = match error.error() {
        Error::OutcomeUnknown { txn_id, .. } => *txn_id,
        other => panic!("expected an unknown outcome, got {other:?}"),
    };
    assert!(took < timeout / 2, "took {took:?}: it waited like Retry");

    // The session goes stale: now nothing is even sent.
    // (Stale, or Reconnecting once QUIC gives the connection up.)
    let mut states = client.watch_session();
    tokio::time::timeout(EVENT_DEADLINE, async {
        while states.borrow_and_update().state == SessionState::Live {
            states.changed().await.unwrap();
        }
    })
    .await
    .expect("the session stayed live with its answers cut");
    let refused = fail_fast.put("never-sent", "1").await.unwrap_err();
    assert!(
        matches!(refused.error(), Error::SessionStale { .. }),
        "{refused:?}"
    );
    assert!(refused.error().is_not_applied());

    proxy.heal();
    let observer = server.client().await;
    assert_eq!(observer.get("never-sent").await.unwrap(), None);
    // The one copy of the other was applied or not; resolve says which,
    // and either way there is one answer.
    match observer.resolve(txn).await {
        Ok(outcome) => assert_eq!(
            observer.get("sent-once").await.unwrap().unwrap(),
            "1",
            "{outcome:?}"
        ),
        Err(Error::Abandoned { .. }) => assert_eq!(observer.get("sent-once").await.unwrap(), None),
        Err(other) => panic!("resolve: {other:?}"),
    }
    observer.close().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_writes_through_a_lossy_link_are_applied_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let client = client_via(&proxy, &server).await;
    let lossy = LinkFault {
        drop: 0.2,
        delay: Duration::from_millis(2),
    };
    proxy.set(Direction::ToServer, lossy);
    proxy.set(Direction::ToClient, lossy);
    let unconfirmed = client.with_write_policy(WritePolicy::Unconfirmed);
    let before = commit_requests(&server).await;
    let mut sent = 0u32;
    for i in 0..40 {
        match unconfirmed.incr(format!("n/{i}"), 1).await {
            Ok(outcome) => {
                assert!(!outcome.confirmed);
                sent += 1;
            }
            // Refused before sending (the lossy session went stale).
            Err(e) => assert!(e.error().is_not_applied(), "{e:?}"),
        }
    }
    assert!(sent > 0, "nothing was sent");
    // Give the copies time to land (closing waits for their answers).
    client.close().await;
    proxy.heal();
    let observer = server.client().await;
    let mut applied = 0;
    for i in 0..40 {
        match observer.get(format!("n/{i}")).await.unwrap() {
            None => {}
            Some(value) => {
                assert_eq!(value, "1", "n/{i} applied more than once");
                applied += 1;
            }
        }
    }
    assert!(applied <= sent);
    assert!(applied > 0, "not one unconfirmed write landed");
    // Never resent: the server received at most one copy of each.
    let received = commit_requests(&server).await - before;
    assert!(
        received <= f64::from(sent),
        "{received} requests for {sent} writes"
    );
    observer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_sent_for_an_unconfirmed_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let out = cli(
        &server,
        &["--write-policy", "unconfirmed", "put", "k", "v"],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("sent txn="), "{out:?}");
    // Closing waited for its answer: it is there.
    let got = cli(&server, &["get", "k"], None);
    assert_eq!(got.stdout, "v\n", "{got:?}");
    let out = cli(
        &server,
        &["--write-policy", "fail-fast", "put", "k", "w"],
        None,
    );
    assert!(out.stdout.starts_with("committed tid=2 "), "{out:?}");
}
