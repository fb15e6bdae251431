//! Certificates: the development CA made on first start, and the client
//! and node certificates it issues (`store-server certs issue`).
//!
//! Two kinds of leaf certificate, told apart by their names (see
//! [`crate::identity`]):
//!
//! * a **node** certificate carries a SAN URI `zeolite-node://ADDR`, where
//!   `ADDR` is the node's `--cluster` address (or the witness's `--listen`),
//!   and allows server and client authentication: it is what data nodes
//!   and the witness present to each other on `zeolite-peer/1`;
//! * a **client** certificate names its identity in its common name and
//!   allows client authentication only; it is refused on `zeolite-peer/1`.
//!
//! Development certificates live a year. The development directory `TLS`
//! is what clients are told to use: `ca.pem` and `client.pem`/`client.key`
//! (the development client). What must never reach a client lives beside
//! it in `TLS-private/` (0700): the CA's key, named by the CA certificate
//! it belongs to (`ca-HASH.key`), `server/` (a standalone server's
//! certificate, server authentication only) and `nodes/HOST_PORT/` (one
//! node certificate per pair member), each made when first needed.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::ServerError;
use crate::tls::TlsFiles;
use store_protocol::identity::NODE_URI_SCHEME;

/// How long a development certificate is valid.
const VALIDITY: time::Duration = time::Duration::days(365);

/// Names the development server certificates are valid for: loopback only.
const DEV_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The kind of certificate to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CertRole {
    /// An application's certificate: its identity is the name.
    Client,
    /// A data node's or witness's certificate: the name is its address.
    Node,
    /// A standalone server's certificate: server authentication only, for
    /// the loopback names and the name given.
    Server,
}

impl CertRole {
    /// The stem of its files (`client.pem`, `node.key`, ...).
    fn stem(self) -> &'static str {
        match self {
            CertRole::Client => "client",
            CertRole::Node => "node",
            CertRole::Server => "server",
        }
    }
}

/// Creates a development CA, a server certificate and a client certificate in
/// `dir` unless `dir/ca.pem` already exists, and the CA's key in
/// `private_dir`.
///
/// The files are made in a sibling temporary directory and renamed into place
/// in one step, so two nodes started at once with the same `--tls-dir` end up
/// sharing one complete set; each CA's key is named by its certificate, so
/// the key of the set that won is the one found.
pub fn ensure_dev_certs(dir: &Path) -> Result<(), ServerError> {
    if dir.join("ca.pem").exists() {
        return Ok(());
    }
    let staging = staging_beside(dir)?;
    let made = write_dev_certs(&staging, &private_dir(dir));
    let ours = made.as_ref().ok().cloned();
    install(made.map(|_| ()), &staging, dir, "ca.pem")?;
    // Another process's set won: our CA's key names nothing installed.
    if let Some(our_key) = ours.filter(|key| Some(key) != ca_key_path(dir).ok().as_ref()) {
        let _ = fs::remove_file(our_key);
    }
    tracing::info!(dir = %dir.display(), "created development CA and certificates");
    Ok(())
}

/// Where the secrets of development directory `dir` live: its sibling
/// `NAME-private`, never inside the directory clients are given.
pub fn private_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "tls".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}-private"))
}

/// The key of the CA whose certificate is `dir/ca.pem`.
fn ca_key_path(dir: &Path) -> Result<PathBuf, ServerError> {
    let ca_pem = read_to_string(&dir.join("ca.pem"))?;
    let named = private_dir(dir).join(ca_key_name(&ca_pem));
    // A development directory from before the private one kept it inside.
    let legacy = dir.join("ca.key");
    Ok(if !named.exists() && legacy.exists() {
        legacy
    } else {
        named
    })
}

fn ca_key_name(ca_pem: &str) -> String {
    format!(
        "ca-{:016x}.key",
        xxhash_rust::xxh3::xxh3_64(ca_pem.as_bytes())
    )
}

/// The `role` certificate of `name` (a node's address, or a standalone
/// server's name) from development directory `dir`, issued from its CA on
/// first use into `private_dir` (`nodes/HOST_PORT/`, or `server/`).
pub fn ensure_dev_cert(dir: &Path, role: CertRole, name: &str) -> Result<TlsFiles, ServerError> {
    ensure_dev_certs(dir)?;
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let own_dir = match role {
        CertRole::Node => private_dir(dir).join("nodes").join(safe),
        CertRole::Server | CertRole::Client => private_dir(dir).join(role.stem()),
    };
    let (cert, key) = (
        own_dir.join(format!("{}.pem", role.stem())),
        own_dir.join(format!("{}.key", role.stem())),
    );
    if !cert.exists() {
        let staging = staging_beside(&own_dir)?;
        let made = issue(dir, name, role, &staging);
        install(
            made.map(|_| ()),
            &staging,
            &own_dir,
            &format!("{}.pem", role.stem()),
        )?;
        tracing::info!(name, dir = %own_dir.display(), "issued a development certificate");
    }
    Ok(TlsFiles {
        ca: dir.join("ca.pem"),
        cert,
        key,
    })
}

/// Issues a `role` certificate for `name` from the development CA of
/// `ca_dir` (its `ca.pem`, and the key in `private_dir`) into `out`:
/// `ca.pem`, and `client.pem`/`client.key` or `node.pem`/`node.key`, so that
/// `out` serves as a client's or node's TLS directory. Refuses to overwrite
/// an existing certificate.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    role: CertRole,
    out: &Path,
) -> Result<PathBuf, ServerError> {
    let ca_pem = read_to_string(&ca_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read_to_string(&ca_key_path(ca_dir)?)?)?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    issue_from(&ca_cert, &ca_key, &ca_pem, name, role, out)
}

fn issue_from(
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
    ca_pem: &str,
    name: &str,
    role: CertRole,
    out: &Path,
) -> Result<PathBuf, ServerError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ServerError::Config(format!(
            "certificate name {name:?} must be 1 to 200 printable characters"
        )));
    }

    let params = match role {
        CertRole::Client => {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params
        }
        CertRole::Server => {
            let mut names: Vec<String> = DEV_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            let mut params = CertificateParams::new(names)?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params
        }
        CertRole::Node => {
            let addr: std::net::SocketAddr = name.parse().map_err(|e| {
                ServerError::Config(format!(
                    "a node certificate names the node's address (ip:port), not {name:?}: {e}"
                ))
            })?;
            let mut names: Vec<String> = DEV_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
            let host = addr.ip().to_string();
            if !names.contains(&host) {
                names.push(host);
            }
            let mut params = CertificateParams::new(names)?;
            params
                .subject_alt_names
                .push(SanType::URI(format!("{NODE_URI_SCHEME}{addr}").try_into()?));
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params
        }
    };
    let stem = role.stem();
    let mut params = params;
    params.distinguished_name.push(DnType::CommonName, name);
    let (pem, key) = sign(params, ca_cert, ca_key)?;
    fs::create_dir_all(out)
        .map_err(|e| ServerError::io(format!("creating {}", out.display()), e))?;
    let cert_path = out.join(format!("{stem}.pem"));
    write_file(&cert_path, pem.as_bytes(), false)?;
    write_file(&out.join(format!("{stem}.key")), key.as_bytes(), true)?;
    if !out.join("ca.pem").exists() {
        write_file(&out.join("ca.pem"), ca_pem.as_bytes(), false)?;
    }
    Ok(cert_path)
}

/// Signs a leaf certificate valid from now for [`VALIDITY`].
fn sign(
    mut params: CertificateParams,
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<(String, String), rcgen::Error> {
    set_validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca_cert, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn set_validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree by minutes.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + VALIDITY;
}

/// Makes a development set in `dir` and its CA's key in `private`;
/// returns the key's path.
fn write_dev_certs(dir: &Path, private: &Path) -> Result<PathBuf, ServerError> {
    fs::create_dir_all(dir)
        .map_err(|e| ServerError::io(format!("creating {}", dir.display()), e))?;
    {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(private)
            .map_err(|e| ServerError::io(format!("creating {}", private.display()), e))?;
    }

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
    set_validity(&mut ca_params);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let key_path = private.join(ca_key_name(&ca_pem));
    write_file(&key_path, ca_key.serialize_pem().as_bytes(), true)?;
    write_file(&dir.join("ca.pem"), ca_pem.as_bytes(), false)?;

    issue_from(
        &ca_cert,
        &ca_key,
        &ca_pem,
        "zeolite-client",
        CertRole::Client,
        dir,
    )?;
    Ok(key_path)
}

/// A fresh staging directory beside `dir`, its parent created.
fn staging_beside(dir: &Path) -> Result<PathBuf, ServerError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)
        .map_err(|e| ServerError::io(format!("creating {}", parent.display()), e))?;
    let name = dir
        .file_name()
        .map_or_else(|| "tls".to_string(), |n| n.to_string_lossy().into_owned());
    Ok(parent.join(format!(".{name}-staging-{}", std::process::id())))
}

/// Renames `staging` (holding what `made` made) to `dir`; another process
/// that installed `dir/marker` first wins.
fn install(
    made: Result<(), ServerError>,
    staging: &Path,
    dir: &Path,
    marker: &str,
) -> Result<(), ServerError> {
    let result = made.and_then(|()| match fs::rename(staging, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.join(marker).exists() => Ok(()),
        Err(e) => Err(ServerError::io(
            format!(
                "installing certificates into {} (is it a non-empty directory without {marker}?)",
                dir.display()
            ),
            e,
        )),
    });
    if staging.exists() {
        let _ = fs::remove_dir_all(staging);
    }
    result
}

fn read_to_string(path: &Path) -> Result<String, ServerError> {
    fs::read_to_string(path).map_err(|e| ServerError::io(format!("reading {}", path.display()), e))
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
