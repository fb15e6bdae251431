//! The change feed: subscribers from different TIDs each see exactly the
//! committed history under their prefix (in order, nothing missed, nothing
//! twice) across a SIGKILL of a standalone server and a failover of a
//! pair; a start before the retained history is `Compacted`, and
//! `store-cli subscribe` exits 3 naming the oldest TID.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use store_client::{Change, ChangeOp, Client, Error, Subscription, Tid, WireError};
use store_tests::{cli, ServerProcess, EVENT_DEADLINE};

/// A commit the writer made: its TID and what it did to one key.
#[derive(Debug, Clone)]
struct Made {
    tid: Tid,
    key: Bytes,
    op: ChangeOp,
}

/// Commits `count` single-key transactions, cycling put, append and
/// delete over a few keys under `f/` and one outside it; returns the
/// acknowledged ones (every one, when nothing fails).
async fn write(client: &Client, start: usize, count: usize) -> Vec<Made> {
    let mut made = Vec::new();
    for i in start..start + count {
        let key = if i % 5 == 4 {
            format!("g/{}", i % 3)
        } else {
            format!("f/{}", i % 4)
        };
        let value = Bytes::from(format!("v{i}"));
        let (outcome, op) = match i % 3 {
            0 => (
                client.put(key.clone(), value.clone()).await,
                ChangeOp::Put(value),
            ),
            1 => (
                client.append(key.clone(), value.clone()).await,
                ChangeOp::Append(value),
            ),
            _ => (client.delete(key.clone()).await, ChangeOp::Delete),
        };
        let outcome = outcome.unwrap();
        made.push(Made {
            tid: outcome.tid,
            key: Bytes::from(key),
            op,
        });
    }
    made
}

/// What a subscriber from `from` under `f/` must see of `made`.
fn expected(made: &[Made], from: Tid) -> Vec<Change> {
    made.iter()
        .filter(|m| m.tid > from && m.key.starts_with(b"f/"))
        .map(|m| Change {
            tid: m.tid,
            key: m.key.clone(),
            op: m.op.clone(),
        })
        .collect()
}

/// The next change, or a failure if none comes for [`EVENT_DEADLINE`].
async fn next(feed: &mut Subscription) -> Option<Result<Change, Error>> {
    tokio::time::timeout(EVENT_DEADLINE, feed.next())
        .await
        .expect("the feed answers")
}

/// Reads changes until one of TID `last` or later has come (or the
/// deadline passes).
async fn collect(feed: &mut Subscription, into: &mut Vec<Change>, last: Tid) {
    let deadline = Instant::now() + EVENT_DEADLINE;
    while feed.through() < last {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the feed stopped at {:?}", feed.through());
        match tokio::time::timeout(left, feed.next()).await {
            Ok(Some(Ok(change))) => into.push(change),
            // No server for a while (it is being restarted): go on.
            Ok(Some(Err(Error::Unavailable { .. }))) => {}
            Ok(other) => panic!("the feed ended: {other:?}"),
            Err(_) => panic!("no change for {EVENT_DEADLINE:?}"),
        }
    }
    // The rest of the last frame, already buffered.
    while let Ok(Some(Ok(change))) = tokio::time::timeout(Duration::ZERO, feed.next()).await {
        into.push(change);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_from_three_tids_see_the_committed_history_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let writer = server.client().await;
    let mut made = write(&writer, 0, 20).await;
    let reader = server.client().await;
    let froms = [Tid::ZERO, made[9].tid, made[19].tid];
    let mut feeds: Vec<Subscription> = froms.iter().map(|&f| reader.subscribe("f/", f)).collect();
    let mut seen: Vec<Vec<Change>> = vec![Vec::new(); 3];
    made.extend(write(&writer, 20, 20).await);
    for (feed, seen) in feeds.iter_mut().zip(&mut seen) {
        collect(feed, seen, made[39].tid).await;
    }
    // Killed mid-stream; restarted, it serves the rest from its log.
    server.restart().await;
    made.extend(write(&writer, 40, 20).await);
    let last = made.last().unwrap().tid;
    for (feed, seen) in feeds.iter_mut().zip(&mut seen) {
        collect(feed, seen, last).await;
    }
    for (from, seen) in froms.iter().zip(&seen) {
        assert_eq!(
            seen,
            &expected(&made, *from),
            "the subscriber from {from:?}"
        );
    }
    reader.close().await;
    writer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_follows_a_pair_through_a_failover_missing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = store_tests::Cluster::start(dir.path()).await;
    let primary = cluster.wait_for_primary(Some(0)).await;
    cluster.wait_in_sync(primary).await;
    let writer = cluster.client().await;
    let reader = cluster.client().await;
    let mut feed = reader.subscribe("f/", Tid::ZERO);
    let mut seen = Vec::new();
    let mut made = write(&writer, 0, 15).await;
    collect(&mut feed, &mut seen, made[14].tid).await;
    cluster.nodes[primary].kill();
    assert_eq!(
        cluster.wait_for_primary(Some(1 - primary)).await,
        1 - primary
    );
    made.extend(write(&writer, 15, 15).await);
    let last = made.last().unwrap().tid;
    collect(&mut feed, &mut seen, last).await;
    // In TID order, each change once, and exactly the acknowledged history.
    let tids: Vec<Tid> = seen.iter().map(|c| c.tid).collect();
    assert!(tids.windows(2).all(|w| w[0] < w[1]), "{tids:?}");
    assert_eq!(seen, expected(&made, Tid::ZERO));
    let distinct: BTreeSet<Tid> = tids.into_iter().collect();
    assert_eq!(distinct.len(), seen.len());
    reader.close().await;
    writer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_before_the_retained_history_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let source = ServerProcess::start(&dir.path().join("a")).await;
    let writer = source.client().await;
    write(&writer, 0, 5).await;
    writer.close().await;
    // A restored store keeps no log from before its backup's TID.
    let file = dir.path().join("b.backup");
    let taken = cli(&source, &["backup", file.to_str().unwrap()], None);
    assert_eq!(taken.code, 0, "{taken:?}");
    let restored_dir = dir.path().join("b");
    let made = store_tests::restore::restore_beside(&source, &file, &restored_dir);
    assert_eq!(made.code, 0, "{made:?}");
    let restored = ServerProcess::start(&restored_dir).await;
    let client = restored.client().await;
    let mut feed = client.subscribe("f/", Tid::ZERO);
    match next(&mut feed).await {
        Some(Err(Error::Compacted { oldest })) => assert_eq!(oldest, Tid(5)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(next(&mut feed).await.is_none(), "a compacted feed ends");
    // From the oldest TID on, it serves; past the store's last, it refuses.
    let mut ahead = client.subscribe("f/", Tid(99));
    match next(&mut ahead).await {
        Some(Err(Error::Rejected(_))) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A prefix longer than any key is refused by the key limit.
    let mut huge = client.subscribe(vec![b'x'; 5000], Tid(5));
    match next(&mut huge).await {
        Some(Err(Error::Rejected(WireError::TooLarge { .. }))) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mut feed = client.subscribe("f/", Tid(5));
    client.put("f/new", "x").await.unwrap();
    let change = next(&mut feed).await.unwrap().unwrap();
    assert_eq!((change.tid, &change.key[..]), (Tid(6), &b"f/new"[..]));
    client.close().await;
    let out = cli(&restored, &["subscribe", "f/", "--from", "0"], None);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("tid 5"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_and_holds_back_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--stall-timeout", "2s"]).await;
    let writer = server.client().await;
    let slow_client = server.client().await;
    let fast_client = server.client().await;
    let mut slow = slow_client.subscribe("s/", Tid::ZERO);
    let mut fast = fast_client.subscribe("s/", Tid::ZERO);
    writer.put("s/first", "x").await.unwrap();
    // Both subscribed; the slow one now stops reading, the fast one reads
    // all along.
    assert!(slow.next().await.unwrap().is_ok());
    assert!(fast.next().await.unwrap().is_ok());
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        while let Some(change) = fast.next().await {
            if arrived.send(change).is_err() {
                break;
            }
        }
    });
    // Far more than QUIC lets through unread (a 1.25 MB stream window).
    let value = Bytes::from(vec![b'v'; 64 << 10]);
    let mut last = Tid::ZERO;
    for i in 0..80 {
        last = writer
            .put(format!("s/{i:03}"), value.clone())
            .await
            .unwrap()
            .tid;
    }
    // The fast reader gets everything while the slow one is stuck.
    let mut got = 0;
    while got < 80 {
        match tokio::time::timeout(EVENT_DEADLINE, arrivals.recv()).await {
            Ok(Some(Ok(change))) if change.tid <= last => got += 1,
            other => panic!("the fast subscriber: {other:?}"),
        }
    }
    reading.abort();
    // The server cuts the slow one off once it has taken nothing for its
    // stall timeout (2 s here), rather than hold changes for it.
    let deadline = Instant::now() + EVENT_DEADLINE;
    while !server
        .log_text()
        .contains("a subscriber fell behind and was cut off")
    {
        assert!(
            Instant::now() < deadline,
            "the slow subscriber was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What had arrived is delivered, then the end, with why.
    let mut delivered = 0;
    let end = loop {
        match tokio::time::timeout(EVENT_DEADLINE, slow.next())
            .await
            .unwrap()
        {
            Some(Ok(_)) => delivered += 1,
            other => break other,
        }
    };
    assert!(delivered < 80, "it was not held back: {delivered}");
    assert!(matches!(end, Some(Err(Error::FellBehind))), "{end:?}");
    assert!(slow.next().await.is_none());
    writer.close().await;
    slow_client.close().await;
    fast_client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_commits_decided_together_reach_a_subscriber_whole() {
    use store_tests::scrape::{get, sample};
    let dir = tempfile::tempdir().unwrap();
    // Frames of 400 kB: one commit of a 300 kB value fits, two do not.
    let limits = ["--max-value-bytes", "300000", "--max-frame-bytes", "400000"];
    let server = ServerProcess::start_with(dir.path(), &limits).await;
    let reader = server.client().await;
    let mut feed = reader.subscribe("big/", reader.status().await.unwrap().last_tid);
    let mut writers = Vec::new();
    for _ in 0..16 {
        writers.push(server.client().await);
    }
    let value = Bytes::from(vec![b'x'; 300_000]);
    // Rounds of sixteen writers at once, until group commit has put
    // several of their commits in one log record (more than a frame holds).
    let batched = |text: &str| {
        sample(text, r#"zeolite_group_commit_batch_size_bucket{le="1"}"#)
            < sample(text, "zeolite_group_commit_batch_size_count")
    };
    let mut tids = Vec::new();
    for round in 0..100 {
        let puts: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(i, writer)| {
                let (writer, value) = (writer.clone(), value.clone());
                tokio::spawn(async move { writer.put(format!("big/{round}/{i}"), value).await })
            })
            .collect();
        for put in puts {
            tids.push(put.await.unwrap().unwrap().tid);
        }
        if batched(&get(server.metrics_addr(), "/metrics").await.1) {
            break;
        }
    }
    let (_, text) = get(server.metrics_addr(), "/metrics").await;
    let batches: Vec<&str> = text.lines().filter(|l| l.contains("batch_size")).collect();
    assert!(
        batched(&text),
        "no two commits were ever decided together: {batches:#?}"
    );
    let mut seen = Vec::new();
    collect(&mut feed, &mut seen, *tids.iter().max().unwrap()).await;
    let mut got: Vec<Tid> = seen.iter().map(|c| c.tid).collect();
    got.sort();
    tids.sort();
    assert_eq!(got, tids);
    assert!(seen
        .iter()
        .all(|c| matches!(&c.op, ChangeOp::Put(v) if v.len() == value.len())));
    for writer in writers {
        writer.close().await;
    }
    reader.close().await;
}
