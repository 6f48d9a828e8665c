//! Deleting finished rows of Debezium-layout outbox tables (`delete_delivered`).
//!
//! The cleaner follows the log like a sink, with a cursor of its own, and deletes an
//! outbox row from the source once every sink that takes the row's table has finished
//! the row's record: the sink's cursor is past it and no waiting room holds it (parked,
//! delayed or being redriven). Delivered and dead-lettered both count as finished: a dead
//! letter keeps the whole record, so redriving it needs nothing from the table.
//!
//! Invariants:
//! - A row is deleted only after every sink that takes its table has finished its record,
//!   so the table keeps every row some sink still owes.
//! - The cleaner's cursor passes a record only after its DELETE committed, or after the
//!   row was written to the `outbox_deferred` table (committed): a crash repeats DELETEs,
//!   which are idempotent, and never forgets a row.
//! - A deferred row is checked again every few seconds and deleted once no waiting room
//!   holds its record.
//! - The cleaner never stops delivery and never holds the log for long: a failing DELETE
//!   (a lost connection, a missing privilege) is retried with backoff for a while, then
//!   its rows are deferred and retried with the others, and the cursor moves on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_core::{Backoff, Fault, Op};
use sluice_log::{Consumer, Cursor, Record, RecordBatch, Step, Until};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{DeliveryError, Item, ItemOptions, Parsed, SharedState, Store};

/// The cleaner's cursor (not a valid sink name: sink names are checked against it).
pub const CLEANER_CURSOR: &str = "(outbox cleaner)";

/// Rows per DELETE statement.
const CHUNK: usize = 500;

/// How often deferred rows are checked again.
const RECHECK: Duration = Duration::from_secs(2);

/// How long a failing DELETE is retried in place before its rows are deferred.
const RETRY_IN_PLACE: Duration = Duration::from_secs(30);

/// A DELETE in progress: how many rows went, or why it failed.
pub type Deletion<'a> = Pin<Box<dyn Future<Output = Result<u64, Fault>> + Send + 'a>>;

/// Deletes rows by key from the source database.
pub trait RowDeleter: Send {
    /// Deletes the rows of `schema.table` whose key columns equal one of `keys` (each a
    /// JSON object of key columns, as in the change record's `key`).
    fn delete<'a>(
        &'a mut self,
        schema: &'a str,
        table: &'a str,
        keys: &'a [String],
    ) -> Deletion<'a>;
}

/// Whether a sink takes records of this op, schema and table.
pub type Accepts = Box<dyn Fn(Op, &str, &str) -> bool + Send + Sync>;

/// A sink whose progress the cleaner waits for.
pub struct Watch {
    pub cursor: Arc<Cursor>,
    pub accepts: Accepts,
    /// The waiting room and how the sink keys records (delivery-engine sinks only).
    pub waiting: Option<(Store, ItemOptions)>,
}

/// What the cleaner does.
pub struct Cleaner {
    /// The pipeline's name (the `pipeline` label of the cleaner's metric).
    pub pipeline: String,
    /// The outbox tables whose finished rows are deleted, as (schema, table).
    pub tables: Vec<(String, String)>,
    /// Every sink with a cursor (all but SSE).
    pub watches: Vec<Watch>,
}

/// A row to delete, or one deferred until waiting rooms let its record go (or until a
/// failed DELETE works: `held` is empty then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Row {
    schema: String,
    table: String,
    /// The key columns as JSON.
    key: String,
    /// (sink, ordering key) of the waiting rooms that held the record.
    #[serde(default)]
    held: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct KeyOnly<'a> {
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
}

/// Deferred rows as the delivery state stores them.
fn encode(rows: &[(u64, Row)]) -> Result<Vec<(u64, Vec<u8>)>, DeliveryError> {
    rows.iter()
        .map(|(offset, row)| Ok((*offset, serde_json::to_vec(row).map_err(err)?)))
        .collect()
}

fn err(e: impl Into<sluice_core::BoxError>) -> DeliveryError {
    DeliveryError::State {
        what: "the outbox cleaner's deferred rows",
        source: e.into(),
    }
}

/// Runs the cleaner until `stop`, reading through `consumer` (its cursor registered as
/// [`CLEANER_CURSOR`], its filter keeping the outbox tables' inserts).
pub async fn clean(
    cleaner: Cleaner,
    mut consumer: Consumer,
    state: SharedState,
    mut deleter: impl RowDeleter,
    stop: CancellationToken,
) -> Result<(), DeliveryError> {
    let deleted = metrics::counter!(sluice_core::metric::OUTBOX_DELETED.name, "pipeline" => cleaner.pipeline.clone());
    let mut c = State {
        cleaner,
        state,
        stores: HashMap::new(),
        deleted,
        keyless: BTreeSet::new(),
    };
    for w in &c.cleaner.watches {
        if let Some((store, _)) = &w.waiting {
            c.stores.insert(store.sink().to_owned(), store.clone());
        }
    }
    let cursor = consumer.cursor().clone();
    let until = Until {
        drain: CancellationToken::new(),
        abort: stop.clone(),
    };
    let mut batch = RecordBatch::default();
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match consumer
            .next(&mut batch, &until, Some(&mut recheck))
            .await?
        {
            Step::Read => {}
            Step::Drained | Step::Stopped => return Ok(()),
            Step::Shed => return shed(),
            Step::Idle => {
                if !c.recheck(&mut deleter, &stop).await? {
                    return Ok(());
                }
                continue;
            }
        }
        let mut ready = Vec::new();
        for r in batch.iter() {
            // Rows are taken in log order; one a sink has not finished waits, and so do
            // the rows after it (the cursor cannot pass it).
            while !c.finished(&r) {
                if cursor.is_shed() {
                    return shed();
                }
                if !ready.is_empty() {
                    if !c.delete(&mut deleter, &ready, &stop).await? {
                        return Ok(());
                    }
                    ready.clear();
                    cursor.ack(r.offset);
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    _ = recheck.tick() => {
                        if !c.recheck(&mut deleter, &stop).await? {
                            return Ok(());
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            if let Some(row) = c.row(&r)? {
                if row.held.is_empty() {
                    ready.push((r.offset, row));
                } else {
                    c.defer(&[(r.offset, row)])?;
                }
            }
        }
        if !ready.is_empty() && !c.delete(&mut deleter, &ready, &stop).await? {
            return Ok(());
        }
        cursor.ack(batch.next);
    }
}

/// What the cleaner keeps of the log: inserts (and snapshot reads) of the outbox tables.
pub fn outbox_rows(tables: &[(String, String)]) -> sluice_log::Keep {
    let tables = tables.to_vec();
    Box::new(move |op, s, t| {
        matches!(op, Op::Insert | Op::Read) && tables.iter().any(|(a, b)| a == s && b == t)
    })
}

/// The disk budget detached the cleaner: its records may be gone, so it stops (the sinks
/// go on) and starts again from the log's start at the next start.
fn shed() -> Result<(), DeliveryError> {
    warn!("outbox cleaner: shed by the log's disk budget; it stops, and rows delivered meanwhile stay in the outbox tables");
    Ok(())
}

struct State {
    cleaner: Cleaner,
    state: SharedState,
    stores: HashMap<String, Store>,
    deleted: metrics::Counter,
    /// Tables already warned about for records without key columns.
    keyless: BTreeSet<String>,
}

impl State {
    /// Whether every sink that takes `r`'s table is past it (a shed sink no longer
    /// holds anything back: it is backfilled).
    fn finished(&self, r: &Record<'_>) -> bool {
        self.cleaner
            .watches
            .iter()
            .filter(|w| (w.accepts)(r.op, r.schema, r.table))
            .all(|w| w.cursor.is_shed() || w.cursor.position() > r.offset)
    }

    /// The row of `r`, with the waiting rooms that hold its record.
    fn row(&mut self, r: &Record<'_>) -> Result<Option<Row>, DeliveryError> {
        let key = serde_json::from_slice::<KeyOnly<'_>>(r.json)
            .ok()
            .and_then(|k| k.key)
            .map(|k| k.get().to_owned())
            .filter(|k| k.starts_with('{'));
        let Some(key) = key else {
            let table = format!("{}.{}", r.schema, r.table);
            if self.keyless.insert(table.clone()) {
                warn!(%table, id = %r.id, "outbox cleaner: a row without key columns cannot be deleted; give the table a primary key");
            }
            return Ok(None);
        };
        let mut held = Vec::new();
        for w in &self.cleaner.watches {
            let Some((store, options)) = &w.waiting else {
                continue;
            };
            if !(w.accepts)(r.op, r.schema, r.table) {
                continue;
            }
            if let Parsed::Item(item) | Parsed::Bad(item, _) = Item::parse(r, options) {
                if store.holds(&item.key, r.offset)? {
                    held.push((store.sink().to_owned(), item.key.to_string()));
                }
            }
        }
        Ok(Some(Row {
            schema: r.schema.to_owned(),
            table: r.table.to_owned(),
            key,
            held,
        }))
    }

    /// Writes `rows` to the deferred rows (one commit).
    fn defer(&self, rows: &[(u64, Row)]) -> Result<(), DeliveryError> {
        let put = encode(rows)?;
        self.state.update_deferred(&[], &put)
    }

    /// One attempt at deleting `rows`. On an error some may be gone already: DELETEs by
    /// key are idempotent, so trying them all again is right.
    async fn try_delete(
        &self,
        deleter: &mut impl RowDeleter,
        rows: &[(u64, Row)],
    ) -> Result<(), Fault> {
        let mut by_table: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for (_, r) in rows {
            by_table
                .entry((&r.schema, &r.table))
                .or_default()
                .push(r.key.clone());
        }
        for ((schema, table), keys) in by_table {
            for chunk in keys.chunks(CHUNK) {
                let n = deleter
                    .delete(schema, table, chunk)
                    .await
                    .map_err(|e| e.within(format_args!("{schema}.{table}")))?;
                self.deleted.increment(n);
            }
        }
        Ok(())
    }

    /// Deletes `rows`, retrying with backoff for [`RETRY_IN_PLACE`]; rows a DELETE still
    /// fails for then are deferred, so the cursor moves on. `false`: stopped first.
    async fn delete(
        &self,
        deleter: &mut impl RowDeleter,
        rows: &[(u64, Row)],
        stop: &CancellationToken,
    ) -> Result<bool, DeliveryError> {
        let started = tokio::time::Instant::now();
        let mut backoff =
            Backoff::doubling(Duration::from_secs(1), Duration::from_secs(10)).start();
        loop {
            let Err(e) = self.try_delete(deleter, rows).await else {
                return Ok(true);
            };
            if started.elapsed() >= RETRY_IN_PLACE {
                warn!(rows = rows.len(), error = %e, "outbox cleaner: cannot delete delivered rows; they are kept aside and tried again every few seconds");
                self.defer(rows)?;
                return Ok(true);
            }
            let wait = backoff.next_delay();
            warn!(error = %e, retry_in = ?wait, "outbox cleaner: cannot delete delivered rows");
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(false),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Deletes the deferred rows no waiting room holds any more (a failure leaves them for
    /// the next time). `false`: stopped.
    async fn recheck(
        &self,
        deleter: &mut impl RowDeleter,
        stop: &CancellationToken,
    ) -> Result<bool, DeliveryError> {
        if stop.is_cancelled() {
            return Ok(false);
        }
        let mut rows = Vec::new();
        for (offset, v) in self.state.deferred(10_000)? {
            let row: Row = serde_json::from_slice(&v).map_err(err)?;
            rows.push((offset, row));
        }
        if rows.is_empty() {
            return Ok(true);
        }
        let mut released = Vec::new();
        let mut changed = Vec::new();
        for (offset, mut row) in rows {
            let before = row.held.len();
            let mut keep = Vec::new();
            for (sink, key) in row.held.drain(..) {
                // A sink taken out of the config holds nothing.
                if let Some(store) = self.stores.get(&sink) {
                    if store.holds(&key, offset)? {
                        keep.push((sink, key));
                    }
                }
            }
            row.held = keep;
            if row.held.is_empty() {
                released.push((offset, row));
            } else if row.held.len() != before {
                changed.push((offset, row));
            }
        }
        if !released.is_empty() {
            match self.try_delete(deleter, &released).await {
                Ok(()) => {
                    info!(
                        rows = released.len(),
                        "outbox cleaner: deleted rows that were held or whose DELETE had failed"
                    );
                }
                Err(e) => {
                    warn!(rows = released.len(), error = %e, "outbox cleaner: cannot delete delivered rows; trying again in a few seconds");
                    released.clear();
                }
            }
        }
        if released.is_empty() && changed.is_empty() {
            return Ok(true);
        }
        let removed: Vec<u64> = released.iter().map(|(offset, _)| *offset).collect();
        self.state.update_deferred(&removed, &encode(&changed)?)?;
        Ok(true)
    }
}
