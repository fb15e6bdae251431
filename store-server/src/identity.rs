//! Who is on the other end of a connection: the identity its verified
//! certificate names, never a field a message claims.
//!
//! * A **node** certificate carries a SAN URI `zeolite-node://ADDR`; `ADDR`
//!   is the node's `--cluster` address (or the witness's `--listen`).
//! * Any other certificate is a **client**'s; its identity is the first
//!   common name, else the first DNS name, of its subject.

use std::net::SocketAddr;

use x509_parser::extensions::GeneralName;

/// The URI scheme of a node certificate's SAN.
pub const NODE_URI_SCHEME: &str = "zeolite-node://";

/// QUIC close code for a `zeolite-peer/1` connection whose certificate is
/// not a node certificate of this cluster.
pub const CLOSE_NOT_A_NODE: u32 = 3;

/// What a peer's certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A data node or witness, by its address.
    Node(SocketAddr),
    /// An application, by its name.
    Client(String),
}

impl Identity {
    /// The identity of a connection's peer, from its verified certificate
    /// chain (TLS has already checked it against the CA).
    pub fn of(connection: &quinn::Connection) -> Result<Identity, String> {
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

    /// The identity a DER certificate names.
    pub fn of_certificate(der: &[u8]) -> Result<Identity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| format!("the certificate's names do not parse: {e}"))?;
        let names = sans.map(|ext| &ext.value.general_names[..]).unwrap_or(&[]);
        for name in names {
            if let GeneralName::URI(uri) = name {
                if let Some(addr) = uri.strip_prefix(NODE_URI_SCHEME) {
                    return addr
                        .parse()
                        .map(Identity::Node)
                        .map_err(|e| format!("node certificate names {addr:?}: {e}"));
                }
            }
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());
        let dns_name = names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        });
        common_name
            .or(dns_name)
            .filter(|name| !name.is_empty())
            .map(|name| Identity::Client(name.to_string()))
            .ok_or_else(|| "the certificate names no identity (no CN or DNS name)".to_string())
    }

    /// The node this identity is, if it is one of `nodes`.
    pub fn node_among(&self, nodes: &[SocketAddr]) -> Option<usize> {
        match self {
            Identity::Node(addr) => nodes.iter().position(|n| n == addr),
            Identity::Client(_) => None,
        }
    }
}

/// Admits a `zeolite-peer/1` connection only from one of `nodes`: the
/// index of the node its certificate names, or `None` after closing the
/// connection with [`CLOSE_NOT_A_NODE`] (a client's certificate, a node
/// of another cluster, no certificate at all).
pub fn admit_node(connection: &quinn::Connection, nodes: &[SocketAddr]) -> Option<usize> {
    let identity = Identity::of(connection);
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

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(addr) => write!(f, "node {addr}"),
            Identity::Client(name) => write!(f, "client {name:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;
    use crate::certs::{issue, CertRole};

    fn der_of(pem_path: &std::path::Path) -> Vec<u8> {
        let certs = store_protocol::pem::load_certs(pem_path).expect("load the certificate");
        certs[0].to_vec()
    }

    #[test]
    fn node_and_client_certificates_name_what_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        crate::certs::ensure_dev_certs(&ca).expect("dev CA");
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
        // The development client and standalone server are not nodes.
        for file in ["client.pem", "server.pem"] {
            let identity = Identity::of_certificate(&der_of(&ca.join(file))).expect("identity");
            assert!(
                matches!(identity, Identity::Client(_)),
                "{file}: {identity}"
            );
        }
        assert!(issue(&ca, "not-an-address", CertRole::Node, &dir.path().join("x")).is_err());
        assert!(Identity::of_certificate(b"garbage").is_err());
    }
}
