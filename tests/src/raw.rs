//! A raw QUIC peer for protocol-level tests: the real TLS set-up, but frames
//! written by hand.

use std::sync::Arc;

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
    let builder = rustls::ClientConfig::builder_with_provider(pem::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(pem::load_roots(&tls_dir.join("ca.pem")).expect("ca.pem"));
    let mut tls = if with_client_cert {
        builder
            .with_client_auth_cert(
                pem::load_certs(&tls_dir.join("client.pem")).expect("client.pem"),
                pem::load_private_key(&tls_dir.join("client.key")).expect("client.key"),
            )
            .expect("client certificate")
    } else {
        builder.with_no_client_auth()
    };
    tls.alpn_protocols = vec![store_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC crypto");
    let mut endpoint =
        quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("bind a UDP socket");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
        .connect(server.addr(), "localhost")
        .expect("start connecting")
        .await
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
