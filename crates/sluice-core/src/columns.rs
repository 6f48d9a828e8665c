//! The columns of the captured tables, as sinks see them: each column's name and the
//! kind of value its JSON form holds (`docs/GUARANTEES.md`'s value rules), read from the
//! source's catalog when a pipeline starts or is checked.
//!
//! Invariant: this is a hint, never the truth about a record. A record is what the log
//! holds; a column added after the catalog was read is not listed here, and a sink that
//! types values from this map falls back to the value's JSON form for a column it does
//! not know (or whose value does not have the listed kind).

use std::collections::BTreeMap;

/// What a column's values are, in the terms a typed encoding needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueKind {
    /// int2, int4, int8, oid.
    Int,
    /// float4, float8.
    Float,
    /// numeric: kept as its decimal text.
    Decimal,
    Bool,
    /// bytea (base64 in JSON).
    Bytes,
    /// timestamp and timestamptz (RFC 3339 in JSON).
    Timestamp,
    /// json, jsonb, and arrays (JSON arrays in JSON).
    Json,
    /// Everything else: its PostgreSQL text form.
    #[default]
    Text,
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ValueKind,
    /// The PostgreSQL type as `format_type` spells it, with its modifier (a domain as its
    /// base type): `integer`, `numeric(12,2)`, `timestamp with time zone`, `text[]`.
    /// Empty when not read from a catalog.
    pub pg_type: String,
    /// An enum type (its values are labels, sent as text).
    pub is_enum: bool,
    /// Declared `NOT NULL`.
    pub not_null: bool,
    /// Its place (1-based) in the table's primary key, if it is part of it.
    pub key: Option<u16>,
}

/// The source's catalog as a sink can consult it while it runs: a column that appears in
/// the stream after the start (`ALTER TABLE ... ADD COLUMN`) is typed from here.
///
/// The catalog is read *now*, which may be later than the records being delivered: a
/// sink treats the answer as the newest schema, never as the schema of an older record.
pub trait Catalog: Send + Sync {
    /// The columns of `tables` (`schema.table`) as the source lists them now; a fault
    /// keeps the source's class (a server that is down is transient, a refused login is
    /// not).
    fn columns<'a>(
        &'a self,
        tables: &'a [String],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Columns, crate::Fault>> + Send + 'a>,
    >;
}

impl std::fmt::Debug for dyn Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Catalog")
    }
}

/// The key columns of `columns`, in primary-key order.
pub fn key_columns(columns: &[ColumnInfo]) -> Vec<&ColumnInfo> {
    let mut keys: Vec<&ColumnInfo> = columns.iter().filter(|c| c.key.is_some()).collect();
    keys.sort_by_key(|c| c.key);
    keys
}

/// The columns of each table, by `schema.table`, in the table's column order. A table
/// missing here is one whose columns are not known (the source was not reachable).
pub type Columns = BTreeMap<String, Vec<ColumnInfo>>;
