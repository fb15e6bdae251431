//! # store-server: the Zeolite store server
//!
//! Serves versioned keys over QUIC with mutual TLS, durably: a commit is
//! acknowledged only once it is fsynced, and concurrent commits share one
//! fsync (group commit).
//!
//! Start at [`Server::bind`] with a [`ServerConfig`]; the binary
//! (`store-server`) only parses [`Cli`] and runs it. The pieces, in the
//! order a commit meets them:
//!
//! * `server`: the QUIC endpoint, connections, drain on shutdown;
//! * `backup`: a consistent copy streamed while serving, and
//!   [`restore`] of one into a new data directory;
//! * `http`: `/metrics`, `/health` and `/ready` for operators, with
//!   `metrics` (every metric's name, the recorder, the scrape);
//! * `streams`: a connection's request-stream window, small while idle;
//! * `feed`: change-feed subscriptions, read from the log; `pacing`: the
//!   frame-by-frame write both it and `backup` use, cutting off a reader
//!   that stalls;
//! * `session`: `Hello`/`Welcome` with cache revalidation, then pings,
//!   pongs and invalidations in TID order;
//! * `request`: one request stream, its bytes reserved (`budget`), limits
//!   and access (`acl`) checked before any work;
//! * `commit`: the group-commit pipeline, and copies of in-flight
//!   transactions waiting for the first;
//! * `outcomes`: exactly-once, *was this transaction already applied?*;
//! * `invalidation`: fan-out of changed keys and the change log;
//! * `storage`: the index (redb tables) and the rules of a commit
//!   (conflicts, `Incr`, `Append`);
//! * `wal`: the write-ahead log every batch is durable in first;
//! * `certs`: the development CA and the client and node certificates it
//!   issues; `identity`: who a connection's certificate says it is;
//! * `tls`: the rustls configuration;
//! * [`pair`]: the HA pair: leases, elections, replication, the witness.
//!
//! ```no_run
//! # async fn run() -> Result<(), store_server::ServerError> {
//! let server = store_server::Server::bind(store_server::ServerConfig::new("./zeolite-data")).await?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

mod acl;
mod backup;
mod budget;
mod certs;
mod cli;
mod commit;
mod config;
mod error;
mod feed;
mod http;
mod identity;
mod invalidation;
mod metrics;
mod outcomes;
mod pacing;
pub mod pair;
mod request;
mod server;
mod session;
pub mod settings;
mod storage;
mod streams;
mod tls;
#[cfg(not(feature = "crash-seam"))]
mod wal;
#[cfg(feature = "crash-seam")]
pub mod wal;

pub use backup::{restore, Restored};
pub use certs::{ensure_dev_certs, issue, CertRole};
pub use cli::{
    CertsCommand, CheckArgs, Cli, Cluster, Command, ConfigCommand, IssueArgs, LogFormat,
    MetricsListen, RestoreArgs, RunArgs, TlsArgs, WitnessArgs,
};
pub use config::{
    ServerConfig, TlsSource, DEFAULT_DATA_DIR, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LISTEN, DEFAULT_MAX_CONNECTION_BYTES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_STREAMS, DEFAULT_METRICS_LISTEN, DEFAULT_OUTCOME_RETENTION, DEFAULT_STALL_TIMEOUT,
};
pub use error::{ServerError, StorageError};
pub use identity::{Identity, CLOSE_NOT_A_NODE};
pub use server::Server;
/// The crash-consistency suite (feature `crash-seam`).
#[cfg(feature = "crash-seam")]
pub use storage::crash;
pub use storage::{check, CheckReport};
pub use tls::TlsFiles;
pub use wal::WalConfig;
