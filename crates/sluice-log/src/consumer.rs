//! The consumer loop every reader of a log with a cursor shares (the sink loop, the
//! delivery engine, the outbox cleaner): a reader that starts at the cursor, a filter, the
//! wait for records that stops on drain or abort, and the shed check.
//!
//! Invariants:
//! - The reader starts at the cursor's acknowledged position, so a consumer resumes
//!   exactly where it acknowledged (at-least-once after a crash: from `persisted`).
//! - [`Consumer::next`] reads only after checking the shed mark, so a consumer detached by
//!   the disk budget never reads records that may be gone.
//! - The consumer acknowledges; nothing here moves the cursor on its own.

use std::sync::Arc;

use sluice_core::Op;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use crate::{Cursor, LogError, LogRead, RecordBatch, SharedLog, Waiting};

/// Which records a consumer keeps: `(op, schema, table)`.
pub type Keep = Box<dyn FnMut(Op, &str, &str) -> bool + Send>;

/// What [`Consumer::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// `batch` holds the next records kept (possibly none: all were filtered out);
    /// `batch.next` is the position to acknowledge once they are done.
    Read,
    /// Draining and everything durable is read.
    Drained,
    /// Aborted, or the log closed.
    Stopped,
    /// The disk budget detached this consumer: it must stop reading.
    Shed,
    /// The tick passed with nothing to read.
    Idle,
}

/// When a consumer stops: `drain` delivers what the log holds, then stops; `abort` stops
/// at once.
#[derive(Clone, Default)]
pub struct Until {
    pub drain: CancellationToken,
    pub abort: CancellationToken,
}

/// One consumer's reader, cursor and filter.
pub struct Consumer {
    log: SharedLog,
    reader: Box<dyn LogRead>,
    cursor: Arc<Cursor>,
    keep: Keep,
    pub max_records: usize,
    pub max_bytes: usize,
    /// When fewer than `max_records` records are there to read, wait up to this long for
    /// more before reading (a window that collects records into fewer, larger messages).
    pub linger: Option<std::time::Duration>,
}

impl Consumer {
    /// A consumer reading `log` from `cursor`'s position, keeping what `keep` accepts.
    pub fn open(log: &SharedLog, cursor: Arc<Cursor>, keep: Keep) -> Result<Consumer, LogError> {
        Ok(Consumer {
            log: log.clone(),
            reader: log.reader(cursor.position())?,
            cursor,
            keep,
            max_records: 1000,
            max_bytes: 4 << 20,
            linger: None,
        })
    }

    pub fn cursor(&self) -> &Arc<Cursor> {
        &self.cursor
    }

    /// Reads again from the cursor's position: after a failure, what was read past it
    /// (and perhaps started) is read and delivered again.
    pub fn rewind(&mut self) -> Result<(), LogError> {
        self.reader = self.log.reader(self.cursor.position())?;
        Ok(())
    }

    /// The position of the next record to read.
    pub fn position(&self) -> u64 {
        self.reader.position()
    }

    /// Whether everything durable is read.
    pub fn at_end(&self) -> bool {
        self.reader.position() >= self.reader.log_end()
    }

    pub fn is_shed(&self) -> bool {
        self.cursor.is_shed()
    }

    /// Everything below `next` is done.
    pub fn ack(&self, next: u64) {
        self.cursor.ack(next);
    }

    /// Waits until a record is there to read. Cancel-safe.
    pub fn wait(&mut self) -> Waiting<'_> {
        self.reader.wait()
    }

    /// Reads what is durable now, up to `max_records` (and this consumer's byte limit),
    /// without waiting. `batch` is cleared first.
    pub fn read(&mut self, batch: &mut RecordBatch, max_records: usize) -> Result<(), LogError> {
        batch.clear();
        let keep = &mut self.keep;
        self.reader
            .read(batch, max_records, self.max_bytes, &mut |op, s, t| {
                keep(op, s, t)
            })
    }

    /// The loop step: waits for records (or for `until`, or for `tick`'s next tick), then
    /// reads the next batch.
    pub async fn next(
        &mut self,
        batch: &mut RecordBatch,
        until: &Until,
        mut tick: Option<&mut Interval>,
    ) -> Result<Step, LogError> {
        loop {
            if self.cursor.is_shed() {
                return Ok(Step::Shed);
            }
            if !self.at_end() {
                break;
            }
            if until.drain.is_cancelled() {
                return Ok(Step::Drained);
            }
            let idle = async {
                match tick.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = until.abort.cancelled() => return Ok(Step::Stopped),
                _ = until.drain.cancelled() => {}
                r = self.reader.wait() => match r {
                    Ok(()) => {}
                    Err(LogError::Closed) => return Ok(Step::Stopped),
                    Err(e) => return Err(e),
                },
                _ = idle => return Ok(Step::Idle),
            }
        }
        if let Some(linger) = self.linger {
            if let Some(step) = self.collect(linger, until).await {
                return Ok(step);
            }
        }
        let max = self.max_records;
        loop {
            let before = self.reader.position();
            match self.read(batch, max) {
                // Records were deleted under a reader the budget detached meanwhile.
                Err(_) if self.cursor.is_shed() => return Ok(Step::Shed),
                Err(e) => return Err(e),
                // Nothing at hand below the durable end: a remote log's records are on
                // their way. Waited for, not asked for again in a loop.
                Ok(()) if batch.next <= before => {
                    tokio::select! {
                        biased;
                        _ = until.abort.cancelled() => return Ok(Step::Stopped),
                        r = self.reader.wait() => r?,
                    }
                }
                Ok(()) => return Ok(Step::Read),
            }
        }
    }

    /// The window before a read: returns once `max_records` records are there (counted
    /// before the filter), the window has passed, or the consumer drains (`None`: read
    /// now) or is aborted.
    async fn collect(&mut self, linger: std::time::Duration, until: &Until) -> Option<Step> {
        // Short looks rather than a wake-up per append: the writer does not notify
        // per record, and a window is milliseconds long.
        const LOOK: std::time::Duration = std::time::Duration::from_millis(5);
        let deadline = tokio::time::Instant::now() + linger;
        while self.reader.log_end().saturating_sub(self.reader.position()) < self.max_records as u64
            && !until.drain.is_cancelled()
        {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            tokio::select! {
                biased;
                _ = until.abort.cancelled() => return Some(Step::Stopped),
                _ = until.drain.cancelled() => {}
                _ = tokio::time::sleep(LOOK.min(deadline - now)) => {}
            }
        }
        None
    }
}
