//! PostgreSQL side of Sluice: the wire client (startup, auth, TLS, simple queries), the
//! logical replication stream, the pgoutput decoder, value conversion to the JSON mapping
//! of the change record, transaction assembly, and slot/publication management.

pub mod backfill;
pub mod catalog;
pub mod changes;
pub mod conninfo;
pub mod copy_binary;
mod error;
pub mod initial;
mod output;
pub mod pgoutput;
pub mod replication;
pub mod snapshot;
pub mod source;
pub mod state;
mod tls;
pub mod types;
pub mod values;
pub mod wire;

pub use conninfo::{ConnInfo, SslMode};
pub use error::{PgError, ServerError, INSUFFICIENT_PRIVILEGE};
pub use source::{Output, SourceConfig, SourceError, SourceStatus, SourceWorker};
pub use wire::Connection;
