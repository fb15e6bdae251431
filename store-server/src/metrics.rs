//! Prometheus metrics: the recorder, every metric's name in one place, and
//! the gauges read from the server's state at each scrape.
//!
//! Code records through the `metrics` facade with the names below; with
//! `--metrics-listen off` no recorder is installed and recording costs a
//! load and a branch.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::server::Shared;

/// Commits answered, by `outcome`: `committed`, `replayed` (a resend
/// answered from its recorded outcome), `conflict`, `abandoned` (a resend
/// of a transaction `resolve` abandoned), `expired` (a resend of one whose
/// outcome is forgotten), `rejected` (refused before any decision: limits,
/// access, digest), `unavailable` (not the primary, shutting down),
/// `failed` (storage or replication).
pub const COMMITS: &str = "zeolite_commits_total";
/// Time from a commit request's arrival to its answer.
pub const COMMIT_SECONDS: &str = "zeolite_commit_seconds";
/// Time of one write-ahead log `fdatasync`.
pub const FSYNC_SECONDS: &str = "zeolite_fsync_seconds";
/// Transactions made durable by one group commit.
pub const BATCH_SIZE: &str = "zeolite_group_commit_batch_size";
/// Requests served, by `kind` (`get`, `get_many`, `scan`, `commit`,
/// `resolve`, `status`, `promote`, `backup`).
pub const REQUESTS: &str = "zeolite_requests_total";
/// Requests refused by an admission limit, by `limit`.
pub const REFUSALS: &str = "zeolite_refusals_total";
/// Pongs written (one per answered ping).
pub const PONGS: &str = "zeolite_pongs_total";
/// Pings dropped unanswered for coming too soon after the last.
pub const PINGS_DROPPED: &str = "zeolite_pings_dropped_total";
/// Invalidation events written to sessions.
pub const INVALIDATIONS_SENT: &str = "zeolite_invalidations_sent_total";
/// Open client sessions (at scrape).
pub const SESSIONS: &str = "zeolite_sessions";
/// 1 for the role this server holds now, by `role` (at scrape).
pub const ROLE: &str = "zeolite_role";
/// The epoch this server knows (at scrape).
pub const EPOCH: &str = "zeolite_epoch";
/// The last committed TID (at scrape).
pub const LAST_TID: &str = "zeolite_last_tid";
/// TIDs the backup is behind the primary, when known (at scrape).
pub const REPLICATION_LAG_TIDS: &str = "zeolite_replication_lag_tids";
/// On a primary: log batches the backup node has not acknowledged (at
/// scrape; it goes on growing while the backup is gone).
pub const REPLICATION_LAG_RECORDS: &str = "zeolite_replication_lag_records";
/// On a primary: bytes of those batches still in the replicator's memory
/// (16 MiB at most: a lower bound for a backup further behind; at scrape).
pub const REPLICATION_LAG_BYTES: &str = "zeolite_replication_lag_bytes";
/// 1 while the backup holds every acknowledged commit (at scrape).
pub const BACKUP_IN_SYNC: &str = "zeolite_backup_in_sync";
/// How long a pair's primary may still serve without renewing its lease;
/// 0 on a backup (at scrape).
pub const LEASE_REMAINING: &str = "zeolite_lease_remaining_seconds";
/// Bytes of request and response frames, by `direction` (`in`, `out`).
pub const REQUEST_BYTES: &str = "zeolite_request_bytes_total";

/// Every role `ROLE` reports, so a scrape shows 0 for the others.
const ROLES: [&str; 3] = ["standalone", "primary", "backup"];

/// Installs the process's recorder (once; later calls return the same
/// handle) with histogram buckets from 50 µs to 10 s.
pub fn install() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 10.0,
    ];
    let sizes = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets(&buckets)
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(BATCH_SIZE.into()),
                &sizes,
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(COMMITS, "Commits answered, by outcome");
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "Commit request to answer");
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "One write-ahead log fdatasync"
    );
    describe_histogram!(BATCH_SIZE, "Transactions made durable by one group commit");
    describe_counter!(REQUESTS, "Requests served, by kind");
    describe_counter!(REFUSALS, "Requests refused by an admission limit, by limit");
    describe_counter!(PONGS, "Pongs written");
    describe_counter!(PINGS_DROPPED, "Pings dropped for coming too soon");
    describe_counter!(
        INVALIDATIONS_SENT,
        "Invalidation events written to sessions"
    );
    describe_gauge!(SESSIONS, "Open client sessions");
    describe_gauge!(ROLE, "1 for the role held now");
    describe_gauge!(EPOCH, "The epoch this server knows");
    describe_gauge!(LAST_TID, "The last committed TID");
    describe_gauge!(
        REPLICATION_LAG_TIDS,
        "TIDs the backup is behind the primary"
    );
    describe_gauge!(
        BACKUP_IN_SYNC,
        "1 while the backup holds every acknowledged commit"
    );
    describe_gauge!(
        REPLICATION_LAG_RECORDS,
        "Log batches the backup has not acknowledged (on a primary)"
    );
    describe_gauge!(
        REPLICATION_LAG_BYTES,
        Unit::Bytes,
        "Bytes of the log batches the backup has not acknowledged (on a primary)"
    );
    describe_gauge!(
        LEASE_REMAINING,
        Unit::Seconds,
        "How long the primary may serve without renewing its lease"
    );
    describe_counter!(
        REQUEST_BYTES,
        Unit::Bytes,
        "Bytes of request and response frames, by direction"
    );
}

/// Sets the gauges read from the server's state, then renders every
/// metric in the Prometheus text format.
pub fn scrape(handle: &PrometheusHandle, shared: &Shared) -> String {
    handle.run_upkeep();
    metrics::gauge!(SESSIONS)
        .set(shared.sessions.load(std::sync::atomic::Ordering::Relaxed) as f64);
    metrics::gauge!(EPOCH).set(shared.epoch().0 as f64);
    metrics::gauge!(LAST_TID).set(shared.storage.last_tid().0 as f64);
    let role = shared.role().to_string();
    for name in ROLES {
        metrics::gauge!(ROLE, "role" => name).set(if name == role { 1.0 } else { 0.0 });
    }
    if let Some(pair) = &shared.pair {
        let status = pair.status();
        metrics::gauge!(BACKUP_IN_SYNC).set(if status.backup_in_sync { 1.0 } else { 0.0 });
        if let Some(lag) = status.lag_tids {
            metrics::gauge!(REPLICATION_LAG_TIDS).set(lag as f64);
        }
        metrics::gauge!(LEASE_REMAINING).set(pair.lease_remaining().as_secs_f64());
        let (records, bytes) = pair.lag_log().unwrap_or((0, 0));
        metrics::gauge!(REPLICATION_LAG_RECORDS).set(records as f64);
        metrics::gauge!(REPLICATION_LAG_BYTES).set(bytes as f64);
    }
    handle.render()
}
