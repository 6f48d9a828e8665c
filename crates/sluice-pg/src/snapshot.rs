//! Reading a table's rows for a snapshot or backfill: its shape (the columns the stream
//! delivers, their codecs, its key), a plan of ctid page ranges, and binary COPY of one
//! range turned into the same `key`/`after` JSON the stream produces.
//!
//! Invariants:
//! - The columns, their order and the key are the ones the stream's Relation message
//!   yields: attnum order, no dropped or generated columns, no excluded columns, the key
//!   from the replica identity (REPLICA IDENTITY FULL: the primary key, else every column).
//! - A plan covers every page: its last range is open-ended, so rows on pages added after
//!   planning are read too.
//! - Progress is recorded per range (`TablePlan::done`); a range is read whole or not at
//!   all as far as the plan is concerned.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::copy_binary::{self, Codec, CopyError, CopyParser};
use crate::error::PgError;
use crate::types::resolve_types;
use crate::values::{write_json_string, TypeRegistry};
use crate::wire::{quote_ident, quote_literal, Connection, CopyMessage};

/// One column as a snapshot reads it.
#[derive(Debug, Clone)]
pub struct ColumnShape {
    pub name: String,
    pub codec: Codec,
    pub key: bool,
    /// The type's cast to text is a function that differs from its output function
    /// (`inet::text` keeps the netmask), so the text comes from `format('%s', ...)`.
    text_by_format: bool,
    /// `"name":` ready to splice into a JSON object.
    json_key: Box<[u8]>,
}

/// What a snapshot needs to know about a table.
#[derive(Debug, Clone)]
pub struct TableShape {
    pub schema: Arc<str>,
    pub name: Arc<str>,
    pub relfilenode: u32,
    pub pages: u32,
    /// Planner estimate; 0 when unknown.
    pub est_rows: u64,
    pub columns: Vec<ColumnShape>,
    /// Whether rows have an identity the stream reports too (a watermark backfill needs
    /// one to tell which rows the stream changed meanwhile).
    pub keyed: bool,
}

impl TableShape {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `COPY (SELECT ...) TO STDOUT (FORMAT binary)` for one page range.
    pub fn copy_sql(&self, range: PageRange, filter: Option<&str>) -> String {
        let list = if self.columns.is_empty() {
            // A table whose every column is excluded still has rows.
            "NULL".to_string()
        } else {
            self.columns
                .iter()
                .map(|c| {
                    let q = quote_ident(&c.name);
                    if c.text_by_format {
                        format!("CASE WHEN {q} IS NULL THEN NULL ELSE format('%s', {q}) END")
                    } else if c.codec.via_text() {
                        format!("{q}::text")
                    } else {
                        q
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut sql = format!(
            "COPY (SELECT {list} FROM {} WHERE ctid >= '({},0)'::tid",
            self.quoted(),
            range.start
        );
        if let Some(end) = range.end {
            sql.push_str(&format!(" AND ctid < '({end},0)'::tid"));
        }
        if let Some(f) = filter {
            sql.push_str(&format!(" AND ({f})"));
        }
        sql.push_str(") TO STDOUT (FORMAT binary)");
        sql
    }

    /// Columns in the COPY output (a table with none selects one NULL).
    pub fn copy_columns(&self) -> usize {
        self.columns.len().max(1)
    }
}

/// Pages `[start, end)`; `end = None` reads to the end of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRange {
    pub start: u32,
    pub end: Option<u32>,
}

/// Why a table is being copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    /// Part of the initial snapshot (under the slot's exported snapshot while it lasts).
    Initial,
    /// A live backfill: watermark-bracketed chunks while the stream runs.
    Backfill,
}

/// A table's copy plan and progress, as kept in the pipeline state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePlan {
    pub schema: String,
    pub table: String,
    pub kind: PlanKind,
    /// Extra `WHERE` condition of an on-demand backfill.
    pub filter: Option<String>,
    /// The file the ranges refer to: a rewrite (VACUUM FULL, CLUSTER) moves every row.
    pub relfilenode: u32,
    pub ranges: Vec<PageRange>,
    pub done: Vec<bool>,
    /// Rows delivered so far.
    pub rows: u64,
    /// Ranges read more than once (after a crash or a rewrite), for the operator.
    pub reread: u64,
}

impl TablePlan {
    pub fn key(schema: &str, table: &str) -> String {
        format!("plan/{schema}.{table}")
    }

    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    pub fn complete(&self) -> bool {
        self.done.iter().all(|d| *d)
    }

    pub fn remaining(&self) -> usize {
        self.done.iter().filter(|d| !**d).count()
    }

    /// A fresh plan of page ranges of about `target_rows` rows each.
    pub fn new(
        shape: &TableShape,
        kind: PlanKind,
        filter: Option<String>,
        target_rows: u64,
    ) -> TablePlan {
        let ranges = plan_ranges(shape.pages, shape.est_rows, target_rows);
        TablePlan {
            schema: shape.schema.to_string(),
            table: shape.name.to_string(),
            kind,
            filter,
            relfilenode: shape.relfilenode,
            done: vec![false; ranges.len()],
            ranges,
            rows: 0,
            reread: 0,
        }
    }
}

/// Splits `pages` into ranges of about `target_rows` rows; the last is open-ended.
pub fn plan_ranges(pages: u32, est_rows: u64, target_rows: u64) -> Vec<PageRange> {
    // Unknown estimate (never analyzed): assume narrow rows, so ranges err on the small side.
    let per_page = if est_rows > 0 && pages > 0 {
        (est_rows / pages as u64).max(1)
    } else {
        100
    };
    let step = (target_rows.max(1) / per_page).clamp(1, u32::MAX as u64) as u32;
    let mut ranges = Vec::new();
    let mut start = 0u32;
    while start.saturating_add(step) < pages {
        ranges.push(PageRange {
            start,
            end: Some(start + step),
        });
        start += step;
    }
    ranges.push(PageRange { start, end: None });
    ranges
}

/// Looks up a table's shape. `excluded` columns are left out.
pub async fn describe(
    conn: &mut Connection,
    schema: &str,
    table: &str,
    excluded: Option<&BTreeSet<String>>,
    types: &mut TypeRegistry,
) -> Result<TableShape, PgError> {
    let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let rows = conn
        .query(&format!(
            "SELECT c.oid, c.relreplident, c.relfilenode, \
             pg_relation_size(c.oid) / current_setting('block_size')::int, \
             greatest(c.reltuples, 0)::bigint \
             FROM pg_class c WHERE c.oid = to_regclass({})",
            quote_literal(&name)
        ))
        .await?;
    let Some(row) = rows.first() else {
        return Err(PgError::Definite(format!(
            "table {schema}.{table} does not exist (or this role cannot see it)"
        )));
    };
    let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let oid: u32 = col(0).parse().unwrap_or(0);
    let identity = col(1).bytes().next().unwrap_or(b'd');
    let relfilenode = col(2).parse().unwrap_or(0);
    let pages = col(3).parse().unwrap_or(0);
    let est_rows = col(4).parse().unwrap_or(0);
    let cols = conn
        .query(&format!(
            "SELECT a.attname, a.atttypid, \
             EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisprimary \
                     AND a.attnum = ANY(i.indkey)), \
             EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisreplident \
                     AND a.attnum = ANY(i.indkey)), \
             EXISTS (SELECT 1 FROM pg_cast c WHERE c.casttarget = 'text'::regtype \
                     AND c.castmethod = 'f' AND c.castsource = coalesce(nullif( \
                     (SELECT t.typbasetype FROM pg_type t WHERE t.oid = a.atttypid), 0), a.atttypid)) \
             FROM pg_attribute a WHERE a.attrelid = {oid} AND a.attnum > 0 \
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum"
        ))
        .await?;
    let cols: Vec<(String, u32, bool, bool, bool)> = cols
        .into_iter()
        .map(|r| {
            let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            (
                get(0),
                get(1).parse().unwrap_or(0),
                get(2) == "t",
                get(3) == "t",
                get(4) == "t",
            )
        })
        .collect();
    resolve_types(conn, types, cols.iter().map(|c| c.1).collect()).await?;
    let has_pk = cols.iter().any(|c| c.2);
    let columns: Vec<ColumnShape> = cols
        .into_iter()
        .filter(|c| !excluded.is_some_and(|ex| ex.contains(&c.0)))
        .map(|(name, type_oid, pk, ri, function_cast)| {
            let key = match identity {
                b'd' => pk,
                b'i' => ri,
                b'f' => pk || !has_pk,
                _ => false,
            };
            let mut json_key = Vec::with_capacity(name.len() + 3);
            write_json_string(name.as_bytes(), &mut json_key);
            json_key.push(b':');
            let codec = Codec::for_type(type_oid, types.kind(type_oid));
            ColumnShape {
                text_by_format: function_cast && codec.via_text(),
                codec,
                name,
                key,
                json_key: json_key.into_boxed_slice(),
            }
        })
        .collect();
    let keyed = columns.iter().any(|c| c.key);
    Ok(TableShape {
        schema: schema.into(),
        name: table.into(),
        relfilenode,
        pages,
        est_rows,
        columns,
        keyed,
    })
}

/// Turns COPY rows into `key` and `after` JSON objects.
pub struct RowEncoder {
    shape: Arc<TableShape>,
    scratch: Vec<u8>,
}

impl RowEncoder {
    pub fn new(shape: Arc<TableShape>) -> RowEncoder {
        RowEncoder {
            shape,
            scratch: Vec::new(),
        }
    }

    /// Appends the row's key object to `key` and its row object to `after`.
    pub fn encode(
        &mut self,
        fields: &[Option<&[u8]>],
        key: &mut Vec<u8>,
        after: &mut Vec<u8>,
    ) -> Result<(), CopyError> {
        self.encode_object(fields, true, key)?;
        self.encode_object(fields, false, after)
    }

    /// Appends the key object (`keys_only`) or the row object.
    pub fn encode_object(
        &mut self,
        fields: &[Option<&[u8]>],
        keys_only: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CopyError> {
        out.push(b'{');
        let mut first = true;
        for (i, (col, v)) in self.shape.columns.iter().zip(fields).enumerate() {
            if keys_only && !col.key {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&col.json_key);
            match v {
                None => out.extend_from_slice(b"null"),
                Some(v) => copy_binary::write_value(&col.codec, i, v, &mut self.scratch, out)?,
            }
        }
        out.push(b'}');
        Ok(())
    }
}

impl From<CopyError> for PgError {
    fn from(e: CopyError) -> Self {
        PgError::Protocol(e.to_string())
    }
}

/// A `COPY ... TO STDOUT (FORMAT binary)` in progress on a connection.
pub struct CopyOut<'c> {
    conn: &'c mut Connection,
    parser: CopyParser,
    ncols: usize,
}

impl<'c> CopyOut<'c> {
    pub async fn start(
        conn: &'c mut Connection,
        sql: &str,
        ncols: usize,
    ) -> Result<CopyOut<'c>, PgError> {
        conn.start_copy_out(sql).await?;
        Ok(CopyOut {
            conn,
            parser: CopyParser::new(),
            ncols,
        })
    }

    /// Waits for more rows and hands every one that is buffered to `row`; false once the
    /// COPY has ended and the connection is ready for the next command.
    pub async fn next(
        &mut self,
        row: &mut copy_binary::RowFn<'_, PgError>,
    ) -> Result<bool, PgError> {
        let mut msg = Some(self.conn.read_copy().await?);
        while let Some(m) = msg {
            match m {
                CopyMessage::Data(d) => self.parser.feed(&d, self.ncols, row)?,
                CopyMessage::Done => {
                    self.conn.finish_copy_out().await?;
                    if !self.parser.finished() {
                        return Err(PgError::Protocol(
                            "binary COPY ended without its trailer".into(),
                        ));
                    }
                    return Ok(false);
                }
            }
            msg = self.conn.try_read_copy()?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_page_and_end_open() {
        let r = plan_ranges(1000, 100_000, 20_000);
        assert_eq!(r.len(), 5);
        assert_eq!(
            r[0],
            PageRange {
                start: 0,
                end: Some(200)
            }
        );
        assert_eq!(
            r[4],
            PageRange {
                start: 800,
                end: None
            }
        );
        for w in r.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start));
        }
        assert_eq!(
            plan_ranges(0, 0, 1000),
            vec![PageRange {
                start: 0,
                end: None
            }]
        );
        assert_eq!(plan_ranges(3, 0, 1_000_000).len(), 1);
    }
}

/// Live progress of the tables being copied, for the progress display and, later, the
/// API and metrics.
#[derive(Debug, Default)]
pub struct Progress {
    tables: std::sync::Mutex<Vec<TableProgress>>,
}

/// One table's copy progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProgress {
    pub table: String,
    pub kind: PlanKind,
    pub rows: u64,
    /// Planner estimate of the table's rows (0 when unknown).
    pub est_rows: u64,
    pub ranges_done: usize,
    pub ranges: usize,
    pub finished: bool,
}

impl Progress {
    /// A snapshot of every table's progress.
    pub fn tables(&self) -> Vec<TableProgress> {
        self.tables.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Starts (or restarts) tracking a table.
    pub fn begin(&self, plan: &TablePlan, est_rows: u64) {
        if let Ok(mut t) = self.tables.lock() {
            t.retain(|p| p.table != plan.qualified());
            t.push(TableProgress {
                table: plan.qualified(),
                kind: plan.kind,
                rows: plan.rows,
                est_rows,
                ranges_done: plan.done.iter().filter(|d| **d).count(),
                ranges: plan.ranges.len(),
                finished: plan.complete(),
            });
        }
    }

    fn update(&self, table: &str, f: impl FnOnce(&mut TableProgress)) {
        if let Ok(mut t) = self.tables.lock() {
            if let Some(p) = t.iter_mut().find(|p| p.table == table) {
                f(p);
            }
        }
    }

    /// Stops tracking a table whose copy was given up.
    pub fn forget(&self, table: &str) {
        if let Ok(mut t) = self.tables.lock() {
            t.retain(|p| p.table != table);
        }
    }

    pub fn add_rows(&self, table: &str, rows: u64) {
        self.update(table, |p| p.rows += rows);
    }

    pub fn range_done(&self, plan: &TablePlan) {
        self.update(&plan.qualified(), |p| {
            p.ranges_done = plan.done.iter().filter(|d| **d).count();
            p.rows = p.rows.max(plan.rows);
            p.finished = plan.complete();
        });
    }
}
