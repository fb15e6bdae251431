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

/// The runtime the measuring tools run on: two worker threads, like the
/// machines the figures are quoted for.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
