//! Loading PEM files for mutual TLS: one place for server, client and tests.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file is missing, unreadable, or holds no usable PEM item.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// A CA certificate that rustls refuses as a trust anchor.
    #[error("{path}: not a usable CA certificate: {detail}")]
    BadCa {
        /// The file.
        path: String,
        /// What rustls said.
        detail: String,
    },
}

fn file_error(path: &Path, detail: impl ToString) -> PemError {
    PemError::File {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Reads every certificate of a PEM file (a leaf first, then its chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// Builds a root store that trusts exactly the certificates of `ca_path`.
pub fn load_roots(ca_path: &Path) -> Result<Arc<rustls::RootCertStore>, PemError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_path)? {
        roots.add(cert).map_err(|e| PemError::BadCa {
            path: ca_path.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// The one crypto provider Zeolite uses: *ring*.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
