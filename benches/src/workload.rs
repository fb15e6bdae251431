//! The `store-bench` workloads, shaped like the ZEO and Redis comparisons,
//! with the knobs the cost curves turn: keys in the store, value size,
//! operations per transaction, requests in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use store_client::{Client, ClientConfig};

use crate::stats::Summary;

/// Most keys per transaction when loading data before a read benchmark.
const LOAD_BATCH: usize = 1_000;
/// Most value bytes per loading transaction (well inside the default
/// 8 MiB frame and 64 MiB transaction limits).
const LOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Loading transactions in flight at once.
const LOAD_DEPTH: usize = 4;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Load `keys` distinct keys, then read `ops` of them once each, one at a
    /// time per client (ZEO's cold loads).
    ReadCold,
    /// Load `keys` keys, then read `ops` of them once each from one client
    /// with `depth` reads in flight at once.
    ReadPipelined,
    /// `ops` sequential durable commits by one client, `ops_per_txn` keys each.
    Commit,
    /// `clients` clients each committing `ops / clients` transactions at once
    /// (group commit at work; Redis `-c 50`).
    CommitConcurrent,
    /// `clients` sessions that only ping for `--duration`; reports the
    /// server's CPU and memory (see [`run_idle`](crate::run_idle)).
    Idle,
    /// `ops` sequential commits by one client while another subscribes to
    /// their prefix: each latency is from the commit's start to the
    /// change's arrival at the subscriber (commit, acknowledgement and
    /// delivery).
    FeedLatency,
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
    /// Operations (reads, or transactions) in total over all clients.
    pub ops: usize,
    /// Keys loaded before a read workload (at least `ops`).
    pub keys: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Keys written per transaction (commit workloads).
    pub ops_per_txn: usize,
    /// Requests in flight at once (read-pipelined).
    pub depth: usize,
}

/// Runs one benchmark against a live server and summarises it.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Summary> {
    let clients = match config.workload {
        Workload::Commit | Workload::ReadPipelined | Workload::FeedLatency => 1,
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
    let reading = matches!(
        config.workload,
        Workload::ReadCold | Workload::ReadPipelined
    );
    let key = |i: usize| Bytes::from(format!("{prefix}{i:09}"));
    let loading = Instant::now();
    let keys: Vec<Bytes> = if reading {
        let loaded = config.keys.max(config.ops);
        load(&connected[0], &key, loaded, &value).await?;
        sample(loaded, config.ops).map(key).collect()
    } else {
        (0..config.ops.saturating_mul(config.ops_per_txn.max(1)))
            .map(key)
            .collect()
    };

    let started = Instant::now();
    let latencies = match config.workload {
        Workload::FeedLatency => {
            let writer = connected.pop().context("no client")?;
            let latencies = feed_latency(config, &writer, &prefix, &keys, &value).await?;
            writer.close().await;
            latencies
        }
        Workload::ReadPipelined => {
            let client = connected.pop().context("no client")?;
            let latencies = read_pipelined(&client, keys, config.depth.max(1)).await?;
            client.close().await;
            latencies
        }
        _ => {
            let per_txn = config.ops_per_txn.max(1);
            let mut tasks = Vec::with_capacity(clients);
            for (n, client) in connected.into_iter().enumerate() {
                let txns: Vec<Vec<Bytes>> = if reading {
                    keys.iter()
                        .skip(n)
                        .step_by(clients)
                        .map(|k| vec![k.clone()])
                        .collect()
                } else {
                    keys.chunks(per_txn)
                        .skip(n)
                        .step_by(clients)
                        .map(<[Bytes]>::to_vec)
                        .collect()
                };
                let value = value.clone();
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(txns.len());
                    for txn_keys in txns {
                        let t = Instant::now();
                        if reading {
                            for key in txn_keys {
                                client.get(key).await?.context("a loaded key is missing")?;
                            }
                        } else {
                            let mut txn = client.txn();
                            for key in txn_keys {
                                txn.put(key, value.clone());
                            }
                            txn.commit().await?;
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
            latencies
        }
    };
    let mut summary = Summary::from_latencies(latencies, started.elapsed());
    summary.load = reading.then(|| started.duration_since(loading));
    Ok(summary)
}

/// Commits a put of each key in turn while a second client subscribes to
/// `prefix`; returns, per commit, the time from its start to its change's
/// arrival at the subscriber.
async fn feed_latency(
    config: &BenchConfig,
    writer: &Client,
    prefix: &str,
    keys: &[Bytes],
    value: &Bytes,
) -> anyhow::Result<Vec<Duration>> {
    let reader = Client::connect(config.client.clone())
        .await
        .context("connecting the subscriber")?;
    let from = writer.status().await?.last_tid;
    let mut feed = reader.subscribe(prefix.to_string(), from);
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let subscriber = tokio::spawn(async move {
        while let Some(change) = feed.next().await {
            if arrived.send((change?.key, Instant::now())).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    let mut latencies = Vec::with_capacity(keys.len());
    for key in keys {
        let started = Instant::now();
        writer.put(key.clone(), value.clone()).await?;
        let (changed, at) = tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
            .await
            .context("no change arrived within 30 s")?
            .context("the subscription ended")?;
        anyhow::ensure!(
            changed == *key,
            "the feed delivered {changed:?}, not {key:?}"
        );
        latencies.push(at.saturating_duration_since(started));
    }
    subscriber.abort();
    reader.close().await;
    Ok(latencies)
}

/// Reads every key once from one client, `depth` reads in flight: `depth`
/// tasks on the client's runtime take the next key as each read returns.
async fn read_pipelined(
    client: &Client,
    keys: Vec<Bytes>,
    depth: usize,
) -> anyhow::Result<Vec<Duration>> {
    let keys = Arc::new(keys);
    let next = Arc::new(AtomicUsize::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..depth {
        let (client, keys, next) = (client.clone(), keys.clone(), next.clone());
        readers.spawn(async move {
            let mut latencies = Vec::new();
            while let Some(key) = keys.get(next.fetch_add(1, Ordering::Relaxed)) {
                let t = Instant::now();
                client
                    .get(key.clone())
                    .await?
                    .context("a loaded key is missing")?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(keys.len());
    while let Some(reader) = readers.join_next().await {
        latencies.extend(reader.context("reader task panicked")??);
    }
    Ok(latencies)
}

/// Writes `count` keys of `value` in transactions of up to [`LOAD_BATCH`]
/// keys and [`LOAD_BATCH_BYTES`], [`LOAD_DEPTH`] at a time.
async fn load(
    client: &Client,
    key: &impl Fn(usize) -> Bytes,
    count: usize,
    value: &Bytes,
) -> anyhow::Result<()> {
    let batch = (LOAD_BATCH_BYTES / value.len().max(1)).clamp(1, LOAD_BATCH);
    let mut loading = tokio::task::JoinSet::new();
    for start in (0..count).step_by(batch) {
        if loading.len() >= LOAD_DEPTH {
            loading
                .join_next()
                .await
                .context("no loader")?
                .context("loader panicked")??;
        }
        let keys: Vec<Bytes> = (start..(start + batch).min(count)).map(key).collect();
        let (client, value) = (client.clone(), value.clone());
        loading.spawn(async move {
            let mut txn = client.txn();
            for key in keys {
                txn.put(key, value.clone());
            }
            txn.commit().await.context("loading keys")
        });
    }
    while let Some(loaded) = loading.join_next().await {
        loaded.context("loader panicked")??;
    }
    Ok(())
}

/// `take` distinct indices below `of`, spread over the whole range in a
/// scrambled order (a stride coprime to `of`), so each read is a different
/// key and neighbours in the index are not read one after another.
fn sample(of: usize, take: usize) -> impl Iterator<Item = usize> {
    let stride = (0..)
        .map(|k| 7_919 + 2 * k)
        .find(|&s| gcd(s, of.max(1)) == 1)
        .unwrap_or(1);
    (0..take.min(of)).map(move |i| i.wrapping_mul(stride) % of.max(1))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A random number derived from the client's random id.
fn rand_u64(client: &Client) -> u64 {
    (client.client_id() >> 64) as u64 ^ client.client_id() as u64
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn samples_are_distinct_and_in_range() {
        for (of, take) in [(10, 10), (7_919, 100), (1_000_000, 10_000), (1, 1)] {
            let mut seen: Vec<usize> = sample(of, take).collect();
            assert_eq!(seen.len(), take);
            assert!(seen.iter().all(|&i| i < of));
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), take, "sample({of}, {take}) repeats an index");
        }
    }
}
