//! A read-through cache in front of a slow backend: the first read of a
//! key goes to the backend (50 ms here) and stores what it found; later
//! reads are answered from the client's cache while the session is live,
//! in well under a millisecond.
//!
//! Run a server (`cargo run -p store-server`), then
//! `cargo run -p store-client --example read_through` (`ZEOLITE_SERVERS`
//! and `ZEOLITE_TLS_DIR` say where, as for `store-cli`).
// An example program: it talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use store_client::{Client, ClientConfig, Error};

/// The slow thing being cached: a database, a remote service.
async fn slow_backend(key: &str) -> Bytes {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Bytes::from(format!("computed for {key}"))
}

/// The value of `key`: from Zeolite if it has one, else from the backend,
/// stored for every other client too.
async fn get_or_load(client: &Client, key: &str) -> Result<Bytes, Error> {
    if let Some(value) = client.get(key.to_string()).await? {
        return Ok(value);
    }
    let value = slow_backend(key).await;
    client
        .put(key.to_string(), value.clone())
        .await
        .map_err(|e| e.error().clone())?;
    Ok(value)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = Client::connect(ClientConfig::from_env()).await?;
    let key = format!("example/read-through/{}", std::process::id());
    for round in 1..=3 {
        let started = Instant::now();
        let value = get_or_load(&client, &key).await?;
        println!(
            "round {round}: {:?} in {:?}",
            String::from_utf8_lossy(&value),
            started.elapsed()
        );
    }
    let stats = client.cache_stats();
    println!(
        "cache: {} hits, {} misses, {} entries",
        stats.hits, stats.misses, stats.entries
    );
    client.close().await;
    Ok(())
}
