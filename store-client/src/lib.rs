//! # store-client: the Zeolite client library
//!
//! Link it into an application to read and commit versioned keys on a
//! Zeolite store over QUIC with mutual TLS. Start with [`Client::connect`]
//! and a [`ClientConfig`]; write with [`Client::put`] and friends, or build a
//! [`Transaction`] with [`Client::txn`] for read-checked multi-key commits.
//!
//! Every failure is an [`Error`] that says whether a write was applied:
//! definitely not ([`Error::is_not_applied`]) or unknown
//! ([`Error::OutcomeUnknown`], with the transaction's id).
//!
//! Cached reads are served only while the session is proven live: the
//! client pings every second, and a pong proves the server current as of
//! the ping's *send* time for `stale_after` (3 s). The moment that proof
//! lapses, cached values stop being served as fresh, and reads follow the
//! [`ReadPolicy`]: wait for proof (default), fail fast, or answer marked
//! stale. Watch the session with [`Client::watch_session`].
//!
//! The pieces: `session` (the liveness state machine: *is this cached value
//! still safe to serve?*; public as [`Liveness`] for simulations, such as
//! the server's simulation of a pair and its client), `driver` (the task that runs it), `cache`,
//! `retry` (backoff), `client` (the handle), `connection` (one QUIC
//! connection), `txn` (transactions and their ids), `writes` (the
//! [`WritePolicy`]s but `Retry`), `serving` (*may this cached value be
//! served?*), `feed` ([`Client::subscribe`], the change feed), `backup`
//! ([`Client::backup`]), `config`, `tls`,
//! `error`, [`metrics`] (the names it records through the `metrics`
//! facade: cache evictions, session state changes,
//! retries, resolves, unknown outcomes); with the `cli` feature, [`cli`] holds the connection flags
//! shared by `store-cli` and `store-bench`.

mod backup;
mod cache;
#[cfg(feature = "cli")]
pub mod cli;
mod client;
mod config;
mod connection;
mod driver;
mod error;
mod feed;
pub mod metrics;
mod retry;
mod serving;
mod session;
mod tls;
mod txn;
mod writes;

pub use cache::{CacheStats, DEFAULT_CACHE_BYTES};
pub use client::{Client, Read, ScanPage, Source};
pub use config::{
    ClientConfig, ReadPolicy, TlsPaths, WritePolicy, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEP_ALIVE, DEFAULT_READ_WAIT, DEFAULT_SERVER, DEFAULT_TIMEOUT, DEFAULT_TLS_DIR,
};
pub use driver::SessionStatus;
pub use error::Error;
pub use feed::Subscription;
pub use retry::{BACKOFF_BASE, BACKOFF_CAP};
pub use session::{
    Action as SessionAction, Liveness, SessionConfig, SessionState, DEFAULT_EXPIRE_AFTER,
    DEFAULT_IDLE_AFTER, DEFAULT_PING_INTERVAL, DEFAULT_PING_JITTER, DEFAULT_STALE_AFTER,
    SUSPECT_AFTER,
};
pub use store_protocol::feed::{Change, ChangeOp};
pub use store_protocol::{
    Entry, Role, ScanRequest, StatusInfo, Tid, TxnId, Versioned, WireError, WriteResult,
};
pub use txn::{CommitError, CommitOutcome, PreparedTxn, Transaction, MAX_UNRESOLVED};

/// The README's Rust example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;
