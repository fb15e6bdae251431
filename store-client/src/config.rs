//! Client configuration with documented defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::DEFAULT_CACHE_BYTES;
use crate::session::SessionConfig;

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
/// Default bound on one dial attempt (connect, TLS, `Hello`/`Welcome`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait of [`ReadPolicy::Wait`]: long enough to ride out one failover.
pub const DEFAULT_READ_WAIT: Duration = Duration::from_secs(10);

/// What a read does while the session is not `Live` (DESIGN §5).
///
/// ```
/// use std::time::Duration;
/// use store_client::ReadPolicy;
/// assert_eq!(ReadPolicy::default(), ReadPolicy::Wait(Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Ping at once and wait up to this long for proof, then read; fail
    /// with [`Error::Unavailable`](crate::Error::Unavailable) if none comes.
    Wait(Duration),
    /// Fail at once with [`Error::SessionStale`](crate::Error::SessionStale).
    FailFast,
    /// Answer with the last value this client knew (cached, or from the
    /// server if it still answers), always marked stale.
    AllowStale,
}

impl Default for ReadPolicy {
    fn default() -> Self {
        ReadPolicy::Wait(DEFAULT_READ_WAIT)
    }
}

/// What a write does about its answer: the three philosophies of the
/// MeeGo report, chosen per client ([`ClientConfig::write_policy`]) or per
/// call ([`Client::with_write_policy`](crate::Client::with_write_policy)).
/// Every policy sends a transaction under one id, so none applies it twice.
///
/// ```
/// use store_client::WritePolicy;
/// assert_eq!(WritePolicy::default(), WritePolicy::Retry);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Wait and retry: resend the same bytes through reconnects and
    /// failovers until the call's deadline; if a copy may have arrived and
    /// no answer came, ask the server (`resolve`) before reporting
    /// [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown). The answer
    /// is definite whenever a server can be reached in time.
    #[default]
    Retry,
    /// Give up and report: refused at once, nothing sent
    /// ([`Error::SessionStale`](crate::Error::SessionStale)), while the
    /// session is not proven live; otherwise sent once, and answered
    /// within one attempt (a round trip, bounded by `stale_after`). A
    /// refusal before any decision (not primary, shutting down,
    /// overloaded) is [`Error::Unavailable`](crate::Error::Unavailable),
    /// not applied; no answer is `OutcomeUnknown`, with no resend and no
    /// `resolve` (call [`Client::resolve`](crate::Client::resolve) or
    /// [`Client::recommit`](crate::Client::recommit) yourself).
    FailFast,
    /// Guarantee nothing: handed to the live session's connection and
    /// returned at once ([`CommitOutcome::confirmed`](crate::CommitOutcome)
    /// is false, with no TID). Applied at most once, never twice: it is
    /// never resent. Its answer, when it comes, is only counted
    /// (`zeolite_client_unconfirmed_failures_total` for a failure), and a
    /// read may not see it yet. Refused at once while the session is not
    /// live, as `FailFast`. Until its answer comes (or the call's timeout
    /// passes) it holds one of the client's
    /// [`MAX_UNRESOLVED`](crate::MAX_UNRESOLVED) transaction slots, so
    /// with that many unanswered the next write waits for one.
    Unconfirmed,
}

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
    /// Bound on one dial attempt. Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Heartbeat timing: ping interval, `stale_after`, expiry.
    pub session: SessionConfig,
    /// What reads (and writes) do while the session is not `Live`.
    /// Writes never go out on a stale session: `AllowStale` waits for them.
    pub read_policy: ReadPolicy,
    /// What writes do about their answers. Default [`WritePolicy::Retry`].
    pub write_policy: WritePolicy,
    /// Cache budget in bytes. Default [`DEFAULT_CACHE_BYTES`] (256 MiB).
    /// The cache is split in up to 32 shards of at least 8 MiB; a value
    /// larger than one shard's share is read through, never cached.
    pub cache_bytes: u64,
    /// How long a cached value may be served, a second bound beside the
    /// session's proof: an entry older than this is read from the server
    /// again even while the session is live. Default `None`: entries live
    /// until invalidated or evicted (invalidations keep them current).
    pub cache_ttl: Option<Duration>,
    /// Keys under these prefixes are never cached: every read of them asks
    /// the server (for values read once, or too large or hot to keep).
    /// Default: none.
    pub never_cache: Vec<bytes::Bytes>,
    /// Open a session with whichever server welcomes the client, primary
    /// or not, and stay with it: for `status` or `promote` of one chosen
    /// node of a pair. Default `false`: only a primary (or a standalone
    /// server) is followed, and a client leaves a server that stops
    /// being primary.
    pub any_role: bool,
    /// The local address the client's UDP socket binds to. Default `None`:
    /// any address of the servers' family, an ephemeral port (a fixed one
    /// suits a firewall rule, or a test that cuts this client off).
    pub local_addr: Option<std::net::SocketAddr>,
    /// The low 64 bits of this client's transaction ids (the high 64 are
    /// its certificate's space). Default `None`: random, a new instance
    /// each start. A process that must resend the same transactions after
    /// a restart (same ids, in the same order, with the same content, as
    /// `store-cli load` does) fixes it, and each is applied once. Two
    /// clients alive at once must never share one.
    pub instance_id: Option<u64>,
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
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            session: SessionConfig::default(),
            read_policy: ReadPolicy::default(),
            write_policy: WritePolicy::default(),
            any_role: false,
            cache_bytes: DEFAULT_CACHE_BYTES,
            cache_ttl: None,
            never_cache: Vec::new(),
            local_addr: None,
            instance_id: None,
        }
    }

    /// Checks how the settings interact.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("no server configured".into());
        }
        if self.keep_alive >= self.idle_timeout {
            return Err(format!(
                "keep-alive {:?} must be shorter than the idle timeout {:?}",
                self.keep_alive, self.idle_timeout
            ));
        }
        self.session.validate()
    }

    /// Defaults, with the servers and TLS directory of the environment as
    /// `store-cli` reads them: `ZEOLITE_SERVERS` (comma-separated, default
    /// [`DEFAULT_SERVER`]) and `ZEOLITE_TLS_DIR` (default
    /// [`DEFAULT_TLS_DIR`]).
    ///
    /// ```
    /// let config = store_client::ClientConfig::from_env();
    /// assert!(!config.servers.is_empty());
    /// ```
    pub fn from_env() -> ClientConfig {
        let servers = std::env::var("ZEOLITE_SERVERS").unwrap_or_else(|_| DEFAULT_SERVER.into());
        let servers: Vec<String> = servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let config = if servers.is_empty() {
            ClientConfig::default()
        } else {
            ClientConfig::new(servers)
        };
        match std::env::var_os("ZEOLITE_TLS_DIR") {
            Some(dir) => config.tls_dir(PathBuf::from(dir)),
            None => config,
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

    /// Serves a cached value for at most `ttl` after it was read.
    pub fn cache_ttl(mut self, ttl: Duration) -> ClientConfig {
        self.cache_ttl = Some(ttl);
        self
    }

    /// Never caches keys starting with `prefix`.
    pub fn never_cache(mut self, prefix: impl Into<bytes::Bytes>) -> ClientConfig {
        self.never_cache.push(prefix.into());
        self
    }
}
