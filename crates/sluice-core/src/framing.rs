//! How a log frames one record around its JSON envelope, as a seam: producers that
//! encode envelopes themselves (the snapshot workers, on their own threads) frame them
//! there too, so the log's writer only writes, whatever the log's format.
//!
//! Invariant: `begin` then the envelope's bytes then `finish` on the same buffer makes one
//! whole frame; frames written so sit back to back and go to the log as they are.

use crate::{ChangeRecord, Lsn, Op};

/// The fixed fields of a record that a log keeps beside its JSON envelope, so readers
/// filter and order without parsing JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead<'a> {
    pub commit_lsn: Lsn,
    pub ordinal: u64,
    /// µs since the Unix epoch; 0 when not known (snapshot rows).
    pub commit_ts_micros: i64,
    pub op: Op,
    pub schema: &'a str,
    pub table: &'a str,
}

impl<'a> RecordHead<'a> {
    /// The fixed fields of `record`.
    pub fn of(record: &'a ChangeRecord) -> RecordHead<'a> {
        RecordHead {
            commit_lsn: record.id.commit_lsn,
            ordinal: record.id.ordinal,
            commit_ts_micros: record.commit_ts_micros,
            op: record.op,
            schema: &record.schema,
            table: &record.table,
        }
    }
}

/// A log's framing of one record.
pub trait Framing: Send + Sync {
    /// Appends what goes before the envelope; returns where the frame starts.
    fn begin(&self, out: &mut Vec<u8>, head: &RecordHead<'_>) -> usize;
    /// Completes the frame that starts at `start` (the envelope has been appended).
    fn finish(&self, out: &mut Vec<u8>, start: usize);
}
