//! The vocabulary every Sluice crate shares, with no I/O: log sequence numbers, change ids,
//! the change record and its JSON envelope, and the classification of errors into
//! transient (retry) and definite (stop and tell the operator).
//!
//! Invariants:
//! - A [`ChangeId`] orders exactly like `(commit_lsn, ordinal)`, and its text form
//!   round-trips through [`ChangeId::from_str`](std::str::FromStr).
//! - [`ChangeRecord::write_json`] always produces one valid JSON object; row images are
//!   carried already encoded as JSON objects, so they are spliced, never re-parsed.

mod backoff;
mod check;
mod columns;
mod error;
mod framing;
mod lsn;
pub mod metric;
mod record;
mod stats;
mod store;
mod tables;
pub mod time;

pub use backoff::{Backoff, Retrying};
pub use check::Finding;
pub use columns::{key_columns, Catalog, ColumnInfo, Columns, ValueKind};
pub use error::{BoxError, Classify, ErrorClass, Fault};
pub use framing::{Framing, RecordHead};
pub use lsn::{ChangeId, Lsn, ParseError};
pub use record::{
    push_decimal_min, ChangeRecord, EnvelopeTemplate, LogicalMessage, Op, OUTBOX_PREFIX,
};
pub use stats::SinkStats;
pub use store::{StateStore, StoreError};
pub use tables::TablePatterns;
pub use time::{format_rfc3339_micros, pg_epoch_to_unix_micros};
