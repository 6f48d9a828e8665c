//! The source's [`Output`]: records framed into the log (through its [`LogWriter`]).
//!
//! Records are framed on the source's task into a buffer; buffers go to the log's writer
//! thread over a bounded channel (back-pressure, not memory growth, when the disk is
//! slow). The writer syncs each group before it publishes the group's last commit LSN as
//! durable, so the LSN confirmed to PostgreSQL never covers a record that is not on disk.
//!
//! After a restart, and after every reconnect within a run, the server may resend from
//! the slot's confirmed position, which may be behind the log (PostgreSQL writes the
//! slot's position to disk lazily, so a server restart can move it back). The source asks
//! to start at the log's durable end, and every change up to the last change in the log
//! or handed to its writer (by id: commit LSN, then ordinal) is skipped: transactions
//! arrive in commit order and ordinals are the same when a transaction is sent again, so
//! those are in the log already, and a transaction the log holds only the beginning of (a
//! crash between two hand-offs of a large one) goes on where it stopped. No transaction
//! is logged twice. Rows of a backfill in the last transaction are the exception: they
//! are read again and may differ, so they are appended again (a repeat of a read, which
//! every sink takes as an upsert).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::{metric, ChangeId, ChangeRecord, Fault, Framing, Lsn, Op, RecordHead};
use sluice_log::{Append, LogWriter, SharedLog};
use sluice_pg::source::Batch;
use sluice_pg::Output;
use tokio::sync::{mpsc, watch};

/// Hand a buffer to the writer once it holds this much.
const HAND_OFF_BYTES: usize = 512 * 1024;
/// Buffers queued for the writer before the source waits.
const QUEUE: usize = 32;

pub struct LogOutput {
    buf: Vec<u8>,
    count: u64,
    tx: mpsc::Sender<Append>,
    /// The log's framing of a record (the writer only writes).
    framing: Arc<dyn Framing>,
    batches: mpsc::Sender<Batch>,
    durable: watch::Receiver<Lsn>,
    writer: Option<std::thread::JoinHandle<Result<(), sluice_log::LogError>>>,
    spare: mpsc::Receiver<Vec<u8>>,
    /// The last change in the log when it was opened, or handed to its writer since:
    /// changes up to it are there already (or will be, or the run fails).
    in_log: Option<ChangeId>,
    /// The last change (not a read) in `buf`: it joins `in_log` once handed off.
    buffered_last: Option<ChangeId>,
    changes: HashMap<String, [Option<metrics::Counter>; 6]>,
    key: String,
    /// The `pipeline` label of the change counters.
    pipeline: String,
}

impl LogOutput {
    /// Starts the log's writer thread; `in_log` is the id of the last change (not a read)
    /// the log holds.
    pub fn start(
        pipeline: &str,
        log: &SharedLog,
        writer: Box<dyn LogWriter>,
        in_log: Option<ChangeId>,
    ) -> Result<LogOutput, Fault> {
        let (tx, rx) = mpsc::channel::<Append>(QUEUE);
        let (spare_tx, spare) = mpsc::channel(QUEUE + 2);
        let framing = writer.framing();
        let writer = std::thread::Builder::new()
            .name("sluice-log-writer".into())
            .spawn(move || writer.run(rx, spare_tx))?;
        let (durable_tx, durable) = watch::channel(Lsn::ZERO);
        let mut end = log.end();
        // The source watches a plain LSN; the log's end carries more.
        tokio::spawn(async move {
            loop {
                let lsn = end.borrow_and_update().durable_lsn;
                durable_tx.send_if_modified(|d| {
                    let moved = lsn > *d;
                    *d = (*d).max(lsn);
                    moved
                });
                if end.changed().await.is_err() {
                    return;
                }
            }
        });
        // Snapshot workers send frames of their own: forward them in order with everything
        // else.
        let (batches, mut lines) = mpsc::channel::<Batch>(QUEUE);
        let forward = tx.clone();
        tokio::spawn(async move {
            while let Some(b) = lines.recv().await {
                let a = Append {
                    bytes: b.bytes,
                    records: b.records,
                    commit: b.commit,
                    ack: b.ack,
                };
                if forward.send(a).await.is_err() {
                    return;
                }
            }
        });
        Ok(LogOutput {
            buf: Vec::with_capacity(HAND_OFF_BYTES * 2),
            count: 0,
            tx,
            framing,
            batches,
            durable,
            writer: Some(writer),
            spare,
            in_log,
            buffered_last: None,
            changes: HashMap::new(),
            key: String::new(),
            pipeline: pipeline.to_owned(),
        })
    }

    /// Stops the writer after it has written everything handed off.
    pub fn close(mut self) -> Result<(), Fault> {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        let (b, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.batches, b));
        if let Some(w) = self.writer.take() {
            w.join()
                .map_err(|_| Fault::fatal("the log writer panicked"))??;
        }
        Ok(())
    }

    fn count_change(&mut self, record: &ChangeRecord) {
        self.key.clear();
        self.key.push_str(&record.schema);
        self.key.push('.');
        self.key.push_str(&record.table);
        // One lookup per record; labels are built once per table and op.
        let slot = record.op.code() as usize;
        let counters = match self.changes.get_mut(self.key.as_str()) {
            Some(c) => c,
            None => self.changes.entry(self.key.clone()).or_default(),
        };
        counters[slot]
            .get_or_insert_with(|| {
                metrics::counter!(metric::CHANGES.name, "pipeline" => self.pipeline.clone(), "table" => self.key.clone(), "op" => record.op.as_str())
            })
            .increment(1);
    }
}

/// Whether `record`, sent again after a restart, is in the log already, given the last
/// change the log holds.
fn is_in_log(record: &ChangeRecord, last: ChangeId) -> bool {
    let id = record.id;
    id.commit_lsn < last.commit_lsn
        || (id.commit_lsn == last.commit_lsn && record.op != Op::Read && id.ordinal <= last.ordinal)
}

impl Output for LogOutput {
    fn push(&mut self, record: &ChangeRecord) {
        if self.in_log.is_some_and(|last| is_in_log(record, last)) {
            return;
        }
        self.count_change(record);
        if record.op != Op::Read {
            self.buffered_last = Some(record.id);
        }
        let start = self.framing.begin(&mut self.buf, &RecordHead::of(record));
        record.write_json(&mut self.buf);
        self.framing.finish(&mut self.buf, start);
        self.count += 1;
    }

    fn wants_hand_off(&self) -> bool {
        self.buf.len() >= HAND_OFF_BYTES
    }

    fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    fn discard_pending(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.buffered_last = None;
    }

    async fn hand_off(
        &mut self,
        commit: Option<Lsn>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(HAND_OFF_BYTES * 2));
        let bytes = std::mem::replace(&mut self.buf, next);
        let append = Append {
            bytes,
            records: std::mem::take(&mut self.count),
            commit,
            ack: None,
        };
        if self.tx.send(append).await.is_err() {
            // The writer stopped: its error says why.
            let err = match self.writer.take().map(|w| w.join()) {
                Some(Ok(Err(e))) => e.to_string(),
                _ => "the log writer stopped".to_string(),
            };
            return Err(err.into());
        }
        // Handed to the writer: a resend after a reconnect skips it.
        if let Some(id) = self.buffered_last.take() {
            self.in_log = Some(self.in_log.map_or(id, |l| l.max(id)));
        }
        Ok(())
    }

    fn durable(&mut self) -> &mut watch::Receiver<Lsn> {
        &mut self.durable
    }

    fn batches(&self) -> mpsc::Sender<Batch> {
        self.batches.clone()
    }

    fn framing(&self) -> Arc<dyn Framing> {
        self.framing.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(lsn: u64, ordinal: u64, op: Op) -> ChangeRecord {
        ChangeRecord {
            id: ChangeId {
                commit_lsn: Lsn(lsn),
                ordinal,
            },
            op,
            schema: "public".into(),
            table: "t".into(),
            key: None,
            before: None,
            after: None,
            unchanged_toast: vec![],
            lsn: Lsn(lsn),
            commit_lsn: Lsn(lsn),
            commit_ts_micros: 0,
            xid: 1,
            message: None,
            old_key: None,
        }
    }

    #[test]
    fn a_resent_transaction_is_skipped_up_to_the_last_change_in_the_log() {
        let last = ChangeId {
            commit_lsn: Lsn(200),
            ordinal: 3,
        };
        // An earlier transaction is whole in the log, its backfill rows too.
        assert!(is_in_log(&change(100, 9, Op::Update), last));
        assert!(is_in_log(&change(100, 1, Op::Read), last));
        // The last transaction: what the log holds is skipped, the rest appended.
        assert!(is_in_log(&change(200, 1, Op::Insert), last));
        assert!(is_in_log(&change(200, 3, Op::Delete), last));
        assert!(!is_in_log(&change(200, 4, Op::Insert), last));
        // Backfill rows of the last transaction are read again: appended.
        assert!(!is_in_log(&change(200, 2, Op::Read), last));
        // Later transactions are new.
        assert!(!is_in_log(&change(201, 0, Op::Insert), last));
    }
}
