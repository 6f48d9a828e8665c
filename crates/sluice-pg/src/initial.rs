//! The initial snapshot: the slot's exported snapshot imported by N workers, each on its
//! own thread and connection, copying page ranges of every table in binary and encoding
//! the rows as `op = "read"` records straight into the output.
//!
//! Invariants:
//! - Every worker reads under the snapshot the slot was created with, so the copy is
//!   exactly the database at the slot's consistent point: each later change arrives through
//!   the stream, none is in the copy as well.
//! - Snapshot records carry `commit_lsn` = the consistent point and ordinals unique within
//!   the snapshot, so they sort before every streamed change of the same row.
//! - A range is marked done in the pipeline state only after its last row is durable.
//! - The stream does not start before the copy is complete: a table's changes never
//!   overtake its copy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sluice_core::{ChangeId, ChangeRecord, EnvelopeTemplate, Framing, Lsn, Op, RecordHead};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::conninfo::ConnInfo;
use crate::error::PgError;
use crate::output::Batch;
use crate::snapshot::{CopyOut, Progress, RowEncoder, TablePlan, TableShape};
use crate::source_error::SourceError;
use crate::state::PipelineState;
use crate::wire::{quote_literal, Connection};

/// Hand a worker's buffer to the output once it holds this much.
const BATCH_BYTES: usize = 1 << 20;
/// Ordinals a worker takes from the shared counter at a time.
const ORDINAL_BLOCK: u64 = 1024;

/// One table of the snapshot with its plan (ranges already done are skipped).
pub struct SnapshotTable {
    pub shape: Arc<TableShape>,
    pub plan: TablePlan,
}

/// Everything the initial snapshot needs.
pub struct InitialSnapshot {
    pub conninfo: ConnInfo,
    pub snapshot_name: String,
    pub consistent_point: Lsn,
    /// Commit time given to the snapshot's records (when the slot was created).
    pub snapshot_ts_micros: i64,
    pub workers: usize,
    pub tables: Vec<SnapshotTable>,
    pub batches: mpsc::Sender<Batch>,
    /// How the output frames records: workers frame their rows themselves.
    pub framing: Arc<dyn Framing>,
    pub state: Arc<PipelineState>,
    pub progress: Arc<Progress>,
}

struct Job {
    table: usize,
    range: usize,
    shape: Arc<TableShape>,
    template: Arc<EnvelopeTemplate>,
    /// The consistent point: every snapshot row's commit LSN.
    at: Lsn,
    sql: String,
}

struct Done {
    table: usize,
    range: usize,
    rows: u64,
    ack: oneshot::Receiver<()>,
}

struct Shared {
    conninfo: ConnInfo,
    snapshot_name: String,
    queue: Mutex<VecDeque<Job>>,
    batches: mpsc::Sender<Batch>,
    framing: Arc<dyn Framing>,
    ordinal: AtomicU64,
    progress: Arc<Progress>,
    cancel: CancellationToken,
}

impl InitialSnapshot {
    /// Copies every table; returns false if cancelled first. The exporting connection
    /// must stay idle until this returns.
    pub async fn run(mut self, cancel: &CancellationToken) -> Result<bool, SourceError> {
        let mut jobs = VecDeque::new();
        for (t, st) in self.tables.iter().enumerate() {
            self.progress.begin(&st.plan, st.shape.est_rows);
            let proto = ChangeRecord {
                id: ChangeId {
                    commit_lsn: self.consistent_point,
                    ordinal: 0,
                },
                op: Op::Read,
                schema: st.shape.schema.clone(),
                table: st.shape.name.clone(),
                key: Some(String::new()),
                before: None,
                after: Some(String::new()),
                unchanged_toast: Vec::new(),
                lsn: self.consistent_point,
                commit_lsn: self.consistent_point,
                commit_ts_micros: self.snapshot_ts_micros,
                xid: 0,
                message: None,
                old_key: None,
            };
            let template = Arc::new(EnvelopeTemplate::new(&proto));
            for (r, range) in st.plan.ranges.iter().enumerate() {
                if st.plan.done[r] {
                    continue;
                }
                jobs.push_back(Job {
                    table: t,
                    range: r,
                    shape: st.shape.clone(),
                    template: template.clone(),
                    at: self.consistent_point,
                    sql: st.shape.copy_sql(*range, st.plan.filter.as_deref()),
                });
            }
        }
        let total = jobs.len();
        let workers = self.workers.clamp(1, total.max(1));
        info!(
            tables = self.tables.len(),
            ranges = total,
            workers,
            at = %self.consistent_point,
            "snapshot: copying under the slot's snapshot"
        );
        let stop = cancel.child_token();
        let shared = Arc::new(Shared {
            conninfo: self.conninfo.clone(),
            snapshot_name: self.snapshot_name.clone(),
            queue: Mutex::new(jobs),
            batches: self.batches.clone(),
            framing: self.framing.clone(),
            ordinal: AtomicU64::new(0),
            progress: self.progress.clone(),
            cancel: stop.clone(),
        });
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut threads = Vec::new();
        for i in 0..workers {
            let shared = shared.clone();
            let done_tx = done_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sluice-snapshot-{i}"))
                    .spawn(move || worker(&shared, done_tx))
                    .map_err(PgError::Io)?,
            );
        }
        drop(done_tx);
        let mut failure = None;
        while let Some(d) = done_rx.recv().await {
            let d: Done = d;
            if d.ack.await.is_err() {
                failure = Some(PgError::Definite(
                    "the output stopped during the snapshot".into(),
                ));
                stop.cancel();
                break;
            }
            let st = &mut self.tables[d.table];
            st.plan.done[d.range] = true;
            st.plan.rows += d.rows;
            self.state
                .put(&TablePlan::key(&st.plan.schema, &st.plan.table), &st.plan)?;
            self.progress.range_done(&st.plan);
            info!(table = %st.plan.qualified(), range = d.range, rows = d.rows, "snapshot: range done");
            if st.plan.complete() {
                info!(table = %st.plan.qualified(), rows = st.plan.rows, "snapshot: table copied");
            }
        }
        for t in threads {
            let joined = tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| PgError::Definite(format!("snapshot worker: {e}")))?;
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop.cancel();
                    warn!(error = %e, "snapshot: worker failed");
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert(PgError::Definite("snapshot worker panicked".into()));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(!cancel.is_cancelled() && self.tables.iter().all(|t| t.plan.complete()))
    }
}

/// One worker thread: its own runtime and connection, ranges from the shared queue.
fn worker(shared: &Shared, done: mpsc::UnboundedSender<Done>) -> Result<(), PgError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PgError::Io)?;
    rt.block_on(async {
        let mut conn = Connection::connect(&shared.conninfo, false).await?;
        conn.execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; \
             SET LOCAL jit = off",
            quote_literal(&shared.snapshot_name)
        ))
        .await?;
        let mut out = Vec::with_capacity(BATCH_BYTES * 2);
        let (mut next, mut end) = (0u64, 0u64);
        loop {
            if shared.cancel.is_cancelled() {
                return Ok(());
            }
            let Some(job) = shared.queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                break;
            };
            let table = job.shape.qualified();
            let mut enc = RowEncoder::new(job.shape.clone());
            let mut copy = CopyOut::start(&mut conn, &job.sql, job.shape.copy_columns()).await?;
            let mut rows = 0u64;
            let mut framed = 0u64;
            loop {
                let before = rows;
                let more = copy
                    .next(&mut |fields| {
                        if next == end {
                            next = shared.ordinal.fetch_add(ORDINAL_BLOCK, Ordering::Relaxed) + 1;
                            end = next + ORDINAL_BLOCK;
                        }
                        // Encoded and framed in place: no per-row buffers to copy, and
                        // the log's writer only writes.
                        let start = shared.framing.begin(
                            &mut out,
                            &RecordHead {
                                commit_lsn: job.at,
                                ordinal: next,
                                commit_ts_micros: 0,
                                op: Op::Read,
                                schema: &job.shape.schema,
                                table: &job.shape.name,
                            },
                        );
                        job.template.write_head(next, &mut out);
                        enc.encode_object(fields, true, &mut out)?;
                        job.template.write_mid(&mut out);
                        enc.encode_object(fields, false, &mut out)?;
                        job.template.write_tail(&mut out);
                        shared.framing.finish(&mut out, start);
                        next += 1;
                        framed += 1;
                        rows += 1;
                        Ok(())
                    })
                    .await?;
                shared.progress.add_rows(&table, rows - before);
                if !more || out.len() >= BATCH_BYTES {
                    let (ack_tx, ack_rx) = oneshot::channel();
                    let batch = Batch {
                        bytes: std::mem::replace(&mut out, Vec::with_capacity(BATCH_BYTES * 2)),
                        commit: None,
                        ack: (!more).then_some(ack_tx),
                        records: std::mem::take(&mut framed),
                    };
                    if shared.batches.send(batch).await.is_err() {
                        return Err(PgError::Definite("the output stopped".into()));
                    }
                    if !more {
                        let _ = done.send(Done {
                            table: job.table,
                            range: job.range,
                            rows,
                            ack: ack_rx,
                        });
                        break;
                    }
                }
                if shared.cancel.is_cancelled() {
                    // Drops the connection mid-COPY: the range stays not done.
                    return Ok(());
                }
            }
        }
        conn.execute("COMMIT").await?;
        conn.close().await;
        Ok(())
    })
}
