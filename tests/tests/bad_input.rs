//! Bad input gets a clear, typed error; the server keeps serving everyone
//! else and loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use store_client::{Error, WireError};
use store_protocol::{
    read_frame, write_frame, Hello, LimitKind, Request, Response, SessionEvent, SessionRequest,
    PROTOCOL_VERSION,
};
use store_tests::{cli, raw, ServerProcess};

#[tokio::test]
async fn oversize_keys_and_values_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let client = server.client().await;
    client.put("before", "1").await.unwrap();

    let big_key = vec![b'k'; 4 * 1024 + 1];
    let refused: Error = client.put(big_key.clone(), "v").await.unwrap_err().into();
    assert!(
        matches!(
            refused,
            Error::Rejected(WireError::TooLarge {
                what: LimitKind::Key,
                size: 4097,
                limit: 4096
            })
        ),
        "{refused}"
    );
    let refused = client.get(big_key).await.unwrap_err();
    assert!(
        matches!(
            refused,
            Error::Rejected(WireError::TooLarge {
                what: LimitKind::Key,
                ..
            })
        ),
        "{refused}"
    );

    let big_value = vec![b'v'; 4 * 1024 * 1024 + 1];
    let refused: Error = client.put("big", big_value).await.unwrap_err().into();
    assert!(
        matches!(
            refused,
            Error::Rejected(WireError::TooLarge {
                what: LimitKind::Value,
                ..
            })
        ),
        "{refused}"
    );
    let max_value = Bytes::from(vec![b'v'; 4 * 1024 * 1024]);
    client.put("max", max_value.clone()).await.unwrap();
    assert_eq!(client.get("max").await.unwrap(), Some(max_value));

    let too_big = vec![b'x'; 4 * 1024 * 1024 + 10];
    let out = cli(&server, &["put", "big", "-"], Some(&too_big));
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("value too large"), "{}", out.stderr);

    assert_eq!(client.get("big").await.unwrap(), None, "nothing applied");
    assert_eq!(
        client.get("before").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

/// Sends raw bytes on a new request stream and reads the response frame.
async fn send_raw(connection: &quinn::Connection, bytes: &[u8]) -> Response {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // The server may stop reading early (STOP_SENDING) on a bad length.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    read_frame::<_, Response>(&mut recv, 1 << 24)
        .await
        .unwrap()
        .expect("a response frame")
}

#[tokio::test]
async fn malformed_frames_get_typed_errors_and_hurt_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let bystander = server.client().await;
    bystander.put("safe", "yes").await.unwrap();

    let connection = raw::connect(&server, true).await.unwrap();
    let _session = raw::open_session(&connection).await;

    // A 4 GiB length prefix: refused by its length, nothing allocated.
    let response = send_raw(&connection, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    assert!(
        matches!(
            response,
            Response::Error(WireError::TooLarge {
                what: LimitKind::Frame,
                size: 0xffff_ffff,
                ..
            })
        ),
        "{response:?}"
    );
    // A truncated frame: the length says 100, the stream ends after 10.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0u8; 10]);
    let response = send_raw(&connection, &truncated).await;
    assert!(
        matches!(&response, Response::Error(WireError::Malformed { detail }) if detail.contains("ended inside a frame")),
        "{response:?}"
    );
    // Random bytes in a well-formed frame.
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend((0..16).map(|i| (i * 37 + 200) as u8));
    let response = send_raw(&connection, &garbage).await;
    assert!(
        matches!(response, Response::Error(WireError::Malformed { .. })),
        "{response:?}"
    );
    // The same connection still works for a good request.
    let good = store_protocol::encode_frame(
        &Request::Get {
            key: Bytes::from("safe"),
        },
        1 << 16,
    )
    .unwrap();
    let response = send_raw(&connection, &good).await;
    assert!(
        matches!(&response, Response::Value { found: Some(v), .. } if v.value == "yes"),
        "{response:?}"
    );

    // Garbage instead of Hello: the session is refused and the connection closed.
    let rude = raw::connect(&server, true).await.unwrap();
    let (mut send, mut recv) = rude.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 3, 9, 9, 9]).await.unwrap();
    let refused = read_frame::<_, SessionEvent>(&mut recv, 1 << 16)
        .await
        .unwrap();
    assert!(
        matches!(refused, Some(SessionEvent::Refused { .. })),
        "{refused:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(30), rude.closed()).await;
    assert!(
        closed.is_ok(),
        "the server closes a connection whose session it refused"
    );

    // An unknown protocol version is refused with a typed error.
    let old = raw::connect(&server, true).await.unwrap();
    let (mut send, mut recv) = old.open_bi().await.unwrap();
    let hello = SessionRequest::Hello(Hello {
        protocol_version: 99,
        client_id: 1,
        last_seen_tid: store_protocol::Tid::ZERO,
        cached_tid: store_protocol::Tid::ZERO,
        holds_cache: false,
    });
    write_frame(&mut send, &hello, 1 << 16).await.unwrap();
    let refused = read_frame::<_, SessionEvent>(&mut recv, 1 << 16)
        .await
        .unwrap();
    assert!(
        matches!(
            refused,
            Some(SessionEvent::Refused {
                error: WireError::UnsupportedVersion {
                    client: 99,
                    server: PROTOCOL_VERSION
                }
            })
        ),
        "{refused:?}"
    );

    // Everyone else is unaffected.
    assert_eq!(
        bystander.get("safe").await.unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    bystander.put("after", "ok").await.unwrap();
}

#[tokio::test]
async fn wrong_ca_or_missing_client_certificate_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("a")).await;
    // A second server makes a second, unrelated development CA.
    let other = ServerProcess::start(&dir.path().join("b")).await;

    // store-cli trusting the wrong CA: a TLS error, exit 2, well before --timeout.
    let out = std::process::Command::new(store_tests::binary("store-cli"))
        .args(["--server", &server.addr().to_string(), "--timeout", "60s"])
        .arg("--tls-dir")
        .arg(other.tls_dir())
        .args(["get", "k"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");

    // The right CA but a client certificate from another CA: the server refuses it.
    let out = std::process::Command::new(store_tests::binary("store-cli"))
        .args(["--server", &server.addr().to_string(), "--timeout", "60s"])
        .arg("--ca")
        .arg(server.tls_dir().join("ca.pem"))
        .arg("--cert")
        .arg(other.tls_dir().join("client.pem"))
        .arg("--key")
        .arg(other.tls_dir().join("client.key"))
        .args(["get", "k"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");

    // No client certificate at all: the connection is closed with a TLS alert.
    let result = async {
        let connection = raw::connect(&server, false).await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        let hello = SessionRequest::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: 1,
            last_seen_tid: store_protocol::Tid::ZERO,
            cached_tid: store_protocol::Tid::ZERO,
            holds_cache: false,
        });
        let _ = write_frame(&mut send, &hello, 1 << 16).await;
        let _ = read_frame::<_, SessionEvent>(&mut recv, 1 << 16).await;
        Err::<(), _>(connection.closed().await)
    };
    let error = tokio::time::timeout(Duration::from_secs(30), result)
        .await
        .unwrap()
        .unwrap_err();
    let code = match &error {
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        other => panic!("expected a TLS alert, got {other}"),
    };
    assert!(
        (0x100..=0x1ff).contains(&code),
        "TLS alert code, got {error}"
    );

    // The server still serves proper clients.
    server.client().await.put("still", "here").await.unwrap();
}

/// The server's peak resident memory, from /proc.
fn peak_rss_kib(server: &ServerProcess) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", server.pid().unwrap())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The reproduction: a commit of thousands of empty appends to a
/// value near the limit once staged a copy of the value per append
/// (quadratic, 40 GB for this one) and killed the server. One staged value
/// per key makes it a few MiB.
#[tokio::test]
async fn ten_thousand_appends_in_one_commit_cost_one_value_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let client = server.client().await;
    let near_limit = vec![b'x'; 4 * 1024 * 1024 - 64];
    client.put("big", near_limit.clone()).await.unwrap();
    let before = peak_rss_kib(&server);

    let mut txn = client.txn();
    for _ in 0..9_999 {
        txn.append("big", "");
    }
    txn.append("big", "!");
    txn.commit().await.unwrap();
    let value = client.get("big").await.unwrap().unwrap();
    assert_eq!(value.len(), near_limit.len() + 1);

    // Against 40 GB staged before: a generous bound, far from the old cost.
    let grown_mib = peak_rss_kib(&server).saturating_sub(before) / 1024;
    assert!(grown_mib < 256, "peak RSS grew by {grown_mib} MiB");
    // And the server keeps serving.
    client.put("after", "1").await.unwrap();
    client.close().await;
}
