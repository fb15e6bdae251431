//! An acknowledged commit survives SIGKILL of the server, and no commit is
//! ever half-applied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use store_client::{Client, ScanRequest};
use store_tests::{ServerProcess, EVENT_DEADLINE};

const WRITERS: usize = 8;
/// Acknowledged commits (over all writers) before the server is killed.
const KILL_AFTER: usize = 200;
/// Upper bound on each writer's commits, so the loop ends even if the kill
/// never lands.
const MAX_PER_WRITER: usize = 5_000;

fn key(writer: usize, i: usize, half: &str) -> String {
    format!("w/{writer}/{i:05}/{half}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let attempted = Arc::new(Mutex::new(vec![0usize; WRITERS]));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = Client::connect(server.client_config().timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        let (acked, attempted, acked_count, enough) = (
            acked.clone(),
            attempted.clone(),
            acked_count.clone(),
            enough.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0..MAX_PER_WRITER {
                attempted.lock().unwrap()[writer] = i;
                let value = format!("{writer}:{i}");
                let mut txn = client.txn();
                txn.put(key(writer, i, "a"), value.clone())
                    .put(key(writer, i, "b"), value);
                match txn.commit().await {
                    Ok(outcome) => {
                        acked.lock().unwrap().push((writer, i, outcome.tid));
                        if acked_count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                            enough.notify_one();
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::timeout(EVENT_DEADLINE, enough.notified())
        .await
        .expect("writers acknowledged enough commits");
    server.kill();
    for writer in writers {
        tokio::time::timeout(EVENT_DEADLINE, writer)
            .await
            .unwrap()
            .unwrap();
    }

    server.restart().await;
    let client = server.client().await;
    let mut stored: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    let mut scan = ScanRequest::prefix("w/", 1000);
    loop {
        let page = client.scan(scan.clone()).await.unwrap();
        let next = page.next_start();
        stored.extend(page.entries.into_iter().map(|e| (e.key, e.value)));
        match next {
            Some(start) => scan.start = start,
            None => break,
        }
    }

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);
    for (writer, i, _tid) in &acked {
        let value = Bytes::from(format!("{writer}:{i}"));
        for half in ["a", "b"] {
            assert_eq!(
                stored.get(key(*writer, *i, half).as_bytes()),
                Some(&value),
                "acknowledged write {writer}:{i} lost"
            );
        }
    }
    let attempted = attempted.lock().unwrap().clone();
    for (k, v) in &stored {
        let k = std::str::from_utf8(k).unwrap();
        let parts: Vec<&str> = k.split('/').collect();
        let (writer, i): (usize, usize) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        assert!(i <= attempted[writer], "{k} was never attempted");
        let twin = key(writer, i, if parts[3] == "a" { "b" } else { "a" });
        assert_eq!(stored.get(twin.as_bytes()), Some(v), "{k} half-applied");
    }
    let status = client.status().await.unwrap();
    let max_acked = acked.iter().map(|(_, _, tid)| *tid).max().unwrap();
    assert!(status.last_tid >= max_acked);
}
