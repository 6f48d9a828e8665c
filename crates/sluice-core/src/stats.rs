//! Figures every sink publishes, whichever loop drives it, for the metrics and readiness.

use std::sync::atomic::{AtomicI64, AtomicU64};

/// Counters a sink updates as it acknowledges records; read by the metrics gauges.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Commit time (µs) of the last record acknowledged, 0 if none yet.
    pub last_commit_ts: AtomicI64,
    pub delivered: AtomicU64,
    pub failures: AtomicU64,
}
