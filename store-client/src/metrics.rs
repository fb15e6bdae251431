//! The client library's metrics, recorded through the `metrics` facade: an
//! application that installs a recorder (a Prometheus exporter, say) sees
//! them; without one, recording costs a load and a branch. Nothing is
//! recorded per cached read: a shared counter there halved cached reads
//! from two threads. The cache's counts (`Client::cache_stats`, kept on
//! per-thread stripes) are copied to the facade with each ping instead.

/// Entries evicted to keep the cache within its byte budget.
pub const CACHE_EVICTIONS: &str = "zeolite_client_cache_evictions_total";
/// Session state changes, by the `state` entered.
pub const SESSION_STATES: &str = "zeolite_client_session_state_changes_total";
/// Requests sent again after a failure or a `NotPrimary` answer.
pub const RETRIES: &str = "zeolite_client_retries_total";
/// Commits whose outcome stayed unknown after resolving.
pub const OUTCOMES_UNKNOWN: &str = "zeolite_client_outcomes_unknown_total";
/// Explicit and automatic `resolve` calls.
pub const RESOLVES: &str = "zeolite_client_resolves_total";
/// Writes sent under `WritePolicy::Unconfirmed` whose answer, when it
/// came, was not a commit (or did not come in time).
pub const UNCONFIRMED_FAILURES: &str = "zeolite_client_unconfirmed_failures_total";
/// Reads answered from the cache (copied from `cache_stats` with each ping).
pub const CACHE_HITS: &str = "zeolite_client_cache_hits_total";
/// Reads that asked the server (copied with each ping).
pub const CACHE_MISSES: &str = "zeolite_client_cache_misses_total";
/// Bytes the cache holds (copied with each ping).
pub const CACHE_BYTES: &str = "zeolite_client_cache_bytes";
/// Entries the cache holds (copied with each ping).
pub const CACHE_ENTRIES: &str = "zeolite_client_cache_entries";

/// Copies the cache's counts to the facade.
pub(crate) fn record_cache(stats: crate::CacheStats) {
    metrics::counter!(CACHE_HITS).absolute(stats.hits);
    metrics::counter!(CACHE_MISSES).absolute(stats.misses);
    metrics::gauge!(CACHE_BYTES).set(stats.bytes as f64);
    metrics::gauge!(CACHE_ENTRIES).set(stats.entries as f64);
}
