//! PostgreSQL side of Sluice: the source worker on the replication stream, the pgoutput
//! decoder, value conversion to the JSON mapping of the change record, transaction
//! assembly, snapshots and backfills, and slot/publication management. The client it
//! talks through (connections, TLS, the replication protocol) is `sluice-pgwire`,
//! re-exported here under its module names.

pub mod backfill;
pub mod catalog;
pub mod changes;
pub mod copy_binary;
pub mod heartbeat;
pub mod initial;
mod output;
pub mod pgoutput;
pub mod snapshot;
pub mod source;
mod source_error;
pub mod state;
pub mod types;
pub mod values;

pub use sluice_pgwire::Connection;
pub use sluice_pgwire::{conninfo, error, replication, wire};
pub use sluice_pgwire::{ConnInfo, PgError, ServerError, SslMode, INSUFFICIENT_PRIVILEGE};
pub use source::{Output, SourceConfig, SourceStatus, SourceWorker};
pub use source_error::SourceError;

/// A decoding failure stops the source: a stream that cannot be decoded will not decode
/// better after a reconnect.
impl From<pgoutput::DecodeError> for PgError {
    fn from(e: pgoutput::DecodeError) -> PgError {
        PgError::Decode(Box::new(e))
    }
}
