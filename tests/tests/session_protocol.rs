//! The session stream as the server speaks it: invalidations in TID order
//! before the pong that covers them, and the ping rate limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use store_protocol::{
    read_frame, write_frame, Request, Response, SessionEvent, SessionRequest, Tid,
};
use store_tests::{raw, ServerProcess};

async fn next_event(recv: &mut quinn::RecvStream) -> SessionEvent {
    tokio::time::timeout(Duration::from_secs(60), read_frame(recv, 1 << 24))
        .await
        .expect("an event in time")
        .unwrap()
        .expect("the stream is open")
}

#[tokio::test]
async fn pongs_follow_the_invalidations_they_cover() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let connection = raw::connect(&server, true).await.unwrap();
    let (mut send, mut recv, welcome) = raw::open_session(&connection).await;
    assert_eq!(welcome.last_tid, Tid::ZERO);
    // Invalidations go to sessions that read the keys: read them first.
    let keys: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("k{i}"))).collect();
    let read = raw::request(&connection, &Request::GetMany { keys }).await;
    assert!(matches!(read, Response::Values { .. }), "{read:?}");

    let writer = server.client().await;
    let mut tids = Vec::new();
    for i in 0..5 {
        tids.push(writer.put(format!("k{i}"), "v").await.unwrap().tid);
    }
    // Every commit was acknowledged before this ping: its pong must come
    // after all five invalidations, and say so in last_tid.
    write_frame(&mut send, &SessionRequest::Ping { seq: 1 }, 1 << 16)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        match next_event(&mut recv).await {
            SessionEvent::Invalidate { tid, keys } => {
                assert_eq!(keys.len(), 1);
                seen.push(tid);
            }
            SessionEvent::Pong(pong) => {
                assert_eq!(pong.seq, 1);
                assert_eq!(pong.last_tid, *tids.last().unwrap());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, tids, "in TID order, none missing");

    // A key this session never read: no invalidation, but the next pong
    // still covers its commit.
    let other = writer.put("unread", "v").await.unwrap().tid;
    tokio::time::sleep(store_protocol::MIN_PING_SPACING).await;
    write_frame(&mut send, &SessionRequest::Ping { seq: 2 }, 1 << 16)
        .await
        .unwrap();
    match next_event(&mut recv).await {
        SessionEvent::Pong(pong) => assert_eq!((pong.seq, pong.last_tid), (2, other)),
        other => panic!("expected only the pong, got {other:?}"),
    }
}

#[tokio::test]
async fn pings_closer_than_250ms_are_dropped_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let connection = raw::connect(&server, true).await.unwrap();
    let (mut send, mut recv, _) = raw::open_session(&connection).await;

    for seq in 1..=10 {
        write_frame(&mut send, &SessionRequest::Ping { seq }, 1 << 16)
            .await
            .unwrap();
    }
    // The spacing is the rule under test: wait it out, then ping once more.
    tokio::time::sleep(store_protocol::MIN_PING_SPACING * 2).await;
    write_frame(&mut send, &SessionRequest::Ping { seq: 100 }, 1 << 16)
        .await
        .unwrap();
    let mut answered = Vec::new();
    while answered.last() != Some(&100) {
        match next_event(&mut recv).await {
            SessionEvent::Pong(pong) => answered.push(pong.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The burst arrived within a few milliseconds: only its first ping counts.
    assert_eq!(answered, [1, 100]);
}
