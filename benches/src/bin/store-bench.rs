//! `store-bench`: a load generator for a running Zeolite server.
//!
//! ```text
//! store-bench --workload commit-concurrent --clients 50 --ops 20000 --value-size 1024
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use store_benches::{run, run_idle, BenchConfig, IdleReport, Summary, Workload};
use store_client::cli::{init_logging, ConnectionArgs};

/// Measures a running Zeolite server: ops/s, p50 and p99.
#[derive(Debug, Parser)]
#[command(name = "store-bench", version)]
struct Args {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// What to measure.
    #[arg(long, value_enum, default_value = "commit")]
    workload: Workload,
    /// Concurrent clients (read-cold, commit-concurrent).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Operations in total over all clients (default: 10000 for read-cold,
    /// 2000 otherwise).
    #[arg(long)]
    ops: Option<usize>,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Keys loaded before a read workload (default: --ops); reads take
    /// --ops of them, spread over the whole range.
    #[arg(long)]
    keys: Option<usize>,
    /// Keys written per transaction (commit workloads).
    #[arg(long, default_value_t = 1)]
    ops_per_txn: usize,
    /// Reads in flight at once (read-pipelined).
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// How long the idle workload lets its sessions settle before it
    /// measures (past --idle-after, they rest).
    #[arg(long, value_name = "DUR", default_value = "0s", value_parser = store_client::cli::parse_duration)]
    settle: std::time::Duration,
    /// How long the idle workload measures its sessions.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = store_client::cli::parse_duration)]
    duration: std::time::Duration,
    /// The server's pid, to report its CPU and memory (idle workload).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let mut client = args.connection.to_config();
    // A benchmark may legitimately run for minutes; per-call bound only.
    client.timeout = args.connection.timeout;
    let ops = args.ops.unwrap_or(match args.workload {
        Workload::ReadCold => 10_000,
        Workload::ReadPipelined => 100_000,
        _ => 2_000,
    });
    let config = BenchConfig {
        client,
        workload: args.workload,
        clients: args.clients,
        ops,
        keys: args.keys.unwrap_or(ops),
        value_size: args.value_size,
        ops_per_txn: args.ops_per_txn,
        depth: args.depth,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("store-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.workload == Workload::Idle {
        return match runtime.block_on(run_idle(
            &config.client,
            args.clients,
            args.settle,
            args.duration,
            args.server_pid,
        )) {
            Ok(report) => {
                print_idle(&report, args.duration, args.json);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("store-bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let summary = match runtime.block_on(run(&config)) {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("store-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let workload = format!("{:?}", args.workload);
    // Value bytes moved: read, or written (each transaction writes
    // ops_per_txn values).
    let per_op = match config.workload {
        Workload::Commit | Workload::CommitConcurrent => config.ops_per_txn.max(1),
        _ => 1,
    };
    let mib_per_sec =
        summary.ops_per_sec() * (per_op * config.value_size) as f64 / (1024.0 * 1024.0);
    let line = if args.json {
        json!({
            "workload": workload,
            "clients": args.clients,
            "ops": summary.ops,
            "value_size": args.value_size,
            "ops_per_sec": summary.ops_per_sec(),
            "p50_ms": summary.p50_ms,
            "p99_ms": summary.p99_ms,
            "keys": config.keys,
            "ops_per_txn": config.ops_per_txn,
            "depth": config.depth,
            "mib_per_sec": mib_per_sec,
            "load_s": summary.load.map(|d| d.as_secs_f64()),
        })
        .to_string()
    } else {
        format!(
            "workload={workload} clients={} ops={} value_size={} ops_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} mib_per_sec={mib_per_sec:.1}{}",
            args.clients,
            summary.ops,
            args.value_size,
            summary.ops_per_sec(),
            summary.p50_ms,
            summary.p99_ms,
            shape(&config, &summary),
        )
    };
    let _ = writeln!(std::io::stdout(), "{line}");
    ExitCode::SUCCESS
}

/// The knobs a workload turned away from their defaults, as `key=value`
/// pairs (keeps the classic workloads' lines as they were).
fn shape(config: &BenchConfig, summary: &Summary) -> String {
    let mut shape = String::new();
    if config.keys != config.ops {
        shape.push_str(&format!(" keys={}", config.keys));
    }
    if config.ops_per_txn != 1 {
        shape.push_str(&format!(" ops_per_txn={}", config.ops_per_txn));
    }
    if config.workload == Workload::ReadPipelined {
        shape.push_str(&format!(" depth={}", config.depth));
    }
    if let Some(load) = summary.load {
        shape.push_str(&format!(" load_s={:.1}", load.as_secs_f64()));
    }
    shape
}

fn print_idle(report: &IdleReport, duration: std::time::Duration, json: bool) {
    let line = if json {
        json!({
            "workload": "Idle",
            "sessions": report.sessions,
            "well": report.well,
            "idle": report.idle,
            "duration_s": duration.as_secs_f64(),
            "server_cpu_percent": report.server_cpu_percent,
            "server_rss_mib": report.server_rss_mib,
            "rss_per_session_kib": report.rss_per_session_kib,
        })
        .to_string()
    } else {
        let or_dash = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        format!(
            "workload=Idle sessions={} well={} idle={} duration_s={:.0} server_cpu_percent={} server_rss_mib={} rss_per_session_kib={}",
            report.sessions,
            report.well,
            report.idle,
            duration.as_secs_f64(),
            or_dash(report.server_cpu_percent),
            or_dash(report.server_rss_mib),
            or_dash(report.rss_per_session_kib)
        )
    };
    let _ = writeln!(std::io::stdout(), "{line}");
}
