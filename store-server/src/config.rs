//! What a server needs to start: where its data lives, where it listens,
//! which certificates it uses, and its limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use store_protocol::Limits;

use crate::certs::CertRole;
use crate::error::ServerError;
use crate::pair::PairConfig;
use crate::tls::TlsFiles;
use crate::wal::WalConfig;

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./zeolite-data";
/// Default listen address: loopback only, so a development server is never
/// reachable from the network by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7447";
/// Default address of the metrics and health listener (HTTP).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9447";
/// How long a connection may be silent before it is dropped. Clients ask for
/// 10 s; QUIC uses the lower of the two, so this only bounds peers that ask
/// for more (or nothing).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM waits for in-flight requests before closing connections.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a transaction's outcome is kept when its client never
/// acknowledges it (DESIGN §6): a retry later than this gets `Expired`.
pub const DEFAULT_OUTCOME_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Default time a change-feed subscriber (or a backup's reader) may take
/// nothing before it is cut off: the server never buffers for it.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates a data directory readable by its owner only (0700), or checks
/// that an existing one is a directory.
pub(crate) fn create_data_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ServerError::io(format!("creating data dir {}", dir.display()), e))
}

/// Default most client sessions (and connections) at once.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Default most request streams a client may have open at once on one
/// connection.
pub const DEFAULT_MAX_STREAMS: u32 = 256;
/// Default most bytes a client may have in flight to the server on one
/// connection (its QUIC receive window): two full frames.
pub const DEFAULT_MAX_CONNECTION_BYTES: u64 = 16 * 1024 * 1024;

/// Default most bytes of request frames held at once over all connections.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1024 * 1024 * 1024;

/// Where the server's certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A development TLS directory, filled with a fresh CA and certificates
    /// on first start if it holds no `ca.pem`.
    DevDir(PathBuf),
    /// Certificates supplied by the operator; nothing is generated.
    Files(TlsFiles),
}

impl TlsSource {
    /// The files a standalone server presents, made first in a
    /// development directory.
    pub fn server_files(&self) -> Result<TlsFiles, ServerError> {
        match self {
            TlsSource::DevDir(dir) => {
                crate::certs::ensure_dev_cert(dir, CertRole::Server, "zeolite-server")
            }
            TlsSource::Files(files) => Ok(files.clone()),
        }
    }

    /// The files a pair member or witness at `addr` presents: a node
    /// certificate naming `addr`, issued first in a development directory.
    pub fn node_files(&self, addr: SocketAddr) -> Result<TlsFiles, ServerError> {
        match self {
            TlsSource::DevDir(dir) => {
                crate::certs::ensure_dev_cert(dir, CertRole::Node, &addr.to_string())
            }
            TlsSource::Files(files) => Ok(files.clone()),
        }
    }
}

/// A server's configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory holding `store.redb` and the log `wal/` (created if
    /// missing).
    pub data_dir: PathBuf,
    /// UDP address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Certificates.
    pub tls: TlsSource,
    /// Size limits enforced on every request.
    pub limits: Limits,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// See [`DEFAULT_OUTCOME_RETENTION`].
    pub outcome_retention: Duration,
    /// See [`DEFAULT_STALL_TIMEOUT`].
    pub stall_timeout: Duration,
    /// Where `/metrics`, `/health` and `/ready` are served over HTTP;
    /// `None`: nowhere. See [`DEFAULT_METRICS_LISTEN`].
    pub metrics_listen: Option<SocketAddr>,
    /// Membership of an HA pair; `None` for a standalone server.
    pub pair: Option<PairConfig>,
    /// A pair member with an empty store may join as a backup (`--join`).
    pub join: bool,
    /// Access rules (`--acl`); `None`: every certificate is `admin`.
    pub acl: Option<PathBuf>,
    /// See [`DEFAULT_MAX_SESSIONS`]; past it a session is refused with
    /// `Overloaded` (clients retry with backoff).
    pub max_sessions: usize,
    /// See [`DEFAULT_MAX_STREAMS`].
    pub max_streams: u32,
    /// See [`DEFAULT_MAX_CONNECTION_BYTES`].
    pub max_connection_bytes: u64,
    /// See [`DEFAULT_MAX_REQUEST_BYTES`].
    pub max_request_bytes: u64,
    /// The write-ahead log's segment size, checkpoint interval and
    /// retention.
    pub wal: WalConfig,
}

impl ServerConfig {
    /// The defaults for a data directory: listen on [`DEFAULT_LISTEN`],
    /// development certificates in `DATA/tls`, default limits.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        let data_dir = data_dir.into();
        ServerConfig {
            tls: TlsSource::DevDir(data_dir.join("tls")),
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], store_protocol::DEFAULT_PORT)),
            limits: Limits::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            outcome_retention: DEFAULT_OUTCOME_RETENTION,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            metrics_listen: None,
            pair: None,
            join: false,
            acl: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_streams: DEFAULT_MAX_STREAMS,
            max_connection_bytes: DEFAULT_MAX_CONNECTION_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            wal: WalConfig::default(),
        }
    }
}
