//! The running ClickHouse sink: rows batched per table into RowBinary inserts, schema
//! changes applied as they appear in the stream, and a table whose changes cannot be
//! applied parked while the others go on.
//!
//! Invariants:
//! - A batch is acknowledged only when every row of it is inserted (ClickHouse answered
//!   the insert) or parked (inserted into `sluice_parked`): nothing is acknowledged that
//!   ClickHouse does not hold.
//! - Rows of one table are inserted in log order; a truncate, a schema change or a lookup
//!   of unchanged TOAST values first inserts the rows before it.
//! - Each row carries its change's commit LSN as the version; within one transaction the
//!   later change is inserted later, and ClickHouse keeps the last inserted row of equal
//!   versions. A replay re-inserts a suffix of the same rows in the same order, so it
//!   collapses into the same state.
//! - A batch's last inserts go from a task of their own while the next batch is
//!   encoded; everything the next batch sends waits for them ([`ClickHouseSink::gate`])
//!   and is not sent if they failed, so batches reach ClickHouse in log order.
//! - Once a table is parked, every later change of it is parked too (in log order), so
//!   the parked changes are always a suffix of the table's history and can be applied
//!   again, whole, at any start.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_core::{ChangeId, ColumnInfo, Fault, Op};
use sluice_log::RecordBatch;
use tokio::sync::watch;
use tracing::{error, info};

use super::http::{ChError, Http};
use super::rowbinary::{self, Unfit};
use super::rows::{encode_change, sql_literal, Envelope, RowError};
use super::types::{self, ChType, Column, Profile};
use crate::{InFlight, Sink};

/// Pending rows of one table are sent once they reach this size.
const FLUSH_BYTES: usize = 32 << 20;

/// What the sink needs to know of its settings and its pipeline.
pub struct Settings {
    pub sink: String,
    pub pipeline: String,
    /// The database, unquoted.
    pub db: String,
    /// The database quoted, e.g. `` `analytics` ``.
    pub database: String,
    /// The target name template (`{schema}`, `{table}`).
    pub table_name: String,
    /// `schema.table.column` entries stored as `String`.
    pub as_string: BTreeSet<String>,
    pub profile: Profile,
}

/// A change as the sink applies it: from the log or from `sluice_parked`.
pub(super) struct Item<'a> {
    pub(super) op: Op,
    pub(super) schema: &'a str,
    pub(super) table: &'a str,
    pub(super) id: ChangeId,
    pub(super) json: &'a [u8],
}

impl Item<'_> {
    /// Sets `buf` to `schema.table` of this change, unless it holds that already.
    fn source_into(&self, buf: &mut String) {
        let same = buf.len() == self.schema.len() + 1 + self.table.len()
            && buf.starts_with(self.schema)
            && buf.ends_with(self.table)
            && buf.as_bytes()[self.schema.len()] == b'.';
        if !same {
            buf.clear();
            buf.push_str(self.schema);
            buf.push('.');
            buf.push_str(self.table);
        }
    }
}

/// One target table.
pub struct Table {
    /// `` `db`.`name` ``.
    pub(super) target: String,
    /// The columns Sluice writes, in the insert's order.
    pub(super) columns: Vec<Column>,
    pub(super) index: HashMap<String, usize>,
    pub(super) key: Vec<String>,
    /// Why the table is parked, with the fix.
    pub(super) parked: Option<String>,
    /// RowBinary rows not yet inserted, and how many.
    pub(super) pending: Vec<u8>,
    pub(super) rows: usize,
    /// The latest values of columns whose TOASTed value updates in this batch leave
    /// unchanged, by key (the key columns' RowBinary): read from ClickHouse before the
    /// batch, then kept current by the batch's own rows.
    pub(super) known: HashMap<Vec<u8>, HashMap<String, Vec<u8>>>,
    /// Those columns.
    pub(super) toast_cols: BTreeSet<String>,
}

impl Table {
    fn set_columns(&mut self, columns: Vec<Column>) {
        self.index = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        self.columns = columns;
    }
}

/// The sink.
pub struct ClickHouseSink {
    pub(super) http: Http,
    pub(super) settings: Arc<Settings>,
    pub(super) tables: HashMap<String, Table>,
    pub(super) catalog: Option<Arc<dyn sluice_core::Catalog>>,
    /// Columns already reported as stored as text for want of a mapping.
    pub(super) reported: BTreeSet<String>,
    /// Changes parked in this batch: (table, id, record).
    parked: Vec<(String, String, Vec<u8>)>,
    /// The last started batch's inserts: `Some(true)` once done, `Some(false)` if they
    /// failed. Anything this sink sends to ClickHouse waits for it first ([`Self::gate`]).
    prev: Arc<std::sync::Mutex<Option<Done>>>,
    /// A started batch's insert was refused: the next batches go the synchronous way,
    /// which parks the table (an insert in flight cannot: its changes are gone by then).
    degraded: Arc<AtomicBool>,
}

/// Whether a started batch's inserts are done (`None`: still in flight).
type Done = watch::Receiver<Option<bool>>;

/// Waits until the batch behind `done` is done: `Err` if its inserts failed.
async fn wait_done(mut done: Done) -> Result<(), Fault> {
    loop {
        match *done.borrow_and_update() {
            Some(true) => return Ok(()),
            Some(false) => {
                return Err(Fault::transient(
                    "an earlier batch's insert failed: going on from the cursor",
                ))
            }
            None => {}
        }
        if done.changed().await.is_err() {
            return Err(Fault::transient(
                "an earlier batch's insert ended without an answer",
            ));
        }
    }
}

impl ClickHouseSink {
    pub fn new(
        http: Http,
        settings: Arc<Settings>,
        catalog: Option<Arc<dyn sluice_core::Catalog>>,
    ) -> ClickHouseSink {
        ClickHouseSink {
            http,
            settings,
            tables: HashMap::new(),
            catalog,
            reported: BTreeSet::new(),
            parked: Vec::new(),
            prev: Arc::new(std::sync::Mutex::new(None)),
            degraded: Arc::new(AtomicBool::new(false)),
        }
    }

    fn fault(&self, e: &ChError) -> Fault {
        e.fault(&self.settings.sink)
    }

    /// Waits for the batch started before this one to be inserted (see
    /// [`Sink::start`]): what this batch sends must come after it.
    ///
    /// A failure is reported once and then forgotten: the runner answers it by starting
    /// again from its cursor, and that attempt must not wait on the failed batch again.
    async fn gate(&self) -> Result<(), Fault> {
        let done = self.prev.lock().ok().and_then(|p| p.clone());
        if let Some(done) = done {
            let res = wait_done(done).await;
            if let Ok(mut p) = self.prev.lock() {
                *p = None;
            }
            res?;
        }
        Ok(())
    }

    /// The target's name of a source table (unquoted).
    pub fn target_name(&self, source: &str) -> String {
        let (schema, table) = source.split_once('.').unwrap_or(("public", source));
        self.settings
            .table_name
            .replace("{schema}", schema)
            .replace("{table}", table)
    }

    /// The mapped columns of a source table, reporting once each column stored as text for
    /// want of a mapping.
    fn map_columns(&mut self, source: &str, cols: &[ColumnInfo]) -> Vec<Column> {
        cols.iter()
            .map(|c| {
                let forced = self.settings.as_string.contains(&format!("{source}.{}", c.name));
                let m = types::map_column(c, self.settings.profile, forced);
                if m.fallback && self.reported.insert(format!("{source}.{}", c.name)) {
                    info!(sink = %self.settings.sink, table = %source, column = %c.name, pg_type = %c.pg_type,
                        "no ClickHouse type for this PostgreSQL type: stored as its text (String)");
                }
                Column {
                    name: c.name.clone(),
                    ty: m.ty,
                }
            })
            .collect()
    }

    /// Creates the target table (or reads and checks the one there) for a source table
    /// with `cols`.
    pub async fn open_table(&mut self, source: &str, cols: &[ColumnInfo]) -> Result<(), Fault> {
        let name = self.target_name(source);
        let target = format!("{}.{}", self.settings.database, types::quote(&name));
        let wanted = self.map_columns(source, cols);
        let key: Vec<String> = sluice_core::key_columns(cols)
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let mut table = Table {
            target: target.clone(),
            columns: Vec::new(),
            index: HashMap::new(),
            key: key.clone(),
            parked: None,
            pending: Vec::new(),
            rows: 0,
            known: HashMap::new(),
            toast_cols: BTreeSet::new(),
        };
        let reserved = cols
            .iter()
            .find(|c| c.name == types::VERSION || c.name == types::DELETED);
        let refusal = if key.is_empty() {
            Some(format!(
                "{source} has no primary key, which ClickHouse orders its rows by; add one (ALTER TABLE {source} ADD PRIMARY KEY (...)) or leave the table out of the sink"
            ))
        } else if let Some(c) = reserved {
            Some(format!("{source}.{}: the name is Sluice's own column in ClickHouse; rename the column or leave the table out of the sink", c.name))
        } else {
            self.prepare_target(&name, &target, &wanted, &key, &mut table)
                .await?
        };
        if let Some(reason) = refusal {
            table.set_columns(wanted);
            self.tables.insert(source.to_owned(), table);
            self.stop(source, reason);
            return Ok(());
        }
        self.tables.insert(source.to_owned(), table);
        Ok(())
    }

    /// Creates the target table or brings an existing one in line; `Some(reason)` when
    /// the table cannot take the source's rows (a refused statement included).
    async fn prepare_target(
        &self,
        name: &str,
        target: &str,
        wanted: &[Column],
        key: &[String],
        table: &mut Table,
    ) -> Result<Option<String>, Fault> {
        self.gate().await?;
        let existing = super::schema::read_target(&self.http, &self.settings.db, name)
            .await
            .map_err(|e| self.fault(&e))?;
        let statements: Vec<String> = match existing {
            None => {
                table.set_columns(wanted.to_vec());
                vec![types::create_table(target, wanted, key)]
            }
            Some(there) => match super::schema::reconcile(&there, wanted, key) {
                Ok(plan) => {
                    table.set_columns(plan.columns);
                    let adds = plan.add.iter().map(|c| types::add_column(target, c));
                    adds.chain(plan.widen.iter().map(|c| types::modify_column(target, c)))
                        .collect()
                }
                Err(reason) => return Ok(Some(reason.to_string())),
            },
        };
        self.run_ddl(&statements).await
    }

    /// Runs DDL statements in order; `Some(reason)` when ClickHouse refuses one (the table
    /// is then parked by the caller), a fault when the server cannot be reached.
    async fn run_ddl(&self, statements: &[String]) -> Result<Option<String>, Fault> {
        self.gate().await?;
        for sql in statements {
            match self.http.query(sql).await {
                Ok(_) => {}
                // A column added before a crash is already there.
                Err(ChError::Server { code: 15 | 44, .. }) if sql.contains(" ADD COLUMN ") => {}
                Err(e) if e.is_table_level() => {
                    return Ok(Some(format!("ClickHouse refused `{sql}`: {e}; change the table by hand to match, or drop it (Sluice creates it again) and run `sluice backfill --table`, then restart")))
                }
                Err(e) => return Err(self.fault(&e)),
            }
        }
        Ok(None)
    }

    /// Applies `items` of one batch in order.
    async fn apply(&mut self, items: &[Item<'_>]) -> Result<(), Fault> {
        let mut pending = HashMap::new();
        self.encode(items, &mut pending).await?;
        let sources: Vec<String> = pending.keys().cloned().collect();
        for source in sources {
            self.flush(&source, items, &mut pending).await?;
        }
        self.store_parked().await
    }

    /// Applies `items` up to their last rows, which are left pending: what it takes to
    /// get there (tables, schema changes, TOAST look-ups, a truncate, full inserts) is
    /// done; `pending` says which changes each table's pending rows hold.
    async fn encode(
        &mut self,
        items: &[Item<'_>],
        pending: &mut HashMap<String, Vec<usize>>,
    ) -> Result<(), Fault> {
        // Every table of the batch is open before the TOAST look-ups, which need its columns.
        // A batch is mostly runs of one table: its name is built once per run, not per row.
        let mut source = String::new();
        for item in items.iter().filter(|i| i.op != Op::Message) {
            item.source_into(&mut source);
            if !self.tables.contains_key(&source) {
                let cols = self.catalog_columns(&source).await?;
                self.open_table(&source, &cols).await?;
            }
        }
        self.prefetch(items).await?;
        for (i, item) in items.iter().enumerate() {
            if item.op == Op::Message {
                continue;
            }
            item.source_into(&mut source);
            if !self.tables.contains_key(&source) {
                let cols = self.catalog_columns(&source).await?;
                self.open_table(&source, &cols).await?;
            }
            if self.tables[&source].parked.is_some() {
                self.park(&source, item);
                continue;
            }
            if item.op == Op::Truncate {
                self.flush(&source, items, pending).await?;
                if self.tables[&source].parked.is_some() {
                    self.park(&source, item);
                    continue;
                }
                let sql = format!("TRUNCATE TABLE {}", self.tables[&source].target);
                if let Some(reason) = self.run_ddl(&[sql]).await? {
                    self.stop(&source, format!("{source}: {reason}"));
                    self.park(&source, item);
                    continue;
                }
                if let Some(t) = self.tables.get_mut(&source) {
                    t.known.clear();
                }
                continue;
            }
            self.add_row(&source, item, items, pending).await?;
            match pending.get_mut(&source) {
                Some(waiting) => waiting.push(i),
                None => {
                    pending.insert(source.clone(), vec![i]);
                }
            }
            if self.tables[&source].pending.len() >= FLUSH_BYTES {
                self.flush(&source, items, pending).await?;
            }
        }
        Ok(())
    }

    /// Encodes one change into its table's pending rows, applying the schema changes it
    /// shows first (or parking the table when they cannot be applied).
    async fn add_row(
        &mut self,
        source: &str,
        item: &Item<'_>,
        items: &[Item<'_>],
        pending: &mut HashMap<String, Vec<usize>>,
    ) -> Result<(), Fault> {
        // Each pass either writes the row or resolves one obstacle; a few are enough
        // (new columns, a widened type), more means something is stuck.
        for _ in 0..6 {
            let table = self.tables.get_mut(source).expect("opened above");
            let mark = table.pending.len();
            match encode_change(table, item) {
                Ok(()) => {
                    table.rows += usize::from(item.op != Op::Truncate);
                    return Ok(());
                }
                Err(e) => {
                    table.pending.truncate(mark);
                    self.flush(source, items, pending).await?;
                    match e {
                        RowError::NewColumns(names) => {
                            self.add_columns(source, &names, item).await?
                        }
                        RowError::Unfit { column, unfit } => {
                            self.retype(source, &column, unfit).await?
                        }
                        RowError::Park(reason) => self.stop(source, reason),
                    }
                    if self.tables[source].parked.is_some() {
                        self.park(source, item);
                        return Ok(());
                    }
                }
            }
        }
        self.stop(source, format!("{source}: a change could not be applied after its schema changes were; check the target table"));
        self.park(source, item);
        Ok(())
    }

    /// The source's columns of a table as the catalog lists them now.
    async fn catalog_columns(&self, source: &str) -> Result<Vec<ColumnInfo>, Fault> {
        let Some(catalog) = &self.catalog else {
            return Ok(Vec::new());
        };
        let tables = [source.to_owned()];
        let cols = catalog
            .columns(&tables)
            .await
            .map_err(|e| e.within(format_args!("sink {:?}", self.settings.sink)))?;
        Ok(cols.get(source).cloned().unwrap_or_default())
    }

    /// Adds columns that appeared in the stream, typed from the source's catalog (or, for
    /// one the catalog no longer lists, from the value).
    async fn add_columns(
        &mut self,
        source: &str,
        names: &[String],
        item: &Item<'_>,
    ) -> Result<(), Fault> {
        let listed = self.catalog_columns(source).await?;
        let env: Option<Envelope<'_>> = serde_json::from_slice(item.json).ok();
        let mut added = Vec::new();
        for name in names {
            let ty = match listed.iter().find(|c| &c.name == name) {
                Some(info) => {
                    let mut info = info.clone();
                    // A column added to an existing key is still written as a value.
                    info.key = None;
                    self.map_columns(source, std::slice::from_ref(&info))
                        .remove(0)
                        .ty
                }
                None => {
                    let value = env
                        .as_ref()
                        .and_then(|e| e.after.as_ref())
                        .and_then(|a| a.get(name));
                    types::guess_type(value.map_or("null", RawValue::get), self.settings.profile)
                }
            };
            added.push(Column {
                name: name.clone(),
                ty,
            });
        }
        let target = self.tables[source].target.clone();
        for c in &added {
            if let Some(reason) = self.run_ddl(&[types::add_column(&target, c)]).await? {
                self.stop(source, format!("{source}: {reason}"));
                return Ok(());
            }
            info!(sink = %self.settings.sink, table = %source, column = %c.name, ty = %c.ty.sql(), "column added to the ClickHouse table");
        }
        let table = self.tables.get_mut(source).expect("opened");
        let mut cols = table.columns.clone();
        cols.extend(added);
        table.set_columns(cols);
        Ok(())
    }

    /// A value no longer fits its column: the source's type changed. Widens the column
    /// when every stored value survives it, else parks the table.
    async fn retype(&mut self, source: &str, column: &str, unfit: Unfit) -> Result<(), Fault> {
        let listed = self.catalog_columns(source).await?;
        let now = listed.iter().find(|c| c.name == column).map(|info| {
            let mut info = info.clone();
            info.key = None;
            (
                info.pg_type.clone(),
                self.map_columns(source, &[info]).remove(0).ty,
            )
        });
        let table = &self.tables[source];
        let old = table.columns[table.index[column]].ty.clone();
        let is_key = table.key.iter().any(|k| k == column);
        match now {
            Some((_, new)) if !is_key && new != old && types::widens(&old, &new) => {
                let c = Column {
                    name: column.to_owned(),
                    ty: new,
                };
                let sql = types::modify_column(&table.target.clone(), &c);
                if let Some(reason) = self.run_ddl(&[sql]).await? {
                    self.stop(source, format!("{source}: {reason}"));
                    return Ok(());
                }
                info!(sink = %self.settings.sink, table = %source, column, from = %old.sql(), to = %c.ty.sql(), "ClickHouse column widened");
                let table = self.tables.get_mut(source).expect("opened");
                let i = table.index[column];
                table.columns[i] = c;
            }
            now => {
                let (pg, new) = now.map_or(("unknown".into(), None), |(pg, t)| (pg, Some(t)));
                let fix = format!(
                    "change the ClickHouse column to a type that holds the new values (ALTER TABLE {} MODIFY COLUMN {} {}), or drop the ClickHouse table and run `sluice backfill --table {source}`; then restart the pipeline: the changes held meanwhile are applied",
                    table.target,
                    types::quote(column),
                    new.map_or_else(|| "Nullable(String)".into(), |t| t.sql())
                );
                self.stop(source, format!(
                    "{source}.{column}: {unfit} (the column is {} in ClickHouse, {pg} in PostgreSQL, and that cannot be converted in place); {fix}",
                    old.sql()
                ));
            }
        }
        Ok(())
    }

    /// Reads from ClickHouse the current values of the columns this batch's updates leave
    /// unchanged (TOAST), for the keys whose earlier row is not in the batch, one query
    /// per table and thousand keys.
    async fn prefetch(&mut self, items: &[Item<'_>]) -> Result<(), Fault> {
        let mut wanted: HashMap<String, (BTreeSet<String>, Vec<Vec<String>>)> = HashMap::new();
        for item in items.iter().filter(|i| i.op == Op::Update) {
            let Ok(env) = serde_json::from_slice::<Envelope<'_>>(item.json) else {
                continue;
            };
            if env.unchanged_toast.is_empty() {
                continue;
            }
            let source = format!("{}.{}", item.schema, item.table);
            let Some(table) = self.tables.get(&source) else {
                continue;
            };
            let entry = wanted.entry(source).or_default();
            entry.0.extend(
                env.unchanged_toast
                    .iter()
                    .filter(|c| table.index.contains_key(c.as_ref()))
                    .map(|c| c.to_string()),
            );
            // The old key (an update that moved it) and the new one: a replay after a crash
            // may find the old key already deleted and the new row already written.
            for image in [env.before.as_ref(), env.key.as_ref()]
                .into_iter()
                .flatten()
            {
                let lits: Option<Vec<String>> = table
                    .key
                    .iter()
                    .map(|k| image.get(k).map(|v| sql_literal(v.get())))
                    .collect();
                entry.1.extend(lits);
            }
        }
        for t in self.tables.values_mut() {
            t.known.clear();
            t.toast_cols.clear();
        }
        if !wanted.is_empty() {
            self.gate().await?;
        }
        for (source, (cols, mut keys)) in wanted {
            keys.sort();
            keys.dedup();
            let table = self.tables.get_mut(&source).expect("checked above");
            table.toast_cols = cols;
            if table.parked.is_some() || table.toast_cols.is_empty() {
                continue;
            }
            let cols: Vec<String> = table.toast_cols.iter().cloned().collect();
            let names: Vec<&str> = cols.iter().map(String::as_str).collect();
            let types_of = |names: &[String]| -> Vec<ChType> {
                names
                    .iter()
                    .map(|n| table.columns[table.index[n]].ty.clone())
                    .collect()
            };
            let (key_types, col_types) = (types_of(&table.key), types_of(&cols));
            for chunk in keys.chunks(1000) {
                let sql = types::lookup(&table.target, &table.key, &names, chunk);
                let body = match self.http.query_private(&sql).await {
                    Ok(b) => b,
                    Err(e) if e.is_table_level() => {
                        let reason = format!("{source}: ClickHouse refused the look-up of unchanged TOAST values ({e}); the key's type may not take a literal; set REPLICA IDENTITY FULL on the source table (the values then come with the change), then restart");
                        table.parked = Some(reason.clone());
                        error!(sink = %self.settings.sink, table = %source, reason = %reason, "this table's changes are held back (the other tables go on)");
                        break;
                    }
                    Err(e) => return Err(e.fault(&self.settings.sink)),
                };
                let mut at = 0;
                while at < body.len() {
                    let start = at;
                    for ty in &key_types {
                        at += rowbinary::value_len(ty, &body[at..])
                            .ok_or_else(|| Fault::transient("a lookup's answer was cut short"))?;
                    }
                    let key = body[start..at].to_vec();
                    let mut values = HashMap::new();
                    for (c, ty) in cols.iter().zip(&col_types) {
                        let len = rowbinary::value_len(ty, &body[at..])
                            .ok_or_else(|| Fault::transient("a lookup's answer was cut short"))?;
                        values.insert(c.clone(), body[at..at + len].to_vec());
                        at += len;
                    }
                    table.known.insert(key, values);
                }
            }
        }
        Ok(())
    }

    /// Parks the table: its changes from here on wait in `sluice_parked`.
    fn stop(&mut self, source: &str, reason: String) {
        error!(sink = %self.settings.sink, table = %source, reason = %reason,
            "this table's changes are held back (the other tables go on)");
        if let Some(t) = self.tables.get_mut(source) {
            t.parked = Some(reason);
        }
    }

    fn park(&mut self, source: &str, item: &Item<'_>) {
        self.parked
            .push((source.to_owned(), item.id.to_string(), item.json.to_vec()));
    }

    /// Inserts a table's pending rows; a refusal of the data parks the table and its
    /// pending changes.
    async fn flush(
        &mut self,
        source: &str,
        items: &[Item<'_>],
        pending: &mut HashMap<String, Vec<usize>>,
    ) -> Result<(), Fault> {
        let Some(table) = self.tables.get_mut(source) else {
            return Ok(());
        };
        let waiting = pending.remove(source).unwrap_or_default();
        if table.rows == 0 {
            return Ok(());
        }
        let rows = std::mem::take(&mut table.pending);
        table.rows = 0;
        let sql = types::insert(&table.target, &table.columns);
        self.gate().await?;
        match self.http.insert(&sql, rows).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_table_level() => {
                self.stop(source, format!(
                    "{source}: ClickHouse refused the rows ({e}); make the ClickHouse table's columns match (see the log for the mapping), then restart the pipeline: the changes held meanwhile are applied"
                ));
                for i in waiting {
                    self.park(source, &items[i]);
                }
                Ok(())
            }
            Err(e) if e.is_unknown_table() => {
                // Dropped behind Sluice's back: its earlier rows are gone, so going on
                // would leave it different from the source.
                self.stop(source, format!(
                    "{source}: the ClickHouse table was dropped while Sluice wrote to it; restart the pipeline (it is created again and the held changes applied) and run `sluice backfill --table {source}` for the rows before"
                ));
                for i in waiting {
                    self.park(source, &items[i]);
                }
                Ok(())
            }
            Err(e) => Err(self.fault(&e)),
        }
    }

    /// Inserts this batch's parked changes.
    async fn store_parked(&mut self) -> Result<(), Fault> {
        let Some(rows) = self.parked_rows() else {
            return Ok(());
        };
        let sql = super::schema::park_insert(&self.settings.database);
        self.gate().await?;
        let res = self.http.insert(&sql, rows).await;
        res.map_err(|e| self.fault(&e))
    }

    /// This batch's parked changes as rows of `sluice_parked` (and no longer pending).
    fn parked_rows(&mut self) -> Option<Vec<u8>> {
        if self.parked.is_empty() {
            return None;
        }
        let mut rows = Vec::new();
        for (table, id, record) in std::mem::take(&mut self.parked) {
            for field in [
                self.settings.pipeline.as_bytes(),
                self.settings.sink.as_bytes(),
                table.as_bytes(),
                id.as_bytes(),
                &record,
            ] {
                rowbinary::bytes(field, &mut rows);
            }
        }
        Some(rows)
    }

    /// Applies the changes parked at earlier runs, table by table, then marks them done.
    pub async fn resume_parked(&mut self) -> Result<(), Fault> {
        let db = self.settings.database.clone();
        let (pipeline, sink) = (self.settings.pipeline.clone(), self.settings.sink.clone());
        for (source, records) in super::schema::read_parked(&self.http, &db, &pipeline, &sink)
            .await
            .map_err(|e| self.fault(&e))?
        {
            if self.tables.get(&source).is_some_and(|t| t.parked.is_some()) {
                error!(sink = %sink, table = %source, held = records.len(), reason = self.tables[&source].parked.as_deref().unwrap_or(""),
                    "this table's changes are still held back");
                continue;
            }
            let mut heads = Vec::with_capacity(records.len());
            for (id, json) in &records {
                // A held change that cannot be read is never skipped (it would be marked
                // done with the rest): the start stops and says where.
                let head = parked_head(id, json).ok_or_else(|| {
                    Fault::definite(
                        format!("sink {sink:?}: a change held for {source} in sluice_parked cannot be read"),
                        "check the ClickHouse table sluice_parked: its rows must be Sluice's",
                    )
                })?;
                heads.push(head);
            }
            let items: Vec<Item<'_>> = heads
                .iter()
                .map(|h| Item {
                    op: h.op,
                    schema: &h.schema,
                    table: &h.table,
                    id: h.id,
                    json: h.json,
                })
                .collect();
            let last = records.last().map(|(id, _)| id.clone()).unwrap_or_default();
            self.apply(&items).await?;
            if self.tables.get(&source).is_some_and(|t| t.parked.is_none()) {
                super::schema::mark_resumed(&self.http, &db, &pipeline, &sink, &source, &last)
                    .await
                    .map_err(|e| self.fault(&e))?;
                info!(sink = %sink, table = %source, applied = records.len(), "held changes applied; the table goes on");
            }
        }
        Ok(())
    }
}

/// A parked change's envelope with its op and names (which may need unescaping).
struct Parked<'a> {
    op: Op,
    schema: Cow<'a, str>,
    table: Cow<'a, str>,
    id: ChangeId,
    json: &'a [u8],
}

fn parked_head<'a>(id: &str, json: &'a [u8]) -> Option<Parked<'a>> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        op: Cow<'a, str>,
        #[serde(borrow)]
        schema: Cow<'a, str>,
        #[serde(borrow)]
        table: Cow<'a, str>,
    }
    let head: Head<'a> = serde_json::from_slice(json).ok()?;
    Some(Parked {
        op: Op::from_name(&head.op)?,
        schema: head.schema,
        table: head.table,
        id: id.parse().ok()?,
        json,
    })
}

fn items(batch: &RecordBatch) -> Vec<Item<'_>> {
    batch
        .iter()
        .map(|r| Item {
            op: r.op,
            schema: r.schema,
            table: r.table,
            id: r.id,
            json: r.json,
        })
        .collect()
}

impl ClickHouseSink {
    /// Forgets what a failed batch left pending: it starts over from the cursor.
    fn clear(&mut self) {
        self.parked.clear();
        for t in self.tables.values_mut() {
            t.pending.clear();
            t.rows = 0;
        }
    }
}

impl Sink for ClickHouseSink {
    async fn deliver(&mut self, batch: &RecordBatch) -> Result<(), Fault> {
        let res = self.apply(&items(batch)).await;
        if res.is_err() {
            self.clear();
        }
        res
    }

    /// Encodes the batch here and sends its last inserts from a task of their own, so
    /// the next batch is read and encoded while ClickHouse takes these. The next
    /// batch's inserts (and anything else it sends) wait for these first, and do not go
    /// at all if these failed: batches are applied in the order they started.
    async fn start(&mut self, batch: &RecordBatch) -> Result<InFlight, Fault> {
        if self.degraded.load(Ordering::Acquire) {
            // The synchronous way parks a table whose rows are refused.
            self.gate().await?;
            self.deliver(batch).await?;
            self.degraded.store(false, Ordering::Release);
            return Ok(Box::pin(std::future::ready(Ok(()))));
        }
        let items = items(batch);
        let mut pending = HashMap::new();
        if let Err(e) = self.encode(&items, &mut pending).await {
            self.clear();
            return Err(e);
        }
        let mut inserts = Vec::new();
        for source in pending.keys() {
            if let Some(t) = self.tables.get_mut(source).filter(|t| t.rows > 0) {
                inserts.push((
                    types::insert(&t.target, &t.columns),
                    std::mem::take(&mut t.pending),
                ));
                t.rows = 0;
            }
        }
        if let Some(rows) = self.parked_rows() {
            inserts.push((super::schema::park_insert(&self.settings.database), rows));
        }
        let (tx, done) = watch::channel(None);
        let before = self.prev.lock().ok().and_then(|mut p| p.replace(done));
        let (http, degraded, sink) = (
            self.http.clone(),
            self.degraded.clone(),
            self.settings.sink.clone(),
        );
        let task = tokio::spawn(async move {
            let res = async {
                if let Some(before) = before {
                    wait_done(before).await?;
                }
                for (sql, rows) in inserts {
                    http.insert(&sql, rows).await.map_err(|e| {
                        if e.is_table_level() || e.is_unknown_table() {
                            degraded.store(true, Ordering::Release);
                        }
                        e.fault(&sink)
                    })?;
                }
                Ok(())
            }
            .await;
            let _ = tx.send(Some(res.is_ok()));
            res
        });
        let prev = self.prev.clone();
        Ok(Box::pin(async move {
            let res = task
                .await
                .map_err(|e| Fault::transient(format!("an insert task ended: {e}")))
                .and_then(|r| r);
            if res.is_err() {
                // The runner learns of the failure here and starts again from its
                // cursor: what it starts then must not wait on the failed batches.
                if let Ok(mut p) = prev.lock() {
                    *p = None;
                }
            }
            res
        }))
    }
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
