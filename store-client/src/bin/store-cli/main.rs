//! `store-cli`: use a Zeolite store from a shell. See DESIGN §8 for the
//! output formats and exit codes, which scripts rely on.
// The commands' doc comments are their `--help` text, printed as written:
// `KEY<TAB>VALUE` there is not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod output;
mod transfer;

use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use store_client::cli::{init_logging, ConnectionArgs};
use store_client::{Client, ClientConfig, Error, ReadPolicy, SessionState, TxnId};

use output::{Exit, Output};

/// Zeolite command-line client.
#[derive(Debug, Parser)]
#[command(name = "store-cli", version)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the value of KEY (exit 1 if absent).
    Get { key: OsString },
    /// Set KEY to VALUE (`-` reads the value from stdin).
    Put { key: OsString, value: OsString },
    /// Remove KEY.
    Delete { key: OsString },
    /// Append VALUE to the value of KEY (`-` reads stdin).
    Append { key: OsString, value: OsString },
    /// Add BY (default 1) to the decimal integer at KEY; prints the new value.
    Incr {
        key: OsString,
        #[arg(allow_negative_numbers = true, default_value_t = 1)]
        by: i64,
    },
    /// Print KEY<TAB>VALUE lines for keys starting with PREFIX, in key order.
    Scan {
        prefix: Option<OsString>,
        /// Print at most N entries.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Print the server's role, epoch, last TID, id and session count.
    Status,
    /// Make the one node given with --server (a backup) the primary: the
    /// primary steps down once this node holds everything it acknowledged.
    /// Prints the node's new status line.
    Promote {
        /// Take over without the primary (dead or unreachable). The witness
        /// still waits for the old lease to run out, but writes this node
        /// lacks are lost.
        #[arg(long)]
        force: bool,
    },
    /// Print the outcome of a transaction (`committed tid=N` or `abandoned`);
    /// one with no recorded outcome is abandoned now, so it can never commit.
    Resolve {
        /// `<32 hex digits>:<seq>`, as printed by writes.
        txn_id: TxnId,
    },
    /// Print a line per session state change (`T_MS STATE SERVER`) until
    /// interrupted.
    Monitor,
    /// Read KEY every MS milliseconds, a line per read, until interrupted.
    Watch {
        key: OsString,
        /// Milliseconds between reads.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        every: u64,
    },
    /// Write a consistent copy of the whole store at one TID to FILE (`-`:
    /// stdout), checksummed and checked as it arrives (needs the admin
    /// role), while the server goes on serving. Prints `backup tid=N
    /// rows=R bytes=B ...`; `store-server restore --from FILE` makes a
    /// data directory of it. --timeout bounds the wait for each piece.
    Backup { file: PathBuf },
    /// Print a JSON line per key starting with PREFIX, in key order:
    /// {"key" | "key_b64", "value" | "value_b64", "serial"}. Each page is
    /// read at its own TID; for one TID across the store, use backup.
    Dump { prefix: Option<OsString> },
    /// Print a line per change of a key under PREFIX, in TID order, until
    /// interrupted: `TID<TAB>put<TAB>KEY<TAB>VALUE`,
    /// `TID<TAB>append<TAB>KEY<TAB>SUFFIX` or `TID<TAB>delete<TAB>KEY`
    /// (--json: {"tid", "key", "value" | "appended" | "deleted": true}).
    /// Goes on across reconnects and failovers, missing nothing; a start
    /// older than the retained history exits 3 naming the oldest TID.
    Subscribe {
        prefix: OsString,
        /// Changes of commits after this TID (default: from now on).
        #[arg(long, value_name = "TID")]
        from: Option<u64>,
    },
    /// Commit the JSON lines of FILE (as dump prints them) in batches,
    /// each under a transaction id derived from the file and --batch, so a
    /// rerun after an interruption applies nothing twice. Every line is
    /// checked before the first batch. Prints `loaded lines=N batches=B
    /// applied=A already_applied=K seconds=S`.
    Load {
        file: PathBuf,
        /// Most lines per transaction (a batch also closes at 1 MiB).
        #[arg(long, value_name = "N", default_value_t = 500)]
        batch: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("store-cli: starting the runtime: {e}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let mut out = Output::new(cli.json);
    let exit = runtime.block_on(run(cli, &mut out));
    ExitCode::from(exit as u8)
}

async fn run(cli: Cli, out: &mut Output) -> Exit {
    let started = std::time::Instant::now();
    let mut config = cli.connection.to_config();
    // `status` of one named node, and `promote`, talk to that node whatever
    // its role; with several servers, `status` is the primary's.
    let one_node = config.servers.len() == 1;
    match &cli.command {
        Command::Status if one_node => config.any_role = true,
        Command::Promote { .. } if one_node => config.any_role = true,
        Command::Promote { .. } => {
            let error = Error::Config {
                detail: "promote takes exactly one --server: the node to make primary".into(),
            };
            return out.error(SessionState::Connecting, &error);
        }
        _ => {}
    }
    let policy = cli.connection.read_policy();
    let result = match cli.command {
        Command::Monitor => monitor(config, out).await,
        Command::Load { file, batch } => transfer::load(config, &file, batch, out)
            .await
            .map_err(|e| (SessionState::Connecting, e)),
        Command::Subscribe { prefix, from } => subscribe(config, bytes_of(prefix), from, out).await,
        command @ (Command::Backup { .. } | Command::Dump { .. }) => {
            // Long-running: --timeout bounds each step, not the whole.
            let timeout = config.timeout;
            match Client::connect(config).await {
                Ok(client) => {
                    let exit = match command {
                        Command::Backup { file } => transfer::backup(&client, &file, out).await,
                        Command::Dump { prefix } => {
                            let prefix = prefix.map(bytes_of).unwrap_or_default();
                            transfer::dump(&client, prefix, timeout, out).await
                        }
                        _ => Ok(Exit::Ok),
                    };
                    let state = client.session().state;
                    client.close().await;
                    exit.map_err(|e| (state, e))
                }
                Err(e) => Err((SessionState::Connecting, e)),
            }
        }
        Command::Watch { key, every } => {
            let every = std::time::Duration::from_millis(every.max(1));
            watch(config, bytes_of(key), every, policy, out).await
        }
        command => {
            // --timeout bounds the whole command, connecting included.
            let deadline = started + config.timeout;
            match Client::connect(config).await {
                Ok(client) => {
                    let client = client.until(deadline);
                    let exit = execute(&client, command, policy, out).await;
                    let state = client.session().state;
                    client.close().await;
                    exit.map_err(|e| (state, e))
                }
                Err(e) => Err((SessionState::Connecting, e)),
            }
        }
    };
    result.unwrap_or_else(|(state, e)| out.error(state, &e))
}

/// Prints every change of the session's state or server until interrupted.
async fn monitor(config: ClientConfig, out: &mut Output) -> Result<Exit, (SessionState, Error)> {
    let client = Client::start(config).map_err(|e| (SessionState::Connecting, e))?;
    let mut states = client.watch_session();
    let mut shown = None;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let status = states.borrow_and_update().clone();
        let key = (status.state, status.server.clone());
        if shown.as_ref() != Some(&key) {
            out.monitor(&status);
            shown = Some(key);
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { break },
            () = &mut stop => break,
        }
    }
    client.close().await;
    Ok(Exit::Ok)
}

/// Reads `key` every `every` until interrupted, printing each outcome.
async fn watch(
    config: ClientConfig,
    key: Bytes,
    every: std::time::Duration,
    policy: ReadPolicy,
    out: &mut Output,
) -> Result<Exit, (SessionState, Error)> {
    let timeout = config.timeout;
    let client = Client::start(config).map_err(|e| (SessionState::Connecting, e))?;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stop => break,
        }
        let bounded = client.until(std::time::Instant::now() + timeout);
        let read = bounded.read(key.clone(), policy);
        tokio::select! {
            result = read => {
                let state = client.session().state;
                match result {
                    Ok(read) => out.watched(state, &read),
                    Err(e) => out.watch_error(state, &e),
                }
            }
            () = &mut stop => break,
        }
    }
    client.close().await;
    Ok(Exit::Ok)
}

/// Prints every change under `prefix` until interrupted.
async fn subscribe(
    config: ClientConfig,
    prefix: Bytes,
    from: Option<u64>,
    out: &mut Output,
) -> Result<Exit, (SessionState, Error)> {
    let client = Client::connect(config)
        .await
        .map_err(|e| (SessionState::Connecting, e))?;
    let from = match from {
        Some(tid) => store_client::Tid(tid),
        None => match client.status().await {
            Ok(status) => status.last_tid,
            Err(e) => return Err((client.session().state, e)),
        },
    };
    let mut feed = client.subscribe(prefix, from);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let result = loop {
        let next = tokio::select! {
            next = feed.next() => next,
            () = &mut stop => break Ok(Exit::Ok),
        };
        match next {
            Some(Ok(change)) => out.change(&change),
            // Nothing reached in time: say so, and go on trying.
            Some(Err(e @ Error::Unavailable { .. })) => eprintln!("store-cli: {e}"),
            Some(Err(e)) => break Err((client.session().state, e)),
            None => break Ok(Exit::Ok),
        }
    };
    client.close().await;
    result
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn execute(
    client: &Client,
    command: Command,
    policy: ReadPolicy,
    out: &mut Output,
) -> Result<Exit, Error> {
    match command {
        Command::Get { key } => {
            let read = client.read(bytes_of(key), policy).await?;
            Ok(out.read(client.session().state, &read))
        }
        Command::Put { key, value } => {
            let value = value_arg(value)?;
            Ok(out.committed(&client.put(bytes_of(key), value).await?))
        }
        Command::Delete { key } => Ok(out.committed(&client.delete(bytes_of(key)).await?)),
        Command::Append { key, value } => {
            let value = value_arg(value)?;
            Ok(out.committed(&client.append(bytes_of(key), value).await?))
        }
        Command::Incr { key, by } => Ok(out.committed(&client.incr(bytes_of(key), by).await?)),
        Command::Scan { prefix, limit } => {
            let prefix = prefix.map(bytes_of).unwrap_or_default();
            let limit = limit.map(u64::from);
            transfer::for_each_entry(client, prefix, limit, None, |entry| {
                out.entry(&entry.key, &entry.value)
            })
            .await?;
            Ok(Exit::Ok)
        }
        Command::Status => Ok(out.status(&client.status().await?)),
        Command::Promote { force } => {
            if force {
                eprintln!(
                    "store-cli: WARNING: forced promotion: acknowledged writes that this node \
                     lacks are lost for good"
                );
            }
            Ok(out.status(&client.promote(force).await?))
        }
        Command::Resolve { txn_id } => match client.resolve(txn_id).await {
            Ok(outcome) => Ok(out.committed(&outcome)),
            Err(Error::Abandoned { txn_id }) => Ok(out.abandoned(txn_id)),
            Err(e) => Err(e),
        },
        Command::Monitor
        | Command::Watch { .. }
        | Command::Backup { .. }
        | Command::Dump { .. }
        | Command::Subscribe { .. }
        | Command::Load { .. } => Err(Error::Config {
            detail: "this command runs on its own".into(),
        }),
    }
}

fn bytes_of(arg: OsString) -> Bytes {
    Bytes::from(arg.into_vec())
}

/// A value argument; `-` means standard input, read to its end.
fn value_arg(arg: OsString) -> Result<Bytes, Error> {
    if arg != "-" {
        return Ok(bytes_of(arg));
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| Error::Config {
            detail: format!("reading the value from stdin: {e}"),
        })?;
    Ok(Bytes::from(buf))
}
