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
//! The pieces: `config` (defaults), `client` (the handle, reconnects),
//! `connection` (one QUIC connection and its session), `txn` (transactions
//! and their ids), `tls`, `error`; with the `cli` feature, [`cli`] holds the
//! connection flags shared by `store-cli` and `store-bench`.

#[cfg(feature = "cli")]
pub mod cli;
mod client;
mod config;
mod connection;
mod error;
mod tls;
mod txn;

pub use client::{Client, ScanPage};
pub use config::{
    ClientConfig, TlsPaths, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE, DEFAULT_SERVER,
    DEFAULT_TIMEOUT, DEFAULT_TLS_DIR,
};
pub use error::Error;
pub use store_protocol::{
    Entry, Role, ScanRequest, StatusInfo, Tid, TxnId, Versioned, WireError, WriteResult,
};
pub use txn::{CommitOutcome, Transaction};

/// The README's Rust example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;
