//! Live backfills: copy a table while the stream keeps flowing, without holding a snapshot
//! (the DBLog method). Each page range is read between two watermarks written into the
//! WAL with `pg_logical_emit_message`; when the stream reaches the high watermark, the
//! range's rows are emitted there, minus every row whose key the stream changed between
//! the two watermarks (the stream already carries a newer version of those).
//!
//! The same path resumes an initial snapshot that was interrupted: its remaining ranges
//! are read this way once the stream runs.
//!
//! Invariants:
//! - A range's rows enter the output at the high watermark's position in commit order, as
//!   `op = "read"` records with the watermark transaction's commit LSN, so per key they
//!   sort after every change the copy may have missed and before every later one.
//! - A row is dropped only if the stream delivered a change of its key (or a truncate of
//!   its table) between the chunk's registration and its high watermark; such a change
//!   carries the row itself, so dropping is safe. A table without a key cannot be
//!   checked, so on-demand backfills refuse it.
//! - Visibility, not only WAL order: a transaction whose commit record precedes the low
//!   watermark may still be invisible to the chunk's snapshot (a committer waiting for a
//!   synchronous standby has written its commit and is still in the proc array). The chunk
//!   is read in a REPEATABLE READ transaction; once the source has passed the low
//!   watermark, the snapshot's running transactions are checked against the transactions
//!   the source has seen commit (the last `RECENT_XIDS` of them): if one of them has, the
//!   read is retried until it is visible. Keys are gathered from the registration of the
//!   chunk, before the low watermark is written, so a commit racing the watermark is
//!   inside the window too.
//! - A range is marked done in the pipeline state only after the source confirmed past the
//!   high watermark, i.e. its rows are durable; after a crash the backfill continues from
//!   the first range not done, and watermarks of the lost run are ignored.
//! - A rewrite of the table (VACUUM FULL, CLUSTER) moves rows between pages: the plan is
//!   made again from the new file and every range is read again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::{Backoff, ChangeId, ChangeRecord, Lsn, Op};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::changes::Exclusions;
use crate::conninfo::ConnInfo;
use crate::error::PgError;
use crate::output::SourceStatus;
use crate::snapshot::{describe, CopyOut, PlanKind, Progress, RowEncoder, TablePlan, TableShape};
use crate::source_error::SourceError;
use crate::state::PipelineState;
use crate::values::TypeRegistry;
use crate::wire::{quote_literal, Connection};

/// Prefix of a pipeline's watermark messages.
pub fn watermark_prefix(pipeline: &str) -> String {
    format!("sluice.watermark.{pipeline}")
}

/// Prefix of messages that ask a running pipeline to do something (`sluice backfill`).
pub fn command_prefix(pipeline: &str) -> String {
    format!("sluice.command.{pipeline}")
}

/// A backfill asked for through the WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillRequest {
    pub schema: String,
    pub table: String,
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
}

/// The statement that asks pipeline `pipeline` to backfill: it travels through the WAL, so
/// the pipeline sees it in order, wherever and whenever it runs.
pub fn request_sql(pipeline: &str, req: &BackfillRequest) -> String {
    let body = serde_json::json!({ "backfill": req }).to_string();
    format!(
        "SELECT pg_logical_emit_message(true, {}, {})",
        quote_literal(&command_prefix(pipeline)),
        quote_literal(&body)
    )
}

#[derive(Serialize, Deserialize)]
struct Mark {
    tag: String,
    high: bool,
}

#[derive(Deserialize)]
struct Command {
    backfill: BackfillRequest,
}

/// What the source does with a record after [`Watermarks::observe`].
#[derive(Debug)]
pub enum Seen {
    /// Deliver it.
    Pass,
    /// Internal: do not deliver.
    Drop,
    /// A high watermark: deliver these rows in its place.
    Emit(Vec<ChangeRecord>),
    /// A backfill request.
    Command(BackfillRequest),
}

struct Window {
    schema: Arc<str>,
    table: Arc<str>,
    keyed: bool,
    /// Keys changed since the chunk was registered.
    keys: Option<HashSet<String>>,
    /// The source has passed the low watermark.
    low_seen: bool,
    truncated: bool,
    rows: Option<Arc<Vec<(String, String)>>>,
    /// Commit LSN of the high watermark's transaction once its rows went out.
    emitted_at: Option<Lsn>,
}

/// Shared by the source, which sees the watermarks in the stream, and the backfill worker.
pub struct Watermarks {
    pipeline: String,
    /// Where this pipeline's heartbeats are noted as they come through.
    arrivals: Arc<crate::heartbeat::Arrivals>,
    prefix: String,
    command_prefix: String,
    /// Whether any window is registered: the source's hot path checks only this.
    active: AtomicBool,
    windows: Mutex<HashMap<String, Window>>,
    /// Transactions the source has delivered, most recent last.
    recent: Mutex<RecentXids>,
    /// The last one noted, so the records of one transaction take no lock.
    last_xid: std::sync::atomic::AtomicU32,
    /// Wakes the worker: a new plan, or a watermark went out.
    pub wake: Notify,
}

/// How many delivered transactions the visibility check remembers: a commit that stays
/// invisible for longer than this many transactions of the captured tables is not seen.
pub const RECENT_XIDS: usize = 100_000;

#[derive(Default)]
struct RecentXids {
    order: std::collections::VecDeque<u32>,
    set: HashSet<u32>,
}

impl Watermarks {
    pub fn new(pipeline: &str) -> Watermarks {
        Watermarks {
            pipeline: pipeline.to_owned(),
            arrivals: Arc::default(),
            prefix: watermark_prefix(pipeline),
            command_prefix: command_prefix(pipeline),
            active: AtomicBool::new(false),
            windows: Mutex::new(HashMap::new()),
            recent: Mutex::new(RecentXids::default()),
            last_xid: std::sync::atomic::AtomicU32::new(0),
            wake: Notify::new(),
        }
    }

    /// Notes heartbeats in `arrivals`.
    pub fn with_arrivals(mut self, arrivals: Arc<crate::heartbeat::Arrivals>) -> Watermarks {
        self.arrivals = arrivals;
        self
    }

    /// Notes the transaction of a record the source delivers (records of one transaction
    /// come together, so this is one lookup per record and one insert per transaction).
    pub fn delivered(&self, xid: u32) {
        if xid == 0 || self.last_xid.swap(xid, Ordering::Relaxed) == xid {
            return;
        }
        let Ok(mut r) = self.recent.lock() else {
            return;
        };
        if r.set.insert(xid) {
            r.order.push_back(xid);
            if r.order.len() > RECENT_XIDS {
                if let Some(old) = r.order.pop_front() {
                    r.set.remove(&old);
                }
            }
        }
    }

    /// Whether the source has delivered any of these transactions.
    fn any_delivered(&self, xids: &[u32]) -> bool {
        self.recent
            .lock()
            .map(|r| xids.iter().any(|x| r.set.contains(x)))
            .unwrap_or(false)
    }

    fn low_seen(&self, tag: &str) -> bool {
        self.windows
            .lock()
            .map(|w| w.get(tag).is_some_and(|w| w.low_seen))
            .unwrap_or(false)
    }

    /// Whether `r` needs [`Watermarks::observe`]: cheap enough for every record.
    pub fn interested(&self, r: &ChangeRecord) -> bool {
        r.op == Op::Message || self.active.load(Ordering::Relaxed)
    }

    /// Looks at one record in commit order.
    pub fn observe(&self, r: &ChangeRecord) -> Seen {
        if let Some(m) = &r.message {
            if m.prefix == self.prefix {
                return self.watermark(r, &m.content);
            }
            if &*m.prefix == crate::heartbeat::PREFIX {
                // Anyone's heartbeat is internal; only ours measures freshness.
                self.arrivals.observe(&self.pipeline, &m.content);
                return Seen::Drop;
            }
            if m.prefix == self.command_prefix {
                return match serde_json::from_slice::<Command>(&m.content) {
                    Ok(c) => Seen::Command(c.backfill),
                    Err(e) => {
                        warn!(error = %e, "ignoring a malformed command message");
                        Seen::Drop
                    }
                };
            }
            return Seen::Pass;
        }
        let Ok(mut windows) = self.windows.lock() else {
            return Seen::Pass;
        };
        for w in windows.values_mut() {
            if w.emitted_at.is_some() || *w.table != *r.table || *w.schema != *r.schema {
                continue;
            }
            let Some(keys) = w.keys.as_mut() else {
                continue;
            };
            if r.op == Op::Truncate {
                w.truncated = true;
            }
            for k in [&r.key, &r.old_key].into_iter().flatten() {
                keys.insert(k.clone());
            }
        }
        Seen::Pass
    }

    fn watermark(&self, r: &ChangeRecord, content: &[u8]) -> Seen {
        let Ok(mark) = serde_json::from_slice::<Mark>(content) else {
            return Seen::Drop;
        };
        let Ok(mut windows) = self.windows.lock() else {
            return Seen::Drop;
        };
        // Unknown tags are from a run that crashed: that range is read again anyway.
        let Some(w) = windows.get_mut(&mark.tag) else {
            return Seen::Drop;
        };
        if !mark.high {
            // Seen again after a reconnect: keep what was gathered, it only grows.
            w.keys.get_or_insert_with(HashSet::new);
            w.low_seen = true;
            self.wake.notify_one();
            return Seen::Drop;
        }
        let (Some(rows), Some(keys)) = (w.rows.clone(), w.keys.as_ref()) else {
            return Seen::Drop;
        };
        let mut out = Vec::with_capacity(rows.len());
        if !w.truncated {
            for (key, after) in rows.iter() {
                if w.keyed && keys.contains(key) {
                    continue;
                }
                out.push(ChangeRecord {
                    id: ChangeId {
                        commit_lsn: r.id.commit_lsn,
                        // The watermark's own ordinal goes to the first row.
                        ordinal: r.id.ordinal + out.len() as u64,
                    },
                    op: Op::Read,
                    schema: w.schema.clone(),
                    table: w.table.clone(),
                    key: Some(key.clone()),
                    before: None,
                    after: Some(after.clone()),
                    unchanged_toast: Vec::new(),
                    lsn: r.lsn,
                    commit_lsn: r.commit_lsn,
                    commit_ts_micros: r.commit_ts_micros,
                    xid: r.xid,
                    message: None,
                    old_key: None,
                });
            }
        }
        w.emitted_at = Some(r.commit_lsn);
        self.wake.notify_one();
        Seen::Emit(out)
    }

    fn expect(&self, tag: &str, shape: &TableShape) {
        if let Ok(mut w) = self.windows.lock() {
            w.insert(
                tag.to_owned(),
                Window {
                    schema: shape.schema.clone(),
                    table: shape.name.clone(),
                    keyed: shape.keyed,
                    // From now, not from the low watermark: see the module doc.
                    keys: Some(HashSet::new()),
                    low_seen: false,
                    truncated: false,
                    rows: None,
                    emitted_at: None,
                },
            );
            self.active.store(true, Ordering::Relaxed);
        }
    }

    fn deposit(&self, tag: &str, rows: Vec<(String, String)>) {
        if let Ok(mut w) = self.windows.lock() {
            if let Some(w) = w.get_mut(tag) {
                w.rows = Some(Arc::new(rows));
            }
        }
    }

    /// Rows emitted for `tag`, and where.
    fn emitted(&self, tag: &str) -> Option<(Lsn, usize, bool)> {
        let w = self.windows.lock().ok()?;
        let w = w.get(tag)?;
        let at = w.emitted_at?;
        let rows = w.rows.as_ref().map_or(0, |r| r.len());
        Some((at, rows, w.truncated))
    }

    fn forget(&self, tag: &str) {
        if let Ok(mut w) = self.windows.lock() {
            w.remove(tag);
            self.active.store(!w.is_empty(), Ordering::Relaxed);
        }
    }
}

/// Creates and stores the plan of a backfill; refuses tables without a key.
pub async fn plan_backfill(
    conn: &mut Connection,
    state: &PipelineState,
    req: &BackfillRequest,
    exclusions: &Exclusions,
    chunk_rows: u64,
    kind: PlanKind,
) -> Result<TablePlan, SourceError> {
    let excluded = exclusions.get(&format!("{}.{}", req.schema, req.table));
    let shape = describe(
        conn,
        &req.schema,
        &req.table,
        excluded,
        &mut TypeRegistry::new(),
    )
    .await?;
    if !shape.keyed {
        return Err(PgError::Definite(format!(
            "cannot backfill {}.{} while streaming: it has no primary key or replica identity \
             index, so rows the stream changes during a chunk cannot be told apart. Add a \
             primary key (or ALTER TABLE ... REPLICA IDENTITY FULL)",
            req.schema, req.table
        ))
        .into());
    }
    let plan = TablePlan::new(&shape, kind, req.filter.clone(), chunk_rows);
    state.put(&TablePlan::key(&req.schema, &req.table), &plan)?;
    Ok(plan)
}

/// The thread that works through incomplete plans with watermarks.
pub struct BackfillWorker {
    pub conninfo: ConnInfo,
    pub pipeline: String,
    pub state: Arc<PipelineState>,
    pub marks: Arc<Watermarks>,
    pub status: watch::Receiver<SourceStatus>,
    pub exclusions: Exclusions,
    pub progress: Arc<Progress>,
}

impl BackfillWorker {
    /// Runs on its own thread until `cancel`.
    pub fn spawn(self, cancel: CancellationToken) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("sluice-backfill".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "backfill: cannot start");
                        return;
                    }
                };
                rt.block_on(self.run(cancel));
            })
    }

    async fn run(mut self, cancel: CancellationToken) {
        let nonce = fastrand::u64(..);
        let mut seq = 0u64;
        let mut conn: Option<Connection> = None;
        let mut backoff =
            Backoff::doubling(Duration::from_millis(200), Duration::from_secs(30)).start();
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let plans: Vec<TablePlan> = match self.state.scan::<TablePlan>("plan/") {
                Ok(p) => p
                    .into_iter()
                    .map(|(_, p)| p)
                    .filter(|p| !p.complete())
                    .collect(),
                Err(e) => {
                    error!(error = %e, "backfill: cannot read the plans");
                    Vec::new()
                }
            };
            if plans.is_empty() {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    _ = self.marks.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            for mut plan in plans {
                if conn.is_none() {
                    match Connection::connect(&self.conninfo, false).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            warn!(error = %e, "backfill: cannot connect; retrying");
                            break;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { break };
                match self.table(c, &mut plan, nonce, &mut seq, &cancel).await {
                    Ok(()) => backoff.reset(),
                    Err(e) if e.class() == sluice_core::ErrorClass::Definite => {
                        error!(table = %plan.qualified(), error = %e, "backfill: stopped for this table; fix the cause and run `sluice backfill` again");
                        let _ = self
                            .state
                            .remove(&TablePlan::key(&plan.schema, &plan.table));
                        self.progress.forget(&plan.qualified());
                        // It may have failed inside a transaction: start clean.
                        conn = None;
                    }
                    Err(e) => {
                        warn!(table = %plan.qualified(), error = %e, "backfill: will retry");
                        conn = None;
                        break;
                    }
                }
                if cancel.is_cancelled() {
                    return;
                }
            }
            if conn.is_none() {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }

    async fn table(
        &mut self,
        conn: &mut Connection,
        plan: &mut TablePlan,
        nonce: u64,
        seq: &mut u64,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        // Streaming first: a watermark is only useful once the source reads the stream.
        let streaming = tokio::select! {
            biased;
            _ = cancel.cancelled() => false,
            r = self.status.wait_for(|s| s.streaming) => r.is_ok(),
        };
        if !streaming {
            return Ok(());
        }
        if conn.server_version_num() < 140000 {
            // The watermarks are logical messages, which pgoutput sends from 14 on.
            return Err(PgError::Definite(format!(
                "backfilling {} while streaming needs PostgreSQL 14 or later (the server is {}); \
                 copy it by recreating the pipeline (sluice teardown, then run) instead",
                plan.qualified(),
                conn.server_version_num()
            ))
            .into());
        }
        let key = TablePlan::key(&plan.schema, &plan.table);
        let excluded: Option<BTreeSet<String>> = self.exclusions.get(&plan.qualified()).cloned();
        let mut types = TypeRegistry::new();
        let shape = Arc::new(
            describe(
                conn,
                &plan.schema,
                &plan.table,
                excluded.as_ref(),
                &mut types,
            )
            .await?,
        );
        if !shape.keyed {
            warn!(table = %plan.qualified(), "backfill: table has no key; rows changed while a chunk is read may arrive in their older version after the change");
        }
        if shape.relfilenode != plan.relfilenode {
            let redo = plan.done.iter().filter(|d| **d).count() as u64;
            warn!(table = %plan.qualified(), "backfill: the table was rewritten (VACUUM FULL, CLUSTER...); reading it again from the start");
            let mut fresh =
                TablePlan::new(&shape, plan.kind, plan.filter.clone(), rows_per_range(plan));
            fresh.reread = plan.reread + redo;
            *plan = fresh;
            self.state.put(&key, plan)?;
        }
        self.progress.begin(plan, shape.est_rows);
        info!(table = %plan.qualified(), remaining = plan.remaining(), ranges = plan.ranges.len(), kind = ?plan.kind, "backfill: started");
        let prefix = watermark_prefix(&self.pipeline);
        for i in 0..plan.ranges.len() {
            if plan.done[i] {
                continue;
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
            *seq += 1;
            let tag = format!("{nonce:016x}-{seq}");
            self.marks.expect(&tag, &shape);
            let result = self
                .range(
                    conn,
                    Range {
                        plan,
                        i,
                        shape: &shape,
                        tag: &tag,
                        prefix: &prefix,
                    },
                    cancel,
                )
                .await;
            self.marks.forget(&tag);
            match result? {
                Some(rows) => {
                    plan.done[i] = true;
                    plan.rows += rows;
                    self.state.put(&key, plan)?;
                    self.progress.range_done(plan);
                    info!(table = %plan.qualified(), range = i, rows, "backfill: range done");
                }
                None => return Ok(()),
            }
        }
        info!(table = %plan.qualified(), rows = plan.rows, "backfill: table copied");
        self.state.remove(&key)?;
        Ok(())
    }

    /// One range between watermarks; the rows delivered, or `None` if cancelled.
    async fn range(
        &mut self,
        conn: &mut Connection,
        range: Range<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, PgError> {
        let Range {
            plan,
            i,
            shape,
            tag,
            prefix,
        } = range;
        let mark = |high: bool| {
            let body = serde_json::to_string(&Mark {
                tag: tag.to_owned(),
                high,
            })
            .unwrap_or_default();
            format!(
                "SELECT pg_logical_emit_message(true, {}, {})",
                quote_literal(prefix),
                quote_literal(&body)
            )
        };
        conn.execute(&mark(false)).await?;
        // A snapshot in which every transaction still shown as running really is running:
        // those commit after the low watermark, inside the window. The source has seen
        // every commit before the low watermark once it has passed it.
        let mut attempts = 0u64;
        loop {
            let running: Vec<u32> = conn
                .simple_query(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL jit = off; \
                     SELECT x FROM pg_snapshot_xip(pg_current_snapshot()) x",
                )
                .await?
                .last()
                .map(|r| {
                    r.rows
                        .iter()
                        .filter_map(|row| row.first().cloned().flatten())
                        .filter_map(|x| x.parse::<u64>().ok())
                        // The 32-bit xid the stream carries.
                        .map(|x| x as u32)
                        .collect()
                })
                .unwrap_or_default();
            while !self.marks.low_seen(tag) {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(None),
                    _ = self.marks.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            if !self.marks.any_delivered(&running) {
                break;
            }
            conn.execute("ROLLBACK").await?;
            attempts += 1;
            if attempts.is_multiple_of(100) {
                warn!(table = %plan.qualified(), "backfill: committed transactions stay invisible (waiting for a synchronous standby?); still waiting");
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        info!(table = %plan.qualified(), range = i, "backfill: reading range");
        let mut rows = Vec::new();
        let mut enc = RowEncoder::new(shape.clone());
        let (mut key, mut after) = (Vec::new(), Vec::new());
        let sql = shape.copy_sql(plan.ranges[i], plan.filter.as_deref());
        let mut copy = CopyOut::start(conn, &sql, shape.copy_columns()).await?;
        while copy
            .next(&mut |fields| {
                key.clear();
                after.clear();
                enc.encode(fields, &mut key, &mut after)?;
                rows.push((utf8(&key)?, utf8(&after)?));
                Ok(())
            })
            .await?
        {}
        conn.execute("COMMIT").await?;
        let read = rows.len() as u64;
        self.progress.add_rows(&plan.qualified(), read);
        self.marks.deposit(tag, rows);
        conn.execute(&mark(true)).await?;
        // Done once the source has confirmed past the high watermark: its rows are durable.
        loop {
            if let Some((at, _, _)) = self.marks.emitted(tag) {
                if self.status.borrow().confirmed > at {
                    return Ok(Some(read));
                }
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                _ = self.status.changed() => {}
                _ = self.marks.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// One range of a table's backfill, between its two watermarks.
struct Range<'a> {
    plan: &'a TablePlan,
    /// Its index among the plan's ranges.
    i: usize,
    shape: &'a Arc<TableShape>,
    /// The tag its watermarks carry.
    tag: &'a str,
    /// The prefix of the pipeline's watermark messages.
    prefix: &'a str,
}

fn rows_per_range(plan: &TablePlan) -> u64 {
    // Keep the granularity the plan was made with: rows so far over ranges done, or the
    // default when nothing is done yet.
    let done = plan.done.iter().filter(|d| **d).count() as u64;
    plan.rows
        .checked_div(done)
        .map_or(DEFAULT_CHUNK_ROWS, |r| r.max(1000))
}

/// Rows per range of a backfill unless configured.
pub const DEFAULT_CHUNK_ROWS: u64 = 50_000;

fn utf8(b: &[u8]) -> Result<String, PgError> {
    String::from_utf8(b.to_vec()).map_err(|_| PgError::Protocol("row image is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::LogicalMessage;

    fn shape(keyed: bool) -> TableShape {
        TableShape {
            schema: "public".into(),
            name: "t".into(),
            relfilenode: 1,
            pages: 1,
            est_rows: 3,
            columns: vec![],
            keyed,
        }
    }

    fn change(op: Op, key: &str, old_key: Option<&str>, lsn: u64) -> ChangeRecord {
        ChangeRecord {
            id: ChangeId {
                commit_lsn: Lsn(lsn),
                ordinal: 1,
            },
            op,
            schema: "public".into(),
            table: "t".into(),
            key: Some(key.into()),
            before: None,
            after: Some(key.into()),
            unchanged_toast: vec![],
            lsn: Lsn(lsn),
            commit_lsn: Lsn(lsn),
            commit_ts_micros: 0,
            xid: 7,
            message: None,
            old_key: old_key.map(Into::into),
        }
    }

    fn mark(marks: &Watermarks, tag: &str, high: bool, lsn: u64) -> Seen {
        let mut r = change(Op::Message, "", None, lsn);
        r.key = None;
        r.message = Some(LogicalMessage {
            prefix: marks.prefix.clone(),
            content: serde_json::to_vec(&Mark {
                tag: tag.into(),
                high,
            })
            .unwrap(),
            transactional: true,
        });
        marks.observe(&r)
    }

    fn rows() -> Vec<(String, String)> {
        (1..=4)
            .map(|i| (format!("{{\"id\":{i}}}"), format!("{{\"id\":{i},\"v\":0}}")))
            .collect()
    }

    #[test]
    fn rows_changed_inside_the_window_are_left_to_the_stream() {
        let marks = Watermarks::new("p");
        marks.expect("a", &shape(true));
        // Changed after the chunk was registered, before its low watermark: left to the
        // stream as well (the change carries the row).
        assert!(matches!(
            marks.observe(&change(Op::Update, "{\"id\":1}", None, 10)),
            Seen::Pass
        ));
        assert!(matches!(mark(&marks, "a", false, 20), Seen::Drop));
        marks.observe(&change(Op::Update, "{\"id\":2}", None, 30));
        // A key change: the old key counts too.
        marks.observe(&change(Op::Update, "{\"id\":9}", Some("{\"id\":3}"), 40));
        let mut other = change(Op::Delete, "{\"id\":4}", None, 45);
        other.table = "u".into();
        marks.observe(&other);
        marks.deposit("a", rows());
        let Seen::Emit(out) = mark(&marks, "a", true, 50) else {
            panic!("no rows at the high watermark");
        };
        let keys: Vec<_> = out.iter().map(|r| r.key.clone().unwrap()).collect();
        assert_eq!(keys, ["{\"id\":4}"]);
        assert!(out
            .iter()
            .all(|r| r.op == Op::Read && r.commit_lsn == Lsn(50)));
        assert_eq!(out.iter().map(|r| r.id.ordinal).collect::<Vec<_>>(), [1]);
        assert_eq!(marks.emitted("a").map(|e| e.0), Some(Lsn(50)));
        marks.forget("a");
        assert!(!marks.interested(&change(Op::Insert, "{}", None, 60)));
    }

    #[test]
    fn a_truncate_in_the_window_drops_the_chunk_and_stale_marks_are_ignored() {
        let marks = Watermarks::new("p");
        marks.expect("a", &shape(true));
        mark(&marks, "a", false, 20);
        marks.observe(&change(Op::Truncate, "{}", None, 30));
        marks.deposit("a", rows());
        let Seen::Emit(out) = mark(&marks, "a", true, 40) else {
            panic!("the high watermark is not consumed");
        };
        assert!(out.is_empty());
        // A watermark from a run that crashed.
        assert!(matches!(mark(&marks, "zz", true, 50), Seen::Drop));
        // Without a key, nothing can be matched: every row goes out.
        marks.expect("b", &shape(false));
        mark(&marks, "b", false, 60);
        marks.observe(&change(Op::Update, "{\"id\":1}", None, 70));
        marks.deposit("b", rows());
        let Seen::Emit(out) = mark(&marks, "b", true, 80) else {
            panic!();
        };
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn requests_round_trip_through_their_message() {
        let marks = Watermarks::new("p");
        let req = BackfillRequest {
            schema: "public".into(),
            table: "orders".into(),
            filter: Some("id > 5".into()),
        };
        let sql = request_sql("p", &req);
        assert!(sql.contains("'sluice.command.p'"));
        let mut r = change(Op::Message, "", None, 1);
        r.message = Some(LogicalMessage {
            prefix: command_prefix("p"),
            content: serde_json::to_vec(&serde_json::json!({ "backfill": req })).unwrap(),
            transactional: true,
        });
        match marks.observe(&r) {
            Seen::Command(got) => assert_eq!(got, req),
            other => panic!("{other:?}"),
        }
    }
}
