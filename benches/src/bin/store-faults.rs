//! `store-faults`: how fast a client notices a lost server, and how fast it
//! is back. Starts its own `store-server` (release build beside this
//! binary) and a UDP fault proxy on 127.0.0.1, applies each fault
//! `--trials` times with the client's default timers (ping 1 s, stale
//! after 3 s), and prints per-fault median and max of:
//!
//! * detection: fault → session no longer `Live` (cached reads stop);
//! * last cached read: fault → start of the last read served from cache;
//! * recovery: heal (proxy heal, SIGCONT, restart) → `Live` again.
//!
//! ```text
//! cargo build --release -p store-server -p store-benches
//! target/release/store-faults --trials 10
//! ```

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use store_client::{Client, ReadPolicy, SessionState, Source};
use store_tests::{FaultProxy, ServerProcess};

/// Measures detection and recovery times for server faults.
#[derive(Debug, Parser)]
#[command(name = "store-faults", version)]
struct Args {
    /// Trials per fault.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Which faults to apply.
    #[arg(long, value_enum, default_values_t = [Fault::BlackHole, Fault::Sigstop, Fault::Sigkill])]
    fault: Vec<Fault>,
    /// Print one JSON object per fault instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// The proxy drops every datagram both ways.
    BlackHole,
    /// The server process is frozen.
    Sigstop,
    /// The server process is killed, then restarted on the same data.
    Sigkill,
}

/// One trial's timings.
struct Trial {
    detection: Duration,
    last_cached: Duration,
    recovery: Duration,
}

/// Bound on waiting for any one event.
const PATIENCE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let args = Args::parse();
    store_client::cli::init_logging();
    store_benches::run_tool("store-faults", async {
        for fault in &args.fault {
            let trials = measure(*fault, args.trials)
                .await
                .map_err(|e| e.context(format!("{fault:?}")))?;
            report(*fault, &trials, args.json);
        }
        Ok(())
    })
}

async fn measure(fault: Fault, trials: usize) -> anyhow::Result<Vec<Trial>> {
    let dir = tempfile::tempdir()?;
    let mut server = ServerProcess::start(dir.path()).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut config = server.client_config();
    config.servers = vec![proxy.addr().to_string()];
    let client = Client::connect(config).await?;
    client.put("probe", "value").await?;
    let mut results = Vec::with_capacity(trials);
    for _ in 0..trials {
        wait_for(&client, SessionState::Live).await?;
        // Warm the cache; then hammer it until the session lapses.
        client.read("probe", ReadPolicy::FailFast).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let last_hit = Arc::new(Mutex::new(None::<Instant>));
        let reader = tokio::spawn(hammer(client.clone(), stop.clone(), last_hit.clone()));
        // A random phase against the ping schedule, as a real fault has.
        tokio::time::sleep(random_delay(Duration::from_millis(1500))).await;
        let start = Instant::now();
        match fault {
            Fault::BlackHole => proxy.cut(),
            Fault::Sigstop => server.freeze(),
            Fault::Sigkill => server.kill(),
        }
        let detected = wait_until_not_live(&client).await?;
        stop.store(true, Ordering::Relaxed);
        reader.await?;
        tokio::time::sleep(random_delay(Duration::from_secs(1))).await;
        let heal = Instant::now();
        match fault {
            Fault::BlackHole => proxy.heal(),
            Fault::Sigstop => server.thaw(),
            Fault::Sigkill => server.restart().await,
        }
        let healed = if fault == Fault::Sigkill {
            Instant::now()
        } else {
            heal
        };
        let live = wait_for(&client, SessionState::Live).await?;
        let last = last_hit
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(start));
        results.push(Trial {
            detection: detected - start,
            last_cached: last,
            recovery: live - healed,
        });
    }
    client.close().await;
    Ok(results)
}

fn random_delay(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

/// Reads from cache until told to stop, recording the last cache hit.
async fn hammer(client: Client, stop: Arc<AtomicBool>, last_hit: Arc<Mutex<Option<Instant>>>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if let Ok(read) = client.read("probe", ReadPolicy::FailFast).await {
            if read.source == Source::Cache {
                if let Ok(mut last) = last_hit.lock() {
                    *last = Some(started);
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

async fn wait_for(client: &Client, state: SessionState) -> anyhow::Result<Instant> {
    wait_state(client, |s| s == state).await
}

async fn wait_until_not_live(client: &Client) -> anyhow::Result<Instant> {
    wait_state(client, |s| s != SessionState::Live).await
}

async fn wait_state(
    client: &Client,
    want: impl Fn(SessionState) -> bool,
) -> anyhow::Result<Instant> {
    let mut states = client.watch_session();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if want(states.borrow_and_update().state) {
                return Ok(Instant::now());
            }
            states.changed().await?;
        }
    })
    .await?
}

fn report(fault: Fault, trials: &[Trial], json: bool) {
    let stats = |f: fn(&Trial) -> Duration| {
        let durations: Vec<Duration> = trials.iter().map(f).collect();
        store_benches::median_max(&durations)
    };
    let (det_med, det_max) = stats(|t| t.detection);
    let (hit_med, hit_max) = stats(|t| t.last_cached);
    let (rec_med, rec_max) = stats(|t| t.recovery);
    let name = format!("{fault:?}").to_lowercase();
    let line = if json {
        serde_json::json!({
            "fault": name, "trials": trials.len(),
            "detection_median_s": det_med, "detection_max_s": det_max,
            "last_cached_read_median_s": hit_med, "last_cached_read_max_s": hit_max,
            "recovery_median_s": rec_med, "recovery_max_s": rec_max,
        })
        .to_string()
    } else {
        format!(
            "fault={name} trials={} detection_median_s={det_med:.3} detection_max_s={det_max:.3} \
             last_cached_read_max_s={hit_max:.3} recovery_median_s={rec_med:.3} recovery_max_s={rec_max:.3}",
            trials.len()
        )
    };
    let _ = writeln!(std::io::stdout(), "{line}");
}
