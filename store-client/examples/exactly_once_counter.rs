//! An exactly-once counter: N increments, each sent under one transaction
//! id however often it is resent. Kill the server (SIGKILL) while it runs
//! and start it again: the client resends what it had not heard back
//! about, the server answers copies from their recorded outcomes, and the
//! counter ends exactly N higher, never N + 1.
//!
//! `cargo run -p store-client --example exactly_once_counter -- 200`
// An example program: it talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use store_client::{Client, ClientConfig, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let count: i64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    // Long enough to ride out a restart.
    let config = ClientConfig::from_env().timeout(Duration::from_secs(30));
    let client = Client::connect(config).await?;
    let key = format!("example/counter/{}", std::process::id());
    let mut last = 0;
    for _ in 0..count {
        let mut txn = client.txn();
        txn.incr(key.clone(), 1);
        let mut attempt = txn.commit().await;
        // Every failure that might still succeed hands the transaction
        // back: resend the same one (same id, same bytes), never a new one.
        let outcome = loop {
            match attempt {
                Ok(outcome) => break outcome,
                Err(failed) => {
                    eprintln!("retrying: {}", failed.error());
                    match failed.into_prepared() {
                        Some(prepared) => attempt = client.recommit(prepared).await,
                        None => {
                            return Err(Error::Protocol {
                                detail: "a definite failure: nothing was applied".into(),
                            })
                        }
                    }
                }
            }
        };
        last = outcome.counter().unwrap_or(last);
    }
    println!("{key} = {last} after {count} increments");
    client.close().await;
    if last == count {
        Ok(())
    } else {
        Err(Error::Protocol {
            detail: format!("expected {count}, found {last}"),
        })
    }
}
