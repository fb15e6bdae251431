//! `store-server`: see `store-server --help` and DESIGN §8.

use std::process::ExitCode;

use store_server::pair::witness::WitnessServer;
use store_server::settings::{self, Parsed, SettingsError};
use store_server::{CertsCommand, Command, ConfigCommand, LogFormat, Server};

fn main() -> ExitCode {
    let Parsed { cli, effective } = match settings::parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(SettingsError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("store-server: {e}");
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    match cli.log_format {
        // Colours only for a terminal: logs in files stay greppable.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        Some(Command::Witness(args)) => return run_witness(args),
        Some(Command::Certs(CertsCommand::Issue(args))) => return issue(&args),
        Some(Command::Check(args)) => return check(&args),
        Some(Command::Config(ConfigCommand::Print(args))) => return print_config(args, &effective),
        Some(Command::Restore(args)) => return restore(&args),
        None => cli.run,
    };
    let io_threads = usize::from(args.io_threads);
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("store-server: {e}");
            return ExitCode::from(2);
        }
    };
    serve(io_threads, Server::bind(config), |server| {
        server.run(shutdown_signal())
    })
}

/// Prints the effective settings as TOML with where each came from, after
/// checking them as `run` would.
#[allow(clippy::print_stdout)]
fn print_config(args: store_server::RunArgs, effective: &[(String, String, &str)]) -> ExitCode {
    if let Err(e) = args.into_config() {
        eprintln!("store-server: {e}");
        return ExitCode::from(2);
    }
    for (key, value, source) in effective {
        if value.is_empty() {
            println!("# {key} is not set");
            continue;
        }
        let bare = value.parse::<i64>().is_ok() || value == "true" || value == "false";
        let value = if bare {
            value.clone()
        } else {
            toml::Value::String(value.clone()).to_string()
        };
        println!("{key} = {value}  # {source}");
    }
    ExitCode::SUCCESS
}

fn issue(args: &store_server::IssueArgs) -> ExitCode {
    match store_server::issue(&args.tls_dir, &args.name, args.role, &args.out) {
        Ok(cert) => {
            eprintln!("store-server: issued {}", cert.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("store-server: {e}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stdout)]
fn check(args: &store_server::CheckArgs) -> ExitCode {
    let path = args.data_dir.join("store.redb");
    match store_server::check(&path) {
        Ok(report) => {
            let facts: Vec<String> = report
                .facts
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            println!("{} {}", path.display(), facts.join(" "));
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            if report.problems.is_empty() {
                println!("healthy");
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("problem: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `store-server restore`: exit 0 with a summary line, 2 if the directory
/// already holds a store, 1 if the backup is damaged or unreadable.
#[allow(clippy::print_stdout)]
fn restore(args: &store_server::RestoreArgs) -> ExitCode {
    let started = std::time::Instant::now();
    match store_server::restore(&args.from, &args.data_dir, args.keep_cluster_id) {
        Ok(restored) => {
            let secs = started.elapsed().as_secs_f64();
            let mib = restored.bytes as f64 / (1024.0 * 1024.0);
            println!(
                "restored tid={} rows={} bytes={} cluster={:016x} into {} in {secs:.2}s ({:.1} MiB/s)",
                restored.header.last_tid.0,
                restored.rows,
                restored.bytes,
                restored.cluster_id,
                args.data_dir.display(),
                mib / secs.max(1e-9),
            );
            ExitCode::SUCCESS
        }
        Err(e @ store_server::ServerError::Config(_)) => {
            eprintln!("store-server: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("store-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_witness(args: store_server::WitnessArgs) -> ExitCode {
    serve(1, WitnessServer::bind(args.into_config()), |witness| {
        witness.run(shutdown_signal())
    })
}

/// Starts a runtime of `threads` threads, binds with `bind`, and runs
/// until shut down; a failure to start is logged and exits 1.
///
/// One thread is a current-thread runtime: a request is read, answered
/// and written without a hand-off between threads (about 10 % more
/// single-client reads and 25 % more commits from 50 clients than a
/// two-worker runtime on a 2-core machine; `benches/README.md`).
fn serve<S, Run: std::future::Future<Output = ()>>(
    threads: usize,
    bind: impl std::future::Future<Output = Result<S, store_server::ServerError>>,
    run: impl FnOnce(S) -> Run,
) -> ExitCode {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("store-server: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match bind.await {
            Ok(service) => {
                run(service).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("store-server: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}
