//! The embedded durable log between the source and the sinks (docs/GUARANTEES.md, rules 1 and 2).
//!
//! The source appends committed records; the writer thread fsyncs them in groups and only
//! then publishes the new durable end, which is when the source may confirm the
//! transactions to PostgreSQL. Every sink reads with its own [`Reader`] at its own pace and
//! moves its own [`Cursor`]; a slow or stopped sink grows this log, never the WAL.
//! On-disk format: [`frame`] (one record) and `log.rs` (segments and the deletion rule).

mod consumer;
pub mod cursors;
pub mod frame;
mod log;
mod pagecache;
mod reader;
mod seam;

pub use consumer::{Consumer, Keep, Step, Until};
pub use cursors::{Cursor, CursorStore};
pub use log::{Append, End, FullPolicy, Log, LogConfig, Writer};
pub use pagecache::drop_cached;
pub use reader::{Reader, Record, RecordBatch};
pub use seam::{Cursors, LogBackend, LogRead, LogWriter, Position, SharedLog, Waiting};

/// A failure of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O ({what}): {source} (check the data_dir's disk and permissions)")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("log cursors ({what}): {source}")]
    State {
        what: String,
        /// Boxed: redb's error is large, and every log result carries this variant.
        #[source]
        source: Box<redb::Error>,
    },
    #[error("log: {0}")]
    Corrupt(String),
    #[error("records from {from} are no longer in the log (it starts at {first}); resume from {first} or later and backfill what is missing")]
    Expired { from: u64, first: u64 },
    #[error("the log was closed")]
    Closed,
    /// A failure of a log kept elsewhere (a JetStream stream), classified where it arose.
    #[error("{0}")]
    Backend(sluice_core::Fault),
}

#[cfg(test)]
mod tests;

impl LogError {
    /// An I/O error while doing `what` (a path, "log sync").
    pub fn io(what: impl Into<String>, source: std::io::Error) -> LogError {
        LogError::Io {
            what: what.into(),
            source,
        }
    }

    /// A failure of the cursors' database at `what` (its path).
    pub fn state(what: impl Into<String>, source: impl Into<redb::Error>) -> LogError {
        LogError::State {
            what: what.into(),
            source: Box::new(source.into()),
        }
    }
}

/// Into the one error policy: the embedded log is local disk, so a failure of it is
/// definite (its message says what to check); a closed log only ends a reader; a remote
/// backend's failure keeps the class it was given.
impl From<LogError> for sluice_core::Fault {
    fn from(e: LogError) -> sluice_core::Fault {
        match e {
            LogError::Backend(fault) => fault,
            e => sluice_core::Fault::fatal("the log").caused_by(e),
        }
    }
}
