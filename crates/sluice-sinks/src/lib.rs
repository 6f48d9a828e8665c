//! Sinks: each reads the log through its own cursor, on its own thread, at its own pace.
//!
//! Invariants:
//! - A sink's cursor moves only after the sink acknowledged every record below it
//!   (a whole batch, in log order): DESIGN.md rule 1.
//! - A transient failure (server down, timeout) is retried with backoff, forever, on the
//!   same batch: back-pressure, not loss. The log keeps the records meanwhile, and other
//!   sinks and the source do not notice. A definite failure stops the pipeline with the
//!   reason.
//! - A sink shed by the log's disk budget stops; the next start re-backfills it.

pub mod file;
pub mod pull;
pub mod redis;
mod runner;
pub mod webhook;

pub use runner::{run, RunOptions, TableFilter};
pub use sluice_core::SinkStats;

use sluice_log::RecordBatch;

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying the same batch.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: the operator must change something.
    #[error("{0}")]
    Definite(String),
}

/// A destination for batches of records.
pub trait Sink: Send {
    /// Delivers `batch` (in order). `Ok` means every record is acknowledged (written,
    /// fsync'd, or answered by the server), so the cursor may move past them.
    fn deliver(
        &mut self,
        batch: &RecordBatch,
    ) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
}
