//! `store-crash`: the storage's crash-consistency suite, long mode.
//!
//! ```text
//! store-crash --schedules 100000 --steps 60 --seed 42
//! ```
//!
//! Runs random schedules of commits, resends, resolves, injected faults
//! and power cuts against the store on a simulated disk, checking every
//! restart against a model; stops at the first failure, naming the seed
//! that replays it (`--seed S --schedules 1`).

use std::process::ExitCode;

use std::io::Write as _;

use clap::Parser;
use store_server::crash::{run_schedule, Tally};

/// Runs crash-consistency schedules until one fails or all pass.
#[derive(Debug, Parser)]
#[command(name = "store-crash", version)]
struct Args {
    /// Schedules to run.
    #[arg(long, default_value_t = 10_000)]
    schedules: u64,
    /// Steps (batches) per schedule.
    #[arg(long, default_value_t = 60)]
    steps: u64,
    /// The first schedule's seed (random if absent); schedule i uses seed + i.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let base = args.seed.unwrap_or_else(rand::random);
    eprintln!("store-crash: --seed {base}");
    let started = std::time::Instant::now();
    let mut total = Tally::default();
    for i in 0..args.schedules {
        let seed = base.wrapping_add(i);
        match run_schedule(seed, args.steps) {
            Ok(tally) => total.add(tally),
            Err(e) => {
                eprintln!("schedule failed; replay with --seed {seed} --schedules 1: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = writeln!(
        std::io::stdout(),
        "{} schedules in {:.1} s: {} batches acknowledged, {} with the answer lost to a fault, {} power cuts survived, {} backup snapshots",
        args.schedules,
        started.elapsed().as_secs_f64(),
        total.acked,
        total.unknown,
        total.power_cuts,
        total.snapshots
    );
    ExitCode::SUCCESS
}
