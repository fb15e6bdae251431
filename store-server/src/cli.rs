//! The `store-server` command line (DESIGN §8).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use store_protocol::Limits;

use crate::config::{ServerConfig, TlsSource, DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use crate::pair::witness::WitnessConfig;
use crate::pair::{LeaseConfig, PairConfig};
use crate::tls::TlsFiles;
use crate::wal::WalConfig;

/// The smallest `--wal-segment-bytes`: a segment holds a header and records.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

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
    /// Log lines on stderr: `text` for people, `json` (one object per
    /// line: timestamp, level, target, fields, span) for collectors.
    #[arg(long, value_enum, global = true, default_value = "text")]
    pub log_format: LogFormat,
    /// Settings file (TOML, keys named as the flags: `max-sessions =
    /// 100`). Flags win over `ZEOLITE_…` variables, which win over the
    /// file, which wins over the defaults; an unknown key is an error.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
// Parsed once at start: the size of `run`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run a data node (the default).
    Run(RunArgs),
    /// Run the witness of an HA pair: the third vote, holding no data.
    Witness(WitnessArgs),
    /// Manage certificates of the development CA.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Check a data directory's store without serving it: exit 0 when
    /// sound, else 1 with what is wrong.
    Check(CheckArgs),
    /// Settings: `config print` shows the effective ones.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make a new data directory from a `store-cli backup` file: checked
    /// whole before it is kept, under a new cluster id unless told
    /// otherwise. A directory that already holds a store is refused.
    Restore(RestoreArgs),
}

/// Flags of `store-server restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file (`store-cli backup FILE`).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The data directory to make: it may exist (say, holding `tls/`) but
    /// must hold no store.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Keep the backed-up store's cluster id, so that it may rejoin the
    /// witness and pair it came from (by default a restored store is a new
    /// cluster, refused by the old pair's witness).
    #[arg(long)]
    pub keep_cluster_id: bool,
}

/// `store-server config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the settings `run` would use with these flags, environment
    /// and `--config` file, one `key = value  # source` line each.
    Print(RunArgs),
}

/// Flags of `store-server check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The data directory (a stopped server's).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// `store-server certs …`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Issue a client or node certificate from the development CA into
    /// `--out` (`ca.pem` plus `client.pem`/`client.key` or
    /// `node.pem`/`node.key`), valid for a year.
    Issue(IssueArgs),
}

/// Flags of `store-server certs issue`.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// A client's identity (what `--acl` names), or a node's address
    /// (`ip:port`, its `--cluster` address or the witness's `--listen`).
    #[arg(long)]
    pub name: String,
    /// `client` for an application, `node` for a data node or witness.
    #[arg(long, value_enum)]
    pub role: crate::certs::CertRole,
    /// Directory to write the certificate into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The development TLS directory holding `ca.pem` and `ca.key`.
    #[arg(long, value_name = "DIR", default_value = "./zeolite-data/tls")]
    pub tls_dir: PathBuf,
}

/// Flags of `store-server witness`.
#[derive(Debug, Clone, Args)]
pub struct WitnessArgs {
    /// Data directory for the witness's votes, created on first start.
    #[arg(long, value_name = "DIR", default_value = "./zeolite-witness")]
    pub data_dir: PathBuf,
    /// UDP address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The two data nodes, first the one that starts as primary.
    #[arg(long, value_name = "A1,A2", value_parser = parse_cluster)]
    pub cluster: Cluster,
    /// Lease duration; must match the data nodes'.
    #[arg(long, value_name = "DUR", default_value = "1200ms", value_parser = parse_duration)]
    pub lease: Duration,
    /// Certificates.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Certificate flags shared by data nodes and the witness.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Development TLS directory (default DATA/tls): a CA and certificates
    /// are generated there on first start. Ignored with --ca/--cert/--key.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// CA certificate (PEM) that peer certificates must be signed by.
    #[arg(long, value_name = "PEM", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// This node's certificate chain (PEM); in a pair it must allow both
    /// server and client authentication.
    #[arg(long, value_name = "PEM", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
}

impl TlsArgs {
    fn source(self, default: TlsSource) -> TlsSource {
        match (self.ca, self.cert, self.key) {
            (Some(ca), Some(cert), Some(key)) => TlsSource::Files(TlsFiles { ca, cert, key }),
            _ => self.tls_dir.map_or(default, TlsSource::DevDir),
        }
    }
}

/// The two data nodes of a pair, as `A1,A2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster(pub [SocketAddr; 2]);

fn parse_cluster(text: &str) -> Result<Cluster, String> {
    let addrs: Vec<SocketAddr> = text
        .split(',')
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|e| format!("{a:?} is not an address (ip:port): {e}"))
        })
        .collect::<Result<_, _>>()?;
    match addrs[..] {
        [a, b] if a != b => Ok(Cluster([a, b])),
        _ => Err("expected two different addresses, A1,A2".into()),
    }
}

impl WitnessArgs {
    /// The witness configuration these flags describe.
    pub fn into_config(self) -> WitnessConfig {
        let default = TlsSource::DevDir(self.data_dir.join("tls"));
        WitnessConfig {
            listen: self.listen,
            cluster: self.cluster.0,
            tls: self.tls.source(default),
            lease: lease_config(self.lease),
            data_dir: self.data_dir,
        }
    }
}

fn lease_config(duration: Duration) -> LeaseConfig {
    let defaults = LeaseConfig::default();
    let scale = duration.as_secs_f64() / defaults.duration.as_secs_f64();
    LeaseConfig {
        duration,
        renew_every: defaults.renew_every.mul_f64(scale),
        replication_timeout: defaults.replication_timeout.mul_f64(scale),
        ..defaults
    }
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
    /// Certificates.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The two data nodes of an HA pair, `A1,A2` (this node's --listen is
    /// one of them; A1 starts as primary on a fresh cluster).
    #[arg(long, value_name = "A1,A2", value_parser = parse_cluster, requires = "witness")]
    pub cluster: Option<Cluster>,
    /// The pair's witness (`store-server witness`).
    #[arg(long, value_name = "ADDR", requires = "cluster")]
    pub witness: Option<SocketAddr>,
    /// Where to reach the other data node, if not at its --cluster address
    /// (a proxy or NAT in between).
    #[arg(long, value_name = "ADDR", requires = "cluster")]
    pub peer_address: Option<SocketAddr>,
    /// Start a pair member whose store is empty although the cluster knows
    /// it (its data was lost): it joins as a backup and copies the
    /// primary's store. Harmless on a store that is not empty.
    #[arg(long, requires = "cluster")]
    pub join: bool,
    /// Lease duration in a pair: a dead primary is replaced about this long
    /// after its last renewal (renewals every lease/8).
    #[arg(long, value_name = "DUR", default_value = "1200ms", value_parser = parse_duration)]
    pub lease: Duration,
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
    /// Most bytes of new values one transaction may create, each written
    /// key's final value counted once (an append counts the whole value).
    #[arg(long, default_value_t = Limits::default().max_txn_bytes)]
    pub max_txn_bytes: u32,
    /// Most client sessions at once; past it a session is refused as
    /// overloaded and its client retries with backoff.
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,
    /// Most request streams one client connection may have open at once.
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_STREAMS)]
    pub max_streams: u32,
    /// Most bytes one client connection may have in flight to the server,
    /// and held in memory as requests; at least --max-frame-bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::config::DEFAULT_MAX_CONNECTION_BYTES)]
    pub max_connection_bytes: u64,
    /// Most bytes of requests held in memory over all connections; at
    /// least --max-frame-bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::config::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: u64,
    /// Threads serving the network: 1 (the default) keeps every
    /// connection's work on one thread, the shortest request path; more
    /// spread TLS and QUIC work over cores on a bigger machine. The
    /// committer and checkpointer have threads of their own either way.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub io_threads: u16,
    /// Bytes of one write-ahead log segment (preallocated when made).
    #[arg(long, value_name = "BYTES", default_value_t = WalConfig::default().segment_bytes)]
    pub wal_segment_bytes: u64,
    /// Log bytes after which the index is made durable (a checkpoint): a
    /// restart replays at most about this much.
    #[arg(long, value_name = "BYTES", default_value_t = WalConfig::default().checkpoint_bytes)]
    pub checkpoint_bytes: u64,
    /// Log bytes kept past a checkpoint, for a restarted backup to catch up
    /// from, for clients to revalidate their caches from, and for change
    /// feeds to start from.
    #[arg(long, value_name = "BYTES", default_value_t = WalConfig::default().retain_bytes)]
    pub wal_retain_bytes: u64,
    /// How long a full log segment is kept past a checkpoint (counted from
    /// when it filled, or from the last start); the log is bounded by this
    /// and by --wal-retain-bytes, whichever retires a segment first.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub wal_retain_age: Duration,
    /// Access rules (TOML): identities (client certificate names) → role
    /// (read, readwrite, admin) and key prefixes. Without it every
    /// certificate of the CA is admin.
    #[arg(long, value_name = "FILE")]
    pub acl: Option<PathBuf>,
    /// How long an unacknowledged transaction outcome is kept for retries
    /// (e.g. 24h, 30m); a later retry is refused as expired.
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_duration)]
    pub outcome_retention: Duration,
    /// How long a change-feed subscriber or a backup's reader may take
    /// nothing before it is cut off (the server buffers nothing for it).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// HTTP address serving `/metrics` (Prometheus), `/health` and
    /// `/ready`; `off` serves none.
    #[arg(long, value_name = "ADDR|off", default_value = crate::config::DEFAULT_METRICS_LISTEN, value_parser = parse_metrics_listen)]
    pub metrics_listen: MetricsListen,
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

fn parse_metrics_listen(text: &str) -> Result<MetricsListen, String> {
    if text == "off" {
        return Ok(MetricsListen(None));
    }
    text.parse()
        .map(|addr| MetricsListen(Some(addr)))
        .map_err(|e| format!("{text:?} is not an address (ip:port) or `off`: {e}"))
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
            max_txn_bytes: self.max_txn_bytes,
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
        config.stall_timeout = self.stall_timeout;
        config.metrics_listen = self.metrics_listen.0;
        config.join = self.join;
        config.acl = self.acl;
        config.max_sessions = self.max_sessions;
        config.max_streams = self.max_streams;
        config.max_connection_bytes = self.max_connection_bytes;
        config.max_request_bytes = self.max_request_bytes;
        if self.wal_segment_bytes < MIN_SEGMENT_BYTES {
            return Err(format!(
                "--wal-segment-bytes ({}) must be at least {MIN_SEGMENT_BYTES}",
                self.wal_segment_bytes
            ));
        }
        config.wal = WalConfig {
            segment_bytes: self.wal_segment_bytes,
            checkpoint_bytes: self.checkpoint_bytes,
            retain_bytes: self.wal_retain_bytes,
            retain_age: self.wal_retain_age,
        };
        let frame = u64::from(limits.max_frame_bytes);
        if self.max_connection_bytes < frame || self.max_request_bytes < frame {
            return Err(format!(
                "--max-connection-bytes ({}) and --max-request-bytes ({}) must each hold a whole frame (--max-frame-bytes {frame})",
                self.max_connection_bytes, self.max_request_bytes
            ));
        }
        config.tls = self.tls.source(config.tls);
        // Flags enforce this pairing; a file or the environment may not.
        if self.cluster.is_some() != self.witness.is_some() {
            return Err("--cluster and --witness go together (a pair needs both)".into());
        }
        if let (Some(cluster), Some(witness)) = (self.cluster, self.witness) {
            let mut pair = PairConfig::for_node(cluster.0, self.listen, witness)?;
            if let Some(via) = self.peer_address {
                pair.peer_via = via;
            }
            pair.lease = lease_config(self.lease);
            config.pair = Some(pair);
        }
        Ok(config)
    }
}
