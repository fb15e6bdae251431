//! Latency and throughput summaries.

use std::time::Duration;

/// What one benchmark run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Operations completed.
    pub ops: usize,
    /// Wall-clock time of the measured phase.
    pub elapsed: Duration,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency in milliseconds.
    pub p99_ms: f64,
    /// How long loading the data took, for workloads that load first.
    pub load: Option<Duration>,
}

impl Summary {
    /// Summarises per-operation latencies measured over `elapsed`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let latencies: Vec<_> = (1..=100).map(Duration::from_millis).collect();
    /// let s = store_benches::Summary::from_latencies(latencies, Duration::from_secs(2));
    /// assert_eq!((s.ops, s.p50_ms, s.p99_ms), (100, 50.0, 99.0));
    /// assert_eq!(s.ops_per_sec(), 50.0);
    /// ```
    pub fn from_latencies(mut latencies: Vec<Duration>, elapsed: Duration) -> Summary {
        latencies.sort_unstable();
        let quantile = |q: f64| {
            if latencies.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest value with at least q of the data at or below it.
            let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1].as_secs_f64() * 1000.0
        };
        Summary {
            ops: latencies.len(),
            elapsed,
            p50_ms: quantile(0.50),
            p99_ms: quantile(0.99),
            load: None,
        }
    }

    /// Throughput over the measured phase.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// The median and the maximum of durations, in seconds (0 when empty).
///
/// ```
/// use std::time::Duration;
/// let trials = [3, 1, 2].map(Duration::from_secs);
/// assert_eq!(store_benches::median_max(&trials), (2.0, 3.0));
/// ```
pub fn median_max(durations: &[Duration]) -> (f64, f64) {
    let mut seconds: Vec<f64> = durations.iter().map(Duration::as_secs_f64).collect();
    seconds.sort_by(f64::total_cmp);
    let median = seconds.get(seconds.len() / 2).copied().unwrap_or(0.0);
    let max = seconds.last().copied().unwrap_or(0.0);
    (median, max)
}
