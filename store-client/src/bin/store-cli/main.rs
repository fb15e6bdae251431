//! `store-cli`: use a Zeolite store from a shell. See DESIGN §8 for the
//! output formats and exit codes, which scripts rely on.

mod output;

use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::ffi::OsStringExt as _;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use store_client::cli::{init_logging, ConnectionArgs};
use store_client::{Client, Error, ScanRequest};

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
    let config = cli.connection.to_config();
    let timeout = config.timeout;
    // --timeout bounds the whole command, connecting included.
    let work = async {
        let client = Client::connect(config).await?;
        let exit = execute(&client, cli.command, out).await;
        client.close().await;
        exit
    };
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(Error::Unavailable {
            detail: format!("no answer within --timeout {}", humantime_of(timeout)),
        }),
    };
    match result {
        Ok(exit) => exit,
        Err(e) => out.error(&e),
    }
}

async fn execute(client: &Client, command: Command, out: &mut Output) -> Result<Exit, Error> {
    match command {
        Command::Get { key } => match client.get(bytes_of(key)).await {
            Ok(Some(value)) => Ok(out.value(&value)),
            Ok(None) => Ok(out.not_found()),
            Err(e) => Err(e),
        },
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
            let mut left = limit.map_or(u64::MAX, u64::from);
            let mut scan = ScanRequest::prefix(prefix, page_size(left));
            while left > 0 {
                let page = client.scan(scan.clone()).await?;
                for entry in page.entries.iter().take(left as usize) {
                    out.entry(&entry.key, &entry.value);
                }
                left = left.saturating_sub(page.entries.len() as u64);
                match page.entries.last() {
                    Some(last) if page.more => {
                        // Resume just after the last key returned.
                        let mut next = last.key.to_vec();
                        next.push(0);
                        scan.start = Bytes::from(next);
                        scan.limit = page_size(left);
                    }
                    _ => break,
                }
            }
            Ok(Exit::Ok)
        }
        Command::Status => Ok(out.status(&client.status().await?)),
    }
}

/// Entries asked for per scan request.
fn page_size(left: u64) -> u32 {
    left.min(1000) as u32
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

fn humantime_of(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis())
}
