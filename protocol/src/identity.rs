//! Who a certificate says its holder is: the identity a server acts on,
//! never a field a message claims. Server and client read it the same way.
//!
//! * A **node** certificate carries a SAN URI `zeolite-node://ADDR`; `ADDR`
//!   is the node's `--cluster` address (or the witness's `--listen`).
//! * Any other certificate is a **client**'s; its identity is the first
//!   common name, else the first DNS name, of its subject.
//!
//! Every identity owns a space of transaction ids
//! ([`crate::client_id_space`]) keyed by its [`Identity::name`].

use std::net::SocketAddr;

use x509_parser::extensions::GeneralName;

/// The URI scheme of a node certificate's SAN.
pub const NODE_URI_SCHEME: &str = "zeolite-node://";

/// What a peer's certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A data node or witness, by its address.
    Node(SocketAddr),
    /// An application, by its name.
    Client(String),
}

impl Identity {
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

    /// The name access control and transaction ids are keyed by: a
    /// client's name, or `node:` and a node's address (so no client's
    /// common name can pass for a node's).
    pub fn name(&self) -> String {
        match self {
            Identity::Node(addr) => format!("node:{addr}"),
            Identity::Client(name) => name.clone(),
        }
    }

    /// The node this identity is, if it is one of `nodes`.
    pub fn node_among(&self, nodes: &[SocketAddr]) -> Option<usize> {
        match self {
            Identity::Node(addr) => nodes.iter().position(|n| n == addr),
            Identity::Client(_) => None,
        }
    }
}

/// The upper 64 bits of every `client_id` an identity may use: the first
/// 8 bytes of the SHA-256 of its [`Identity::name`]. A server refuses a
/// commit or resolve whose `client_id` lies outside the space of the
/// certificate that sent it, so no identity can commit, resolve or expire
/// another's transactions (a cryptographic hash: no chosen name lands in
/// another's space); the instances of one identity share it, so `store-cli
/// resolve` works from a new process.
///
/// ```
/// use store_protocol::{client_id_space, space_of};
/// let space = client_id_space("billing");
/// assert_eq!(space_of((u128::from(space) << 64) | 7), space);
/// assert_ne!(client_id_space("reports"), space);
/// ```
pub fn client_id_space(identity: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(addr) => write!(f, "node {addr}"),
            Identity::Client(name) => write!(f, "client {name:?}"),
        }
    }
}
