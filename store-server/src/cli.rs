//! The `store-server` command line (DESIGN §8).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use store_protocol::Limits;

use crate::config::{ServerConfig, TlsSource, DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use crate::tls::TlsFiles;

/// Zeolite store server: durable versioned keys over QUIC.
#[derive(Debug, Parser)]
#[command(name = "store-server", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to run; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run`, accepted without the subcommand.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a data node (the default).
    Run(RunArgs),
}

/// Flags of `store-server run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Data directory, created on first start.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// UDP address to listen on.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Development TLS directory (default DATA/tls): a CA and certificates
    /// are generated there on first start. Ignored with --ca/--cert/--key.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// CA certificate (PEM) that client certificates must be signed by.
    #[arg(long, value_name = "PEM", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// Server certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
    /// Largest key in bytes.
    #[arg(long, default_value_t = Limits::default().max_key_bytes)]
    pub max_key_bytes: u32,
    /// Largest value in bytes.
    #[arg(long, default_value_t = Limits::default().max_value_bytes)]
    pub max_value_bytes: u32,
    /// Largest frame in bytes; must exceed the largest value plus its key.
    #[arg(long, default_value_t = Limits::default().max_frame_bytes)]
    pub max_frame_bytes: u32,
    /// Most reads plus writes in one transaction.
    #[arg(long, default_value_t = Limits::default().max_ops_per_txn)]
    pub max_txn_ops: u32,
    /// How long an unacknowledged transaction outcome is kept for retries
    /// (e.g. 24h, 30m); a later retry is refused as expired.
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_duration)]
    pub outcome_retention: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 30m, 24h)"))
}

impl RunArgs {
    /// The configuration these flags describe, or why they are inconsistent.
    pub fn into_config(self) -> Result<ServerConfig, String> {
        let limits = Limits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_ops_per_txn: self.max_txn_ops,
        };
        let envelope = 64 * 1024;
        if u64::from(limits.max_frame_bytes)
            < u64::from(limits.max_value_bytes) + u64::from(limits.max_key_bytes) + envelope
        {
            return Err(format!(
                "--max-frame-bytes ({}) must exceed --max-value-bytes + --max-key-bytes + {envelope}",
                limits.max_frame_bytes
            ));
        }
        let mut config = ServerConfig::new(self.data_dir);
        config.listen = self.listen;
        config.limits = limits;
        config.outcome_retention = self.outcome_retention;
        config.tls = match (self.ca, self.cert, self.key) {
            (Some(ca), Some(cert), Some(key)) => TlsSource::Files(TlsFiles { ca, cert, key }),
            _ => match self.tls_dir {
                Some(dir) => TlsSource::DevDir(dir),
                None => config.tls,
            },
        };
        Ok(config)
    }
}
