//! TLS: the development CA made on first start, and the server's rustls and
//! QUIC configuration with mandatory client certificates.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
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

impl TlsFiles {
    /// The server's files inside a development TLS directory.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// Names the development certificates are valid for: loopback only.
const DEV_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Creates a development CA, a server certificate and a client certificate in
/// `dir` unless `dir/ca.pem` already exists.
///
/// The files are made in a sibling temporary directory and renamed into place
/// in one step, so two nodes started at once with the same `--tls-dir` end up
/// sharing one complete set.
pub fn ensure_dev_certs(dir: &Path) -> Result<(), ServerError> {
    if dir.join("ca.pem").exists() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)
        .map_err(|e| ServerError::io(format!("creating {}", parent.display()), e))?;
    let staging = parent.join(format!(".tls-staging-{}", std::process::id()));
    write_dev_certs(&staging)?;
    match fs::rename(&staging, dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "created development CA and certificates");
            Ok(())
        }
        // Another node won the race, or the directory holds other files.
        Err(_) if dir.join("ca.pem").exists() => {
            let _ = fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(ServerError::io(
                format!(
                    "installing development certificates into {} (is it a non-empty directory without ca.pem?)",
                    dir.display()
                ),
                e,
            ))
        }
    }
}

fn write_dev_certs(dir: &Path) -> Result<(), ServerError> {
    fs::create_dir_all(dir)
        .map_err(|e| ServerError::io(format!("creating {}", dir.display()), e))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Zeolite development CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let leaf = |names: Vec<String>, cn: &str, usages: &[ExtendedKeyUsagePurpose]| {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
    };
    let names = DEV_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    // Data nodes of a pair also present their certificate as clients.
    let (server_pem, server_key) = leaf(
        names,
        "zeolite-server",
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (client_pem, client_key) = leaf(
        vec!["zeolite-client".to_string()],
        "zeolite-client",
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;

    write_file(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), false)?;
    write_file(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), true)?;
    write_file(&dir.join("server.pem"), server_pem.as_bytes(), false)?;
    write_file(&dir.join("server.key"), server_key.as_bytes(), true)?;
    write_file(&dir.join("client.pem"), client_pem.as_bytes(), false)?;
    write_file(&dir.join("client.key"), client_key.as_bytes(), true)?;
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), ServerError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| ServerError::io(format!("creating {}", path.display()), e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| ServerError::io(format!("writing {}", path.display()), e))
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
