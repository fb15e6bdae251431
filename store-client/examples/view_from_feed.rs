//! A local view rebuilt from the change feed: every change under a prefix,
//! in TID order, applied to a map, across reconnects and failovers. A
//! start before the retained history is told `Compacted`; then the view is
//! loaded with a scan and followed from the TID it was read at.
//!
//! `cargo run -p store-client --example view_from_feed -- app/ 10`
//! (prefix, then how many changes to follow before printing the view).
// An example program: it talks to its user on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use store_client::{ChangeOp, Client, ClientConfig, Error, ScanRequest, Tid};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let prefix = args.next().unwrap_or_else(|| "example/".into());
    let wanted: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    let client = Client::connect(ClientConfig::from_env()).await?;
    let mut view: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    let mut feed = client.subscribe(prefix.clone(), Tid::ZERO);
    let mut applied = 0;
    while applied < wanted {
        let change = match feed.next().await {
            Some(Ok(change)) => change,
            Some(Err(Error::Compacted { .. })) => {
                // Too old to replay: take the state as of now, follow on.
                let from = client.status().await?.last_tid;
                view = load(&client, &prefix).await?;
                feed = client.subscribe(prefix.clone(), from);
                continue;
            }
            Some(Err(e)) => return Err(e),
            None => break,
        };
        match change.op {
            ChangeOp::Put(value) => {
                view.insert(change.key, value);
            }
            ChangeOp::Append(suffix) => {
                let old = view.remove(&change.key).unwrap_or_default();
                let mut joined = BytesMut::from(&old[..]);
                joined.extend_from_slice(&suffix);
                view.insert(change.key, joined.freeze());
            }
            ChangeOp::Delete => {
                view.remove(&change.key);
            }
        }
        applied += 1;
    }
    println!("after {applied} changes (through tid {}):", feed.through());
    for (key, value) in &view {
        println!(
            "{}\t{}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value)
        );
    }
    client.close().await;
    Ok(())
}

/// The current state under `prefix`, page by page.
async fn load(client: &Client, prefix: &str) -> Result<BTreeMap<Bytes, Bytes>, Error> {
    let mut view = BTreeMap::new();
    let mut scan = ScanRequest::prefix(prefix.to_string(), 1000);
    loop {
        let page = client.scan(scan.clone()).await?;
        for entry in &page.entries {
            view.insert(entry.key.clone(), entry.value.clone());
        }
        match page.next_start() {
            Some(start) => scan.start = start,
            None => return Ok(view),
        }
    }
}
