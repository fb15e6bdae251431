//! Node identity on `zeolite-peer/1` (issue "Trust boundaries", item 1):
//! only the pair's own nodes speak the peer protocol, each only for
//! itself, and a backup cannot acknowledge history it was never sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use store_client::Role;
use store_protocol::peer::{
    LogPosition, PeerRequest, PeerResponse, PeerStatus, ReplAck, ReplFrame, PEER_ALPN,
};
use store_protocol::{read_frame, write_frame, Epoch};
use store_tests::{raw, Cluster, EVENT_DEADLINE};

/// The witness's record as it reports it to a node.
async fn witness_status(cluster: &Cluster, as_node: usize) -> PeerStatus {
    let connection = raw::connect_as(
        cluster.witness.addr(),
        cluster.tls_dir(),
        Some(cluster.node_cert(cluster.nodes[as_node].addr())),
        PEER_ALPN,
    )
    .await
    .expect("a node reaches the witness");
    match raw::peer_request(&connection, &PeerRequest::Status).await {
        Ok(PeerResponse::Status(status)) => status,
        other => panic!("expected the witness's status, got {other:?}"),
    }
}

/// The witness's votes: epoch, primary, in sync.
async fn witness_votes(cluster: &Cluster, as_node: usize) -> (Epoch, Option<u8>, [bool; 2]) {
    let status = witness_status(cluster, as_node).await;
    (status.epoch, status.primary, status.in_sync)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_protocol_takes_only_the_pairs_nodes_each_speaking_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    assert_eq!(cluster.cli(&["put", "k", "v1"]).code, 0);
    let status = witness_status(&cluster, 0).await;
    let (epoch, cluster_id) = (status.epoch, status.cluster_id);
    assert_eq!((status.primary, status.in_sync), (Some(0), [true, true]));

    // The development client certificate, which every application holds,
    // is closed right after the handshake by every member.
    let client_cert = Some((
        cluster.tls_dir().join("client.pem"),
        cluster.tls_dir().join("client.key"),
    ));
    let members = [
        cluster.witness.addr(),
        cluster.nodes[0].addr(),
        cluster.nodes[1].addr(),
    ];
    for addr in members {
        let connection = raw::connect_as(addr, cluster.tls_dir(), client_cert.clone(), PEER_ALPN)
            .await
            .expect("the handshake itself succeeds");
        let _ = raw::peer_request(&connection, &PeerRequest::StepDown { epoch }).await;
        assert_eq!(
            raw::closed_with_code(&connection).await,
            Some(u64::from(store_server::CLOSE_NOT_A_NODE)),
            "{addr}"
        );
    }
    // The witness's node certificate is no data node: the primary refuses it.
    let witness_cert = Some(cluster.node_cert(cluster.witness.addr()));
    let connection = raw::connect_as(members[1], cluster.tls_dir(), witness_cert, PEER_ALPN)
        .await
        .expect("the handshake itself succeeds");
    let _ = raw::peer_request(&connection, &PeerRequest::StepDown { epoch }).await;
    assert_eq!(
        raw::closed_with_code(&connection).await,
        Some(u64::from(store_server::CLOSE_NOT_A_NODE))
    );

    // The backup's certificate cannot act as the primary at the witness:
    // no renewal of its lease, no in-sync record, no release, and no
    // election at an epoch the witness never granted.
    let backup = raw::connect_as(
        cluster.witness.addr(),
        cluster.tls_dir(),
        Some(cluster.node_cert(cluster.nodes[1].addr())),
        PEER_ALPN,
    )
    .await
    .expect("node 1 reaches the witness");
    let far = LogPosition {
        epoch,
        lsn: u64::MAX,
    };
    let forged = [
        PeerRequest::Lease { epoch, acked: far },
        PeerRequest::SetInSync {
            epoch,
            in_sync: false,
        },
        PeerRequest::Release { epoch },
        PeerRequest::Elect {
            epoch: Epoch(u64::MAX - 1),
            force: false,
            cluster_id,
            end: far,
        },
        PeerRequest::Elect {
            epoch: Epoch(epoch.0 + 1),
            force: false,
            cluster_id,
            end: far,
        },
    ];
    for request in &forged {
        let answer = raw::peer_request(&backup, request).await;
        assert!(
            matches!(answer, Ok(PeerResponse::Denied { .. })),
            "{request:?} was answered {answer:?}"
        );
    }
    assert_eq!(
        witness_votes(&cluster, 0).await,
        (epoch, Some(0), [true, true])
    );
    // The pair goes on as before.
    assert_eq!(cluster.cli(&["put", "k", "v2"]).code, 0);
    assert_eq!(cluster.cli(&["get", "k"]).stdout, "v2\n");
    let status = cluster.status(0).await.expect("node 0 answers");
    assert_eq!((status.role, status.epoch), (Role::Primary, epoch));
}

/// The reproduction: with the real backup dead, a party holding
/// its certificate joins and acknowledges `u64::MAX`. The primary must end
/// that stream, record the backup out of sync, and so a later failover to
/// the backup cannot lose the writes acknowledged meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_backup_cannot_acknowledge_history_it_was_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    assert_eq!(cluster.cli(&["put", "before", "1"]).code, 0);
    cluster.nodes[1].kill();

    let fake = raw::connect_as(
        cluster.nodes[0].addr(),
        cluster.tls_dir(),
        Some(cluster.node_cert(cluster.nodes[1].addr())),
        PEER_ALPN,
    )
    .await
    .expect("the fake backup connects");
    let status = witness_status(&cluster, 0).await;
    let (mut send, mut recv) = fake.open_bi().await.unwrap();
    let join = PeerRequest::Join {
        epoch: status.epoch,
        cluster_id: status.cluster_id,
        batch_epoch: Epoch(0),
        lsn: u64::MAX,
    };
    write_frame(&mut send, &join, 1 << 16).await.unwrap();
    let accepted = read_frame::<_, PeerResponse>(&mut recv, 1 << 16).await;
    assert!(
        matches!(accepted, Ok(Some(PeerResponse::Following { .. }))),
        "{accepted:?}"
    );
    // Take the snapshot's first frame, then acknowledge far beyond it.
    let first = read_frame::<_, ReplFrame>(&mut recv, 64 << 20).await;
    assert!(
        matches!(first, Ok(Some(ReplFrame::SnapshotBegin { .. }))),
        "{first:?}"
    );
    write_frame(&mut send, &ReplAck { lsn: u64::MAX }, 64)
        .await
        .unwrap();
    // The primary ends the stream: reading runs into its end or a reset.
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(1),
            read_frame::<_, ReplFrame>(&mut recv, 64 << 20),
        )
        .await
        {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None) | Err(_)) => break,
            Err(_) => assert!(
                Instant::now() < deadline,
                "the primary kept the stream of a backup that acked u64::MAX"
            ),
        }
    }

    // Writes acknowledged while the backup is dead: the primary may go on
    // alone only once the witness records the backup out of sync.
    for i in 0..5 {
        let put = cluster.cli(&["put", &format!("k{i}"), "acked"]);
        assert_eq!(put.code, 0, "{put:?}");
    }
    let (_, primary, in_sync) = witness_votes(&cluster, 0).await;
    assert_eq!(
        (primary, in_sync),
        (Some(0), [true, false]),
        "the witness must not hold the dead backup in sync"
    );

    // The primary dies; the stale backup returns and must not take over
    // for as long as an election would take it (three leases), then the
    // old primary returns and serves every acknowledged write.
    cluster.nodes[0].kill();
    cluster.nodes[1].respawn();
    cluster.nodes[1].wait_ready().await;
    let window = Instant::now() + Duration::from_secs(6);
    while Instant::now() < window {
        if let Some(status) = cluster.status(1).await {
            assert_ne!(
                status.role,
                Role::Primary,
                "a backup that lacks acknowledged writes was elected; logs:\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.nodes[0].respawn();
    cluster.nodes[0].wait_ready().await;
    cluster.wait_for_primary(Some(0)).await;
    for i in 0..5 {
        let get = cluster.cli(&["get", &format!("k{i}")]);
        assert_eq!(get.stdout, "acked\n", "{get:?}");
    }
}
