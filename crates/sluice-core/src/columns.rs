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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    Text,
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ValueKind,
}

/// The columns of each table, by `schema.table`, in the table's column order. A table
/// missing here is one whose columns are not known (the source was not reachable).
pub type Columns = BTreeMap<String, Vec<ColumnInfo>>;
