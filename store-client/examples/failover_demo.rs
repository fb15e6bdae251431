//! Watch a client follow an HA pair through a failover: it prints every
//! session state change and writes once a second, showing each write's
//! outcome. Kill the primary (SIGKILL) while it runs: the session goes
//! stale, finds the new primary, and the writes go on, none lost or doubled.
//!
//! `ZEOLITE_SERVERS=127.0.0.1:7501,127.0.0.1:7502 ZEOLITE_TLS_DIR=tls
//!  cargo run -p store-client --example failover_demo -- 30`
//! (seconds to run).
// An example program: it talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use store_client::{Client, ClientConfig, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let client = Client::connect(ClientConfig::from_env()).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut states = client.watch_session();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let key = format!("example/failover/{}", std::process::id());
    while Instant::now() < until {
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                let status = states.borrow_and_update().clone();
                println!(
                    "{:>6} ms  session {} {}",
                    started.elapsed().as_millis(),
                    status.state,
                    status.server.as_deref().unwrap_or("-")
                );
            }
            _ = ticks.tick() => {
                match client.incr(key.clone(), 1).await {
                    Ok(outcome) => println!(
                        "{:>6} ms  write: tid {} value {}",
                        started.elapsed().as_millis(),
                        outcome.tid,
                        outcome.counter().unwrap_or_default()
                    ),
                    Err(e) => println!("{:>6} ms  write failed: {}", started.elapsed().as_millis(), e.error()),
                }
            }
        }
    }
    client.close().await;
    Ok(())
}
