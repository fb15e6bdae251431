//! Client configuration with documented defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default server address.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7447";
/// Default TLS directory: the one `store-server` fills on first start when
/// run with its defaults in the same working directory.
pub const DEFAULT_TLS_DIR: &str = "./zeolite-data/tls";
/// Default bound on one call, retries and reconnects included: long enough
/// to ride out one failover.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default QUIC idle timeout. QUIC uses the lower of both peers' values.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default QUIC keep-alive interval: half the idle timeout, so one lost
/// keep-alive does not end an idle connection.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The PEM files a client presents and trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// CA that signed the server certificates.
    pub ca: PathBuf,
    /// The client certificate (the server requires one).
    pub cert: PathBuf,
    /// The client certificate's private key.
    pub key: PathBuf,
}

impl TlsPaths {
    /// `ca.pem`, `client.pem` and `client.key` inside `dir`.
    pub fn in_dir(dir: impl AsRef<Path>) -> TlsPaths {
        let dir = dir.as_ref();
        TlsPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
        }
    }
}

/// How a [`Client`](crate::Client) connects.
///
/// ```
/// use std::time::Duration;
/// use store_client::ClientConfig;
/// let config = ClientConfig::new(["127.0.0.1:7447"])
///     .tls_dir("./zeolite-data/tls")
///     .timeout(Duration::from_secs(3));
/// assert_eq!(config.servers, ["127.0.0.1:7447"]);
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Servers as `host:port`, tried in order. Default [`DEFAULT_SERVER`].
    pub servers: Vec<String>,
    /// Certificates. Default: those in [`DEFAULT_TLS_DIR`].
    pub tls: TlsPaths,
    /// Bound on one call, reconnects included. Default [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// QUIC idle timeout. Default [`DEFAULT_IDLE_TIMEOUT`]; must exceed
    /// `keep_alive`.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval. Default [`DEFAULT_KEEP_ALIVE`].
    pub keep_alive: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::new([DEFAULT_SERVER])
    }
}

impl ClientConfig {
    /// Defaults, with these servers.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            tls: TlsPaths::in_dir(DEFAULT_TLS_DIR),
            timeout: DEFAULT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keep_alive: DEFAULT_KEEP_ALIVE,
        }
    }

    /// Takes `ca.pem`, `client.pem` and `client.key` from `dir`.
    pub fn tls_dir(mut self, dir: impl AsRef<Path>) -> ClientConfig {
        self.tls = TlsPaths::in_dir(dir);
        self
    }

    /// Sets the bound on one call.
    pub fn timeout(mut self, timeout: Duration) -> ClientConfig {
        self.timeout = timeout;
        self
    }
}
