//! Property tests: every message round-trips through a frame, and decoding
//! arbitrary bytes never panics.
#![allow(clippy::unwrap_used)]
use bytes::Bytes;
use proptest::prelude::*;
use store_protocol::*;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn tid() -> impl Strategy<Value = Tid> {
    any::<u64>().prop_map(Tid)
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Standalone),
        Just(Role::Primary),
        Just(Role::Backup),
        Just(Role::Witness)
    ]
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        (bytes(16), bytes(64)).prop_map(|(key, value)| Write::Put { key, value }),
        bytes(16).prop_map(|key| Write::Delete { key }),
        (bytes(16), any::<i64>()).prop_map(|(key, by)| Write::Incr { key, by }),
        (bytes(16), bytes(64)).prop_map(|(key, value)| Write::Append { key, value }),
    ]
}

fn wire_error() -> impl Strategy<Value = WireError> {
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(client, server)| WireError::UnsupportedVersion { client, server }),
        ".{0,20}".prop_map(|detail| WireError::Malformed { detail }),
        (any::<u64>(), any::<u64>()).prop_map(|(size, limit)| WireError::TooLarge {
            what: LimitKind::Value,
            size,
            limit
        }),
        bytes(16).prop_map(|key| WireError::Conflict { key }),
        bytes(16).prop_map(|key| WireError::NotAnInteger { key }),
        any::<u64>().prop_map(|e| WireError::NotPrimary { epoch: Epoch(e) }),
        (tid(), tid()).prop_map(|(s, c)| WireError::ServerBehind {
            server_last_tid: s,
            client_last_seen: c
        }),
        Just(WireError::Overloaded),
        Just(WireError::DigestMismatch),
        Just(WireError::TxnIdReused),
        Just(WireError::Abandoned),
        Just(WireError::Expired),
        Just(WireError::InProgress),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let commit = (
        any::<u128>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(
            (bytes(16), tid()).prop_map(|(key, serial)| ReadCheck { key, serial }),
            0..4,
        ),
        proptest::collection::vec(write(), 0..6),
    )
        .prop_map(|(client_id, seq, acked_below, read_set, writes)| {
            Request::Commit(CommitRequest {
                txn_id: TxnId { client_id, seq },
                acked_below,
                digest: content_digest(&read_set, &writes),
                read_set,
                writes,
            })
        });
    prop_oneof![
        bytes(32).prop_map(|key| Request::Get { key }),
        proptest::collection::vec(bytes(8), 0..5).prop_map(|keys| Request::GetMany { keys }),
        (bytes(8), proptest::option::of(bytes(8)), any::<u32>())
            .prop_map(|(start, end, limit)| Request::Scan(ScanRequest { start, end, limit })),
        commit,
        Just(Request::Status),
        (any::<u128>(), any::<u64>()).prop_map(|(client_id, seq)| Request::Resolve {
            txn_id: TxnId { client_id, seq }
        }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let versioned = || (bytes(32), tid()).prop_map(|(value, serial)| Versioned { value, serial });
    prop_oneof![
        (proptest::option::of(versioned()), tid())
            .prop_map(|(found, read_tid)| Response::Value { found, read_tid }),
        (
            proptest::collection::vec(proptest::option::of(versioned()), 0..4),
            tid()
        )
            .prop_map(|(values, read_tid)| Response::Values { values, read_tid }),
        (
            proptest::collection::vec(
                (bytes(8), bytes(8), tid()).prop_map(|(key, value, serial)| Entry {
                    key,
                    value,
                    serial
                }),
                0..4
            ),
            any::<bool>()
        )
            .prop_map(|(entries, more)| Response::Entries { entries, more }),
        (tid(), any::<i64>(), any::<bool>()).prop_map(|(tid, n, replayed)| {
            Response::Committed(Committed {
                tid,
                results: vec![
                    WriteResult::Stored,
                    WriteResult::Counter(n),
                    WriteResult::Deleted { existed: replayed },
                    WriteResult::Appended {
                        len: n.unsigned_abs(),
                    },
                ],
                replayed,
            })
        }),
        (role(), any::<u64>(), tid(), any::<u64>(), any::<u64>()).prop_map(
            |(role, epoch, last_tid, server_id, sessions)| Response::Status(StatusInfo {
                role,
                epoch: Epoch(epoch),
                last_tid,
                server_id,
                sessions,
                pair: (sessions % 2 == 0).then(|| PairStatus {
                    peer: "127.0.0.1:7448".into(),
                    peer_reachable: epoch % 2 == 0,
                    peer_last_tid: Some(last_tid),
                    backup_in_sync: server_id % 2 == 0,
                    witness_reachable: true,
                    lag_tids: Some(sessions),
                    note: "no majority".into(),
                })
            })
        ),
        wire_error().prop_map(Response::Error),
    ]
}

fn session_event() -> impl Strategy<Value = SessionEvent> {
    prop_oneof![
        (
            any::<u64>(),
            role(),
            any::<u64>(),
            tid(),
            proptest::option::of(proptest::collection::vec(bytes(8), 0..4))
        )
            .prop_map(|(server_id, role, e, last_tid, changed_since_cached)| {
                SessionEvent::Welcome(Welcome {
                    server_id,
                    role,
                    epoch: Epoch(e),
                    last_tid,
                    limits: Limits::default(),
                    changed_since_cached,
                })
            }),
        wire_error().prop_map(|error| SessionEvent::Refused { error }),
        (any::<u64>(), tid(), any::<u64>(), role()).prop_map(|(seq, last_tid, e, role)| {
            SessionEvent::Pong(Pong {
                seq,
                last_tid,
                epoch: Epoch(e),
                role,
            })
        }),
        (tid(), proptest::collection::vec(bytes(8), 0..4))
            .prop_map(|(tid, keys)| SessionEvent::Invalidate { tid, keys }),
    ]
}

fn session_request() -> impl Strategy<Value = SessionRequest> {
    prop_oneof![
        (any::<u32>(), any::<u128>(), tid(), tid(), any::<bool>()).prop_map(
            |(v, client_id, last_seen_tid, cached_tid, holds_cache)| {
                SessionRequest::Hello(Hello {
                    protocol_version: v,
                    client_id,
                    last_seen_tid,
                    cached_tid,
                    holds_cache,
                })
            }
        ),
        any::<u64>().prop_map(|seq| SessionRequest::Ping { seq }),
    ]
}

/// Encodes, then decodes through the async frame reader.
fn round_trip<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let frame = encode_frame(msg, DEFAULT_MAX_FRAME_BYTES).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut reader = &frame[..];
        read_frame::<_, T>(&mut reader, DEFAULT_MAX_FRAME_BYTES)
            .await
            .unwrap()
            .unwrap()
    })
}

proptest! {
    #[test]
    fn requests_round_trip(msg in request()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn responses_round_trip(msg in response()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn session_messages_round_trip(req in session_request(), ev in session_event()) {
        prop_assert_eq!(round_trip(&req), req);
        prop_assert_eq!(round_trip(&ev), ev);
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_body::<Request>(&body);
        let _ = decode_body::<Response>(&body);
        let _ = decode_body::<SessionRequest>(&body);
        let _ = decode_body::<SessionEvent>(&body);
    }

    #[test]
    fn arbitrary_streams_never_panic(stream in proptest::collection::vec(any::<u8>(), 0..64)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut reader = &stream[..];
            let _ = read_frame::<_, Request>(&mut reader, 1024).await;
        });
    }

    #[test]
    fn txn_ids_print_and_parse(client_id in any::<u128>(), seq in any::<u64>()) {
        let id = TxnId { client_id, seq };
        prop_assert_eq!(id.to_string().parse::<TxnId>().unwrap(), id);
    }
}

#[tokio::test]
async fn oversize_length_prefix_is_refused_before_allocating() {
    // 4 GiB - 1 announced, no body: refused by length alone.
    let mut reader = &[0xff, 0xff, 0xff, 0xff][..];
    let err = read_frame::<_, Request>(&mut reader, DEFAULT_MAX_FRAME_BYTES)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FrameError::TooLarge {
                len: 0xffff_ffff,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        err.to_wire(),
        WireError::TooLarge {
            what: LimitKind::Frame,
            ..
        }
    ));
}

#[tokio::test]
async fn truncated_frames_are_reported() {
    let frame = encode_frame(
        &Request::Get {
            key: Bytes::from_static(b"abc"),
        },
        1024,
    )
    .unwrap();
    for cut in 1..frame.len() {
        let mut reader = &frame[..cut];
        let err = read_frame::<_, Request>(&mut reader, 1024)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
    let mut empty = &[][..];
    assert!(read_frame::<_, Request>(&mut empty, 1024)
        .await
        .unwrap()
        .is_none());
}

#[test]
fn documented_get_encoding() {
    let frame = encode_frame(
        &Request::Get {
            key: Bytes::from_static(b"k"),
        },
        1024,
    )
    .unwrap();
    assert_eq!(frame, [0, 0, 0, 3, 0, 1, b'k']);
}

#[test]
fn trailing_bytes_are_malformed() {
    let err = decode_body::<Request>(&[4, 0]).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
}

#[test]
fn encoding_refuses_frames_over_the_limit() {
    let msg = Request::Get {
        key: Bytes::from(vec![0u8; 100]),
    };
    assert!(matches!(
        encode_frame(&msg, 50),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn digest_depends_on_content() {
    let a = vec![Write::Incr {
        key: Bytes::from_static(b"n"),
        by: 1,
    }];
    let b = vec![Write::Incr {
        key: Bytes::from_static(b"n"),
        by: 2,
    }];
    assert_eq!(content_digest(&[], &a), content_digest(&[], &a));
    assert_ne!(content_digest(&[], &a), content_digest(&[], &b));
}

#[test]
fn limits_check_commits() {
    let limits = Limits {
        max_key_bytes: 4,
        max_value_bytes: 8,
        max_ops_per_txn: 2,
        ..Limits::default()
    };
    let commit = |writes: Vec<Write>| CommitRequest {
        txn_id: TxnId {
            client_id: 1,
            seq: 1,
        },
        acked_below: 1,
        digest: content_digest(&[], &writes),
        read_set: vec![],
        writes,
    };
    let put = |k: &'static [u8], v: &'static [u8]| Write::Put {
        key: Bytes::from_static(k),
        value: Bytes::from_static(v),
    };
    assert!(limits.check_commit(&commit(vec![put(b"k", b"v")])).is_ok());
    let too_long_key = limits.check_commit(&commit(vec![put(b"kkkkk", b"v")]));
    assert!(matches!(
        too_long_key,
        Err(WireError::TooLarge {
            what: LimitKind::Key,
            size: 5,
            limit: 4
        })
    ));
    let too_long_value = limits.check_commit(&commit(vec![put(b"k", b"vvvvvvvvv")]));
    assert!(matches!(
        too_long_value,
        Err(WireError::TooLarge {
            what: LimitKind::Value,
            ..
        })
    ));
    let too_many = limits.check_commit(&commit(vec![
        put(b"a", b""),
        put(b"b", b""),
        put(b"c", b""),
    ]));
    assert!(matches!(
        too_many,
        Err(WireError::TooLarge {
            what: LimitKind::Ops,
            ..
        })
    ));
}
