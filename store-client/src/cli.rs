//! Command-line pieces shared by `store-cli` and `store-bench`: the
//! connection flags of DESIGN §8 and logging set-up.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::{
    ClientConfig, ReadPolicy, TlsPaths, WritePolicy, DEFAULT_SERVER, DEFAULT_TLS_DIR,
};

/// `--read-policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadPolicyArg {
    /// Ping and wait (up to --timeout) for proof that the server is live.
    Wait,
    /// Fail at once (exit 5) while the session is not live.
    FailFast,
    /// Answer with the last known value, marked stale.
    AllowStale,
}

/// `--write-policy` values: [`WritePolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WritePolicyArg {
    /// Resend until --timeout, through failovers; resolve before reporting
    /// an unknown outcome (exit 4).
    Retry,
    /// Refused at once (exit 5, nothing sent) while the session is not
    /// live; else sent once: no answer is exit 4, with no resend.
    FailFast,
    /// Sent once without waiting: prints `sent txn=ID` once handed to the
    /// connection (exit 0); applied at most once.
    Unconfirmed,
}

/// How to reach the store: `--server`, `--tls-dir`, `--ca`, `--cert`,
/// `--key`, `--timeout`, and the session's `--ping-interval`,
/// `--stale-after`, `--read-policy`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Servers to try, comma-separated `host:port`.
    #[arg(
        long = "server",
        env = "ZEOLITE_SERVERS",
        value_name = "A[,B]",
        value_delimiter = ',',
        default_value = DEFAULT_SERVER
    )]
    pub servers: Vec<String>,
    /// Directory holding ca.pem, client.pem and client.key.
    #[arg(long, env = "ZEOLITE_TLS_DIR", value_name = "DIR", default_value = DEFAULT_TLS_DIR)]
    pub tls_dir: PathBuf,
    /// CA certificate (PEM); overrides DIR/ca.pem.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM); overrides DIR/client.pem.
    #[arg(long, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM); overrides DIR/client.key.
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Bound on the whole command, retries included (e.g. 500ms, 10s, 1m).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Time between heartbeat pings (±10 % jitter; at least 250ms).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// How long a pong proves the server live, from the ping's send time;
    /// cached values are not served past it. Must exceed --ping-interval.
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// What reads do while the session is not live.
    #[arg(long, value_enum, default_value = "wait")]
    pub read_policy: ReadPolicyArg,
    /// What writes do about their answers.
    #[arg(long, value_enum, default_value = "retry")]
    pub write_policy: WritePolicyArg,
    /// Time without use after which the session stops pinging and rests
    /// (state `idle`); the next read asks for proof again. `never` pings
    /// for ever.
    #[arg(long, value_name = "DUR|never", default_value = "10s", value_parser = parse_idle_after)]
    pub idle_after: IdleAfter,
}

/// `--idle-after`: a duration, or `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleAfter(pub Option<Duration>);

fn parse_idle_after(text: &str) -> Result<IdleAfter, String> {
    if text == "never" {
        return Ok(IdleAfter(None));
    }
    parse_duration(text).map(|d| IdleAfter(Some(d)))
}

impl ConnectionArgs {
    /// The client configuration these flags describe.
    pub fn to_config(&self) -> ClientConfig {
        let dir = TlsPaths::in_dir(&self.tls_dir);
        let mut config = ClientConfig::new(self.servers.iter().cloned()).timeout(self.timeout);
        config.tls = TlsPaths {
            ca: self.ca.clone().unwrap_or(dir.ca),
            cert: self.cert.clone().unwrap_or(dir.cert),
            key: self.key.clone().unwrap_or(dir.key),
        };
        config.session.ping_interval = self.ping_interval;
        config.session.stale_after = self.stale_after;
        config.session.idle_after = self.idle_after.0;
        config.read_policy = self.read_policy();
        config.write_policy = match self.write_policy {
            WritePolicyArg::Retry => WritePolicy::Retry,
            WritePolicyArg::FailFast => WritePolicy::FailFast,
            WritePolicyArg::Unconfirmed => WritePolicy::Unconfirmed,
        };
        config
    }

    /// The read policy; `wait` waits up to `--timeout`.
    pub fn read_policy(&self) -> ReadPolicy {
        match self.read_policy {
            ReadPolicyArg::Wait => ReadPolicy::Wait(self.timeout),
            ReadPolicyArg::FailFast => ReadPolicy::FailFast,
            ReadPolicyArg::AllowStale => ReadPolicy::AllowStale,
        }
    }
}

/// Parses a duration with a unit, as humantime does: `250ms`, `3s`, `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 250ms, 3s, 1m)"))
}

/// Sends `tracing` output to stderr, filtered by `RUST_LOG` (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs in files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}
