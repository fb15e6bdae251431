//! TLS: the server's rustls and QUIC configuration with mandatory client
//! certificates (the certificates themselves: [`crate::certs`]).

use std::path::PathBuf;
use std::sync::Arc;

use store_protocol::pem;

use crate::error::ServerError;

/// The PEM files a server presents and trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA whose signature a client certificate must carry.
    pub ca: PathBuf,
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

/// The QUIC server crypto: TLS 1.3 only, the application protocols
/// `alpn`, and a client certificate signed by `files.ca` required on every
/// connection.
pub fn quic_server_crypto(
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, ServerError> {
    let provider = pem::crypto_provider();
    let roots = pem::load_roots(&files.ca)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| ServerError::Tls(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            pem::load_certs(&files.cert)?,
            pem::load_private_key(&files.key)?,
        )?;
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ServerError::Tls(format!("QUIC needs TLS 1.3: {e}")))?;
    Ok(Arc::new(quic))
}
