//! Reads, writes, transactions and TIDs through the library against a real
//! server process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use store_client::{Error, Role, ScanRequest, Tid, WireError, WriteResult};
use store_tests::ServerProcess;

#[tokio::test]
async fn put_get_delete_incr_append_scan() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let client = server.client().await;

    let put = client.put("fruit/apple", "red").await.unwrap();
    assert!(put.tid > Tid::ZERO);
    assert!(!put.replayed);
    assert_eq!(put.txn_id.client_id, client.client_id());
    assert_eq!(
        client.get("fruit/apple").await.unwrap().as_deref(),
        Some(&b"red"[..])
    );
    let versioned = client.get_versioned("fruit/apple").await.unwrap().unwrap();
    assert_eq!(versioned.serial, put.tid);

    client.put("fruit/banana", "yellow").await.unwrap();
    client.put("vegetable/leek", "green").await.unwrap();
    let page = client
        .scan(ScanRequest::prefix("fruit/", 10))
        .await
        .unwrap();
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(
        keys,
        [Bytes::from("fruit/apple"), Bytes::from("fruit/banana")]
    );
    assert!(!page.more);
    let first = client.scan(ScanRequest::prefix("", 1)).await.unwrap();
    assert_eq!(first.entries.len(), 1);
    assert!(first.more);

    let deleted = client.delete("fruit/apple").await.unwrap();
    assert_eq!(deleted.results, [WriteResult::Deleted { existed: true }]);
    assert_eq!(client.get("fruit/apple").await.unwrap(), None);

    assert_eq!(client.incr("n", 5).await.unwrap().counter(), Some(5));
    assert_eq!(client.incr("n", -7).await.unwrap().counter(), Some(-2));
    assert_eq!(client.get("n").await.unwrap().as_deref(), Some(&b"-2"[..]));

    client.append("log", "a").await.unwrap();
    let appended = client.append("log", "bc").await.unwrap();
    assert_eq!(appended.results, [WriteResult::Appended { len: 3 }]);
    assert_eq!(
        client.get("log").await.unwrap().as_deref(),
        Some(&b"abc"[..])
    );

    let many = client.get_many(["n", "missing", "log"]).await.unwrap();
    assert_eq!(
        many,
        [Some(Bytes::from("-2")), None, Some(Bytes::from("abc"))]
    );

    let not_a_number: Error = client.incr("log", 1).await.unwrap_err().into();
    assert!(
        matches!(
            not_a_number,
            Error::Rejected(WireError::NotAnInteger { .. })
        ),
        "{not_a_number}"
    );
    assert!(not_a_number.is_not_applied());

    let status = client.status().await.unwrap();
    assert_eq!(status.role, Role::Standalone);
    assert_eq!(status.last_tid, appended.tid);
    assert!(status.sessions >= 1);
}

#[tokio::test]
async fn multi_write_transactions_apply_under_one_tid() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let client = server.client().await;

    let mut txn = client.txn();
    txn.put("a", "1")
        .put("b", "2")
        .incr("c", 3)
        .append("d", "x");
    let outcome = txn.commit().await.unwrap();
    for key in ["a", "b", "c", "d"] {
        let v = client.get_versioned(key).await.unwrap().unwrap();
        assert_eq!(v.serial, outcome.tid, "key {key}");
    }
}

#[tokio::test]
async fn concurrent_read_modify_write_conflicts_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let a = server.client().await;
    let b = server.client().await;
    a.put("balance", "100").await.unwrap();

    let mut first = a.txn();
    let mut second = b.txn();
    assert_eq!(
        first.get("balance").await.unwrap().as_deref(),
        Some(&b"100"[..])
    );
    assert_eq!(
        second.get("balance").await.unwrap().as_deref(),
        Some(&b"100"[..])
    );
    first.put("balance", "90").put("audit/first", "x");
    second.put("balance", "80").put("audit/second", "x");

    let won = first.commit().await.unwrap();
    let lost: Error = second.commit().await.unwrap_err().into();
    match &lost {
        Error::Conflict { key } => assert_eq!(&key[..], b"balance"),
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(lost.is_not_applied());
    assert_eq!(a.get("balance").await.unwrap().as_deref(), Some(&b"90"[..]));
    assert_eq!(
        a.get("audit/second").await.unwrap(),
        None,
        "nothing of the loser applied"
    );
    assert_eq!(
        a.status().await.unwrap().last_tid,
        won.tid,
        "the loser took no TID"
    );

    // Reading a key that is absent records serial 0: creating it conflicts.
    let mut absent = a.txn();
    assert_eq!(absent.get("fresh").await.unwrap(), None);
    b.put("fresh", "b was first").await.unwrap();
    absent.put("fresh", "a");
    assert!(matches!(
        absent.commit().await.map_err(Error::from),
        Err(Error::Conflict { .. })
    ));
}

#[tokio::test]
async fn tids_strictly_increase_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let mut last = Tid::ZERO;
    for round in 0..3 {
        let client = server.client().await;
        for i in 0..5 {
            let tid = client
                .put(format!("k{i}"), format!("r{round}"))
                .await
                .unwrap()
                .tid;
            assert!(tid > last, "tid {tid} after {last}");
            last = tid;
        }
        client.close().await;
        if round == 1 {
            assert!(server.terminate().unwrap().success(), "SIGTERM exits 0");
            server.restart().await;
        } else {
            server.restart().await; // SIGKILL, then start again
        }
    }
    let client = server.client().await;
    assert_eq!(client.status().await.unwrap().last_tid, last);
    assert_eq!(client.get("k4").await.unwrap().as_deref(), Some(&b"r2"[..]));
}
