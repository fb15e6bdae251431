//! The HA pair with real processes: a witness and two data nodes, killed
//! with SIGKILL, frozen with SIGSTOP, cut apart by fault proxies on the
//! replication link. Writers append unique tokens, so every acknowledged
//! write is traceable: none may be lost, none applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use store_client::{Client, Error, ReadPolicy, Role, Source, TxnId};
use store_tests::session::{fast, FAST_STALE_AFTER};
use store_tests::{Cluster, Direction, EVENT_DEADLINE};

const WRITERS: usize = 3;
/// Upper bound on appends per writer, so a writer ends whatever happens.
const MAX_APPENDS: usize = 5_000;

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    acked: Vec<String>,
    failed: Vec<String>,
    unknown: Vec<(String, TxnId)>,
}

/// Writers appending unique tokens to one key until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Outcomes>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(cluster: &Cluster, key: &'static str) -> Load {
        let load = Load {
            stop: Arc::default(),
            acked: Arc::default(),
            outcomes: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let client = Client::connect(fast(cluster.client_config()))
                .await
                .unwrap();
            let (stop, acked, outcomes) =
                (load.stop.clone(), load.acked.clone(), load.outcomes.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..MAX_APPENDS {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let token = format!("w{writer}-{i};");
                    let result = client.append(key, token.clone()).await;
                    let mut outcomes = outcomes.lock().unwrap();
                    match result {
                        Ok(_) => {
                            outcomes.acked.push(token);
                            acked.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => match e.error().unknown_txn_id() {
                            Some(txn_id) => outcomes.unknown.push((token, txn_id)),
                            None => {
                                assert!(e.error().is_not_applied(), "{e}");
                                outcomes.failed.push(token);
                            }
                        },
                    }
                }
                client.close().await;
            }));
        }
        Load { tasks, ..load }
    }

    /// Waits until `more` appends beyond what is acknowledged now are.
    async fn wait_for(&self, more: usize) {
        let target = self.acked.load(Ordering::Acquire) + more;
        let deadline = Instant::now() + EVENT_DEADLINE;
        while self.acked.load(Ordering::Acquire) < target {
            assert!(Instant::now() < deadline, "writers stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Outcomes {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.outcomes)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// Checks the final value of the log against what the writers saw: every
/// acknowledged token exactly once, no definitely failed token, and each
/// unknown one present exactly when `resolve` says it committed.
async fn check_log(client: &Client, key: &'static str, outcomes: &Outcomes) -> String {
    let value = client.get(key).await.unwrap().unwrap_or_default();
    let text = String::from_utf8(value.to_vec()).unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for token in text.split_terminator(';') {
        *counts.entry(token).or_default() += 1;
    }
    let count = |token: &str| {
        counts
            .get(token.trim_end_matches(';'))
            .copied()
            .unwrap_or(0)
    };
    for (token, n) in &counts {
        assert_eq!(*n, 1, "{token} applied {n} times");
    }
    for token in &outcomes.acked {
        assert_eq!(count(token), 1, "acknowledged {token} lost");
    }
    for token in &outcomes.failed {
        assert_eq!(count(token), 0, "definitely failed {token} applied");
    }
    for (token, txn_id) in &outcomes.unknown {
        let present = count(token);
        match client.resolve(*txn_id).await {
            Ok(_) => assert_eq!(present, 1, "{token} resolved committed but absent"),
            Err(Error::Abandoned { .. }) => assert_eq!(present, 0, "{token} abandoned but present"),
            Err(e) => panic!("resolve {txn_id}: {e}"),
        }
    }
    assert_eq!(
        counts.len(),
        outcomes.acked.len()
            + outcomes
                .unknown
                .iter()
                .filter(|(t, _)| count(t) == 1)
                .count(),
        "a token nobody wrote"
    );
    text
}

/// Primary kills under load: each round SIGKILLs the primary while the
/// writers append, waits for the backup to take over and the writers to
/// go on, then brings the dead node back as a backup and waits until it
/// has caught up, so that the next round fails over back to it.
const KILL_ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    let load = Load::start(&cluster, "log").await;
    let mut primary = 0;
    for _ in 0..KILL_ROUNDS {
        load.wait_for(20).await;
        cluster.nodes[primary].kill();
        let backup = 1 - primary;
        assert_eq!(cluster.wait_for_primary(Some(backup)).await, backup);
        load.wait_for(20).await;
        // The old primary returns as a backup and catches up.
        cluster.nodes[primary].respawn();
        cluster.wait_in_sync(backup).await;
        primary = backup;
    }
    let outcomes = load.stop().await;
    assert!(!outcomes.acked.is_empty());
    let client = cluster.client().await;
    let before = check_log(&client, "log", &outcomes).await;

    // A last failover with no writes in flight changes nothing.
    cluster.nodes[primary].kill();
    cluster.wait_for_primary(Some(1 - primary)).await;
    let after = check_log(&client, "log", &outcomes).await;
    assert_eq!(after, before);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_catches_up_from_the_new_primarys_log_not_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    let client = cluster.client().await;
    for i in 0..50 {
        client.put(format!("before{i}"), "v").await.unwrap();
    }
    cluster.wait_in_sync(0).await;
    // No write in flight: the old primary's history is a prefix of the new
    // one's, which holds it in its write-ahead log (not in memory: node 1
    // was a backup then).
    cluster.nodes[0].kill();
    assert_eq!(cluster.wait_for_primary(Some(1)).await, 1);
    for i in 0..50 {
        client.put(format!("after{i}"), "v").await.unwrap();
    }
    cluster.nodes[0].respawn();
    cluster.wait_in_sync(1).await;
    let rejoined = cluster.nodes[0].log_text();
    assert!(
        !rejoined.contains("snapshot installed"),
        "caught up by a snapshot:\n{rejoined}"
    );
    // Everything is on node 0: it serves it all as the primary now.
    cluster.nodes[1].kill();
    assert_eq!(cluster.wait_for_primary(Some(0)).await, 0);
    for key in ["before0", "before49", "after0", "after49"] {
        let read = client.read(key, ReadPolicy::Wait(EVENT_DEADLINE)).await;
        assert_eq!(read.unwrap().value.as_deref(), Some(&b"v"[..]), "{key}");
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_never_serves_after_waking() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    // A client whose session is with node 0 before the freeze.
    let client = Client::connect(fast(cluster.client_config()))
        .await
        .unwrap();
    client.put("k", "before").await.unwrap();

    cluster.nodes[0].freeze();
    cluster.wait_for_primary(Some(1)).await;
    let other = cluster.client().await;
    let during = other.put("k", "during").await.unwrap();
    cluster.nodes[0].thaw();

    // Awake, it knows its lease ran out: no primary pong, reads and
    // writes refused, and the client that was with it moves on.
    cluster
        .wait_for_status(0, "stepped down", |s| s.role == Role::Backup)
        .await;
    let alone = cluster.cli_node(0, &["--timeout", "2s", "put", "k", "late"]);
    assert_eq!(alone.code, 5, "{alone:?}");
    assert!(alone.stderr.contains("not the primary"), "{alone:?}");
    let after = client.put("k", "after").await.unwrap();
    assert!(after.tid > during.tid);
    assert_eq!(
        client.session().server.as_deref(),
        Some(cluster.nodes[1].addr().to_string().as_str())
    );
    // One history: the old primary catches up to exactly it.
    cluster.wait_in_sync(1).await;
    let backup = cluster.status(0).await.unwrap();
    let primary = cluster.status(1).await.unwrap();
    assert_eq!(backup.last_tid, primary.last_tid);
    assert_eq!(other.get("k").await.unwrap().unwrap(), "after");
    client.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_the_data_nodes_leaves_exactly_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with_link_proxies(dir.path()).await;
    cluster.wait_in_sync(0).await;
    let client = cluster.client().await;
    client.put("k", "0").await.unwrap();

    for proxy in &cluster.link {
        proxy.black_hole(Direction::ToServer);
        proxy.black_hole(Direction::ToClient);
    }
    // The primary records its backup out of sync and goes on alone.
    for i in 1..=5 {
        client.put("k", i.to_string()).await.unwrap();
    }
    let primary = cluster
        .wait_for_status(0, "went on alone", |s| {
            s.pair.as_ref().is_some_and(|p| !p.backup_in_sync)
        })
        .await;
    assert_eq!(primary.role, Role::Primary);
    // The backup's promise to the primary lapses, but the witness will not
    // elect it: the primary still renews its lease there, and the backup
    // lacks acknowledged writes. It stays a backup.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let backup = cluster.status(1).await.unwrap();
    assert_eq!(backup.role, Role::Backup, "{backup:?}");
    assert!(
        backup
            .pair
            .as_ref()
            .unwrap()
            .note
            .contains("not taking over"),
        "{backup:?}"
    );
    assert_eq!(cluster.status(0).await.unwrap().role, Role::Primary);

    for proxy in &cluster.link {
        proxy.heal();
    }
    cluster.wait_in_sync(0).await;
    // One history: after the primary dies, the backup has every write.
    cluster.nodes[0].kill();
    cluster.wait_for_primary(Some(1)).await;
    assert_eq!(client.get("k").await.unwrap().unwrap(), "5");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_witness_the_pair_serves_and_without_the_primary_too_nobody_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    cluster.witness.kill();
    let client = cluster.client().await;
    // Well past a lease: renewals from the backup alone keep it primary.
    let until = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while Instant::now() < until {
        client.incr("n", 1).await.unwrap();
        n += 1;
    }
    assert!(n > 0);
    assert_eq!(cluster.status(0).await.unwrap().role, Role::Primary);

    cluster.nodes[0].kill();
    // No majority: the backup must not promote itself, and says why.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = cluster
        .wait_for_status(1, "explained itself", |s| {
            s.pair
                .as_ref()
                .is_some_and(|p| p.note.contains("no majority"))
        })
        .await;
    assert_eq!(status.role, Role::Backup);
    let text = cluster.cli_node(1, &["status"]);
    assert!(text.stdout.contains("role=backup"), "{text:?}");
    assert!(text.stdout.contains("no majority"), "{text:?}");
    let write = cluster.cli(&["--timeout", "3s", "incr", "n"]);
    assert_eq!(write.code, 5, "{write:?}");

    // The witness returns: the backup, in sync, takes over with every write.
    cluster.witness.respawn();
    cluster.wait_for_primary(Some(1)).await;
    let value = client.get("n").await.unwrap().unwrap();
    assert_eq!(value, n.to_string());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_moves_the_primary_by_hand_and_refuses_to_lose_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    assert_eq!(cluster.cli(&["put", "k", "v1"]).code, 0);

    let both = cluster.cli(&["promote"]);
    assert_eq!(both.code, 2, "{both:?}");
    let promoted = cluster.cli_node(1, &["promote"]);
    assert_eq!(promoted.code, 0, "{promoted:?}");
    assert!(
        promoted.stdout.starts_with("role=primary epoch="),
        "{promoted:?}"
    );
    cluster
        .wait_for_status(0, "stepped down", |s| s.role == Role::Backup)
        .await;
    let put = cluster.cli(&["put", "k", "v2"]);
    assert_eq!(put.code, 0, "{put:?}");
    assert_eq!(cluster.cli(&["get", "k"]).stdout, "v2\n");

    // The new primary goes on alone after its backup dies; the old backup,
    // back but not caught up with the witness's record, is refused.
    cluster.wait_in_sync(1).await;
    cluster.nodes[0].kill();
    assert_eq!(cluster.cli(&["put", "k", "v3"]).code, 0);
    cluster
        .wait_for_status(1, "went on alone", |s| {
            s.pair.as_ref().is_some_and(|p| !p.backup_in_sync)
        })
        .await;
    cluster.nodes[1].kill();
    cluster.nodes[0].respawn();
    cluster.nodes[0].wait_ready().await;
    let refused = cluster.cli_node(0, &["--timeout", "8s", "promote"]);
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(refused.stderr.contains("promote refused"), "{refused:?}");
    // --force takes over, loudly, once the old lease has run out.
    let forced = cluster.cli_node(0, &["--timeout", "20s", "promote", "--force"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(forced.stderr.contains("WARNING"), "{forced:?}");
    assert_eq!(
        cluster.cli(&["get", "k"]).stdout,
        "v2\n",
        "v3 was lost, as warned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_follows_the_failover_and_serves_nothing_older_than_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    let writer = cluster.client().await;
    writer.put("k", "v1").await.unwrap();
    writer.put("other", "o1").await.unwrap();
    let reader = Client::connect(fast(cluster.client_config()))
        .await
        .unwrap();
    assert_eq!(reader.get("k").await.unwrap().unwrap(), "v1");
    reader.get("other").await.unwrap();
    let cached = reader.read("k", ReadPolicy::FailFast).await.unwrap();
    assert_eq!(cached.source, Source::Cache);

    cluster.nodes[0].kill();
    cluster.wait_for_primary(Some(1)).await;
    writer.put("k", "v2").await.unwrap();
    let acked = Instant::now();
    // The reader moves to the new primary on its own and revalidates its
    // cache there: the changed key is dropped, the unchanged one kept.
    let node1 = cluster.nodes[1].addr().to_string();
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        let session = reader.session();
        if session.server.as_deref() == Some(node1.as_str())
            && session.state == store_client::SessionState::Live
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reader never followed: {session:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The promise (DESIGN §5): a cached read misses only writes
    // acknowledged less than stale_after before it.
    tokio::time::sleep_until((acked + FAST_STALE_AFTER).into()).await;
    assert_eq!(reader.get("k").await.unwrap().unwrap(), "v2");
    let other = reader.read("other", ReadPolicy::FailFast).await.unwrap();
    assert_eq!(other.value.unwrap(), "o1");
    assert_eq!(other.source, Source::Cache, "revalidated, not dropped");
    reader.close().await;
    writer.close().await;
}
