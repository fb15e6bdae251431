//! A raw QUIC peer for protocol-level tests: the real TLS set-up, but frames
//! written by hand.

use std::sync::Arc;

use store_protocol::peer::{PeerRequest, PeerResponse};
use store_protocol::{
    encode_frame, pem, read_frame, write_frame, Hello, Request, Response, SessionEvent,
    SessionRequest, Tid, Welcome, PROTOCOL_VERSION,
};

use crate::ServerProcess;

/// Connects to `server` with its development CA, presenting the development
/// client certificate or none.
pub async fn connect(
    server: &ServerProcess,
    with_client_cert: bool,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let tls_dir = server.tls_dir();
    let identity =
        with_client_cert.then(|| (tls_dir.join("client.pem"), tls_dir.join("client.key")));
    connect_as(server.addr(), &tls_dir, identity, store_protocol::ALPN).await
}

/// Connects to `addr` with the CA in `tls_dir` under application protocol
/// `alpn`, presenting the certificate and key `identity` (or none).
pub async fn connect_as(
    addr: std::net::SocketAddr,
    tls_dir: &std::path::Path,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    alpn: &[u8],
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let builder = rustls::ClientConfig::builder_with_provider(pem::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(pem::load_roots(&tls_dir.join("ca.pem")).expect("ca.pem"));
    let mut tls = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                pem::load_certs(&cert).expect("certificate"),
                pem::load_private_key(&key).expect("private key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC crypto");
    let mut endpoint =
        quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("bind a UDP socket");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
        .connect(addr, "localhost")
        .expect("start connecting")
        .await
}

/// Sends one node-to-node request on a new stream of a `zeolite-peer/1`
/// connection and reads the answer; `Err` says how the connection or
/// stream ended instead.
pub async fn peer_request(
    connection: &quinn::Connection,
    request: &PeerRequest,
) -> Result<PeerResponse, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, request, 1 << 16)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    match read_frame::<_, PeerResponse>(&mut recv, 1 << 16).await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err("the stream ended without an answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits (up to the event deadline) for `connection` to be closed by the
/// server, and returns the application close code it gave.
pub async fn closed_with_code(connection: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(crate::EVENT_DEADLINE, connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
        Ok(other) => panic!("expected the server to close the connection, got {other}"),
        Err(_) => panic!("the server never closed the connection"),
    }
}

/// A `client_id` the development client certificate may use: `low` in the
/// space of its identity, `zeolite-client`.
pub fn dev_client_id(low: u64) -> u128 {
    (u128::from(store_protocol::client_id_space("zeolite-client")) << 64) | u128::from(low)
}

/// Opens the session stream with a valid `Hello` and returns it with the
/// `Welcome`.
pub async fn open_session(
    connection: &quinn::Connection,
) -> (quinn::SendStream, quinn::RecvStream, Welcome) {
    let (mut send, mut recv) = connection.open_bi().await.expect("open the session stream");
    let hello = SessionRequest::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: 7,
        last_seen_tid: Tid::ZERO,
        cached_tid: Tid::ZERO,
        holds_cache: false,
    });
    write_frame(&mut send, &hello, 1 << 16)
        .await
        .expect("send Hello");
    match read_frame::<_, SessionEvent>(&mut recv, 1 << 24).await {
        Ok(Some(SessionEvent::Welcome(welcome))) => (send, recv, welcome),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Sends one request on a new stream and reads its response.
pub async fn request(connection: &quinn::Connection, request: &Request) -> Response {
    let frame = encode_frame(request, 1 << 24).expect("encode the request");
    let (mut send, mut recv) = connection.open_bi().await.expect("open a request stream");
    send.write_all(&frame).await.expect("send the request");
    send.finish().expect("finish the request");
    read_frame(&mut recv, 1 << 24)
        .await
        .expect("read the response")
        .expect("a response frame")
}
