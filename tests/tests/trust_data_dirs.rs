//! Careless operators (issue "Trust boundaries", item 2): a pair member
//! restarted on an empty, missing or 0-byte data directory must not erase
//! the cluster. It refuses to start, and with `--join` it joins as a
//! backup and copies everything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use store_client::Role;
use store_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_without_its_data_refuses_then_joins_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    for i in 0..10 {
        let put = cluster.cli(&["put", &format!("k{i}"), &format!("v{i}")]);
        assert_eq!(put.code, 0, "{put:?}");
    }

    // The primary dies and comes back at once, its data directory gone:
    // the witness would have re-elected it. It refuses to start instead.
    cluster.nodes[0].kill();
    let data = cluster.nodes[0].data_dir().to_path_buf();
    std::fs::rename(&data, data.with_extension("lost")).unwrap();
    cluster.nodes[0].respawn();
    let status = cluster.nodes[0].wait_exit();
    assert!(!status.success());
    let log = cluster.nodes[0].log_text();
    assert!(
        log.contains("is empty, but the witness knows this node") && log.contains("--join"),
        "{log}"
    );

    // Meanwhile the backup, which holds everything, takes over.
    cluster.wait_for_primary(Some(1)).await;
    let scan = cluster.cli(&["scan", "k"]);
    assert_eq!(scan.stdout.lines().count(), 10, "{scan:?}");

    // A 0-byte store is damage, never a new store.
    std::fs::remove_dir_all(&data).unwrap_or(());
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("store.redb"), b"").unwrap();
    cluster.nodes[0].respawn();
    assert!(!cluster.nodes[0].wait_exit().success());
    assert!(cluster.nodes[0]
        .log_text()
        .contains("store.redb is damaged"));
    assert_eq!(std::fs::metadata(data.join("store.redb")).unwrap().len(), 0);

    // Told --join, the empty node joins as a backup and copies everything.
    std::fs::remove_dir_all(&data).unwrap();
    cluster.nodes[0].add_args(&["--join"]);
    cluster.nodes[0].respawn();
    cluster.nodes[0].wait_ready().await;
    cluster.wait_in_sync(1).await;
    assert_eq!(cluster.status(0).await.unwrap().role, Role::Backup);

    // Now it can take over, with every acknowledged write.
    cluster.nodes[1].kill();
    cluster.wait_for_primary(Some(0)).await;
    let scan = cluster.cli(&["scan", "k"]);
    let expected: String = (0..10).map(|i| format!("k{i}\tv{i}\n")).collect();
    assert_eq!(scan.stdout, expected, "{scan:?}");
}

/// Node indices in the peer protocol count in `--cluster` order: a member
/// started with the addresses the other way round refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_the_cluster_in_another_order_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    let (a, b) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    cluster.nodes[1].kill();
    let mut swapped = store_tests::ServerProcess::spawn_member(
        &dir.path().join("swapped"),
        b,
        cluster.tls_dir(),
        false,
        vec![
            "--cluster".into(),
            format!("{b},{a}"),
            "--witness".into(),
            cluster.witness.addr().to_string(),
        ],
    );
    assert!(!swapped.wait_exit().success());
    let log = swapped.log_text();
    assert!(
        log.contains("every member needs the same two addresses in the same order"),
        "{log}"
    );
}
