//! `store-chaos`: the partition suite, long mode.
//!
//! ```text
//! cargo build --release -p store-server -p store-benches
//! target/release/store-chaos --cycles 1000 --seed 42
//! ```
//!
//! Runs an HA pair (the `store-server` beside this binary) and four
//! clients in a private network namespace (root), and plays `--cycles`
//! partition cycles drawn from the seed: a link fault from
//! `store_tests::chaos::Fault`, sometimes with a SIGKILL or SIGSTOP of a
//! data node. At the end it checks the whole history (exactly-once,
//! linearizable server reads, cached reads within `stale_after`,
//! monotonic reads, never two primaries, every client Live within 10 s of
//! each heal), panics on the first violation, and prints per fault: cycles,
//! takeover times and the slowest return to Live. The history is left in
//! the printed directory. Each client's history holds at most 200,000
//! operations, about 40 cycles' worth: for a long run, run many seeds of
//! 25 cycles each (the run fails if a client ran out before the end).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use clap::Parser;
use store_tests::chaos::{Chaos, Figure};
use store_tests::netns::isolated;

/// Plays partition cycles on a pair and checks its history.
#[derive(Debug, Parser)]
#[command(name = "store-chaos", version)]
struct Args {
    /// Fault cycles to play.
    #[arg(long, default_value_t = 100)]
    cycles: usize,
    /// The seed of the fault schedule (random if absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Restart one member with its clock 1 % fast or slow first (needs a
    /// debug build of store-server: release builds have no clock hook).
    #[arg(long)]
    skew_clock: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("store-chaos: --seed {seed}");
    let dir = tempfile::Builder::new()
        .prefix("store-chaos")
        .tempdir()?
        .keep();
    eprintln!("store-chaos: history and logs in {}", dir.display());
    let summary = isolated(|| async {
        let mut chaos = Chaos::start(&dir, seed).await;
        if args.skew_clock {
            eprintln!("{}", chaos.skew_a_clock().await);
        }
        for _ in 0..args.cycles {
            chaos.random_cycle().await;
        }
        chaos.finish().await
    });
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} cycles, seed {seed}: no violation",
        summary.figures.len()
    )?;
    writeln!(out, "{:?}", summary.report)?;
    writeln!(out, "role samples: {}", summary.samples)?;
    let mut by_fault: BTreeMap<String, Vec<&Figure>> = BTreeMap::new();
    for figure in &summary.figures {
        by_fault
            .entry(format!("{:?}", figure.fault))
            .or_default()
            .push(figure);
    }
    writeln!(
        out,
        "| fault | cycles | takeovers | takeover median | takeover max | slowest back to Live |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for (fault, figures) in by_fault {
        let mut takeovers: Vec<Duration> = figures.iter().filter_map(|f| f.takeover).collect();
        takeovers.sort();
        let ms =
            |d: Option<&Duration>| d.map_or("-".to_string(), |d| format!("{} ms", d.as_millis()));
        let live = figures
            .iter()
            .map(|f| f.back_to_live)
            .max()
            .unwrap_or_default();
        writeln!(
            out,
            "| {fault} | {} | {} | {} | {} | {} ms |",
            figures.len(),
            takeovers.len(),
            ms(takeovers.get(takeovers.len() / 2)),
            ms(takeovers.last()),
            live.as_millis()
        )?;
    }
    Ok(())
}
