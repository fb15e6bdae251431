//! Who is on the other end of a connection: the identity its verified
//! certificate names ([`store_protocol::Identity`]), never a field a
//! message claims; and the admission of node-to-node connections.

use std::net::SocketAddr;

pub use store_protocol::Identity;

use crate::error::ServerError;

/// QUIC close code for a `zeolite-peer/1` connection whose certificate is
/// not a node certificate of this cluster.
pub const CLOSE_NOT_A_NODE: u32 = 3;

/// The identity of a connection's peer, from its verified certificate
/// chain (TLS has already checked it against the CA).
pub fn identity_of(connection: &quinn::Connection) -> Result<Identity, String> {
    let chain = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("the peer presented no certificate")?;
    let leaf = chain.first().ok_or("the peer presented no certificate")?;
    Identity::of_certificate(leaf)
}

/// Refuses to start a pair member or witness at `addr` whose certificate
/// `cert` is not the node certificate of `addr`: a member presenting
/// another's certificate would vote and replicate under its name.
pub fn require_own_node_cert(cert: &std::path::Path, addr: SocketAddr) -> Result<(), ServerError> {
    let certs = store_protocol::pem::load_certs(cert)?;
    let named = certs
        .first()
        .map(|leaf| Identity::of_certificate(leaf))
        .transpose()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?;
    match named {
        Some(Identity::Node(named)) if named == addr => Ok(()),
        other => Err(ServerError::Config(format!(
            "{} names {}, not node {addr}: each member needs its own node certificate \
             (store-server certs issue --role node --name {addr})",
            cert.display(),
            other.map_or_else(|| "nothing".to_string(), |identity| identity.to_string()),
        ))),
    }
}

/// The node `connection`'s certificate names, if it is `expected`; else
/// closes it (an answer from anyone but the node dialed is never heard).
pub fn require_node(connection: &quinn::Connection, expected: SocketAddr) -> Result<(), String> {
    match identity_of(connection) {
        Ok(Identity::Node(addr)) if addr == expected => Ok(()),
        other => {
            connection.close(CLOSE_NOT_A_NODE.into(), b"not the node dialed");
            Err(format!(
                "{} answered as {}, not as node {expected}",
                connection.remote_address(),
                other.map_or_else(|e| e, |identity| identity.to_string())
            ))
        }
    }
}

/// Admits a `zeolite-peer/1` connection only from one of `nodes`: the
/// index of the node its certificate names, or `None` after closing the
/// connection with [`CLOSE_NOT_A_NODE`] (a client's certificate, a node
/// of another cluster, no certificate at all).
pub fn admit_node(connection: &quinn::Connection, nodes: &[SocketAddr]) -> Option<usize> {
    let identity = identity_of(connection);
    let node = identity
        .as_ref()
        .ok()
        .and_then(|identity| identity.node_among(nodes));
    if node.is_none() {
        let who = match &identity {
            Ok(identity) => identity.to_string(),
            Err(e) => e.clone(),
        };
        tracing::warn!(
            remote = %connection.remote_address(),
            %who,
            "peer connection refused: not a node of this cluster"
        );
        connection.close(
            CLOSE_NOT_A_NODE.into(),
            b"zeolite-peer/1 takes only node certificates of this cluster",
        );
    }
    node
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;
    use crate::certs::{issue, CertRole};
    use std::net::SocketAddr;

    fn der_of(pem_path: &std::path::Path) -> Vec<u8> {
        let certs = store_protocol::pem::load_certs(pem_path).expect("load the certificate");
        certs[0].to_vec()
    }

    #[test]
    fn node_and_client_certificates_name_what_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        crate::certs::ensure_dev_certs(&ca).expect("dev CA");
        // The CA's key is never in the directory clients are given.
        assert!(!ca.join("ca.key").exists());
        let private = crate::certs::private_dir(&ca);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&private)
                .expect("private dir")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        let node = issue(&ca, "127.0.0.1:7447", CertRole::Node, &dir.path().join("n"))
            .expect("node certificate");
        let client = issue(&ca, "billing", CertRole::Client, &dir.path().join("c"))
            .expect("client certificate");
        let addr: SocketAddr = "127.0.0.1:7447".parse().expect("address");
        assert_eq!(
            Identity::of_certificate(&der_of(&node)),
            Ok(Identity::Node(addr))
        );
        assert_eq!(
            Identity::of_certificate(&der_of(&client)),
            Ok(Identity::Client("billing".into()))
        );
        // The development client and standalone server are not nodes, and
        // the server's key is not in the directory clients are given.
        let server = crate::certs::ensure_dev_cert(&ca, CertRole::Server, "zeolite-server")
            .expect("server certificate");
        assert!(server.key.starts_with(&private));
        assert!(!ca.join("server.key").exists());
        for cert in [ca.join("client.pem"), server.cert] {
            let identity = Identity::of_certificate(&der_of(&cert)).expect("identity");
            assert!(
                matches!(identity, Identity::Client(_)),
                "{}: {identity}",
                cert.display()
            );
        }
        assert!(issue(&ca, "not-an-address", CertRole::Node, &dir.path().join("x")).is_err());
        assert!(Identity::of_certificate(b"garbage").is_err());
    }
}
