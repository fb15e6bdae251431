//! The `store-bench` workloads, shaped like the ZEO and Redis comparisons.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use store_client::{Client, ClientConfig};

use crate::stats::Summary;

/// Keys per transaction when loading data before a read benchmark.
const LOAD_BATCH: usize = 100;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Load `ops` distinct keys, then read each once (ZEO's cold loads).
    ReadCold,
    /// `ops` sequential single-key durable commits by one client.
    Commit,
    /// `clients` clients each committing `ops / clients` distinct keys at once
    /// (group commit at work; Redis `-c 50`).
    CommitConcurrent,
    /// `clients` sessions that only ping for `--duration`; reports the
    /// server's CPU and memory (see [`run_idle`](crate::run_idle)).
    Idle,
}

/// One benchmark run's parameters.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// How to connect.
    pub client: ClientConfig,
    /// The workload.
    pub workload: Workload,
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// Operations in total over all clients.
    pub ops: usize,
    /// Bytes per value.
    pub value_size: usize,
}

/// Runs one benchmark against a live server and summarises it.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Summary> {
    let clients = match config.workload {
        Workload::Commit => 1,
        Workload::ReadCold | Workload::CommitConcurrent => config.clients.max(1),
        Workload::Idle => anyhow::bail!("the idle workload runs with run_idle"),
    };
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(
            Client::connect(config.client.clone())
                .await
                .context("connecting")?,
        );
    }
    // Unique per run, so runs against one server never collide.
    let prefix = format!("bench/{:016x}/", rand_u64(&connected[0]));
    let value = Bytes::from(vec![b'x'; config.value_size]);
    let keys: Vec<Bytes> = (0..config.ops)
        .map(|i| Bytes::from(format!("{prefix}{i:08}")))
        .collect();

    if config.workload == Workload::ReadCold {
        for chunk in keys.chunks(LOAD_BATCH) {
            let mut txn = connected[0].txn();
            for key in chunk {
                txn.put(key.clone(), value.clone());
            }
            txn.commit().await.context("loading keys")?;
        }
    }

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (n, client) in connected.into_iter().enumerate() {
        let mine: Vec<Bytes> = keys.iter().skip(n).step_by(clients).cloned().collect();
        let (workload, value) = (config.workload, value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(mine.len());
            for key in mine {
                let t = Instant::now();
                match workload {
                    Workload::ReadCold => {
                        client.get(key).await?.context("a loaded key is missing")?;
                    }
                    Workload::Commit | Workload::CommitConcurrent | Workload::Idle => {
                        client.put(key, value.clone()).await?;
                    }
                }
                latencies.push(t.elapsed());
            }
            client.close().await;
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(config.ops);
    for task in tasks {
        latencies.extend(task.await.context("benchmark task panicked")??);
    }
    Ok(Summary::from_latencies(latencies, started.elapsed()))
}

/// A random number derived from the client's random id.
fn rand_u64(client: &Client) -> u64 {
    (client.client_id() >> 64) as u64 ^ client.client_id() as u64
}
