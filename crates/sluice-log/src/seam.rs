//! The seam between a log and what reads it. Consumers (the sink loop, the delivery
//! engine, the outbox cleaner, SSE feeds, the gauges) see a log only through
//! [`LogBackend`] and [`LogRead`]; the embedded segment log is the first implementation,
//! and a second backend (NATS JetStream) fills the same [`RecordBatch`]es, so no sink or
//! consumer changes with it.
//!
//! The seam has three sides: [`LogBackend`] (read from a position, the durable end,
//! lifecycle), [`Cursors`] (each consumer's acknowledged and persisted position) and
//! [`LogWriter`] (the append side, fed the source's framed records). A backend's delivery
//! state (waiting rooms, dead letters) sits behind `sluice_delivery::DeliveryState`.
//!
//! Invariants every backend keeps:
//! - Positions are dense and increasing; a reader returns only records below the durable
//!   end, in position order, each once.
//! - A position older than the oldest record held is an error ([`LogError::Expired`]),
//!   never a silent skip.
//! - Positions leave the process only as [`Position`] tokens (SSE event ids).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sluice_core::{Framing, Op};

use tokio::sync::{mpsc, watch};

use crate::{Append, Cursor, CursorStore, End, Log, LogError, Reader, RecordBatch, Writer};

/// A wait for records.
pub type Waiting<'a> = Pin<Box<dyn Future<Output = Result<(), LogError>> + Send + 'a>>;

/// Reads records from a position on, at its own pace.
pub trait LogRead: Send {
    /// The position of the next record this reader returns.
    fn position(&self) -> u64;
    /// The durable end of the log, for lag and drains.
    fn log_end(&self) -> u64;
    /// Waits until a record is there to read. Cancel-safe.
    fn wait(&mut self) -> Waiting<'_>;
    /// Reads up to `max_records` (or about `max_bytes`) durable records that are at hand
    /// into `batch`, without waiting, keeping those `keep` accepts; `batch.next` is the
    /// position after the last read. Nothing read (a remote log's records still on their
    /// way) means: [`LogRead::wait`], then read again.
    fn read(
        &mut self,
        batch: &mut RecordBatch,
        max_records: usize,
        max_bytes: usize,
        keep: &mut dyn FnMut(Op, &str, &str) -> bool,
    ) -> Result<(), LogError>;
}

/// A log as its consumers see it.
pub trait LogBackend: Send + Sync + 'static {
    /// A reader whose first record is at `from`.
    fn reader(&self, from: u64) -> Result<Box<dyn LogRead>, LogError>;
    /// The oldest position still held.
    fn first(&self) -> u64;
    /// The position after the last durable record.
    fn durable_end(&self) -> u64;
    /// The durable end as it moves, to watch (the source confirms up to its LSN).
    fn end(&self) -> watch::Receiver<End>;
    /// The consumers' cursors.
    fn cursors(&self) -> &dyn Cursors;
    /// Bytes the log holds (against its budget, for the gauges).
    fn bytes(&self) -> u64;
    /// Whether appending waits for consumers to free space (readiness).
    fn paused(&self) -> bool;
    /// Lets a writer waiting on the budget finish (at shutdown).
    fn closing(&self);
    /// Where the log is, for people (the status): a directory, a stream.
    fn describe(&self) -> String;
}

/// The consumers' positions in one log.
///
/// A cursor's `acked` moves forward over a contiguous prefix only; `persisted` is what a
/// crash comes back to, and what the backend may delete records below. A shed mark (the
/// consumer was detached from a full log) is durable until cleared.
pub trait Cursors: Send + Sync {
    /// The cursor of `name`, at `first` if it has none yet, and the position where it
    /// was shed in an earlier run, if it was.
    fn register(&self, name: &str, first: u64) -> Result<(Arc<Cursor>, Option<u64>), LogError>;
    /// Removes the shed mark of `name` (its re-backfill is requested).
    fn clear_shed(&self, name: &str) -> Result<(), LogError>;
    /// Forgets the cursors of consumers not in `names`, so they stop holding the log.
    fn retain(&self, names: &[&str]) -> Result<(), LogError>;
    /// The registered cursors.
    fn all(&self) -> Vec<Arc<Cursor>>;
    /// Persists every acknowledged position that moved.
    fn commit(&self) -> Result<(), LogError>;
}

/// The append side of a log, run on a thread of its own: appends every [`Append`] it
/// receives, in order, publishes the durable end (with the last durable commit LSN) only
/// once what it covers is durable, and returns spent buffers through `spare`.
pub trait LogWriter: Send + 'static {
    /// How this log frames a record, for producers that frame records themselves: every
    /// [`Append`] holds frames made so.
    fn framing(&self) -> Arc<dyn Framing>;
    fn run(
        self: Box<Self>,
        rx: mpsc::Receiver<Append>,
        spare: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), LogError>;
}

/// A log shared by the consumers of one pipeline.
pub type SharedLog = Arc<dyn LogBackend>;

impl From<Log> for SharedLog {
    fn from(log: Log) -> SharedLog {
        Arc::new(log)
    }
}

impl LogBackend for Log {
    fn reader(&self, from: u64) -> Result<Box<dyn LogRead>, LogError> {
        Ok(Box::new(Reader::new(self, from)?))
    }

    fn first(&self) -> u64 {
        Log::first(self)
    }

    fn durable_end(&self) -> u64 {
        self.next_offset()
    }

    fn end(&self) -> watch::Receiver<End> {
        Log::end(self)
    }

    fn cursors(&self) -> &dyn Cursors {
        Log::cursors(self).as_ref()
    }

    fn bytes(&self) -> u64 {
        Log::bytes(self)
    }

    fn paused(&self) -> bool {
        Log::paused(self)
    }

    fn closing(&self) {
        Log::closing(self)
    }

    fn describe(&self) -> String {
        format!("embedded, in {}", self.inner.config.dir.display())
    }
}

impl Cursors for CursorStore {
    fn register(&self, name: &str, first: u64) -> Result<(Arc<Cursor>, Option<u64>), LogError> {
        CursorStore::register(self, name, first)
    }

    fn clear_shed(&self, name: &str) -> Result<(), LogError> {
        CursorStore::clear_shed(self, name)
    }

    fn retain(&self, names: &[&str]) -> Result<(), LogError> {
        CursorStore::retain(self, names)
    }

    fn all(&self) -> Vec<Arc<Cursor>> {
        CursorStore::all(self)
    }

    fn commit(&self) -> Result<(), LogError> {
        CursorStore::commit(self)
    }
}

impl LogWriter for Writer {
    fn framing(&self) -> Arc<dyn Framing> {
        Arc::new(crate::frame::Frames)
    }

    fn run(
        self: Box<Self>,
        rx: mpsc::Receiver<Append>,
        spare: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), LogError> {
        Writer::run(*self, rx, spare)
    }
}

impl LogRead for Reader {
    fn position(&self) -> u64 {
        Reader::position(self)
    }

    fn log_end(&self) -> u64 {
        Reader::log_end(self)
    }

    fn wait(&mut self) -> Waiting<'_> {
        Box::pin(Reader::wait(self))
    }

    fn read(
        &mut self,
        batch: &mut RecordBatch,
        max_records: usize,
        max_bytes: usize,
        keep: &mut dyn FnMut(Op, &str, &str) -> bool,
    ) -> Result<(), LogError> {
        Reader::read(self, batch, max_records, max_bytes, keep)
    }
}

/// A position as it leaves the process: an opaque token that names its backend, so
/// clients never depend on what a position is inside (an offset in a segment log, a
/// stream sequence). Tokens of one backend sort as their positions do. Decimal numbers —
/// the raw offsets the first releases handed out as SSE ids — are still read, as
/// positions of the embedded log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position(pub u64);

/// The embedded log's tag, the first character of its tokens.
const EMBEDDED: u8 = b'e';

impl Position {
    /// The token: the backend's tag and 16 lowercase hex digits.
    pub fn token(self) -> String {
        let mut out = Vec::with_capacity(17);
        self.write_token(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the token to `out` without allocating.
    pub fn write_token(self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(EMBEDDED);
        for shift in (0..16).rev() {
            out.push(HEX[((self.0 >> (shift * 4)) & 0xf) as usize]);
        }
    }

    /// Reads a token, or a decimal offset issued before tokens.
    pub fn parse(text: &str) -> Option<Position> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text.parse().ok().map(Position);
        }
        let hex = text.strip_prefix(EMBEDDED as char)?;
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(Position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_old_decimal_ids_are_read() {
        for p in [0, 1, 41, u64::MAX] {
            let t = Position(p).token();
            let mut written = Vec::new();
            Position(p).write_token(&mut written);
            assert_eq!(written, t.as_bytes());
            assert!(!t.bytes().all(|b| b.is_ascii_digit()), "{t}");
            assert_eq!(Position::parse(&t), Some(Position(p)));
        }
        assert_eq!(Position::parse("1234"), Some(Position(1234)));
        assert_eq!(Position::parse("abc"), None);
        assert_eq!(Position::parse(""), None);
        assert_eq!(
            Position::parse("j0000000000000001"),
            None,
            "another backend's tag"
        );
        assert_eq!(Position::parse("e00000000000001"), None, "too short");
        assert!(
            Position(9).token() < Position(10).token()
                && Position(255).token() < Position(256).token()
        );
    }
}
