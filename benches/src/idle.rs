//! The idle workload: many sessions that only ping, and what they cost the
//! server (DESIGN §5: idle clients cost almost nothing).

use std::time::Duration;

use anyhow::Context as _;
use store_client::{Client, ClientConfig, SessionState};

/// Sessions opened concurrently.
const CONNECT_BATCH: usize = 50;

/// What holding idle sessions cost.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleReport {
    /// Sessions opened.
    pub sessions: usize,
    /// Sessions `Live` or resting `Idle` at the end.
    pub well: usize,
    /// Of those, sessions resting `Idle`.
    pub idle: usize,
    /// Server CPU over the idle period, in percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// Server resident memory at the end, in MiB.
    pub server_rss_mib: Option<f64>,
    /// What the sessions added to it, per session, in KiB.
    pub rss_per_session_kib: Option<f64>,
}

/// Opens `clients` sessions, lets them settle for `settle` (long enough
/// past `idle_after`, they rest), then holds them for `duration`, and
/// reads the server's CPU time over that window and its memory from
/// `/proc` when its pid is given.
pub async fn run_idle(
    config: &ClientConfig,
    clients: usize,
    settle: Duration,
    duration: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<IdleReport> {
    let base_rss = server_pid.map(rss_mib).transpose()?;
    let mut sessions = Vec::with_capacity(clients);
    // Open them a batch at a time: quicker than one by one, gentler than all at once.
    let mut left = clients;
    while left > 0 {
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..left.min(CONNECT_BATCH) {
            connecting.spawn(Client::connect(config.clone()));
        }
        left -= connecting.len();
        while let Some(client) = connecting.join_next().await {
            sessions.push(client.context("connect task")?.context("connecting")?);
        }
    }
    tokio::time::sleep(settle).await;
    let before = server_pid.map(cpu_ticks).transpose()?;
    tokio::time::sleep(duration).await;
    let after = server_pid.map(cpu_ticks).transpose()?;
    let well = sessions
        .iter()
        .filter(|c| c.session().state.is_well())
        .count();
    let idle = sessions
        .iter()
        .filter(|c| c.session().state == SessionState::Idle)
        .count();
    let server_cpu_percent = before.zip(after).map(|(b, a)| {
        // /proc reports CPU time in USER_HZ ticks, 100 per second on Linux.
        (a - b) as f64 / 100.0 / duration.as_secs_f64() * 100.0
    });
    let server_rss_mib = server_pid.map(rss_mib).transpose()?;
    let mut closing = tokio::task::JoinSet::new();
    for client in sessions {
        closing.spawn(async move { client.close().await });
    }
    while closing.join_next().await.is_some() {}
    Ok(IdleReport {
        sessions: clients,
        well,
        idle,
        server_cpu_percent,
        server_rss_mib,
        rss_per_session_kib: base_rss
            .zip(server_rss_mib)
            .map(|(base, end)| (end - base) * 1024.0 / clients.max(1) as f64),
    })
}

/// User plus system CPU ticks of a process.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc stat line")?
            .parse()
            .context("bad /proc stat field")
    };
    Ok(tick(11)? + tick(12)?)
}

/// Resident memory of a process in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS line")?
        .parse()
        .context("bad VmRSS")?;
    Ok(kib / 1024.0)
}
