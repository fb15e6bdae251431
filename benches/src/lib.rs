//! # store-benches: measuring Zeolite
//!
//! The `store-bench` load generator (workloads in [`Workload`], latency
//! summaries in [`Summary`], idle sessions in [`run_idle`]), the
//! `store-faults` detection-time tool, the `store-failover` HA pair tool,
//! and criterion micro-benchmarks in `benches/`.
//! Speed targets live here, never in tests.

mod idle;
mod stats;
mod workload;

pub use idle::{run_idle, IdleReport};
pub use stats::{median_max, Summary};
pub use workload::{run, BenchConfig, Workload};

/// Runs a measuring tool (`name` prefixes its errors on stderr) on two
/// worker threads, like the machines the figures are quoted for; exits 1
/// on an error.
pub fn run_tool(
    name: &str,
    tool: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(tool),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
