//! What the sink reads from and sets up in the target database: its tables' columns and
//! primary keys, the types it can create, the missing tables, the positions table and
//! the positions in it.
//!
//! Invariant: every question is one statement over all tables at once, and answers name
//! tables and columns only, never row values.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::{ColumnInfo, Lsn};
use sluice_pgwire::wire::quote_literal;
use sluice_pgwire::{Connection, PgError};

use super::plan::Position;
use super::sql::{self, Column, NewColumn, Shape};

/// A table as the target has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Described {
    pub columns: Vec<Column>,
    pub key: Vec<String>,
}

/// A text array literal of `items`.
fn text_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(quote_literal).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

/// The columns and primary key of each of `tables` (schema, name) that exists.
pub(super) async fn describe(
    conn: &mut Connection,
    tables: &[(String, String)],
) -> Result<BTreeMap<(String, String), Described>, PgError> {
    let mut out: BTreeMap<(String, String), Described> = BTreeMap::new();
    if tables.is_empty() {
        return Ok(out);
    }
    let wanted = text_array(
        tables
            .iter()
            .map(|(s, _)| s.as_str())
            .chain(tables.iter().map(|(_, t)| t.as_str())),
    );
    let n = tables.len();
    let rows = conn
        .query(&format!(
            "WITH w AS (SELECT w[i] AS s, w[i + {n}] AS t FROM (SELECT {wanted} AS w) x, \
             generate_series(1, {n}) i) \
             SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), \
             coalesce((SELECT k.n FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(a, n) \
               WHERE i.indrelid = c.oid AND i.indisprimary AND k.a = a.attnum), 0) \
             FROM w JOIN pg_namespace n ON n.nspname = w.s \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t \
             JOIN pg_attribute a ON a.attrelid = c.oid \
             WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY n.nspname, c.relname, a.attnum"
        ))
        .await?;
    let mut keys: BTreeMap<(String, String), Vec<(u32, String)>> = BTreeMap::new();
    for row in rows {
        let mut it = row.into_iter().map(Option::unwrap_or_default);
        let mut next = || it.next().unwrap_or_default();
        let (schema, table, name, ty, key) = (next(), next(), next(), next(), next());
        let id = (schema, table);
        let place: u32 = key.parse().unwrap_or(0);
        if place > 0 {
            keys.entry(id.clone())
                .or_default()
                .push((place, name.clone()));
        }
        out.entry(id)
            .or_default()
            .columns
            .push(Column::new(name, ty));
    }
    for (id, mut k) in keys {
        k.sort();
        if let Some(d) = out.get_mut(&id) {
            d.key = k.into_iter().map(|(_, n)| n).collect();
        }
    }
    Ok(out)
}

/// Of `types` (as the source's `format_type` spells them), those the target does not
/// know.
pub(super) async fn unknown_types(
    conn: &mut Connection,
    types: &BTreeSet<&str>,
) -> Result<BTreeSet<String>, PgError> {
    if types.is_empty() {
        return Ok(BTreeSet::new());
    }
    let rows = conn
        .query(&format!(
            "SELECT x FROM unnest({}) AS x WHERE to_regtype(x) IS NULL",
            text_array(types.iter().copied())
        ))
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// The target type of a source column: its own, or text where the target lacks it (an
/// enum not created there, an extension's type), `text[]` for arrays of such.
pub(super) fn target_type(c: &ColumnInfo, unknown: &BTreeSet<String>) -> String {
    if c.pg_type.is_empty() {
        return "text".into();
    }
    if !unknown.contains(&c.pg_type) {
        return c.pg_type.clone();
    }
    if c.pg_type.ends_with("[]") {
        "text[]".into()
    } else {
        "text".into()
    }
}

/// A table to create from the source's columns.
pub(super) fn create_sql(
    qualified: &str,
    columns: &[ColumnInfo],
    unknown: &BTreeSet<String>,
) -> Option<String> {
    let key: Vec<String> = sluice_core::key_columns(columns)
        .into_iter()
        .map(|c| c.name.clone())
        .collect();
    if key.is_empty() {
        return None;
    }
    let cols: Vec<NewColumn> = columns
        .iter()
        .map(|c| NewColumn {
            name: c.name.clone(),
            ty: target_type(c, unknown),
            not_null: c.not_null || c.key.is_some(),
        })
        .collect();
    Some(sql::create_table(qualified, &cols, &key))
}

/// Whether `schema` exists.
pub(super) async fn schema_exists(conn: &mut Connection, schema: &str) -> Result<bool, PgError> {
    let rows = conn
        .query(&format!(
            "SELECT 1 FROM pg_namespace WHERE nspname = {}",
            quote_literal(schema)
        ))
        .await?;
    Ok(!rows.is_empty())
}

/// One table's stored position and the source columns the sink knew for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub position: Position,
    pub source_columns: Vec<String>,
}

/// The positions of the sink's tables, by source (schema, table).
pub(super) async fn read_positions(
    conn: &mut Connection,
    positions: &Shape,
    pipeline: &str,
    sink: &str,
) -> Result<BTreeMap<(String, String), Stored>, PgError> {
    let rows = conn
        .query(&format!(
            "SELECT source_schema, source_table, commit_lsn::text, ordinal, log_offset, \
             array_to_json(source_columns)::text FROM {} WHERE pipeline = {} AND sink = {}",
            positions.qualified,
            quote_literal(pipeline),
            quote_literal(sink)
        ))
        .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let mut it = row.into_iter().map(Option::unwrap_or_default);
        let mut next = || it.next().unwrap_or_default();
        let (schema, table, lsn, ordinal, offset, cols) =
            (next(), next(), next(), next(), next(), next());
        let (Ok(commit_lsn), Ok(ordinal), Ok(offset)) =
            (lsn.parse::<Lsn>(), ordinal.parse(), offset.parse())
        else {
            tracing::warn!(
                schema,
                table,
                "postgres: an unreadable row in the positions table is ignored"
            );
            continue;
        };
        out.insert(
            (schema, table),
            Stored {
                position: Position {
                    commit_lsn,
                    ordinal,
                    offset,
                },
                source_columns: serde_json::from_str(&cols).unwrap_or_default(),
            },
        );
    }
    Ok(out)
}

/// Privileges the sink's user lacks on an existing table (of SELECT, INSERT, UPDATE,
/// DELETE, TRUNCATE), and whether it may alter it (owns it).
pub(super) async fn table_privileges(
    conn: &mut Connection,
    qualified: &str,
) -> Result<(Vec<String>, bool), PgError> {
    let rel = quote_literal(qualified);
    let rows = conn
        .query(&format!(
            "SELECT coalesce(string_agg(p, ', ' ORDER BY o), ''), \
             (SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = {rel}::regclass) \
             FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) WITH ORDINALITY AS x(p, o) \
             WHERE NOT has_table_privilege({rel}::regclass, p)"
        ))
        .await?;
    let row = rows.into_iter().next().unwrap_or_default();
    let missing = row.first().cloned().flatten().unwrap_or_default();
    let owner = row.get(1).cloned().flatten().as_deref() == Some("t");
    let missing = missing
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((missing, owner))
}

/// Whether the user may create in `schema` (an existing one) or, for a missing one,
/// create schemas in the database; and whether it may create temporary tables.
pub(super) async fn may_create(
    conn: &mut Connection,
    schema: &str,
    exists: bool,
) -> Result<(bool, bool), PgError> {
    let create = if exists {
        format!("has_schema_privilege({}, 'CREATE')", quote_literal(schema))
    } else {
        "has_database_privilege(current_database(), 'CREATE')".to_owned()
    };
    let rows = conn
        .query(&format!(
            "SELECT {create}, has_database_privilege(current_database(), 'TEMP')"
        ))
        .await?;
    let row = rows.into_iter().next().unwrap_or_default();
    let t = |i: usize| row.get(i).cloned().flatten().as_deref() == Some("t");
    Ok((t(0), t(1)))
}
