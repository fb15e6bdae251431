//! `store-bench`: a load generator for a running Zeolite server.
//!
//! ```text
//! store-bench --workload commit-concurrent --clients 50 --ops 20000 --value-size 1024
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use store_benches::{run, run_idle, BenchConfig, IdleReport, Workload};
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
    /// How long the idle workload holds its sessions.
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
    let config = BenchConfig {
        client,
        workload: args.workload,
        clients: args.clients,
        ops: args.ops.unwrap_or(match args.workload {
            Workload::ReadCold => 10_000,
            _ => 2_000,
        }),
        value_size: args.value_size,
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
    let line = if args.json {
        json!({
            "workload": workload,
            "clients": args.clients,
            "ops": summary.ops,
            "value_size": args.value_size,
            "ops_per_sec": summary.ops_per_sec(),
            "p50_ms": summary.p50_ms,
            "p99_ms": summary.p99_ms,
        })
        .to_string()
    } else {
        format!(
            "workload={workload} clients={} ops={} value_size={} ops_per_sec={:.0} p50_ms={:.3} p99_ms={:.3}",
            args.clients,
            summary.ops,
            args.value_size,
            summary.ops_per_sec(),
            summary.p50_ms,
            summary.p99_ms
        )
    };
    let _ = writeln!(std::io::stdout(), "{line}");
    ExitCode::SUCCESS
}

fn print_idle(report: &IdleReport, duration: std::time::Duration, json: bool) {
    let line = if json {
        json!({
            "workload": "Idle",
            "sessions": report.sessions,
            "live": report.live,
            "duration_s": duration.as_secs_f64(),
            "server_cpu_percent": report.server_cpu_percent,
            "server_rss_mib": report.server_rss_mib,
        })
        .to_string()
    } else {
        let or_dash = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        format!(
            "workload=Idle sessions={} live={} duration_s={:.0} server_cpu_percent={} server_rss_mib={}",
            report.sessions,
            report.live,
            duration.as_secs_f64(),
            or_dash(report.server_cpu_percent),
            or_dash(report.server_rss_mib)
        )
    };
    let _ = writeln!(std::io::stdout(), "{line}");
}
