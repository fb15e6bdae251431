//! # store-benches: measuring Zeolite
//!
//! The `store-bench` load generator (workloads in [`Workload`], latency
//! summaries in [`Summary`]) and criterion micro-benchmarks in `benches/`.
//! Speed targets live here, never in tests.

mod stats;
mod workload;

pub use stats::Summary;
pub use workload::{run, BenchConfig, Workload};
