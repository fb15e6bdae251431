//! `store-failover`: how an HA pair rides out the loss of its primary.
//! Starts a witness and two data nodes (release builds beside this
//! binary) on 127.0.0.1 and measures, with default timers:
//!
//! * failover: SIGKILL of the primary (or SIGSTOP with `--fault stop`)
//!   → first successful commit of a client that commits back to back
//!   (`--trials` times, alternating nodes; the killed node rejoins, or the
//!   frozen one is thawed and rejoins, and catches up between trials);
//! * catch-up: the old primary restarted after a failover rejoins
//!   (`--keys` 1 KiB values in the store; from the new primary's
//!   write-ahead log when its history end is still there, else by
//!   snapshot: the line says which), and a backup restarted in the same
//!   term (`--log-keys` written while it was down): the time from its
//!   restart to being recorded in sync, and the rate.
//!
//! ```text
//! cargo build --release -p store-server -p store-benches
//! target/release/store-failover --trials 10
//! target/release/store-failover --trials 20 --fault stop --no-catch-up
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use store_client::Client;
use store_tests::Cluster;

/// Measures failover and catch-up times of an HA pair.
#[derive(Debug, Parser)]
#[command(name = "store-failover", version)]
struct Args {
    /// Failover trials.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Keys (1 KiB values) in the store for the snapshot catch-up.
    #[arg(long, default_value_t = 20_000)]
    keys: usize,
    /// Keys (1 KiB values) written while the backup is down, for the
    /// log-shipping catch-up.
    #[arg(long, default_value_t = 5_000)]
    log_keys: usize,
    /// How the primary fails: `kill` (SIGKILL) or `stop` (SIGSTOP).
    #[arg(long, default_value = "kill", value_parser = ["kill", "stop"])]
    fault: String,
    /// Measure failovers only, not catch-up.
    #[arg(long)]
    no_catch_up: bool,
    /// Instead of failing anything, watch the pair for this many seconds
    /// under the back-to-back writer and count elections (there should be
    /// none: run it beside a stress load, see `benches/false-elections.sh`).
    #[arg(long, value_name = "SECS")]
    quiet_for: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    store_client::cli::init_logging();
    store_benches::run_tool("store-failover", measure(&args))
}

async fn measure(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    if std::env::var_os("STORE_FAILOVER_KEEP").is_some() {
        eprintln!("logs kept in {}", dir.path().display());
    }
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.wait_in_sync(0).await;
    let client = Client::connect(cluster.client_config()).await?;
    let last_ok = Arc::new(Mutex::new(LastOk::None));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(commit_back_to_back(
        client.clone(),
        stop.clone(),
        last_ok.clone(),
    ));
    if let Some(secs) = args.quiet_for {
        watch_quietly(&cluster, Duration::from_secs(secs), &last_ok).await?;
        stop.store(true, Ordering::Release);
        writer.await??;
        client.close().await;
        return Ok(());
    }
    let mut failovers = Vec::with_capacity(args.trials);
    let mut primary = 0;
    for trial in 0..args.trials {
        // A random phase against the lease renewals and pings.
        tokio::time::sleep(Duration::from_millis(500 + rand::random::<u64>() % 1000)).await;
        let stop_it = args.fault == "stop";
        if stop_it {
            cluster.nodes[primary].freeze();
        } else {
            cluster.nodes[primary].kill();
        }
        // Dead (or frozen) now: nothing it answers can count.
        let killed_at = Instant::now();
        let first_ok = loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let last = last_ok
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .clone();
            // A reply the failed node sent just before the signal landed
            // does not count: only one from the other node.
            let failed = cluster.nodes[primary].addr().to_string();
            if let Some((at, _)) =
                last.filter(|(at, server)| *at > killed_at && server.as_ref() != Some(&failed))
            {
                break at;
            }
            anyhow::ensure!(killed_at.elapsed() < Duration::from_secs(60), "no failover");
        };
        let took = first_ok - killed_at;
        out(format!(
            "trial={trial} {}=node{primary} failover_s={:.3}",
            if stop_it { "stopped" } else { "killed" },
            took.as_secs_f64()
        ));
        failovers.push(took);
        if stop_it {
            cluster.nodes[primary].thaw();
        } else {
            cluster.nodes[primary].respawn();
        }
        cluster.wait_in_sync(1 - primary).await;
        primary = 1 - primary;
    }
    stop.store(true, Ordering::Release);
    writer.await??;
    let (median, max) = store_benches::median_max(&failovers);
    out(format!(
        "failover fault={} trials={} median_s={median:.3} max_s={max:.3}",
        args.fault,
        failovers.len()
    ));
    if !args.no_catch_up {
        catch_up(args, &mut cluster, &client, primary).await?;
    }
    client.close().await;
    if std::env::var_os("STORE_FAILOVER_KEEP").is_some() {
        drop(cluster);
        let _ = dir.keep();
    }
    Ok(())
}

/// Watches the pair for `length`: elections (epoch changes), and the
/// longest time without a successful commit.
async fn watch_quietly(
    cluster: &Cluster,
    length: Duration,
    last_ok: &Mutex<LastOk>,
) -> anyhow::Result<()> {
    let epoch_now = || async {
        for i in 0..2 {
            if let Some(status) = cluster.status(i).await {
                return Some(status.epoch.0);
            }
        }
        None
    };
    let first = epoch_now()
        .await
        .ok_or_else(|| anyhow::anyhow!("no node answers"))?;
    let started = Instant::now();
    let (mut longest_gap, mut last_epoch, mut unanswered) = (Duration::ZERO, first, 0u64);
    while started.elapsed() < length {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let last = last_ok
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let since = last.map_or(started.elapsed(), |(at, _)| at.elapsed());
        longest_gap = longest_gap.max(since);
        match epoch_now().await {
            Some(epoch) => last_epoch = last_epoch.max(epoch),
            None => unanswered += 1,
        }
    }
    out(format!(
        "quiet watch_s={} elections={} longest_commit_gap_s={:.3} status_unanswered={unanswered}",
        length.as_secs(),
        last_epoch - first,
        longest_gap.as_secs_f64()
    ));
    Ok(())
}

/// Times the returns of a restarted primary and of a restarted backup.
async fn catch_up(
    args: &Args,
    cluster: &mut Cluster,
    client: &Client,
    mut primary: usize,
) -> anyhow::Result<()> {
    // The old primary's return after a failover: from the new primary's
    // write-ahead log if it still holds the old one's history end.
    let value = bytes::Bytes::from(vec![b'x'; 1024]);
    put_keys(client, 0..args.keys, &value).await?;
    cluster.wait_in_sync(primary).await;
    cluster.nodes[primary].kill();
    cluster.wait_for_primary(Some(1 - primary)).await;
    let took = rejoin(cluster, primary).await;
    let how = if cluster.nodes[primary]
        .log_text()
        .contains("snapshot installed")
    {
        "snapshot"
    } else {
        "log"
    };
    report_catch_up(&format!("{how} node=restarted-primary"), args.keys, took);
    primary = 1 - primary;

    // Catch-up by log shipping: the backup is down while keys are written
    // in the same term; back, its history is a prefix of the primary's.
    cluster.nodes[1 - primary].kill();
    put_keys(client, args.keys..args.keys + args.log_keys, &value).await?;
    let took = rejoin(cluster, 1 - primary).await;
    report_catch_up("log node=restarted-backup", args.log_keys, took);
    Ok(())
}

/// Writes 1 KiB values under `keys`, a hundred per transaction.
async fn put_keys(
    client: &Client,
    keys: std::ops::Range<usize>,
    value: &bytes::Bytes,
) -> anyhow::Result<()> {
    for chunk in keys.collect::<Vec<_>>().chunks(100) {
        let mut txn = client.txn();
        for i in chunk {
            txn.put(format!("key{i:08}"), value.clone());
        }
        txn.commit().await?;
    }
    Ok(())
}

/// Restarts node `node` and times it until the primary records it in sync.
async fn rejoin(cluster: &mut Cluster, node: usize) -> Duration {
    let restarted = Instant::now();
    cluster.nodes[node].respawn();
    cluster.wait_in_sync(1 - node).await;
    restarted.elapsed()
}

fn report_catch_up(how: &str, keys: usize, took: Duration) {
    let mib = (keys * 1024) as f64 / (1024.0 * 1024.0);
    out(format!(
        "catch_up by={how} keys={keys} mib={mib:.1} restart_to_in_sync_s={:.3} mib_per_s={:.1}",
        took.as_secs_f64(),
        mib / took.as_secs_f64()
    ));
}

/// When the last commit succeeded, and which server answered it.
type LastOk = Option<(Instant, Option<String>)>;

/// Commits back to back, recording when each success was answered.
async fn commit_back_to_back(
    client: Client,
    stop: Arc<AtomicBool>,
    last_ok: Arc<Mutex<LastOk>>,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Acquire) {
        if client.incr("failover-counter", 1).await.is_ok() {
            let server = client.session().server;
            *last_ok.lock().map_err(|_| anyhow::anyhow!("poisoned"))? =
                Some((Instant::now(), server));
        }
    }
    Ok(())
}

/// One line of results on stdout.
fn out(line: String) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}
