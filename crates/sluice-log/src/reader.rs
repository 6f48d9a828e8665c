//! Reading the log from an offset, at the reader's own pace.
//!
//! A reader holds its own file handle, so it never waits on the writer or on another
//! reader; it reads only below the durable end. Reads are plain blocking file reads: the
//! records a reader wants are almost always the ones just written, in the page cache.

use std::fs::File;
use std::io::{BufReader, Read};

use sluice_core::{ChangeId, Lsn, Op};
use tokio::sync::watch;

use crate::frame::{self, FRAME_HEADER, MAX_BODY};
use crate::log::{End, Log};
use crate::LogError;

/// One record of a [`RecordBatch`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    commit_lsn: Lsn,
    ordinal: u64,
    commit_ts_micros: i64,
    op: Op,
    /// Index into the batch's `names`.
    names: u32,
    json: (u32, u32),
}

/// Records read together, in offset order, in one buffer.
#[derive(Debug, Default)]
pub struct RecordBatch {
    /// Frames as read; each entry points at its envelope.
    buf: Vec<u8>,
    entries: Vec<Entry>,
    /// Schema and table names, each pair once for a run of records of one table (names
    /// are checked as UTF-8 once, not at every look at a record).
    names: Vec<(String, String)>,
    /// The offset after the last record read (also when every record was filtered out).
    pub next: u64,
}

/// A record in a batch.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub offset: u64,
    pub id: ChangeId,
    /// µs since the Unix epoch; 0 when not known (snapshot rows).
    pub commit_ts_micros: i64,
    pub op: Op,
    pub schema: &'a str,
    pub table: &'a str,
    /// The JSON envelope.
    pub json: &'a [u8],
}

impl RecordBatch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the envelopes held.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.entries.clear();
        self.names.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        self.entries.iter().map(|e| self.record(e))
    }

    pub fn get(&self, i: usize) -> Option<Record<'_>> {
        self.entries.get(i).map(|e| self.record(e))
    }

    /// Appends a record at `offset` (a reader of another backend, and tests).
    pub fn push(&mut self, offset: u64, head: &sluice_core::RecordHead<'_>, json: &[u8]) {
        let names = match self.names.last() {
            Some((s, t)) if s == head.schema && t == head.table => self.names.len() - 1,
            _ => {
                self.names
                    .push((head.schema.to_owned(), head.table.to_owned()));
                self.names.len() - 1
            }
        };
        let start = self.buf.len();
        self.buf.extend_from_slice(json);
        self.entries.push(Entry {
            offset,
            commit_lsn: head.commit_lsn,
            ordinal: head.ordinal,
            commit_ts_micros: head.commit_ts_micros,
            op: head.op,
            names: names as u32,
            json: (start as u32, self.buf.len() as u32),
        });
        self.next = offset + 1;
    }

    fn record(&self, e: &Entry) -> Record<'_> {
        let (schema, table) = &self.names[e.names as usize];
        Record {
            offset: e.offset,
            id: ChangeId {
                commit_lsn: e.commit_lsn,
                ordinal: e.ordinal,
            },
            commit_ts_micros: e.commit_ts_micros,
            op: e.op,
            schema,
            table,
            json: &self.buf[e.json.0 as usize..e.json.1 as usize],
        }
    }
}

/// Reads records from an offset on.
pub struct Reader {
    log: Log,
    end: watch::Receiver<End>,
    next: u64,
    file: Option<BufReader<File>>,
    /// First offset of the segment after the open one (where to switch files).
    segment_end: Option<u64>,
    /// This reader's slot in the log's read marks.
    mark: usize,
    /// The open segment's base offset, and the bytes of it consumed.
    segment: u64,
    consumed: u64,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.log.inner.reads.release(self.mark);
    }
}

impl Reader {
    /// A reader whose first record is `from`. Past the log's end it waits for it; before
    /// the oldest retained record it is an error that says which records are gone.
    pub fn new(log: &Log, from: u64) -> Result<Reader, LogError> {
        let first = log.first();
        if from < first {
            return Err(LogError::Expired { from, first });
        }
        Ok(Reader {
            end: log.end(),
            log: log.clone(),
            next: from,
            file: None,
            segment_end: None,
            mark: log.inner.reads.register(),
            segment: 0,
            consumed: 0,
        })
    }

    /// The offset of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The durable end of the log, for lag.
    pub fn log_end(&self) -> u64 {
        self.end.borrow().next
    }

    /// Waits until a record is there to read. Cancel-safe.
    pub async fn wait(&mut self) -> Result<(), LogError> {
        self.end
            .wait_for(|e| e.next > self.next)
            .await
            .map_err(|_| LogError::Closed)?;
        Ok(())
    }

    /// Reads what is durable, up to `max_records` or about `max_bytes`, appending the
    /// records `keep` accepts to `batch` (`batch.next` moves over the rest as well).
    pub fn read(
        &mut self,
        batch: &mut RecordBatch,
        max_records: usize,
        max_bytes: usize,
        keep: &mut dyn FnMut(Op, &str, &str) -> bool,
    ) -> Result<(), LogError> {
        let end = self.end.borrow().next;
        let mut read = 0;
        while self.next < end && read < max_records && batch.buf.len() < max_bytes {
            self.read_one(batch, keep)?;
            read += 1;
        }
        batch.next = self.next;
        if read > 0 {
            if let Some(f) = &self.file {
                let marks = &self.log.inner.reads;
                marks.advance(self.mark, self.segment, self.consumed, f.get_ref());
            }
        }
        Ok(())
    }

    fn open_at(&mut self, offset: u64) -> Result<(), LogError> {
        let Some(seg) = self.log.segment_for(offset) else {
            return Err(LogError::Expired {
                from: offset,
                first: self.log.first(),
            });
        };
        let io = |e: std::io::Error| LogError::io(seg.path.display().to_string(), e);
        let file = match File::open(&seg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LogError::Expired {
                    from: offset,
                    first: self.log.first(),
                })
            }
            Err(e) => return Err(io(e)),
        };
        let mut r = BufReader::with_capacity(256 * 1024, file);
        // Skip to the offset: only the frame headers are read.
        let mut at = seg.base;
        let mut header = [0u8; FRAME_HEADER];
        let mut consumed = 0;
        while at < offset {
            r.read_exact(&mut header)
                .map_err(|e| self.damaged(offset, e))?;
            let n = u32::from_le_bytes(header[0..4].try_into().expect("4")) as i64;
            r.seek_relative(n).map_err(io)?;
            consumed += FRAME_HEADER as u64 + n as u64;
            at += 1;
        }
        self.segment = seg.base;
        self.consumed = consumed;
        self.segment_end = {
            let segs = self.log.inner.segments.lock().expect("segments lock");
            segs.iter().find(|s| s.base > seg.base).map(|s| s.base)
        };
        self.file = Some(r);
        Ok(())
    }

    fn damaged(&self, offset: u64, e: impl std::fmt::Display) -> LogError {
        LogError::Corrupt(format!(
            "record {offset}: {e} (the log in {} is damaged; move the damaged segment away and re-backfill the sinks)",
            self.log.inner.config.dir.display()
        ))
    }

    fn read_one(
        &mut self,
        batch: &mut RecordBatch,
        keep: &mut dyn FnMut(Op, &str, &str) -> bool,
    ) -> Result<(), LogError> {
        let offset = self.next;
        if self.file.is_none() || self.segment_end.is_some_and(|e| offset >= e) {
            self.open_at(offset)?;
        }
        let mut header = [0u8; FRAME_HEADER];
        let r = self.file.as_mut().expect("opened above");
        if r.read_exact(&mut header).is_err() {
            // The durable record is not in this file: the writer closed the segment since
            // it was opened, and the record starts the next one. Look again.
            self.open_at(offset)?;
            let r = self.file.as_mut().expect("opened above");
            if let Err(e) = r.read_exact(&mut header) {
                return Err(self.damaged(offset, e));
            }
        }
        let n = u32::from_le_bytes(header[0..4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4"));
        if n > MAX_BODY {
            return Err(self.damaged(offset, "implausible frame length"));
        }
        // Read straight into the batch: a record the filter drops is cut off again.
        let at = batch.buf.len();
        batch.buf.resize(at + n, 0);
        let r = self.file.as_mut().expect("opened above");
        if let Err(e) = r.read_exact(&mut batch.buf[at..]) {
            batch.buf.truncate(at);
            return Err(self.damaged(offset, e));
        }
        let body = &batch.buf[at..];
        if crc32c::crc32c(body) != crc {
            batch.buf.truncate(at);
            return Err(self.damaged(offset, "CRC mismatch"));
        }
        let (head, json_at) = match frame::parse_body(body) {
            Ok(parsed) => parsed,
            Err(e) => {
                batch.buf.truncate(at);
                return Err(self.damaged(offset, e));
            }
        };
        self.next += 1;
        self.consumed += (FRAME_HEADER + n) as u64;
        if !keep(head.op, head.schema, head.table) {
            batch.buf.truncate(at);
            return Ok(());
        }
        let names = name_index(&mut batch.names, head.schema, head.table);
        batch.entries.push(Entry {
            offset,
            commit_lsn: head.commit_lsn,
            ordinal: head.ordinal,
            commit_ts_micros: head.commit_ts_micros,
            op: head.op,
            names,
            json: ((at + json_at) as u32, (at + n) as u32),
        });
        Ok(())
    }
}

/// The index of `(schema, table)` in `names`, added if none of the last few is it (a batch
/// mostly holds runs of one table, or a few interleaved).
fn name_index(names: &mut Vec<(String, String)>, schema: &str, table: &str) -> u32 {
    let recent = names.len().saturating_sub(8);
    if let Some(i) = names[recent..]
        .iter()
        .rposition(|(s, t)| s == schema && t == table)
    {
        return (recent + i) as u32;
    }
    names.push((schema.to_string(), table.to_string()));
    (names.len() - 1) as u32
}
