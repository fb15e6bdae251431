//! The client's rustls and QUIC configuration.

use std::sync::Arc;

use store_protocol::pem;

use crate::config::{ClientConfig, TlsPaths};
use crate::error::Error;

/// The QUIC client configuration: TLS 1.3, ALPN `zeolite/1`, trusting only
/// the configured CA and presenting the client certificate.
pub(crate) fn quic_client_config(config: &ClientConfig) -> Result<quinn::ClientConfig, Error> {
    let crypto = rustls_config(&config.tls)?;
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| Error::Config {
            detail: format!("QUIC needs TLS 1.3: {e}"),
        })?;
    let mut transport = quinn::TransportConfig::default();
    let idle = config.idle_timeout.try_into().map_err(|_| Error::Config {
        detail: "idle timeout out of range".into(),
    })?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive));
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

fn rustls_config(paths: &TlsPaths) -> Result<rustls::ClientConfig, Error> {
    let config_error = |e: pem::PemError| {
        Error::Config {
        detail: format!("{e} (start the server once to generate development certificates, or pass --tls-dir / --ca --cert --key)"),
    }
    };
    let roots = pem::load_roots(&paths.ca).map_err(config_error)?;
    let certs = pem::load_certs(&paths.cert).map_err(config_error)?;
    let key = pem::load_private_key(&paths.key).map_err(config_error)?;
    let tls_error = |e: rustls::Error| Error::Config {
        detail: format!("TLS configuration: {e}"),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(pem::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![store_protocol::ALPN.to_vec()];
    Ok(tls)
}

/// This instance's `client_id`: `instance` (random if `None`) inside the
/// space of the identity its certificate names
/// ([`store_protocol::client_id_space`]), the only space a server lets it
/// commit or resolve in.
pub(crate) fn client_id(paths: &TlsPaths, instance: Option<u64>) -> Result<u128, Error> {
    let certs = pem::load_certs(&paths.cert).map_err(|e| Error::Config {
        detail: e.to_string(),
    })?;
    let leaf = certs.first().ok_or_else(|| Error::Config {
        detail: format!("{}: no certificate", paths.cert.display()),
    })?;
    let identity =
        store_protocol::Identity::of_certificate(leaf).map_err(|detail| Error::Config {
            detail: format!("{}: {detail}", paths.cert.display()),
        })?;
    let space = store_protocol::client_id_space(&identity.name());
    let instance = instance.unwrap_or_else(rand::random::<u64>);
    Ok((u128::from(space) << 64) | u128::from(instance))
}

/// True when a connection ended because of a TLS alert (codes 0x100–0x1ff):
/// a certificate problem that retrying cannot fix.
pub(crate) fn is_tls_failure(error: &quinn::ConnectionError) -> bool {
    let code = match error {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        _ => return false,
    };
    (0x100..=0x1ff).contains(&code)
}
